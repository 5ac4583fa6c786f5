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
//! Every message is acked as soon as it is read (on a stream an ack only
//! asks for more), and a batch holds at most one module per name
//! ([`super::batch::Batch`]), so a history of any length is read in bounded memory.
//! While following, it also keeps the newest deploy of each procedure in the
//! stream ([`super::keeper`]), publishing it again before the stream's
//! retention would drop it.
//!
//! It remembers the offset it has read up to ([`StreamState`]), so after a
//! reconnect it resumes there instead of replaying the whole history again.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use futures_lite::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tokio::time::Instant;
use warren_protocol::deploy::{
    DeployHeaders, HEADER_DEPLOY_CLAIM, HEADER_DEPLOY_COPY, HEADER_DEPLOY_SYNC,
    HEADER_STREAM_OFFSET, Part, StreamRetention, declare_deploy_stream, decode_module,
    encode_module, publish_encoded,
};
use warren_protocol::{header_text, set_header_text};

use super::answers::{answer_deployer, log_answer};
use super::batch::{Batch, SettledDeploy};
use super::deployer::Deployer;
use super::keeper::{Keeper, Kept, MESSAGE_OVERHEAD};
use super::parts::{Assembler, Joined};
use crate::modules::{MODULE_EXTENSION, digest, version};
use crate::shutdown::Shutdown;
use warren_protocol::broker::{close_quietly, ends_connection};

/// Stream messages delivered ahead of the one being read. Each is acked
/// (which, on a stream, only asks for the next) as soon as it is read, so a
/// history of any length flows through this window.
const DEPLOY_PREFETCH: u16 = 16;
/// How long a host resuming the stream where it stopped waits for a first
/// message before it takes the stream for a new one (see
/// [`DeployStream::catch_up`]).
const CATCH_UP_STALL: Duration = Duration::from_secs(10);
/// Quiet time that ends a burst of live deploys.
const DEPLOY_SETTLE: Duration = Duration::from_millis(200);
/// Longest random wait before claiming the publishing of a deploy the
/// stream would drop, so that few hosts of a fleet claim each round (one
/// wins, see [`super::keeper`]).
pub const REPUBLISH_JITTER: Duration = Duration::from_secs(2);

/// What a host knows of its queue's deploy stream, kept across connections:
/// the offset it has read up to, and the [`Keeper`]'s counts.
#[derive(Debug, Clone)]
pub struct StreamState(Arc<Mutex<State>>);

#[derive(Debug)]
struct State {
    /// Longest random wait before claiming ([`REPUBLISH_JITTER`]).
    jitter: Duration,
    /// Offset of the last message handled.
    position: Option<u64>,
    keeper: Keeper,
    /// Deploys in parts read only in part so far.
    parts: Assembler,
}

impl StreamState {
    /// A host that has read nothing yet, of a stream declared with
    /// `retention`, waiting at most `jitter` before it claims a copy.
    pub fn new(retention: StreamRetention, jitter: Duration) -> Self {
        StreamState(Arc::new(Mutex::new(State {
            jitter,
            position: None,
            keeper: Keeper::new(retention),
            parts: Assembler::default(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn position(&self) -> Option<u64> {
        self.lock().position
    }
}

/// The deploy stream of one queue, being read on one connection.
pub struct DeployStream {
    channel: Channel,
    /// A channel with publisher confirms, for sync markers and copies.
    publisher: Channel,
    consumer: Consumer,
    stream: String,
    state: StreamState,
    /// When to look for deploys to publish again, if any are due.
    republish_at: Option<Instant>,
    /// The broker user this connection logged in as, named as the
    /// `user_id` of what this host publishes (so other hosts read its
    /// copies); `None` for a TLS client certificate's user.
    user: Option<String>,
    /// Messages skipped because no deploying user published them, since
    /// the stream was opened (the first is logged).
    foreign: u64,
}

/// What a stream message was for the [`Keeper`], when it was the newest
/// deploy of its name.
#[derive(Clone)]
enum Newest {
    /// Served by this host: from now on, the one to keep.
    Serving(String, DeployHeaders),
    /// Passed every check but failed to compile or save here: this host
    /// no longer keeps anything of that name (an older deploy would only
    /// be refused as older).
    Unserved(String),
}

/// One message read from the stream, before it is handled.
struct Read {
    offset: Option<u64>,
    /// What it costs in the stream, for the [`Keeper`].
    size: u64,
    /// What the whole deploy it completes costs (more than `size` when it
    /// came in parts).
    whole: u64,
    /// Set when it was a claim ([`HEADER_DEPLOY_CLAIM`]).
    claim: Option<Claim>,
}

/// A host's claim to publish the copy of a procedure's deploy.
struct Claim {
    name: String,
    digest: Option<String>,
    host: String,
}

impl Read {
    fn of(offset: Option<u64>, size: u64) -> Self {
        Read {
            offset,
            size,
            whole: size,
            claim: None,
        }
    }
}

impl DeployStream {
    /// Declares the deploy stream of `queue` and starts reading it after
    /// where `state` says this host stopped (from its start the first time).
    /// A stream that already exists keeping less than Warren needs is
    /// refused ([`RetentionRefused`]).
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
            check_retention(&declared, settings, deployer.policy().max_module_bytes)?;
            if declared.retention.max_bytes == u64::MAX {
                tracing::warn!(
                    stream = %declared.name,
                    "the deploy stream exists without a byte limit ({settings}): it is used, but \
                     anyone who may publish a request can grow it until the broker's disk alarm \
                     stops every publisher. Delete it (rabbitmqctl delete_queue {}) when no \
                     deploy is under way; hosts declare it anew with a limit",
                    declared.name
                );
            } else {
                tracing::info!(
                    stream = %declared.name,
                    "the deploy stream exists with other settings than this host declares \
                     ({settings}): it is used as it is"
                );
            }
        }
        state.lock().keeper.set_retention(declared.retention);
        let channel = declared.channel;
        // Streams require a prefetch limit and manual acks.
        channel
            .basic_qos(DEPLOY_PREFETCH, BasicQosOptions::default())
            .await
            .context("setting the deploy prefetch")?;
        let start = match state.position() {
            None => AMQPValue::LongString("first".into()),
            Some(last) => AMQPValue::LongLongInt(i64::try_from(last + 1).unwrap_or(i64::MAX)),
        };
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

    /// Appends a sync marker and applies every deploy before it. When this
    /// returns, the host serves everything the stream held when it
    /// connected. `history` says whether these deploys are the history a
    /// starting host replays (their refusals were reported when they were
    /// new, so they are logged at debug level only).
    ///
    /// Nothing read in a starting host's history is answered: those
    /// deploys' deployers were answered when they were new, and whatever
    /// `reply_to` an old message names is no one's business now.
    pub async fn catch_up(&mut self, deployer: &Deployer, history: bool) -> anyhow::Result<()> {
        let marker = uuid::Uuid::new_v4().to_string();
        self.append_marker(&marker).await?;
        let resumed = self.state.position().is_some();
        let mut batch = deployer.batch();
        let mut reads = Vec::new();
        loop {
            let next = tokio::time::timeout(CATCH_UP_STALL, self.consumer.next()).await;
            let next = match next {
                Ok(next) => next,
                Err(_) if resumed => {
                    // The marker is stored, so a reader before it gets
                    // something soon; nothing means this host resumed past
                    // the end of a stream that was deleted and declared
                    // anew (offsets start again at 0). Read it all again.
                    let mut state = self.state.lock();
                    state.position = None;
                    state.parts = Assembler::default();
                    anyhow::bail!(
                        "reading the deploy stream {} from where this host stopped gave nothing \
                         for {}s: the stream was deleted and declared anew; reading it again \
                         from its start",
                        self.stream,
                        CATCH_UP_STALL.as_secs()
                    );
                }
                Err(_) => continue,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => {
                    return Err(anyhow::Error::from(error).context("reading the deploy history"));
                }
                None => anyhow::bail!("the broker stopped the deploy stream consumer"),
            };
            let ours = header_text(delivery.properties.headers().as_ref(), HEADER_DEPLOY_SYNC)
                .is_some_and(|sync| sync == marker);
            self.take(delivery, &mut batch, &mut reads).await;
            if ours {
                break;
            }
        }
        let settled = batch.finish().await;
        // A claim of this host's in what it catches up with is from before
        // a reconnect: its keeping rounds start again once it follows.
        self.record(reads, settled, history, deployer.host_id())
            .await;
        if history {
            self.keep_recorded(deployer);
        }
        Ok(())
    }

    /// Keeps, as due at once, each deploy this host has a record of and
    /// serves but the stream no longer holds (every host was down while
    /// it dropped out; the stream was declared anew), so that hosts started
    /// later find it again. Its headers come from the record and the
    /// manifest beside the module, checked against the record's digest.
    fn keep_recorded(&self, deployer: &Deployer) {
        let mut state = self.state.lock();
        for (name, record) in deployer.records() {
            let recorded = version(&record.digest, record.manifest_digest.as_deref());
            let served = deployer.folder().serving().get(name).map(|p| p.version());
            if state.keeper.kept(name).is_some() || served != Some(recorded) {
                continue;
            }
            let dir = deployer.folder().dir();
            let manifest = match &record.manifest_digest {
                None => None,
                Some(expected) => {
                    let path = dir.join(format!(
                        "{name}.{}",
                        warren_protocol::manifest::MANIFEST_EXTENSION
                    ));
                    match std::fs::read_to_string(path) {
                        Ok(text) if warren_protocol::manifest::digest(&text) == *expected => {
                            Some(text)
                        }
                        _ => continue,
                    }
                }
            };
            let module = dir.join(format!("{name}.{MODULE_EXTENSION}"));
            let Ok(size) = std::fs::metadata(module).map(|metadata| metadata.len()) else {
                continue;
            };
            let headers = DeployHeaders {
                name: Some(name.clone()),
                digest: Some(record.digest.clone()),
                sequence: Some(record.sequence.to_string()),
                key: record.key.clone(),
                signature: record.signature.clone(),
                manifest,
            };
            tracing::info!(
                procedure = %name,
                sequence = record.sequence,
                "the deploy stream no longer holds the deploy this host serves: publishing it \
                 again, so hosts that start later find it"
            );
            state
                .keeper
                .keep_missing(name.clone(), headers, size + MESSAGE_OVERHEAD);
        }
    }

    /// Applies deploys as they arrive, a burst at a time, and publishes
    /// again those the stream would otherwise drop, until shutdown or the
    /// connection's end (`Ok`), or until the stream fails on a connection
    /// that is still up (`Err`: the broker cancelled the consumer because
    /// the stream was deleted, say), which the session takes for its own
    /// failure, so that it reconnects and reads the stream anew.
    pub async fn follow(
        mut self,
        deployer: Arc<Deployer>,
        mut shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        self.schedule_republish();
        let ended = loop {
            let republish = async {
                match self.republish_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let first = tokio::select! {
                _ = shutdown.recv() => break Ok(()),
                () = republish => {
                    self.republish_at = None;
                    self.claim_due(&deployer).await;
                    self.schedule_republish();
                    continue;
                }
                next = self.consumer.next() => next,
            };
            let first = match first {
                Some(Ok(delivery)) => delivery,
                // A lost connection is reported once, by the session.
                Some(Err(error)) if ends_connection(&error) => {
                    tracing::debug!(%error, "reading the deploy stream stopped with the connection");
                    break Ok(());
                }
                Some(Err(error)) => {
                    break Err(anyhow::Error::from(error)
                        .context(format!("reading the deploy stream {} failed", self.stream)));
                }
                None => {
                    break Err(anyhow::anyhow!(
                        "the broker ended this host's reading of the deploy stream {} (was it \
                         deleted?): reconnecting, to read it anew",
                        self.stream
                    ));
                }
            };
            let mut batch = deployer.batch();
            let mut reads = Vec::new();
            self.take(first, &mut batch, &mut reads).await;
            while let Ok(Some(Ok(delivery))) =
                tokio::time::timeout(DEPLOY_SETTLE, self.consumer.next()).await
            {
                self.take(delivery, &mut batch, &mut reads).await;
            }
            let settled = batch.finish().await;
            let won = self.record(reads, settled, false, deployer.host_id()).await;
            self.publish_copies(&deployer, won).await;
            self.schedule_republish();
        };
        close_quietly(self.publisher.close(200, "warren-host stopping".into())).await;
        close_quietly(self.channel.close(200, "warren-host stopping".into())).await;
        ended
    }

    /// Acks one stream message at once (so the broker sends the next) and
    /// adds it to `batch` unless it is a sync marker or was not published
    /// by a deploying user (see [`super::policy::DeployPolicy::publishers`]).
    async fn take(
        &mut self,
        delivery: Delivery,
        batch: &mut Batch<'_, (usize, BasicProperties)>,
        reads: &mut Vec<Read>,
    ) {
        let Delivery {
            properties,
            data,
            acker,
            ..
        } = delivery;
        if let Err(error) = acker.ack(BasicAckOptions::default()).await {
            tracing::warn!(%error, "acking a deploy stream message");
        }
        let size = data.len() as u64 + MESSAGE_OVERHEAD;
        let offset = stream_offset(&properties);
        let headers = properties.headers().as_ref();
        let user_id = properties.user_id().as_ref().map(|user| user.as_str());
        if !batch.admits_publisher(user_id) {
            // Anyone who may publish a request may publish here: what they
            // wrote takes room in the stream, and nothing else.
            self.foreign += 1;
            if self.foreign == 1 {
                tracing::warn!(
                    stream = %self.stream,
                    user_id = user_id.unwrap_or("(none)"),
                    "skipping a deploy-stream message no deploying user published (the first; \
                     the rest are counted in warren_deploy_messages_skipped_total). If this user \
                     is one of your deployers, add it to --deploy-users; a caller must not be"
                );
            }
            batch.skipped_publisher();
            reads.push(Read::of(offset, size));
            return;
        }
        if header_text(headers, HEADER_DEPLOY_SYNC).is_some() {
            reads.push(Read::of(offset, size));
            return;
        }
        let deploy = DeployHeaders::read(headers);
        if let Some(host) = header_text(headers, HEADER_DEPLOY_CLAIM) {
            if let Some(name) = deploy.name.filter(|_| batch.admits_claim(user_id)) {
                reads.push(Read {
                    claim: Some(Claim {
                        name,
                        digest: deploy.digest,
                        host,
                    }),
                    ..Read::of(offset, size)
                });
            } else {
                reads.push(Read::of(offset, size));
            }
            return;
        }
        let part = Part::read(headers);
        let parts = part
            .as_ref()
            .map_or(1, |part| part.as_ref().map_or(1, |p| u64::from(p.count)));
        let joined = self
            .state
            .lock()
            .parts
            .add(deploy, part, data, batch.max_module_bytes());
        let whole = match &joined {
            Joined::Whole(request) => request.module.len() as u64 + parts * MESSAGE_OVERHEAD,
            _ => size,
        };
        reads.push(Read {
            whole,
            ..Read::of(offset, size)
        });
        let tag = (reads.len() - 1, properties);
        match joined {
            Joined::Whole(mut request) => {
                let encoding = tag.1.content_encoding().as_ref().map(|e| e.to_string());
                let body = std::mem::take(&mut request.module);
                match decode(encoding, body, batch.max_module_bytes()).await {
                    Ok(module) => {
                        request.module = module;
                        batch.add(request, tag);
                    }
                    Err(reason) => batch.refuse(request.headers, reason, tag),
                }
            }
            Joined::Refused(headers, reason) => batch.refuse(headers, reason, tag),
            Joined::Partial | Joined::Skipped => {}
        }
    }

    /// Logs each settled deploy and answers its deployer, counts every
    /// message read for the [`Keeper`] (claims too), in stream order, and
    /// moves the position past them. Returns the procedures whose copy
    /// this host (`me`) won the claim to publish.
    async fn record(
        &self,
        reads: Vec<Read>,
        settled: Vec<SettledDeploy<(usize, BasicProperties)>>,
        history: bool,
        me: &str,
    ) -> Vec<String> {
        let mut newest: Vec<Option<Newest>> = vec![None; reads.len()];
        for SettledDeploy {
            tag: (index, properties),
            name,
            answer,
            copy,
            verified,
        } in settled
        {
            // A name that breaks the rule is not logged as written: a
            // publisher chose it (line breaks, terminal escapes).
            let name = name
                .filter(|name| warren_protocol::check_procedure_name(name).is_ok())
                .unwrap_or_else(|| "(invalid)".to_owned());
            let republished = header_text(properties.headers().as_ref(), HEADER_DEPLOY_COPY);
            log_answer(&name, &answer, history || republished.is_some(), copy);
            if !history {
                answer_deployer(&self.channel, &properties, &answer).await;
            }
            newest[index] = if answer.accepted {
                let headers = DeployHeaders::read(properties.headers().as_ref());
                Some(Newest::Serving(name, headers))
            } else if verified {
                Some(Newest::Unserved(name))
            } else {
                None
            };
        }
        let mut state = self.state.lock();
        let mut won = Vec::new();
        let now = std::time::Instant::now();
        for (read, newest) in reads.into_iter().zip(newest) {
            if let Some(claim) = &read.claim {
                let first =
                    state
                        .keeper
                        .claim(&claim.name, claim.digest.as_deref(), &claim.host, now);
                if first && claim.host == me {
                    won.push(claim.name.clone());
                }
            }
            match newest {
                Some(Newest::Serving(name, headers)) => {
                    state
                        .keeper
                        .read(read.size, Some((name, headers, read.whole)));
                }
                Some(Newest::Unserved(name)) => {
                    state.keeper.forget(&name);
                    state.keeper.read(read.size, None);
                }
                None => state.keeper.read(read.size, None),
            }
            if let Some(offset) = read.offset {
                state.position = Some(state.position.map_or(offset, |last| last.max(offset)));
            }
        }
        won
    }

    /// If deploys are due to be published again, picks a random moment
    /// soon to claim them; if a claim is pending instead, looks again when
    /// it lapses. An earlier moment already picked stands (looking early
    /// costs nothing: nothing due, nothing claimed).
    fn schedule_republish(&mut self) {
        let now = std::time::Instant::now();
        let mut state = self.state.lock();
        let wait = state.jitter.mul_f64(fastrand::f64());
        let at = if !state.keeper.due(now).is_empty() {
            Some(Instant::now() + wait)
        } else {
            let lapse = state.keeper.next_lapse(now);
            lapse.map(|lapse| Instant::from_std(lapse) + wait)
        };
        drop(state);
        self.republish_at = match (self.republish_at, at) {
            (Some(picked), Some(at)) => Some(picked.min(at)),
            (picked, at) => picked.or(at),
        };
    }

    /// Claims the publishing of each deploy still due (another host may
    /// have claimed it meanwhile) whose module this host has in its
    /// folder. The claim comes back through the stream; if it is the first
    /// of its round, [`Self::publish_copies`] publishes the copy.
    async fn claim_due(&self, deployer: &Deployer) {
        let due = self.state.lock().keeper.due(std::time::Instant::now());
        for (name, kept) in due {
            let claimed = match self.read_kept_module(deployer, &name, &kept).await {
                Ok(Some(_)) => {
                    let mut headers = FieldTable::default();
                    DeployHeaders {
                        name: kept.headers.name.clone(),
                        digest: kept.headers.digest.clone(),
                        sequence: kept.headers.sequence.clone(),
                        ..DeployHeaders::default()
                    }
                    .write(&mut headers);
                    set_header_text(&mut headers, HEADER_DEPLOY_CLAIM, deployer.host_id());
                    self.publish_confirmed(Vec::new(), headers).await
                }
                Ok(None) => continue,
                Err(error) => Err(error),
            };
            if let Err(error) = claimed {
                tracing::warn!(
                    procedure = %name,
                    "claiming the publishing of the deploy again, so the deploy stream keeps it: {error:#}"
                );
            }
        }
    }

    /// Publishes again, unchanged, each deploy whose claim this host won.
    async fn publish_copies(&self, deployer: &Deployer, won: Vec<String>) {
        for name in won {
            let Some(kept) = self.state.lock().keeper.kept(&name) else {
                continue;
            };
            match self.republish(deployer, &name, &kept).await {
                Ok(true) => tracing::info!(
                    procedure = %name,
                    digest = kept.headers.digest.as_deref().unwrap_or_default(),
                    "published the deploy again, so the deploy stream keeps it for hosts that start later"
                ),
                Ok(false) => {}
                Err(error) => tracing::warn!(
                    procedure = %name,
                    "publishing the deploy again, so the deploy stream keeps it: {error:#}"
                ),
            }
        }
    }

    /// `Ok(false)` when this host's folder no longer holds that module.
    async fn republish(
        &self,
        deployer: &Deployer,
        name: &str,
        kept: &Kept,
    ) -> anyhow::Result<bool> {
        let Some(module) = self.read_kept_module(deployer, name, kept).await? else {
            return Ok(false);
        };
        let mut headers = FieldTable::default();
        kept.headers.write(&mut headers);
        set_header_text(&mut headers, HEADER_DEPLOY_COPY, deployer.host_id());
        self.publish_confirmed(module, headers).await.map(|()| true)
    }

    /// The module of `kept` from this host's folder, if it still holds it.
    async fn read_kept_module(
        &self,
        deployer: &Deployer,
        name: &str,
        kept: &Kept,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        let path = deployer
            .folder()
            .dir()
            .join(format!("{name}.{MODULE_EXTENSION}"));
        // Read and hashed off the async runtime: a Python module is 18 MB.
        let read = tokio::task::spawn_blocking(move || {
            std::fs::read(path).map(|module| (digest(&module), module))
        })
        .await
        .context("the read task failed")?;
        let Ok((read_digest, module)) = read else {
            return Ok(None);
        };
        if Some(read_digest) != kept.headers.digest {
            tracing::debug!(procedure = %name, "not publishing the deploy again: this host's folder holds another version");
            return Ok(None);
        }
        Ok(Some(module))
    }

    /// Appends a sync marker, so it is in the stream before the host starts
    /// looking for it.
    async fn append_marker(&self, marker: &str) -> anyhow::Result<()> {
        let mut headers = FieldTable::default();
        set_header_text(&mut headers, HEADER_DEPLOY_SYNC, marker);
        self.publish_confirmed(Vec::new(), headers)
            .await
            .context("appending a sync marker to the deploy stream")
    }

    /// Publishes to the stream (deflated and in parts when the body is
    /// large, see `warren_protocol::deploy::Part`; deflating off the async
    /// runtime) and waits for the broker to store it.
    async fn publish_confirmed(&self, body: Vec<u8>, headers: FieldTable) -> anyhow::Result<()> {
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

/// A deploy stream that exists with a retention too short for Warren: a
/// setup a person must change (the message says how).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RetentionRefused(String);

/// How many of the largest modules a host accepts must fit in what may
/// follow a deploy before it is published again
/// ([`StreamRetention::republish_after`]).
const MODULES_THE_STREAM_MUST_KEEP: u64 = 4;

/// Refuses a stream that drops messages by age, or keeps too few bytes for
/// hosts to publish deploys again before it drops them.
fn check_retention(
    declared: &warren_protocol::deploy::DeclaredStream,
    settings: &str,
    max_module_bytes: usize,
) -> Result<(), RetentionRefused> {
    let needed = MODULES_THE_STREAM_MUST_KEEP.saturating_mul(max_module_bytes as u64);
    let why = if let Some(age) = &declared.max_age {
        format!(
            "it drops messages older than {age} (x-max-age), so a procedure not deployed for \
             that long disappears for hosts that start later"
        )
    } else if declared.retention.republish_after() < needed {
        format!(
            "it keeps too few bytes: hosts publish a deploy again once half of what the stream \
             keeps beyond a segment follows it, {} bytes here, which must hold at least \
             {MODULES_THE_STREAM_MUST_KEEP} of the largest modules this host accepts \
             ({needed} bytes; --max-module-bytes)",
            declared.retention.republish_after()
        )
    } else {
        return Ok(());
    };
    let name = &declared.name;
    Err(RetentionRefused(format!(
        "the deploy stream {name} exists with settings that keep less than Warren needs \
         ({settings}): {why}. To fix it, delete it (rabbitmqctl delete_queue {name}): hosts \
         declare it anew at their next try (1 GiB in 16 MiB segments, no age limit), keep \
         serving their modules folders and still refuse deploys older than their records; then \
         deploy each procedure again, so that hosts started later find it"
    )))
}

/// The module a deploy body carries (`decode_module`), inflated off the
/// async runtime when it is deflated.
async fn decode(encoding: Option<String>, body: Vec<u8>, max: usize) -> Result<Vec<u8>, String> {
    if encoding.is_none() {
        return Ok(body);
    }
    tokio::task::spawn_blocking(move || decode_module(encoding.as_deref(), body, max))
        .await
        .unwrap_or_else(|error| Err(format!("inflating the module failed: {error}")))
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
