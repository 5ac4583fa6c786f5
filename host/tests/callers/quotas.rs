//! How much a caller gets: `--caller-rate` answered with when to retry,
//! refusals held until the caller's turn (and sent when the host stops),
//! `--caller-share` leaving slots for others.

use std::time::Duration;

use warren_client::protocol::ErrorKind;
use warren_client::{CallError, RpcClient};
use warren_testing::*;

use crate::support::{RawCaller, raw_call, rpc_kind};

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_over_its_rate_is_told_when_to_retry_and_others_are_not_slowed() {
    let (Some(alice), Some(bob)) = (BrokerUser::create("alice"), BrokerUser::create("bob")) else {
        return;
    };
    let host = TestHost::start_with("rate", &[("fib", &fib_wasm())], |config| {
        config.callers.caller_rate = Some(2);
        config.callers.caller_burst = Some(3);
        // Refusals answered at once, saying when to retry (held ones are
        // the next test's).
        config.callers.caller_hold = Duration::ZERO;
    })
    .await;
    let as_alice = RpcClient::connect(&alice.url(), &host.queue).await.unwrap();
    let as_bob = RpcClient::connect(&bob.url(), &host.queue).await.unwrap();
    let mut kinds = Vec::new();
    for _ in 0..6 {
        kinds.push(rpc_kind(as_alice.call(call("10").procedure("fib")).await));
    }
    assert!(
        kinds[..3].iter().all(Option::is_none),
        "the burst: {kinds:?}"
    );
    assert!(
        kinds.contains(&Some(ErrorKind::RateLimited)),
        "past the burst: {kinds:?}"
    );
    // Bob has a bucket of his own.
    assert_eq!(
        rpc_kind(as_bob.call(call("10").procedure("fib")).await),
        None
    );
    // The reply says when to retry, in the body and in a header.
    match as_alice.call(call("10").procedure("fib")).await {
        Err(CallError::Rpc { error, .. }) => {
            assert_eq!(error.kind, ErrorKind::RateLimited, "{error}");
            // Each refusal's turn is a token (500 ms) after the last
            // one's, and never more than 2 s past the next token.
            let wait = error.retry_after().expect("a retry-after");
            assert!(wait <= Duration::from_millis(2500), "{wait:?}");
        }
        other => panic!("alice must be over her rate, got {other:?}"),
    }
    let (kind, retry_after) = raw_call(&alice.url(), &host.queue, "fib", Some(&alice.name))
        .await
        .unwrap();
    assert_eq!(kind.as_deref(), Some("rate-limited"));
    assert!(retry_after.is_some_and(|ms| ms.parse::<u64>().is_ok()));
    // Asked to, the client waits and gets through.
    let retried = as_alice
        .call(call("10").procedure("fib").retry_when_rate_limited(true))
        .await;
    assert_eq!(retried.unwrap().body, b"55");
    // So does the command line.
    let cli = run_warren(&[
        "--amqp-url",
        &alice.url(),
        "call",
        "--queue",
        &host.queue,
        "-p",
        "fib",
        "--retry",
        "10",
    ])
    .await;
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    as_alice.close().await;
    as_bob.close().await;
    host.stop().await;
}

/// A caller that resends each refusal at once keeps its flood cycling
/// through the queue in front of everyone else; held until the caller's
/// turn, its refusals wait in the host instead, acked, so they take no
/// room in the prefetch window and another caller's request is delivered
/// and answered while they wait.
#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_held_until_the_callers_turn_and_others_go_first() {
    let (Some(alice), Some(bob)) = (BrokerUser::create("alice"), BrokerUser::create("bob")) else {
        return;
    };
    const FLOOD: usize = 12;
    let host = TestHost::start_with("hold", &[("fib", &fib_wasm())], |config| {
        config.callers.caller_rate = Some(1);
        config.callers.caller_burst = Some(1);
        config.callers.caller_hold = Duration::from_secs(30);
        // Fewer than alice's flood: unacked, her refusals would fill it.
        config.tuning.prefetch = Some(4);
    })
    .await;
    let mut as_alice = RawCaller::connect(&alice.url(), Some(&alice.name))
        .await
        .unwrap();
    for _ in 0..FLOOD {
        as_alice.send(&host.queue, "fib", b"10").await.unwrap();
    }
    // One is within her burst.
    let (kind, _, body) = as_alice.reply().await.unwrap();
    assert_eq!((kind, body), (None, b"55".to_vec()));
    // Bob's request comes after her flood in the queue, and is answered
    // while her refusals are held: their turns are a second apart.
    let mut as_bob = RawCaller::connect(&bob.url(), Some(&bob.name))
        .await
        .unwrap();
    as_bob.send(&host.queue, "fib", b"10").await.unwrap();
    let (kind, _, body) = as_bob.reply().await.unwrap();
    assert_eq!((kind, body), (None, b"55".to_vec()));
    let metrics = host.metrics_text();
    let held = metrics
        .lines()
        .find_map(|line| line.strip_prefix("warren_refusals_held "))
        .and_then(|count| count.trim().parse::<usize>().ok())
        .unwrap_or_else(|| panic!("a held count in the metrics:\n{metrics}"));
    assert!(
        (1..FLOOD).contains(&held),
        "alice's refusals are held, not answered: {held}"
    );
    // Each is answered in its turn, saying to try again now.
    for _ in 1..FLOOD {
        let (kind, retry_after, body) = as_alice.reply().await.unwrap();
        assert_eq!(kind.as_deref(), Some("rate-limited"));
        assert_eq!(retry_after.as_deref(), Some("1"));
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("until the caller's turn"), "{body}");
    }
    assert!(host.metrics_text().contains("warren_refusals_held 0"));
    as_alice.close().await;
    as_bob.close().await;
    host.stop().await;
}

/// A host that stops sends the refusals it holds at once, rather than
/// waiting for their turns or dropping them.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_host_sends_the_refusals_it_holds() {
    let Some(alice) = BrokerUser::create("alice") else {
        return;
    };
    let host = TestHost::start_with("hold-stop", &[("fib", &fib_wasm())], |config| {
        config.callers.caller_rate = Some(1);
        config.callers.caller_burst = Some(1);
        config.callers.caller_hold = Duration::from_secs(30);
    })
    .await;
    let mut as_alice = RawCaller::connect(&alice.url(), Some(&alice.name))
        .await
        .unwrap();
    for _ in 0..3 {
        as_alice.send(&host.queue, "fib", b"10").await.unwrap();
    }
    assert_eq!(as_alice.reply().await.unwrap().0, None);
    for _ in 0..100 {
        if host.metrics_text().contains("warren_refusals_held 2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.stop().await;
    for _ in 0..2 {
        let (kind, _, _) = as_alice.reply().await.unwrap();
        assert_eq!(kind.as_deref(), Some("rate-limited"));
    }
    as_alice.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callers_share_of_the_slots_leaves_room_for_others() {
    let (Some(alice), Some(bob)) = (BrokerUser::create("alice"), BrokerUser::create("bob")) else {
        return;
    };
    // Two slots; each caller may hold half of them: one.
    let host = TestHost::start_with("share", &[("hostile", &hostile_wasm())], |config| {
        config.limits.concurrency = Some(2);
        config.limits.timeout = Duration::from_secs(2);
        config.callers.caller_share = Some(50);
    })
    .await;
    let as_alice =
        std::sync::Arc::new(RpcClient::connect(&alice.url(), &host.queue).await.unwrap());
    let first = tokio::spawn({
        let as_alice = as_alice.clone();
        async move { as_alice.call(call("sleep").procedure("hostile")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Alice's second request while her first holds her slot: refused.
    assert_eq!(
        rpc_kind(as_alice.call(call("echo").procedure("hostile")).await),
        Some(ErrorKind::RateLimited)
    );
    // Bob finds the other slot free.
    let as_bob = RpcClient::connect(&bob.url(), &host.queue).await.unwrap();
    assert_eq!(
        rpc_kind(as_bob.call(call("echo").procedure("hostile")).await),
        None
    );
    assert_eq!(rpc_kind(first.await.unwrap()), Some(ErrorKind::Timeout));
    // Her slot is hers again once her first request is done.
    assert_eq!(
        rpc_kind(as_alice.call(call("echo").procedure("hostile")).await),
        None
    );
    as_bob.close().await;
    host.stop().await;
}
