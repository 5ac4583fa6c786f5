//! `warren-host` command line: options, logging and signals around
//! [`warren_host::start`].

use std::io::IsTerminal as _;

use clap::Parser as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{EnvFilter, Layer as _};
use warren_host::config::LogFormat;
use warren_host::{HostConfig, StartError};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = HostConfig::parse();
    let observability = &config.observability;
    let exporter = match init_logging(
        observability.log_format,
        observability.otlp_endpoint.as_deref(),
    ) {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("error: --otlp-endpoint: {error:#}");
            return std::process::ExitCode::from(2);
        }
    };
    // A signal while the host is still waiting for the broker stops it too.
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let result = tokio::select! {
        started = warren_host::start(config) => match started {
            Ok(host) => {
                (&mut signal).await;
                stop_gracefully_unless_signalled_again(host).await
            }
            Err(StartError::Usage(why)) => {
                eprintln!("error: {why}");
                return std::process::ExitCode::from(2);
            }
            Err(StartError::Failed(error)) => Err(error),
        },
        () = &mut signal => {
            tracing::info!("stopped before the host was ready");
            Ok(())
        }
    };
    if let Some(provider) = exporter {
        // Sends the spans still batched; blocking, so off the runtime.
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(error)) = flushed {
            eprintln!("warning: sending the last spans over OTLP: {error}");
        }
    }
    match result {
        Ok(()) => {
            tracing::info!("warren-host stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!("{}", warren_host::Causes(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Finishes the requests in flight, unless a second signal says not to wait:
/// then it exits at once, and the broker returns the unacked requests to the
/// queue for another host.
async fn stop_gracefully_unless_signalled_again(
    host: warren_host::RunningHost,
) -> anyhow::Result<()> {
    tracing::info!(
        "shutting down: finishing requests in flight (signal again to stop at once; \
         unfinished requests then go back to the queue)"
    );
    tokio::select! {
        stopped = host.stop() => stopped,
        () = shutdown_signal() => {
            tracing::warn!("stopping at once: unfinished requests go back to the queue");
            std::process::exit(1);
        }
    }
}

/// Logs to stderr, as text or JSON lines, and exports spans over OTLP when
/// given an endpoint (the returned provider must be shut down to flush);
/// `RUST_LOG` filters both (default info).
fn init_logging(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<Option<SdkTracerProvider>> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // lapin logs each broken connection as a burst of ERROR lines; the host
    // says once, in its own words, what it lost and what it does about it.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,lapin=off"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs.with_ansi(colour_on_stderr()).boxed(),
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    let (provider, export) = match otlp_endpoint {
        Some(endpoint) => {
            let (provider, layer) = warren_host::otlp_layer(endpoint)?;
            (Some(provider), Some(layer))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(export)
        .init();
    Ok(provider)
}

/// Colour only for a person at a terminal: never in a file or a pipe, and
/// never when `NO_COLOR` is set (<https://no-color.org>).
fn colour_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Resolves on Ctrl-C or SIGTERM (what `kill`, systemd and Kubernetes send).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
