//! The order rule: per name, a host accepts only a deploy newer than the
//! newest it accepted (the sequence is signed), so an old signed deploy put
//! back onto the stream cannot roll a procedure back, and recognises that
//! newest one seen again (a copy) as nothing to do. It starts from the
//! records saved beside the modules ([`super::record`]), so this holds across
//! restarts and however much of the stream was lost.

use std::collections::HashMap;
use std::sync::Mutex;

use super::checks::Verified;
use super::policy::DeployPolicy;
use super::record::{self, DeployRecord};
use crate::modules::{ModulesFolder, version};

/// The newest deploy this host accepted for one name: its sequence and
/// digest, so a replay is refused and a copy of it recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewestAccepted {
    sequence: u64,
    digest: String,
    /// Read from a record whose module the folder no longer serves (a save
    /// cut short, a module replaced by hand): that same deploy seen again
    /// is applied again rather than taken for a copy.
    unserved: bool,
}

/// Where a verified deploy stands against the newest accepted of its name.
pub enum Order {
    /// Newer: to be applied.
    New(Box<Verified>),
    /// The very deploy accepted last (same sequence and digest).
    Copy,
}

/// What a host knows of the newest deploy it accepted of each name, the
/// [`super::deployer::Deployer`]'s one record of it.
pub struct ReplayGuard {
    /// Per name, the newest deploy that passed the checks.
    accepted: Mutex<HashMap<String, NewestAccepted>>,
    /// Names whose record could not be read, with why: every deploy of them
    /// is refused until a person removes or mends the record.
    unreadable: HashMap<String, String>,
}

impl ReplayGuard {
    /// The newest deploy of each name as the records in the modules folder
    /// say (`records`, and the names whose record is `unreadable`), logging
    /// what a person should know of them: a record whose deploy the folder
    /// does not serve, one no key trusted now signed, one unreadable.
    pub fn new(
        records: &HashMap<String, DeployRecord>,
        unreadable: HashMap<String, String>,
        policy: &DeployPolicy,
        folder: &ModulesFolder,
    ) -> Self {
        let mut accepted = HashMap::new();
        for (name, record) in records {
            let (name, record) = (name.clone(), record.clone());
            let version = version(&record.digest, record.manifest_digest.as_deref());
            let served = folder.serving().get(&name).map(|p| p.version());
            let unserved = served.as_ref() != Some(&version);
            if unserved {
                tracing::info!(
                    procedure = %name,
                    sequence = record.sequence,
                    serving = served.as_deref().unwrap_or("nothing"),
                    "the folder does not serve the last deploy of this procedure (its record \
                     says {version}): deploys not newer than it are still refused, and that \
                     deploy is applied again if the deploy stream holds it"
                );
            }
            if !policy.trusted_keys.is_empty() && !record.signed_by_one_of(&policy.trusted_keys) {
                tracing::warn!(
                    procedure = %name,
                    sequence = record.sequence,
                    "the record of this procedure's last deploy is not signed by a key this host \
                     trusts now (a key taken out of --trusted-keys, or a record edited by hand); \
                     deploys not newer than it are still refused"
                );
            }
            accepted.insert(
                name,
                NewestAccepted {
                    sequence: record.sequence,
                    digest: record.digest,
                    unserved,
                },
            );
        }
        for (name, why) in &unreadable {
            tracing::error!(
                procedure = %name,
                "the record of this procedure's last deploy cannot be read ({why}): every deploy \
                 of it is refused, since this host no longer knows which are old. Put back a copy \
                 of NAME.deploy from another host's modules folder; remove the file only once the \
                 deploy stream holds this procedure's newest deploy (without a record, any signed \
                 deploy of it in the stream is accepted, an old one too)"
            );
        }
        ReplayGuard {
            accepted: Mutex::new(accepted),
            unreadable,
        }
    }

    /// The newest deploy of `name` passed every check but could not be
    /// served here: the same deploy seen again (a copy) is tried again
    /// rather than taken as applied.
    pub fn not_served(&self, name: &str) {
        let mut accepted = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(newest) = accepted.get_mut(name) {
            newest.unserved = true;
        }
    }

    /// Whether a deploy of `name` at `sequence` of module `digest` would
    /// be the newest accepted one seen again (`Some(Ok)`, a copy), or
    /// refused as older (`Some(Err)`): what [`ReplayGuard::check_order`]
    /// would say, without remembering anything. `None`: it would be new.
    pub fn peek_order(
        &self,
        name: &str,
        sequence: u64,
        digest: &str,
    ) -> Option<Result<(), String>> {
        if let Err(why) = self.readable(name) {
            return Some(Err(why));
        }
        let accepted = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        order(&accepted, name, sequence, digest)
    }

    /// Refuses a deploy that is not newer than the newest accepted for its
    /// name (a replay), recognises that newest one seen again (a copy), and
    /// otherwise remembers it as the newest. Deploys are checked in stream
    /// order, so this holds on replay too; the records saved with the
    /// modules make it hold across restarts.
    pub fn check_order(&self, verified: Verified) -> Result<Order, String> {
        self.readable(&verified.name)?;
        let Some(sequence) = verified.sequence else {
            return Ok(Order::New(Box::new(verified)));
        };
        let mut accepted = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        match order(&accepted, &verified.name, sequence, &verified.digest) {
            Some(Ok(())) => return Ok(Order::Copy),
            Some(Err(older)) => return Err(older),
            None => {}
        }
        accepted.insert(
            verified.name.clone(),
            NewestAccepted {
                sequence,
                digest: verified.digest.clone(),
                unserved: false,
            },
        );
        Ok(Order::New(Box::new(verified)))
    }

    /// Refuses every deploy of `name` while its record cannot be read.
    fn readable(&self, name: &str) -> Result<(), String> {
        if self.unreadable.contains_key(name) {
            return Err(format!(
                "the record of the last deploy of {name} on this host cannot be read, so it \
                 refuses every deploy of it until a person removes or mends {name}.{} (the \
                 host's log says why)",
                record::RECORD_EXTENSION
            ));
        }
        Ok(())
    }
}

/// The order rule, against the newest deploy of `name` accepted: the same
/// deploy again is a copy (`Some(Ok)`), one not above it is refused
/// (`Some(Err)`), and any other is new (`None`).
fn order(
    accepted: &HashMap<String, NewestAccepted>,
    name: &str,
    sequence: u64,
    digest: &str,
) -> Option<Result<(), String>> {
    let newest = accepted.get(name)?;
    let same = newest.sequence == sequence && newest.digest == digest;
    if same && !newest.unserved {
        Some(Ok(()))
    } else if sequence < newest.sequence || (sequence == newest.sequence && !same) {
        Some(Err(format!(
            "older than a deploy of {name} this host already accepted (sequence {sequence} is \
             not above {}): a replayed deploy cannot roll a procedure back. To go back to an \
             old version, `warren rollback` or deploy it again; if this is a new deploy, the \
             deployer's clock is behind",
            newest.sequence
        )))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(unreadable: &[&str]) -> ReplayGuard {
        ReplayGuard {
            accepted: Mutex::new(HashMap::new()),
            unreadable: unreadable
                .iter()
                .map(|name| (name.to_string(), "broken".to_owned()))
                .collect(),
        }
    }

    fn verified(name: &str, sequence: Option<u64>, digest: &str) -> Verified {
        Verified {
            name: name.to_owned(),
            digest: digest.to_owned(),
            sequence,
            manifest: None,
            record: None,
        }
    }

    fn order(guard: &ReplayGuard, sequence: Option<u64>, digest: &str) -> Result<bool, String> {
        guard
            .check_order(verified("a", sequence, digest))
            .map(|order| matches!(order, Order::New(_)))
    }

    #[test]
    fn only_a_newer_deploy_is_new_and_the_newest_again_is_a_copy() {
        let guard = guard(&[]);
        assert_eq!(order(&guard, Some(5), "d5"), Ok(true));
        assert_eq!(order(&guard, Some(5), "d5"), Ok(false), "a copy");
        let older = order(&guard, Some(4), "d4").expect_err("older");
        assert!(older.contains("sequence 4 is not above 5"), "{older}");
        assert!(
            order(&guard, Some(5), "other").is_err(),
            "same sequence, other module"
        );
        assert_eq!(order(&guard, Some(6), "d6"), Ok(true));
        assert!(
            order(&guard, Some(5), "d5").is_err(),
            "no longer the newest"
        );
    }

    #[test]
    fn the_newest_not_served_is_applied_again_when_seen_again() {
        let guard = guard(&[]);
        assert_eq!(order(&guard, Some(5), "d5"), Ok(true));
        guard.not_served("a");
        assert_eq!(order(&guard, Some(5), "d5"), Ok(true));
        assert_eq!(order(&guard, Some(5), "d5"), Ok(false), "served now");
    }

    #[test]
    fn a_deploy_without_a_sequence_is_always_new() {
        let guard = guard(&[]);
        assert_eq!(order(&guard, Some(5), "d5"), Ok(true));
        assert_eq!(order(&guard, None, "d0"), Ok(true));
        assert_eq!(order(&guard, Some(5), "d5"), Ok(false), "still the newest");
    }

    #[test]
    fn every_deploy_of_a_name_whose_record_is_unreadable_is_refused() {
        let guard = guard(&["a"]);
        let refused = order(&guard, Some(5), "d5").expect_err("unreadable record");
        assert!(refused.contains("a.deploy"), "{refused}");
        assert!(order(&guard, None, "d0").is_err());
    }
}
