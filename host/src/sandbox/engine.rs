//! The engine every procedure runs in: epochs for deadlines, only the
//! WebAssembly proposals procedures need, and a pooling allocator sized for
//! the host's concurrency.

use std::path::PathBuf;

use warren_protocol::component::PROCEDURE_FEATURES;

use super::limits::Limits;

/// The engine: epochs for deadlines, the component model, and a pooling
/// allocator sized for `limits.concurrency` and `spare_instances`.
///
/// The pool keeps up to [`KEEP_RESIDENT`] of each linear memory, table and
/// async stack resident between requests and resets only the pages a
/// request touched, which wasmtime finds with the `PAGEMAP_SCAN` ioctl
/// (Linux 6.7+; off by default in wasmtime 48, so turned on here), instead
/// of handing pages back to the kernel with `madvise`, whose cost in a
/// threaded process (TLB shootdowns on the other cores) was most of the
/// host's CPU per request. Elsewhere it falls back to `memset` of the low
/// `KEEP_RESIDENT` bytes. Copy-on-write memory images stay on: without them
/// instantiation copies the data segments and peak memory grows, for no
/// gain. BENCHMARKS.md has the measurements.
pub(super) fn engine_config(
    limits: &Limits,
    spare_instances: usize,
    pagemap_scan: bool,
) -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    enable_only_procedure_features(&mut config);

    // Enough pool slots for every concurrent request plus slack for stores
    // being torn down while the next request starts, and the spares.
    let slots = (limits.concurrency() as u32) * 2 + 2 + spare_instances as u32;
    let keep_resident = KEEP_RESIDENT.min(usize::try_from(limits.memory()).unwrap_or(usize::MAX));
    let mut pool = wasmtime::PoolingAllocationConfig::default();
    pool.total_component_instances(slots)
        .total_core_instances(slots * 16)
        .total_memories(slots * 4)
        .total_tables(slots * 16)
        .total_stacks(slots)
        .max_memory_size(limits.memory() as usize)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::compiler::Compiler;
    use warren_protocol::component::check_features;

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
        let spares = usize::from(crate::sandbox::DEFAULT_SPARE_INSTANCES);
        let compiler = Compiler::new(engine_config(&Limits::default(), spares, true)).unwrap();
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
