//! [`FsError`]: every way a file system operation fails, each with one errno.

use datenlord_cluster::master::ClientError;
use datenlord_cluster::meta::MetaError;
use datenlord_cluster::raft_driver::DriveError;

use crate::sink::SinkError;

/// Why a file system operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FsError {
    /// The namespace refused the operation (its errno).
    #[error("{message}")]
    Meta {
        /// errno.
        errno: i32,
        /// Why.
        message: String,
    },
    /// The metadata masters could not be reached or did not answer (a
    /// node of a master group): the command may or may not have applied.
    #[error("metadata masters: {message}")]
    Unknown {
        /// errno (ETIMEDOUT for a timeout, else EIO).
        errno: i32,
        /// Why.
        message: String,
    },
    /// The metadata replica could not run the command.
    #[error("metadata: {0}")]
    Drive(#[from] DriveError),
    /// The block engine failed to read or cache a block.
    #[error("block engine: {0}")]
    Engine(String),
    /// The block store could not make blocks durable.
    #[error("block store: {0}")]
    Sink(#[from] SinkError),
    /// No such open file handle.
    #[error("bad file handle {0}")]
    BadHandle(u64),
    /// An argument is out of range.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// Not supported.
    #[error("operation not supported: {0}")]
    NotSupported(&'static str),
    /// `lseek`: no data (or hole) at or after the offset.
    #[error("no data past the offset")]
    NoSuchOffset,
    /// An offset or size beyond the largest file.
    #[error("file too large")]
    TooBig,
    /// The file system could not start; the message says what to do.
    #[error("{0}")]
    Config(String),
    /// A local file the file system keeps (a local copy) failed.
    #[error("local file: {0}")]
    Io(String),
    /// A write would pass the limit of the directory quota it is in.
    #[error("disk quota exceeded: the directory quota rooted at inode {root} allows {limit_bytes} bytes and {used_bytes} are used or reserved")]
    Quota {
        /// The quota's root directory.
        root: u64,
        /// Its limit.
        limit_bytes: u64,
        /// Its committed use and this node's reservations.
        used_bytes: u64,
    },
}

impl FsError {
    /// The errno the FUSE layer answers with.
    pub fn errno(&self) -> i32 {
        match self {
            Self::Meta { errno, .. } | Self::Unknown { errno, .. } => *errno,
            Self::Sink(e) => e.errno,
            Self::Drive(_) | Self::Engine(_) | Self::Config(_) | Self::Io(_) => libc::EIO,
            Self::BadHandle(_) => libc::EBADF,
            Self::Invalid(_) => libc::EINVAL,
            Self::NotSupported(_) => libc::EOPNOTSUPP,
            Self::NoSuchOffset => libc::ENXIO,
            Self::TooBig => libc::EFBIG,
            Self::Quota { .. } => libc::EDQUOT,
        }
    }
}

impl From<MetaError> for FsError {
    fn from(e: MetaError) -> Self {
        Self::Meta {
            errno: e.errno(),
            message: e.to_string(),
        }
    }
}

impl From<ClientError> for FsError {
    fn from(e: ClientError) -> Self {
        Self::Meta {
            errno: e.errno(),
            message: e.to_string(),
        }
    }
}

impl From<datenlord_engine::Error> for FsError {
    fn from(e: datenlord_engine::Error) -> Self {
        Self::Engine(e.to_string())
    }
}

/// Results of file system operations.
pub type Result<T> = std::result::Result<T, FsError>;
