//! Keeping the newest deploy of every procedure inside the deploy stream.
//!
//! The stream keeps only its newest bytes ([`StreamRetention`]), so a deploy
//! that is never replaced would in time fall off its old end, and a host
//! started after that would not find it. The [`Keeper`] counts the bytes
//! that follow the newest copy of each procedure's newest accepted deploy;
//! once they pass [`StreamRetention::republish_after`], the host publishes
//! that deploy again, unchanged (its signature still holds). Every host
//! reads the same stream and counts the same bytes, so whichever host goes
//! first (each waits a random moment) resets the count for all.

use std::collections::BTreeMap;

use warren_protocol::deploy::{DeployHeaders, StreamRetention};

/// What a stream message costs besides its body (headers, the broker's
/// framing), counted generously: counting too much only re-publishes early.
pub const MESSAGE_OVERHEAD: u64 = 1024;

/// One procedure's newest accepted deploy, as kept in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// Its headers, to publish it again unchanged.
    pub headers: DeployHeaders,
    /// Its size in the stream.
    pub size: u64,
    /// Bytes in the stream after its newest copy.
    pub after: u64,
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
            self.kept.insert(
                name,
                Kept {
                    headers,
                    size: whole.max(size),
                    after: whole.saturating_sub(size),
                },
            );
        }
    }

    /// Stops keeping `name`: a newer deploy of it passed every check but
    /// could not be served here, so the one kept would only be refused as
    /// older.
    pub fn forget(&mut self, name: &str) {
        self.kept.remove(name);
    }

    /// The deploys to publish again now: those with more than
    /// [`StreamRetention::republish_after`] bytes after them. None if the
    /// newest deploys of all procedures together take that much: copying
    /// them would only push each other out (it says so, once).
    pub fn due(&mut self) -> Vec<(String, Kept)> {
        let limit = self.retention.republish_after();
        let due: Vec<(String, Kept)> = self
            .kept
            .iter()
            .filter(|(_, kept)| kept.after >= limit)
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
        assert!(keeper.due().is_empty(), "349 bytes after a");
        keeper.read(51, None);
        let due: Vec<String> = keeper.due().into_iter().map(|(name, _)| name).collect();
        assert_eq!(due, ["a"], "400 after a, 350 after b");
        keeper.read(100, Some(("a".into(), headers("a"), 100)));
        let due: Vec<String> = keeper.due().into_iter().map(|(name, _)| name).collect();
        assert_eq!(due, ["b"], "the copy of a reset it; b has 450 after it");
    }

    #[test]
    fn a_deploy_in_parts_counts_from_its_first_part() {
        let mut keeper = Keeper::new(RETENTION);
        keeper.read(100, Some(("a".into(), headers("a"), 300)));
        assert_eq!(keeper.kept["a"].after, 200, "its first two parts are older");
        keeper.read(200, None);
        assert_eq!(keeper.due().len(), 1);
    }

    #[test]
    fn nothing_is_copied_when_the_deploys_alone_fill_what_may_follow() {
        let mut keeper = Keeper::new(RETENTION);
        keeper.read(250, Some(("a".into(), headers("a"), 250)));
        keeper.read(250, Some(("b".into(), headers("b"), 250)));
        keeper.read(400, None);
        assert!(
            keeper.due().is_empty(),
            "500 bytes of deploys, 400 may follow"
        );
    }
}
