//! The gateway's counters per S3 operation, for the node's `/metrics`:
//! requests, answers with a client (4xx) or server (5xx) error, bytes in
//! request and answer bodies (as their `Content-Length` says), and the
//! latency until the answer's headers (a GET's body streams after).
//!
//! The operation is named by s3s's router (its access check, which runs
//! for every routed request, tells the request's task); a request refused
//! before routing (a bad signature, an unknown access key, a malformed
//! request) counts as [`UNROUTED`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use datenlord_engine::stats::Latency;

/// The operation of requests refused before s3s routed them.
pub const UNROUTED: &str = "Unrouted";

tokio::task_local! {
    /// The operation of the request this task serves.
    static OP: RefCell<String>;
}

/// Tells the request's task which operation it is (from the access check).
pub(crate) fn routed(op: &str) {
    let _ = OP.try_with(|cell| op.clone_into(&mut cell.borrow_mut()));
}

/// Runs `serve` (one request) and what it says of its operation: its
/// output and the operation's name.
pub(crate) async fn scoped<T>(serve: impl std::future::Future<Output = T>) -> (T, String) {
    OP.scope(RefCell::new(UNROUTED.to_string()), async move {
        let out = serve.await;
        (out, OP.with(RefCell::take))
    })
    .await
}

#[derive(Debug, Default, Clone)]
struct Op {
    requests: u64,
    client_errors: u64,
    server_errors: u64,
    bytes_in: u64,
    bytes_out: u64,
    latency: Latency,
}

/// What one operation did so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpSample {
    /// The S3 operation (`GetObject`, …, or [`UNROUTED`]).
    pub op: String,
    /// Requests answered.
    pub requests: u64,
    /// Answered with a 4xx status.
    pub client_errors: u64,
    /// Answered with a 5xx status (or not at all).
    pub server_errors: u64,
    /// Bytes of request bodies.
    pub bytes_in: u64,
    /// Bytes of answer bodies.
    pub bytes_out: u64,
    /// Latency buckets: `(upper bound in µs, requests at or below it)`,
    /// cumulative.
    pub buckets: Vec<(u64, u64)>,
    /// Sum of the latencies, in nanoseconds.
    pub sum_ns: u64,
}

/// The gateway's counters.
#[derive(Debug, Default)]
pub struct S3Stats {
    ops: Mutex<BTreeMap<String, Op>>,
}

/// One answered request.
#[derive(Debug, Clone)]
pub(crate) struct Answered {
    pub(crate) op: String,
    /// The HTTP status (`None`: no answer, an error of the connection).
    pub(crate) status: Option<u16>,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) started: Instant,
}

impl S3Stats {
    pub(crate) fn record(&self, answered: Answered) {
        let mut ops = self.ops.lock().unwrap_or_else(PoisonError::into_inner);
        let op = ops.entry(answered.op).or_default();
        op.requests += 1;
        match answered.status {
            Some(400..=499) => op.client_errors += 1,
            Some(200..=399) => {}
            _ => op.server_errors += 1,
        }
        op.bytes_in = op.bytes_in.saturating_add(answered.bytes_in);
        op.bytes_out = op.bytes_out.saturating_add(answered.bytes_out);
        op.latency.record_since(answered.started);
    }

    /// Every operation seen so far, by name.
    pub fn snapshot(&self) -> Vec<OpSample> {
        let ops = self.ops.lock().unwrap_or_else(PoisonError::into_inner);
        ops.iter()
            .map(|(name, op)| OpSample {
                op: name.clone(),
                requests: op.requests,
                client_errors: op.client_errors,
                server_errors: op.server_errors,
                bytes_in: op.bytes_in,
                bytes_out: op.bytes_out,
                buckets: op.latency.cumulative(),
                sum_ns: op.latency.sum_ns,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_count_under_the_operation_their_task_was_routed_to() {
        let stats = S3Stats::default();
        let ((), op) = scoped(async { routed("GetObject") }).await;
        assert_eq!(op, "GetObject");
        let ((), unrouted) = scoped(async {}).await;
        assert_eq!(unrouted, UNROUTED);
        routed("PutObject"); // outside a request: ignored
        let started = Instant::now();
        for (op, status) in [
            ("GetObject", Some(200)),
            ("GetObject", Some(404)),
            ("GetObject", Some(503)),
            (UNROUTED, None),
        ] {
            stats.record(Answered {
                op: op.to_string(),
                status,
                bytes_in: 3,
                bytes_out: 10,
                started,
            });
        }
        let samples = stats.snapshot();
        assert_eq!(samples.len(), 2);
        let get = &samples[0];
        assert_eq!(get.op, "GetObject");
        assert_eq!(
            (get.requests, get.client_errors, get.server_errors),
            (3, 1, 1)
        );
        assert_eq!((get.bytes_in, get.bytes_out), (9, 30));
        assert_eq!(get.buckets.last().map(|b| b.1), Some(3));
        assert_eq!(samples[1].server_errors, 1, "no answer is a server error");
    }
}
