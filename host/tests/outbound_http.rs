//! Outbound HTTP granted by a manifest (`[http] allow`), against two real
//! local HTTP servers, one allowed and one not: what is listed gets
//! through; an unlisted port, a redirect to the other server, a listed name
//! that resolves to loopback, the cloud metadata address and a procedure
//! past its call or byte budget are refused with the WASI HTTP error for it;
//! so is a URL with user information. A procedure retrying a refused call
//! in a loop leaves a short log and a count (`warren_http_refused_total`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use warren_client::protocol::ErrorKind;
use warren_testing::*;

fn forbidden_server(path: &str, _: u16) -> HttpAnswer {
    (200, vec![], format!("internal data at {path}").into_bytes())
}

fn allowed_server(path: &str, other: u16) -> HttpAnswer {
    match path {
        "/hello" => (200, vec![], b"hello from the allowed server".to_vec()),
        "/redirect" => (
            302,
            vec![(
                "location".into(),
                format!("http://127.0.0.1:{other}/internal"),
            )],
            vec![],
        ),
        "/big" => (200, vec![], vec![b'x'; 100 << 10]),
        _ => (404, vec![], b"no such page".to_vec()),
    }
}

async fn fetch(
    client: &warren_client::RpcClient,
    procedure: &str,
    body: String,
) -> Result<String, String> {
    match client.call(call(body).procedure(procedure)).await {
        Ok(reply) => Ok(String::from_utf8_lossy(&reply.body).into_owned()),
        Err(error) => Err(error.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_what_the_manifest_lists_is_reachable() {
    let internal = serve_http(forbidden_server, 0).await;
    let allowed = serve_http(allowed_server, internal).await;
    let fetcher = fetcher_wasm();
    let host = TestHost::start("http-grants", &[]).await;
    let manifest =
        format!("[http]\nallow = [\"http://127.0.0.1:{allowed}\"]\ncalls = 3\nbytes = \"64KiB\"\n");
    host.install_manifest("fetch", Some(&manifest));
    host.install_manifest(
        "byname",
        Some(&format!(
            "[http]\nallow = [\"http://localhost:{allowed}\"]\n"
        )),
    );
    host.install("fetch", &fetcher);
    host.install("byname", &fetcher);
    host.install("bare", &fetcher);
    let give_up = std::time::Instant::now() + Duration::from_secs(20);
    while host.served_names() != ["byname", "fetch"] {
        assert!(
            std::time::Instant::now() < give_up,
            "{:?}",
            host.served_names()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // `bare` imports wasi:http without a manifest granting it: not loaded.

    let client = host.client().await;
    let hello = fetch(
        &client,
        "fetch",
        format!("get http://127.0.0.1:{allowed}/hello"),
    )
    .await;
    assert_eq!(hello.as_deref(), Ok("200 hello from the allowed server"));

    for (attempt, expected) in [
        (
            format!("get http://127.0.0.1:{internal}/internal"),
            "HttpRequestDenied",
        ),
        (
            format!("follow http://127.0.0.1:{allowed}/redirect"),
            "HttpRequestDenied",
        ),
        (
            "get http://169.254.169.254/latest/meta-data/".to_owned(),
            "HttpRequestDenied",
        ),
        (
            format!("get https://127.0.0.1:{allowed}/hello"),
            "HttpRequestDenied",
        ),
        (
            format!("get http://localhost:{allowed}/hello"),
            "HttpRequestDenied",
        ),
        (
            format!("get http://127.0.0.1:{allowed}/big"),
            "body size exceeds limit: 65536",
        ),
        (
            format!("get-n 4 http://127.0.0.1:{allowed}/hello"),
            "HttpRequestDenied",
        ),
    ] {
        let outcome = fetch(&client, "fetch", attempt.clone()).await;
        let error = outcome.expect_err(&attempt);
        assert!(error.contains(expected), "{attempt}: {error}");
        assert!(!error.contains("internal data"), "{attempt}: {error}");
    }
    // Within its budget again on the next request: the count is per request.
    let three = fetch(
        &client,
        "fetch",
        format!("get-n 3 http://127.0.0.1:{allowed}/hello"),
    )
    .await;
    assert_eq!(three.as_deref(), Ok("200"));

    // A listed name that resolves to loopback does not get in.
    let by_name = fetch(
        &client,
        "byname",
        format!("get http://localhost:{allowed}/hello"),
    )
    .await;
    let error = by_name.expect_err("localhost resolves to loopback");
    assert!(error.contains("DestinationIpProhibited"), "{error}");
    client.close().await;
    host.stop().await;
}

/// Requests that reached [`counting_server`].
static REACHED: AtomicUsize = AtomicUsize::new(0);

fn counting_server(_: &str, _: u16) -> HttpAnswer {
    REACHED.fetch_add(1, Ordering::SeqCst);
    (200, vec![], b"reached".to_vec())
}

/// Issue 37, finding 9: `http://internal.corp:80@127.0.0.1:PORT/` went out
/// with `internal.corp:80@127.0.0.1:PORT` as its Host header. A URL with
/// user information is refused before anything is sent, even to a listed
/// host and port.
#[tokio::test(flavor = "multi_thread")]
async fn a_url_with_user_information_is_refused() {
    let port = serve_http(counting_server, 0).await;
    let host = TestHost::start("http-userinfo", &[]).await;
    host.install_manifest(
        "fetch",
        Some(&format!("[http]\nallow = [\"http://127.0.0.1:{port}\"]\n")),
    );
    host.install("fetch", &fetcher_wasm());
    let give_up = Instant::now() + Duration::from_secs(20);
    while host.served_names() != ["fetch"] {
        assert!(Instant::now() < give_up, "{:?}", host.served_names());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = host.client().await;
    for url in [
        format!("http://internal.corp:80@127.0.0.1:{port}/"),
        format!("http://user:password@127.0.0.1:{port}/"),
        format!("http://@127.0.0.1:{port}/"),
    ] {
        let refused = fetch(&client, "fetch", format!("get {url}")).await;
        let error = refused.expect_err(&url);
        assert!(error.contains("HttpRequestDenied"), "{url}: {error}");
    }
    assert_eq!(REACHED.load(Ordering::SeqCst), 0, "nothing was sent");
    let plain = fetch(&client, "fetch", format!("get http://127.0.0.1:{port}/")).await;
    assert_eq!(plain.as_deref(), Ok("200 reached"));
    assert_eq!(REACHED.load(Ordering::SeqCst), 1);
    client.close().await;
    let metrics = host.metrics_text();
    let userinfo = refused_count(&metrics, "userinfo");
    assert!(userinfo >= 3, "{metrics}");
    host.stop().await;
}

/// `warren_http_refused_total{reason=REASON}` in a `/metrics` text.
fn refused_count(metrics: &str, reason: &str) -> u64 {
    let series = format!("warren_http_refused_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .unwrap_or_else(|| panic!("no {series:?} in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

/// Issue 37, finding 6: a procedure retrying a refused fetch without a
/// pause wrote 261,774 log lines in 2 s, each with the full URL. Now the
/// request's first refusal is logged, one line at its end says how many
/// more there were, every refusal is counted by reason, and no line
/// carries the URL's path or query (`?api_key=`), only
/// `scheme://host:port`.
#[tokio::test(flavor = "multi_thread")]
async fn a_procedure_looping_over_refused_fetches_leaves_a_short_log_and_a_count() {
    let allowed = serve_http(allowed_server, 0).await;
    let unlisted = serve_http(forbidden_server, 0).await;
    let queue = unique_queue("http-loop");
    let metrics: std::net::SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let manifest = format!(
        "[limits]\ntimeout = \"2s\"\n[http]\nallow = [\"http://127.0.0.1:{allowed}\"]\ncalls = 5\n"
    );
    let host = HostProcess::start(
        &queue,
        &[
            ("fetch", &fetcher_wasm()),
            ("fetch.toml", manifest.as_bytes()),
        ],
        &["--metrics-addr", &metrics.to_string()],
        None,
    );
    host.wait_for_log("warren-host ready", Duration::from_secs(60))
        .await;
    let before = host.log().lines().count();

    let client = warren_client::RpcClient::connect(&amqp_url(), &queue)
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{unlisted}/internal/export?api_key=hunter2-key");
    let started = Instant::now();
    let looped = client
        .call(call(format!("loop {url}")).procedure("fetch"))
        .await;
    let ran = started.elapsed();
    assert_eq!(error_kind(looped), ErrorKind::Timeout);
    assert!(ran >= Duration::from_secs(2), "{ran:?}");
    client.close().await;

    let (status, text) = http_get(metrics, "/metrics").await;
    assert_eq!(status, 200);
    // Five calls were within `calls` but not listed; the rest were past it.
    assert_eq!(refused_count(&text, "not-allowed"), 5, "{text}");
    let past = refused_count(&text, "too-many-calls");
    assert!(
        past > 100,
        "a loop of 2 s is refused more than that: {past}"
    );

    let log = host
        .wait_for_log(
            "more calls of this request were refused",
            Duration::from_secs(10),
        )
        .await;
    let lines = log.lines().count();
    assert!(
        lines < 100,
        "the log grew by {} lines for one looping request:\n{log}",
        lines - before
    );
    assert_eq!(log.matches("outbound HTTP refused").count(), 1, "{log}");
    assert!(
        log.contains(&format!("http://127.0.0.1:{unlisted}")),
        "the refusal names scheme://host:port: {log}"
    );
    assert!(
        log.contains(&format!("{} more calls", past + 5 - 1)),
        "the last line says how many refusals went unlogged: {log}"
    );
    for hidden in ["/internal/export", "api_key", "hunter2"] {
        assert!(!log.contains(hidden), "{hidden:?} is in the log:\n{log}");
    }
    drop(host);
    delete_queues(&queue).await;
}
