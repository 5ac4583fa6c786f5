//! The Python fib procedure (guest-fib-py, built by `just build-guest-py`
//! with componentize-py): served like the Rust one, with the same answers
//! and the same errors.

mod common;

use std::time::Duration;

use common::*;
use warren_client::protocol::ErrorKind;

/// The Python component, as `just build-guest-py` leaves it.
fn fib_py_wasm() -> Vec<u8> {
    let path = workspace().join("target/guests/fib-py.wasm");
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "reading {}: {e}. Build it first: `just build-guest-py` (`just test` does it)",
            path.display()
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_procedure_answers_like_the_rust_one() {
    let host = TestHost::start_with(
        "python-guest",
        &[("fib", &fib_wasm()), ("fib-py", &fib_py_wasm())],
        |config| config.default_procedure = Some("fib".into()),
    )
    .await;
    let client = host.client().await;
    // A CPython component's first compile takes seconds; the call waits.
    let slow = Duration::from_secs(60);
    for n in [0u64, 1, 2, 10, 25] {
        let reply = client
            .call(call(n.to_string()).procedure("fib-py").timeout(slow))
            .await
            .unwrap_or_else(|e| panic!("fib-py({n}): {e}"));
        assert_eq!(String::from_utf8(reply.body).unwrap(), fib(n).to_string());
    }
    for (body, needle) in [
        ("x", "not a decimal integer"),
        ("-3", "negative"),
        ("94", "above 93"),
        ("", "empty"),
    ] {
        for procedure in ["fib", "fib-py"] {
            let outcome = client
                .call(call(body).procedure(procedure).timeout(slow))
                .await;
            match outcome {
                Err(warren_client::CallError::Rpc { error, .. }) => {
                    assert_eq!(
                        error.kind,
                        ErrorKind::ProcedureError,
                        "{procedure} {body:?}"
                    );
                    assert!(
                        error.message.contains(needle),
                        "{procedure} {body:?}: {error}"
                    );
                }
                other => panic!("{procedure} {body:?}: expected an error, got {other:?}"),
            }
        }
    }
    host.stop().await;
}
