//! The request path: consume the request queue, answer each request, ack.
//!
//! The wire pattern is the RabbitMQ tutorial's, unchanged: the queue is
//! declared exactly as `rpc_server.py` declares it (so both can serve it), a
//! reply goes through the default exchange to `reply_to` with the request's
//! `correlation_id`, and the request is acked only after its reply is
//! published. Each request runs in a task of its own; [`replies`] publishes
//! what they answer and batches the acks. A request whose reply could not
//! be published is returned to the queue, so the broker redelivers it
//! rather than losing it. The one exception is a refusal over quota held
//! until its caller's turn ([`crate::callers::ReplyHolder`]): its request is
//! acked at once and its reply sent later, or at once when the host stops.
//!
//! In durable mode ([`QueueMode::Durable`]) the queue is a quorum queue,
//! replies are persistent, and "published" means confirmed by the broker:
//! the channel runs with publisher confirms and a request is acked only
//! after its reply's confirm. [`dead`] answers the callers of requests the
//! broker dead-lettered.

pub mod dead;
mod message;
mod replies;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use futures_lite::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use std::panic::AssertUnwindSafe;

use futures_lite::FutureExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use warren_protocol::broker::{PERSISTENT, close_quietly};
use warren_protocol::{ErrorKind, QueueMode, declare_request_queue, explain_queue_mismatch};

use self::message::{Request, reply_message};
use self::replies::{Answer, Replies};
use crate::causes::SetupRefused;
use crate::dispatch::{Dispatcher, Reply, Verdict};
use crate::shutdown::Shutdown;

/// The request queue, declared and ready to be consumed.
pub struct RequestQueue {
    channel: Channel,
    queue: String,
    durable: bool,
    prefetch: u16,
}

impl RequestQueue {
    /// Declares `queue` in `mode`, on a channel of its own that holds at
    /// most `prefetch` unacked requests (with publisher confirms in durable
    /// mode). Declaring it before the host consumes means callers' requests
    /// wait in it meanwhile.
    pub async fn declare(
        connection: &Connection,
        queue: &str,
        mode: QueueMode,
        prefetch: u16,
    ) -> anyhow::Result<Self> {
        let channel = declare_request_queue(connection, queue, mode)
            .await
            .map_err(|error| match explain_queue_mismatch(&error, queue, mode) {
                Some(why) => anyhow::Error::from(SetupRefused(why)),
                None => anyhow::Error::from(error).context(format!("declaring queue {queue:?}")),
            })?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .context("setting the prefetch count")?;
        let durable = mode != QueueMode::Tutorial;
        if durable {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .context("enabling publisher confirms")?;
        }
        Ok(RequestQueue {
            channel,
            queue: queue.to_owned(),
            durable,
            prefetch,
        })
    }

    /// Starts taking requests.
    pub async fn consume(self) -> anyhow::Result<Requests> {
        let consumer = self
            .channel
            .basic_consume(
                self.queue.as_str().into(),
                ShortString::default(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming queue {:?}", self.queue))?;
        Ok(Requests {
            channel: self.channel,
            consumer,
            durable: self.durable,
            prefetch: self.prefetch,
        })
    }
}

/// Requests arriving from the queue.
pub struct Requests {
    channel: Channel,
    consumer: Consumer,
    /// Durable mode: persistent replies, acked after their confirm.
    durable: bool,
    /// The consumer's prefetch window (how far acks may be batched).
    prefetch: u16,
}

impl Requests {
    /// Answers requests until shutdown (`Ok`) or until the connection fails
    /// (`Err`). On shutdown it stops taking requests, finishes and acks the
    /// ones it has, then closes its channel; unstarted prefetched requests
    /// return to the queue for another host.
    pub async fn serve(
        mut self,
        dispatcher: Arc<Dispatcher>,
        mut shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        // Tracks the request tasks without hearing from each as it ends (a
        // JoinSet would wake this loop once per request).
        let in_flight = TaskTracker::new();
        let mut callers = CallerModes::default();
        // Cancelled when this loop ends: refusals held until their caller's
        // turn are sent at once.
        let stopping = CancellationToken::new();
        let (replies, replying) =
            Replies::start(self.channel.clone(), self.prefetch, stopping.clone());
        let result = loop {
            tokio::select! {
                _ = shutdown.recv() => break Ok(()),
                delivery = self.consumer.next() => match delivery {
                    Some(Ok(delivery)) => {
                        replies.received();
                        let (dispatcher, replies) = (dispatcher.clone(), replies.clone());
                        let durable = self.durable;
                        callers.check(&delivery.properties, durable);
                        in_flight.spawn(async move {
                            replies.send(answer_or_requeue(dispatcher, delivery, durable).await);
                        });
                    }
                    Some(Err(error)) => break Err(anyhow::Error::from(error).context("receiving requests")),
                    None => break Err(anyhow::anyhow!("the broker cancelled the consumer")),
                },
            }
        };
        if result.is_ok() {
            let tag = self.consumer.tag();
            if let Err(error) = self
                .channel
                .basic_cancel(tag, BasicCancelOptions::default())
                .await
            {
                tracing::warn!(%error, "cancelling the consumer");
            }
            tracing::info!(in_flight = in_flight.len(), "finishing requests in flight");
        }
        stopping.cancel();
        in_flight.close();
        in_flight.wait().await;
        drop(replies);
        let _ = replying.await;
        close_quietly(self.channel.close(200, "warren-host stopping".into())).await;
        result
    }
}

/// Notices callers whose mode is not the host's: a persistent request (a
/// `--durable` caller) on a default-mode host, or a transient one on a
/// durable host. It works, but not as durably as one side thinks: said
/// once each way.
#[derive(Default)]
struct CallerModes {
    said_durable_caller: bool,
    said_default_caller: bool,
}

impl CallerModes {
    fn check(&mut self, request: &BasicProperties, durable_host: bool) {
        let persistent = *request.delivery_mode() == Some(PERSISTENT);
        if persistent && !durable_host && !self.said_durable_caller {
            self.said_durable_caller = true;
            tracing::warn!(
                "a --durable caller sends requests to this host, which is not durable: its \
                 requests and replies are lost if the broker restarts. Start the hosts with \
                 --durable (a new queue name, or delete the classic one), or drop --durable \
                 from the caller"
            );
        } else if !persistent && durable_host && !self.said_default_caller {
            self.said_default_caller = true;
            tracing::warn!(
                "a caller without --durable sends requests to this durable host: its requests \
                 are not persistent and its replies go to a queue that dies with its \
                 connection, so its calls can be lost in a broker restart; give the caller \
                 --durable (the seed's rpc_client.py cannot)"
            );
        }
    }
}

/// Answers one request, for [`replies`] to publish and ack; a request
/// whose task panics goes back to the queue.
async fn answer_or_requeue(
    dispatcher: Arc<Dispatcher>,
    delivery: Delivery,
    durable: bool,
) -> Answer {
    let tag = delivery.delivery_tag;
    // Boxed where it starts: the request's future is kilobytes (wasmtime's
    // state machines), and spawning copies what it is given.
    let answering = Box::pin(answer(dispatcher, Request::read(delivery), durable));
    AssertUnwindSafe(answering)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!("a request task panicked: {why}; the request goes back to the queue");
            Answer::Requeue(tag)
        })
}

/// Answers one request: has dispatch decide it and makes the reply
/// message, under the request's span.
async fn answer(dispatcher: Arc<Dispatcher>, request: Request, durable: bool) -> Answer {
    let (span, trace) = request.span();
    let Request {
        tag,
        reply_to,
        correlation_id,
        call,
        ..
    } = request;
    async move {
        let Some(to) = reply_to else {
            tracing::warn!(
                "request has no reply_to, so there is no one to answer; acked and dropped"
            );
            return Answer::Ack(tag);
        };
        let started = Instant::now();
        let (reply, held) = match dispatcher.handle(call).await {
            Verdict::Reply(reply) => (reply, None),
            Verdict::Held(reply, held) => (reply, Some(held)),
            Verdict::CallerGone { late, .. } => {
                tracing::info!(
                    late_ms = late.as_millis() as u64,
                    "not run: its caller stopped waiting before a slot was free (x-deadline)"
                );
                return Answer::Ack(tag);
            }
        };
        log_reply(&reply, started.elapsed());
        let (body, mut properties) = reply_message(reply, correlation_id, &trace);
        if durable {
            properties = properties.with_delivery_mode(PERSISTENT);
        }
        Answer::Reply {
            tag,
            to,
            body,
            properties,
            span: tracing::Span::current(),
            held,
        }
    }
    .instrument(span)
    .await
}

/// One debug line per reply, one info line per error (a flood of
/// `rate-limited` is counted in metrics, not logged line by line).
fn log_reply(reply: &Reply, elapsed: std::time::Duration) {
    let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
    match &reply.result {
        Ok(body) => tracing::debug!(elapsed_ms, reply_bytes = body.len(), "answered"),
        Err(error) if error.kind == ErrorKind::RateLimited => {
            tracing::debug!(elapsed_ms, kind = %error.kind, "answered with error: {}", error.message)
        }
        Err(error) => {
            tracing::info!(elapsed_ms, kind = %error.kind, "answered with error: {}", error.message)
        }
    }
}
