//! The commands that look after a fleet rather than call it: `keygen`,
//! `deploy` and `status` (`versions` and `rollback` are in `versions`).

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use warren_client::protocol::deploy::public_key_path;
use warren_client::protocol::status::HostStatus;
use warren_client::{Deploy, DeployAnswer, RpcClient, SecretKey};

use crate::cli::Cli;
use crate::{connect, exit, report};

pub(crate) fn keygen(file: &Path) -> u8 {
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

/// `warren deploy` options beyond the name, module and key.
pub(crate) struct DeployOptions {
    pub(crate) expect_hosts: Option<usize>,
    pub(crate) allow_no_hosts: bool,
    pub(crate) max_module_bytes: u64,
    pub(crate) manifest: Option<std::path::PathBuf>,
}

pub(crate) async fn deploy(
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
    if let Some(path) = &options.manifest {
        match std::fs::read_to_string(path) {
            Ok(text) => request = request.manifest(text),
            Err(error) => {
                eprintln!("warren: reading the manifest {}: {error}", path.display());
                return exit::USAGE;
            }
        }
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
    // The hosts say how new the newest deploy of the name is, so this one
    // follows it even if it came from a clock that ran fast. A fleet that
    // does not answer (none running yet) leaves the order to the clock.
    let hosts = client.status(STATUS_WAIT).await.unwrap_or_default();
    for sequence in reported_sequences(&hosts, name) {
        request = request.after_sequence(sequence);
    }
    let code = send_deploy(cli, &client, request).await;
    client.close().await;
    code
}

/// How long `deploy` and `rollback` wait for the hosts' status (less once
/// every host consuming the queue has answered).
pub(crate) const STATUS_WAIT: Duration = Duration::from_secs(2);

/// The sequences of `name` that `hosts` say they accepted (the versions
/// they keep): a deploy goes on from the newest it believes.
pub(crate) fn reported_sequences(hosts: &[HostStatus], name: &str) -> Vec<u64> {
    hosts
        .iter()
        .flat_map(|host| &host.versions)
        .filter(|kept| kept.name == name)
        .map(|kept| kept.sequence)
        .collect()
}

/// Sends a deploy, prints each host's answer as it arrives, and says what
/// came of it as an exit code: 0 when every expected host accepted.
pub(crate) async fn send_deploy(cli: &Cli, client: &RpcClient, request: Deploy) -> u8 {
    let outcome = client.deploy_with(request, print_deploy_answer).await;
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
                cli.broker.queue
            );
        } else if report.expected == 0 {
            eprintln!(
                "warren: stored in the deploy stream of queue {:?}; not waiting for the {} \
                 consuming hosts' answers (--expect-hosts 0)",
                cli.broker.queue, report.consumers
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

/// `warren status`: one line per host (or JSON), then any procedure served
/// in several versions.
pub(crate) async fn status(cli: &Cli, wait: Duration, json: bool) -> u8 {
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
                "{}\tv{}\tup {}\t{}\t{}/{} in flight\t{} served\t{} failed{}\t{}",
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
                if host.forbidden + host.rate_limited > 0 {
                    format!(
                        " ({} forbidden, {} rate-limited)",
                        host.forbidden, host.rate_limited
                    )
                } else {
                    String::new()
                },
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
            .map(|version| {
                let manifest = match &version.manifest {
                    Some(manifest) => format!(" with manifest {manifest}"),
                    None => " without a manifest".to_owned(),
                };
                format!(
                    "{}{manifest} on {}",
                    version.digest,
                    version.hosts.join(", ")
                )
            })
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
            cli.broker.queue,
            humantime::format_duration(wait)
        );
        exit::NO_REPLY
    } else if mismatches.is_empty() {
        exit::OK
    } else {
        exit::FAILED
    }
}
