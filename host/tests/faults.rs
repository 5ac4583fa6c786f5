//! Faults a host must ride out, against the real broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use warren_client::{Call, RpcClient};
use warren_testing::*;

/// The broker's address, from the test URL (host:port).
fn broker_address() -> String {
    let url = amqp_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5672")
    }
}

/// A TCP proxy to the broker on `port`, opened only after `delay`: to the
/// host, a broker that comes up late.
fn late_broker(port: u16, delay: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(broker_address()).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

/// A host started before its broker waits for it (it used to exit 1 at
/// once, which under systemd or compose start order is a crash loop).
#[tokio::test(flavor = "multi_thread")]
async fn a_host_started_before_the_broker_waits_for_it_and_serves() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let proxy = late_broker(port, Duration::from_secs(2));
    let late_url = amqp_url().replacen(&broker_address(), &format!("127.0.0.1:{port}"), 1);
    assert_ne!(late_url, amqp_url(), "the test URL names host:port");
    let host = TestHost::start_with("late-broker", &[("fib", &fib_wasm())], |config| {
        config.broker.amqp_urls = vec![late_url];
    })
    .await;
    let reply = host.client().await.call(call("12")).await.unwrap();
    assert_eq!(reply.body, b"144");
    host.stop().await;
    proxy.abort();
}

/// Lets `callers` keep calling through `queue` while `fault` runs, then
/// stops them and checks every call was answered right (each caller panics
/// on the first failed or wrong reply). Returns the calls made.
async fn under_load<F: Future<Output = ()>>(queue: &str, callers: usize, fault: F) -> usize {
    let client: SharedClient = Arc::new(RpcClient::connect(&amqp_url(), queue).await.unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let calling = keep_calling(client, callers, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    fault.await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut made = 0;
    for caller in calling {
        made += caller.await.expect("every call answered, and right");
    }
    made
}

/// `kill -9` of one of two hosts under load: the broker returns its unacked
/// requests to the queue and the other host answers them; no call fails.
#[tokio::test(flavor = "multi_thread")]
async fn killing_one_of_two_hosts_under_load_loses_no_request() {
    let wasm = fib_wasm();
    let survivor = TestHost::start("kill-9", &[("fib", &wasm)]).await;
    let victim = HostProcess::start(&survivor.queue, &[("fib", &wasm)], &[], None);
    victim
        .wait_for_log("warren-host ready", Duration::from_secs(60))
        .await;
    let made = under_load(&survivor.queue, 8, async {
        victim.signal("KILL");
    })
    .await;
    assert!(made > 50, "too little load to mean anything: {made} calls");
    drop(victim);
    survivor.stop().await;
}

/// SIGTERM under load: the host stops taking requests, finishes and acks
/// those it started, returns the ones it had not started, and exits 0; the
/// other host answers the rest. No call fails.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_drains_and_loses_nothing() {
    let wasm = fib_wasm();
    let other = TestHost::start("sigterm", &[("fib", &wasm)]).await;
    let mut stopping = HostProcess::start(&other.queue, &[("fib", &wasm)], &[], None);
    stopping
        .wait_for_log("warren-host ready", Duration::from_secs(60))
        .await;
    let made = under_load(&other.queue, 8, async {
        stopping.signal("TERM");
    })
    .await;
    assert!(made > 50, "too little load to mean anything: {made} calls");
    assert_eq!(
        stopping.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "{}",
        stopping.log()
    );
    assert!(stopping.log().contains("finishing requests in flight"));
    other.stop().await;
}

/// A second signal does not wait for requests in flight: the host exits at
/// once and the unfinished request goes back to the queue.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_exits_at_once_and_returns_unfinished_requests() {
    let queue = unique_queue("second-signal");
    let mut host = HostProcess::start(
        &queue,
        &[("hostile", &hostile_wasm())],
        &["--timeout", "60s"],
        None,
    );
    host.wait_for_log("warren-host ready", Duration::from_secs(60))
        .await;
    let client = Arc::new(RpcClient::connect(&amqp_url(), &queue).await.unwrap());
    let spinning = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .call(Call::new("spin").timeout(Duration::from_secs(90)))
                .await
        }
    });
    // Let the host take it and start spinning.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    host.signal("TERM");
    host.wait_for_log("finishing requests in flight", Duration::from_secs(10))
        .await;
    let signalled = Instant::now();
    host.signal("TERM");
    let code = host.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(1), "{}", host.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "the second signal was not obeyed at once"
    );
    // The spinning request is back in the queue, waiting for a host.
    wait_for_queue_at(&amqp_url(), &queue, "the request's return", |state| {
        state.is_some_and(|(messages, _)| messages == 1)
    })
    .await;
    spinning.abort();
    delete_queues(&queue).await;
}

/// A request whose caller has given up by the time a slot is free is not
/// started (the broker drops expired requests only while it holds them;
/// these were prefetched): it used to run anyway, keeping a slot from
/// requests whose callers still wait.
#[tokio::test(flavor = "multi_thread")]
async fn requests_whose_callers_gave_up_are_not_started() {
    let host = TestHost::start_with("caller-gone", &[("hostile", &hostile_wasm())], |config| {
        config.limits.concurrency = Some(1);
        config.limits.timeout = Duration::from_secs(3);
    })
    .await;
    let client = Arc::new(host.client().await);
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let spin = Call::new("spin")
                    .procedure("hostile")
                    .timeout(Duration::from_secs(1));
                client.call(spin).await
            })
        })
        .collect();
    for call in calls {
        let outcome = call.await.unwrap();
        assert!(
            matches!(outcome, Err(warren_client::CallError::Timeout { .. })),
            "{outcome:?}"
        );
    }
    // One ran to the host's 3 s budget; the other two waited for its slot
    // past their callers' deadline.
    let give_up = Instant::now() + Duration::from_secs(15);
    let text = loop {
        let text = host.host.as_ref().unwrap().metrics_text();
        if text.contains(r#"warren_requests_not_started_total{procedure="hostile"} 2"#)
            || Instant::now() > give_up
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        text.contains(r#"warren_requests_not_started_total{procedure="hostile"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"warren_requests_total{procedure="hostile",status="error",kind="timeout"} 1"#
        ),
        "only one ran: {text}"
    );
    host.stop().await;
}
