//! Commands (every mutation of the namespace, a Raft log entry each) and
//! their outcomes, with their encodings.
//!
//! A command carries everything `apply` may not find out by itself: the
//! proposer's clock (`now`), ids it drew (the volume uuid, session ids) and
//! the caller's credentials. `apply` is a function of the state and the
//! command alone.

use rkyv::{Archive, Deserialize, Serialize};

use super::codec::{archive, only_frame, put_frame, unarchive};
use super::error::DecodeError;
use super::limits::{COMMAND_FORMAT_VERSION, ENCODED_COMMAND_BYTES_MAX};
use super::types::{
    Attr, AttrChanges, BlockRef, CreateMode, Creds, FileKind, FlockKind, Ino, LockKind, LockRange,
    OpenFlags, RenameFlags, SessionId, Timespec, XattrFlags,
};

const COMMAND_MAGIC: [u8; 4] = *b"DLMC";
const OUTCOME_MAGIC: [u8; 4] = *b"DLMO";

/// Every mutation of the metadata state.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Creates the volume and its root directory (`0755`, owned by root).
    /// Accepted once, on an empty state.
    Format {
        uuid: [u8; 16],
        /// A power of two in `BLOCK_SIZE_MIN_BYTES..=BLOCK_SIZE_MAX_BYTES`.
        block_size: u32,
        /// Must be [`VOLUME_FORMAT_VERSION`](super::limits::VOLUME_FORMAT_VERSION).
        format_version: u32,
        /// Capacity for file data (`ENOSPC` past it).
        capacity_bytes: u64,
        /// Most inodes, the root included (`ENOSPC` past it).
        inodes_max: u64,
        now: Timespec,
    },
    /// A regular file, fifo, socket or device node (devices: root only).
    Mknod {
        parent: Ino,
        name: Vec<u8>,
        kind: FileKind,
        /// Permission bits, and who applies the umask.
        mode: CreateMode,
        rdev: u32,
        creds: Creds,
        now: Timespec,
    },
    /// A directory.
    Mkdir {
        parent: Ino,
        name: Vec<u8>,
        /// Permission bits and sticky, and who applies the umask.
        mode: CreateMode,
        creds: Creds,
        now: Timespec,
    },
    /// `open(O_CREAT)`: creates a regular file (or opens the existing one
    /// unless `exclusive`) and opens it in `session`.
    Create {
        parent: Ino,
        name: Vec<u8>,
        mode: CreateMode,
        exclusive: bool,
        session: SessionId,
        flags: OpenFlags,
        creds: Creds,
        now: Timespec,
    },
    /// A symbolic link to `target`.
    Symlink {
        parent: Ino,
        name: Vec<u8>,
        target: Vec<u8>,
        creds: Creds,
        now: Timespec,
    },
    /// A hard link to `ino` named `new_name` in `new_parent`.
    Link {
        ino: Ino,
        new_parent: Ino,
        new_name: Vec<u8>,
        creds: Creds,
        now: Timespec,
    },
    /// Removes a non-directory entry.
    Unlink {
        parent: Ino,
        name: Vec<u8>,
        creds: Creds,
        now: Timespec,
    },
    /// Removes an empty directory.
    Rmdir {
        parent: Ino,
        name: Vec<u8>,
        creds: Creds,
        now: Timespec,
    },
    /// `renameat2`.
    Rename {
        parent: Ino,
        name: Vec<u8>,
        new_parent: Ino,
        new_name: Vec<u8>,
        flags: RenameFlags,
        creds: Creds,
        now: Timespec,
    },
    /// chmod, chown, truncate, utimes in one.
    SetAttr {
        ino: Ino,
        changes: AttrChanges,
        /// The size change comes through an open handle (`ftruncate`,
        /// `O_TRUNC`): write permission was checked at open.
        via_handle: bool,
        creds: Creds,
        now: Timespec,
    },
    /// Opens `ino` in `session` after checking `flags` against its mode.
    Open {
        session: SessionId,
        ino: Ino,
        flags: OpenFlags,
        creds: Creds,
    },
    /// Closes one handle of `ino` in `session`; with `flock_owner`, also
    /// drops that owner's `flock` (`FUSE_RELEASE_FLOCK_UNLOCK`).
    Release {
        session: SessionId,
        ino: Ino,
        flock_owner: Option<u64>,
    },
    /// The write path: `blocks` (index, version) now hold the file's data;
    /// the size becomes at least `new_size` (the end of the write).
    SetBlocks {
        ino: Ino,
        blocks: Vec<(u64, u64)>,
        new_size: Option<u64>,
        creds: Creds,
        now: Timespec,
    },
    /// `setxattr`.
    SetXattr {
        ino: Ino,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: XattrFlags,
        creds: Creds,
        now: Timespec,
    },
    /// `removexattr`.
    RemoveXattr {
        ino: Ino,
        name: Vec<u8>,
        creds: Creds,
        now: Timespec,
    },
    /// `F_SETLK` (never blocks): `kind: None` unlocks the range.
    SetLk {
        ino: Ino,
        owner: u64,
        session: SessionId,
        range: LockRange,
        kind: Option<LockKind>,
    },
    /// `flock(LOCK_NB)`: `kind: None` unlocks.
    Flock {
        ino: Ino,
        owner: u64,
        session: SessionId,
        kind: Option<FlockKind>,
    },
    /// A client session starts; it must renew before `lease_expires`.
    RegisterSession {
        session: SessionId,
        lease_expires: Timespec,
    },
    /// Extends a lease (never shortens it).
    RenewSession {
        session: SessionId,
        lease_expires: Timespec,
    },
    /// A session ends cleanly: its handles close and its locks go.
    UnregisterSession { session: SessionId },
    /// Ends every session whose lease expired at `now` (`lease_expires <= now`).
    ExpireSessions { now: Timespec },
    /// Punch hole: blocks `first..=last` of regular file `ino` become holes
    /// (their map entries go, their versions are garbage); the size stays.
    /// Times move as on a write. Write permission was checked at open, as
    /// for `SetBlocks`.
    // Last: a variant's tag is its position, so new variants go at the end
    // and the Raft log entries written before keep their meaning.
    RemoveBlocks {
        ino: Ino,
        first: u64,
        last: u64,
        creds: Creds,
        now: Timespec,
    },
    /// Revokes a peer certificate by its serial number (lowercase hex, as
    /// `datenlord certs` prints it): masters and nodes refuse connections
    /// that present it from then on. Accepted whether the volume is
    /// formatted or not; revoking twice changes nothing.
    RevokeCertificate { serial: String },
    /// Registers (or updates) a node serving its cached blocks to the
    /// others. Accepted whether the volume is formatted or not.
    RegisterCacheNode { node: super::cache_nodes::CacheNode },
    /// Removes a node from the cache registry (it stopped on purpose).
    UnregisterCacheNode { id: u64 },
    /// The Lord (the leader) marks a registered node live or dead by
    /// whether it hears the node.
    SetCacheNodeLive { id: u64, live: bool },
    /// `fallocate` of blocks `first..=last` of regular file `ino` (those
    /// below its end): `replace` (`FALLOC_FL_ZERO_RANGE`) makes the range
    /// one allocated-zero extent, its block versions garbage; otherwise
    /// (mode 0) only its holes become allocated-zero extents. Write
    /// permission was checked at open, as for `SetBlocks`.
    ZeroBlocks {
        ino: Ino,
        first: u64,
        last: u64,
        replace: bool,
        creds: Creds,
        now: Timespec,
    },
}

impl Command {
    /// The bytes of a Raft log entry holding this command.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_frame(
            &mut out,
            COMMAND_MAGIC,
            COMMAND_FORMAT_VERSION,
            &archive(self),
        );
        out
    }

    /// The command in `bytes`; any damage, truncation or foreign format is an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let payload = only_frame(
            bytes,
            COMMAND_MAGIC,
            COMMAND_FORMAT_VERSION,
            "command",
            ENCODED_COMMAND_BYTES_MAX,
        )?;
        unarchive(payload)
    }

    /// The proposer's clock, when the command carries one.
    pub fn now(&self) -> Option<Timespec> {
        match self {
            Self::Format { now, .. }
            | Self::Mknod { now, .. }
            | Self::Mkdir { now, .. }
            | Self::Create { now, .. }
            | Self::Symlink { now, .. }
            | Self::Link { now, .. }
            | Self::Unlink { now, .. }
            | Self::Rmdir { now, .. }
            | Self::Rename { now, .. }
            | Self::SetAttr { now, .. }
            | Self::SetBlocks { now, .. }
            | Self::RemoveBlocks { now, .. }
            | Self::ZeroBlocks { now, .. }
            | Self::SetXattr { now, .. }
            | Self::RemoveXattr { now, .. }
            | Self::ExpireSessions { now } => Some(*now),
            Self::RegisterSession { lease_expires, .. }
            | Self::RenewSession { lease_expires, .. } => Some(*lease_expires),
            Self::Open { .. }
            | Self::Release { .. }
            | Self::SetLk { .. }
            | Self::Flock { .. }
            | Self::UnregisterSession { .. }
            | Self::RevokeCertificate { .. }
            | Self::RegisterCacheNode { .. }
            | Self::UnregisterCacheNode { .. }
            | Self::SetCacheNodeLive { .. } => None,
        }
    }

    /// The caller's credentials, when the command carries them.
    pub fn creds(&self) -> Option<&Creds> {
        match self {
            Self::Mknod { creds, .. }
            | Self::Mkdir { creds, .. }
            | Self::Create { creds, .. }
            | Self::Symlink { creds, .. }
            | Self::Link { creds, .. }
            | Self::Unlink { creds, .. }
            | Self::Rmdir { creds, .. }
            | Self::Rename { creds, .. }
            | Self::SetAttr { creds, .. }
            | Self::Open { creds, .. }
            | Self::SetBlocks { creds, .. }
            | Self::RemoveBlocks { creds, .. }
            | Self::ZeroBlocks { creds, .. }
            | Self::SetXattr { creds, .. }
            | Self::RemoveXattr { creds, .. } => Some(creds),
            Self::Format { .. }
            | Self::Release { .. }
            | Self::SetLk { .. }
            | Self::Flock { .. }
            | Self::RegisterSession { .. }
            | Self::RenewSession { .. }
            | Self::UnregisterSession { .. }
            | Self::ExpireSessions { .. }
            | Self::RevokeCertificate { .. }
            | Self::RegisterCacheNode { .. }
            | Self::UnregisterCacheNode { .. }
            | Self::SetCacheNodeLive { .. } => None,
        }
    }
}

/// What a successful command answers.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Nothing to report.
    Done,
    /// Attributes of the inode created, linked, changed or opened.
    Attr(Attr),
    /// `Create`: the opened file, and whether it was created (or existed).
    Created { attr: Attr, created: bool },
    /// `ExpireSessions`: the sessions that ended.
    Expired(Vec<SessionId>),
}

/// The result of a successful command: the reply, and what the block store
/// may now collect.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub reply: Reply,
    /// Block versions no file refers to any more (overwritten, truncated
    /// away, or of freed inodes).
    pub garbage: Vec<BlockRef>,
    /// Inodes freed by this command (last link gone and no handle open).
    pub freed: Vec<Ino>,
}

impl Outcome {
    /// An outcome with a reply and nothing to collect.
    pub fn reply(reply: Reply) -> Self {
        Self {
            reply,
            garbage: Vec::new(),
            freed: Vec::new(),
        }
    }

    /// The attributes in the reply, if any.
    pub fn attr(&self) -> Option<&Attr> {
        match &self.reply {
            Reply::Attr(attr) | Reply::Created { attr, .. } => Some(attr),
            Reply::Done | Reply::Expired(_) => None,
        }
    }

    /// The bytes of this outcome (to hand it to another process).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_frame(
            &mut out,
            OUTCOME_MAGIC,
            COMMAND_FORMAT_VERSION,
            &archive(self),
        );
        out
    }

    /// The outcome in `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let payload = only_frame(
            bytes,
            OUTCOME_MAGIC,
            COMMAND_FORMAT_VERSION,
            "outcome",
            ENCODED_COMMAND_BYTES_MAX,
        )?;
        unarchive(payload)
    }
}
