//! The wasi-http hook: an admitted call's host name resolved once and
//! checked, a new connection to the address that passed (TLS against the
//! name), and its response body counted against the request's budget.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument as _;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::address::forbidden;
use super::admit::{Destination, OutboundHttp};
use super::refusal::{Refusal, RequestCalls};

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
async fn resolve_checked(target: &Destination, shared: &RequestCalls) -> Result<SocketAddr, Error> {
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

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Sends `request` over a new connection to `address` (TLS for https,
/// checked against the host name), its response body counted against
/// `max_bytes` with what this request's other calls received.
async fn send(
    mut request: http::Request<WasiBody>,
    target: &Destination,
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
