//! `warren-host`: a RabbitMQ RPC worker whose procedures are sandboxed
//! WebAssembly components, hot-swapped from a folder.
//!
//! # Layout
//!
//! - [`config`]: the command-line options and their defaults.
//! - [`session`]: one connection's life in order (connect, declare, catch
//!   up with deploys, consume) and reconnecting when it fails.
//! - [`requests`]: the request path: consume, answer, reply, ack.
//! - [`broker`]: one connection attempt, backoff, closing without hanging.
//! - [`deploy`]: remote deploys: check signature, size and digest, save and
//!   swap the module in; [`deploy::stream`] reads them from the broker.
//! - [`control`]: the host's answer to `warren status` (fleet status).
//! - [`dispatch`]: one request from body to [`dispatch::Reply`]: choose the
//!   procedure, check sizes, run it. No AMQP, no wasmtime.
//! - [`sandbox`]: wasmtime only: compile components, run one request in a
//!   fresh, capability-free instance under time and memory limits.
//! - [`modules`]: which procedure versions are served, the modules folder
//!   and the watcher that swaps them.
//! - [`shutdown`]: the graceful-shutdown signal every task listens to.
//! - [`telemetry`]: trace context on requests and replies, OTLP export.
//! - [`metrics`]: what the host counts about itself; [`admin`] serves it
//!   and the health checks over HTTP (`--metrics-addr`).
//!
//! The wire contract (header names, error kinds, error bodies) is defined
//! once, in the `warren-protocol` crate, and shared with the client.
//!
//! # Embedding
//!
//! [`start`] brings a host up (modules loaded, deploy history applied, queue
//! consumed) and returns a [`RunningHost`]; `main.rs` is a thin layer that
//! adds signals and logging, and the integration tests start hosts the same
//! way.

pub mod admin;
pub mod broker;
pub mod config;
pub mod control;
pub mod deploy;
pub mod dispatch;
pub mod metrics;
pub mod modules;
pub mod requests;
pub mod sandbox;
pub mod session;
pub mod shutdown;
pub mod telemetry;

use std::sync::Arc;

use anyhow::Context as _;
use tokio::task::JoinHandle;

use broker::Brokers;
pub use config::HostConfig;
use deploy::stream::StreamState;
use deploy::{DeployPolicy, Deployer};
use dispatch::Dispatcher;
use metrics::Metrics;
use modules::{LoadStats, ModulesFolder, Registry, watcher};
use sandbox::{EngineOptions, Sandbox};
use session::Target;
use shutdown::ShutdownTrigger;

/// A host that is up and answering requests.
pub struct RunningHost {
    trigger: ShutdownTrigger,
    folder: Arc<ModulesFolder>,
    serving: JoinHandle<anyhow::Result<()>>,
    watching: JoinHandle<()>,
    metrics: Arc<Metrics>,
    admin: Option<admin::Admin>,
}

/// Starts a host: builds the sandbox, loads every module in the modules
/// folder, starts watching it, connects to the broker (waiting for it as
/// long as `--connect-timeout` allows), applies the deploy history and
/// starts consuming. When this returns `Ok`, requests on the queue are being
/// answered.
pub async fn start(config: HostConfig) -> anyhow::Result<RunningHost> {
    // Check before anything creates the cache folder inside it.
    anyhow::ensure!(
        config.modules_dir.is_dir(),
        "the modules folder {} does not exist (create it, or pass --modules-dir)",
        config.modules_dir.display()
    );
    config.check_urls().map_err(anyhow::Error::msg)?;
    let connector = config.connector().map_err(anyhow::Error::msg)?;
    let policy = DeployPolicy {
        trusted_keys: match &config.trusted_keys {
            Some(path) => warren_protocol::deploy::read_trusted_keys(path)?,
            None => Vec::new(),
        },
        allow_unsigned: config.allow_unsigned_deploys,
        max_module_bytes: usize::try_from(config.max_module_bytes).unwrap_or(usize::MAX),
    };
    let limits = config.limits();
    let concurrency = limits.concurrency;
    let sandbox = Arc::new(
        Sandbox::with_options(
            limits,
            Some(&config.cache_dir()),
            EngineOptions {
                perf_map: config.perf_map,
                ..EngineOptions::default()
            },
        )
        .context("setting up the sandbox")?,
    );
    if config.compiler_inlining.is_some() {
        tracing::warn!(
            "--compiler-inlining (WARREN_COMPILER_INLINING) is ignored: procedures are compiled \
             without Cranelift's inliner, as wasmtime does by default; the option will go"
        );
    }
    if config.perf_map {
        tracing::info!(
            "writing {}: `perf report` names procedures' functions (--perf-map)",
            sandbox::perf_map_path().display()
        );
    }
    let registry = Arc::new(Registry::new(config.default_procedure.clone()));
    let metrics = Arc::new(Metrics::new(concurrency, config.timeout));
    let folder = Arc::new(ModulesFolder::new(
        config.modules_dir.clone(),
        sandbox.clone(),
        registry.clone(),
        metrics.clone(),
    ));
    let trigger = ShutdownTrigger::new();
    // Up before the broker is reached, so /healthz says what it waits for.
    let admin = match config.metrics_addr {
        Some(addr) => Some(
            admin::serve(
                addr,
                metrics.clone(),
                registry.clone(),
                sandbox.clone(),
                config.queue.clone(),
                trigger.subscribe(),
            )
            .await?,
        ),
        None => None,
    };

    // Watch first, so a file changed while the others load is not missed.
    let watch = watcher::watch(folder.clone(), trigger.subscribe())?;
    folder.load_all().await?;
    let watching = tokio::spawn(watch);
    registry.warn_at_startup(&config.modules_dir);
    for served in &registry.list() {
        tracing::info!(procedure = %served.name, digest = %served.digest, "serving procedure");
    }

    let deployer = Arc::new(Deployer::new(
        config
            .host_id
            .clone()
            .unwrap_or_else(deploy::default_host_id),
        policy,
        folder.clone(),
    ));
    tracing::info!(
        host_id = deployer.host_id(),
        trusted_keys = deployer_keys_summary(&config),
        "remote deploys"
    );
    let target = Target {
        brokers: Brokers::new(config.amqp_urls.clone(), connector),
        queue: config.queue.clone(),
        mode: config.queue_mode(),
        prefetch: config.prefetch(concurrency),
        retention: config.deploy_retention,
        status: Arc::new(control::StatusSource {
            host_id: deployer.host_id().to_owned(),
            queue: config.queue.clone(),
            durable: config.durable,
            metrics: metrics.clone(),
            registry: registry.clone(),
        }),
    };
    let stream_state = StreamState::new(config.deploy_retention);
    let session =
        match session::connect(&target, &deployer, &stream_state, config.connect_timeout).await {
            Ok(session) => session,
            Err(error) => {
                trigger.trigger();
                let _ = watching.await;
                return Err(error);
            }
        };
    tracing::info!(
        broker = %session.broker(),
        queue = %target.queue,
        durable = config.durable,
        concurrency,
        prefetch = target.prefetch,
        timeout = %humantime::format_duration(config.timeout),
        max_memory = %sandbox::format_bytes(config.max_memory),
        "warren-host ready"
    );

    metrics.connected(session.broker());
    let dispatcher = Arc::new(Dispatcher::new(registry, sandbox, metrics.clone()));
    let serving = tokio::spawn(session::serve_forever(
        session,
        target,
        dispatcher,
        deployer,
        stream_state,
        trigger.subscribe(),
    ));
    Ok(RunningHost {
        trigger,
        folder,
        serving,
        watching,
        metrics,
        admin,
    })
}

/// How this host treats remote deploys, for the startup log.
fn deployer_keys_summary(config: &HostConfig) -> String {
    match (&config.trusted_keys, config.allow_unsigned_deploys) {
        (_, true) => "any (--allow-unsigned-deploys)".to_owned(),
        (Some(path), false) => format!("from {}", path.display()),
        (None, false) => "none: every remote deploy is refused".to_owned(),
    }
}

impl RunningHost {
    /// The procedures this host serves.
    pub fn registry(&self) -> &Arc<Registry> {
        self.folder.registry()
    }

    /// What the host has counted (requests, swaps, deploys, the broker link).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Where `--metrics-addr` listens, if given (the port chosen for port 0).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin.as_ref().map(|admin| admin.addr)
    }

    /// What the modules folder has done: reads, loads, failures.
    pub fn module_stats(&self) -> &Arc<LoadStats> {
        self.folder.stats()
    }

    /// Stops taking requests, finishes those in flight, disconnects.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.trigger.trigger();
        self.wait().await
    }

    /// Waits until the host stops: after [`RunningHost::stop`], or when
    /// `signal` completes (for example Ctrl-C).
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        signal.await;
        tracing::info!("shutting down: finishing requests in flight");
        self.stop().await
    }

    async fn wait(self) -> anyhow::Result<()> {
        let served = self.serving.await.context("the AMQP task panicked")?;
        let _ = self.watching.await;
        if let Some(admin) = self.admin {
            let _ = admin.task.await;
        }
        served
    }
}
