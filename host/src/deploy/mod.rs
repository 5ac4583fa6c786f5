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
//! a procedure back. [`stream`] reads the deploys
//! from the broker and answers the deployers.

pub mod stream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use warren_protocol::check_procedure_name;
use warren_protocol::deploy::{DeployAnswer, PublicKey};

use crate::modules::{ModulesFolder, Procedure, digest};

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
    /// Procedure name (`x-deploy-name`).
    pub name: Option<String>,
    /// Claimed digest of the body (`x-deploy-digest`).
    pub digest: Option<String>,
    /// Signer's public key (`x-deploy-key`).
    pub key: Option<String>,
    /// Hex signature (`x-deploy-signature`).
    pub signature: Option<String>,
    /// Sequence, decimal (`x-deploy-sequence`).
    pub sequence: Option<String>,
    /// The module's bytes.
    pub module: Vec<u8>,
}

/// A deploy that passed every check, ready to apply.
struct Verified {
    name: String,
    digest: String,
    /// Absent only on unsigned deploys from older deployers.
    sequence: Option<u64>,
}

/// Applies deploys to this host's modules folder (and so to what it serves).
pub struct Deployer {
    host_id: String,
    policy: DeployPolicy,
    folder: Arc<ModulesFolder>,
    /// Per name, the sequence of the newest deploy that passed the checks.
    newest: Mutex<HashMap<String, u64>>,
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

    fn refusal(&self, digest: String, reason: String, started: Instant) -> DeployAnswer {
        DeployAnswer {
            host: self.host_id.clone(),
            accepted: false,
            reason,
            digest,
            took_ms: started.elapsed().as_millis() as u64,
        }
    }

    /// Checks and applies a burst of deploys, oldest first (the history on
    /// startup, or a single live deploy), and answers each, in order.
    ///
    /// Per name, the newest deploy that passes every check and compiles is
    /// the one served; older acceptable ones are answered as superseded, so
    /// a replayed history costs one compile per name, and a refused deploy
    /// at the end of the history never hides a good one before it.
    pub async fn apply_all(&self, requests: Vec<DeployRequest>) -> Vec<DeployAnswer> {
        let started = Instant::now();
        let checked: Vec<(String, Result<Verified, String>)> = requests
            .iter()
            .map(|request| {
                let digest = digest(&request.module);
                let verified = self
                    .verify(request, &digest)
                    .and_then(|verified| self.check_order(verified));
                (digest, verified)
            })
            .collect();
        let mut modules: Vec<Option<Vec<u8>>> =
            requests.into_iter().map(|r| Some(r.module)).collect();
        let mut answers: Vec<Option<DeployAnswer>> = vec![None; checked.len()];
        // Newest first, so the first to install per name wins.
        let mut settled_names: Vec<&str> = Vec::new();
        for index in (0..checked.len()).rev() {
            let (digest, verified) = &checked[index];
            let answer = match verified {
                Err(reason) => self.refusal(digest.clone(), reason.clone(), started),
                Ok(verified) if settled_names.contains(&verified.name.as_str()) => self.refusal(
                    digest.clone(),
                    format!(
                        "superseded by a newer deploy of {} in the deploy history",
                        verified.name
                    ),
                    started,
                ),
                Ok(verified) => {
                    let module = modules[index].take().expect("each module is used once");
                    match self.install(verified, module).await {
                        Ok(()) => {
                            settled_names.push(verified.name.as_str());
                            DeployAnswer {
                                host: self.host_id.clone(),
                                accepted: true,
                                reason: String::new(),
                                digest: digest.clone(),
                                took_ms: started.elapsed().as_millis() as u64,
                            }
                        }
                        Err(error) => self.refusal(digest.clone(), format!("{error:#}"), started),
                    }
                }
            };
            answers[index] = Some(answer);
        }
        let answers: Vec<DeployAnswer> = answers
            .into_iter()
            .map(|a| a.expect("every deploy answered"))
            .collect();
        for answer in &answers {
            self.folder.metrics().deploy_answered(answer.accepted);
        }
        answers
    }

    /// Every check that needs no compiling: name, size, digest, signature.
    fn verify(&self, request: &DeployRequest, actual_digest: &str) -> Result<Verified, String> {
        let name = request
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
        let claimed = request.digest.as_deref().unwrap_or_default();
        if claimed != actual_digest {
            return Err(format!(
                "the module's digest is {actual_digest}, not {claimed:?} as its header says"
            ));
        }
        let sequence = match &request.sequence {
            None => None,
            Some(text) => Some(text.trim().parse::<u64>().map_err(|_| {
                format!("the deploy's sequence (x-deploy-sequence) {text:?} is not a whole number")
            })?),
        };
        self.check_signature(request, &name, actual_digest, sequence)?;
        Ok(Verified {
            name,
            digest: actual_digest.to_owned(),
            sequence,
        })
    }

    /// Refuses a deploy that is not newer than the newest accepted for its
    /// name (a replay), and otherwise remembers it as the newest. Deploys
    /// are checked in stream order, so this holds on replay too.
    fn check_order(&self, verified: Verified) -> Result<Verified, String> {
        let Some(sequence) = verified.sequence else {
            return Ok(verified);
        };
        let mut newest = self.newest.lock().expect("newest lock");
        match newest.get(&verified.name) {
            Some(&accepted) if sequence <= accepted => Err(format!(
                "older than a deploy of {} this host already accepted (sequence {sequence} is not \
                 above {accepted}): a replayed deploy cannot roll a procedure back. To go back to \
                 an old version, deploy it again; if this is a new deploy, the deployer's clock \
                 is behind",
                verified.name
            )),
            _ => {
                newest.insert(verified.name.clone(), sequence);
                Ok(verified)
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
        let (Some(key), Some(signature)) = (&request.key, &request.signature) else {
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
        if key.verifies(name, digest, sequence, signature) {
            Ok(())
        } else {
            Err(format!(
                "bad signature: {key} did not sign {name} {digest} with sequence {sequence}"
            ))
        }
    }

    /// Compiles the module, saves it into the modules folder, then serves
    /// it. Nothing changes unless every step succeeds.
    async fn install(&self, verified: &Verified, module: Vec<u8>) -> anyhow::Result<()> {
        let Verified { name, digest, .. } = verified;
        let serving = self.folder.registry().get(name).map(|p| p.digest.clone());
        let (procedure, module) = if serving.as_ref() == Some(digest) {
            // Served already (a replayed history, a repeated deploy): make
            // sure the folder holds it too.
            let procedure = self.folder.registry().get(name).expect("served");
            (Procedure::clone(&procedure), module)
        } else {
            // The bytes travel to the compile thread and back: no copy.
            tokio::task::spawn_blocking({
                let sandbox = self.folder.sandbox().clone();
                let (name, digest) = (name.clone(), digest.clone());
                move || Procedure::compile(&sandbox, &name, &module, digest).map(|p| (p, module))
            })
            .await
            .context("the compile task failed")??
        };
        self.folder.save_and_serve(procedure, module).await
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
