//! The operator's endpoint (`--metrics-addr HOST:PORT`): Prometheus metrics
//! and health checks over plain HTTP.
//!
//! - `GET /metrics`: [`Metrics::encode`], in the OpenMetrics text format.
//! - `GET /healthz`: 200 while connected to the broker and consuming the
//!   request queue, 503 otherwise; the body is one line saying why.
//! - `GET /readyz`: the same, and at least one procedure loaded.
//!
//! Off unless asked for; it serves nothing but these reads (no control).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::modules::Serving;
use crate::sandbox::Sandbox;
use crate::shutdown::Shutdown;

/// What the endpoint reads from.
struct Observed {
    metrics: Arc<Metrics>,
    serving: Arc<Serving>,
    sandbox: Arc<Sandbox>,
    queue: String,
}

/// The endpoint, listening.
pub struct Admin {
    /// The address it listens on (the port chosen, when given port 0).
    pub addr: SocketAddr,
    pub(crate) task: JoinHandle<()>,
}

/// Binds `addr` and serves until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    serving: Arc<Serving>,
    sandbox: Arc<Sandbox>,
    queue: String,
    mut shutdown: Shutdown,
) -> anyhow::Result<Admin> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on --metrics-addr {addr}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let observed = Arc::new(Observed {
        metrics,
        serving,
        sandbox,
        queue,
    });
    let app = Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(observed);
    let task = tokio::spawn(async move {
        let serving =
            axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.recv().await });
        if let Err(error) = serving.await {
            tracing::error!("the metrics endpoint stopped: {error}");
        }
    });
    tracing::info!(%addr, "metrics on http://{addr}/metrics, health on /healthz and /readyz");
    Ok(Admin { addr, task })
}

/// What `/metrics` answers now: `metrics` with what is served and what
/// the sandbox counted.
pub fn metrics_text(metrics: &Metrics, serving: &Serving, sandbox: &Sandbox) -> String {
    let served = serving.list().into_iter().map(|p| (p.name, p.digest));
    metrics.encode(
        served,
        sandbox.spares_used(),
        &crate::sandbox::http_refusals(),
    )
}

async fn serve_metrics(State(observed): State<Arc<Observed>>) -> impl IntoResponse {
    let text = metrics_text(&observed.metrics, &observed.serving, &observed.sandbox);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

/// Connected and consuming, or why not.
fn health(observed: &Observed) -> Result<String, String> {
    match observed.metrics.node() {
        Some(node) => Ok(format!("consuming {:?} through {node}", observed.queue)),
        None => Err(format!(
            "not consuming {:?}: not connected to the broker (reconnecting, or not reached yet)",
            observed.queue
        )),
    }
}

async fn healthz(State(observed): State<Arc<Observed>>) -> (StatusCode, String) {
    answer(health(&observed))
}

async fn readyz(State(observed): State<Arc<Observed>>) -> (StatusCode, String) {
    let ready = health(&observed).and_then(|healthy| {
        let served = observed.serving.list().len();
        if served == 0 {
            Err(format!(
                "{healthy}, but no procedure is loaded (every request gets no-procedure)"
            ))
        } else {
            Ok(format!("{healthy}, serving {served} procedure(s)"))
        }
    });
    answer(ready)
}

fn answer(outcome: Result<String, String>) -> (StatusCode, String) {
    match outcome {
        Ok(line) => (StatusCode::OK, format!("ok: {line}\n")),
        Err(line) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unavailable: {line}\n"),
        ),
    }
}
