//! Fleet status: a host's answer to `warren status`.
//!
//! Every session binds an exclusive queue of its own to the request queue's
//! control exchange (`warren_protocol::status`) and answers each status
//! request with a [`HostStatus`]: who it is, where it is connected, how
//! busy it is, what it serves. A control message never makes the host run
//! anything; kinds other than `status` are ignored.

use std::sync::Arc;

use anyhow::Context as _;
use futures_lite::StreamExt as _;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use warren_protocol::header_text;
use warren_protocol::status::{
    CONTROL_STATUS, HEADER_CONTROL, HostStatus, declare_control_exchange,
};

use crate::deploy::versions::Versions;
use crate::metrics::Metrics;
use crate::modules::Serving;
use crate::shutdown::Shutdown;
use warren_protocol::broker::{close_quietly, publish_to};

/// What a host reports about itself; the same for every session.
pub struct StatusSource {
    /// `--host-id`.
    pub host_id: String,
    /// The request queue.
    pub queue: String,
    /// `--durable`.
    pub durable: bool,
    /// Counts, the connected node and the uptime.
    pub metrics: Arc<Metrics>,
    /// What is served.
    pub serving: Arc<Serving>,
    /// The versions kept for rollback.
    pub versions: Arc<Versions>,
}

impl std::fmt::Debug for StatusSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusSource")
            .field("host_id", &self.host_id)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl StatusSource {
    /// The host's status right now.
    pub fn status(&self) -> HostStatus {
        let totals = self.metrics.totals();
        let (in_flight, concurrency) = self.metrics.load();
        HostStatus {
            host: self.host_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: self.metrics.uptime().as_secs(),
            node: self.metrics.node().unwrap_or_default(),
            queue: self.queue.clone(),
            durable: self.durable,
            concurrency: concurrency.max(0) as u64,
            in_flight: in_flight.max(0) as u64,
            served: totals.served,
            failed: totals.failed,
            forbidden: totals.forbidden,
            rate_limited: totals.rate_limited,
            procedures: self.serving.list(),
            versions: self
                .versions
                .list(|name| self.serving.get(name).map(|p| p.version())),
        }
    }
}

/// The control exchange, being listened to on one connection.
pub struct Control {
    channel: Channel,
    consumer: Consumer,
}

impl Control {
    /// Declares the control exchange of `queue` and starts listening to it
    /// through a private queue (gone with the connection).
    pub async fn listen(connection: &Connection, queue: &str) -> anyhow::Result<Self> {
        let channel = connection
            .create_channel()
            .await
            .context("opening the control channel")?;
        let exchange = declare_control_exchange(&channel, queue)
            .await
            .context("declaring the control exchange")?;
        let private = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let inbox = channel
            .queue_declare(ShortString::default(), private, FieldTable::default())
            .await
            .context("declaring the control queue")?;
        channel
            .queue_bind(
                inbox.name().clone(),
                exchange.as_str().into(),
                ShortString::default(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("binding the control queue")?;
        let consumer = channel
            .basic_consume(
                inbox.name().clone(),
                ShortString::default(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .context("consuming the control queue")?;
        Ok(Control { channel, consumer })
    }

    /// Answers status requests until shutdown or until the connection ends.
    pub async fn serve(mut self, source: Arc<StatusSource>, mut shutdown: Shutdown) {
        loop {
            let delivery = tokio::select! {
                _ = shutdown.recv() => break,
                delivery = self.consumer.next() => match delivery {
                    Some(Ok(delivery)) => delivery,
                    _ => break,
                },
            };
            let properties = &delivery.properties;
            let asked = header_text(properties.headers().as_ref(), HEADER_CONTROL);
            let Some(reply_to) = properties.reply_to().clone() else {
                continue;
            };
            if asked.as_deref() != Some(CONTROL_STATUS) {
                tracing::debug!(
                    ?asked,
                    "ignoring a control message that is not a status request"
                );
                continue;
            }
            let body = serde_json::to_vec(&source.status()).expect("status serializes");
            let mut reply = BasicProperties::default().with_content_type("application/json".into());
            if let Some(id) = properties.correlation_id().clone() {
                reply = reply.with_correlation_id(id);
            }
            if let Err(error) = publish_to(&self.channel, reply_to, &body, reply).await {
                tracing::debug!("answering a status request: {error:#}");
            }
        }
        close_quietly(self.channel.close(200, "warren-host stopping".into())).await;
    }
}
