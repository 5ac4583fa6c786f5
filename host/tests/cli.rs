//! The `warren-host` binary as an operator starts it, before any broker is
//! there: how it waits for one, and a URL it refuses at once. (Its log and
//! signals against the real broker are tested in the client's tests, with
//! the shared `HostProcess`.)

use std::process::Command;
use std::time::{Duration, Instant};

/// With `--connect-timeout`, a host gives up on an absent broker (exit 1)
/// after saying what it waits for; without it, it would wait forever.
#[test]
fn a_host_waits_for_the_broker_as_long_as_connect_timeout_says() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_warren-host"))
        .arg("--modules-dir")
        .arg(dir.path())
        .args([
            "--amqp-url",
            "amqp://guest:secret@127.0.0.1:1/%2f",
            "--connect-timeout",
            "2s",
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("waiting for the broker"), "{log}");
    assert!(log.contains("gave up waiting for the broker"), "{log}");
    assert!(
        log.contains("127.0.0.1:1") && !log.contains("secret"),
        "{log}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "did not wait: {log}"
    );
}

#[test]
fn a_malformed_broker_url_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warren-host"))
        .arg("--modules-dir")
        .arg(dir.path())
        .args(["--amqp-url", "http://localhost:5672"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(log.contains("amqp://user:password@host"), "{log}");
}
