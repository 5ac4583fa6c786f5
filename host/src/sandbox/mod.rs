//! The sandbox: compiles procedure components and runs one request each.
//!
//! Everything wasmtime-specific lives here. The rest of the host sees two
//! things: [`Sandbox::prepare`], which turns component bytes into a
//! [`PreparedComponent`] (compiled, linked, checked against the WIT world),
//! and [`Sandbox::run`], which runs one request body through a fresh instance
//! of it and returns the reply body or an [`RpcError`].
//!
//! Why it is built this way:
//! - **A fresh instance per request.** Nothing one request leaves in memory
//!   or globals can be seen by the next. The pooling allocator and
//!   `InstancePre` keep that cheap (microseconds), and the pool keeps each
//!   slot's pages resident, resetting only the pages a request wrote (found
//!   with the kernel's `PAGEMAP_SCAN`): no `madvise`, no page faults and no
//!   cross-CPU TLB shootdowns per request. See [`engine_config`].
//! - **Guests run in the request's own task.** Handing each request to
//!   another runtime cost two thread wake-ups per request, most of the
//!   host's CPU (BENCHMARKS.md). A guest shares
//!   its worker thread fairly instead: it yields at every epoch tick, so a
//!   busy guest delays the tasks beside it by one tick at most, and broker
//!   I/O (including heartbeats) runs on lapin's own thread anyway.
//! - **One deadline covers everything.** Epoch interruption stops a guest
//!   spinning in wasm code; a timer around the whole call stops a guest parked
//!   in a host call (a WASI sleep or poll), which epochs cannot reach.
//! - **Slow starters get a spare.** A Python or JavaScript component takes
//!   hundreds of microseconds to instantiate; for those the next request's
//!   instance is started in the background ([`spare`]), still one instance
//!   per request. The epoch clock itself is [`ticker`].
//! - **Each compile gets an engine of its own**, thrown away afterwards, so
//!   the serving engine keeps no compiler state ([`compiler`]).
//! - **Only the WebAssembly proposals procedures need** are enabled
//!   ([`PROCEDURE_FEATURES`]); a module that uses another is refused at
//!   load, naming it.
//! - **WASI with nothing granted.** No files, environment, arguments or
//!   network; stdin is empty; stdout and stderr are captured, capped, and
//!   logged at debug level (the store a request runs in is [`guest`]).
//!   What a procedure's manifest grants on top (configuration and secrets
//!   through `wasi:config/store`, lower limits) is [`grants`]; outbound
//!   HTTP is [`http`].
//! - **Secret values stay inside.** Error replies and the guest output the
//!   host logs have each of the procedure's secret values replaced by
//!   `[secret]` ([`scrub`]).

mod bindings;
mod cache;
mod compiler;
mod engine;
mod grants;
mod guest;
mod http;
mod limits;
mod output;
mod prepare;
mod run;
mod scrub;
mod spare;
mod ticker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::Engine;
use wasmtime::component::Linker;

use cache::CompiledCache;
use compiler::Compiler;
use engine::engine_config;
pub use engine::perf_map_path;
pub use grants::Grants;
use guest::GuestState;
pub(crate) use http::http_refusals;
pub use limits::{Limits, format_bytes};
use spare::Spares;
use ticker::EpochTicker;

/// A component compiled, linked against WASI and checked to export the
/// `warren:procedure/handler` interface; ready to instantiate in microseconds.
#[derive(Clone)]
pub struct PreparedComponent {
    pre: bindings::ProcedurePre<GuestState>,
    /// Its spare instance, when it is slow to start (see [`spare`]).
    spares: Arc<Spares>,
    /// What its manifest grants it here.
    grants: Arc<Grants>,
}

impl PreparedComponent {
    /// What it is granted on this host.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }
}

/// One of the host's `--concurrency` slots, held while a request runs, and
/// one of its procedure's when its manifest allows fewer.
pub struct Slot {
    _host: OwnedSemaphorePermit,
    _procedure: Option<OwnedSemaphorePermit>,
}

/// Compiles and runs procedure components under the host's [`Limits`].
pub struct Sandbox {
    engine: Engine,
    linker: Linker<GuestState>,
    /// The host's limits, every one set ([`Limits::with_defaults`]).
    limits: Limits,
    /// One permit per concurrency slot.
    slots: Arc<Semaphore>,
    /// One permit per spare instance (`EngineOptions::spare_instances`).
    spare_permits: Arc<Semaphore>,
    /// Requests that ran in a spare instance.
    spares_used: AtomicU64,
    ticker: EpochTicker,
    cache: Option<CompiledCache>,
    /// Where modules not in the cache are compiled.
    compiler: Compiler,
    /// Where secret values are read from (`--secrets-dir`).
    secrets_dir: Option<PathBuf>,
}

/// How the engine is built beyond the [`Limits`].
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Instances started ahead, in all, for procedures slow to start (a
    /// Python or JavaScript one); 0 for none. See `sandbox::spare`. Not a
    /// limit on a request: how many the pool holds besides the requests'.
    pub spare_instances: usize,
    /// Write `/tmp/perf-PID.map` (the format `perf` reads for code
    /// generated at run time) as modules load, so a profile of the host
    /// names the procedures' own functions (`--perf-map`). Off by default.
    pub perf_map: bool,
    /// Find the pages a request wrote with the kernel's `PAGEMAP_SCAN`
    /// (Linux 6.7+) and reset only those; without it, the pool resets the
    /// resident part of a memory with `memset` and hands the rest back to
    /// the kernel. On by default, and where the kernel lacks the ioctl
    /// wasmtime falls back by itself. (wasmtime 48.0.11 resumes the scan
    /// past its buffer and resets dirty pages the kernel swapped out, what
    /// a patch of Warren's did for 48.0.10: `vendor/README.md`.)
    pub pagemap_scan: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            spare_instances: usize::from(DEFAULT_SPARE_INSTANCES),
            perf_map: false,
            pagemap_scan: true,
        }
    }
}

/// [`EngineOptions::spare_instances`] unless told (`--spare-instances`).
pub const DEFAULT_SPARE_INSTANCES: u16 = 4;

impl Sandbox {
    /// Builds the engine (pooling allocator sized for `limits.concurrency`),
    /// the WASI linker and the epoch ticker. A limit `limits` leaves unset
    /// is the default ([`Limits::DEFAULT`]; concurrency: the number of
    /// cores). With `cache_dir`, compiled code is kept there by module
    /// digest.
    pub fn new(limits: Limits, cache_dir: Option<&Path>) -> anyhow::Result<Self> {
        Self::with_options(limits, cache_dir, EngineOptions::default())
    }

    /// [`Sandbox::new`] with the operator's [`EngineOptions`].
    pub fn with_options(
        limits: Limits,
        cache_dir: Option<&Path>,
        options: EngineOptions,
    ) -> anyhow::Result<Self> {
        // Once: the cores are counted now, and a manifest's limits are
        // lowered from these (`Grants::resolve`), so each must be set.
        let limits = limits.with_defaults();
        let mut config = engine_config(&limits, options.spare_instances, options.pagemap_scan);
        // Before the profiler: the throwaway engines need not write a map,
        // the serving engine writes one as it loads their code. The serving
        // engine compiles nothing itself.
        let compiler = Compiler::new(config.clone())?;
        if options.perf_map {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                if options.perf_map {
                    format!(
                        "creating the engine (--perf-map: is {} writable?)",
                        perf_map_path().display()
                    )
                } else {
                    "creating the engine".to_owned()
                }
            })?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking WASI 0.2 into the sandbox")?;
        // Every store answers from its own procedure's grants; a component
        // may import it only if its manifest grants some (`grants`).
        wasmtime_wasi_config::add_to_linker(&mut linker, |state: &mut GuestState| {
            wasmtime_wasi_config::WasiConfig::new(&state.config)
        })
        .map_err(anyhow::Error::from)
        .context("linking wasi:config/store into the sandbox")?;
        // Every store sends through its own procedure's grant (`http`); a
        // component may import it only if its manifest grants [http].
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking wasi:http into the sandbox")?;
        let ticker = EpochTicker::start(engine.clone())?;
        let cache =
            match cache_dir {
                Some(dir) => Some(CompiledCache::open(dir).with_context(|| {
                    format!("opening the compiled-code cache {}", dir.display())
                })?),
                None => None,
            };
        Ok(Sandbox {
            cache,
            compiler,
            engine,
            linker,
            slots: Arc::new(Semaphore::new(limits.concurrency())),
            spare_permits: Arc::new(Semaphore::new(options.spare_instances)),
            spares_used: AtomicU64::new(0),
            limits,
            ticker,
            secrets_dir: None,
        })
    }

    /// Reads the values of the secrets manifests name from files in `dir`
    /// (`--secrets-dir`), one file per secret, named after it.
    pub fn set_secrets_dir(&mut self, dir: Option<PathBuf>) {
        self.secrets_dir = dir;
    }

    /// What a procedure with `manifest` (text digest `manifest_digest`), or
    /// without one, is granted here. Refused, saying why, when it names a
    /// secret this host does not have or grants what this host cannot give.
    pub fn grants(
        &self,
        manifest: Option<(&warren_protocol::manifest::Manifest, &str)>,
    ) -> anyhow::Result<Grants> {
        match manifest {
            None => Ok(Grants::none(&self.limits)),
            Some((manifest, digest)) => {
                Grants::resolve(&self.limits, manifest, digest, self.secrets_dir.as_deref())
            }
        }
    }

    /// The limits every request runs under, every one set.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Requests so far that ran in an instance started ahead of them (see
    /// [`spare`]) rather than one started on demand.
    pub fn spares_used(&self) -> u64 {
        self.spares_used.load(Ordering::Relaxed)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}
