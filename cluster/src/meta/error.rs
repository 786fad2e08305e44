//! Errors of the metadata state machine. [`MetaError`] is what a command or
//! query fails with and maps to one errno at the FUSE edge; [`DecodeError`]
//! is what corrupt or foreign bytes fail with.

use super::limits::{
    LINK_MAX, LOCKS_PER_INODE_MAX, NAME_MAX_BYTES, OPEN_HANDLES_PER_SESSION_MAX,
    XATTR_NAME_MAX_BYTES, XATTR_VALUE_MAX_BYTES,
};
use super::types::{Ino, SessionId};

/// Why a command or query failed. Every variant has one errno ([`MetaError::errno`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// `ENOENT`.
    #[error("no such file or directory")]
    NotFound,
    /// `EEXIST`.
    #[error("file exists")]
    Exists,
    /// `ENOTEMPTY`.
    #[error("directory not empty")]
    NotEmpty,
    /// `ENOTDIR`.
    #[error("not a directory")]
    NotDir,
    /// `EISDIR`.
    #[error("is a directory")]
    IsDir,
    /// `EXDEV`: reserved for operations across volumes; one state is one volume.
    #[error("cross-device link")]
    CrossDevice,
    /// `ENAMETOOLONG`.
    #[error(
        "name too long (names at most {} bytes, symlink targets at most {} bytes)",
        NAME_MAX_BYTES,
        super::limits::SYMLINK_MAX_BYTES
    )]
    NameTooLong,
    /// `ELOOP`: a symlink where it cannot be followed (opening one).
    #[error("too many levels of symbolic links: a symlink cannot be opened")]
    Loop,
    /// `EMLINK`.
    #[error("too many links (at most {})", LINK_MAX)]
    TooManyLinks,
    /// `EACCES`.
    #[error("permission denied")]
    AccessDenied,
    /// `EPERM`, with the rule that refused.
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    /// `EINVAL`, with the argument at fault.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// `ENOSPC`, with the limit reached.
    #[error("no space left on device: {0}")]
    NoSpace(&'static str),
    /// `ENODATA`.
    #[error("no such extended attribute")]
    NoData,
    /// `ERANGE`.
    #[error(
        "extended attribute name is empty or longer than {} bytes",
        XATTR_NAME_MAX_BYTES
    )]
    Range,
    /// `E2BIG`.
    #[error("extended attribute value longer than {} bytes", XATTR_VALUE_MAX_BYTES)]
    TooBig,
    /// `EAGAIN` (= `EWOULDBLOCK`).
    #[error("a conflicting lock is held; try again later")]
    WouldBlock,
    /// `EOPNOTSUPP`.
    #[error("operation not supported: {0}")]
    NotSupported(&'static str),
    /// `EBUSY`.
    #[error("device or resource busy")]
    Busy,
    /// `ESTALE`: the inode does not exist (never did, or was freed).
    #[error("stale file handle: inode {0} does not exist")]
    Stale(Ino),
    /// `EFBIG`.
    #[error("file too large: sizes and offsets end at 2^63 - 1 bytes")]
    FileTooBig,
    /// `EBADF`: no open handle for what the command needs one for.
    #[error("bad file handle: {0}")]
    BadHandle(&'static str),
    /// `EBADF`: the session is unknown (never registered, unregistered, or its lease expired).
    #[error("session {0} is not registered (never registered or its lease expired); register a new session and reopen")]
    UnknownSession(SessionId),
    /// `ENOLCK`.
    #[error("too many locks on one inode (at most {})", LOCKS_PER_INODE_MAX)]
    TooManyLocks,
    /// `EMFILE`.
    #[error(
        "too many open handles in one session (at most {})",
        OPEN_HANDLES_PER_SESSION_MAX
    )]
    TooManyOpen,
    /// `EIO`: only `Format` is accepted by an empty state.
    #[error("the volume is not formatted: apply a Format command first")]
    NotFormatted,
    /// `EEXIST`: `Format` on a formatted state.
    #[error("the volume is already formatted; a volume is formatted once")]
    AlreadyFormatted,
}

impl MetaError {
    /// The errno the FUSE layer answers with.
    pub fn errno(&self) -> i32 {
        match self {
            Self::NotFound => libc::ENOENT,
            Self::Exists | Self::AlreadyFormatted => libc::EEXIST,
            Self::NotEmpty => libc::ENOTEMPTY,
            Self::NotDir => libc::ENOTDIR,
            Self::IsDir => libc::EISDIR,
            Self::CrossDevice => libc::EXDEV,
            Self::NameTooLong => libc::ENAMETOOLONG,
            Self::Loop => libc::ELOOP,
            Self::TooManyLinks => libc::EMLINK,
            Self::AccessDenied => libc::EACCES,
            Self::NotPermitted(_) => libc::EPERM,
            Self::Invalid(_) => libc::EINVAL,
            Self::NoSpace(_) => libc::ENOSPC,
            Self::NoData => libc::ENODATA,
            Self::Range => libc::ERANGE,
            Self::TooBig => libc::E2BIG,
            Self::WouldBlock => libc::EAGAIN,
            Self::NotSupported(_) => libc::EOPNOTSUPP,
            Self::Busy => libc::EBUSY,
            Self::Stale(_) => libc::ESTALE,
            Self::FileTooBig => libc::EFBIG,
            Self::BadHandle(_) | Self::UnknownSession(_) => libc::EBADF,
            Self::TooManyLocks => libc::ENOLCK,
            Self::TooManyOpen => libc::EMFILE,
            Self::NotFormatted => libc::EIO,
        }
    }
}

/// Why bytes could not be decoded into a command, an outcome or a state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the frame says (truncated).
    #[error("truncated: {what} needs {needed} bytes, {available} present")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// Not what the bytes claim to be.
    #[error("bad magic number: not a DatenLord {0}")]
    BadMagic(&'static str),
    /// Written by a newer or older format.
    #[error("unsupported {what} format version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// What was being read.
        what: &'static str,
        /// Version in the bytes.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// Larger than any valid encoding.
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// What was being read.
        what: &'static str,
        /// Claimed length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A checksum mismatch: the bytes were damaged.
    #[error("checksum mismatch in {0}: the bytes are corrupt")]
    Checksum(&'static str),
    /// Bytes after the end of the encoding.
    #[error("{0} trailing bytes after the end")]
    Trailing(usize),
    /// The archive did not validate.
    #[error("invalid archive: {0}")]
    Archive(String),
    /// The decoded state breaks an invariant.
    #[error("inconsistent state: {0}")]
    Inconsistent(String),
}
