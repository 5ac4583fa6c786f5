//! The deploy stream on the broker: read deploys, apply them through the
//! [`Deployer`], answer each deployer.
//!
//! A host reads the stream in two phases on every connection:
//! - **catching up**: it appends a sync marker and applies everything
//!   before the marker as one batch, before it takes any request, so a
//!   request never meets a host that has not yet applied a deploy it could
//!   know about. Per name, only the newest good deploy of the batch is
//!   compiled.
//! - **following**: it applies deploys as they come, a burst at a time.
//!
//! It remembers the offset it has read up to ([`StreamPosition`]), so after a
//! reconnect it resumes there instead of replaying the whole history again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures_lite::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use warren_protocol::deploy::{
    DeployAnswer, HEADER_DEPLOY_DIGEST, HEADER_DEPLOY_KEY, HEADER_DEPLOY_NAME,
    HEADER_DEPLOY_SEQUENCE, HEADER_DEPLOY_SIGNATURE, HEADER_DEPLOY_SYNC, HEADER_STREAM_OFFSET,
    declare_deploy_stream, deploy_stream,
};
use warren_protocol::{header_text, set_header_text};

use super::{DeployRequest, Deployer};
use crate::broker::close_quietly;
use crate::shutdown::Shutdown;

/// Deploys read from the stream ahead of the one being applied.
const DEPLOY_PREFETCH: u16 = 16;
/// Quiet time that ends a burst of live deploys.
const DEPLOY_SETTLE: Duration = Duration::from_millis(200);

/// The offset of the last stream message this host has handled, kept across
/// reconnections.
#[derive(Debug, Clone, Default)]
pub struct StreamPosition(Arc<Mutex<Option<u64>>>);

impl StreamPosition {
    fn get(&self) -> Option<u64> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn advance(&self, offset: Option<u64>) {
        if let Some(offset) = offset {
            let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
            *last = Some(last.map_or(offset, |last| last.max(offset)));
        }
    }
}

/// The deploy stream of one queue, being read on one connection.
pub struct DeployStream {
    channel: Channel,
    consumer: Consumer,
    stream: String,
    position: StreamPosition,
}

impl DeployStream {
    /// Declares the deploy stream of `queue` and starts reading it after
    /// `position` (from its start the first time).
    pub async fn open(
        connection: &Connection,
        queue: &str,
        position: StreamPosition,
    ) -> anyhow::Result<Self> {
        let channel = connection
            .create_channel()
            .await
            .context("opening the deploy channel")?;
        let stream = declare_deploy_stream(&channel, queue)
            .await
            .with_context(|| {
                format!(
                    "declaring the deploy stream {:?} (RabbitMQ 3.9 or later has streams)",
                    deploy_stream(queue)
                )
            })?;
        // Streams require a prefetch limit and manual acks.
        channel
            .basic_qos(DEPLOY_PREFETCH, BasicQosOptions::default())
            .await
            .context("setting the deploy prefetch")?;
        let start = match position.get() {
            None => AMQPValue::LongString("first".into()),
            Some(last) => AMQPValue::LongLongInt(i64::try_from(last + 1).unwrap_or(i64::MAX)),
        };
        let mut arguments = FieldTable::default();
        arguments.insert("x-stream-offset".into(), start);
        let consumer = channel
            .basic_consume(
                stream.as_str().into(),
                ShortString::default(),
                BasicConsumeOptions::default(),
                arguments,
            )
            .await
            .with_context(|| format!("reading the deploy stream {stream:?}"))?;
        Ok(DeployStream {
            channel,
            consumer,
            stream,
            position,
        })
    }

    /// Appends a sync marker and applies every deploy before it. When this
    /// returns, the host serves everything the stream held when it
    /// connected. `history` says whether these deploys are the history a
    /// starting host replays (their refusals were reported when they were
    /// new, so they are logged at debug level only).
    pub async fn catch_up(
        &mut self,
        connection: &Connection,
        deployer: &Deployer,
        history: bool,
    ) -> anyhow::Result<()> {
        let marker = uuid::Uuid::new_v4().to_string();
        self.append_marker(connection, &marker).await?;
        let mut backlog = Vec::new();
        loop {
            let delivery = match self.consumer.next().await {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => {
                    return Err(anyhow::Error::from(error).context("reading the deploy history"));
                }
                None => anyhow::bail!("the broker stopped the deploy stream consumer"),
            };
            let properties = delivery.properties.clone();
            let sync = header_text(properties.headers().as_ref(), HEADER_DEPLOY_SYNC);
            if sync.is_some() {
                let offset = stream_offset(&properties);
                ack(delivery).await;
                if sync.as_deref() == Some(marker.as_str()) {
                    self.apply(deployer, std::mem::take(&mut backlog), history)
                        .await;
                    self.position.advance(offset);
                    return Ok(());
                }
                continue;
            }
            backlog.push(delivery);
        }
    }

    /// Applies deploys as they arrive, until shutdown or until the stream
    /// fails (then remote deploys stop until the session reconnects).
    pub async fn follow(mut self, deployer: Arc<Deployer>, mut shutdown: Shutdown) {
        loop {
            let first = tokio::select! {
                _ = shutdown.recv() => break,
                next = self.consumer.next() => next,
            };
            let mut burst = match first {
                Some(Ok(delivery)) => vec![delivery],
                Some(Err(error)) => {
                    tracing::warn!(%error, "reading the deploy stream stopped; remote deploys are off until reconnect");
                    break;
                }
                None => break,
            };
            while let Ok(Some(Ok(delivery))) =
                tokio::time::timeout(DEPLOY_SETTLE, self.consumer.next()).await
            {
                burst.push(delivery);
            }
            self.apply(&deployer, burst, false).await;
        }
        close_quietly(self.channel.close(200, "warren-host stopping".into())).await;
    }

    /// Applies a batch of stream messages in order (markers skipped), answers
    /// each deployer and acks each message.
    async fn apply(&self, deployer: &Deployer, batch: Vec<Delivery>, history: bool) {
        let mut requests = Vec::with_capacity(batch.len());
        let mut envelopes = Vec::with_capacity(batch.len());
        for delivery in batch {
            let headers = delivery.properties.headers().as_ref();
            if header_text(headers, HEADER_DEPLOY_SYNC).is_some() {
                self.position.advance(stream_offset(&delivery.properties));
                ack(delivery).await;
                continue;
            }
            let Delivery {
                properties,
                data,
                acker,
                ..
            } = delivery;
            let headers = properties.headers().as_ref();
            requests.push(DeployRequest {
                name: header_text(headers, HEADER_DEPLOY_NAME),
                digest: header_text(headers, HEADER_DEPLOY_DIGEST),
                key: header_text(headers, HEADER_DEPLOY_KEY),
                signature: header_text(headers, HEADER_DEPLOY_SIGNATURE),
                sequence: header_text(headers, HEADER_DEPLOY_SEQUENCE),
                module: data,
            });
            envelopes.push((properties, acker));
        }
        if requests.is_empty() {
            return;
        }
        let names: Vec<String> = requests
            .iter()
            .map(|r| r.name.clone().unwrap_or_default())
            .collect();
        let answers = deployer.apply_all(requests).await;
        for ((answer, (properties, acker)), name) in answers.iter().zip(envelopes).zip(names) {
            log_answer(&name, answer, history);
            answer_deployer(&self.channel, &properties, answer).await;
            if let Err(error) = acker.ack(BasicAckOptions::default()).await {
                tracing::warn!(%error, "acking a deploy");
            }
            self.position.advance(stream_offset(&properties));
        }
    }

    /// Appends a sync marker, on a channel of its own with publisher confirms,
    /// so it is in the stream before the host starts looking for it.
    async fn append_marker(&self, connection: &Connection, marker: &str) -> anyhow::Result<()> {
        let channel = connection
            .create_channel()
            .await
            .context("opening a channel for the deploy sync marker")?;
        let appended = async {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let mut headers = FieldTable::default();
            set_header_text(&mut headers, HEADER_DEPLOY_SYNC, marker);
            channel
                .basic_publish(
                    ShortString::default(),
                    self.stream.as_str().into(),
                    BasicPublishOptions::default(),
                    &[],
                    BasicProperties::default().with_headers(headers),
                )
                .await?
                .await
        }
        .await;
        close_quietly(channel.close(200, "marker appended".into())).await;
        match appended.context("appending a sync marker to the deploy stream")? {
            confirmation if confirmation.is_ack() => Ok(()),
            _ => anyhow::bail!(
                "the broker refused the deploy stream's sync marker (a publisher nack); \
                 is the stream {:?} full or its node down?",
                self.stream
            ),
        }
    }
}

/// Refusals of new deploys are news for the operator; refusals found again
/// in the history a starting host replays were news when they were new.
fn log_answer(name: &str, answer: &DeployAnswer, history: bool) {
    if answer.accepted {
        tracing::info!(procedure = %name, digest = %answer.digest, took_ms = answer.took_ms, history, "deploy accepted");
    } else if history {
        tracing::debug!(procedure = %name, digest = %answer.digest, "deploy in the history refused: {}", answer.reason);
    } else {
        tracing::warn!(procedure = %name, digest = %answer.digest, "deploy refused: {}", answer.reason);
    }
}

/// Sends `answer` to the deploy's `reply_to`, if it has one.
async fn answer_deployer(channel: &Channel, deploy: &BasicProperties, answer: &DeployAnswer) {
    let Some(reply_to) = deploy.reply_to().clone() else {
        return;
    };
    let mut properties = BasicProperties::default().with_content_type("application/json".into());
    if let Some(id) = deploy.correlation_id().clone() {
        properties = properties.with_correlation_id(id);
    }
    let body = serde_json::to_vec(answer).expect("a DeployAnswer always serialises");
    let published = channel
        .basic_publish(
            ShortString::default(),
            reply_to,
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await;
    if let Err(error) = published {
        tracing::warn!(%error, "answering the deployer");
    }
}

async fn ack(delivery: Delivery) {
    if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
        tracing::warn!(%error, "acking a deploy stream message");
    }
}

/// The stream offset RabbitMQ put on a message read from a stream.
fn stream_offset(properties: &BasicProperties) -> Option<u64> {
    match properties
        .headers()
        .as_ref()?
        .inner()
        .get(HEADER_STREAM_OFFSET)?
    {
        AMQPValue::LongLongInt(offset) => u64::try_from(*offset).ok(),
        AMQPValue::LongUInt(offset) => Some(u64::from(*offset)),
        AMQPValue::LongInt(offset) => u64::try_from(*offset).ok(),
        _ => None,
    }
}
