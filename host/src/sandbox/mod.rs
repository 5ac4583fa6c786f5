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
//!   `InstancePre` keep that cheap (microseconds).
//! - **Guests run on their own runtime.** Guest code runs on a dedicated
//!   tokio runtime with one worker per concurrency slot, so a busy guest never
//!   holds up the runtime that carries AMQP traffic (acks, heartbeats,
//!   replies).
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
use std::sync::atomic::{AtomicBool, Ordering};
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
    guests: GuestRuntime,
    ticker: EpochTicker,
    cache: Option<CompiledCache>,
}

impl Sandbox {
    /// Builds the engine (pooling allocator sized for `limits.concurrency`),
    /// the WASI linker, the guest runtime and the epoch ticker. With
    /// `cache_dir`, compiled code is kept there by module digest.
    pub fn new(limits: Limits, cache_dir: Option<&Path>) -> anyhow::Result<Self> {
        let engine = Engine::new(&engine_config(&limits)).map_err(anyhow::Error::from)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking WASI 0.2 into the sandbox")?;
        let guests = GuestRuntime::new(limits.concurrency)?;
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
            guests,
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
    /// Waits for a free concurrency slot, then runs on the guest runtime under
    /// the deadline and memory limit. `label` tags the guest's output in the
    /// log. Never panics on guest behaviour: every outcome is a reply body or
    /// an [`RpcError`] of the right kind.
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
        let job = Job {
            engine: self.engine.clone(),
            pre: component.pre.clone(),
            limits: self.limits.clone(),
            request,
            label: label.to_owned(),
        };
        match self.guests.handle().spawn(job.run()).await {
            Ok(outcome) => outcome,
            Err(join_error) => Err(RpcError::new(
                ErrorKind::Internal,
                format!("the guest task failed: {join_error}"),
            )),
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}

/// One request's run, moved onto the guest runtime.
struct Job {
    engine: Engine,
    pre: bindings::ProcedurePre<GuestState>,
    limits: Limits,
    request: Vec<u8>,
    label: String,
}

impl Job {
    async fn run(self) -> Result<Vec<u8>, RpcError> {
        let started = Instant::now();
        let deadline = started + self.limits.timeout;
        let stdout = CappedOutput::new(self.limits.max_output_bytes);
        let stderr = CappedOutput::new(self.limits.max_output_bytes);

        let mut store = Store::new(
            &self.engine,
            GuestState {
                wasi: no_capabilities(&stdout, &stderr),
                table: ResourceTable::new(),
                limiter: MemoryLimiter::new(self.limits.max_memory),
            },
        );
        store.limiter(|state| &mut state.limiter);
        // Check the deadline on every epoch tick; yield in between so other
        // guests sharing this worker thread get their turn.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });

        let call = async {
            let procedure = self.pre.instantiate_async(&mut store).await?;
            procedure
                .warren_procedure_handler()
                .call_handle(&mut store, &self.request)
                .await
        };
        // The timer covers what epochs cannot: a guest blocked in a host call.
        let outcome = tokio::time::timeout_at(deadline.into(), call).await;

        stdout.log(&self.label, "stdout");
        stderr.log(&self.label, "stderr");
        let memory_limit_hit = store.data().limiter.limit_hit();
        drop(store);

        let timeout_error = || {
            RpcError::new(
                ErrorKind::Timeout,
                format!(
                    "the procedure ran past the {} budget (stopped after {})",
                    humantime::format_duration(self.limits.timeout),
                    format_elapsed(started.elapsed())
                ),
            )
        };
        match outcome {
            Err(_elapsed) => Err(timeout_error()),
            Ok(Err(error)) => {
                Err(
                    classify_failure(&error, memory_limit_hit, &self.limits, &stderr)
                        .unwrap_or_else(timeout_error),
                )
            }
            Ok(Ok(Err(message))) => Err(RpcError::new(ErrorKind::ProcedureError, message)),
            Ok(Ok(Ok(reply))) if reply.len() > self.limits.max_reply_bytes => Err(RpcError::new(
                ErrorKind::ReplyTooLarge,
                format!(
                    "the procedure returned {} bytes; this host sends at most {} (--max-reply-bytes)",
                    reply.len(),
                    self.limits.max_reply_bytes
                ),
            )),
            Ok(Ok(Ok(reply))) => Ok(reply),
        }
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
            format!(
                "the procedure tried to grow its memory past the {} limit (--max-memory)",
                limits::format_bytes(limits.max_memory)
            ),
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

fn engine_config(limits: &Limits) -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    config.wasm_component_model(true);

    // Enough pool slots for every concurrent request plus slack for stores
    // being torn down while the next request starts.
    let slots = (limits.concurrency as u32) * 2 + 2;
    let mut pool = wasmtime::PoolingAllocationConfig::default();
    pool.total_component_instances(slots)
        .total_core_instances(slots * 16)
        .total_memories(slots * 4)
        .total_tables(slots * 16)
        .total_stacks(slots)
        .max_memory_size(limits.max_memory as usize);
    config.allocation_strategy(pool);
    config
}

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

/// The tokio runtime guests run on, apart from the one carrying AMQP.
struct GuestRuntime(Option<tokio::runtime::Runtime>);

impl GuestRuntime {
    fn new(workers: usize) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("warren-guest")
            .enable_time()
            .build()
            .context("starting the guest runtime")?;
        Ok(GuestRuntime(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("runtime present until drop")
            .handle()
    }
}

impl Drop for GuestRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside async code; the
        // sandbox may well be dropped there. Guests still running are
        // abandoned (their requests were never acked, so they are redelivered).
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A thread that advances the engine's epoch every [`EPOCH_TICK`].
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("warren-epoch".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                }
            })
            .context("starting the epoch thread")?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
