//! One connection's worth of a client: the connection, a channel with
//! publisher confirms, the callback queue and the task that routes replies
//! from it to the calls waiting for them.
//!
//! A link breaks when its connection does; [`crate::RpcClient`] then opens
//! a new one for the next call. What becomes of calls waiting on a broken
//! link depends on the callback queue:
//! - by default it is exclusive and server-named, as in the tutorial, and
//!   dies with the connection, so waiting calls fail at once
//!   ([`crate::CallError::Disconnected`]) instead of waiting out their
//!   timeout;
//! - in durable mode it is a named quorum queue that outlives connections,
//!   so replies published meanwhile wait in it, and the calls keep waiting
//!   while the client reconnects to it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use warren_protocol::broker::{Brokers, close_quietly, ends_connection};

use crate::CallError;

/// Calls (and deploys) waiting for replies, by `correlation_id`. A deploy
/// gets one reply per host, so each entry is a stream, not a single value.
pub(crate) type Pending =
    Arc<Mutex<HashMap<String, mpsc::UnboundedSender<lapin::message::Delivery>>>>;

/// How long a durable callback queue outlives its last consumer: a client
/// that went away for good leaves nothing behind for longer than this.
const DURABLE_CALLBACK_EXPIRY: Duration = Duration::from_secs(30 * 60);

/// The callback queue a client's replies come to.
#[derive(Debug, Clone)]
pub(crate) enum CallbackQueue {
    /// Exclusive and server-named, gone with the connection.
    Private,
    /// A durable quorum queue of this name, kept across reconnections.
    Durable(String),
}

/// A live connection with its channel and reply router.
pub(crate) struct Link {
    pub(crate) connection: Connection,
    pub(crate) channel: Channel,
    pub(crate) callback_queue: ShortString,
    /// The broker user this link logged in as, which every request names
    /// as its `user_id` (the broker checks it); `None` when the user is a
    /// TLS client certificate's (`auth_mechanism=external`).
    pub(crate) user: Option<ShortString>,
    /// Turns `true` when the reply consumer ends: the link is broken.
    broken: watch::Receiver<bool>,
    router: JoinHandle<()>,
}

impl Link {
    /// Connects, opens a channel with confirms (so that a request the broker
    /// cannot route comes back at once), declares the callback queue and
    /// starts routing its replies into `pending`.
    pub(crate) async fn open(
        brokers: &Brokers,
        timeout: Duration,
        callback: &CallbackQueue,
        pending: Pending,
    ) -> Result<Self, CallError> {
        let (connection, node) = brokers
            .connect(timeout, |error| tracing::debug!("{error}"))
            .await
            .map_err(CallError::from)?;
        let opened = async {
            let channel = connection
                .create_channel()
                .await
                .map_err(broker("opening a channel"))?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(broker("enabling publisher confirms"))?;
            let (name, options, arguments) = match callback {
                // Server-named, exclusive, auto-deleted: private to this
                // client and gone when it disconnects.
                CallbackQueue::Private => (
                    ShortString::default(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                ),
                CallbackQueue::Durable(name) => {
                    let mut arguments = FieldTable::default();
                    arguments.insert(
                        "x-queue-type".into(),
                        AMQPValue::LongString("quorum".into()),
                    );
                    arguments.insert(
                        "x-expires".into(),
                        AMQPValue::LongLongInt(DURABLE_CALLBACK_EXPIRY.as_millis() as i64),
                    );
                    let options = QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    };
                    (name.as_str().into(), options, arguments)
                }
            };
            let declared = channel
                .queue_declare(name, options, arguments)
                .await
                .map_err(broker("declaring the callback queue"))?;
            let callback_queue = declared.name().clone();
            let durable = matches!(callback, CallbackQueue::Durable(_));
            let consumer = channel
                .basic_consume(
                    callback_queue.clone(),
                    ShortString::default(),
                    BasicConsumeOptions {
                        // Durable mode acks each reply once it is handed
                        // over, so one in flight when the link breaks is
                        // delivered again, not lost.
                        no_ack: !durable,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(broker("consuming the callback queue"))?;
            Ok((channel, callback_queue, consumer, durable))
        }
        .await;
        let (channel, callback_queue, consumer, durable) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                close_quietly(connection.close(200, "warren client setup failed".into())).await;
                return Err(error);
            }
        };
        tracing::debug!(broker = %node, "connected");
        let (broken_tx, broken) = watch::channel(false);
        let events = connection.events_listener();
        let router = tokio::spawn(route_replies(consumer, events, pending, durable, broken_tx));
        Ok(Link {
            user: warren_protocol::amqp_user(&node).map(ShortString::from),
            connection,
            channel,
            callback_queue,
            broken,
            router,
        })
    }

    /// Whether the connection under this link has failed (as the router
    /// saw it, or as lapin knows it, which can be sooner).
    pub(crate) fn is_broken(&self) -> bool {
        *self.broken.borrow() || !self.connection.status().connected()
    }

    /// Resolves once the link breaks.
    pub(crate) async fn wait_broken(&self) {
        let mut broken = self.broken.clone();
        let _ = broken.wait_for(|broken| *broken).await;
    }

    /// Closes the connection (a private callback queue goes with it).
    pub(crate) async fn close(&self) {
        close_quietly(self.connection.close(200, "warren client done".into())).await;
        self.router.abort();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.router.abort();
    }
}

/// Hands each reply to the call waiting for its `correlation_id`. When the
/// consumer ends or the connection reports an error (whichever lapin says
/// first: a reset socket does not always end the consumer), the link is
/// marked broken and, unless the callback queue is durable, the pending
/// senders drop so their calls fail at once.
async fn route_replies(
    mut consumer: lapin::Consumer,
    events: impl futures_lite::Stream<Item = lapin::Event> + Send + 'static,
    pending: Pending,
    durable: bool,
    broken: watch::Sender<bool>,
) {
    let mut events = std::pin::pin!(events);
    loop {
        let delivery = tokio::select! {
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => delivery,
                _ => break,
            },
            event = events.next() => match event {
                Some(lapin::Event::Error(error)) if ends_connection(&error) => {
                    tracing::debug!("connection failed: {error}");
                    break;
                }
                // A channel the broker closed (a declaration it refused,
                // say): the connection and this consumer go on.
                Some(lapin::Event::Error(error)) => {
                    tracing::debug!("a channel failed: {error}");
                    continue;
                }
                Some(_) => continue,
                None => break,
            },
        };
        let acker = durable.then(|| delivery.acker.clone());
        match delivery.properties.correlation_id().clone() {
            None => tracing::debug!("dropping a reply without correlation_id"),
            Some(id) => {
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
        }
        if let Some(acker) = acker {
            // Not awaited here: on a connection that just died an ack can
            // wait long, and routing must go on (or notice the failure).
            tokio::spawn(async move {
                close_quietly(acker.ack(BasicAckOptions::default())).await;
            });
        }
    }
    broken.send_replace(true);
    if !durable {
        pending.lock().expect("pending lock").clear();
    }
}

/// Maps a lapin error to [`CallError::Broker`], saying what the client was doing.
pub(crate) fn broker(context: &'static str) -> impl FnOnce(lapin::Error) -> CallError {
    move |source| CallError::Broker { context, source }
}
