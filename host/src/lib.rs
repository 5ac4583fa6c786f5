//! `warren-host`: a RabbitMQ RPC worker whose procedures are sandboxed
//! WebAssembly components, hot-swapped from a folder.
//!
//! # Layout
//!
//! - [`config`]: the command-line options and their defaults.
//! - [`amqp`]: broker plumbing only: consume the request queue, publish
//!   replies, ack, reconnect.
//! - [`deploy`]: remote deploys: check signature, size and digest, swap the
//!   module in, save it to the modules folder.
//! - [`dispatch`]: one request from body to [`dispatch::Reply`]: choose the
//!   procedure, check sizes, run it. No AMQP, no wasmtime.
//! - [`sandbox`]: wasmtime only: compile components, run one request in a
//!   fresh, capability-free instance under time and memory limits.
//! - [`modules`]: which procedure versions are served, and the folder
//!   watcher that swaps them.
//! - [`shutdown`]: the graceful-shutdown signal every task listens to.
//!
//! The wire contract (header names, error kinds, error bodies) is defined
//! once, in the `warren-protocol` crate, and shared with the client.
//!
//! # Embedding
//!
//! [`start`] brings a host up (modules loaded, queue consumed) and returns a
//! [`RunningHost`]; `main.rs` is a thin layer that adds signals and logging,
//! and the integration tests start hosts the same way.

pub mod amqp;
pub mod config;
pub mod deploy;
pub mod dispatch;
pub mod modules;
pub mod sandbox;
pub mod shutdown;

use std::sync::Arc;

use anyhow::Context as _;
use tokio::task::JoinHandle;

pub use config::HostConfig;
use deploy::{DeployPolicy, Deployer};
use dispatch::Dispatcher;
use modules::{Registry, watcher};
use sandbox::Sandbox;
use shutdown::ShutdownTrigger;

/// A host that is up and answering requests.
pub struct RunningHost {
    trigger: ShutdownTrigger,
    registry: Arc<Registry>,
    serving: JoinHandle<anyhow::Result<()>>,
    watching: JoinHandle<()>,
}

/// Starts a host: builds the sandbox, loads every module in the modules
/// folder, starts watching it, connects to the broker and starts consuming.
/// When this returns `Ok`, requests on the queue are being answered.
pub async fn start(config: HostConfig) -> anyhow::Result<RunningHost> {
    // Check before anything creates the cache folder inside it.
    anyhow::ensure!(
        config.modules_dir.is_dir(),
        "the modules folder {} does not exist (create it, or pass --modules-dir)",
        config.modules_dir.display()
    );
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
        Sandbox::new(limits, Some(&config.cache_dir())).context("setting up the sandbox")?,
    );
    let registry = Arc::new(Registry::new());
    let trigger = ShutdownTrigger::new();

    // Watch first, so a file changed while the others load is not missed.
    let watch = watcher::watch(
        &config.modules_dir,
        sandbox.clone(),
        registry.clone(),
        trigger.subscribe(),
    )?;
    watcher::load_all(&config.modules_dir, &sandbox, &registry).await?;
    let procedures = registry.list();
    if procedures.is_empty() {
        tracing::warn!(
            modules_dir = %config.modules_dir.display(),
            "no procedures loaded yet; every request gets no-procedure until a NAME.wasm appears"
        );
    }
    for (name, digest) in &procedures {
        tracing::info!(procedure = %name, %digest, "serving procedure");
    }

    let prefetch = config.prefetch(concurrency);
    let session = amqp::Session::open(&config.amqp_url, &config.queue, prefetch).await?;
    tracing::info!(
        broker = %warren_protocol::redact_url(&config.amqp_url),
        queue = %config.queue,
        concurrency,
        prefetch,
        timeout = %humantime::format_duration(config.timeout),
        max_memory = %sandbox::format_bytes(config.max_memory),
        "warren-host ready"
    );

    let deployer = Arc::new(Deployer::new(
        config
            .host_id
            .clone()
            .unwrap_or_else(deploy::default_host_id),
        policy,
        registry.clone(),
        sandbox.clone(),
        config.modules_dir.clone(),
    ));
    tracing::info!(
        host_id = deployer.host_id(),
        trusted_keys = deployer_keys_summary(&config),
        "remote deploys"
    );
    let dispatcher = Arc::new(Dispatcher::new(
        registry.clone(),
        sandbox,
        config.default_procedure.clone(),
    ));
    let serving = tokio::spawn(amqp::serve_forever(
        session,
        config.amqp_url,
        config.queue,
        prefetch,
        dispatcher,
        deployer,
        trigger.subscribe(),
    ));
    let watching = tokio::spawn(watch);
    Ok(RunningHost {
        trigger,
        registry,
        serving,
        watching,
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
        &self.registry
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
        served
    }
}
