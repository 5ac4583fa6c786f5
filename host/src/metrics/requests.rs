//! The request metrics: outcomes by procedure and by caller, durations,
//! what is running, and the timer that records each request.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use prometheus_client::metrics::gauge::Gauge;
use warren_protocol::ErrorKind;

use super::Metrics;
use super::labels::{CallerLabels, MAX_CALLER_LABELS, ProcedureLabels, RequestLabels};

/// Requests answered since the host started, for `warren status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// With success.
    pub served: u64,
    /// With an error reply (the two below included).
    pub failed: u64,
    /// Refused: the caller may not call the procedure.
    pub forbidden: u64,
    /// Refused: the caller was over a quota.
    pub rate_limited: u64,
}

impl Metrics {
    /// A request starts running; the guard records how it ended.
    pub fn request_started(self: &Arc<Self>) -> RequestTimer {
        self.in_flight.inc();
        RequestTimer {
            metrics: self.clone(),
            started: Instant::now(),
        }
    }

    /// The count of refusals held, for [`crate::callers::ReplyHolder`] to keep.
    pub fn refusals_held(&self) -> Gauge {
        self.refusals_held.clone()
    }

    /// A request was not run: its caller had stopped waiting.
    pub fn caller_gone(&self, procedure: Option<&str>) {
        self.callers_gone
            .get_or_create(&ProcedureLabels {
                procedure: procedure.unwrap_or_default().to_owned(),
            })
            .inc();
    }

    /// Requests answered since the host started, by outcome.
    pub fn totals(&self) -> Totals {
        Totals {
            served: self.served.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            forbidden: self.forbidden.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
        }
    }

    /// `caller` as a label: itself while fewer than [`MAX_CALLER_LABELS`]
    /// callers have one, else `other`.
    fn caller_label(&self, caller: &str) -> String {
        let known = self.caller_labels.read().expect("caller labels lock");
        if known.contains(caller) {
            return caller.to_owned();
        }
        let full = known.len() >= MAX_CALLER_LABELS;
        drop(known);
        if full {
            return "other".to_owned();
        }
        let mut known = self.caller_labels.write().expect("caller labels lock");
        if known.len() >= MAX_CALLER_LABELS {
            return "other".to_owned();
        }
        known.insert(caller.to_owned());
        caller.to_owned()
    }

    /// Requests running now, and the slots for them.
    pub fn load(&self) -> (i64, i64) {
        (self.in_flight.get(), self.slots.get())
    }
}

/// Records one request's outcome and duration when it finishes; a request
/// whose task ends without an outcome (a panic) only leaves the in-flight
/// count.
pub struct RequestTimer {
    metrics: Arc<Metrics>,
    started: Instant,
}

impl RequestTimer {
    /// The request of `caller` was answered by (or asked for)
    /// `procedure`, with `error` (its kind) or success.
    pub fn finish(self, procedure: Option<&str>, caller: &str, error: Option<ErrorKind>) {
        let procedure = procedure.unwrap_or_default().to_owned();
        let metrics = &self.metrics;
        let (status, kind) = match error {
            None => {
                metrics.served.fetch_add(1, Ordering::Relaxed);
                ("ok", "")
            }
            Some(kind) => {
                metrics.failed.fetch_add(1, Ordering::Relaxed);
                ("error", kind.as_str())
            }
        };
        let outcome = match error {
            None => "ok",
            Some(ErrorKind::Forbidden) => {
                metrics.forbidden.fetch_add(1, Ordering::Relaxed);
                "forbidden"
            }
            Some(ErrorKind::RateLimited) => {
                metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                "rate-limited"
            }
            Some(_) => "error",
        };
        metrics
            .by_caller
            .get_or_create(&CallerLabels {
                caller: metrics.caller_label(caller),
                outcome,
            })
            .inc();
        metrics
            .durations
            .get_or_create(&ProcedureLabels {
                procedure: procedure.clone(),
            })
            .observe(self.started.elapsed().as_secs_f64());
        metrics
            .requests
            .get_or_create(&RequestLabels {
                procedure,
                status,
                kind,
            })
            .inc();
    }
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn callers_past_the_first_64_are_counted_as_other() {
        let metrics = Arc::new(Metrics::new(4, Duration::from_secs(10)));
        for n in 0..MAX_CALLER_LABELS + 10 {
            metrics
                .request_started()
                .finish(Some("fib"), &format!("user-{n}"), None);
        }
        let text = metrics.encode([], 0, &crate::sandbox::http_refusals());
        assert!(
            text.contains(r#"{caller="user-0",outcome="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"{caller="other",outcome="ok"} 10"#),
            "{text}"
        );
        assert_eq!(
            text.matches("warren_caller_requests_total{").count(),
            MAX_CALLER_LABELS + 1
        );
    }
}
