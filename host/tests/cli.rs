//! The `warren-host` binary as an operator runs it: its log (plain text in a
//! file, nothing repeated that was said before) and how it waits for a
//! broker that is not there yet.

use std::io::Read as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use warren_protocol::deploy::{HEADER_DEPLOY_DIGEST, HEADER_DEPLOY_NAME, deploy_stream};
use warren_protocol::{module_digest, set_header_text};

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| warren_protocol::DEFAULT_AMQP_URL.into())
}

fn fib_wasm() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/release/guest_fib.wasm");
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "reading {}: {e}. Build it first: `just build-guest` (`just test` does it)",
            path.display()
        )
    })
}

/// A `warren-host` process whose stderr goes to a file, as under systemd.
struct HostProcess {
    child: Child,
    log: std::path::PathBuf,
}

impl HostProcess {
    fn start(modules: &Path, log: std::path::PathBuf, args: &[&str]) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_warren-host"))
            .arg("--modules-dir")
            .arg(modules)
            .args(args)
            .env("AMQP_URL", amqp_url())
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("starting warren-host");
        HostProcess { child, log }
    }

    fn log(&self) -> String {
        let mut text = String::new();
        std::fs::File::open(&self.log)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text
    }

    fn wait_for_log(&self, needle: &str, within: Duration) -> String {
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
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit code.
    fn stop(mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap().code()
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes an unsigned deploy straight to the stream, as an old or
/// careless deployer could.
async fn publish_unsigned_deploy(queue: &str, name: &str, module: &[u8]) {
    let connection = Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    warren_protocol::deploy::declare_deploy_stream(&channel, queue)
        .await
        .unwrap();
    let mut headers = FieldTable::default();
    set_header_text(&mut headers, HEADER_DEPLOY_NAME, name);
    set_header_text(&mut headers, HEADER_DEPLOY_DIGEST, &module_digest(module));
    channel
        .basic_publish(
            "".into(),
            deploy_stream(queue).as_str().into(),
            BasicPublishOptions::default(),
            module,
            BasicProperties::default().with_headers(headers),
        )
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), connection.close(200, "".into())).await;
}

async fn delete_queues(queue: &str) {
    let connection = Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    for name in [queue.to_owned(), deploy_stream(queue)] {
        let channel = connection.create_channel().await.unwrap();
        let _ = channel
            .queue_delete(name.as_str().into(), Default::default())
            .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), connection.close(200, "".into())).await;
}

/// A log written to a file carries no colour codes, and a restarted host
/// does not warn again about refusals in the deploy history it replays.
#[tokio::test(flavor = "multi_thread")]
async fn the_log_in_a_file_is_plain_and_replayed_refusals_are_not_warnings() {
    let queue = format!("warren-test-host-log-{}", uuid::Uuid::new_v4());
    let dir = tempfile::tempdir().unwrap();
    let modules = dir.path().join("modules");
    std::fs::create_dir(&modules).unwrap();
    std::fs::write(modules.join("fib.wasm"), fib_wasm()).unwrap();

    let first = HostProcess::start(&modules, dir.path().join("first.log"), &["--queue", &queue]);
    first.wait_for_log("warren-host ready", Duration::from_secs(60));
    publish_unsigned_deploy(&queue, "fib", b"\0asm not really").await;
    let log = first.wait_for_log("deploy refused", Duration::from_secs(20));
    assert!(log.contains("WARN"), "a new refusal is a warning:\n{log}");
    assert_eq!(first.stop(), Some(0));
    assert!(!log.contains('\u{1b}'), "colour codes in a file:\n{log}");

    let second = HostProcess::start(
        &modules,
        dir.path().join("second.log"),
        &["--queue", &queue],
    );
    let log = second.wait_for_log("warren-host ready", Duration::from_secs(60));
    assert!(
        !log.contains("deploy refused") && !log.contains("history refused"),
        "the replayed refusal was logged again at info or above:\n{log}"
    );
    assert_eq!(second.stop(), Some(0));
    delete_queues(&queue).await;
}

/// With `--connect-timeout`, a host gives up on an absent broker (exit 1)
/// after saying what it waits for; without it, it would wait forever.
#[test]
fn a_host_waits_for_the_broker_as_long_as_connect_timeout_says() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_warren-host"))
        .arg("--modules-dir")
        .arg(dir.path())
        .args([
            "--amqp-url",
            "amqp://guest:secret@127.0.0.1:1/%2f",
            "--connect-timeout",
            "2s",
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("waiting for the broker"), "{log}");
    assert!(log.contains("gave up waiting for the broker"), "{log}");
    assert!(
        log.contains("127.0.0.1:1") && !log.contains("secret"),
        "{log}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "did not wait: {log}"
    );
}

#[test]
fn a_malformed_broker_url_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warren-host"))
        .arg("--modules-dir")
        .arg(dir.path())
        .args(["--amqp-url", "http://localhost:5672"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(log.contains("amqp://user:password@host"), "{log}");
}
