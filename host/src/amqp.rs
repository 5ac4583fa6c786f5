//! AMQP plumbing: consume the request queue, publish replies, ack.
//!
//! The wire pattern is the RabbitMQ tutorial's, unchanged: the queue is
//! declared exactly as `rpc_server.py` declares it (so both can serve it), a
//! reply goes through the default exchange to `reply_to` with the request's
//! `correlation_id`, and the request is acked only after its reply is
//! published. A request whose reply could not be published stays unacked,
//! so the broker redelivers it rather than losing it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_lite::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use tokio::task::JoinSet;
use tracing::Instrument as _;
use warren_protocol::deploy::{
    DeployAnswer, HEADER_DEPLOY_DIGEST, HEADER_DEPLOY_KEY, HEADER_DEPLOY_NAME,
    HEADER_DEPLOY_SIGNATURE, declare_deploy_stream, deploy_stream,
};
use warren_protocol::{
    ERROR_CONTENT_TYPE, ErrorBody, HEADER_PROCEDURE, HEADER_PROCEDURE_DIGEST, HEADER_RPC_ERROR,
    HEADER_RPC_STATUS, STATUS_ERROR, STATUS_OK, declare_request_queue, header_text, redact_url,
    set_header_text,
};

use crate::deploy::{DeployRequest, Deployer};
use crate::dispatch::{Dispatcher, Reply};
use crate::shutdown::Shutdown;

/// How long to wait for the broker to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause between reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);
/// Deploys read from the stream ahead of the one being applied.
const DEPLOY_PREFETCH: u16 = 16;
/// Quiet time that ends a burst of deploys (the history, on startup), so
/// that only the newest deploy of each name in it is compiled.
const DEPLOY_SETTLE: Duration = Duration::from_millis(200);

/// A live subscription to the request queue and the deploy stream.
pub struct Session {
    connection: Connection,
    channel: Channel,
    consumer: Consumer,
    deploy_channel: Channel,
    deploys: Consumer,
}

impl Session {
    /// Connects to `url`, declares `queue` as the tutorial does and starts
    /// consuming it with `prefetch` unacked requests at most; also starts
    /// reading the queue's deploy stream from its beginning.
    pub async fn open(url: &str, queue: &str, prefetch: u16) -> anyhow::Result<Self> {
        let shown = redact_url(url);
        let properties = ConnectionProperties::default().with_connection_name("warren-host".into());
        let connection =
            tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties))
                .await
                .map_err(|_| anyhow::anyhow!("no answer within {CONNECT_TIMEOUT:?}"))
                .and_then(|connected| connected.map_err(anyhow::Error::from))
                .with_context(|| format!("connecting to the broker at {shown}"))?;
        match Self::subscribe(connection, queue, prefetch).await {
            Ok(session) => Ok(session),
            Err((connection, error)) => {
                // Half-set-up connections must not pile up across retries.
                close_quietly(connection.close(200, "warren-host setup failed".into())).await;
                Err(error)
            }
        }
    }

    /// Declares and consumes the request queue and the deploy stream on
    /// `connection`; on failure hands the connection back for closing.
    async fn subscribe(
        connection: Connection,
        queue: &str,
        prefetch: u16,
    ) -> Result<Self, (Connection, anyhow::Error)> {
        let subscribed = async {
            let channel = connection
                .create_channel()
                .await
                .context("opening a channel")?;
            declare_request_queue(&channel, queue)
                .await
                .with_context(|| {
                    format!(
                        "declaring queue {queue:?} (if it exists with other settings, \
                         delete it or choose another --queue)"
                    )
                })?;
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await
                .context("setting the prefetch count")?;
            let consumer = channel
                .basic_consume(
                    queue.into(),
                    ShortString::default(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("consuming queue {queue:?}"))?;
            let (deploy_channel, deploys) = open_deploy_stream(&connection, queue).await?;
            anyhow::Ok((channel, consumer, deploy_channel, deploys))
        }
        .await;
        match subscribed {
            Ok((channel, consumer, deploy_channel, deploys)) => Ok(Session {
                connection,
                channel,
                consumer,
                deploy_channel,
                deploys,
            }),
            Err(error) => Err((connection, error)),
        }
    }

    /// Answers requests until shutdown (`Ok`) or until the connection fails
    /// (`Err`). On shutdown it stops taking requests, finishes and acks the
    /// ones it has, then closes; unstarted prefetched requests return to
    /// the queue for another host.
    pub async fn serve(
        mut self,
        dispatcher: Arc<Dispatcher>,
        deployer: Arc<Deployer>,
        mut shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        let deploys = tokio::spawn(listen_for_deploys(
            self.deploy_channel.clone(),
            self.deploys,
            deployer,
            shutdown.clone(),
        ));
        let mut in_flight = JoinSet::new();
        let result = loop {
            tokio::select! {
                _ = shutdown.recv() => break Ok(()),
                Some(finished) = in_flight.join_next(), if !in_flight.is_empty() => {
                    if let Err(panic) = finished {
                        tracing::error!("a request task panicked: {panic}");
                    }
                }
                delivery = self.consumer.next() => match delivery {
                    Some(Ok(delivery)) => {
                        in_flight.spawn(answer(self.channel.clone(), dispatcher.clone(), delivery));
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
        while in_flight.join_next().await.is_some() {}
        if result.is_ok() {
            let _ = deploys.await;
        } else {
            deploys.abort();
        }
        close_quietly(
            self.deploy_channel
                .close(200, "warren-host stopping".into()),
        )
        .await;
        close_quietly(self.channel.close(200, "warren-host stopping".into())).await;
        close_quietly(self.connection.close(200, "warren-host stopping".into())).await;
        result
    }
}

/// How long a close may take before it is abandoned.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Closes best effort: lapin can wait forever for a close-ok that never
/// comes, and a stopping host must not hang on it.
async fn close_quietly<T, E>(closing: impl Future<Output = Result<T, E>>) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
}

/// Keeps a session going until shutdown: when the connection fails, it
/// reconnects with exponential backoff (up to [`MAX_RECONNECT_DELAY`]).
pub async fn serve_forever(
    first: Session,
    url: String,
    queue: String,
    prefetch: u16,
    dispatcher: Arc<Dispatcher>,
    deployer: Arc<Deployer>,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut session = first;
    loop {
        let served = session.serve(dispatcher.clone(), deployer.clone(), shutdown.clone());
        let error = match served.await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        tracing::warn!("lost the broker: {error:#}; reconnecting");
        let mut delay = Duration::from_millis(250);
        session = loop {
            tokio::select! {
                _ = shutdown.recv() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
            match Session::open(&url, &queue, prefetch).await {
                Ok(session) => {
                    tracing::info!(queue, "reconnected");
                    break session;
                }
                Err(error) => {
                    delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                    tracing::warn!("reconnect failed: {error:#}; next try in {delay:?}");
                }
            }
        };
    }
}

/// Declares the deploy stream for `queue` and reads it from the start.
async fn open_deploy_stream(
    connection: &Connection,
    queue: &str,
) -> anyhow::Result<(Channel, Consumer)> {
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
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let consumer = channel
        .basic_consume(
            stream.as_str().into(),
            ShortString::default(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
        .with_context(|| format!("reading the deploy stream {stream:?}"))?;
    Ok((channel, consumer))
}

/// Applies deploys from the stream in order, answering each deployer.
///
/// Deploys arrive in bursts: the whole history when the host starts, then
/// one at a time; [`Deployer::apply_all`] takes a burst at once so a
/// replayed history compiles only the newest good version of each name.
async fn listen_for_deploys(
    channel: Channel,
    mut deploys: Consumer,
    deployer: Arc<Deployer>,
    mut shutdown: Shutdown,
) {
    loop {
        let first = tokio::select! {
            _ = shutdown.recv() => return,
            next = deploys.next() => next,
        };
        let mut burst = match first {
            Some(Ok(delivery)) => vec![delivery],
            Some(Err(error)) => {
                tracing::warn!(%error, "reading the deploy stream stopped; remote deploys are off until reconnect");
                return;
            }
            None => return,
        };
        while let Ok(Some(Ok(delivery))) = tokio::time::timeout(DEPLOY_SETTLE, deploys.next()).await
        {
            burst.push(delivery);
        }
        let mut requests = Vec::with_capacity(burst.len());
        let mut envelopes = Vec::with_capacity(burst.len());
        for delivery in burst {
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
                module: data,
            });
            envelopes.push((properties, acker));
        }
        let names: Vec<String> = requests
            .iter()
            .map(|r| r.name.clone().unwrap_or_default())
            .collect();
        let answers = deployer.apply_all(requests).await;
        for ((answer, (properties, acker)), name) in answers.iter().zip(envelopes).zip(names) {
            if answer.accepted {
                tracing::info!(procedure = %name, digest = %answer.digest, took_ms = answer.took_ms, "deploy accepted");
            } else {
                tracing::warn!(procedure = %name, digest = %answer.digest, "deploy refused: {}", answer.reason);
            }
            answer_deployer(&channel, &properties, answer).await;
            if let Err(error) = acker.ack(BasicAckOptions::default()).await {
                tracing::warn!(%error, "acking a deploy");
            }
        }
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
    if let Err(error) = publish_to(channel, reply_to, &body, properties).await {
        tracing::warn!(%error, "answering the deployer");
    }
}

/// Answers one request: run it, publish the reply, then ack.
async fn answer(channel: Channel, dispatcher: Arc<Dispatcher>, delivery: Delivery) {
    let Delivery {
        delivery_tag,
        properties,
        data,
        acker,
        redelivered,
        ..
    } = delivery;
    let correlation_id = properties.correlation_id().clone();
    let requested = header_text(properties.headers().as_ref(), HEADER_PROCEDURE);
    let span = tracing::info_span!(
        "request",
        messaging.system = "rabbitmq",
        messaging.message.conversation_id = correlation_id.as_ref().map(ShortString::as_str),
        messaging.rabbitmq.delivery_tag = delivery_tag,
        procedure = requested.as_deref(),
        bytes = data.len(),
        redelivered,
    );
    async move {
        let Some(reply_to) = properties.reply_to().clone() else {
            tracing::warn!("request has no reply_to, so there is no one to answer; acked and dropped");
            if let Err(error) = acker.ack(BasicAckOptions::default()).await {
                tracing::warn!(%error, "acking the request");
            }
            return;
        };
        let started = Instant::now();
        let label = correlation_id
            .as_ref()
            .map_or_else(|| format!("delivery-{delivery_tag}"), |id| id.to_string());
        let reply = dispatcher.handle(requested.as_deref(), data, &label).await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        match &reply.outcome {
            Ok(body) => tracing::debug!(elapsed_ms, reply_bytes = body.len(), "answered"),
            Err(error) => tracing::info!(elapsed_ms, kind = %error.kind, "answered with error: {}", error.message),
        }
        if let Err(error) = publish_reply(&channel, reply_to, correlation_id, reply).await {
            tracing::error!("publishing the reply failed: {error:#}; the request stays unacked and will be redelivered");
            return;
        }
        if let Err(error) = acker.ack(BasicAckOptions::default()).await {
            tracing::warn!(%error, "acking the request after replying");
        }
    }
    .instrument(span)
    .await
}

/// Publishes `reply` to `reply_to` through the default exchange.
async fn publish_reply(
    channel: &Channel,
    reply_to: ShortString,
    correlation_id: Option<ShortString>,
    reply: Reply,
) -> anyhow::Result<()> {
    let (body, properties) = reply_message(reply, correlation_id);
    publish_to(channel, reply_to, &body, properties).await?;
    Ok(())
}

/// Publishes through the default exchange straight to queue `to` (a
/// caller's `reply_to`), waiting for the broker's confirm when the channel
/// has confirms on.
async fn publish_to(
    channel: &Channel,
    to: ShortString,
    body: &[u8],
    properties: BasicProperties,
) -> lapin::Result<()> {
    channel
        .basic_publish(
            ShortString::default(),
            to,
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await?
        .await?;
    Ok(())
}

/// The body and properties of a reply message, as the wire contract says.
/// Takes the reply by value so a success body (up to --max-reply-bytes)
/// goes out without a copy.
fn reply_message(reply: Reply, correlation_id: Option<ShortString>) -> (Vec<u8>, BasicProperties) {
    let mut headers = FieldTable::default();
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
    let body = match reply.outcome {
        Ok(body) => {
            set_header_text(&mut headers, HEADER_RPC_STATUS, STATUS_OK);
            body
        }
        Err(error) => {
            set_header_text(&mut headers, HEADER_RPC_STATUS, STATUS_ERROR);
            set_header_text(&mut headers, HEADER_RPC_ERROR, error.kind.as_str());
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
        let reply = Reply {
            procedure: Some("fib".into()),
            digest: Some("sha256:00".into()),
            outcome: Err(warren_protocol::RpcError::new(
                warren_protocol::ErrorKind::ProcedureError,
                "bad",
            )),
        };
        let (body, properties) = reply_message(reply, Some("c1".into()));
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
