//! Whether the store answers: after [`OUTAGE_AFTER_FAILURES`] requests
//! in a row that got no answer (connection refused or timed out, server
//! errors), the store is *down*: reads fail at once with the last error
//! instead of each waiting out its timeouts and retries, except one read
//! every [`OUTAGE_PROBE_MS`], which tries the store (a probe). Any answer
//! (success, or an error the store itself gave, such as "no such key")
//! makes it *up* again. So a node whose store is unreachable turns to the
//! tiers that do not need it (another node's cache, the writer's journal)
//! after a bounded wait, not after every block's timeouts. Uploads are
//! not held back (the write-back queue retries them forever); their
//! outcomes count like any request's. Sans IO.

use std::time::{Duration, Instant};

/// Requests in a row without an answer after which reads fail fast.
pub const OUTAGE_AFTER_FAILURES: u32 = 3;
/// While the store is down, one read per interval tries it.
pub const OUTAGE_PROBE_MS: u64 = 2_000;

/// What a read may do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Go to the store, with retries.
    Go,
    /// Go, once: the store is down and this read probes it.
    Probe,
    /// Fail at once: the store is down (why, and since how long).
    Refuse(String),
}

/// The store's reachability as this process saw it.
#[derive(Debug, Default)]
pub struct Reach {
    failures: u32,
    down_since: Option<Instant>,
    probed: Option<Instant>,
    last_error: String,
}

impl Reach {
    /// Whether a read may go to the store at `now`.
    pub fn admit(&mut self, now: Instant) -> Admit {
        let Some(since) = self.down_since else {
            return Admit::Go;
        };
        let due = self.probed.is_none_or(|at| {
            now.saturating_duration_since(at) >= Duration::from_millis(OUTAGE_PROBE_MS)
        });
        if due {
            self.probed = Some(now);
            return Admit::Probe;
        }
        Admit::Refuse(format!(
            "unreachable for {:.1} s ({}); reads are not sent to it until a probe gets an answer (one every {} ms)",
            now.saturating_duration_since(since).as_secs_f64(),
            self.last_error,
            OUTAGE_PROBE_MS
        ))
    }

    /// Records a request that got an answer (`None`) or none (`Some(why)`).
    pub fn record(&mut self, failure: Option<&str>, now: Instant) {
        match failure {
            None => {
                if self.down_since.is_some() {
                    tracing::info!("the store answers again");
                }
                *self = Self::default();
            }
            Some(why) => {
                self.failures = self.failures.saturating_add(1);
                why.clone_into(&mut self.last_error);
                if self.failures >= OUTAGE_AFTER_FAILURES && self.down_since.is_none() {
                    tracing::warn!(error = why, "the store does not answer: reads fail fast until it does (other nodes' caches and writers' journals still serve)");
                    self.down_since = Some(now);
                }
            }
        }
    }

    /// Whether the store is down now.
    pub fn is_down(&self) -> bool {
        self.down_since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_make_the_store_down_and_one_read_per_interval_probes() {
        let mut reach = Reach::default();
        let t0 = Instant::now();
        assert_eq!(reach.admit(t0), Admit::Go);
        reach.record(Some("connect timed out"), t0);
        reach.record(Some("connect timed out"), t0);
        assert!(!reach.is_down(), "two failures are not an outage");
        assert_eq!(reach.admit(t0), Admit::Go);
        reach.record(Some("connect timed out"), t0);
        assert!(reach.is_down());
        // The first read after that probes; the next ones fail fast.
        assert_eq!(reach.admit(t0), Admit::Probe);
        let later = t0 + Duration::from_millis(100);
        match reach.admit(later) {
            Admit::Refuse(why) => assert!(why.contains("connect timed out"), "{why}"),
            other => panic!("{other:?}"),
        }
        reach.record(Some("still down"), later);
        // The interval passed: another probe, which gets an answer.
        let next = t0 + Duration::from_millis(OUTAGE_PROBE_MS);
        assert_eq!(reach.admit(next), Admit::Probe);
        reach.record(None, next);
        assert!(!reach.is_down());
        assert_eq!(reach.admit(next), Admit::Go);
    }

    #[test]
    fn an_answer_between_failures_starts_the_count_again() {
        let mut reach = Reach::default();
        let now = Instant::now();
        for _ in 0..OUTAGE_AFTER_FAILURES - 1 {
            reach.record(Some("503"), now);
        }
        reach.record(None, now);
        for _ in 0..OUTAGE_AFTER_FAILURES - 1 {
            reach.record(Some("503"), now);
        }
        assert!(!reach.is_down());
    }
}
