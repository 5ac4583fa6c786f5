//! Remote deploys: signed modules arriving on the deploy stream.
//!
//! The contract (stream name, headers, what is signed, the answer) is in
//! `warren_protocol::deploy`. This module decides whether to accept a
//! deploy and applies it: check size, digest and signature against the
//! host's [`DeployPolicy`], compile off the async runtime, swap it in
//! (make-before-break, like a file change) and save it into the modules
//! folder so a restart serves it too. A refused deploy changes nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use warren_protocol::deploy::{DeployAnswer, PublicKey};

use crate::modules::{MODULE_EXTENSION, Procedure, Registry, digest, procedure_name};
use crate::sandbox::Sandbox;

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
    /// The module's bytes.
    pub module: Vec<u8>,
}

/// A deploy that passed every check, ready to apply.
struct Verified {
    name: String,
    digest: String,
}

/// Applies deploys to this host's registry and modules folder.
pub struct Deployer {
    host_id: String,
    policy: DeployPolicy,
    registry: Arc<Registry>,
    sandbox: Arc<Sandbox>,
    modules_dir: PathBuf,
}

impl Deployer {
    /// A deployer for this host.
    pub fn new(
        host_id: String,
        policy: DeployPolicy,
        registry: Arc<Registry>,
        sandbox: Arc<Sandbox>,
        modules_dir: PathBuf,
    ) -> Self {
        Deployer {
            host_id,
            policy,
            registry,
            sandbox,
            modules_dir,
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
                let verified = self.verify(request, &digest);
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
        answers
            .into_iter()
            .map(|a| a.expect("every deploy answered"))
            .collect()
    }

    /// Every check that needs no compiling: name, size, digest, signature.
    fn verify(&self, request: &DeployRequest, actual_digest: &str) -> Result<Verified, String> {
        let name = request
            .name
            .clone()
            .ok_or("the deploy names no procedure (header x-deploy-name)")?;
        if procedure_name(Path::new(&format!("{name}.{MODULE_EXTENSION}"))).as_deref()
            != Some(name.as_str())
        {
            return Err(format!(
                "{name:?} is not a valid procedure name (letters, digits, '-', '_', '.')"
            ));
        }
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
        self.check_signature(request, &name, actual_digest)?;
        Ok(Verified {
            name,
            digest: actual_digest.to_owned(),
        })
    }

    fn check_signature(
        &self,
        request: &DeployRequest,
        name: &str,
        digest: &str,
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
        if key.verifies(name, digest, signature) {
            Ok(())
        } else {
            Err(format!("bad signature: {key} did not sign {name} {digest}"))
        }
    }

    /// Compiles and swaps the module in, then saves it to the modules folder.
    async fn install(&self, verified: &Verified, module: Vec<u8>) -> anyhow::Result<()> {
        let Verified { name, digest } = verified;
        let serving = self.registry.get(name).map(|p| p.digest.clone());
        let mut module = module;
        if serving.as_ref() != Some(digest) {
            // The bytes travel to the compile thread and back: no copy.
            let (procedure, compiled) = tokio::task::spawn_blocking({
                let sandbox = self.sandbox.clone();
                let (name, digest) = (name.clone(), digest.clone());
                move || Procedure::compile(&sandbox, &name, &module, digest).map(|p| (p, module))
            })
            .await
            .context("the compile task failed")??;
            module = compiled;
            let old = self.registry.install(procedure);
            tracing::info!(
                procedure = %name,
                from = old.as_ref().map_or("nothing", |p| p.digest.as_str()),
                to = %digest,
                "procedure deployed"
            );
        }
        // Saved after the swap: the folder watcher then finds the digest
        // already serving and does not compile it again.
        save_module(&self.modules_dir, name, &module)
            .with_context(|| format!("saving {name}.wasm into {}", self.modules_dir.display()))
    }
}

/// Writes `NAME.wasm` atomically (a temporary file, then a rename).
fn save_module(dir: &Path, name: &str, module: &[u8]) -> std::io::Result<()> {
    let target = dir.join(format!("{name}.{MODULE_EXTENSION}"));
    let tmp = dir.join(format!(
        ".{name}.{MODULE_EXTENSION}.deploy-{}",
        std::process::id()
    ));
    std::fs::write(&tmp, module)?;
    std::fs::rename(&tmp, target)
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
