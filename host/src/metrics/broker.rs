//! The broker link: connected or not, through which node, reconnects.

use std::sync::atomic::Ordering;

use super::Metrics;

impl Metrics {
    /// The host started consuming through `node`.
    pub fn connected(&self, node: &str) {
        *self.node.lock().expect("node lock") = Some(node.to_owned());
        self.consuming.store(true, Ordering::Relaxed);
        self.connected.set(1);
    }

    /// The connection was lost (or closed).
    pub fn disconnected(&self) {
        self.consuming.store(false, Ordering::Relaxed);
        self.connected.set(0);
    }

    /// A lost connection was made again.
    pub fn reconnected(&self) {
        self.reconnects.inc();
    }

    /// Whether the host is connected and consuming requests.
    pub fn is_consuming(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
    }

    /// The broker node of the current connection, if connected.
    pub fn node(&self) -> Option<String> {
        self.is_consuming()
            .then(|| self.node.lock().expect("node lock").clone())
            .flatten()
    }
}
