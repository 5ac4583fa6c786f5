//! Remote deploys: signed modules arriving on the deploy stream.
//!
//! The contract (stream name, headers, what is signed, the answer) is in
//! `warren_protocol::deploy`. This module decides whether to accept a
//! deploy and applies it: check name, size, digest and signature against
//! the host's [`DeployPolicy`], compile off the async runtime, save it into
//! the modules folder (so a restart serves it too), and only then swap it in
//! (make-before-break, like a file change). A deploy is all or nothing: a
//! refused one is neither served nor stored. Per name, a deploy must carry
//! a higher sequence than the newest one this host accepted (the sequence
//! is signed), so an old signed deploy replayed onto the stream cannot roll
//! a procedure back; the very deploy it accepted seen again (a copy a host
//! published to keep it in the stream, see [`keeper`]) changes nothing.
//! [`stream`] reads the deploys from the broker, a [`Batch`] at a time, and
//! answers the deployers.

mod answers;
mod keeper;
mod parts;
pub mod stream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use warren_protocol::check_procedure_name;
use warren_protocol::deploy::{DeployAnswer, DeployHeaders, PublicKey};
use warren_protocol::manifest::Manifest;

use crate::modules::{ModulesFolder, Procedure, digest, version};

/// Which deploys a host accepts.
#[derive(Debug, Clone, Default)]
pub struct DeployPolicy {
    /// Deploys signed by one of these keys are accepted.
    pub trusted_keys: Vec<PublicKey>,
    /// Accept deploys that are unsigned or signed by an unknown key.
    pub allow_unsigned: bool,
    /// Largest module accepted, in bytes.
    pub max_module_bytes: usize,
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
}

/// The newest deploy this host accepted for one name: its sequence and
/// digest, so a replay is refused and a copy of it recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Newest {
    sequence: u64,
    digest: String,
}

/// Applies deploys to this host's modules folder (and so to what it serves).
pub struct Deployer {
    host_id: String,
    policy: DeployPolicy,
    folder: Arc<ModulesFolder>,
    /// Per name, the newest deploy that passed the checks.
    newest: Mutex<HashMap<String, Newest>>,
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
                    verified,
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
        let digest = headers.digest.clone().unwrap_or_default();
        let answer = self.deployer.refusal(digest, reason, Instant::now());
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
                Err(error) => self.deployer.refusal(
                    w.verified.digest.clone(),
                    format!("{error:#}"),
                    w.received,
                ),
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
    New(Verified),
    /// The very deploy accepted last (same sequence and digest).
    Copy,
}

impl Deployer {
    /// A deployer for this host.
    pub fn new(host_id: String, policy: DeployPolicy, folder: Arc<ModulesFolder>) -> Self {
        Deployer {
            host_id,
            policy,
            folder,
            newest: Mutex::default(),
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
    fn verify(&self, request: &DeployRequest, actual_digest: &str) -> Result<Verified, String> {
        let headers = &request.headers;
        let name = headers
            .name
            .clone()
            .ok_or("the deploy names no procedure (header x-deploy-name)")?;
        check_procedure_name(&name)?;
        if request.module.len() > self.policy.max_module_bytes {
            return Err(format!(
                "the module is {} bytes; this host accepts at most {} (--max-module-bytes)",
                request.module.len(),
                self.policy.max_module_bytes
            ));
        }
        let claimed = headers.digest.as_deref().unwrap_or_default();
        if claimed != actual_digest {
            return Err(format!(
                "the module's digest is {actual_digest}, not {claimed:?} as its header says"
            ));
        }
        let sequence = match &headers.sequence {
            None => None,
            Some(text) => Some(text.trim().parse::<u64>().map_err(|_| {
                format!("the deploy's sequence (x-deploy-sequence) {text:?} is not a whole number")
            })?),
        };
        self.check_signature(request, &name, actual_digest, sequence)?;
        // After the signature: a stranger's manifest is not worth reading.
        if let Some(text) = &headers.manifest {
            Manifest::parse(text).map_err(|error| format!("its manifest is refused: {error}"))?;
        }
        Ok(Verified {
            name,
            digest: actual_digest.to_owned(),
            sequence,
            manifest: headers.manifest.clone(),
        })
    }

    /// Refuses a deploy that is not newer than the newest accepted for its
    /// name (a replay), recognises that newest one seen again (a copy), and
    /// otherwise remembers it as the newest. Deploys are checked in stream
    /// order, so this holds on replay too.
    fn check_order(&self, verified: Verified) -> Result<Order, String> {
        let Some(sequence) = verified.sequence else {
            return Ok(Order::New(verified));
        };
        let mut newest = self.newest.lock().unwrap_or_else(|e| e.into_inner());
        match newest.get(&verified.name) {
            Some(accepted)
                if accepted.sequence == sequence && accepted.digest == verified.digest =>
            {
                Ok(Order::Copy)
            }
            Some(accepted) if sequence <= accepted.sequence => Err(format!(
                "older than a deploy of {} this host already accepted (sequence {sequence} is not \
                 above {}): a replayed deploy cannot roll a procedure back. To go back to \
                 an old version, deploy it again; if this is a new deploy, the deployer's clock \
                 is behind",
                verified.name, accepted.sequence
            )),
            _ => {
                newest.insert(
                    verified.name.clone(),
                    Newest {
                        sequence,
                        digest: verified.digest.clone(),
                    },
                );
                Ok(Order::New(verified))
            }
        }
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
        self.folder
            .save_and_serve(procedure, module, manifest.clone())
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
