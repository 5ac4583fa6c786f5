//! What a comparison reports: each worker's medians, the ratios the speed
//! targets are stated in, and the machine they were measured on, printed as
//! a table and written as `report.json`, `report.md` and `chart.svg`.
//!
//! Kept apart from the measuring so the figures and their targets can be
//! read (and changed) in one place, whatever produced the samples.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::chart::chart;
use crate::options::Options;
use crate::rounds::{Measured, median};

/// One worker's medians.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    /// fib(1) replies per second with 64 in flight.
    pub throughput_per_s: Option<f64>,
    /// fib(1) p50 with one call at a time, µs.
    pub p50_us: Option<f64>,
    /// fib(1) p99 with one call at a time, µs.
    pub p99_us: Option<f64>,
    /// fib(30) p50 with one call at a time, µs.
    pub fib30_p50_us: Option<f64>,
    /// Peak resident memory of the worker process, KiB.
    pub peak_rss_kib: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: String,
    pub host_args: Vec<String>,
    pub rounds: usize,
    pub throughput_seconds: f64,
    pub workers: BTreeMap<String, Figures>,
    pub ratios: Vec<Ratio>,
}

#[derive(Debug, Serialize)]
pub struct Ratio {
    what: String,
    value: Option<f64>,
    target: String,
    met: Option<bool>,
}

impl Report {
    /// The report of what the rounds `measured` with `options`.
    pub fn new(options: &Options, measured: &Measured) -> Report {
        let mut figures: BTreeMap<String, Figures> = BTreeMap::new();
        for (worker, metrics) in &measured.samples {
            let median_of = |metric: &str| metrics.get(metric).map(|values| median(values));
            figures.insert(
                worker.to_string(),
                Figures {
                    throughput_per_s: median_of("throughput"),
                    p50_us: median_of("p50"),
                    p99_us: median_of("p99"),
                    fib30_p50_us: median_of("fib30"),
                    peak_rss_kib: measured.peak_rss_kib.get(worker).copied().flatten(),
                },
            );
        }
        Report {
            machine: machine(),
            host_args: options.host_args.clone(),
            rounds: options.rounds,
            throughput_seconds: options.duration.as_secs_f64(),
            ratios: ratios(&figures),
            workers: figures,
        }
    }

    /// Prints the table and writes `report.json`, `report.md` and
    /// `chart.svg` into `--out`.
    pub fn write(&self, options: &Options) -> anyhow::Result<()> {
        let table = markdown(self);
        println!("{table}");
        std::fs::write(
            options.out.join("report.json"),
            serde_json::to_string_pretty(self)?,
        )?;
        std::fs::write(options.out.join("report.md"), &table)?;
        std::fs::write(options.out.join("chart.svg"), chart(self))?;
        eprintln!(
            "bench-compare: wrote report.json, report.md and chart.svg into {}",
            options.out.display()
        );
        Ok(())
    }
}

fn ratios(figures: &BTreeMap<String, Figures>) -> Vec<Ratio> {
    let get = |worker: &str, pick: fn(&Figures) -> Option<f64>| figures.get(worker).and_then(pick);
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let at_least = |what: &str, value: Option<f64>, target: f64| Ratio {
        what: what.to_owned(),
        value,
        target: format!("≥ {target}"),
        met: value.map(|v| v >= target),
    };
    let at_most = |what: &str, value: Option<f64>, target: f64| Ratio {
        what: what.to_owned(),
        value,
        target: format!("≤ {target}"),
        met: value.map(|v| v <= target),
    };
    let throughput = |f: &Figures| f.throughput_per_s;
    let p50 = |f: &Figures| f.p50_us;
    let fib30 = |f: &Figures| f.fib30_p50_us;
    let rss_mib = figures
        .get("warren")
        .and_then(|f| f.peak_rss_kib)
        .map(|kib| kib as f64 / 1024.0);
    vec![
        at_least(
            "fib(1) throughput at 64 in flight, Warren ÷ echo",
            ratio(get("warren", throughput), get("echo", throughput)),
            0.9,
        ),
        at_least(
            "fib(1) throughput at 64 in flight, Warren ÷ seed Python",
            ratio(get("warren", throughput), get("python-seed", throughput)),
            3.5,
        ),
        at_most(
            "fib(1) p50 one at a time, Warren ÷ echo",
            ratio(get("warren", p50), get("echo", p50)),
            1.15,
        ),
        at_least(
            "fib(30) p50, seed Python ÷ Warren",
            ratio(get("python-seed", fib30), get("warren", fib30)),
            30.0,
        ),
        at_most("warren-host peak RSS under load, MiB", rss_mib, 64.0),
    ]
}

/// The machine the figures were measured on, for the reports' first line:
/// figures mean little without it.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!(
        "{cores} cores ({cpu}), {memory_gib:.0} GiB; broker, client and worker on the same machine"
    )
}

/// " warren-host ran with FLAGS." for the reports' first line, when it did.
pub fn host_flags(args: &[String]) -> String {
    if args.is_empty() {
        String::new()
    } else {
        format!(" warren-host ran with `{}`.", args.join(" "))
    }
}

fn markdown(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Machine: {}. Medians of {} rounds, workers alternating; throughput runs of {} s.{}\n",
        report.machine,
        report.rounds,
        report.throughput_seconds,
        host_flags(&report.host_args)
    );
    let _ = writeln!(
        out,
        "| worker | fib(1) at 64 in flight | fib(1) one at a time: p50 / p99 | fib(30) p50 | peak RSS |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for name in ["echo", "python-seed", "warren"] {
        let Some(f) = report.workers.get(name) else {
            continue;
        };
        let label = match name {
            "echo" => "bare echo worker (the ceiling)",
            "python-seed" => "seed `rpc_server.py` (Python, pika)",
            _ => "`warren-host`, fib component",
        };
        let _ = writeln!(
            out,
            "| {label} | {} | {} / {} | {} | {} |",
            f.throughput_per_s
                .map_or("–".into(), |v| format!("{v:.0} /s")),
            f.p50_us.map_or("–".into(), |v| format!("{v:.0} µs")),
            f.p99_us.map_or("–".into(), |v| format!("{v:.0} µs")),
            f.fib30_p50_us
                .map_or("–".into(), |v| format!("{:.2} ms", v / 1000.0)),
            f.peak_rss_kib
                .map_or("–".into(), |v| format!("{:.1} MiB", v as f64 / 1024.0)),
        );
    }
    let _ = writeln!(out, "\n| ratio | measured | target | |");
    let _ = writeln!(out, "|---|---|---|---|");
    for ratio in &report.ratios {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            ratio.what,
            ratio.value.map_or("–".into(), |v| format!("{v:.2}")),
            ratio.target,
            match ratio.met {
                Some(true) => "met",
                Some(false) => "**not met**",
                None => "not measured",
            }
        );
    }
    out
}
