//! `warren-host` command line: options, logging and signals around
//! [`warren_host::start`].

use std::io::IsTerminal as _;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;
use warren_host::HostConfig;
use warren_host::config::LogFormat;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = HostConfig::parse();
    init_logging(config.log_format);
    if let Err(why) = config.check_urls() {
        eprintln!("error: --amqp-url: {why}");
        return std::process::ExitCode::from(2);
    }
    if let Err(why) = config.connector() {
        eprintln!("error: {why}");
        return std::process::ExitCode::from(2);
    }
    // A signal while the host is still waiting for the broker stops it too.
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let result = tokio::select! {
        started = warren_host::start(config) => match started {
            Ok(host) => {
                (&mut signal).await;
                stop_gracefully_unless_signalled_again(host).await
            }
            Err(error) => Err(error),
        },
        () = &mut signal => {
            tracing::info!("stopped before the host was ready");
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
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

/// Logs to stderr, as text or JSON lines; `RUST_LOG` filters (default info).
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(colour_on_stderr()).init(),
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
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
