//! A procedure that makes outbound HTTP requests, for the grants tests: the
//! request body names what to fetch.
//!
//! | body | what it does | answer |
//! |---|---|---|
//! | `get URL` | one GET | `STATUS BODY` |
//! | `follow URL` | a GET, and a GET of its `location` if it redirects | `STATUS BODY` of the last |
//! | `get-n N URL` | N GETs one after the other | the last `STATUS` |
//! | `loop URL` | GETs, one after the other, each failure ignored, until the host stops it at its deadline | none: a `timeout` |
//!
//! A failed request is a `procedure-error` whose message is the WASI HTTP
//! error code (`HttpRequestDenied`, `DestinationIpProhibited`, …).

#[cfg(target_arch = "wasm32")]
mod component {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{Fields, OutgoingRequest, Scheme};
    use wasip2::io::streams::StreamError;

    wit_bindgen::generate!({
        path: "../../wit",
        world: "procedure",
    });

    struct Fetcher;

    struct Fetched {
        status: u16,
        body: Vec<u8>,
        location: Option<String>,
    }

    fn get(url: &str) -> Result<Fetched, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or("write a URL: scheme://host/path")?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let request = OutgoingRequest::new(Fields::new());
        let scheme = match scheme {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => Scheme::Other(other.to_owned()),
        };
        request
            .set_scheme(Some(&scheme))
            .map_err(|()| "bad scheme")?;
        request
            .set_authority(Some(authority))
            .map_err(|()| "bad authority")?;
        request
            .set_path_with_query(Some(path))
            .map_err(|()| "bad path")?;
        let pending =
            outgoing_handler::handle(request, None).map_err(|code| format!("{code:?}"))?;
        pending.subscribe().block();
        let response = pending
            .get()
            .ok_or("no response after waiting")?
            .map_err(|()| "response taken twice")?
            .map_err(|code| format!("{code:?}"))?;
        let location = response
            .headers()
            .get("location")
            .first()
            .map(|value| String::from_utf8_lossy(value).into_owned());
        let status = response.status();
        let incoming = response.consume().map_err(|()| "body taken twice")?;
        let stream = incoming.stream().map_err(|()| "stream taken twice")?;
        let mut body = Vec::new();
        loop {
            match stream.blocking_read(64 << 10) {
                Ok(chunk) => body.extend(chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(error)) => {
                    return Err(match wasip2::http::types::http_error_code(&error) {
                        Some(code) => format!("{code:?}"),
                        None => error.to_debug_string(),
                    });
                }
            }
        }
        Ok(Fetched {
            status,
            body,
            location,
        })
    }

    fn answer(fetched: Fetched) -> Vec<u8> {
        let mut reply = format!("{} ", fetched.status).into_bytes();
        reply.extend(fetched.body);
        reply
    }

    impl exports::warren::procedure::handler::Guest for Fetcher {
        fn handle(request: Vec<u8>) -> Result<Vec<u8>, String> {
            let request = String::from_utf8(request).map_err(|e| e.to_string())?;
            if let Some(url) = request.strip_prefix("get ") {
                return get(url).map(answer);
            }
            if let Some(url) = request.strip_prefix("follow ") {
                let first = get(url)?;
                return match (first.status, &first.location) {
                    (300..=399, Some(location)) => get(location).map(answer),
                    _ => Ok(answer(first)),
                };
            }
            if let Some(rest) = request.strip_prefix("get-n ") {
                let (count, url) = rest.split_once(' ').ok_or("get-n N URL")?;
                let count: u32 = count.parse().map_err(|_| "N must be a number")?;
                let mut last = 0;
                for _ in 0..count {
                    last = get(url)?.status;
                }
                return Ok(last.to_string().into_bytes());
            }
            if let Some(url) = request.strip_prefix("loop ") {
                // What a procedure retrying without a pause does: the
                // host's log must not grow with each refused try.
                loop {
                    let _ = get(url);
                }
            }
            Err(format!("unknown request {request:?}"))
        }
    }

    export!(Fetcher);
}
