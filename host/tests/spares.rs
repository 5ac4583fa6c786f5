//! Spare instances (`--spare-instances`): a procedure slow to start gets its
//! next instance started ahead, and each instance still serves one request.
//! No broker needed: this is the sandbox alone.
//!
//! Uses target/guests/hostile-py.wasm from `just build-test-guests` (run by
//! `just test`); says SKIPPED when python3 is not installed at all.

use std::path::Path;
use std::time::Duration;

use warren_host::sandbox::{EngineOptions, Limits, Sandbox};
use warren_protocol::digest;

/// The Python hostile guest, or `None` (after saying SKIPPED) when there is
/// no python3 to build it with.
fn hostile_py() -> Option<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guests/hostile-py.wasm");
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(_)
            if std::process::Command::new("python3")
                .arg("-V")
                .output()
                .is_err() =>
        {
            eprintln!(
                "SKIPPED: python3 is not installed, so {} could not be built",
                path.display()
            );
            None
        }
        Err(e) => panic!(
            "reading {}: {e}. Build it first: `just build-test-guests` (`just test` does it)",
            path.display()
        ),
    }
}

/// Calls `counter` (which counts calls in a module global) `calls` times,
/// leaving the host time to start a spare between calls, as a caller making
/// one call at a time would; every call must see a fresh instance.
async fn count_calls(sandbox: &Sandbox, wasm: &[u8], calls: usize) {
    let component = sandbox.prepare(wasm, &digest(wasm)).unwrap();
    for call in 0..calls {
        let reply = sandbox
            .run(&component, b"counter".to_vec(), "spares-test")
            .await
            .unwrap_or_else(|e| panic!("call {call}: {e}"));
        assert_eq!(
            String::from_utf8_lossy(&reply),
            "1",
            "call {call} saw module state from an earlier request"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_starting_procedure_runs_in_spares_each_used_once() {
    let Some(wasm) = hostile_py() else {
        return;
    };
    // One spare in all is enough for one procedure: the request that takes
    // it frees its place for the next.
    let options = EngineOptions {
        spare_instances: 1,
        ..EngineOptions::default()
    };
    let sandbox = Sandbox::with_options(Limits::default(), None, options).unwrap();
    count_calls(&sandbox, &wasm, 8).await;
    // Three slow starts on demand make the component one that starts
    // slowly; the fourth call starts the first spare, and from the fifth on
    // every call finds its instance started.
    assert!(
        sandbox.spares_used() >= 4,
        "only {} of 8 calls ran in a spare",
        sandbox.spares_used()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_spares_when_turned_off() {
    let Some(wasm) = hostile_py() else {
        return;
    };
    let options = EngineOptions {
        spare_instances: 0,
        ..EngineOptions::default()
    };
    let sandbox = Sandbox::with_options(Limits::default(), None, options).unwrap();
    count_calls(&sandbox, &wasm, 5).await;
    assert_eq!(sandbox.spares_used(), 0);
}
