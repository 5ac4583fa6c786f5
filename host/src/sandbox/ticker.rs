//! The epoch ticker: the clock that lets a spinning guest be stopped.
//!
//! Epoch interruption makes compiled wasm check a counter at every function
//! entry and loop header; this thread advances that counter every
//! [`EPOCH_TICK`], and each store's deadline callback then compares the time
//! with its request's deadline. When no guest has run for [`TICKER_IDLE`] the
//! thread parks, so an idle host does not wake a hundred times a second; the
//! next guest wakes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::Engine;

/// How often the epoch ticks; the deadline is checked on every tick, so a
/// spinning guest overruns its budget by at most about this much.
pub(super) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How long the ticker keeps ticking with no guest running.
const TICKER_IDLE: Duration = Duration::from_secs(1);

/// Owns the ticker thread; stops and joins it when told to.
pub(super) struct EpochTicker {
    handle: Ticker,
    thread: Option<JoinHandle<()>>,
}

/// What a guest needs of the ticker: to say it is running. Cheap to clone,
/// so work started in the background (a spare instance) can carry one.
#[derive(Clone)]
pub(super) struct Ticker {
    shared: Arc<TickerState>,
    thread: Thread,
}

struct TickerState {
    stop: AtomicBool,
    /// Guests running now.
    running: AtomicUsize,
    /// Whether the thread is parked (or about to be).
    parked: AtomicBool,
}

/// Marks a guest as running while alive.
pub(super) struct Running(Arc<TickerState>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Release);
    }
}

impl EpochTicker {
    pub(super) fn start(engine: Engine) -> anyhow::Result<Self> {
        let shared = Arc::new(TickerState {
            stop: AtomicBool::new(false),
            running: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
        });
        let thread = std::thread::Builder::new()
            .name("warren-epoch".into())
            .spawn({
                let shared = shared.clone();
                move || tick(&engine, &shared)
            })
            .context("starting the epoch thread")?;
        Ok(EpochTicker {
            handle: Ticker {
                shared,
                thread: thread.thread().clone(),
            },
            thread: Some(thread),
        })
    }

    /// A handle guests use to say they are running.
    pub(super) fn handle(&self) -> &Ticker {
        &self.handle
    }

    pub(super) fn stop(&mut self) {
        self.handle.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Ticker {
    /// Counts a guest as running until the guard drops, waking the ticker
    /// if it parked.
    pub(super) fn running(&self) -> Running {
        self.shared.running.fetch_add(1, Ordering::SeqCst);
        if self.shared.parked.load(Ordering::SeqCst) {
            self.thread.unpark();
        }
        Running(self.shared.clone())
    }
}

/// The ticker thread's loop.
fn tick(engine: &Engine, shared: &TickerState) {
    let idle_ticks = (TICKER_IDLE.as_millis() / EPOCH_TICK.as_millis()) as u32;
    let mut idle = 0;
    while !shared.stop.load(Ordering::Acquire) {
        std::thread::sleep(EPOCH_TICK);
        engine.increment_epoch();
        if shared.running.load(Ordering::Acquire) > 0 {
            idle = 0;
            continue;
        }
        idle += 1;
        if idle >= idle_ticks {
            shared.parked.store(true, Ordering::SeqCst);
            // A guest that started before `parked` was set is seen here; one
            // that starts after unparks us.
            if shared.running.load(Ordering::SeqCst) == 0 {
                std::thread::park();
            }
            shared.parked.store(false, Ordering::SeqCst);
            idle = 0;
        }
    }
}
