//! Reaching the broker: the nodes to try, one connection attempt under a
//! timeout, the backoff between rounds of attempts, and closing without
//! hanging.
//!
//! lapin has no reliable automatic recovery, so the host does its own: the
//! session layer calls [`Brokers::connect`] again, waiting
//! [`Backoff::next_delay`] between rounds, whether the broker is not up yet
//! (startup under systemd or compose, where start order is a guess) or went
//! away. With several URLs (the nodes of a cluster) a round tries each once,
//! starting after the node last used, so a host that loses its node moves
//! to the next one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use lapin::{Connection, ConnectionProperties};
use warren_protocol::tls::Connector;
use warren_protocol::{describe_connect_error, redact_url};

/// How long one connection attempt may take.
pub const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// First pause between attempts.
const FIRST_DELAY: Duration = Duration::from_millis(250);
/// Longest pause between attempts.
const MAX_DELAY: Duration = Duration::from_secs(30);
/// How long a close may take before it is abandoned.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The broker URLs a host may use, in order of preference.
#[derive(Debug)]
pub struct Brokers {
    urls: Vec<String>,
    /// TLS roots for `amqps://` URLs.
    connector: Connector,
    /// Index of the URL to try first next time.
    next: AtomicUsize,
}

impl Brokers {
    /// `urls` must not be empty.
    pub fn new(urls: Vec<String>, connector: Connector) -> Self {
        assert!(!urls.is_empty(), "at least one broker URL");
        Brokers {
            urls,
            connector,
            next: AtomicUsize::new(0),
        }
    }

    /// The URLs, passwords hidden, for logs.
    pub fn shown(&self) -> String {
        self.urls
            .iter()
            .map(|url| redact_url(url))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// One round: tries each URL once, from the one after the node last
    /// connected to, and returns the first connection made with the URL
    /// (password hidden) it was made to. Each failed attempt is logged.
    pub async fn connect(&self) -> anyhow::Result<(Connection, String)> {
        let first = self.next.load(Ordering::Relaxed);
        let mut last_error = None;
        for offset in 0..self.urls.len() {
            let index = (first + offset) % self.urls.len();
            let url = &self.urls[index];
            match connect(url, &self.connector).await {
                Ok(connection) => {
                    self.next.store(index + 1, Ordering::Relaxed);
                    return Ok((connection, redact_url(url)));
                }
                Err(error) => {
                    if self.urls.len() > 1 {
                        tracing::warn!(broker = %redact_url(url), "cannot connect: {}", Causes(&error));
                    }
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.expect("at least one URL was tried"))
    }
}

/// One attempt to connect to `url`, named `warren-host` in the broker's
/// connection list. The error names the broker (password hidden), and says
/// what to do when its TLS certificate was not trusted.
pub async fn connect(url: &str, connector: &Connector) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name("warren-host".into());
    tokio::time::timeout(CONNECT_ATTEMPT_TIMEOUT, connector.connect(url, properties))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {CONNECT_ATTEMPT_TIMEOUT:?}"))
        .and_then(|connected| {
            connected.map_err(|error| anyhow::anyhow!(describe_connect_error(url, &error)))
        })
        .with_context(|| format!("connecting to the broker at {}", redact_url(url)))
}

/// Capped exponential backoff with jitter, so a fleet that lost its broker
/// does not knock on its door in step.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    /// Starts at a quarter second.
    pub fn new() -> Self {
        Backoff { next: FIRST_DELAY }
    }

    /// The pause before the next attempt: doubling up to 30 s, each drawn
    /// between half and all of that.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(MAX_DELAY);
        ceiling.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Shows an error and its causes on one line, like `{:#}`, but without a
/// cause that only repeats what was said (lapin's IO errors show their
/// cause and then have it as their source: "Connection refused (os error
/// 111): Connection refused (os error 111)").
pub struct Causes<'a>(pub &'a anyhow::Error);

impl std::fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut said = String::new();
        for cause in self.0.chain() {
            let text = cause.to_string();
            if said.ends_with(&text) {
                continue;
            }
            if !said.is_empty() {
                said.push_str(": ");
            }
            said.push_str(&text);
        }
        f.write_str(&said)
    }
}

/// Closes best effort: lapin can wait forever for a close-ok that never
/// comes, and a stopping host must not hang on it.
pub async fn close_quietly<T, E>(closing: impl Future<Output = Result<T, E>>) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_said_once() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let error = anyhow::Error::from(lapin::Error::from(refused))
            .context("connecting to the broker at amqp://127.0.0.1");
        let shown = Causes(&error).to_string();
        assert_eq!(shown.matches("refused").count(), 1, "{shown}");
        assert!(shown.starts_with("connecting to the broker"), "{shown}");
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut backoff = Backoff::new();
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= FIRST_DELAY / 2 && delays[0] <= FIRST_DELAY);
        assert!(delays.iter().all(|d| *d <= MAX_DELAY));
        assert!(delays[11] >= MAX_DELAY / 2, "{delays:?}");
    }
}
