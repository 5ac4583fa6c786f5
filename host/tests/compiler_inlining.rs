//! `--compiler-inlining`: modules compiled with Cranelift's inliner (each in
//! an engine of its own, then loaded into the serving one) answer the same,
//! stay inside their deadline and memory limit, and are cached apart from
//! code compiled without it; with `background`, a large module serves from
//! a quick compile until its inlined code is swapped in.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use warren_host::metrics::Metrics;
use warren_host::modules::{ModulesFolder, Registry, digest};
use warren_host::sandbox::{EngineOptions, Inlining, Limits, Sandbox, Tier};
use warren_protocol::ErrorKind;

const INLINING: EngineOptions = EngineOptions {
    perf_map: false,
    compiler_inlining: Inlining::On,
};

const BACKGROUND: EngineOptions = EngineOptions {
    perf_map: false,
    compiler_inlining: Inlining::Background,
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

    // A host with inlining off looks for its own quick code (the cache
    // names entries by their compile settings): it compiles it.
    let plain = Sandbox::new(limits, Some(cache.path())).unwrap();
    let own = plain.prepare(&fib, &digest(&fib)).unwrap();
    assert_eq!(
        plain.run(&own, b"20".to_vec(), "test").await.unwrap(),
        b"6765"
    );
    assert_eq!(entries(cache.path()), 3);
}

/// The default: CPython's component serves from a quick compile at once,
/// answers throughout while its inlined compile runs in the background, and
/// then serves inlined code under the same digest; a restart finds the
/// inlined code in the cache. A small module is inlined at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_module_serves_quick_code_until_its_inlined_code_is_swapped_in() {
    let Some(fib_py) = common::fib_py_wasm() else {
        return;
    };
    let (modules, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(modules.path().join("fib-py.wasm"), &fib_py).unwrap();
    std::fs::write(modules.path().join("fib.wasm"), common::fib_wasm()).unwrap();
    let limits = Limits::default();
    let sandbox =
        Arc::new(Sandbox::with_options(limits.clone(), Some(cache.path()), BACKGROUND).unwrap());
    let registry = Arc::new(Registry::new(Some("fib".into())));
    let metrics = Arc::new(Metrics::new(limits.concurrency, limits.timeout));
    let folder = ModulesFolder::new(
        modules.path().to_owned(),
        sandbox.clone(),
        registry.clone(),
        metrics,
    );
    folder.load_all().await.unwrap();

    let fib = registry.get("fib").unwrap();
    assert_eq!(
        fib.component.tier(),
        Tier::Inlined,
        "a small module: at once"
    );
    assert!(!fib.component.inlining_pending());
    let quick = registry.get("fib-py").unwrap();
    assert_eq!(quick.component.tier(), Tier::Quick);
    assert!(quick.component.inlining_pending());

    let give_up = Instant::now() + Duration::from_secs(600);
    let inlined = loop {
        let serving = registry.get("fib-py").unwrap();
        let reply = sandbox
            .run(&serving.component, b"15".to_vec(), "test")
            .await;
        assert_eq!(
            reply.unwrap(),
            b"610",
            "fib-py on {:?} code",
            serving.component.tier()
        );
        if serving.component.tier() == Tier::Inlined {
            break serving;
        }
        assert!(Instant::now() < give_up, "the inlined code never came");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(inlined.digest, quick.digest);
    assert!(!inlined.component.inlining_pending());
    // Requests that started on the quick code can still finish on it.
    assert_eq!(
        sandbox
            .run(&quick.component, b"20".to_vec(), "test")
            .await
            .unwrap(),
        b"6765"
    );
    assert!(
        !registry.upgrade((*inlined).clone()),
        "nothing to upgrade any more"
    );

    // Quick and inlined code of fib-py, inlined code of fib.
    assert_eq!(entries(cache.path()), 3);
    let restarted = Sandbox::with_options(limits.clone(), Some(cache.path()), BACKGROUND).unwrap();
    let prepared = restarted.prepare(&fib_py, &digest(&fib_py)).unwrap();
    assert_eq!(prepared.tier(), Tier::Inlined, "from the cache, at once");
    assert!(!prepared.inlining_pending());
    // A host with inlining off takes the quick code from the cache.
    let off = Sandbox::new(limits, Some(cache.path())).unwrap();
    let prepared = off.prepare(&fib_py, &digest(&fib_py)).unwrap();
    assert_eq!(prepared.tier(), Tier::Quick);
    assert!(!prepared.inlining_pending());
    assert_eq!(entries(cache.path()), 3);
}
