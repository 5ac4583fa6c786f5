//! Outbound HTTP granted by a manifest (`[http] allow`), against two real
//! local HTTP servers, one allowed and one not: what is listed gets
//! through; an unlisted port, a redirect to the other server, a listed name
//! that resolves to loopback, the cloud metadata address and a procedure
//! past its call or byte budget are refused with the WASI HTTP error for it.

use std::time::Duration;

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
