//! Bookkeeping of the write-back journal (sans-IO): which entries exist,
//! where each lies (its segment and offset), bytes used against the
//! capacity, which entries are being written, which are uploading, when a
//! failed upload is retried, how many entries each segment still holds
//! (a segment is deleted once it holds none and is no longer the one
//! appended to), and upload health for the logs. Times are milliseconds of
//! a clock the driver owns.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use super::segment::Location;
use crate::block::BlockId;

/// Rate limit of the "uploads are failing" warning.
pub const UPLOAD_WARN_INTERVAL_MS: u64 = 10_000;

/// The upload backlog, for metrics and `datenlord status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Blocks in the journal (written or being written, not yet uploaded).
    pub entries: u64,
    /// Their bytes (encoded objects).
    pub bytes: u64,
    /// Age of the oldest entry.
    pub oldest_age: Option<Duration>,
    /// The last upload error, cleared by a successful upload.
    pub last_error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EntryState {
    /// `writers` commits are writing the file; not uploadable yet.
    Writing { writers: u32 },
    /// Durable, waiting in `ready` for upload.
    Ready { due_ms: u64, seq: u64 },
    /// An upload is in flight.
    Uploading,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    bytes: u64,
    added_ms: u64,
    attempts: u32,
    state: EntryState,
    /// Where its bytes were appended; `None` until a writer has.
    location: Option<Location>,
}

/// Why a commit does not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full {
    /// Entries in the journal.
    pub entries: u64,
    /// Bytes in the journal.
    pub used_bytes: u64,
    /// Capacity.
    pub capacity_bytes: u64,
    /// Bytes the commit needed.
    pub needed_bytes: u64,
}

/// What happened when GC asked to drop an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcRemoval {
    /// Removed from the bookkeeping; `freed` is a segment that now holds
    /// no entry: delete its file.
    Removed {
        /// The segment to delete, if any.
        freed: Option<u64>,
    },
    /// Being written or uploaded: ask again later.
    Busy,
    /// Not in the journal.
    Absent,
}

/// The journal's state.
#[derive(Debug)]
pub struct JournalState {
    capacity_bytes: u64,
    used_bytes: u64,
    entries: HashMap<BlockId, Entry>,
    /// Durable entries waiting for upload, by due time then arrival.
    ready: BTreeSet<(u64, u64, BlockId)>,
    next_seq: u64,
    /// Entries each segment holds.
    segments: BTreeMap<u64, u64>,
    /// The segment appended to.
    active: Option<u64>,
}

impl JournalState {
    /// An empty journal of `capacity_bytes`.
    pub fn new(capacity_bytes: u64) -> Self {
        Self {
            capacity_bytes,
            used_bytes: 0,
            entries: HashMap::new(),
            ready: BTreeSet::new(),
            next_seq: 0,
            segments: BTreeMap::new(),
            active: None,
        }
    }

    /// Segment `seq` is now the one appended to. Returns the one it
    /// replaces if that holds no entry (delete its file).
    pub fn open_segment(&mut self, seq: u64) -> Option<u64> {
        self.segments.entry(seq).or_insert(0);
        let previous = self.active.replace(seq).filter(|&p| p != seq)?;
        (self.segments.get(&previous) == Some(&0)).then(|| {
            self.segments.remove(&previous);
            previous
        })
    }

    /// The segment appended to, when it holds no entry.
    pub fn active_is_empty(&self) -> Option<u64> {
        self.active
            .filter(|seq| self.segments.get(seq).is_none_or(|&n| n == 0))
    }

    /// Segments holding entries or appended to, in order.
    pub fn segments(&self) -> Vec<u64> {
        self.segments.keys().copied().collect()
    }

    /// Where the block's bytes lie, once written.
    pub fn location(&self, id: BlockId) -> Option<Location> {
        self.entries.get(&id).and_then(|e| e.location)
    }

    /// A writer appended the entry of `id` at `location`. Returns false
    /// (and records nothing) if the entry is gone or was written already.
    pub fn written(&mut self, id: BlockId, location: Location) -> bool {
        let Some(entry) = self.entries.get_mut(&id) else {
            return false;
        };
        if entry.location.is_some() {
            return false;
        }
        entry.location = Some(location);
        *self.segments.entry(location.segment).or_insert(0) += 1;
        true
    }

    /// Drops an entry: its bytes, its place in the upload order and in its
    /// segment. Returns its segment if that now holds nothing and is not
    /// appended to.
    fn remove_entry(&mut self, id: BlockId) -> Option<u64> {
        let entry = self.entries.remove(&id)?;
        if let EntryState::Ready { due_ms, seq } = entry.state {
            self.ready.remove(&(due_ms, seq, id));
        }
        self.used_bytes -= entry.bytes;
        let segment = entry.location?.segment;
        let held = self.segments.get_mut(&segment)?;
        *held = held.saturating_sub(1);
        if *held == 0 && self.active != Some(segment) {
            self.segments.remove(&segment);
            return Some(segment);
        }
        None
    }

    fn push_ready(&mut self, id: BlockId, due_ms: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.state = EntryState::Ready { due_ms, seq };
            self.ready.insert((due_ms, seq, id));
        }
    }

    /// An entry found durable on disk at open, at `location`. Returns
    /// false if the block is known already (a second copy, not counted).
    pub fn recover(&mut self, id: BlockId, location: Location, now_ms: u64) -> bool {
        if self.entries.contains_key(&id) {
            return false;
        }
        self.entries.insert(
            id,
            Entry {
                bytes: location.len,
                added_ms: now_ms,
                attempts: 0,
                state: EntryState::Writing { writers: 0 },
                location: None,
            },
        );
        self.used_bytes += location.len;
        self.written(id, location);
        self.push_ready(id, now_ms);
        true
    }

    /// Reserves room for a commit. Returns the blocks this commit must
    /// write: the new ones and those another commit is still writing (an
    /// entry already durable is not written again: versions are immutable).
    pub fn admit(&mut self, batch: &[(BlockId, u64)], now_ms: u64) -> Result<Vec<BlockId>, Full> {
        let mut needed_bytes = 0;
        let mut seen = std::collections::HashSet::new();
        for &(id, bytes) in batch {
            if !self.entries.contains_key(&id) && seen.insert(id) {
                needed_bytes += bytes;
            }
        }
        if self.used_bytes + needed_bytes > self.capacity_bytes {
            return Err(Full {
                entries: self.entries.len() as u64,
                used_bytes: self.used_bytes,
                capacity_bytes: self.capacity_bytes,
                needed_bytes,
            });
        }
        let mut to_write = Vec::new();
        for &(id, bytes) in batch {
            match self.entries.get(&id) {
                None => {
                    self.entries.insert(
                        id,
                        Entry {
                            bytes,
                            added_ms: now_ms,
                            attempts: 0,
                            state: EntryState::Writing { writers: 1 },
                            location: None,
                        },
                    );
                    self.used_bytes += bytes;
                    to_write.push(id);
                }
                Some(_) if to_write.contains(&id) => {}
                Some(_) => {
                    if let Some(Entry {
                        state: EntryState::Writing { writers },
                        ..
                    }) = self.entries.get_mut(&id)
                    {
                        *writers += 1;
                        to_write.push(id);
                    }
                }
            }
        }
        Ok(to_write)
    }

    /// The files of a commit are durable: their entries may upload.
    pub fn mark_durable(&mut self, ids: &[BlockId], now_ms: u64) {
        for &id in ids {
            let writing = self
                .entries
                .get(&id)
                .is_some_and(|e| matches!(e.state, EntryState::Writing { .. }));
            if writing {
                self.push_ready(id, now_ms);
            }
        }
    }

    /// A commit failed to make its entries durable: release what it
    /// reserved. Entries no commit made durable and none still writes
    /// leave the journal (their bytes in a segment are never uploaded by
    /// this process; a restart reads them back and uploads them, and the
    /// orphan scrub deletes those versions). Returns segments that now
    /// hold nothing (delete their files).
    pub fn abort(&mut self, ids: &[BlockId]) -> Vec<u64> {
        let mut freed = Vec::new();
        for &id in ids {
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            if let EntryState::Writing { writers } = &mut entry.state {
                *writers = writers.saturating_sub(1);
                if *writers == 0 {
                    freed.extend(self.remove_entry(id));
                }
            }
        }
        freed
    }

    /// The next entry to upload at `now_ms`, marked in flight.
    pub fn next_upload(&mut self, now_ms: u64) -> Option<BlockId> {
        let &(due_ms, seq, id) = self.ready.first()?;
        if due_ms > now_ms {
            return None;
        }
        self.ready.remove(&(due_ms, seq, id));
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.state = EntryState::Uploading;
        }
        Some(id)
    }

    /// When the earliest waiting entry becomes due.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.ready.first().map(|&(due, _, _)| due)
    }

    /// An upload succeeded: the entry leaves the journal. Returns its
    /// segment if that now holds nothing (delete its file).
    pub fn upload_done(&mut self, id: BlockId) -> Option<u64> {
        debug_assert!(self
            .entries
            .get(&id)
            .is_none_or(|e| e.state == EntryState::Uploading));
        self.remove_entry(id)
    }

    /// An upload failed: retry at `retry_ms`. Returns the attempts so far.
    pub fn upload_failed(&mut self, id: BlockId, retry_ms: u64) -> u32 {
        let Some(entry) = self.entries.get_mut(&id) else {
            return 0;
        };
        entry.attempts = entry.attempts.saturating_add(1);
        let attempts = entry.attempts;
        self.push_ready(id, retry_ms);
        attempts
    }

    /// The entry is unusable (corrupt): forget it without upload. Returns
    /// its segment if that now holds nothing (delete its file).
    pub fn discard(&mut self, id: BlockId) -> Option<u64> {
        self.remove_entry(id)
    }

    /// GC drops a version that left the namespace.
    pub fn remove_for_gc(&mut self, id: BlockId) -> GcRemoval {
        match self.entries.get(&id).map(|e| e.state) {
            None => GcRemoval::Absent,
            Some(EntryState::Writing { .. } | EntryState::Uploading) => GcRemoval::Busy,
            Some(EntryState::Ready { .. }) => GcRemoval::Removed {
                freed: self.remove_entry(id),
            },
        }
    }

    /// Whether the block is in the journal.
    pub fn contains(&self, id: BlockId) -> bool {
        self.entries.contains_key(&id)
    }

    /// Whether any of `ids` is still in the journal.
    pub fn any_pending(&self, ids: &[BlockId]) -> bool {
        ids.iter().any(|id| self.entries.contains_key(id))
    }

    /// Whether the journal is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Attempts of an entry's upload so far.
    pub fn attempts(&self, id: BlockId) -> u32 {
        self.entries.get(&id).map_or(0, |e| e.attempts)
    }

    /// Entries, bytes and the oldest entry's age.
    pub fn backlog(&self, now_ms: u64) -> Backlog {
        Backlog {
            entries: self.entries.len() as u64,
            bytes: self.used_bytes,
            oldest_age: self
                .entries
                .values()
                .map(|e| e.added_ms)
                .min()
                .map(|added| Duration::from_millis(now_ms.saturating_sub(added))),
            last_error: None,
        }
    }
}

/// What to log about uploads: a warning at most every
/// [`UPLOAD_WARN_INTERVAL_MS`] while they fail, one line when they recover.
#[derive(Debug, Default)]
pub struct UploadHealth {
    failing: bool,
    last_warn_ms: Option<u64>,
    last_error: Option<String>,
    failures_since_warn: u64,
    /// When the last upload succeeded: a failure of an attempt that
    /// started before it is stale (it was in flight across the recovery)
    /// and does not make uploads "failing" again.
    last_success_ms: Option<u64>,
}

impl UploadHealth {
    /// An upload that started at `started_ms` failed. Returns
    /// `Some(failures since the last warning)` when a warning is due.
    pub fn on_failure(&mut self, now_ms: u64, started_ms: u64, error: String) -> Option<u64> {
        if self.last_success_ms.is_some_and(|ok| started_ms < ok) {
            return None;
        }
        self.failing = true;
        self.last_error = Some(error);
        self.failures_since_warn += 1;
        let due = self
            .last_warn_ms
            .is_none_or(|last| now_ms.saturating_sub(last) >= UPLOAD_WARN_INTERVAL_MS);
        if due {
            self.last_warn_ms = Some(now_ms);
            let failures = self.failures_since_warn;
            self.failures_since_warn = 0;
            Some(failures)
        } else {
            None
        }
    }

    /// An upload succeeded at `now_ms`. Returns whether uploads were
    /// failing before.
    pub fn on_success(&mut self, now_ms: u64) -> bool {
        self.last_success_ms = Some(now_ms);
        let recovered = self.failing;
        self.failing = false;
        self.last_error = None;
        self.failures_since_warn = 0;
        self.last_warn_ms = None;
        recovered
    }

    /// The last upload error while uploads fail.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u64) -> BlockId {
        BlockId::new(1, i, 1)
    }

    fn at(segment: u64, offset: u64, len: u64) -> Location {
        Location {
            segment,
            offset,
            len,
        }
    }

    #[test]
    fn a_segment_is_freed_when_its_last_entry_leaves_and_it_is_not_appended_to() {
        let mut j = JournalState::new(1000);
        assert_eq!(j.open_segment(1), None);
        j.admit(&[(id(0), 10), (id(1), 10), (id(2), 10)], 0)
            .expect("admit");
        assert!(j.written(id(0), at(1, 0, 10)));
        assert!(j.written(id(1), at(1, 10, 10)));
        assert!(!j.written(id(1), at(1, 20, 10)), "written once");
        assert!(!j.written(id(9), at(1, 20, 10)), "not admitted");
        assert_eq!(j.open_segment(2), None, "segment 1 still holds entries");
        assert!(j.written(id(2), at(2, 0, 10)));
        j.mark_durable(&[id(0), id(1), id(2)], 0);
        assert_eq!(j.segments(), vec![1, 2]);
        for _ in 0..3 {
            j.next_upload(0).expect("due");
        }
        assert_eq!(j.upload_done(id(0)), None);
        assert_eq!(j.upload_done(id(1)), Some(1), "segment 1 is empty");
        // The active segment stays while empty; replacing it frees it.
        assert_eq!(j.active_is_empty(), None);
        assert_eq!(j.upload_done(id(2)), None);
        assert_eq!(j.active_is_empty(), Some(2));
        assert_eq!(j.open_segment(3), Some(2));
        assert_eq!(j.segments(), vec![3]);
        assert_eq!(j.active_is_empty(), Some(3));
    }

    #[test]
    fn aborted_gc_and_discarded_entries_release_their_segments() {
        let mut j = JournalState::new(1000);
        j.open_segment(1);
        j.admit(&[(id(0), 10), (id(1), 10), (id(2), 10)], 0)
            .expect("admit");
        for i in 0..3 {
            assert!(j.written(id(i), at(1, 10 * i, 10)));
        }
        j.open_segment(2);
        assert_eq!(j.abort(&[id(0)]), Vec::<u64>::new());
        j.mark_durable(&[id(1), id(2)], 0);
        assert_eq!(j.discard(id(1)), None);
        assert_eq!(
            j.remove_for_gc(id(2)),
            GcRemoval::Removed { freed: Some(1) }
        );
        assert!(j.is_empty());
        assert_eq!(j.backlog(0).bytes, 0);
        assert_eq!(j.segments(), vec![2]);
    }

    #[test]
    fn capacity_is_reserved_at_admission() {
        let mut j = JournalState::new(100);
        assert_eq!(
            j.admit(&[(id(0), 40), (id(1), 40)], 0),
            Ok(vec![id(0), id(1)])
        );
        let full = j.admit(&[(id(2), 30)], 0).expect_err("full");
        assert_eq!(
            full,
            Full {
                entries: 2,
                used_bytes: 80,
                capacity_bytes: 100,
                needed_bytes: 30
            }
        );
        // Writing entries are not uploadable.
        assert_eq!(j.next_upload(10), None);
        assert_eq!(j.abort(&[id(1)]), Vec::<u64>::new());
        assert!(!j.contains(id(1)));
        assert_eq!(j.admit(&[(id(2), 30)], 0), Ok(vec![id(2)]));
        assert_eq!(j.backlog(5).bytes, 70);
    }

    #[test]
    fn duplicates_and_recommits() {
        let mut j = JournalState::new(100);
        // The same id twice in one batch counts once.
        assert_eq!(j.admit(&[(id(0), 40), (id(0), 40)], 0), Ok(vec![id(0)]));
        assert_eq!(j.backlog(0).bytes, 40);
        // Still being written by the first commit: the second writes it too.
        assert_eq!(j.admit(&[(id(0), 40)], 0), Ok(vec![id(0)]));
        // One writer fails: the other still writes it, nothing is dropped.
        assert_eq!(j.abort(&[id(0)]), Vec::<u64>::new());
        assert!(j.contains(id(0)));
        j.mark_durable(&[id(0)], 0);
        // A writer failing after another made it durable drops nothing.
        assert_eq!(j.abort(&[id(0)]), Vec::<u64>::new());
        assert!(j.contains(id(0)));
        // Durable already: nothing to write, no bytes added.
        assert_eq!(j.admit(&[(id(0), 40)], 0), Ok(vec![]));
        assert_eq!(j.backlog(0).bytes, 40);
    }

    #[test]
    fn upload_order_retries_and_completion() {
        let mut j = JournalState::new(1000);
        for i in 0..3 {
            j.admit(&[(id(i), 10)], i).expect("admit");
        }
        j.mark_durable(&[id(2), id(0), id(1)], 5);
        assert_eq!(j.next_upload(5), Some(id(2)));
        assert_eq!(j.next_upload(5), Some(id(0)));
        assert_eq!(j.upload_failed(id(2), 100), 1);
        assert_eq!(j.next_upload(5), Some(id(1)));
        assert_eq!(j.next_upload(50), None, "retry not due yet");
        assert_eq!(j.next_due_ms(), Some(100));
        assert_eq!(j.next_upload(100), Some(id(2)));
        assert_eq!(j.attempts(id(2)), 1);
        for i in 0..3 {
            j.upload_done(id(i));
        }
        assert!(j.is_empty());
        assert_eq!(j.backlog(200), Backlog::default());
    }

    #[test]
    fn gc_and_recovery() {
        let mut j = JournalState::new(1000);
        assert!(j.recover(id(0), at(1, 0, 10), 0));
        assert!(j.recover(id(1), at(1, 10, 10), 0));
        assert!(!j.recover(id(1), at(2, 0, 10), 0), "a second copy");
        assert_eq!(j.location(id(1)), Some(at(1, 10, 10)));
        assert!(j.any_pending(&[id(1), id(9)]));
        assert_eq!(j.remove_for_gc(id(9)), GcRemoval::Absent);
        assert_eq!(j.next_upload(0), Some(id(0)));
        assert_eq!(j.remove_for_gc(id(0)), GcRemoval::Busy);
        assert_eq!(j.remove_for_gc(id(1)), GcRemoval::Removed { freed: None });
        assert_eq!(j.next_upload(0), None, "removed entry is not uploaded");
        let backlog = j.backlog(30);
        assert_eq!(
            (backlog.entries, backlog.bytes, backlog.oldest_age),
            (1, 10, Some(Duration::from_millis(30)))
        );
    }

    #[test]
    fn health_rate_limits_warnings() {
        let mut h = UploadHealth::default();
        assert!(!h.on_success(0));
        assert_eq!(h.on_failure(0, 0, "down".into()), Some(1));
        assert_eq!(h.on_failure(5_000, 5_000, "down".into()), None);
        assert_eq!(h.on_failure(9_999, 9_999, "down".into()), None);
        assert_eq!(h.on_failure(10_000, 10_000, "down again".into()), Some(3));
        assert_eq!(h.last_error(), Some("down again"));
        assert!(h.on_success(10_000));
        assert_eq!(h.last_error(), None);
        assert!(!h.on_success(10_000));
        assert_eq!(h.on_failure(10_001, 10_001, "x".into()), Some(1));
    }

    #[test]
    fn a_failure_in_flight_across_a_recovery_does_not_fail_uploads_again() {
        let mut h = UploadHealth::default();
        assert_eq!(h.on_failure(0, 0, "down".into()), Some(1));
        // One upload succeeds at 500; another, started at 400 while the
        // store was still down, fails after it: stale, not a new outage.
        assert!(h.on_success(500));
        assert_eq!(h.on_failure(600, 400, "reset".into()), None);
        assert_eq!(h.last_error(), None);
        assert!(!h.on_success(700), "recovery is logged once");
        // An attempt started after the recovery counts.
        assert_eq!(h.on_failure(800, 750, "down again".into()), Some(1));
        assert!(h.on_success(900));
    }
}
