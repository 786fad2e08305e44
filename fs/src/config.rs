//! [`FsConfig`]: how the file system behaves.

use std::time::Duration;

use crate::copies::CopyConfig;

/// When reads update a file's access time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AtimePolicy {
    /// Only when the access time is older than the last change or a day
    /// old (Linux's default).
    #[default]
    Relatime,
    /// Never.
    Noatime,
    /// On every read.
    Strictatime,
}

/// Longest an access time may lag under `relatime`.
pub const RELATIME_INTERVAL_SECS: i64 = 24 * 60 * 60;
/// Default lease of the mount's metadata session.
pub const SESSION_LEASE_DEFAULT: Duration = Duration::from_secs(30);
/// Default unflushed bytes per file before a write flushes early.
pub const DIRTY_BYTES_PER_FILE_DEFAULT: usize = 64 << 20;
/// Default age limit of unflushed writes: every this often, files with
/// unflushed writes are flushed (like Linux's dirty_expire).
pub const FLUSH_INTERVAL_DEFAULT: Duration = Duration::from_secs(5);
/// Default capacity of a freshly formatted volume.
pub const CAPACITY_BYTES_DEFAULT: u64 = 1 << 50;
/// Default inode limit of a freshly formatted volume.
pub const INODES_MAX_DEFAULT: u64 = 1 << 32;

/// How the file system behaves.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// Access time updates.
    pub atime: AtimePolicy,
    /// Lease of the mount's session: handles and locks of a mount that
    /// stops renewing end this long after its last renewal.
    pub session_lease: Duration,
    /// Unflushed bytes per file before a write flushes early.
    pub dirty_bytes_per_file_max: usize,
    /// Flush files with unflushed writes this often (`None`: only on
    /// flush, fsync, close and the byte limit).
    pub flush_interval: Option<Duration>,
    /// First block version sequence this node hands out; `None` seeds it
    /// from the wall clock (see `version.rs`).
    pub version_seed: Option<u64>,
    /// This node's id in the versions it writes (0: a mount of its own;
    /// a node of a master group: its node id, at most
    /// `datenlord_engine::block::VERSION_WRITER_MAX`).
    pub writer: u64,
    /// Capacity when the volume is formatted on first start.
    pub capacity_bytes: u64,
    /// Inode limit when the volume is formatted on first start.
    pub inodes_max: u64,
    /// Local copies of files read again and again, for FUSE passthrough
    /// (`None`: no copies).
    pub local_copies: Option<CopyConfig>,
    /// `Some`: a close publishes its file's writes and a commit thread
    /// makes them durable, journal first, then the metadata log, at most
    /// this long later (see `commit.rs`); `None`: a close commits its file
    /// durably before it returns.
    pub commit_interval: Option<Duration>,
    /// Test hook (crash tests only): the process aborts in the group
    /// commit number N (from 1) that has blocks, after their journal sync
    /// and before any of its metadata is written, as a crash there would.
    pub abort_after_journal_sync: Option<u64>,
}

impl Default for FsConfig {
    fn default() -> Self {
        Self {
            atime: AtimePolicy::default(),
            session_lease: SESSION_LEASE_DEFAULT,
            dirty_bytes_per_file_max: DIRTY_BYTES_PER_FILE_DEFAULT,
            flush_interval: Some(FLUSH_INTERVAL_DEFAULT),
            version_seed: None,
            writer: 0,
            capacity_bytes: CAPACITY_BYTES_DEFAULT,
            inodes_max: INODES_MAX_DEFAULT,
            local_copies: None,
            commit_interval: None,
            abort_after_journal_sync: None,
        }
    }
}
