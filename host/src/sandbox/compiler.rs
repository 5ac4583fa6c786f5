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
//! Code comes in two [`Tier`]s. Cranelift's inliner makes an interpreter
//! compiled to Wasm faster (CPython's eval loop stops calling out for every
//! frame push and pop: fib(25) in Python 5-10 % faster here, JavaScript
//! little if at all), but wasmtime 48 holds every function of the module in
//! Cranelift's intermediate form until all of them are inlined: compiling
//! CPython's 18 MB component takes about 1 GB and 11 s instead of 0.35 GB
//! and 5 s (7.8 GB before the vendored Cranelift glue stopped keeping a
//! compiler context per function, 1.85 GB before inlining was limited to
//! functions of 500 IR values: `vendor/README.md`). The serving engine
//! loads either tier (a patch of ours, also there), so a large module can
//! serve from a quick compile while the inlined one is made in the
//! background ([`Inlining::Background`]).
//!
//! Inlined compiles of large modules take turns, so the peak is one
//! interpreter's; small ones (a Rust procedure: megabytes at most to
//! compile) do not queue behind them.

use std::hash::{Hash as _, Hasher as _};
use std::sync::Mutex;

use anyhow::Context as _;
use wasmtime::Engine;
use wasmtime::component::Component;

/// Modules larger than this are "large": an interpreter (CPython's
/// component is 18 MB, SpiderMonkey's 12 MB), not a Rust procedure (tens of
/// kilobytes). Their inlined compiles take turns, and with
/// [`Inlining::Background`] they serve from a quick compile first.
pub(super) const LARGE_MODULE: usize = 1 << 20;

/// When procedures are compiled with Cranelift's inliner
/// (`--compiler-inlining`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Inlining {
    /// Never: every module is compiled quickly, without the inliner.
    #[value(alias = "false", alias = "no", alias = "0")]
    Off,
    /// Always, before the module serves: a large module's first compile
    /// takes about twice as long and 1 GB of memory.
    #[value(alias = "true", alias = "yes", alias = "1")]
    On,
    /// Small modules as with `on`; large ones (over 1 MB: Python,
    /// JavaScript) serve quick code at once, then are recompiled with the
    /// inliner on one core at low priority if 1.5 GiB of memory is
    /// available, and swapped in.
    Background,
}

/// How a module's code was compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Without the inliner: the quickest compile, in the least memory.
    Quick,
    /// With Cranelift's inliner (limited to functions of
    /// `INLINING_SUM_SIZE_THRESHOLD` IR values).
    Inlined,
}

/// Where a compile runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cores {
    /// On every core (wasmtime compiles functions in parallel): for a
    /// compile somebody waits for.
    All,
    /// On the calling thread only: for a compile nobody waits for, so the
    /// other cores stay with the requests.
    One,
}

impl Tier {
    /// `quick` or `inlined`, as metrics and fleet status say it.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Quick => "quick",
            Tier::Inlined => "inlined",
        }
    }
}

/// Compiles components, each in a fresh engine.
pub(super) struct Compiler {
    quick: Settings,
    inlined: Settings,
    /// Taken by each inlined compile of a large module.
    one_at_a_time: Mutex<()>,
}

/// What one tier is compiled with.
struct Settings {
    /// The serving engine's settings for this tier, with on-demand
    /// allocation: the compile engine never instantiates anything.
    config: wasmtime::Config,
    /// Names this tier's code in the cache: a hash of the settings
    /// compiled code is checked against (wasmtime version, target, flags).
    cache_tag: String,
}

impl Settings {
    fn new(mut config: wasmtime::Config) -> anyhow::Result<Self> {
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::OnDemand);
        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("creating an engine to compile with")?;
        // SipHash with fixed keys: stable across runs of the same build,
        // which is all a cache key needs.
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Settings {
            config,
            cache_tag: format!("{:016x}", hasher.finish()),
        })
    }
}

impl Compiler {
    /// `quick` is the serving engine's configuration; the inlined tier adds
    /// the inliner and its size limit to it.
    pub(super) fn new(quick: wasmtime::Config, inlining_limit: u32) -> anyhow::Result<Self> {
        let mut inlined = quick.clone();
        inlined
            .compiler_inlining(wasmtime::Inlining::Yes)
            .compiler_inlining_sum_size_threshold(inlining_limit);
        Ok(Compiler {
            quick: Settings::new(quick)?,
            inlined: Settings::new(inlined)?,
            one_at_a_time: Mutex::new(()),
        })
    }

    fn settings(&self, tier: Tier) -> &Settings {
        match tier {
            Tier::Quick => &self.quick,
            Tier::Inlined => &self.inlined,
        }
    }

    /// What names `tier`'s code in the compiled-code cache.
    pub(super) fn cache_tag(&self, tier: Tier) -> &str {
        &self.settings(tier).cache_tag
    }

    /// Compiles `wasm` into an artifact of `tier` for the serving engine,
    /// on `cores`: what the cache keeps, and what [`load`] turns into a
    /// component.
    pub(super) fn precompile(
        &self,
        wasm: &[u8],
        tier: Tier,
        cores: Cores,
    ) -> anyhow::Result<Vec<u8>> {
        let _turn = (tier == Tier::Inlined && wasm.len() > LARGE_MODULE).then(|| {
            self.one_at_a_time
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        });
        let mut config = self.settings(tier).config.clone();
        if cores == Cores::One {
            config.parallel_compilation(false);
        }
        let compiler = Engine::new(&config)
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
