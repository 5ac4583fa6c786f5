//! What a manifest's `[http]` grants, and the checks a call passes before
//! any network: granted at all, within the call budget, a listed scheme,
//! host and port, no user information.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use warren_protocol::manifest::{Http, HttpPattern};
use wasmtime_wasi_http::Error;

use super::refusal::{Refusal, RequestCalls};
use crate::sandbox::scrub::Scrubber;

/// What a manifest's `[http]` grants, its patterns parsed.
#[derive(Debug)]
pub struct HttpGrant {
    allow: Vec<HttpPattern>,
    max_calls: u32,
    pub(super) max_bytes: u64,
}

impl HttpGrant {
    /// The grant `[http]` describes; `None` when it allows nothing.
    pub fn from_manifest(http: &Http) -> Result<Option<HttpGrant>, String> {
        if http.allow.is_empty() {
            return Ok(None);
        }
        let allow = http
            .allow
            .iter()
            .map(|pattern| HttpPattern::parse(pattern))
            .collect::<Result<_, _>>()?;
        Ok(Some(HttpGrant {
            allow,
            max_calls: http.calls,
            max_bytes: http.bytes,
        }))
    }
}

/// One request's outbound HTTP: wasmtime-wasi-http's hooks, in the store.
pub(crate) struct OutboundHttp {
    grant: Option<Arc<HttpGrant>>,
    /// The procedure's secret values, kept out of log lines.
    secrets: Arc<Scrubber>,
    calls: u32,
    /// Made at the first call: most requests make none.
    shared: Option<Arc<RequestCalls>>,
}

impl OutboundHttp {
    pub(crate) fn new(grant: Option<Arc<HttpGrant>>, secrets: Arc<Scrubber>) -> Self {
        OutboundHttp {
            grant,
            secrets,
            calls: 0,
            shared: None,
        }
    }

    /// The state this request's calls share, made at its first call (in
    /// the request's span).
    pub(super) fn shared(&mut self) -> Arc<RequestCalls> {
        self.shared
            .get_or_insert_with(|| {
                Arc::new(RequestCalls {
                    received: AtomicU64::new(0),
                    refused: AtomicU64::new(0),
                    span: tracing::Span::current(),
                })
            })
            .clone()
    }

    /// The checks that need no network: granted at all, within the call
    /// budget, a scheme, host and port the manifest lists, no user
    /// information.
    pub(super) fn admit(
        &mut self,
        uri: &http::Uri,
    ) -> Result<(Arc<HttpGrant>, Destination), Error> {
        let shared = self.shared();
        let secrets = &self.secrets;
        let origin = || origin_of(uri, secrets);
        let Some(grant) = self.grant.clone() else {
            shared.refuse(
                Refusal::NotAllowed,
                origin,
                format_args!("the procedure's manifest grants none"),
            );
            return Err(Error::HttpRequestDenied);
        };
        self.calls += 1;
        if self.calls > grant.max_calls {
            shared.refuse(
                Refusal::TooManyCalls,
                origin,
                format_args!(
                    "past the manifest's [http] calls ({}) for one request",
                    grant.max_calls
                ),
            );
            return Err(Error::HttpRequestDenied);
        }
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                shared.refuse(
                    Refusal::NotAllowed,
                    origin,
                    format_args!("only http and https are allowed"),
                );
                return Err(Error::HttpProtocolError);
            }
        };
        let Some(host) = uri.host() else {
            shared.refuse(
                Refusal::NotAllowed,
                origin,
                format_args!("the URL names no host"),
            );
            return Err(Error::HttpRequestUriInvalid);
        };
        let host = host.to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let scheme = if https { "https" } else { "http" };
        let origin = secrets.scrub_owned(format!("{scheme}://{host}:{port}"));
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            shared.refuse(
                Refusal::Userinfo,
                || origin.clone(),
                format_args!(
                    "the URL carries user information (user:password@host), which would be \
                     sent as the Host header"
                ),
            );
            return Err(Error::HttpRequestDenied);
        }
        let listed = grant
            .allow
            .iter()
            .any(|p| p.scheme == scheme && p.host == host && p.port == port);
        if !listed {
            shared.refuse(
                Refusal::NotAllowed,
                || origin.clone(),
                format_args!("not in the manifest's [http] allow"),
            );
            return Err(Error::HttpRequestDenied);
        }
        Ok((
            grant,
            Destination {
                https,
                host,
                port,
                origin,
            },
        ))
    }
}

impl Drop for OutboundHttp {
    /// At the request's end, how many refusals went unlogged, if any.
    fn drop(&mut self) {
        let Some(shared) = &self.shared else {
            return;
        };
        let unlogged = shared.refused.load(Ordering::Relaxed).saturating_sub(1);
        if unlogged > 0 {
            shared.span.in_scope(|| {
                tracing::warn!(
                    "outbound HTTP: {unlogged} more calls of this request were refused, \
                     counted in warren_http_refused_total and not logged"
                );
            });
        }
    }
}

/// `scheme://host:port` of `uri`, as far as it has them, without user
/// information, path or query; `secrets` replaced.
fn origin_of(uri: &http::Uri, secrets: &Scrubber) -> String {
    let scheme = uri.scheme_str().unwrap_or("(none)");
    let host = uri.host().unwrap_or("(none)").to_ascii_lowercase();
    let port = uri.port_u16().or(match scheme {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    });
    let origin = match port {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    };
    secrets.scrub_owned(origin)
}

/// Where an admitted request goes.
pub(super) struct Destination {
    pub(super) https: bool,
    /// As the URI has it, lower case (an IPv6 address in brackets).
    pub(super) host: String,
    pub(super) port: u16,
    /// `scheme://host:port`, for log lines.
    pub(super) origin: String,
}

#[cfg(test)]
mod tests {
    use super::super::refusal::http_refusals;
    use super::*;

    #[test]
    fn refusals_are_counted_by_reason_and_a_url_with_userinfo_is_refused() {
        let grant = HttpGrant::from_manifest(&Http {
            allow: vec!["http://127.0.0.1:18081".into()],
            calls: 100,
            ..Http::default()
        })
        .unwrap()
        .map(Arc::new);
        let mut http = OutboundHttp::new(grant, Arc::new(Scrubber::new(["k3y"])));
        let uri = |text: &str| text.parse::<http::Uri>().unwrap();
        let before = http_refusals();
        assert!(http.admit(&uri("http://127.0.0.1:18081/ok")).is_ok());
        for _ in 0..3 {
            assert!(
                http.admit(&uri("http://internal.corp:80@127.0.0.1:18081/"))
                    .is_err()
            );
            assert!(
                http.admit(&uri("http://127.0.0.1:18082/?api_key=k3y"))
                    .is_err()
            );
        }
        let after = http_refusals();
        let counted = |label: &str| {
            let of = |counts: &[(&str, u64)]| {
                counts
                    .iter()
                    .find(|(l, _)| *l == label)
                    .map(|(_, n)| *n)
                    .unwrap()
            };
            of(&after) - of(&before)
        };
        // Other tests of this process may refuse too: at least ours.
        assert!(counted("userinfo") >= 3);
        assert!(counted("not-allowed") >= 3);
        assert_eq!(
            http.shared
                .as_ref()
                .unwrap()
                .refused
                .load(Ordering::Relaxed),
            6
        );
        let host = uri("http://s3cr3t-k3y.example.com/path?q=1");
        assert_eq!(
            origin_of(&host, &Scrubber::new(["k3y"])),
            "http://s3cr3t-[secret].example.com:80"
        );
        assert_eq!(
            origin_of(&uri("https://user:pw@[::1]/x"), &Scrubber::default()),
            "https://[::1]:443"
        );
    }

    #[test]
    fn only_listed_scheme_host_and_port_are_admitted() {
        let grant = HttpGrant::from_manifest(&Http {
            allow: vec![
                "http://127.0.0.1:8081".into(),
                "https://api.example.com".into(),
            ],
            calls: 2,
            ..Http::default()
        })
        .unwrap()
        .map(Arc::new);
        let mut http = OutboundHttp::new(grant, Arc::default());
        let uri = |text: &str| text.parse::<http::Uri>().unwrap();
        assert!(http.admit(&uri("http://127.0.0.1:8081/x")).is_ok());
        assert!(http.admit(&uri("https://API.example.com/v1")).is_ok());
        // The third call is over the budget of two, listed or not.
        assert!(http.admit(&uri("http://127.0.0.1:8081/x")).is_err());
        let mut http = OutboundHttp::new(http.grant.clone(), Arc::default());
        for refused in [
            "http://127.0.0.1:8082/",
            "https://127.0.0.1:8081/",
            "http://api.example.com/",
            "https://evil.example.com/",
        ] {
            assert!(http.admit(&uri(refused)).is_err(), "{refused}");
        }
        let mut none = OutboundHttp::new(None, Arc::default());
        assert!(none.admit(&uri("http://127.0.0.1:8081/")).is_err());
    }
}
