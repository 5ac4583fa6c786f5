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
//!
//! Here: [`Caller`]. Beside it: `quota` ([`QuotaBook`] and its
//! [`Refusal`]s), `hold` ([`ReplyHolder`]) and `policy` ([`may_call`],
//! [`AmbiguousNames`]).

mod hold;
mod policy;
mod quota;

pub use hold::{HeldReply, ReplyHolder};
pub use policy::{AmbiguousNames, may_call};
pub use quota::{QuotaBook, Refusal};

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

#[cfg(test)]
mod tests {
    use super::*;
    use warren_protocol::ANONYMOUS_CALLER;

    const ALICE: Caller<'static> = Caller::User("alice");

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
}
