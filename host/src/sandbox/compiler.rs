//! Compiling a module: in an engine of its own, thrown away after each
//! compile; the serving engine then loads the compiled code ([`load`]) as it
//! would a cache entry.
//!
//! Why: wasmtime's compiler keeps its working contexts for as long as its
//! engine lives, sized by the largest functions it has compiled. Compiling
//! in the serving engine left a host that had compiled the three fibs (Rust,
//! Python, JavaScript) at 455 MiB resident for good; compiling here, 113–156
//! MiB. The freed memory goes back to the kernel (`malloc_trim`), and the
//! load is milliseconds.
//!
//! It matters most with `--compiler-inlining`, which is opt-in for this
//! reason: the inliner makes an interpreter compiled to Wasm faster
//! (CPython's eval loop stops calling out for every frame push and pop:
//! fib(25) in Python 5-10 % faster here, JavaScript little if at all), but
//! wasmtime 48 holds every function of the module in Cranelift's
//! intermediate form until all of them are inlined: compiling CPython's 18
//! MB component takes about 1 GB and 11 s instead of 0.35 GB and 5 s (7.8
//! GB before the vendored Cranelift glue stopped keeping a compiler context
//! per function, 1.85 GB before inlining was limited to functions of 500 IR
//! values: `vendor/README.md`).
//! With inlining, large modules compile one at a time, so the peak is one
//! interpreter's; small ones (a Rust procedure: megabytes at most to
//! compile) do not queue behind them.

use std::sync::Mutex;

use anyhow::Context as _;
use wasmtime::Engine;
use wasmtime::component::Component;

/// With inlining, modules larger than this compile one at a time. CPython's
/// component is 18 MB, SpiderMonkey's 12 MB, a Rust procedure's tens of
/// kilobytes.
const ONE_AT_A_TIME_ABOVE: usize = 1 << 20;

/// Compiles components, each in a fresh engine.
pub(super) struct Compiler {
    /// The serving engine's settings with on-demand allocation: the compile
    /// engine never instantiates anything.
    config: wasmtime::Config,
    /// With inlining: taken by each compile of a large module.
    one_at_a_time: Option<Mutex<()>>,
}

impl Compiler {
    /// `config` is the serving engine's (inlining included, when on): the
    /// compiled code must match its compatibility settings to load.
    pub(super) fn new(mut config: wasmtime::Config, inlining: bool) -> Self {
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::OnDemand);
        Compiler {
            config,
            one_at_a_time: inlining.then(|| Mutex::new(())),
        }
    }

    /// Compiles `wasm` into an artifact for the serving engine: what the
    /// cache keeps, and what [`load`] turns into a component.
    pub(super) fn precompile(&self, wasm: &[u8]) -> anyhow::Result<Vec<u8>> {
        let _turn = self
            .one_at_a_time
            .as_ref()
            .filter(|_| wasm.len() > ONE_AT_A_TIME_ABOVE)
            .map(|lock| lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        let compiler = Engine::new(&self.config)
            .map_err(anyhow::Error::from)
            .context("creating an engine to compile with")?;
        let artifact = compiler
            .precompile_component(wasm)
            .map_err(anyhow::Error::from)?;
        drop(compiler);
        give_back_freed_memory();
        Ok(artifact)
    }
}

/// The component `artifact` ([`Compiler::precompile`]'s, just now) holds,
/// loaded into `engine`, the serving engine.
pub(super) fn load(engine: &Engine, artifact: &[u8]) -> anyhow::Result<Component> {
    // SAFETY: the bytes were produced by `precompile_component` in this
    // process, on an engine with the serving engine's compatibility
    // settings; wasmtime checks those settings again as it loads them.
    unsafe { Component::deserialize(engine, artifact) }
        .map_err(anyhow::Error::from)
        .context("loading the code just compiled")
}

/// Hands the allocator's free pages back to the kernel. glibc keeps freed
/// memory for reuse; after a compile that is memory the host will not need
/// again (about 1 GB, with inlining). Elsewhere there is nothing to do here.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
