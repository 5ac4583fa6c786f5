//! Remote deploys: signed modules arriving on the deploy stream.
//!
//! The contract (stream name, headers, what is signed, the answer) is in
//! `warren_protocol::deploy`. This module decides whether to accept a
//! deploy and applies it: check name, size, digest and signature against
//! the host's [`DeployPolicy`], compile off the async runtime, save it into
//! the modules folder (so a restart serves it too), and only then swap it in
//! (make-before-break, like a file change). A deploy is all or nothing: a
//! refused one is neither served nor stored.
//!
//! The broker is untrusted transport. Per name, a deploy must carry a
//! higher sequence than the newest one this host accepted (the sequence is
//! signed), so an old signed deploy put back onto the stream cannot roll a
//! procedure back; the very deploy it accepted seen again (a copy a host
//! published to keep it in the stream, see [`keeper`]) changes nothing. The
//! newest accepted deploy is saved with the module ([`record`]) and read
//! back before the stream, so this holds across restarts and however much
//! of the stream was lost. [`stream`] acts only on messages a deploying
//! broker user published (their broker-checked `user_id`), reads the
//! deploys a [`Batch`] at a time, and answers the deployers.

mod answers;
mod keeper;
mod parts;
pub mod record;
pub mod stream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use warren_protocol::check_procedure_name;
use warren_protocol::deploy::{DeployAnswer, DeployHeaders, PublicKey};
use warren_protocol::manifest::Manifest;

use crate::modules::{ModulesFolder, Procedure, digest, version};
use record::{DeployRecord, Records};

/// Which deploys a host accepts.
#[derive(Debug, Clone, Default)]
pub struct DeployPolicy {
    /// Deploys signed by one of these keys are accepted.
    pub trusted_keys: Vec<PublicKey>,
    /// Accept deploys that are unsigned or signed by an unknown key.
    pub allow_unsigned: bool,
    /// Largest module accepted, in bytes.
    pub max_module_bytes: usize,
    /// The broker users whose deploy-stream messages this host acts on
    /// (`--deploy-users`, and this host's own user, which publishes
    /// copies): the broker checks a message's `user_id` against the user
    /// that published it. Messages of anyone else are skipped unread.
    pub publishers: Vec<String>,
    /// The broker users hosts log in as (this host's own): only their
    /// claims to publish a copy count (`keeper`), so a deploying user
    /// cannot hold copies back with claims it never follows.
    pub host_users: Vec<String>,
}

impl DeployPolicy {
    /// Whether a deploy-stream message with this `user_id` is to be read.
    pub fn admits_publisher(&self, user_id: Option<&str>) -> bool {
        user_id.is_some_and(|user| self.publishers.iter().any(|known| known == user))
    }

    /// Whether a claim with this `user_id` came from a host.
    pub fn admits_claim(&self, user_id: Option<&str>) -> bool {
        user_id.is_some_and(|user| self.host_users.iter().any(|known| known == user))
    }
}

/// One deploy as received: the module and what its headers claim.
#[derive(Debug, Default)]
pub struct DeployRequest {
    /// What the headers say.
    pub headers: DeployHeaders,
    /// The module's bytes.
    pub module: Vec<u8>,
}

/// A deploy that passed every check, ready to apply.
struct Verified {
    name: String,
    digest: String,
    /// Absent only on unsigned deploys from older deployers.
    sequence: Option<u64>,
    /// The manifest's text, already checked to parse.
    manifest: Option<String>,
    /// What is saved beside the module; absent without a sequence.
    record: Option<DeployRecord>,
}

/// The newest deploy this host accepted for one name: its sequence and
/// digest, so a replay is refused and a copy of it recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Accepted {
    sequence: u64,
    digest: String,
    /// Read from a record whose module the folder no longer serves (a save
    /// cut short, a module replaced by hand): that same deploy seen again
    /// is applied again rather than taken for a copy.
    unserved: bool,
}

/// Applies deploys to this host's modules folder (and so to what it serves).
pub struct Deployer {
    host_id: String,
    policy: DeployPolicy,
    folder: Arc<ModulesFolder>,
    /// Per name, the newest deploy that passed the checks.
    accepted: Mutex<HashMap<String, Accepted>>,
    /// Names whose record could not be read, with why: every deploy of them
    /// is refused until a person removes or mends the record.
    unreadable: HashMap<String, String>,
    /// The records read at start: what a starting host puts back into the
    /// stream if the stream no longer holds it ([`stream`]).
    records: HashMap<String, DeployRecord>,
}

/// What became of one deploy of a [`Batch`].
#[derive(Debug)]
pub struct Settled<T> {
    /// What the caller of [`Batch::add`] tagged the deploy with.
    pub tag: T,
    /// The procedure it was for, if it named one.
    pub name: Option<String>,
    /// The answer for its deployer.
    pub answer: DeployAnswer,
    /// It was the deploy this host had already accepted (a copy a host
    /// re-published, or the same message again): nothing was done.
    pub copy: bool,
    /// It passed every check before compiling, so it replaced the newest
    /// deploy of its name, whether or not it was then served.
    pub verified: bool,
}

/// Deploys read together (a starting host's history, or a burst of live
/// ones), checked one by one as they arrive and applied at the end.
///
/// Per name, only the newest deploy that passed every check waits to be
/// compiled; an older one is answered as superseded, and its bytes dropped,
/// when a newer one arrives. So a replayed history costs one compile per
/// name and holds at most one module per name in memory, however long it
/// is, and a refused deploy at its end never hides a good one before it.
pub struct Batch<'d, T> {
    deployer: &'d Deployer,
    /// Per name, the newest deploy that passed the checks, not yet applied.
    waiting: HashMap<String, Waiting<T>>,
    settled: Vec<(usize, Settled<T>)>,
    /// How many deploys were added: each one's place, to answer in order.
    added: usize,
}

struct Waiting<T> {
    place: usize,
    tag: T,
    verified: Verified,
    module: Vec<u8>,
    received: Instant,
}

impl<T> Batch<'_, T> {
    /// Checks one deploy (name, size, digest, signature, order) and keeps
    /// it if it is the newest of its name so far. `tag` comes back with its
    /// answer from [`Batch::finish`].
    pub fn add(&mut self, request: DeployRequest, tag: T) {
        let received = Instant::now();
        let place = self.added;
        self.added += 1;
        let digest = digest(&request.module);
        let deployer = self.deployer;
        let checked = deployer
            .verify(&request, &digest)
            .and_then(|verified| deployer.check_order(verified));
        let (answer, copy) = match checked {
            Ok(Order::New(verified)) => {
                let waiting = Waiting {
                    place,
                    tag,
                    verified: *verified,
                    module: request.module,
                    received,
                };
                if let Some(older) = self.waiting.insert(waiting.verified.name.clone(), waiting) {
                    self.supersede(older);
                }
                return;
            }
            Ok(Order::Copy) => (deployer.acceptance(digest, received), true),
            Err(reason) => (deployer.refusal(digest, reason, received), false),
        };
        let name = request.headers.name;
        self.settled.push((
            place,
            Settled {
                tag,
                name,
                answer,
                copy,
                verified: false,
            },
        ));
    }

    /// Answers a deploy that was refused before it could be checked (its
    /// parts could not be joined, see `parts`).
    pub fn refuse(&mut self, headers: DeployHeaders, reason: String, tag: T) {
        let place = self.added;
        self.added += 1;
        // The claimed digest is not repeated: nothing checked it.
        let answer = self.deployer.refusal(String::new(), reason, Instant::now());
        self.settled.push((
            place,
            Settled {
                tag,
                name: headers.name,
                answer,
                copy: false,
                verified: false,
            },
        ));
    }

    /// The largest module this host accepts (`--max-module-bytes`).
    pub fn max_module_bytes(&self) -> usize {
        self.deployer.policy.max_module_bytes
    }

    /// Whether a message whose `user_id` is `user` is to be read at all
    /// ([`DeployPolicy::publishers`]).
    pub fn admits_publisher(&self, user: Option<&str>) -> bool {
        self.deployer.policy.admits_publisher(user)
    }

    /// Whether a claim whose `user_id` is `user` came from a host.
    pub fn admits_claim(&self, user: Option<&str>) -> bool {
        self.deployer.policy.admits_claim(user)
    }

    /// Counts a message skipped because no deploying user published it.
    pub fn skipped_publisher(&self) {
        self.deployer.folder.metrics().deploy_message_skipped();
    }

    /// Answers a deploy that a newer one of its name replaced before it
    /// was applied, and drops its bytes.
    fn supersede(&mut self, older: Waiting<T>) {
        let name = older.verified.name;
        let reason = format!("superseded by a newer deploy of {name} in the deploy history");
        let answer = self
            .deployer
            .refusal(older.verified.digest, reason, older.received);
        self.settled.push((
            older.place,
            Settled {
                tag: older.tag,
                name: Some(name),
                answer,
                copy: false,
                verified: true,
            },
        ));
    }

    /// Compiles, saves and serves the newest deploy of each name, and
    /// returns every deploy's answer, in the order they were added.
    pub async fn finish(mut self) -> Vec<Settled<T>> {
        let mut waiting: Vec<Waiting<T>> = self.waiting.into_values().collect();
        waiting.sort_by_key(|w| w.place);
        for w in waiting {
            let answer = match self.deployer.install(&w.verified, w.module).await {
                Ok(()) => self
                    .deployer
                    .acceptance(w.verified.digest.clone(), w.received),
                Err(error) => {
                    self.deployer.not_served(&w.verified.name);
                    self.deployer.refusal(
                        w.verified.digest.clone(),
                        format!("{error:#}"),
                        w.received,
                    )
                }
            };
            self.settled.push((
                w.place,
                Settled {
                    tag: w.tag,
                    name: Some(w.verified.name),
                    answer,
                    copy: false,
                    verified: true,
                },
            ));
        }
        self.settled.sort_by_key(|(place, _)| *place);
        let metrics = self.deployer.folder.metrics();
        self.settled
            .into_iter()
            .map(|(_, settled)| {
                if !settled.copy {
                    metrics.deploy_answered(settled.answer.accepted);
                }
                settled
            })
            .collect()
    }
}

/// Where a verified deploy stands against the newest accepted of its name.
enum Order {
    /// Newer: to be applied.
    New(Box<Verified>),
    /// The very deploy accepted last (same sequence and digest).
    Copy,
}

impl Deployer {
    /// A deployer for this host, which remembers the newest deploy of each
    /// name from the records in the modules folder ([`record`]). Call it
    /// after the folder is loaded, so it knows what the folder serves.
    pub fn new(
        host_id: String,
        policy: DeployPolicy,
        folder: Arc<ModulesFolder>,
    ) -> anyhow::Result<Self> {
        let Records { read, unreadable } = record::read_records(folder.dir())?;
        let mut accepted = HashMap::new();
        for (name, record) in &read {
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
                Accepted {
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
        Ok(Deployer {
            host_id,
            policy,
            folder,
            accepted: Mutex::new(accepted),
            records: read,
            unreadable,
        })
    }

    /// The deploy records read from the modules folder at start.
    pub fn records(&self) -> &HashMap<String, DeployRecord> {
        &self.records
    }

    /// What this host accepts.
    pub fn policy(&self) -> &DeployPolicy {
        &self.policy
    }

    /// The newest deploy of `name` passed every check but could not be
    /// served here: the same deploy seen again (a copy) is tried again
    /// rather than taken as applied.
    fn not_served(&self, name: &str) {
        let mut accepted = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(newest) = accepted.get_mut(name) {
            newest.unserved = true;
        }
    }

    /// This host's id, as it signs its answers.
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// The modules folder deploys are saved into.
    pub fn folder(&self) -> &Arc<ModulesFolder> {
        &self.folder
    }

    /// Starts a batch of deploys (see [`Batch`]).
    pub fn batch<T>(&self) -> Batch<'_, T> {
        Batch {
            deployer: self,
            waiting: HashMap::new(),
            settled: Vec::new(),
            added: 0,
        }
    }

    fn refusal(&self, digest: String, reason: String, started: Instant) -> DeployAnswer {
        DeployAnswer {
            host: self.host_id.clone(),
            accepted: false,
            reason,
            digest,
            took_ms: started.elapsed().as_millis() as u64,
        }
    }

    fn acceptance(&self, digest: String, started: Instant) -> DeployAnswer {
        DeployAnswer {
            host: self.host_id.clone(),
            accepted: true,
            reason: String::new(),
            digest,
            took_ms: started.elapsed().as_millis() as u64,
        }
    }

    /// Every check that needs no compiling: name, size, digest, signature.
    /// A refusal's reason never repeats a header's value: whoever wrote
    /// the headers chose it, and the reason goes back to a deployer and
    /// into the log.
    fn verify(&self, request: &DeployRequest, actual_digest: &str) -> Result<Verified, String> {
        let headers = &request.headers;
        let name = headers
            .name
            .clone()
            .ok_or("the deploy names no procedure (header x-deploy-name)")?;
        check_procedure_name(&name).map_err(|_| {
            format!(
                "the deploy's name (header x-deploy-name) is not a valid procedure name \
                 ({})",
                warren_protocol::PROCEDURE_NAME_RULE
            )
        })?;
        if request.module.len() > self.policy.max_module_bytes {
            return Err(format!(
                "the module is {} bytes; this host accepts at most {} (--max-module-bytes)",
                request.module.len(),
                self.policy.max_module_bytes
            ));
        }
        match headers.digest.as_deref() {
            None => return Err("the deploy has no digest header (x-deploy-digest)".into()),
            Some(claimed) if claimed != actual_digest => {
                return Err(format!(
                    "the digest header (x-deploy-digest) does not match the module, whose \
                     digest is {actual_digest}"
                ));
            }
            Some(_) => {}
        }
        let sequence = match &headers.sequence {
            None => None,
            Some(text) => Some(text.trim().parse::<u64>().map_err(|_| {
                "the deploy's sequence (header x-deploy-sequence) is not a whole number".to_owned()
            })?),
        };
        self.check_signature(request, &name, actual_digest, sequence)?;
        // After the signature: a stranger's manifest is not worth reading.
        if let Some(text) = &headers.manifest {
            Manifest::parse(text).map_err(|error| format!("its manifest is refused: {error}"))?;
        }
        let record = sequence.map(|sequence| DeployRecord {
            name: name.clone(),
            sequence,
            digest: actual_digest.to_owned(),
            manifest_digest: headers.manifest_digest(),
            key: headers.key.clone(),
            signature: headers.signature.clone(),
        });
        Ok(Verified {
            name,
            digest: actual_digest.to_owned(),
            sequence,
            manifest: headers.manifest.clone(),
            record,
        })
    }

    /// Refuses a deploy that is not newer than the newest accepted for its
    /// name (a replay), recognises that newest one seen again (a copy), and
    /// otherwise remembers it as the newest. Deploys are checked in stream
    /// order, so this holds on replay too; the records saved with the
    /// modules make it hold across restarts.
    fn check_order(&self, verified: Verified) -> Result<Order, String> {
        if self.unreadable.contains_key(&verified.name) {
            return Err(format!(
                "the record of the last deploy of {} on this host cannot be read, so it refuses \
                 every deploy of it until a person removes or mends {}.{} (the host's log says why)",
                verified.name,
                verified.name,
                record::RECORD_EXTENSION
            ));
        }
        let Some(sequence) = verified.sequence else {
            return Ok(Order::New(Box::new(verified)));
        };
        let mut accepted = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(newest) = accepted.get(&verified.name) {
            let same = newest.sequence == sequence && newest.digest == verified.digest;
            if same && !newest.unserved {
                return Ok(Order::Copy);
            }
            if sequence < newest.sequence || (sequence == newest.sequence && !same) {
                return Err(format!(
                    "older than a deploy of {} this host already accepted (sequence {sequence} is \
                     not above {}): a replayed deploy cannot roll a procedure back. To go back to \
                     an old version, deploy it again; if this is a new deploy, the deployer's \
                     clock is behind",
                    verified.name, newest.sequence
                ));
            }
        }
        accepted.insert(
            verified.name.clone(),
            Accepted {
                sequence,
                digest: verified.digest.clone(),
                unserved: false,
            },
        );
        Ok(Order::New(Box::new(verified)))
    }

    fn check_signature(
        &self,
        request: &DeployRequest,
        name: &str,
        digest: &str,
        sequence: Option<u64>,
    ) -> Result<(), String> {
        let policy = &self.policy;
        if policy.trusted_keys.is_empty() && !policy.allow_unsigned {
            return Err(
                "this host accepts no remote deploys: start it with --trusted-keys FILE \
                        (or --allow-unsigned-deploys)"
                    .into(),
            );
        }
        let (Some(key), Some(signature)) = (&request.headers.key, &request.headers.signature)
        else {
            return if policy.allow_unsigned {
                Ok(())
            } else {
                Err(
                    "the deploy is unsigned; this host accepts only deploys signed by a trusted \
                     key (warren deploy --key FILE)"
                        .into(),
                )
            };
        };
        let key =
            PublicKey::parse(key).map_err(|e| format!("the deploy's key is unreadable: {e}"))?;
        if !policy.trusted_keys.contains(&key) {
            return if policy.allow_unsigned {
                Ok(())
            } else {
                Err(format!(
                    "signed by {key}, which this host does not trust (add it to the --trusted-keys file)"
                ))
            };
        }
        let Some(sequence) = sequence else {
            return Err(
                "the deploy is signed without a sequence (x-deploy-sequence), as earlier \
                 versions of warren signed; deploy it again with this warren"
                    .into(),
            );
        };
        let manifest = request.headers.manifest_digest();
        if key.verifies(name, digest, sequence, manifest.as_deref(), signature) {
            Ok(())
        } else {
            Err(match manifest {
                None => format!(
                    "bad signature: {key} did not sign {name} {digest} with sequence {sequence} \
                     and no manifest"
                ),
                Some(manifest) => format!(
                    "bad signature: {key} did not sign {name} {digest} with sequence {sequence} \
                     and manifest {manifest} (was the manifest changed after signing?)"
                ),
            })
        }
    }

    /// Compiles the module, saves it into the modules folder, then serves
    /// it. Nothing changes unless every step succeeds.
    async fn install(&self, verified: &Verified, module: Vec<u8>) -> anyhow::Result<()> {
        let Verified {
            name,
            digest,
            manifest,
            record,
            ..
        } = verified;
        let manifest_digest = manifest.as_deref().map(warren_protocol::manifest::digest);
        let serving = self.folder.serving().get(name).map(|p| p.version());
        let (procedure, module) = if serving == Some(version(digest, manifest_digest.as_deref())) {
            // Served already (a replayed history, a repeated deploy): make
            // sure the folder holds it too.
            let procedure = self.folder.serving().get(name).expect("served");
            (Procedure::clone(&procedure), module)
        } else {
            let _loading = self.folder.serving().loading(name);
            // The bytes travel to the compile thread and back: no copy.
            tokio::task::spawn_blocking({
                let sandbox = self.folder.sandbox().clone();
                let (name, digest, manifest) = (name.clone(), digest.clone(), manifest.clone());
                move || {
                    Procedure::compile(&sandbox, &name, &module, digest, manifest.as_deref())
                        .map(|p| (p, module))
                }
            })
            .await
            .context("the compile task failed")??
        };
        let record = record.as_ref().map(DeployRecord::to_text);
        self.folder
            .save_and_serve(procedure, module, manifest.clone(), record)
            .await
    }
}

/// A default host id: `hostname-pid`, unique per process on a fleet.
pub fn default_host_id() -> String {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    format!("{hostname}-{}", std::process::id())
}
