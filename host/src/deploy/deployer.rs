//! The [`Deployer`]: what a host applies deploys with. It checks each one
//! ([`super::checks`], [`super::replay`]), compiles it off the async
//! runtime, saves it into the modules folder and only then serves it, and
//! words the answer its deployer gets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use warren_protocol::deploy::DeployAnswer;

use super::checks::{DeployRequest, Verified, check_signature, verify};
use super::policy::DeployPolicy;
use super::record::{self, DeployRecord, Records};
use super::replay::{Order, ReplayGuard};
use super::versions::Versions;
use crate::modules::{ModulesFolder, Procedure, version};

/// Applies deploys to this host's modules folder (and so to what it serves).
pub struct Deployer {
    host_id: String,
    policy: DeployPolicy,
    folder: Arc<ModulesFolder>,
    /// Per name, the newest deploy that passed the checks, and the names
    /// whose record could not be read.
    guard: ReplayGuard,
    /// The records read at start: what a starting host puts back into the
    /// stream if the stream no longer holds it ([`super::stream`]).
    records: HashMap<String, DeployRecord>,
    /// The versions of each procedure kept for `warren rollback`.
    versions: Arc<Versions>,
}

impl Deployer {
    /// A deployer for this host, which remembers the newest deploy of each
    /// name from the records in the modules folder ([`super::record`]). Call it
    /// after the folder is loaded, so it knows what the folder serves. It
    /// keeps the last `keep_versions` versions of each name
    /// ([`super::versions`]).
    pub fn new(
        host_id: String,
        policy: DeployPolicy,
        folder: Arc<ModulesFolder>,
        keep_versions: usize,
    ) -> anyhow::Result<Self> {
        let Records { read, unreadable } = record::read_records(folder.dir())?;
        let guard = ReplayGuard::new(&read, unreadable, &policy, &folder);
        let versions = Versions::open(folder.dir(), keep_versions)?;
        Ok(Deployer {
            host_id,
            policy,
            folder,
            guard,
            records: read,
            versions: Arc::new(versions),
        })
    }

    /// The versions this host keeps.
    pub fn versions(&self) -> &Arc<Versions> {
        &self.versions
    }

    /// Gives a deploy of a kept version ([`DeployHeaders::kept`]) the
    /// module and manifest this host keeps of it, so that it is checked
    /// and applied as any deploy is; any other deploy is left as it is.
    /// Before any file is read, its signature and order are checked from
    /// its headers alone (they name everything that is signed): a message
    /// without a trusted signature costs nothing, and the newest accepted
    /// deploy seen again is [`Kept::Copy`], answered without reading the
    /// module. A trusted, newer deploy of a version this host does not keep
    /// is [`Kept::Missing`]. The reason never repeats a header's value.
    ///
    /// [`DeployHeaders::kept`]: warren_protocol::deploy::DeployHeaders::kept
    pub fn attach_kept(&self, request: &mut DeployRequest) -> Result<Kept, String> {
        if request.headers.kept.is_none() {
            return Ok(Kept::Carried);
        }
        let headers = &request.headers;
        let (Some(name), Some(digest)) = (&headers.name, &headers.digest) else {
            return Err("the deploy of a kept version names no procedure or digest".into());
        };
        warren_protocol::check_procedure_name(name).map_err(
            |_| "the deploy's name (header x-deploy-name) is not a valid procedure name",
        )?;
        let Some(sequence) = headers
            .sequence
            .as_deref()
            .and_then(|s| s.trim().parse().ok())
        else {
            return Err("a deploy of a kept version needs a sequence (x-deploy-sequence)".into());
        };
        check_signature(&self.policy, request, name, digest, Some(sequence))?;
        match self.guard.peek_order(name, sequence, digest) {
            Some(Ok(())) => return Ok(Kept::Copy),
            Some(Err(older)) => return Err(older),
            None => {}
        }
        let manifest_digest = headers.manifest_digest();
        match self.versions.find(name, digest, manifest_digest.as_deref()) {
            Some(kept) => {
                request.module = kept.module;
                request.headers = request.headers.with_manifest_attached(kept.manifest);
                Ok(Kept::Attached)
            }
            None => Ok(Kept::Missing(match self.versions.keep_count() {
                0 => "this host keeps no versions (--keep-versions 0): deploy the module \
                      itself with `warren deploy`"
                    .to_owned(),
                keep => format!(
                    "this host keeps no such version of the procedure (it keeps the last \
                     {keep} accepted of each; `warren versions NAME` lists what each host \
                     keeps): it applies it once a host that keeps it publishes it again with \
                     its module, or deploy the module itself with `warren deploy`"
                ),
            })),
        }
    }

    /// The deploy records read from the modules folder at start.
    pub fn records(&self) -> &HashMap<String, DeployRecord> {
        &self.records
    }

    /// What this host accepts.
    pub fn policy(&self) -> &DeployPolicy {
        &self.policy
    }

    /// Checks one deploy of `digest`: every check that needs no compiling
    /// ([`verify`]), then its order against the newest accepted of its
    /// name ([`ReplayGuard::check_order`]).
    pub fn check(&self, request: &DeployRequest, digest: &str) -> Result<Order, String> {
        verify(&self.policy, request, digest).and_then(|verified| self.guard.check_order(verified))
    }

    /// The newest deploy of `name` passed every check but could not be
    /// served here (see [`ReplayGuard::not_served`]).
    pub fn not_served(&self, name: &str) {
        self.guard.not_served(name);
    }

    /// This host's id, as it signs its answers.
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// The modules folder deploys are saved into.
    pub fn folder(&self) -> &Arc<ModulesFolder> {
        &self.folder
    }

    /// The answer refusing a deploy of `digest`, for `reason`, timed from
    /// `started`.
    pub fn refusal(&self, digest: String, reason: String, started: Instant) -> DeployAnswer {
        DeployAnswer {
            host: self.host_id.clone(),
            accepted: false,
            reason,
            digest,
            took_ms: started.elapsed().as_millis() as u64,
        }
    }

    /// The answer accepting a deploy of `digest`, timed from `started`.
    pub fn acceptance(&self, digest: String, started: Instant) -> DeployAnswer {
        DeployAnswer {
            host: self.host_id.clone(),
            accepted: true,
            reason: String::new(),
            digest,
            took_ms: started.elapsed().as_millis() as u64,
        }
    }

    /// Compiles the module, saves it into the modules folder, then serves
    /// it. Nothing changes unless every step succeeds.
    pub async fn install(&self, verified: &Verified, module: Vec<u8>) -> anyhow::Result<()> {
        let Verified {
            name,
            digest,
            manifest,
            record,
            ..
        } = verified;
        let manifest_digest = manifest.as_deref().map(warren_protocol::digest);
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
        let module = match record {
            Some(record) => self.keep_version(record, module, manifest.clone()).await?,
            None => module,
        };
        let record = record.as_ref().map(DeployRecord::to_text);
        self.folder
            .save_and_serve(procedure, module, manifest.clone(), record)
            .await
    }

    /// Keeps the version `record` describes ([`super::versions`]) off the
    /// async runtime, and hands the module back. A version that cannot be
    /// kept is still served: it is logged, and only a rollback to it would
    /// be refused.
    async fn keep_version(
        &self,
        record: &DeployRecord,
        module: Vec<u8>,
        manifest: Option<String>,
    ) -> anyhow::Result<Vec<u8>> {
        let versions = self.versions.clone();
        let record = record.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(error) = versions.keep(&record, &module, manifest.as_deref()) {
                tracing::warn!(
                    procedure = %record.name,
                    digest = %record.digest,
                    "could not keep this version for rollback: {error:#}"
                );
            }
            module
        })
        .await
        .context("the task keeping the version failed")
    }
}

/// What [`Deployer::attach_kept`] did with a deploy.
#[derive(Debug, PartialEq, Eq)]
pub enum Kept {
    /// Not a deploy of a kept version: it carries its module.
    Carried,
    /// Its module and manifest are attached, from what this host keeps.
    Attached,
    /// The newest deploy this host accepted of its name, seen again.
    Copy,
    /// Signed by a trusted key and newer than what this host accepted, but
    /// of a version this host does not keep (why, for its answer): it
    /// cannot be applied, but the older deploys before it are out of date.
    Missing(String),
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
