//! Refusals held back until their caller's turn ([`ReplyHolder`],
//! `--caller-hold`); the module's docs (`callers`) say why.

use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::gauge::Gauge;
use warren_protocol::RpcError;

use super::quota::Refusal;

/// The most refusals one host holds at once ([`ReplyHolder`]); past it, they
/// are answered at once. Each costs a few kilobytes (BENCHMARKS.md, "One
/// caller floods").
pub const MAX_HELD_REFUSALS: i64 = 4096;

/// Refusals held back until their caller's turn to try again
/// (`--caller-hold`); the module's docs say why.
pub struct ReplyHolder {
    /// The longest a refusal is held; zero holds none.
    longest: Duration,
    /// How many are held now (`warren_refusals_held`).
    held: Gauge,
}

/// A refusal being held: it counts against [`MAX_HELD_REFUSALS`] until
/// dropped.
#[derive(Debug)]
pub struct HeldReply {
    /// When to send it.
    pub until: Instant,
    held: Gauge,
}

impl ReplyHolder {
    /// Holds refusals for at most `longest`, counting them in `held`.
    pub fn new(longest: Duration, held: Gauge) -> Self {
        ReplyHolder { longest, held }
    }

    /// The `rate-limited` error for `refusal`, and whether to hold it back:
    /// until the caller's turn, or for `--caller-hold` if that comes first,
    /// unless the caller stops waiting before then (`deadline`) or
    /// [`MAX_HELD_REFUSALS`] are held already. A reply held until the
    /// caller's turn says to try again at once; one held for less says how
    /// much longer to wait.
    pub fn refuse(
        &self,
        refusal: Refusal,
        deadline: Option<SystemTime>,
    ) -> (RpcError, Option<HeldReply>) {
        let Refusal { why, wait } = refusal;
        let held_for = wait.min(self.longest);
        let in_time = !held_for.is_zero()
            && deadline.is_none_or(|deadline| SystemTime::now() + held_for < deadline);
        if in_time && self.held.inc() < MAX_HELD_REFUSALS {
            let held_ms = held_for.as_secs_f64() * 1000.0;
            let left = wait - held_for;
            let message = if left.is_zero() {
                format!(
                    "{why}; this reply was held {held_ms:.1} ms, until the caller's turn: try again now"
                )
            } else {
                format!(
                    "{why}; this reply was held {held_ms:.1} ms (--caller-hold); try again in {} ms",
                    left.as_millis().max(1)
                )
            };
            let hold = HeldReply {
                until: Instant::now() + held_for,
                held: self.held.clone(),
            };
            return (RpcError::rate_limited(message, left), Some(hold));
        }
        if in_time {
            self.held.dec();
        }
        let error = RpcError::rate_limited(
            format!("{why}; try again in {} ms", wait.as_millis().max(1)),
            wait,
        );
        (error, None)
    }
}

impl Drop for HeldReply {
    fn drop(&mut self) {
        self.held.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_protocol::ErrorKind;

    fn refusal(wait: Duration) -> Refusal {
        Refusal {
            why: "caller \"alice\" is over its rate".to_owned(),
            wait,
        }
    }

    #[test]
    fn a_refusal_is_held_until_its_turn_within_bounds() {
        let held = Gauge::default();
        let holding = ReplyHolder::new(Duration::from_secs(2), held.clone());
        let (error, hold) = holding.refuse(refusal(Duration::from_millis(300)), None);
        let hold = hold.expect("held: its turn is within --caller-hold");
        assert_eq!(error.kind, ErrorKind::RateLimited);
        assert_eq!(
            error.retry_after_ms,
            Some(1),
            "sent at its turn: try again now"
        );
        assert!(error.message.contains("held 300.0 ms"), "{error}");
        assert!(hold.until > Instant::now() + Duration::from_millis(250));
        assert_eq!(held.get(), 1);
        drop(hold);
        assert_eq!(held.get(), 0);

        // A turn further off than --caller-hold: held that long, then told
        // the rest.
        let (error, hold) = holding.refuse(refusal(Duration::from_secs(3)), None);
        assert!(hold.unwrap().until <= Instant::now() + Duration::from_secs(2));
        assert_eq!(error.retry_after_ms, Some(1000));
        assert!(error.message.ends_with("try again in 1000 ms"), "{error}");
        // Past the caller's deadline: answered at once.
        let soon = SystemTime::now() + Duration::from_millis(100);
        let (error, hold) = holding.refuse(refusal(Duration::from_millis(300)), Some(soon));
        assert!(hold.is_none(), "the caller stops waiting before its turn");
        assert_eq!(error.retry_after_ms, Some(300));
        assert!(error.message.ends_with("try again in 300 ms"), "{error}");
        assert_eq!(held.get(), 0);

        // No more than MAX_HELD_REFUSALS at once.
        held.set(MAX_HELD_REFUSALS);
        let (_, hold) = holding.refuse(refusal(Duration::from_millis(300)), None);
        assert!(hold.is_none());
        assert_eq!(held.get(), MAX_HELD_REFUSALS);

        // --caller-hold 0s holds nothing.
        let at_once = ReplyHolder::new(Duration::ZERO, Gauge::default());
        assert!(
            at_once
                .refuse(refusal(Duration::from_millis(1)), None)
                .1
                .is_none()
        );
    }
}
