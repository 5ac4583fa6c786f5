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

use super::scrub::Scrubber;

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

    /// Logs what the guest wrote, at debug level, tagged with `label`,
    /// its `secrets` replaced (only when debug lines are logged at all).
    pub(super) fn log(&self, label: &str, stream: &str, secrets: &Scrubber) {
        let captured = self.inner.lock().expect("output lock");
        if captured.kept.is_empty() {
            return;
        }
        tracing::debug!(
            request = label,
            stream,
            dropped_bytes = captured.dropped,
            output = %captured.text(secrets),
            "guest output"
        );
    }

    /// What a trap's message quotes from the guest's stderr: the last line
    /// worth showing, for example a Rust panic's message (skipping the
    /// `RUST_BACKTRACE` hint that follows it), preceded by the exception
    /// line of a Python traceback or a JavaScript `Uncaught ...` line when
    /// there is one (componentize-py's and componentize-js's own last lines
    /// only say that an exception was thrown or the guest aborted, not
    /// which exception).
    ///
    /// The `secrets` are replaced before a line is picked or shortened, so
    /// no part of one shows.
    pub(super) fn last_line(&self, secrets: &Scrubber) -> Option<String> {
        let captured = self.inner.lock().expect("output lock");
        let text = captured.text(secrets);
        let meaningful = |line: &&str| {
            !line.trim().is_empty() && !line.starts_with("note: run with `RUST_BACKTRACE")
        };
        // SpiderMonkey's last word before any abort, and the stack frames it
        // prints after an uncaught exception, say nothing of why: quoted
        // only when the guest said nothing else.
        let noise = |line: &&str| line.trim() == JAVASCRIPT_ABORT || is_javascript_frame(line);
        let last = text
            .lines()
            .rev()
            .filter(meaningful)
            .find(|line| !noise(line))
            .or_else(|| text.lines().rev().find(meaningful))
            .map(|line| line.trim().chars().take(300).collect::<String>());
        match (exception_line(&text), last) {
            (Some(exception), Some(last)) if exception != last => {
                Some(format!("{exception}; {last}"))
            }
            (Some(exception), _) => Some(exception),
            (None, last) => last,
        }
    }
}

impl Captured {
    /// What was kept, as text, with `secrets` replaced; when the cap cut
    /// the output, an ending that begins a secret is replaced too.
    fn text(&self, secrets: &Scrubber) -> std::borrow::Cow<'_, str> {
        let text = String::from_utf8_lossy(&self.kept);
        if secrets.is_empty() {
            return text;
        }
        let scrubbed = if self.dropped > 0 {
            secrets.scrub_cut(&text)
        } else {
            secrets.scrub(&text)
        };
        std::borrow::Cow::Owned(scrubbed.into_owned())
    }
}

/// What a JavaScript component (SpiderMonkey) prints as it aborts.
const JAVASCRIPT_ABORT: &str = "Redirecting call to abort() to mozalloc_abort";

/// Whether `line` is a SpiderMonkey stack frame: `function@file:line:column`.
fn is_javascript_frame(line: &str) -> bool {
    let Some((_, place)) = line.trim().rsplit_once('@') else {
        return false;
    };
    let mut numbers = place.rsplitn(3, ':');
    let mut number = || {
        numbers
            .next()
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    number() && number()
}

/// The line in `text` that names an uncaught exception: the exception line
/// of the last Python traceback (`ValueError: bad input`, the first
/// unindented line after the frames), or else the last `Uncaught ...` line
/// (what the JavaScript entry wrapper of `warren new --lang js` and
/// scripts/build-guest-js prints, `Uncaught TypeError: bad input`).
fn exception_line(text: &str) -> Option<String> {
    let python = text
        .rsplit_once("Traceback (most recent call last):")
        .and_then(|(_, after)| {
            after
                .lines()
                .skip(1)
                .find(|line| !line.trim().is_empty() && !line.starts_with(char::is_whitespace))
        });
    let javascript = || {
        text.lines()
            .rev()
            .find(|line| line.starts_with("Uncaught "))
    };
    python
        .or_else(javascript)
        .map(|line| line.trim().chars().take(300).collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    #[tokio::test]
    async fn keeps_up_to_the_cap_and_never_fails_a_write() {
        let output = CappedOutput::new(10);
        let mut writer = output.clone();
        for _ in 0..100 {
            writer
                .write_all(b"0123456789abcdef\n")
                .await
                .expect("writes always succeed");
        }
        let captured = output.inner.lock().unwrap();
        assert_eq!(captured.kept, b"0123456789");
        assert_eq!(captured.dropped, 100 * 17 - 10);
    }

    #[tokio::test]
    async fn the_last_line_skips_rusts_backtrace_hint() {
        let output = CappedOutput::new(1024);
        let mut writer = output.clone();
        writer
            .write_all(
                b"thread '<unnamed>' panicked at src/lib.rs:1:1:\nboom\n\
                  note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n",
            )
            .await
            .unwrap();
        assert_eq!(
            output.last_line(&Scrubber::default()).as_deref(),
            Some("boom")
        );
        assert_eq!(CappedOutput::new(8).last_line(&Scrubber::default()), None);
    }

    #[tokio::test]
    async fn a_python_traceback_gives_its_exception_line() {
        let output = CappedOutput::new(4096);
        let mut writer = output.clone();
        writer
            .write_all(
                b"Traceback (most recent call last):\n  File \"/0/app.py\", line 4, in handle\n\
                  ValueError: bad thing hello\n\nthread '<unnamed>' (1) panicked at \
                  runtime/src/lib.rs:1293:29:\nPython function threw an unexpected exception\n\
                  note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n",
            )
            .await
            .unwrap();
        assert_eq!(
            output.last_line(&Scrubber::default()).as_deref(),
            Some("ValueError: bad thing hello; Python function threw an unexpected exception")
        );
    }

    #[tokio::test]
    async fn secrets_are_replaced_before_a_line_is_picked_or_cut() {
        let secrets = Scrubber::new(["s3cr3t-value"]);
        let output = CappedOutput::new(4096);
        let mut writer = output.clone();
        let padding = "x".repeat(295);
        writer
            .write_all(
                format!(
                    "Traceback (most recent call last):\n  File \"/0/app.py\", line 4, in handle\n\
                     ValueError: invalid literal for int() with base 10: 's3cr3t-value'\n\
                     {padding}s3cr3t-value\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let line = output.last_line(&secrets).unwrap();
        assert!(!line.contains("s3cr3t"), "{line}");
        assert!(
            line.starts_with("ValueError: invalid literal for int() with base 10: '[secret]'; xxx"),
            "{line}"
        );
        // Past the cap, the secret's beginning is all that was kept.
        let cut = CappedOutput::new(12);
        let mut writer = cut.clone();
        writer.write_all(b"key=s3cr3t-value\n").await.unwrap();
        assert_eq!(cut.last_line(&secrets).as_deref(), Some("key=[secret]"));
        let captured = cut.inner.lock().unwrap();
        assert_eq!(captured.text(&secrets), "key=[secret]");
    }

    #[tokio::test]
    async fn a_javascript_uncaught_line_is_quoted_without_the_frames_and_the_abort() {
        let output = CappedOutput::new(4096);
        let mut writer = output.clone();
        writer
            .write_all(
                b"Uncaught TypeError: bad thing\n\
                  export_handler_0_1_0$handle@/tmp/4d791cf2cbcf/sources/initializer.js:158:45\n\
                  Redirecting call to abort() to mozalloc_abort\n",
            )
            .await
            .unwrap();
        assert_eq!(
            output.last_line(&Scrubber::default()).as_deref(),
            Some("Uncaught TypeError: bad thing")
        );
        let silent = CappedOutput::new(4096);
        let mut writer = silent.clone();
        writer
            .write_all(b"Redirecting call to abort() to mozalloc_abort\n")
            .await
            .unwrap();
        assert_eq!(
            silent.last_line(&Scrubber::default()).as_deref(),
            Some("Redirecting call to abort() to mozalloc_abort"),
            "better than nothing"
        );
    }
}
