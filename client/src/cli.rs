//! The command line: every option and command, with the help a user reads.

use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory as _, Parser, Subcommand};
use warren_client::protocol::options::BrokerArgs;
use warren_client::protocol::values;

use crate::new;

/// Call procedures on Warren hosts (or any RabbitMQ tutorial-style RPC
/// server) and print the reply.
#[derive(Debug, Parser)]
#[command(
    name = "warren",
    version,
    about,
    after_help = "Exit codes: 0 success; 1 the procedure answered with an error (kind and \
                  message on stderr), or a deploy was refused, or a key could not be written; \
                  2 bad usage (including a malformed --amqp-url or procedure name); 3 no reply \
                  (the queue does not exist, no host consumes it, or none answered within \
                  --timeout; a deploy that fewer hosts answered than expected); 4 the broker \
                  cannot be reached."
)]
pub(crate) struct Cli {
    /// Which broker, which queue, which mode: the options `warren-host`
    /// takes too.
    #[command(flatten)]
    pub(crate) broker: BrokerArgs,

    /// How long to wait for a reply, e.g. 500ms, 30s, 2m (at most 49d).
    /// Requests not picked up by then expire in the broker, and hosts do
    /// not start them.
    #[arg(long, global = true, default_value = "30s", value_parser = values::call_timeout)]
    pub(crate) timeout: Duration,

    /// How long to wait for the broker to accept the connection.
    #[arg(long, global = true, default_value = "10s", value_parser = values::duration)]
    pub(crate) connect_timeout: Duration,

    /// Also print which procedure version answered, or failed (on stderr).
    #[arg(long, short, global = true)]
    pub(crate) verbose: bool,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Print fib(N), computed by the host's `fib` procedure.
    ///
    /// The procedure keeps the tutorial's naive recursion, so the work
    /// doubles about every two steps of N: fib(30) takes milliseconds,
    /// fib(40) about half a second, and from about fib(47) it runs past a
    /// host's default 10 s --timeout (reply: timeout).
    Fib {
        /// Which Fibonacci number, 0 to 93 (see above for how long large ones take).
        #[arg(value_parser = fib_number, allow_negative_numbers = true)]
        n: u64,
    },
    /// Send BODY as a request and print the raw reply body.
    Call {
        /// Procedure to run (the `x-procedure` header) [default: the host's default].
        #[arg(long, short, value_parser = values::procedure_name)]
        procedure: Option<String>,
        /// Request body; `-` reads it from stdin.
        body: String,
        /// When a host answers rate-limited (this caller is over a quota),
        /// wait as long as it says and send the call again, within
        /// --timeout.
        #[arg(long)]
        retry: bool,
    },
    /// Keep C calls in flight against whatever serves the queue (a Warren
    /// host, the tutorial's rpc_server.py) and report requests/s, latency
    /// percentiles, error replies by kind, missing and wrong replies, and
    /// which module versions answered. Exits 0 only if every call got the
    /// right, successful reply (1 for error replies, 3 for missing or wrong
    /// ones), so a script can use it as a check.
    Bench {
        /// Procedure to run (the `x-procedure` header) [default: the host's default].
        #[arg(long, short, value_parser = values::procedure_name)]
        procedure: Option<String>,
        /// Stop after this many calls [default: 10000, unless --duration].
        #[arg(long, short = 'n', value_name = "N", conflicts_with = "duration",
              value_parser = clap::value_parser!(u64).range(1..))]
        requests: Option<u64>,
        /// Stop after this long instead, e.g. 10s.
        #[arg(long, short, value_parser = values::duration)]
        duration: Option<Duration>,
        /// Calls in flight at once, over one callback queue.
        #[arg(long, short, default_value_t = 64,
              value_parser = clap::value_parser!(u32).range(1..=65_535))]
        concurrency: u32,
        /// A reply body other than this counts as wrong.
        #[arg(long, value_name = "BODY")]
        expect: Option<String>,
        /// Print the report as one JSON object (for scripts) instead of text.
        #[arg(long)]
        json: bool,
        /// When a host answers rate-limited (this caller is over a quota),
        /// wait as long as it says and send the call again (its latency includes the wait), within
        /// --timeout.
        #[arg(long)]
        retry: bool,
        /// Request body of every call.
        body: String,
    },
    /// Write a new ed25519 deploy key: the secret to FILE (mode 0600), the
    /// public key to FILE.pub (one line, for hosts' --trusted-keys files).
    Keygen {
        /// Where to write the secret key; never overwritten.
        file: PathBuf,
    },
    /// Publish MODULE as procedure NAME to every host of the queue, signed,
    /// and print each host's answer as it arrives (host, accepted or refused
    /// and why, digest, time taken). Exits 0 only if every expected host
    /// answered and all accepted.
    Deploy {
        /// Procedure name the module will serve as: 1 to 63 of a-z, 0-9,
        /// '-' and '_', starting with a letter or digit.
        #[arg(value_parser = values::procedure_name)]
        name: String,
        /// The component file (.wasm): checked before anything is sent (a
        /// component exporting the handler, no larger than
        /// --max-module-bytes), or refused with exit 2.
        module: PathBuf,
        /// Secret key to sign with (from `warren keygen`). Without it the
        /// deploy is unsigned, which hosts refuse unless started with
        /// --allow-unsigned-deploys.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// The procedure's manifest (NAME.toml): its limits, configuration,
        /// secret names and callers; checked here, sent with the module and
        /// covered by the same signature. Without it the procedure is
        /// granted nothing (docs/manifests.md).
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
        /// Hosts that must answer [default: the number of consumers of the
        /// queue when the deploy starts].
        #[arg(long, value_name = "N")]
        expect_hosts: Option<usize>,
        /// Deploy even when the queue does not exist or no host consumes it:
        /// the module waits in the queue's deploy stream for hosts that start
        /// later. Without it such a deploy is refused (exit 3), so a mistyped
        /// --queue leaves nothing behind.
        #[arg(long)]
        allow_no_hosts: bool,
        /// The largest module the hosts accept (their --max-module-bytes);
        /// a larger one is refused here, sending nothing.
        #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = values::nonzero_size)]
        max_module_bytes: u64,
    },
    /// List the versions of procedure NAME the hosts keep (each host keeps
    /// its last --keep-versions deploys of every procedure), newest first,
    /// one a line: digest, manifest digest, sequence, when last accepted,
    /// signing key, which hosts keep it and which serve it. Exits 0 when
    /// some host keeps or serves NAME, 1 when none does, 3 when no host
    /// answered.
    Versions {
        /// The procedure's name.
        #[arg(value_parser = values::procedure_name)]
        name: String,
        /// How long to wait for the hosts' answers (less when every host
        /// consuming the queue has answered).
        #[arg(long, default_value = "1s", value_parser = values::duration)]
        wait: Duration,
        /// Print {"procedure": NAME, "versions": [...]} as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Make every host serve again a version of procedure NAME it keeps:
    /// by default the newest one older than the version served, or the one
    /// --to names. No module is sent: it is a signed deploy naming the
    /// version, with a new sequence (so it cannot be replayed later), and a
    /// host that does not keep that version refuses it. Prints each host's
    /// answer as `deploy` does; exits 0 only if every expected host
    /// answered and all accepted.
    Rollback {
        /// The procedure's name.
        #[arg(value_parser = values::procedure_name)]
        name: String,
        /// The version to return to: its digest (sha256:HEX), or at least
        /// 12 of its leading hex digits (`warren versions NAME` lists them).
        #[arg(long, value_name = "DIGEST")]
        to: Option<String>,
        /// Secret key to sign with (from `warren keygen`), as for `deploy`.
        /// Only versions whose deploy this key (or one in --trusted-keys)
        /// signed are rolled back to: what hosts report is not signed.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// More public keys (a hosts' --trusted-keys file) whose deploys may
        /// be rolled back to, besides --key's own.
        #[arg(long, value_name = "FILE")]
        trusted_keys: Option<PathBuf>,
        /// Hosts that must answer [default: the number of consumers of the
        /// queue when the rollback starts].
        #[arg(long, value_name = "N")]
        expect_hosts: Option<usize>,
    },
    /// Write a new procedure project: an echo handler in Rust, Python or
    /// JavaScript, its own copy of the WIT contract, the build command and
    /// a five-line README. It builds outside this repository; drop the
    /// component it builds into a host's modules folder (as NAME.wasm) to
    /// serve it.
    New {
        /// Procedure name, also the project's: 1 to 63 of a-z, 0-9, '-'
        /// and '_', starting with a letter or digit (a letter for Rust).
        #[arg(value_parser = values::procedure_name)]
        name: String,
        /// The language to write it in.
        #[arg(long, short, value_enum)]
        lang: new::Lang,
        /// Also write a manifest (NAME.toml) granting a configuration value
        /// and outbound HTTP to one address, and a handler that reads the
        /// value and (Rust, JavaScript) fetches a URL it is sent. Without
        /// it the procedure is granted nothing.
        #[arg(long)]
        grants: bool,
        /// Where to write it (must not exist, or be empty) [default: ./NAME].
        dir: Option<PathBuf>,
    },
    /// Ask every host of the queue what it is doing: one line per host
    /// (host id, version, uptime, broker node, in flight/concurrency,
    /// requests served and failed, each procedure with its digest). A
    /// procedure served in different versions on different hosts (a
    /// rollout still going on, or a host that missed a deploy) is flagged.
    /// Exits 0 when hosts answered and agree, 1 when they serve different
    /// versions, 3 when none answered.
    Status {
        /// How long to wait for answers (less when every host consuming the
        /// queue has answered).
        #[arg(long, default_value = "1s", value_parser = values::duration)]
        wait: Duration,
        /// Print {"hosts": [...], "mismatches": [...]} as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// The command line, with the broker options (global, so they may come
/// before or after the command) left out of the help of the commands that
/// never talk to a broker (`keygen`, `new`).
pub(crate) fn command() -> clap::Command {
    let mut command = Cli::command();
    let globals: Vec<clap::Arg> = command
        .get_arguments()
        .filter(|arg| arg.is_global_set())
        .cloned()
        .collect();
    for local in ["keygen", "new"] {
        command = command.mut_subcommand(local, |mut sub| {
            // An argument of the same id stops clap copying the global one
            // in: accepted and ignored there, and not shown.
            for arg in &globals {
                sub = sub.arg(arg.clone().global(false).hide(true));
            }
            sub
        });
    }
    command
}

/// `warren fib N`: what the fib procedure answers (fib(94) overflows 64 bits).
fn fib_number(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(n) if n <= 93 => Ok(n),
        _ => Err("N must be a whole number from 0 to 93 (fib(94) does not fit in 64 bits)".into()),
    }
}
