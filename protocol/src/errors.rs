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
    /// The procedure's manifest does not list the caller (its broker user)
    /// in `callers`; the procedure did not run.
    Forbidden,
    /// The caller is over its quota on this host (a rate, or a share of
    /// the running slots); the procedure did not run. The reply says when
    /// to try again ([`RpcError::retry_after_ms`], header `x-retry-after-ms`).
    RateLimited,
}

impl ErrorKind {
    /// Every kind, in documentation order.
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::ProcedureError,
        ErrorKind::Timeout,
        ErrorKind::MemoryLimit,
        ErrorKind::Trap,
        ErrorKind::NoProcedure,
        ErrorKind::RequestTooLarge,
        ErrorKind::ReplyTooLarge,
        ErrorKind::Internal,
        ErrorKind::DeliveryLimit,
        ErrorKind::Forbidden,
        ErrorKind::RateLimited,
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
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::RateLimited => "rate-limited",
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
    /// `rate-limited`: milliseconds to wait before sending it again (also
    /// the reply's `x-retry-after-ms` header). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl RpcError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RpcError {
            kind,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// A `rate-limited` error saying `message`, to be tried again after
    /// `retry_after`.
    pub fn rate_limited(message: impl Into<String>, retry_after: std::time::Duration) -> Self {
        RpcError {
            retry_after_ms: Some(
                u64::try_from(retry_after.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            ),
            ..RpcError::new(ErrorKind::RateLimited, message)
        }
    }

    /// How long to wait before trying again, when the host said.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after_ms.map(std::time::Duration::from_millis)
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

    #[test]
    fn a_rate_limited_body_says_when_to_retry_and_older_bodies_still_parse() {
        let error = RpcError::rate_limited("over quota", std::time::Duration::from_millis(250));
        let body = ErrorBody { error }.to_json();
        assert_eq!(
            String::from_utf8(body.clone()).unwrap(),
            r#"{"error":{"kind":"rate-limited","message":"over quota","retry_after_ms":250}}"#
        );
        let parsed = ErrorBody::from_json(&body).unwrap().error;
        assert_eq!(
            parsed.retry_after(),
            Some(std::time::Duration::from_millis(250))
        );
        let old = ErrorBody::from_json(br#"{"error":{"kind":"trap","message":"x"}}"#).unwrap();
        assert_eq!(old.error.retry_after(), None);
    }
}
