//! Calling Warren procedures (or any tutorial-style RPC server) over RabbitMQ.
//!
//! An [`RpcClient`] owns one connection and one callback queue. Any number of
//! calls can be in flight at once: each gets a fresh `correlation_id`, and one
//! background task routes replies back to the call waiting for them. Replies
//! that match no waiting call (late replies to calls that timed out,
//! duplicates of a redelivered request, strays) are dropped.
//!
//! ```no_run
//! # async fn demo() -> Result<(), warren_client::CallError> {
//! use std::time::Duration;
//! use warren_client::{Call, RpcClient};
//!
//! let client = RpcClient::connect("amqp://guest:guest@127.0.0.1:5672/%2f", "rpc_queue").await?;
//! let reply = client.call(Call::new("30").timeout(Duration::from_secs(5))).await?;
//! assert_eq!(reply.body, b"832040");
//! # Ok(()) }
//! ```
//!
//! When the connection drops, the next call connects again (to the next of
//! several broker URLs, if given). Calls waiting at that moment fail at once
//! with [`CallError::Disconnected`], unless the client is durable
//! ([`ClientOptions::durable`]): then requests are persistent, replies come
//! to a named queue that survives the reconnection, and waiting calls get
//! their replies after it (see [`link`]).
//!
//! The wire contract (headers, error kinds) lives in `warren-protocol`,
//! re-exported here as [`protocol`]. [`bench`] measures a server under load
//! (behind `warren bench`); [`deploy`] publishes modules to a fleet.

pub mod bench;
mod call;
pub mod deploy;
mod error;
pub mod link;
pub mod status;

use call::interpret_reply;
pub use call::{Call, Reply};
pub use error::CallError;

use std::time::Duration;

use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::protocol::AMQPSoftError;
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Confirmation};
use tokio::sync::mpsc;
use tokio::time::Instant;
pub use warren_protocol as protocol;
pub use warren_protocol::deploy::{DeployAnswer, SecretKey};
use warren_protocol::tls::Connector;
use warren_protocol::trace::HEADER_TRACEPARENT;
pub use warren_protocol::trace::TraceParent;
use warren_protocol::{
    ErrorKind, HEADER_DEADLINE, HEADER_PROCEDURE, broker_said, deadline_header, set_header_text,
};

pub use deploy::{Deploy, DeployReport};
use link::{CallbackQueue, Link, Pending, broker};
use warren_protocol::broker::{Brokers, PERSISTENT, close_quietly};

/// How long [`RpcClient::connect`] waits for the broker.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default time to wait for a reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a retried call waits after `rate-limited` when the host did
/// not say (an older host, or a server that is not Warren).
const RATE_LIMITED_PAUSE: Duration = Duration::from_millis(100);

/// How long a durable call whose publish failed waits for its link to be
/// reported broken before taking the failure as final.
const LINK_BREAK_GRACE: Duration = Duration::from_secs(2);

/// The longest a retried call waits between two attempts.
const RATE_LIMITED_MAX_PAUSE: Duration = Duration::from_secs(2);

/// How long to wait after the `refusals`+1-th `rate-limited` answer to one
/// call, which asked for `hinted`: the hint, doubled for each refusal before
/// (the host's hint is when its *next* token comes; a caller with many
/// calls waiting must not send them all back at that moment, or they fill
/// the queue in front of everyone again), at most
/// [`RATE_LIMITED_MAX_PAUSE`], and between half of that and all of it at
/// random, so calls refused together come back apart.
fn retry_wait(hinted: Duration, refusals: u32) -> Duration {
    let backoff = hinted
        .saturating_mul(1 << refusals.min(16))
        .min(RATE_LIMITED_MAX_PAUSE);
    let jitter = (uuid::Uuid::new_v4().as_u128() % 1024) as u32;
    backoff / 2 + backoff / 2 * jitter / 1024
}

/// Where and how a client connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    urls: String,
    queue: String,
    durable: bool,
    connect_timeout: Duration,
    ca_file: Option<std::path::PathBuf>,
}

impl ClientOptions {
    /// Calls to `queue` through the broker at `urls`: one AMQP URL, or
    /// several separated by commas (the nodes of a cluster, tried in order).
    pub fn new(urls: impl Into<String>, queue: impl Into<String>) -> Self {
        ClientOptions {
            urls: urls.into(),
            queue: queue.into(),
            durable: false,
            connect_timeout: CONNECT_TIMEOUT,
            ca_file: None,
        }
    }

    /// Trusts the CA certificates in this PEM file for `amqps://` brokers,
    /// besides the system's (a broker whose certificate a private CA issued).
    pub fn ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Durable mode, for hosts run with `--durable`: requests are persistent,
    /// and replies come to a named, durable callback queue that outlives a
    /// reconnection, so a reply published while the client reconnects is not
    /// lost and calls in flight survive the broker restarting.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Gives up on a broker that does not complete the connection in
    /// `timeout` (default [`CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

/// A connection to the broker for making calls; share it behind an `Arc`.
pub struct RpcClient {
    brokers: Brokers,
    queue: String,
    durable: bool,
    connect_timeout: Duration,
    callback: CallbackQueue,
    pending: Pending,
    /// The live link, replaced when it breaks.
    link: tokio::sync::Mutex<Option<std::sync::Arc<Link>>>,
}

impl RpcClient {
    /// Connects to `urls` (one AMQP URL, or several separated by commas) and
    /// sets up the callback queue for calls to `queue`.
    pub async fn connect(urls: &str, queue: &str) -> Result<Self, CallError> {
        Self::connect_with(ClientOptions::new(urls, queue)).await
    }

    /// Connects as `options` say.
    pub async fn connect_with(options: ClientOptions) -> Result<Self, CallError> {
        let connector = match &options.ca_file {
            Some(path) => Connector::with_ca_file(path).map_err(CallError::Invalid)?,
            None => Connector::new(),
        };
        warren_protocol::values::check_queue_name(&options.queue).map_err(CallError::Invalid)?;
        let brokers =
            Brokers::parse(&options.urls, connector, "warren").map_err(CallError::Invalid)?;
        let callback = if options.durable {
            CallbackQueue::Durable(format!("warren.replies.{}", uuid::Uuid::new_v4()))
        } else {
            CallbackQueue::Private
        };
        let client = RpcClient {
            brokers,
            queue: options.queue,
            durable: options.durable,
            connect_timeout: options.connect_timeout,
            callback,
            pending: Pending::default(),
            link: tokio::sync::Mutex::new(None),
        };
        client.link().await?;
        Ok(client)
    }

    /// The request queue calls go to.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The live link, connecting again if the last one broke.
    async fn link(&self) -> Result<std::sync::Arc<Link>, CallError> {
        let mut current = self.link.lock().await;
        if let Some(link) = current.as_ref()
            && !link.is_broken()
        {
            return Ok(link.clone());
        }
        if let Some(broken) = current.take() {
            broken.close().await;
        }
        let link = Link::open(
            &self.brokers,
            self.connect_timeout,
            &self.callback,
            self.pending.clone(),
        )
        .await?;
        let link = std::sync::Arc::new(link);
        *current = Some(link.clone());
        Ok(link)
    }

    /// Connects again until `deadline`, for a durable call whose link broke.
    async fn relink_until(&self, deadline: Instant) -> Result<std::sync::Arc<Link>, CallError> {
        let mut pause = Duration::from_millis(100);
        loop {
            match self.link().await {
                Ok(link) => return Ok(link),
                Err(error) if Instant::now() + pause >= deadline => return Err(error),
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Registers a new `correlation_id` whose replies arrive on the receiver
    /// until the returned guard is dropped.
    fn expect_replies(
        &self,
    ) -> (
        Waiting<'_>,
        mpsc::UnboundedReceiver<lapin::message::Delivery>,
    ) {
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let (sender, receiver) = mpsc::unbounded_channel();
        self.pending
            .lock()
            .expect("pending lock")
            .insert(correlation_id.clone(), sender);
        let waiting = Waiting {
            pending: &self.pending,
            correlation_id,
        };
        (waiting, receiver)
    }

    /// Makes one call and waits for its reply. A procedure name that breaks
    /// the naming rule, or a timeout of 0 or more than 49 days, is
    /// [`CallError::Invalid`], and nothing is sent. With
    /// [`Call::retry_when_rate_limited`], a `rate-limited` answer is waited
    /// out and the call sent again, within its timeout.
    pub async fn call(&self, call: Call) -> Result<Reply, CallError> {
        if !call.retry_rate_limited {
            return self.call_once(call).await;
        }
        let give_up = Instant::now() + call.timeout;
        let mut attempt = call;
        for refusals in 0u32.. {
            let outcome = self.call_once(attempt.clone()).await;
            let wait = match &outcome {
                Err(CallError::Rpc { error, .. }) if error.kind == ErrorKind::RateLimited => {
                    retry_wait(error.retry_after().unwrap_or(RATE_LIMITED_PAUSE), refusals)
                }
                _ => return outcome,
            };
            let left = give_up.saturating_duration_since(Instant::now());
            if wait + Duration::from_millis(1) >= left {
                return outcome;
            }
            tokio::time::sleep(wait).await;
            attempt.timeout = give_up.saturating_duration_since(Instant::now());
        }
        unreachable!("a call is refused fewer than 2^32 times")
    }

    async fn call_once(&self, call: Call) -> Result<Reply, CallError> {
        if let Some(name) = &call.procedure {
            warren_protocol::check_procedure_name(name).map_err(CallError::Invalid)?;
        }
        warren_protocol::values::check_call_timeout(call.timeout).map_err(CallError::Invalid)?;
        // Whatever happens next, the entry must not outlive this call.
        let (waiting, mut replies) = self.expect_replies();
        let deadline = Instant::now() + call.timeout;
        // One trace per call, the same if the request is sent again.
        let trace = call.traceparent.unwrap_or_else(TraceParent::new_root);
        let mut link = self.link().await?;
        // Published and routed, or an error: a durable call that lost its
        // link before the broker confirmed the request sends it again
        // (the host may then answer twice; the second reply is dropped).
        loop {
            match self
                .publish_request(&link, &call, &waiting.correlation_id, deadline, &trace)
                .await
            {
                Ok(()) => break,
                Err(error @ (CallError::Broker { .. } | CallError::Disconnected))
                    if self.durable =>
                {
                    // A failed publish can be the first news of a lost
                    // connection (an I/O error), a moment before lapin
                    // marks the connection down: wait that moment.
                    let broke = tokio::time::timeout(LINK_BREAK_GRACE, link.wait_broken()).await;
                    if broke.is_err() && !link.is_broken() {
                        return Err(error);
                    }
                    link = self.relink_until(deadline).await?;
                }
                Err(error) => return Err(error),
            }
        }
        loop {
            tokio::select! {
                reply = tokio::time::timeout_at(deadline, replies.recv()) => return match reply {
                    Ok(Some(delivery)) => interpret_reply(delivery),
                    Ok(None) => Err(CallError::Disconnected),
                    Err(_elapsed) => Err(CallError::Timeout {
                        waited: call.timeout,
                        diagnosis: self.diagnose_silence().await,
                    }),
                },
                // Durable: the reply waits in the callback queue; go and get it.
                () = link.wait_broken(), if self.durable => {
                    link = self.relink_until(deadline).await?;
                }
            }
        }
    }

    /// Publishes one request (mandatory, confirmed) on `link`.
    async fn publish_request(
        &self,
        link: &Link,
        call: &Call,
        correlation_id: &str,
        deadline: Instant,
        trace: &TraceParent,
    ) -> Result<(), CallError> {
        let mut properties = BasicProperties::default()
            .with_reply_to(link.callback_queue.clone())
            .with_correlation_id(correlation_id.into())
            .with_expiration(call.timeout.as_millis().max(1).to_string().into());
        // Who is calling, as the broker knows it: hosts authorise and
        // count by it, and the broker refuses a user_id that is not ours.
        if let Some(user) = &link.user {
            properties = properties.with_user_id(user.clone());
        }
        if self.durable {
            properties = properties.with_delivery_mode(PERSISTENT);
        }
        let mut headers = FieldTable::default();
        set_header_text(&mut headers, HEADER_TRACEPARENT, &trace.to_string());
        let left = deadline.saturating_duration_since(Instant::now());
        set_header_text(&mut headers, HEADER_DEADLINE, &deadline_header(left));
        if let Some(name) = &call.procedure {
            set_header_text(&mut headers, HEADER_PROCEDURE, name);
        }
        properties = properties.with_headers(headers);
        let confirmation = link
            .channel
            .basic_publish(
                ShortString::default(),
                self.queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &call.body,
                properties,
            )
            .await
            .map_err(broker("publishing the request"))?;
        let confirmed = tokio::select! {
            confirmed = tokio::time::timeout_at(deadline, confirmation) => confirmed,
            // Unconfirmed when the link broke: the caller decides whether
            // to send it again.
            () = link.wait_broken() => return Err(CallError::Disconnected),
        };
        match confirmed {
            Ok(Ok(Confirmation::Ack(Some(_returned)))) => Err(CallError::NoQueue {
                queue: self.queue.clone(),
            }),
            Ok(Ok(Confirmation::Nack(_))) => Err(CallError::NotStored("the request")),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(broker("publishing the request")(error)),
            Err(_elapsed) => Ok(()), // diagnosed like a missing reply
        }
    }

    /// How many consumers the request queue has; `None` if it does not exist.
    pub async fn consumer_count(&self) -> Result<Option<u32>, CallError> {
        let link = self.link().await?;
        // A passive declare of a missing queue closes the channel it runs
        // on, so ask on a throwaway channel.
        let probe = link
            .connection
            .create_channel()
            .await
            .map_err(broker("opening a channel to look at the queue"))?;
        let answer = probe
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        close_quietly(probe.close(200, "probe done".into())).await;
        match answer {
            Ok(info) => Ok(Some(info.consumer_count())),
            Err(error) if broker_said(&error, AMQPSoftError::NOTFOUND) => Ok(None),
            Err(error) => Err(broker("looking at the queue")(error)),
        }
    }

    /// Closes the connection; a durable client's callback queue is deleted
    /// (a private one goes with the connection).
    pub async fn close(self) {
        let Some(link) = self.link.lock().await.take() else {
            return;
        };
        if let CallbackQueue::Durable(name) = &self.callback
            && !link.is_broken()
        {
            let deleted = link
                .channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default());
            close_quietly(deleted).await;
        }
        link.close().await;
    }

    /// Explains a timeout in words: is anyone consuming the queue at all?
    async fn diagnose_silence(&self) -> String {
        let queue = &self.queue;
        match self.consumer_count().await {
            Err(_) => "the connection to the broker is no longer usable".to_owned(),
            Ok(None) => format!(
                "queue {queue:?} does not exist, so no host is serving it \
                 (start warren-host, or check --queue)"
            ),
            Ok(Some(0)) => format!(
                "no host is consuming queue {queue:?} (it has 0 consumers; start warren-host, \
                 or check --queue)"
            ),
            Ok(Some(consumers)) => format!(
                "{consumers} consumer(s) on queue {queue:?} did not answer in time (busy, or a \
                 slow procedure; try a longer --timeout)"
            ),
        }
    }
}

/// A registered `correlation_id`; removes its entry from the pending map
/// when the call or deploy waiting for it ends, however it ends.
struct Waiting<'a> {
    pending: &'a Pending,
    correlation_id: String,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&self.correlation_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retried_call_waits_longer_after_each_refusal_within_a_cap() {
        let hinted = Duration::from_millis(10);
        for _ in 0..100 {
            let first = retry_wait(hinted, 0);
            assert!(first >= hinted / 2 && first <= hinted, "{first:?}");
            let fourth = retry_wait(hinted, 3);
            assert!(fourth >= hinted * 4 && fourth <= hinted * 8, "{fourth:?}");
            let late = retry_wait(hinted, 40);
            assert!(
                late >= RATE_LIMITED_MAX_PAUSE / 2 && late <= RATE_LIMITED_MAX_PAUSE,
                "{late:?}"
            );
        }
    }
}
