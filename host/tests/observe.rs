//! What operators see: Prometheus metrics and health checks
//! (`--metrics-addr`) after known traffic.

use std::time::Duration;

use warren_client::protocol::ErrorKind;
use warren_testing::*;

/// The value of the sample line that starts with `series` in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_known_traffic_and_health_says_consuming() {
    let (fib, hostile) = (fib_wasm(), hostile_wasm());
    let host = TestHost::start_with(
        "metrics",
        &[("fib", &fib), ("hostile", &hostile)],
        |config| {
            config.observability.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
            config.limits.timeout = Duration::from_secs(1);
            config.procedures.default_procedure = Some("fib".into());
        },
    )
    .await;
    let addr = host.host.as_ref().unwrap().metrics_addr().unwrap();
    let client = host.client().await;
    for n in ["1", "10", "20"] {
        client.call(call(n)).await.unwrap();
    }
    assert_eq!(
        error_kind(client.call(call("x")).await),
        ErrorKind::ProcedureError
    );
    assert_eq!(
        error_kind(client.call(call("spin").procedure("hostile")).await),
        ErrorKind::Timeout
    );
    assert_eq!(
        error_kind(client.call(call("1").procedure("nope")).await),
        ErrorKind::NoProcedure
    );

    let (status, text) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let expect = [
        (
            r#"warren_requests_total{procedure="fib",status="ok",kind=""}"#,
            3.0,
        ),
        (
            r#"warren_requests_total{procedure="fib",status="error",kind="procedure-error"}"#,
            1.0,
        ),
        (
            r#"warren_requests_total{procedure="hostile",status="error",kind="timeout"}"#,
            1.0,
        ),
        (
            r#"warren_requests_total{procedure="nope",status="error",kind="no-procedure"}"#,
            1.0,
        ),
        (
            r#"warren_request_duration_seconds_count{procedure="fib"}"#,
            4.0,
        ),
        (
            r#"warren_request_duration_seconds_count{procedure="hostile"}"#,
            1.0,
        ),
        ("warren_requests_in_flight", 0.0),
        ("warren_concurrency_slots", 2.0),
        ("warren_broker_connected", 1.0),
        ("warren_reconnects_total", 0.0),
        // Only Rust guests here: they start in microseconds, no spares.
        ("warren_spare_instances_used_total", 0.0),
        (
            &format!(
                r#"warren_procedure_info{{procedure="fib",digest="{}"}}"#,
                digest(&fib)
            ),
            1.0,
        ),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    }
    // The timed-out request took its whole second: it is above the 0.8 s
    // bucket and within the first bucket past the timeout.
    let le = |bound: &str| {
        sample(
            &text,
            &format!(
                r#"warren_request_duration_seconds_bucket{{le="{bound}",procedure="hostile"}}"#
            ),
        )
    };
    assert_eq!(le("0.8192"), Some(0.0), "{text}");
    assert_eq!(le("1.6384"), Some(1.0), "{text}");
    assert!(sample(&text, "process_resident_memory_bytes").unwrap() > 1e6);

    let (status, line) = http_get(addr, "/healthz").await;
    assert_eq!(status, 200, "{line}");
    assert!(line.contains("consuming"), "{line}");
    let (status, line) = http_get(addr, "/readyz").await;
    assert_eq!(status, 200, "{line}");
    assert!(line.contains("serving 2 procedure(s)"), "{line}");
    host.stop().await;
}

/// Ready means a procedure to run: a host with an empty folder is healthy
/// (consuming) but not ready.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_without_procedures_is_healthy_but_not_ready() {
    let host = TestHost::start_with("not-ready", &[], |config| {
        config.observability.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let addr = host.host.as_ref().unwrap().metrics_addr().unwrap();
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    let (status, line) = http_get(addr, "/readyz").await;
    assert_eq!(status, 503, "{line}");
    assert!(line.contains("no procedure is loaded"), "{line}");
    host.stop().await;
}

/// `--log-format json`: every line the host writes is one JSON object, and
/// a request's lines carry its span (procedure, correlation id) with the
/// trace id of the caller's `traceparent`, which comes back on the reply
/// with the host's own span id.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_a_line_with_the_request_span() {
    let queue = unique_queue("json-logs");
    let mut host = HostProcess::start(
        &queue,
        &[("fib", &fib_wasm())],
        &["--log-format", "json"],
        None,
    );
    host.wait_for_log("warren-host ready", Duration::from_secs(60))
        .await;
    let client = warren_client::RpcClient::connect(&amqp_url(), &queue)
        .await
        .unwrap();
    let caller = warren_client::TraceParent::parse(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    .unwrap();
    let returned = match client.call(call("x").traceparent(caller)).await {
        Err(warren_client::CallError::Rpc {
            error, traceparent, ..
        }) => {
            assert_eq!(error.kind, ErrorKind::ProcedureError);
            traceparent.expect("the reply carries a traceparent")
        }
        other => panic!("expected a procedure error, got {other:?}"),
    };
    assert_eq!(returned.trace_id, caller.trace_id, "same trace");
    assert_ne!(returned.span_id, caller.span_id, "the host's own span");
    // Without one, each call starts its own trace.
    let reply = client.call(call("5")).await.unwrap();
    assert_ne!(reply.traceparent.unwrap().trace_id, caller.trace_id);
    client.close().await;
    host.signal("TERM");
    assert_eq!(host.wait_exit(Duration::from_secs(30)).await, Some(0));

    let log = host.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let message = |line: &serde_json::Value| line["fields"]["message"].as_str().map(str::to_owned);
    assert!(
        lines
            .iter()
            .any(|line| message(line).as_deref() == Some("warren-host ready")),
        "{log}"
    );
    let answered = lines
        .iter()
        .find(|line| message(line).is_some_and(|m| m.starts_with("answered with error")))
        .unwrap_or_else(|| panic!("no error answer logged:\n{log}"));
    assert_eq!(answered["level"], "INFO");
    assert_eq!(answered["span"]["name"], "request");
    assert_eq!(answered["span"]["trace_id"], caller.trace_id_hex());
    assert_eq!(answered["span"]["span_id"], returned.span_id_hex());
    assert_eq!(answered["fields"]["kind"], "procedure-error");
    delete_queues(&queue).await;
}

/// Runs the `warren` binary: (exit code, stdout, stderr).
async fn warren(args: &[&str]) -> (Option<i32>, String, String) {
    let out = run_warren(args).await;
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `warren status` sees both hosts of a queue with what they serve, flags a
/// procedure served in two versions (exit 1), and is content once they
/// agree (exit 0); a queue nobody serves answers exit 3.
#[tokio::test(flavor = "multi_thread")]
async fn status_lists_every_host_and_flags_different_versions() {
    let v1 = fib_wasm();
    let v2 = with_custom_section(&v1, "v2");
    let first = TestHost::start_with("status", &[("fib", &v1)], |config| {
        config.deploys.host_id = Some("status-a".into());
    })
    .await;
    let second = TestHost::join(&first.queue, &[("fib", &v2)], |config| {
        config.deploys.host_id = Some("status-b".into());
    })
    .await;
    first.client().await.call(call("10")).await.unwrap();

    let (code, stdout, stderr) =
        warren(&["--queue", &first.queue, "status", "--json", "--wait", "5s"]).await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let hosts = report["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2, "{stdout}");
    assert_eq!(hosts[0]["host"], "status-a");
    assert_eq!(hosts[0]["procedures"][0]["digest"], digest(&v1));
    assert_eq!(hosts[1]["procedures"][0]["digest"], digest(&v2));
    assert_eq!(hosts[0]["concurrency"], 2);
    assert!(hosts[0]["node"].as_str().unwrap().starts_with("amqp://"));
    let served: u64 = hosts.iter().map(|h| h["served"].as_u64().unwrap()).sum();
    assert_eq!(served, 1, "{stdout}");
    assert_eq!(report["mismatches"][0]["procedure"], "fib", "{stdout}");
    assert!(stderr.contains("fib is served in 2 versions"), "{stderr}");

    second.install("fib", &v1);
    assert!(
        second
            .wait_serving("fib", &digest(&v1), Duration::from_secs(15))
            .await
    );
    let (code, stdout, stderr) = warren(&["--queue", &first.queue, "status"]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(stdout.contains("status-b\tv"), "{stdout}");

    let (code, _, stderr) = warren(&["--queue", &unique_queue("nobody"), "status"]).await;
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("no host answered"), "{stderr}");
    second.stop().await;
    first.stop().await;
}

/// A collector of our own, in process: it keeps the body of every OTLP/HTTP
/// export it receives (protobuf, which holds trace and span ids as raw bytes).
async fn otlp_collector() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
) {
    use axum::routing::post;
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let keep = keep.clone();
            async move {
                keep.lock().unwrap().push(body.to_vec());
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, received)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// `--otlp-endpoint`: the request's span is exported, in the caller's trace,
/// with the caller's span as its parent and the span id the reply carried.
#[tokio::test(flavor = "multi_thread")]
async fn request_spans_are_exported_over_otlp_in_the_callers_trace() {
    let (collector, received) = otlp_collector().await;
    let queue = unique_queue("otlp");
    let endpoint = format!("http://{collector}");
    let mut host = HostProcess::start(
        &queue,
        &[("fib", &fib_wasm())],
        &["--otlp-endpoint", &endpoint],
        None,
    );
    host.wait_for_log("warren-host ready", Duration::from_secs(60))
        .await;
    let client = warren_client::RpcClient::connect(&amqp_url(), &queue)
        .await
        .unwrap();
    let caller = warren_client::TraceParent::new_root();
    let reply = client.call(call("10").traceparent(caller)).await.unwrap();
    assert_eq!(reply.body, b"55");
    let host_span = reply.traceparent.expect("a traceparent on the reply");
    assert_eq!(host_span.trace_id, caller.trace_id);
    client.close().await;
    // Stopping flushes the batch.
    host.signal("TERM");
    assert_eq!(
        host.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "{}",
        host.log()
    );

    let bodies = received.lock().unwrap().clone();
    assert!(
        !bodies.is_empty(),
        "nothing was exported; host log:\n{}",
        host.log()
    );
    let exported = bodies.concat();
    assert!(
        contains(&exported, &caller.trace_id),
        "the caller's trace id"
    );
    assert!(
        contains(&exported, &caller.span_id),
        "the caller's span as parent"
    );
    assert!(
        contains(&exported, &host_span.span_id),
        "the span id the reply carried"
    );
    assert!(contains(&exported, b"warren-host"), "the service name");
    delete_queues(&queue).await;
}

/// A log written to a file carries no colour codes, and a restarted host
/// does not warn again about refusals in the deploy history it replays.
#[tokio::test(flavor = "multi_thread")]
async fn the_log_in_a_file_is_plain_and_replayed_refusals_are_not_warnings() {
    use warren_client::protocol::deploy::{HEADER_DEPLOY_DIGEST, HEADER_DEPLOY_NAME};
    let queue = unique_queue("host-log");
    let wasm = fib_wasm();
    let mut first = HostProcess::start(&queue, &[("fib", &wasm)], &[], None);
    first
        .wait_for_log("warren-host ready", Duration::from_secs(60))
        .await;
    // An unsigned deploy, as an old or careless deployer could send.
    let junk = b"\0asm not really";
    let mut headers = lapin::types::FieldTable::default();
    warren_client::protocol::set_header_text(&mut headers, HEADER_DEPLOY_NAME, "fib");
    warren_client::protocol::set_header_text(&mut headers, HEADER_DEPLOY_DIGEST, &digest(junk));
    publish_raw_deploy(&queue, headers, junk).await;
    let log = first
        .wait_for_log("deploy refused", Duration::from_secs(20))
        .await;
    assert!(log.contains("WARN"), "a new refusal is a warning:\n{log}");
    first.signal("TERM");
    assert_eq!(first.wait_exit(Duration::from_secs(30)).await, Some(0));
    assert!(!log.contains('\u{1b}'), "colour codes in a file:\n{log}");

    let mut second = HostProcess::start(&queue, &[("fib", &wasm)], &[], None);
    let log = second
        .wait_for_log("warren-host ready", Duration::from_secs(60))
        .await;
    assert!(
        !log.contains("deploy refused") && !log.contains("history refused"),
        "the replayed refusal was logged again at info or above:\n{log}"
    );
    second.signal("TERM");
    assert_eq!(second.wait_exit(Duration::from_secs(30)).await, Some(0));
    delete_queues(&queue).await;
}

/// The startup log says each thing once (the "2 procedures are loaded"
/// warning used to come twice), names a --default-procedure that is not
/// loaded even when nothing is, and a graceful stop ends with a last line
/// that says the host stopped.
#[tokio::test(flavor = "multi_thread")]
async fn the_log_says_each_thing_once_and_ends_with_stopped() {
    let fib = fib_wasm();
    let twin = with_custom_section(&fib, "twin");
    let queue = unique_queue("log-once");
    let mut host = HostProcess::start(&queue, &[("fib", &fib), ("twin", &twin)], &[], None);
    host.wait_for_log("warren-host ready", Duration::from_secs(60))
        .await;
    host.signal("TERM");
    assert_eq!(host.wait_exit(Duration::from_secs(30)).await, Some(0));
    let log = host.log();
    assert_eq!(
        log.matches("2 procedures are loaded").count(),
        1,
        "said once:\n{log}"
    );
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.contains("warren-host stopped"),
        "last line: {last}\n{log}"
    );

    let mut empty = HostProcess::start(&queue, &[], &["--default-procedure", "nosuch"], None);
    empty
        .wait_for_log(
            "neither is --default-procedure nosuch",
            Duration::from_secs(60),
        )
        .await;
    empty.signal("TERM");
    assert_eq!(empty.wait_exit(Duration::from_secs(30)).await, Some(0));
    delete_queues(&queue).await;
}
