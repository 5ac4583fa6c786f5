//! `bench-compare`: Warren side by side with what the broker allows.
//!
//! Starts three workers on this machine, each as its own process and each on
//! its own queue, and drives every one with the same `warren bench`
//! settings:
//!
//! - `echo-worker`: replies with the request body at once (the ceiling);
//! - the seed's `rpc_server.py` (from `--seed-dir`, on `rpc_queue` as it
//!   hard-codes), when it and Python with pika are there;
//! - `warren-host` with the fib component.
//!
//! Measurements alternate between the workers, round after round, and each
//! figure is the median of its rounds, so a machine that slows down for a
//! while slows everyone down alike. It prints one table with the ratios the
//! speed targets are stated in, and writes `report.json`, `report.md` and
//! `chart.svg` into `--out`. Run it through `just bench-compare`, which
//! builds the release binaries first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod languages;

use anyhow::{Context as _, bail};
use clap::Parser;
use serde::{Deserialize, Serialize};

/// Compare warren-host with a bare echo worker and the seed's Python server.
#[derive(Parser)]
struct Options {
    /// Instead: compare the fib procedure in Rust, Python and JavaScript
    /// (target/guests, from `just build-guests`) with the seed's server,
    /// one call at a time, fib(1) and fib(25); writes languages.{md,json}.
    #[arg(long)]
    languages: bool,
    /// Broker to use.
    #[arg(long, env = "AMQP_URL", default_value = warren_protocol::DEFAULT_AMQP_URL)]
    amqp_url: String,
    /// Rounds of every measurement; each figure is the median.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Length of each throughput run (64 in flight).
    #[arg(long, default_value = "8s", value_parser = humantime_secs)]
    duration: Duration,
    /// Calls in each one-at-a-time latency run.
    #[arg(long, default_value_t = 3000)]
    latency_requests: u64,
    /// Calls in each fib(30) run.
    #[arg(long, default_value_t = 20)]
    fib30_requests: u64,
    /// Folder with the seed's rpc_server.py.
    #[arg(long, default_value = "../shared/seed")]
    seed_dir: PathBuf,
    /// Python with pika, for the seed server.
    #[arg(long, env = "WARREN_PYTHON", default_value = "python3")]
    python: PathBuf,
    /// Where the release binaries are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// The fib component warren-host serves.
    #[arg(long, default_value = "target/wasm32-wasip2/release/guest_fib.wasm")]
    fib_wasm: PathBuf,
    /// A flag for warren-host, e.g. --host-arg=--spare-instances=0;
    /// repeat for more. The reports name them.
    #[arg(long = "host-arg", value_name = "ARG", allow_hyphen_values = true)]
    host_args: Vec<String>,
    /// Where report.json, report.md and chart.svg go.
    #[arg(long, default_value = "target/bench-compare")]
    out: PathBuf,
}

fn humantime_secs(text: &str) -> Result<Duration, String> {
    let seconds = text.trim_end_matches('s');
    seconds
        .parse::<f64>()
        .map(Duration::from_secs_f64)
        .map_err(|_| format!("{text:?}: write seconds like 8s"))
}

/// The part of `warren bench --json` this tool reads.
#[derive(Debug, Clone, Deserialize)]
struct BenchReport {
    requests: u64,
    ok: u64,
    requests_per_second: f64,
    latency: Latency,
}

#[derive(Debug, Clone, Deserialize)]
struct Latency {
    p50_us: u64,
    p99_us: u64,
}

/// One worker's medians.
#[derive(Debug, Clone, Default, Serialize)]
struct Figures {
    /// fib(1) replies per second with 64 in flight.
    throughput_per_s: Option<f64>,
    /// fib(1) p50 with one call at a time, µs.
    p50_us: Option<f64>,
    /// fib(1) p99 with one call at a time, µs.
    p99_us: Option<f64>,
    /// fib(30) p50 with one call at a time, µs.
    fib30_p50_us: Option<f64>,
    /// Peak resident memory of the worker process, KiB.
    peak_rss_kib: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: String,
    host_args: Vec<String>,
    rounds: usize,
    throughput_seconds: f64,
    workers: BTreeMap<String, Figures>,
    ratios: Vec<Ratio>,
}

#[derive(Debug, Serialize)]
struct Ratio {
    what: String,
    value: Option<f64>,
    target: String,
    met: Option<bool>,
}

/// A worker process on its own queue, stopped when dropped.
struct Worker {
    name: &'static str,
    queue: String,
    child: Child,
    /// Queues to delete from the broker once the worker has stopped (what a
    /// `warren-host` declared and leaves behind; the echo worker deletes its
    /// own, and the seed's `rpc_queue` is not ours to delete).
    leaves: Vec<String>,
    amqp_url: String,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !self.leaves.is_empty()
            && let Err(error) = delete_queues(&self.amqp_url, &self.leaves)
        {
            eprintln!(
                "bench-compare: could not delete {} from the broker: {error:#}",
                self.leaves.join(", ")
            );
        }
    }
}

/// Deletes `queues` from the broker at `amqp_url`.
fn delete_queues(amqp_url: &str, queues: &[String]) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let connection =
            lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        for queue in queues {
            channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await?;
        }
        connection.close(200, "bench-compare done".into()).await?;
        anyhow::Ok(())
    })
}

impl Worker {
    /// The most resident memory the process has had, KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        self.status_kib("VmHWM:")
    }

    /// The process's resident memory now, KiB.
    fn rss_kib(&self) -> Option<u64> {
        self.status_kib("VmRSS:")
    }

    fn status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let warren = options.bin_dir.join("warren");
    for binary in ["warren", "warren-host", "echo-worker"] {
        let path = options.bin_dir.join(binary);
        anyhow::ensure!(
            path.is_file(),
            "{} is missing: build with `cargo build --release --workspace` (just bench-compare does)",
            path.display()
        );
    }
    anyhow::ensure!(
        options.fib_wasm.is_file(),
        "{} is missing: run `just build-guest`",
        options.fib_wasm.display()
    );
    std::fs::create_dir_all(&options.out)?;
    if options.languages {
        return languages::run(&options);
    }
    let run_id = std::process::id();

    let mut workers = vec![start_echo(&options, run_id)?];
    match start_seed(&options) {
        Ok(worker) => workers.push(worker),
        Err(why) => eprintln!("bench-compare: the seed's Python server is skipped: {why:#}"),
    }
    let modules = tempfile_dir(&options.out.join(format!("modules-{run_id}")))?;
    std::fs::copy(&options.fib_wasm, modules.join("fib.wasm"))?;
    workers.push(start_host(&options, run_id, &modules)?);
    for worker in &workers {
        wait_for_consumer(&warren, &options, &worker.queue)?;
    }

    let mut samples: BTreeMap<&str, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    let mut record = |worker: &'static str, metric: &'static str, value: f64| {
        samples
            .entry(worker)
            .or_default()
            .entry(metric)
            .or_default()
            .push(value);
    };
    let seconds = options.duration.as_secs_f64();
    for round in 1..=options.rounds {
        eprintln!("bench-compare: round {round} of {}", options.rounds);
        for worker in &workers {
            let report = bench(
                &warren,
                &options,
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
            record(worker.name, "throughput", report.requests_per_second);
        }
        for worker in &workers {
            let n = options.latency_requests.to_string();
            let report = bench(
                &warren,
                &options,
                &worker.queue,
                &["-n", &n, "-c", "1", "--expect", "1", "1"],
            )?;
            eprintln!(
                "  {:12} fib(1), one at a time: p50 {} µs",
                worker.name, report.latency.p50_us
            );
            record(worker.name, "p50", report.latency.p50_us as f64);
            record(worker.name, "p99", report.latency.p99_us as f64);
        }
    }
    // Peak RSS after the load: what the 64-in-flight runs needed.
    let rss: BTreeMap<&str, Option<u64>> = workers
        .iter()
        .map(|worker| (worker.name, worker.peak_rss_kib()))
        .collect();
    for round in 1..=options.rounds {
        eprintln!(
            "bench-compare: fib(30), round {round} of {}",
            options.rounds
        );
        for worker in workers.iter().filter(|w| w.name != "echo") {
            let n = options.fib30_requests.to_string();
            let report = bench(
                &warren,
                &options,
                &worker.queue,
                &["-n", &n, "-c", "1", "--expect", "832040", "30"],
            )?;
            eprintln!(
                "  {:12} fib(30), one at a time: p50 {:.2} ms",
                worker.name,
                report.latency.p50_us as f64 / 1000.0
            );
            record(worker.name, "fib30", report.latency.p50_us as f64);
        }
    }
    drop(workers);
    let _ = std::fs::remove_dir_all(&modules);

    let mut figures: BTreeMap<String, Figures> = BTreeMap::new();
    for (worker, metrics) in &samples {
        let median_of = |metric: &str| metrics.get(metric).map(|values| median(values));
        figures.insert(
            worker.to_string(),
            Figures {
                throughput_per_s: median_of("throughput"),
                p50_us: median_of("p50"),
                p99_us: median_of("p99"),
                fib30_p50_us: median_of("fib30"),
                peak_rss_kib: rss.get(worker).copied().flatten(),
            },
        );
    }
    let report = Report {
        machine: machine(),
        host_args: options.host_args.clone(),
        rounds: options.rounds,
        throughput_seconds: seconds,
        ratios: ratios(&figures),
        workers: figures,
    };
    let table = markdown(&report);
    println!("{table}");
    std::fs::write(
        options.out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(options.out.join("report.md"), &table)?;
    std::fs::write(options.out.join("chart.svg"), chart(&report))?;
    eprintln!(
        "bench-compare: wrote report.json, report.md and chart.svg into {}",
        options.out.display()
    );
    Ok(())
}

fn tempfile_dir(path: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(path)?;
    Ok(path.to_owned())
}

fn start_echo(options: &Options, run_id: u32) -> anyhow::Result<Worker> {
    let queue = format!("warren-bench-echo-{run_id}");
    let child = Command::new(options.bin_dir.join("echo-worker"))
        .args(["--queue", &queue, "--prefetch", "128"])
        .env("AMQP_URL", &options.amqp_url)
        .stderr(Stdio::null())
        .spawn()
        .context("starting echo-worker")?;
    Ok(Worker {
        name: "echo",
        queue,
        child,
        leaves: Vec::new(),
        amqp_url: options.amqp_url.clone(),
    })
}

fn start_seed(options: &Options) -> anyhow::Result<Worker> {
    let server = options.seed_dir.join("rpc_server.py");
    if !server.is_file() {
        bail!("{} is not there (--seed-dir)", server.display());
    }
    // It runs from its own folder, as its README would have it.
    let server = server.canonicalize()?;
    let has_pika = Command::new(&options.python)
        .args(["-c", "import pika"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !has_pika {
        bail!(
            "{} cannot import pika (just py-env makes target/py with it)",
            options.python.display()
        );
    }
    // The seed hard-codes rpc_queue and localhost; another consumer there
    // (a demo host, say) would take half the requests.
    let child = Command::new(&options.python)
        .arg(&server)
        .current_dir(&options.seed_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the seed's rpc_server.py")?;
    Ok(Worker {
        name: "python-seed",
        queue: warren_protocol::DEFAULT_QUEUE.to_owned(),
        child,
        leaves: Vec::new(),
        amqp_url: options.amqp_url.clone(),
    })
}

fn start_host(options: &Options, run_id: u32, modules: &Path) -> anyhow::Result<Worker> {
    let queue = format!("warren-bench-host-{run_id}");
    let child = Command::new(options.bin_dir.join("warren-host"))
        .args([
            "--queue",
            &queue,
            "--default-procedure",
            "fib",
            "--modules-dir",
        ])
        .arg(modules)
        .args(&options.host_args)
        .env("AMQP_URL", &options.amqp_url)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .context("starting warren-host")?;
    Ok(Worker {
        name: "warren",
        leaves: vec![
            queue.clone(),
            warren_protocol::deploy::deploy_stream(&queue),
        ],
        queue,
        child,
        amqp_url: options.amqp_url.clone(),
    })
}

/// Waits until exactly one consumer serves `queue`, by asking `warren bench`
/// for one call until it answers.
fn wait_for_consumer(warren: &Path, options: &Options, queue: &str) -> anyhow::Result<()> {
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

fn bench(
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

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
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

fn machine() -> String {
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
fn host_flags(args: &[String]) -> String {
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

/// Three bar panels (throughput, p50, fib(30) p50), one bar per worker.
fn chart(report: &Report) -> String {
    use std::fmt::Write as _;
    let colours = [
        ("echo", "#9aa5b1"),
        ("python-seed", "#e0a030"),
        ("warren", "#2f7ed8"),
    ];
    type Pick = fn(&Figures) -> Option<f64>;
    let panels: [(&str, &str, Pick, f64); 3] = [
        (
            "fib(1), 64 in flight",
            "requests/s (higher is better)",
            |f| f.throughput_per_s,
            1.0,
        ),
        (
            "fib(1), one at a time",
            "p50 µs (lower is better)",
            |f| f.p50_us,
            1.0,
        ),
        (
            "fib(30), one at a time",
            "p50 ms (lower is better)",
            |f| f.fib30_p50_us,
            0.001,
        ),
    ];
    let (panel_w, panel_h, top, left) = (260.0, 220.0, 60.0, 30.0);
    let width = left + panels.len() as f64 * (panel_w + 30.0);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="330" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        svg,
        r#"<text x="{left}" y="22" font-size="15" font-weight="bold">Warren beside the broker's ceiling and the seed's Python server</text>"#
    );
    for (i, (title, unit, pick, scale)) in panels.iter().enumerate() {
        let x0 = left + i as f64 * (panel_w + 30.0);
        let bars: Vec<(&str, &str, f64)> = colours
            .iter()
            .filter_map(|(name, colour)| {
                let value = report.workers.get(*name).and_then(pick)? * scale;
                Some((*name, *colour, value))
            })
            .collect();
        let max = bars
            .iter()
            .map(|b| b.2)
            .fold(0.0, f64::max)
            .max(f64::EPSILON);
        let _ = write!(
            svg,
            r##"<text x="{x0}" y="{}" font-weight="bold">{title}</text><text x="{x0}" y="{}" fill="#555">{unit}</text>"##,
            top - 16.0,
            top - 2.0
        );
        let bar_w = panel_w / (bars.len().max(1) as f64) - 14.0;
        for (j, (name, colour, value)) in bars.iter().enumerate() {
            let h = value / max * (panel_h - 30.0);
            let x = x0 + j as f64 * (bar_w + 14.0);
            let y = top + panel_h - h;
            let label = if *value >= 100.0 {
                format!("{value:.0}")
            } else {
                format!("{value:.2}")
            };
            let _ = write!(
                svg,
                r##"<rect x="{x:.1}" y="{y:.1}" width="{bar_w:.1}" height="{h:.1}" fill="{colour}"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{label}</text><text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#333">{name}</text>"##,
                x + bar_w / 2.0,
                y - 4.0,
                x + bar_w / 2.0,
                top + panel_h + 16.0
            );
        }
    }
    let _ = write!(
        svg,
        r##"<text x="{left}" y="318" fill="#555">{}</text></svg>"##,
        xml_escape(&report.machine)
    );
    svg
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
