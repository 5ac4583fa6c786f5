//! The modules folder, and what is served kept in step with it.
//!
//! Every change to what is served goes through [`ModulesFolder`]: a file the
//! watcher reports, the folder read at startup, a module a deploy saves. It
//! remembers what each file looked like when it last read it (size, times,
//! inode), so a file is read again only when it changes: a host never
//! re-reads, re-hashes or recompiles a module because something merely
//! opened it, and a broken file is reported once, then again only when it
//! changes.

use crate::metrics::Metrics;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context as _;

use super::files::{FileFingerprint, Files, Fingerprint, Seen, SeenFiles, lock, save_atomically};
use super::{
    MODULE_EXTENSION, Procedure, Serving, misnamed_module, module_files, procedure_name, version,
};
use crate::sandbox::Sandbox;
use warren_protocol::digest;
use warren_protocol::manifest::MANIFEST_EXTENSION;

/// Counts of what the folder has done since the host started; the tests use
/// them to see that an idle host stays idle.
#[derive(Debug, Default)]
pub struct LoadStats {
    reads: AtomicU64,
    loaded: AtomicU64,
    failed: AtomicU64,
}

#[cfg(test)]
impl LoadStats {
    /// Module files read (and hashed) from the folder.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Modules loaded or swapped in, from the folder or by deploys.
    pub fn loaded(&self) -> u64 {
        self.loaded.load(Ordering::Relaxed)
    }

    /// Module files that failed to load (each failure counted once).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// The modules folder: serves its `NAME.wasm` files (through [`Serving`]) and
/// saves deployed modules into it.
pub struct ModulesFolder {
    dir: PathBuf,
    sandbox: Arc<Sandbox>,
    serving: Arc<Serving>,
    seen: SeenFiles,
    stats: Arc<LoadStats>,
    metrics: Arc<Metrics>,
}

impl ModulesFolder {
    /// The folder `dir`, loading into `serving` through `sandbox`, counting
    /// swaps and failures in `metrics`.
    pub fn new(
        dir: PathBuf,
        sandbox: Arc<Sandbox>,
        serving: Arc<Serving>,
        metrics: Arc<Metrics>,
    ) -> Self {
        ModulesFolder {
            dir,
            sandbox,
            serving,
            seen: SeenFiles::default(),
            stats: Arc::default(),
            metrics,
        }
    }

    /// The host's metrics, which deploys count in too.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The folder's path.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What is served, which this folder keeps up to date.
    pub fn serving(&self) -> &Arc<Serving> {
        &self.serving
    }

    /// The sandbox modules are compiled in.
    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    /// What the folder has done so far.
    #[cfg(test)]
    pub fn stats(&self) -> &Arc<LoadStats> {
        &self.stats
    }

    /// Loads every module in the folder. A module that fails to load is
    /// logged and skipped; only an unreadable folder is an error.
    pub async fn load_all(&self) -> anyhow::Result<()> {
        for path in module_files(&self.dir)? {
            self.reload(&path).await;
        }
        Ok(())
    }

    /// Brings what is served in line with one file: load or swap it if it
    /// (or its manifest, `NAME.toml`) changed since last read, retire its
    /// procedure if it is gone. Logs what it did; says nothing when the
    /// file did not change.
    pub async fn reload(&self, path: &Path) {
        let module_path;
        let path = if path
            .extension()
            .is_some_and(|ext| ext == MANIFEST_EXTENSION)
        {
            module_path = path.with_extension(MODULE_EXTENSION);
            module_path.as_path()
        } else {
            path
        };
        let Some(name) = procedure_name(path) else {
            self.warn_if_misnamed(path);
            return;
        };
        let metadata = match std::fs::metadata(path) {
            Ok(metadata) if metadata.is_file() => metadata,
            Ok(_) => return,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                self.forget(path);
                if let Some(retired) = self.serving.retire(&name) {
                    tracing::info!(procedure = %name, digest = %retired.digest, "module file removed; procedure retired");
                }
                return;
            }
            Err(error) => {
                tracing::warn!(file = %path.display(), "cannot look at the module file: {error}");
                return;
            }
        };
        let fingerprint = Fingerprint::of(&metadata, &path.with_extension(MANIFEST_EXTENSION));
        let before = self.seen(path);
        if before.as_ref().map(|seen| &seen.fingerprint) == Some(&fingerprint) {
            return; // opened or read, not changed
        }

        let started = Instant::now();
        let serving = self.serving.get(&name).map(|p| p.version());
        let broken = before
            .filter(|seen| !seen.loaded)
            .and_then(|seen| seen.digest);
        let _loading = self.serving.loading(&name);
        let read = tokio::task::spawn_blocking({
            let (sandbox, stats) = (self.sandbox.clone(), self.stats.clone());
            let (path, name, serving) = (path.to_owned(), name.clone(), serving.clone());
            move || read_and_compile(&sandbox, &stats, &path, &name, serving, broken)
        })
        .await;
        let read = match read {
            Ok(read) => read,
            Err(panic) => {
                tracing::error!(procedure = %name, "loading the module panicked: {panic}");
                return;
            }
        };
        let (digest, loaded) = match &read {
            Read::Unreadable(_) => (None, false),
            Read::Serving(digest) => (Some(digest.clone()), true),
            Read::StillBroken(digest) => (Some(digest.clone()), false),
            Read::Compiled(digest, outcome) => (Some(digest.clone()), outcome.is_ok()),
        };
        self.remember(
            path,
            Seen {
                fingerprint,
                digest,
                loaded,
            },
        );
        match read {
            Read::Serving(_) | Read::StillBroken(_) => {}
            Read::Compiled(_, Ok(procedure)) => self.serve(procedure, started),
            Read::Compiled(_, Err(error)) | Read::Unreadable(error) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.metrics.load_failed();
                tracing::error!(
                    procedure = %name,
                    file = %path.display(),
                    still_serving = serving.as_deref().unwrap_or("nothing"),
                    "module failed to load: {error:#}; it is tried again when the file changes"
                );
            }
        }
    }

    /// Saves a deployed, already compiled module as `NAME.wasm` (and its
    /// manifest as `NAME.toml`, or removes an old one when it has none, and
    /// the deploy's `record` as `NAME.deploy`) and then serves it: all or
    /// nothing. If the files cannot be saved, nothing
    /// changes and the error says why; once they are saved, the watcher
    /// finds them already known and does not load them again.
    pub async fn save_and_serve(
        &self,
        procedure: Procedure,
        module: Vec<u8>,
        manifest: Option<String>,
        record: Option<String>,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let target = self
            .dir
            .join(format!("{}.{MODULE_EXTENSION}", procedure.name));
        let saved = tokio::task::spawn_blocking({
            let (dir, seen) = (self.dir.clone(), self.seen.clone());
            let (target, name, version) =
                (target.clone(), procedure.name.clone(), procedure.version());
            move || {
                let files = Files {
                    module: &module,
                    manifest: manifest.as_deref(),
                    record: record.as_deref(),
                };
                save_atomically(&dir, &target, &name, files, &seen, version)
            }
        })
        .await
        .context("the save task failed")?;
        saved.with_context(|| {
            format!(
                "saving {}.{MODULE_EXTENSION} into {}",
                procedure.name,
                self.dir.display()
            )
        })?;
        if self.serving.get(&procedure.name).map(|p| p.version()) != Some(procedure.version()) {
            self.serve(procedure, started);
        }
        Ok(())
    }

    /// Swaps `procedure` in and logs it, with what it is granted.
    fn serve(&self, procedure: Procedure, started: Instant) {
        let (name, digest) = (procedure.name.clone(), procedure.digest.clone());
        let grants = procedure.grants().to_string();
        let took = format!("{}ms", started.elapsed().as_millis());
        self.stats.loaded.fetch_add(1, Ordering::Relaxed);
        match self.serving.install(procedure) {
            Some(old) => {
                self.metrics.swapped(&name);
                tracing::info!(procedure = %name, from = %old.digest, to = %digest, took, %grants, "procedure swapped")
            }
            None => tracing::info!(procedure = %name, %digest, took, %grants, "procedure loaded"),
        }
    }

    fn warn_if_misnamed(&self, path: &Path) {
        let Some(why) = misnamed_module(path) else {
            return;
        };
        let Ok(metadata) = std::fs::metadata(path) else {
            self.forget(path);
            return;
        };
        let fingerprint = Fingerprint {
            module: FileFingerprint::of(&metadata),
            manifest: None,
        };
        if self.seen(path).map(|seen| seen.fingerprint) != Some(fingerprint.clone()) {
            tracing::warn!(file = %path.display(), "ignoring this file: {why}; rename it to serve it");
            self.remember(
                path,
                Seen {
                    fingerprint,
                    digest: None,
                    loaded: false,
                },
            );
        }
    }

    fn seen(&self, path: &Path) -> Option<Seen> {
        lock(&self.seen).get(path).cloned()
    }

    fn remember(&self, path: &Path, seen: Seen) {
        lock(&self.seen).insert(path.to_owned(), seen);
    }

    fn forget(&self, path: &Path) {
        lock(&self.seen).remove(path);
    }
}

/// What reading one module file came to.
enum Read {
    /// The file could not be read.
    Unreadable(anyhow::Error),
    /// It holds the version already serving (rewritten with the same bytes).
    Serving(String),
    /// It holds the same bytes that failed last time: already reported.
    StillBroken(String),
    /// New bytes, compiled or refused.
    Compiled(String, anyhow::Result<Procedure>),
}

/// Reads and hashes a module file and compiles it if it is new. CPU-heavy:
/// runs in `spawn_blocking`.
fn read_and_compile(
    sandbox: &Sandbox,
    stats: &LoadStats,
    path: &Path,
    name: &str,
    serving: Option<String>,
    broken: Option<String>,
) -> Read {
    let wasm = match std::fs::read(path) {
        Ok(wasm) => wasm,
        Err(error) => {
            return Read::Unreadable(
                anyhow::Error::from(error).context(format!("reading {}", path.display())),
            );
        }
    };
    let manifest_path = path.with_extension(MANIFEST_EXTENSION);
    let manifest = match std::fs::read_to_string(&manifest_path) {
        Ok(text) => Some(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => {
            return Read::Unreadable(
                anyhow::Error::from(error).context(format!("reading {}", manifest_path.display())),
            );
        }
    };
    stats.reads.fetch_add(1, Ordering::Relaxed);
    let digest = digest(&wasm);
    let manifest_digest = manifest.as_deref().map(warren_protocol::digest);
    let version = version(&digest, manifest_digest.as_deref());
    if serving.as_ref() == Some(&version) {
        Read::Serving(version)
    } else if broken.as_ref() == Some(&version) {
        Read::StillBroken(version)
    } else {
        let compiled = Procedure::compile(sandbox, name, &wasm, digest, manifest.as_deref());
        // The log line names the module file; the manifest is worth naming too.
        let compiled = match manifest {
            Some(_) => compiled.with_context(|| format!("with {}", manifest_path.display())),
            None => compiled,
        };
        Read::Compiled(version, compiled)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::modules::watcher;
    use crate::sandbox::Limits;
    use crate::shutdown::ShutdownTrigger;

    fn fib_wasm() -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/wasm32-wasip2/release/guest_fib.wasm");
        std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; build it first: `just build-guest`",
                path.display()
            )
        })
    }

    /// Waits until `done` holds, or panics after `within` saying `what`.
    async fn eventually(within: Duration, what: &str, done: impl Fn() -> bool) {
        let give_up = Instant::now() + within;
        while !done() {
            assert!(
                Instant::now() < give_up,
                "{what} did not happen within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An idle host used to read, hash and (for a broken file) recompile and
    /// log its modules about ten times a second: the watcher reacted to its own
    /// reads. Now nothing happens until a file changes.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_idle_folder_is_read_once_and_a_broken_file_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("fib.wasm"), fib_wasm()).unwrap();
        std::fs::write(dir.path().join("bad.wasm"), b"junk\n").unwrap();
        std::fs::write(dir.path().join("Misnamed.wasm"), b"ignored").unwrap();
        let sandbox = Arc::new(Sandbox::new(Limits::default(), None).unwrap());
        let serving = Arc::new(Serving::new(None));
        let metrics = Arc::new(Metrics::new(2, Duration::from_secs(10)));
        let folder = Arc::new(ModulesFolder::new(
            dir.path().to_owned(),
            sandbox,
            serving.clone(),
            metrics,
        ));
        let trigger = ShutdownTrigger::new();
        let watching = tokio::spawn(watcher::watch(folder.clone(), trigger.subscribe()).unwrap());
        folder.load_all().await.unwrap();
        let stats = folder.stats().clone();
        assert_eq!((stats.reads(), stats.loaded(), stats.failed()), (2, 1, 1));
        assert_eq!(serving.list().len(), 1, "only fib serves");

        // Idle: however long, nothing is read again.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            (stats.reads(), stats.failed()),
            (2, 1),
            "an idle folder was read again"
        );

        // The same broken bytes written again: read once more, not reported again.
        std::fs::write(dir.path().join("bad.wasm"), b"junk\n").unwrap();
        eventually(Duration::from_secs(5), "re-reading bad.wasm", || {
            stats.reads() == 3
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!((stats.reads(), stats.failed()), (3, 1));

        // New broken bytes are news.
        std::fs::write(dir.path().join("bad.wasm"), b"other junk\n").unwrap();
        eventually(Duration::from_secs(5), "reporting the new bad.wasm", || {
            stats.failed() == 2
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!((stats.reads(), stats.failed()), (4, 2));

        trigger.trigger();
        watching.await.unwrap();
    }
}
