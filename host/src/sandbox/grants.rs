//! What one procedure may use on this host: its manifest
//! ([`warren_protocol::manifest`]) applied to the host's own limits and
//! secrets.
//!
//! Why it is built this way:
//! - **Limits only go down.** A manifest can lower the host's timeout,
//!   memory, reply size and concurrency for its procedure, never raise them:
//!   the operator's flags are the ceiling for code they did not write. The
//!   rule is [`Limits::lowered_by`], in `warren-protocol` with the one
//!   [`Limits`] type.
//! - **Configuration and secrets share one door,** `wasi:config/store`, as
//!   the issue asked and as Spin does: a guest reads `api-key` the way it
//!   reads `greeting`. Secret values are read from the host's side
//!   (`--secrets-dir`) when the procedure loads and live only in the store
//!   the guest reads; nothing here can print them (no `Debug` on the
//!   values, and [`EffectiveGrants`] carries names only). The guest can:
//!   what leaves the sandbox as text (error replies, guest output logged,
//!   outbound HTTP log lines) has every secret value replaced
//!   ([`super::scrub`]).
//! - **Outbound HTTP** (`[http] allow`) is [`super::http`]'s.
//! - **Imports are checked at load** ([`check_imports`]): a component that
//!   imports an interface its manifest does not grant is refused then,
//!   naming the interface and the grant, instead of failing its first
//!   request.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::bail;
use tokio::sync::Semaphore;
use warren_protocol::manifest::{EffectiveGrants, Manifest};
use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime_wasi_config::WasiConfigVariables;

use super::http::HttpGrant;
use super::limits::Limits;
use super::scrub::Scrubber;

/// The interface configuration and secrets are read through.
pub const CONFIG_INTERFACE: &str = "wasi:config/store";
/// The interfaces of outbound HTTP.
const HTTP_PACKAGE: &str = "wasi:http/";

/// A procedure's grants on this host, ready for its requests.
pub struct Grants {
    /// Its limits: the host's, lowered by the manifest.
    pub(super) limits: Limits,
    /// What `wasi:config/store` answers: configuration and secret values.
    pub(super) store: Arc<WasiConfigVariables>,
    /// Whether the manifest grants `wasi:config/store` at all.
    store_granted: bool,
    /// Its secret values, to keep out of error replies and logs.
    pub(super) secrets: Arc<Scrubber>,
    /// One permit per request of this procedure allowed to run at once,
    /// when the manifest asks for fewer than the host's `--concurrency`.
    pub(super) slots: Option<Arc<Semaphore>>,
    /// Where it may send HTTP requests, and how many.
    pub(super) http: Option<Arc<HttpGrant>>,
    /// What is granted, without secret values: for logs and status.
    effective: EffectiveGrants,
}

impl std::fmt::Debug for Grants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the store: it holds secret values.
        f.debug_struct("Grants")
            .field("effective", &self.effective)
            .finish_non_exhaustive()
    }
}

impl Grants {
    /// What a procedure without a manifest gets: the host's limits, nothing
    /// else.
    pub fn none(host: &Limits) -> Grants {
        Grants {
            limits: *host,
            store: Arc::default(),
            store_granted: false,
            secrets: Arc::default(),
            slots: None,
            http: None,
            effective: EffectiveGrants::new(&Manifest::default(), None, host),
        }
    }

    /// `manifest` (whose text has digest `manifest_digest`) applied to the
    /// host's limits (each set: [`Limits::with_defaults`]), with secret
    /// values read from `secrets_dir`. Refused, saying why, when the
    /// manifest names a secret the host does not have or grants what this
    /// host cannot give.
    pub fn resolve(
        host: &Limits,
        manifest: &Manifest,
        manifest_digest: &str,
        secrets_dir: Option<&Path>,
    ) -> anyhow::Result<Grants> {
        let http = match &manifest.http {
            Some(http) => HttpGrant::from_manifest(http)
                .map_err(|rule| anyhow::anyhow!("its manifest's [http] allow: {rule}"))?
                .map(Arc::new),
            None => None,
        };
        let limits = host.lowered_by(&manifest.limits);
        let mut store = WasiConfigVariables::new();
        for (key, value) in &manifest.config {
            store.insert(key, value);
        }
        let mut secrets = Vec::with_capacity(manifest.secrets.names.len());
        for name in &manifest.secrets.names {
            let value = read_secret(secrets_dir, name)?;
            store.insert(name, &value);
            secrets.push(value);
        }
        let slots = (limits.concurrency() < host.concurrency())
            .then(|| Arc::new(Semaphore::new(limits.concurrency())));
        Ok(Grants {
            http,
            effective: EffectiveGrants::new(manifest, Some(manifest_digest), &limits),
            store_granted: !manifest.config.is_empty() || !manifest.secrets.names.is_empty(),
            store: Arc::new(store),
            secrets: Arc::new(Scrubber::new(secrets.iter().map(String::as_str))),
            slots,
            limits,
        })
    }

    /// What is granted, without secret values.
    pub fn effective(&self) -> &EffectiveGrants {
        &self.effective
    }
}

/// The value of secret `name`: the file `DIR/name`, less one trailing
/// newline (what `echo value > file` leaves).
fn read_secret(secrets_dir: Option<&Path>, name: &str) -> anyhow::Result<String> {
    let Some(dir) = secrets_dir else {
        bail!(
            "its manifest names the secret {name:?}, and this host has no secrets: start \
             warren-host with --secrets-dir DIR holding a file {name}"
        );
    };
    let path: PathBuf = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(mut value) => {
            if value.ends_with('\n') {
                value.pop();
                if value.ends_with('\r') {
                    value.pop();
                }
            }
            Ok(value)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => bail!(
            "its manifest names the secret {name:?}, which this host does not have (no file {})",
            path.display()
        ),
        // The error names the file, never its contents.
        Err(error) => bail!(
            "reading the secret {name:?} from {}: {error}",
            path.display()
        ),
    }
}

/// Refuses a component that imports an interface its grants do not cover,
/// naming the interface and the grant it would need.
pub(super) fn check_imports(
    engine: &Engine,
    component: &Component,
    grants: &Grants,
) -> anyhow::Result<()> {
    for (import, _) in component.component_type().imports(engine) {
        if import.starts_with(CONFIG_INTERFACE) && !grants.store_granted {
            bail!(
                "it imports {import}, and its manifest grants no configuration: add a [config] \
                 or [secrets] section to its manifest (NAME.toml)"
            );
        }
        if import.starts_with(HTTP_PACKAGE) && grants.http.is_none() {
            bail!(
                "it imports {import}, and its manifest grants no outbound HTTP: add an [http] \
                 section listing where it may connect (allow = [\"https://api.example.com\"]) \
                 to its manifest (NAME.toml)"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(text: &str) -> Manifest {
        Manifest::parse(text).unwrap()
    }

    #[test]
    fn limits_only_go_down() {
        let host = Limits {
            concurrency: Some(4),
            ..Limits::DEFAULT
        };
        let lower = manifest("[limits]\ntimeout = \"2s\"\nmemory = \"1MiB\"\nconcurrency = 2\n");
        let grants = Grants::resolve(&host, &lower, "sha256:00", None).unwrap();
        assert_eq!(grants.limits.timeout(), std::time::Duration::from_secs(2));
        assert_eq!(grants.limits.memory(), 1 << 20);
        assert_eq!(grants.limits.concurrency(), 2);
        assert!(grants.slots.is_some());
        let higher = manifest("[limits]\ntimeout = \"1h\"\nmemory = \"4GiB\"\nconcurrency = 64\n");
        let grants = Grants::resolve(&host, &higher, "sha256:00", None).unwrap();
        assert_eq!(grants.limits.timeout(), host.timeout());
        assert_eq!(grants.limits.memory(), host.memory());
        assert_eq!(grants.limits.concurrency(), 4);
        assert!(grants.slots.is_none());
    }

    #[test]
    fn secrets_come_from_the_host_and_never_show() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("api-key"), "s3cr3t-value\n").unwrap();
        let wants = manifest("[secrets]\nnames = [\"api-key\"]\n");
        let grants =
            Grants::resolve(&Limits::default(), &wants, "sha256:00", Some(dir.path())).unwrap();
        let shown = format!("{grants:?} {}", grants.effective());
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("api-key"), "{shown}");
        assert_eq!(
            grants.secrets.scrub("invalid literal: 's3cr3t-value'"),
            "invalid literal: '[secret]'"
        );
        assert!(Grants::none(&Limits::default()).secrets.is_empty());
        let missing = manifest("[secrets]\nnames = [\"db-password\"]\n");
        let error = Grants::resolve(&Limits::default(), &missing, "sha256:00", Some(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("\"db-password\"") && error.contains("does not have"),
            "{error}"
        );
        let error = Grants::resolve(&Limits::default(), &missing, "sha256:00", None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("--secrets-dir"), "{error}");
    }
}
