//! Load from one client: keep C calls in flight over one callback queue and
//! measure what comes back. Behind `warren bench`, usable against any
//! tutorial-style server (a Warren host, the seed's `rpc_server.py`).
//!
//! Latencies go into an HDR histogram (three significant digits, one per
//! caller, merged at the end), so percentiles are exact to 0.1 % however
//! many calls are made, in constant memory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{Call, CallError, RpcClient};

/// When a run ends.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    /// After this many calls in all.
    Requests(u64),
    /// After this long (calls in flight then are waited for).
    Duration(Duration),
}

/// What to send, how much at once, and for how long.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The request body of every call.
    pub body: Vec<u8>,
    /// The `x-procedure` header, if any.
    pub procedure: Option<String>,
    /// Calls in flight at once.
    pub concurrency: usize,
    /// When to stop.
    pub budget: Budget,
    /// Each reply's expected body; others count as wrong.
    pub expect: Option<Vec<u8>>,
    /// How long one call may wait for its reply before it counts as missing.
    pub timeout: Duration,
    /// Wait out `rate-limited` answers and call again
    /// ([`Call::retry_when_rate_limited`]).
    pub retry: bool,
}

/// Latency percentiles of successful and error replies, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Slowest.
    pub max_us: u64,
    /// Mean.
    pub mean_us: f64,
}

/// What a run measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BenchReport {
    /// Calls made.
    pub requests: u64,
    /// Successful replies (with `expect`: the expected body).
    pub ok: u64,
    /// Error replies, by kind.
    pub errors: BTreeMap<String, u64>,
    /// Calls with no reply within the timeout.
    pub missing: u64,
    /// Successful replies whose body was not the expected one.
    pub wrong: u64,
    /// Wall-clock time of the run, in seconds.
    pub seconds: f64,
    /// Replies per second (every reply, ok or not).
    pub requests_per_second: f64,
    /// Latency of every call that got a reply.
    pub latency: Latency,
    /// Which module versions answered (`x-procedure-digest`), and how often;
    /// `none` for replies without the header (non-Warren servers).
    pub digests: BTreeMap<String, u64>,
    /// Calls in flight at once.
    pub concurrency: usize,
}

impl BenchReport {
    /// Whether every call got the right, successful reply.
    pub fn clean(&self) -> bool {
        self.errors.is_empty() && self.missing == 0 && self.wrong == 0
    }
}

/// One caller's tally, merged into the report at the end.
struct Tally {
    latencies: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    missing: u64,
    wrong: u64,
    digests: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            // 1 µs to 1 hour at 3 significant digits: a few tens of KiB.
            latencies: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            ok: 0,
            errors: BTreeMap::new(),
            missing: 0,
            wrong: 0,
            digests: BTreeMap::new(),
        }
    }
}

/// Runs the load and reports. `done` counts finished calls as they finish
/// (for a progress display). Stops early, with the error, when the broker
/// fails or the queue does not exist: then no call could succeed.
pub async fn run(
    client: Arc<RpcClient>,
    options: BenchOptions,
    done: Arc<AtomicU64>,
) -> Result<BenchReport, CallError> {
    let options = Arc::new(options);
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = match options.budget {
        Budget::Duration(duration) => Some(started + duration),
        Budget::Requests(_) => None,
    };
    // No more callers than calls: a 100-call run has at most 100 in flight.
    let concurrency = match options.budget {
        Budget::Requests(total) => options
            .concurrency
            .min(usize::try_from(total).unwrap_or(usize::MAX)),
        Budget::Duration(_) => options.concurrency,
    }
    .max(1);
    let callers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, options) = (client.clone(), options.clone());
            let (issued, done) = (issued.clone(), done.clone());
            tokio::spawn(async move {
                let mut tally = Tally::new();
                loop {
                    let more = match options.budget {
                        Budget::Requests(total) => issued.fetch_add(1, Ordering::Relaxed) < total,
                        Budget::Duration(_) => deadline.is_some_and(|d| Instant::now() < d),
                    };
                    if !more {
                        return Ok(tally);
                    }
                    let mut call = Call::new(options.body.clone())
                        .timeout(options.timeout)
                        .retry_when_rate_limited(options.retry);
                    if let Some(name) = &options.procedure {
                        call = call.procedure(name.clone());
                    }
                    let sent = Instant::now();
                    let outcome = client.call(call).await;
                    let took = sent.elapsed().as_micros().max(1) as u64;
                    record(&mut tally, outcome, took, options.expect.as_deref())?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let mut total = Tally::new();
    let mut fatal = None;
    for caller in callers {
        match caller.await {
            Ok(Ok(tally)) => merge(&mut total, tally),
            Ok(Err(error)) => fatal = fatal.or(Some(error)),
            Err(panic) => std::panic::resume_unwind(panic.into_panic()),
        }
    }
    if let Some(error) = fatal {
        return Err(error);
    }
    let seconds = started.elapsed().as_secs_f64();
    let errors: u64 = total.errors.values().sum();
    let replies = total.ok + total.wrong + errors;
    let histogram = &total.latencies;
    Ok(BenchReport {
        requests: replies + total.missing,
        ok: total.ok,
        errors: total.errors,
        missing: total.missing,
        wrong: total.wrong,
        seconds,
        requests_per_second: replies as f64 / seconds.max(f64::EPSILON),
        latency: if histogram.is_empty() {
            Latency::default()
        } else {
            Latency {
                p50_us: histogram.value_at_quantile(0.50),
                p90_us: histogram.value_at_quantile(0.90),
                p99_us: histogram.value_at_quantile(0.99),
                max_us: histogram.max(),
                mean_us: histogram.mean(),
            }
        },
        digests: total.digests,
        concurrency,
    })
}

/// Counts one call's outcome; `Err` for outcomes that end the run.
fn record(
    tally: &mut Tally,
    outcome: Result<crate::Reply, CallError>,
    micros: u64,
    expect: Option<&[u8]>,
) -> Result<(), CallError> {
    let digest = match &outcome {
        Ok(reply) => reply.digest.clone(),
        Err(CallError::Rpc { digest, .. }) => digest.clone(),
        _ => None,
    };
    match outcome {
        Ok(reply) if expect.is_some_and(|want| want != reply.body.as_slice()) => tally.wrong += 1,
        Ok(_) => tally.ok += 1,
        Err(CallError::Rpc { error, .. }) => {
            *tally.errors.entry(error.kind.to_string()).or_default() += 1;
        }
        Err(CallError::Timeout { .. }) => {
            tally.missing += 1;
            return Ok(());
        }
        Err(fatal) => return Err(fatal),
    }
    tally.latencies.saturating_record(micros);
    *tally
        .digests
        .entry(digest.unwrap_or_else(|| "none".to_owned()))
        .or_default() += 1;
    Ok(())
}

fn merge(total: &mut Tally, tally: Tally) {
    total
        .latencies
        .add(&tally.latencies)
        .expect("histograms with the same bounds");
    total.ok += tally.ok;
    total.missing += tally.missing;
    total.wrong += tally.wrong;
    for (kind, count) in tally.errors {
        *total.errors.entry(kind).or_default() += count;
    }
    for (digest, count) in tally.digests {
        *total.digests.entry(digest).or_default() += count;
    }
}

/// The report as people read it, a line per figure.
pub fn render(report: &BenchReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let latency = &report.latency;
    let ms = |us: u64| format!("{:.3} ms", us as f64 / 1000.0);
    let _ = writeln!(
        out,
        "{} requests in {:.2} s with {} in flight: {:.0} requests/s",
        report.requests, report.seconds, report.concurrency, report.requests_per_second
    );
    let _ = writeln!(
        out,
        "latency   p50 {}   p90 {}   p99 {}   max {}",
        ms(latency.p50_us),
        ms(latency.p90_us),
        ms(latency.p99_us),
        ms(latency.max_us)
    );
    let errors: u64 = report.errors.values().sum();
    let _ = writeln!(
        out,
        "ok {}   errors {}   missing (no reply in time) {}   wrong {}",
        report.ok, errors, report.missing, report.wrong
    );
    for (kind, count) in &report.errors {
        let _ = writeln!(out, "  error {kind}: {count}");
    }
    for (digest, count) in &report.digests {
        let _ = writeln!(out, "answered by {digest}: {count}");
    }
    out
}
