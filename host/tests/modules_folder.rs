//! The modules folder under a running watcher: a file is read again only
//! when it changes, and a broken file is reported once. No broker needed.

use std::sync::Arc;
use std::time::{Duration, Instant};
mod common;

use warren_host::metrics::Metrics;

use warren_host::modules::{ModulesFolder, Registry, watcher};
use warren_host::sandbox::{Limits, Sandbox};
use warren_host::shutdown::ShutdownTrigger;

/// Waits until `done` holds, or panics after `within` saying `what`.
async fn eventually(within: Duration, what: &str, done: impl Fn() -> bool) {
    let give_up = Instant::now() + within;
    while !done() {
        assert!(
            Instant::now() < give_up,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An idle host used to read, hash and (for a broken file) recompile and
/// log its modules about ten times a second: the watcher reacted to its own
/// reads. Now nothing happens until a file changes.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_folder_is_read_once_and_a_broken_file_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fib.wasm"), common::fib_wasm()).unwrap();
    std::fs::write(dir.path().join("bad.wasm"), b"junk\n").unwrap();
    std::fs::write(dir.path().join("Misnamed.wasm"), b"ignored").unwrap();
    let sandbox = Arc::new(Sandbox::new(Limits::default(), None).unwrap());
    let registry = Arc::new(Registry::new(None));
    let metrics = Arc::new(Metrics::new(2, Duration::from_secs(10)));
    let folder = Arc::new(ModulesFolder::new(
        dir.path().to_owned(),
        sandbox,
        registry.clone(),
        metrics,
    ));
    let trigger = ShutdownTrigger::new();
    let watching = tokio::spawn(watcher::watch(folder.clone(), trigger.subscribe()).unwrap());
    folder.load_all().await.unwrap();
    let stats = folder.stats().clone();
    assert_eq!((stats.reads(), stats.loaded(), stats.failed()), (2, 1, 1));
    assert_eq!(registry.list().len(), 1, "only fib serves");

    // Idle: however long, nothing is read again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        (stats.reads(), stats.failed()),
        (2, 1),
        "an idle folder was read again"
    );

    // The same broken bytes written again: read once more, not reported again.
    std::fs::write(dir.path().join("bad.wasm"), b"junk\n").unwrap();
    eventually(Duration::from_secs(5), "re-reading bad.wasm", || {
        stats.reads() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!((stats.reads(), stats.failed()), (3, 1));

    // New broken bytes are news.
    std::fs::write(dir.path().join("bad.wasm"), b"other junk\n").unwrap();
    eventually(Duration::from_secs(5), "reporting the new bad.wasm", || {
        stats.failed() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!((stats.reads(), stats.failed()), (4, 2));

    trigger.trigger();
    watching.await.unwrap();
}
