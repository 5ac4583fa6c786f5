//! Fleet status: how a caller asks every host of a queue what it is doing.
//!
//! Each host binds an exclusive queue of its own to the fanout exchange
//! [`control_exchange`]`(queue)`. `warren status` publishes one message there
//! with header [`HEADER_CONTROL`] = [`CONTROL_STATUS`], a `reply_to` and a
//! `correlation_id`; every host answers with a JSON [`HostStatus`]. Answers
//! are plain data, and a host never runs anything because of a control
//! message: it ignores every other kind.

use serde::{Deserialize, Serialize};

/// Header naming what a control message asks for.
pub const HEADER_CONTROL: &str = "x-warren-control";
/// The one control request there is: "send your status".
pub const CONTROL_STATUS: &str = "status";

/// The fanout exchange that reaches every host of `queue`.
pub fn control_exchange(queue: &str) -> String {
    format!("{queue}{}", crate::values::CONTROL_SUFFIX)
}

/// Declares the control exchange of `queue` (every host alike: RabbitMQ
/// refuses a redeclaration that differs) and returns its name. Not durable,
/// and auto-deleted once the last host's queue is unbound from it: hosts
/// declare it whenever they connect, and a caller that finds none knows no
/// host is there.
pub async fn declare_control_exchange(
    channel: &lapin::Channel,
    queue: &str,
) -> lapin::Result<String> {
    let exchange = control_exchange(queue);
    channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Fanout,
            lapin::options::ExchangeDeclareOptions {
                auto_delete: true,
                ..lapin::options::ExchangeDeclareOptions::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await?;
    Ok(exchange)
}

/// One host's answer to a status request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    /// The host's id (`--host-id`, default `HOSTNAME-PID`).
    pub host: String,
    /// The warren-host version.
    pub version: String,
    /// Seconds since the host started.
    pub uptime_seconds: u64,
    /// The broker node it is connected to, password hidden.
    pub node: String,
    /// The request queue.
    pub queue: String,
    /// Whether it runs in durable mode.
    pub durable: bool,
    /// Requests it runs at once (`--concurrency`).
    pub concurrency: u64,
    /// Requests running now.
    pub in_flight: u64,
    /// Requests answered with success since it started.
    pub served: u64,
    /// Requests answered with an error reply since it started.
    pub failed: u64,
    /// Of those, requests refused because the procedure's manifest does
    /// not list their caller (`forbidden`; 0 from hosts older than callers).
    #[serde(default)]
    pub forbidden: u64,
    /// Of those, requests refused because their caller was over its quota
    /// (`rate-limited`; 0 from hosts older than quotas).
    #[serde(default)]
    pub rate_limited: u64,
    /// What it serves, by name.
    pub procedures: Vec<ProcedureStatus>,
    /// The versions it keeps, each procedure's newest first (none from
    /// hosts older than kept versions).
    #[serde(default)]
    pub versions: Vec<KeptVersion>,
}

/// A version of a procedure a host keeps: one it accepted by a signed
/// deploy, kept with its manifest and signed record so that `warren
/// rollback` can make it serve again without sending the module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptVersion {
    /// The procedure's name.
    pub name: String,
    /// `sha256:<hex>` of the module.
    pub digest: String,
    /// `sha256:<hex>` of its manifest's text, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// The sequence of the newest deploy of it this host accepted.
    pub sequence: u64,
    /// The key that signed that deploy, `ed25519:<hex>` (absent for an
    /// unsigned one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// That deploy's signature (hex), over the name, digest, sequence and
    /// manifest digest: status answers are not signed, so a deployer checks
    /// it before it signs a rollback to this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// When this host last accepted it (a rollback to it is an
    /// acceptance), milliseconds since the Unix epoch.
    pub accepted_ms: u64,
    /// Whether this host serves it now.
    pub serving: bool,
}

impl KeptVersion {
    /// Whether `text` names this version's module: its digest in full
    /// (`sha256:<hex>`), or at least [`MIN_DIGEST_PREFIX`] of its leading
    /// hex digits, with or without `sha256:`.
    pub fn matches(&self, text: &str) -> bool {
        digest_matches(&self.digest, text)
    }
}

/// The fewest hex digits of a digest that name a version: 12 (48 bits), so
/// a prefix someone types is unambiguous among any number of versions kept.
pub const MIN_DIGEST_PREFIX: usize = 12;

/// Whether `text` names `digest` (`sha256:<hex>`): in full, or by at least
/// [`MIN_DIGEST_PREFIX`] leading hex digits, with or without `sha256:`.
pub fn digest_matches(digest: &str, text: &str) -> bool {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let wanted = text.strip_prefix("sha256:").unwrap_or(text);
    wanted.len() >= MIN_DIGEST_PREFIX
        && wanted.chars().all(|c| c.is_ascii_hexdigit())
        && hex.starts_with(&wanted.to_ascii_lowercase())
}

/// One version of a procedure across a fleet: what `warren versions` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetVersion {
    /// `sha256:<hex>` of the module.
    pub digest: String,
    /// `sha256:<hex>` of its manifest, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// The newest sequence any host accepted it with.
    pub sequence: u64,
    /// The key that signed that deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// That deploy's signature, as a host reported it (unchecked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// When a host accepted it, the earliest of the hosts' latest
    /// acceptances (a rollback to it is one), ms since the Unix epoch.
    pub accepted_ms: u64,
    /// Hosts that keep it.
    pub kept_by: Vec<String>,
    /// Hosts that serve it.
    pub served_by: Vec<String>,
}

/// The versions of `name` that `hosts` keep or serve, newest sequence
/// first. A version served but not kept (a module put into a host's folder
/// by hand) is listed with sequence 0 and no hosts keeping it.
pub fn fleet_versions(hosts: &[HostStatus], name: &str) -> Vec<FleetVersion> {
    let mut versions: Vec<FleetVersion> = Vec::new();
    let find =
        |versions: &mut Vec<FleetVersion>, digest: &str, manifest: Option<&str>| match versions
            .iter()
            .position(|v| v.digest == digest && v.manifest.as_deref() == manifest)
        {
            Some(at) => at,
            None => {
                versions.push(FleetVersion {
                    digest: digest.to_owned(),
                    manifest: manifest.map(str::to_owned),
                    sequence: 0,
                    key: None,
                    signature: None,
                    accepted_ms: u64::MAX,
                    kept_by: Vec::new(),
                    served_by: Vec::new(),
                });
                versions.len() - 1
            }
        };
    for host in hosts {
        for kept in host.versions.iter().filter(|kept| kept.name == name) {
            let at = find(&mut versions, &kept.digest, kept.manifest.as_deref());
            let version = &mut versions[at];
            if kept.sequence >= version.sequence {
                version.sequence = kept.sequence;
                version.key = kept.key.clone();
                version.signature = kept.signature.clone();
            }
            version.accepted_ms = version.accepted_ms.min(kept.accepted_ms);
            version.kept_by.push(host.host.clone());
        }
        for served in host.procedures.iter().filter(|p| p.name == name) {
            let manifest = served.grants.as_ref().and_then(|g| g.manifest.as_deref());
            let at = find(&mut versions, &served.digest, manifest);
            versions[at].served_by.push(host.host.clone());
        }
    }
    for version in &mut versions {
        if version.accepted_ms == u64::MAX {
            version.accepted_ms = 0;
        }
    }
    versions.sort_by_key(|v| std::cmp::Reverse(v.sequence));
    versions
}

/// One procedure a host serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcedureStatus {
    /// The procedure's name.
    pub name: String,
    /// `sha256:<hex>` of the version served.
    pub digest: String,
    /// What its manifest grants it on this host, the host's limits applied
    /// (absent from hosts older than manifests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<crate::manifest::EffectiveGrants>,
}

impl ProcedureStatus {
    /// `name=digest`.
    pub fn summary(&self) -> String {
        format!("{}={}", self.name, self.digest)
    }
}

/// A procedure that hosts serve in more than one version: what a rollout
/// that is still going on (or a host that missed a deploy) looks like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    /// The procedure's name.
    pub procedure: String,
    /// Each version served, with the hosts serving it.
    pub versions: Vec<Version>,
}

/// One version of a procedure and the hosts that serve it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// `sha256:<hex>` of the module.
    pub digest: String,
    /// `sha256:<hex>` of its manifest's text, when it has one: the same
    /// module with another manifest (or none) is another version, granted
    /// other things.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// Host ids.
    pub hosts: Vec<String>,
}

/// The procedures `hosts` serve in more than one version (module and
/// manifest), by name.
pub fn mismatches(hosts: &[HostStatus]) -> Vec<Mismatch> {
    use std::collections::BTreeMap;
    type Versions<'a> = BTreeMap<(&'a str, Option<&'a str>), Vec<String>>;
    let mut by_name: BTreeMap<&str, Versions<'_>> = BTreeMap::new();
    for host in hosts {
        for procedure in &host.procedures {
            let manifest = procedure
                .grants
                .as_ref()
                .and_then(|grants| grants.manifest.as_deref());
            by_name
                .entry(&procedure.name)
                .or_default()
                .entry((&procedure.digest, manifest))
                .or_default()
                .push(host.host.clone());
        }
    }
    by_name
        .into_iter()
        .filter(|(_, digests)| digests.len() > 1)
        .map(|(name, digests)| Mismatch {
            procedure: name.to_owned(),
            versions: digests
                .into_iter()
                .map(|((digest, manifest), hosts)| Version {
                    digest: digest.to_owned(),
                    manifest: manifest.map(str::to_owned),
                    hosts,
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, fib: &str) -> HostStatus {
        HostStatus {
            host: id.into(),
            version: "0".into(),
            uptime_seconds: 1,
            node: "amqp://x".into(),
            queue: "q".into(),
            durable: false,
            concurrency: 2,
            in_flight: 0,
            served: 0,
            failed: 0,
            forbidden: 0,
            rate_limited: 0,
            procedures: vec![
                ProcedureStatus {
                    name: "fib".into(),
                    digest: fib.into(),
                    grants: None,
                },
                ProcedureStatus {
                    name: "echo".into(),
                    digest: "sha256:ec".into(),
                    grants: None,
                },
            ],
            versions: Vec::new(),
        }
    }

    fn kept(digest: &str, sequence: u64, serving: bool) -> KeptVersion {
        KeptVersion {
            name: "fib".into(),
            digest: digest.into(),
            manifest: None,
            sequence,
            key: None,
            signature: None,
            accepted_ms: sequence,
            serving,
        }
    }

    #[test]
    fn a_fleets_versions_say_who_keeps_and_who_serves_each_newest_first() {
        let mut a = host("a", "sha256:2");
        a.versions = vec![kept("sha256:2", 20, true), kept("sha256:1", 10, false)];
        let mut b = host("b", "sha256:2");
        b.versions = vec![kept("sha256:2", 20, true)];
        let c = host("c", "sha256:0");
        let versions = fleet_versions(&[a, b, c], "fib");
        let digests: Vec<&str> = versions.iter().map(|v| v.digest.as_str()).collect();
        assert_eq!(digests, ["sha256:2", "sha256:1", "sha256:0"]);
        assert_eq!(versions[0].kept_by, ["a", "b"]);
        assert_eq!(versions[0].served_by, ["a", "b"]);
        assert_eq!(versions[1].kept_by, ["a"]);
        assert!(versions[1].served_by.is_empty());
        // Served from a file put there by hand: kept nowhere.
        assert_eq!((versions[2].sequence, versions[2].kept_by.len()), (0, 0));
        assert_eq!(versions[2].served_by, ["c"]);
    }

    #[test]
    fn a_digest_is_named_in_full_or_by_twelve_hex_digits_or_more() {
        let digest = "sha256:0123456789abcdef0123";
        for named in [
            digest,
            "0123456789ab",
            "sha256:0123456789AB",
            "0123456789abcdef0123",
        ] {
            assert!(digest_matches(digest, named), "{named}");
        }
        for other in [
            "0123456789a",
            "sha256:0123",
            "",
            "0123456789ax",
            "123456789abc",
        ] {
            assert!(!digest_matches(digest, other), "{other}");
        }
    }

    #[test]
    fn a_procedure_is_its_name_and_digest() {
        let fib = host("a", "sha256:1").procedures.remove(0);
        assert_eq!(fib.summary(), "fib=sha256:1");
        // What an older host sends (how its code was compiled) still reads.
        let old: ProcedureStatus = serde_json::from_str(
            r#"{"name":"fib","digest":"sha256:1","code":"quick","inlining_pending":true}"#,
        )
        .unwrap();
        assert_eq!(old.summary(), "fib=sha256:1");
    }

    #[test]
    fn only_procedures_served_in_several_versions_are_mismatches() {
        assert!(mismatches(&[host("a", "sha256:1"), host("b", "sha256:1")]).is_empty());
        let found = mismatches(&[
            host("a", "sha256:1"),
            host("b", "sha256:2"),
            host("c", "sha256:1"),
        ]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].procedure, "fib");
        assert_eq!(
            found[0].versions,
            vec![
                Version {
                    digest: "sha256:1".into(),
                    manifest: None,
                    hosts: vec!["a".into(), "c".into()]
                },
                Version {
                    digest: "sha256:2".into(),
                    manifest: None,
                    hosts: vec!["b".into()]
                },
            ]
        );
    }
}
