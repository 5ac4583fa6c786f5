//! Calls through the client and what they get back: fib's answers, an
//! error reply for each bad input, procedures named or not.

use std::sync::Arc;

use warren_client::CallError;
use warren_client::protocol::ErrorKind;
use warren_testing::*;

#[tokio::test(flavor = "multi_thread")]
async fn fib_0_to_30_through_the_client_all_in_flight_at_once() {
    let wasm = fib_wasm();
    let host = TestHost::start("fib", &[("fib", &wasm)]).await;
    let client = Arc::new(host.client().await);
    let calls = (0..=30u64).map(|n| {
        let client = client.clone();
        tokio::spawn(async move { (n, client.call(call(n.to_string())).await) })
    });
    for handle in calls.collect::<Vec<_>>() {
        let (n, reply) = handle.await.unwrap();
        let reply = reply.unwrap_or_else(|e| panic!("fib({n}): {e}"));
        assert_eq!(
            String::from_utf8(reply.body).unwrap(),
            fib(n).to_string(),
            "fib({n})"
        );
        assert_eq!(reply.procedure.as_deref(), Some("fib"));
        assert_eq!(reply.digest, Some(digest(&wasm)));
    }
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_bad_input_gets_its_error_reply_and_the_host_still_answers() {
    let host = TestHost::start("bad-input", &[("fib", &fib_wasm())]).await;
    let client = host.client().await;
    let cases: Vec<(&str, Vec<u8>, ErrorKind, &str)> = vec![
        (
            "abc",
            b"abc".to_vec(),
            ErrorKind::ProcedureError,
            "not a decimal integer",
        ),
        ("-1", b"-1".to_vec(), ErrorKind::ProcedureError, "negative"),
        ("empty", Vec::new(), ErrorKind::ProcedureError, "empty"),
        (
            "1e3",
            b"1e3".to_vec(),
            ErrorKind::ProcedureError,
            "not a decimal integer",
        ),
        (
            "huge",
            b"99999999999999999999".to_vec(),
            ErrorKind::ProcedureError,
            "above 93",
        ),
        ("94", b"94".to_vec(), ErrorKind::ProcedureError, "above 93"),
        (
            "not utf-8",
            vec![0xff, 0xfe, 0x00, 0x31],
            ErrorKind::ProcedureError,
            "not UTF-8",
        ),
        (
            "5 MB",
            vec![b'1'; 5_000_000],
            ErrorKind::RequestTooLarge,
            "at most",
        ),
    ];
    for (label, body, kind, needle) in cases {
        match client.call(call(body)).await {
            Err(CallError::Rpc {
                error, procedure, ..
            }) => {
                assert_eq!(error.kind, kind, "{label}: {error}");
                assert!(error.message.contains(needle), "{label}: {error}");
                assert_eq!(procedure.as_deref(), Some("fib"), "{label}");
            }
            other => panic!("{label}: expected an error reply, got {other:?}"),
        }
        let still = client
            .call(call("10"))
            .await
            .expect("the host still answers");
        assert_eq!(still.body, b"55", "after {label}");
    }
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_procedure_gets_no_procedure() {
    let host = TestHost::start("unknown", &[("fib", &fib_wasm())]).await;
    let client = host.client().await;
    let outcome = client.call(call("1").procedure("does-not-exist")).await;
    match outcome {
        Err(CallError::Rpc {
            error, procedure, ..
        }) => {
            assert_eq!(error.kind, ErrorKind::NoProcedure);
            assert!(
                error.message.contains("does-not-exist") && error.message.contains("fib"),
                "{error}"
            );
            assert_eq!(procedure.as_deref(), Some("does-not-exist"));
        }
        other => panic!("expected no-procedure, got {other:?}"),
    }
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_two_modules_and_no_default_a_request_must_name_one() {
    let wasm = fib_wasm();
    let twin = with_custom_section(&wasm, "twin");
    let host = TestHost::start("two", &[("fib", &wasm), ("twin", &twin)]).await;
    let client = host.client().await;
    let outcome = client.call(call("5")).await;
    match outcome {
        Err(CallError::Rpc { error, .. }) => {
            assert_eq!(error.kind, ErrorKind::NoProcedure);
            assert!(error.message.contains("--default-procedure"), "{error}");
        }
        other => panic!("expected no-procedure, got {other:?}"),
    }
    let reply = client.call(call("5").procedure("twin")).await.unwrap();
    assert_eq!(
        (reply.body.as_slice(), reply.digest),
        (&b"5"[..], Some(digest(&twin)))
    );
    host.stop().await;

    let host = TestHost::start_with("two-default", &[("fib", &wasm), ("twin", &twin)], |c| {
        c.procedures.default_procedure = Some("twin".into());
    })
    .await;
    let reply = host.client().await.call(call("6")).await.unwrap();
    assert_eq!(
        (reply.body.as_slice(), reply.procedure.as_deref()),
        (&b"8"[..], Some("twin"))
    );
    host.stop().await;
}
