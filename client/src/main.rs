//! `warren`: call Warren procedures from the command line.
//!
//! A thin layer over [`warren_client::RpcClient`]: parse options, make one
//! call, print the reply body on stdout and everything else on stderr, and
//! exit with a code a script can branch on.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use warren_client::protocol::deploy::public_key_path;
use warren_client::protocol::{DEFAULT_AMQP_URL, DEFAULT_QUEUE, redact_url};
use warren_client::{Call, CallError, Deploy, Reply, RpcClient, SecretKey};

/// Exit codes, as documented in `--help` and README.md.
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
                  2 bad usage; 3 no reply within --timeout (including when no host consumes the \
                  queue, and a deploy that fewer than --expect-hosts answered); 4 the broker \
                  cannot be reached."
)]
struct Cli {
    /// Broker to connect to.
    #[arg(long, global = true, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL)]
    amqp_url: String,

    /// Queue the hosts consume requests from.
    #[arg(long, global = true, default_value = DEFAULT_QUEUE)]
    queue: String,

    /// How long to wait for a reply, e.g. 500ms, 30s, 2m. Requests not picked
    /// up by then expire in the broker.
    #[arg(long, global = true, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    /// Also print which procedure version answered (on stderr).
    #[arg(long, short, global = true)]
    verbose: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print fib(N), computed by the host's `fib` procedure.
    Fib {
        /// Which Fibonacci number, 0 to 93.
        n: u64,
    },
    /// Send BODY as a request and print the raw reply body.
    Call {
        /// Procedure to run (the `x-procedure` header) [default: the host's default].
        #[arg(long, short)]
        procedure: Option<String>,
        /// Request body; `-` reads it from stdin.
        body: String,
    },
    /// Write a new ed25519 deploy key: the secret to FILE (mode 0600), the
    /// public key to FILE.pub (one line, for hosts' --trusted-keys files).
    Keygen {
        /// Where to write the secret key; never overwritten.
        file: PathBuf,
    },
    /// Publish MODULE as procedure NAME to every host of the queue, signed,
    /// and print each host's answer (host, accepted or refused and why,
    /// digest, time taken). Exits 0 only if N hosts answered and all accepted.
    Deploy {
        /// Procedure name the module will serve as.
        name: String,
        /// The component file (.wasm).
        module: PathBuf,
        /// Secret key to sign with (from `warren keygen`). Without it the
        /// deploy is unsigned, which hosts refuse unless started with
        /// --allow-unsigned-deploys.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// Hosts that must answer.
        #[arg(long, value_name = "N", default_value_t = 1)]
        expect_hosts: usize,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,lapin=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::try_parse() {
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
        Command::Deploy {
            name,
            module,
            key,
            expect_hosts,
        } => return deploy(&cli, name, module, key.as_deref(), *expect_hosts).await,
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
        Err(error) => report(&error),
    }
}

/// Connects within `--timeout`, or reports why not and returns the exit code.
async fn connect(cli: &Cli) -> Result<RpcClient, u8> {
    let connecting = RpcClient::connect(&cli.amqp_url, &cli.queue);
    match tokio::time::timeout(cli.timeout, connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(error)) => Err(report(&error)),
        Err(_) => {
            eprintln!(
                "warren: cannot reach the broker at {}: no answer within {}",
                redact_url(&cli.amqp_url),
                humantime::format_duration(cli.timeout)
            );
            Err(exit::NO_BROKER)
        }
    }
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

async fn deploy(
    cli: &Cli,
    name: &str,
    module: &Path,
    key: Option<&Path>,
    expect_hosts: usize,
) -> u8 {
    let bytes = match std::fs::read(module) {
        Ok(bytes) => bytes,
        Err(error) => {
            eprintln!("warren: reading {}: {error}", module.display());
            return exit::USAGE;
        }
    };
    let mut request = Deploy::new(name, bytes)
        .expect_hosts(expect_hosts)
        .timeout(cli.timeout);
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
    let outcome = client.deploy(request).await;
    client.close().await;
    let answers = match outcome {
        Ok(answers) => answers,
        Err(error) => return report(&error),
    };
    for answer in &answers {
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
        println!("{line}");
    }
    if answers.iter().any(|a| !a.accepted) {
        eprintln!(
            "warren: {} of {} answering hosts refused the deploy",
            answers.iter().filter(|a| !a.accepted).count(),
            answers.len()
        );
        exit::FAILED
    } else if answers.len() < expect_hosts {
        eprintln!(
            "warren: only {} of {expect_hosts} hosts answered within {} (are they running on queue {:?}?)",
            answers.len(),
            humantime::format_duration(cli.timeout),
            cli.queue
        );
        exit::NO_REPLY
    } else {
        exit::OK
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

fn print_reply(reply: &Reply, add_newline: bool, verbose: bool) {
    if verbose {
        eprintln!(
            "answered by {} {}",
            reply.procedure.as_deref().unwrap_or("(unnamed procedure)"),
            reply.digest.as_deref().unwrap_or("(no digest)")
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
        CallError::Timeout { .. } => exit::NO_REPLY,
        CallError::Connect { .. }
        | CallError::ConnectTimeout { .. }
        | CallError::Broker { .. }
        | CallError::Disconnected
        | CallError::DeployNotStored => exit::NO_BROKER,
    }
}
