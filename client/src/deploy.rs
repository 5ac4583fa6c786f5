//! Publishing a module to every host of a queue, through the queue's
//! deploy stream (the contract is in `warren_protocol::deploy`).

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::ConfirmSelectOptions;
use lapin::types::FieldTable;
use warren_protocol::check_procedure_name;
use warren_protocol::deploy::{
    DeployAnswer, DeployHeaders, SecretKey, next_sequence, open_deploy_stream, publish_deploy,
};

use crate::link::broker;
use crate::{CallError, DEFAULT_TIMEOUT, RpcClient};
use warren_protocol::broker::close_quietly;
use warren_protocol::component::{DEFAULT_MAX_MODULE_BYTES, check_procedure_component};

/// One module to publish to every host of a queue, or a version they keep
/// to serve again.
pub struct Deploy {
    name: String,
    module: Vec<u8>,
    /// A version hosts keep (module digest, manifest digest): sent without
    /// its module ([`Deploy::kept_version`]).
    kept: Option<(String, Option<String>)>,
    max_module_bytes: u64,
    key: Option<SecretKey>,
    manifest: Option<String>,
    expect_hosts: Option<usize>,
    allow_no_hosts: bool,
    timeout: Duration,
    /// Sequences of this name the hosts reported ([`Deploy::after_sequence`]).
    reported: Vec<u64>,
}

impl Deploy {
    /// Deploys `module` as procedure `name`, unsigned, expecting an answer
    /// from every host consuming the queue within [`DEFAULT_TIMEOUT`].
    pub fn new(name: impl Into<String>, module: Vec<u8>) -> Self {
        Deploy {
            name: name.into(),
            module,
            kept: None,
            max_module_bytes: DEFAULT_MAX_MODULE_BYTES,
            key: None,
            manifest: None,
            expect_hosts: None,
            allow_no_hosts: false,
            timeout: DEFAULT_TIMEOUT,
            reported: Vec::new(),
        }
    }

    /// Makes every host serve a version of `name` it keeps (`warren
    /// rollback`): module `digest` with the manifest of `manifest_digest`
    /// (or none). No module is sent; a host that does not keep that
    /// version refuses it. Like any deploy it must be signed by a key the
    /// hosts trust and gets a new sequence, so it cannot be replayed later.
    pub fn kept_version(
        name: impl Into<String>,
        digest: impl Into<String>,
        manifest_digest: Option<String>,
    ) -> Self {
        Deploy {
            kept: Some((digest.into(), manifest_digest)),
            ..Deploy::new(name, Vec::new())
        }
    }

    /// Orders the deploy after `sequence`, a deploy of its name the hosts
    /// accepted (from their status), whatever this machine's clock says,
    /// unless it is past belief: see
    /// [`warren_protocol::deploy::next_sequence`]. Call it for each one
    /// reported.
    pub fn after_sequence(mut self, sequence: u64) -> Self {
        self.reported.push(sequence);
        self
    }

    /// Sends `manifest` (the text of a `NAME.toml`, see
    /// [`warren_protocol::manifest`]) with the module: what the procedure is
    /// granted on every host. The signature covers it with the module.
    pub fn manifest(mut self, manifest: impl Into<String>) -> Self {
        self.manifest = Some(manifest.into());
        self
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

    /// Refuses, sending nothing, a module larger than `bytes` [default: the
    /// hosts' default `--max-module-bytes`]: for fleets whose hosts accept
    /// more (or less).
    pub fn max_module_bytes(mut self, bytes: u64) -> Self {
        self.max_module_bytes = bytes;
        self
    }

    /// Checks what any host would check first, without the broker: the
    /// name, the size, and that the module is a procedure component.
    /// [`RpcClient::deploy`] does this before it sends anything.
    pub fn check(&self) -> Result<(), CallError> {
        check_procedure_name(&self.name).map_err(CallError::Invalid)?;
        if self.kept.is_some() {
            return Ok(());
        }
        if let Some(text) = &self.manifest {
            warren_protocol::manifest::Manifest::parse(text)
                .map_err(|error| CallError::Invalid(format!("its manifest: {error}")))?;
        }
        check_module(self)
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
    /// How many consumers the request queue had when the deploy started.
    pub consumers: usize,
}

impl DeployReport {
    /// Whether every expected host answered and all accepted.
    pub fn all_accepted(&self) -> bool {
        self.answers.len() >= self.expected && self.answers.iter().all(|a| a.accepted)
    }
}

impl RpcClient {
    /// Publishes a module to every host of the queue (through the queue's
    /// deploy stream) and collects their answers until the expected number
    /// have answered or `deploy.timeout` passes.
    pub async fn deploy(&self, deploy: Deploy) -> Result<DeployReport, CallError> {
        self.deploy_with(deploy, |_| {}).await
    }

    /// Like [`RpcClient::deploy`], calling `on_answer` with each answer as
    /// it arrives (to show progress while slower hosts compile).
    ///
    /// Refuses, sending nothing, when the name breaks the naming rule, when
    /// the module is not a procedure component no larger than
    /// [`Deploy::max_module_bytes`] (every host would refuse it, and read
    /// it again on every start), and when the request queue does not exist
    /// or has no consumer (a mistyped queue would otherwise keep the module
    /// in a stream for any host that later starts on that name), unless
    /// [`Deploy::allow_no_hosts`].
    pub async fn deploy_with(
        &self,
        deploy: Deploy,
        mut on_answer: impl FnMut(&DeployAnswer),
    ) -> Result<DeployReport, CallError> {
        deploy.check()?;
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
        let link = self.link().await?;
        let (channel, stream) = open_deploy_stream(&link.connection, &self.queue)
            .await
            .map_err(broker(
                "opening the deploy stream (RabbitMQ 3.9 or later has streams)",
            ))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker("enabling publisher confirms"))?;

        let mut headers = FieldTable::default();
        let sequence = next_sequence(deploy.reported.iter().copied());
        match &deploy.kept {
            None => DeployHeaders::with_sequence(
                &deploy.name,
                &deploy.module,
                deploy.manifest.as_deref(),
                deploy.key.as_ref(),
                sequence,
            ),
            Some((digest, manifest_digest)) => DeployHeaders::of_kept_version(
                &deploy.name,
                digest,
                manifest_digest.as_deref(),
                deploy.key.as_ref(),
                sequence,
            ),
        }
        .write(&mut headers);
        let (waiting, mut answers) = self.expect_replies();
        let mut properties = BasicProperties::default()
            .with_reply_to(link.callback_queue.clone())
            .with_correlation_id(waiting.correlation_id.as_str().into())
            .with_headers(headers);
        // Hosts act only on deploys whose user_id (checked by the broker)
        // is a deploying user's (their --deploy-users).
        if let Some(user) = &link.user {
            properties = properties.with_user_id(user.clone());
        }
        let stored = publish_deploy(&channel, &stream, &deploy.module, properties)
            .await
            .map_err(broker("publishing the deploy"))?;
        close_quietly(channel.close(200, "deploy sent".into())).await;
        if !stored {
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
            consumers,
        })
    }
}

/// What every host would check first: size, then that it is a procedure.
fn check_module(deploy: &Deploy) -> Result<(), CallError> {
    let size = deploy.module.len() as u64;
    if size > deploy.max_module_bytes {
        return Err(CallError::Invalid(format!(
            "the module is {size} bytes; hosts accept at most {} by default (their \
             --max-module-bytes; pass warren deploy --max-module-bytes if yours accept more)",
            deploy.max_module_bytes
        )));
    }
    check_procedure_component(&deploy.module)
        .map_err(|why| CallError::Invalid(format!("not deploying it: {why}")))
}
