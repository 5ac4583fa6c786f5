//! Keeps the [`Registry`] in step with the modules folder while the host runs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::{Procedure, Registry, digest, module_files, procedure_name};
use crate::sandbox::Sandbox;
use crate::shutdown::Shutdown;

/// Quiet time after the last file event before acting on a burst of them,
/// so that a file being written is read once, whole.
const SETTLE: Duration = Duration::from_millis(100);

/// Loads every module in `dir` into `registry`. A module that fails to load
/// is logged and skipped; only an unreadable folder is an error.
pub async fn load_all(
    dir: &Path,
    sandbox: &Arc<Sandbox>,
    registry: &Registry,
) -> anyhow::Result<()> {
    for path in module_files(dir)? {
        reload(&path, sandbox, registry).await;
    }
    Ok(())
}

/// Watches `dir` and swaps procedures as their files change, until shutdown.
///
/// Starts watching before it returns, so no change made after this call is
/// missed; the returned future does the work.
pub fn watch(
    dir: &Path,
    sandbox: Arc<Sandbox>,
    registry: Arc<Registry>,
    mut shutdown: Shutdown,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) => {
                for path in event.paths {
                    let _ = events_tx.send(path);
                }
            }
            Err(error) => tracing::warn!(%error, "watching the modules folder"),
        })
        .context("starting the modules folder watcher")?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching the modules folder {}", dir.display()))?;

    Ok(async move {
        // The watcher stops when dropped; keep it alive as long as this task.
        let _watcher = watcher;
        loop {
            let first = tokio::select! {
                _ = shutdown.recv() => return,
                path = events_rx.recv() => match path {
                    Some(path) => path,
                    None => return,
                },
            };
            let mut changed = BTreeSet::from([first]);
            loop {
                match tokio::time::timeout(SETTLE, events_rx.recv()).await {
                    Ok(Some(path)) => {
                        changed.insert(path);
                    }
                    Ok(None) => return,
                    Err(_quiet) => break,
                }
            }
            for path in changed {
                reload(&path, &sandbox, &registry).await;
            }
        }
    })
}

/// Brings the registry in line with one file: load or swap it if it exists
/// and changed, retire its procedure if it is gone. Logs what it did.
pub async fn reload(path: &Path, sandbox: &Arc<Sandbox>, registry: &Registry) {
    let Some(name) = procedure_name(path) else {
        return;
    };
    if !path.exists() {
        if let Some(retired) = registry.retire(&name) {
            tracing::info!(procedure = %name, digest = %retired.digest, "module file removed; procedure retired");
        }
        return;
    }
    let started = Instant::now();
    let serving = registry.get(&name).map(|p| p.digest.clone());
    let loaded = tokio::task::spawn_blocking({
        let sandbox = sandbox.clone();
        let path = path.to_owned();
        let serving = serving.clone();
        let name = name.clone();
        move || -> anyhow::Result<Option<Procedure>> {
            let wasm =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let digest = digest(&wasm);
            if serving.as_ref() == Some(&digest) {
                return Ok(None); // touched, not changed
            }
            Procedure::compile(&sandbox, &name, &wasm, digest).map(Some)
        }
    });
    let procedure = match loaded.await {
        Ok(Ok(Some(procedure))) => procedure,
        Ok(Ok(None)) => return,
        Ok(Err(error)) => {
            tracing::error!(
                procedure = %name,
                file = %path.display(),
                still_serving = serving.as_deref().unwrap_or("nothing"),
                "module failed to load: {error:#}"
            );
            return;
        }
        Err(panic) => {
            tracing::error!(procedure = %name, "loading the module panicked: {panic}");
            return;
        }
    };
    let digest = procedure.digest.clone();
    let took = format!("{}ms", started.elapsed().as_millis());
    match registry.install(procedure) {
        Some(old) => {
            tracing::info!(procedure = %name, from = %old.digest, to = %digest, took, "procedure swapped")
        }
        None => tracing::info!(procedure = %name, %digest, took, "procedure loaded"),
    }
}
