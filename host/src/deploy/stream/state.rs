//! What a host knows of its queue's deploy stream across connections: the
//! offset it has read up to (so a reconnect resumes there instead of
//! replaying the whole history), the [`Keeper`]'s counts, and the deploys
//! read only in part so far.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lapin::types::{AMQPValue, FieldTable};
use warren_protocol::deploy::{DeployHeaders, StreamRetention};

use super::message::MessageRead;
use crate::deploy::keeper::Keeper;
use crate::deploy::parts::Assembler;

/// What a host knows of its queue's deploy stream, kept across connections:
/// the offset it has read up to, and the [`Keeper`]'s counts.
#[derive(Debug, Clone)]
pub struct StreamState(Arc<Mutex<State>>);

#[derive(Debug)]
pub(super) struct State {
    /// Longest random wait before claiming
    /// ([`super::republish::REPUBLISH_JITTER`]).
    pub(super) jitter: Duration,
    /// Offset of the last message handled.
    pub(super) position: Option<u64>,
    pub(super) keeper: Keeper,
    /// Deploys in parts read only in part so far.
    pub(super) parts: Assembler,
}

impl StreamState {
    /// A host that has read nothing yet, of a stream declared with
    /// `retention`, waiting at most `jitter` before it claims a copy.
    pub fn new(retention: StreamRetention, jitter: Duration) -> Self {
        StreamState(Arc::new(Mutex::new(State {
            jitter,
            position: None,
            keeper: Keeper::new(retention),
            parts: Assembler::default(),
        })))
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn position(&self) -> Option<u64> {
        self.lock().position
    }

    /// Forgets where this host stopped, and the deploys it read in part:
    /// the stream was deleted and declared anew, so it is read again from
    /// its start.
    pub(super) fn start_over(&self) {
        let mut state = self.lock();
        state.position = None;
        state.parts = Assembler::default();
    }
}

/// Where a consumer of the stream starts (`x-stream-offset`): after the
/// last message handled, or at the stream's start the first time.
pub fn start_offset(position: Option<u64>) -> AMQPValue {
    match position {
        None => AMQPValue::LongString("first".into()),
        Some(last) => AMQPValue::LongLongInt(i64::try_from(last + 1).unwrap_or(i64::MAX)),
    }
}

/// What a stream message was for the [`Keeper`], when it was the newest
/// deploy of its name.
#[derive(Clone)]
pub enum KeeperUpdate {
    /// Served by this host: from now on, the one to keep.
    Serving(String, DeployHeaders),
    /// Passed every check but failed to compile or save here: this host
    /// no longer keeps anything of that name (an older deploy would only
    /// be refused as older).
    Unserved(String),
}

impl KeeperUpdate {
    /// What a settled deploy of `name` with these message `headers` is for
    /// the keeper: one `accepted` (or a `copy` of the one accepted) is kept,
    /// one that was `verified` but not served is no longer, and any other
    /// changes nothing. A copy without its module (a deploy of a kept
    /// version put back into the stream by anyone) changes nothing either:
    /// only a new one makes a host publish it again with its module.
    pub fn of(
        name: String,
        accepted: bool,
        copy: bool,
        verified: bool,
        headers: Option<&FieldTable>,
    ) -> Option<Self> {
        if accepted {
            let headers = DeployHeaders::read(headers);
            if copy && headers.kept.is_some() {
                return None;
            }
            Some(KeeperUpdate::Serving(name, headers))
        } else if verified {
            Some(KeeperUpdate::Unserved(name))
        } else {
            None
        }
    }
}

impl State {
    /// Counts every message read for the [`Keeper`] (claims too), in
    /// stream order, each with its [`KeeperUpdate`] if it has one, and
    /// moves the position past them. Returns the procedures whose copy
    /// this host (`me`) won the claim to publish.
    pub(super) fn account(
        &mut self,
        reads: Vec<MessageRead>,
        updates: Vec<Option<KeeperUpdate>>,
        me: &str,
        now: Instant,
    ) -> Vec<String> {
        let mut won = Vec::new();
        for (read, update) in reads.into_iter().zip(updates) {
            if let Some(claim) = &read.claim {
                let first =
                    self.keeper
                        .claim(&claim.name, claim.digest.as_deref(), &claim.host, now);
                if first && claim.host == me {
                    won.push(claim.name.clone());
                }
            }
            match update {
                Some(KeeperUpdate::Serving(name, headers)) => {
                    self.keeper
                        .read(read.size, Some((name, headers, read.whole)));
                }
                Some(KeeperUpdate::Unserved(name)) => {
                    self.keeper.forget(&name);
                    self.keeper.read(read.size, None);
                }
                None => self.keeper.read(read.size, None),
            }
            if let Some(offset) = read.offset {
                self.position = Some(self.position.map_or(offset, |last| last.max(offset)));
            }
        }
        won
    }
}

#[cfg(test)]
mod tests {
    use warren_protocol::deploy::HEADER_DEPLOY_DIGEST;
    use warren_protocol::set_header_text;

    use super::*;
    use crate::deploy::stream::message::Claim;

    const RETENTION: StreamRetention = StreamRetention {
        max_bytes: 1000,
        segment_bytes: 200,
    };

    fn state() -> State {
        State {
            jitter: Duration::ZERO,
            position: None,
            keeper: Keeper::new(RETENTION),
            parts: Assembler::default(),
        }
    }

    fn headers(name: &str, digest: &str) -> DeployHeaders {
        DeployHeaders {
            name: Some(name.to_owned()),
            digest: Some(digest.to_owned()),
            ..DeployHeaders::default()
        }
    }

    fn claim(offset: u64, name: &str, digest: &str, host: &str) -> MessageRead {
        MessageRead {
            claim: Some(Claim {
                name: name.to_owned(),
                digest: Some(digest.to_owned()),
                host: host.to_owned(),
            }),
            ..MessageRead::of(Some(offset), 10)
        }
    }

    #[test]
    fn a_consumer_starts_after_the_last_message_handled_or_at_the_first() {
        assert_eq!(start_offset(None), AMQPValue::LongString("first".into()));
        assert_eq!(start_offset(Some(0)), AMQPValue::LongLongInt(1));
        assert_eq!(start_offset(Some(41)), AMQPValue::LongLongInt(42));
        assert_eq!(
            start_offset(Some(i64::MAX as u64)),
            AMQPValue::LongLongInt(i64::MAX),
            "past what the header can say"
        );
    }

    #[test]
    fn the_position_moves_to_the_highest_offset_read_and_never_back() {
        let mut state = state();
        let reads = vec![
            MessageRead::of(Some(7), 10),
            MessageRead::of(None, 10),
            MessageRead::of(Some(9), 10),
            MessageRead::of(Some(8), 10),
        ];
        state.account(reads, vec![None, None, None, None], "me", Instant::now());
        assert_eq!(state.position, Some(9));
        state.account(
            vec![MessageRead::of(Some(3), 10)],
            vec![None],
            "me",
            Instant::now(),
        );
        assert_eq!(state.position, Some(9));
        state.account(
            vec![MessageRead::of(None, 10)],
            vec![None],
            "me",
            Instant::now(),
        );
        assert_eq!(state.position, Some(9));
    }

    #[test]
    fn starting_over_forgets_the_position() {
        let stream = StreamState::new(RETENTION, Duration::ZERO);
        stream.lock().position = Some(12);
        assert_eq!(start_offset(stream.position()), AMQPValue::LongLongInt(13));
        stream.start_over();
        assert_eq!(stream.position(), None);
        assert_eq!(
            start_offset(stream.position()),
            AMQPValue::LongString("first".into())
        );
    }

    #[test]
    fn only_the_first_claim_of_a_round_is_won_and_only_mine_are_returned() {
        let mut state = state();
        let now = Instant::now();
        let serving = KeeperUpdate::Serving("a".into(), headers("a", "sha256:a"));
        state.account(
            vec![MessageRead::of(Some(0), 100)],
            vec![Some(serving)],
            "me",
            now,
        );
        let reads = vec![
            claim(1, "a", "sha256:a", "other"),
            claim(2, "a", "sha256:a", "me"),
        ];
        assert!(
            state.account(reads, vec![None, None], "me", now).is_empty(),
            "the other host's claim came first"
        );
        assert_eq!(state.position, Some(2));

        let mut state = self::state();
        let serving = KeeperUpdate::Serving("a".into(), headers("a", "sha256:a"));
        state.account(
            vec![MessageRead::of(Some(0), 100)],
            vec![Some(serving)],
            "me",
            now,
        );
        let reads = vec![
            claim(1, "b", "sha256:b", "me"),
            claim(2, "a", "sha256:old", "me"),
            claim(3, "a", "sha256:a", "me"),
            claim(4, "a", "sha256:a", "other"),
        ];
        let won = state.account(reads, vec![None, None, None, None], "me", now);
        assert_eq!(
            won,
            ["a"],
            "b is not kept, and the old digest of a is not it"
        );
    }

    #[test]
    fn a_deploy_served_is_kept_and_one_not_served_forgotten() {
        let mut state = state();
        let now = Instant::now();
        let updates = vec![
            Some(KeeperUpdate::Serving("a".into(), headers("a", "sha256:a"))),
            Some(KeeperUpdate::Serving("b".into(), headers("b", "sha256:b"))),
        ];
        let reads = vec![MessageRead::of(Some(0), 100), MessageRead::of(Some(1), 50)];
        state.account(reads, updates, "me", now);
        let kept = state.keeper.kept("a").expect("a is kept");
        assert_eq!(kept.headers.digest.as_deref(), Some("sha256:a"));
        assert_eq!(kept.after, 50, "b follows it");
        let updates = vec![Some(KeeperUpdate::Unserved("a".into())), None];
        let reads = vec![MessageRead::of(Some(2), 100), MessageRead::of(Some(3), 10)];
        state.account(reads, updates, "me", now);
        assert!(state.keeper.kept("a").is_none());
        assert_eq!(state.keeper.kept("b").expect("b is kept").after, 110);
    }

    #[test]
    fn a_deploy_in_parts_is_kept_with_its_whole_size() {
        let mut state = state();
        let read = MessageRead {
            whole: 300,
            ..MessageRead::of(Some(5), 100)
        };
        let serving = KeeperUpdate::Serving("a".into(), headers("a", "sha256:a"));
        state.account(vec![read], vec![Some(serving)], "me", Instant::now());
        let kept = state.keeper.kept("a").expect("a is kept");
        assert_eq!((kept.size, kept.after), (300, 200));
    }

    #[test]
    fn only_an_accepted_or_verified_deploy_updates_the_keeper() {
        let mut table = FieldTable::default();
        set_header_text(&mut table, HEADER_DEPLOY_DIGEST, "sha256:a");
        let update = KeeperUpdate::of("a".into(), true, false, true, Some(&table));
        let Some(KeeperUpdate::Serving(name, headers)) = update else {
            panic!("an accepted deploy is kept");
        };
        assert_eq!(name, "a");
        assert_eq!(headers.digest.as_deref(), Some("sha256:a"));
        assert!(matches!(
            KeeperUpdate::of("a".into(), false, false, true, Some(&table)),
            Some(KeeperUpdate::Unserved(name)) if name == "a"
        ));
        assert!(KeeperUpdate::of("a".into(), false, false, false, Some(&table)).is_none());
    }
}
