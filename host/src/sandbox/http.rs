//! Outbound HTTP (`wasi:http/outgoing-handler`) for procedures whose
//! manifest grants it (`[http] allow`), and for no one else.
//!
//! Why it is built this way:
//! - **The address connected is the address checked.** wasmtime-wasi-http's
//!   own sender connects by host name, so a name checked once could resolve
//!   elsewhere a moment later (DNS rebinding). Here the host name is resolved
//!   once, each address is checked, and the connection goes to the address
//!   that passed; TLS still verifies the certificate against the name.
//! - **Only global unicast addresses, unless listed.** Loopback, private,
//!   link-local (the cloud metadata service at 169.254.169.254), shared,
//!   multicast, documentation, benchmarking and reserved addresses, and IPv6
//!   addresses standing for one of them (IPv4-mapped, -compatible and
//!   -translated, NAT64, 6to4), are refused ([`forbidden`]) unless the
//!   manifest lists that very address (`http://127.0.0.1:8081`): an allowed
//!   *name* that resolves to one of them does not get in.
//! - **What goes out is what was checked.** A URL with user information
//!   (`http://internal.corp:80@127.0.0.1/`) is refused: its authority would
//!   be the `Host` header as written.
//! - **Redirects are requests too.** wasi:http does not follow redirects; a
//!   guest that follows one makes a new request, checked like the first.
//! - **Per request, a budget.** At most `[http] calls` outbound requests and
//!   `[http] bytes` of response bodies per request; the request's deadline
//!   bounds them all, because the store that owns them is dropped at it.
//! - **Refusals are counted, and the log stays bounded.** A refused call gets
//!   the WASI HTTP error for it (`HTTP-request-denied`,
//!   `destination-IP-prohibited`, `HTTP-response-body-size`) and is counted
//!   by [`Refusal`] (`warren_http_refused_total`); only the first of a
//!   request is logged, and, when there were more, one line at its end says
//!   how many. A procedure retrying in a loop makes two log lines, not one
//!   per try. Log lines (and so span events) name `scheme://host:port`, never
//!   the path or the query, which may carry a key, and the procedure's
//!   secret values are replaced in them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
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

use super::scrub::Scrubber;

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

/// Why an outbound call was refused: the `reason` label of
/// `warren_http_refused_total` (docs/observability.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `not-allowed`: its scheme, host and port are not in `[http] allow`
    /// (or the scheme is neither http nor https).
    NotAllowed,
    /// `userinfo`: its URL has user information (`user:password@host`).
    Userinfo,
    /// `forbidden-address`: its host name resolves only to addresses that
    /// are not global unicast ([`forbidden`]).
    ForbiddenAddress,
    /// `too-many-calls`: past `[http] calls` for one request.
    TooManyCalls,
    /// `too-many-bytes`: its response body went past `[http] bytes` for
    /// one request.
    TooManyBytes,
}

impl Refusal {
    /// Every reason, in the order [`http_refusals`] gives them.
    pub(crate) const ALL: [Refusal; 5] = [
        Refusal::NotAllowed,
        Refusal::Userinfo,
        Refusal::ForbiddenAddress,
        Refusal::TooManyCalls,
        Refusal::TooManyBytes,
    ];

    /// The metric's label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::NotAllowed => "not-allowed",
            Refusal::Userinfo => "userinfo",
            Refusal::ForbiddenAddress => "forbidden-address",
            Refusal::TooManyCalls => "too-many-calls",
            Refusal::TooManyBytes => "too-many-bytes",
        }
    }
}

/// Refused outbound calls in this process, by [`Refusal`]: a plain count,
/// since a looping procedure can be refused a hundred thousand times a
/// second.
static REFUSED: [AtomicU64; Refusal::ALL.len()] = [const { AtomicU64::new(0) }; 5];

/// Outbound calls refused since the process started, by reason label (every
/// sandbox of the process together; a `warren-host` has one).
pub(crate) fn http_refusals() -> [(&'static str, u64); Refusal::ALL.len()] {
    Refusal::ALL.map(|reason| {
        (
            reason.label(),
            REFUSED[reason as usize].load(Ordering::Relaxed),
        )
    })
}

/// What one request's outbound calls share: the bytes they received, the
/// refusals so far, and the request's span to log them in.
struct RequestCalls {
    received: AtomicU64,
    refused: AtomicU64,
    span: tracing::Span,
}

impl RequestCalls {
    /// Counts a refusal of `reason`; the request's first is logged, saying
    /// `why`, naming only its `origin` (`scheme://host:port`, made only
    /// then: a looping procedure is refused many times a millisecond).
    fn refuse(
        &self,
        reason: Refusal,
        origin: impl FnOnce() -> String,
        why: std::fmt::Arguments<'_>,
    ) {
        REFUSED[reason as usize].fetch_add(1, Ordering::Relaxed);
        if self.refused.fetch_add(1, Ordering::Relaxed) == 0 {
            let origin = origin();
            self.span.in_scope(|| {
                tracing::warn!(
                    origin = origin.as_str(),
                    reason = reason.label(),
                    "outbound HTTP refused: {why} (this request's further refusals are only \
                     counted, in warren_http_refused_total)"
                );
            });
        }
    }
}

/// One request's outbound HTTP: wasmtime-wasi-http's hooks, in the store.
pub(super) struct OutboundHttp {
    grant: Option<Arc<HttpGrant>>,
    /// The procedure's secret values, kept out of log lines.
    secrets: Arc<Scrubber>,
    calls: u32,
    /// Made at the first call: most requests make none.
    shared: Option<Arc<RequestCalls>>,
}

impl OutboundHttp {
    pub(super) fn new(grant: Option<Arc<HttpGrant>>, secrets: Arc<Scrubber>) -> Self {
        OutboundHttp {
            grant,
            secrets,
            calls: 0,
            shared: None,
        }
    }

    /// The state this request's calls share, made at its first call (in
    /// the request's span).
    fn shared(&mut self) -> Arc<RequestCalls> {
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
    fn admit(&mut self, uri: &http::Uri) -> Result<(Arc<HttpGrant>, Target), Error> {
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
            Target {
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
struct Target {
    https: bool,
    /// As the URI has it, lower case (an IPv6 address in brackets).
    host: String,
    port: u16,
    /// `scheme://host:port`, for log lines.
    origin: String,
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
        let shared = self.shared();
        // The caller's span (the request's, with the procedure's name)
        // follows the request into the task wasmtime-wasi-http spawns.
        let span = shared.span.clone();
        Box::new(
            async move {
                let (grant, target) = admitted?;
                let address = resolve_checked(&target, &shared).await?;
                send(request, &target, address, grant.max_bytes, shared).await
            }
            .instrument(span),
        )
    }
}

/// The address to connect to: the host's own when the URI names an
/// address (the manifest listed it), else the first address the name
/// resolves to that is not [`forbidden`].
async fn resolve_checked(target: &Target, shared: &RequestCalls) -> Result<SocketAddr, Error> {
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
    shared.refuse(
        Refusal::ForbiddenAddress,
        || target.origin.clone(),
        format_args!(
            "the name resolves only to addresses a procedure may reach only when its manifest \
             lists the address itself: {}",
            refused.join(", ")
        ),
    );
    Err(Error::DestinationIpProhibited)
}

/// Why a procedure may not reach `ip` unless its manifest lists that very
/// address; `None` for a global unicast address, which it may reach
/// through a listed name.
///
/// An IPv6 address that stands for an IPv4 one is judged as that IPv4
/// address: IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`,
/// IPv4-translated `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d` and 6to4
/// `2002:aabb:ccdd::/48`. Where the IPv4 address cannot be known, the
/// range is refused whole: Teredo `2001::/32` (the client's address is
/// obfuscated, the server's may be anything) and local-use NAT64
/// `64:ff9b:1::/48` (where the IPv4 address sits is the local translator's
/// choice, and the range is not global). Everything outside `2000::/3`,
/// IPv6's global unicast, is refused.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => forbidden_v4(ip),
        IpAddr::V6(ip) => forbidden_v6(ip),
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let v4 = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    match ip.segments() {
        [0, 0, 0, 0, 0, 0, 0, 0] => Some("unspecified"),
        [0, 0, 0, 0, 0, 0, 0, 1] => Some("loopback"),
        // IPv4-mapped, IPv4-compatible (deprecated), IPv4-translated, and
        // NAT64's well-known prefix: the IPv4 address decides.
        [0, 0, 0, 0, 0, 0xffff, high, low]
        | [0, 0, 0, 0, 0, 0, high, low]
        | [0, 0, 0, 0, 0xffff, 0, high, low]
        | [0x64, 0xff9b, 0, 0, 0, 0, high, low] => forbidden_v4(v4(high, low)),
        [0x64, 0xff9b, 1, ..] => Some("local-use NAT64 (64:ff9b:1::/48)"),
        // 6to4: the IPv4 address is bits 16 to 48.
        [0x2002, high, low, ..] => forbidden_v4(v4(high, low)),
        [0x2001, 0, ..] => Some("Teredo (2001::/32), whose IPv4 address is hidden"),
        [0x2001, 2, 0, ..] => Some("benchmarking (2001:2::/48)"),
        [0x2001, second, ..] if second < 0x200 => Some("IETF protocol assignments (2001::/23)"),
        [0x2001, 0xdb8, ..] => Some("documentation (2001:db8::/32)"),
        [0x3fff, second, ..] if second < 0x1000 => Some("documentation (3fff::/20)"),
        [0x100, 0, 0, 0, ..] => Some("discard-only (100::/64)"),
        [first, ..] if first & 0xff00 == 0xff00 => Some("multicast"),
        [first, ..] if first & 0xffc0 == 0xfe80 => Some("link-local"),
        [first, ..] if first & 0xffc0 == 0xfec0 => Some("site-local (fec0::/10)"),
        [first, ..] if first & 0xfe00 == 0xfc00 => Some("unique local (fc00::/7)"),
        [first, ..] if first & 0xe000 != 0x2000 => Some("not global unicast (outside 2000::/3)"),
        _ => None,
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    match ip.octets() {
        [0, ..] => Some("this network (0.0.0.0/8)"),
        [10, ..] => Some("private (10.0.0.0/8)"),
        [100, 64..=127, ..] => Some("shared address space, carrier-grade NAT (100.64.0.0/10)"),
        [127, ..] => Some("loopback"),
        [169, 254, ..] => Some("link-local (169.254.0.0/16), where cloud metadata services answer"),
        [172, 16..=31, ..] => Some("private (172.16.0.0/12)"),
        [192, 0, 0, _] => Some("IETF protocol assignments (192.0.0.0/24)"),
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => Some("documentation"),
        [192, 88, 99, _] => Some("deprecated 6to4 relay anycast (192.88.99.0/24)"),
        [192, 168, ..] => Some("private (192.168.0.0/16)"),
        [198, 18..=19, ..] => Some("benchmarking (198.18.0.0/15)"),
        [224..=239, ..] => Some("multicast"),
        [255, 255, 255, 255] => Some("broadcast"),
        [240..=255, ..] => Some("reserved (240.0.0.0/4)"),
        _ => None,
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
    shared: Arc<RequestCalls>,
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
            shared,
            max_bytes,
            origin: target.origin.clone(),
            past: false,
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
    shared: Arc<RequestCalls>,
    max_bytes: u64,
    /// `scheme://host:port`, for the log line.
    origin: String,
    /// Past `max_bytes` already (counted and refused once).
    past: bool,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let too_large =
            |max_bytes| Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(max_bytes)))));
        if self.past {
            return too_large(self.max_bytes);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |data| data.len() as u64);
                let total = self.shared.received.fetch_add(len, Ordering::Relaxed) + len;
                if total > self.max_bytes {
                    self.past = true;
                    self.shared.refuse(
                        Refusal::TooManyBytes,
                        || self.origin.clone(),
                        format_args!(
                            "past the manifest's [http] bytes ({}) for one request",
                            self.max_bytes
                        ),
                    );
                    return too_large(self.max_bytes);
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

    /// Every form finding 9 of issue 37 names, the usual private ranges,
    /// and global addresses that must get through: (address, allowed,
    /// what the reason says when refused).
    const ADDRESSES: &[(&str, bool, &str)] = &[
        // IPv4
        ("0.0.0.0", false, "this network"),
        ("0.1.2.3", false, "this network"),
        ("10.1.2.3", false, "private"),
        ("100.64.0.1", false, "carrier-grade NAT"),
        ("100.127.255.255", false, "carrier-grade NAT"),
        ("127.0.0.1", false, "loopback"),
        ("127.255.255.254", false, "loopback"),
        ("169.254.169.254", false, "link-local"),
        ("172.16.0.1", false, "private"),
        ("172.31.255.255", false, "private"),
        ("192.0.0.1", false, "IETF protocol assignments"),
        ("192.0.0.170", false, "IETF protocol assignments"),
        ("192.0.2.1", false, "documentation"),
        ("192.88.99.1", false, "6to4 relay"),
        ("192.168.1.1", false, "private"),
        ("198.18.0.1", false, "benchmarking"),
        ("198.19.255.255", false, "benchmarking"),
        ("198.51.100.7", false, "documentation"),
        ("203.0.113.9", false, "documentation"),
        ("224.0.0.1", false, "multicast"),
        ("239.255.255.250", false, "multicast"),
        ("240.0.0.1", false, "reserved"),
        ("255.255.255.255", false, "broadcast"),
        ("8.8.8.8", true, ""),
        ("1.1.1.1", true, ""),
        ("93.184.216.34", true, ""),
        ("100.63.255.255", true, ""),
        ("100.128.0.1", true, ""),
        ("172.32.0.1", true, ""),
        ("198.20.0.1", true, ""),
        ("192.0.3.1", true, ""),
        // IPv6 of its own
        ("::", false, "unspecified"),
        ("::1", false, "loopback"),
        ("100::1", false, "discard-only"),
        ("fc00::1", false, "unique local"),
        ("fd12:3456::1", false, "unique local"),
        ("fe80::1", false, "link-local"),
        ("fec0::1", false, "site-local"),
        ("feff::1", false, "site-local"),
        ("ff02::1", false, "multicast"),
        ("ff0e::1", false, "multicast"),
        ("2001:db8::1", false, "documentation"),
        ("3fff::1", false, "documentation"),
        ("2001:2::1", false, "benchmarking"),
        ("2001:10::1", false, "IETF protocol assignments"),
        ("2001:1ff::1", false, "IETF protocol assignments"),
        ("4000::1", false, "outside 2000::/3"),
        ("5f00::1", false, "outside 2000::/3"),
        ("2606:4700::1111", true, ""),
        ("2a00:1450:4001:80b::200e", true, ""),
        ("2001:200::1", true, ""),
        // IPv4 inside IPv6: the IPv4 address decides.
        ("::ffff:127.0.0.1", false, "loopback"),
        ("::ffff:169.254.169.254", false, "link-local"),
        ("::ffff:10.0.0.1", false, "private"),
        ("::ffff:100.64.0.1", false, "carrier-grade NAT"),
        ("::ffff:8.8.8.8", true, ""),
        ("::127.0.0.1", false, "loopback"),
        ("::a9fe:a9fe", false, "link-local"),
        ("::10.0.0.1", false, "private"),
        ("::8.8.8.8", true, ""),
        ("::ffff:0:127.0.0.1", false, "loopback"),
        ("::ffff:0:a9fe:a9fe", false, "link-local"),
        ("::ffff:0:8.8.8.8", true, ""),
        ("64:ff9b::127.0.0.1", false, "loopback"),
        ("64:ff9b::a9fe:a9fe", false, "link-local"),
        ("64:ff9b::c612:1", false, "benchmarking"),
        ("64:ff9b::5db8:d822", true, ""),
        ("64:ff9b:1::a9fe:a9fe", false, "local-use NAT64"),
        ("64:ff9b:1:ffff::808:808", false, "local-use NAT64"),
        ("2002:7f00:1::1", false, "loopback"),
        ("2002:a9fe:a9fe::", false, "link-local"),
        ("2002:c000:1::1", false, "IETF protocol assignments"),
        ("2002:c0a8:101:1::1", false, "private"),
        ("2002:808:808::1", true, ""),
        ("2001::1", false, "Teredo"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", false, "Teredo"),
        ("2001:0:5ef5:79fd:0:0:5ef5:79fd", false, "Teredo"),
    ];

    #[test]
    fn only_global_unicast_addresses_are_allowed_through_a_name() {
        let mut wrong = Vec::new();
        for &(address, allowed, reason) in ADDRESSES {
            let ip: IpAddr = address.parse().unwrap();
            let verdict = forbidden(ip);
            let right = match verdict {
                None => allowed,
                Some(why) => !allowed && why.contains(reason),
            };
            if !right {
                wrong.push(format!(
                    "{address}: expected {}, got {verdict:?}",
                    if allowed {
                        "allowed".into()
                    } else {
                        format!("refused ({reason})")
                    }
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

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
