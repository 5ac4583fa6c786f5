//! The option groups of `warren-host`'s command line, as `--help` shows
//! them under their headings; [`super::HostConfig`] flattens them.

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use clap::Args;
use warren_protocol::limits::Limits;
use warren_protocol::values;

use crate::deploy::versions::DEFAULT_KEEP_VERSIONS;
use crate::sandbox::DEFAULT_SPARE_INSTANCES;

/// (the broker options both binaries take are `BrokerArgs`).
#[derive(Debug, Clone, Args)]
pub struct ConnectionOptions {
    /// How long to keep trying to reach the broker at startup before giving
    /// up (exit 1), e.g. 30s [default: forever, logging each attempt]. Once
    /// connected, a lost broker is always waited for.
    #[arg(long, value_parser = values::duration, value_name = "DURATION")]
    pub connect_timeout: Option<Duration>,

    /// Durable mode: how many times one request may go back to the queue
    /// unanswered (its host crashed, or stalled and lost its connection)
    /// and be delivered again; the next time, the broker moves it to
    /// QUEUE.dead instead, and its caller gets a delivery-limit error. So a
    /// request that kills every host that runs it ends at most N + 1 hosts.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub delivery_limit: u32,
}

/// Where procedures come from.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Procedures")]
pub struct ProcedureOptions {
    /// Folder of procedures: every NAME.wasm in it is procedure NAME,
    /// granted what NAME.toml beside it says (its manifest; none: nothing
    /// but the limits below). Files created, replaced or deleted there take
    /// effect within a second.
    #[arg(long, default_value = "modules")]
    pub modules_dir: PathBuf,

    /// Folder of secret values, one file per secret named after it (a
    /// trailing newline is dropped). A procedure reads the secrets its
    /// manifest names ([secrets] names) through wasi:config/store; one
    /// naming a secret missing here is refused at load. Read when the
    /// procedure loads; keep it readable only by the host's user.
    #[arg(long, value_name = "DIR", env = "WARREN_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,

    /// Where compiled code is kept by module digest, so restarts skip
    /// compilation [default: MODULES_DIR/.cache]. Must be writable only by
    /// the host's user.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,

    /// Procedure for requests without an `x-procedure` header
    /// [default: the only loaded module, when exactly one is loaded].
    #[arg(long, value_parser = values::procedure_name)]
    pub default_procedure: Option<String>,
}

/// What one request may use, and how many run at once: the flags of a
/// [`Limits`] ([`HostConfig::sandbox_limits`]), whose defaults they show.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitOptions {
    /// Requests run at once [default: the number of cores].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: Option<u16>,

    /// Wall-clock budget of one request, e.g. 500ms, 10s, 2m.
    #[arg(long, default_value = DEFAULT_TIMEOUT.as_str(), value_parser = values::duration)]
    pub timeout: Duration,

    /// Linear memory one request may use, e.g. 64MiB, 1GiB; at most 4GiB
    /// (a 32-bit WebAssembly memory).
    #[arg(long, default_value = DEFAULT_MEMORY.as_str(), value_parser = memory_size)]
    pub max_memory: u64,

    /// Largest request body accepted; larger ones get `request-too-large`
    /// without running the procedure.
    #[arg(long, default_value = DEFAULT_REQUEST.as_str(), value_parser = values::nonzero_size)]
    pub max_request_bytes: u64,

    /// Largest reply body sent; larger ones become `reply-too-large`.
    #[arg(long, default_value = DEFAULT_REPLY.as_str(), value_parser = values::nonzero_size)]
    pub max_reply_bytes: u64,

    /// Guest stdout and stderr kept per request (logged at debug level);
    /// the rest is dropped.
    #[arg(long, default_value = DEFAULT_OUTPUT.as_str(), value_parser = values::size)]
    pub max_output_bytes: u64,
}

// The limits' defaults as `--help` shows them and clap parses them: written
// once, in `Limits::DEFAULT`, and only formatted here.
static DEFAULT_TIMEOUT: LazyLock<String> =
    LazyLock::new(|| humantime::format_duration(Limits::DEFAULT.timeout()).to_string());
static DEFAULT_MEMORY: LazyLock<String> =
    LazyLock::new(|| values::size_text(Limits::DEFAULT.memory()));
static DEFAULT_REQUEST: LazyLock<String> =
    LazyLock::new(|| values::size_text(Limits::DEFAULT.request() as u64));
static DEFAULT_REPLY: LazyLock<String> =
    LazyLock::new(|| values::size_text(Limits::DEFAULT.reply() as u64));
static DEFAULT_OUTPUT: LazyLock<String> =
    LazyLock::new(|| values::size_text(Limits::DEFAULT.output() as u64));

/// Who may call this host, and how much one caller may use of it, across
/// its procedures. A caller is the broker user that published the request
/// (its `user_id`); requests without one share one account of their own.
/// A procedure's manifest can set its own `[quota]` besides. Over quota, a
/// request is answered `rate-limited` at once.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Callers")]
pub struct CallerOptions {
    /// Requests a second one caller may make to this host; over it, the
    /// reply says when to try again [default: no limit].
    #[arg(long, env = "WARREN_CALLER_RATE", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub caller_rate: Option<u32>,

    /// Requests one caller may make at once above --caller-rate
    /// [default: the rate].
    #[arg(long, env = "WARREN_CALLER_BURST", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..), requires = "caller_rate")]
    pub caller_burst: Option<u32>,

    /// The part of the --concurrency slots one caller's requests may hold,
    /// waiting or running, e.g. 50%: with less than 100%, one caller cannot
    /// take every slot from the others [default: 100%].
    #[arg(long, env = "WARREN_CALLER_SHARE", value_name = "PERCENT",
          value_parser = warren_protocol::manifest::parse_percent)]
    pub caller_share: Option<u8>,

    /// The longest a caller's rate-limited reply is held back, waiting for
    /// its turn to try again; its request is acked at once, so a caller
    /// that resends every refusal at once waits here instead of keeping
    /// its flood in the queue in front of everyone else. 0s answers every
    /// refusal at once.
    #[arg(long, env = "WARREN_CALLER_HOLD", value_name = "DURATION", default_value = "2s",
          value_parser = values::duration_or_zero)]
    pub caller_hold: Duration,

    /// Refuse every request without user_id (`forbidden`, saying to set
    /// it), whatever the procedure's manifest allows: every caller must be
    /// a broker user the broker vouched for [default: requests without
    /// user_id may call procedures without `callers`, and those whose
    /// manifest says `callers-anonymous = true`].
    #[arg(long, env = "WARREN_REFUSE_ANONYMOUS")]
    pub refuse_anonymous: bool,
}

/// Which remote deploys this host accepts.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Deploys")]
pub struct DeployOptions {
    /// File of public keys (`ed25519:<hex>`, one per line, `#` comments)
    /// whose signed deploys (`warren deploy --key`) this host accepts.
    #[arg(long, value_name = "FILE")]
    pub trusted_keys: Option<PathBuf>,

    /// Accept remote deploys that are unsigned or signed by an unknown key.
    /// Anyone who can publish to the broker can then change what runs: use
    /// it only on a private broker.
    #[arg(long)]
    pub allow_unsigned_deploys: bool,

    /// Largest module a remote deploy may carry.
    #[arg(long, default_value = "64MiB", value_parser = values::nonzero_size)]
    pub max_module_bytes: u64,

    /// Broker users whose deploys this host acts on, besides the user it
    /// logs in as (hosts publish copies of deploys as themselves). The
    /// broker checks a message's user_id against the user that published
    /// it, and anyone who may publish a request can also publish into the
    /// deploy stream, so a deploy-stream message from any other user is
    /// skipped: not applied, answered or counted [default: only this
    /// host's own user].
    #[arg(
        long,
        env = "WARREN_DEPLOY_USERS",
        value_name = "USER,...",
        value_delimiter = ','
    )]
    pub deploy_users: Vec<String>,

    /// This host's name in deploy answers [default: HOSTNAME-PID].
    #[arg(long)]
    pub host_id: Option<String>,

    /// How many deployed versions of each procedure to keep in the modules
    /// folder (.versions/), so that `warren rollback` can return to one
    /// without sending it again; 0 keeps none.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_KEEP_VERSIONS)]
    pub keep_versions: usize,
}

/// What the host tells operators, and how.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Observability")]
pub struct ObservabilityOptions {
    /// Log lines as readable text, or as JSON objects, one a line, for log
    /// shippers. RUST_LOG picks what is logged either way.
    #[arg(long, value_enum, env = "WARREN_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Serve Prometheus metrics on http://ADDR/metrics and health checks on
    /// /healthz (connected and consuming) and /readyz (and a procedure
    /// loaded), e.g. 127.0.0.1:9090 [default: off].
    #[arg(long, env = "WARREN_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Export request spans over OTLP/HTTP to this collector, e.g.
    /// http://localhost:4318 (/v1/traces is appended) [default: no export].
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// Write /tmp/perf-PID.map as procedures load, so that `perf record -p
    /// PID` and `perf report` name the procedures' own functions instead of
    /// bare addresses. For profiling a procedure: the file grows with every
    /// module loaded and is left behind.
    #[arg(long)]
    pub perf_map: bool,
}

/// Speed and memory trade-offs; the defaults suit most hosts.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Tuning")]
pub struct TuningOptions {
    /// Instances started ahead, in all, for procedures slow to start (Python
    /// and JavaScript ones take a fraction of a millisecond): when a request
    /// finishes, the next one's fresh instance starts in the background.
    /// Each still serves one request only. 0 turns this off.
    #[arg(
        long,
        env = "WARREN_SPARE_INSTANCES",
        default_value_t = DEFAULT_SPARE_INSTANCES,
        value_name = "N"
    )]
    pub spare_instances: u16,

    /// Unacked requests this host holds at once: enough that a freed slot
    /// finds its next request already here (no round trip to the broker in
    /// between), few enough not to hoard work other hosts could do
    /// [default: 8 × concurrency, at least 32].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: Option<u16>,

    /// No longer does anything (procedures are compiled without Cranelift's
    /// inliner, as wasmtime does by default); accepted, with a warning, so a
    /// host started with it still starts.
    #[arg(long, env = "WARREN_COMPILER_INLINING", value_name = "WHEN", hide = true,
          num_args = 0..=1, default_missing_value = "on")]
    pub compiler_inlining: Option<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object a line: timestamp, level, target, fields, spans.
    Json,
}

/// The largest linear memory a 32-bit WebAssembly module can have.
pub const MAX_MEMORY_LIMIT: u64 = 4 << 30;

/// `--max-memory`: a size from 1 byte to [`MAX_MEMORY_LIMIT`].
pub(super) fn memory_size(text: &str) -> Result<u64, String> {
    let bytes = values::nonzero_size(text)?;
    if bytes > MAX_MEMORY_LIMIT {
        return Err(format!(
            "it must be at most 4GiB, the most a 32-bit WebAssembly memory can grow to \
             (asked for {})",
            bytesize::ByteSize::b(bytes).display().iec()
        ));
    }
    Ok(bytes)
}
