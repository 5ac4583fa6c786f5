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
//!
//! The run's parts each have a module: the command line (`options`), the
//! worker processes (`workers`), the `warren` client that calls them
//! (`warren`), the measuring rounds (`rounds`), what is reported
//! (`report`, drawn by `chart`), and `--languages`, its own comparison
//! (`languages`).

mod chart;
mod languages;
mod options;
mod report;
mod rounds;
mod warren;
mod workers;

use clap::Parser;

use crate::options::Options;
use crate::report::Report;

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    options.check_inputs()?;
    std::fs::create_dir_all(&options.out)?;
    if options.languages {
        return languages::run(&options);
    }
    let run_id = std::process::id();
    let (workers, modules) = workers::start_all(&options, run_id)?;
    let measured = rounds::run(&options, &workers)?;
    drop(workers);
    let _ = std::fs::remove_dir_all(&modules);
    Report::new(&options, &measured).write(&options)
}
