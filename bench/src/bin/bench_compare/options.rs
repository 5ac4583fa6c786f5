//! `bench-compare`'s command line, and the files it must find before it
//! starts anything.
//!
//! Kept apart from the run so the flags and their help text read in one
//! place, and so a missing release binary or component is reported before
//! any worker process exists.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Compare warren-host with a bare echo worker and the seed's Python server.
#[derive(Parser)]
pub struct Options {
    /// Instead: compare the fib procedure in Rust, Python and JavaScript
    /// (target/guests, from `just build-guests`) with the seed's server,
    /// one call at a time, fib(1) and fib(25); writes languages.{md,json}.
    #[arg(long)]
    pub languages: bool,
    /// Broker to use.
    #[arg(long, env = "AMQP_URL", default_value = warren_protocol::DEFAULT_AMQP_URL)]
    pub amqp_url: String,
    /// Rounds of every measurement; each figure is the median.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Length of each throughput run (64 in flight).
    #[arg(long, default_value = "8s", value_parser = humantime_secs)]
    pub duration: Duration,
    /// Calls in each one-at-a-time latency run.
    #[arg(long, default_value_t = 3000)]
    pub latency_requests: u64,
    /// Calls in each fib(30) run.
    #[arg(long, default_value_t = 20)]
    pub fib30_requests: u64,
    /// Folder with the seed's rpc_server.py.
    #[arg(long, default_value = "../shared/seed")]
    pub seed_dir: PathBuf,
    /// Python with pika, for the seed server.
    #[arg(long, env = "WARREN_PYTHON", default_value = "python3")]
    pub python: PathBuf,
    /// Where the release binaries are.
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// The fib component warren-host serves.
    #[arg(long, default_value = "target/wasm32-wasip2/release/guest_fib.wasm")]
    pub fib_wasm: PathBuf,
    /// A flag for warren-host, e.g. --host-arg=--spare-instances=0;
    /// repeat for more. The reports name them.
    #[arg(long = "host-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub host_args: Vec<String>,
    /// Where report.json, report.md and chart.svg go.
    #[arg(long, default_value = "target/bench-compare")]
    pub out: PathBuf,
}

fn humantime_secs(text: &str) -> Result<Duration, String> {
    let seconds = text.trim_end_matches('s');
    seconds
        .parse::<f64>()
        .map(Duration::from_secs_f64)
        .map_err(|_| format!("{text:?}: write seconds like 8s"))
}

impl Options {
    /// The `warren` command line that drives every measurement.
    pub fn warren(&self) -> PathBuf {
        self.bin_dir.join("warren")
    }

    /// Fails, saying how to build it, when a release binary or the fib
    /// component is missing.
    pub fn check_inputs(&self) -> anyhow::Result<()> {
        for binary in ["warren", "warren-host", "echo-worker"] {
            let path = self.bin_dir.join(binary);
            anyhow::ensure!(
                path.is_file(),
                "{} is missing: build with `cargo build --release --workspace` (just bench-compare does)",
                path.display()
            );
        }
        anyhow::ensure!(
            self.fib_wasm.is_file(),
            "{} is missing: run `just build-guest`",
            self.fib_wasm.display()
        );
        Ok(())
    }
}
