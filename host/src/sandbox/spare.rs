//! Spare instances: for a procedure that is slow to start, the next
//! request's instance is started ahead, while the host would be idle.
//!
//! Why: a fresh instance per request is the sandbox's rule, and for a Rust
//! procedure it costs a few microseconds. A Python (componentize-py) or
//! JavaScript (componentize-js) component takes a hundred times as long to
//! instantiate (its runtime's start code re-links the interpreter's function
//! table on every instance), which for a caller making one call at a time is
//! most of the round trip (BENCHMARKS.md has the figures). So once a component has started slowly
//! [`SLOW_STARTS`] times in a row, each request, as it begins, starts the
//! next request's instance in the background (beside its own call and the
//! round trip to its caller), and the next request takes it, waiting for it
//! if it is still starting.
//!
//! What does not change: every instance still serves exactly one request,
//! and a spare has run only the component's own start code, as an instance
//! started on demand would have. It starts under the same memory limit and
//! deadline as a request. A spare that fails to start is dropped and spares
//! stop until a request has started the component itself, which reports the
//! failure the way it always did.
//!
//! Bounds: at most one spare per component and `--spare-instances` in all
//! (the pool has room for them); 0 turns spares off.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;

// The generated instance of the `procedure` world, not a served procedure.
use super::bindings::Procedure as Instance;
use super::guest::Guest;

/// A start slower than this counts as slow: well above a Rust component's
/// start and well below a Python or JavaScript one's.
const SLOW_START: Duration = Duration::from_micros(100);

/// Slow starts in a row before spares are made: one slow start may be a
/// preempted thread, three are the component.
const SLOW_STARTS: u32 = 3;

/// An instance started ahead, with the permit that counts it against
/// `--spare-instances`.
pub(super) struct Spare {
    guest: Guest,
    procedure: Instance,
    permit: OwnedSemaphorePermit,
}

impl Spare {
    pub(super) fn new(guest: Guest, procedure: Instance, permit: OwnedSemaphorePermit) -> Self {
        Spare {
            guest,
            procedure,
            permit,
        }
    }

    /// The instance, for the request that takes it; it no longer counts
    /// against `--spare-instances`, so the next spare can start at once.
    pub(super) fn into_parts(self) -> (Guest, Instance) {
        drop(self.permit);
        (self.guest, self.procedure)
    }
}

/// One component's spare, and how fast the component starts.
#[derive(Default)]
pub(super) struct Spares {
    /// Starts slower than [`SLOW_START`] in a row.
    slow_starts: AtomicU32,
    /// The spare, ready or still starting.
    next: Mutex<Option<JoinHandle<Option<Spare>>>>,
}

impl Spares {
    /// Takes the spare, if there is one, ready or still starting.
    pub(super) fn take(&self) -> Option<JoinHandle<Option<Spare>>> {
        self.next.lock().expect("spare lock").take()
    }

    /// Records how long starting an instance of the component took.
    pub(super) fn record_start(&self, took: Duration) {
        if took >= SLOW_START {
            let _ = self
                .slow_starts
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_add(1))
                });
        } else {
            self.slow_starts.store(0, Ordering::Relaxed);
        }
    }

    /// Stops making spares until a request has started the component again
    /// (after a spare failed to start).
    pub(super) fn stop(&self) {
        self.slow_starts.store(0, Ordering::Relaxed);
    }

    /// Whether this component starts slowly enough for spares to pay.
    pub(super) fn starts_slowly(&self) -> bool {
        self.slow_starts.load(Ordering::Relaxed) >= SLOW_STARTS
    }

    /// Starts a spare with `start` unless one is ready or starting already.
    pub(super) fn start_unless_present<F>(&self, start: impl FnOnce() -> F)
    where
        F: Future<Output = Option<Spare>> + Send + 'static,
    {
        let mut next = self.next.lock().expect("spare lock");
        if next.is_none() {
            *next = Some(tokio::spawn(start()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spares_pay_only_after_slow_starts_in_a_row() {
        let spares = Spares::default();
        let slow = SLOW_START * 5;
        spares.record_start(slow);
        spares.record_start(slow);
        assert!(!spares.starts_slowly());
        // A fast start proves the component fast: preemption only slows.
        spares.record_start(Duration::from_micros(5));
        spares.record_start(slow);
        spares.record_start(slow);
        assert!(!spares.starts_slowly());
        spares.record_start(slow);
        assert!(spares.starts_slowly());
        spares.stop();
        assert!(!spares.starts_slowly());
    }
}
