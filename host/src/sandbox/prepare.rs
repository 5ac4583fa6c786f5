//! Preparing a module to serve: the checks that explain a refusal in a
//! person's words, the compiled-code cache, compiling, and linking against
//! WASI and the WIT world.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use warren_protocol::component::{check_features, check_is_component};
use wasmtime::component::Component;

use super::grants::{Grants, check_imports};
use super::limits::format_bytes;
use super::{PreparedComponent, Sandbox, bindings, compiler};

impl Sandbox {
    /// [`Sandbox::prepare_granted`] with no grants: the host's limits and
    /// nothing else, what a procedure without a manifest gets.
    pub fn prepare(&self, wasm: &[u8], digest: &str) -> anyhow::Result<PreparedComponent> {
        self.prepare_granted(wasm, digest, Grants::none(&self.limits))
    }

    /// Compiles `wasm` (whose digest is `digest`) and checks that it is a
    /// component this host can run with `grants`; compiled code comes from
    /// and goes to the cache when there is one.
    ///
    /// CPU-heavy (Cranelift) on a cache miss: call it off the async runtime,
    /// for example in `spawn_blocking`. The error says what is wrong.
    pub fn prepare_granted(
        &self,
        wasm: &[u8],
        digest: &str,
        grants: Grants,
    ) -> anyhow::Result<PreparedComponent> {
        check_is_component(wasm).map_err(anyhow::Error::msg)?;
        // Before the cache or the compiler see it: wasmtime refuses such a
        // module too, but in its own words, and a cached entry refused for
        // this reason would look damaged.
        check_memory_fits(wasm, grants.limits.memory())?;
        let component = match self.cached(digest) {
            Some(component) => component,
            None => self.compile(wasm, digest)?,
        };
        check_imports(&self.engine, &component, &grants)?;
        self.link(component, grants)
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
    fn link(&self, component: Component, grants: Grants) -> anyhow::Result<PreparedComponent> {
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context(
                "linking the component: it imports something this host does not offer \
                 (Warren offers WASI 0.2, and wasi:config/store to a procedure whose manifest \
                 grants configuration)",
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
            grants: Arc::new(grants),
        })
    }
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
