//! One call: what to send, and what came back.

use std::time::Duration;

use warren_protocol::trace::{HEADER_TRACEPARENT, TraceParent};
use warren_protocol::{
    ErrorBody, ErrorKind, HEADER_PROCEDURE, HEADER_PROCEDURE_DIGEST, HEADER_RETRY_AFTER_MS,
    HEADER_RPC_ERROR, HEADER_RPC_STATUS, RpcError, STATUS_ERROR, header_text,
};

use crate::{CallError, DEFAULT_TIMEOUT};

/// One request to make: a body, optionally a procedure, and a timeout.
#[derive(Debug, Clone)]
pub struct Call {
    pub(crate) body: Vec<u8>,
    pub(crate) procedure: Option<String>,
    pub(crate) timeout: Duration,
    pub(crate) traceparent: Option<TraceParent>,
    pub(crate) retry_rate_limited: bool,
}

impl Call {
    /// A call with `body`, the host's default procedure and [`DEFAULT_TIMEOUT`].
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Call {
            body: body.into(),
            procedure: None,
            timeout: DEFAULT_TIMEOUT,
            traceparent: None,
            retry_rate_limited: false,
        }
    }

    /// Continues the caller's trace: the request carries `parent` (the
    /// caller's current span) as its W3C `traceparent`. Without it each
    /// call starts a new trace.
    pub fn traceparent(mut self, parent: TraceParent) -> Self {
        self.traceparent = Some(parent);
        self
    }

    /// When the host answers `rate-limited` (the caller is over a quota),
    /// waits as long as the reply says (plus a little jitter, so callers
    /// refused together do not come back together) and sends it again,
    /// until the call's timeout; without it, `rate-limited` is returned
    /// like any other error.
    pub fn retry_when_rate_limited(mut self, retry: bool) -> Self {
        self.retry_rate_limited = retry;
        self
    }

    /// Runs procedure `name` (sent as the `x-procedure` header).
    pub fn procedure(mut self, name: impl Into<String>) -> Self {
        self.procedure = Some(name.into());
        self
    }

    /// Gives up after `timeout`. The request carries the same `expiration`,
    /// so the broker discards it if no host picks it up in time, and the
    /// moment it gives up (`x-deadline`), so a host that has taken it does
    /// not start it after that.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// A successful reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The reply body, exactly as the procedure returned it.
    pub body: Vec<u8>,
    /// The procedure that answered (absent from non-Warren servers).
    pub procedure: Option<String>,
    /// `sha256:<hex>` of the module that answered (absent from non-Warren servers).
    pub digest: Option<String>,
    /// The host's span of this call's trace (absent from non-Warren servers).
    pub traceparent: Option<TraceParent>,
}

/// Turns a reply message into a [`Reply`] or the error it reports. A reply
/// without `x-rpc-status` (a plain tutorial server) counts as success.
pub(crate) fn interpret_reply(delivery: lapin::message::Delivery) -> Result<Reply, CallError> {
    let headers = delivery.properties.headers().as_ref();
    let procedure = header_text(headers, HEADER_PROCEDURE);
    let digest = header_text(headers, HEADER_PROCEDURE_DIGEST);
    let traceparent =
        header_text(headers, HEADER_TRACEPARENT).and_then(|text| TraceParent::parse(&text));
    if header_text(headers, HEADER_RPC_STATUS).as_deref() == Some(STATUS_ERROR) {
        let mut error = match ErrorBody::from_json(&delivery.data) {
            Some(body) => body.error,
            None => RpcError::new(
                header_text(headers, HEADER_RPC_ERROR)
                    .and_then(|kind| kind.parse().ok())
                    .unwrap_or(ErrorKind::Internal),
                String::from_utf8_lossy(&delivery.data).into_owned(),
            ),
        };
        if error.retry_after_ms.is_none() {
            error.retry_after_ms =
                header_text(headers, HEADER_RETRY_AFTER_MS).and_then(|ms| ms.parse().ok());
        }
        return Err(CallError::Rpc {
            error,
            procedure,
            digest,
            traceparent,
        });
    }
    Ok(Reply {
        body: delivery.data,
        procedure,
        digest,
        traceparent,
    })
}
