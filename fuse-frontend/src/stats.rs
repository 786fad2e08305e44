//! Per-op counters and latency histograms of the FUSE request loops, read
//! by the metrics endpoint. Each request adds to a few atomics (no lock);
//! the request loop measures from the moment the server decoded the header
//! to the moment the reply was written.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use fuse_backend_rs::abi::fuse_abi::{InHeader, OutHeader};
use fuse_backend_rs::api::server::MetricsHook;

/// Opcodes counted (FUSE opcodes are small numbers; larger ones share the
/// last slot as "other").
const OPCODE_SLOTS: usize = 64;
/// Latency buckets: upper bounds 1 µs, 2 µs, 4 µs … 2^(N-1) µs (about 1 s).
pub const LATENCY_BUCKETS: usize = 21;

#[derive(Debug, Default)]
struct OpCounters {
    count: AtomicU64,
    errors: AtomicU64,
    sum_ns: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS],
}

/// Counters of every op, shared by the request loops of one mount.
#[derive(Clone, Debug)]
pub struct OpStats {
    ops: Arc<[OpCounters]>,
    /// Requests that came over FUSE-over-io_uring queues.
    ring_requests: Arc<AtomicU64>,
}

impl Default for OpStats {
    fn default() -> Self {
        Self {
            ops: (0..OPCODE_SLOTS).map(|_| OpCounters::default()).collect(),
            ring_requests: Arc::default(),
        }
    }
}

/// One op's counters at a point in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpSample {
    /// The op's name (`read`, `lookup`, …).
    pub op: &'static str,
    /// Requests answered.
    pub count: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Sum of latencies.
    pub sum_ns: u64,
    /// `(upper bound in µs, requests at or below it)`, cumulative.
    pub buckets: Vec<(u64, u64)>,
}

/// The bucket of a latency: the smallest `i` with `latency <= 2^i µs`.
fn bucket(latency_ns: u64) -> usize {
    let us = latency_ns.div_ceil(1000).max(1);
    let i = (u64::BITS - (us - 1).leading_zeros()) as usize;
    i.min(LATENCY_BUCKETS - 1)
}

impl OpStats {
    fn slot(opcode: u32) -> usize {
        (opcode as usize).min(OPCODE_SLOTS - 1)
    }

    /// Records one answered request.
    pub fn record(&self, opcode: u32, latency_ns: u64, failed: bool) {
        let c = &self.ops[Self::slot(opcode)];
        c.count.fetch_add(1, Ordering::Relaxed);
        if failed {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
        c.sum_ns.fetch_add(latency_ns, Ordering::Relaxed);
        c.buckets[bucket(latency_ns)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request that came over an io_uring queue.
    pub(crate) fn count_ring_request(&self) {
        self.ring_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests that came over FUSE-over-io_uring queues (the rest came
    /// through /dev/fuse reads).
    pub fn ring_requests(&self) -> u64 {
        self.ring_requests.load(Ordering::Relaxed)
    }

    /// Every op seen so far.
    pub fn snapshot(&self) -> Vec<OpSample> {
        self.ops
            .iter()
            .enumerate()
            .filter(|(_, c)| c.count.load(Ordering::Relaxed) > 0)
            .map(|(opcode, c)| {
                let mut cumulative = 0;
                let buckets = c
                    .buckets
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        cumulative += b.load(Ordering::Relaxed);
                        (1u64 << i, cumulative)
                    })
                    .collect();
                OpSample {
                    op: op_name(opcode as u32),
                    count: c.count.load(Ordering::Relaxed),
                    errors: c.errors.load(Ordering::Relaxed),
                    sum_ns: c.sum_ns.load(Ordering::Relaxed),
                    buckets,
                }
            })
            .collect()
    }
}

/// The name of a FUSE opcode (numbers from the kernel's fuse.h).
pub fn op_name(opcode: u32) -> &'static str {
    const NAMES: [&str; 53] = [
        "unknown",
        "lookup",
        "forget",
        "getattr",
        "setattr",
        "readlink",
        "symlink",
        "unknown",
        "mknod",
        "mkdir",
        "unlink",
        "rmdir",
        "rename",
        "link",
        "open",
        "read",
        "write",
        "statfs",
        "release",
        "unknown",
        "fsync",
        "setxattr",
        "getxattr",
        "listxattr",
        "removexattr",
        "flush",
        "init",
        "opendir",
        "readdir",
        "releasedir",
        "fsyncdir",
        "getlk",
        "setlk",
        "setlkw",
        "access",
        "create",
        "interrupt",
        "bmap",
        "destroy",
        "ioctl",
        "poll",
        "notify_reply",
        "batch_forget",
        "fallocate",
        "readdirplus",
        "rename2",
        "lseek",
        "copy_file_range",
        "setupmapping",
        "removemapping",
        "syncfs",
        "tmpfile",
        "statx",
    ];
    NAMES.get(opcode as usize).copied().unwrap_or("other")
}

/// The hook one request loop hands to the server: it notes the opcode and
/// the time when a request starts and records it when the reply is out.
#[derive(Debug)]
pub(crate) struct LoopHook {
    stats: OpStats,
    current: Cell<Option<(u32, Instant)>>,
}

impl LoopHook {
    pub(crate) fn new(stats: OpStats) -> Self {
        Self {
            stats,
            current: Cell::new(None),
        }
    }
}

impl MetricsHook for LoopHook {
    fn collect(&self, ih: &InHeader) {
        self.current.set(Some((ih.opcode, Instant::now())));
    }

    fn release(&self, oh: Option<&OutHeader>) {
        if let Some((opcode, start)) = self.current.take() {
            let latency_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.stats
                .record(opcode, latency_ns, oh.is_some_and(|h| h.error != 0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_microseconds() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1_000), 0);
        assert_eq!(bucket(1_001), 1);
        assert_eq!(bucket(2_000), 1);
        assert_eq!(bucket(3_000), 2);
        assert_eq!(bucket(1_000_000), 10);
        assert_eq!(bucket(u64::MAX), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn snapshot_is_cumulative_per_op() {
        let stats = OpStats::default();
        stats.record(15, 500, false);
        stats.record(15, 3_000, true);
        stats.record(1, 10_000, false);
        stats.record(999, 1, false);
        let snap = stats.snapshot();
        let read = snap.iter().find(|s| s.op == "read").expect("read");
        assert_eq!((read.count, read.errors, read.sum_ns), (2, 1, 3_500));
        assert_eq!(read.buckets[0], (1, 1));
        assert_eq!(read.buckets[2], (4, 2));
        assert_eq!(read.buckets.last().map(|b| b.1), Some(2));
        assert!(snap.iter().any(|s| s.op == "lookup" && s.count == 1));
        assert!(snap.iter().any(|s| s.op == "other" && s.count == 1));
    }
}
