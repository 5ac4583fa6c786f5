//! Keeping the newest deploy of every procedure inside the deploy stream.
//!
//! The stream keeps only its newest bytes ([`StreamRetention`]), so a deploy
//! that is never replaced would in time fall off its old end, and a host
//! started after that would not find it. The [`Keeper`] counts the bytes
//! that follow the newest copy of each procedure's newest accepted deploy;
//! once they pass [`StreamRetention::republish_after`], a host publishes
//! that deploy again, unchanged (its signature still holds). Every host
//! reads the same stream and counts the same bytes.
//!
//! So that one host, not every host, publishes each copy, a host first
//! publishes a small *claim* (each waits a random moment first, so few
//! do); every host reads the claims in the same stream order, and the first
//! claim of a round wins: only its host publishes the copy, however long
//! that takes, and the copy ends the round for all. A claim whose copy does
//! not follow within [`CLAIM_TIMEOUT`] (its host died) lapses, and the
//! round starts again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use warren_protocol::deploy::{DeployHeaders, StreamRetention};

/// What a stream message costs besides its body (headers, the broker's
/// framing), counted generously: counting too much only re-publishes early.
pub const MESSAGE_OVERHEAD: u64 = 1024;

/// How long the other hosts wait for the copy of the host whose claim won
/// before they claim again: far longer than deflating and publishing the
/// largest module takes.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(60);

/// One procedure's newest accepted deploy, as kept in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// Its headers, to publish it again unchanged.
    pub headers: DeployHeaders,
    /// Its size in the stream.
    pub size: u64,
    /// Bytes in the stream after its newest copy.
    pub after: u64,
    /// The claim that won this round, if one did: which host publishes
    /// the copy, and when its claim was read.
    pub claimed: Option<(String, Instant)>,
}

/// What a host knows of the newest deploy of each procedure in the stream.
#[derive(Debug)]
pub struct Keeper {
    retention: StreamRetention,
    kept: BTreeMap<String, Kept>,
    /// Whether it has said that the deploys no longer fit (said once).
    said_too_large: bool,
}

impl Keeper {
    /// A keeper for a stream with `retention`.
    pub fn new(retention: StreamRetention) -> Self {
        Keeper {
            retention,
            kept: BTreeMap::new(),
            said_too_large: false,
        }
    }

    /// The stream turned out to keep `retention` (a stream declared earlier).
    pub fn set_retention(&mut self, retention: StreamRetention) {
        self.retention = retention;
    }

    /// Counts one message read from the stream, `size` bytes in all. When
    /// it completes a deploy this host accepted (or a copy of the one it
    /// accepted last), `accepted` names it, gives its headers and its
    /// `whole` size (more than `size` when it came in parts): from now on
    /// its count starts at its first part.
    pub fn read(&mut self, size: u64, accepted: Option<(String, DeployHeaders, u64)>) {
        for kept in self.kept.values_mut() {
            kept.after = kept.after.saturating_add(size);
        }
        if let Some((name, headers, whole)) = accepted {
            // A deploy of a kept version carries no module: a host that
            // keeps no copy of that version (one started later) could not
            // apply it from the stream, so it is due at once, to be
            // published again with its module attached.
            let after = if headers.kept.is_some() {
                self.retention.republish_after()
            } else {
                whole.saturating_sub(size)
            };
            self.kept.insert(
                name,
                Kept {
                    headers,
                    size: whole.max(size),
                    after,
                    claimed: None,
                },
            );
        }
    }

    /// Starts keeping a deploy this host serves that the stream does not
    /// hold (its newest copy dropped out, or the stream was declared anew):
    /// due at once, so a host puts it back for hosts that start later.
    pub fn keep_missing(&mut self, name: String, headers: DeployHeaders, size: u64) {
        let after = self.retention.republish_after();
        self.kept.entry(name).or_insert(Kept {
            headers,
            size,
            after,
            claimed: None,
        });
    }

    /// What is kept of `name`, if anything.
    pub fn kept(&self, name: &str) -> Option<Kept> {
        self.kept.get(name).cloned()
    }

    /// Stops keeping `name`: a newer deploy of it passed every check but
    /// could not be served here, so the one kept would only be refused as
    /// older.
    pub fn forget(&mut self, name: &str) {
        self.kept.remove(name);
    }

    /// Reads a claim by `host` to publish the copy of `name`'s deploy of
    /// `digest`, at `now`. It wins, and `true` is returned, when it is for
    /// the deploy kept and no other claim of this round is pending; every
    /// host reads the claims in the same order, so they all agree.
    pub fn claim(&mut self, name: &str, digest: Option<&str>, host: &str, now: Instant) -> bool {
        let Some(kept) = self.kept.get_mut(name) else {
            return false;
        };
        if kept.headers.digest.as_deref() != digest || pending(kept, now) {
            return false;
        }
        kept.claimed = Some((host.to_owned(), now));
        true
    }

    /// When a pending claim lapses, for a deploy that would be due without
    /// it: the moment to look again if its copy never comes.
    pub fn next_lapse(&self, now: Instant) -> Option<Instant> {
        let limit = self.retention.republish_after();
        self.kept
            .values()
            .filter(|kept| kept.after >= limit && pending(kept, now))
            .filter_map(|kept| kept.claimed.as_ref().map(|(_, at)| *at + CLAIM_TIMEOUT))
            .min()
    }

    /// The deploys to claim now: those with more than
    /// [`StreamRetention::republish_after`] bytes after them and no pending
    /// claim. None if the newest deploys of all procedures together take
    /// that much: copying them would only push each other out (it says so,
    /// once).
    pub fn due(&mut self, now: Instant) -> Vec<(String, Kept)> {
        let limit = self.retention.republish_after();
        let due: Vec<(String, Kept)> = self
            .kept
            .iter()
            .filter(|(_, kept)| kept.after >= limit && !pending(kept, now))
            .map(|(name, kept)| (name.clone(), kept.clone()))
            .collect();
        if due.is_empty() {
            return due;
        }
        let total: u64 = self.kept.values().map(|kept| kept.size).sum();
        if total >= limit {
            if !self.said_too_large {
                self.said_too_large = true;
                tracing::error!(
                    procedures = self.kept.len(),
                    bytes = total,
                    stream_keeps = self.retention.max_bytes,
                    "the newest deploys of all procedures together are too large for the deploy \
                     stream to keep them all: hosts started later may miss some. Keep them under \
                     {} (docs/deploying.md)",
                    limit
                );
            }
            return Vec::new();
        }
        due
    }
}

/// Whether `kept` has a claim whose copy may still come.
fn pending(kept: &Kept, now: Instant) -> bool {
    kept.claimed
        .as_ref()
        .is_some_and(|(_, at)| now.saturating_duration_since(*at) < CLAIM_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &str) -> DeployHeaders {
        DeployHeaders {
            name: Some(name.to_owned()),
            ..DeployHeaders::default()
        }
    }

    const RETENTION: StreamRetention = StreamRetention {
        max_bytes: 1000,
        segment_bytes: 200,
    };

    #[test]
    fn a_deploy_is_due_once_enough_bytes_follow_it_and_a_copy_resets_it() {
        assert_eq!(RETENTION.republish_after(), 400);
        let mut keeper = Keeper::new(RETENTION);
        keeper.read(100, Some(("a".into(), headers("a"), 100)));
        keeper.read(50, Some(("b".into(), headers("b"), 50)));
        keeper.read(299, None);
        assert!(keeper.due(Instant::now()).is_empty(), "349 bytes after a");
        keeper.read(51, None);
        let due: Vec<String> = keeper
            .due(Instant::now())
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(due, ["a"], "400 after a, 350 after b");
        keeper.read(100, Some(("a".into(), headers("a"), 100)));
        let due: Vec<String> = keeper
            .due(Instant::now())
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(due, ["b"], "the copy of a reset it; b has 450 after it");
    }

    #[test]
    fn a_deploy_in_parts_counts_from_its_first_part() {
        let mut keeper = Keeper::new(RETENTION);
        keeper.read(100, Some(("a".into(), headers("a"), 300)));
        assert_eq!(keeper.kept["a"].after, 200, "its first two parts are older");
        keeper.read(200, None);
        assert_eq!(keeper.due(Instant::now()).len(), 1);
    }

    #[test]
    fn the_first_claim_of_a_round_wins_until_its_copy_comes_or_it_lapses() {
        let mut keeper = Keeper::new(RETENTION);
        let mut a = headers("a");
        a.digest = Some("sha256:a".into());
        keeper.read(100, Some(("a".into(), a.clone(), 100)));
        keeper.read(400, None);
        let now = Instant::now();
        assert_eq!(keeper.due(now).len(), 1);
        assert!(
            !keeper.claim("a", Some("sha256:old"), "h1", now),
            "a claim for another version of a"
        );
        assert!(keeper.claim("a", Some("sha256:a"), "h1", now));
        assert!(!keeper.claim("a", Some("sha256:a"), "h2", now), "h1 won");
        assert!(keeper.due(now).is_empty(), "claimed");
        assert_eq!(keeper.next_lapse(now), Some(now + CLAIM_TIMEOUT));
        // h1 died: its claim lapses and the round starts again.
        let later = now + CLAIM_TIMEOUT;
        assert_eq!(keeper.due(later).len(), 1);
        assert!(keeper.claim("a", Some("sha256:a"), "h2", later));
        // h2's copy ends the round.
        keeper.read(100, Some(("a".into(), a, 100)));
        assert!(keeper.due(later).is_empty());
        assert_eq!(keeper.next_lapse(later), None);
        assert!(keeper.kept["a"].claimed.is_none());
    }

    #[test]
    fn nothing_is_copied_when_the_deploys_alone_fill_what_may_follow() {
        let mut keeper = Keeper::new(RETENTION);
        keeper.read(250, Some(("a".into(), headers("a"), 250)));
        keeper.read(250, Some(("b".into(), headers("b"), 250)));
        keeper.read(400, None);
        assert!(
            keeper.due(Instant::now()).is_empty(),
            "500 bytes of deploys, 400 may follow"
        );
    }
}
