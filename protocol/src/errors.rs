//! Error replies: the kinds a caller can branch on, and the JSON body that
//! carries kind and message.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a request did not produce a procedure's `ok` result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The procedure ran and returned `err(message)`.
    ProcedureError,
    /// The request ran past the host's wall-clock budget.
    Timeout,
    /// The procedure tried to grow its memory past the host's limit.
    MemoryLimit,
    /// The procedure trapped (panic, `unreachable`, stack overflow, …).
    Trap,
    /// No procedure by the requested name (or no default) is loaded.
    NoProcedure,
    /// The request body is larger than the host accepts; the guest never ran.
    RequestTooLarge,
    /// The procedure returned more bytes than the host may send back.
    ReplyTooLarge,
    /// The host itself failed; the message says what it was doing.
    Internal,
    /// Durable mode: the request was delivered `--delivery-limit` times
    /// without being answered (it may crash or stall the hosts that take
    /// it), so the broker dead-lettered it and it is not run again.
    DeliveryLimit,
}

impl ErrorKind {
    /// Every kind, in documentation order.
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::ProcedureError,
        ErrorKind::Timeout,
        ErrorKind::MemoryLimit,
        ErrorKind::Trap,
        ErrorKind::NoProcedure,
        ErrorKind::RequestTooLarge,
        ErrorKind::ReplyTooLarge,
        ErrorKind::Internal,
        ErrorKind::DeliveryLimit,
    ];

    /// The kind as it appears in [`HEADER_RPC_ERROR`] and the JSON body.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ProcedureError => "procedure-error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::MemoryLimit => "memory-limit",
            ErrorKind::Trap => "trap",
            ErrorKind::NoProcedure => "no-procedure",
            ErrorKind::RequestTooLarge => "request-too-large",
            ErrorKind::ReplyTooLarge => "reply-too-large",
            ErrorKind::Internal => "internal",
            ErrorKind::DeliveryLimit => "delivery-limit",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Returned when text names no [`ErrorKind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownErrorKind(pub String);

impl fmt::Display for UnknownErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown error kind {:?}", self.0)
    }
}

impl std::error::Error for UnknownErrorKind {}

impl FromStr for ErrorKind {
    type Err = UnknownErrorKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| UnknownErrorKind(s.to_owned()))
    }
}

/// The JSON body of an error reply: `{"error":{"kind":"…","message":"…"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: RpcError,
}

/// An error outcome of one request: its kind and a message for people.
///
/// The host builds one for every failed request; the client hands it to the
/// caller. It is the inside of [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcError {
    /// Machine-readable kind; the same value as [`HEADER_RPC_ERROR`].
    pub kind: ErrorKind,
    /// Human-readable explanation.
    pub message: String,
}

impl RpcError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RpcError {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for RpcError {}

impl ErrorBody {
    /// An error body of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorBody {
            error: RpcError::new(kind, message),
        }
    }

    /// The body as sent on the wire.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an ErrorBody always serialises")
    }

    /// Parses a body received on the wire; `None` if it is not an error body.
    pub fn from_json(body: &[u8]) -> Option<Self> {
        serde_json::from_slice(body).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_round_trip_through_text() {
        for kind in ErrorKind::ALL {
            assert_eq!(kind.as_str().parse::<ErrorKind>(), Ok(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert!("nope".parse::<ErrorKind>().is_err());
    }

    #[test]
    fn error_body_has_the_documented_shape() {
        let body = ErrorBody::new(ErrorKind::Timeout, "took too long").to_json();
        assert_eq!(
            String::from_utf8(body.clone()).unwrap(),
            r#"{"error":{"kind":"timeout","message":"took too long"}}"#
        );
        assert_eq!(
            ErrorBody::from_json(&body).unwrap().error.kind,
            ErrorKind::Timeout
        );
        assert!(ErrorBody::from_json(b"832040").is_none());
    }
}
