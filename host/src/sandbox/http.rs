//! Outbound HTTP (`wasi:http/outgoing-handler`) for procedures whose
//! manifest grants it (`[http] allow`), and for no one else.
//!
//! Why it is built this way:
//! - **The address connected is the address checked.** wasmtime-wasi-http's
//!   own sender connects by host name, so a name checked once could resolve
//!   elsewhere a moment later (DNS rebinding). Here the host name is resolved
//!   once, each address is checked, and the connection goes to the address
//!   that passed; TLS still verifies the certificate against the name.
//! - **Private addresses stay private.** Loopback, private, link-local (the
//!   cloud metadata service at 169.254.169.254), shared, multicast and
//!   reserved addresses ([`forbidden`]) are refused unless the manifest
//!   lists that very address (`http://127.0.0.1:8081`): an allowed *name*
//!   that resolves to one of them does not get in.
//! - **Redirects are requests too.** wasi:http does not follow redirects; a
//!   guest that follows one makes a new request, checked like the first.
//! - **Per request, a budget.** At most `[http] calls` outbound requests and
//!   `[http] bytes` of response bodies per request; the request's deadline
//!   bounds them all, because the store that owns them is dropped at it.
//! - A refused call gets the WASI HTTP error for it (`HTTP-request-denied`,
//!   `destination-IP-prohibited`, `HTTP-response-body-size`), and the host
//!   logs which procedure tried what.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument as _;
use warren_protocol::manifest::{Http, HttpPattern};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// What a manifest's `[http]` grants, its patterns parsed.
#[derive(Debug)]
pub struct HttpGrant {
    allow: Vec<HttpPattern>,
    max_calls: u32,
    max_bytes: u64,
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
pub(super) struct OutboundHttp {
    grant: Option<Arc<HttpGrant>>,
    calls: u32,
    /// Response body bytes received so far, by all of this request's calls
    /// (made at the first call: most requests make none).
    received: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl OutboundHttp {
    pub(super) fn new(grant: Option<Arc<HttpGrant>>) -> Self {
        OutboundHttp {
            grant,
            calls: 0,
            received: None,
        }
    }

    /// The checks that need no network: granted at all, within the call
    /// budget, a scheme, host and port the manifest lists.
    fn admit(&mut self, uri: &http::Uri) -> Result<(Arc<HttpGrant>, Target), Error> {
        let Some(grant) = self.grant.clone() else {
            tracing::warn!(%uri, "outbound HTTP refused: the procedure's manifest grants none");
            return Err(Error::HttpRequestDenied);
        };
        self.calls += 1;
        if self.calls > grant.max_calls {
            tracing::warn!(%uri, max_calls = grant.max_calls, "outbound HTTP refused: past the manifest's [http] calls for one request");
            return Err(Error::HttpRequestDenied);
        }
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(Error::HttpProtocolError),
        };
        let host = uri
            .host()
            .ok_or(Error::HttpRequestUriInvalid)?
            .to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let scheme = if https { "https" } else { "http" };
        let listed = grant
            .allow
            .iter()
            .any(|p| p.scheme == scheme && p.host == host && p.port == port);
        if !listed {
            tracing::warn!(%uri, "outbound HTTP refused: not in the manifest's [http] allow");
            return Err(Error::HttpRequestDenied);
        }
        Ok((grant, Target { https, host, port }))
    }
}

/// Where an admitted request goes.
struct Target {
    https: bool,
    /// As the URI has it, lower case (an IPv6 address in brackets).
    host: String,
    port: u16,
}

type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let admitted = self.admit(request.uri());
        let received = self.received.get_or_insert_with(Arc::default).clone();
        // The caller's span (the request's, with the procedure's name)
        // follows the request into the task wasmtime-wasi-http spawns.
        let span = tracing::Span::current();
        Box::new(
            async move {
                let (grant, target) = admitted?;
                let address = resolve_checked(&target).await?;
                send(request, &target, address, grant.max_bytes, received).await
            }
            .instrument(span),
        )
    }
}

/// The address to connect to: the host's own when the URI names an
/// address (the manifest listed it), else the first address the name
/// resolves to that is not [`forbidden`].
async fn resolve_checked(target: &Target) -> Result<SocketAddr, Error> {
    let literal = target.host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, target.port));
    }
    let addresses = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|_| Error::DnsError {
            rcode: None,
            info_code: None,
        })?;
    let mut refused = Vec::new();
    for address in addresses {
        match forbidden(address.ip()) {
            None => return Ok(address),
            Some(why) => refused.push(format!("{} ({why})", address.ip())),
        }
    }
    if refused.is_empty() {
        return Err(Error::DestinationNotFound);
    }
    tracing::warn!(
        host = %target.host,
        resolved = refused.join(", "),
        "outbound HTTP refused: the name resolves only to addresses a procedure may reach \
         only when its manifest lists the address itself"
    );
    Err(Error::DestinationIpProhibited)
}

/// Why a procedure may not reach `ip` through a host name, or `None`.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => forbidden_v4(ip),
        IpAddr::V6(ip) => {
            if let Some(mapped) = ip.to_ipv4_mapped() {
                return forbidden_v4(mapped);
            }
            let first = ip.segments()[0];
            if ip.is_loopback() {
                Some("loopback")
            } else if ip.is_unspecified() {
                Some("unspecified")
            } else if ip.is_multicast() {
                Some("multicast")
            } else if first & 0xfe00 == 0xfc00 {
                Some("unique local")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if ip.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                // NAT64: the IPv4 address it stands for decides.
                let [.., a, b, c, d] = ip.octets();
                forbidden_v4(Ipv4Addr::new(a, b, c, d))
            } else {
                None
            }
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local, where cloud metadata services answer")
    } else if a == 0 || ip.is_broadcast() {
        Some("this network")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared address space")
    } else if ip.is_multicast() || a >= 240 {
        Some("multicast or reserved")
    } else {
        None
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Sends `request` over a new connection to `address` (TLS for https,
/// checked against the host name), its response body counted against
/// `max_bytes` with what this request's other calls received.
async fn send(
    mut request: http::Request<WasiBody>,
    target: &Target,
    address: SocketAddr,
    max_bytes: u64,
    received: Arc<std::sync::atomic::AtomicU64>,
) -> SendResult {
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::ConnectionRefused => Error::ConnectionRefused,
            _ => Error::Connect(error),
        })?;
    let stream: Box<dyn Stream> = if target.https {
        let name = tls_name(&target.host)?;
        let tls = tokio_rustls::TlsConnector::from(tls_config()?)
            .connect(name, tcp)
            .await
            .map_err(Error::Tls)?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(Error::from)?;
    let connection = tokio::spawn(connection);
    // Only the path goes on the request line; the host is in `Host`.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let response = sender.send_request(request).await.map_err(Error::from)?;
    let response = response.map(|incoming| {
        Counted {
            inner: incoming,
            received,
            max_bytes,
        }
        .boxed_unsync()
    });
    let io = async move {
        match connection.await {
            Ok(Err(error)) => Err(Error::from(error)),
            _ => Ok(()),
        }
    };
    Ok((response, Box::new(io)))
}

/// A response body that fails once the request's calls together received
/// more than `max_bytes`.
struct Counted {
    inner: hyper::body::Incoming,
    received: Arc<std::sync::atomic::AtomicU64>,
    max_bytes: u64,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |data| data.len() as u64);
                let total = self
                    .received
                    .fetch_add(len, std::sync::atomic::Ordering::Relaxed)
                    + len;
                if total > self.max_bytes {
                    tracing::warn!(
                        max_bytes = self.max_bytes,
                        "outbound HTTP stopped: past the manifest's [http] bytes for one request"
                    );
                    return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(
                        self.max_bytes,
                    )))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(Error::from(error)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

fn tls_name(host: &str) -> Result<rustls::pki_types::ServerName<'static>, Error> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(rustls::pki_types::ServerName::from(ip));
    }
    rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|_| Error::HttpRequestUriInvalid)
}

/// The system's trusted roots, as for an `amqps://` broker; built once.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, Error> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            use rustls_platform_verifier::ConfigVerifierExt as _;
            rustls::ClientConfig::with_platform_verifier()
                .map(Arc::new)
                .map_err(|error| error.to_string())
        })
        .clone()
        .map_err(|error| Error::InternalError(Some(format!("TLS setup: {error}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_metadata_addresses_are_forbidden_public_ones_not() {
        for address in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            let ip: IpAddr = address.parse().unwrap();
            assert!(forbidden(ip).is_some(), "{address} must be forbidden");
        }
        for address in [
            "93.184.216.34",
            "172.32.0.1",
            "2606:4700::1111",
            "64:ff9b::5db8:d822",
        ] {
            let ip: IpAddr = address.parse().unwrap();
            assert_eq!(forbidden(ip), None, "{address} must be allowed");
        }
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
        let mut http = OutboundHttp::new(grant);
        let uri = |text: &str| text.parse::<http::Uri>().unwrap();
        assert!(http.admit(&uri("http://127.0.0.1:8081/x")).is_ok());
        assert!(http.admit(&uri("https://API.example.com/v1")).is_ok());
        // The third call is over the budget of two, listed or not.
        assert!(http.admit(&uri("http://127.0.0.1:8081/x")).is_err());
        let mut http = OutboundHttp::new(http.grant.clone());
        for refused in [
            "http://127.0.0.1:8082/",
            "https://127.0.0.1:8081/",
            "http://api.example.com/",
            "https://evil.example.com/",
        ] {
            assert!(http.admit(&uri(refused)).is_err(), "{refused}");
        }
        let mut none = OutboundHttp::new(None);
        assert!(none.admit(&uri("http://127.0.0.1:8081/")).is_err());
    }
}
