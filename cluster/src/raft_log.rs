//! The persistent Raft log of one replica: a write-ahead log of entries,
//! hard states and configuration states in segment files, plus snapshots of
//! the state machine. Implements raft-rs's [`Storage`].
//!
//! ```text
//! <dir>/wal-<seq>.log        records: [magic u32][len u32][crc32c u32][kind u8][payload]
//! <dir>/snap-<index>-<term>.snap   [magic u64][version u32][meta len u32][meta][data len u64][data][crc32c u32]
//! ```
//! Everything a `Ready` asks to persist is appended to the write buffer and
//! made durable with one write and one `fdatasync` (group commit: every
//! proposal that arrived since the last `Ready` shares that fsync).
//!
//! A snapshot is written to its own file (in the background for the
//! replica's own snapshots, see [`SnapshotWrites`]); once it is durable the
//! log drops the entries it covers, removes the closed segments whose
//! entries it all covers, and continues in a new segment. Segments are never
//! rewritten, except when a leader's snapshot replaces the whole log. A full
//! segment is closed (synced) and a new one started; every segment but the
//! first starts with the configuration and hard state.
//!
//! Recovery: the newest snapshot is loaded (a corrupt one stops the replica
//! with an error and nothing is deleted), then the segments are replayed in
//! order; a torn or corrupt record at the end of the last segment (a crash
//! mid-write) is cut off with a warning; corruption anywhere else stops the
//! replica.

use std::cell::Cell;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use tracing::{info, warn};

/// Marks the start of every log record.
const RECORD_MAGIC: u32 = 0xD1A7_10C5;
/// Bytes before a record's payload: magic, length, CRC.
const RECORD_HEADER_BYTES: usize = 12;
/// Largest record accepted on replay (an entry carries one command).
pub const RECORD_MAX_BYTES: usize = 64 << 20;
/// A segment is closed and a new one started beyond this size.
pub const SEGMENT_BYTES_MAX: u64 = 64 << 20;
/// Marks a snapshot file.
const SNAPSHOT_MAGIC: u64 = 0x4441_5445_4e53_4e50; // "DATENSNP"
/// Version of the snapshot file format.
const SNAPSHOT_FORMAT_VERSION: u32 = 1;
/// Largest snapshot accepted when loading.
pub const SNAPSHOT_MAX_BYTES: u64 = 16 << 30;

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_CONF_STATE: u8 = 3;

/// Errors of the Raft log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An IO error, with the file and what was being done.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A snapshot file is damaged; the replica must not start on it.
    #[error("the metadata snapshot {path} is corrupt ({reason}); nothing was deleted: restore the data directory from a backup, or move this file away to start from the previous snapshot and the log")]
    CorruptSnapshot {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A log segment is damaged before its end.
    #[error("the Raft log segment {path} is corrupt at byte {offset} ({reason}); nothing was deleted: restore the data directory from a backup or rejoin this member from the others")]
    CorruptLog {
        /// The segment.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The log's entries do not follow each other.
    #[error("the Raft log in {dir} has a gap: entry {found} follows {last}; nothing was deleted")]
    Gap {
        /// The log directory.
        dir: PathBuf,
        /// Last index before the gap.
        last: u64,
        /// The entry found after it.
        found: u64,
    },
    /// An earlier write or fdatasync failed (see `RaftLog::failed`).
    #[error("an earlier write of the Raft log failed ({0}): its unsynced records may be lost, so it takes no more; restart the process (it recovers from what is on disk)")]
    Failed(String),
    /// Encoding a record failed.
    #[error("encoding a Raft record: {0}")]
    Encode(String),
    /// The thread writing a snapshot in the background ended without a result.
    #[error("the metadata snapshot writer thread failed: {0}")]
    SnapshotWriter(String),
    /// A backup cannot be restored into a directory that has a log.
    #[error("{dir} already holds a Raft log; a metadata backup is only restored into a new data directory (nothing was changed)")]
    NotEmpty {
        /// The log directory.
        dir: PathBuf,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LogError + 'a {
    move |source| LogError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A sync [`RaftLog::begin_sync`] started: the segment and how much of
/// it the fdatasync covers.
#[derive(Debug)]
pub struct PendingSync {
    /// The segment (a second descriptor of it).
    pub file: File,
    path: PathBuf,
    seq: u64,
    bytes: u64,
}

/// Where the log lives.
#[derive(Debug)]
enum Backing {
    /// Files in a directory.
    Dir {
        dir: PathBuf,
        segment: File,
        segment_path: PathBuf,
        segment_seq: u64,
        segment_bytes: u64,
        /// The highest entry index written to the current segment (0: none).
        segment_last: u64,
        /// Older segments still needed, oldest first.
        closed: Vec<ClosedSegment>,
    },
    /// Nothing on disk (tests, simulations).
    Memory,
}

/// A segment no longer written to. Once a snapshot covers `last` (the
/// highest entry index it holds) it is removed: a newer segment begins
/// with the configuration and hard state, so it holds nothing else needed.
#[derive(Debug)]
struct ClosedSegment {
    path: PathBuf,
    last: u64,
}

/// The log and snapshot of one replica.
#[derive(Debug)]
pub struct RaftLog {
    hard_state: HardState,
    conf_state: ConfState,
    /// `entries[i].index == snapshot.metadata.index + 1 + i`.
    entries: Vec<Entry>,
    /// Bytes of the commands in `entries`.
    entry_bytes: u64,
    snapshot: Snapshot,
    backing: Backing,
    pending: Vec<u8>,
    /// The highest entry index in `pending` (0: none).
    pending_last: u64,
    /// Set when a follower needs a newer snapshot than the one held.
    snapshot_wanted: Cell<bool>,
    sync: LogSync,
    /// Records written to the segment but not yet fdatasynced.
    unsynced: bool,
    /// fdatasyncs of the segment so far.
    syncs: u64,
    /// A write or fdatasync of the segment failed: the kernel may have
    /// dropped what it could not write and reports that once, so no later
    /// sync can vouch for the log; every write and sync fails from then on
    /// (a restart recovers from what is on disk).
    failed: Option<String>,
    /// Tests: the next fdatasync fails with EIO.
    #[cfg(test)]
    fail_next_sync: bool,
    /// How snapshots taken here are written.
    snapshot_writes: SnapshotWrites,
    /// The snapshot being written by a background thread (which hands it
    /// back with the outcome).
    snapshot_write: Option<JoinHandle<(Snapshot, Result<(), LogError>)>>,
    /// The thread dropping what the last compaction freed (see
    /// [`RaftLog::discard`]).
    cleanup: Option<JoinHandle<()>>,
}

/// How [`RaftLog::begin_snapshot`] writes a snapshot the replica took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SnapshotWrites {
    /// In the caller's thread: the log is compacted when `begin_snapshot`
    /// returns (deterministic: simulations, tests).
    #[default]
    InPlace,
    /// By a background thread: `begin_snapshot` returns at once and the
    /// log keeps taking entries; the first [`RaftLog::finish_snapshot`]
    /// after the file is durable compacts the log. Writing and syncing a
    /// large namespace's snapshot takes hundreds of milliseconds, which
    /// would otherwise stall every command behind it.
    Background,
}

/// When [`RaftLog::persist`] makes writes durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogSync {
    /// One fdatasync per persist (every `Ready`): required whenever the
    /// group has other members, which act on what this one acknowledged.
    #[default]
    EveryPersist,
    /// Persist writes to the file (the page cache: a killed process loses
    /// nothing) and leaves the fdatasync to [`RaftLog::sync`], which the
    /// owner calls on a timer and whenever a client asks for durability
    /// (`fsync`). Only for a single-member group (the embedded mount), where
    /// no other replica relies on the log: a machine crash loses at most
    /// the writes since the last sync, like a local file system's journal.
    Deferred,
}

impl RaftLog {
    /// A log that keeps nothing on disk.
    pub fn in_memory() -> Self {
        Self {
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            entries: Vec::new(),
            entry_bytes: 0,
            snapshot: Snapshot::default(),
            backing: Backing::Memory,
            pending: Vec::new(),
            pending_last: 0,
            snapshot_wanted: Cell::new(false),
            sync: LogSync::EveryPersist,
            unsynced: false,
            syncs: 0,
            failed: None,
            #[cfg(test)]
            fail_next_sync: false,
            snapshot_writes: SnapshotWrites::InPlace,
            snapshot_write: None,
            cleanup: None,
        }
    }

    /// Sets how snapshots taken by the replica are written (see
    /// [`SnapshotWrites`]).
    pub fn set_snapshot_writes(&mut self, writes: SnapshotWrites) {
        self.snapshot_writes = writes;
    }

    /// Sets when writes become durable (see [`LogSync`]).
    pub fn set_sync(&mut self, sync: LogSync) {
        self.sync = sync;
    }

    /// Whether records were written but not yet made durable.
    pub fn has_unsynced(&self) -> bool {
        self.unsynced || !self.pending.is_empty()
    }

    /// fdatasyncs of the segment so far (for tests and metrics).
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Opens (or creates) the log in `dir` and recovers its state.
    pub fn open(dir: &Path) -> Result<Self, LogError> {
        fs::create_dir_all(dir).map_err(io_err("create the Raft log directory", dir))?;
        remove_unfinished_snapshots(dir)?;
        let mut log = Self::in_memory();
        if let Some(path) = newest_snapshot(dir)? {
            log.snapshot = read_snapshot(&path)?;
            let meta = log.snapshot.get_metadata();
            log.conf_state = meta.get_conf_state().clone();
            log.hard_state.term = meta.term;
            log.hard_state.commit = meta.index;
            info!(index = meta.index, term = meta.term, path = %path.display(), "loaded metadata snapshot");
        }
        let segments = segments(dir)?;
        let mut closed = Vec::new();
        let mut segment_last = 0;
        for (i, (_, path)) in segments.iter().enumerate() {
            let last_segment = i + 1 == segments.len();
            let last = log.replay_segment(dir, path, last_segment)?;
            if last_segment {
                segment_last = last;
            } else {
                closed.push(ClosedSegment {
                    path: path.clone(),
                    last,
                });
            }
        }
        let segment_seq = segments.last().map_or(1, |(seq, _)| *seq);
        let segment_path = segment_path(dir, segment_seq);
        let segment = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&segment_path)
            .map_err(io_err("open the Raft log segment", &segment_path))?;
        let segment_bytes = segment
            .metadata()
            .map_err(io_err("stat", &segment_path))?
            .len();
        log.backing = Backing::Dir {
            dir: dir.to_path_buf(),
            segment,
            segment_path,
            segment_seq,
            segment_bytes,
            segment_last,
            closed,
        };
        info!(
            dir = %dir.display(),
            first = log.first_index_inner(),
            last = log.last_index_inner(),
            "Raft log recovered"
        );
        Ok(log)
    }

    /// Replays one segment; returns the highest entry index in it.
    fn replay_segment(
        &mut self,
        dir: &Path,
        path: &Path,
        last_segment: bool,
    ) -> Result<u64, LogError> {
        let mut highest = 0;
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io_err("read the Raft log segment", path))?;
        let mut offset = 0usize;
        while offset < bytes.len() {
            match decode_record(&bytes[offset..]) {
                Ok((kind, payload, used)) => {
                    let index =
                        self.replay_record(dir, kind, payload)
                            .map_err(|reason| match reason {
                                ReplayError::Gap { last, found } => LogError::Gap {
                                    dir: dir.to_path_buf(),
                                    last,
                                    found,
                                },
                                ReplayError::Bad(reason) => LogError::CorruptLog {
                                    path: path.to_path_buf(),
                                    offset: offset as u64,
                                    reason,
                                },
                            })?;
                    highest = highest.max(index);
                    offset += used;
                }
                Err(reason) if last_segment => {
                    // A torn write leaves nothing whole after it: a whole
                    // record further on means the damage is inside the
                    // log, and cutting it would lose acknowledged entries.
                    if let Some(next) = next_record(&bytes[offset + 1..]) {
                        return Err(LogError::CorruptLog {
                            path: path.to_path_buf(),
                            offset: offset as u64,
                            reason: format!(
                                "{reason}, with a whole record at byte {}: damage inside the log, not a torn write",
                                offset + 1 + next
                            ),
                        });
                    }
                    warn!(
                        path = %path.display(),
                        offset,
                        dropped_bytes = bytes.len() - offset,
                        reason,
                        "torn or corrupt tail of the Raft log (crash during a write): truncating to the last valid record"
                    );
                    let file = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(io_err("open the Raft log segment", path))?;
                    file.set_len(offset as u64)
                        .and_then(|()| file.sync_all())
                        .map_err(io_err("truncate the Raft log segment", path))?;
                    break;
                }
                Err(reason) => {
                    return Err(LogError::CorruptLog {
                        path: path.to_path_buf(),
                        offset: offset as u64,
                        reason,
                    })
                }
            }
        }
        Ok(highest)
    }

    /// Replays one record; returns its entry index (0: not an entry).
    fn replay_record(&mut self, _dir: &Path, kind: u8, payload: &[u8]) -> Result<u64, ReplayError> {
        match kind {
            KIND_ENTRY => {
                let entry = Entry::parse_from_bytes(payload)
                    .map_err(|e| ReplayError::Bad(e.to_string()))?;
                let snapshot_index = self.snapshot.get_metadata().index;
                let index = entry.index;
                if index <= snapshot_index {
                    return Ok(index);
                }
                let last = self.last_index_inner();
                if entry.index > last + 1 {
                    return Err(ReplayError::Gap {
                        last,
                        found: entry.index,
                    });
                }
                self.truncate_entries((entry.index - snapshot_index - 1) as usize);
                self.push_entry(entry);
                return Ok(index);
            }
            KIND_HARD_STATE => {
                let hs = HardState::parse_from_bytes(payload)
                    .map_err(|e| ReplayError::Bad(e.to_string()))?;
                // A hard state never moves the commit below the snapshot.
                let commit = hs.commit.max(self.snapshot.get_metadata().index);
                self.hard_state = hs;
                self.hard_state.commit = commit;
            }
            KIND_CONF_STATE => {
                self.conf_state = ConfState::parse_from_bytes(payload)
                    .map_err(|e| ReplayError::Bad(e.to_string()))?;
            }
            other => return Err(ReplayError::Bad(format!("unknown record kind {other}"))),
        }
        Ok(0)
    }

    fn first_index_inner(&self) -> u64 {
        self.snapshot.get_metadata().index + 1
    }

    fn last_index_inner(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot.get_metadata().index, |e| e.index)
    }

    /// The hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The configuration state.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The latest snapshot held.
    pub fn latest_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Whether a follower asked for a snapshot newer than the one held.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    /// Entries held (not yet compacted into a snapshot).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sets the configuration of a brand-new log (bootstrap of a group).
    pub fn initialize(&mut self, conf_state: ConfState) -> Result<(), LogError> {
        debug_assert!(self.entries.is_empty() && self.snapshot.get_metadata().index == 0);
        self.set_conf_state(conf_state)?;
        self.sync()
    }

    /// Appends entries (replacing any conflicting suffix); durable after [`Self::sync`].
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), LogError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let snapshot_index = self.snapshot.get_metadata().index;
        assert!(
            first.index > snapshot_index && first.index <= self.last_index_inner() + 1,
            "Raft appended entry {} outside [{}, {}]",
            first.index,
            snapshot_index + 1,
            self.last_index_inner() + 1
        );
        self.truncate_entries((first.index - snapshot_index - 1) as usize);
        for entry in entries {
            let bytes = entry
                .write_to_bytes()
                .map_err(|e| LogError::Encode(e.to_string()))?;
            encode_record(&mut self.pending, KIND_ENTRY, &bytes);
            self.pending_last = self.pending_last.max(entry.index);
            self.push_entry(entry.clone());
        }
        Ok(())
    }

    /// Bytes of the commands held (not yet compacted into a snapshot).
    pub fn entry_bytes(&self) -> u64 {
        self.entry_bytes
    }

    fn push_entry(&mut self, entry: Entry) {
        self.entry_bytes += entry.data.len() as u64;
        self.entries.push(entry);
    }

    /// Keeps the first `len` entries.
    fn truncate_entries(&mut self, len: usize) {
        if let Some(dropped) = self.entries.get(len..) {
            self.entry_bytes -= command_bytes(dropped);
            self.entries.truncate(len);
        }
    }

    /// Takes the first `count` entries out (compacted into a snapshot).
    fn drain_entries(&mut self, count: usize) -> Vec<Entry> {
        let count = count.min(self.entries.len());
        self.entry_bytes -= command_bytes(&self.entries[..count]);
        let rest = self.entries.split_off(count);
        std::mem::replace(&mut self.entries, rest)
    }

    /// Sets the hard state; durable after [`Self::sync`].
    pub fn set_hard_state(&mut self, hs: HardState) -> Result<(), LogError> {
        let bytes = hs
            .write_to_bytes()
            .map_err(|e| LogError::Encode(e.to_string()))?;
        encode_record(&mut self.pending, KIND_HARD_STATE, &bytes);
        self.hard_state = hs;
        Ok(())
    }

    /// Records a new commit index (from a light ready); durable after [`Self::sync`].
    pub fn set_commit(&mut self, commit: u64) -> Result<(), LogError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(hs)
    }

    /// Sets the configuration state; durable after [`Self::sync`].
    pub fn set_conf_state(&mut self, cs: ConfState) -> Result<(), LogError> {
        let bytes = cs
            .write_to_bytes()
            .map_err(|e| LogError::Encode(e.to_string()))?;
        encode_record(&mut self.pending, KIND_CONF_STATE, &bytes);
        self.conf_state = cs;
        Ok(())
    }

    /// Writes what was appended so far per the [`LogSync`] policy: written
    /// and fdatasynced (`EveryPersist`), or only written (`Deferred`).
    pub fn persist(&mut self) -> Result<(), LogError> {
        match self.sync {
            LogSync::EveryPersist => self.sync(),
            LogSync::Deferred => self.write_pending(),
        }
    }

    /// Writes pending records to the segment without an fdatasync: they
    /// survive the process, not the machine, until the next [`Self::sync`].
    pub fn write_pending(&mut self) -> Result<(), LogError> {
        self.check_failed()?;
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Backing::Dir {
            segment,
            segment_path,
            segment_bytes,
            segment_last,
            ..
        } = &mut self.backing
        {
            if let Err(e) = segment.write_all(&self.pending) {
                self.failed = Some(format!("writing {}: {e}", segment_path.display()));
                return Err(io_err("write the Raft log segment", segment_path)(e));
            }
            *segment_bytes += self.pending.len() as u64;
            *segment_last = (*segment_last).max(self.pending_last);
            self.unsynced = true;
        }
        self.pending.clear();
        self.pending_last = 0;
        if self.segment_full() {
            self.start_segment()?;
        }
        Ok(())
    }

    /// Makes everything appended so far durable: one write, one fdatasync.
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.write_pending()?;
        if !self.unsynced {
            return Ok(());
        }
        let fault = self.injected_sync_fault();
        if let Backing::Dir {
            segment,
            segment_path,
            ..
        } = &mut self.backing
        {
            let synced = fault.map_or_else(|| segment.sync_data(), Err);
            if let Err(e) = synced {
                self.failed = Some(format!("fdatasync of {}: {e}", segment_path.display()));
                return Err(io_err("sync the Raft log segment", segment_path)(e));
            }
            self.syncs += 1;
        }
        self.unsynced = false;
        Ok(())
    }

    /// [`Self::sync`] in three steps, so that the fdatasync itself can run
    /// without the caller's lock on the log (other rounds keep writing
    /// meanwhile): writes what is pending and returns the segment to sync
    /// (`None`: nothing unsynced). Hand the fdatasync's result to
    /// [`Self::end_sync`].
    pub fn begin_sync(&mut self) -> Result<Option<PendingSync>, LogError> {
        self.write_pending()?;
        if !self.unsynced {
            return Ok(None);
        }
        let Backing::Dir {
            segment,
            segment_path,
            segment_seq,
            segment_bytes,
            ..
        } = &self.backing
        else {
            self.unsynced = false;
            return Ok(None);
        };
        let file = segment.try_clone().map_err(io_err(
            "duplicate the Raft log segment's descriptor",
            segment_path,
        ))?;
        Ok(Some(PendingSync {
            file,
            path: segment_path.clone(),
            seq: *segment_seq,
            bytes: *segment_bytes,
        }))
    }

    /// Takes the outcome of a [`Self::begin_sync`]'s fdatasync: the log is
    /// synced if nothing was written to the segment since; a failure fails
    /// the log as one of [`Self::sync`] would.
    pub fn end_sync(
        &mut self,
        pending: &PendingSync,
        result: std::io::Result<()>,
    ) -> Result<(), LogError> {
        let result = match self.injected_sync_fault() {
            Some(fault) => Err(fault),
            None => result,
        };
        if let Err(e) = result {
            self.failed = Some(format!("fdatasync of {}: {e}", pending.path.display()));
            return Err(io_err("sync the Raft log segment", &pending.path)(e));
        }
        self.syncs += 1;
        if let Backing::Dir {
            segment_seq,
            segment_bytes,
            ..
        } = &self.backing
        {
            if *segment_seq == pending.seq && *segment_bytes == pending.bytes {
                self.unsynced = false;
            }
        }
        Ok(())
    }

    /// A failure tests inject into the next fdatasync.
    #[cfg(test)]
    fn injected_sync_fault(&mut self) -> Option<std::io::Error> {
        std::mem::take(&mut self.fail_next_sync)
            .then(|| std::io::Error::from_raw_os_error(libc::EIO))
    }

    #[cfg(not(test))]
    #[allow(clippy::unused_self)]
    fn injected_sync_fault(&mut self) -> Option<std::io::Error> {
        None
    }

    /// The error of every write and sync after one failed.
    fn check_failed(&self) -> Result<(), LogError> {
        match &self.failed {
            Some(first) => Err(LogError::Failed(first.clone())),
            None => Ok(()),
        }
    }

    fn segment_full(&self) -> bool {
        matches!(self.backing, Backing::Dir { segment_bytes, .. } if segment_bytes > SEGMENT_BYTES_MAX)
    }

    /// Starts a new log in `dir` from a state-machine snapshot taken
    /// elsewhere (a metadata backup): the group of `voters` begins at
    /// `index` with `data` applied. Refuses a directory that already holds
    /// a log, so nothing is ever overwritten.
    pub fn seed(dir: &Path, voters: &[u64], index: u64, data: Vec<u8>) -> Result<(), LogError> {
        let has_log = !segments(dir)?.is_empty() || !snapshot_files(dir)?.is_empty();
        if has_log {
            return Err(LogError::NotEmpty {
                dir: dir.to_path_buf(),
            });
        }
        let mut log = Self::open(dir)?;
        let mut snapshot = Snapshot::default();
        let meta = snapshot.mut_metadata();
        meta.index = index.max(1);
        meta.term = 1;
        let mut cs = ConfState::default();
        cs.set_voters(voters.to_vec());
        meta.set_conf_state(cs);
        snapshot.data = data.into();
        log.install_snapshot(snapshot)?;
        log.sync()
    }

    /// Installs a snapshot of the state machine at `meta.index` (made
    /// locally or received from the leader): it is written durably, entries
    /// up to its index are dropped, and files no longer needed are removed.
    pub fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<(), LogError> {
        if snapshot.get_metadata().index <= self.snapshot.get_metadata().index {
            return Ok(());
        }
        if let Backing::Dir { dir, .. } = &self.backing {
            write_snapshot(dir, &snapshot)?;
        }
        self.adopt_snapshot(snapshot)
    }

    /// Takes a snapshot the replica made of its state machine: written and
    /// the log compacted now, or (with [`SnapshotWrites::Background`] and a
    /// log on disk) written by a background thread while the log goes on,
    /// and adopted by a later [`Self::finish_snapshot`]. Ignored while an
    /// earlier snapshot is still being written.
    pub fn begin_snapshot(&mut self, snapshot: Snapshot) -> Result<(), LogError> {
        if self.snapshot_write.is_some() {
            return Ok(());
        }
        let dir = match (&self.backing, self.snapshot_writes) {
            (Backing::Dir { dir, .. }, SnapshotWrites::Background) => dir.clone(),
            _ => return self.install_snapshot(snapshot),
        };
        if snapshot.get_metadata().index <= self.snapshot.get_metadata().index {
            return Ok(());
        }
        // The data is shared, not copied.
        let handed = snapshot.clone();
        let spawned = std::thread::Builder::new()
            .name("raft-snapshot".into())
            .spawn(move || {
                let written = write_snapshot(&dir, &handed);
                (handed, written)
            });
        match spawned {
            Ok(thread) => {
                self.snapshot_write = Some(thread);
                Ok(())
            }
            Err(e) => {
                warn!(error = %e, "cannot start the snapshot writer; writing the snapshot in place");
                self.install_snapshot(snapshot)
            }
        }
    }

    /// Whether a snapshot is being written in the background.
    pub fn snapshot_in_progress(&self) -> bool {
        self.snapshot_write.is_some()
    }

    /// Adopts the background snapshot once its file is durable: the log
    /// is compacted up to it. Returns whether that happened now; a failed
    /// write is returned as the error (the log stays as it was).
    pub fn finish_snapshot(&mut self) -> Result<bool, LogError> {
        if !self
            .snapshot_write
            .as_ref()
            .is_some_and(JoinHandle::is_finished)
        {
            return Ok(false);
        }
        self.wait_snapshot()
    }

    /// Waits for the background snapshot (if any) and adopts it.
    pub fn wait_snapshot(&mut self) -> Result<bool, LogError> {
        let Some(thread) = self.snapshot_write.take() else {
            return Ok(false);
        };
        let (snapshot, written) = thread
            .join()
            .map_err(|_| LogError::SnapshotWriter("it panicked".into()))?;
        written?;
        let meta = snapshot.get_metadata();
        if meta.index <= self.snapshot.get_metadata().index {
            // A leader's newer snapshot was installed meanwhile.
            if let Backing::Dir { dir, .. } = &self.backing {
                // (Gone already if it was written before that install.)
                let stale = dir.join(snapshot_file_name(meta));
                match fs::remove_file(&stale) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io_err("remove a superseded snapshot", &stale)(e));
                    }
                    _ => {}
                }
            }
            return Ok(false);
        }
        self.adopt_snapshot(snapshot)?;
        Ok(true)
    }

    /// Makes `snapshot`, already durable in its file, the log's base:
    /// entries up to its index are dropped and older files removed.
    fn adopt_snapshot(&mut self, snapshot: Snapshot) -> Result<(), LogError> {
        let meta: SnapshotMetadata = snapshot.get_metadata().clone();
        let index = meta.index;
        let keep_from = index.saturating_sub(self.snapshot.get_metadata().index) as usize;
        let keeps_suffix = self
            .entries
            .get(keep_from.wrapping_sub(1))
            .is_some_and(|e| e.term == meta.term);
        self.conf_state = meta.get_conf_state().clone();
        if keeps_suffix {
            // Local compaction: entries after the snapshot stay, in memory
            // and in their segments; segments it covers go, and a new one
            // starts, so that the next snapshot covers the current one.
            let compacted = self.drain_entries(keep_from);
            self.snapshot = snapshot;
            let files = self.take_covered()?;
            self.discard(compacted, files);
            self.start_segment()
        } else {
            // A leader's snapshot replaces the whole log.
            self.entries.clear();
            self.entry_bytes = 0;
            self.hard_state.term = self.hard_state.term.max(meta.term);
            self.hard_state.commit = self.hard_state.commit.max(index);
            self.snapshot = snapshot;
            self.roll_segment()
        }
    }

    /// The records a segment starts with: the configuration and the hard
    /// state, so that it needs no older segment for them.
    fn segment_header(&self) -> Result<Vec<u8>, LogError> {
        let mut buf = Vec::new();
        let cs = self
            .conf_state
            .write_to_bytes()
            .map_err(|e| LogError::Encode(e.to_string()))?;
        encode_record(&mut buf, KIND_CONF_STATE, &cs);
        let hs = self
            .hard_state
            .write_to_bytes()
            .map_err(|e| LogError::Encode(e.to_string()))?;
        encode_record(&mut buf, KIND_HARD_STATE, &hs);
        Ok(buf)
    }

    /// Closes the current segment (made durable first) and continues in a
    /// new one that starts with [`Self::segment_header`] and the pending
    /// records. Nothing already written is written again.
    fn start_segment(&mut self) -> Result<(), LogError> {
        if matches!(self.backing, Backing::Memory) {
            return Ok(());
        }
        self.check_failed()?;
        let mut buf = self.segment_header()?;
        buf.extend_from_slice(&self.pending);
        let Backing::Dir {
            dir,
            segment,
            segment_path: current_path,
            segment_seq,
            segment_bytes,
            segment_last,
            closed,
        } = &mut self.backing
        else {
            return Ok(());
        };
        if self.unsynced {
            segment
                .sync_data()
                .map_err(io_err("sync the Raft log segment", current_path))?;
            self.syncs += 1;
        }
        let seq = *segment_seq + 1;
        let path = segment_path(dir, seq);
        let new = create_segment(&path, &buf)?;
        sync_dir(dir)?;
        closed.push(ClosedSegment {
            path: std::mem::replace(current_path, path),
            last: *segment_last,
        });
        *segment = new;
        *segment_seq = seq;
        *segment_bytes = buf.len() as u64;
        *segment_last = self.pending_last;
        self.pending.clear();
        self.pending_last = 0;
        self.unsynced = false;
        Ok(())
    }

    /// Takes the closed segments and the snapshot files the current
    /// snapshot covers off the log's books; returns their paths.
    fn take_covered(&mut self) -> Result<Vec<PathBuf>, LogError> {
        let snapshot_index = self.snapshot.get_metadata().index;
        let Backing::Dir { dir, closed, .. } = &mut self.backing else {
            return Ok(Vec::new());
        };
        let (covered, needed): (Vec<_>, Vec<_>) = std::mem::take(closed)
            .into_iter()
            .partition(|c| c.last <= snapshot_index);
        *closed = needed;
        let mut files: Vec<PathBuf> = covered.into_iter().map(|c| c.path).collect();
        for (index, old_path) in snapshot_files(dir)? {
            if index < snapshot_index {
                files.push(old_path);
            }
        }
        Ok(files)
    }

    /// Waits for the last [`Self::discard`] to be done.
    fn join_cleanup(&mut self) {
        if let Some(thread) = self.cleanup.take() {
            let _ = thread.join();
        }
    }

    /// Frees compacted entries and removes covered files: on a background
    /// thread with [`SnapshotWrites::Background`] (a large log's entries
    /// and files take tens of milliseconds to free), else here. Files left
    /// by a failure are harmless: replay skips what the snapshot covers,
    /// and the next start takes them on its books again.
    fn discard(&mut self, entries: Vec<Entry>, files: Vec<PathBuf>) {
        let work = move || {
            drop(entries);
            for path in files {
                if let Err(e) = fs::remove_file(&path) {
                    warn!(path = %path.display(), error = %e, "cannot remove an old Raft log file");
                }
            }
        };
        self.join_cleanup();
        if self.snapshot_writes == SnapshotWrites::InPlace {
            work();
            return;
        }
        match std::thread::Builder::new()
            .name("raft-cleanup".into())
            .spawn(work)
        {
            Ok(thread) => self.cleanup = Some(thread),
            Err(e) => {
                warn!(error = %e, "cannot start the Raft log cleanup; old files stay until the next start");
            }
        }
    }

    /// Starts a new segment holding the whole current state, then removes
    /// older segments and snapshots. A crash at any point leaves a log that
    /// replays to the same state.
    fn roll_segment(&mut self) -> Result<(), LogError> {
        let Backing::Dir {
            dir, segment_seq, ..
        } = &self.backing
        else {
            return Ok(());
        };
        let dir = dir.clone();
        let seq = *segment_seq + 1;
        let path = segment_path(&dir, seq);
        let mut buf = self.segment_header()?;
        for entry in &self.entries {
            let bytes = entry
                .write_to_bytes()
                .map_err(|e| LogError::Encode(e.to_string()))?;
            encode_record(&mut buf, KIND_ENTRY, &bytes);
        }
        buf.extend_from_slice(&self.pending);
        self.pending.clear();
        self.pending_last = 0;
        let segment = create_segment(&path, &buf)?;
        sync_dir(&dir)?;
        self.unsynced = false;
        let segment_bytes = buf.len() as u64;
        self.backing = Backing::Dir {
            dir: dir.clone(),
            segment,
            segment_path: path,
            segment_seq: seq,
            segment_bytes,
            segment_last: self.last_index_inner(),
            closed: Vec::new(),
        };
        // Removed before returning: older segments may hold entries that
        // conflict with the new state, which a replay must never see.
        let mut files: Vec<PathBuf> = segments(&dir)?
            .into_iter()
            .filter(|(old, _)| *old < seq)
            .map(|(_, path)| path)
            .collect();
        files.extend(self.take_covered()?);
        for path in files {
            fs::remove_file(&path).map_err(io_err("remove an old Raft log file", &path))?;
        }
        // Durably gone: a crash must not bring a conflicting segment back.
        sync_dir(&dir)
    }
}

/// Creates segment `path` holding `records`, durable.
fn create_segment(path: &Path, records: &[u8]) -> Result<File, LogError> {
    let mut segment = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io_err("create the Raft log segment", path))?;
    segment
        .write_all(records)
        .and_then(|()| segment.sync_all())
        .map_err(io_err("write the Raft log segment", path))?;
    Ok(segment)
}

enum ReplayError {
    Gap { last: u64, found: u64 },
    Bad(String),
}

impl Drop for RaftLog {
    /// A snapshot being written is finished (not adopted: its file and the
    /// log replay to the same state), so no writer outlives its log.
    fn drop(&mut self) {
        if let Some(thread) = self.snapshot_write.take() {
            let _ = thread.join();
        }
        self.join_cleanup();
    }
}

impl Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let first = self.first_index_inner();
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index_inner() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut entries = self.entries[(low - first) as usize..(high - first) as usize].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let meta = self.snapshot.get_metadata();
        if idx == meta.index {
            return Ok(meta.term);
        }
        if idx < meta.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.entries
            .get((idx - meta.index - 1) as usize)
            .map(|e| e.term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index_inner())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index_inner())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let meta = self.snapshot.get_metadata();
        let conf = meta.get_conf_state();
        // A member that joined after the snapshot would reject it (it is not
        // in its configuration): make a newer one first.
        let knows_receiver = conf.get_voters().contains(&to) || conf.get_learners().contains(&to);
        if meta.index < request_index || meta.index == 0 || !knows_receiver {
            self.snapshot_wanted.set(true);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

/// Bytes of the commands of `entries`.
fn command_bytes(entries: &[Entry]) -> u64 {
    entries.iter().map(|e| e.data.len() as u64).sum()
}

fn encode_record(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let len = (payload.len() + 1) as u32;
    let mut crc = crc32c::crc32c(&[kind]);
    crc = crc32c::crc32c_append(crc, payload);
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

/// The offset of the first whole record in `bytes`, looking at every
/// place the record magic appears.
fn next_record(bytes: &[u8]) -> Option<usize> {
    let magic = RECORD_MAGIC.to_le_bytes();
    (0..bytes.len())
        .find(|&at| bytes[at..].starts_with(&magic) && decode_record(&bytes[at..]).is_ok())
}

/// One record at the start of `bytes`: its kind, payload and total size.
fn decode_record(bytes: &[u8]) -> Result<(u8, &[u8], usize), String> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let (Some(magic), Some(len), Some(crc)) = (word(0), word(4), word(8)) else {
        return Err(format!(
            "{} bytes left, less than a record header",
            bytes.len()
        ));
    };
    if magic != RECORD_MAGIC {
        return Err(format!("bad record magic {magic:#x}"));
    }
    let len = len as usize;
    if len == 0 || len > RECORD_MAX_BYTES {
        return Err(format!("record length {len} out of range"));
    }
    let Some(body) = bytes.get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len) else {
        return Err(format!("record of {len} bytes cut short"));
    };
    if crc32c::crc32c(body) != crc {
        return Err("record checksum mismatch".into());
    }
    Ok((body[0], &body[1..], RECORD_HEADER_BYTES + len))
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("wal-{seq:016}.log"))
}

fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut found = numbered_files(dir, "wal-", ".log")?
        .into_iter()
        .map(|(n, _, p)| (n, p))
        .collect::<Vec<_>>();
    found.sort();
    Ok(found)
}

fn snapshot_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut found = numbered_files(dir, "snap-", ".snap")?
        .into_iter()
        .map(|(n, _, p)| (n, p))
        .collect::<Vec<_>>();
    found.sort();
    Ok(found)
}

fn newest_snapshot(dir: &Path) -> Result<Option<PathBuf>, LogError> {
    Ok(snapshot_files(dir)?.pop().map(|(_, p)| p))
}

/// Files named `<prefix><number>[-...]<suffix>`.
fn numbered_files(
    dir: &Path,
    prefix: &str,
    suffix: &str,
) -> Result<Vec<(u64, String, PathBuf)>, LogError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(middle) = name
            .strip_prefix(prefix)
            .and_then(|n| n.strip_suffix(suffix))
        else {
            continue;
        };
        let number = middle.split('-').next().and_then(|n| n.parse::<u64>().ok());
        if let Some(number) = number {
            out.push((number, name.clone(), entry.path()));
        }
    }
    Ok(out)
}

fn snapshot_file_name(meta: &SnapshotMetadata) -> String {
    format!("snap-{:020}-{:020}.snap", meta.index, meta.term)
}

/// Suffix of a snapshot file being written (renamed once durable).
const SNAPSHOT_TMP_SUFFIX: &str = ".snap.tmp";

/// Removes snapshot files whose write never finished (a crash meanwhile).
fn remove_unfinished_snapshots(dir: &Path) -> Result<(), LogError> {
    for (_, _, path) in numbered_files(dir, "snap-", SNAPSHOT_TMP_SUFFIX)? {
        warn!(path = %path.display(), "removing a snapshot whose write did not finish");
        fs::remove_file(&path).map_err(io_err("remove an unfinished snapshot", &path))?;
    }
    Ok(())
}

fn write_snapshot(dir: &Path, snapshot: &Snapshot) -> Result<(), LogError> {
    let meta = snapshot.get_metadata();
    let name = snapshot_file_name(meta);
    let path = dir.join(&name);
    // `snap-<index>-<term>.snap.tmp`: ends in SNAPSHOT_TMP_SUFFIX.
    let tmp = dir.join(format!("{name}.tmp"));
    let meta_bytes = meta
        .write_to_bytes()
        .map_err(|e| LogError::Encode(e.to_string()))?;
    let data = snapshot.get_data();
    // Header, data and checksum written in turn: the data (tens of MB for
    // a large namespace) is not copied.
    let mut head = Vec::with_capacity(24 + meta_bytes.len());
    head.extend_from_slice(&SNAPSHOT_MAGIC.to_le_bytes());
    head.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    head.extend_from_slice(&(meta_bytes.len() as u32).to_le_bytes());
    head.extend_from_slice(&meta_bytes);
    head.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&head), data);
    let mut file = File::create(&tmp).map_err(io_err("create the snapshot", &tmp))?;
    file.write_all(&head)
        .and_then(|()| file.write_all(data))
        .and_then(|()| file.write_all(&crc.to_le_bytes()))
        .and_then(|()| file.sync_all())
        .map_err(io_err("write the snapshot", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("rename the snapshot", &path))?;
    sync_dir(dir)
}

fn read_snapshot(path: &Path) -> Result<Snapshot, LogError> {
    let corrupt = |reason: &str| LogError::CorruptSnapshot {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let len = fs::metadata(path)
        .map_err(io_err("stat the snapshot", path))?
        .len();
    if len > SNAPSHOT_MAX_BYTES {
        return Err(corrupt("larger than any snapshot this version writes"));
    }
    let bytes = fs::read(path).map_err(io_err("read the snapshot", path))?;
    if bytes.len() < 28 {
        return Err(corrupt("too short"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_le_bytes(crc.try_into().map_err(|_| corrupt("no checksum"))?);
    if crc32c::crc32c(body) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    let u64_at = |at: usize| {
        body.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let u32_at = |at: usize| {
        body.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    if u64_at(0) != Some(SNAPSHOT_MAGIC) {
        return Err(corrupt("not a DatenLord metadata snapshot"));
    }
    if u32_at(8) != Some(SNAPSHOT_FORMAT_VERSION) {
        return Err(corrupt("written by an unknown format version"));
    }
    let meta_len = u32_at(12).ok_or_else(|| corrupt("truncated"))? as usize;
    let meta_bytes = body
        .get(16..16 + meta_len)
        .ok_or_else(|| corrupt("truncated metadata"))?;
    let data_len = u64_at(16 + meta_len).ok_or_else(|| corrupt("truncated"))? as usize;
    let data_start = 24 + meta_len;
    let data = body
        .get(data_start..data_start + data_len)
        .ok_or_else(|| corrupt("truncated data"))?;
    if data_start + data_len != body.len() {
        return Err(corrupt("trailing bytes"));
    }
    let meta =
        SnapshotMetadata::parse_from_bytes(meta_bytes).map_err(|e| corrupt(&e.to_string()))?;
    let mut snapshot = Snapshot::default();
    snapshot.set_metadata(meta);
    snapshot.set_data(data.to_vec().into());
    Ok(snapshot)
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync the directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    fn conf(voters: &[u64]) -> ConfState {
        let mut cs = ConfState::default();
        cs.set_voters(voters.to_vec());
        cs
    }

    fn indexes(log: &RaftLog) -> Vec<(u64, u64)> {
        log.entries.iter().map(|e| (e.index, e.term)).collect()
    }

    #[test]
    fn deferred_sync_writes_at_once_and_syncs_only_when_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = RaftLog::open(dir.path()).expect("open");
        log.set_sync(LogSync::Deferred);
        log.initialize(conf(&[1])).expect("init");
        log.sync().expect("sync");
        let base = log.syncs();
        for i in 1..=10 {
            log.append(&[entry(i, 1, b"x")]).expect("append");
            log.persist().expect("persist");
        }
        assert_eq!(log.syncs(), base, "no fdatasync per persist");
        assert!(log.has_unsynced());
        // Written to the file already: a process that dies now (the log
        // dropped without a sync) loses nothing.
        let reopened = RaftLog::open(dir.path()).expect("reopen");
        assert_eq!(reopened.len(), 10);
        drop(reopened);
        log.sync().expect("sync");
        assert_eq!(log.syncs(), base + 1);
        assert!(!log.has_unsynced());
        log.sync().expect("nothing to sync");
        assert_eq!(log.syncs(), base + 1, "an idle sync costs nothing");
    }

    #[test]
    fn every_persist_syncs_each_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = RaftLog::open(dir.path()).expect("open");
        log.initialize(conf(&[1])).expect("init");
        log.sync().expect("sync");
        let base = log.syncs();
        for i in 1..=3 {
            log.append(&[entry(i, 1, b"x")]).expect("append");
            log.persist().expect("persist");
            assert!(!log.has_unsynced());
        }
        assert_eq!(log.syncs(), base + 3);
        // Written but not synced (the commit index): durable at the next sync.
        log.set_commit(3).expect("commit");
        log.write_pending().expect("write");
        assert!(log.has_unsynced());
        assert_eq!(
            RaftLog::open(dir.path())
                .expect("reopen")
                .hard_state()
                .commit,
            3
        );
    }

    #[test]
    fn seed_starts_a_log_from_a_backup_and_refuses_an_existing_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        RaftLog::seed(dir.path(), &[1], 42, b"state".to_vec()).expect("seed");
        let log = RaftLog::open(dir.path()).expect("reopen");
        let meta = log.latest_snapshot().get_metadata();
        assert_eq!((meta.index, meta.term), (42, 1));
        assert_eq!(meta.get_conf_state().get_voters(), &[1]);
        assert_eq!(log.latest_snapshot().get_data(), b"state");
        assert_eq!(log.hard_state().commit, 42);
        let err = RaftLog::seed(dir.path(), &[1], 7, b"other".to_vec()).expect_err("refused");
        assert!(matches!(err, LogError::NotEmpty { .. }), "{err}");
        let log = RaftLog::open(dir.path()).expect("still there");
        assert_eq!(log.latest_snapshot().get_data(), b"state");
    }

    #[test]
    fn entries_survive_reopen_and_conflicts_are_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = RaftLog::open(dir.path()).expect("open");
        log.initialize(conf(&[1])).expect("init");
        log.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")])
            .expect("append");
        let hs = HardState {
            term: 1,
            commit: 2,
            ..Default::default()
        };
        log.set_hard_state(hs).expect("hs");
        log.sync().expect("sync");
        // A new leader overwrites index 3.
        log.append(&[entry(3, 2, b"Cc"), entry(4, 2, b"ddd")])
            .expect("append");
        log.sync().expect("sync");
        assert_eq!(
            log.entry_bytes(),
            1 + 1 + 2 + 3,
            "the replaced entry no longer counts"
        );
        drop(log);
        let log = RaftLog::open(dir.path()).expect("reopen");
        assert_eq!(indexes(&log), vec![(1, 1), (2, 1), (3, 2), (4, 2)]);
        assert_eq!(log.entry_bytes(), 7, "replay counts as append does");
        assert_eq!(log.hard_state().commit, 2);
        assert_eq!(log.conf_state().get_voters(), &[1]);
        assert_eq!(log.term(3).ok(), Some(2));
        assert_eq!(
            log.entries(2, 4, None, GetEntriesContext::empty(false))
                .map(|e| e.len())
                .ok(),
            Some(2)
        );
    }

    /// A log of entries 1..=10, each synced; its last segment.
    fn ten_synced_entries(dir: &Path) -> PathBuf {
        let mut log = RaftLog::open(dir).expect("open");
        log.initialize(conf(&[1])).expect("init");
        for i in 1..=10 {
            log.append(&[entry(i, 1, &[i as u8; 100])]).expect("append");
            log.sync().expect("sync");
        }
        drop(log);
        let (_, seg) = segments(dir).expect("segments").pop().expect("one segment");
        seg
    }

    #[test]
    fn a_torn_tail_is_truncated_with_the_valid_prefix_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seg = ten_synced_entries(dir.path());
        let len = fs::metadata(&seg).expect("stat").len();
        // Crash mid-write of the last record.
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("open")
            .set_len(len - 30)
            .expect("cut");
        let log = RaftLog::open(dir.path()).expect("reopen truncates");
        assert_eq!(log.last_index_inner(), 9);
        // Garbage after a valid prefix is cut too.
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&seg).expect("open");
        f.write_all(&[0xAB; 77]).expect("garbage");
        drop(f);
        let mut log = RaftLog::open(dir.path()).expect("reopen");
        assert_eq!(log.last_index_inner(), 9);
        log.append(&[entry(10, 1, b"again")]).expect("append");
        log.sync().expect("sync");
        drop(log);
        assert_eq!(
            RaftLog::open(dir.path())
                .expect("reopen")
                .last_index_inner(),
            10
        );
    }

    #[test]
    fn a_sync_split_around_the_lock_covers_only_what_was_written_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = RaftLog::open(dir.path()).expect("open");
        log.set_sync(LogSync::Deferred);
        log.initialize(conf(&[1])).expect("init");
        log.sync().expect("sync");
        assert!(
            log.begin_sync().expect("begin").is_none(),
            "nothing to sync"
        );
        let base = log.syncs();
        log.append(&[entry(1, 1, b"a")]).expect("append");
        log.persist().expect("persist");
        let pending = log.begin_sync().expect("begin").expect("a sync to run");
        // Another round writes while the fdatasync runs without the lock.
        log.append(&[entry(2, 1, b"b")]).expect("append");
        log.persist().expect("persist");
        let synced = pending.file.sync_data();
        log.end_sync(&pending, synced).expect("end");
        assert_eq!(log.syncs(), base + 1);
        assert!(log.has_unsynced(), "entry 2 came after the sync began");
        let pending = log.begin_sync().expect("begin").expect("a sync to run");
        let synced = pending.file.sync_data();
        log.end_sync(&pending, synced).expect("end");
        assert!(!log.has_unsynced());
        // A failed fdatasync fails the log, as a failed `sync` does.
        log.append(&[entry(3, 1, b"c")]).expect("append");
        log.persist().expect("persist");
        let pending = log.begin_sync().expect("begin").expect("a sync to run");
        let eio = std::io::Error::from_raw_os_error(libc::EIO);
        let err = log
            .end_sync(&pending, Err(eio))
            .expect_err("EIO")
            .to_string();
        assert!(err.contains("sync the Raft log segment"), "{err}");
        assert!(log
            .sync()
            .expect_err("failed for good")
            .to_string()
            .contains("restart"));
    }

    #[test]
    fn after_a_failed_sync_no_write_or_sync_succeeds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = RaftLog::open(dir.path()).expect("open");
        log.initialize(conf(&[1])).expect("init");
        log.append(&[entry(1, 1, b"a")]).expect("append");
        log.sync().expect("sync");
        log.append(&[entry(2, 1, b"b")]).expect("append");
        log.fail_next_sync = true;
        let err = log.sync().expect_err("injected EIO").to_string();
        assert!(err.contains("sync the Raft log segment"), "{err}");
        // The kernel reports a writeback error once: a second fdatasync
        // would succeed, and must not be believed.
        let again = log.sync().expect_err("still failed").to_string();
        assert!(again.contains("restart the process"), "{again}");
        log.append(&[entry(3, 1, b"c")]).expect("append in memory");
        assert!(log.persist().is_err());
        // A restart reads back what is on disk.
        drop(log);
        let log = RaftLog::open(dir.path()).expect("reopen");
        assert!(log.last_index_inner() >= 1);
    }

    #[test]
    fn damage_inside_the_last_segment_is_not_cut_as_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seg = ten_synced_entries(dir.path());
        let mut bytes = fs::read(&seg).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x10;
        fs::write(&seg, &bytes).expect("damage");
        let err = RaftLog::open(dir.path()).expect_err("damage").to_string();
        assert!(err.contains(&seg.display().to_string()), "{err}");
        assert!(err.contains("not a torn write"), "{err}");
        assert!(err.contains("nothing was deleted"), "{err}");
        assert_eq!(fs::read(&seg).expect("kept"), bytes, "the log was cut");
    }

    #[test]
    fn corruption_before_the_last_segment_refuses_to_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = RaftLog::open(dir.path()).expect("open");
        log.initialize(conf(&[1])).expect("init");
        log.append(&[entry(1, 1, b"a"), entry(2, 1, b"b")])
            .expect("append");
        log.sync().expect("sync");
        log.roll_segment().expect("roll");
        log.append(&[entry(3, 1, b"c")]).expect("append");
        log.sync().expect("sync");
        drop(log);
        // roll_segment rewrote the state into the new segment and removed
        // the old one; make an older damaged segment appear before it.
        let segs = segments(dir.path()).expect("segments");
        assert_eq!(segs.len(), 1);
        let bad = segment_path(dir.path(), 0);
        fs::write(&bad, [0x55u8; 40]).expect("write");
        let err = RaftLog::open(dir.path()).expect_err("corrupt").to_string();
        assert!(
            err.contains("corrupt") && err.contains("nothing was deleted"),
            "{err}"
        );
        assert!(bad.exists());
    }

    #[test]
    fn snapshots_compact_and_reload_and_a_corrupt_one_refuses_to_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = RaftLog::open(dir.path()).expect("open");
        log.initialize(conf(&[1, 2, 3])).expect("init");
        let entries: Vec<_> = (1..=20).map(|i| entry(i, 1, b"x")).collect();
        log.append(&entries).expect("append");
        log.sync().expect("sync");
        assert_eq!(log.entry_bytes(), 20);
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 15;
        snap.mut_metadata().term = 1;
        snap.mut_metadata().set_conf_state(conf(&[1, 2, 3]));
        snap.set_data(b"state machine bytes".to_vec().into());
        log.install_snapshot(snap).expect("install");
        assert_eq!(log.first_index_inner(), 16);
        assert_eq!(log.last_index_inner(), 20);
        assert_eq!(log.entry_bytes(), 5, "the 5 entries after the snapshot");
        assert!(matches!(
            log.term(10),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        drop(log);
        let log = RaftLog::open(dir.path()).expect("reopen");
        assert_eq!(log.first_index_inner(), 16);
        assert_eq!(log.last_index_inner(), 20);
        assert_eq!(log.entry_bytes(), 5);
        assert_eq!(log.latest_snapshot().get_data(), b"state machine bytes");
        assert_eq!(
            log.snapshot(10, 2).map(|s| s.get_metadata().index).ok(),
            Some(15)
        );
        drop(log);
        let (_, snap_path) = snapshot_files(dir.path())
            .expect("list")
            .pop()
            .expect("snapshot");
        let mut bytes = fs::read(&snap_path).expect("read");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        fs::write(&snap_path, &bytes).expect("write");
        let err = RaftLog::open(dir.path())
            .expect_err("corrupt snapshot")
            .to_string();
        assert!(
            err.contains("corrupt") && err.contains("nothing was deleted"),
            "{err}"
        );
        assert!(snap_path.exists());
        // The segment of entries 1..=20 (not all covered) and the one
        // started at the compaction.
        assert_eq!(segments(dir.path()).expect("list").len(), 2);
    }

    fn snapshot_at(index: u64, term: u64, data: &[u8]) -> Snapshot {
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = index;
        snap.mut_metadata().term = term;
        snap.mut_metadata().set_conf_state(conf(&[1]));
        snap.set_data(data.to_vec().into());
        snap
    }

    /// A log on disk with entries 1..=20 (term 1), writing snapshots in
    /// the background.
    fn background_log(dir: &Path) -> RaftLog {
        let mut log = RaftLog::open(dir).expect("open");
        log.set_snapshot_writes(SnapshotWrites::Background);
        log.initialize(conf(&[1])).expect("init");
        let entries: Vec<_> = (1..=20).map(|i| entry(i, 1, b"x")).collect();
        log.append(&entries).expect("append");
        log.sync().expect("sync");
        log
    }

    /// The numbers of listed log files (segment sequence, snapshot index).
    fn numbers(listed: &Result<Vec<(u64, PathBuf)>, LogError>) -> Vec<u64> {
        listed
            .as_ref()
            .expect("list")
            .iter()
            .map(|(n, _)| *n)
            .collect()
    }

    fn finish_within(log: &mut RaftLog, secs: u64) -> bool {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while std::time::Instant::now() < until {
            if log.finish_snapshot().expect("finish") {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn a_background_snapshot_compacts_the_log_once_written_while_entries_go_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = background_log(dir.path());
        log.begin_snapshot(snapshot_at(15, 1, b"state at 15"))
            .expect("begin");
        assert!(log.snapshot_in_progress());
        // Nothing compacted yet, and the log takes entries meanwhile.
        assert_eq!(log.first_index_inner(), 1);
        for i in 21..=30 {
            log.append(&[entry(i, 1, b"y")]).expect("append");
            log.persist().expect("persist");
        }
        // A second snapshot while one is written is not taken.
        log.begin_snapshot(snapshot_at(25, 1, b"state at 25"))
            .expect("ignored");
        assert!(finish_within(&mut log, 30), "the snapshot was adopted");
        log.join_cleanup();
        assert!(!log.snapshot_in_progress());
        assert_eq!(log.latest_snapshot().get_metadata().index, 15);
        assert_eq!((log.first_index_inner(), log.last_index_inner()), (16, 30));
        assert_eq!(log.entry_bytes(), 15);
        assert_eq!(numbers(&snapshot_files(dir.path())), vec![15]);
        // Entries 16..=30 stay in the first segment; a new one started.
        assert_eq!(numbers(&segments(dir.path())), vec![1, 2]);
        drop(log);
        let mut log = RaftLog::open(dir.path()).expect("reopen");
        log.set_snapshot_writes(SnapshotWrites::Background);
        assert_eq!((log.first_index_inner(), log.last_index_inner()), (16, 30));
        assert_eq!(log.latest_snapshot().get_data(), b"state at 15");
        // The next snapshot covers the first segment: it goes.
        for i in 31..=40 {
            log.append(&[entry(i, 1, b"w")]).expect("append");
        }
        log.sync().expect("sync");
        log.begin_snapshot(snapshot_at(35, 1, b"state at 35"))
            .expect("begin");
        assert!(log.wait_snapshot().expect("wait"));
        log.join_cleanup();
        assert_eq!(numbers(&segments(dir.path())), vec![2, 3]);
        drop(log);
        let log = RaftLog::open(dir.path()).expect("reopen");
        assert_eq!((log.first_index_inner(), log.last_index_inner()), (36, 40));
        assert_eq!(log.hard_state().commit, 35);
    }

    #[test]
    fn a_full_segment_is_closed_not_rewritten_and_goes_once_covered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = RaftLog::open(dir.path()).expect("open");
        log.set_sync(LogSync::Deferred);
        log.initialize(conf(&[1])).expect("init");
        let big = vec![5u8; 1 << 20];
        let count = SEGMENT_BYTES_MAX / (1 << 20) + 2;
        let syncs = log.syncs();
        for i in 1..=count {
            log.append(&[entry(i, 1, &big)]).expect("append");
            log.persist().expect("persist");
        }
        let files = segments(dir.path()).expect("list");
        assert_eq!(files.len(), 2, "a second segment started");
        let first_len = fs::metadata(&files[0].1).expect("stat").len();
        assert!(first_len > SEGMENT_BYTES_MAX, "{first_len}");
        let second_len = fs::metadata(&files[1].1).expect("stat").len();
        assert!(second_len < 4 << 20, "not rewritten: {second_len} bytes");
        // Deferred sync: the only fdatasync is the closed segment's.
        assert_eq!(log.syncs(), syncs + 1, "the closed segment was synced");
        drop(log);
        let mut log = RaftLog::open(dir.path()).expect("reopen");
        assert_eq!(
            (log.first_index_inner(), log.last_index_inner()),
            (1, count)
        );
        // A snapshot of everything in the first segment removes it.
        let first_last = count - 1;
        log.install_snapshot(snapshot_at(first_last, 1, b"s"))
            .expect("install");
        assert_eq!(numbers(&segments(dir.path())), vec![2, 3]);
        drop(log);
        let log = RaftLog::open(dir.path()).expect("reopen");
        assert_eq!(
            (log.first_index_inner(), log.last_index_inner()),
            (count, count)
        );
    }

    #[test]
    fn a_log_dropped_while_its_snapshot_is_written_reopens_to_the_same_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = background_log(dir.path());
        log.begin_snapshot(snapshot_at(15, 1, b"state at 15"))
            .expect("begin");
        log.append(&[entry(21, 1, b"z")]).expect("append");
        log.sync().expect("sync");
        drop(log);
        // The snapshot file is complete (the drop waited for the writer)
        // but was never adopted: it and the uncompacted log agree.
        let log = RaftLog::open(dir.path()).expect("reopen");
        assert_eq!(log.latest_snapshot().get_metadata().index, 15);
        assert_eq!((log.first_index_inner(), log.last_index_inner()), (16, 21));
        let got = log
            .entries(16, 22, None, GetEntriesContext::empty(false))
            .expect("entries");
        let got: Vec<&[u8]> = got.iter().map(|e| &e.data[..]).collect();
        assert_eq!(got, [&b"x"[..], b"x", b"x", b"x", b"x", b"z"]);
    }

    #[test]
    fn a_leader_snapshot_installed_during_a_background_write_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = background_log(dir.path());
        log.begin_snapshot(snapshot_at(15, 1, b"local"))
            .expect("begin");
        log.install_snapshot(snapshot_at(50, 4, b"leader"))
            .expect("install");
        assert!(!log.wait_snapshot().expect("wait"), "superseded");
        assert_eq!(log.latest_snapshot().get_metadata().index, 50);
        assert_eq!(
            numbers(&snapshot_files(dir.path())),
            vec![50],
            "the superseded file is gone"
        );
        drop(log);
        let log = RaftLog::open(dir.path()).expect("reopen");
        assert_eq!(log.latest_snapshot().get_data(), b"leader");
        assert!(log.is_empty());
    }

    #[test]
    fn a_failed_background_write_is_an_error_and_leaves_the_log_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = background_log(dir.path());
        let snap = snapshot_at(15, 1, b"state");
        // Where the writer creates its temporary file, a directory.
        let tmp = dir
            .path()
            .join(format!("{}.tmp", snapshot_file_name(snap.get_metadata())));
        fs::create_dir(&tmp).expect("mkdir");
        log.begin_snapshot(snap).expect("begin");
        let err = log.wait_snapshot().expect_err("write fails");
        assert!(err.to_string().contains("snapshot"), "{err}");
        assert!(!log.snapshot_in_progress());
        assert_eq!((log.first_index_inner(), log.last_index_inner()), (1, 20));
        fs::remove_dir(&tmp).expect("rmdir");
        // The next one goes through.
        log.begin_snapshot(snapshot_at(16, 1, b"state"))
            .expect("begin");
        assert!(log.wait_snapshot().expect("wait"));
        assert_eq!(log.first_index_inner(), 17);
    }

    #[test]
    fn an_unfinished_snapshot_file_is_removed_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(background_log(dir.path()));
        let tmp = dir.path().join(format!(
            "{}.tmp",
            snapshot_file_name(snapshot_at(9, 1, b"").get_metadata())
        ));
        fs::write(&tmp, b"half a snapshot").expect("write");
        let log = RaftLog::open(dir.path()).expect("open");
        assert!(!tmp.exists());
        assert_eq!(log.last_index_inner(), 20);
    }

    #[test]
    fn in_place_snapshots_compact_before_begin_returns() {
        let mut log = RaftLog::in_memory();
        log.set_snapshot_writes(SnapshotWrites::Background);
        log.initialize(conf(&[1])).expect("init");
        log.append(&[entry(1, 1, b"a"), entry(2, 1, b"b")])
            .expect("append");
        // A log without files has nothing to write in the background.
        log.begin_snapshot(snapshot_at(1, 1, b"s")).expect("begin");
        assert!(!log.snapshot_in_progress());
        assert_eq!(log.first_index_inner(), 2);
    }

    #[test]
    fn a_leader_snapshot_replaces_a_divergent_log() {
        let mut log = RaftLog::in_memory();
        log.initialize(conf(&[1, 2, 3])).expect("init");
        log.append(&[entry(1, 1, b"a"), entry(2, 1, b"b")])
            .expect("append");
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 50;
        snap.mut_metadata().term = 4;
        snap.mut_metadata().set_conf_state(conf(&[1, 2, 3]));
        log.install_snapshot(snap).expect("install");
        assert!(log.is_empty());
        assert_eq!((log.first_index_inner(), log.last_index_inner()), (51, 50));
        assert_eq!(log.hard_state().commit, 50);
        assert_eq!(log.term(50).ok(), Some(4));
    }

    proptest::proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode_record(&bytes);
        }

        #[test]
        fn any_single_bit_flip_is_detected(pos in 0usize..60, bit in 0u8..8) {
            let mut buf = Vec::new();
            encode_record(&mut buf, KIND_ENTRY, &[7u8; 40]);
            let pos = pos % buf.len();
            buf[pos] ^= 1 << bit;
            proptest::prop_assert!(decode_record(&buf).is_err());
        }
    }
}
