//! Guest stdout and stderr: kept up to a cap, the rest counted and dropped.
//!
//! wasmtime's `MemoryOutputPipe` reports the stream closed once full, and a
//! Rust guest panics when `println!` fails, which would turn chatty output
//! into a `trap`. Here writes always succeed: a guest that prints forever
//! simply runs into its deadline like any other spinner.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// A bounded, shareable buffer the guest writes into.
#[derive(Clone)]
pub(super) struct CappedOutput {
    inner: Arc<Mutex<Captured>>,
}

#[derive(Default)]
struct Captured {
    kept: Vec<u8>,
    dropped: u64,
    cap: usize,
}

impl CappedOutput {
    pub(super) fn new(cap: usize) -> Self {
        CappedOutput {
            inner: Arc::new(Mutex::new(Captured {
                cap,
                ..Captured::default()
            })),
        }
    }

    /// Logs what the guest wrote, at debug level, tagged with `label`.
    pub(super) fn log(&self, label: &str, stream: &str) {
        let captured = self.inner.lock().expect("output lock");
        if captured.kept.is_empty() {
            return;
        }
        tracing::debug!(
            request = label,
            stream,
            dropped_bytes = captured.dropped,
            output = %String::from_utf8_lossy(&captured.kept),
            "guest output"
        );
    }

    /// The last line worth showing, for example a Rust panic's message
    /// (skipping the `RUST_BACKTRACE` hint that follows it).
    pub(super) fn last_line(&self) -> Option<String> {
        let captured = self.inner.lock().expect("output lock");
        String::from_utf8_lossy(&captured.kept)
            .lines()
            .rev()
            .find(|line| {
                !line.trim().is_empty() && !line.starts_with("note: run with `RUST_BACKTRACE")
            })
            .map(|line| line.trim().chars().take(300).collect())
    }
}

impl AsyncWrite for CappedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut captured = self.inner.lock().expect("output lock");
        let room = captured.cap.saturating_sub(captured.kept.len());
        let kept = room.min(buf.len());
        captured.kept.extend_from_slice(&buf[..kept]);
        captured.dropped += (buf.len() - kept) as u64;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}
