//! The remote persistent store: the last tier below the cache.
//!
//! Blocks are immutable objects in an object store (S3, a local directory,
//! or memory for tests), reached through `object_store` on a small tokio
//! runtime of its own ([`ControlPlane`]); the futures handed out are
//! runtime-agnostic (glommio shards and plain threads await them).
//!
//! - [`url`]: the `--store` value.
//! - [`object`]: key layout and the CRC32C-checked object format (sans-IO).
//! - [`backoff`]: exponential backoff with jitter (sans-IO).
//! - [`aws_config`]: S3 settings from the AWS shared files, the fallback
//!   after the `AWS_*` variables.
//! - [`journal`] and [`gc`]: bookkeeping of the write-back journal and of the
//!   garbage-collection queue (sans-IO).
//! - [`control`], [`remote`], [`writeback`], [`sources`]: the drivers.
//!
//! Invariants: a block object is immutable; `commit` returns only when the
//! blocks are durable (journal, or store in `Through` mode); a corrupt
//! object or journal entry is never served.

pub mod aws_config;
pub mod backoff;
pub mod control;
pub mod gc;
pub mod journal;
pub mod lease;
pub mod object;
pub mod reach;
pub mod remote;
pub mod segment;
pub mod sources;
pub mod url;
pub mod writeback;

use std::path::PathBuf;

pub use control::ControlPlane;
pub use journal::Backlog;
pub use lease::{StoreLease, LEASE_TTL_MS_DEFAULT};
pub use object::{VolumeDescriptor, STORE_FORMAT_VERSION};
pub use remote::{RemoteStore, S3Settings, StoreOptions};
pub use sources::StoreSources;
pub use url::StoreUrl;
pub use writeback::{InUse, WriteBack, WriteBackConfig, WriteMode, SEGMENT_RECYCLE_BYTES};

/// Errors of the remote store and the write-back journal.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another mount holds the store's lease.
    #[error("the store {store} is in use by {holder} ({detail}): two mounts of one store would delete each other's blocks. Stop that mount (or use another store); a holder that was killed frees a local store at once and an S3 store when its lease expires")]
    Leased {
        /// The store.
        store: String,
        /// Who holds it.
        holder: String,
        /// Why it is still held.
        detail: String,
    },

    /// The object does not exist.
    #[error("object {key} not found")]
    NotFound {
        /// Full key of the object.
        key: String,
    },

    /// An object or journal entry failed its checks; it is never served.
    #[error("corrupt object {key}: {reason}")]
    Corrupt {
        /// Key (or journal file) of the object.
        key: String,
        /// What check failed.
        reason: String,
    },

    /// The store could not be reached or failed (after retries).
    #[error("the store {store} is unreachable or failing: {message}")]
    Unreachable {
        /// The store URL.
        store: String,
        /// The last error.
        message: String,
    },

    /// The bucket does not exist.
    #[error("the bucket of {store} does not exist: create it, or fix the bucket name in --store")]
    NoSuchBucket {
        /// The store URL.
        store: String,
    },

    /// The store refused the credentials.
    #[error("the store {store} refused access ({message}): check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and the bucket policy")]
    AccessDenied {
        /// The store URL.
        store: String,
        /// What the store said.
        message: String,
    },

    /// The write-back journal has no room for a commit.
    #[error("the write-back journal {journal} of store {store} is full: {backlog_entries} blocks ({backlog_bytes} bytes) wait for upload, capacity {capacity_bytes} bytes, this commit needs {needed_bytes} more bytes; the store may be unreachable (see the upload errors in the log) or the journal too small")]
    JournalFull {
        /// The store URL.
        store: String,
        /// The journal directory.
        journal: PathBuf,
        /// Blocks waiting for upload.
        backlog_entries: u64,
        /// Bytes waiting for upload.
        backlog_bytes: u64,
        /// Journal capacity.
        capacity_bytes: u64,
        /// Bytes the refused commit needed.
        needed_bytes: u64,
    },

    /// The store has no volume descriptor.
    #[error("the store {store} is not formatted for DatenLord (no volume descriptor): run `datenlord format --store {store}` first")]
    NotFormatted {
        /// The store URL.
        store: String,
    },

    /// The store holds another volume, or one formatted differently.
    #[error("the store {store} holds a different volume: {message}")]
    WrongVolume {
        /// The store URL.
        store: String,
        /// What differs and what to do.
        message: String,
    },

    /// A configuration value is invalid.
    #[error("invalid store configuration: {0}")]
    Config(String),

    /// A local IO error (journal, GC queue).
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// The control plane or the write-back was shut down.
    #[error("the store's control plane is shut down")]
    ShutDown,
}

impl StoreError {
    /// The errno a file system reports for this error: `ENOSPC` for a full
    /// journal, `EIO` for everything else (a block the metadata names but the
    /// store lacks is an IO error, not a missing file).
    pub fn errno(&self) -> i32 {
        match self {
            Self::JournalFull { .. } => libc::ENOSPC,
            _ => libc::EIO,
        }
    }

    /// Builds an [`StoreError::Io`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Whether retrying may help (the store failed, not the data or the request).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping() {
        let full = StoreError::JournalFull {
            store: "memory://".into(),
            journal: "/j".into(),
            backlog_entries: 1,
            backlog_bytes: 2,
            capacity_bytes: 3,
            needed_bytes: 4,
        };
        assert_eq!(full.errno(), libc::ENOSPC);
        assert!(full.to_string().contains("memory://"), "{full}");
        assert_eq!(StoreError::NotFound { key: "k".into() }.errno(), libc::EIO);
        let nf = StoreError::NotFormatted {
            store: "s3://b/p".into(),
        };
        assert!(nf.to_string().contains("datenlord format"), "{nf}");
    }
}
