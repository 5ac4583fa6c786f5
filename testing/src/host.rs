//! Hosts for tests: in process ([`TestHost`], on its own queue and modules
//! folder) or as a `warren-host` process ([`HostProcess`], its log in a
//! file, for what only a process shows: exit codes, signals, log lines).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use warren_client::RpcClient;
use warren_host::{HostConfig, RunningHost};

use crate::broker::{amqp_url, delete_queues, unique_queue};

/// A host serving its own queue from its own temporary modules folder.
pub struct TestHost {
    pub queue: String,
    pub modules: tempfile::TempDir,
    pub host: Option<RunningHost>,
    config: HostConfig,
    /// Whether stopping this host deletes its queue and deploy stream.
    owns_queue: bool,
}

impl TestHost {
    /// Starts a host on a fresh queue with `modules` (name, bytes) installed.
    pub async fn start(test: &str, modules: &[(&str, &[u8])]) -> Self {
        Self::start_with(test, modules, |_| {}).await
    }

    /// Like [`TestHost::start`], with a chance to adjust the options.
    /// Stopping it deletes its queue and deploy stream.
    pub async fn start_with(
        test: &str,
        modules: &[(&str, &[u8])],
        adjust: impl FnOnce(&mut HostConfig),
    ) -> Self {
        Self::launch(&unique_queue(test), true, modules, adjust).await
    }

    /// A host on `queue` (a fresh one from [`unique_queue`] that the test
    /// prepared, say), which deletes it when stopped.
    pub async fn start_on(
        queue: &str,
        modules: &[(&str, &[u8])],
        adjust: impl FnOnce(&mut HostConfig),
    ) -> Self {
        Self::launch(queue, true, modules, adjust).await
    }

    /// A second host on an existing test host's queue, with its own folder.
    /// Stop it before the host that owns the queue.
    pub async fn join(
        queue: &str,
        modules: &[(&str, &[u8])],
        adjust: impl FnOnce(&mut HostConfig),
    ) -> Self {
        Self::launch(queue, false, modules, adjust).await
    }

    async fn launch(
        queue: &str,
        owns_queue: bool,
        modules: &[(&str, &[u8])],
        adjust: impl FnOnce(&mut HostConfig),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in modules {
            std::fs::write(dir.path().join(format!("{name}.wasm")), bytes).unwrap();
        }
        let mut config = HostConfig::new(queue, dir.path());
        config.broker.amqp_urls = vec![amqp_url()];
        config.limits.concurrency = Some(2);
        adjust(&mut config);
        let host = warren_host::start(config.clone())
            .await
            .expect("starting the host");
        TestHost {
            queue: config.broker.queue.clone(),
            modules: dir,
            host: Some(host),
            config,
            owns_queue,
        }
    }

    /// Stops the host and starts it again with the same options and folder.
    pub async fn restart(&mut self) {
        if let Some(host) = self.host.take() {
            host.stop().await.expect("host stops cleanly");
        }
        let host = warren_host::start(self.config.clone())
            .await
            .expect("restarting the host");
        self.host = Some(host);
    }

    /// Stops the host process but keeps its queue (and what waits in it),
    /// for a later host to take over.
    pub async fn stop_host(&mut self) {
        if let Some(host) = self.host.take() {
            host.stop().await.expect("host stops cleanly");
        }
    }

    /// Names of the procedures this host serves, in order.
    pub fn served_names(&self) -> Vec<String> {
        let host = self.host.as_ref().expect("host running");
        host.served()
            .into_iter()
            .map(|served| served.name)
            .collect()
    }

    /// Digest of the version of `name` this host serves right now.
    pub fn serving(&self, name: &str) -> Option<String> {
        let host = self.host.as_ref()?;
        host.digest_of(name)
    }

    /// Waits until this host serves `digest` as `name`; false if it never does.
    pub async fn wait_serving(&self, name: &str, digest: &str, within: Duration) -> bool {
        let give_up = Instant::now() + within;
        while Instant::now() < give_up {
            if self.serving(name).as_deref() == Some(digest) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// What the host's `/metrics` would answer now.
    pub fn metrics_text(&self) -> String {
        self.host.as_ref().expect("host running").metrics_text()
    }

    /// A client for this host's queue.
    pub async fn client(&self) -> RpcClient {
        RpcClient::connect(&amqp_url(), &self.queue)
            .await
            .expect("client connects")
    }

    /// Path of module `name` in this host's folder.
    pub fn module_path(&self, name: &str) -> PathBuf {
        self.modules.path().join(format!("{name}.wasm"))
    }

    /// Replaces (or creates) module `name` atomically, as a deploy would.
    pub fn install(&self, name: &str, bytes: &[u8]) {
        let tmp = self.modules.path().join(format!(".{name}.wasm.tmp"));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, self.module_path(name)).unwrap();
    }

    /// Writes (or, with `None`, removes) module `name`'s manifest
    /// (`NAME.toml`) atomically.
    pub fn install_manifest(&self, name: &str, text: Option<&str>) {
        let path = self.modules.path().join(format!("{name}.toml"));
        match text {
            Some(text) => {
                let tmp = self.modules.path().join(format!(".{name}.toml.tmp"));
                std::fs::write(&tmp, text).unwrap();
                std::fs::rename(&tmp, path).unwrap();
            }
            None => std::fs::remove_file(path).unwrap(),
        }
    }

    /// Stops the host gracefully; the queue's owner also deletes the queue
    /// and its deploy stream, so test runs leave nothing on the broker.
    pub async fn stop(mut self) {
        if let Some(host) = self.host.take() {
            host.stop().await.expect("host stops cleanly");
        }
        if self.owns_queue {
            delete_queues(&self.queue).await;
        }
    }
}

/// The workspace binary `name` (`warren-host`, `warren`) cargo built
/// beside these tests (`cargo test --workspace` builds every binary of the
/// workspace).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/PROFILE/deps");
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (`just test` does)",
        path.display()
    );
    path
}

/// Runs the `warren` binary with `args` against the test broker.
pub async fn run_warren(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary("warren"))
            .env("AMQP_URL", amqp_url())
            .env("NO_COLOR", "1")
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// A `warren-host` process with its own modules folder, its log (stderr) in
/// a file as under systemd; killed when dropped.
pub struct HostProcess {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl HostProcess {
    /// Starts `warren-host` on `queue` serving `modules`, with `args` added,
    /// against `urls` (comma-separated; the test broker when `None`). Each
    /// of `modules` is written as `NAME.wasm`, or as itself when its name
    /// has an extension (`NAME.toml`, a manifest).
    pub fn start(
        queue: &str,
        modules: &[(&str, &[u8])],
        args: &[&str],
        urls: Option<&str>,
    ) -> Self {
        Self::start_logging(queue, modules, args, urls, "info")
    }

    /// [`HostProcess::start`] with `RUST_LOG` set to `rust_log` (say
    /// `info,warren_host=debug`, to see guest output).
    pub fn start_logging(
        queue: &str,
        modules: &[(&str, &[u8])],
        args: &[&str],
        urls: Option<&str>,
        rust_log: &str,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("modules");
        std::fs::create_dir(&folder).unwrap();
        for (name, bytes) in modules {
            let file = if name.contains('.') {
                (*name).to_owned()
            } else {
                format!("{name}.wasm")
            };
            std::fs::write(folder.join(file), bytes).unwrap();
        }
        let log = std::fs::File::create(dir.path().join("host.log")).unwrap();
        let child = std::process::Command::new(binary("warren-host"))
            .args(["--queue", queue, "--concurrency", "2", "--modules-dir"])
            .arg(&folder)
            .args(args)
            .env("AMQP_URL", urls.map_or_else(amqp_url, str::to_owned))
            .env("RUST_LOG", rust_log)
            .env_remove("NO_COLOR")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting warren-host");
        HostProcess { child, dir }
    }

    /// Everything the host has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("host.log")).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics with the log if not.
    pub async fn wait_for_log(&self, needle: &str, within: Duration) -> String {
        let give_up = Instant::now() + within;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < give_up,
                "warren-host did not log {needle:?} within {within:?}; its log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` (`TERM`, `KILL`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit; its exit code (`None` if a signal
    /// ended it). Panics after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let give_up = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < give_up,
                "warren-host did not exit within {within:?}; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
