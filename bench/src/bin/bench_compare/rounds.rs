//! The measurements of a comparison, taken in rounds.
//!
//! Every round measures every worker in turn, so a machine that slows down
//! for a while slows everyone down alike, and each figure is the median of
//! its rounds rather than of one lucky or unlucky run.

use std::collections::BTreeMap;
use std::path::Path;

use crate::options::Options;
use crate::warren::bench;
use crate::workers::Worker;

/// What the rounds measured.
pub struct Measured {
    /// Every round's figure, by worker and metric (`throughput`, `p50`,
    /// `p99`, `fib30`).
    pub samples: BTreeMap<&'static str, BTreeMap<&'static str, Vec<f64>>>,
    /// Each worker's peak resident memory after the fib(1) load, KiB.
    pub peak_rss_kib: BTreeMap<&'static str, Option<u64>>,
}

impl Measured {
    fn record(&mut self, worker: &'static str, metric: &'static str, value: f64) {
        self.samples
            .entry(worker)
            .or_default()
            .entry(metric)
            .or_default()
            .push(value);
    }
}

/// Measures `workers`: rounds of fib(1) at 64 in flight and one at a time,
/// then their peak memory, then rounds of fib(30) one at a time (not the
/// echo worker, which computes nothing).
pub fn run(options: &Options, workers: &[Worker]) -> anyhow::Result<Measured> {
    let warren = options.warren();
    let mut measured = Measured {
        samples: BTreeMap::new(),
        peak_rss_kib: BTreeMap::new(),
    };
    for round in 1..=options.rounds {
        eprintln!("bench-compare: round {round} of {}", options.rounds);
        fib1_round(&warren, options, workers, &mut measured)?;
    }
    // Peak RSS after the load: what the 64-in-flight runs needed.
    measured.peak_rss_kib = workers
        .iter()
        .map(|worker| (worker.name, worker.peak_rss_kib()))
        .collect();
    for round in 1..=options.rounds {
        eprintln!(
            "bench-compare: fib(30), round {round} of {}",
            options.rounds
        );
        fib30_round(&warren, options, workers, &mut measured)?;
    }
    Ok(measured)
}

/// One round of fib(1): every worker's throughput with 64 in flight, then
/// every worker's latency one call at a time.
fn fib1_round(
    warren: &Path,
    options: &Options,
    workers: &[Worker],
    measured: &mut Measured,
) -> anyhow::Result<()> {
    let seconds = options.duration.as_secs_f64();
    for worker in workers {
        let report = bench(
            warren,
            options,
            &worker.queue,
            &[
                "-d",
                &format!("{seconds}s"),
                "-c",
                "64",
                "--expect",
                "1",
                "1",
            ],
        )?;
        eprintln!(
            "  {:12} fib(1), 64 in flight: {:>7.0}/s",
            worker.name, report.requests_per_second
        );
        measured.record(worker.name, "throughput", report.requests_per_second);
    }
    for worker in workers {
        let n = options.latency_requests.to_string();
        let report = bench(
            warren,
            options,
            &worker.queue,
            &["-n", &n, "-c", "1", "--expect", "1", "1"],
        )?;
        eprintln!(
            "  {:12} fib(1), one at a time: p50 {} µs",
            worker.name, report.latency.p50_us
        );
        measured.record(worker.name, "p50", report.latency.p50_us as f64);
        measured.record(worker.name, "p99", report.latency.p99_us as f64);
    }
    Ok(())
}

/// One round of fib(30), one call at a time, on every worker but the echo.
fn fib30_round(
    warren: &Path,
    options: &Options,
    workers: &[Worker],
    measured: &mut Measured,
) -> anyhow::Result<()> {
    for worker in workers.iter().filter(|w| w.name != "echo") {
        let n = options.fib30_requests.to_string();
        let report = bench(
            warren,
            options,
            &worker.queue,
            &["-n", &n, "-c", "1", "--expect", "832040", "30"],
        )?;
        eprintln!(
            "  {:12} fib(30), one at a time: p50 {:.2} ms",
            worker.name,
            report.latency.p50_us as f64 / 1000.0
        );
        measured.record(worker.name, "fib30", report.latency.p50_us as f64);
    }
    Ok(())
}

/// The median of a figure's rounds.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}
