//! Running one request: a concurrency slot, a fresh instance (or the spare
//! started ahead) under the deadline and the memory limit, the guest's
//! output, and what a failure means for the caller.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use warren_protocol::{ErrorKind, RpcError};
use wasmtime::{Store, Trap};

use super::guest::{Guest, GuestState};
use super::limits::{self, Limits};
use super::output::CappedOutput;
use super::scrub::Scrubber;
use super::spare::Spare;
use super::{PreparedComponent, Sandbox, Slot};

impl Sandbox {
    /// Runs one request through a fresh instance of `component`.
    ///
    /// Waits for a free concurrency slot, then runs the guest in the calling
    /// task under the deadline and memory limit. `label` tags the guest's
    /// output in the log. Never panics on guest behaviour: every outcome is
    /// a reply body or an [`RpcError`] of the right kind.
    pub async fn run(
        &self,
        component: &PreparedComponent,
        request: Vec<u8>,
        label: &str,
    ) -> Result<Vec<u8>, RpcError> {
        let slot = self.slot(component).await?;
        self.run_in(slot, component, request, label).await
    }

    /// Waits for a free concurrency slot, for [`Sandbox::run_in`]: a caller
    /// that has something to decide once the request may start (is its
    /// caller still waiting?) decides it between the two.
    ///
    /// A procedure whose manifest allows fewer requests at once than the
    /// host waits for one of its own slots first, so its queue of waiting
    /// requests holds none of the host's slots.
    pub async fn slot(&self, component: &PreparedComponent) -> Result<Slot, RpcError> {
        let closed = |_| RpcError::new(ErrorKind::Internal, "the host is shutting down; retry");
        let procedure = match &component.grants.slots {
            Some(slots) => Some(slots.clone().acquire_owned().await.map_err(closed)?),
            None => None,
        };
        let host = self.slots.clone().acquire_owned().await.map_err(closed)?;
        Ok(Slot {
            _host: host,
            _procedure: procedure,
        })
    }

    /// [`Sandbox::run`] in a slot already taken.
    pub async fn run_in(
        &self,
        slot: Slot,
        component: &PreparedComponent,
        request: Vec<u8>,
        label: &str,
    ) -> Result<Vec<u8>, RpcError> {
        let _ticking = self.ticker.handle().running();
        self.run_fresh(component, &request, label, slot).await
    }

    async fn run_fresh(
        &self,
        component: &PreparedComponent,
        request: &[u8],
        label: &str,
        slot: Slot,
    ) -> Result<Vec<u8>, RpcError> {
        let limits = &component.grants.limits;
        let started = Instant::now();
        let deadline = started + limits.timeout();
        let timeout_error = || {
            RpcError::new(
                ErrorKind::Timeout,
                format!(
                    "the procedure ran past the {} budget (stopped after {})",
                    humantime::format_duration(limits.timeout()),
                    format_elapsed(started.elapsed())
                ),
            )
        };

        // The spare, if one was started ahead (waiting for it counts against
        // this request's deadline); a spare that failed to start means
        // starting one here, which reports why.
        let spare = match component.spares.take() {
            Some(starting) => match tokio::time::timeout_at(deadline.into(), starting).await {
                Ok(made) => made.ok().flatten(),
                Err(_elapsed) => return Err(timeout_error()),
            },
            None => None,
        };
        let (mut guest, started_ahead) = match spare {
            Some(spare) => {
                self.spares_used.fetch_add(1, Ordering::Relaxed);
                let (guest, procedure) = spare.into_parts();
                (guest, Some(procedure))
            }
            None => (Guest::new(&self.engine, &component.grants), None),
        };
        guest.set_deadline(deadline);
        // The next request's instance starts now, beside this one's call and
        // the round trip to the caller, when this component starts slowly.
        self.start_spare(component);

        let store = &mut guest.store;
        let call = async {
            let procedure = match started_ahead {
                Some(procedure) => procedure,
                None => {
                    let starting = Instant::now();
                    let procedure = component.pre.instantiate_async(&mut *store).await?;
                    component.spares.record_start(starting.elapsed());
                    procedure
                }
            };
            procedure
                .warren_procedure_handler()
                .call_handle(&mut *store, request)
                .await
        };
        // The timer covers what epochs cannot: a guest blocked in a host call.
        let outcome = tokio::time::timeout_at(deadline.into(), call).await;

        let Guest {
            store,
            stdout,
            stderr,
        } = guest;
        let secrets = &component.grants.secrets;
        stdout.log(label, "stdout", secrets);
        stderr.log(label, "stderr", secrets);
        let memory_limit_hit = store.data().limiter.limit_hit();
        tear_down(store, slot, component.spares.starts_slowly());

        let result = match outcome {
            Err(_elapsed) => Err(timeout_error()),
            Ok(Err(error)) => {
                Err(
                    classify_failure(&error, memory_limit_hit, limits, &stderr, secrets)
                        .unwrap_or_else(timeout_error),
                )
            }
            // A runtime that turns a refused memory.grow into an exception
            // of its own (SpiderMonkey's "out of memory", CPython's
            // MemoryError caught by the procedure) ends up here: the limit is
            // still why it failed, and that is what the caller is told.
            Ok(Ok(Err(message))) if memory_limit_hit => Err(RpcError::new(
                ErrorKind::MemoryLimit,
                format!(
                    "{} (the procedure then failed: {message})",
                    memory_limit_message(limits)
                ),
            )),
            Ok(Ok(Err(message))) => Err(RpcError::new(ErrorKind::ProcedureError, message)),
            Ok(Ok(Ok(reply))) if reply.len() > limits.reply() => Err(RpcError::new(
                ErrorKind::ReplyTooLarge,
                format!(
                    "the procedure returned {} bytes; this host sends at most {} (--max-reply-bytes, or lower in its manifest)",
                    reply.len(),
                    limits.reply()
                ),
            )),
            Ok(Ok(Ok(reply))) => Ok(reply),
        };
        // No error reply carries a secret value: not the guest's stderr a
        // trap quotes, nor the message it failed with. (Its reply body is
        // its own to write.)
        result.map_err(|mut error| {
            if !secrets.is_empty() {
                error.message = secrets.scrub_owned(error.message);
            }
            error
        })
    }

    /// Starts `component`'s next instance in the background when it starts
    /// slowly, none is ready or starting, and `--spare-instances` allows
    /// another (see [`spare`]).
    fn start_spare(&self, component: &PreparedComponent) {
        if !component.spares.starts_slowly() {
            return;
        }
        let Ok(permit) = self.spare_permits.clone().try_acquire_owned() else {
            return;
        };
        component.spares.start_unless_present(|| {
            let (engine, ticker) = (self.engine.clone(), self.ticker.handle().clone());
            let (pre, spares, grants) = (
                component.pre.clone(),
                component.spares.clone(),
                component.grants.clone(),
            );
            async move {
                let _ticking = ticker.running();
                let started = Instant::now();
                let deadline = started + grants.limits.timeout();
                let mut guest = Guest::new(&engine, &grants);
                guest.set_deadline(deadline);
                let starting = pre.instantiate_async(&mut guest.store);
                match tokio::time::timeout_at(deadline.into(), starting).await {
                    Ok(Ok(procedure)) => {
                        spares.record_start(started.elapsed());
                        Some(Spare::new(guest, procedure, permit))
                    }
                    _ => {
                        tracing::debug!("a spare instance failed to start; spares stop until a request starts one");
                        spares.stop();
                        None
                    }
                }
            }
        });
    }
}

/// Drops a finished request's store, which resets its pool slot (the
/// memory's dirtied pages restored, tables and stack cleared), then frees
/// its concurrency slot: the permit is held until the pool slot is free
/// again, so the pool never holds more instances than it was sized for.
///
/// A component that starts slowly (a CPython or SpiderMonkey runtime) is
/// also slow to tear down, several times a Rust one (BENCHMARKS.md). For
/// those the teardown runs in a task of its own, so the reply is published
/// first rather than after it. A fast one is dropped here: a task per
/// request would cost more wake-ups than it saves.
fn tear_down(store: Store<GuestState>, slot: Slot, slow: bool) {
    if slow {
        tokio::spawn(async move {
            drop(store);
            drop(slot);
        });
    } else {
        drop(store);
        drop(slot);
    }
}

/// Maps a wasmtime error from instantiating or calling a guest to an error
/// reply. `None` means the guest was interrupted at its deadline.
fn classify_failure(
    error: &wasmtime::Error,
    memory_limit_hit: bool,
    limits: &Limits,
    stderr: &CappedOutput,
    secrets: &Scrubber,
) -> Option<RpcError> {
    if memory_limit_hit {
        return Some(RpcError::new(
            ErrorKind::MemoryLimit,
            memory_limit_message(limits),
        ));
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => None,
        Some(trap) => {
            let mut message = first_line(&trap.to_string());
            if let Some(last) = stderr.last_line(secrets) {
                message = format!("{message} (guest stderr: {last})");
            }
            Some(RpcError::new(ErrorKind::Trap, message))
        }
        None => Some(RpcError::new(
            ErrorKind::Internal,
            format!(
                "the host could not run the procedure: {}",
                first_line(&format!("{error:#}"))
            ),
        )),
    }
}

fn memory_limit_message(limits: &Limits) -> String {
    format!(
        "the procedure tried to grow its memory past the {} limit (--max-memory, or lower in its manifest)",
        limits::format_bytes(limits.memory())
    )
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim().to_owned()
}

fn format_elapsed(elapsed: Duration) -> String {
    format!("{:.2}s", elapsed.as_secs_f64())
}
