//! Reaching the broker, the same way for the host and the client: the nodes
//! to try, one round of connection attempts under a timeout, the backoff
//! between rounds, closing without hanging, and publishing to a queue.
//!
//! lapin has no reliable automatic recovery, so each side does its own: it
//! calls [`Brokers::connect`] again when a connection fails. With several
//! URLs (the nodes of a cluster) a round tries each once, starting after the
//! node last used, so a process that loses its node moves to the next.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::tls::Connector;
use crate::{check_amqp_url, describe_connect_error, redact_url};

/// AMQP `delivery_mode` of a message the broker keeps on disk.
pub const PERSISTENT: u8 = 2;

/// How long a close may take before it is abandoned.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The broker URLs a process may use, in order of preference.
#[derive(Debug)]
pub struct Brokers {
    urls: Vec<String>,
    /// TLS roots for `amqps://` URLs.
    connector: Connector,
    /// How the connections are named in the broker's connection list.
    connection_name: &'static str,
    /// Index of the URL to try first next time.
    next: AtomicUsize,
}

/// Why one attempt to connect failed; both name the node, password hidden.
#[derive(Debug)]
pub enum ConnectError {
    /// The node did not complete the connection in time.
    Timeout {
        /// The node's URL, password hidden.
        url: String,
        /// How long the attempt waited.
        waited: Duration,
    },
    /// The node refused or broke the connection.
    Failed {
        /// The node's URL, password hidden.
        url: String,
        /// What lapin said.
        source: lapin::Error,
    },
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout { url, waited } => write!(
                f,
                "connecting to the broker at {url}: no answer within {} (wrong host, port or vhost?)",
                humantime::format_duration(*waited)
            ),
            ConnectError::Failed { url, source } => write!(
                f,
                "connecting to the broker at {url}: {}",
                describe_connect_error(url, source)
            ),
        }
    }
}

impl std::error::Error for ConnectError {}

impl Brokers {
    /// `urls` (at least one, each checked with [`check_amqp_url`]),
    /// connecting through `connector`, each connection named
    /// `connection_name` in the broker's connection list.
    pub fn new(
        urls: Vec<String>,
        connector: Connector,
        connection_name: &'static str,
    ) -> Result<Self, String> {
        if urls.is_empty() {
            return Err("give at least one broker URL".to_owned());
        }
        urls.iter().try_for_each(|url| check_amqp_url(url))?;
        Ok(Brokers {
            urls,
            connector,
            connection_name,
            next: AtomicUsize::new(0),
        })
    }

    /// Like [`Brokers::new`], from one string of comma-separated URLs.
    pub fn parse(
        urls: &str,
        connector: Connector,
        connection_name: &'static str,
    ) -> Result<Self, String> {
        let urls = urls
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect();
        Self::new(urls, connector, connection_name)
    }

    /// The URLs, passwords hidden, for logs.
    pub fn shown(&self) -> String {
        self.urls
            .iter()
            .map(|url| redact_url(url))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The broker users these URLs log in as ([`crate::amqp_user`]), each
    /// once; URLs whose user is a TLS client certificate's are left out.
    pub fn users(&self) -> Vec<String> {
        let mut users: Vec<String> = Vec::new();
        for user in self.urls.iter().filter_map(|url| crate::amqp_user(url)) {
            if !users.contains(&user) {
                users.push(user);
            }
        }
        users
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// Always false: there is at least one node.
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// One round: tries each URL once, each for at most `attempt_timeout`,
    /// from the one after the node last connected to, and returns the first
    /// connection made with its URL (password hidden). Each failed attempt
    /// is passed to `failed` (to log); the round's error is the last one.
    pub async fn connect(
        &self,
        attempt_timeout: Duration,
        mut failed: impl FnMut(&ConnectError),
    ) -> Result<(Connection, String), ConnectError> {
        let first = self.next.load(Ordering::Relaxed);
        let mut last_error = None;
        for offset in 0..self.urls.len() {
            let index = (first + offset) % self.urls.len();
            let url = &self.urls[index];
            let properties =
                ConnectionProperties::default().with_connection_name(self.connection_name.into());
            // lapin can wait forever when the broker refuses the connection
            // after the handshake (an unknown vhost, say); give up in time.
            let connected =
                tokio::time::timeout(attempt_timeout, self.connector.connect(url, properties))
                    .await
                    .map_err(|_| ConnectError::Timeout {
                        url: redact_url(url),
                        waited: attempt_timeout,
                    })
                    .and_then(|connected| {
                        connected.map_err(|source| ConnectError::Failed {
                            url: redact_url(url),
                            source,
                        })
                    });
            match connected {
                Ok(connection) => {
                    self.next.store(index + 1, Ordering::Relaxed);
                    return Ok((connection, redact_url(url)));
                }
                Err(error) => {
                    failed(&error);
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.expect("at least one URL was tried"))
    }
}

/// Whether `error` ended the whole connection, not just one channel (a
/// soft error such as `PRECONDITION_FAILED` closes only its channel, and
/// lapin reports it on the connection's events all the same).
pub fn ends_connection(error: &lapin::Error) -> bool {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            matches!(amqp.kind(), lapin::protocol::AMQPErrorKind::Hard(_))
        }
        lapin::ErrorKind::IOError(_)
        | lapin::ErrorKind::MissingHeartbeatError
        | lapin::ErrorKind::InvalidConnectionState(_) => true,
        _ => false,
    }
}

/// Capped exponential backoff with jitter, so a fleet that lost its broker
/// does not knock on its door in step.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    /// First pause between attempts.
    const FIRST: Duration = Duration::from_millis(250);
    /// Longest pause between attempts.
    pub const MAX: Duration = Duration::from_secs(30);

    /// Starts at a quarter second.
    pub fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    /// The pause before the next attempt: doubling up to 30 s, each drawn
    /// between half and all of that.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        ceiling.mul_f64(0.5 + rand::random::<f64>() * 0.5)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Closes best effort: lapin can wait forever for a close-ok that never
/// comes, and closing must not hang whoever closes.
pub async fn close_quietly<T, E>(closing: impl Future<Output = Result<T, E>>) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
}

/// Publishes through the default exchange to queue `to` and waits until the
/// frames are written, or, on a channel with publisher confirms, until the
/// broker confirms it (a nack is an error).
pub async fn publish_to(
    channel: &Channel,
    to: ShortString,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), PublishError> {
    let confirmation = channel
        .basic_publish(
            ShortString::default(),
            to,
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await?
        .await?;
    if confirmation.is_nack() {
        return Err(PublishError::Nacked);
    }
    Ok(())
}

/// Why [`publish_to`] failed.
#[derive(Debug)]
pub enum PublishError {
    /// The channel or connection failed.
    Broker(lapin::Error),
    /// The broker would not take the message (a publisher nack).
    Nacked,
}

impl From<lapin::Error> for PublishError {
    fn from(error: lapin::Error) -> Self {
        PublishError::Broker(error)
    }
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::Broker(error) => error.fmt(f),
            PublishError::Nacked => f.write_str("the broker did not take it (a publisher nack)"),
        }
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PublishError::Broker(error) => Some(error),
            PublishError::Nacked => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut backoff = Backoff::new();
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= Backoff::FIRST / 2 && delays[0] <= Backoff::FIRST);
        assert!(delays.iter().all(|d| *d <= Backoff::MAX));
        assert!(delays[11] >= Backoff::MAX / 2, "{delays:?}");
    }

    #[test]
    fn a_node_list_needs_one_valid_url() {
        let brokers = Brokers::parse(
            "amqp://u:secret@a:5672/%2f, amqp://b",
            Connector::new(),
            "test",
        )
        .unwrap();
        assert_eq!(brokers.len(), 2);
        assert_eq!(brokers.shown(), "amqp://u:***@a:5672/%2f, amqp://b");
        assert!(Brokers::parse(" , ", Connector::new(), "test").is_err());
        assert!(Brokers::parse("http://a", Connector::new(), "test").is_err());
    }
}
