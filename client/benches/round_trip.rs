//! What Warren costs on top of RabbitMQ: the same client, the same broker,
//! three different workers on the other side of the queue.
//!
//! - `bare_broker`: an in-process echo responder that replies the moment a
//!   request arrives: the ceiling, pure broker round trips.
//! - `warren`: an in-process `warren-host` running the fib component.
//! - `python_seed`: the tutorial's pika worker (`client/tests/py/pika_rpc.py
//!   serve`, the seed server's code on a private queue); skipped when
//!   `python3` with `pika` is missing.
//!
//! Groups: `latency_fib_1` (one call at a time, nearly no compute: the
//! per-request overhead), `throughput_fib_1_x64` (64 calls in flight), and
//! `latency_fib_25` (real work: the seed's naive recursion).
//!
//! Run with `just bench` (needs the broker and `just build-guest`).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_lite::StreamExt as _;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use warren_client::protocol::declare_request_queue;
use warren_client::{Call, RpcClient};

use warren_testing::{amqp_url, fib_wasm, wait_for_consumer, workspace};

fn queue(worker: &str) -> String {
    format!("warren-bench-{worker}-{}", uuid::Uuid::new_v4())
}

/// The ceiling: replies with the request body as soon as it arrives.
async fn start_echo(queue: &str) -> tokio::task::JoinHandle<()> {
    let connection = Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = declare_request_queue(&connection, queue, Default::default())
        .await
        .unwrap();
    channel
        .basic_qos(128, BasicQosOptions::default())
        .await
        .unwrap();
    let mut requests = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    tokio::spawn(async move {
        let _connection = connection;
        while let Some(Ok(request)) = requests.next().await {
            let Some(reply_to) = request.properties.reply_to().clone() else {
                continue;
            };
            let mut properties = BasicProperties::default();
            if let Some(id) = request.properties.correlation_id().clone() {
                properties = properties.with_correlation_id(id);
            }
            let _ = channel
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    &request.data,
                    properties,
                )
                .await;
            let _ = request.acker.ack(BasicAckOptions::default()).await;
        }
    })
}

/// The seed's worker, if Python with pika is here.
fn start_python(queue: &str) -> Option<Child> {
    let python = std::env::var("WARREN_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_pika = Command::new(&python)
        .args(["-c", "import pika"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_pika {
        eprintln!("python_seed skipped: {python} cannot import pika (just py-env makes target/py)");
        return None;
    }
    let script = workspace().join("client/tests/py/pika_rpc.py");
    Command::new(python)
        .arg(script)
        .args(["serve", queue])
        .stdout(Stdio::null())
        .spawn()
        .ok()
}

struct Workers {
    clients: Vec<(&'static str, Arc<RpcClient>)>,
    _host: warren_host::RunningHost,
    _modules: tempfile::TempDir,
    python: Option<Child>,
    queues: Vec<String>,
}

async fn start_workers() -> Workers {
    let mut clients = Vec::new();
    let mut queues = Vec::new();

    let echo = queue("echo");
    start_echo(&echo).await;
    clients.push((
        "bare_broker",
        Arc::new(RpcClient::connect(&amqp_url(), &echo).await.unwrap()),
    ));
    queues.push(echo);

    let modules = tempfile::tempdir().unwrap();
    std::fs::write(modules.path().join("fib.wasm"), fib_wasm()).unwrap();
    let warren = queue("warren");
    let mut config = warren_host::HostConfig::new(&warren, modules.path());
    config.broker.amqp_urls = vec![amqp_url()];
    let host = warren_host::start(config).await.unwrap();
    clients.push((
        "warren",
        Arc::new(RpcClient::connect(&amqp_url(), &warren).await.unwrap()),
    ));
    queues.push(warren.clone());
    queues.push(warren_client::protocol::deploy::deploy_stream(&warren));

    let python_queue = queue("python");
    let python = start_python(&python_queue);
    if python.is_some() {
        wait_for_consumer(&python_queue).await;
        clients.push((
            "python_seed",
            Arc::new(
                RpcClient::connect(&amqp_url(), &python_queue)
                    .await
                    .unwrap(),
            ),
        ));
    }
    queues.push(python_queue);
    Workers {
        clients,
        _host: host,
        _modules: modules,
        python,
        queues,
    }
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut workers = runtime.block_on(start_workers());
    let timeout = Duration::from_secs(30);

    let mut latency = c.benchmark_group("latency_fib_1");
    for (name, client) in &workers.clients {
        latency.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.to_async(&runtime).iter(|| async {
                let reply = client.call(Call::new("1").timeout(timeout)).await.unwrap();
                assert_eq!(reply.body, b"1");
            })
        });
    }
    latency.finish();

    const IN_FLIGHT: usize = 64;
    let mut throughput = c.benchmark_group("throughput_fib_1_x64");
    throughput.throughput(Throughput::Elements(IN_FLIGHT as u64));
    for (name, client) in &workers.clients {
        throughput.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.to_async(&runtime).iter(|| async {
                let calls: Vec<_> = (0..IN_FLIGHT)
                    .map(|_| {
                        let client = client.clone();
                        tokio::spawn(async move {
                            client.call(Call::new("1").timeout(timeout)).await.unwrap()
                        })
                    })
                    .collect();
                for call in calls {
                    call.await.unwrap();
                }
            })
        });
    }
    throughput.finish();

    let mut work = c.benchmark_group("latency_fib_25");
    work.sample_size(10);
    for (name, client) in workers
        .clients
        .iter()
        .filter(|(name, _)| *name != "bare_broker")
    {
        work.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.to_async(&runtime).iter(|| async {
                let reply = client.call(Call::new("25").timeout(timeout)).await.unwrap();
                assert_eq!(reply.body, b"75025");
            })
        });
    }
    work.finish();

    if let Some(mut python) = workers.python.take() {
        let _ = python.kill();
        let _ = python.wait();
    }
    runtime.block_on(async {
        let connection = Connection::connect(&amqp_url(), Default::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        for queue in &workers.queues {
            let _ = channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await;
        }
    });
}

criterion_group!(round_trip, benches);
criterion_main!(round_trip);
