//! Requests without `user_id`: no identity, which no `callers` pattern
//! matches; let in by `callers-anonymous = true`, refused by
//! `--refuse-anonymous`, counted apart from every user.

use std::time::Duration;

use warren_client::CallError;
use warren_client::protocol::ErrorKind;
use warren_testing::*;

use crate::support::{NamedUser, RawCaller, metric, raw_call, raw_reply, raw_served, rpc_kind};

/// The situation of finding 7 of issue 37: with `callers = ["a*"]`, a user
/// refused under its own name was served by leaving `user_id` out (the
/// request became `anonymous`, which `a*` matches). No identity is not a
/// name: it is refused too, whoever sends it.
#[tokio::test(flavor = "multi_thread")]
async fn leaving_user_id_out_does_not_get_a_refused_user_in() {
    let (Some(amy), Some(bob)) = (BrokerUser::create("amy"), BrokerUser::create("bob")) else {
        return;
    };
    let host = TestHost::start("no-identity", &[]).await;
    host.install_manifest("fib", Some("callers = [\"a*\"]\n"));
    host.install("fib", &fib_wasm());
    assert!(
        raw_served(&amy.url(), &host.queue, "fib", Some(&amy.name)).await,
        "amy is listed (a*)"
    );
    // Bob under his own name: refused.
    let named = raw_reply(&bob.url(), &host.queue, "fib", Some(&bob.name))
        .await
        .unwrap();
    assert_eq!(named.0.as_deref(), Some("forbidden"));
    // Bob without user_id: refused as well, and told why.
    let (kind, _, body) = raw_reply(&bob.url(), &host.queue, "fib", None)
        .await
        .unwrap();
    assert_eq!(kind.as_deref(), Some("forbidden"));
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("without user_id") && body.contains("callers-anonymous"),
        "{body}"
    );
    assert!(
        !body.contains("a*"),
        "a refusal must not list who may call: {body}"
    );
    // So is amy without hers: a pattern matches broker users only.
    let unnamed = raw_call(&amy.url(), &host.queue, "fib", None)
        .await
        .unwrap();
    assert_eq!(unnamed.0.as_deref(), Some("forbidden"));

    let metrics = host.metrics_text();
    assert_eq!(
        metric(
            &metrics,
            "warren_caller_requests_total{caller=\"(none)\",outcome=\"forbidden\"}"
        ),
        2,
        "{metrics}"
    );
    assert!(
        !metrics.contains("caller=\"anonymous\""),
        "no identity is not labelled as a user: {metrics}"
    );
    host.stop().await;
}

/// `callers-anonymous = true` lets requests without `user_id` in beside
/// `callers`; `--refuse-anonymous` refuses them whatever manifests say.
#[tokio::test(flavor = "multi_thread")]
async fn callers_anonymous_lets_no_identity_in_and_the_host_flag_refuses_it() {
    let (Some(amy), Some(bob)) = (BrokerUser::create("amy"), BrokerUser::create("bob")) else {
        return;
    };
    const MANIFEST: &str = "callers = [\"a*\"]\ncallers-anonymous = true\n";
    let host = TestHost::start("callers-anonymous", &[]).await;
    host.install_manifest("fib", Some(MANIFEST));
    host.install("fib", &fib_wasm());
    assert!(
        raw_served(&bob.url(), &host.queue, "fib", None).await,
        "a request without user_id is let in by callers-anonymous"
    );
    // Bob under his own name is still not listed.
    let named = raw_call(&bob.url(), &host.queue, "fib", Some(&bob.name))
        .await
        .unwrap();
    assert_eq!(named.0.as_deref(), Some("forbidden"));
    let served = host.host.as_ref().unwrap().served();
    let fib = served.iter().find(|p| p.name == "fib").unwrap();
    let grants = fib.grants.as_ref().expect("a host says what it grants");
    assert!(grants.callers_anonymous, "{grants:?}");
    assert!(
        grants.to_string().contains("and requests without user_id"),
        "{grants}"
    );
    host.stop().await;

    // The same manifest, and a procedure without one, on a host started
    // with --refuse-anonymous (the process, as an operator runs it).
    let queue = unique_queue("refuse-anonymous");
    let refusing = HostProcess::start(
        &queue,
        &[
            ("fib", &fib_wasm()),
            ("fib.toml", MANIFEST.as_bytes()),
            ("open", &fib_wasm()),
        ],
        &["--refuse-anonymous"],
        None,
    );
    refusing
        .wait_for_log("warren-host ready", Duration::from_secs(60))
        .await;
    for procedure in ["fib", "open"] {
        let named = raw_call(&amy.url(), &queue, procedure, Some(&amy.name)).await;
        assert_eq!(named.unwrap().0, None, "amy is served on {procedure}");
        let (kind, _, body) = raw_reply(&amy.url(), &queue, procedure, None)
            .await
            .unwrap();
        assert_eq!(kind.as_deref(), Some("forbidden"), "{procedure}");
        let body = String::from_utf8_lossy(&body);
        assert!(
            body.contains("--refuse-anonymous") && body.contains("user_id"),
            "{body}"
        );
    }
    // Even a request for a procedure the host does not have: it is told
    // nothing more.
    let unknown = raw_call(&amy.url(), &queue, "nothing-here", None)
        .await
        .unwrap();
    assert_eq!(unknown.0.as_deref(), Some("forbidden"));
    drop(refusing);
    delete_queues(&queue).await;
}

/// Quotas count requests without `user_id` in one account of their own:
/// leaving `user_id` out does not escape one's own quota, does not spend
/// a user's, and a broker user really named `anonymous` is not that
/// account either; the host warns about such a user, once.
#[tokio::test(flavor = "multi_thread")]
async fn no_identity_is_counted_apart_and_a_user_named_anonymous_is_warned_about() {
    let Some(bob) = BrokerUser::create("bob") else {
        return;
    };
    let Some(anonymous) = NamedUser::create("anonymous") else {
        return;
    };
    let queue = unique_queue("anonymous-apart");
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let host = HostProcess::start(
        &queue,
        &[("fib", &fib_wasm())],
        &[
            "--caller-rate",
            "1",
            "--caller-burst",
            "1",
            "--caller-hold",
            "0s",
            "--metrics-addr",
            &metrics_addr.to_string(),
        ],
        None,
    );
    host.wait_for_log("warren-host ready", Duration::from_secs(60))
        .await;
    // Every caller connected first, so each pair goes out back to back,
    // well within the second a token takes to come back.
    let mut as_bob = RawCaller::connect(&bob.url(), Some(&bob.name))
        .await
        .unwrap();
    let mut bob_unnamed = RawCaller::connect(&bob.url(), None).await.unwrap();
    let mut guest_unnamed = RawCaller::connect(&amqp_url(), None).await.unwrap();
    let mut as_anonymous = RawCaller::connect(&anonymous.url(), Some("anonymous"))
        .await
        .unwrap();
    async fn two(caller: &mut RawCaller, queue: &str) -> Vec<Option<String>> {
        caller.send(queue, "fib", b"10").await.unwrap();
        caller.send(queue, "fib", b"10").await.unwrap();
        let mut kinds = vec![
            caller.reply().await.unwrap().0,
            caller.reply().await.unwrap().0,
        ];
        kinds.sort();
        kinds
    }
    let one_each = vec![None, Some("rate-limited".to_owned())];
    assert_eq!(two(&mut as_bob, &queue).await, one_each, "bob's own bucket");
    // Bob without user_id: not his spent bucket, the identity-less one.
    assert_eq!(two(&mut bob_unnamed, &queue).await, one_each);
    // Which every request without user_id shares.
    guest_unnamed.send(&queue, "fib", b"10").await.unwrap();
    let (kind, _, body) = guest_unnamed.reply().await.unwrap();
    assert_eq!(kind.as_deref(), Some("rate-limited"));
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("without user_id"), "{body}");
    // A user named anonymous has a bucket of its own.
    assert_eq!(two(&mut as_anonymous, &queue).await, one_each);

    let (status, metrics) = http_get(metrics_addr, "/metrics").await;
    assert_eq!(status, 200);
    for (series, count) in [
        ("{caller=\"(none)\",outcome=\"ok\"}", 1),
        ("{caller=\"(none)\",outcome=\"rate-limited\"}", 2),
        ("{caller=\"anonymous\",outcome=\"ok\"}", 1),
        ("{caller=\"anonymous\",outcome=\"rate-limited\"}", 1),
    ] {
        let series = format!("warren_caller_requests_total{series}");
        assert_eq!(metric(&metrics, &series), count, "{series}:\n{metrics}");
    }
    let warning = "a broker user named \"anonymous\" calls this host";
    let log = host.wait_for_log(warning, Duration::from_secs(10)).await;
    assert_eq!(log.matches(warning).count(), 1, "warned once:\n{log}");
    for caller in [as_bob, bob_unnamed, guest_unnamed, as_anonymous] {
        caller.close().await;
    }
    drop(host);
    delete_queues(&queue).await;
}

/// Before issue 37 this was served by `callers = ["anonymous"]`, the name
/// that requests without `user_id` were given; now no name stands for
/// them, and only `callers-anonymous = true` lets them in.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_without_a_user_id_is_anonymous_and_served_where_allowed() {
    let host = TestHost::start("anonymous", &[]).await;
    host.install_manifest("fib", Some("callers = [\"anonymous\"]\n"));
    host.install("fib", &fib_wasm());
    // The Warren client names its user (guest here), which is not listed.
    let client = host.client().await;
    let guest = call_until(
        &client,
        call("10").procedure("fib"),
        Duration::from_secs(20),
        |outcome| matches!(outcome, Err(CallError::Rpc { error, .. }) if error.kind == ErrorKind::Forbidden),
    )
    .await;
    assert_eq!(rpc_kind(guest), Some(ErrorKind::Forbidden));
    // The name "anonymous" does not stand for no identity.
    let unnamed = raw_call(&amqp_url(), &host.queue, "fib", None)
        .await
        .unwrap();
    assert_eq!(unnamed.0.as_deref(), Some("forbidden"));
    host.install_manifest(
        "fib",
        Some("callers = [\"anonymous\"]\ncallers-anonymous = true\n"),
    );
    assert!(
        raw_served(&amqp_url(), &host.queue, "fib", None).await,
        "a request without user_id is let in by callers-anonymous"
    );
    assert_eq!(
        rpc_kind(client.call(call("10").procedure("fib")).await),
        Some(ErrorKind::Forbidden)
    );
    assert!(
        host.metrics_text()
            .contains("warren_caller_requests_total{caller=\"(none)\",outcome=\"ok\"} 1")
    );
    client.close().await;
    host.stop().await;
}
