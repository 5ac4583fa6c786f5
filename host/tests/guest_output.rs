//! A guest's stdout and stderr reach the host log at debug level, tagged
//! with the request. No broker needed: this is the sandbox alone.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use warren_host::sandbox::{Limits, Sandbox};
use warren_protocol::digest;

/// Collects everything the log subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_output_is_logged_at_debug_level_with_the_request_label() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/release/guest_hostile.wasm");
    let wasm = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `just build-test-guests` first",
            path.display()
        )
    });
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let sandbox = Sandbox::new(Limits::default(), None).unwrap();
    let component = sandbox.prepare(&wasm, &digest(&wasm)).unwrap();
    let reply = sandbox
        .run(&component, b"say-hello".to_vec(), "corr-42")
        .await
        .unwrap();
    assert_eq!(reply, b"said hello");

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for (stream, line) in [
        ("stdout", "hello from the guest's stdout"),
        ("stderr", "hello from the guest's stderr"),
    ] {
        let entry = log
            .lines()
            .find(|entry| entry.contains("guest output") && entry.contains(line))
            .unwrap_or_else(|| panic!("no log line with {line:?} in:\n{log}"));
        assert!(
            entry.contains("DEBUG") && entry.contains("corr-42") && entry.contains(stream),
            "{entry}"
        );
    }
}
