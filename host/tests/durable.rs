//! Durable mode on the test broker: quorum queues, confirmed replies, the
//! delivery limit and the dead-letter queue, and what a host says when a
//! queue was declared the other way.

use std::time::Duration;

use futures_lite::StreamExt as _;
use lapin::options::{BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use warren_client::protocol::{ErrorKind, dead_letter_queue};
use warren_client::{CallError, ClientOptions, RpcClient};
use warren_testing::*;

fn durable(config: &mut warren_host::HostConfig) {
    config.broker.durable = true;
}

async fn durable_client(queue: &str) -> RpcClient {
    RpcClient::connect_with(ClientOptions::new(amqp_url(), queue).durable(true))
        .await
        .expect("durable client connects")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_durable_host_answers_a_durable_client() {
    let wasm = fib_wasm();
    let host = TestHost::start_with("durable", &[("fib", &wasm)], durable).await;
    let client = durable_client(&host.queue).await;
    for n in [0u64, 1, 10, 20] {
        let reply = client.call(call(n.to_string())).await.unwrap();
        assert_eq!(String::from_utf8(reply.body).unwrap(), fib(n).to_string());
        assert_eq!(reply.digest, Some(digest(&wasm)));
    }
    client.close().await;
    let queue = host.queue.clone();
    host.stop().await;
    delete_queues(&dead_letter_queue(&queue)).await;
}

/// A request that every host fails to answer (here: a consumer that keeps
/// returning it to the queue, as crashing hosts would) is moved to
/// QUEUE.dead after --delivery-limit deliveries, and its caller is told
/// with a delivery-limit error instead of waiting forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_keeps_failing_is_dead_lettered_and_its_caller_told() {
    let wasm = fib_wasm();
    let mut first = TestHost::start_with("dead-letter", &[("fib", &wasm)], |config| {
        config.broker.durable = true;
        config.connection.delivery_limit = 2;
    })
    .await;
    let queue = first.queue.clone();
    first.stop_host().await;

    let client = std::sync::Arc::new(durable_client(&queue).await);
    let waiting = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .call(call("12").timeout(Duration::from_secs(60)))
                .await
        }
    });

    // A "host" that takes the request and dies on it, again and again.
    let connection = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    let mut deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let mut returned = 0;
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_secs(3), deliveries.next()).await
    {
        returned += 1;
        delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    close_connection(&connection).await;
    assert!(
        returned >= 2,
        "the broker delivered the request {returned} times"
    );

    // A durable host reads QUEUE.dead and tells the caller.
    let second = TestHost::join(&queue, &[("fib", &wasm)], |config| {
        config.broker.durable = true;
        config.connection.delivery_limit = 2;
    })
    .await;
    match waiting.await.unwrap() {
        Err(CallError::Rpc {
            error, procedure, ..
        }) => {
            assert_eq!(error.kind, ErrorKind::DeliveryLimit, "{error}");
            assert!(error.message.contains("delivered 3 times"), "{error}");
            assert_eq!(procedure, None);
        }
        other => panic!("expected a delivery-limit error, got {other:?}"),
    }
    second.stop().await;
    first.stop().await;
    delete_queues(&dead_letter_queue(&queue)).await;
}

/// A durable host on a queue that exists as a classic queue says so in
/// plain words and how to fix it, and keeps waiting for the fix instead of
/// exiting (which would only crash-loop under a supervisor).
#[tokio::test(flavor = "multi_thread")]
async fn a_host_on_a_queue_declared_the_other_way_says_how_to_fix_it() {
    let classic = TestHost::start("mismatch", &[("fib", &fib_wasm())]).await;
    let mut config = warren_host::HostConfig::new(&classic.queue, classic.modules.path());
    config.broker.amqp_urls = vec![amqp_url()];
    config.broker.durable = true;
    config.connection.connect_timeout = Some(Duration::from_secs(1));
    let why = match warren_host::start(config).await {
        Ok(_) => panic!("a durable host started on a classic queue"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        why.contains("exists as a classic queue")
            && why.contains("drop --durable")
            && why.contains("rabbitmqctl delete_queue"),
        "{why}"
    );
    assert!(
        why.contains("gave up waiting for the setup to be fixed"),
        "{why}"
    );
    classic.stop().await;
}

/// Callers of the other mode are answered, but not as durably as one side
/// thinks: the host says so, once each way (it used to say nothing while
/// the README said the modes must agree).
#[tokio::test(flavor = "multi_thread")]
async fn a_host_warns_once_about_callers_of_the_other_mode() {
    let queue = unique_queue("durable-mismatch");
    let mut host = HostProcess::start(&queue, &[("fib", &fib_wasm())], &["--durable"], None);
    host.wait_for_log("warren-host ready", Duration::from_secs(60))
        .await;
    let plain = RpcClient::connect(&amqp_url(), &queue).await.unwrap();
    for _ in 0..3 {
        assert_eq!(plain.call(call("10")).await.unwrap().body, b"55");
    }
    plain.close().await;
    let log = host
        .wait_for_log("a caller without --durable", Duration::from_secs(10))
        .await;
    assert_eq!(
        log.matches("a caller without --durable").count(),
        1,
        "{log}"
    );
    host.signal("TERM");
    assert_eq!(host.wait_exit(Duration::from_secs(30)).await, Some(0));
    delete_queues(&queue).await;
    delete_queues(&dead_letter_queue(&queue)).await;
}

/// A request that ends every host that takes it does not walk the fleet
/// in durable mode: after --delivery-limit deliveries the broker
/// dead-letters it and its caller gets `delivery-limit`; requests beside
/// it are answered. Here the test itself kills (SIGKILL) each real
/// `warren-host` process that is running the request, as a runtime crash
/// would end it.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_kills_its_hosts_is_dead_lettered_not_passed_around() {
    let queue = unique_queue("durable-killer");
    let modules: [(&str, &[u8]); 2] = [("fib", &fib_wasm()), ("hostile", &hostile_wasm())];
    let args = [
        "--durable",
        "--delivery-limit",
        "2",
        "--timeout",
        "5m",
        "--default-procedure",
        "fib",
    ];
    let start = || {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let metrics = format!("127.0.0.1:{port}");
        let mut all = args.to_vec();
        all.extend(["--metrics-addr", &metrics]);
        (HostProcess::start(&queue, &modules, &all, None), metrics)
    };
    let (mut host, mut metrics) = start();
    host.wait_for_log("warren-host ready", Duration::from_secs(60))
        .await;

    let client = std::sync::Arc::new(durable_client(&queue).await);
    let killer = tokio::spawn({
        let client = client.clone();
        async move {
            let sleep = call("sleep")
                .procedure("hostile")
                .timeout(Duration::from_secs(120));
            client.call(sleep).await
        }
    });
    // Requests beside it, made while hosts die.
    let others: Vec<_> = (0..5u64)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300 * n)).await;
                client
                    .call(call((10 + n).to_string()).timeout(Duration::from_secs(120)))
                    .await
            })
        })
        .collect();

    let mut killed = 0;
    let outcome = loop {
        // Once the host runs the request, it dies.
        let address: std::net::SocketAddr = metrics.parse().unwrap();
        let give_up = std::time::Instant::now() + Duration::from_secs(30);
        let mut running = false;
        while std::time::Instant::now() < give_up && !killer.is_finished() {
            let (_, text) = http_get(address, "/metrics").await;
            if text.contains("warren_requests_in_flight 1") {
                running = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !running {
            break killer.await.unwrap();
        }
        host.signal("KILL");
        host.wait_exit(Duration::from_secs(10)).await;
        killed += 1;
        assert!(killed <= 3, "the request went on killing hosts: {killed}");
        (host, metrics) = start();
        host.wait_for_log("warren-host ready", Duration::from_secs(60))
            .await;
    };
    match outcome {
        Err(CallError::Rpc { error, .. }) => {
            assert_eq!(error.kind, ErrorKind::DeliveryLimit, "{error}");
        }
        other => panic!("expected a delivery-limit error, got {other:?}"),
    }
    // --delivery-limit 2: two redeliveries, so three hosts die.
    assert_eq!(killed, 3, "one host per delivery, up to the limit");
    for (n, other) in (10u64..).zip(others) {
        let reply = other
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("fib({n}): {e}"));
        assert_eq!(String::from_utf8(reply.body).unwrap(), fib(n).to_string());
    }
    host.signal("TERM");
    assert_eq!(host.wait_exit(Duration::from_secs(30)).await, Some(0));
    delete_queues(&queue).await;
    delete_queues(&dead_letter_queue(&queue)).await;
}
