//! The engine's error type. Every variant says what went wrong and, where the
//! user can act, what to do about it.

use std::path::PathBuf;

use crate::block::BlockId;

/// Errors of the data storage engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid; the message says which and how to fix it.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// More cores were requested than this process may run on.
    #[error("--cores {requested} is more than the {available} CPUs this process may run on: use --cores {available} or fewer")]
    TooManyCores {
        /// Requested executors.
        requested: usize,
        /// CPUs in the process's affinity mask.
        available: usize,
    },

    /// The locked-memory limit is too low for io_uring.
    #[error("the locked-memory limit (RLIMIT_MEMLOCK, `ulimit -l`) is {limit_bytes} bytes; the engine needs at least {needed_bytes} bytes for {shards} io_uring executors: raise it with `ulimit -l {needed_kib}` (or LimitMEMLOCK= in a systemd unit, or memlock in /etc/security/limits.conf), or run fewer --cores")]
    MemlockLimit {
        /// Current soft limit.
        limit_bytes: u64,
        /// Minimum needed.
        needed_bytes: u64,
        /// `needed_bytes` in KiB, as `ulimit -l` takes it.
        needed_kib: u64,
        /// Shards that were requested.
        shards: usize,
    },

    /// The cache device or file does not support O_DIRECT.
    #[error("the cache file {path} is on a file system without O_DIRECT support ({source}): put --cache-dir on a local ext4/xfs/btrfs file system or use a raw NVMe block device")]
    DirectIoUnsupported {
        /// The cache file.
        path: PathBuf,
        /// The error of the O_DIRECT open.
        source: std::io::Error,
    },

    /// An IO error on the cache device, with the file and operation.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// The memory arena could not be mapped.
    #[error("cannot map {bytes} bytes for one shard's memory tier ({source}): lower --memory-size (it is split over the shards) or free memory")]
    Arena {
        /// Requested size.
        bytes: usize,
        /// The mmap error.
        source: std::io::Error,
    },

    /// Starting an executor failed.
    #[error("cannot start the executor of shard {shard}: {message}")]
    Executor {
        /// Shard index.
        shard: usize,
        /// What glommio reported.
        message: String,
    },

    /// The block is not in the cache and no source below has it.
    #[error("block {0} not found in any tier")]
    NotFound(BlockId),

    /// The source below the cache failed.
    #[error("fetching block {id} failed: {message}")]
    Source {
        /// The block.
        id: BlockId,
        /// What the source reported.
        message: String,
    },

    /// A request was malformed (offset beyond block, data larger than a block).
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// The engine is shutting down or a shard has stopped.
    #[error("the engine is shut down")]
    ShutDown,
}

impl Error {
    /// Builds an [`Error::Io`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Result alias of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
