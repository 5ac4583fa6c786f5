//! Warren on a real three-node RabbitMQ cluster (`scripts/cluster`), with
//! nodes lost and restarted under load.
//!
//! Starting a cluster takes about 20 s, so everything runs in one test on one
//! cluster, in order: `amqps://` with the cluster's test CA; a node lost
//! under two durable hosts and a durable caller; a broker restart under a default-mode host and client; durable
//! requests kept through a whole-cluster restart. The cluster has its own
//! node names, ports and data folder, never the broker on 5672 or a cluster
//! started by hand, and is always stopped at the end, whatever happens.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use warren_client::{Call, CallError, ClientOptions, RpcClient};
use warren_testing::*;

/// The test's own cluster; stopped and removed when dropped.
struct Cluster {
    urls: Vec<String>,
    /// The same nodes over TLS.
    tls_urls: Vec<String>,
}

/// Where the test cluster keeps its data (and its test CA).
const CLUSTER_DIR: &str = "/tmp/warren-cluster-test";

impl Cluster {
    /// Starts the cluster, or `None` where RabbitMQ is not installed.
    fn up() -> Option<Cluster> {
        let installed = std::process::Command::new("sh")
            .args(["-c", "command -v rabbitmq-server"])
            .output()
            .is_ok_and(|out| out.status.success());
        if !installed {
            return None;
        }
        let out = Self::script(&["up"])
            .output()
            .expect("running scripts/cluster up");
        let tls = Self::script(&["tls-urls"])
            .output()
            .expect("running scripts/cluster tls-urls");
        let list = |out: &[u8]| -> Vec<String> {
            String::from_utf8_lossy(out)
                .trim()
                .split(',')
                .map(str::to_owned)
                .collect()
        };
        let cluster = Cluster {
            urls: list(&out.stdout),
            tls_urls: list(&tls.stdout),
        };
        assert!(
            out.status.success() && cluster.urls.len() == 3,
            "scripts/cluster up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(cluster)
    }

    fn script(args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(workspace().join("scripts/cluster"));
        command
            .args(args)
            .env("WARREN_CLUSTER_NAME", "warrentest")
            .env("WARREN_CLUSTER_BASE_PORT", "5710")
            .env("WARREN_CLUSTER_DIST_BASE", "25710")
            .env("WARREN_CLUSTER_DIR", CLUSTER_DIR);
        command
    }

    /// Runs `scripts/cluster ARGS` without blocking the test's runtime.
    async fn run(&self, args: &[&str]) {
        let mut command = tokio::process::Command::from(Self::script(args));
        let out = command.output().await.expect("running scripts/cluster");
        assert!(
            out.status.success(),
            "scripts/cluster {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The nodes' URLs, comma-separated, starting with node `first` (1-based).
    fn urls_from(&self, first: usize) -> String {
        let mut urls = self.urls.clone();
        urls.rotate_left(first - 1);
        urls.join(",")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Self::script(&["down"]).output();
    }
}

async fn durable_client(urls: &str, queue: &str) -> Arc<RpcClient> {
    Arc::new(
        RpcClient::connect_with(ClientOptions::new(urls, queue).durable(true))
            .await
            .expect("durable client connects"),
    )
}

/// Starts a host process and waits until it takes requests.
async fn ready_host(queue: &str, args: &[&str], urls: &str) -> HostProcess {
    let host = HostProcess::start(queue, &[("fib", &fib_wasm())], args, Some(urls));
    host.wait_for_log("warren-host ready", Duration::from_secs(60))
        .await;
    host
}

#[tokio::test(flavor = "multi_thread")]
async fn warren_rides_out_node_loss_and_broker_restarts_on_a_cluster() {
    let Some(cluster) = Cluster::up() else {
        println!("SKIPPED: rabbitmq-server is not installed, so no cluster can be started");
        return;
    };
    amqps_works_with_a_private_ca(&cluster).await;
    a_node_lost_under_load_loses_no_request(&cluster).await;
    a_broker_restart_fails_pending_calls_at_once_and_both_sides_reconnect(&cluster).await;
    durable_requests_survive_a_whole_cluster_restart(&cluster).await;
}

/// Host and client reach a broker over TLS whose certificate the test CA
/// issued, given that CA with --amqp-ca-file; without it, the client says
/// the certificate is not trusted and what to do.
async fn amqps_works_with_a_private_ca(cluster: &Cluster) {
    let ca = format!("{CLUSTER_DIR}/tls/ca.pem");
    let url = &cluster.tls_urls[1];
    assert!(url.starts_with("amqps://"), "{url}");
    let queue = unique_queue("cluster-tls");
    let host = ready_host(&queue, &["--amqp-ca-file", &ca], url).await;
    assert!(host.log().contains("broker=amqps://"), "{}", host.log());

    let client = RpcClient::connect_with(ClientOptions::new(url, &queue).ca_file(&ca))
        .await
        .expect("connects over TLS with the test CA");
    let reply = client.call(call("12")).await.unwrap();
    assert_eq!(reply.body, b"144");
    client.close().await;

    let untrusted = match RpcClient::connect(url, &queue).await {
        Ok(_) => panic!("connected without trusting the test CA"),
        Err(error) => error.to_string(),
    };
    assert!(
        untrusted.contains("not trusted") && untrusted.contains("--amqp-ca-file"),
        "{untrusted}"
    );
    drop(host);
}

/// Two durable hosts on one quorum queue, first connected to different
/// nodes, and a durable caller keeping 8 calls in flight; node 1 (the
/// first host's and the caller's) stops and later starts again. Every call
/// is answered, and right; the first host carries on through another node.
async fn a_node_lost_under_load_loses_no_request(cluster: &Cluster) {
    let queue = unique_queue("cluster-node-loss");
    let on_node1 = ready_host(&queue, &["--durable"], &cluster.urls_from(1)).await;
    let on_node2 = ready_host(&queue, &["--durable"], &cluster.urls_from(2)).await;
    let client = durable_client(&cluster.urls_from(1), &queue).await;

    let stop = Arc::new(AtomicBool::new(false));
    let calling = keep_calling(client.clone(), 8, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.run(&["stop-node", "1"]).await;
    on_node1
        .wait_for_log("reconnected", Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.run(&["start-node", "1"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut made = 0;
    for caller in calling {
        made += caller.await.expect("every call answered, and right");
    }
    assert!(made > 50, "too little load to mean anything: {made} calls");
    let log = on_node1.log();
    assert!(log.contains("lost the broker"), "{log}");
    drop((on_node1, on_node2));
}

/// A default-mode host and client on one node, which restarts: the call in
/// flight fails at once (its exclusive callback queue is gone with the
/// connection; waiting out its timeout would help nobody), the host
/// reconnects by itself, and the client's next call connects again. The
/// host's /healthz says 503 while it is away and 200 once it is back.
async fn a_broker_restart_fails_pending_calls_at_once_and_both_sides_reconnect(cluster: &Cluster) {
    let node3 = &cluster.urls[2];
    let queue = unique_queue("cluster-restart");
    let health: std::net::SocketAddr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let host = ready_host(
        &queue,
        &["--timeout", "60s", "--metrics-addr", &health.to_string()],
        node3,
    )
    .await;
    assert_eq!(http_get(health, "/healthz").await.0, 200);
    let client = Arc::new(RpcClient::connect(node3, &queue).await.unwrap());
    let slow = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .call(Call::new("45").timeout(Duration::from_secs(60)))
                .await
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopped = Instant::now();
    cluster.run(&["stop-node", "3"]).await;
    let outcome = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("the pending call failed at once, not after its 60 s timeout")
        .unwrap();
    assert!(
        matches!(outcome, Err(CallError::Disconnected)),
        "{outcome:?}"
    );
    assert!(stopped.elapsed() < Duration::from_secs(10));
    // The host notices as soon as its connection reports the loss.
    let give_up = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let (status, line) = http_get(health, "/healthz").await;
        if status == 503 {
            break line;
        }
        assert!(Instant::now() < give_up, "/healthz still says: {line}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(line.contains("not connected"), "{line}");

    cluster.run(&["start-node", "3"]).await;
    host.wait_for_log("reconnected", Duration::from_secs(60))
        .await;
    assert_eq!(http_get(health, "/healthz").await.0, 200);
    let reply = call_until(&client, call("12"), Duration::from_secs(30), Result::is_ok).await;
    assert_eq!(reply.expect("the next call connects again").body, b"144");
    drop(host);
}

/// Persistent requests published while no host runs outlive a restart of
/// every node, and are answered by a host started afterwards; the durable
/// caller waits through the restart on its durable callback queue.
async fn durable_requests_survive_a_whole_cluster_restart(cluster: &Cluster) {
    let urls = cluster.urls_from(1);
    let queue = unique_queue("cluster-full-restart");
    // A host declares the queue, then goes away.
    let mut first = ready_host(&queue, &["--durable"], &urls).await;
    first.signal("TERM");
    assert_eq!(first.wait_exit(Duration::from_secs(30)).await, Some(0));

    let client = durable_client(&urls, &queue).await;
    let calls: Vec<_> = (1..=5u64)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move {
                let reply = client
                    .call(Call::new(n.to_string()).timeout(Duration::from_secs(120)))
                    .await;
                (n, reply)
            })
        })
        .collect();
    wait_for_queue_at(&cluster.urls[0], &queue, "5 requests queued", |state| {
        state.is_some_and(|(messages, _)| messages >= 5)
    })
    .await;
    cluster.run(&["restart"]).await;

    let _second = ready_host(&queue, &["--durable"], &urls).await;
    for call in calls {
        let (n, reply) = call.await.unwrap();
        let reply = reply.unwrap_or_else(|e| panic!("fib({n}) after the restart: {e}"));
        assert_eq!(String::from_utf8(reply.body).unwrap(), fib(n).to_string());
    }
}
