//! Why a call, a deploy or a status request produced no answer.

use std::time::Duration;

use warren_protocol::RpcError;
use warren_protocol::broker::ConnectError;
use warren_protocol::trace::TraceParent;

/// Why a call produced no successful reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The procedure (or the host on its behalf) answered with an error.
    #[error("{error}")]
    Rpc {
        /// Kind and message, as sent by the host.
        error: RpcError,
        /// The procedure that answered, if the host said.
        procedure: Option<String>,
        /// `sha256:<hex>` of the module that answered, if one ran.
        digest: Option<String>,
        /// The host's span of this call's trace.
        traceparent: Option<TraceParent>,
    },
    /// The request queue does not exist, so nothing can be serving it (the
    /// broker returned the request at once).
    #[error(
        "queue {queue:?} does not exist, so no host is serving it (start warren-host, or check --queue)"
    )]
    NoQueue {
        /// The queue asked for.
        queue: String,
    },
    /// A deploy found no host consuming the queue to apply it.
    #[error(
        "no host is consuming queue {queue:?}, so no one would apply the deploy now \
         (start warren-host, check --queue, or pass --allow-no-hosts to store it for hosts \
         that start later)"
    )]
    NoHosts {
        /// The queue asked for.
        queue: String,
    },
    /// Something the caller passed cannot work (a malformed broker URL, an
    /// invalid procedure name); nothing was sent.
    #[error("{0}")]
    Invalid(String),
    /// No reply arrived in time; `diagnosis` says what is known about why.
    #[error("no reply within {}: {diagnosis}", humantime::format_duration(*.waited))]
    Timeout {
        /// How long the call waited.
        waited: Duration,
        /// What the client found out about the queue.
        diagnosis: String,
    },
    /// The broker could not be reached or refused the connection.
    #[error("cannot reach the broker at {url}: {}", warren_protocol::describe_connect_error(.url, .source))]
    Connect {
        /// The broker URL, password hidden.
        url: String,
        /// What went wrong.
        #[source]
        source: lapin::Error,
    },
    /// The broker did not complete the connection in time.
    #[error(
        "cannot reach the broker at {url}: no answer within {} (wrong host, port or vhost?)",
        humantime::format_duration(*.waited)
    )]
    ConnectTimeout {
        /// The broker URL, password hidden.
        url: String,
        /// How long the client waited.
        waited: Duration,
    },
    /// The connection failed after it was made.
    #[error("{context}: {source}")]
    Broker {
        /// What the client was doing.
        context: &'static str,
        /// What went wrong.
        #[source]
        source: lapin::Error,
    },
    /// The broker would not take a message (a publisher nack).
    #[error("the broker refused {0} (it answered with a nack); try again")]
    NotStored(&'static str),
    /// The connection to the broker closed while the call was waiting.
    #[error("the connection to the broker closed before a reply arrived")]
    Disconnected,
}

impl From<ConnectError> for CallError {
    fn from(error: ConnectError) -> Self {
        match error {
            ConnectError::Timeout { url, waited } => CallError::ConnectTimeout { url, waited },
            ConnectError::Failed { url, source } => CallError::Connect { url, source },
        }
    }
}
