//! Per-shard counters. Each shard owns its counters (no atomics on the data
//! path); readers ask the shard for a copy.

use std::ops::AddAssign;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

macro_rules! shard_stats {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Counters of one shard (or the sum of several).
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct ShardStats {
            $($(#[$doc])* pub $name: u64,)*
            /// How long reads took, by the tier that served them.
            pub latency: TierLatency,
        }

        impl ShardStats {
            /// `(name, value)` of every counter, for exporters.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }

        impl AddAssign for ShardStats {
            fn add_assign(&mut self, other: Self) {
                $(self.$name += other.$name;)*
                self.latency += other.latency;
            }
        }
    };
}

shard_stats! {
    /// Reads served by this shard as owner.
    reads,
    /// Bytes returned by reads.
    read_bytes,
    /// Reads served from the memory tier.
    memory_hits,
    /// Of those, reads served on the caller's thread through the shard's
    /// `HitView` (no message to the shard).
    view_hits,
    /// Reads that missed the memory tier.
    memory_misses,
    /// Reads served from the NVMe tier.
    disk_hits,
    /// Reads that missed the NVMe tier (when it is on).
    disk_misses,
    /// Blocks fetched from the source below the cache.
    source_fetches,
    /// Bytes fetched from the source.
    source_bytes,
    /// Fetch failures reported by the source.
    source_errors,
    /// Small random reads of blocks this shard would not keep, served by
    /// fetching only the bytes asked for (a neighbor's range read).
    source_range_fetches,
    /// Reads that joined a fetch already in flight (single flight).
    fetch_joins,
    /// Blocks inserted by writers.
    inserts,
    /// Blocks evicted from the memory tier.
    memory_evictions,
    /// Blocks evicted from the NVMe tier.
    disk_evictions,
    /// Blocks written to the NVMe tier.
    disk_writes,
    /// NVMe writes that failed.
    disk_write_errors,
    /// Blocks not written down because the NVMe write queue was full
    /// (clean blocks: the source still has them).
    disk_writes_dropped,
    /// Memory evictions written down to the NVMe tier.
    demotions,
    /// NVMe hits copied up to the memory tier.
    promotions,
    /// Candidates refused by the admission filter.
    admissions_rejected,
    /// NVMe reads whose data failed its checksum (dropped and refetched).
    checksum_failures,
    /// Blocks prefetched into the cache.
    prefetch_issued,
    /// Prefetches dropped because the queue was full.
    prefetch_dropped,
    /// Queued prefetches cancelled because their stream stopped.
    prefetch_cancelled,
    /// Reads served by a block this shard had prefetched.
    prefetch_hits,
    /// Requests forwarded to another shard.
    forwarded,
    /// Blocks the memory tier holds now (a gauge, not a counter).
    memory_blocks_held,
    /// Blocks the NVMe tier holds now (a gauge, not a counter).
    disk_blocks_held,
}

/// Whether a field of [`ShardStats`] is a gauge (a level now) rather than
/// a counter.
pub fn is_gauge(field: &str) -> bool {
    field.ends_with("_held")
}

impl ShardStats {
    /// Sums a set of shard counters.
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a ShardStats>) -> ShardStats {
        let mut total = ShardStats::default();
        for s in all {
            total += *s;
        }
        total
    }
}

/// Latency buckets: upper bounds 1 µs, 2 µs, 4 µs … 2^(N-1) µs (about 1 s).
pub const LATENCY_BUCKETS: usize = 21;

/// The bucket of a latency: the smallest `i` with `latency <= 2^i µs`.
pub fn latency_bucket(latency_ns: u64) -> usize {
    let us = latency_ns.div_ceil(1000).max(1);
    let i = (u64::BITS - (us - 1).leading_zeros()) as usize;
    i.min(LATENCY_BUCKETS - 1)
}

fn nanos_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A latency histogram (power-of-two microsecond buckets), owned by one
/// shard or summed over several.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    /// Observations.
    pub count: u64,
    /// Their sum, in nanoseconds.
    pub sum_ns: u64,
    /// Observations per bucket (not cumulative).
    pub buckets: [u64; LATENCY_BUCKETS],
}

impl Latency {
    /// Records one observation.
    pub fn record(&mut self, latency_ns: u64) {
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(latency_ns);
        self.buckets[latency_bucket(latency_ns)] += 1;
    }

    /// Records the time since `start`.
    pub fn record_since(&mut self, start: Instant) {
        self.record(nanos_since(start));
    }

    /// `(upper bound in µs, observations at or below it)`, cumulative.
    pub fn cumulative(&self) -> Vec<(u64, u64)> {
        let mut total = 0;
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                total += n;
                (1u64 << i, total)
            })
            .collect()
    }
}

impl AddAssign for Latency {
    fn add_assign(&mut self, other: Self) {
        self.count += other.count;
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
    }
}

/// Read latency by the tier that served the read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierLatency {
    /// Memory hits served by the shard (not those served on the caller's
    /// thread through the hit view: a copy, well under a microsecond).
    pub memory: Latency,
    /// NVMe hits.
    pub disk: Latency,
    /// Reads served from the source below the cache (the neighbor tier
    /// and the store), whole blocks or ranges.
    pub source: Latency,
}

impl AddAssign for TierLatency {
    fn add_assign(&mut self, other: Self) {
        self.memory += other.memory;
        self.disk += other.disk;
        self.source += other.source;
    }
}

/// A latency histogram many threads record into (atomics, no lock).
#[derive(Debug, Default)]
pub struct SharedLatency {
    count: AtomicU64,
    sum_ns: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS],
}

impl SharedLatency {
    /// Records one observation.
    pub fn record(&self, latency_ns: u64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(latency_ns, Ordering::Relaxed);
        self.buckets[latency_bucket(latency_ns)].fetch_add(1, Ordering::Relaxed);
    }

    /// Records the time since `start`.
    pub fn record_since(&self, start: Instant) {
        self.record(nanos_since(start));
    }

    /// The histogram now.
    pub fn snapshot(&self) -> Latency {
        let mut out = Latency {
            count: self.count.load(Ordering::Relaxed),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
            ..Latency::default()
        };
        for (o, b) in out.buckets.iter_mut().zip(&self.buckets) {
            *o = b.load(Ordering::Relaxed);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_microseconds() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1_000), 0);
        assert_eq!(latency_bucket(1_001), 1);
        assert_eq!(latency_bucket(2_000), 1);
        assert_eq!(latency_bucket(3_000), 2);
        assert_eq!(latency_bucket(1_000_000), 10);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn latencies_land_in_power_of_two_microsecond_buckets_and_add_up() {
        let mut a = Latency::default();
        for ns in [1, 1_000, 1_001, 3_000, 5_000_000, u64::MAX / 2] {
            a.record(ns);
        }
        let cumulative = a.cumulative();
        assert_eq!(cumulative[0], (1, 2), "up to 1 µs");
        assert_eq!(cumulative[1], (2, 3), "1.001 µs is in the 2 µs bucket");
        assert_eq!(cumulative[2], (4, 4));
        assert_eq!(
            cumulative[LATENCY_BUCKETS - 1].1,
            6,
            "the last takes the rest"
        );
        let shared = SharedLatency::default();
        shared.record(3_000);
        let mut sum = a;
        sum += shared.snapshot();
        assert_eq!(sum.count, 7);
        assert_eq!(sum.buckets[2], 2);
    }
}
