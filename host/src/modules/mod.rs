//! Procedures: which components this host serves, and loading new versions.
//!
//! Every `NAME.wasm` in the modules folder is the procedure `NAME`. The
//! [`Registry`] maps names to the [`Procedure`] currently serving them. It
//! is swapped as a whole (`arc-swap`), so a request takes an `Arc` to the
//! version it starts with and finishes on it however many swaps happen
//! meanwhile, and readers never wait on a writer.
//!
//! [`watcher`] keeps the registry in step with the folder: a created or
//! replaced file is compiled off the request path and swapped in only once it
//! is ready (make-before-break); a file that fails to load is logged and the
//! last good version keeps serving; a deleted file retires its procedure.

pub mod watcher;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
pub use warren_protocol::module_digest as digest;

use crate::sandbox::{PreparedComponent, Sandbox};

/// The file extension that marks a procedure in the modules folder.
pub const MODULE_EXTENSION: &str = "wasm";

/// One loaded version of a procedure.
pub struct Procedure {
    /// The procedure's name: the file name without `.wasm`.
    pub name: String,
    /// `sha256:<hex>` of the module's bytes; sent as `x-procedure-digest`.
    pub digest: String,
    /// The compiled component, ready to instantiate.
    pub component: PreparedComponent,
}

impl Procedure {
    /// Compiles `wasm`, whose [`digest`] the caller has already taken, as
    /// procedure `name`. CPU-heavy: call off the async runtime.
    pub fn compile(
        sandbox: &Sandbox,
        name: &str,
        wasm: &[u8],
        digest: String,
    ) -> anyhow::Result<Self> {
        let component = sandbox.prepare(wasm, &digest)?;
        Ok(Procedure {
            name: name.to_owned(),
            digest,
            component,
        })
    }
}

/// The procedures being served, by name; cheap to read from any thread.
#[derive(Default)]
pub struct Registry {
    procedures: ArcSwap<BTreeMap<String, Arc<Procedure>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current version of procedure `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Procedure>> {
        self.procedures.load().get(name).cloned()
    }

    /// The procedure to run when a request names none: `preferred` if given,
    /// otherwise the only one loaded. `Err` says why there is none.
    pub fn default_procedure(&self, preferred: Option<&str>) -> Result<Arc<Procedure>, String> {
        let procedures = self.procedures.load();
        if let Some(name) = preferred {
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

    /// Names and digests of all procedures, in name order.
    pub fn list(&self) -> Vec<(String, String)> {
        self.procedures
            .load()
            .values()
            .map(|p| (p.name.clone(), p.digest.clone()))
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
        let mut replaced = None;
        self.procedures.rcu(|current| {
            let mut next = BTreeMap::clone(current);
            replaced = next.insert(procedure.name.clone(), procedure.clone());
            next
        });
        replaced
    }

    /// Stops serving `name`; returns the version retired, if any.
    pub fn retire(&self, name: &str) -> Option<Arc<Procedure>> {
        let mut retired = None;
        self.procedures.rcu(|current| {
            let mut next = BTreeMap::clone(current);
            retired = next.remove(name);
            next
        });
        retired
    }
}

fn list_loaded(procedures: &BTreeMap<String, Arc<Procedure>>) -> String {
    if procedures.is_empty() {
        " (none are loaded)".to_owned()
    } else {
        let names: Vec<&str> = procedures.keys().map(String::as_str).collect();
        format!(" (loaded: {})", names.join(", "))
    }
}

/// The procedure name a path stands for: `modules/fib.wasm` → `fib`.
/// `None` for anything that is not a `NAME.wasm` file name.
pub fn procedure_name(path: &Path) -> Option<String> {
    if path.extension()? != MODULE_EXTENSION {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    let valid = !stem.is_empty()
        && !stem.starts_with('.')
        && stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    valid.then(|| stem.to_owned())
}

/// The `NAME.wasm` files in `dir`, sorted by name.
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
        .filter(|path| path.is_file() && procedure_name(path).is_some())
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
    }

    #[test]
    fn digest_is_sha256_hex() {
        assert_eq!(
            digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
