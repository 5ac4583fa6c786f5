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
//!   host's CPU (measured: 136 → 85 µs of CPU per request). A guest shares
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
//!   logged at debug level.

mod cache;
mod compiler;
mod limits;
mod output;
mod spare;
mod ticker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use warren_protocol::component::{PROCEDURE_FEATURES, check_features, check_is_component};
use warren_protocol::{ErrorKind, RpcError};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use cache::CompiledCache;
use compiler::Compiler;
use limits::MemoryLimiter;
pub use limits::{Limits, format_bytes};
use output::CappedOutput;
use spare::{Spare, Spares};
use ticker::EpochTicker;

/// Host-side bindings generated from `wit/procedure.wit`.
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "procedure",
        exports: { default: async },
    });
}

/// A component compiled, linked against WASI and checked to export the
/// `warren:procedure/handler` interface; ready to instantiate in microseconds.
#[derive(Clone)]
pub struct PreparedComponent {
    pre: bindings::ProcedurePre<GuestState>,
    /// Its spare instance, when it is slow to start (see [`spare`]).
    spares: Arc<Spares>,
}

/// Per-request store data: the guest's WASI context and its limits.
struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// One of the host's `--concurrency` slots, held while a request runs.
pub struct Slot(OwnedSemaphorePermit);

/// Compiles and runs procedure components under the host's [`Limits`].
pub struct Sandbox {
    engine: Engine,
    linker: Linker<GuestState>,
    limits: Limits,
    /// One permit per concurrency slot.
    slots: Arc<Semaphore>,
    /// One permit per spare instance (`Limits::spare_instances`).
    spare_permits: Arc<Semaphore>,
    /// Requests that ran in a spare instance.
    spares_used: AtomicU64,
    ticker: EpochTicker,
    cache: Option<CompiledCache>,
    /// Where modules not in the cache are compiled.
    compiler: Compiler,
}

/// How the engine is built beyond the [`Limits`].
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Write `/tmp/perf-PID.map` (the format `perf` reads for code
    /// generated at run time) as modules load, so a profile of the host
    /// names the procedures' own functions (`--perf-map`). Off by default.
    pub perf_map: bool,
    /// Find the pages a request wrote with the kernel's `PAGEMAP_SCAN`
    /// (Linux 6.7+) and reset only those; without it, the pool resets the
    /// resident part of a memory with `memset` and hands the rest back to
    /// the kernel. On by default, and where the kernel lacks the ioctl
    /// wasmtime falls back by itself; off in a build against upstream
    /// wasmtime (`upstream-wasmtime`), whose scan leaves dirty pages the
    /// kernel swapped out unreset (see `vendor/README.md`).
    pub pagemap_scan: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            perf_map: false,
            pagemap_scan: cfg!(not(feature = "upstream-wasmtime")),
        }
    }
}

impl Sandbox {
    /// Builds the engine (pooling allocator sized for `limits.concurrency`),
    /// the WASI linker and the epoch ticker. With
    /// `cache_dir`, compiled code is kept there by module digest.
    pub fn new(limits: Limits, cache_dir: Option<&Path>) -> anyhow::Result<Self> {
        Self::with_options(limits, cache_dir, EngineOptions::default())
    }

    /// [`Sandbox::new`] with the operator's [`EngineOptions`].
    pub fn with_options(
        limits: Limits,
        cache_dir: Option<&Path>,
        options: EngineOptions,
    ) -> anyhow::Result<Self> {
        let mut config = engine_config(&limits, options.pagemap_scan);
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
            slots: Arc::new(Semaphore::new(limits.concurrency)),
            spare_permits: Arc::new(Semaphore::new(limits.spare_instances)),
            spares_used: AtomicU64::new(0),
            limits,
            ticker,
        })
    }

    /// The limits every request runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Requests so far that ran in an instance started ahead of them (see
    /// [`spare`]) rather than one started on demand.
    pub fn spares_used(&self) -> u64 {
        self.spares_used.load(Ordering::Relaxed)
    }

    /// Compiles `wasm` (whose digest is `digest`) and checks that it is a
    /// component this host can run; compiled code comes from and goes to the
    /// cache when there is one.
    ///
    /// CPU-heavy (Cranelift) on a cache miss: call it off the async runtime,
    /// for example in `spawn_blocking`. The error says what is wrong.
    pub fn prepare(&self, wasm: &[u8], digest: &str) -> anyhow::Result<PreparedComponent> {
        check_is_component(wasm).map_err(anyhow::Error::msg)?;
        // Before the cache or the compiler see it: wasmtime refuses such a
        // module too, but in its own words, and a cached entry refused for
        // this reason would look damaged.
        check_memory_fits(wasm, self.limits.max_memory)?;
        let component = match self.cached(digest) {
            Some(component) => component,
            None => self.compile(wasm, digest)?,
        };
        self.link(component)
    }

    /// Compiles `wasm` and keeps the code in the cache.
    fn compile(&self, wasm: &[u8], digest: &str) -> anyhow::Result<Component> {
        // Refused here, the reason names the proposal; wasmtime would
        // only say where in the bytes its validator stopped.
        check_features(wasm).map_err(anyhow::Error::msg)?;
        let artifact = self
            .compiler
            .precompile(wasm)
            .context("compiling the component")?;
        if let Some(cache) = &self.cache {
            cache.store(digest, self.compiler.cache_tag(), &artifact);
        }
        compiler::load(&self.engine, &artifact)
    }

    fn cached(&self, digest: &str) -> Option<Component> {
        let cache = self.cache.as_ref()?;
        cache.load(&self.engine, digest, self.compiler.cache_tag())
    }

    /// Links `component` against WASI and checks its exports.
    fn link(&self, component: Component) -> anyhow::Result<PreparedComponent> {
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context(
                "linking the component: it imports something this host does not offer \
                 (Warren offers WASI 0.2 only)",
            )?;
        let pre = bindings::ProcedurePre::new(instance_pre)
            .map_err(anyhow::Error::from)
            .context(
                "the component does not export `warren:procedure/handler@0.1.0` \
                 (build it against the WIT world in wit/)",
            )?;
        Ok(PreparedComponent {
            pre,
            spares: Arc::default(),
        })
    }

    /// Runs one request through a fresh instance of `component`.
    ///
    /// Waits for a free concurrency slot, then runs the guest in the calling
    /// task under the deadline and memory limit. `label` tags the guest's
    /// output in the log. Never panics on guest behaviour: every outcome is
    /// a reply body or an [`RpcError`] of the right kind.
    pub async fn run(
        &self,
        component: &PreparedComponent,
        request: Vec<u8>,
        label: &str,
    ) -> Result<Vec<u8>, RpcError> {
        let slot = self.slot().await?;
        self.run_in(slot, component, request, label).await
    }

    /// Waits for a free concurrency slot, for [`Sandbox::run_in`]: a caller
    /// that has something to decide once the request may start (is its
    /// caller still waiting?) decides it between the two.
    pub async fn slot(&self) -> Result<Slot, RpcError> {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map(Slot)
            .map_err(|_| RpcError::new(ErrorKind::Internal, "the host is shutting down; retry"))
    }

    /// [`Sandbox::run`] in a slot already taken.
    pub async fn run_in(
        &self,
        slot: Slot,
        component: &PreparedComponent,
        request: Vec<u8>,
        label: &str,
    ) -> Result<Vec<u8>, RpcError> {
        let _ticking = self.ticker.handle().running();
        self.run_fresh(component, &request, label, slot.0).await
    }

    async fn run_fresh(
        &self,
        component: &PreparedComponent,
        request: &[u8],
        label: &str,
        slot: OwnedSemaphorePermit,
    ) -> Result<Vec<u8>, RpcError> {
        let limits = &self.limits;
        let started = Instant::now();
        let deadline = started + limits.timeout;
        let timeout_error = || {
            RpcError::new(
                ErrorKind::Timeout,
                format!(
                    "the procedure ran past the {} budget (stopped after {})",
                    humantime::format_duration(limits.timeout),
                    format_elapsed(started.elapsed())
                ),
            )
        };

        // The spare, if one was started ahead (waiting for it counts against
        // this request's deadline); a spare that failed to start means
        // starting one here, which reports why.
        let spare = match component.spares.take() {
            Some(starting) => match tokio::time::timeout_at(deadline.into(), starting).await {
                Ok(made) => made.ok().flatten(),
                Err(_elapsed) => return Err(timeout_error()),
            },
            None => None,
        };
        let (mut guest, started_ahead) = match spare {
            Some(spare) => {
                self.spares_used.fetch_add(1, Ordering::Relaxed);
                let (guest, procedure) = spare.into_parts();
                (guest, Some(procedure))
            }
            None => (Guest::new(&self.engine, limits), None),
        };
        guest.set_deadline(deadline);
        // The next request's instance starts now, beside this one's call and
        // the round trip to the caller, when this component starts slowly.
        self.start_spare(component);

        let store = &mut guest.store;
        let call = async {
            let procedure = match started_ahead {
                Some(procedure) => procedure,
                None => {
                    let starting = Instant::now();
                    let procedure = component.pre.instantiate_async(&mut *store).await?;
                    component.spares.record_start(starting.elapsed());
                    procedure
                }
            };
            procedure
                .warren_procedure_handler()
                .call_handle(&mut *store, request)
                .await
        };
        // The timer covers what epochs cannot: a guest blocked in a host call.
        let outcome = tokio::time::timeout_at(deadline.into(), call).await;

        let Guest {
            store,
            stdout,
            stderr,
        } = guest;
        stdout.log(label, "stdout");
        stderr.log(label, "stderr");
        let memory_limit_hit = store.data().limiter.limit_hit();
        tear_down(store, slot, component.spares.starts_slowly());

        match outcome {
            Err(_elapsed) => Err(timeout_error()),
            Ok(Err(error)) => Err(classify_failure(&error, memory_limit_hit, limits, &stderr)
                .unwrap_or_else(timeout_error)),
            // A runtime that turns a refused memory.grow into an exception
            // of its own (SpiderMonkey's "out of memory", CPython's
            // MemoryError caught by the procedure) ends up here: the limit is
            // still why it failed, and that is what the caller is told.
            Ok(Ok(Err(message))) if memory_limit_hit => Err(RpcError::new(
                ErrorKind::MemoryLimit,
                format!(
                    "{} (the procedure then failed: {message})",
                    memory_limit_message(limits)
                ),
            )),
            Ok(Ok(Err(message))) => Err(RpcError::new(ErrorKind::ProcedureError, message)),
            Ok(Ok(Ok(reply))) if reply.len() > limits.max_reply_bytes => Err(RpcError::new(
                ErrorKind::ReplyTooLarge,
                format!(
                    "the procedure returned {} bytes; this host sends at most {} (--max-reply-bytes)",
                    reply.len(),
                    limits.max_reply_bytes
                ),
            )),
            Ok(Ok(Ok(reply))) => Ok(reply),
        }
    }

    /// Starts `component`'s next instance in the background when it starts
    /// slowly, none is ready or starting, and `--spare-instances` allows
    /// another (see [`spare`]).
    fn start_spare(&self, component: &PreparedComponent) {
        if !component.spares.starts_slowly() {
            return;
        }
        let Ok(permit) = self.spare_permits.clone().try_acquire_owned() else {
            return;
        };
        component.spares.start_unless_present(|| {
            let (engine, limits, ticker) = (
                self.engine.clone(),
                self.limits.clone(),
                self.ticker.handle().clone(),
            );
            let (pre, spares) = (component.pre.clone(), component.spares.clone());
            async move {
                let _ticking = ticker.running();
                let started = Instant::now();
                let deadline = started + limits.timeout;
                let mut guest = Guest::new(&engine, &limits);
                guest.set_deadline(deadline);
                let starting = pre.instantiate_async(&mut guest.store);
                match tokio::time::timeout_at(deadline.into(), starting).await {
                    Ok(Ok(procedure)) => {
                        spares.record_start(started.elapsed());
                        Some(Spare::new(guest, procedure, permit))
                    }
                    _ => {
                        tracing::debug!("a spare instance failed to start; spares stop until a request starts one");
                        spares.stop();
                        None
                    }
                }
            }
        });
    }
}

/// Drops a finished request's store, which resets its pool slot (the
/// memory's dirtied pages restored, tables and stack cleared), then frees
/// its concurrency slot: the permit is held until the pool slot is free
/// again, so the pool never holds more instances than it was sized for.
///
/// A component that starts slowly (a CPython or SpiderMonkey runtime) is
/// also slow to tear down: 150–340 µs measured for `fib-py` and `fib-js`
/// against about 30 µs for the Rust fib one at a time. For those the
/// teardown runs in a task of its own, so the reply is published first
/// rather than after it. A fast one is dropped here: a task per request
/// would cost more wake-ups than it saves.
fn tear_down(store: Store<GuestState>, slot: OwnedSemaphorePermit, slow: bool) {
    if slow {
        tokio::spawn(async move {
            drop(store);
            drop(slot);
        });
    } else {
        drop(store);
        drop(slot);
    }
}

/// One instance's store and the output it captures: what one request runs in.
struct Guest {
    store: Store<GuestState>,
    stdout: CappedOutput,
    stderr: CappedOutput,
}

impl Guest {
    /// A store with nothing granted, under the memory limit, no instance yet.
    fn new(engine: &Engine, limits: &Limits) -> Self {
        let stdout = CappedOutput::new(limits.max_output_bytes);
        let stderr = CappedOutput::new(limits.max_output_bytes);
        let mut store = Store::new(
            engine,
            GuestState {
                wasi: no_capabilities(&stdout, &stderr),
                table: ResourceTable::new(),
                limiter: MemoryLimiter::new(limits.max_memory),
            },
        );
        store.limiter(|state| &mut state.limiter);
        Guest {
            store,
            stdout,
            stderr,
        }
    }

    /// Checks `deadline` on every epoch tick and yields in between, so the
    /// other tasks on this worker thread (other guests, replies) get their
    /// turn.
    fn set_deadline(&mut self, deadline: Instant) {
        self.store.set_epoch_deadline(1);
        self.store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}

/// Maps a wasmtime error from instantiating or calling a guest to an error
/// reply. `None` means the guest was interrupted at its deadline.
fn classify_failure(
    error: &wasmtime::Error,
    memory_limit_hit: bool,
    limits: &Limits,
    stderr: &CappedOutput,
) -> Option<RpcError> {
    if memory_limit_hit {
        return Some(RpcError::new(
            ErrorKind::MemoryLimit,
            memory_limit_message(limits),
        ));
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => None,
        Some(trap) => {
            let mut message = first_line(&trap.to_string());
            if let Some(last) = stderr.last_line() {
                message = format!("{message} (guest stderr: {last})");
            }
            Some(RpcError::new(ErrorKind::Trap, message))
        }
        None => Some(RpcError::new(
            ErrorKind::Internal,
            format!(
                "the host could not run the procedure: {}",
                first_line(&format!("{error:#}"))
            ),
        )),
    }
}

fn memory_limit_message(limits: &Limits) -> String {
    format!(
        "the procedure tried to grow its memory past the {} limit (--max-memory)",
        limits::format_bytes(limits.max_memory)
    )
}

/// A WASI context that grants nothing: no preopened directories, no
/// environment, no arguments, no sockets or name lookup, an empty stdin.
/// Output goes to the given capped buffers.
fn no_capabilities(stdout: &CappedOutput, stderr: &CappedOutput) -> WasiCtx {
    WasiCtxBuilder::new()
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }))
        .build()
}

/// The engine: epochs for deadlines, the component model, and a pooling
/// allocator sized for `limits.concurrency`.
///
/// The pool keeps up to [`KEEP_RESIDENT`] of each linear memory, table and
/// async stack resident between requests and resets only the pages a
/// request touched, which wasmtime finds with the `PAGEMAP_SCAN` ioctl
/// (Linux 6.7+; off by default in wasmtime 48, so turned on here), instead
/// of handing pages back to the kernel with `madvise`. Elsewhere it falls
/// back to `memset` of the low `KEEP_RESIDENT` bytes. Measured here with
/// fib(1) at 64 in flight: `madvise` calls per request 2.9 → 0, page faults
/// 4.9 → 0, host CPU per request 85 → about 60 µs (every `madvise` in a
/// threaded process costs TLB-shootdown interrupts on the other cores);
/// a fresh instance + call of fib(1) 20 → 8.5 µs. Copy-on-write memory
/// images stay on: without them instantiation copies the data segments and
/// peak RSS grew (measured 24 → 34 MiB) for no gain.
fn engine_config(limits: &Limits, pagemap_scan: bool) -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    enable_only_procedure_features(&mut config);

    // Enough pool slots for every concurrent request plus slack for stores
    // being torn down while the next request starts, and the spares.
    let slots = (limits.concurrency as u32) * 2 + 2 + limits.spare_instances as u32;
    let keep_resident = KEEP_RESIDENT.min(usize::try_from(limits.max_memory).unwrap_or(usize::MAX));
    let mut pool = wasmtime::PoolingAllocationConfig::default();
    pool.total_component_instances(slots)
        .total_core_instances(slots * 16)
        .total_memories(slots * 4)
        .total_tables(slots * 16)
        .total_stacks(slots)
        .max_memory_size(limits.max_memory as usize)
        .linear_memory_keep_resident(keep_resident)
        .table_keep_resident(keep_resident)
        .async_stack_keep_resident(keep_resident)
        .pagemap_scan(if pagemap_scan {
            wasmtime::Enabled::Auto
        } else {
            wasmtime::Enabled::No
        });
    config.allocation_strategy(pool);
    config
}

/// Turns on exactly the proposals of [`PROCEDURE_FEATURES`] and off every
/// other that wasmtime 48 enables by default or could: what untrusted code
/// can reach of the runtime.
fn enable_only_procedure_features(config: &mut wasmtime::Config) {
    config
        .wasm_features(wasmtime::WasmFeatures::all(), false)
        .wasm_features(PROCEDURE_FEATURES, true);
}

/// Where wasmtime writes the perf map of this process (`--perf-map`): the
/// one name `perf` looks for, so every engine in the process appends to it.
pub fn perf_map_path() -> PathBuf {
    PathBuf::from(format!("/tmp/perf-{}.map", std::process::id()))
}

/// Most of a memory, table or stack the pool keeps resident per slot.
const KEEP_RESIDENT: usize = 16 << 20;

/// Refuses a component whose own initial memory is larger than
/// `--max-memory`: it could not even be instantiated. Says what it needs.
fn check_memory_fits(wasm: &[u8], max_memory: u64) -> anyhow::Result<()> {
    let mut needed: u64 = 0;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        // Malformed bytes are the compiler's to report, with its detail.
        let Ok(wasmparser::Payload::MemorySection(memories)) = payload else {
            continue;
        };
        for memory in memories.into_iter().flatten() {
            let page = 1u64 << memory.page_size_log2.unwrap_or(16);
            needed = needed.max(memory.initial.saturating_mul(page));
        }
    }
    if needed > max_memory {
        bail!(
            "it needs at least {} of memory to start; --max-memory is {} \
             (raise --max-memory, or build the module with a smaller initial memory)",
            format_bytes(needed),
            format_bytes(max_memory)
        );
    }
    Ok(())
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim().to_owned()
}

fn format_elapsed(elapsed: Duration) -> String {
    format!("{:.2}s", elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One core module in a component, each using a proposal procedures do
    /// not need.
    const DISABLED: [(&str, &str); 10] = [
        ("simd", "(func (result v128) v128.const i64x2 0 0)"),
        ("threads", "(memory 1 1 shared)"),
        ("gc", "(type (struct))"),
        (
            "function references",
            "(type $t (func)) (func (param (ref $t)))",
        ),
        ("tail calls", "(func return_call 0)"),
        ("exceptions", "(tag)"),
        ("memory64", "(memory i64 1)"),
        ("multi-memory", "(memory 1) (memory 1)"),
        ("custom page sizes", "(memory 1 (pagesize 1))"),
        (
            "wide arithmetic",
            "(func (param i64 i64 i64 i64) (result i64 i64) \
             local.get 0 local.get 1 local.get 2 local.get 3 i64.add128)",
        ),
    ];

    /// The engine itself, not only Warren's check before it, refuses each
    /// proposal that is off, so a compiled-code cache entry cannot slip one
    /// past the check either; and what procedures use still compiles.
    #[test]
    fn the_engine_refuses_every_proposal_procedures_do_not_need() {
        let compiler = Compiler::new(engine_config(&Limits::default(), true)).unwrap();
        for (proposal, module) in DISABLED {
            let wasm = wat::parse_str(format!("(component (core module {module}))"))
                .unwrap_or_else(|e| panic!("{proposal}: {e}"));
            assert!(compiler.precompile(&wasm).is_err(), "{proposal} compiled");
            let why = check_features(&wasm).unwrap_err();
            assert!(why.contains("does not enable"), "{proposal}: {why}");
        }
        let enabled = wat::parse_str(
            "(component (core module (memory 1) (table 1 funcref) (global i32 (i32.const 1)) \
             (func (result i32 i32) i32.const 1 i32.const 2) \
             (func (param i32) local.get 0 i32.extend8_s drop \
              i32.const 0 i32.const 0 i32.const 1 memory.copy ref.null func drop)))",
        )
        .unwrap();
        compiler
            .precompile(&enabled)
            .expect("enabled proposals compile");
    }
}
