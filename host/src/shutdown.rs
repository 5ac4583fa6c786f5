//! Graceful shutdown, after mini-redis: one signal, many listeners.
//!
//! `main` owns a [`ShutdownTrigger`]; every long-running task holds a
//! [`Shutdown`] and stops taking new work once [`Shutdown::recv`] returns,
//! finishing what it already started. Triggering twice is harmless.

use tokio::sync::watch;

/// Fires the shutdown signal for every [`Shutdown`] made from it.
#[derive(Debug)]
pub struct ShutdownTrigger {
    sender: watch::Sender<bool>,
}

/// Listens for the shutdown signal. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

impl ShutdownTrigger {
    /// A trigger that has not fired.
    pub fn new() -> Self {
        ShutdownTrigger {
            sender: watch::Sender::new(false),
        }
    }

    /// A listener for this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            receiver: self.sender.subscribe(),
        }
    }

    /// Tells every listener to shut down.
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }
}

impl Default for ShutdownTrigger {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// Waits for the signal; returns at once if it already fired. Also
    /// returns if the trigger is dropped, which only happens on the way out.
    pub async fn recv(&mut self) {
        let _ = self.receiver.wait_for(|fired| *fired).await;
    }
}
