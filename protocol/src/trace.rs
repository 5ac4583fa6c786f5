//! W3C trace context (<https://www.w3.org/TR/trace-context/>): the
//! `traceparent` header that lets one call be followed across caller,
//! broker and host.
//!
//! The client puts a `traceparent` on every request (a new trace, or the
//! caller's own via `Call::traceparent`); the host logs the trace id in that
//! request's span and puts its own `traceparent` (same trace, the host's
//! span id) on the reply. Only the header's format lives here; nothing is
//! exported.

use std::fmt;

/// The header's name, as the W3C spec spells it.
pub const HEADER_TRACEPARENT: &str = "traceparent";

/// A parsed `traceparent`: `00-<trace id>-<parent span id>-<flags>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// The span that sent it: 8 bytes, never all zero.
    pub span_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceParent {
    /// The start of a new trace (sampled).
    pub fn new_root() -> Self {
        TraceParent {
            trace_id: random_nonzero(),
            span_id: random_nonzero(),
            flags: 1,
        }
    }

    /// A new span in the same trace, to send onwards.
    pub fn child(&self) -> Self {
        TraceParent {
            span_id: random_nonzero(),
            ..*self
        }
    }

    /// Parses a header value. Per the spec, an unknown future version is
    /// read for its first four fields; malformed values and all-zero ids
    /// are `None` (the receiver then starts a new trace).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let mut parts = text.split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version.eq_ignore_ascii_case("ff") {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id: [u8; 16] = decode_lower_hex(trace)?;
        let span_id: [u8; 8] = decode_lower_hex(span)?;
        let [flags] = decode_lower_hex::<1>(flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }

    /// The trace id as 32 lowercase hex digits (what logs and tracing UIs show).
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The span id as 16 lowercase hex digits.
    pub fn span_id_hex(&self) -> String {
        hex::encode(self.span_id)
    }
}

impl fmt::Display for TraceParent {
    /// `00-<trace id>-<span id>-<flags>`, written in one piece: every reply
    /// carries one, and digit-by-digit formatting showed in the host's
    /// profile under load.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [b'-'; 55];
        text[..2].copy_from_slice(b"00");
        let lengths_fit = "55 bytes hold 00-, 32 + 16 + 2 hex digits and the dashes";
        hex::encode_to_slice(self.trace_id, &mut text[3..35]).expect(lengths_fit);
        hex::encode_to_slice(self.span_id, &mut text[36..52]).expect(lengths_fit);
        hex::encode_to_slice([self.flags], &mut text[53..55]).expect(lengths_fit);
        f.write_str(std::str::from_utf8(&text).expect("hex digits and dashes are ASCII"))
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn decode_lower_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    hex::decode(text).ok()?.try_into().ok()
}

/// Random ids from the thread's own CSPRNG (seeded from the OS, then in
/// user space): the host makes a span id per request, and a `getrandom`
/// system call each was measurable.
fn random_nonzero<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    while bytes == [0u8; N] {
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_round_trips() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(text).unwrap();
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.span_id_hex(), "00f067aa0ba902b7");
        assert_eq!(parsed.flags, 1);
        assert_eq!(parsed.to_string(), text);
    }

    #[test]
    fn malformed_values_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A future version may carry more fields.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more")
                .is_some()
        );
    }

    #[test]
    fn a_child_keeps_the_trace_and_gets_its_own_span() {
        let root = TraceParent::new_root();
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
        assert_eq!(TraceParent::parse(&root.to_string()), Some(root));
    }
}
