//! The `warren` command line, which does all of `bench-compare`'s calling:
//! a probe call until a worker answers, and `warren bench --json` for every
//! measurement.
//!
//! Every worker is driven by the same client, in its own process, so what
//! differs between the figures is the worker and nothing else.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::options::Options;

/// The part of `warren bench --json` this tool reads.
#[derive(Debug, Clone, Deserialize)]
pub struct BenchReport {
    pub requests: u64,
    pub ok: u64,
    pub requests_per_second: f64,
    pub latency: Latency,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p99_us: u64,
}

/// Waits until exactly one consumer serves `queue`, by asking `warren bench`
/// for one call until it answers.
pub fn wait_for_consumer(warren: &Path, options: &Options, queue: &str) -> anyhow::Result<()> {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let probe = Command::new(warren)
            .args(["--queue", queue, "--timeout", "2s", "call", "1"])
            .env("AMQP_URL", &options.amqp_url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if probe.success() {
            return Ok(());
        }
        if Instant::now() > give_up {
            bail!("nothing answered on queue {queue} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `warren bench --json ARGS` on `queue` and reads its report; fails
/// unless every call was answered correctly, so no figure comes from a run
/// that got wrong answers.
pub fn bench(
    warren: &Path,
    options: &Options,
    queue: &str,
    args: &[&str],
) -> anyhow::Result<BenchReport> {
    let output = Command::new(warren)
        .args(["--queue", queue, "--timeout", "60s", "bench", "--json"])
        .args(args)
        .env("AMQP_URL", &options.amqp_url)
        .stderr(Stdio::inherit())
        .output()
        .context("running warren bench")?;
    let report: BenchReport = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "warren bench on {queue} printed no report (exit {:?})",
            output.status.code()
        )
    })?;
    if !output.status.success() || report.ok != report.requests {
        bail!(
            "warren bench on {queue}: {} of {} calls were answered correctly",
            report.ok,
            report.requests
        );
    }
    Ok(report)
}
