//! The modules folder's files: how a file is recognised unchanged without
//! reading it ([`Fingerprint`]), what was last read from it ([`Seen`]), and
//! how a deploy writes a module and its manifest so that no reader ever sees
//! half of them ([`save_atomically`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use warren_protocol::manifest::MANIFEST_EXTENSION;

use super::{MODULE_EXTENSION, RECORD_EXTENSION};

/// A module file's [`FileFingerprint`], and its manifest's when there is
/// one: a procedure is read again when either changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Fingerprint {
    pub(super) module: FileFingerprint,
    pub(super) manifest: Option<FileFingerprint>,
}

impl Fingerprint {
    pub(super) fn of(metadata: &std::fs::Metadata, manifest: &Path) -> Self {
        Fingerprint {
            module: FileFingerprint::of(metadata),
            manifest: std::fs::metadata(manifest)
                .ok()
                .map(|metadata| FileFingerprint::of(&metadata)),
        }
    }
}

/// What identifies one version of a file without reading it: if none of
/// these changed, neither did the content (every write or rename changes
/// the change time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FileFingerprint {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    inode: u64,
    #[cfg(unix)]
    changed: (i64, i64),
}

impl FileFingerprint {
    pub(super) fn of(metadata: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt as _;
        FileFingerprint {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            #[cfg(unix)]
            inode: metadata.ino(),
            #[cfg(unix)]
            changed: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

/// What a file held when last read, and whether that loaded.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub(super) fingerprint: Fingerprint,
    /// The [`super::Procedure::version`] read; `None` for files never read
    /// (misnamed ones).
    pub(super) digest: Option<String>,
    pub(super) loaded: bool,
}

pub(super) type SeenFiles = Arc<Mutex<HashMap<PathBuf, Seen>>>;

pub(super) fn lock(seen: &SeenFiles) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Seen>> {
    seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a deploy saves: the module, its manifest if it has one, and the
/// record of the deploy (`crate::deploy::record`) if it has a sequence.
pub(super) struct Files<'a> {
    pub(super) module: &'a [u8],
    pub(super) manifest: Option<&'a str>,
    /// The record's text, saved as `NAME.deploy`; `None` leaves an older
    /// record as it is (a host never forgets how new a deploy must be).
    pub(super) record: Option<&'a str>,
}

/// Writes `target` (and its manifest beside it, or removes an old one, and
/// the deploy's record) through hidden temporary files and renames, so no
/// one ever reads half a module, and records the result as already loaded (under the lock the
/// watcher's [`ModulesFolder::reload`] also takes, so it cannot read the
/// files in between and load them a second time).
pub(super) fn save_atomically(
    dir: &Path,
    target: &Path,
    name: &str,
    files: Files<'_>,
    seen: &SeenFiles,
    version: String,
) -> std::io::Result<()> {
    let temporary =
        |extension| dir.join(format!(".{name}.{extension}.deploy-{}", std::process::id()));
    let (tmp, tmp_manifest) = (temporary(MODULE_EXTENSION), temporary(MANIFEST_EXTENSION));
    let tmp_record = temporary(RECORD_EXTENSION);
    let manifest_target = target.with_extension(MANIFEST_EXTENSION);
    // The record and manifest this save replaced (`Some(None)`: there was
    // none), put back if a later step fails.
    let old_record = &mut None;
    let old_manifest = &mut None;
    let written = std::fs::write(&tmp, files.module)
        .and_then(|()| match files.manifest {
            Some(text) => std::fs::write(&tmp_manifest, text),
            None => Ok(()),
        })
        .and_then(|()| match files.record {
            Some(text) => std::fs::write(&tmp_record, text),
            None => Ok(()),
        })
        .and_then(|()| {
            let mut seen = lock(seen);
            // The record first: a save cut short by a crash leaves the
            // floor raised (fail safe: the deploy is applied again from the
            // stream) rather than a new module under an old floor. A save
            // that fails puts the old record back (below).
            let record_target = target.with_extension(RECORD_EXTENSION);
            if files.record.is_some() {
                *old_record = Some(std::fs::read(&record_target).ok());
                std::fs::rename(&tmp_record, &record_target)?;
            }
            *old_manifest = Some(std::fs::read(&manifest_target).ok());
            match files.manifest {
                Some(_) => std::fs::rename(&tmp_manifest, &manifest_target)?,
                None => match std::fs::remove_file(&manifest_target) {
                    Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                        return Err(error);
                    }
                    _ => {}
                },
            }
            std::fs::rename(&tmp, target)?;
            let fingerprint = Fingerprint::of(&std::fs::metadata(target)?, &manifest_target);
            seen.insert(
                target.to_owned(),
                Seen {
                    fingerprint,
                    digest: Some(version),
                    loaded: true,
                },
            );
            Ok(())
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(&tmp_manifest);
        let _ = std::fs::remove_file(&tmp_record);
        restore(&target.with_extension(RECORD_EXTENSION), old_record.take());
        restore(&manifest_target, old_manifest.take());
    }
    written
}

/// Puts back what a failed save replaced at `path`: `Some(Some(bytes))`
/// the old file, `Some(None)` no file, `None` nothing was replaced.
fn restore(path: &Path, old: Option<Option<Vec<u8>>>) {
    match old {
        Some(Some(bytes)) => {
            let _ = std::fs::write(path, bytes);
        }
        Some(None) => {
            let _ = std::fs::remove_file(path);
        }
        None => {}
    }
}
