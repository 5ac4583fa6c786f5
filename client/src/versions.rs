//! `warren versions` and `warren rollback`: the versions of a procedure the
//! hosts keep, and making the fleet serve one of them again without
//! sending its module (the contract: `HEADER_DEPLOY_KEPT` in
//! `warren_protocol::deploy`).

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use warren_client::protocol::deploy::{PublicKey, SignedDeploy, read_trusted_keys};
use warren_client::protocol::status::{FleetVersion, HostStatus, fleet_versions};
use warren_client::{Deploy, SecretKey};

use crate::cli::Cli;
use crate::fleet::{STATUS_WAIT, reported_sequences, send_deploy};
use crate::{connect, exit, report};

/// `warren versions NAME`: one line per version, newest first.
pub(crate) async fn versions(cli: &Cli, name: &str, wait: Duration, json: bool) -> u8 {
    let hosts = match fleet_status(cli, wait).await {
        Ok(hosts) => hosts,
        Err(code) => return code,
    };
    let versions = fleet_versions(&hosts, name);
    if json {
        println!(
            "{}",
            serde_json::json!({ "procedure": name, "versions": versions })
        );
    } else {
        for version in &versions {
            println!("{}", version_line(version));
        }
    }
    if versions.is_empty() {
        eprintln!(
            "warren: none of the {} hosts that answered keeps or serves a procedure named {name:?}",
            hosts.len()
        );
        return exit::FAILED;
    }
    exit::OK
}

/// `warren rollback NAME [--to DIGEST]`.
pub(crate) async fn rollback(cli: &Cli, name: &str, options: RollbackOptions<'_>) -> u8 {
    let key = match options.key.map(SecretKey::read) {
        Some(Ok(key)) => Some(key),
        Some(Err(error)) => {
            eprintln!("warren: {error}");
            return exit::USAGE;
        }
        None => {
            eprintln!("warren: no --key given: sending an unsigned rollback");
            None
        }
    };
    // Status answers are not signed: a version is rolled back to only if a
    // key this deployer trusts signed its deploy, so a forged answer cannot
    // have it sign a module someone else chose.
    let mut trusted: Vec<PublicKey> = key.iter().map(SecretKey::public_key).collect();
    if let Some(path) = options.trusted_keys {
        match read_trusted_keys(path) {
            Ok(keys) => trusted.extend(keys),
            Err(error) => {
                eprintln!("warren: {error}");
                return exit::USAGE;
            }
        }
    }
    let client = match connect(cli).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    let hosts = match client.status(STATUS_WAIT).await {
        Ok(hosts) if !hosts.is_empty() => hosts,
        Ok(_) => {
            client.close().await;
            eprintln!(
                "warren: no host answered on queue {:?}: nothing to roll back",
                cli.broker.queue
            );
            return exit::NO_REPLY;
        }
        Err(error) => {
            client.close().await;
            return report(&error);
        }
    };
    let mut versions = fleet_versions(&hosts, name);
    if versions.is_empty() {
        client.close().await;
        eprintln!(
            "warren: none of the {} hosts that answered keeps or serves a procedure named {name:?}",
            hosts.len()
        );
        return exit::FAILED;
    }
    let mut untrusted = 0;
    if trusted.is_empty() {
        eprintln!(
            "warren: without --key or --trusted-keys the versions the hosts report cannot be \
             checked; rolling back to one anyway"
        );
    } else {
        let before = versions.len();
        versions.retain(|version| {
            version.kept_by.is_empty() || signed_by_one_of(version, name, &trusted)
        });
        untrusted = before - versions.len();
    }
    let target = match choose(&versions, options.to) {
        Ok(target) => target,
        Err(why) => {
            client.close().await;
            eprintln!("warren: {why} (`warren versions {name}` lists them)");
            if untrusted > 0 {
                eprintln!(
                    "warren: {untrusted} kept version(s) were left out: their deploys are not \
                     signed by --key's key or one in --trusted-keys (the hosts' status is not \
                     signed, so only such versions are rolled back to)"
                );
            }
            return exit::USAGE;
        }
    };
    let missing: Vec<&str> = hosts
        .iter()
        .map(|host| host.host.as_str())
        .filter(|host| !target.kept_by.iter().any(|kept| kept == host))
        .collect();
    eprintln!("warren: returning {name} to {}", version_line(target));
    if !missing.is_empty() {
        eprintln!(
            "warren: {} {} not keep that version and will refuse it (they apply it when a host \
             that keeps it publishes it again with its module, within seconds)",
            missing.join(", "),
            if missing.len() == 1 { "does" } else { "do" }
        );
    }
    let mut request =
        Deploy::kept_version(name, &target.digest, target.manifest.clone()).timeout(cli.timeout);
    for sequence in reported_sequences(&hosts, name) {
        request = request.after_sequence(sequence);
    }
    if let Some(key) = key {
        request = request.signed_by(key);
    }
    if let Some(hosts) = options.expect_hosts {
        request = request.expect_hosts(hosts);
    }
    let code = send_deploy(cli, &client, request).await;
    client.close().await;
    code
}

/// `warren rollback` options beyond the name.
pub(crate) struct RollbackOptions<'a> {
    pub(crate) to: Option<&'a str>,
    pub(crate) key: Option<&'a Path>,
    pub(crate) trusted_keys: Option<&'a Path>,
    pub(crate) expect_hosts: Option<usize>,
}

/// Whether the deploy `version` was last accepted with is signed, as the
/// hosts report it, by one of `trusted`.
fn signed_by_one_of(version: &FleetVersion, name: &str, trusted: &[PublicKey]) -> bool {
    SignedDeploy {
        name,
        digest: &version.digest,
        sequence: version.sequence,
        manifest_digest: version.manifest.as_deref(),
        key: version.key.as_deref(),
        signature: version.signature.as_deref(),
    }
    .signed_by_one_of(trusted)
}

/// Every host's status, or the exit code saying why there is none.
async fn fleet_status(cli: &Cli, wait: Duration) -> Result<Vec<HostStatus>, u8> {
    let client = connect(cli).await?;
    let outcome = client.status(wait).await;
    client.close().await;
    match outcome {
        Ok(hosts) if hosts.is_empty() => {
            eprintln!(
                "warren: no host answered on queue {:?} within {}",
                cli.broker.queue,
                humantime::format_duration(wait)
            );
            Err(exit::NO_REPLY)
        }
        Ok(hosts) => Ok(hosts),
        Err(error) => Err(report(&error)),
    }
}

/// The version to roll back to: the one `to` names (a digest, or at least
/// 12 of its leading hex digits), or else the newest kept version older
/// than the newest one served.
fn choose<'v>(versions: &'v [FleetVersion], to: Option<&str>) -> Result<&'v FleetVersion, String> {
    let kept = versions.iter().filter(|v| !v.kept_by.is_empty());
    match to {
        Some(to) if !prefix_shape(to) => Err(format!(
            "--to {to:?} is not a digest: give sha256:HEX, or at least {} of its leading hex \
             digits",
            warren_client::protocol::status::MIN_DIGEST_PREFIX
        )),
        Some(to) => {
            let named: Vec<&FleetVersion> = kept
                .filter(|v| warren_client::protocol::status::digest_matches(&v.digest, to))
                .collect();
            match named.as_slice() {
                [one]
                    if !one.served_by.is_empty()
                        && one.served_by.len() == hosts_serving(versions) =>
                {
                    Err("every host that answered serves that version already".into())
                }
                [one] => Ok(one),
                [] => Err(format!(
                    "no host keeps a version whose digest is or starts with {to:?} (give the \
                     digest, or at least {} of its hex digits)",
                    warren_client::protocol::status::MIN_DIGEST_PREFIX
                )),
                many => Err(format!(
                    "{to:?} names {} kept versions (the same module with other manifests): \
                     give more of the digest, or the one whose manifest you want is not \
                     distinguishable this way",
                    many.len()
                )),
            }
        }
        None => {
            let served = versions
                .iter()
                .filter(|v| !v.served_by.is_empty())
                .map(|v| v.sequence)
                .max();
            let Some(served) = served else {
                return Err("no host serves the procedure: name the version with --to".into());
            };
            kept.filter(|v| v.sequence < served && v.served_by.is_empty())
                .max_by_key(|v| v.sequence)
                .ok_or_else(|| "no host keeps a version older than the one served".into())
        }
    }
}

/// How many hosts serve some version of the procedure.
fn hosts_serving(versions: &[FleetVersion]) -> usize {
    let mut hosts: Vec<&String> = versions.iter().flat_map(|v| &v.served_by).collect();
    hosts.sort();
    hosts.dedup();
    hosts.len()
}

/// Whether `to` looks like a digest or a long enough prefix of one.
fn prefix_shape(to: &str) -> bool {
    let hex = to.strip_prefix("sha256:").unwrap_or(to);
    hex.len() >= warren_client::protocol::status::MIN_DIGEST_PREFIX
        && hex.chars().all(|c| c.is_ascii_hexdigit())
}

/// One version, tab-separated: digest, manifest digest (or -), sequence,
/// when last accepted, signing key (or unsigned), the hosts keeping it and
/// those serving it.
fn version_line(version: &FleetVersion) -> String {
    let accepted = if version.accepted_ms == 0 {
        "-".to_owned()
    } else {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(version.accepted_ms))
            .to_string()
    };
    let hosts = |hosts: &[String]| {
        if hosts.is_empty() {
            "-".to_owned()
        } else {
            hosts.join(",")
        }
    };
    let line = format!(
        "{}\tmanifest {}\tsequence {}\taccepted {accepted}\t{}\tkept by {}\tserved by {}",
        version.digest,
        version.manifest.as_deref().unwrap_or("-"),
        version.sequence,
        version.key.as_deref().unwrap_or("unsigned"),
        hosts(&version.kept_by),
        hosts(&version.served_by),
    );
    // What hosts report is shown, not obeyed: no control characters that
    // could rewrite a terminal's line.
    line.chars()
        .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(digest: &str, sequence: u64, kept: &[&str], served: &[&str]) -> FleetVersion {
        FleetVersion {
            digest: digest.into(),
            manifest: None,
            sequence,
            key: None,
            signature: None,
            accepted_ms: sequence,
            kept_by: kept.iter().map(|h| h.to_string()).collect(),
            served_by: served.iter().map(|h| h.to_string()).collect(),
        }
    }

    #[test]
    fn rollback_goes_to_the_newest_version_older_than_the_one_served() {
        let versions = [
            version("sha256:333333333333aa", 30, &["a", "b"], &["a", "b"]),
            version("sha256:222222222222aa", 20, &["a", "b"], &[]),
            version("sha256:111111111111aa", 10, &["a"], &[]),
        ];
        assert_eq!(choose(&versions, None).unwrap().sequence, 20);
        assert_eq!(
            choose(&versions, Some("111111111111")).unwrap().sequence,
            10
        );
        let served = choose(&versions, Some("333333333333")).unwrap_err();
        assert!(served.contains("serves that version already"), "{served}");
        let short = choose(&versions, Some("1111")).unwrap_err();
        assert!(short.contains("is not a digest"), "{short}");
        assert!(choose(&versions, Some("444444444444")).is_err());
        // Served by nobody: nothing to go back from.
        let unserved = [version("sha256:111111111111aa", 10, &["a"], &[])];
        assert!(choose(&unserved, None).is_err());
        // A version only served (put there by hand) is not kept anywhere.
        let by_hand = [
            version("sha256:333333333333aa", 0, &[], &["a"]),
            version("sha256:222222222222aa", 20, &["a"], &[]),
        ];
        assert!(choose(&by_hand, Some("333333333333")).is_err());
    }
}
