//! Durable mode's dead letters: requests the broker gave up on.
//!
//! A request delivered more than `--delivery-limit` times without an ack (it
//! crashed its hosts, or kept them from answering) is moved by the broker to
//! `QUEUE.dead` instead of being delivered again. Every durable host reads
//! that queue and tells each such request's caller, with a `delivery-limit`
//! error reply, that it will not be answered; the request is not run. It is
//! logged (procedure, correlation id) and then dropped, so the queue does
//! not grow without bound.

use anyhow::Context as _;
use futures_lite::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, Consumer};
use warren_protocol::{ErrorKind, HEADER_PROCEDURE, RpcError, dead_letter_queue, header_text};

use super::message::{caller_trace, reply_message};
use crate::dispatch::Reply;
use crate::shutdown::Shutdown;
use warren_protocol::broker::{PERSISTENT, close_quietly, publish_to};

/// The dead-letter queue of one request queue, being read.
pub struct DeadLetters {
    channel: Channel,
    consumer: Consumer,
    delivery_limit: u32,
}

impl DeadLetters {
    /// Starts reading `QUEUE.dead` (declared with the request queue).
    pub async fn consume(
        connection: &Connection,
        queue: &str,
        delivery_limit: u32,
    ) -> anyhow::Result<Self> {
        let dead = dead_letter_queue(queue);
        let channel = connection
            .create_channel()
            .await
            .context("opening the dead-letter channel")?;
        channel
            .basic_qos(16, BasicQosOptions::default())
            .await
            .context("setting the dead-letter prefetch")?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enabling publisher confirms for dead-letter replies")?;
        let consumer = channel
            .basic_consume(
                dead.as_str().into(),
                ShortString::default(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming the dead-letter queue {dead:?}"))?;
        Ok(DeadLetters {
            channel,
            consumer,
            delivery_limit,
        })
    }

    /// Answers dead requests until shutdown or until the channel fails.
    pub async fn serve(mut self, mut shutdown: Shutdown) {
        loop {
            let delivery = tokio::select! {
                _ = shutdown.recv() => break,
                next = self.consumer.next() => match next {
                    Some(Ok(delivery)) => delivery,
                    _ => break,
                },
            };
            if let Err(error) = self.answer(delivery).await {
                tracing::warn!("answering a dead-lettered request: {error:#}");
                break;
            }
        }
        close_quietly(self.channel.close(200, "warren-host stopping".into())).await;
    }

    /// Tells the caller (if the request has a `reply_to`), then acks.
    async fn answer(&self, delivery: Delivery) -> anyhow::Result<()> {
        let Delivery {
            properties, acker, ..
        } = delivery;
        let procedure = header_text(properties.headers().as_ref(), HEADER_PROCEDURE);
        let correlation_id = properties.correlation_id().clone();
        tracing::warn!(
            procedure = procedure.as_deref().unwrap_or("(default)"),
            correlation_id = correlation_id.as_ref().map(ShortString::as_str),
            delivery_limit = self.delivery_limit,
            "a request reached the delivery limit and was dead-lettered; its caller is told and it is dropped"
        );
        if let Some(reply_to) = properties.reply_to().clone() {
            let reply = Reply {
                procedure,
                digest: None,
                result: Err(RpcError::new(
                    ErrorKind::DeliveryLimit,
                    format!(
                        "the request was delivered {} times without being answered (it may \
                         crash or stall the hosts that run it; --delivery-limit {} allows {} \
                         redeliveries); it was dead-lettered and is not run again",
                        u64::from(self.delivery_limit) + 1,
                        self.delivery_limit,
                        self.delivery_limit,
                    ),
                )),
            };
            let trace = caller_trace(&properties)
                .map_or_else(warren_protocol::trace::TraceParent::new_root, |caller| {
                    caller.child()
                });
            let (body, reply_properties) = reply_message(reply, correlation_id, &trace);
            publish_to(
                &self.channel,
                reply_to,
                &body,
                reply_properties.with_delivery_mode(PERSISTENT),
            )
            .await
            .context("publishing the delivery-limit reply")?;
        }
        acker
            .ack(BasicAckOptions::default())
            .await
            .context("acking the dead-lettered request")?;
        Ok(())
    }
}
