//! The versions of each procedure a host keeps, so that `warren rollback`
//! can make the fleet serve one again without sending its module.
//!
//! Every deploy a host accepts with a sequence (so with a [`DeployRecord`])
//! is kept in `MODULES/.versions/NAME/VERSION/`: its module (`module.wasm`),
//! its manifest (`manifest.toml`, when it has one) and its signed record
//! (`deploy.json`, what `NAME.deploy` holds while it is the newest). The
//! newest `--keep-versions` of each name, by sequence, are kept; older ones
//! are removed. The same version deployed again (a rollback to it) is kept
//! once, with its newest record.
//!
//! Keeping a version grants it nothing: it is served again only through a
//! signed deploy that names it ([`warren_protocol::deploy::HEADER_DEPLOY_KEPT`]),
//! checked like any other (the deployer's key, a sequence above the newest
//! accepted, and the module's and manifest's digests against the bytes read
//! back from here). The folder is hidden and the modules watcher does not
//! look into subfolders, so nothing in it is served by being there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::UNIX_EPOCH;

use anyhow::Context as _;
use warren_protocol::manifest::MANIFEST_EXTENSION;
use warren_protocol::status::KeptVersion;

use super::record::DeployRecord;
use crate::modules::MODULE_EXTENSION;

/// The hidden folder, inside the modules folder, versions are kept in.
pub const VERSIONS_DIR: &str = ".versions";
/// How many versions of each procedure a host keeps unless told
/// (`--keep-versions`).
pub const DEFAULT_KEEP_VERSIONS: usize = 5;

const RECORD_FILE: &str = "deploy.json";
/// How a version being written is named until it is whole (then renamed):
/// what a save cut short leaves is removed at the next start.
const NEW_PREFIX: &str = ".new-";

/// A name no other save, in this process or an earlier one, has used.
fn unique() -> String {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    format!("{}-{count}-{nanos}", std::process::id())
}

/// The versions a host keeps, on disk, with an index in memory.
pub struct Versions {
    dir: PathBuf,
    keep: usize,
    /// Per name, what is kept, newest sequence first.
    index: Mutex<BTreeMap<String, Vec<Entry>>>,
}

#[derive(Debug, Clone)]
struct Entry {
    record: DeployRecord,
    /// Milliseconds since the Unix epoch when this host accepted it.
    accepted_ms: u64,
}

/// A kept version read back: what a deploy naming it is applied with.
#[derive(Debug)]
pub struct KeptFiles {
    pub module: Vec<u8>,
    pub manifest: Option<String>,
}

impl Versions {
    /// The versions kept in `modules_dir`, `keep` of each name (0: none
    /// are kept, listed or served from here; those kept before are left on
    /// disk). Reads the records
    /// of what is there; a version whose record cannot be read is skipped
    /// with a warning (it is never served from here without one).
    pub fn open(modules_dir: &Path, keep: usize) -> anyhow::Result<Self> {
        let dir = modules_dir.join(VERSIONS_DIR);
        let mut index: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        let names = match std::fs::read_dir(&dir) {
            Ok(names) => names,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Versions {
                    dir,
                    keep,
                    index: Mutex::default(),
                });
            }
            Err(error) => {
                return Err(error).with_context(|| format!("reading {}", dir.display()));
            }
        };
        for version in names
            .filter_map(Result::ok)
            .filter_map(|name| std::fs::read_dir(name.path()).ok())
            .flatten()
            .filter_map(Result::ok)
        {
            if version
                .file_name()
                .to_string_lossy()
                .starts_with(NEW_PREFIX)
            {
                // A version whose save was cut short.
                let _ = std::fs::remove_dir_all(version.path());
                continue;
            }
            let path = version.path().join(RECORD_FILE);
            let read = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| {
                    serde_json::from_str::<DeployRecord>(&text).map_err(|e| e.to_string())
                });
            match read {
                Ok(record) if version.path() == version_dir(&dir, &record) => {
                    let accepted_ms = modified_ms(&path);
                    index.entry(record.name.clone()).or_default().push(Entry {
                        record,
                        accepted_ms,
                    });
                }
                Ok(_) => tracing::warn!(
                    version = %version.path().display(),
                    "ignoring a kept version whose record names another version"
                ),
                Err(why) => {
                    if !version.file_name().to_string_lossy().starts_with('.') {
                        tracing::warn!(
                            version = %version.path().display(),
                            "ignoring a kept version whose record cannot be read: {why}"
                        );
                    }
                }
            }
        }
        for entries in index.values_mut() {
            entries.sort_by_key(|e| std::cmp::Reverse(e.record.sequence));
            // A count lowered since they were kept applies now (0 leaves
            // them on disk, unused).
            if keep > 0 && entries.len() > keep {
                for old in entries.split_off(keep) {
                    let _ = std::fs::remove_dir_all(version_dir(&dir, &old.record));
                }
            }
        }
        Ok(Versions {
            dir,
            keep,
            index: Mutex::new(index),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Vec<Entry>>> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many versions of each procedure are kept.
    pub fn keep_count(&self) -> usize {
        self.keep
    }

    /// Keeps the version `record` describes, with its `module` and
    /// `manifest`, then removes the oldest of its name past the count kept.
    /// Blocking: call it off the async runtime.
    pub fn keep(
        &self,
        record: &DeployRecord,
        module: &[u8],
        manifest: Option<&str>,
    ) -> anyhow::Result<()> {
        if self.keep == 0 {
            return Ok(());
        }
        let target = version_dir(&self.dir, record);
        let parent = target.parent().expect("a version has a folder");
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let record_text = record.to_text();
        if target.is_dir() {
            // The same version again (a rollback to it): only its record
            // is newer.
            let temporary = target.join(format!(".{RECORD_FILE}.{}", unique()));
            std::fs::write(&temporary, &record_text)
                .and_then(|()| std::fs::rename(&temporary, target.join(RECORD_FILE)))
                .with_context(|| format!("updating {}", target.display()))?;
        } else {
            let temporary = parent.join(format!("{NEW_PREFIX}{}", unique()));
            let written = std::fs::create_dir(&temporary)
                .and_then(|()| std::fs::write(temporary.join(module_file()), module))
                .and_then(|()| match manifest {
                    Some(text) => std::fs::write(temporary.join(manifest_file()), text),
                    None => Ok(()),
                })
                .and_then(|()| std::fs::write(temporary.join(RECORD_FILE), &record_text))
                .and_then(|()| std::fs::rename(&temporary, &target));
            if let Err(error) = written {
                let _ = std::fs::remove_dir_all(&temporary);
                return Err(error).with_context(|| format!("writing {}", target.display()));
            }
        }
        let removed = {
            let mut index = self.lock();
            let entries = index.entry(record.name.clone()).or_default();
            entries.retain(|entry| version_dir(&self.dir, &entry.record) != target);
            entries.push(Entry {
                record: record.clone(),
                accepted_ms: modified_ms(&target.join(RECORD_FILE)),
            });
            entries.sort_by_key(|e| std::cmp::Reverse(e.record.sequence));
            let keep = self.keep.min(entries.len());
            entries.split_off(keep)
        };
        for old in removed {
            let old = version_dir(&self.dir, &old.record);
            if let Err(error) = std::fs::remove_dir_all(&old) {
                tracing::warn!(version = %old.display(), %error, "could not remove a version no longer kept");
            }
        }
        Ok(())
    }

    /// The kept version of `name` with module `digest` and manifest
    /// `manifest_digest`, read back and checked against both digests.
    /// `None` if this host keeps no such version (or its files no longer
    /// match). Blocking.
    pub fn find(
        &self,
        name: &str,
        digest: &str,
        manifest_digest: Option<&str>,
    ) -> Option<KeptFiles> {
        if self.keep == 0 {
            return None;
        }
        let record = self
            .lock()
            .get(name)?
            .iter()
            .find(|entry| {
                entry.record.digest == digest
                    && entry.record.manifest_digest.as_deref() == manifest_digest
            })?
            .record
            .clone();
        let dir = version_dir(&self.dir, &record);
        let module = std::fs::read(dir.join(module_file())).ok()?;
        let manifest = match manifest_digest {
            None => None,
            Some(_) => Some(std::fs::read_to_string(dir.join(manifest_file())).ok()?),
        };
        let intact = warren_protocol::digest(&module) == digest
            && manifest.as_deref().map(warren_protocol::digest).as_deref() == manifest_digest;
        if !intact {
            tracing::warn!(version = %dir.display(), "a kept version's files no longer match its record: not using it");
            return None;
        }
        Some(KeptFiles { module, manifest })
    }

    /// Every version kept, each name's newest first; `serving(name)` is
    /// the version ([`crate::modules::version`]) served under that name.
    pub fn list(&self, serving: impl Fn(&str) -> Option<String>) -> Vec<KeptVersion> {
        if self.keep == 0 {
            return Vec::new();
        }
        let index = self.lock();
        index
            .iter()
            .flat_map(|(name, entries)| {
                let served = serving(name);
                entries.iter().map(move |entry| {
                    let record = &entry.record;
                    let version =
                        crate::modules::version(&record.digest, record.manifest_digest.as_deref());
                    KeptVersion {
                        name: name.clone(),
                        digest: record.digest.clone(),
                        manifest: record.manifest_digest.clone(),
                        sequence: record.sequence,
                        key: record.key.clone(),
                        signature: record.signature.clone(),
                        accepted_ms: entry.accepted_ms,
                        serving: served.as_deref() == Some(version.as_str()),
                    }
                })
            })
            .collect()
    }
}

/// Where the version `record` describes is kept: `NAME/` and the leading
/// hex of its module's digest and its manifest's (or `none`).
fn version_dir(dir: &Path, record: &DeployRecord) -> PathBuf {
    let short = |digest: &str| {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        hex.chars().take(24).collect::<String>()
    };
    let manifest = record
        .manifest_digest
        .as_deref()
        .map_or_else(|| "none".to_owned(), short);
    dir.join(&record.name)
        .join(format!("{}-{manifest}", short(&record.digest)))
}

fn module_file() -> String {
    format!("module.{MODULE_EXTENSION}")
}

fn manifest_file() -> String {
    format!("manifest.{MANIFEST_EXTENSION}")
}

fn modified_ms(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|metadata| metadata.modified())
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |since| since.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(digest: &str, sequence: u64, manifest: Option<&str>) -> DeployRecord {
        DeployRecord {
            name: "fib".into(),
            sequence,
            digest: digest.into(),
            manifest_digest: manifest.map(warren_protocol::digest),
            key: None,
            signature: None,
        }
    }

    #[test]
    fn the_newest_versions_are_kept_found_and_survive_a_restart() {
        let modules = tempfile::tempdir().unwrap();
        let versions = Versions::open(modules.path(), 2).unwrap();
        let modules_bytes: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 10]).collect();
        let digests: Vec<String> = modules_bytes.iter().map(warren_protocol::digest).collect();
        for (i, module) in modules_bytes.iter().enumerate() {
            let manifest = (i == 1).then_some("[config]\n");
            let record = record(&digests[i], 10 + i as u64, manifest);
            versions.keep(&record, module, manifest).unwrap();
        }
        // Two kept: the oldest is gone, from disk too.
        let listed = |versions: &Versions| {
            versions
                .list(|_| Some(digests[2].clone()))
                .into_iter()
                .map(|v| (v.sequence, v.serving))
                .collect::<Vec<_>>()
        };
        assert_eq!(listed(&versions), [(12, true), (11, false)]);
        assert!(versions.find("fib", &digests[0], None).is_none());
        let manifest_digest = warren_protocol::digest("[config]\n");
        let found = versions
            .find("fib", &digests[1], Some(&manifest_digest))
            .unwrap();
        assert_eq!(found.module, modules_bytes[1]);
        assert_eq!(found.manifest.as_deref(), Some("[config]\n"));
        assert!(
            versions.find("fib", &digests[1], None).is_none(),
            "another manifest"
        );

        // The same version again: kept once, with its newer record.
        let again = record(&digests[1], 13, Some("[config]\n"));
        versions
            .keep(&again, &modules_bytes[1], Some("[config]\n"))
            .unwrap();
        assert_eq!(listed(&versions), [(13, false), (12, true)]);

        let reopened = Versions::open(modules.path(), 2).unwrap();
        assert_eq!(listed(&reopened), [(13, false), (12, true)]);
        // Restarted keeping fewer: the oldest go at once.
        let fewer = Versions::open(modules.path(), 1).unwrap();
        assert_eq!(listed(&fewer), [(13, false)]);
        let kept = std::fs::read_dir(modules.path().join(VERSIONS_DIR).join("fib")).unwrap();
        assert_eq!(kept.count(), 1);
    }

    #[test]
    fn a_kept_version_whose_files_changed_is_not_used() {
        let modules = tempfile::tempdir().unwrap();
        let versions = Versions::open(modules.path(), 5).unwrap();
        let module = b"module".to_vec();
        let digest = warren_protocol::digest(&module);
        let record = record(&digest, 1, None);
        versions.keep(&record, &module, None).unwrap();
        let file = version_dir(&modules.path().join(VERSIONS_DIR), &record).join(module_file());
        std::fs::write(file, b"changed").unwrap();
        assert!(versions.find("fib", &digest, None).is_none());
    }

    #[test]
    fn keeping_none_keeps_nothing() {
        let modules = tempfile::tempdir().unwrap();
        let versions = Versions::open(modules.path(), 0).unwrap();
        let module = b"module".to_vec();
        let record = record(&warren_protocol::digest(&module), 1, None);
        versions.keep(&record, &module, None).unwrap();
        assert!(versions.list(|_| None).is_empty());
        assert!(!modules.path().join(VERSIONS_DIR).exists());
    }
}
