//! Calling Warren procedures (or any tutorial-style RPC server) over RabbitMQ.
//!
//! An [`RpcClient`] owns one connection and one exclusive, server-named
//! callback queue. Any number of calls can be in flight at once: each gets
//! a fresh `correlation_id`, and one background task routes replies back to
//! the call waiting for them. Replies that match no waiting call (late
//! replies to calls that timed out, strays) are dropped.
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
//! The wire contract (headers, error kinds) lives in `warren-protocol`,
//! re-exported here as [`protocol`]. [`bench`] measures a server under load
//! (behind `warren bench`).

pub mod bench;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::protocol::AMQPSoftError;
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
pub use warren_protocol as protocol;
pub use warren_protocol::deploy::{DeployAnswer, SecretKey};
use warren_protocol::deploy::{
    HEADER_DEPLOY_DIGEST, HEADER_DEPLOY_KEY, HEADER_DEPLOY_NAME, HEADER_DEPLOY_SIGNATURE,
    declare_deploy_stream,
};
use warren_protocol::{
    ErrorBody, ErrorKind, HEADER_PROCEDURE, HEADER_PROCEDURE_DIGEST, HEADER_RPC_ERROR,
    HEADER_RPC_STATUS, RpcError, STATUS_ERROR, broker_said, check_amqp_url, check_procedure_name,
    header_text, redact_url, set_header_text,
};

/// How long [`RpcClient::connect`] waits for the broker.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default time to wait for a reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One request to make: a body, optionally a procedure, and a timeout.
#[derive(Debug, Clone)]
pub struct Call {
    body: Vec<u8>,
    procedure: Option<String>,
    timeout: Duration,
}

impl Call {
    /// A call with `body`, the host's default procedure and [`DEFAULT_TIMEOUT`].
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Call {
            body: body.into(),
            procedure: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Runs procedure `name` (sent as the `x-procedure` header).
    pub fn procedure(mut self, name: impl Into<String>) -> Self {
        self.procedure = Some(name.into());
        self
    }

    /// Gives up after `timeout`. The request carries the same `expiration`,
    /// so the broker discards it if no host picks it up in time.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// One module to publish to every host of a queue.
pub struct Deploy {
    name: String,
    module: Vec<u8>,
    key: Option<SecretKey>,
    expect_hosts: Option<usize>,
    allow_no_hosts: bool,
    timeout: Duration,
}

impl Deploy {
    /// Deploys `module` as procedure `name`, unsigned, expecting an answer
    /// from every host consuming the queue within [`DEFAULT_TIMEOUT`].
    pub fn new(name: impl Into<String>, module: Vec<u8>) -> Self {
        Deploy {
            name: name.into(),
            module,
            key: None,
            expect_hosts: None,
            allow_no_hosts: false,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Signs the deploy with `key` (hosts accept only trusted signers).
    pub fn signed_by(mut self, key: SecretKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Waits for `hosts` answers [default: the number of consumers of the
    /// request queue when the deploy starts].
    pub fn expect_hosts(mut self, hosts: usize) -> Self {
        self.expect_hosts = Some(hosts);
        self
    }

    /// Sends the deploy even when the request queue is missing or has no
    /// consumer: it waits in the deploy stream for hosts that start later.
    pub fn allow_no_hosts(mut self, allow: bool) -> Self {
        self.allow_no_hosts = allow;
        self
    }

    /// Stops waiting for answers after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// What came of a deploy: every answer that arrived, and how many were
/// expected. Fewer answers than expected is not an error here: the caller
/// decides what it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployReport {
    /// Hosts' answers, in the order they arrived.
    pub answers: Vec<DeployAnswer>,
    /// How many answers the deploy waited for.
    pub expected: usize,
}

impl DeployReport {
    /// Whether every expected host answered and all accepted.
    pub fn all_accepted(&self) -> bool {
        self.answers.len() >= self.expected && self.answers.iter().all(|a| a.accepted)
    }
}

/// A successful reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The reply body, exactly as the procedure returned it.
    pub body: Vec<u8>,
    /// The procedure that answered (absent from non-Warren servers).
    pub procedure: Option<String>,
    /// `sha256:<hex>` of the module that answered (absent from non-Warren servers).
    pub digest: Option<String>,
}

/// Why a call produced no successful reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The procedure (or the host on its behalf) answered with an error.
    #[error("{error}")]
    Rpc {
        /// Kind and message, as sent by the host.
        error: RpcError,
        /// The procedure that answered, if the host said.
        procedure: Option<String>,
        /// `sha256:<hex>` of the module that answered, if one ran.
        digest: Option<String>,
    },
    /// The request queue does not exist, so nothing can be serving it (the
    /// broker returned the request at once).
    #[error(
        "queue {queue:?} does not exist, so no host is serving it (start warren-host, or check --queue)"
    )]
    NoQueue {
        /// The queue asked for.
        queue: String,
    },
    /// A deploy found no host consuming the queue to apply it.
    #[error(
        "no host is consuming queue {queue:?}, so no one would apply the deploy now \
         (start warren-host, check --queue, or pass --allow-no-hosts to store it for hosts \
         that start later)"
    )]
    NoHosts {
        /// The queue asked for.
        queue: String,
    },
    /// Something the caller passed cannot work (a malformed broker URL, an
    /// invalid procedure name); nothing was sent.
    #[error("{0}")]
    Invalid(String),
    /// No reply arrived in time; `diagnosis` says what is known about why.
    #[error("no reply within {}: {diagnosis}", humantime::format_duration(*.waited))]
    Timeout {
        /// How long the call waited.
        waited: Duration,
        /// What the client found out about the queue.
        diagnosis: String,
    },
    /// The broker could not be reached or refused the connection.
    #[error("cannot reach the broker at {url}: {source}")]
    Connect {
        /// The broker URL, password hidden.
        url: String,
        /// What went wrong.
        #[source]
        source: lapin::Error,
    },
    /// The broker did not complete the connection in time.
    #[error(
        "cannot reach the broker at {url}: no answer within {} (wrong host, port or vhost?)",
        humantime::format_duration(*.waited)
    )]
    ConnectTimeout {
        /// The broker URL, password hidden.
        url: String,
        /// How long the client waited.
        waited: Duration,
    },
    /// The connection failed after it was made.
    #[error("{context}: {source}")]
    Broker {
        /// What the client was doing.
        context: &'static str,
        /// What went wrong.
        #[source]
        source: lapin::Error,
    },
    /// The broker would not take a message (a publisher nack).
    #[error("the broker refused {0} (it answered with a nack); try again")]
    NotStored(&'static str),
    /// The connection to the broker closed while the call was waiting.
    #[error("the connection to the broker closed before a reply arrived")]
    Disconnected,
}

/// Calls (and deploys) waiting for replies, by `correlation_id`. A deploy
/// gets one reply per host, so each entry is a stream, not a single value.
type Pending = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<lapin::message::Delivery>>>>;

/// A connection to the broker for making calls; cheap to share behind an `Arc`.
pub struct RpcClient {
    connection: Connection,
    channel: Channel,
    queue: String,
    callback_queue: ShortString,
    pending: Pending,
    router: JoinHandle<()>,
}

impl RpcClient {
    /// Connects to `url` (waiting at most [`CONNECT_TIMEOUT`]) and sets up
    /// the callback queue for calls to `queue`.
    pub async fn connect(url: &str, queue: &str) -> Result<Self, CallError> {
        Self::connect_within(url, queue, CONNECT_TIMEOUT).await
    }

    /// Like [`RpcClient::connect`], giving up on the broker after `timeout`.
    pub async fn connect_within(
        url: &str,
        queue: &str,
        timeout: Duration,
    ) -> Result<Self, CallError> {
        check_amqp_url(url).map_err(CallError::Invalid)?;
        let connect_error = |source| CallError::Connect {
            url: redact_url(url),
            source,
        };
        let properties = ConnectionProperties::default().with_connection_name("warren".into());
        // lapin can wait forever when the broker refuses the connection
        // after the handshake (an unknown vhost, say); give up in time.
        let connection = tokio::time::timeout(timeout, Connection::connect(url, properties))
            .await
            .map_err(|_| CallError::ConnectTimeout {
                url: redact_url(url),
                waited: timeout,
            })?
            .map_err(connect_error)?;
        let channel = connection
            .create_channel()
            .await
            .map_err(broker("opening a channel"))?;
        // Confirms, so that a request the broker cannot route (its queue
        // does not exist) comes back at once instead of timing out.
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker("enabling publisher confirms"))?;
        // Server-named, exclusive, auto-deleted: private to this client and
        // gone when it disconnects.
        let callback = channel
            .queue_declare(
                ShortString::default(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(broker("declaring the callback queue"))?;
        let callback_queue = callback.name().clone();
        let consumer = channel
            .basic_consume(
                callback_queue.clone(),
                ShortString::default(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(broker("consuming the callback queue"))?;
        let pending: Pending = Arc::default();
        let router = tokio::spawn(route_replies(consumer, pending.clone()));
        Ok(RpcClient {
            connection,
            channel,
            queue: queue.to_owned(),
            callback_queue,
            pending,
            router,
        })
    }

    /// The request queue calls go to.
    pub fn queue(&self) -> &str {
        &self.queue
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

    /// Makes one call and waits for its reply.
    pub async fn call(&self, call: Call) -> Result<Reply, CallError> {
        // Whatever happens next, the entry must not outlive this call.
        let (waiting, mut replies) = self.expect_replies();
        let correlation_id = waiting.correlation_id.as_str();

        let mut properties = BasicProperties::default()
            .with_reply_to(self.callback_queue.clone())
            .with_correlation_id(correlation_id.into())
            .with_expiration(call.timeout.as_millis().max(1).to_string().into());
        if let Some(name) = &call.procedure {
            let mut headers = FieldTable::default();
            set_header_text(&mut headers, HEADER_PROCEDURE, name);
            properties = properties.with_headers(headers);
        }
        let deadline = tokio::time::Instant::now() + call.timeout;
        let confirmation = self
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
        match tokio::time::timeout_at(deadline, confirmation).await {
            Ok(Ok(Confirmation::Ack(Some(_returned)))) => {
                return Err(CallError::NoQueue {
                    queue: self.queue.clone(),
                });
            }
            Ok(Ok(Confirmation::Nack(_))) => return Err(CallError::NotStored("the request")),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(broker("publishing the request")(error)),
            Err(_elapsed) => {} // diagnosed below, like a missing reply
        }

        match tokio::time::timeout_at(deadline, replies.recv()).await {
            Ok(Some(delivery)) => interpret_reply(delivery),
            Ok(None) => Err(CallError::Disconnected),
            Err(_elapsed) => Err(CallError::Timeout {
                waited: call.timeout,
                diagnosis: self.diagnose_silence().await,
            }),
        }
    }

    /// Publishes a module to every host of the queue (through the queue's
    /// deploy stream) and collects their answers until the expected number
    /// have answered or `deploy.timeout` passes.
    pub async fn deploy(&self, deploy: Deploy) -> Result<DeployReport, CallError> {
        self.deploy_with(deploy, |_| {}).await
    }

    /// Like [`RpcClient::deploy`], calling `on_answer` with each answer as
    /// it arrives (to show progress while slower hosts compile).
    ///
    /// Refuses, sending nothing, when the name breaks the naming rule, and
    /// when the request queue does not exist or has no consumer (a mistyped
    /// queue would otherwise keep the module in a stream for any host that
    /// later starts on that name), unless [`Deploy::allow_no_hosts`].
    pub async fn deploy_with(
        &self,
        deploy: Deploy,
        mut on_answer: impl FnMut(&DeployAnswer),
    ) -> Result<DeployReport, CallError> {
        check_procedure_name(&deploy.name).map_err(CallError::Invalid)?;
        let consumers = match self.consumer_count().await? {
            Some(count) if count > 0 => count as usize,
            _ if deploy.allow_no_hosts => 0,
            None => {
                return Err(CallError::NoQueue {
                    queue: self.queue.clone(),
                });
            }
            Some(_) => {
                return Err(CallError::NoHosts {
                    queue: self.queue.clone(),
                });
            }
        };
        let expected = deploy.expect_hosts.unwrap_or(consumers);

        // A dedicated channel with publisher confirms: a deploy is history,
        // so it is sent only once the broker has stored it.
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(broker("opening the deploy channel"))?;
        let stream = declare_deploy_stream(&channel, &self.queue)
            .await
            .map_err(broker(
                "declaring the deploy stream (RabbitMQ 3.9 or later has streams)",
            ))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker("enabling publisher confirms"))?;

        let digest = warren_protocol::module_digest(&deploy.module);
        let mut headers = FieldTable::default();
        set_header_text(&mut headers, HEADER_DEPLOY_NAME, &deploy.name);
        set_header_text(&mut headers, HEADER_DEPLOY_DIGEST, &digest);
        if let Some(key) = &deploy.key {
            set_header_text(
                &mut headers,
                HEADER_DEPLOY_KEY,
                &key.public_key().to_string(),
            );
            set_header_text(
                &mut headers,
                HEADER_DEPLOY_SIGNATURE,
                &key.sign(&deploy.name, &digest),
            );
        }
        let (waiting, mut answers) = self.expect_replies();
        let properties = BasicProperties::default()
            .with_reply_to(self.callback_queue.clone())
            .with_correlation_id(waiting.correlation_id.as_str().into())
            .with_headers(headers);
        let confirmation = channel
            .basic_publish(
                ShortString::default(),
                stream.as_str().into(),
                BasicPublishOptions::default(),
                &deploy.module,
                properties,
            )
            .await
            .map_err(broker("publishing the deploy"))?
            .await
            .map_err(broker("waiting for the broker to store the deploy"))?;
        close_quietly(channel.close(200, "deploy sent".into())).await;
        if !confirmation.is_ack() {
            return Err(CallError::NotStored("the deploy; nothing was deployed"));
        }

        let mut received = Vec::new();
        let deadline = tokio::time::Instant::now() + deploy.timeout;
        while received.len() < expected {
            match tokio::time::timeout_at(deadline, answers.recv()).await {
                Ok(Some(delivery)) => {
                    match serde_json::from_slice::<DeployAnswer>(&delivery.data) {
                        Ok(answer) => {
                            on_answer(&answer);
                            received.push(answer);
                        }
                        Err(error) => {
                            tracing::warn!(%error, "ignoring an unreadable deploy answer")
                        }
                    }
                }
                Ok(None) => return Err(CallError::Disconnected),
                Err(_elapsed) => break,
            }
        }
        Ok(DeployReport {
            answers: received,
            expected,
        })
    }

    /// How many consumers the request queue has; `None` if it does not exist.
    pub async fn consumer_count(&self) -> Result<Option<u32>, CallError> {
        // A passive declare of a missing queue closes the channel it runs
        // on, so ask on a throwaway channel.
        let probe = self
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

    /// Closes the connection (the callback queue goes with it).
    pub async fn close(self) {
        close_quietly(self.connection.close(200, "warren client done".into())).await;
        self.router.abort();
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

impl Drop for RpcClient {
    fn drop(&mut self) {
        self.router.abort();
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

/// Hands each reply to the call waiting for its `correlation_id`. When the
/// consumer ends, the pending senders drop and their calls see `Disconnected`.
async fn route_replies(mut consumer: lapin::Consumer, pending: Pending) {
    while let Some(Ok(delivery)) = consumer.next().await {
        let Some(id) = delivery.properties.correlation_id().as_ref() else {
            tracing::debug!("dropping a reply without correlation_id");
            continue;
        };
        let waiting = pending
            .lock()
            .expect("pending lock")
            .get(id.as_str())
            .cloned();
        match waiting {
            Some(sender) => {
                let _ = sender.send(delivery);
            }
            None => {
                tracing::debug!(correlation_id = %id, "dropping a reply no call is waiting for")
            }
        }
    }
    pending.lock().expect("pending lock").clear();
}

/// Maps a lapin error to [`CallError::Broker`], saying what the client was doing.
fn broker(context: &'static str) -> impl FnOnce(lapin::Error) -> CallError {
    move |source| CallError::Broker { context, source }
}

/// Closes best effort: lapin can wait forever for a close-ok that never
/// comes, and closing must not hang the caller.
async fn close_quietly<T, E>(closing: impl Future<Output = Result<T, E>>) {
    let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;
}

/// Turns a reply message into a [`Reply`] or the error it reports. A reply
/// without `x-rpc-status` (a plain tutorial server) counts as success.
fn interpret_reply(delivery: lapin::message::Delivery) -> Result<Reply, CallError> {
    let headers = delivery.properties.headers().as_ref();
    let procedure = header_text(headers, HEADER_PROCEDURE);
    let digest = header_text(headers, HEADER_PROCEDURE_DIGEST);
    if header_text(headers, HEADER_RPC_STATUS).as_deref() == Some(STATUS_ERROR) {
        let error = match ErrorBody::from_json(&delivery.data) {
            Some(body) => body.error,
            None => RpcError::new(
                header_text(headers, HEADER_RPC_ERROR)
                    .and_then(|kind| kind.parse().ok())
                    .unwrap_or(ErrorKind::Internal),
                String::from_utf8_lossy(&delivery.data).into_owned(),
            ),
        };
        return Err(CallError::Rpc {
            error,
            procedure,
            digest,
        });
    }
    Ok(Reply {
        body: delivery.data,
        procedure,
        digest,
    })
}
