//! The request duration histogram's buckets.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::family::MetricConstructor;
use prometheus_client::metrics::histogram::Histogram;

/// Duration buckets: 100 µs doubling up to the first bucket past the
/// request timeout, so a timed-out request lands in the last finite one.
#[derive(Clone)]
pub(super) struct DurationBuckets(Arc<[f64]>);

impl DurationBuckets {
    pub(super) fn up_to(timeout: Duration) -> Self {
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
}
