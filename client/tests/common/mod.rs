//! Shared test setup: a real broker, in-process hosts on their own queues.
//!
//! Every host gets a queue named with a fresh uuid and a temporary modules
//! folder, so tests run in parallel and leftovers from earlier runs cannot
//! interfere.

#![allow(dead_code)] // each test binary uses a different part of this

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use warren_client::{Call, CallError, Reply, RpcClient};
use warren_host::{HostConfig, RunningHost};

/// The broker the tests use: `AMQP_URL`, or the local default.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| warren_client::protocol::DEFAULT_AMQP_URL.into())
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The fib component, as `just build-guest` builds it.
pub fn fib_wasm() -> Vec<u8> {
    built_guest("guest_fib", "just build-guest")
}

/// The hostile test component, as `just build-test-guests` builds it.
pub fn hostile_wasm() -> Vec<u8> {
    built_guest("guest_hostile", "just build-test-guests")
}

fn built_guest(file_stem: &str, recipe: &str) -> Vec<u8> {
    let path = workspace().join(format!("target/wasm32-wasip2/release/{file_stem}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "reading {}: {e}. Build it first: `{recipe}` (`just test` does it)",
            path.display()
        )
    })
}

/// `wasm` with a custom section appended: a different file (and digest)
/// that behaves exactly the same, like a rebuild.
pub fn with_custom_section(wasm: &[u8], payload: &str) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"warren-test";
    let mut content = Vec::new();
    leb128(name.len(), &mut content);
    content.extend_from_slice(name);
    content.extend_from_slice(payload.as_bytes());
    let mut out = wasm.to_vec();
    out.push(0); // custom section id
    leb128(content.len(), &mut out);
    out.extend_from_slice(&content);
    out
}

/// `sha256:<hex>` of `bytes`, as the host reports it.
pub fn digest(bytes: &[u8]) -> String {
    warren_host::modules::digest(bytes)
}

/// A unique queue name for one test.
pub fn unique_queue(test: &str) -> String {
    format!("warren-test-{test}-{}", uuid::Uuid::new_v4())
}

/// A host serving its own queue from its own temporary modules folder.
pub struct TestHost {
    pub queue: String,
    pub modules: tempfile::TempDir,
    pub host: Option<RunningHost>,
    config: HostConfig,
    /// Whether stopping this host deletes its queue and deploy stream.
    owns_queue: bool,
}

impl TestHost {
    /// Starts a host on a fresh queue with `modules` (name, bytes) installed.
    pub async fn start(test: &str, modules: &[(&str, &[u8])]) -> Self {
        Self::start_with(test, modules, |_| {}).await
    }

    /// Like [`TestHost::start`], with a chance to adjust the options.
    /// Stopping it deletes its queue and deploy stream.
    pub async fn start_with(
        test: &str,
        modules: &[(&str, &[u8])],
        adjust: impl FnOnce(&mut HostConfig),
    ) -> Self {
        Self::launch(&unique_queue(test), true, modules, adjust).await
    }

    /// A host on `queue` (a fresh one from [`unique_queue`] that the test
    /// prepared, say), which deletes it when stopped.
    pub async fn start_on(
        queue: &str,
        modules: &[(&str, &[u8])],
        adjust: impl FnOnce(&mut HostConfig),
    ) -> Self {
        Self::launch(queue, true, modules, adjust).await
    }

    /// A second host on an existing test host's queue, with its own folder.
    /// Stop it before the host that owns the queue.
    pub async fn join(
        queue: &str,
        modules: &[(&str, &[u8])],
        adjust: impl FnOnce(&mut HostConfig),
    ) -> Self {
        Self::launch(queue, false, modules, adjust).await
    }

    async fn launch(
        queue: &str,
        owns_queue: bool,
        modules: &[(&str, &[u8])],
        adjust: impl FnOnce(&mut HostConfig),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in modules {
            std::fs::write(dir.path().join(format!("{name}.wasm")), bytes).unwrap();
        }
        let mut config = HostConfig::new(queue, dir.path());
        config.amqp_urls = vec![amqp_url()];
        config.concurrency = Some(2);
        adjust(&mut config);
        let host = warren_host::start(config.clone())
            .await
            .expect("starting the host");
        TestHost {
            queue: config.queue.clone(),
            modules: dir,
            host: Some(host),
            config,
            owns_queue,
        }
    }

    /// Stops the host and starts it again with the same options and folder.
    pub async fn restart(&mut self) {
        if let Some(host) = self.host.take() {
            host.stop().await.expect("host stops cleanly");
        }
        let host = warren_host::start(self.config.clone())
            .await
            .expect("restarting the host");
        self.host = Some(host);
    }

    /// Stops the host process but keeps its queue (and what waits in it),
    /// for a later host to take over.
    pub async fn stop_host(&mut self) {
        if let Some(host) = self.host.take() {
            host.stop().await.expect("host stops cleanly");
        }
    }

    /// Names of the procedures this host serves, in order.
    pub fn registry_names(&self) -> Vec<String> {
        let host = self.host.as_ref().expect("host running");
        host.registry()
            .list()
            .into_iter()
            .map(|served| served.name)
            .collect()
    }

    /// Digest of the version of `name` this host serves right now.
    pub fn serving(&self, name: &str) -> Option<String> {
        let host = self.host.as_ref()?;
        host.registry().get(name).map(|p| p.digest.clone())
    }

    /// Waits until this host serves `digest` as `name`; false if it never does.
    pub async fn wait_serving(&self, name: &str, digest: &str, within: Duration) -> bool {
        let give_up = Instant::now() + within;
        while Instant::now() < give_up {
            if self.serving(name).as_deref() == Some(digest) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// A client for this host's queue.
    pub async fn client(&self) -> RpcClient {
        RpcClient::connect(&amqp_url(), &self.queue)
            .await
            .expect("client connects")
    }

    /// Path of module `name` in this host's folder.
    pub fn module_path(&self, name: &str) -> PathBuf {
        self.modules.path().join(format!("{name}.wasm"))
    }

    /// Replaces (or creates) module `name` atomically, as a deploy would.
    pub fn install(&self, name: &str, bytes: &[u8]) {
        let tmp = self.modules.path().join(format!(".{name}.wasm.tmp"));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, self.module_path(name)).unwrap();
    }

    /// Stops the host gracefully; the queue's owner also deletes the queue
    /// and its deploy stream, so test runs leave nothing on the broker.
    pub async fn stop(mut self) {
        if let Some(host) = self.host.take() {
            host.stop().await.expect("host stops cleanly");
        }
        if self.owns_queue {
            delete_queues(&self.queue).await;
        }
    }
}

/// What the broker at `url` says of `queue`: (messages ready, consumers),
/// or `None` when it does not exist.
pub async fn queue_state_at(url: &str, queue: &str) -> Option<(u32, u32)> {
    let connection = lapin::Connection::connect(url, Default::default())
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    // A passive declare of a missing queue closes its channel (and this
    // connection is the test's own).
    let channel = connection.create_channel().await.unwrap();
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let state = channel
        .queue_declare(queue.into(), passive, Default::default())
        .await
        .ok()
        .map(|info| (info.message_count(), info.consumer_count()));
    close_connection(&connection).await;
    state
}

/// [`queue_state_at`] on the test broker.
pub async fn queue_state(queue: &str) -> Option<(u32, u32)> {
    queue_state_at(&amqp_url(), queue).await
}

/// Waits until `accept` likes what the broker at `url` says of `queue`
/// ([`queue_state_at`]); panics with `what` after 30 s.
pub async fn wait_for_queue_at(
    url: &str,
    queue: &str,
    what: &str,
    accept: impl Fn(Option<(u32, u32)>) -> bool,
) {
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let state = queue_state_at(url, queue).await;
        if accept(state) {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "{queue}: {what} did not happen within 30 s (messages, consumers: {state:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until something consumes `queue` (a server started in another
/// process, say); panics after 30 s.
pub async fn wait_for_consumer(queue: &str) {
    wait_for_queue_at(&amqp_url(), queue, "a consumer", |state| {
        state.is_some_and(|(_, consumers)| consumers > 0)
    })
    .await;
}

/// Publishes a deploy message onto `queue`'s deploy stream by hand, as
/// anyone who may publish to the broker could, without waiting for answers.
pub async fn publish_raw_deploy(queue: &str, headers: lapin::types::FieldTable, module: &[u8]) {
    let connection = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            "".into(),
            warren_client::protocol::deploy::deploy_stream(queue)
                .as_str()
                .into(),
            lapin::options::BasicPublishOptions::default(),
            module,
            lapin::BasicProperties::default().with_headers(headers),
        )
        .await
        .unwrap();
    close_connection(&connection).await;
}

/// Publishes deploy messages (headers, module) onto `queue`'s deploy
/// stream, declaring it first, in order, each confirmed by the broker.
pub async fn publish_raw_deploys(queue: &str, deploys: &[(lapin::types::FieldTable, Vec<u8>)]) {
    let connection = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let declared = warren_client::protocol::deploy::declare_deploy_stream(
        &connection,
        queue,
        warren_client::protocol::deploy::StreamRetention::DEFAULT,
    )
    .await
    .unwrap();
    declared
        .channel
        .confirm_select(Default::default())
        .await
        .unwrap();
    for (headers, module) in deploys {
        let confirmation = declared
            .channel
            .basic_publish(
                "".into(),
                declared.name.as_str().into(),
                lapin::options::BasicPublishOptions::default(),
                module,
                lapin::BasicProperties::default().with_headers(headers.clone()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirmation.is_ack(), "the broker stored the deploy");
    }
    close_connection(&connection).await;
}

/// One message read back from a deploy stream.
#[derive(Debug)]
pub struct StreamMessage {
    pub offset: i64,
    pub headers: lapin::types::FieldTable,
    pub bytes: usize,
}

/// Everything `queue`'s deploy stream holds now, oldest first.
pub async fn read_deploy_stream(queue: &str) -> Vec<StreamMessage> {
    use futures_lite::StreamExt as _;
    use lapin::types::AMQPValue;
    let connection = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.basic_qos(100, Default::default()).await.unwrap();
    let mut arguments = lapin::types::FieldTable::default();
    arguments.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let stream = warren_client::protocol::deploy::deploy_stream(queue);
    let mut consumer = channel
        .basic_consume(
            stream.as_str().into(),
            "".into(),
            Default::default(),
            arguments,
        )
        .await
        .unwrap();
    let mut messages = Vec::new();
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_secs(1), consumer.next()).await
    {
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let offset = match headers.inner().get("x-stream-offset") {
            Some(AMQPValue::LongLongInt(offset)) => *offset,
            other => panic!("no stream offset: {other:?}"),
        };
        messages.push(StreamMessage {
            offset,
            headers,
            bytes: delivery.data.len(),
        });
        delivery.acker.ack(Default::default()).await.unwrap();
    }
    close_connection(&connection).await;
    messages
}

/// Runs the `warren` binary with `args` against the test broker.
pub async fn run_warren(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .env("AMQP_URL", amqp_url())
            .env("NO_COLOR", "1")
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Deletes `queue` and its deploy stream, if they exist.
pub async fn delete_queues(queue: &str) {
    let Ok(connection) = lapin::Connection::connect(&amqp_url(), Default::default()).await else {
        return;
    };
    let stream = warren_client::protocol::deploy::deploy_stream(queue);
    for name in [queue, stream.as_str()] {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel.queue_delete(name.into(), Default::default()).await;
        }
    }
    close_connection(&connection).await;
}

/// Closes a test's own connection without risking a hang (lapin can wait
/// forever for a close-ok that never comes).
pub async fn close_connection(connection: &lapin::Connection) {
    close_quietly(connection.close(200, "test done".into())).await;
}

/// Waits at most a few seconds for a close to finish.
pub async fn close_quietly<T, E>(closing: impl Future<Output = Result<T, E>>) {
    let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;
}

/// Calls until `accept` likes the reply or `within` passes; returns the last.
pub async fn call_until(
    client: &RpcClient,
    call: Call,
    within: Duration,
    accept: impl Fn(&Result<Reply, CallError>) -> bool,
) -> Result<Reply, CallError> {
    let give_up = Instant::now() + within;
    loop {
        let outcome = client.call(call.clone()).await;
        if accept(&outcome) || Instant::now() >= give_up {
            return outcome;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The error kind of a failed call, or a panic saying what came instead.
pub fn error_kind(outcome: Result<Reply, CallError>) -> warren_client::protocol::ErrorKind {
    match outcome {
        Err(CallError::Rpc { error, .. }) => error.kind,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// Short timeout for calls in tests that expect an answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// A call with the test timeout.
pub fn call(body: impl Into<Vec<u8>>) -> Call {
    Call::new(body).timeout(CALL_TIMEOUT)
}

/// Shares a client between tasks.
pub type SharedClient = Arc<RpcClient>;

/// The `warren-host` binary cargo built beside these tests
/// (`cargo test --workspace` builds every binary of the workspace).
pub fn host_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/PROFILE/deps");
    let path = profile_dir.join(format!("warren-host{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (`just test` does)",
        path.display()
    );
    path
}

/// A `warren-host` process with its own modules folder, its log (stderr) in
/// a file as under systemd; killed when dropped.
pub struct HostProcess {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl HostProcess {
    /// Starts `warren-host` on `queue` serving `modules`, with `args` added,
    /// against `urls` (comma-separated; the test broker when `None`).
    pub fn start(
        queue: &str,
        modules: &[(&str, &[u8])],
        args: &[&str],
        urls: Option<&str>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("modules");
        std::fs::create_dir(&folder).unwrap();
        for (name, bytes) in modules {
            std::fs::write(folder.join(format!("{name}.wasm")), bytes).unwrap();
        }
        let log = std::fs::File::create(dir.path().join("host.log")).unwrap();
        let child = std::process::Command::new(host_binary())
            .args(["--queue", queue, "--concurrency", "2", "--modules-dir"])
            .arg(&folder)
            .args(args)
            .env("AMQP_URL", urls.map_or_else(amqp_url, str::to_owned))
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting warren-host");
        HostProcess { child, dir }
    }

    /// Everything the host has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("host.log")).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics with the log if not.
    pub async fn wait_for_log(&self, needle: &str, within: Duration) -> String {
        let give_up = Instant::now() + within;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < give_up,
                "warren-host did not log {needle:?} within {within:?}; its log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` (`TERM`, `KILL`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit; its exit code (`None` if a signal
    /// ended it). Panics after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let give_up = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < give_up,
                "warren-host did not exit within {within:?}; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keeps `callers` tasks calling fib(n) for n cycling through 1..=20 until
/// `stop` is set; each returns how many calls it made, or panics on the
/// first failed or wrong one (naming it).
pub fn keep_calling(
    client: SharedClient,
    callers: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<usize>> {
    (0..callers)
        .map(|caller| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut made = 0;
                let mut n = caller as u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n = n % 20 + 1;
                    let reply = client
                        .call(Call::new(n.to_string()).timeout(Duration::from_secs(30)))
                        .await
                        .unwrap_or_else(|e| panic!("caller {caller}: fib({n}) failed: {e}"));
                    assert_eq!(
                        String::from_utf8(reply.body).unwrap(),
                        fib(n).to_string(),
                        "caller {caller}: fib({n})"
                    );
                    made += 1;
                }
                made
            })
        })
        .collect()
}

/// Whether `program` is on PATH (a toolchain a test needs, say).
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// The seed's fibonacci, to check replies.
pub fn fib(n: u64) -> u64 {
    if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
}

/// `GET path` from an HTTP server at `addr`: (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}
