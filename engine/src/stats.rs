//! Per-shard counters. Each shard owns its counters (no atomics on the data
//! path); readers ask the shard for a copy.

use std::ops::AddAssign;

macro_rules! shard_stats {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Counters of one shard (or the sum of several).
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct ShardStats {
            $($(#[$doc])* pub $name: u64,)*
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
