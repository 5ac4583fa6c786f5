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
//! until its caller's turn ([`crate::callers::Holding`]): its request is
//! acked at once and its reply sent later, or at once when the host stops.
//!
//! In durable mode ([`QueueMode::Durable`]) the queue is a quorum queue,
//! replies are persistent, and "published" means confirmed by the broker:
//! the channel runs with publisher confirms and a request is acked only
//! after its reply's confirm. [`dead`] answers the callers of requests the
//! broker dead-lettered.

pub mod dead;
mod replies;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use futures_lite::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{DeliveryTag, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use std::panic::AssertUnwindSafe;

use futures_lite::FutureExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use warren_protocol::{
    ERROR_CONTENT_TYPE, ErrorBody, ErrorKind, HEADER_PROCEDURE, HEADER_PROCEDURE_DIGEST,
    HEADER_RETRY_AFTER_MS, HEADER_RPC_ERROR, HEADER_RPC_STATUS, QueueMode, STATUS_ERROR, STATUS_OK,
    declare_request_queue, explain_queue_mismatch, header_text, header_text_strict, read_deadline,
    set_header_text,
};

use warren_protocol::trace::{HEADER_TRACEPARENT, TraceParent};

use self::replies::{Answer, Replies};
use crate::callers::{Caller, Hold};
use crate::dispatch::{Dispatcher, Handled, Outcome};
use crate::shutdown::Shutdown;
use crate::telemetry;
use warren_protocol::broker::{PERSISTENT, close_quietly};

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
                Some(why) => anyhow::Error::from(crate::session::SetupRefused(why)),
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
        let (replies, replying) = Replies::start(self.channel.clone(), self.prefetch);
        // Cancelled when this loop ends: refusals held until their caller's
        // turn are sent at once.
        let stopping = CancellationToken::new();
        let result = loop {
            tokio::select! {
                _ = shutdown.recv() => break Ok(()),
                delivery = self.consumer.next() => match delivery {
                    Some(Ok(delivery)) => {
                        replies.received();
                        let (dispatcher, replies) = (dispatcher.clone(), replies.clone());
                        let durable = self.durable;
                        callers.check(&delivery.properties, durable);
                        let stopping = stopping.clone();
                        in_flight.spawn(async move {
                            let tag = delivery.delivery_tag;
                            // Boxed where it starts: the request's future is
                            // kilobytes (wasmtime's state machines), and
                            // spawning copies what it is given.
                            let answering = Box::pin(answer(dispatcher, delivery, durable));
                            let answered = match AssertUnwindSafe(answering).catch_unwind().await {
                                Ok(answered) => answered,
                                Err(panic) => {
                                    let why = panic
                                        .downcast_ref::<&str>()
                                        .map(|s| s.to_string())
                                        .or_else(|| panic.downcast_ref::<String>().cloned())
                                        .unwrap_or_default();
                                    tracing::error!("a request task panicked: {why}; the request goes back to the queue");
                                    Answered::Now(Answer::Requeue(tag))
                                }
                            };
                            match answered {
                                Answered::Now(answer) => replies.send(answer),
                                Answered::Later { tag, reply, hold } => {
                                    replies.send(Answer::Ack(tag));
                                    tokio::select! {
                                        _ = tokio::time::sleep_until(hold.until.into()) => {}
                                        _ = stopping.cancelled() => {}
                                    }
                                    replies.send(reply);
                                }
                            }
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

/// What a request task hands to [`replies`], and when.
enum Answered {
    /// This, now.
    Now(Answer),
    /// A refusal held until its caller's turn to try again: ack the
    /// request `tag` now, and hand over `reply` at `hold.until` (or as
    /// soon as the host stops taking requests).
    Later {
        tag: DeliveryTag,
        reply: Answer,
        hold: Hold,
    },
}

/// Answers one request: runs it and makes the reply message, for
/// [`replies`] to publish (or says there is no one to reply to).
async fn answer(dispatcher: Arc<Dispatcher>, delivery: Delivery, durable: bool) -> Answered {
    let Delivery {
        delivery_tag,
        properties,
        data,
        redelivered,
        ..
    } = delivery;
    let correlation_id = properties.correlation_id().clone();
    let requested = header_text_strict(properties.headers().as_ref(), HEADER_PROCEDURE);
    // The broker checked it: a publisher can set only its own user.
    let user_id = properties.user_id().clone();
    let caller = Caller::from_user_id(user_id.as_ref().map(ShortString::as_str));
    let span = tracing::info_span!(
        "request",
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        messaging.system = "rabbitmq",
        messaging.message.conversation_id = correlation_id.as_ref().map(ShortString::as_str),
        messaging.rabbitmq.delivery_tag = delivery_tag,
        procedure = requested.as_ref().ok().and_then(Option::as_deref),
        caller = caller.label(),
        bytes = data.len(),
        redelivered,
    );
    let trace = telemetry::continue_trace(&span, caller_trace(&properties));
    span.record("trace_id", tracing::field::display(trace.trace_id_hex()));
    span.record("span_id", tracing::field::display(trace.span_id_hex()));
    async move {
        let Some(reply_to) = properties.reply_to().clone() else {
            tracing::warn!("request has no reply_to, so there is no one to answer; acked and dropped");
            return Answered::Now(Answer::Ack(delivery_tag));
        };
        let started = Instant::now();
        let label = correlation_id
            .as_ref()
            .map_or_else(|| format!("delivery-{delivery_tag}"), |id| id.to_string());
        let deadline = read_deadline(properties.headers().as_ref());
        let requested = requested.as_ref().map(Option::as_deref).map_err(String::as_str);
        let (reply, hold) = match dispatcher
            .handle(requested, caller, data, &label, deadline)
            .await {
            Handled::Answered(reply) => (reply, None),
            Handled::Held(reply, hold) => (reply, Some(hold)),
            Handled::CallerGone { late, .. } => {
                tracing::info!(
                    late_ms = late.as_millis() as u64,
                    "not run: its caller stopped waiting before a slot was free (x-deadline)"
                );
                return Answered::Now(Answer::Ack(delivery_tag));
            }
        };
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        match &reply.result {
            Ok(body) => tracing::debug!(elapsed_ms, reply_bytes = body.len(), "answered"),
            // A flood is counted in metrics, not logged line by line.
            Err(error) if error.kind == ErrorKind::RateLimited => {
                tracing::debug!(elapsed_ms, kind = %error.kind, "answered with error: {}", error.message)
            }
            Err(error) => tracing::info!(elapsed_ms, kind = %error.kind, "answered with error: {}", error.message),
        }
        let (body, mut properties) = reply_message(reply, correlation_id, &trace);
        if durable {
            properties = properties.with_delivery_mode(PERSISTENT);
        }
        let reply = |tag| Answer::Reply {
            tag,
            to: reply_to,
            body,
            properties,
            span: tracing::Span::current(),
        };
        match hold {
            None => Answered::Now(reply(Some(delivery_tag))),
            Some(hold) => Answered::Later {
                tag: delivery_tag,
                reply: reply(None),
                hold,
            },
        }
    }
    .instrument(span)
    .await
}

/// The caller's span, from the request's `traceparent` (none, or a bad
/// one, starts a new trace).
pub(crate) fn caller_trace(properties: &BasicProperties) -> Option<TraceParent> {
    header_text(properties.headers().as_ref(), HEADER_TRACEPARENT)
        .and_then(|text| TraceParent::parse(&text))
}

/// The body and properties of a reply message, as the wire contract says,
/// carrying `trace` (this host's span) as its `traceparent`. Takes the
/// reply by value so a success body (up to --max-reply-bytes) goes out
/// without a copy.
pub(crate) fn reply_message(
    reply: Outcome,
    correlation_id: Option<ShortString>,
    trace: &TraceParent,
) -> (Vec<u8>, BasicProperties) {
    let mut headers = FieldTable::default();
    set_header_text(&mut headers, HEADER_TRACEPARENT, &trace.to_string());
    if let Some(name) = &reply.procedure {
        set_header_text(&mut headers, HEADER_PROCEDURE, name);
    }
    if let Some(digest) = &reply.digest {
        set_header_text(&mut headers, HEADER_PROCEDURE_DIGEST, digest);
    }
    let mut properties = BasicProperties::default();
    if let Some(id) = correlation_id {
        properties = properties.with_correlation_id(id);
    }
    let body = match reply.result {
        Ok(body) => {
            set_header_text(&mut headers, HEADER_RPC_STATUS, STATUS_OK);
            body
        }
        Err(error) => {
            set_header_text(&mut headers, HEADER_RPC_STATUS, STATUS_ERROR);
            set_header_text(&mut headers, HEADER_RPC_ERROR, error.kind.as_str());
            if let Some(wait) = error.retry_after_ms {
                set_header_text(&mut headers, HEADER_RETRY_AFTER_MS, &wait.to_string());
            }
            properties = properties.with_content_type(ERROR_CONTENT_TYPE.into());
            ErrorBody { error }.to_json()
        }
    };
    (body, properties.with_headers(headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_replies_carry_kind_and_json() {
        let reply = Outcome {
            procedure: Some("fib".into()),
            digest: Some("sha256:00".into()),
            result: Err(warren_protocol::RpcError::new(
                warren_protocol::ErrorKind::ProcedureError,
                "bad",
            )),
        };
        let trace = TraceParent::new_root();
        let (body, properties) = reply_message(reply, Some("c1".into()), &trace);
        assert_eq!(
            header_text(properties.headers().as_ref(), HEADER_TRACEPARENT),
            Some(trace.to_string())
        );
        let headers = properties.headers().as_ref();
        assert_eq!(
            header_text(headers, HEADER_RPC_STATUS).as_deref(),
            Some(STATUS_ERROR)
        );
        assert_eq!(
            header_text(headers, HEADER_RPC_ERROR).as_deref(),
            Some("procedure-error")
        );
        assert_eq!(
            header_text(headers, HEADER_PROCEDURE).as_deref(),
            Some("fib")
        );
        assert_eq!(
            properties.content_type().as_ref().map(ShortString::as_str),
            Some(ERROR_CONTENT_TYPE)
        );
        assert_eq!(
            properties
                .correlation_id()
                .as_ref()
                .map(ShortString::as_str),
            Some("c1")
        );
        assert_eq!(
            body,
            br#"{"error":{"kind":"procedure-error","message":"bad"}}"#.to_vec()
        );
    }
}
