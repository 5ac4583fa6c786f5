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
//! - **WASI with nothing granted.** No files, environment, arguments or
//!   network; stdin is empty; stdout and stderr are captured, capped, and
//!   logged at debug level.

mod cache;
mod limits;
mod output;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::sync::Semaphore;
use warren_protocol::{ErrorKind, RpcError};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use cache::CompiledCache;
use limits::MemoryLimiter;
pub use limits::{Limits, format_bytes};
use output::CappedOutput;

/// Host-side bindings generated from `wit/procedure.wit`.
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "procedure",
        exports: { default: async },
    });
}

/// How often the epoch ticks; the deadline is checked on every tick, so a
/// spinning guest overruns its budget by at most about this much.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A component compiled, linked against WASI and checked to export the
/// `warren:procedure/handler` interface; ready to instantiate in microseconds.
#[derive(Clone)]
pub struct PreparedComponent {
    pre: bindings::ProcedurePre<GuestState>,
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

/// Compiles and runs procedure components under the host's [`Limits`].
pub struct Sandbox {
    engine: Engine,
    linker: Linker<GuestState>,
    limits: Limits,
    /// One permit per concurrency slot.
    slots: Arc<Semaphore>,
    ticker: EpochTicker,
    cache: Option<CompiledCache>,
}

impl Sandbox {
    /// Builds the engine (pooling allocator sized for `limits.concurrency`),
    /// the WASI linker and the epoch ticker. With
    /// `cache_dir`, compiled code is kept there by module digest.
    pub fn new(limits: Limits, cache_dir: Option<&Path>) -> anyhow::Result<Self> {
        let engine = Engine::new(&engine_config(&limits)).map_err(anyhow::Error::from)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking WASI 0.2 into the sandbox")?;
        let ticker = EpochTicker::start(engine.clone())?;
        let cache =
            match cache_dir {
                Some(dir) => Some(CompiledCache::open(dir, &engine).with_context(|| {
                    format!("opening the compiled-code cache {}", dir.display())
                })?),
                None => None,
            };
        Ok(Sandbox {
            cache,
            engine,
            linker,
            slots: Arc::new(Semaphore::new(limits.concurrency)),
            limits,
            ticker,
        })
    }

    /// The limits every request runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Compiles `wasm` (whose digest is `digest`) and checks that it is a
    /// component this host can run; compiled code comes from and goes to the
    /// cache when there is one.
    ///
    /// CPU-heavy (Cranelift) on a cache miss: call it off the async runtime,
    /// for example in `spawn_blocking`. The error says what is wrong.
    pub fn prepare(&self, wasm: &[u8], digest: &str) -> anyhow::Result<PreparedComponent> {
        check_is_component(wasm)?;
        // Before the cache or the compiler see it: wasmtime refuses such a
        // module too, but in its own words, and a cached entry refused for
        // this reason would look damaged.
        check_memory_fits(wasm, self.limits.max_memory)?;
        let cached = self
            .cache
            .as_ref()
            .and_then(|cache| cache.load(&self.engine, digest));
        let component = match cached {
            Some(component) => component,
            None => {
                let component = Component::new(&self.engine, wasm)
                    .map_err(anyhow::Error::from)
                    .context("compiling the component")?;
                if let Some(cache) = &self.cache {
                    cache.store(digest, &component);
                }
                component
            }
        };
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
        Ok(PreparedComponent { pre })
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
        let _slot =
            self.slots.acquire().await.map_err(|_| {
                RpcError::new(ErrorKind::Internal, "the host is shutting down; retry")
            })?;
        let _ticking = self.ticker.running();
        self.run_fresh(&component.pre, &request, label).await
    }

    async fn run_fresh(
        &self,
        pre: &bindings::ProcedurePre<GuestState>,
        request: &[u8],
        label: &str,
    ) -> Result<Vec<u8>, RpcError> {
        let limits = &self.limits;
        let started = Instant::now();
        let deadline = started + limits.timeout;
        let stdout = CappedOutput::new(limits.max_output_bytes);
        let stderr = CappedOutput::new(limits.max_output_bytes);

        let mut store = Store::new(
            &self.engine,
            GuestState {
                wasi: no_capabilities(&stdout, &stderr),
                table: ResourceTable::new(),
                limiter: MemoryLimiter::new(limits.max_memory),
            },
        );
        store.limiter(|state| &mut state.limiter);
        // Check the deadline on every epoch tick; yield in between so the
        // other tasks on this worker thread (other guests, replies) get
        // their turn.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });

        let call = async {
            let procedure = pre.instantiate_async(&mut store).await?;
            procedure
                .warren_procedure_handler()
                .call_handle(&mut store, request)
                .await
        };
        // The timer covers what epochs cannot: a guest blocked in a host call.
        let outcome = tokio::time::timeout_at(deadline.into(), call).await;

        stdout.log(label, "stdout");
        stderr.log(label, "stderr");
        let memory_limit_hit = store.data().limiter.limit_hit();
        drop(store);

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
fn engine_config(limits: &Limits) -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    config.wasm_component_model(true);

    // Enough pool slots for every concurrent request plus slack for stores
    // being torn down while the next request starts.
    let slots = (limits.concurrency as u32) * 2 + 2;
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
        .pagemap_scan(wasmtime::Enabled::Auto);
    config.allocation_strategy(pool);
    config
}

/// Most of a memory, table or stack the pool keeps resident per slot.
const KEEP_RESIDENT: usize = 16 << 20;

/// Refuses bytes that are not a component, with a reason a person can act on.
fn check_is_component(wasm: &[u8]) -> anyhow::Result<()> {
    const MAGIC: &[u8; 4] = b"\0asm";
    if wasm.len() < 8 || &wasm[..4] != MAGIC {
        bail!("not a WebAssembly file (no \\0asm header)");
    }
    // Bytes 4..8: version and layer. Core modules are version 1, layer 0.
    if wasm[4..8] == [1, 0, 0, 0] {
        bail!(
            "this is a core WebAssembly module, not a component: build for \
             wasm32-wasip2 (or wrap it with `wasm-tools component new`)"
        );
    }
    Ok(())
}

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

/// A thread that advances the engine's epoch every [`EPOCH_TICK`] while
/// guests run. When none has run for [`TICKER_IDLE`] it parks, so an idle
/// host does not wake a hundred times a second; the next guest wakes it.
struct EpochTicker {
    shared: Arc<TickerState>,
    thread: Option<JoinHandle<()>>,
}

struct TickerState {
    stop: AtomicBool,
    /// Guests running now.
    running: AtomicUsize,
    /// Whether the thread is parked (or about to be).
    parked: AtomicBool,
}

/// How long the ticker keeps ticking with no guest running.
const TICKER_IDLE: Duration = Duration::from_secs(1);

/// Marks a guest as running while alive.
struct Running<'a>(&'a EpochTicker);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.shared.running.fetch_sub(1, Ordering::Release);
    }
}

impl EpochTicker {
    fn start(engine: Engine) -> anyhow::Result<Self> {
        let shared = Arc::new(TickerState {
            stop: AtomicBool::new(false),
            running: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
        });
        let thread = std::thread::Builder::new()
            .name("warren-epoch".into())
            .spawn({
                let shared = shared.clone();
                move || {
                    let idle_ticks = (TICKER_IDLE.as_millis() / EPOCH_TICK.as_millis()) as u32;
                    let mut idle = 0;
                    while !shared.stop.load(Ordering::Acquire) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                        if shared.running.load(Ordering::Acquire) > 0 {
                            idle = 0;
                            continue;
                        }
                        idle += 1;
                        if idle >= idle_ticks {
                            shared.parked.store(true, Ordering::SeqCst);
                            // A guest that started before `parked` was set
                            // is seen here; one that starts after unparks us.
                            if shared.running.load(Ordering::SeqCst) == 0 {
                                std::thread::park();
                            }
                            shared.parked.store(false, Ordering::SeqCst);
                            idle = 0;
                        }
                    }
                }
            })
            .context("starting the epoch thread")?;
        Ok(EpochTicker {
            shared,
            thread: Some(thread),
        })
    }

    /// Counts a guest as running until the guard drops, waking the ticker
    /// if it parked.
    fn running(&self) -> Running<'_> {
        self.shared.running.fetch_add(1, Ordering::SeqCst);
        if self.shared.parked.load(Ordering::SeqCst)
            && let Some(thread) = &self.thread
        {
            thread.thread().unpark();
        }
        Running(self)
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
