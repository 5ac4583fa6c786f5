//! Traces across caller, broker and host: W3C trace context on every
//! request, and (with `--otlp-endpoint`) spans exported over OTLP/HTTP.
//!
//! Without an endpoint nothing is exported and nothing is set up: a
//! request's span gets the caller's trace id (or a new one) and a span id of
//! the host's own, written into its log lines and into the reply's
//! `traceparent`. With one, [`otlp_layer`] adds `tracing-opentelemetry` to
//! the subscriber, each request span becomes an OpenTelemetry span whose
//! parent is the caller's span, and the ids on the reply are the exported
//! span's, so a trace UI shows the same ids the logs and the caller see.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use warren_protocol::trace::TraceParent;

/// Whether spans are exported (an OTLP layer was installed).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// An OTLP/HTTP exporter to `endpoint` (a base URL such as
/// `http://collector:4318`; `/v1/traces` is appended, as the OpenTelemetry
/// spec says for `OTEL_EXPORTER_OTLP_ENDPOINT`), and the subscriber layer
/// that feeds it. Keep the provider and call `shutdown` on the way out, so
/// the last spans are sent.
pub fn otlp_layer<S>(
    endpoint: &str,
) -> anyhow::Result<(
    SdkTracerProvider,
    tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
)>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    use opentelemetry_otlp::WithExportConfig as _;
    let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(&traces)
        .build()
        .with_context(|| format!("setting up the OTLP exporter to {traces}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("warren-host")
                .build(),
        )
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("warren-host"));
    EXPORTING.store(true, Ordering::Relaxed);
    Ok((provider, layer))
}

/// Makes `span` the host's span of the request's trace: a child of
/// `caller` (the request's `traceparent`), or the root of a new trace.
/// Returns the ids to log and to put on the reply.
pub fn continue_trace(span: &tracing::Span, caller: Option<TraceParent>) -> TraceParent {
    if EXPORTING.load(Ordering::Relaxed) {
        if let Some(caller) = caller {
            let remote = SpanContext::new(
                TraceId::from_bytes(caller.trace_id),
                SpanId::from_bytes(caller.span_id),
                TraceFlags::new(caller.flags),
                true,
                TraceState::default(),
            );
            let parent = opentelemetry::Context::new().with_remote_span_context(remote);
            if let Err(error) = span.set_parent(parent) {
                tracing::debug!("continuing the caller's trace: {error}");
            }
        }
        let context = span.context();
        let ours = context.span().span_context().clone();
        if ours.is_valid() {
            return TraceParent {
                trace_id: ours.trace_id().to_bytes(),
                span_id: ours.span_id().to_bytes(),
                flags: ours.trace_flags().to_u8(),
            };
        }
    }
    caller.map_or_else(TraceParent::new_root, |caller| caller.child())
}
