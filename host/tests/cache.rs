//! The compiled-code cache: one entry per module digest and engine, reused
//! by the next host, and a damaged entry never stops a module loading.

use std::path::Path;

use warren_host::sandbox::{Limits, Sandbox};
use warren_protocol::digest;

fn entries(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn compiled_code_is_cached_by_digest_and_survives_a_damaged_entry() {
    let wasm = warren_testing::fib_wasm();
    let sha = digest(&wasm);
    let cache = tempfile::tempdir().unwrap();

    let first = Sandbox::new(Limits::default(), Some(cache.path())).unwrap();
    first.prepare(&wasm, &sha).expect("compiles");
    let stored = entries(cache.path());
    assert_eq!(stored.len(), 1, "{stored:?}");
    let name = stored[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with(sha.trim_start_matches("sha256:")) && name.ends_with(".cwasm"),
        "{name}"
    );
    let artifact = std::fs::read(&stored[0]).unwrap();

    // A second host reuses the entry rather than writing another.
    let second = Sandbox::new(Limits::default(), Some(cache.path())).unwrap();
    second.prepare(&wasm, &sha).expect("loads from the cache");
    assert_eq!(entries(cache.path()), stored);

    // A damaged entry is dropped and rebuilt; the module still loads.
    std::fs::write(&stored[0], b"garbage").unwrap();
    let third = Sandbox::new(Limits::default(), Some(cache.path())).unwrap();
    third
        .prepare(&wasm, &sha)
        .expect("recompiles past a damaged entry");
    assert_eq!(std::fs::read(&stored[0]).unwrap(), artifact);
}

/// A module whose own initial memory exceeds `--max-memory` is refused in
/// words that say what it needs, and the cache entry another host (with a
/// larger limit) made for it is kept, not dropped as damaged.
#[test]
fn a_module_too_big_for_max_memory_is_refused_plainly_and_its_cache_entry_kept() {
    let wasm = warren_testing::fib_wasm();
    let sha = digest(&wasm);
    let cache = tempfile::tempdir().unwrap();
    Sandbox::new(Limits::default(), Some(cache.path()))
        .unwrap()
        .prepare(&wasm, &sha)
        .expect("compiles under the default limit");
    let stored = entries(cache.path());
    let artifact = std::fs::read(&stored[0]).unwrap();

    let small = Limits {
        memory: Some(64 << 10),
        ..Limits::default()
    };
    let why = match Sandbox::new(small, Some(cache.path()))
        .unwrap()
        .prepare(&wasm, &sha)
    {
        Ok(_) => panic!("fib fits in 64 KiB?"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        why.contains("needs at least 128 KiB") && why.contains("--max-memory is 64 KiB"),
        "{why}"
    );
    assert_eq!(entries(cache.path()), stored);
    assert_eq!(std::fs::read(&stored[0]).unwrap(), artifact);
}
