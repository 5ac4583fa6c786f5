//! The worker processes `bench-compare` measures: starting each on its own
//! queue, reading its memory, and stopping it.
//!
//! Each worker is a separate process so its memory is its own to read and
//! a crash or a hang of one cannot disturb the others; a [`Worker`] stops
//! its process, and removes what it left on the broker, when dropped, so
//! an error half-way through a run leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::options::Options;
use crate::warren::wait_for_consumer;

/// A worker process on its own queue, stopped when dropped.
pub struct Worker {
    pub name: &'static str,
    pub queue: String,
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
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.status_kib("VmHWM:")
    }

    /// The process's resident memory now, KiB.
    pub fn rss_kib(&self) -> Option<u64> {
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

/// Starts the three workers of a comparison (the echo worker, the seed's
/// server when it can run, and warren-host serving the fib component from
/// a modules folder made for this run) and waits until each answers.
/// Returns them, in that order, and the modules folder to remove once they
/// have stopped.
pub fn start_all(options: &Options, run_id: u32) -> anyhow::Result<(Vec<Worker>, PathBuf)> {
    let mut workers = vec![start_echo(options, run_id)?];
    match start_seed(options) {
        Ok(worker) => workers.push(worker),
        Err(why) => eprintln!("bench-compare: the seed's Python server is skipped: {why:#}"),
    }
    let modules = tempfile_dir(&options.out.join(format!("modules-{run_id}")))?;
    std::fs::copy(&options.fib_wasm, modules.join("fib.wasm"))?;
    workers.push(start_host(options, run_id, &modules)?);
    let warren = options.warren();
    for worker in &workers {
        wait_for_consumer(&warren, options, &worker.queue)?;
    }
    Ok((workers, modules))
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

/// Starts the seed's `rpc_server.py`, or says why it cannot run here (the
/// comparisons go on without it).
pub fn start_seed(options: &Options) -> anyhow::Result<Worker> {
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

/// Starts `warren-host` on a queue of this run, serving the components in
/// `modules`, with the `--host-arg` flags.
pub fn start_host(options: &Options, run_id: u32, modules: &Path) -> anyhow::Result<Worker> {
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
