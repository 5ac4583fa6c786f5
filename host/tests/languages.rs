//! Procedures written in Python (componentize-py) and JavaScript
//! (componentize-js): served like the Rust one, with the same answers and
//! errors, the same sandbox, and the same hot swap.
//!
//! The components come from `just build-guests` (guest-fib-py, guest-fib-js)
//! and `just build-test-guests` (test-guests/hostile-py, hostile-js), both
//! run by `just test`. Where a language's toolchain is not installed at all
//! (no python3, no node), its tests say SKIPPED and pass; where it is, a
//! missing component fails the test with the command that builds it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use warren_client::protocol::ErrorKind;
use warren_client::{CallError, RpcClient};
use warren_testing::*;

/// A guest language and where its components are.
struct Language {
    name: &'static str,
    /// The fib procedure's file stem under target/guests/ (and its procedure name).
    fib: &'static str,
    /// The hostile test guest's file stem under target/guests/.
    hostile: &'static str,
    /// The program whose absence means the toolchain is not installed.
    toolchain: &'static str,
    /// How an uncaught exception of type and message "bad thing on purpose"
    /// shows in the trap message.
    uncaught: &'static str,
    /// What trying to open a connection ends in: Python's socket module
    /// raises (the guest turns it into an `err`); JavaScript's fetch, in a
    /// component built without `http`, aborts.
    network: (ErrorKind, &'static str),
    /// What a handler returning text where bytes belong ends in.
    returned_text: &'static str,
}

const PYTHON: Language = Language {
    name: "Python",
    fib: "fib-py",
    hostile: "hostile-py",
    toolchain: "python3",
    uncaught: "ValueError: bad thing on purpose",
    network: (ErrorKind::ProcedureError, "connect failed"),
    returned_text: "CastError",
};

const JAVASCRIPT: Language = Language {
    name: "JavaScript",
    fib: "fib-js",
    hostile: "hostile-js",
    toolchain: "node",
    uncaught: "TypeError: bad thing on purpose",
    network: (ErrorKind::Trap, "unreachable"),
    returned_text: "handle returned a string, not bytes",
};

/// A first compile of a CPython or SpiderMonkey component takes seconds (in
/// a debug build, more); calls made meanwhile wait for it.
const SLOW: Duration = Duration::from_secs(120);

impl Language {
    /// target/guests/STEM.wasm, or `None` (after saying SKIPPED) when the
    /// language's toolchain is not installed at all.
    fn component(&self, stem: &str) -> Option<Vec<u8>> {
        let path = workspace().join(format!("target/guests/{stem}.wasm"));
        match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(_) if !on_path(self.toolchain) => {
                eprintln!(
                    "SKIPPED: {} procedures: {} is not installed, so {} could not be built",
                    self.name,
                    self.toolchain,
                    path.display()
                );
                None
            }
            Err(e) => panic!(
                "reading {}: {e}. Build it first: `just build-guests build-test-guests` (`just test` does it)",
                path.display()
            ),
        }
    }
}

/// Calls `procedure` with `body` and expects an error reply of `kind` whose
/// message contains `needle`.
async fn expect_error(
    client: &RpcClient,
    procedure: &str,
    body: &str,
    kind: ErrorKind,
    needle: &str,
) {
    match client
        .call(call(body).procedure(procedure).timeout(SLOW))
        .await
    {
        Err(CallError::Rpc { error, .. }) => {
            assert_eq!(error.kind, kind, "{procedure} {body:?}: {error}");
            assert!(
                error.message.contains(needle),
                "{procedure} {body:?}: {error:?} does not say {needle:?}"
            );
        }
        other => panic!("{procedure} {body:?}: expected {kind}, got {other:?}"),
    }
}

async fn expect_body(client: &RpcClient, procedure: &str, body: &str, want: &str) {
    let reply = client
        .call(call(body).procedure(procedure).timeout(SLOW))
        .await
        .unwrap_or_else(|e| panic!("{procedure} {body:?}: {e}"));
    assert_eq!(
        String::from_utf8_lossy(&reply.body),
        want,
        "{procedure} {body:?}"
    );
}

/// fib 0..=25 right, and every bad body the same `procedure-error` as the
/// Rust guest's.
async fn answers_like_the_rust_one(language: Language) {
    let Some(fib_lang) = language.component(language.fib) else {
        return;
    };
    let host = TestHost::start_with(
        &format!("{}-fib", language.fib),
        &[("fib", &fib_wasm()), (language.fib, &fib_lang)],
        |config| config.procedures.default_procedure = Some("fib".into()),
    )
    .await;
    let client = host.client().await;
    for n in 0..=25u64 {
        expect_body(&client, language.fib, &n.to_string(), &fib(n).to_string()).await;
    }
    // The top of the range, without the naive recursion's 10^19 calls: the
    // parse accepts 93 and refuses 94, like the Rust guest.
    for (body, needle) in [
        ("x", "not a decimal integer"),
        ("-3", "negative"),
        ("94", "above 93"),
        ("", "empty"),
        ("\u{1F600}", "not a decimal integer"),
    ] {
        for procedure in ["fib", language.fib] {
            expect_error(&client, procedure, body, ErrorKind::ProcedureError, needle).await;
        }
    }
    host.stop().await;
}

/// Every misdeed of the language's hostile guest ends in the right error,
/// and the host answers an honest request after each.
async fn is_sandboxed(language: Language) {
    let Some(hostile) = language.component(language.hostile) else {
        return;
    };
    let host = TestHost::start_with(
        &format!("{}-sandbox", language.hostile),
        &[("hostile", &hostile), ("fib", &fib_wasm())],
        |config| {
            config.limits.timeout = Duration::from_secs(2);
            config.procedures.default_procedure = Some("fib".into());
        },
    )
    .await;
    let client = host.client().await;
    expect_body(&client, "hostile", "hello", "echo:hello").await;
    for (misdeed, kind, needle) in [
        ("raise", ErrorKind::Trap, language.uncaught),
        ("spin", ErrorKind::Timeout, "2s"),
        ("memory-bomb", ErrorKind::MemoryLimit, "memory"),
        ("read-file", ErrorKind::ProcedureError, "read failed"),
        ("open-socket", language.network.0, language.network.1),
        ("return-text", ErrorKind::Trap, language.returned_text),
    ] {
        expect_error(&client, "hostile", misdeed, kind, needle).await;
        expect_body(&client, "fib", "10", "55").await;
    }
    // A fresh instance per request: module state never carries over, also
    // when the host starts instances ahead (spares: this component has
    // started slowly many times by now), and although an interpreter's heap
    // is dirtied in more places than one kernel scan reports, so the pool's
    // reset of its memory takes several (vendor/README.md).
    for _ in 0..6 {
        expect_body(&client, "hostile", "counter", "1").await;
    }
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_fib_answers_like_the_rust_one() {
    answers_like_the_rust_one(PYTHON).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn javascript_fib_answers_like_the_rust_one() {
    answers_like_the_rust_one(JAVASCRIPT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_procedure_is_sandboxed() {
    is_sandboxed(PYTHON).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_javascript_procedure_is_sandboxed() {
    is_sandboxed(JAVASCRIPT).await;
}

/// Under steady load on the Rust `fib`: the Python and JavaScript fibs are
/// dropped in beside it (their compile takes seconds and blocks nothing),
/// then `fib` itself is swapped to the Python build and then to the
/// JavaScript one. No call fails or is answered wrong throughout.
#[tokio::test(flavor = "multi_thread")]
async fn swapping_rust_for_python_and_javascript_under_load_fails_nothing() {
    let components: Vec<(&str, Vec<u8>)> = [PYTHON, JAVASCRIPT]
        .into_iter()
        .filter_map(|language| Some((language.fib, language.component(language.fib)?)))
        .collect();
    if components.is_empty() {
        return;
    }
    let host = TestHost::start_with("swap-languages", &[("fib", &fib_wasm())], |config| {
        config.procedures.default_procedure = Some("fib".into());
        config.limits.concurrency = Some(4);
    })
    .await;
    let client = Arc::new(host.client().await);
    let stop = Arc::new(AtomicBool::new(false));
    let callers = keep_calling(client.clone(), 4, stop.clone());

    for (name, bytes) in &components {
        host.install(name, bytes);
        assert!(
            host.wait_serving(name, &digest(bytes), SLOW).await,
            "{name} was never served"
        );
        expect_body(&client, name, "20", "6765").await;
    }
    for (name, bytes) in &components {
        host.install("fib", bytes);
        assert!(
            host.wait_serving("fib", &digest(bytes), SLOW).await,
            "fib never became {name}"
        );
        // Some load on the new version before the next swap.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    stop.store(true, Ordering::Relaxed);
    let mut made = 0;
    for caller in callers {
        made += caller.await.expect("a caller failed (it says which call)");
    }
    assert!(made > 0, "no calls were made under load");
    host.stop().await;
}

/// A call for a procedure whose module was just dropped in and is still
/// compiling hears that it is being loaded (it used to hear that no such
/// procedure exists), then gets its answer once it is served.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_while_its_module_compiles_hears_that_it_is_being_loaded() {
    let Some(fib_py) = PYTHON.component(PYTHON.fib) else {
        return;
    };
    let host = TestHost::start("loading", &[("fib", &fib_wasm())]).await;
    let client = host.client().await;
    host.install("late", &fib_py);
    let give_up = std::time::Instant::now() + SLOW;
    let mut heard = None;
    loop {
        match client.call(call("10").procedure("late")).await {
            Ok(reply) => {
                assert_eq!(reply.body, b"55");
                break;
            }
            Err(CallError::Rpc { error, .. }) if error.kind == ErrorKind::NoProcedure => {
                if error.message.contains("is being loaded") {
                    heard = Some(error.message);
                }
            }
            other => panic!("expected no-procedure or the answer, got {other:?}"),
        }
        assert!(std::time::Instant::now() < give_up, "never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let heard = heard.expect("a call made while it compiled heard so");
    assert!(heard.contains("try again"), "{heard}");
    host.stop().await;
}
