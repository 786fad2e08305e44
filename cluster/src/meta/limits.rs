//! Limits of the namespace: every one a named constant with its unit, so a
//! reviewer sees in one place how large anything in the state may grow.

/// Longest directory entry name (Linux `NAME_MAX`).
pub const NAME_MAX_BYTES: usize = 255;
/// Longest symlink target (Linux `PATH_MAX` less nothing: the kernel caps at 4095 + NUL).
pub const SYMLINK_MAX_BYTES: usize = 4096;
/// Most hard links to one inode, and most subdirectories of one directory
/// (a subdirectory's `..` is a link to its parent). ext4 allows 65000.
pub const LINK_MAX: u32 = 65_000;
/// Longest extended attribute name, namespace prefix included (Linux `XATTR_NAME_MAX`).
pub const XATTR_NAME_MAX_BYTES: usize = 255;
/// Largest extended attribute value (Linux `XATTR_SIZE_MAX`).
pub const XATTR_VALUE_MAX_BYTES: usize = 65_536;
/// Most entries of one POSIX ACL: as many as fit in the largest attribute
/// value (a 4-byte header, 8 bytes an entry).
pub const ACL_ENTRIES_MAX: usize = (XATTR_VALUE_MAX_BYTES - 4) / 8;
/// Most extended attributes on one inode.
pub const XATTRS_PER_INODE_MAX: usize = 1024;
/// Most bytes of names and values of all extended attributes of one inode.
pub const XATTR_BYTES_PER_INODE_MAX: usize = 1 << 20;
/// Most POSIX record locks plus flock holders on one inode.
pub const LOCKS_PER_INODE_MAX: usize = 1024;
/// Largest file size and offset (`off_t` is signed 64-bit).
pub const MAX_FILE_BYTES: u64 = 0x7fff_ffff_ffff_ffff;
/// Smallest volume block size.
pub const BLOCK_SIZE_MIN_BYTES: u32 = 4096;
/// Largest volume block size.
pub const BLOCK_SIZE_MAX_BYTES: u32 = 64 << 20;
/// Most block map updates in one `SetBlocks` command (the writer splits larger writes).
/// `RemoveBlocks` names a range instead of blocks: it visits only the entries
/// that exist, like a truncation, and needs no such limit.
pub const BLOCKS_PER_COMMAND_MAX: usize = 65_536;
/// Most supplementary groups in one set of credentials (Linux `NGROUPS_MAX`).
pub const GROUPS_PER_CREDS_MAX: usize = 65_536;
/// Most registered client sessions.
pub const SESSIONS_MAX: usize = 65_536;
/// Revoked certificate serials kept (a CA that needs more is replaced).
pub const REVOKED_MAX: usize = 65_536;
/// Most cache nodes registered (as many as a placement holds).
pub const CACHE_NODES_MAX: usize = 4096;
/// Longest cache node address (`host:port`).
pub const CACHE_NODE_ADDR_MAX_BYTES: usize = 255;
/// Longest certificate serial, in hex digits (RFC 5280: 20 octets).
pub const SERIAL_HEX_MAX: usize = 40;
/// Most open handles one session holds at once (all inodes together).
pub const OPEN_HANDLES_PER_SESSION_MAX: u64 = 1 << 20;
/// Most entries one `readdir` call returns.
pub const READDIR_ENTRIES_MAX: usize = 4096;
/// Cookie of the first entry inserted into a directory: the FUSE layer
/// answers cookies 1 and 2 itself for `.` and `..`.
pub const DIR_COOKIE_FIRST: u64 = 3;
/// Volume format this code creates and understands.
pub const VOLUME_FORMAT_VERSION: u32 = 1;
/// Version of the encoding of commands and outcomes (the Raft log entry format).
pub const COMMAND_FORMAT_VERSION: u32 = 1;
/// Version of the snapshot encoding.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;
/// Largest encoded command or outcome accepted by `decode`.
pub const ENCODED_COMMAND_BYTES_MAX: usize = 64 << 20;
/// A snapshot record is closed once it holds about this many bytes, so that
/// every record stays far below rkyv's 2 GiB relative-pointer range whatever
/// the size of the namespace.
pub const SNAPSHOT_RECORD_BYTES_TARGET: usize = 16 << 20;
/// Most items (inodes, entries, blocks, ...) in one snapshot record.
pub const SNAPSHOT_RECORD_ITEMS_MAX: usize = 65_536;
/// Largest snapshot record accepted by `restore`.
pub const SNAPSHOT_RECORD_BYTES_MAX: usize = 256 << 20;
