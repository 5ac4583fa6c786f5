//! `warren-host` options: each has a default and a line in `--help`. The
//! groups `--help` shows under their headings are in `options`.

mod options;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use warren_protocol::QueueMode;
use warren_protocol::broker::Brokers;
use warren_protocol::deploy::StreamRetention;
use warren_protocol::limits::Limits;
use warren_protocol::options::BrokerArgs;
use warren_protocol::tls::Connector;

pub use options::{
    CallerOptions, ConnectionOptions, DeployOptions, LimitOptions, LogFormat, MAX_MEMORY_LIMIT,
    ObservabilityOptions, ProcedureOptions, TuningOptions,
};

/// Runs RPC requests from a RabbitMQ queue through sandboxed WebAssembly
/// components, and replies to each caller's `reply_to` queue.
#[derive(Debug, Clone, Parser)]
#[command(name = "warren-host", version, about, long_about = None)]
pub struct HostConfig {
    /// Which broker, which queue, which mode: the options `warren` takes too.
    #[command(flatten, next_help_heading = "Broker")]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub connection: ConnectionOptions,
    #[command(flatten)]
    pub procedures: ProcedureOptions,
    #[command(flatten)]
    pub limits: LimitOptions,
    #[command(flatten)]
    pub callers: CallerOptions,
    #[command(flatten)]
    pub deploys: DeployOptions,
    #[command(flatten)]
    pub observability: ObservabilityOptions,
    #[command(flatten)]
    pub tuning: TuningOptions,

    /// How the deploy stream is declared when this host creates it. Not an
    /// option: every host and deployer of a queue must agree, and the
    /// default suits any fleet whose procedures' newest versions together
    /// stay under half a gigabyte. Tests set a small one to see the stream
    /// drop old deploys.
    #[arg(skip = StreamRetention::DEFAULT)]
    pub deploy_retention: StreamRetention,

    /// Longest random wait before a host claims the publishing of a deploy
    /// the stream would drop. Not an option: tests set it near zero, so
    /// that every host of a fleet claims at once and one still publishes.
    #[arg(skip = crate::deploy::stream::REPUBLISH_JITTER)]
    pub deploy_republish_jitter: Duration,
}

/// How the host keeps its connection, and durable mode's delivery limit
impl HostConfig {
    /// Options for a host on `queue` serving `modules_dir`, all else default.
    /// Handy for tests and embedding.
    pub fn new(queue: impl Into<String>, modules_dir: impl Into<PathBuf>) -> Self {
        let mut config = HostConfig::parse_from(["warren-host"]);
        config.broker.queue = queue.into();
        config.procedures.modules_dir = modules_dir.into();
        config
    }

    /// What clap cannot check, checked once, as [`crate::start`] begins:
    /// the broker URLs (clap would echo their passwords) and the CA file.
    /// Every other option was checked as it was parsed.
    pub fn brokers(&self) -> Result<Brokers, ConfigError> {
        let connector = match &self.broker.amqp_ca_file {
            Some(path) => Connector::with_ca_file(path).map_err(ConfigError)?,
            None => Connector::new(),
        };
        Brokers::new(self.broker.amqp_urls.clone(), connector, "warren-host")
            .map_err(|why| ConfigError(format!("--amqp-url: {why}")))
    }

    /// The compiled-code cache folder.
    pub fn cache_dir(&self) -> PathBuf {
        self.procedures
            .cache_dir
            .clone()
            .unwrap_or_else(|| self.procedures.modules_dir.join(".cache"))
    }

    /// The prefetch count for a host running `concurrency` requests at once:
    /// `--prefetch`, or 8 per slot and at least [`MIN_DEFAULT_PREFETCH`].
    pub fn prefetch(&self, concurrency: usize) -> u16 {
        self.tuning.prefetch.unwrap_or_else(|| {
            u16::try_from(concurrency.saturating_mul(8))
                .unwrap_or(u16::MAX)
                .max(MIN_DEFAULT_PREFETCH)
        })
    }

    /// How the request queue is declared.
    pub fn queue_mode(&self) -> QueueMode {
        if self.broker.durable {
            QueueMode::Durable {
                delivery_limit: self.connection.delivery_limit,
            }
        } else {
            QueueMode::Tutorial
        }
    }

    /// The per-caller quota these options describe.
    pub fn caller_quota(&self) -> warren_protocol::manifest::Quota {
        warren_protocol::manifest::Quota {
            rate: self.callers.caller_rate,
            burst: self.callers.caller_burst,
            share: self.callers.caller_share,
        }
    }

    /// The sandbox limits these options describe; concurrency is unset
    /// unless given (the sandbox counts the cores once).
    pub fn sandbox_limits(&self) -> Limits {
        let limits = &self.limits;
        Limits {
            timeout: Some(limits.timeout),
            memory: Some(limits.max_memory),
            request: Some(limits.max_request_bytes),
            reply: Some(limits.max_reply_bytes),
            output: Some(limits.max_output_bytes),
            concurrency: limits.concurrency.map(usize::from),
        }
    }
}

/// Options that cannot work together or at all: bad usage (`warren-host`
/// exits 2). The message names the option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The smallest default prefetch, whatever the core count: below about 32
/// a fast host drains what it holds and waits for the broker's next
/// deliveries, and the broker, the caller and the host all spend more CPU
/// per request (BENCHMARKS.md has the measurements). The cost of a larger
/// window is that one host may hold requests a less busy one could have
/// taken; `--prefetch` sets it for slow procedures.
pub const MIN_DEFAULT_PREFETCH: u16 = 32;

#[cfg(test)]
mod tests {
    use super::options::memory_size;
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn default_prefetch_is_eight_per_slot_and_at_least_the_floor() {
        let mut config = HostConfig::new("q", "m");
        assert_eq!(config.prefetch(1), MIN_DEFAULT_PREFETCH);
        assert_eq!(config.prefetch(2), MIN_DEFAULT_PREFETCH);
        assert_eq!(config.prefetch(16), 128);
        assert_eq!(config.prefetch(100_000), u16::MAX);
        config.tuning.prefetch = Some(1);
        assert_eq!(config.prefetch(16), 1, "--prefetch wins");
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let config = HostConfig::new("q", "m");
        let limits = config.sandbox_limits();
        assert_eq!(limits.timeout(), Duration::from_secs(10));
        assert_eq!(limits.memory(), 64 << 20);
        assert_eq!(limits.request(), 4 << 20);
        assert_eq!(limits.reply(), 4 << 20);
        assert!(limits.concurrency() >= 1);
        let spares = crate::sandbox::EngineOptions::default().spare_instances;
        assert_eq!(usize::from(config.tuning.spare_instances), spares);
        // The flags' defaults, formatted from `Limits::DEFAULT`, read back
        // as it: nothing lost in the text `--help` shows.
        assert_eq!(limits, Limits::DEFAULT);
    }

    #[test]
    fn the_old_inlining_option_is_accepted_and_hidden() {
        let parse = |args: &[&str]| {
            let args = std::iter::once("warren-host").chain(args.iter().copied());
            HostConfig::try_parse_from(args).map(|config| config.tuning.compiler_inlining)
        };
        assert_eq!(parse(&[]).unwrap(), None);
        assert_eq!(
            parse(&["--compiler-inlining"]).unwrap().as_deref(),
            Some("on")
        );
        assert!(parse(&["--compiler-inlining", "--perf-map"]).is_ok());
        assert!(parse(&["--compiler-inlining=background"]).is_ok());
        let help = HostConfig::command().render_long_help().to_string();
        assert!(!help.contains("--compiler-inlining"), "{help}");
    }

    #[test]
    fn nonsense_values_are_refused_at_parse_time() {
        let refused = |args: &[&str]| {
            let args = std::iter::once("warren-host").chain(args.iter().copied());
            let error = HostConfig::try_parse_from(args).unwrap_err();
            assert_eq!(error.exit_code(), 2);
            error.to_string()
        };
        assert!(refused(&["--timeout", "0s"]).contains("at least 1ms"));
        assert!(refused(&["--max-memory", "0"]).contains("at least 1 byte"));
        assert!(refused(&["--max-request-bytes", "0"]).contains("at least 1 byte"));
        assert!(refused(&["--max-memory", "1tb"]).contains("at most 4GiB"));
        assert!(refused(&["--queue", ""]).contains("empty"));
        assert!(refused(&["--queue", &"q".repeat(250)]).contains("at most 247"));
        assert!(refused(&["--default-procedure", "Fib"]).contains("lowercase"));
        assert_eq!(memory_size("4GiB"), Ok(4 << 30));
        assert_eq!(memory_size("64MiB"), Ok(64 << 20));
    }

    #[test]
    fn the_help_reads_in_groups_for_an_operator() {
        let help = HostConfig::command().render_help().to_string();
        let mut at = 0;
        for heading in [
            "Broker:",
            "Procedures:",
            "Limits:",
            "Deploys:",
            "Observability:",
            "Tuning:",
        ] {
            let found = help[at..]
                .find(heading)
                .unwrap_or_else(|| panic!("{heading} missing or out of order:\n{help}"));
            at += found;
        }
        let config = HostConfig::new("q", "m");
        assert!(config.brokers().is_ok());
        let mut bad = config.clone();
        bad.broker.amqp_urls = vec!["http://x".into()];
        assert!(bad.brokers().unwrap_err().0.starts_with("--amqp-url: "));
    }
}
