//! Hostile procedures: every way a guest misbehaves ends in the right error
//! reply, in bounded time, and the host keeps answering afterwards.
//!
//! The guest is `test-guests/hostile`; the request body picks the misdeed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use warren_client::protocol::ErrorKind;
use warren_client::{CallError, RpcClient};
use warren_testing::*;

/// Short budget so the timeout cases finish quickly.
const BUDGET: Duration = Duration::from_secs(1);

/// A host whose default procedure is the hostile guest, with `fib` beside
/// it for honest requests, and a wall-clock budget of [`BUDGET`].
async fn hostile_host(test: &str) -> TestHost {
    hostile_host_with_budget(test, BUDGET).await
}

async fn hostile_host_with_budget(test: &str, budget: Duration) -> TestHost {
    TestHost::start_with(
        test,
        &[("hostile", &hostile_wasm()), ("fib", &fib_wasm())],
        |config| {
            config.limits.timeout = budget;
            config.procedures.default_procedure = Some("hostile".into());
        },
    )
    .await
}

/// Sends `misdeed`, checks the error kind (and a word of the message), then
/// checks the host still answers an honest request.
async fn expect_error(client: &RpcClient, misdeed: &str, kind: ErrorKind, needle: &str) {
    let started = Instant::now();
    match client.call(call(misdeed)).await {
        Err(CallError::Rpc { error, .. }) => {
            assert_eq!(error.kind, kind, "{misdeed}: {error}");
            assert!(error.message.contains(needle), "{misdeed}: {error}");
        }
        other => panic!("{misdeed}: expected {kind}, got {other:?}"),
    }
    // Bounded time: a generous bound (not a speed target), so a hang fails.
    assert!(
        started.elapsed() < BUDGET * 8,
        "{misdeed} took {:?}",
        started.elapsed()
    );
    let honest = client
        .call(call("10").procedure("fib"))
        .await
        .expect("the host still answers");
    assert_eq!(honest.body, b"55", "after {misdeed}");
}

async fn expect_ok(client: &RpcClient, request: &str, want: &str) {
    let reply = client
        .call(call(request))
        .await
        .unwrap_or_else(|e| panic!("{request}: {e}"));
    assert_eq!(String::from_utf8_lossy(&reply.body), want, "{request}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_spinning_in_wasm_times_out() {
    let host = hostile_host("spin").await;
    expect_error(&host.client().await, "spin", ErrorKind::Timeout, "budget").await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_blocked_in_a_wasi_sleep_times_out() {
    let host = hostile_host("sleep").await;
    expect_error(&host.client().await, "sleep", ErrorKind::Timeout, "budget").await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_printing_forever_times_out() {
    let host = hostile_host("print-flood").await;
    expect_error(
        &host.client().await,
        "print-flood",
        ErrorKind::Timeout,
        "budget",
    )
    .await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_bomb_hits_the_memory_limit() {
    let host = hostile_host("memory-bomb").await;
    expect_error(
        &host.client().await,
        "memory-bomb",
        ErrorKind::MemoryLimit,
        "--max-memory",
    )
    .await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deep_recursion_panic_and_unreachable_trap() {
    let host = hostile_host("traps").await;
    let client = host.client().await;
    // A Rust guest keeps its stack in linear memory: overflowing it is an
    // out-of-bounds access or a call-stack-exhausted trap, depending on frames.
    expect_error(&client, "deep-recursion", ErrorKind::Trap, "wasm trap").await;
    expect_error(&client, "panic", ErrorKind::Trap, "panicked on purpose").await;
    expect_error(&client, "unreachable", ErrorKind::Trap, "unreachable").await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_guest_has_no_files_environment_arguments_or_network() {
    let host = hostile_host("capabilities").await;
    let client = host.client().await;
    expect_error(
        &client,
        "read-file",
        ErrorKind::ProcedureError,
        "read failed",
    )
    .await;
    expect_error(
        &client,
        "open-socket",
        ErrorKind::ProcedureError,
        "connect failed",
    )
    .await;
    expect_error(
        &client,
        "lookup",
        ErrorKind::ProcedureError,
        "lookup failed",
    )
    .await;
    expect_ok(&client, "read-env", "env=0 args=0").await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_reply_is_refused() {
    let host = hostile_host("huge-reply").await;
    expect_error(
        &host.client().await,
        "huge-reply",
        ErrorKind::ReplyTooLarge,
        "at most",
    )
    .await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_gets_a_fresh_instance() {
    let host = hostile_host("counter").await;
    let client = host.client().await;
    for _ in 0..5 {
        expect_ok(&client, "counter", "1").await;
    }
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_spinning_guest_does_not_hold_up_an_honest_request() {
    let host = hostile_host_with_budget("fairness", Duration::from_secs(5)).await;
    let client = Arc::new(host.client().await);
    let spinner = tokio::spawn({
        let client = client.clone();
        async move { client.call(call("spin")).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let honest = client.call(call("20").procedure("fib")).await.unwrap();
    assert_eq!(honest.body, b"6765");
    assert!(
        !spinner.is_finished(),
        "the honest request should be answered while the spinner still runs"
    );
    assert_eq!(error_kind(spinner.await.unwrap()), ErrorKind::Timeout);
    host.stop().await;
}
