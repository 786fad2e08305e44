//! Latency histograms per op type. Each worker thread records into its own
//! book; books are merged once at the end (no shared state on the hot path).

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::spec::OpKind;

/// Highest latency recorded exactly; slower ops saturate to it.
pub const MAX_LATENCY_NS: u64 = 60_000_000_000;
/// Three significant digits: 0.1% relative error on every percentile.
const SIGNIFICANT_DIGITS: u8 = 3;

#[derive(Debug, Clone)]
pub struct LatencyBook {
    by_kind: Vec<Histogram<u64>>,
}

impl LatencyBook {
    pub fn new() -> Result<Self> {
        let by_kind = OpKind::ALL
            .iter()
            .map(|_| {
                Histogram::new_with_bounds(1, MAX_LATENCY_NS, SIGNIFICANT_DIGITS)
                    .map_err(|e| Error::Histogram(e.to_string()))
            })
            .collect::<Result<_>>()?;
        Ok(Self { by_kind })
    }

    pub fn record(&mut self, kind: OpKind, latency_ns: u64) {
        self.by_kind[kind.index()].saturating_record(latency_ns.max(1));
    }

    pub fn merge(&mut self, other: &Self) -> Result<()> {
        for (mine, theirs) in self.by_kind.iter_mut().zip(&other.by_kind) {
            mine.add(theirs)
                .map_err(|e| Error::Histogram(format!("{e:?}")))?;
        }
        Ok(())
    }

    pub fn histogram(&self, kind: OpKind) -> &Histogram<u64> {
        &self.by_kind[kind.index()]
    }

    pub fn count(&self, kind: OpKind) -> u64 {
        self.histogram(kind).len()
    }

    pub fn total_count(&self) -> u64 {
        self.by_kind.iter().map(Histogram::len).sum()
    }

    /// Latency at `percentile` (0..=100) in microseconds; `None` if no op.
    pub fn percentile_us(&self, kind: OpKind, percentile: f64) -> Option<f64> {
        let histogram = self.histogram(kind);
        (!histogram.is_empty()).then(|| histogram.value_at_percentile(percentile) as f64 / 1000.0)
    }

    /// Op kinds that saw at least one op, in `OpKind::ALL` order.
    pub fn kinds(&self) -> impl Iterator<Item = OpKind> + '_ {
        OpKind::ALL.into_iter().filter(|kind| self.count(*kind) > 0)
    }

    pub fn summary(&self, kind: OpKind) -> LatencySummary {
        let h = self.histogram(kind);
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }

    /// (latency µs, cumulative fraction) points for a CDF plot.
    pub fn cdf_points(&self, kind: OpKind) -> Vec<(f64, f64)> {
        let h = self.histogram(kind);
        if h.is_empty() {
            return Vec::new();
        }
        let total = h.len() as f64;
        h.iter_recorded()
            .map(|v| {
                (
                    v.value_iterated_to() as f64 / 1000.0,
                    v.count_since_last_iteration() as f64,
                )
            })
            .scan(0.0, |seen, (us, count)| {
                *seen += count;
                Some((us, *seen / total))
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

#[cfg(test)]
mod tests {
    use super::LatencyBook;
    use crate::spec::OpKind;

    #[test]
    fn merging_keeps_counts_and_extremes() {
        let mut a = LatencyBook::new().expect("bounds are valid");
        let mut b = LatencyBook::new().expect("bounds are valid");
        for ns in 1..=1000u64 {
            a.record(OpKind::Read, ns * 1000);
        }
        b.record(OpKind::Read, 5_000_000);
        b.record(OpKind::Write, 7_000);
        a.merge(&b).expect("same bounds");
        assert_eq!(a.count(OpKind::Read), 1001);
        assert_eq!(a.count(OpKind::Write), 1);
        assert_eq!(a.total_count(), 1002);
        let s = a.summary(OpKind::Read);
        assert!((s.max_us - 5000.0).abs() / 5000.0 < 0.001, "{s:?}");
        assert!((s.p50_us - 501.0).abs() < 1.0, "{s:?}");
        assert!(
            s.p50_us <= s.p90_us
                && s.p90_us <= s.p99_us
                && s.p99_us <= s.p999_us
                && s.p999_us <= s.max_us
        );
        assert_eq!(a.kinds().collect::<Vec<_>>(), [OpKind::Read, OpKind::Write]);
        assert!(a.percentile_us(OpKind::Stat, 99.0).is_none());
    }

    #[test]
    fn saturates_instead_of_failing() {
        let mut a = LatencyBook::new().expect("bounds are valid");
        a.record(OpKind::List, u64::MAX);
        a.record(OpKind::List, 0);
        assert_eq!(a.count(OpKind::List), 2);
        let cdf = a.cdf_points(OpKind::List);
        assert!((cdf.last().expect("two values").1 - 1.0).abs() < 1e-9);
    }
}
