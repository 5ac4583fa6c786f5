//! Interoperability with Python peers in the RabbitMQ tutorial's pattern:
//! the seed's own `rpc_client.py` and `rpc_server.py`, run unchanged from
//! `../shared/seed/`, and a pika caller and server of our own on private
//! queues (which run even where the seed is absent).
//!
//! The seed programs hard-code `rpc_queue`, so the two tests that use them
//! hold [`RPC_QUEUE`] and never run beside each other; each starts by
//! deleting `rpc_queue` so leftovers from an earlier run cannot answer.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lapin::options::QueueDeleteOptions;
use warren_client::{Call, RpcClient};
use warren_testing::*;

/// Serialises the tests that need the literal `rpc_queue`.
static RPC_QUEUE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SEED_QUEUE: &str = "rpc_queue";

fn python() -> String {
    std::env::var("WARREN_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn our_pika_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/pika_rpc.py")
}

/// The arguments that run seed program `name` unchanged against the broker
/// in `AMQP_URL` (it hard-codes localhost:5672): through `at_broker.py`.
fn seed_program(seed: &std::path::Path, name: &str) -> Vec<String> {
    let wrapper = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/at_broker.py");
    vec![
        wrapper.display().to_string(),
        seed.join(name).display().to_string(),
    ]
}

/// `../shared/seed/` next to the checkout (or `WARREN_SEED_DIR`), if present.
fn seed_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("WARREN_SEED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared/seed"));
    if dir.join("rpc_client.py").is_file() && dir.join("rpc_server.py").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: the seed programs are not at {} (set WARREN_SEED_DIR); \
             the pika tests in this file still check the Python side",
            dir.display()
        );
        None
    }
}

/// Kills the child when dropped, so a failing test leaves no server behind.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child present until taken")
    }

    /// Hands the child back, no longer to be killed.
    fn into_inner(mut self) -> Child {
        self.0.take().expect("child present until taken")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a Python program to completion within `limit`; returns stdout.
async fn run_python(args: Vec<String>, limit: Duration) -> String {
    tokio::task::spawn_blocking(move || {
        let mut child = KillOnDrop(Some(
            Command::new(python())
                .args(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("running python3 (install Python 3 with pika: pip install pika)"),
        ));
        let started = Instant::now();
        while child.child().try_wait().unwrap().is_none() {
            assert!(
                started.elapsed() < limit,
                "{args:?} did not finish within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.into_inner().wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?} failed: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    })
    .await
    .unwrap()
}

/// Starts a long-running Python server and waits until it consumes `queue`.
async fn start_python_server(args: Vec<String>, queue: &str) -> KillOnDrop {
    let child = Command::new(python())
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("running python3 (install Python 3 with pika: pip install pika)");
    let server = KillOnDrop(Some(child));
    wait_for_consumer(queue).await;
    server
}

/// Starts the seed's server and waits until it consumes `rpc_queue`. `None`
/// when the broker refuses its queue as a deprecated feature (RabbitMQ 4
/// configured to forbid transient non-exclusive queues, as later 4.x
/// releases do by default): README says so and what to do.
async fn start_seed_server(args: Vec<String>) -> Option<KillOnDrop> {
    let child = Command::new(python())
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running python3 (install Python 3 with pika: pip install pika)");
    let mut server = KillOnDrop(Some(child));
    let started = Instant::now();
    loop {
        if let Some(status) = server.child().try_wait().unwrap() {
            let mut stderr = String::new();
            use std::io::Read as _;
            let _ = server
                .child()
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr);
            assert!(
                stderr.contains("transient_nonexcl_queues"),
                "the seed's server stopped ({status}): {stderr}"
            );
            eprintln!(
                "the broker refuses the seed server's transient queue, as README says: {}",
                stderr.lines().last().unwrap_or_default()
            );
            return None;
        }
        if queue_state(SEED_QUEUE)
            .await
            .is_some_and(|(_, consumers)| consumers > 0)
        {
            return Some(server);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the seed's server did not consume rpc_queue within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deletes `rpc_queue` so nothing left from an earlier run consumes it.
async fn fresh_rpc_queue() {
    let connection = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let _ = channel
        .queue_delete(SEED_QUEUE.into(), QueueDeleteOptions::default())
        .await;
    close_connection(&connection).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tutorial_pika_caller_gets_fib_from_the_host() {
    let host = TestHost::start("pika-caller", &[("fib", &fib_wasm())]).await;
    let script = our_pika_script().display().to_string();
    let stdout = run_python(
        vec![script, "call".into(), host.queue.clone(), "30".into()],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(stdout.trim(), "832040");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_gets_fib_from_a_tutorial_pika_server() {
    let queue = unique_queue("pika-server");
    let script = our_pika_script().display().to_string();
    let _server = start_python_server(vec![script, "serve".into(), queue.clone()], &queue).await;
    let client = RpcClient::connect(&amqp_url(), &queue).await.unwrap();
    let reply = client
        .call(Call::new("30").timeout(CALL_TIMEOUT))
        .await
        .unwrap();
    assert_eq!(reply.body, b"832040");
    assert_eq!(
        (reply.procedure, reply.digest),
        (None, None),
        "a plain server sends no Warren headers"
    );
    client.close().await;
    let connection = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_rpc_client_gets_fib_30_from_the_host() {
    let Some(seed) = seed_dir() else { return };
    let _rpc_queue = RPC_QUEUE.lock().await;
    fresh_rpc_queue().await;
    let host = TestHost::start_with("seed-client", &[("fib", &fib_wasm())], |config| {
        config.broker.queue = SEED_QUEUE.into();
    })
    .await;
    let stdout = run_python(
        seed_program(&seed, "rpc_client.py"),
        Duration::from_secs(60),
    )
    .await;
    assert!(
        stdout.contains("Got 832040"),
        "seed client printed: {stdout}"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_gets_fib_30_from_the_seed_rpc_server() {
    let Some(seed) = seed_dir() else { return };
    let _rpc_queue = RPC_QUEUE.lock().await;
    fresh_rpc_queue().await;
    let Some(_server) = start_seed_server(seed_program(&seed, "rpc_server.py")).await else {
        return;
    };
    let client = RpcClient::connect(&amqp_url(), SEED_QUEUE).await.unwrap();
    let reply = client
        .call(Call::new("30").timeout(CALL_TIMEOUT))
        .await
        .unwrap();
    assert_eq!(reply.body, b"832040");
    client.close().await;
}
