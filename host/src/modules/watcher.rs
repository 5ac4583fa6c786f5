//! Tells the [`ModulesFolder`] which files changed while the host runs.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::ModulesFolder;
use crate::shutdown::Shutdown;

/// Quiet time after the last file event before acting on a burst of them,
/// so that a file being written is read once, whole.
const SETTLE: Duration = Duration::from_millis(100);

/// Watches the folder and swaps procedures as their files change, until
/// shutdown.
///
/// Starts watching before it returns, so no change made after this call is
/// missed; the returned future does the work.
pub fn watch(
    folder: Arc<ModulesFolder>,
    mut shutdown: Shutdown,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if may_change_content(&event.kind) => {
                for path in event.paths {
                    let _ = events_tx.send(path);
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "watching the modules folder"),
        })
        .context("starting the modules folder watcher")?;
    watcher
        .watch(folder.dir(), RecursiveMode::NonRecursive)
        .with_context(|| format!("watching the modules folder {}", folder.dir().display()))?;

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
                folder.reload(&path).await;
            }
        }
    })
}

/// Whether an event can mean new content or a file gone. Opening, reading
/// and closing a file unwritten (inotify reports those too, including the
/// host's own reads of its modules) cannot; reacting to them made the host
/// read its modules again and again.
fn may_change_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};

    #[test]
    fn reads_are_not_changes_but_writes_renames_and_removals_are() {
        assert!(!may_change_content(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!may_change_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(may_change_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(may_change_content(&EventKind::Create(CreateKind::File)));
        assert!(may_change_content(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
        assert!(may_change_content(&EventKind::Remove(RemoveKind::File)));
    }
}
