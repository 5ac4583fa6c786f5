//! `warren-host`: a RabbitMQ RPC worker whose procedures are sandboxed
//! WebAssembly components, hot-swapped from a folder or deployed through
//! the broker.
//!
//! # Layout
//!
//! Three floors; each module uses only those on its floor or below it
//! (and `warren-protocol`, the wire contract and the broker layer shared
//! with the client), and no two modules use each other, directly or round a
//! cycle. `scripts/check-imports` checks both, from the floors it lists.
//!
//! - **Running the host** — [`start`] (below) and [`RunningHost`];
//!   [`config`]: the command-line options, in groups.
//! - **Talking to the broker** — `session`: one connection's life in order
//!   (connect, declare, catch up with deploys, consume) and reconnecting;
//!   `requests`: consume, answer, reply, ack (`requests::message` reads a
//!   delivery and writes a reply, `requests::replies` publishes and acks,
//!   `requests::dead` answers what durable mode dead-letters); `deploy`:
//!   remote deploys, checked (`deploy::checks`, and `deploy::replay`: no
//!   rollback by replay) and applied a batch at a time (`deploy::deployer`,
//!   `deploy::batch`; `deploy::stream` reads them, `deploy::keeper` keeps
//!   each procedure's newest one in the stream, `deploy::versions` the
//!   last versions accepted, for `warren rollback`); `control`: the answer
//!   to `warren status`; `admin`: `/metrics` and the health checks over HTTP.
//! - **Deciding and running** — `dispatch`: one request to one verdict
//!   (which procedure, who may call it, sizes, the caller's deadline), no
//!   AMQP; `callers`: caller identity, per-caller quotas (`callers::quota`),
//!   refusals held until the caller's turn (`callers::hold`) and who may
//!   call what (`callers::policy`); `modules`:
//!   which procedure versions serve, the modules folder and its watcher;
//!   [`sandbox`]: wasmtime only (engine, compiling and the compiled-code
//!   cache, one request in a fresh instance under its limits).
//! - Beside them: `shutdown` (the signal every task listens to),
//!   `telemetry` (trace context, OTLP export), `metrics` (what the host
//!   counts, registered in one table; `metrics::requests` and its timer,
//!   `metrics::process` from `/proc`; `admin` serves it) and `causes`
//!   (errors in log lines).
//!
//! # Embedding
//!
//! [`start`] brings a host up (modules loaded, deploy history applied,
//! queue consumed) and returns a [`RunningHost`]; `main.rs` is a thin layer
//! that adds signals and logging, and the tests start hosts the same way.
//! [`sandbox`] is public too: it runs a component without any broker.

mod admin;
mod callers;
mod causes;
pub mod config;
mod control;
mod deploy;
mod dispatch;
mod metrics;
mod modules;
mod requests;
pub mod sandbox;
mod session;
mod shutdown;
mod telemetry;

use std::sync::Arc;

use anyhow::Context as _;
use tokio::task::JoinHandle;
use warren_protocol::broker::Brokers;

pub use causes::Causes;
pub use config::{ConfigError, HostConfig};
use deploy::stream::StreamState;
use deploy::{DeployPolicy, Deployer};
use dispatch::Dispatcher;
use metrics::Metrics;
use modules::{ModulesFolder, Serving, watcher};
use sandbox::{EngineOptions, Sandbox};
use session::Target;
use shutdown::ShutdownTrigger;
pub use telemetry::otlp_layer;

/// Why a host did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The options cannot work (a malformed broker URL, an unreadable CA
    /// file): bad usage, which `warren-host` exits 2 for.
    #[error(transparent)]
    Usage(#[from] ConfigError),
    /// Anything else (no modules folder, the broker not reached within
    /// `--connect-timeout`, …), with what the host was doing.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// A host that is up and answering requests.
pub struct RunningHost {
    trigger: ShutdownTrigger,
    serving: Arc<Serving>,
    session: JoinHandle<anyhow::Result<()>>,
    watching: JoinHandle<()>,
    metrics: Arc<Metrics>,
    sandbox: Arc<Sandbox>,
    admin: Option<admin::Admin>,
}

/// Starts a host: checks the options, builds the sandbox, loads every
/// module in the modules folder and starts watching it, connects to the
/// broker (waiting for it as long as `--connect-timeout` allows), applies
/// the deploy history and starts consuming. When this returns `Ok`,
/// requests on the queue are being answered.
pub async fn start(config: HostConfig) -> Result<RunningHost, StartError> {
    let brokers = config.brokers()?;
    let sandbox = build_sandbox(&config)?;
    let trigger = ShutdownTrigger::new();
    let serving = Arc::new(Serving::new(config.procedures.default_procedure.clone()));
    let metrics = Arc::new(Metrics::new(
        sandbox.limits().concurrency(),
        config.limits.timeout,
    ));
    // Up before the broker is reached, so /healthz says what it waits for.
    let admin = serve_admin(&config, &metrics, &serving, &sandbox, &trigger).await?;
    let folder = Arc::new(ModulesFolder::new(
        config.procedures.modules_dir.clone(),
        sandbox.clone(),
        serving.clone(),
        metrics.clone(),
    ));
    let watching = load_modules(&config, &folder, &trigger).await?;
    let deployer = Arc::new(deployer(&config, &brokers, &folder)?);
    let target = target(&config, brokers, &deployer, &metrics, &serving);
    let stream_state = StreamState::new(config.deploy_retention, config.deploy_republish_jitter);
    let connected = session::connect(
        &target,
        &deployer,
        &stream_state,
        config.connection.connect_timeout,
    )
    .await;
    let session = match connected {
        Ok(session) => session,
        Err(error) => {
            trigger.trigger();
            let _ = watching.await;
            return Err(error.into());
        }
    };
    log_ready(&config, &target, session.broker(), &sandbox);
    metrics.connected(session.broker());
    let dispatcher = Arc::new(Dispatcher::new(
        serving.clone(),
        sandbox.clone(),
        metrics.clone(),
        callers::QuotaBook::new(config.caller_quota(), sandbox.limits().concurrency()),
        config.callers.caller_hold,
        config.callers.refuse_anonymous,
    ));
    let session = tokio::spawn(session::serve_forever(
        session,
        target,
        dispatcher,
        deployer,
        stream_state,
        trigger.subscribe(),
    ));
    Ok(RunningHost {
        trigger,
        serving,
        session,
        watching,
        metrics,
        sandbox,
        admin,
    })
}

/// The sandbox the options describe, and what it says at startup.
fn build_sandbox(config: &HostConfig) -> anyhow::Result<Arc<Sandbox>> {
    // Checked before anything creates the cache folder inside it.
    anyhow::ensure!(
        config.procedures.modules_dir.is_dir(),
        "the modules folder {} does not exist (create it, or pass --modules-dir)",
        config.procedures.modules_dir.display()
    );
    let perf_map = config.observability.perf_map;
    let mut sandbox = Sandbox::with_options(
        config.sandbox_limits(),
        Some(&config.cache_dir()),
        EngineOptions {
            spare_instances: usize::from(config.tuning.spare_instances),
            perf_map,
            ..EngineOptions::default()
        },
    )
    .context("setting up the sandbox")?;
    sandbox.set_secrets_dir(config.procedures.secrets_dir.clone());
    if config.tuning.compiler_inlining.is_some() {
        tracing::warn!(
            "--compiler-inlining (WARREN_COMPILER_INLINING) is ignored: procedures are compiled \
             without Cranelift's inliner, as wasmtime does by default; the option will go"
        );
    }
    if perf_map {
        tracing::info!(
            "writing {}: `perf report` names procedures' functions (--perf-map)",
            sandbox::perf_map_path().display()
        );
    }
    Ok(Arc::new(sandbox))
}

/// `/metrics` and the health checks, when `--metrics-addr` asks for them.
async fn serve_admin(
    config: &HostConfig,
    metrics: &Arc<Metrics>,
    serving: &Arc<Serving>,
    sandbox: &Arc<Sandbox>,
    trigger: &ShutdownTrigger,
) -> anyhow::Result<Option<admin::Admin>> {
    let Some(addr) = config.observability.metrics_addr else {
        return Ok(None);
    };
    let admin = admin::serve(
        addr,
        metrics.clone(),
        serving.clone(),
        sandbox.clone(),
        config.broker.queue.clone(),
        trigger.subscribe(),
    )
    .await?;
    Ok(Some(admin))
}

/// Loads every module in the folder and starts watching it (first, so a
/// file changed while the others load is not missed); says what serves.
async fn load_modules(
    config: &HostConfig,
    folder: &Arc<ModulesFolder>,
    trigger: &ShutdownTrigger,
) -> anyhow::Result<JoinHandle<()>> {
    let watch = watcher::watch(folder.clone(), trigger.subscribe())?;
    folder.load_all().await?;
    let watching = tokio::spawn(watch);
    let serving = folder.serving();
    serving.warn_at_startup(&config.procedures.modules_dir);
    for served in &serving.list() {
        tracing::info!(procedure = %served.name, digest = %served.digest, "serving procedure");
    }
    Ok(watching)
}

/// Who applies remote deploys here, under which policy.
fn deployer(
    config: &HostConfig,
    brokers: &Brokers,
    folder: &Arc<ModulesFolder>,
) -> anyhow::Result<Deployer> {
    let options = &config.deploys;
    let host_users = brokers.users();
    let mut publishers = host_users.clone();
    for user in &options.deploy_users {
        let user = user.trim();
        if !user.is_empty() && !publishers.iter().any(|known| known == user) {
            publishers.push(user.to_owned());
        }
    }
    let policy = DeployPolicy {
        trusted_keys: match &options.trusted_keys {
            Some(path) => warren_protocol::deploy::read_trusted_keys(path)?,
            None => Vec::new(),
        },
        allow_unsigned: options.allow_unsigned_deploys,
        max_module_bytes: usize::try_from(options.max_module_bytes).unwrap_or(usize::MAX),
        publishers,
        host_users,
    };
    let host_id = options
        .host_id
        .clone()
        .unwrap_or_else(deploy::default_host_id);
    let deployer = Deployer::new(host_id, policy, folder.clone(), options.keep_versions)?;
    tracing::info!(
        host_id = deployer.host_id(),
        trusted_keys = deployer_keys_summary(config),
        deploy_users = deployer.policy().publishers.join(","),
        "remote deploys"
    );
    if deployer.policy().publishers.is_empty() {
        tracing::warn!(
            "no broker user may publish deploys here: this host logs in with a TLS client \
             certificate, so name the deploying users, and this host's own, in --deploy-users"
        );
    }
    Ok(deployer)
}

/// How this host treats remote deploys, for the startup log.
fn deployer_keys_summary(config: &HostConfig) -> String {
    match (
        &config.deploys.trusted_keys,
        config.deploys.allow_unsigned_deploys,
    ) {
        (_, true) => "any (--allow-unsigned-deploys)".to_owned(),
        (Some(path), false) => format!("from {}", path.display()),
        (None, false) => "none: every remote deploy is refused".to_owned(),
    }
}

/// Where and how every session connects.
fn target(
    config: &HostConfig,
    brokers: Brokers,
    deployer: &Deployer,
    metrics: &Arc<Metrics>,
    serving: &Arc<Serving>,
) -> Target {
    let queue = config.broker.queue.clone();
    Target {
        brokers,
        mode: config.queue_mode(),
        prefetch: config.prefetch(config.sandbox_limits().concurrency()),
        retention: config.deploy_retention,
        status: Arc::new(control::StatusSource {
            host_id: deployer.host_id().to_owned(),
            queue: queue.clone(),
            durable: config.broker.durable,
            metrics: metrics.clone(),
            serving: serving.clone(),
            versions: deployer.versions().clone(),
        }),
        queue,
    }
}

fn log_ready(config: &HostConfig, target: &Target, broker: &str, sandbox: &Sandbox) {
    let limits = sandbox.limits();
    tracing::info!(
        broker = %broker,
        queue = %target.queue,
        durable = config.broker.durable,
        concurrency = limits.concurrency(),
        prefetch = target.prefetch,
        timeout = %humantime::format_duration(limits.timeout()),
        max_memory = %sandbox::format_bytes(limits.memory()),
        caller_quota = %config.caller_quota(),
        "warren-host ready"
    );
}

impl RunningHost {
    /// The procedures this host serves now, in name order.
    pub fn served(&self) -> Vec<warren_protocol::status::ProcedureStatus> {
        self.serving.list()
    }

    /// The digest of the version of `procedure` serving now, if any.
    pub fn digest_of(&self, procedure: &str) -> Option<String> {
        self.serving.get(procedure).map(|p| p.digest.clone())
    }

    /// What `/metrics` would answer now (Prometheus text format).
    pub fn metrics_text(&self) -> String {
        admin::metrics_text(&self.metrics, &self.serving, &self.sandbox)
    }

    /// Where `--metrics-addr` listens, if given (the port chosen for port 0).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin.as_ref().map(|admin| admin.addr)
    }

    /// Stops taking requests, finishes those in flight, disconnects.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.trigger.trigger();
        let served = self.session.await.context("the AMQP task panicked")?;
        let _ = self.watching.await;
        if let Some(admin) = self.admin {
            let _ = admin.task.await;
        }
        served
    }
}
