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
//!   -translated, NAT64, 6to4), are refused
//!   ([`forbidden`](address::forbidden)) unless the manifest lists that very
//!   address (`http://127.0.0.1:8081`): an allowed *name* that resolves to
//!   one of them does not get in.
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
//!   by [`Refusal`](refusal::Refusal) (`warren_http_refused_total`); only
//!   the first of a request is logged, and, when there were more, one line
//!   at its end says how many. A procedure retrying in a loop makes two log
//!   lines, not one per try. Log lines (and so span events) name
//!   `scheme://host:port`, never the path or the query, which may carry a
//!   key, and the procedure's secret values are replaced in them.
//!
//! The parts: [`admit`] (the grant, and the checks a call passes before
//! any network: granted, within budget, listed, no user information),
//! [`address`] (which addresses a name may lead to), [`send`] (the
//! wasi-http hook: resolving, connecting, the response body's budget) and
//! [`refusal`] (refusals counted, and their bounded logging).

mod address;
mod admit;
mod refusal;
mod send;

pub use admit::HttpGrant;
pub(crate) use admit::OutboundHttp;
pub(crate) use refusal::http_refusals;
