//! The `warren` command line as a script would use it: stdout, stderr and
//! exit codes.

mod common;

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use common::*;

fn warren(args: &[&str]) -> Output {
    warren_with_stdin(args, None)
}

fn warren_with_stdin(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .env("AMQP_URL", amqp_url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running warren");
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn fib_prints_the_number_and_nothing_else() {
    let host = TestHost::start("cli-fib", &[("fib", &fib_wasm())]).await;
    let queue = host.queue.clone();
    let out = tokio::task::spawn_blocking(move || warren(&["--queue", &queue, "fib", "30"]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "832040\n");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn call_prints_the_raw_body_and_reads_stdin_for_dash() {
    let host = TestHost::start("cli-call", &[("fib", &fib_wasm())]).await;
    let queue = host.queue.clone();
    let (arg, piped) = tokio::task::spawn_blocking(move || {
        (
            warren(&["--queue", &queue, "call", "--procedure", "fib", "11"]),
            warren_with_stdin(&["--queue", &queue, "call", "-"], Some(b" 12\n")),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        (arg.status.code(), text(&arg.stdout)),
        (Some(0), "89".to_owned())
    );
    assert_eq!(
        (piped.status.code(), text(&piped.stdout)),
        (Some(0), "144".to_owned())
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_procedure_error_exits_1_with_kind_and_message_on_stderr() {
    let host = TestHost::start("cli-error", &[("fib", &fib_wasm())]).await;
    let queue = host.queue.clone();
    let out = tokio::task::spawn_blocking(move || warren(&["--queue", &queue, "fib", "94"]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("procedure-error") && stderr.contains("above 93"),
        "{stderr}"
    );
    host.stop().await;
}

#[test]
fn bad_usage_exits_2() {
    for args in [
        &["fib", "abc"][..],
        &["fib"],
        &["frobnicate"],
        &["--timeout", "soon", "fib", "1"],
    ] {
        let out = warren(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn no_host_on_the_queue_exits_3_and_says_so() {
    // The queue does not exist at all.
    let missing = unique_queue("cli-nobody");
    let out = warren(&["--queue", &missing, "--timeout", "1s", "fib", "3"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("no reply within 1s") && stderr.contains("does not exist"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_without_consumers_exits_3_and_says_so() {
    let queue = unique_queue("cli-idle");
    let connection = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let options = lapin::options::QueueDeclareOptions {
        auto_delete: false,
        ..Default::default()
    };
    channel
        .queue_declare(queue.as_str().into(), options, Default::default())
        .await
        .unwrap();
    let q = queue.clone();
    let out = tokio::task::spawn_blocking(move || {
        warren(&["--queue", &q, "--timeout", "1s", "fib", "3"])
    })
    .await
    .unwrap();
    let _ = channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("no host is consuming"), "{stderr}");
}

#[test]
fn an_unreachable_broker_exits_4_and_names_the_url() {
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args([
            "--amqp-url",
            "amqp://guest:secret@127.0.0.1:1/%2f",
            "fib",
            "3",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("amqp://guest:***@127.0.0.1:1/%2f"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret"), "the password leaked: {stderr}");
}
