//! Compiled code on disk, so a restarting host with many modules is ready
//! in milliseconds instead of recompiling each one.
//!
//! An entry is wasmtime's own precompiled artifact (`precompile_component`),
//! named by the module's digest *and* a hash of the settings it was
//! compiled with (wasmtime version, target, compiler flags, inlining), so a
//! host with a different wasmtime or configuration never finds, let alone
//! loads, a stale entry, and a module's quick and inlined code sit side by
//! side; wasmtime also refuses an incompatible artifact itself. An entry
//! that fails to load is left alone and the module compiled afresh; the
//! fresh build replaces it. A damaged entry is thus repaired, and an entry
//! this host cannot load only because of its own limits (other hosts
//! sharing the folder may have other limits) is never thrown away.
//!
//! Loading an artifact runs its machine code, so the cache folder must be
//! writable only by the host's own user (it is created 0700).

use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// A folder of precompiled components.
pub(super) struct CompiledCache {
    dir: PathBuf,
}

impl CompiledCache {
    /// Uses (and creates, if needed) `dir`.
    pub(super) fn open(dir: &Path) -> std::io::Result<Self> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
        Ok(CompiledCache {
            dir: dir.to_owned(),
        })
    }

    /// The entry for the module `digest` compiled with the settings
    /// `tag` names ([`Compiler::cache_tag`](super::compiler::Compiler::cache_tag)).
    fn entry(&self, digest: &str, tag: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir.join(format!("{hex}-{tag}.cwasm"))
    }

    /// The cached component for `digest` and `tag`, if there is a usable
    /// one, loaded into `engine`.
    pub(super) fn load(&self, engine: &Engine, digest: &str, tag: &str) -> Option<Component> {
        let path = self.entry(digest, tag);
        if !path.is_file() {
            return None;
        }
        // SAFETY: entries are written only by `store` below, from
        // `precompile_component` on an engine with the same compatibility
        // hash, into a folder only this user can write (see module docs).
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => Some(component),
            Err(error) => {
                tracing::warn!(file = %path.display(), "cannot use this compiled-code cache entry, compiling afresh: {error}");
                None
            }
        }
    }

    /// Saves `artifact` (from `Engine::precompile_component`) under
    /// `digest` and `tag`. Failures are logged, not fatal: the cache only
    /// saves time.
    pub(super) fn store(&self, digest: &str, tag: &str, artifact: &[u8]) {
        let path = self.entry(digest, tag);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let result = std::fs::write(&tmp, artifact).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(error) = result {
            tracing::warn!(file = %path.display(), "could not save compiled code: {error}");
        }
    }
}
