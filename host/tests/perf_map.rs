//! `--perf-map`: the engine names the procedures' functions for `perf`,
//! whether a module was just compiled or loaded from the compiled-code cache
//! (a restarted host being profiled loads everything from the cache).

use std::collections::BTreeSet;
use std::path::Path;

use warren_host::sandbox::{EngineOptions, Limits, Sandbox, perf_map_path};
use warren_protocol::digest;

/// Addresses the map names the guest's `fib` function at, mangled
/// (`wasm[0]::function[24]::_ZN9guest_fib3fib17h…E`) as wasmtime names code
/// it loads (which is all code here: even a fresh compile is loaded from
/// its artifact, see `sandbox::compiler`) or demangled (`guest_fib::fib::h…`)
/// as it names code it compiled in place; it may write a function twice.
fn fib_addresses(map: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(map)
        .unwrap_or_else(|e| panic!("reading {}: {e}", map.display()))
        .lines()
        .filter(|line| line.contains("guest_fib::fib::") || line.contains("guest_fib3fib"))
        .filter_map(|line| line.split(' ').next().map(str::to_owned))
        .collect()
}

#[test]
fn procedures_functions_are_named_for_perf_compiled_or_cached() {
    let wasm = warren_testing::fib_wasm();
    let sha = digest(&wasm);
    let cache = tempfile::tempdir().unwrap();
    // One map per process, appended to by every engine in it; this test is
    // the only one in its process.
    let map = perf_map_path();
    let perf_map = EngineOptions {
        perf_map: true,
        ..EngineOptions::default()
    };

    let compiling = Sandbox::with_options(Limits::default(), Some(cache.path()), perf_map).unwrap();
    // Kept alive to the end: were its code unmapped, the second load could
    // be mapped at the very same address and the map would show one.
    let _compiled_code = compiling.prepare(&wasm, &sha).unwrap();
    let compiled = fib_addresses(&map);
    assert_eq!(
        compiled.len(),
        1,
        "after compiling the module: {compiled:?}"
    );

    // The second engine loads the cached code, at another address.
    assert!(
        std::fs::read_dir(cache.path()).unwrap().next().is_some(),
        "the compiled code was not cached"
    );
    let loading = Sandbox::with_options(Limits::default(), Some(cache.path()), perf_map).unwrap();
    let _loaded_code = loading.prepare(&wasm, &sha).unwrap();
    let both = fib_addresses(&map);
    assert_eq!(both.len(), 2, "after loading it from the cache: {both:?}");

    std::fs::remove_file(&map).unwrap();
}
