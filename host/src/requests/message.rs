//! One request's AMQP side: a delivery read into a [`Request`] once, and a
//! [`Reply`] written as a message the way the wire contract says.

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{DeliveryTag, FieldTable, ShortString};
use warren_protocol::trace::{HEADER_TRACEPARENT, TraceParent};
use warren_protocol::{
    ERROR_CONTENT_TYPE, ErrorBody, HEADER_PROCEDURE, HEADER_PROCEDURE_DIGEST,
    HEADER_RETRY_AFTER_MS, HEADER_RPC_ERROR, HEADER_RPC_STATUS, STATUS_ERROR, STATUS_OK,
    header_text, header_text_strict, read_deadline, set_header_text,
};

use crate::callers::Caller;
use crate::dispatch::{Call, Reply};
use crate::telemetry;

/// One delivery from the request queue, read: what the AMQP layer needs to
/// reply and ack, and the [`Call`] dispatch decides on.
pub struct Request {
    /// Its delivery tag on the request channel, to ack it by.
    pub tag: DeliveryTag,
    /// Where its reply goes; without one there is no one to answer.
    pub reply_to: Option<ShortString>,
    /// Copied onto its reply.
    pub correlation_id: Option<ShortString>,
    /// Whether the broker delivered it before (to this host or another).
    pub redelivered: bool,
    /// The caller's span, from its `traceparent` header (none, or a bad
    /// one, starts a new trace).
    pub caller_trace: Option<TraceParent>,
    pub call: Call,
}

impl Request {
    /// Reads `delivery`; nothing about it is refused here (a header that
    /// cannot be read becomes an error reply in dispatch).
    pub fn read(delivery: Delivery) -> Self {
        let Delivery {
            delivery_tag: tag,
            properties,
            data: body,
            redelivered,
            ..
        } = delivery;
        let headers = properties.headers().as_ref();
        let correlation_id = properties.correlation_id().clone();
        let label = correlation_id
            .as_ref()
            .map_or_else(|| format!("delivery-{tag}"), |id| id.to_string());
        Request {
            tag,
            reply_to: properties.reply_to().clone(),
            redelivered,
            caller_trace: caller_trace(&properties),
            call: Call {
                procedure: header_text_strict(headers, HEADER_PROCEDURE),
                // The broker checked it: a publisher can set only its own user.
                user_id: properties.user_id().as_ref().map(ShortString::to_string),
                body,
                deadline: read_deadline(headers),
                label,
            },
            correlation_id,
        }
    }

    /// The request's span, carrying the messaging fields, and this host's
    /// part of its trace (continuing the caller's).
    pub fn span(&self) -> (tracing::Span, TraceParent) {
        let call = &self.call;
        let span = tracing::info_span!(
            "request",
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            messaging.system = "rabbitmq",
            messaging.message.conversation_id =
                self.correlation_id.as_ref().map(ShortString::as_str),
            messaging.rabbitmq.delivery_tag = self.tag,
            procedure = call.procedure.as_ref().ok().and_then(Option::as_deref),
            caller = Caller::from_user_id(call.user_id.as_deref()).label(),
            bytes = call.body.len(),
            redelivered = self.redelivered,
        );
        let trace = telemetry::continue_trace(&span, self.caller_trace);
        span.record("trace_id", tracing::field::display(trace.trace_id_hex()));
        span.record("span_id", tracing::field::display(trace.span_id_hex()));
        (span, trace)
    }
}

/// The caller's span, from the request's `traceparent` (none, or a bad
/// one, starts a new trace).
pub fn caller_trace(properties: &BasicProperties) -> Option<TraceParent> {
    header_text(properties.headers().as_ref(), HEADER_TRACEPARENT)
        .and_then(|text| TraceParent::parse(&text))
}

/// The body and properties of a reply message, as the wire contract says,
/// carrying `trace` (this host's span) as its `traceparent`. Takes the
/// reply by value so a success body (up to --max-reply-bytes) goes out
/// without a copy.
pub fn reply_message(
    reply: Reply,
    correlation_id: Option<ShortString>,
    trace: &TraceParent,
) -> (Vec<u8>, BasicProperties) {
    let mut headers = FieldTable::default();
    set_header_text(&mut headers, HEADER_TRACEPARENT, &trace.to_string());
    if let Some(name) = &reply.procedure {
        set_header_text(&mut headers, HEADER_PROCEDURE, name);
    }
    if let Some(digest) = &reply.digest {
        set_header_text(&mut headers, HEADER_PROCEDURE_DIGEST, digest);
    }
    let mut properties = BasicProperties::default();
    if let Some(id) = correlation_id {
        properties = properties.with_correlation_id(id);
    }
    let body = match reply.result {
        Ok(body) => {
            set_header_text(&mut headers, HEADER_RPC_STATUS, STATUS_OK);
            body
        }
        Err(error) => {
            set_header_text(&mut headers, HEADER_RPC_STATUS, STATUS_ERROR);
            set_header_text(&mut headers, HEADER_RPC_ERROR, error.kind.as_str());
            if let Some(wait) = error.retry_after_ms {
                set_header_text(&mut headers, HEADER_RETRY_AFTER_MS, &wait.to_string());
            }
            properties = properties.with_content_type(ERROR_CONTENT_TYPE.into());
            ErrorBody { error }.to_json()
        }
    };
    (body, properties.with_headers(headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_replies_carry_kind_and_json() {
        let reply = Reply {
            procedure: Some("fib".into()),
            digest: Some("sha256:00".into()),
            result: Err(warren_protocol::RpcError::new(
                warren_protocol::ErrorKind::ProcedureError,
                "bad",
            )),
        };
        let trace = TraceParent::new_root();
        let (body, properties) = reply_message(reply, Some("c1".into()), &trace);
        assert_eq!(
            header_text(properties.headers().as_ref(), HEADER_TRACEPARENT),
            Some(trace.to_string())
        );
        let headers = properties.headers().as_ref();
        assert_eq!(
            header_text(headers, HEADER_RPC_STATUS).as_deref(),
            Some(STATUS_ERROR)
        );
        assert_eq!(
            header_text(headers, HEADER_RPC_ERROR).as_deref(),
            Some("procedure-error")
        );
        assert_eq!(
            header_text(headers, HEADER_PROCEDURE).as_deref(),
            Some("fib")
        );
        assert_eq!(
            properties.content_type().as_ref().map(ShortString::as_str),
            Some(ERROR_CONTENT_TYPE)
        );
        assert_eq!(
            properties
                .correlation_id()
                .as_ref()
                .map(ShortString::as_str),
            Some("c1")
        );
        assert_eq!(
            body,
            br#"{"error":{"kind":"procedure-error","message":"bad"}}"#.to_vec()
        );
    }
}
