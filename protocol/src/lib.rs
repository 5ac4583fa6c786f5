//! The Warren wire contract, defined once for the host, the client and the docs.
//!
//! Warren keeps the RabbitMQ tutorial's RPC pattern unchanged: a caller
//! publishes a request to a queue (default [`DEFAULT_QUEUE`]) with `reply_to`
//! naming its callback queue and a `correlation_id`; a host publishes the
//! reply to `reply_to` through the default exchange with the same
//! `correlation_id`. Everything Warren adds travels in message headers, so a
//! caller that ignores headers (like the tutorial's `rpc_client.py`) still
//! works:
//!
//! | header | on | value |
//! |---|---|---|
//! | [`HEADER_PROCEDURE`] | request (optional), every reply | procedure name |
//! | [`HEADER_DEADLINE`] | request (optional) | when the caller stops waiting, ms since the Unix epoch |
//! | [`HEADER_PROCEDURE_DIGEST`] | every reply that ran a module | `sha256:` + hex of the module bytes |
//! | [`HEADER_RPC_STATUS`] | every reply | [`STATUS_OK`] or [`STATUS_ERROR`] |
//! | [`HEADER_RPC_ERROR`] | error replies | an [`ErrorKind`] |
//!
//! A success body is exactly what the procedure returned. An error body is
//! JSON (`{"error":{"kind":"…","message":"…"}}`, content type
//! [`ERROR_CONTENT_TYPE`]) and never a bare number, so an old caller that
//! parses the body as an integer fails loudly instead of reading a wrong answer.
//!
//! # Layout
//!
//! Three floors, each module using only those on its floor or below
//! (`scripts/check-imports` checks it, and that there are no cycles):
//!
//! - **What travels** — [`status`] (`warren status`), [`deploy`] (signed
//!   deploys, their stream and parts), [`broker`] (node lists, connecting,
//!   publishing), `options` (the broker options both binaries take; feature
//!   `cli`), [`component`] (what makes a file a procedure), [`trace`]
//!   (trace context).
//! - **What they carry** — [`manifest`] (a procedure's grants: the
//!   manifest and its parsing; `[quota]`, `[http]`, caller patterns and
//!   [`manifest::EffectiveGrants`] in its submodules), [`limits`] (what one
//!   request may use: the one [`limits::Limits`] of the host's flags, a
//!   manifest's `[limits]` and the sandbox, its defaults and the rule a
//!   manifest lowers the host's by), [`values`] (the rules for names, sizes
//!   and durations both binaries take), `queues` (the request queue's
//!   shapes).
//! - **The words** — this file (headers, status values, names), `errors`
//!   (error kinds and bodies), [`tls`].

pub mod broker;
pub mod component;
pub mod deploy;
mod errors;
pub mod limits;
pub mod manifest;
#[cfg(feature = "cli")]
pub mod options;
mod queues;
pub mod status;
pub mod tls;
pub mod trace;
pub mod values;

pub use errors::{ErrorBody, ErrorKind, RpcError, UnknownErrorKind};
pub use queues::{
    QueueMode, broker_said, dead_letter_queue, declare_request_queue, explain_queue_mismatch,
};

use lapin::types::{AMQPValue, FieldTable};

/// Queue the seed programs use, and Warren's default.
pub const DEFAULT_QUEUE: &str = "rpc_queue";
/// Broker URL used when neither `--amqp-url` nor `AMQP_URL` is given.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Request header choosing the procedure; echoed on every reply.
pub const HEADER_PROCEDURE: &str = "x-procedure";
/// Reply header: `sha256:<hex>` of the module that answered.
pub const HEADER_PROCEDURE_DIGEST: &str = "x-procedure-digest";
/// Reply header: [`STATUS_OK`] or [`STATUS_ERROR`].
pub const HEADER_RPC_STATUS: &str = "x-rpc-status";
/// Reply header on errors: the [`ErrorKind`] as text.
pub const HEADER_RPC_ERROR: &str = "x-rpc-error";
/// Request header (optional): when the caller stops waiting, in
/// milliseconds since the Unix epoch ([`deadline_header`]). A host does not
/// start a request past it: the broker drops expired requests only while
/// it holds them, not once a host has prefetched them.
pub const HEADER_DEADLINE: &str = "x-deadline";
/// On a `rate-limited` error reply: milliseconds until the caller may try
/// again (the same value as the body's `retry_after_ms`).
pub const HEADER_RETRY_AFTER_MS: &str = "x-retry-after-ms";
/// What earlier hosts called a request without a `user_id` property. Such a
/// request now has no identity: no `callers` pattern matches it (a
/// manifest admits it only with `callers-anonymous = true`), and metrics
/// label it `(none)`. A broker user really named this is warned about,
/// since older logs and metrics cannot tell it from no identity.
pub const ANONYMOUS_CALLER: &str = "anonymous";

/// Value of [`HEADER_RPC_STATUS`] when the procedure returned `ok`.
pub const STATUS_OK: &str = "ok";
/// Value of [`HEADER_RPC_STATUS`] for every other outcome.
pub const STATUS_ERROR: &str = "error";
/// Content type of an error reply body.
pub const ERROR_CONTENT_TYPE: &str = "application/json";

/// Longest procedure name, in bytes: short enough for any file system and
/// for a header a person reads.
pub const MAX_PROCEDURE_NAME: usize = 63;

/// The rule every procedure name follows, for messages.
pub const PROCEDURE_NAME_RULE: &str = "1 to 63 characters: lowercase letters a-z, digits, '-' and '_', \
     starting with a letter or digit";

/// Checks that `name` can name a procedure: `[a-z0-9][a-z0-9_-]{0,62}`.
///
/// One rule for the modules folder (`NAME.wasm`), deploys (checked by the
/// client before sending and by the host on receipt) and the `x-procedure`
/// header, so a name that is accepted anywhere can be served, saved and
/// called everywhere (no `-dash` that looks like an option, no `fib.wasm`
/// that would be saved as `fib.wasm.wasm`, no name too long to be a file).
pub fn check_procedure_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let rest_ok =
        bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if first_ok && rest_ok && name.len() <= MAX_PROCEDURE_NAME {
        Ok(())
    } else {
        let shown: String = name.chars().take(40).collect();
        let ellipsis = if name.chars().count() > 40 { "…" } else { "" };
        Err(format!(
            "{:?} is not a valid procedure name ({PROCEDURE_NAME_RULE})",
            format!("{shown}{ellipsis}")
        ))
    }
}

/// Reads a text header, whichever AMQP string type the sender used
/// (pika sends long strings, some clients short strings or byte arrays).
pub fn header_text(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    let value = headers?.inner().get(name)?;
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::ByteArray(b) => Some(String::from_utf8_lossy(b.as_slice()).into_owned()),
        _ => None,
    }
}

/// The value of [`HEADER_DEADLINE`] for a caller that waits `timeout` from now.
pub fn deadline_header(timeout: std::time::Duration) -> String {
    let deadline = std::time::SystemTime::now() + timeout;
    let since_epoch = deadline
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    since_epoch.as_millis().to_string()
}

/// When the caller of a request stops waiting ([`HEADER_DEADLINE`]), if it
/// said and it can be read (a number, in a string or integer header).
pub fn read_deadline(headers: Option<&FieldTable>) -> Option<std::time::SystemTime> {
    let millis = match headers?.inner().get(HEADER_DEADLINE)? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok()?,
        AMQPValue::LongUInt(n) => u64::from(*n),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok()?,
        _ => header_text(headers, HEADER_DEADLINE)?.trim().parse().ok()?,
    };
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(millis))
}

/// Like [`header_text`], but a header that is there and not text is an
/// error saying so (a caller that sent `x-procedure` as an integer should
/// hear that, not that it named no procedure).
pub fn header_text_strict(
    headers: Option<&FieldTable>,
    name: &str,
) -> Result<Option<String>, String> {
    let Some(value) = headers.and_then(|h| h.inner().get(name)) else {
        return Ok(None);
    };
    header_text(headers, name).map(Some).ok_or_else(|| {
        let kind = match value {
            AMQPValue::Boolean(_) => "a boolean",
            AMQPValue::Float(_) | AMQPValue::Double(_) | AMQPValue::DecimalValue(_) => "a number",
            AMQPValue::FieldArray(_) => "an array",
            AMQPValue::FieldTable(_) => "a table",
            AMQPValue::Timestamp(_) => "a timestamp",
            AMQPValue::Void => "void",
            _ => "an integer",
        };
        format!("the {name} header is {kind}; it must be a string")
    })
}

/// Sets a text header, creating the table if needed.
pub fn set_header_text(headers: &mut FieldTable, name: &str, value: &str) {
    headers.insert(name.into(), AMQPValue::LongString(value.into()));
}

/// `sha256:` + lowercase hex of `bytes`: the one digest Warren takes, of a
/// module (the value of [`HEADER_PROCEDURE_DIGEST`] and of a deploy's
/// digest) and of a manifest's text (what a deploy signature covers of it,
/// and what tells two versions of a procedure's grants apart).
pub fn digest(bytes: impl AsRef<[u8]>) -> String {
    let bytes = bytes.as_ref();
    use sha2::{Digest as _, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Checks that `url` is an AMQP URL a connection can be made with, before
/// anything tries: a typo is bad usage, not an unreachable broker. The
/// message shows the URL with its password hidden.
pub fn check_amqp_url(url: &str) -> Result<(), String> {
    match url.parse::<lapin::uri::AMQPUri>() {
        Ok(_) => Ok(()),
        Err(reason) => Err(format!(
            "{:?} is not an AMQP URL ({reason}); write it like \
             amqp://user:password@host:5672/vhost (amqps:// for TLS; %2f is the vhost /)",
            redact_url(url)
        )),
    }
}

/// Why connecting to `url` failed, in one line: the error (once: lapin's
/// IO errors repeat their cause), and what to do when the server there is
/// not an AMQP broker or its TLS certificate is not trusted.
pub fn describe_connect_error(url: &str, error: &lapin::Error) -> String {
    match error.kind() {
        lapin::ErrorKind::ParsingError(_) | lapin::ErrorKind::InvalidProtocolVersion(_) => {
            "the server there answered, but not as an AMQP 0-9-1 broker: is this the \
             broker's AMQP port (5672, or 5671 for amqps://) and not, say, its HTTP or \
             stream port?"
                .to_owned()
        }
        _ => {
            let said = error.to_string();
            match tls::certificate_hint(url, &said) {
                Some(hint) => format!("{said}; {hint}"),
                None => said,
            }
        }
    }
}

/// The broker user `url` logs in as, which is what a request's `user_id`
/// must say for the broker to accept it: the URL's user name, or `guest`
/// when it names none (the broker's and lapin's default). `None` for
/// `auth_mechanism=external`, where the user is the TLS client
/// certificate's, which this side does not know.
pub fn amqp_user(url: &str) -> Option<String> {
    let uri: lapin::uri::AMQPUri = url.parse().ok()?;
    if matches!(
        uri.query.auth_mechanism,
        Some(lapin::uri::SASLMechanism::External)
    ) {
        return None;
    }
    Some(uri.authority.userinfo.username)
}

/// `amqp://user:secret@host/vhost` → `amqp://user:***@host/vhost`, so a
/// broker URL can be logged or shown in an error without its password.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://localhost"), "amqp://localhost");
    }

    #[test]
    fn the_user_a_url_logs_in_as() {
        assert_eq!(
            amqp_user("amqp://alice:pw@127.0.0.1:5672/%2f").as_deref(),
            Some("alice")
        );
        assert_eq!(amqp_user("amqp://127.0.0.1").as_deref(), Some("guest"));
        assert_eq!(amqp_user("amqps://h?auth_mechanism=external"), None);
    }

    use super::*;

    #[test]
    fn procedure_names_follow_one_rule() {
        for good in ["fib", "fib-v2", "fib_py", "0day", &"a".repeat(63)] {
            assert_eq!(check_procedure_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "-dash",
            "_under",
            "fib.wasm",
            "Fib",
            "a b",
            "fib/x",
            "é",
            &"a".repeat(64),
        ] {
            let error = check_procedure_name(bad).unwrap_err();
            assert!(error.contains("lowercase letters"), "{bad}: {error}");
        }
        let long = check_procedure_name(&"x".repeat(300)).unwrap_err();
        assert!(
            long.len() < 200,
            "long names are shortened in the message: {long}"
        );
    }

    #[test]
    fn deadlines_read_back_from_text_or_integers() {
        let mut table = FieldTable::default();
        set_header_text(
            &mut table,
            HEADER_DEADLINE,
            &deadline_header(std::time::Duration::from_secs(5)),
        );
        let deadline = read_deadline(Some(&table)).unwrap();
        let left = deadline
            .duration_since(std::time::SystemTime::now())
            .unwrap();
        assert!(left > std::time::Duration::from_secs(4), "{left:?}");
        table.insert(HEADER_DEADLINE.into(), AMQPValue::LongLongInt(1_000));
        assert_eq!(
            read_deadline(Some(&table)),
            Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1))
        );
        set_header_text(&mut table, HEADER_DEADLINE, "soon");
        assert_eq!(read_deadline(Some(&table)), None);
        assert_eq!(read_deadline(None), None);
    }

    #[test]
    fn headers_read_back_whatever_string_type() {
        let mut table = FieldTable::default();
        set_header_text(&mut table, HEADER_PROCEDURE, "fib");
        table.insert("short".into(), AMQPValue::ShortString("s".into()));
        assert_eq!(
            header_text(Some(&table), HEADER_PROCEDURE).as_deref(),
            Some("fib")
        );
        assert_eq!(header_text(Some(&table), "short").as_deref(), Some("s"));
        assert_eq!(header_text(Some(&table), "missing"), None);
        assert_eq!(header_text(None, HEADER_PROCEDURE), None);
        table.insert("number".into(), AMQPValue::LongLongInt(7));
        assert_eq!(
            header_text_strict(Some(&table), "number"),
            Err("the number header is an integer; it must be a string".to_owned())
        );
        assert_eq!(header_text_strict(Some(&table), "missing"), Ok(None));
        assert_eq!(
            header_text_strict(Some(&table), "short"),
            Ok(Some("s".to_owned()))
        );
    }
}
