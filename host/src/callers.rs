//! Who is calling, and how much they may use.
//!
//! A request's caller is its AMQP `user_id` property, or
//! [`warren_protocol::ANONYMOUS_CALLER`] without one. A procedure's manifest may say who may
//! call it (`callers`, checked by the [`crate::dispatch`] rules) and how much
//! each caller may use of it (`[quota]`); the host has per-caller defaults
//! across all its procedures (`--caller-rate`, `--caller-burst`,
//! `--caller-share`). A [`QuotaBook`] keeps one such quota's accounts.
//!
//! Why it is built this way:
//! - **The broker is the authority on identity.** RabbitMQ refuses a
//!   message whose `user_id` is not the user its publisher logged in as
//!   (unless that user has the `impersonator` tag), so the host reads the
//!   property and trusts it; it authenticates no one itself.
//! - **Excess is turned away as it is consumed, not queued.** The request
//!   queue is first-in first-out: a flood stands in front of everyone else.
//!   A request over quota is answered `rate-limited` at once, without
//!   running anything, so a flood drains from the queue at the speed of a
//!   reply rather than the speed of a procedure.
//! - **A rate is a token bucket** per caller per host: `rate` tokens a
//!   second, at most `burst` saved up. The reply says when the next token
//!   comes (`x-retry-after-ms`), so a polite caller waits that long.
//! - **A share bounds what one caller holds at once**: its requests waiting
//!   for a slot or running. With every caller below 100%, one caller can
//!   never hold every slot, and another caller's request finds one free.
//! - **Accounts are per host and forgotten when idle**: nothing is shared
//!   between hosts (a fleet of N hosts lets a caller make N times the rate),
//!   and a caller with a full bucket and nothing running is dropped once
//!   there are many, so memory stays bounded however many users call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warren_protocol::RpcError;
use warren_protocol::manifest::Quota;

/// Above this many accounts, idle ones (a full bucket, nothing held) are
/// forgotten.
const FORGET_IDLE_ABOVE: usize = 1024;

/// How long a caller over its share is told to wait before the first
/// request has finished and been measured.
const FIRST_SHARE_HINT: Duration = Duration::from_millis(10);

/// One quota's accounts: a token bucket and a count of requests held, per
/// caller.
pub struct QuotaBook {
    quota: Quota,
    /// How many requests one caller may hold (its share of the slots).
    share: Option<usize>,
    accounts: Mutex<HashMap<String, Account>>,
    /// How long a request holds its place, on average (microseconds, an
    /// exponentially weighted mean): when a caller over its share may try
    /// again.
    held_us: AtomicU64,
}

struct Account {
    tokens: f64,
    refilled: Instant,
    held: usize,
}

/// A caller's place, held while its request waits for a slot and runs;
/// nothing to give back under no quota.
pub struct Held {
    /// Given back when dropped.
    _place: Option<Place>,
}

struct Place {
    book: Arc<QuotaBook>,
    caller: String,
    since: Instant,
}

impl QuotaBook {
    /// Accounts for `quota` over `slots` running slots.
    pub fn new(quota: Quota, slots: usize) -> Arc<Self> {
        Arc::new(QuotaBook {
            share: quota.share_of(slots),
            quota,
            accounts: Mutex::new(HashMap::new()),
            held_us: AtomicU64::new(0),
        })
    }

    /// Takes one request of `caller` into account, or refuses it with a
    /// `rate-limited` error that says why and when to try again. `procedure`
    /// names the procedure whose quota this is (none: the host's), for the
    /// message.
    pub fn admit(
        self: &Arc<Self>,
        caller: &str,
        procedure: Option<&str>,
    ) -> Result<Held, RpcError> {
        if self.quota.is_empty() {
            return Ok(Held { _place: None });
        }
        let what = || match procedure {
            Some(name) => format!("procedure {name:?}"),
            None => "this host".to_owned(),
        };
        let now = Instant::now();
        let mut accounts = self.accounts.lock().expect("quota lock");
        if accounts.len() > FORGET_IDLE_ABOVE && !accounts.contains_key(caller) {
            self.forget_idle(&mut accounts, now);
        }
        let burst = f64::from(self.quota.burst_or_rate().unwrap_or(1));
        let account = accounts
            .entry(caller.to_owned())
            .or_insert_with(|| Account {
                tokens: burst,
                refilled: now,
                held: 0,
            });
        if let Some(share) = self.share
            && account.held >= share
        {
            let wait = match self.held_us.load(Ordering::Relaxed) {
                0 => FIRST_SHARE_HINT,
                us => Duration::from_micros(us),
            };
            return Err(RpcError::rate_limited(
                format!(
                    "caller {caller:?} already has {} requests waiting or running on {}, \
                     its share ({}%); try again when one has finished",
                    account.held,
                    what(),
                    self.quota.share.unwrap_or(100)
                ),
                wait,
            ));
        }
        if let Some(rate) = self.quota.rate {
            let rate = f64::from(rate);
            let elapsed = now.duration_since(account.refilled).as_secs_f64();
            account.tokens = (account.tokens + elapsed * rate).min(burst);
            account.refilled = now;
            if account.tokens < 1.0 {
                let wait = Duration::from_secs_f64((1.0 - account.tokens) / rate);
                return Err(RpcError::rate_limited(
                    format!(
                        "caller {caller:?} is over its rate on {} ({} requests a second, \
                         burst {}); try again in {} ms",
                        what(),
                        rate,
                        burst,
                        wait.as_millis().max(1)
                    ),
                    wait,
                ));
            }
            account.tokens -= 1.0;
        }
        account.held += 1;
        Ok(Held {
            _place: Some(Place {
                book: self.clone(),
                caller: caller.to_owned(),
                since: now,
            }),
        })
    }

    fn forget_idle(&self, accounts: &mut HashMap<String, Account>, now: Instant) {
        let burst = f64::from(self.quota.burst_or_rate().unwrap_or(1));
        let rate = f64::from(self.quota.rate.unwrap_or(0));
        accounts.retain(|_, account| {
            let tokens = account.tokens + now.duration_since(account.refilled).as_secs_f64() * rate;
            account.held > 0 || tokens < burst
        });
    }

    fn release(&self, caller: &str, held_for: Duration) {
        if let Some(account) = self.accounts.lock().expect("quota lock").get_mut(caller) {
            account.held = account.held.saturating_sub(1);
        }
        // A mean over about the last 16 requests.
        let sample = u64::try_from(held_for.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let _ = self
            .held_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |mean| {
                Some(if mean == 0 {
                    sample
                } else {
                    mean - mean / 16 + sample / 16
                })
            });
    }

    /// How many requests `caller` holds now (for tests and status).
    #[cfg(test)]
    fn held(&self, caller: &str) -> usize {
        let accounts = self.accounts.lock().expect("quota lock");
        accounts.get(caller).map_or(0, |account| account.held)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.book.release(&self.caller, self.since.elapsed());
    }
}

/// Whether a procedure whose manifest says `callers` (none: everyone) may
/// be called by `caller`.
pub fn may_call(callers: Option<&[String]>, caller: &str) -> bool {
    callers.is_none_or(|patterns| {
        patterns
            .iter()
            .any(|pattern| warren_protocol::manifest::name_matches(pattern, caller))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_protocol::{ANONYMOUS_CALLER, ErrorKind};

    #[test]
    fn a_rate_refuses_past_its_burst_and_says_when_the_next_token_comes() {
        let book = QuotaBook::new(
            Quota {
                rate: Some(10),
                burst: Some(3),
                share: None,
            },
            4,
        );
        let held: Vec<Held> = (0..3).map(|_| book.admit("alice", None).unwrap()).collect();
        let refused = book.admit("alice", None).err().unwrap();
        assert_eq!(refused.kind, ErrorKind::RateLimited);
        let wait = refused.retry_after().unwrap();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(refused.message.contains("\"alice\""), "{refused}");
        // Another caller has a bucket of its own.
        assert!(book.admit("bob", None).is_ok());
        drop(held);
        std::thread::sleep(Duration::from_millis(120));
        assert!(book.admit("alice", None).is_ok(), "a token came back");
    }

    #[test]
    fn a_share_bounds_what_one_caller_holds_at_once() {
        let book = QuotaBook::new(
            Quota {
                share: Some(50),
                ..Quota::default()
            },
            4,
        );
        let first = book.admit("alice", None).unwrap();
        let _second = book.admit("alice", None).unwrap();
        let refused = book.admit("alice", None).err().unwrap();
        assert_eq!(refused.kind, ErrorKind::RateLimited);
        assert!(refused.retry_after().is_some());
        assert!(book.admit("bob", None).is_ok());
        drop(first);
        assert_eq!(book.held("alice"), 1);
        assert!(book.admit("alice", None).is_ok());
    }

    #[test]
    fn no_quota_keeps_no_accounts() {
        let book = QuotaBook::new(Quota::default(), 4);
        for _ in 0..10 {
            let _held = book.admit("alice", None).unwrap();
        }
        assert!(book.accounts.lock().unwrap().is_empty());
    }

    #[test]
    fn callers_match_names_and_patterns_and_none_means_everyone() {
        let callers = ["alice".to_owned(), "billing-*".to_owned()];
        assert!(may_call(Some(&callers), "alice"));
        assert!(may_call(Some(&callers), "billing-eu"));
        assert!(!may_call(Some(&callers), "bob"));
        assert!(!may_call(Some(&callers), ANONYMOUS_CALLER));
        assert!(may_call(None, ANONYMOUS_CALLER));
        assert!(may_call(Some(&["*".to_owned()]), ANONYMOUS_CALLER));
    }
}
