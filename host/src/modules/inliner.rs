//! Swapping in inlined code for procedures serving from a quick compile
//! (`--compiler-inlining background`, the default).
//!
//! A large module (an interpreter: Python, JavaScript) serves as soon as
//! its quick compile is ready; an inlined compile of it makes it 5-10 %
//! faster but takes about twice as long and 1 GB of memory. So that compile
//! happens here, afterwards: one module at a time on one thread of its own,
//! at low priority (the cores stay with the requests), and only when the
//! machine and the host's cgroup have
//! [`INLINING_HEADROOM`](crate::sandbox::INLINING_HEADROOM) available, so a
//! host short of memory keeps its quick code rather than being killed. The
//! result replaces the version it was made for exactly like a new version
//! would (requests in flight finish on the old code), and only if that
//! version still serves.
//!
//! The module's bytes are read again from the modules folder, which holds
//! every version that serves (deploys save there first); if the file has
//! changed since, a newer version is on its way and this one is skipped.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{MODULE_EXTENSION, Procedure, Registry, digest};
use crate::sandbox::Sandbox;

/// A procedure version to recompile with inlining.
struct Job {
    name: String,
    digest: String,
}

/// Takes jobs and runs them on its thread, started with the first job.
pub(super) struct Inliner {
    worker: Arc<Worker>,
    /// `None` until the first job starts the thread.
    jobs: Mutex<Option<Sender<Job>>>,
}

impl Drop for Inliner {
    fn drop(&mut self) {
        self.worker.stopped.store(true, Ordering::Relaxed);
    }
}

impl Inliner {
    pub(super) fn new(dir: PathBuf, sandbox: Arc<Sandbox>, registry: Arc<Registry>) -> Self {
        Inliner {
            worker: Arc::new(Worker {
                dir,
                sandbox,
                registry,
                stopped: AtomicBool::new(false),
            }),
            jobs: Mutex::new(None),
        }
    }

    /// Recompiles procedure `name`'s version `digest`, just swapped in from
    /// a quick compile, with inlining in the background, and swaps the
    /// result in.
    pub(super) fn request(&self, name: String, digest: String) {
        let job = Job { name, digest };
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if jobs.is_none() {
            let (sender, receiver) = channel();
            let worker = self.worker.clone();
            let spawned = std::thread::Builder::new()
                .name("warren-inliner".into())
                .spawn(move || worker.run(receiver));
            if let Err(error) = spawned {
                tracing::warn!(
                    "cannot start the thread that recompiles modules with inlining: {error}; \
                     procedures keep their quick code"
                );
                return;
            }
            *jobs = Some(sender);
        }
        if let Some(sender) = jobs.as_ref() {
            // Fails only once the thread is gone, which it is not while the
            // sender lives.
            let _ = sender.send(job);
        }
    }
}

/// The thread's side.
struct Worker {
    dir: PathBuf,
    sandbox: Arc<Sandbox>,
    registry: Arc<Registry>,
    /// Set when the host stops: the thread finishes the compile in hand
    /// (wasmtime cannot stop one) and starts no other.
    stopped: AtomicBool,
}

impl Worker {
    fn run(&self, jobs: Receiver<Job>) {
        lower_this_threads_priority();
        for job in jobs {
            if self.stopped.load(Ordering::Relaxed) {
                break;
            }
            self.inline(job);
        }
    }

    fn inline(
        &self,
        Job {
            name,
            digest: wanted,
        }: Job,
    ) {
        let still_waiting = self
            .registry
            .get(&name)
            .is_some_and(|p| p.digest == wanted && p.component.inlining_pending());
        if !still_waiting {
            return;
        }
        if let Err(why) = self.sandbox.inlining_headroom() {
            tracing::info!(
                procedure = %name,
                digest = %wanted,
                "not recompiling with inlining: {why}; it keeps its quick code (a restart \
                 with more memory available inlines it then)"
            );
            return;
        }
        let path = self.dir.join(format!("{name}.{MODULE_EXTENSION}"));
        let wasm = match std::fs::read(&path) {
            Ok(wasm) if digest(&wasm) == wanted => wasm,
            // Replaced or removed since: the watcher brings the change.
            _ => return,
        };
        tracing::info!(procedure = %name, digest = %wanted, "recompiling with inlining in the background");
        let started = Instant::now();
        let component = match self.sandbox.prepare_inlined(&wasm, &wanted) {
            Ok(component) => component,
            Err(error) => {
                tracing::warn!(
                    procedure = %name,
                    digest = %wanted,
                    "recompiling with inlining failed: {error:#}; it keeps its quick code"
                );
                return;
            }
        };
        drop(wasm);
        let took = format!("{}ms", started.elapsed().as_millis());
        let procedure = Procedure {
            name: name.clone(),
            digest: wanted.clone(),
            component,
        };
        if self.registry.upgrade(procedure) {
            tracing::info!(procedure = %name, digest = %wanted, took, "procedure now runs code compiled with inlining");
        }
    }
}

/// Background work yields the cores to requests: nice 10 for this thread
/// (Linux sets niceness per thread).
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: neither call takes pointers.
    unsafe {
        let thread = libc::gettid() as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, thread, 10);
    }
}
