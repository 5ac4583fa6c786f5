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
