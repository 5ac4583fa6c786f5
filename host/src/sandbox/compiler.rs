//! Compiling a module: in an engine of its own, thrown away after each
//! compile; the serving engine then loads the compiled code ([`load`]) as it
//! would a cache entry.
//!
//! Why: wasmtime's compiler keeps its working contexts for as long as its
//! engine lives, sized by the largest functions it has compiled. Compiling
//! in the serving engine left a host that had compiled the three fibs (Rust,
//! Python, JavaScript) at several times the resident memory it has when
//! compiling here (BENCHMARKS.md). The freed memory goes back to the kernel
//! (`malloc_trim`), and the load is milliseconds.
//!
//! Code is compiled with wasmtime's defaults for Cranelift, the
//! configuration upstream tests most: in particular without Cranelift's
//! intra-module inliner, which wasmtime leaves off by default (for a while
//! Warren turned it on for Python procedures; BENCHMARKS.md says what
//! removing it cost).

use std::hash::{Hash as _, Hasher as _};

use anyhow::Context as _;
use wasmtime::Engine;
use wasmtime::component::Component;

/// Compiles components, each in a fresh engine.
pub(super) struct Compiler {
    /// The serving engine's settings, with on-demand allocation: the
    /// compile engine never instantiates anything.
    config: wasmtime::Config,
    /// Names compiled code in the cache: a hash of the settings compiled
    /// code is checked against (wasmtime version, target, flags).
    cache_tag: String,
}

impl Compiler {
    /// A compiler for code the serving engine, configured by `config`,
    /// will load.
    pub(super) fn new(mut config: wasmtime::Config) -> anyhow::Result<Self> {
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::OnDemand);
        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("creating an engine to compile with")?;
        // SipHash with fixed keys: stable across runs of the same build,
        // which is all a cache key needs.
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Compiler {
            config,
            cache_tag: format!("{:016x}", hasher.finish()),
        })
    }

    /// What names compiled code in the compiled-code cache.
    pub(super) fn cache_tag(&self) -> &str {
        &self.cache_tag
    }

    /// Compiles `wasm` into an artifact for the serving engine: what the
    /// cache keeps, and what [`load`] turns into a component.
    pub(super) fn precompile(&self, wasm: &[u8]) -> anyhow::Result<Vec<u8>> {
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
/// again (hundreds of MB for an interpreter). Elsewhere there is nothing to
/// do here.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
