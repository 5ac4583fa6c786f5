//! What a host counts about itself, for operators: requests by outcome and
//! how long they took, what is served, swaps and deploys, the broker link,
//! and the process's CPU and memory.
//!
//! Counting is always on (atomic adds and, per request, one read-locked map
//! lookup: nothing next to running a request); `--metrics-addr` only decides
//! whether [`crate::admin`] serves it. Metric names, labels and help texts
//! follow Prometheus conventions (`prometheus-client` writes the text
//! format), and are documented in docs/observability.md: keep the two in step.
//!
//! Here: [`Metrics`], every metric registered in one table
//! ([`Metrics::new`]), and the text exposition. Beside it, by idea:
//! `requests` (request outcomes and durations, their
//! [`RequestTimer`](requests::RequestTimer), [`Totals`](requests::Totals)),
//! `deploys` (swaps, deploys, load failures), `broker` (the link),
//! `process` (CPU and memory from `/proc`), `labels` (the label sets) and
//! `buckets` (the duration histogram's).

mod broker;
mod buckets;
mod deploys;
mod labels;
mod process;
mod requests;

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

use buckets::DurationBuckets;
use labels::{
    CallerLabels, DeployLabels, HttpRefusedLabels, ProcedureInfoLabels, ProcedureLabels,
    RequestLabels,
};
use process::ProcessStats;

/// A host's metrics and the registry that writes them out.
pub struct Metrics {
    registry: Registry,
    started: Instant,
    requests: Family<RequestLabels, Counter>,
    by_caller: Family<CallerLabels, Counter>,
    /// The callers with a label of their own.
    caller_labels: std::sync::RwLock<std::collections::HashSet<String>>,
    /// Refusals held until their caller's turn ([`crate::callers::ReplyHolder`]).
    refusals_held: Gauge,
    callers_gone: Family<ProcedureLabels, Counter>,
    durations: Family<ProcedureLabels, Histogram, DurationBuckets>,
    in_flight: Gauge,
    slots: Gauge,
    procedures: Family<ProcedureInfoLabels, Gauge>,
    swaps: Family<ProcedureLabels, Counter>,
    deploys: Family<DeployLabels, Counter>,
    load_failures: Counter,
    deploy_messages_skipped: Counter,
    connected: Gauge,
    reconnects: Counter,
    cpu_seconds: Counter<f64, AtomicU64>,
    resident_bytes: Gauge,
    spares_used: Counter,
    /// Outbound HTTP calls refused, by reason: the sandbox counts them (a
    /// looping procedure is refused a hundred thousand times a second),
    /// read into this at each [`Metrics::encode`].
    http_refused: Family<HttpRefusedLabels, Counter>,
    /// Consuming requests right now (for /healthz).
    consuming: AtomicBool,
    /// The broker node of the current connection, password hidden.
    node: std::sync::Mutex<Option<String>>,
    served: AtomicU64,
    failed: AtomicU64,
    forbidden: AtomicU64,
    rate_limited: AtomicU64,
}

/// Registers `metric` in `registry` as `name`, described by `help`, and
/// hands it back to be kept: one row of the table in [`Metrics::new`].
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    /// Metrics for a host with `slots` concurrent requests and a request
    /// `timeout` (the duration histogram's top bucket).
    pub fn new(slots: usize, timeout: Duration) -> Self {
        let mut registry = Registry::default();
        let slots_gauge = Gauge::default();
        slots_gauge.set(slots as i64);
        let r = &mut registry;
        // Fields are evaluated in the order written, and the text format
        // lists metrics in the order registered: this is that order.
        Metrics {
            requests: registered(
                r,
                "warren_requests",
                "Requests answered, by procedure, status (ok|error) and error kind",
                Family::default(),
            ),
            by_caller: registered(
                r,
                "warren_caller_requests",
                "Requests answered, by caller (the broker user, (none) without user_id; past the first 64, other) and \
                 outcome (ok|error|forbidden|rate-limited)",
                Family::default(),
            ),
            refusals_held: registered(
                r,
                "warren_refusals_held",
                "Rate-limited replies held back until their caller's turn to try again \
                 (--caller-hold); their requests are acked",
                Gauge::default(),
            ),
            callers_gone: registered(
                r,
                "warren_requests_not_started",
                "Requests not run because their caller had stopped waiting (x-deadline) before a \
                 slot was free, by procedure",
                Family::default(),
            ),
            durations: registered(
                r,
                "warren_request_duration_seconds",
                "Time from taking a request to its reply being ready, by procedure",
                Family::new_with_constructor(DurationBuckets::up_to(timeout)),
            ),
            in_flight: registered(
                r,
                "warren_requests_in_flight",
                "Requests being run right now",
                Gauge::default(),
            ),
            slots: registered(
                r,
                "warren_concurrency_slots",
                "Requests this host runs at once (--concurrency)",
                slots_gauge,
            ),
            procedures: registered(
                r,
                "warren_procedure_info",
                "1 for each procedure served, with the digest of the version served",
                Family::default(),
            ),
            swaps: registered(
                r,
                "warren_swaps",
                "Times a procedure was replaced by a new version (folder or deploy)",
                Family::default(),
            ),
            deploys: registered(
                r,
                "warren_deploys",
                "Remote deploys answered, by result (accepted|refused), replays included",
                Family::default(),
            ),
            deploy_messages_skipped: registered(
                r,
                "warren_deploy_messages_skipped",
                "Deploy-stream messages skipped because no deploying broker user published them \
                 (--deploy-users)",
                Counter::default(),
            ),
            load_failures: registered(
                r,
                "warren_module_load_failures",
                "Module files that failed to load (each broken version counted once)",
                Counter::default(),
            ),
            connected: registered(
                r,
                "warren_broker_connected",
                "1 while connected to the broker and consuming, 0 otherwise",
                Gauge::default(),
            ),
            reconnects: registered(
                r,
                "warren_reconnects",
                "Connections to the broker made again after one was lost",
                Counter::default(),
            ),
            cpu_seconds: registered(
                r,
                "process_cpu_seconds",
                "User and system CPU time of the host process, in seconds",
                Counter::default(),
            ),
            resident_bytes: registered(
                r,
                "process_resident_memory_bytes",
                "Resident memory of the host process, in bytes",
                Gauge::default(),
            ),
            spares_used: registered(
                r,
                "warren_spare_instances_used",
                "Requests that ran in an instance started ahead of them (--spare-instances)",
                Counter::default(),
            ),
            http_refused: registered(
                r,
                "warren_http_refused",
                "Outbound HTTP calls of procedures refused, by reason (not-allowed|userinfo|\
                 forbidden-address|too-many-calls|too-many-bytes); only a request's first refusal \
                 is logged",
                Family::default(),
            ),
            registry,
            started: Instant::now(),
            caller_labels: std::sync::RwLock::default(),
            consuming: AtomicBool::new(false),
            node: std::sync::Mutex::new(None),
            served: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            forbidden: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
        }
    }

    /// Time since these metrics were made (the host's uptime).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The Prometheus text exposition, with `served` (the name and digest
    /// of every procedure served now), `spares_used` and `http_refused`
    /// (the sandbox's counts, by reason) and the process's CPU and memory
    /// read at this moment.
    pub fn encode(
        &self,
        served: impl IntoIterator<Item = (String, String)>,
        spares_used: u64,
        http_refused: &[(&'static str, u64)],
    ) -> String {
        self.procedures.clear();
        for (procedure, digest) in served {
            self.procedures
                .get_or_create(&ProcedureInfoLabels { procedure, digest })
                .set(1);
        }
        if let Some(process) = ProcessStats::read() {
            let seen = self.cpu_seconds.get();
            if process.cpu_seconds > seen {
                self.cpu_seconds.inc_by(process.cpu_seconds - seen);
            }
            self.resident_bytes.set(process.resident_bytes as i64);
        }
        let seen = self.spares_used.get();
        if spares_used > seen {
            self.spares_used.inc_by(spares_used - seen);
        }
        // Counted by the sandbox for the whole process (one host per
        // process outside tests); every reason from the start, at 0.
        for &(reason, refused) in http_refused {
            let counter = self
                .http_refused
                .get_or_create(&HttpRefusedLabels { reason });
            let seen = counter.get();
            if refused > seen {
                counter.inc_by(refused - seen);
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use warren_protocol::ErrorKind;

    use super::requests::Totals;
    use super::*;

    #[test]
    fn the_text_format_has_every_metric_the_readme_lists() {
        let metrics = Arc::new(Metrics::new(4, Duration::from_secs(10)));
        metrics.request_started().finish(Some("fib"), "alice", None);
        metrics
            .request_started()
            .finish(Some("fib"), "alice", Some(ErrorKind::Timeout));
        metrics
            .request_started()
            .finish(Some("fib"), "bob", Some(ErrorKind::Forbidden));
        metrics.swapped("fib");
        metrics.deploy_answered(true);
        metrics.load_failed();
        metrics.connected("amqp://guest:***@127.0.0.1:5672/%2f");
        let served = [("fib".to_owned(), "sha256:ab".to_owned())];
        let text = metrics.encode(served, 7, &crate::sandbox::http_refusals());
        for line in [
            r#"warren_requests_total{procedure="fib",status="ok",kind=""} 1"#,
            r#"warren_requests_total{procedure="fib",status="error",kind="timeout"} 1"#,
            r#"warren_request_duration_seconds_count{procedure="fib"} 3"#,
            r#"warren_caller_requests_total{caller="alice",outcome="ok"} 1"#,
            r#"warren_caller_requests_total{caller="alice",outcome="error"} 1"#,
            r#"warren_caller_requests_total{caller="bob",outcome="forbidden"} 1"#,
            r#"warren_request_duration_seconds_bucket{le="0.0001",procedure="fib"}"#,
            "warren_requests_in_flight 0",
            "warren_concurrency_slots 4",
            r#"warren_procedure_info{procedure="fib",digest="sha256:ab"} 1"#,
            r#"warren_swaps_total{procedure="fib"} 1"#,
            r#"warren_deploys_total{result="accepted"} 1"#,
            "warren_module_load_failures_total 1",
            "warren_broker_connected 1",
            "warren_reconnects_total 0",
            "warren_spare_instances_used_total 7",
            r#"warren_http_refused_total{reason="not-allowed"}"#,
            r#"warren_http_refused_total{reason="userinfo"}"#,
            r#"warren_http_refused_total{reason="forbidden-address"}"#,
            r#"warren_http_refused_total{reason="too-many-calls"}"#,
            r#"warren_http_refused_total{reason="too-many-bytes"}"#,
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        assert_eq!(
            metrics.totals(),
            Totals {
                served: 1,
                failed: 2,
                forbidden: 1,
                rate_limited: 0
            }
        );
    }
}
