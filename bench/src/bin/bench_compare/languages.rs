//! `bench-compare --languages`: what a procedure's language costs, side by
//! side with the seed's own Python server.
//!
//! One `warren-host` serves the fib procedure built three ways (Rust `fib`,
//! Python `fib-py`, JavaScript `fib-js`, each present in target/guests or
//! skipped), the seed's `rpc_server.py` runs beside it, and each is called
//! one at a time with fib(1) (the per-request cost: a fresh instance and
//! nothing to compute) and fib(25) (the seed's recursion doing real work),
//! round after round. The targets are Python's fib(25) p50 at most
//! 2 × the seed's, and its fib(1) p50 at most 0.5 ms above Rust's.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::options::Options;
use crate::report::{host_flags, machine};
use crate::rounds::median;
use crate::warren::{bench, wait_for_consumer};
use crate::workers::{start_host, start_seed};

/// One procedure's medians, µs.
#[derive(Debug, Serialize)]
struct Row {
    worker: String,
    fib1_p50_us: f64,
    fib25_p50_us: f64,
    /// Component file size, bytes (none for the seed).
    component_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
struct LanguagesReport {
    machine: String,
    host_args: Vec<String>,
    rounds: usize,
    rows: Vec<Row>,
    /// warren-host's resident memory after each stage of calls, KiB: does
    /// it grow with the number of requests served?
    host_rss_kib: Vec<(u64, u64)>,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let warren = options.warren();
    let run_id = std::process::id();
    let modules = options.out.join(format!("modules-languages-{run_id}"));
    std::fs::create_dir_all(&modules)?;
    let guests = Path::new("target/guests");
    let mut procedures = vec![("rust", "fib", options.fib_wasm.clone())];
    for (language, name) in [("python", "fib-py"), ("javascript", "fib-js")] {
        let path = guests.join(format!("{name}.wasm"));
        if path.is_file() {
            procedures.push((language, name, path));
        } else {
            eprintln!(
                "bench-compare: {language} skipped: {} is missing (just build-guests)",
                path.display()
            );
        }
    }
    for (_, name, path) in &procedures {
        std::fs::copy(path, modules.join(format!("{name}.wasm")))?;
    }
    let host = start_host(options, run_id, &modules)?;
    wait_for_consumer(&warren, options, &host.queue)?;
    // The first call of each waits out its first compile (seconds for
    // CPython and SpiderMonkey): not what is measured.
    for (_, name, _) in &procedures {
        bench(
            &warren,
            options,
            &host.queue,
            &["-p", name, "-n", "1", "-c", "1", "1"],
        )?;
    }
    let seed = start_seed(options)
        .inspect_err(|why| eprintln!("bench-compare: the seed's Python server is skipped: {why:#}"))
        .ok();
    if let Some(seed) = &seed {
        wait_for_consumer(&warren, options, &seed.queue)?;
    }

    // Calls per run: fib(1) as many as the latency runs (at most 1000), fib(25) 100.
    let (fib1_calls, fib25_calls) = (options.latency_requests.min(1000), 100u64);
    let (fib1, fib25) = (fib1_calls.to_string(), fib25_calls.to_string());
    let mut samples: BTreeMap<String, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    let mut served = 0u64;
    let mut host_rss_kib = vec![(0, host.rss_kib().unwrap_or(0))];
    for round in 1..=options.rounds {
        eprintln!(
            "bench-compare: languages, round {round} of {}",
            options.rounds
        );
        let mut targets: Vec<(String, &str, Option<&str>)> = procedures
            .iter()
            .map(|(language, name, _)| {
                (
                    format!("warren {language} ({name})"),
                    host.queue.as_str(),
                    Some(*name),
                )
            })
            .collect();
        if let Some(seed) = &seed {
            targets.push(("seed rpc_server.py".into(), seed.queue.as_str(), None));
        }
        for (label, queue, procedure) in &targets {
            let p50 = |n: &str, body: &str, expect: &str| -> anyhow::Result<f64> {
                let mut args = vec!["-n", n, "-c", "1", "--expect", expect];
                if let Some(procedure) = procedure {
                    args.extend(["-p", procedure]);
                }
                args.push(body);
                Ok(bench(&warren, options, queue, &args)?.latency.p50_us as f64)
            };
            let one = p50(&fib1, "1", "1")?;
            let twenty_five = p50(&fib25, "25", "75025")?;
            eprintln!(
                "  {label:32} fib(1) p50 {:.2} ms, fib(25) p50 {:.2} ms",
                one / 1000.0,
                twenty_five / 1000.0
            );
            let entry = samples.entry(label.clone()).or_default();
            entry.0.push(one);
            entry.1.push(twenty_five);
            if procedure.is_some() {
                served += fib1_calls + fib25_calls;
            }
        }
        host_rss_kib.push((served, host.rss_kib().unwrap_or(0)));
    }
    drop(seed);
    drop(host);
    let _ = std::fs::remove_dir_all(&modules);

    let sizes: BTreeMap<String, u64> = procedures
        .iter()
        .filter_map(|(language, name, path)| {
            Some((
                format!("warren {language} ({name})"),
                std::fs::metadata(path).ok()?.len(),
            ))
        })
        .collect();
    let rows: Vec<Row> = samples
        .into_iter()
        .map(|(worker, (one, twenty_five))| Row {
            component_bytes: sizes.get(&worker).copied(),
            fib1_p50_us: median(&one),
            fib25_p50_us: median(&twenty_five),
            worker,
        })
        .collect();
    let report = LanguagesReport {
        machine: machine(),
        host_args: options.host_args.clone(),
        rounds: options.rounds,
        rows,
        host_rss_kib,
    };
    let table = markdown(&report);
    println!("{table}");
    std::fs::write(
        options.out.join("languages.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(options.out.join("languages.md"), &table)?;
    eprintln!(
        "bench-compare: wrote languages.json and languages.md into {}",
        options.out.display()
    );
    Ok(())
}

fn markdown(report: &LanguagesReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Machine: {}. Medians of {} rounds, one call at a time, procedures alternating.{}\n",
        report.machine,
        report.rounds,
        host_flags(&report.host_args)
    );
    let _ = writeln!(out, "| procedure | component | fib(1) p50 | fib(25) p50 |");
    let _ = writeln!(out, "|---|---|---|---|");
    for row in &report.rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} ms | {:.2} ms |",
            row.worker,
            row.component_bytes
                .map_or("–".into(), |b| format!("{:.1} MB", b as f64 / 1e6)),
            row.fib1_p50_us / 1000.0,
            row.fib25_p50_us / 1000.0
        );
    }
    let find = |prefix: &str| {
        report
            .rows
            .iter()
            .find(|row| row.worker.starts_with(prefix))
    };
    let (rust, python, seed) = (find("warren rust"), find("warren python"), find("seed"));
    let _ = writeln!(out, "\n| target | measured | |\n|---|---|---|");
    if let (Some(python), Some(seed)) = (python, seed) {
        let ratio = python.fib25_p50_us / seed.fib25_p50_us;
        let _ = writeln!(
            out,
            "| fib(25) p50, Warren Python ÷ seed, ≤ 2 | {ratio:.2} | {} |",
            if ratio <= 2.0 { "met" } else { "**not met**" }
        );
    }
    if let (Some(python), Some(rust)) = (python, rust) {
        let above = (python.fib1_p50_us - rust.fib1_p50_us) / 1000.0;
        let _ = writeln!(
            out,
            "| fib(1) p50, Python above Rust, ≤ 0.5 ms | {above:.2} ms | {} |",
            if above <= 0.5 { "met" } else { "**not met**" }
        );
    }
    let rss: Vec<String> = report
        .host_rss_kib
        .iter()
        .map(|(served, kib)| format!("{:.1} MiB after {served}", *kib as f64 / 1024.0))
        .collect();
    let _ = writeln!(out, "\nwarren-host resident memory: {}.", rss.join(", "));
    out
}
