//! The `{{name}}` procedure: a Warren component that uses what its manifest
//! (`{{name}}.toml`) grants (see README.md).
//!
//! - A body that is a URL (`http://…`, `https://…`) is fetched with an
//!   outbound HTTP GET (`wasi:http`), and the reply is the response body.
//!   The host lets it through only to what `[http] allow` lists; anything
//!   else fails with `HttpRequestDenied`.
//! - Any other body is answered `GREETING, BODY`, with `greeting` read from
//!   `[config]` through `wasi:config/store`.
//!
//! Each request runs in a fresh instance: nothing carries over between
//! requests.

wit_bindgen::generate!({ path: "wit", world: "procedure", generate_all });

use wasi::config::store;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

struct Procedure;

impl exports::warren::procedure::handler::Guest for Procedure {
    fn handle(request: Vec<u8>) -> Result<Vec<u8>, String> {
        let request =
            String::from_utf8(request).map_err(|_| "send text: a name, or a URL to fetch")?;
        if request.is_empty() {
            return Err("empty request; send a name, or a URL to fetch".into());
        }
        if request.starts_with("http://") || request.starts_with("https://") {
            return get(&request);
        }
        let greeting = store::get("greeting")
            .map_err(|error| format!("reading greeting: {error:?}"))?
            .unwrap_or_else(|| "hello".into());
        Ok(format!("{greeting}, {request}").into_bytes())
    }
}

/// GETs `url` and returns its body; a status of 400 or more is an error.
fn get(url: &str) -> Result<Vec<u8>, String> {
    let (scheme, rest) = url.split_once("://").ok_or("write a URL: scheme://host/path")?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let scheme = if scheme == "https" { Scheme::Https } else { Scheme::Http };
    request.set_scheme(Some(&scheme)).map_err(|()| "bad scheme")?;
    request
        .set_authority(Some(authority))
        .map_err(|()| format!("bad host in {url}"))?;
    request
        .set_path_with_query(Some(path))
        .map_err(|()| format!("bad path in {url}"))?;
    // Where the manifest does not allow it, this is the error
    // (HttpRequestDenied, DestinationIpProhibited, …).
    let pending =
        outgoing_handler::handle(request, None).map_err(|code| format!("GET {url}: {code:?}"))?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or("no response after waiting")?
        .map_err(|()| "response taken twice")?
        .map_err(|code| format!("GET {url}: {code:?}"))?;
    let status = response.status();
    let incoming = response.consume().map_err(|()| "body taken twice")?;
    let stream = incoming.stream().map_err(|()| "stream taken twice")?;
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(64 << 10) {
            Ok(chunk) => body.extend(chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(error)) => {
                return Err(format!("GET {url}: {}", error.to_debug_string()));
            }
        }
    }
    if status >= 400 {
        return Err(format!("GET {url}: status {status}"));
    }
    Ok(body)
}

export!(Procedure);
