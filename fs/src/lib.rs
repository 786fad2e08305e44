//! POSIX file system semantics over the metadata masters (`datenlord-cluster`)
//! and the block engine (`datenlord-engine`), shared by every frontend.
//!
//! The API is async and runtime-agnostic (the futures only wait on flume
//! channels and the sink): FUSE threads `block_on` them, executors await them.
//!
//! Code map:
//! - `range`, `dirty`, `version`: sans-IO block arithmetic, unflushed-write
//!   bookkeeping and block version allocation.
//! - `sink`: [`BlockSink`], where flushed blocks become durable.
//! - `meta`: [`MetaLink`], commands through Raft (the embedded group, or a
//!   learner node of a master group), queries on the local copy.
//! - `resolver`: [`BlockMapResolver`], the engine's prefetch version lookup.
//! - `fs`: [`Fs`], the operations and the flush protocol.
//! - `copies`: local copies of files read again and again, which the FUSE
//!   frontend hands to the kernel (passthrough).
//! - `commit`: close publishes, a commit thread makes published files
//!   durable in group commits (journal, then metadata log).
//! - `garbage`: orphaned block versions handed to the sink in batches, each
//!   after the metadata log is durable.

mod commit;
mod config;
mod copies;
pub mod dirty;
mod error;
mod fs;
mod garbage;
mod meta;
pub mod range;
mod resolver;
mod sink;
pub mod version;

pub use commit::{
    lag_max as commit_lag_max, CommitStats, COMMIT_INTERVAL_MS_DEFAULT, COMMIT_INTERVAL_MS_MAX,
};
pub use config::{
    AtimePolicy, FsConfig, CAPACITY_BYTES_DEFAULT, DIRTY_BYTES_PER_FILE_DEFAULT,
    FLUSH_INTERVAL_DEFAULT, INODES_MAX_DEFAULT, RELATIME_INTERVAL_SECS, SESSION_LEASE_DEFAULT,
};
pub use copies::{CopyConfig, LocalCopy};
pub use error::{FsError, Result};
pub use fs::{now, CommitObserver, Fs, Opened};
pub use meta::{MetaLink, LEADER_WAIT_MS_MAX};
pub use resolver::BlockMapResolver;
pub use sink::{BlockSink, MemorySink, SinkError};

/// The metadata types the API uses.
pub use datenlord_cluster::meta::{
    Attr, AttrChanges, CreateMode, Creds, DirEntry, FileKind, FlockKind, Ino, LockConflict,
    LockKind, LockRange, RenameFlags, SetTime, StatFs, Timespec, XattrFlags, ROOT_INO,
};
