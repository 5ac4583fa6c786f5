//! What a host counts about itself, for operators: requests by outcome and
//! how long they took, what is served, swaps and deploys, the broker link,
//! and the process's CPU and memory.
//!
//! Counting is always on (atomic adds and, per request, one read-locked map
//! lookup: nothing next to running a request); `--metrics-addr` only decides
//! whether [`crate::admin`] serves it. Metric names, labels and help texts
//! follow Prometheus conventions (`prometheus-client` writes the text
//! format), and are documented in docs/observability.md: keep the two in step.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use warren_protocol::ErrorKind;

/// Labels of `warren_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The procedure that answered, or the one asked for when none did.
    procedure: String,
    /// `ok` or `error`.
    status: &'static str,
    /// The error kind, empty on success.
    kind: &'static str,
}

/// Labels of `warren_caller_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallerLabels {
    /// The caller (broker user), one of the first [`MAX_CALLER_LABELS`]
    /// seen, or `other`.
    caller: String,
    /// `ok`, `error` (the procedure or the host failed it), `forbidden`
    /// or `rate-limited`.
    outcome: &'static str,
}

/// How many callers get a label of their own in the per-caller metrics;
/// the rest are counted as `other`, so a host called by many users keeps a
/// bounded number of series.
pub const MAX_CALLER_LABELS: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcedureLabels {
    procedure: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcedureInfoLabels {
    procedure: String,
    digest: String,
}

/// Labels of `warren_http_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpRefusedLabels {
    /// `not-allowed`, `userinfo`, `forbidden-address`, `too-many-calls` or
    /// `too-many-bytes` (`sandbox::http::refusal::Refusal`).
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeployLabels {
    /// `accepted` or `refused`.
    result: &'static str,
}

/// Duration buckets: 100 µs doubling up to the first bucket past the
/// request timeout, so a timed-out request lands in the last finite one.
#[derive(Clone)]
struct DurationBuckets(Arc<[f64]>);

impl DurationBuckets {
    fn up_to(timeout: Duration) -> Self {
        let mut buckets = vec![0.0001];
        while *buckets.last().expect("one bucket") < timeout.as_secs_f64() {
            buckets.push(buckets.last().expect("one bucket") * 2.0);
        }
        DurationBuckets(buckets.into())
    }
}

impl MetricConstructor<Histogram> for DurationBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

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

/// Requests answered since the host started, for `warren status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// With success.
    pub served: u64,
    /// With an error reply (the two below included).
    pub failed: u64,
    /// Refused: the caller may not call the procedure.
    pub forbidden: u64,
    /// Refused: the caller was over a quota.
    pub rate_limited: u64,
}

impl Metrics {
    /// Metrics for a host with `slots` concurrent requests and a request
    /// `timeout` (the duration histogram's top bucket).
    pub fn new(slots: usize, timeout: Duration) -> Self {
        let mut registry = Registry::default();
        let requests = Family::default();
        registry.register(
            "warren_requests",
            "Requests answered, by procedure, status (ok|error) and error kind",
            Family::clone(&requests),
        );
        let by_caller = Family::default();
        registry.register(
            "warren_caller_requests",
            "Requests answered, by caller (the broker user, (none) without user_id; past the first 64, other) and \
             outcome (ok|error|forbidden|rate-limited)",
            Family::clone(&by_caller),
        );
        let refusals_held = Gauge::default();
        registry.register(
            "warren_refusals_held",
            "Rate-limited replies held back until their caller's turn to try again \
             (--caller-hold); their requests are acked",
            refusals_held.clone(),
        );
        let callers_gone = Family::default();
        registry.register(
            "warren_requests_not_started",
            "Requests not run because their caller had stopped waiting (x-deadline) before a \
             slot was free, by procedure",
            Family::clone(&callers_gone),
        );
        let durations = Family::new_with_constructor(DurationBuckets::up_to(timeout));
        registry.register(
            "warren_request_duration_seconds",
            "Time from taking a request to its reply being ready, by procedure",
            Family::clone(&durations),
        );
        let in_flight = Gauge::default();
        registry.register(
            "warren_requests_in_flight",
            "Requests being run right now",
            in_flight.clone(),
        );
        let slots_gauge = Gauge::default();
        slots_gauge.set(slots as i64);
        registry.register(
            "warren_concurrency_slots",
            "Requests this host runs at once (--concurrency)",
            slots_gauge.clone(),
        );
        let procedures = Family::default();
        registry.register(
            "warren_procedure_info",
            "1 for each procedure served, with the digest of the version served",
            Family::clone(&procedures),
        );
        let swaps = Family::default();
        registry.register(
            "warren_swaps",
            "Times a procedure was replaced by a new version (folder or deploy)",
            Family::clone(&swaps),
        );
        let deploys = Family::default();
        registry.register(
            "warren_deploys",
            "Remote deploys answered, by result (accepted|refused), replays included",
            Family::clone(&deploys),
        );
        let deploy_messages_skipped = Counter::default();
        registry.register(
            "warren_deploy_messages_skipped",
            "Deploy-stream messages skipped because no deploying broker user published them \
             (--deploy-users)",
            deploy_messages_skipped.clone(),
        );
        let load_failures = Counter::default();
        registry.register(
            "warren_module_load_failures",
            "Module files that failed to load (each broken version counted once)",
            load_failures.clone(),
        );
        let connected = Gauge::default();
        registry.register(
            "warren_broker_connected",
            "1 while connected to the broker and consuming, 0 otherwise",
            connected.clone(),
        );
        let reconnects = Counter::default();
        registry.register(
            "warren_reconnects",
            "Connections to the broker made again after one was lost",
            reconnects.clone(),
        );
        let cpu_seconds = Counter::<f64, AtomicU64>::default();
        registry.register(
            "process_cpu_seconds",
            "User and system CPU time of the host process, in seconds",
            cpu_seconds.clone(),
        );
        let resident_bytes = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the host process, in bytes",
            resident_bytes.clone(),
        );
        let spares_used = Counter::default();
        registry.register(
            "warren_spare_instances_used",
            "Requests that ran in an instance started ahead of them (--spare-instances)",
            spares_used.clone(),
        );
        let http_refused = Family::default();
        registry.register(
            "warren_http_refused",
            "Outbound HTTP calls of procedures refused, by reason (not-allowed|userinfo|\
             forbidden-address|too-many-calls|too-many-bytes); only a request's first refusal \
             is logged",
            Family::clone(&http_refused),
        );
        Metrics {
            registry,
            started: Instant::now(),
            requests,
            by_caller,
            caller_labels: std::sync::RwLock::default(),
            refusals_held,
            callers_gone,
            durations,
            in_flight,
            slots: slots_gauge,
            procedures,
            swaps,
            deploys,
            load_failures,
            deploy_messages_skipped,
            connected,
            reconnects,
            cpu_seconds,
            resident_bytes,
            spares_used,
            http_refused,
            consuming: AtomicBool::new(false),
            node: std::sync::Mutex::new(None),
            served: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            forbidden: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
        }
    }

    /// A request starts running; the guard records how it ended.
    pub fn request_started(self: &Arc<Self>) -> RequestTimer {
        self.in_flight.inc();
        RequestTimer {
            metrics: self.clone(),
            started: Instant::now(),
        }
    }

    /// The count of refusals held, for [`crate::callers::ReplyHolder`] to keep.
    pub fn refusals_held(&self) -> Gauge {
        self.refusals_held.clone()
    }

    /// A request was not run: its caller had stopped waiting.
    pub fn caller_gone(&self, procedure: Option<&str>) {
        self.callers_gone
            .get_or_create(&ProcedureLabels {
                procedure: procedure.unwrap_or_default().to_owned(),
            })
            .inc();
    }

    /// A procedure was replaced by a new version.
    pub fn swapped(&self, procedure: &str) {
        self.swaps
            .get_or_create(&ProcedureLabels {
                procedure: procedure.to_owned(),
            })
            .inc();
    }

    /// A deploy was answered.
    pub fn deploy_answered(&self, accepted: bool) {
        let result = if accepted { "accepted" } else { "refused" };
        self.deploys.get_or_create(&DeployLabels { result }).inc();
    }

    /// A deploy-stream message was skipped: no deploying user published it.
    pub fn deploy_message_skipped(&self) {
        self.deploy_messages_skipped.inc();
    }

    /// A module file failed to load.
    pub fn load_failed(&self) {
        self.load_failures.inc();
    }

    /// The host started consuming through `node`.
    pub fn connected(&self, node: &str) {
        *self.node.lock().expect("node lock") = Some(node.to_owned());
        self.consuming.store(true, Ordering::Relaxed);
        self.connected.set(1);
    }

    /// The connection was lost (or closed).
    pub fn disconnected(&self) {
        self.consuming.store(false, Ordering::Relaxed);
        self.connected.set(0);
    }

    /// A lost connection was made again.
    pub fn reconnected(&self) {
        self.reconnects.inc();
    }

    /// Whether the host is connected and consuming requests.
    pub fn is_consuming(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
    }

    /// The broker node of the current connection, if connected.
    pub fn node(&self) -> Option<String> {
        self.is_consuming()
            .then(|| self.node.lock().expect("node lock").clone())
            .flatten()
    }

    /// Time since these metrics were made (the host's uptime).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Requests answered since the host started, by outcome.
    pub fn totals(&self) -> Totals {
        Totals {
            served: self.served.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            forbidden: self.forbidden.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
        }
    }

    /// `caller` as a label: itself while fewer than [`MAX_CALLER_LABELS`]
    /// callers have one, else `other`.
    fn caller_label(&self, caller: &str) -> String {
        let known = self.caller_labels.read().expect("caller labels lock");
        if known.contains(caller) {
            return caller.to_owned();
        }
        let full = known.len() >= MAX_CALLER_LABELS;
        drop(known);
        if full {
            return "other".to_owned();
        }
        let mut known = self.caller_labels.write().expect("caller labels lock");
        if known.len() >= MAX_CALLER_LABELS {
            return "other".to_owned();
        }
        known.insert(caller.to_owned());
        caller.to_owned()
    }

    /// Requests running now, and the slots for them.
    pub fn load(&self) -> (i64, i64) {
        (self.in_flight.get(), self.slots.get())
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

/// Records one request's outcome and duration when it finishes; a request
/// whose task ends without an outcome (a panic) only leaves the in-flight
/// count.
pub struct RequestTimer {
    metrics: Arc<Metrics>,
    started: Instant,
}

impl RequestTimer {
    /// The request of `caller` was answered by (or asked for)
    /// `procedure`, with `error` (its kind) or success.
    pub fn finish(self, procedure: Option<&str>, caller: &str, error: Option<ErrorKind>) {
        let procedure = procedure.unwrap_or_default().to_owned();
        let metrics = &self.metrics;
        let (status, kind) = match error {
            None => {
                metrics.served.fetch_add(1, Ordering::Relaxed);
                ("ok", "")
            }
            Some(kind) => {
                metrics.failed.fetch_add(1, Ordering::Relaxed);
                ("error", kind.as_str())
            }
        };
        let outcome = match error {
            None => "ok",
            Some(ErrorKind::Forbidden) => {
                metrics.forbidden.fetch_add(1, Ordering::Relaxed);
                "forbidden"
            }
            Some(ErrorKind::RateLimited) => {
                metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                "rate-limited"
            }
            Some(_) => "error",
        };
        metrics
            .by_caller
            .get_or_create(&CallerLabels {
                caller: metrics.caller_label(caller),
                outcome,
            })
            .inc();
        metrics
            .durations
            .get_or_create(&ProcedureLabels {
                procedure: procedure.clone(),
            })
            .observe(self.started.elapsed().as_secs_f64());
        metrics
            .requests
            .get_or_create(&RequestLabels {
                procedure,
                status,
                kind,
            })
            .inc();
    }
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}

/// CPU time and resident memory of this process, from `/proc` (Linux).
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: u64,
}

impl ProcessStats {
    fn read() -> Option<Self> {
        // /proc/self/stat: fields 14 and 15 (utime, stime) in clock ticks,
        // counted after the command name, which is in parentheses and may
        // hold spaces. Linux reports them in USER_HZ, 100 on every platform
        // Warren runs on.
        const TICKS_PER_SECOND: f64 = 100.0;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let after_name = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let rss_kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(ProcessStats {
            cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
            resident_bytes: rss_kib * 1024,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_run_from_100_microseconds_past_the_timeout() {
        let DurationBuckets(buckets) = DurationBuckets::up_to(Duration::from_secs(10));
        assert_eq!(buckets[0], 0.0001);
        assert!(*buckets.last().unwrap() >= 10.0);
        assert!(buckets[buckets.len() - 2] < 10.0);
    }

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

    #[test]
    fn callers_past_the_first_64_are_counted_as_other() {
        let metrics = Arc::new(Metrics::new(4, Duration::from_secs(10)));
        for n in 0..MAX_CALLER_LABELS + 10 {
            metrics
                .request_started()
                .finish(Some("fib"), &format!("user-{n}"), None);
        }
        let text = metrics.encode([], 0, &crate::sandbox::http_refusals());
        assert!(
            text.contains(r#"{caller="user-0",outcome="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"{caller="other",outcome="ok"} 10"#),
            "{text}"
        );
        assert_eq!(
            text.matches("warren_caller_requests_total{").count(),
            MAX_CALLER_LABELS + 1
        );
    }
}
