//! Sklavin health reports: every cache node tells the leader how it is
//! (cache fill, NVMe errors, write-back backlog, load) every
//! [`HEALTH_INTERVAL_MS`]; the leader keeps the last report of each node
//! in memory (not in the Raft log: a report is stale in seconds, and a
//! new leader hears every node again within one interval) and
//! `datenlord members status` shows them beside the registry.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rkyv::{Archive, Deserialize, Serialize};

/// How often a node reports.
pub const HEALTH_INTERVAL_MS: u64 = 2_000;
/// A report older than this is forgotten (the node stopped reporting).
pub const HEALTH_FORGET_AFTER_MS: u64 = 10 * 60 * 1000;
/// Most nodes a leader keeps reports of.
pub const HEALTH_NODES_MAX: usize = crate::meta::CACHE_NODES_MAX;

/// How a cache node is.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeHealth {
    /// Bytes its memory and NVMe tiers hold, about: blocks held times the
    /// block size (a file's short tail block counts whole, a block in both
    /// tiers twice).
    pub cached_bytes: u64,
    /// Bytes they can hold.
    pub cache_capacity: u64,
    /// NVMe writes that failed and NVMe reads that failed their checksum,
    /// since the node started.
    pub disk_errors: u64,
    /// Blocks of its write-back journal not in the store yet.
    pub journal_blocks: u64,
    /// Their bytes.
    pub journal_bytes: u64,
    /// Age of the oldest of them, in milliseconds.
    pub journal_oldest_ms: u64,
    /// The machine's one-minute load average, times 1000.
    pub load_milli: u64,
    /// Requests to other nodes that failed or timed out, since it started.
    pub neighbor_errors: u64,
}

/// A node's report: who and how.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HealthReport {
    /// The node's id.
    pub id: u64,
    /// Its health.
    pub health: NodeHealth,
}

/// What the leader knows of one node: its last report and how old it is.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HealthEntry {
    /// The node's id.
    pub id: u64,
    /// Its last report.
    pub health: NodeHealth,
    /// Milliseconds since the report came.
    pub age_ms: u64,
}

/// The reports a master received, by node.
#[derive(Debug, Default)]
pub struct HealthBook(Mutex<BTreeMap<u64, (NodeHealth, Instant)>>);

impl HealthBook {
    /// Keeps `report` as its node's latest; refused when the book is full
    /// of other nodes' fresh reports.
    pub fn record(&self, report: HealthReport) -> bool {
        self.record_at(report, Instant::now())
    }

    fn record_at(&self, report: HealthReport, now: Instant) -> bool {
        let mut book = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let forget = Duration::from_millis(HEALTH_FORGET_AFTER_MS);
        book.retain(|_, (_, at)| now.saturating_duration_since(*at) < forget);
        if book.len() >= HEALTH_NODES_MAX && !book.contains_key(&report.id) {
            return false;
        }
        book.insert(report.id, (report.health, now));
        true
    }

    /// Every node's last report, by id.
    pub fn entries(&self) -> Vec<HealthEntry> {
        let book = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        book.iter()
            .map(|(&id, (health, at))| HealthEntry {
                id,
                health: health.clone(),
                age_ms: u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX),
            })
            .collect()
    }
}

/// The one-minute load average from `/proc/loadavg` text, times 1000.
pub fn parse_loadavg(text: &str) -> Option<u64> {
    let first: f64 = text.split_whitespace().next()?.parse().ok()?;
    (first.is_finite() && first >= 0.0).then(|| (first * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(id: u64, cached: u64) -> HealthReport {
        HealthReport {
            id,
            health: NodeHealth {
                cached_bytes: cached,
                ..NodeHealth::default()
            },
        }
    }

    #[test]
    fn the_book_keeps_each_nodes_latest_report_and_forgets_silent_ones() {
        let book = HealthBook::default();
        let start = Instant::now();
        assert!(book.record_at(report(1, 10), start));
        assert!(book.record_at(report(2, 20), start));
        assert!(book.record_at(report(1, 11), start));
        let entries = book.entries();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].health.cached_bytes, 11);
        // Ten minutes later, node 2 has not reported again: forgotten.
        let later = start + Duration::from_millis(HEALTH_FORGET_AFTER_MS + 1);
        assert!(book.record_at(report(1, 12), later));
        let ids: Vec<u64> = book.entries().iter().map(|e| e.id).collect();
        assert_eq!(ids, [1]);
    }

    #[test]
    fn a_full_book_takes_no_new_node() {
        let book = HealthBook::default();
        let now = Instant::now();
        for id in 0..HEALTH_NODES_MAX as u64 {
            assert!(book.record_at(report(id, 0), now));
        }
        assert!(!book.record_at(report(u64::MAX, 0), now));
        assert!(
            book.record_at(report(0, 1), now),
            "a known node still reports"
        );
    }

    #[test]
    fn load_average_text_is_parsed_or_refused() {
        assert_eq!(parse_loadavg("0.52 0.58 0.59 1/467 12345\n"), Some(520));
        assert_eq!(parse_loadavg("12.5 1 1"), Some(12_500));
        assert_eq!(parse_loadavg(""), None);
        assert_eq!(parse_loadavg("-1 0 0"), None);
        assert_eq!(parse_loadavg("nan 0 0"), None);
        assert_eq!(parse_loadavg("x"), None);
    }
}
