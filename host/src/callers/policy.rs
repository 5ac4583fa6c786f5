//! Who may call a procedure ([`may_call`]), and the broker users whose
//! names could be taken for no identity ([`AmbiguousNames`]).

use std::sync::atomic::Ordering;

use super::{Caller, UNIDENTIFIED_LABEL};

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
    use warren_protocol::ANONYMOUS_CALLER;

    const ALICE: Caller<'static> = Caller::User("alice");
    const BOB: Caller<'static> = Caller::User("bob");

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
