//! Procedures: which components this host serves, and loading new versions.
//!
//! Every `NAME.wasm` in the modules folder is the procedure `NAME`, granted
//! what `NAME.toml` beside it says (its manifest; none: no grants). The
//! [`Serving`] maps names to the [`Procedure`] currently serving them. It
//! is swapped as a whole (`arc-swap`), so a request takes an `Arc` to the
//! version it starts with and finishes on it however many swaps happen
//! meanwhile, and readers never wait on a writer.
//!
//! [`ModulesFolder`] keeps [`Serving`] in step with the folder: a created or
//! replaced file is compiled off the request path and swapped in only once it
//! is ready (make-before-break); a file that fails to load is logged once and
//! the last good version keeps serving; a deleted file retires its procedure.
//! Deploys save through it too, so the folder and what is served never
//! disagree. [`watcher`] tells it which files changed.

mod files;
mod folder;
pub mod watcher;

pub use folder::ModulesFolder;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use warren_protocol::check_procedure_name;
use warren_protocol::manifest::{EffectiveGrants, Manifest};
use warren_protocol::status::ProcedureStatus;

use crate::callers::QuotaBook;
use crate::sandbox::{PreparedComponent, Sandbox};

/// The file extension that marks a procedure in the modules folder.
pub const MODULE_EXTENSION: &str = "wasm";

/// The file extension of a deploy's record beside its module (`fib.deploy`
/// beside `fib.wasm`): what a remote deploy saves so that a restarted host
/// still refuses older deploys (`crate::deploy::record`).
pub const RECORD_EXTENSION: &str = "deploy";

/// One loaded version of a procedure. Cloning shares the compiled code.
#[derive(Clone)]
pub struct Procedure {
    /// The procedure's name: the file name without `.wasm`.
    pub name: String,
    /// `sha256:<hex>` of the module's bytes; sent as `x-procedure-digest`.
    pub digest: String,
    /// The compiled component, ready to instantiate, with its grants.
    pub component: PreparedComponent,
    /// `sha256:<hex>` of its manifest's text, when it has one.
    pub manifest_digest: Option<String>,
    /// Each caller's use of it on this host, under its manifest's
    /// `[quota]`: caller policy, so kept with the procedure rather than in
    /// its sandbox grants.
    pub quota: Arc<QuotaBook>,
}

impl Procedure {
    /// Compiles `wasm`, whose [`digest`] the caller has already taken, as
    /// procedure `name`, granted what `manifest` (its text) says.
    /// CPU-heavy: call off the async runtime.
    pub fn compile(
        sandbox: &Sandbox,
        name: &str,
        wasm: &[u8],
        digest: String,
        manifest: Option<&str>,
    ) -> anyhow::Result<Self> {
        let manifest_digest = manifest.map(warren_protocol::digest);
        let parsed = manifest
            .map(Manifest::parse)
            .transpose()
            .with_context(|| format!("the manifest of {name}"))?;
        let grants = sandbox
            .grants(parsed.as_ref().zip(manifest_digest.as_deref()))
            .with_context(|| format!("procedure {name}"))?;
        let component = sandbox
            .prepare_granted(wasm, &digest, grants)
            .with_context(|| format!("module {name}"))?;
        let granted = component.grants().effective();
        let quota = QuotaBook::new(
            granted.quota,
            usize::try_from(granted.concurrency).unwrap_or(usize::MAX),
        );
        Ok(Procedure {
            name: name.to_owned(),
            digest,
            component,
            manifest_digest,
            quota,
        })
    }

    /// What tells two versions apart: the module's digest, and its
    /// manifest's when it has one (a new manifest is a new version).
    pub fn version(&self) -> String {
        version(&self.digest, self.manifest_digest.as_deref())
    }

    /// What it is granted on this host, without secret values.
    pub fn grants(&self) -> &EffectiveGrants {
        self.component.grants().effective()
    }

    /// Who may call it (its manifest's `callers`; `None`: everyone), and
    /// whether requests without `user_id` may too (`callers-anonymous`).
    pub fn callers(&self) -> (Option<&[String]>, bool) {
        let grants = self.grants();
        (grants.callers.as_deref(), grants.callers_anonymous)
    }
}

/// [`Procedure::version`] of a module and manifest digest.
pub fn version(digest: &str, manifest_digest: Option<&str>) -> String {
    match manifest_digest {
        None => digest.to_owned(),
        Some(manifest) => format!("{digest} with manifest {manifest}"),
    }
}

/// The procedures being served, by name; cheap to read from any thread.
///
/// It also knows the host's `--default-procedure`, and warns when a change
/// leaves requests without `x-procedure` unanswerable, because that is the
/// moment an operator can still do something about it.
#[derive(Default)]
pub struct Serving {
    procedures: ArcSwap<BTreeMap<String, Arc<Procedure>>>,
    /// `--default-procedure`, if given.
    default: Option<String>,
    /// Names whose new module is being read and compiled, how many times
    /// over (a file and a deploy at once), so a request for one not served
    /// yet hears that it is on its way.
    loading: std::sync::Mutex<BTreeMap<String, usize>>,
}

/// Marks a name as loading until dropped ([`Serving::loading`]).
pub struct Loading<'r> {
    serving: &'r Serving,
    name: String,
}

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        let mut loading = self.serving.loading_names();
        if let Some(count) = loading.get_mut(&self.name) {
            *count -= 1;
            if *count == 0 {
                loading.remove(&self.name);
            }
        }
    }
}

impl Serving {
    /// Nothing served yet; `default` answers requests that name no procedure
    /// (when `None`, the only loaded procedure does).
    pub fn new(default: Option<String>) -> Self {
        Serving {
            procedures: ArcSwap::default(),
            default,
            loading: std::sync::Mutex::default(),
        }
    }

    /// Marks `name` as being loaded (read, compiled) until the guard drops.
    pub fn loading(&self, name: &str) -> Loading<'_> {
        *self.loading_names().entry(name.to_owned()).or_default() += 1;
        Loading {
            serving: self,
            name: name.to_owned(),
        }
    }

    /// Whether a new module for `name` is being loaded right now.
    pub fn is_loading(&self, name: &str) -> bool {
        self.loading_names().contains_key(name)
    }

    fn loading_names(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, usize>> {
        self.loading.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current version of procedure `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Procedure>> {
        self.procedures.load().get(name).cloned()
    }

    /// The procedure to run when a request names none: the configured
    /// default if there is one, otherwise the only one loaded. `Err` says
    /// why there is none.
    pub fn default_procedure(&self) -> Result<Arc<Procedure>, String> {
        let procedures = self.procedures.load();
        if let Some(name) = &self.default {
            return procedures.get(name).cloned().ok_or_else(|| {
                format!(
                    "the default procedure {name:?} is not loaded{}",
                    list_loaded(&procedures)
                )
            });
        }
        match procedures.len() {
            1 => Ok(procedures.values().next().cloned().expect("one entry")),
            0 => Err("no procedures are loaded on this host".to_owned()),
            _ => Err(format!(
                "the request names no procedure (header x-procedure) and this host has no \
                 default{}; start it with --default-procedure",
                list_loaded(&procedures)
            )),
        }
    }

    /// Every procedure served, in name order, as `warren status` shows it.
    pub fn list(&self) -> Vec<ProcedureStatus> {
        self.procedures
            .load()
            .values()
            .map(|p| ProcedureStatus {
                name: p.name.clone(),
                digest: p.digest.clone(),
                grants: Some(p.grants().clone()),
            })
            .collect()
    }

    /// Text listing what is loaded, for error messages.
    pub fn describe(&self) -> String {
        list_loaded(&self.procedures.load())
    }

    /// Serves `procedure` under its name from now on; returns the version it
    /// replaced. Requests already running keep the old one.
    pub fn install(&self, procedure: Procedure) -> Option<Arc<Procedure>> {
        let procedure = Arc::new(procedure);
        let (before, replaced) =
            self.change(|procedures| procedures.insert(procedure.name.clone(), procedure.clone()));
        self.warn_about_default(&before);
        replaced
    }

    /// Stops serving `name`; returns the version retired, if any.
    pub fn retire(&self, name: &str) -> Option<Arc<Procedure>> {
        let (before, retired) = self.change(|procedures| procedures.remove(name));
        self.warn_about_default(&before);
        retired
    }

    /// Applies `edit` to a copy of the procedures and swaps the copy in
    /// (again on a fresh copy if another change won the race); returns the
    /// procedures before and what `edit` returned.
    fn change<R>(
        &self,
        mut edit: impl FnMut(&mut BTreeMap<String, Arc<Procedure>>) -> R,
    ) -> (Arc<BTreeMap<String, Arc<Procedure>>>, R) {
        let mut outcome = None;
        let before = self.procedures.rcu(|current| {
            let mut next = BTreeMap::clone(current);
            outcome = Some(edit(&mut next));
            next
        });
        (
            before,
            outcome.expect("rcu calls the closure at least once"),
        )
    }

    /// Warns once the host has loaded what it finds at startup, if some
    /// requests cannot be answered: none at all (with the default named, if
    /// one is set), or those without `x-procedure` because the configured
    /// default is not loaded. (A second module without a default was warned
    /// about as it loaded.)
    pub fn warn_at_startup(&self, modules_dir: &Path) {
        let procedures = self.procedures.load();
        if procedures.is_empty() {
            let default = match &self.default {
                Some(name) => format!(" (so neither is --default-procedure {name})"),
                None => String::new(),
            };
            tracing::warn!(
                modules_dir = %modules_dir.display(),
                "no procedures are loaded yet{default}: every request gets no-procedure until \
                 NAME.wasm files appear in the modules folder"
            );
        } else if self.default.is_some()
            && let Some(why) = why_no_default(self.default.as_deref(), &procedures)
        {
            tracing::warn!("{why}");
        }
    }

    /// Warns when a change has just made requests without `x-procedure`
    /// unanswerable (it said nothing while they were answerable).
    fn warn_about_default(&self, before: &BTreeMap<String, Arc<Procedure>>) {
        let default = self.default.as_deref();
        if why_no_default(default, before).is_none()
            && let Some(why) = why_no_default(default, &self.procedures.load())
        {
            tracing::warn!("{why}");
        }
    }
}

/// Why a request without `x-procedure` would get `no-procedure` with these
/// procedures loaded and this `--default-procedure`, or `None` if it would
/// be answered. Nothing served without a configured default is not worth
/// a warning here: the host says so itself.
fn why_no_default<V>(default: Option<&str>, procedures: &BTreeMap<String, V>) -> Option<String> {
    match default {
        Some(name) if !procedures.contains_key(name) => Some(format!(
            "--default-procedure {name} is not loaded{}: requests without x-procedure get \
             no-procedure until {name}.wasm is in the modules folder",
            list_loaded(procedures)
        )),
        None if procedures.len() > 1 => Some(format!(
            "{} procedures are loaded{} and no --default-procedure is set: requests without \
             x-procedure now get no-procedure",
            procedures.len(),
            list_loaded(procedures)
        )),
        _ => None,
    }
}

fn list_loaded<V>(procedures: &BTreeMap<String, V>) -> String {
    if procedures.is_empty() {
        " (none are loaded)".to_owned()
    } else {
        let names: Vec<&str> = procedures.keys().map(String::as_str).collect();
        format!(" (loaded: {})", names.join(", "))
    }
}

/// The procedure name a path stands for: `modules/fib.wasm` → `fib`.
/// `None` for anything that is not `NAME.wasm` with a valid procedure name
/// (see [`warren_protocol::check_procedure_name`]).
pub fn procedure_name(path: &Path) -> Option<String> {
    if path.extension()? != MODULE_EXTENSION {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    check_procedure_name(stem).is_ok().then(|| stem.to_owned())
}

/// Whether `path` looks meant as a module but its name breaks the naming
/// rule (`Fib.wasm`, `fib.v2.wasm`): worth telling the operator, once.
/// Hidden files (`.fib.wasm.tmp`, deploys being written) are not.
pub fn misnamed_module(path: &Path) -> Option<String> {
    let file_name = path.file_name()?.to_str()?;
    if file_name.starts_with('.') || path.extension()? != MODULE_EXTENSION {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    check_procedure_name(stem).err()
}

/// The `*.wasm` files in `dir` (hidden ones aside), sorted by name: the
/// modules, and the misnamed files [`ModulesFolder`] warns about.
pub fn module_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "reading the modules folder {} (create it, or pass --modules-dir)",
            dir.display()
        )
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.is_file() && (procedure_name(path).is_some() || misnamed_module(path).is_some())
        })
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_wasm_file_names() {
        assert_eq!(
            procedure_name(Path::new("m/fib.wasm")).as_deref(),
            Some("fib")
        );
        assert_eq!(
            procedure_name(Path::new("m/fib-v2.wasm")).as_deref(),
            Some("fib-v2")
        );
        assert_eq!(procedure_name(Path::new("m/fib.wasm.tmp")), None);
        assert_eq!(procedure_name(Path::new("m/.fib.wasm")), None);
        assert_eq!(procedure_name(Path::new("m/fib")), None);
        assert_eq!(procedure_name(Path::new("m/a b.wasm")), None);
        assert_eq!(procedure_name(Path::new("m/Fib.wasm")), None);
        assert_eq!(procedure_name(Path::new("m/fib.v2.wasm")), None);
        assert!(misnamed_module(Path::new("m/Fib.wasm")).is_some());
        assert!(misnamed_module(Path::new("m/.fib.wasm")).is_none());
        assert!(misnamed_module(Path::new("m/fib.wasm")).is_none());
        assert!(misnamed_module(Path::new("m/notes.txt")).is_none());
    }

    #[test]
    fn requests_without_a_procedure_are_warned_about_when_they_cannot_be_answered() {
        let loaded = |names: &[&str]| -> BTreeMap<String, ()> {
            names.iter().map(|n| (n.to_string(), ())).collect()
        };
        assert_eq!(why_no_default(None, &loaded(&[])), None);
        assert_eq!(why_no_default(None, &loaded(&["fib"])), None);
        let two = why_no_default(None, &loaded(&["fib", "echo"])).unwrap();
        assert!(two.contains("no --default-procedure is set"), "{two}");
        assert!(two.contains("echo, fib"), "{two}");
        let missing = why_no_default(Some("fob"), &loaded(&["fib"])).unwrap();
        assert!(
            missing.contains("--default-procedure fob is not loaded"),
            "{missing}"
        );
        assert_eq!(why_no_default(Some("fib"), &loaded(&["fib", "echo"])), None);
    }

    #[test]
    fn digest_is_sha256_hex() {
        assert_eq!(
            warren_protocol::digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
