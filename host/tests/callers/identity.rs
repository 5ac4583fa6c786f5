//! Who the caller is: the broker refuses a forged `user_id`, and a
//! manifest's `callers` refuses everyone it does not list.

use std::time::Duration;

use warren_client::protocol::ErrorKind;
use warren_client::{CallError, RpcClient};
use warren_testing::*;

use crate::support::raw_call;

#[tokio::test(flavor = "multi_thread")]
async fn the_broker_refuses_a_forged_user_id() {
    let (Some(alice), Some(bob)) = (BrokerUser::create("alice"), BrokerUser::create("bob")) else {
        return;
    };
    let host = TestHost::start("forged", &[("fib", &fib_wasm())]).await;
    // Alice names herself: served.
    let named = raw_call(&alice.url(), &host.queue, "fib", Some(&alice.name)).await;
    assert_eq!(named.unwrap().0, None);
    // Alice claims to be Bob: the broker closes her channel, and says why.
    let forged = raw_call(&alice.url(), &host.queue, "fib", Some(&bob.name))
        .await
        .expect_err("the broker must refuse a user_id that is not the publisher's");
    let said = forged.to_string();
    eprintln!("what a publisher forging user_id gets: {said}");
    assert!(
        said.contains("PRECONDITION_FAILED") && said.contains(&bob.name),
        "{said}"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_a_manifest_does_not_list_are_forbidden_and_counted() {
    let (Some(alice), Some(bob)) = (BrokerUser::create("alice"), BrokerUser::create("bob")) else {
        return;
    };
    let host = TestHost::start("forbidden", &[]).await;
    // `billing-*` stands for the pattern form; alice is listed by name.
    host.install_manifest(
        "fib",
        Some(&format!("callers = [\"{}\", \"billing-*\"]\n", alice.name)),
    );
    host.install("fib", &fib_wasm());
    let as_alice = RpcClient::connect(&alice.url(), &host.queue).await.unwrap();
    let served = call_until(
        &as_alice,
        call("20").procedure("fib"),
        Duration::from_secs(20),
        |outcome| outcome.is_ok(),
    )
    .await;
    assert_eq!(served.unwrap().body, b"6765");

    let as_bob = RpcClient::connect(&bob.url(), &host.queue).await.unwrap();
    match as_bob.call(call("20").procedure("fib")).await {
        Err(CallError::Rpc { error, .. }) => {
            assert_eq!(error.kind, ErrorKind::Forbidden, "{error}");
            assert!(error.message.contains(&bob.name), "{error}");
            assert!(
                !error.message.contains(&alice.name),
                "a refusal must not list who may call: {error}"
            );
        }
        other => panic!("bob must be forbidden, got {other:?}"),
    }
    // No user_id at all (the seed's client): no identity, which no entry
    // of callers matches.
    let anonymous = raw_call(&amqp_url(), &host.queue, "fib", None)
        .await
        .unwrap();
    assert_eq!(anonymous.0.as_deref(), Some("forbidden"));

    let metrics = host.metrics_text();
    assert!(
        metrics.contains(&format!(
            "warren_caller_requests_total{{caller=\"{}\",outcome=\"forbidden\"}} 1",
            bob.name
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "warren_requests_total{procedure=\"fib\",status=\"error\",kind=\"forbidden\"} 2"
        ),
        "{metrics}"
    );
    let status = run_warren(&["status", "--queue", &host.queue, "--json"]).await;
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["hosts"][0]["forbidden"], 2, "{status}");
    as_alice.close().await;
    as_bob.close().await;
    host.stop().await;
}
