//! Keeping each procedure's newest deploy in the stream
//! ([`crate::deploy::keeper`]): when one is due, a host waits a random
//! moment, claims its publishing, and publishes it again, unchanged, if its
//! claim won; a starting host puts back what it serves that the stream no
//! longer holds.

use std::time::Duration;

use anyhow::Context as _;
use lapin::types::FieldTable;
use tokio::time::Instant;
use warren_protocol::deploy::{DeployHeaders, HEADER_DEPLOY_CLAIM, HEADER_DEPLOY_COPY};
use warren_protocol::set_header_text;

use super::connection::DeployStream;
use crate::deploy::deployer::Deployer;
use crate::deploy::keeper::{Keeper, Kept, MESSAGE_OVERHEAD};
use crate::deploy::record::DeployRecord;
use crate::modules::{MODULE_EXTENSION, version};
use warren_protocol::digest;

/// Longest random wait before claiming the publishing of a deploy the
/// stream would drop, so that few hosts of a fleet claim each round (one
/// wins, see [`crate::deploy::keeper`]).
pub const REPUBLISH_JITTER: Duration = Duration::from_secs(2);

impl DeployStream {
    /// Keeps, as due at once, each deploy this host has a record of and
    /// serves but the stream no longer holds (every host was down while
    /// it dropped out; the stream was declared anew), so that hosts started
    /// later find it again. Its headers come from the record and the
    /// manifest beside the module, checked against the record's digest.
    pub(super) fn keep_recorded(&self, deployer: &Deployer) {
        let mut state = self.state.lock();
        for (name, record) in deployer.records() {
            let recorded = version(&record.digest, record.manifest_digest.as_deref());
            let served = deployer.folder().serving().get(name).map(|p| p.version());
            if state.keeper.kept(name).is_some() || served != Some(recorded) {
                continue;
            }
            let Some(manifest) =
                read_served_manifest(deployer, name, record.manifest_digest.as_deref())
            else {
                continue;
            };
            let module = deployer
                .folder()
                .dir()
                .join(format!("{name}.{MODULE_EXTENSION}"));
            let Ok(size) = std::fs::metadata(module).map(|metadata| metadata.len()) else {
                continue;
            };
            let headers = recorded_headers(name, record, manifest);
            tracing::info!(
                procedure = %name,
                sequence = record.sequence,
                "the deploy stream no longer holds the deploy this host serves: publishing it \
                 again, so hosts that start later find it"
            );
            state
                .keeper
                .keep_missing(name.clone(), headers, size + MESSAGE_OVERHEAD);
        }
    }

    /// If deploys are due to be published again, picks a random moment
    /// soon to claim them; if a claim is pending instead, looks again when
    /// it lapses. An earlier moment already picked stands (looking early
    /// costs nothing: nothing due, nothing claimed).
    pub(super) fn schedule_republish(&mut self) {
        let now = std::time::Instant::now();
        let mut state = self.state.lock();
        let wait = state.jitter.mul_f64(fastrand::f64());
        let at = republish_moment(&mut state.keeper, now, wait);
        drop(state);
        self.republish_at = earlier(self.republish_at, at);
    }

    /// Claims the publishing of each deploy still due (another host may
    /// have claimed it meanwhile) whose module this host has in its
    /// folder. The claim comes back through the stream; if it is the first
    /// of its round, [`Self::publish_copies`] publishes the copy.
    pub(super) async fn claim_due(&self, deployer: &Deployer) {
        let due = self.state.lock().keeper.due(std::time::Instant::now());
        for (name, kept) in due {
            let claimed = match self.read_kept_module(deployer, &name, &kept).await {
                Ok(Some(_)) => {
                    let headers = claim_headers(&kept.headers, deployer.host_id());
                    self.publish_confirmed(Vec::new(), headers).await
                }
                Ok(None) => continue,
                Err(error) => Err(error),
            };
            if let Err(error) = claimed {
                tracing::warn!(
                    procedure = %name,
                    "claiming the publishing of the deploy again, so the deploy stream keeps it: {error:#}"
                );
            }
        }
    }

    /// Publishes again, unchanged, each deploy whose claim this host won.
    pub(super) async fn publish_copies(&self, deployer: &Deployer, won: Vec<String>) {
        for name in won {
            let Some(kept) = self.state.lock().keeper.kept(&name) else {
                continue;
            };
            match self.republish(deployer, &name, &kept).await {
                Ok(true) => tracing::info!(
                    procedure = %name,
                    digest = kept.headers.digest.as_deref().unwrap_or_default(),
                    "published the deploy again, so the deploy stream keeps it for hosts that start later"
                ),
                Ok(false) => {}
                Err(error) => tracing::warn!(
                    procedure = %name,
                    "publishing the deploy again, so the deploy stream keeps it: {error:#}"
                ),
            }
        }
    }

    /// `Ok(false)` when this host's folder no longer holds that module.
    async fn republish(
        &self,
        deployer: &Deployer,
        name: &str,
        kept: &Kept,
    ) -> anyhow::Result<bool> {
        let Some(module) = self.read_kept_module(deployer, name, kept).await? else {
            return Ok(false);
        };
        let full = match kept.headers.kept {
            None => kept.headers.clone(),
            // A deploy of a kept version goes back with its module and
            // manifest attached: hosts that keep no copy can apply it.
            Some(_) => {
                let expected = kept.headers.manifest_digest();
                let Some(manifest) = read_served_manifest(deployer, name, expected.as_deref())
                else {
                    return Ok(false);
                };
                kept.headers.with_manifest_attached(manifest)
            }
        };
        let mut headers = FieldTable::default();
        full.write(&mut headers);
        set_header_text(&mut headers, HEADER_DEPLOY_COPY, deployer.host_id());
        self.publish_confirmed(module, headers).await.map(|()| true)
    }

    /// The module of `kept` from this host's folder, if it still holds it.
    async fn read_kept_module(
        &self,
        deployer: &Deployer,
        name: &str,
        kept: &Kept,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        let path = deployer
            .folder()
            .dir()
            .join(format!("{name}.{MODULE_EXTENSION}"));
        // Read and hashed off the async runtime: a Python module is 18 MB.
        let read = tokio::task::spawn_blocking(move || {
            std::fs::read(path).map(|module| (digest(&module), module))
        })
        .await
        .context("the read task failed")?;
        let Ok((read_digest, module)) = read else {
            return Ok(None);
        };
        if Some(read_digest) != kept.headers.digest {
            tracing::debug!(procedure = %name, "not publishing the deploy again: this host's folder holds another version");
            return Ok(None);
        }
        Ok(Some(module))
    }
}

/// The manifest beside `name`'s module, when its digest is `expected`:
/// `Some(None)` when none is expected, `None` when the one there is not it.
fn read_served_manifest(
    deployer: &Deployer,
    name: &str,
    expected: Option<&str>,
) -> Option<Option<String>> {
    let Some(expected) = expected else {
        return Some(None);
    };
    let path = deployer.folder().dir().join(format!(
        "{name}.{}",
        warren_protocol::manifest::MANIFEST_EXTENSION
    ));
    match std::fs::read_to_string(path) {
        Ok(text) if digest(&text) == expected => Some(Some(text)),
        _ => None,
    }
}

/// The headers of the deploy a `record` of `name` describes, as its
/// deployer published them (`manifest`: the manifest's text beside the
/// module, when the record names one).
fn recorded_headers(name: &str, record: &DeployRecord, manifest: Option<String>) -> DeployHeaders {
    DeployHeaders {
        name: Some(name.to_owned()),
        digest: Some(record.digest.clone()),
        sequence: Some(record.sequence.to_string()),
        key: record.key.clone(),
        signature: record.signature.clone(),
        manifest,
        kept: None,
    }
}

/// The headers of a claim by `host` to publish the copy of the deploy
/// `kept`: which deploy it is, without its signature or manifest.
fn claim_headers(kept: &DeployHeaders, host: &str) -> FieldTable {
    let mut headers = FieldTable::default();
    DeployHeaders {
        name: kept.name.clone(),
        digest: kept.digest.clone(),
        sequence: kept.sequence.clone(),
        ..DeployHeaders::default()
    }
    .write(&mut headers);
    set_header_text(&mut headers, HEADER_DEPLOY_CLAIM, host);
    headers
}

/// When to look for deploys to publish again: `wait` from now if some are
/// due, `wait` after a pending claim lapses if one is instead, or never.
fn republish_moment(
    keeper: &mut Keeper,
    now: std::time::Instant,
    wait: Duration,
) -> Option<Instant> {
    if !keeper.due(now).is_empty() {
        Some(Instant::now() + wait)
    } else {
        let lapse = keeper.next_lapse(now);
        lapse.map(|lapse| Instant::from_std(lapse) + wait)
    }
}

/// The earlier of a moment already `picked` and a new one `at`.
fn earlier(picked: Option<Instant>, at: Option<Instant>) -> Option<Instant> {
    match (picked, at) {
        (Some(picked), Some(at)) => Some(picked.min(at)),
        (picked, at) => picked.or(at),
    }
}

#[cfg(test)]
mod tests {
    use warren_protocol::deploy::StreamRetention;
    use warren_protocol::header_text;

    use super::*;
    use crate::deploy::keeper::CLAIM_TIMEOUT;

    fn headers(name: &str) -> DeployHeaders {
        DeployHeaders {
            name: Some(name.to_owned()),
            digest: Some(format!("sha256:{name}")),
            sequence: Some("7".into()),
            key: Some("ed25519:k".into()),
            signature: Some("5151".into()),
            manifest: Some("[limits]\n".into()),
            kept: None,
        }
    }

    #[test]
    fn a_claim_names_the_deploy_and_its_host_and_carries_nothing_else() {
        let claim = claim_headers(&headers("a"), "h1");
        assert_eq!(
            header_text(Some(&claim), HEADER_DEPLOY_CLAIM).as_deref(),
            Some("h1")
        );
        let read = DeployHeaders::read(Some(&claim));
        assert_eq!(
            read,
            DeployHeaders {
                name: Some("a".into()),
                digest: Some("sha256:a".into()),
                sequence: Some("7".into()),
                ..DeployHeaders::default()
            }
        );
    }

    #[test]
    fn a_recorded_deploy_is_put_back_with_what_its_deployer_signed() {
        let record = DeployRecord {
            name: "a".into(),
            sequence: 7,
            digest: "sha256:a".into(),
            manifest_digest: Some("sha256:m".into()),
            key: Some("ed25519:k".into()),
            signature: Some("5151".into()),
        };
        let put_back = recorded_headers("a", &record, Some("[limits]\n".into()));
        assert_eq!(put_back, headers("a"));
    }

    #[test]
    fn a_host_looks_again_when_a_deploy_is_due_or_a_claim_lapses() {
        let retention = StreamRetention {
            max_bytes: 1000,
            segment_bytes: 200,
        };
        let wait = Duration::from_secs(1);
        let now = std::time::Instant::now();
        let mut keeper = Keeper::new(retention);
        assert_eq!(
            republish_moment(&mut keeper, now, wait),
            None,
            "nothing kept"
        );
        keeper.read(100, Some(("a".into(), headers("a"), 100)));
        assert_eq!(
            republish_moment(&mut keeper, now, wait),
            None,
            "nothing due"
        );
        keeper.read(400, None);
        let before = Instant::now();
        let at = republish_moment(&mut keeper, now, wait).expect("a is due");
        assert!(at >= before + wait && at <= Instant::now() + wait);
        assert!(keeper.claim("a", Some("sha256:a"), "h1", now));
        assert_eq!(
            republish_moment(&mut keeper, now, wait),
            Some(Instant::from_std(now + CLAIM_TIMEOUT) + wait),
            "when h1's claim lapses"
        );
    }

    #[test]
    fn an_earlier_moment_already_picked_stands() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        assert_eq!(earlier(Some(now), Some(later)), Some(now));
        assert_eq!(earlier(Some(later), Some(now)), Some(now));
        assert_eq!(earlier(None, Some(later)), Some(later));
        assert_eq!(earlier(Some(later), None), Some(later));
        assert_eq!(earlier(None, None), None);
    }
}
