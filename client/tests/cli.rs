//! The `warren` command line as a script would use it: stdout, stderr and
//! exit codes.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use warren_client::SecretKey;
use warren_client::protocol::deploy::public_key_path;
use warren_testing::*;

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
    let out = tokio::task::spawn_blocking(move || {
        warren(&["--queue", &queue, "call", "-p", "fib", "94"])
    })
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

/// The broker returns a request for a missing queue at once; the client
/// says so then, instead of waiting out its 30 s timeout.
#[test]
fn a_missing_queue_exits_3_at_once_and_says_so() {
    let missing = unique_queue("cli-nobody");
    let started = std::time::Instant::now();
    let out = warren(&["--queue", &missing, "fib", "3"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "waited {:?}, as if for the 30 s timeout",
        started.elapsed()
    );
}

#[test]
fn a_malformed_broker_url_is_bad_usage_not_an_unreachable_broker() {
    for url in ["http://guest:secret@localhost:5672", "not a url"] {
        let out = Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["--amqp-url", url, "fib", "3"])
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert!(
            stderr.contains("amqp://user:password@host"),
            "{url}: {stderr}"
        );
        assert!(!stderr.contains("secret"), "the password leaked: {stderr}");
    }
}

/// `--timeout` is how long a reply may take; connecting has its own limit,
/// so a short `--timeout` is never reported as an unreachable broker.
#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_shorter_than_connecting_is_a_missing_reply() {
    let host = TestHost::start("cli-short", &[("fib", &fib_wasm())]).await;
    let queue = host.queue.clone();
    // fib(40) takes about half a second, so its reply can never beat the
    // timer (fib(25)'s sometimes did, while the request's publish was being
    // confirmed).
    let out = tokio::task::spawn_blocking(move || {
        warren(&["--queue", &queue, "--timeout", "1ms", "fib", "40"])
    })
    .await
    .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("no reply within"), "{stderr}");
    assert!(!stderr.contains("cannot reach the broker"), "{stderr}");
    host.stop().await;
}

/// `-v` says which version answered for errors too: they carry the digest.
#[tokio::test(flavor = "multi_thread")]
async fn verbose_names_the_version_that_answered_an_error() {
    let wasm = fib_wasm();
    let host = TestHost::start("cli-verbose", &[("fib", &wasm)]).await;
    let queue = host.queue.clone();
    let (error, refused) = tokio::task::spawn_blocking(move || {
        (
            warren(&["--queue", &queue, "-v", "call", "-p", "fib", "94"]),
            warren(&["--queue", &queue, "-v", "call", "-p", "nosuch", "1"]),
        )
    })
    .await
    .unwrap();
    assert_eq!(error.status.code(), Some(1));
    let stderr = text(&error.stderr);
    assert!(
        stderr.contains(&format!("answered by fib {}", digest(&wasm))),
        "{stderr}"
    );
    // A refusal before any module ran says so, not "(no digest)".
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("answered for nosuch; no module ran"),
        "{stderr}"
    );
    host.stop().await;
}

#[test]
fn fib_help_says_when_the_naive_recursion_meets_the_timeout() {
    let out = warren(&["fib", "--help"]);
    let help = text(&out.stdout);
    assert!(
        help.contains("0 to 93") && help.contains("fib(47)"),
        "{help}"
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
        durable: true,
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

/// `warren bench` as a script uses it: a JSON report, and an exit code
/// that says whether every reply was right.
#[tokio::test(flavor = "multi_thread")]
async fn bench_reports_json_and_fails_on_wrong_or_error_replies() {
    let wasm = fib_wasm();
    let host = TestHost::start("cli-bench", &[("fib", &wasm)]).await;
    let queue = host.queue.clone();
    let (good, wrong, errors) = tokio::task::spawn_blocking(move || {
        let bench = |args: &[&str]| {
            let mut all = vec!["--queue", &queue, "bench", "--json", "-n", "200", "-c", "8"];
            all.extend_from_slice(args);
            warren(&all)
        };
        (
            bench(&["--expect", "55", "10"]),
            bench(&["--expect", "56", "10"]),
            bench(&["94"]),
        )
    })
    .await
    .unwrap();

    assert_eq!(good.status.code(), Some(0), "{}", text(&good.stderr));
    let report: serde_json::Value = serde_json::from_slice(&good.stdout).unwrap();
    assert_eq!(report["requests"], 200);
    assert_eq!(report["ok"], 200);
    assert_eq!(report["concurrency"], 8);
    assert!(report["requests_per_second"].as_f64().unwrap() > 0.0);
    let latency = &report["latency"];
    assert!(latency["p50_us"].as_u64().unwrap() <= latency["p99_us"].as_u64().unwrap());
    assert!(latency["p99_us"].as_u64().unwrap() <= latency["max_us"].as_u64().unwrap());
    assert_eq!(report["digests"][digest(&wasm)], 200);

    assert_eq!(wrong.status.code(), Some(3), "wrong replies fail the check");
    let report: serde_json::Value = serde_json::from_slice(&wrong.stdout).unwrap();
    assert_eq!(
        (report["wrong"].as_u64(), report["ok"].as_u64()),
        (Some(200), Some(0))
    );

    assert_eq!(
        errors.status.code(),
        Some(1),
        "error replies fail the check"
    );
    let report: serde_json::Value = serde_json::from_slice(&errors.stdout).unwrap();
    assert_eq!(report["errors"]["procedure-error"], 200);
    host.stop().await;
}

#[test]
fn bench_against_a_missing_queue_stops_at_once() {
    let missing = unique_queue("cli-bench-nobody");
    let out = warren(&["--queue", &missing, "bench", "-n", "1000", "1"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("does not exist"),
        "{}",
        text(&out.stderr)
    );
}

/// Values that cannot work are usage errors (exit 2) that say the rule,
/// before anything reaches the broker: they used to panic (exit 101), reach
/// the host, or come back as raw broker errors.
#[test]
fn nonsense_values_exit_2_and_say_the_rule() {
    let long = "q".repeat(256);
    let at_the_edge = "q".repeat(250);
    let cases: [(&[&str], &str); 14] = [
        (&["--queue", &long, "fib", "1"], "at most 247"),
        (&["--queue", &at_the_edge, "status"], "at most 247"),
        (&["--queue", "", "fib", "1"], "empty"),
        (&["--timeout", "0s", "fib", "1"], "at least 1ms"),
        (&["--timeout", "99999999999d", "fib", "1"], "at most 49d"),
        (&["call", "-p", "Fib", "1"], "lowercase"),
        (&["call", "-p", "", "1"], "lowercase"),
        (&["bench", "-p", "a b", "1"], "lowercase"),
        (&["bench", "-n", "0", "1"], "0 is not in 1.."),
        (&["bench", "-d", "0s", "1"], "at least 1ms"),
        (&["fib", "-1"], "from 0 to 93"),
        (&["fib", "94"], "from 0 to 93"),
        (&["status", "--wait", "0s"], "at least 1ms"),
        (
            &["--queue", &long, "deploy", "fib", "x.wasm"],
            "at most 247",
        ),
    ];
    for (args, rule) in cases {
        let out = warren(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(rule),
            "{args:?} should say {rule:?}: {stderr}"
        );
    }
}

/// A server that answers, but not in AMQP (an HTTP port, say), is named as
/// such instead of a parser's internals.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_is_not_a_broker_is_named_so() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut greeting = [0; 8];
            let _ = socket.read_exact(&mut greeting).await;
            let _ = socket
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let out = tokio::task::spawn_blocking(move || warren(&["--amqp-url", &url, "fib", "1"]))
        .await
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("not as an AMQP 0-9-1 broker"), "{stderr}");
    assert!(!stderr.contains("ParserErrors"), "{stderr}");
    server.abort();
}

/// `keygen` and `new` never talk to a broker, so their help does not offer
/// the broker options (which they still accept, ignored).
#[test]
fn commands_without_a_broker_do_not_offer_broker_options() {
    for command in ["keygen", "new"] {
        let help = text(&warren(&[command, "--help"]).stdout);
        for option in ["--amqp-url", "--queue", "--timeout", "--durable"] {
            assert!(
                !help.contains(option),
                "{command} --help offers {option}:\n{help}"
            );
        }
    }
    let help = text(&warren(&["status", "--help"]).stdout);
    assert!(help.contains("--queue"), "{help}");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    let out = warren(&["--queue", "q", "keygen", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// A run of fewer calls than --concurrency reports the calls it could have
/// in flight, not the option.
#[tokio::test(flavor = "multi_thread")]
async fn bench_reports_no_more_in_flight_than_calls() {
    let host = TestHost::start("cli-bench-few", &[("fib", &fib_wasm())]).await;
    let queue = host.queue.clone();
    let out = tokio::task::spawn_blocking(move || {
        warren(&["--queue", &queue, "bench", "-n", "3", "-c", "1000", "5"])
    })
    .await
    .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("with 3 in flight"), "{stdout}");
    host.stop().await;
}

#[test]
fn keygen_writes_a_private_secret_and_a_one_line_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deployer");
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("keygen")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(public_key_path(&path)).unwrap();
    assert_eq!(public.lines().count(), 1);
    assert!(public.starts_with("ed25519:"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        public,
        "stdout shows the public key"
    );
    SecretKey::read(&path).expect("the secret key reads back");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let again = Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("keygen")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(1),
        "an existing key is never overwritten"
    );

    // Nor an existing FILE.pub: nothing is written at all.
    let other = dir.path().join("other");
    std::fs::write(public_key_path(&other), "keep me\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("keygen")
        .arg(&other)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("other.pub already exists"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!other.exists());
    assert_eq!(
        std::fs::read_to_string(public_key_path(&other)).unwrap(),
        "keep me\n"
    );
}
