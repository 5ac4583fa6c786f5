//! Who is calling, and how much they may use.
//!
//! A request's [`Caller`] is the broker user in its AMQP `user_id`
//! property, or [`Caller::Unidentified`] without one. A procedure's
//! manifest may say who may call it (`callers`, `callers-anonymous`,
//! checked by the [`crate::dispatch`] rules) and how much each caller may
//! use of it (`[quota]`); the host has per-caller defaults across all its
//! procedures (`--caller-rate`, `--caller-burst`, `--caller-share`) and
//! can refuse every request without `user_id` (`--refuse-anonymous`). A
//! [`QuotaBook`] keeps one such quota's accounts.
//!
//! Why it is built this way:
//! - **The broker is the authority on identity.** RabbitMQ refuses a
//!   message whose `user_id` is not the user its publisher logged in as
//!   (unless that user has the `impersonator` tag), so the host reads the
//!   property and trusts it; it authenticates no one itself.
//! - **No identity is not a name.** A request without `user_id` is not a
//!   user called `anonymous`: no `callers` name or pattern (not even `*`)
//!   matches it, only `callers-anonymous = true` lets it in beside
//!   `callers`, and its quota account is one of its own, apart from every
//!   user's (a user really named `anonymous` included). Otherwise anyone
//!   refused under their own name could be let in by leaving `user_id` out
//!   of a pattern like `a*`, and escape their own quota the same way.
//! - **Excess is taken off the queue as it is consumed, not run.** The
//!   request queue is first-in first-out: a flood stands in front of
//!   everyone else. A request over quota is acked at once, without running
//!   anything, so a flood drains from the queue at the speed of a reply
//!   rather than the speed of a procedure.
//! - **Each refusal is given a turn.** A caller's refused requests are
//!   given turns one token (or one share's worth of a slot) apart, and the
//!   reply says when (`x-retry-after-ms`), so a polite caller's refused
//!   calls come back one at a time rather than together.
//! - **The reply is held until that turn** ([`ReplyHolder`], `--caller-hold`).
//!   A caller that resends every refusal at once would otherwise keep its
//!   whole flood cycling through the queue in front of everyone else, at
//!   the cost of a delivery and a reply per refusal (BENCHMARKS.md, "One
//!   caller floods"). Held, its requests wait in this host's memory, not
//!   in the queue: the request is acked when refused (a refusal has no
//!   effect to lose) and only its small reply is kept, so holding takes no
//!   room in the prefetch window. A turn further off is held for
//!   `--caller-hold` and the reply says how much longer to wait, so even a
//!   caller far over its rate resends at most once per `--caller-hold` per
//!   request. The number held is bounded; past it, or past the caller's
//!   deadline, a refusal is answered at once.
//! - **A rate is a token bucket** per caller per host: `rate` tokens a
//!   second, at most `burst` saved up.
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
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::gauge::Gauge;
use warren_protocol::RpcError;
use warren_protocol::manifest::Quota;

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

/// The most refusals one host holds at once ([`ReplyHolder`]); past it, they
/// are answered at once. Each costs a few kilobytes (BENCHMARKS.md, "One
/// caller floods").
pub const MAX_HELD_REFUSALS: i64 = 4096;

/// How identity-less callers are labelled in metrics, spans and log lines:
/// not a name RabbitMQ hands out by default, and not `anonymous`, which
/// older hosts used for them and a broker user can be called.
pub const UNIDENTIFIED_LABEL: &str = "(none)";

/// Who sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Caller<'a> {
    /// The broker user the request's `user_id` names, which the broker
    /// checked.
    User(&'a str),
    /// A request without `user_id`: no identity the broker vouched for.
    /// Not a name: no `callers` pattern matches it.
    Unidentified,
}

impl<'a> Caller<'a> {
    /// The caller of a request whose `user_id` property is `user_id`.
    pub fn from_user_id(user_id: Option<&'a str>) -> Self {
        user_id.map_or(Caller::Unidentified, Caller::User)
    }

    /// Its label in metrics, spans and log lines: the user's name, or
    /// [`UNIDENTIFIED_LABEL`].
    pub fn label(self) -> &'a str {
        match self {
            Caller::User(name) => name,
            Caller::Unidentified => UNIDENTIFIED_LABEL,
        }
    }

    /// Its account in a [`QuotaBook`]: `None` is the one account all
    /// identity-less requests share, which no user's name can reach.
    fn account(self) -> Option<String> {
        match self {
            Caller::User(name) => Some(name.to_owned()),
            Caller::Unidentified => None,
        }
    }
}

impl std::fmt::Display for Caller<'_> {
    /// `caller "alice"`, or what an identity-less caller is, for messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::User(name) => write!(f, "caller {name:?}"),
            Caller::Unidentified => f.write_str(
                "the caller without user_id (every request without one, counted together)",
            ),
        }
    }
}

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
    /// What was exceeded, without when to retry ([`ReplyHolder::refuse`] adds it).
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

/// Whether a procedure whose manifest says `callers` (none: everyone) and
/// `callers-anonymous` (`anonymous`) may be called by `caller`. Patterns
/// match broker users only; a caller without identity is let in by
/// `anonymous` alone (or by there being no `callers`).
pub fn may_call(callers: Option<&[String]>, anonymous: bool, caller: Caller<'_>) -> bool {
    let Some(patterns) = callers else {
        return true;
    };
    match caller {
        Caller::User(name) => patterns
            .iter()
            .any(|pattern| warren_protocol::manifest::name_matches(pattern, name)),
        Caller::Unidentified => anonymous,
    }
}

/// Broker user names that identity-less callers could be mistaken for:
/// each is warned about once per host, the first time a request comes
/// from it ([`AmbiguousNames::first_time`]).
#[derive(Default)]
pub struct AmbiguousNames {
    anonymous: std::sync::atomic::AtomicBool,
    label: std::sync::atomic::AtomicBool,
}

impl AmbiguousNames {
    /// When `caller` is a broker user whose name could be taken for a
    /// caller without identity, and this is the first request this host
    /// sees from it: why, to be warned about. `None` otherwise.
    pub fn first_time(&self, caller: Caller<'_>) -> Option<&'static str> {
        let (seen, why) = match caller {
            Caller::User(warren_protocol::ANONYMOUS_CALLER) => (
                &self.anonymous,
                "a broker user named \"anonymous\" calls this host: older Warren hosts \
                 logged and counted requests without user_id as \"anonymous\", so in their \
                 logs and metrics this user cannot be told from callers without identity. \
                 This host keeps them apart (callers without user_id are \"(none)\", with a \
                 quota account of their own, and match no callers pattern); consider renaming \
                 the user",
            ),
            Caller::User(UNIDENTIFIED_LABEL) => (
                &self.label,
                "a broker user named \"(none)\" calls this host: metrics and log lines label \
                 callers without user_id \"(none)\", so there this user cannot be told from \
                 them (its quota account and callers matching stay its own); consider \
                 renaming the user",
            ),
            _ => return None,
        };
        (!seen.swap(true, Ordering::Relaxed)).then_some(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_protocol::{ANONYMOUS_CALLER, ErrorKind};

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

    #[test]
    fn no_quota_keeps_no_accounts() {
        let book = QuotaBook::new(Quota::default(), 4);
        for _ in 0..10 {
            let _held = book.admit(ALICE, None).unwrap();
        }
        assert!(book.accounts.lock().unwrap().is_empty());
    }

    #[test]
    fn callers_match_names_and_patterns_and_none_means_everyone() {
        let callers = ["alice".to_owned(), "billing-*".to_owned()];
        assert!(may_call(Some(&callers), false, ALICE));
        assert!(may_call(Some(&callers), false, Caller::User("billing-eu")));
        assert!(!may_call(Some(&callers), false, BOB));
        assert!(may_call(None, false, BOB), "no callers: everyone");
        assert!(may_call(None, false, Caller::Unidentified));
    }

    #[test]
    fn no_identity_matches_no_pattern_only_callers_anonymous() {
        let none = Caller::Unidentified;
        // The patterns that matched the old "anonymous" caller.
        for pattern in ["*", "a*", "*s", "anonymous", "an*mous", "(none)", "*none*"] {
            let callers = [pattern.to_owned()];
            assert!(!may_call(Some(&callers), false, none), "{pattern}");
            assert!(may_call(Some(&callers), true, none), "{pattern}");
        }
        // A user who is refused under their own name is refused without it
        // too: with callers = ["a*"], bob is out either way.
        let callers = ["a*".to_owned()];
        assert!(!may_call(Some(&callers), false, BOB));
        assert!(!may_call(Some(&callers), false, none));
        // callers-anonymous widens the list for no identity only.
        assert!(!may_call(Some(&callers), true, BOB));
        assert!(may_call(Some(&callers), true, ALICE));
        // A broker user named anonymous is a user like any other.
        let user = Caller::User(ANONYMOUS_CALLER);
        assert!(may_call(Some(&callers), false, user));
        assert!(!may_call(Some(&["b*".to_owned()]), true, user));
        assert!(may_call(Some(&["*".to_owned()]), false, user));
    }

    #[test]
    fn a_caller_is_its_user_id_or_no_one() {
        assert_eq!(Caller::from_user_id(Some("alice")), ALICE);
        assert_eq!(Caller::from_user_id(None), Caller::Unidentified);
        assert_eq!(
            Caller::from_user_id(Some(ANONYMOUS_CALLER)),
            Caller::User("anonymous")
        );
        assert_ne!(
            Caller::from_user_id(Some(ANONYMOUS_CALLER)),
            Caller::Unidentified
        );
        assert_eq!(ALICE.label(), "alice");
        assert_eq!(Caller::Unidentified.label(), UNIDENTIFIED_LABEL);
        assert_eq!(ALICE.to_string(), "caller \"alice\"");
        assert!(Caller::Unidentified.to_string().contains("without user_id"));
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

    #[test]
    fn users_named_like_no_identity_are_warned_about_once() {
        let names = AmbiguousNames::default();
        assert_eq!(names.first_time(ALICE), None);
        assert_eq!(names.first_time(Caller::Unidentified), None);
        let why = names.first_time(Caller::User(ANONYMOUS_CALLER)).unwrap();
        assert!(why.contains("\"anonymous\""), "{why}");
        assert_eq!(names.first_time(Caller::User(ANONYMOUS_CALLER)), None);
        assert!(names.first_time(Caller::User(UNIDENTIFIED_LABEL)).is_some());
        assert_eq!(names.first_time(Caller::User(UNIDENTIFIED_LABEL)), None);
        assert_eq!(names.first_time(Caller::User("Anonymous")), None);
    }
}
