//! Modules changing under a running host: replaced (once, and again and
//! again under load), broken, removed and put back.

use std::sync::Arc;
use std::time::Duration;

use warren_client::protocol::ErrorKind;
use warren_testing::*;

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
                    assert_eq!(String::from_utf8(reply.body).unwrap(), fib(n).to_string());
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
