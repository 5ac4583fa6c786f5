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

use clap::FromArgMatches as _;
use warren_client::bench::{BenchOptions, Budget};
use warren_client::{Call, CallError, ClientOptions, Reply, RpcClient, TraceParent};

mod cli;
mod fleet;
mod new;
mod versions;

use cli::{Cli, Command, command};
use fleet::{DeployOptions, deploy, keygen, status};

/// Exit codes, as documented in `--help` and docs/client.md.
mod exit {
    pub const OK: u8 = 0;
    pub const PROCEDURE_ERROR: u8 = 1;
    /// `keygen` or `deploy` did not succeed (a host refused, a key not written).
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NO_REPLY: u8 = 3;
    pub const NO_BROKER: u8 = 4;
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
        Command::New {
            name,
            lang,
            grants,
            dir,
        } => {
            return new_project(name, *lang, *grants, dir.as_deref());
        }
        Command::Bench {
            procedure,
            requests,
            duration,
            concurrency,
            expect,
            json,
            retry,
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
                retry: *retry,
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
            manifest,
        } => {
            let options = DeployOptions {
                expect_hosts: *expect_hosts,
                allow_no_hosts: *allow_no_hosts,
                max_module_bytes: *max_module_bytes,
                manifest: manifest.clone(),
            };
            return deploy(&cli, name, module, key.as_deref(), options).await;
        }
        Command::Status { wait, json } => return status(&cli, *wait, *json).await,
        Command::Versions { name, wait, json } => {
            return versions::versions(&cli, name, *wait, *json).await;
        }
        Command::Rollback {
            name,
            to,
            key,
            trusted_keys,
            expect_hosts,
        } => {
            let options = versions::RollbackOptions {
                to: to.as_deref(),
                key: key.as_deref(),
                trusted_keys: trusted_keys.as_deref(),
                expect_hosts: *expect_hosts,
            };
            return versions::rollback(&cli, name, options).await;
        }
        Command::Fib { n } => Call::new(n.to_string()).procedure("fib"),
        Command::Call {
            procedure,
            body,
            retry,
        } => {
            let body = match read_body(body) {
                Ok(body) => body,
                Err(error) => {
                    eprintln!("warren: reading the request body from stdin: {error}");
                    return exit::USAGE;
                }
            };
            let call = Call::new(body).retry_when_rate_limited(*retry);
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
    let mut options = ClientOptions::new(cli.broker.amqp_urls.join(","), &cli.broker.queue)
        .durable(cli.broker.durable)
        .connect_timeout(cli.connect_timeout);
    if let Some(path) = &cli.broker.amqp_ca_file {
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

fn new_project(name: &str, lang: new::Lang, grants: bool, dir: Option<&Path>) -> u8 {
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_owned);
    match new::create(name, lang, grants, &dir) {
        Ok(created) => {
            let dir = created.dir.display();
            println!("created {dir}");
            println!("build:  cd {dir} && {}", created.build);
            if grants {
                println!(
                    "serve:  copy {dir}/{} into a host's modules folder as {name}.wasm, \
                     with its manifest {dir}/{name}.toml beside it",
                    created.component
                );
                println!("call:   warren call --procedure {name} world");
            } else {
                println!(
                    "serve:  copy {dir}/{} into a host's modules folder as {name}.wasm",
                    created.component
                );
                println!("call:   warren call --procedure {name} hello");
            }
            exit::OK
        }
        Err(error) => {
            eprintln!("warren new: {error:#}");
            exit::FAILED
        }
    }
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
