//! Refused outbound calls: why, counted by reason for the process, and
//! logged once per request.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// are not global unicast ([`forbidden`](super::address::forbidden)).
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
pub(super) struct RequestCalls {
    pub(super) received: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) span: tracing::Span,
}

impl RequestCalls {
    /// Counts a refusal of `reason`; the request's first is logged, saying
    /// `why`, naming only its `origin` (`scheme://host:port`, made only
    /// then: a looping procedure is refused many times a millisecond).
    pub(super) fn refuse(
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
