//! One instance's store: what a request runs in (a fresh one, or the
//! spare started ahead), with nothing granted but what the procedure's
//! manifest grants.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_config::WasiConfigVariables;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::grants::Grants;
use super::http::OutboundHttp;
use super::limits::MemoryLimiter;
use super::output::CappedOutput;

/// One instance's store and the output it captures: what one request runs in.
pub(super) struct Guest {
    pub(super) store: Store<GuestState>,
    pub(super) stdout: CappedOutput,
    pub(super) stderr: CappedOutput,
}

impl Guest {
    /// A store with nothing granted but what `grants` say, under their
    /// memory limit, no instance yet.
    pub(super) fn new(engine: &Engine, grants: &Grants) -> Self {
        let limits = &grants.limits;
        let stdout = CappedOutput::new(limits.output());
        let stderr = CappedOutput::new(limits.output());
        let mut store = Store::new(
            engine,
            GuestState {
                wasi: no_capabilities(&stdout, &stderr),
                table: ResourceTable::new(),
                limiter: MemoryLimiter::new(limits.memory()),
                config: grants.store.clone(),
                http_ctx: WasiHttpCtx::new(),
                http: OutboundHttp::new(grants.http.clone(), grants.secrets.clone()),
            },
        );
        store.limiter(|state| &mut state.limiter);
        Guest {
            store,
            stdout,
            stderr,
        }
    }

    /// Checks `deadline` on every epoch tick and yields in between, so the
    /// other tasks on this worker thread (other guests, replies) get their
    /// turn.
    pub(super) fn set_deadline(&mut self, deadline: Instant) {
        self.store.set_epoch_deadline(1);
        self.store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
    }
}

/// Per-request store data: the guest's WASI context and its limits.
pub(super) struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: MemoryLimiter,
    /// What `wasi:config/store` answers (the procedure's configuration and
    /// secrets; empty without a manifest).
    pub(super) config: Arc<WasiConfigVariables>,
    http_ctx: WasiHttpCtx,
    /// Outbound HTTP, as the procedure's manifest grants it (none without).
    http: OutboundHttp,
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http,
        }
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A WASI context that grants nothing: no preopened directories, no
/// environment, no arguments, no sockets or name lookup, an empty stdin.
/// Output goes to the given capped buffers.
fn no_capabilities(stdout: &CappedOutput, stderr: &CappedOutput) -> WasiCtx {
    WasiCtxBuilder::new()
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }))
        .build()
}
