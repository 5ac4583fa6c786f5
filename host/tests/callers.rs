//! Who may call what, against the real broker with real users
//! (`rabbitmqctl add_user`, removed afterwards): the broker refuses a
//! forged `user_id`; a manifest's `callers` refuses everyone else with
//! `forbidden`; quotas answer `rate-limited` with when to retry, per
//! caller; a request without a `user_id` (the seed's client) has no
//! identity, which no `callers` pattern matches: it is served where there
//! are no `callers` or the manifest says `callers-anonymous = true`,
//! refused everywhere by `--refuse-anonymous`, and counted apart from
//! every user (a user really named `anonymous` included).

use std::time::Duration;

use futures_lite::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Connection};
use warren_client::protocol::{ErrorKind, HEADER_PROCEDURE, HEADER_RETRY_AFTER_MS, header_text};
use warren_client::{CallError, RpcClient};
use warren_testing::*;

/// Requests sent by hand, as the seed's client sends them (no `user_id`
/// unless given), with a callback queue of their own.
struct RawCaller {
    connection: Connection,
    channel: lapin::Channel,
    replies: lapin::Consumer,
    reply_to: ShortString,
    user_id: Option<String>,
}

/// A reply's `x-rpc-error` kind (`None` for success), `x-retry-after-ms`
/// and body.
type RawReply = (Option<String>, Option<String>, Vec<u8>);

impl RawCaller {
    async fn connect(url: &str, user_id: Option<&str>) -> Result<Self, lapin::Error> {
        let connection = Connection::connect(url, Default::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let queue = channel
            .queue_declare(
                ShortString::default(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let replies = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(RawCaller {
            connection,
            channel,
            replies,
            reply_to: queue.name().clone(),
            user_id: user_id.map(str::to_owned),
        })
    }

    /// Publishes one request for `procedure` and waits for the broker to
    /// take it.
    async fn send(&self, queue: &str, procedure: &str, body: &[u8]) -> Result<(), lapin::Error> {
        let mut headers = FieldTable::default();
        warren_client::protocol::set_header_text(&mut headers, HEADER_PROCEDURE, procedure);
        let mut properties = BasicProperties::default()
            .with_reply_to(self.reply_to.clone())
            .with_correlation_id(uuid::Uuid::new_v4().to_string().into())
            .with_headers(headers);
        if let Some(user) = &self.user_id {
            properties = properties.with_user_id(user.as_str().into());
        }
        self.channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?
            .await?;
        Ok(())
    }

    /// The next reply, within 30 s.
    async fn reply(&mut self) -> Result<RawReply, lapin::Error> {
        let reply = tokio::time::timeout(Duration::from_secs(30), self.replies.next())
            .await
            .expect("a reply within 30s")
            .expect("the consumer is open")?;
        let headers = reply.properties.headers().as_ref();
        Ok((
            header_text(headers, warren_client::protocol::HEADER_RPC_ERROR),
            header_text(headers, HEADER_RETRY_AFTER_MS),
            reply.data,
        ))
    }

    async fn close(self) {
        close_connection(&self.connection).await;
    }
}

/// Sends one request by hand and returns the reply's `x-rpc-error` kind
/// (`None` for success) and `x-retry-after-ms`.
async fn raw_call(
    url: &str,
    queue: &str,
    procedure: &str,
    user_id: Option<&str>,
) -> Result<(Option<String>, Option<String>), lapin::Error> {
    let mut caller = RawCaller::connect(url, user_id).await?;
    caller.send(queue, procedure, b"10").await?;
    let (kind, retry_after, _) = caller.reply().await?;
    caller.close().await;
    Ok((kind, retry_after))
}

fn rpc_kind(outcome: Result<warren_client::Reply, CallError>) -> Option<ErrorKind> {
    match outcome {
        Ok(_) => None,
        Err(CallError::Rpc { error, .. }) => Some(error.kind),
        Err(other) => panic!("expected a reply, got {other}"),
    }
}

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

/// Sends one request by hand and returns the whole reply: its
/// `x-rpc-error` kind, `x-retry-after-ms` and body.
async fn raw_reply(
    url: &str,
    queue: &str,
    procedure: &str,
    user_id: Option<&str>,
) -> Result<RawReply, lapin::Error> {
    let mut caller = RawCaller::connect(url, user_id).await?;
    caller.send(queue, procedure, b"10").await?;
    let reply = caller.reply().await?;
    caller.close().await;
    Ok(reply)
}

/// Sends requests by hand until one is answered with success (`true`), for
/// at most 20 s: until a module or manifest just installed is served.
async fn raw_served(url: &str, queue: &str, procedure: &str, user_id: Option<&str>) -> bool {
    for _ in 0..200 {
        if let Ok((None, _)) = raw_call(url, queue, procedure, user_id).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The `count` of a metrics line that starts with `series` (0 without one).
fn metric(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0)
}

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
    let grants = &served.iter().find(|p| p.name == "fib").unwrap().grants;
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

/// A broker user with a name of the test's choosing (`anonymous`), made
/// like [`BrokerUser`] and deleted when dropped; `None` (after saying
/// SKIPPED) where it cannot be made, or already exists.
struct NamedUser {
    name: String,
    password: String,
}

impl NamedUser {
    fn create(name: &str) -> Option<NamedUser> {
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        let made = std::process::Command::new("rabbitmqctl")
            .args(["add_user", name, &password])
            .output()
            .ok()
            .filter(|output| output.status.success());
        if made.is_none() {
            eprintln!("SKIPPED: no broker user {name:?} could be made (rabbitmqctl add_user)");
            return None;
        }
        let user = NamedUser {
            name: name.to_owned(),
            password,
        };
        let permitted = std::process::Command::new("rabbitmqctl")
            .args(["set_permissions", "-p", "/", name, ".*", ".*", ".*"])
            .status()
            .unwrap();
        assert!(permitted.success(), "rabbitmqctl set_permissions {name}");
        Some(user)
    }

    fn url(&self) -> String {
        let url = amqp_url();
        let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        format!("{scheme}://{}:{}@{host}", self.name, self.password)
    }
}

impl Drop for NamedUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .output();
    }
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
