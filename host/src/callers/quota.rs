//! One quota's accounts ([`QuotaBook`]): a token bucket and a share of
//! the slots per caller, and the turn a refused request is given.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warren_protocol::manifest::Quota;

use super::Caller;

/// Above this many accounts, idle ones (a full bucket, nothing admitted) are
/// forgotten.
const FORGET_IDLE_ABOVE: usize = 1024;

/// How long a caller over its share is told to wait before the first
/// request has finished and been measured.
const FIRST_SHARE_HINT: Duration = Duration::from_millis(10);

/// How far ahead a refused request's turn may be set, past its first
/// possible one: turns for a caller that keeps resending without waiting
/// stop piling up here.
const LATEST_TURN: Duration = Duration::from_secs(2);

/// One quota's accounts: a token bucket and a count of requests admitted
/// and not yet answered, per caller.
pub struct QuotaBook {
    quota: Quota,
    /// How many admitted requests one caller may have (its share of the
    /// slots).
    share: Option<usize>,
    /// By broker user; `None` is every request without `user_id`.
    accounts: Mutex<HashMap<Option<String>, Account>>,
    /// How long an admitted request keeps its place, on average (microseconds, an
    /// exponentially weighted mean): when a caller over its share may try
    /// again.
    place_us: AtomicU64,
}

struct Account {
    tokens: f64,
    refilled: Instant,
    admitted: usize,
    /// The turn given to this caller's last refused request.
    last_turn: Instant,
}

/// Why a request was refused, and how long until its caller's turn to try
/// again.
#[derive(Debug)]
pub struct Refusal {
    /// What was exceeded, without when to retry
    /// ([`ReplyHolder::refuse`](super::ReplyHolder::refuse) adds it).
    pub why: String,
    /// How long from now until the caller's turn.
    pub wait: Duration,
}

/// A caller's place, kept while its admitted request waits for a slot and runs;
/// nothing to give back under no quota.
pub struct Admitted {
    /// Given back when dropped.
    _place: Option<Place>,
}

struct Place {
    book: Arc<QuotaBook>,
    account: Option<String>,
    since: Instant,
}

impl QuotaBook {
    /// Accounts for `quota` over `slots` running slots.
    pub fn new(quota: Quota, slots: usize) -> Arc<Self> {
        Arc::new(QuotaBook {
            share: quota.share_of(slots),
            quota,
            accounts: Mutex::new(HashMap::new()),
            place_us: AtomicU64::new(0),
        })
    }

    /// Takes one request of `caller` into account, or refuses it, saying
    /// why and when its turn to try again comes. `procedure` names the
    /// procedure whose quota this is (none: the host's), for the message.
    pub fn admit(
        self: &Arc<Self>,
        caller: Caller<'_>,
        procedure: Option<&str>,
    ) -> Result<Admitted, Refusal> {
        if self.quota.is_empty() {
            return Ok(Admitted { _place: None });
        }
        let what = || match procedure {
            Some(name) => format!("procedure {name:?}"),
            None => "this host".to_owned(),
        };
        let now = Instant::now();
        let key = caller.account();
        let mut accounts = self.accounts.lock().expect("quota lock");
        if accounts.len() > FORGET_IDLE_ABOVE && !accounts.contains_key(&key) {
            self.forget_idle(&mut accounts, now);
        }
        let burst = f64::from(self.quota.burst_or_rate().unwrap_or(1));
        let account = accounts.entry(key.clone()).or_insert_with(|| Account {
            tokens: burst,
            refilled: now,
            admitted: 0,
            last_turn: now,
        });
        if let Some(share) = self.share
            && account.admitted >= share
        {
            // A slot of this caller's share comes free about every
            // (mean time a place is kept / share).
            let kept = match self.place_us.load(Ordering::Relaxed) {
                0 => FIRST_SHARE_HINT,
                us => Duration::from_micros(us),
            };
            let spacing = kept / u32::try_from(share).unwrap_or(u32::MAX);
            return Err(Refusal {
                why: format!(
                    "{caller} already has {} requests waiting or running on {}, \
                     its share ({}%)",
                    account.admitted,
                    what(),
                    self.quota.share.unwrap_or(100)
                ),
                wait: account.next_turn(now, kept, spacing),
            });
        }
        if let Some(rate) = self.quota.rate {
            let rate = f64::from(rate);
            let elapsed = now.duration_since(account.refilled).as_secs_f64();
            account.tokens = (account.tokens + elapsed * rate).min(burst);
            account.refilled = now;
            if account.tokens < 1.0 {
                let first = Duration::from_secs_f64((1.0 - account.tokens) / rate);
                return Err(Refusal {
                    why: format!(
                        "{caller} is over its rate on {} ({} requests a second, \
                         burst {})",
                        what(),
                        rate,
                        burst,
                    ),
                    wait: account.next_turn(now, first, Duration::from_secs_f64(1.0 / rate)),
                });
            }
            account.tokens -= 1.0;
        }
        account.admitted += 1;
        Ok(Admitted {
            _place: Some(Place {
                book: self.clone(),
                account: key,
                since: now,
            }),
        })
    }

    fn forget_idle(&self, accounts: &mut HashMap<Option<String>, Account>, now: Instant) {
        let burst = f64::from(self.quota.burst_or_rate().unwrap_or(1));
        let rate = f64::from(self.quota.rate.unwrap_or(0));
        accounts.retain(|_, account| {
            let tokens = account.tokens + now.duration_since(account.refilled).as_secs_f64() * rate;
            account.admitted > 0 || tokens < burst
        });
    }

    fn release(&self, account: &Option<String>, kept_for: Duration) {
        if let Some(account) = self.accounts.lock().expect("quota lock").get_mut(account) {
            account.admitted = account.admitted.saturating_sub(1);
        }
        // A mean over about the last 16 requests.
        let sample = u64::try_from(kept_for.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let _ = self
            .place_us
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
    fn admitted(&self, caller: Caller<'_>) -> usize {
        let accounts = self.accounts.lock().expect("quota lock");
        accounts
            .get(&caller.account())
            .map_or(0, |account| account.admitted)
    }
}

impl Account {
    /// The wait until a refused request's turn: no sooner than `first`
    /// from `now`, and `spacing` after the turn given to the refusal before
    /// it, so a caller's refused requests come back one at a time; never
    /// more than [`LATEST_TURN`] past `first`.
    fn next_turn(&mut self, now: Instant, first: Duration, spacing: Duration) -> Duration {
        let earliest = now + first;
        let turn = (self.last_turn + spacing).clamp(earliest, earliest + LATEST_TURN);
        self.last_turn = turn;
        turn - now
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.book.release(&self.account, self.since.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callers::UNIDENTIFIED_LABEL;
    use warren_protocol::ANONYMOUS_CALLER;

    const ALICE: Caller<'static> = Caller::User("alice");
    const BOB: Caller<'static> = Caller::User("bob");

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
        let admitted: Vec<Admitted> = (0..3).map(|_| book.admit(ALICE, None).unwrap()).collect();
        let refused = book.admit(ALICE, None).err().unwrap();
        assert!(refused.wait <= Duration::from_millis(100), "{refused:?}");
        assert!(refused.why.contains("\"alice\""), "{refused:?}");
        // The next refusal's turn is a token later, not the same one.
        let next = book.admit(ALICE, None).err().unwrap();
        assert!(
            next.wait >= refused.wait + Duration::from_millis(99),
            "{refused:?} then {next:?}"
        );
        // Another caller has a bucket of its own.
        assert!(book.admit(BOB, None).is_ok());
        drop(admitted);
        std::thread::sleep(Duration::from_millis(120));
        assert!(book.admit(ALICE, None).is_ok(), "a token came back");
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
        let first = book.admit(ALICE, None).unwrap();
        let _second = book.admit(ALICE, None).unwrap();
        let refused = book.admit(ALICE, None).err().unwrap();
        assert!(refused.wait > Duration::ZERO, "{refused:?}");
        assert!(book.admit(BOB, None).is_ok());
        drop(first);
        assert_eq!(book.admitted(ALICE), 1);
        assert!(book.admit(ALICE, None).is_ok());
    }

    #[test]
    fn turns_are_spread_and_never_far_past_the_first() {
        let book = QuotaBook::new(
            Quota {
                rate: Some(10),
                burst: Some(1),
                share: None,
            },
            4,
        );
        let _first = book.admit(ALICE, None).unwrap();
        let waits: Vec<Duration> = (0..100)
            .map(|_| book.admit(ALICE, None).err().unwrap().wait)
            .collect();
        // One token apart (a few microseconds pass between two calls)...
        for pair in waits[..15].windows(2) {
            assert!(pair[1] >= pair[0] + Duration::from_millis(99), "{pair:?}");
        }
        // ...until LATEST_TURN past the first.
        let last = *waits.last().unwrap();
        assert!(last <= LATEST_TURN + Duration::from_millis(100), "{last:?}");
    }

    #[test]
    fn no_quota_keeps_no_accounts() {
        let book = QuotaBook::new(Quota::default(), 4);
        for _ in 0..10 {
            let _held = book.admit(ALICE, None).unwrap();
        }
        assert!(book.accounts.lock().unwrap().is_empty());
    }

    #[test]
    fn no_identity_has_one_account_of_its_own() {
        let book = QuotaBook::new(
            Quota {
                rate: Some(1),
                burst: Some(1),
                share: None,
            },
            4,
        );
        let anonymous = Caller::User(ANONYMOUS_CALLER);
        let label = Caller::User(UNIDENTIFIED_LABEL);
        let _alice = book.admit(ALICE, None).unwrap();
        // Leaving user_id out does not escape alice's own quota: it is
        // another account, shared by every request without one.
        let _first = book.admit(Caller::Unidentified, None).unwrap();
        let refused = book.admit(Caller::Unidentified, None).err().unwrap();
        assert!(refused.why.contains("without user_id"), "{refused:?}");
        assert!(book.admit(ALICE, None).is_err(), "alice's own stays spent");
        // Users named like what stood (or stands) for no identity have
        // accounts of their own.
        let _anonymous = book.admit(anonymous, None).unwrap();
        let _label = book.admit(label, None).unwrap();
        assert!(book.admit(anonymous, None).is_err());
        assert_eq!(book.admitted(Caller::Unidentified), 1);
        assert_eq!(book.admitted(anonymous), 1);
        assert_eq!(book.accounts.lock().unwrap().len(), 4);
    }
}
