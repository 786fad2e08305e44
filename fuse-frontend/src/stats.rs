//! Per-op counters and latency histograms of the FUSE request loops, read
//! by the metrics endpoint. Each request adds to a few atomics (no lock);
//! the request loop measures from the moment the server decoded the header
//! to the moment the reply was written.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use datenlord_engine::stats::SharedLatency;
use fuse_backend_rs::abi::fuse_abi::{InHeader, OutHeader};
use fuse_backend_rs::api::server::MetricsHook;

/// Opcodes counted (FUSE opcodes are small numbers; larger ones share the
/// last slot as "other").
const OPCODE_SLOTS: usize = 64;
/// Latency buckets (the engine's: upper bounds 1 µs, 2 µs … about 1 s).
pub use datenlord_engine::stats::LATENCY_BUCKETS;

#[derive(Debug, Default)]
struct OpCounters {
    errors: AtomicU64,
    latency: SharedLatency,
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

impl OpStats {
    fn slot(opcode: u32) -> usize {
        (opcode as usize).min(OPCODE_SLOTS - 1)
    }

    /// Records one answered request.
    pub fn record(&self, opcode: u32, latency_ns: u64, failed: bool) {
        let c = &self.ops[Self::slot(opcode)];
        if failed {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
        c.latency.record(latency_ns);
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
            .map(|(opcode, c)| (opcode, c, c.latency.snapshot()))
            .filter(|(_, _, latency)| latency.count > 0)
            .map(|(opcode, c, latency)| OpSample {
                op: op_name(opcode as u32),
                count: latency.count,
                errors: c.errors.load(Ordering::Relaxed),
                sum_ns: latency.sum_ns,
                buckets: latency.cumulative(),
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
