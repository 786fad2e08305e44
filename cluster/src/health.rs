//! Sklavin health reports: every cache node tells the leader how it is
//! (cache fill, NVMe errors, write-back backlog, load) every
//! [`HEALTH_INTERVAL_MS`]; the leader keeps the last report of each node
//! in memory (not in the Raft log: a report is stale in seconds, and a
//! new leader hears every node again within one interval) and
//! `datenlord members status` shows them beside the registry, and the
//! Kubernetes scheduler extender scores nodes by the bytes of a pod's
//! volumes each caches ([`NodeHealth::volumes`]).

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
/// Most volumes a report names (the ones a node caches most of).
pub const HEALTH_VOLUMES_MAX: usize = 4096;
/// Longest node name a report carries.
pub const HEALTH_NAME_MAX_BYTES: usize = 255;

/// What a node caches of one volume: a directory quota's project (a CSI
/// volume is one).
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VolumeCache {
    /// The project's root directory.
    pub root: u64,
    /// Bytes of the project's files the node's tiers hold, counted like
    /// [`NodeHealth::cached_bytes`].
    pub bytes: u64,
}

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
    /// What it caches of each volume (at most [`HEALTH_VOLUMES_MAX`], the
    /// largest; counted every few reports, so up to a minute old).
    pub volumes: Vec<VolumeCache>,
}

/// A node's report: who and how.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HealthReport {
    /// The node's id.
    pub id: u64,
    /// The name it goes by (its host name). A leader with TLS takes the
    /// name of the node's certificate instead.
    pub name: String,
    /// Its health.
    pub health: NodeHealth,
}

/// What the leader knows of one node: its last report and how old it is.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HealthEntry {
    /// The node's id.
    pub id: u64,
    /// Its name: its certificate's common name, or (without TLS) the
    /// name it reported.
    pub name: String,
    /// Its last report.
    pub health: NodeHealth,
    /// Milliseconds since the report came.
    pub age_ms: u64,
}

impl HealthReport {
    /// Why the report cannot be kept, if it cannot (too long a name, too
    /// many volumes).
    pub fn check(&self) -> Result<(), String> {
        if self.name.len() > HEALTH_NAME_MAX_BYTES {
            return Err(format!(
                "a node name of {} bytes (at most {HEALTH_NAME_MAX_BYTES})",
                self.name.len()
            ));
        }
        if self.health.volumes.len() > HEALTH_VOLUMES_MAX {
            return Err(format!(
                "{} volumes in one report (at most {HEALTH_VOLUMES_MAX})",
                self.health.volumes.len()
            ));
        }
        Ok(())
    }
}

/// The reports a master received, by node: name, health, when.
#[derive(Debug, Default)]
pub struct HealthBook(Mutex<BTreeMap<u64, (String, NodeHealth, Instant)>>);

impl HealthBook {
    /// Keeps `report` as its node's latest, under `name`; refused when the
    /// book is full of other nodes' fresh reports.
    pub fn record(&self, report: HealthReport, name: String) -> bool {
        self.record_at(report, name, Instant::now())
    }

    fn record_at(&self, report: HealthReport, name: String, now: Instant) -> bool {
        let mut book = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let forget = Duration::from_millis(HEALTH_FORGET_AFTER_MS);
        book.retain(|_, (_, _, at)| now.saturating_duration_since(*at) < forget);
        if book.len() >= HEALTH_NODES_MAX && !book.contains_key(&report.id) {
            return false;
        }
        book.insert(report.id, (name, report.health, now));
        true
    }

    /// Every node's last report, by id.
    pub fn entries(&self) -> Vec<HealthEntry> {
        let book = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        book.iter()
            .map(|(&id, (name, health, at))| HealthEntry {
                id,
                name: name.clone(),
                health: health.clone(),
                age_ms: u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX),
            })
            .collect()
    }
}

/// The `limit` volumes of which the most bytes are cached, largest first,
/// from bytes per volume root.
pub fn largest_volumes(
    per_root: impl IntoIterator<Item = (u64, u64)>,
    limit: usize,
) -> Vec<VolumeCache> {
    let mut volumes: Vec<VolumeCache> = per_root
        .into_iter()
        .filter(|&(_, bytes)| bytes > 0)
        .map(|(root, bytes)| VolumeCache { root, bytes })
        .collect();
    volumes.sort_unstable_by(|a, b| b.bytes.cmp(&a.bytes).then(a.root.cmp(&b.root)));
    volumes.truncate(limit);
    volumes
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
            name: format!("host-{id}"),
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
        assert!(book.record_at(report(1, 10), "a".into(), start));
        assert!(book.record_at(report(2, 20), "b".into(), start));
        assert!(book.record_at(report(1, 11), "a".into(), start));
        let entries = book.entries();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].health.cached_bytes, 11);
        // Ten minutes later, node 2 has not reported again: forgotten.
        let later = start + Duration::from_millis(HEALTH_FORGET_AFTER_MS + 1);
        assert!(book.record_at(report(1, 12), "a2".into(), later));
        let ids: Vec<(u64, String)> = book
            .entries()
            .iter()
            .map(|e| (e.id, e.name.clone()))
            .collect();
        assert_eq!(ids, [(1, "a2".to_string())]);
    }

    #[test]
    fn reports_are_bounded_and_keep_the_largest_volumes() {
        let volumes = largest_volumes([(5, 10), (6, 0), (7, 30), (8, 10), (9, 20)], 3);
        let roots: Vec<(u64, u64)> = volumes.iter().map(|v| (v.root, v.bytes)).collect();
        assert_eq!(
            roots,
            [(7, 30), (9, 20), (5, 10)],
            "largest first, none empty"
        );
        let mut big = report(1, 0);
        assert!(big.check().is_ok());
        big.health.volumes = vec![VolumeCache::default(); HEALTH_VOLUMES_MAX + 1];
        assert!(big.check().expect_err("too many").contains("volumes"));
        big.health.volumes.clear();
        big.name = "x".repeat(HEALTH_NAME_MAX_BYTES + 1);
        assert!(big.check().expect_err("too long").contains("name"));
    }

    #[test]
    fn a_full_book_takes_no_new_node() {
        let book = HealthBook::default();
        let now = Instant::now();
        for id in 0..HEALTH_NODES_MAX as u64 {
            assert!(book.record_at(report(id, 0), String::new(), now));
        }
        assert!(!book.record_at(report(u64::MAX, 0), String::new(), now));
        assert!(
            book.record_at(report(0, 1), String::new(), now),
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
