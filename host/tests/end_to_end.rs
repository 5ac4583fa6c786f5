//! The whole path over the real broker: client → queue → host → fib
//! component → reply, including every error reply and hot swapping.

use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt as _;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use warren_client::CallError;
use warren_client::protocol::{
    ERROR_CONTENT_TYPE, ErrorBody, ErrorKind, HEADER_PROCEDURE, HEADER_PROCEDURE_DIGEST,
    HEADER_RPC_ERROR, HEADER_RPC_STATUS, header_text,
};
use warren_testing::*;

fn seed_fib(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        seed_fib(n - 1) + seed_fib(n - 2)
    }
}

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
            seed_fib(n).to_string(),
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
async fn error_replies_follow_the_wire_contract() {
    let wasm = fib_wasm();
    let host = TestHost::start("wire", &[("fib", &wasm)]).await;
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let callback = channel
        .queue_declare(
            ShortString::default(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut replies = channel
        .basic_consume(
            callback.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for (body, status) in [("abc", "error"), ("7", "ok")] {
        channel
            .basic_publish(
                "".into(),
                host.queue.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default()
                    .with_reply_to(callback.name().clone())
                    .with_correlation_id(format!("corr-{body}").into()),
            )
            .await
            .unwrap();
        let reply = tokio::time::timeout(CALL_TIMEOUT, replies.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let props = &reply.properties;
        let headers = props.headers().as_ref();
        assert_eq!(
            props.correlation_id().as_ref().unwrap().as_str(),
            format!("corr-{body}")
        );
        assert_eq!(
            header_text(headers, HEADER_RPC_STATUS).as_deref(),
            Some(status)
        );
        assert_eq!(
            header_text(headers, HEADER_PROCEDURE).as_deref(),
            Some("fib")
        );
        assert_eq!(
            header_text(headers, HEADER_PROCEDURE_DIGEST),
            Some(digest(&wasm))
        );
        if status == "error" {
            assert_eq!(
                header_text(headers, HEADER_RPC_ERROR).as_deref(),
                Some("procedure-error")
            );
            assert_eq!(
                props.content_type().as_ref().unwrap().as_str(),
                ERROR_CONTENT_TYPE
            );
            let body = ErrorBody::from_json(&reply.data).expect("a JSON error body");
            assert_eq!(body.error.kind, ErrorKind::ProcedureError);
            assert!(
                std::str::from_utf8(&reply.data)
                    .unwrap()
                    .parse::<i64>()
                    .is_err()
            );
        } else {
            assert_eq!(reply.data, b"13");
            assert_eq!(header_text(headers, HEADER_RPC_ERROR), None);
        }
    }

    // An x-procedure header of the wrong AMQP type is named as such (it
    // used to be read as no header at all: "the request names no procedure").
    let mut headers = FieldTable::default();
    headers.insert(
        HEADER_PROCEDURE.into(),
        lapin::types::AMQPValue::LongLongInt(5),
    );
    channel
        .basic_publish(
            "".into(),
            host.queue.as_str().into(),
            BasicPublishOptions::default(),
            b"7",
            BasicProperties::default()
                .with_reply_to(callback.name().clone())
                .with_headers(headers),
        )
        .await
        .unwrap();
    let reply = tokio::time::timeout(CALL_TIMEOUT, replies.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let body = ErrorBody::from_json(&reply.data).expect("a JSON error body");
    assert_eq!(body.error.kind, ErrorKind::NoProcedure);
    assert!(
        body.error
            .message
            .contains("the x-procedure header is an integer; it must be a string"),
        "{}",
        body.error.message
    );
    close_connection(&connection).await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_without_reply_to_is_acked_and_dropped() {
    let host = TestHost::start("no-reply-to", &[("fib", &fib_wasm())]).await;
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            "".into(),
            host.queue.as_str().into(),
            BasicPublishOptions::default(),
            b"10",
            BasicProperties::default().with_correlation_id("orphan".into()),
        )
        .await
        .unwrap();
    // A normal call after it proves the host moved past it.
    let client = host.client().await;
    assert_eq!(client.call(call("10")).await.unwrap().body, b"55");
    let queue = host.queue.clone();
    let mut host = host;
    let running = host.host.take().unwrap();
    running.stop().await.unwrap();
    // Had it been left unacked, stopping the host would have returned it to the queue.
    let info = channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        info.message_count(),
        0,
        "the request without reply_to was not acked"
    );
    close_connection(&connection).await;
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

#[tokio::test(flavor = "multi_thread")]
async fn a_module_replaced_under_a_running_host_serves_within_a_second_or_so() {
    let v1 = fib_wasm();
    let v2 = with_custom_section(&v1, "second build");
    let host = TestHost::start("swap", &[("fib", &v1)]).await;
    let client = host.client().await;
    assert_eq!(
        client.call(call("20")).await.unwrap().digest,
        Some(digest(&v1))
    );

    host.install("fib", &v2);
    let reply = call_until(
        &client,
        call("20"),
        Duration::from_secs(10),
        |r| matches!(r, Ok(reply) if reply.digest == Some(digest(&v2))),
    )
    .await
    .expect("calls keep succeeding during the swap");
    assert_eq!(
        reply.digest,
        Some(digest(&v2)),
        "the new version never took over"
    );
    assert_eq!(reply.body, b"6765");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_module_file_keeps_the_last_good_version_serving() {
    let good = fib_wasm();
    let host = TestHost::start("broken", &[("fib", &good)]).await;
    let client = host.client().await;

    host.install("fib", b"this is not wasm at all");
    host.install("fib-core", b"\0asm\x01\0\0\0"); // a core module, not a component
    // A valid module written after the broken ones: once it serves, the
    // watcher has been through the broken ones too.
    let marker = with_custom_section(&good, "marker");
    host.install("marker", &marker);
    call_until(
        &client,
        call("1").procedure("marker"),
        Duration::from_secs(10),
        |r| r.is_ok(),
    )
    .await
    .expect("the marker module loads");

    let reply = client.call(call("12").procedure("fib")).await.unwrap();
    assert_eq!(
        (reply.body.as_slice(), reply.digest),
        (&b"144"[..], Some(digest(&good)))
    );
    let core = client.call(call("1").procedure("fib-core")).await;
    assert_eq!(error_kind(core), ErrorKind::NoProcedure);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_module_retires_it_and_putting_it_back_restores_it() {
    let wasm = fib_wasm();
    let host = TestHost::start("delete", &[("fib", &wasm)]).await;
    let client = host.client().await;
    std::fs::remove_file(host.module_path("fib")).unwrap();
    let gone = call_until(
        &client,
        call("3").procedure("fib"),
        Duration::from_secs(10),
        |r| r.is_err(),
    )
    .await;
    assert_eq!(error_kind(gone), ErrorKind::NoProcedure);
    host.install("fib", &wasm);
    let back = call_until(
        &client,
        call("3").procedure("fib"),
        Duration::from_secs(10),
        |r| r.is_ok(),
    )
    .await;
    assert_eq!(back.unwrap().body, b"2");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn swapping_again_and_again_under_steady_load_fails_no_request() {
    let v1 = fib_wasm();
    let versions: Vec<Vec<u8>> = (0..4)
        .map(|i| with_custom_section(&v1, &format!("build {i}")))
        .collect();
    let host = TestHost::start("swap-load", &[("fib", &v1)]).await;
    let client = Arc::new(host.client().await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..4)
        .map(|caller| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut answered = Vec::new();
                let mut n = caller;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n = (n + 1) % 25;
                    let reply = client.call(call(n.to_string())).await;
                    let reply =
                        reply.unwrap_or_else(|e| panic!("fib({n}) failed during swaps: {e}"));
                    assert_eq!(
                        String::from_utf8(reply.body).unwrap(),
                        seed_fib(n).to_string()
                    );
                    answered.push(reply.digest.unwrap());
                }
                answered
            })
        })
        .collect();
    for round in 0..12 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        host.install("fib", &versions[round % versions.len()]);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen = std::collections::BTreeSet::new();
    let mut total = 0;
    for caller in callers {
        let answered = caller.await.expect("no caller saw a failed or wrong reply");
        total += answered.len();
        seen.extend(answered);
    }
    assert!(
        total > 50,
        "too little load to mean anything: {total} calls"
    );
    assert!(
        seen.len() >= 3,
        "the swaps did not take effect under load: {seen:?}"
    );
    host.stop().await;
}

/// In the default mode a host declares a new request queue durable
/// (RabbitMQ 4 deprecates, and can refuse, transient non-exclusive queues),
/// and joins a queue the tutorial's server made (transient) as it is.
#[tokio::test(flavor = "multi_thread")]
async fn the_default_mode_declares_a_durable_queue_and_joins_the_tutorials() {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let transient = QueueDeclareOptions::default();

    let host = TestHost::start("declared-durable", &[("fib", &fib_wasm())]).await;
    let channel = connection.create_channel().await.unwrap();
    let redeclared = channel
        .queue_declare(host.queue.as_str().into(), transient, FieldTable::default())
        .await
        .expect_err("the host's queue is durable, so a transient redeclaration is refused");
    assert!(redeclared.to_string().contains("'durable'"), "{redeclared}");
    host.stop().await;

    let queue = unique_queue("tutorial-made");
    let channel = connection.create_channel().await.unwrap();
    if let Err(refused) = channel
        .queue_declare(queue.as_str().into(), transient, FieldTable::default())
        .await
    {
        assert!(
            refused.to_string().contains("transient_nonexcl_queues"),
            "{refused}"
        );
        eprintln!("this broker refuses transient non-exclusive queues: nothing to join");
        close_connection(&connection).await;
        return;
    }
    let host = TestHost::start_on(&queue, &[("fib", &fib_wasm())], |_| {}).await;
    let client = host.client().await;
    assert_eq!(client.call(call("10")).await.unwrap().body, b"55");
    client.close().await;
    host.stop().await;
    close_connection(&connection).await;
}
