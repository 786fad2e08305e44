//! MSE, the meta storage engine's state machine: the namespace of one
//! volume (inodes, directory entries, attributes, symlinks, hard links,
//! xattrs, block maps, locks, sessions and open handles), in memory, like
//! an HDFS namenode, replicated by applying the same Raft log everywhere.
//!
//! The state machine is sans-IO and pure. [`MetaState::apply`] takes a
//! [`Command`] (every mutation; the proposer puts its clock, the ids it drew
//! and the caller's [`Creds`] into it) and returns an [`Outcome`] or a
//! [`MetaError`] with one errno. No clock, no randomness, no hash-ordered
//! iteration: replicas that apply the same commands hold byte-identical
//! [`MetaState::snapshot`]s. Reads (`lookup`, `getattr`, `readdir`,
//! `readlink`, `getxattr`, `listxattr`, `statfs`, `getlk`, `access`,
//! `blocks`) are `&self` methods on the local copy.
//!
//! Code map:
//! - `types`: ids, times, credentials, attributes, command arguments.
//! - `command`: [`Command`], [`Outcome`], [`Reply`] and their encodings.
//! - `state`: [`MetaState`], the `apply` dispatcher, queries, shared helpers.
//! - `namespace`: mknod, mkdir, create, symlink, link, unlink, rmdir, rename.
//! - `attr`: setattr (chmod, chown, truncate, utimes) and the write path's block
//!   map (`SetBlocks`, and `RemoveBlocks` for punched holes).
//! - `xattr`, `lock` (POSIX record locks and flock), `session` (leases,
//!   open handles, deferred delete).
//! - `perm`: rwx, sticky and setid rules (an access ACL decides where it
//!   exists); `acl`: POSIX ACLs (the `system.posix_acl_*` format, the
//!   access check, the mode rules); `inode`: the stored inode.
//! - `quota`: directory quotas (projects): membership, charges, limits.
//! - `snapshot`, `codec`: snapshot records and frames (rkyv + CRC32C).
//! - `cache_nodes`: the registry of nodes serving their cached blocks to
//!   each other (address, cache size) and its epoch.
//! - `invariants`: [`MetaState::check_invariants`], also run by `restore`.
//! - `limits`: every limit, with its unit.
//!
//! Invariants (see [`MetaState::validate`]): every entry names a live inode;
//! link counts equal the entries naming an inode (+ `..` of subdirectories);
//! no directory is its own ancestor; an inode with no link lives only while
//! a handle is open; a failed command changes nothing; a block version that
//! leaves the namespace is reported exactly once as garbage.

mod acl;
mod attr;
mod cache_nodes;
pub(crate) mod codec;
mod command;
mod error;
mod inode;
mod invariants;
pub mod limits;
mod lock;
mod namespace;
mod perm;
mod quota;
mod session;
mod snapshot;
mod state;
mod types;
mod xattr;
mod zeros;

#[cfg(test)]
mod tests;

pub use cache_nodes::CacheNode;
pub use command::{Command, Outcome, Reply};
pub use error::{DecodeError, MetaError};
pub use limits::*;
pub use quota::{Quota, CHARGE_UNIT_BYTES, QUOTA_XATTR};
pub use state::MetaState;
pub use types::{
    Attr, AttrChanges, BlockRef, CreateMode, Creds, DirEntry, FileKind, FlockKind, Ino,
    LockConflict, LockKind, LockOwner, LockRange, OpenFlags, RenameFlags, SessionId, SetTime,
    StatFs, Timespec, Volume, XattrFlags, NSEC_PER_SEC, ROOT_INO,
};
