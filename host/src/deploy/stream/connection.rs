//! The deploy stream of one queue, opened on one connection: declared
//! (and its retention checked when it already exists), read from where this
//! host stopped, and published to with confirms.

use anyhow::Context as _;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tokio::time::Instant;
use warren_protocol::deploy::{
    HEADER_DEPLOY_SYNC, StreamRetention, declare_deploy_stream, encode_module, publish_encoded,
};
use warren_protocol::set_header_text;

use super::retention::check_existing;
use super::state::{StreamState, start_offset};
use crate::deploy::deployer::Deployer;

/// Stream messages delivered ahead of the one being read. Each is acked
/// (which, on a stream, only asks for the next) as soon as it is read, so a
/// history of any length flows through this window.
const DEPLOY_PREFETCH: u16 = 16;

/// The deploy stream of one queue, being read on one connection.
pub struct DeployStream {
    pub(super) channel: Channel,
    /// A channel with publisher confirms, for sync markers and copies.
    pub(super) publisher: Channel,
    pub(super) consumer: Consumer,
    pub(super) stream: String,
    pub(super) state: StreamState,
    /// When to look for deploys to publish again, if any are due.
    pub(super) republish_at: Option<Instant>,
    /// The broker user this connection logged in as, named as the
    /// `user_id` of what this host publishes (so other hosts read its
    /// copies); `None` for a TLS client certificate's user.
    pub(super) user: Option<String>,
    /// Messages skipped because no deploying user published them, since
    /// the stream was opened (the first is logged).
    pub(super) foreign: u64,
}

impl DeployStream {
    /// Declares the deploy stream of `queue` and starts reading it after
    /// where `state` says this host stopped (from its start the first time).
    /// A stream that already exists keeping less than Warren needs is
    /// refused ([`super::retention::RetentionRefused`]).
    pub async fn open(
        connection: &Connection,
        deployer: &Deployer,
        user: Option<String>,
        queue: &str,
        retention: StreamRetention,
        state: StreamState,
    ) -> anyhow::Result<Self> {
        let declared = declare_deploy_stream(connection, queue, retention)
            .await
            .with_context(|| {
                format!(
                    "declaring the deploy stream {:?} (RabbitMQ 3.9 or later has streams)",
                    warren_protocol::deploy::deploy_stream(queue)
                )
            })?;
        if let Some(settings) = &declared.existing {
            check_existing(&declared, settings, deployer.policy().max_module_bytes)?;
        }
        state.lock().keeper.set_retention(declared.retention);
        let channel = declared.channel;
        // Streams require a prefetch limit and manual acks.
        channel
            .basic_qos(DEPLOY_PREFETCH, BasicQosOptions::default())
            .await
            .context("setting the deploy prefetch")?;
        let start = start_offset(state.position());
        let mut arguments = FieldTable::default();
        arguments.insert("x-stream-offset".into(), start);
        let consumer = channel
            .basic_consume(
                declared.name.as_str().into(),
                ShortString::default(),
                BasicConsumeOptions::default(),
                arguments,
            )
            .await
            .with_context(|| format!("reading the deploy stream {:?}", declared.name))?;
        let publisher = connection
            .create_channel()
            .await
            .context("opening a channel to publish on the deploy stream")?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enabling publisher confirms on the deploy stream")?;
        Ok(DeployStream {
            channel,
            publisher,
            consumer,
            stream: declared.name,
            state,
            republish_at: None,
            user,
            foreign: 0,
        })
    }

    /// Appends a sync marker, so it is in the stream before the host starts
    /// looking for it.
    pub(super) async fn append_marker(&self, marker: &str) -> anyhow::Result<()> {
        let mut headers = FieldTable::default();
        set_header_text(&mut headers, HEADER_DEPLOY_SYNC, marker);
        self.publish_confirmed(Vec::new(), headers)
            .await
            .context("appending a sync marker to the deploy stream")
    }

    /// Publishes to the stream (deflated and in parts when the body is
    /// large, see `warren_protocol::deploy::Part`; deflating off the async
    /// runtime) and waits for the broker to store it.
    pub(super) async fn publish_confirmed(
        &self,
        body: Vec<u8>,
        headers: FieldTable,
    ) -> anyhow::Result<()> {
        let mut properties = BasicProperties::default().with_headers(headers);
        if let Some(user) = &self.user {
            properties = properties.with_user_id(user.as_str().into());
        }
        let (encoded, encoding) = tokio::task::spawn_blocking(move || {
            let (encoded, encoding) = encode_module(&body);
            (encoded.into_owned(), encoding)
        })
        .await
        .context("the deflating task failed")?;
        let stored = publish_encoded(
            &self.publisher,
            &self.stream,
            &encoded,
            encoding,
            properties,
        )
        .await?;
        anyhow::ensure!(
            stored,
            "the broker refused it (a publisher nack); is the stream {:?} full or its node down?",
            self.stream
        );
        Ok(())
    }
}
