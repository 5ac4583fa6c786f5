//! `--compiler-inlining`: modules compiled with Cranelift's inliner (each in
//! an engine of its own, then loaded into the serving one) answer the same,
//! stay inside their deadline and memory limit, and are cached apart from
//! code compiled without it.

use std::path::Path;
use std::time::Duration;

mod common;

use warren_host::modules::digest;
use warren_host::sandbox::{EngineOptions, Limits, Sandbox};
use warren_protocol::ErrorKind;

const INLINING: EngineOptions = EngineOptions {
    perf_map: false,
    compiler_inlining: true,
};

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[tokio::test(flavor = "multi_thread")]
async fn inlined_code_answers_the_same_within_its_limits_and_is_cached_apart() {
    let (fib, hostile) = (common::fib_wasm(), common::hostile_wasm());
    let cache = tempfile::tempdir().unwrap();
    let limits = Limits {
        timeout: Duration::from_millis(500),
        max_memory: 16 << 20,
        ..Limits::default()
    };
    let sandbox = Sandbox::with_options(limits.clone(), Some(cache.path()), INLINING).unwrap();
    let fib_component = sandbox.prepare(&fib, &digest(&fib)).unwrap();
    let hostile_component = sandbox.prepare(&hostile, &digest(&hostile)).unwrap();

    for (n, expected) in [("0", "0"), ("1", "1"), ("10", "55"), ("30", "832040")] {
        let reply = sandbox.run(&fib_component, n.into(), "test").await.unwrap();
        assert_eq!(String::from_utf8(reply).unwrap(), expected, "fib({n})");
    }
    let bad = sandbox
        .run(&fib_component, b"x".to_vec(), "test")
        .await
        .unwrap_err();
    assert_eq!(bad.kind, ErrorKind::ProcedureError, "{bad:?}");
    let spin = sandbox
        .run(&hostile_component, b"spin".to_vec(), "test")
        .await
        .unwrap_err();
    assert_eq!(spin.kind, ErrorKind::Timeout, "{spin:?}");
    let bomb = sandbox
        .run(&hostile_component, b"memory-bomb".to_vec(), "test")
        .await
        .unwrap_err();
    assert_eq!(bomb.kind, ErrorKind::MemoryLimit, "{bomb:?}");

    // Both compiled modules were cached; another inlining host loads them
    // rather than compiling again.
    assert_eq!(entries(cache.path()), 2);
    let again = Sandbox::with_options(limits.clone(), Some(cache.path()), INLINING).unwrap();
    let cached = again.prepare(&fib, &digest(&fib)).unwrap();
    assert_eq!(
        again.run(&cached, b"20".to_vec(), "test").await.unwrap(),
        b"6765"
    );
    assert_eq!(entries(cache.path()), 2);

    // A host without inlining cannot load that code: it compiles its own.
    let plain = Sandbox::new(limits, Some(cache.path())).unwrap();
    let own = plain.prepare(&fib, &digest(&fib)).unwrap();
    assert_eq!(
        plain.run(&own, b"20".to_vec(), "test").await.unwrap(),
        b"6765"
    );
    assert_eq!(entries(cache.path()), 3);
}
