//! `warren`: call Warren procedures from the command line.
//!
//! A thin layer over [`warren_client::RpcClient`]: parse options, make one
//! call, print the reply body on stdout and everything else on stderr, and
//! exit with a code a script can branch on.

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use warren_client::bench::{BenchOptions, Budget};
use warren_client::protocol::deploy::public_key_path;
use warren_client::protocol::{DEFAULT_AMQP_URL, DEFAULT_QUEUE, values};
use warren_client::{
    Call, CallError, ClientOptions, Deploy, DeployAnswer, Reply, RpcClient, SecretKey, TraceParent,
};

/// Exit codes, as documented in `--help` and docs/client.md.
mod new;

mod exit {
    pub const OK: u8 = 0;
    pub const PROCEDURE_ERROR: u8 = 1;
    /// `keygen` or `deploy` did not succeed (a host refused, a key not written).
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NO_REPLY: u8 = 3;
    pub const NO_BROKER: u8 = 4;
}

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
struct Cli {
    /// Broker to connect to, like amqp://user:password@host:5672/vhost.
    /// Give it more than once (or comma-separated in AMQP_URL) for the nodes
    /// of a cluster: the first that answers is used.
    // Checked when connecting, not by clap: clap would echo the password.
    #[arg(long = "amqp-url", global = true, env = "AMQP_URL", value_name = "URL",
          value_delimiter = ',', default_value = DEFAULT_AMQP_URL)]
    amqp_urls: Vec<String>,

    /// PEM file of CA certificates to trust for amqps:// brokers, besides the
    /// system's (a broker whose certificate a private CA issued).
    #[arg(long, global = true, env = "AMQP_CA_FILE", value_name = "FILE")]
    amqp_ca_file: Option<std::path::PathBuf>,

    /// Durable mode, for hosts run with --durable: persistent requests, and
    /// replies through a durable callback queue that survives the client
    /// reconnecting (a broker restart loses no call in flight).
    #[arg(long, global = true)]
    durable: bool,

    /// Queue the hosts consume requests from.
    #[arg(long, global = true, default_value = DEFAULT_QUEUE, value_parser = values::queue_name)]
    queue: String,

    /// How long to wait for a reply, e.g. 500ms, 30s, 2m (at most 49d).
    /// Requests not picked up by then expire in the broker, and hosts do
    /// not start them.
    #[arg(long, global = true, default_value = "30s", value_parser = values::call_timeout)]
    timeout: Duration,

    /// How long to wait for the broker to accept the connection.
    #[arg(long, global = true, default_value = "10s", value_parser = values::duration)]
    connect_timeout: Duration,

    /// Also print which procedure version answered, or failed (on stderr).
    #[arg(long, short, global = true)]
    verbose: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
fn command() -> clap::Command {
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

#[tokio::main]
async fn main() -> ExitCode {
    // Colour only for a person at a terminal, never with NO_COLOR set.
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,lapin=off")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
    let parsed = command()
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    ExitCode::from(run(cli).await)
}

async fn run(cli: Cli) -> u8 {
    let call = match &cli.command {
        Command::Keygen { file } => return keygen(file),
        Command::New { name, lang, dir } => {
            return new_project(name, *lang, dir.as_deref());
        }
        Command::Bench {
            procedure,
            requests,
            duration,
            concurrency,
            expect,
            json,
            body,
        } => {
            let options = BenchOptions {
                body: body.as_bytes().to_vec(),
                procedure: procedure.clone(),
                concurrency: *concurrency as usize,
                budget: match (requests, duration) {
                    (_, Some(duration)) => Budget::Duration(*duration),
                    (Some(requests), None) => Budget::Requests(*requests),
                    (None, None) => Budget::Requests(10_000),
                },
                expect: expect.as_ref().map(|e| e.as_bytes().to_vec()),
                timeout: cli.timeout,
            };
            return bench(&cli, options, *json).await;
        }
        Command::Deploy {
            name,
            module,
            key,
            expect_hosts,
            allow_no_hosts,
            max_module_bytes,
        } => {
            let options = DeployOptions {
                expect_hosts: *expect_hosts,
                allow_no_hosts: *allow_no_hosts,
                max_module_bytes: *max_module_bytes,
            };
            return deploy(&cli, name, module, key.as_deref(), options).await;
        }
        Command::Status { wait, json } => return status(&cli, *wait, *json).await,
        Command::Fib { n } => Call::new(n.to_string()).procedure("fib"),
        Command::Call { procedure, body } => {
            let body = match read_body(body) {
                Ok(body) => body,
                Err(error) => {
                    eprintln!("warren: reading the request body from stdin: {error}");
                    return exit::USAGE;
                }
            };
            let call = Call::new(body);
            match procedure {
                Some(name) => call.procedure(name),
                None => call,
            }
        }
    };
    let call = call.timeout(cli.timeout);
    let client = match connect(&cli).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    let outcome = client.call(call).await;
    client.close().await;
    match outcome {
        Ok(reply) => {
            print_reply(
                &reply,
                matches!(cli.command, Command::Fib { .. }),
                cli.verbose,
            );
            exit::OK
        }
        Err(error) => {
            if let (
                true,
                CallError::Rpc {
                    procedure,
                    digest,
                    traceparent,
                    ..
                },
            ) = (cli.verbose, &error)
            {
                print_answered_by(
                    procedure.as_deref(),
                    digest.as_deref(),
                    traceparent.as_ref(),
                );
            }
            report(&error)
        }
    }
}

/// Connects within `--connect-timeout` (not `--timeout`, which is how long a
/// reply may take), or reports why not and returns the exit code.
async fn connect(cli: &Cli) -> Result<RpcClient, u8> {
    let mut options = ClientOptions::new(cli.amqp_urls.join(","), &cli.queue)
        .durable(cli.durable)
        .connect_timeout(cli.connect_timeout);
    if let Some(path) = &cli.amqp_ca_file {
        options = options.ca_file(path);
    }
    RpcClient::connect_with(options)
        .await
        .map_err(|error| report(&error))
}

/// `warren bench`: runs the load with a progress bar on a terminal, then
/// prints the report (text or JSON) on stdout.
async fn bench(cli: &Cli, options: BenchOptions, json: bool) -> u8 {
    let client = match connect(cli).await {
        Ok(client) => Arc::new(client),
        Err(code) => return code,
    };
    let done = Arc::new(AtomicU64::new(0));
    let progress = std::io::stdout()
        .is_terminal()
        .then(|| spawn_progress(&options.budget, done.clone()));
    let outcome = warren_client::bench::run(client.clone(), options, done).await;
    if let Some((bar, ticker)) = progress {
        ticker.abort();
        bar.finish_and_clear();
    }
    if let Ok(client) = Arc::try_unwrap(client) {
        client.close().await;
    }
    let report = match outcome {
        Ok(report) => report,
        Err(error) => return report(&error),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("a report always serialises")
        );
    } else {
        print!("{}", warren_client::bench::render(&report));
    }
    if !report.errors.is_empty() {
        exit::PROCEDURE_ERROR
    } else if report.missing > 0 || report.wrong > 0 {
        exit::NO_REPLY
    } else {
        exit::OK
    }
}

/// A progress bar (calls done, rate, time left) redrawn a few times a second.
fn spawn_progress(
    budget: &Budget,
    done: Arc<AtomicU64>,
) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    let (bar, position): (_, Box<dyn Fn(u64, Duration) -> u64 + Send>) = match *budget {
        Budget::Requests(total) => (indicatif::ProgressBar::new(total), Box::new(|done, _| done)),
        Budget::Duration(duration) => (
            indicatif::ProgressBar::new(duration.as_secs().max(1)),
            Box::new(|_, elapsed: Duration| elapsed.as_secs()),
        ),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} {msg} [{elapsed_precise}, {eta} left]",
        )
        .expect("a valid template"),
    );
    let ticker = tokio::spawn({
        let bar = bar.clone();
        async move {
            let started = std::time::Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let calls = done.load(Ordering::Relaxed);
                bar.set_position(position(calls, started.elapsed()));
                let rate = calls as f64 / started.elapsed().as_secs_f64();
                bar.set_message(format!("{calls} calls, {rate:.0}/s"));
            }
        }
    });
    (bar, ticker)
}

fn keygen(file: &Path) -> u8 {
    let written = SecretKey::generate()
        .map_err(|e| e.to_string())
        .and_then(|key| {
            key.write_pair(file)
                .map(|()| key.public_key())
                .map_err(|e| format!("writing {}: {e}", file.display()))
        });
    match written {
        Ok(public) => {
            eprintln!(
                "wrote the secret key to {} (mode 0600) and the public key to {}",
                file.display(),
                public_key_path(file).display()
            );
            println!("{public}");
            exit::OK
        }
        Err(error) => {
            eprintln!("warren: {error}");
            exit::FAILED
        }
    }
}

fn new_project(name: &str, lang: new::Lang, dir: Option<&Path>) -> u8 {
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_owned);
    match new::create(name, lang, &dir) {
        Ok(created) => {
            let dir = created.dir.display();
            println!("created {dir}");
            println!("build:  cd {dir} && {}", created.build);
            println!(
                "serve:  copy {dir}/{} into a host's modules folder as {name}.wasm",
                created.component
            );
            println!("call:   warren call --procedure {name} hello");
            exit::OK
        }
        Err(error) => {
            eprintln!("warren new: {error:#}");
            exit::FAILED
        }
    }
}

/// `warren deploy` options beyond the name, module and key.
struct DeployOptions {
    expect_hosts: Option<usize>,
    allow_no_hosts: bool,
    max_module_bytes: u64,
}

async fn deploy(
    cli: &Cli,
    name: &str,
    module: &Path,
    key: Option<&Path>,
    options: DeployOptions,
) -> u8 {
    let bytes = match std::fs::read(module) {
        Ok(bytes) => bytes,
        Err(error) => {
            eprintln!("warren: reading {}: {error}", module.display());
            return exit::USAGE;
        }
    };
    let mut request = Deploy::new(name, bytes)
        .allow_no_hosts(options.allow_no_hosts)
        .max_module_bytes(options.max_module_bytes)
        .timeout(cli.timeout);
    if let Some(hosts) = options.expect_hosts {
        request = request.expect_hosts(hosts);
    }
    if let Err(error) = request.check() {
        eprintln!("warren: {}: {error}", module.display());
        return exit::USAGE;
    }
    match key.map(SecretKey::read) {
        Some(Ok(key)) => request = request.signed_by(key),
        Some(Err(error)) => {
            eprintln!("warren: {error}");
            return exit::USAGE;
        }
        None => eprintln!("warren: no --key given: sending an unsigned deploy"),
    }
    let client = match connect(cli).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    let outcome = client.deploy_with(request, print_deploy_answer).await;
    client.close().await;
    let report = match outcome {
        Ok(report) => report,
        Err(error) => return self::report(&error),
    };
    let refused = report.answers.iter().filter(|a| !a.accepted).count();
    if refused > 0 {
        eprintln!(
            "warren: {refused} of {} answering hosts refused the deploy",
            report.answers.len()
        );
        exit::FAILED
    } else if report.answers.len() < report.expected {
        eprintln!(
            "warren: only {} of {} hosts answered within {} (still compiling? a longer \
             --timeout waits for them; consumers that are not Warren hosts never answer)",
            report.answers.len(),
            report.expected,
            humantime::format_duration(cli.timeout),
        );
        exit::NO_REPLY
    } else {
        if report.consumers == 0 {
            eprintln!(
                "warren: stored in the deploy stream of queue {:?}; no host consumes the queue \
                 now, hosts that start on it will apply the deploy",
                cli.queue
            );
        } else if report.expected == 0 {
            eprintln!(
                "warren: stored in the deploy stream of queue {:?}; not waiting for the {} \
                 consuming hosts' answers (--expect-hosts 0)",
                cli.queue, report.consumers
            );
        }
        exit::OK
    }
}

/// One line per host, as its answer arrives: host id, accepted or refused,
/// digest, time taken, and the reason when refused (tab-separated).
fn print_deploy_answer(answer: &DeployAnswer) {
    let verdict = if answer.accepted {
        "accepted"
    } else {
        "refused"
    };
    let mut line = format!(
        "{}\t{verdict}\t{}\t{}ms",
        answer.host, answer.digest, answer.took_ms
    );
    if !answer.reason.is_empty() {
        line = format!("{line}\t{}", answer.reason);
    }
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

fn read_body(arg: &str) -> std::io::Result<Vec<u8>> {
    if arg == "-" {
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body)?;
        Ok(body)
    } else {
        Ok(arg.as_bytes().to_vec())
    }
}

fn print_answered_by(procedure: Option<&str>, digest: Option<&str>, trace: Option<&TraceParent>) {
    match (procedure, digest) {
        (Some(procedure), Some(digest)) => eprintln!("answered by {procedure} {digest}"),
        // A refusal before any module ran (no-procedure, delivery-limit).
        (Some(procedure), None) => eprintln!("answered for {procedure}; no module ran"),
        (None, _) => eprintln!("answered by a server that names no procedure (not a Warren host?)"),
    }
    if let Some(trace) = trace {
        eprintln!("trace {}", trace.trace_id_hex());
    }
}

fn print_reply(reply: &Reply, add_newline: bool, verbose: bool) {
    if verbose {
        print_answered_by(
            reply.procedure.as_deref(),
            reply.digest.as_deref(),
            reply.traceparent.as_ref(),
        );
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&reply.body);
    if add_newline {
        let _ = stdout.write_all(b"\n");
    }
    let _ = stdout.flush();
}

/// Prints `error` on stderr and returns its exit code.
/// `warren status`: one line per host (or JSON), then any procedure served
/// in several versions.
async fn status(cli: &Cli, wait: Duration, json: bool) -> u8 {
    let client = match connect(cli).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    let outcome = client.status(wait).await;
    client.close().await;
    let hosts = match outcome {
        Ok(hosts) => hosts,
        Err(error) => return report(&error),
    };
    let mismatches = warren_client::protocol::status::mismatches(&hosts);
    if json {
        println!(
            "{}",
            serde_json::json!({ "hosts": hosts, "mismatches": mismatches })
        );
    } else {
        for host in &hosts {
            let procedures: Vec<String> = host.procedures.iter().map(|p| p.summary()).collect();
            println!(
                "{}\tv{}\tup {}\t{}\t{}/{} in flight\t{} served\t{} failed\t{}",
                host.host,
                host.version,
                humantime::format_duration(Duration::from_secs(host.uptime_seconds)),
                if host.node.is_empty() {
                    "not connected"
                } else {
                    &host.node
                },
                host.in_flight,
                host.concurrency,
                host.served,
                host.failed,
                if procedures.is_empty() {
                    "no procedures".to_owned()
                } else {
                    procedures.join(" ")
                },
            );
        }
    }
    for mismatch in &mismatches {
        let versions: Vec<String> = mismatch
            .versions
            .iter()
            .map(|version| format!("{} on {}", version.digest, version.hosts.join(", ")))
            .collect();
        eprintln!(
            "warren: procedure {} is served in {} versions: {} (a rollout still going on, or \
             a host that missed a deploy)",
            mismatch.procedure,
            versions.len(),
            versions.join("; ")
        );
    }
    if hosts.is_empty() {
        eprintln!(
            "warren: no host answered on queue {:?} within {} (none running, or older hosts \
             without status)",
            cli.queue,
            humantime::format_duration(wait)
        );
        exit::NO_REPLY
    } else if mismatches.is_empty() {
        exit::OK
    } else {
        exit::FAILED
    }
}

fn report(error: &CallError) -> u8 {
    eprintln!("warren: {error}");
    match error {
        CallError::Rpc { .. } => exit::PROCEDURE_ERROR,
        CallError::Invalid(_) => exit::USAGE,
        CallError::Timeout { .. } | CallError::NoQueue { .. } | CallError::NoHosts { .. } => {
            exit::NO_REPLY
        }
        CallError::Connect { .. }
        | CallError::ConnectTimeout { .. }
        | CallError::Broker { .. }
        | CallError::Disconnected
        | CallError::NotStored(_) => exit::NO_BROKER,
    }
}
