//! Plain values that cross the state machine's boundary: ids, times,
//! credentials, attributes and the arguments of commands.

use std::fmt;

use rkyv::{Archive, Deserialize, Serialize};

/// An inode number. Numbers come from a counter in the state and are never
/// reused, so `(ino, generation)` is unique for the volume's lifetime.
#[derive(
    Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub struct Ino(pub u64);

/// The root directory.
pub const ROOT_INO: Ino = Ino(1);

impl fmt::Display for Ino {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A client session (one mount on one node): owns open handles and locks,
/// and loses them when its lease expires.
#[derive(
    Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Nanoseconds in a second; `Timespec::nsec` is below it.
pub const NSEC_PER_SEC: u32 = 1_000_000_000;

/// A point in time as the proposer's clock saw it (seconds since the epoch).
#[derive(
    Archive,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
)]
pub struct Timespec {
    /// Seconds since 1970-01-01 UTC (negative before).
    pub sec: i64,
    /// Nanoseconds, below [`NSEC_PER_SEC`].
    pub nsec: u32,
}

impl Timespec {
    /// A time of whole seconds.
    pub const fn from_secs(sec: i64) -> Self {
        Self { sec, nsec: 0 }
    }

    /// Whether `nsec` is in range.
    pub const fn is_valid(&self) -> bool {
        self.nsec < NSEC_PER_SEC
    }
}

/// Who asks: the caller's effective ids as the FUSE request carried them.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Creds {
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Creds {
    /// The super-user.
    pub fn root() -> Self {
        Self {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
        }
    }

    /// A user with a primary group and no supplementary groups.
    pub fn user(uid: u32, gid: u32) -> Self {
        Self {
            uid,
            gid,
            groups: Vec::new(),
        }
    }

    /// Whether rwx checks are bypassed (uid 0, the capabilities of root).
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether `gid` is the primary or a supplementary group.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// The type of an inode.
#[derive(
    Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum FileKind {
    /// Regular file: a size and a block map.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Unix domain socket.
    Socket,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
}

impl FileKind {
    /// The `S_IFMT` bits of `st_mode`.
    pub fn type_bits(self) -> u32 {
        match self {
            Self::File => libc::S_IFREG,
            Self::Dir => libc::S_IFDIR,
            Self::Symlink => libc::S_IFLNK,
            Self::Fifo => libc::S_IFIFO,
            Self::Socket => libc::S_IFSOCK,
            Self::CharDev => libc::S_IFCHR,
            Self::BlockDev => libc::S_IFBLK,
        }
    }

    /// The `d_type` of a directory entry.
    pub fn dirent_type(self) -> u8 {
        match self {
            Self::File => libc::DT_REG,
            Self::Dir => libc::DT_DIR,
            Self::Symlink => libc::DT_LNK,
            Self::Fifo => libc::DT_FIFO,
            Self::Socket => libc::DT_SOCK,
            Self::CharDev => libc::DT_CHR,
            Self::BlockDev => libc::DT_BLK,
        }
    }

    /// The kind named by the `S_IFMT` bits of a mode, if any.
    pub fn from_mode(mode: u32) -> Option<Self> {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Some(Self::File),
            libc::S_IFDIR => Some(Self::Dir),
            libc::S_IFLNK => Some(Self::Symlink),
            libc::S_IFIFO => Some(Self::Fifo),
            libc::S_IFSOCK => Some(Self::Socket),
            libc::S_IFCHR => Some(Self::CharDev),
            libc::S_IFBLK => Some(Self::BlockDev),
            _ => None,
        }
    }

    /// Whether the kind is a character or block device.
    pub fn is_device(self) -> bool {
        matches!(self, Self::CharDev | Self::BlockDev)
    }
}

/// Attributes of an inode, as `getattr` reports them.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// Generation of the inode number.
    pub generation: u64,
    /// Type.
    pub kind: FileKind,
    /// Permission bits with setuid, setgid and sticky (`0o7777`), no type bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (symlinks: length of the target; directories: 0).
    pub size: u64,
    /// Bytes of blocks in the block map (holes take none).
    pub allocated_bytes: u64,
    /// Hard links (directories: 2 + subdirectories; 0 once unlinked but open).
    pub nlink: u32,
    /// Device number of a character or block device.
    pub rdev: u32,
    /// Last access.
    pub atime: Timespec,
    /// Last data change.
    pub mtime: Timespec,
    /// Last attribute change.
    pub ctime: Timespec,
    /// Creation.
    pub crtime: Timespec,
    /// Preferred IO size: the volume block size.
    pub blksize: u32,
}

impl Attr {
    /// `st_mode`: type bits and permission bits.
    pub fn st_mode(&self) -> u32 {
        self.kind.type_bits() | self.mode
    }
}

/// One directory entry as `readdir` reports it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Name (bytes, no `/`, no NUL).
    pub name: Vec<u8>,
    /// Inode it names.
    pub ino: Ino,
    /// Type of that inode.
    pub kind: FileKind,
    /// Position: stable for the entry's life, increasing in insertion order.
    pub cookie: u64,
}

/// One version of one block of a file: what the block store keeps or collects.
#[derive(
    Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub struct BlockRef {
    /// File.
    pub ino: Ino,
    /// Block index (byte offset / block size).
    pub index: u64,
    /// Block version.
    pub version: u64,
}

/// How `setattr` sets a time.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    /// The command's `now` (`UTIME_NOW`): needs ownership or write permission.
    Now,
    /// An explicit time: needs ownership.
    At(Timespec),
}

/// Attribute changes of one `setattr`; `None` leaves a field alone.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct AttrChanges {
    /// New permission bits (`0o7777` is kept, the rest ignored).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
}

impl AttrChanges {
    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Access wanted by an `open`.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenFlags {
    /// Open for reading.
    pub read: bool,
    /// Open for writing.
    pub write: bool,
    /// `O_TRUNC`: needs write permission; the truncation itself is a following `SetAttr`.
    pub truncate: bool,
}

impl OpenFlags {
    /// Read only.
    pub const READ: Self = Self {
        read: true,
        write: false,
        truncate: false,
    };
    /// Write only.
    pub const WRITE: Self = Self {
        read: false,
        write: true,
        truncate: false,
    };
    /// Read and write.
    pub const READ_WRITE: Self = Self {
        read: true,
        write: true,
        truncate: false,
    };

    /// The flags of `open(2)` flags (`O_ACCMODE` and `O_TRUNC`).
    pub fn from_libc(flags: i32) -> Self {
        let access = flags & libc::O_ACCMODE;
        Self {
            read: access == libc::O_RDONLY || access == libc::O_RDWR,
            write: access == libc::O_WRONLY || access == libc::O_RDWR,
            truncate: flags & libc::O_TRUNC != 0,
        }
    }
}

/// `renameat2` flags.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    /// `RENAME_NOREPLACE`: fail with `EEXIST` instead of replacing.
    pub noreplace: bool,
    /// `RENAME_EXCHANGE`: swap the two entries, both must exist.
    pub exchange: bool,
}

/// The mode asked for a new inode (`Mknod`, `Mkdir`, `Create`), and who
/// applies the caller's umask:
/// - [`CreateMode::masked`]: the caller did (a mount without POSIX ACLs:
///   the kernel masks); the parent's default ACL is not inherited.
/// - [`CreateMode::with_umask`]: POSIX ACLs (`FUSE_POSIX_ACL`, the kernel
///   leaves the umask to the file system): a parent with a default ACL
///   gives it to the new inode instead of the umask (Linux
///   `posix_acl_create`); otherwise the umask applies.
///
/// One `u32` on the wire: bits 0..12 the mode; bit 31 set says bits 16..25
/// hold the umask. The field was a masked mode before ACLs existed, so Raft
/// log entries written then mean what they meant.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
pub struct CreateMode(u32);

/// Bit of [`CreateMode`] saying a umask is carried.
const CREATE_MODE_UMASK: u32 = 1 << 31;
/// Where [`CreateMode`] carries the umask.
const CREATE_MODE_UMASK_SHIFT: u32 = 16;

impl CreateMode {
    /// `mode` (permissions, setid, sticky) with the umask already applied.
    pub const fn masked(mode: u32) -> Self {
        Self(mode & 0o7777)
    }

    /// `mode` and the umask still to apply (unless a default ACL replaces it).
    pub const fn with_umask(mode: u32, umask: u32) -> Self {
        Self((mode & 0o7777) | (umask & 0o777) << CREATE_MODE_UMASK_SHIFT | CREATE_MODE_UMASK)
    }

    /// Permission bits, setuid, setgid, sticky.
    pub const fn mode(self) -> u32 {
        self.0 & 0o7777
    }

    /// The umask still to apply, if the caller left it to the state.
    pub const fn umask(self) -> Option<u32> {
        if self.0 & CREATE_MODE_UMASK == 0 {
            None
        } else {
            Some((self.0 >> CREATE_MODE_UMASK_SHIFT) & 0o777)
        }
    }
}

impl From<u32> for CreateMode {
    /// [`CreateMode::masked`].
    fn from(mode: u32) -> Self {
        Self::masked(mode)
    }
}

impl fmt::Debug for CreateMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.umask() {
            Some(umask) => write!(f, "{:04o} (umask {umask:03o})", self.mode()),
            None => write!(f, "{:04o}", self.mode()),
        }
    }
}

/// `setxattr` flags.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XattrFlags {
    /// `XATTR_CREATE`: fail with `EEXIST` if the attribute exists.
    pub create: bool,
    /// `XATTR_REPLACE`: fail with `ENODATA` if it does not.
    pub replace: bool,
}

/// Who holds a lock: a lock owner (process or open file) within a session.
#[derive(
    Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub struct LockOwner {
    /// The session of the node that took the lock.
    pub session: SessionId,
    /// The FUSE lock owner inside that session.
    pub owner: u64,
}

/// A byte range `start..=end` of a record lock (`end == u64::MAX`: to infinity).
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LockRange {
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive.
    pub end: u64,
}

impl LockRange {
    /// The whole file.
    pub const ALL: Self = Self {
        start: 0,
        end: u64::MAX,
    };

    /// Bytes `start..=end`.
    pub const fn new(start: u64, end: u64) -> Self {
        Self { start, end }
    }

    /// Whether the two ranges share a byte.
    pub fn overlaps(&self, other: &Self) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

/// Type of a POSIX record lock.
#[derive(
    Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum LockKind {
    /// `F_RDLCK`: shared.
    Read,
    /// `F_WRLCK`: exclusive.
    Write,
}

/// Type of an `flock` lock.
#[derive(
    Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum FlockKind {
    /// `LOCK_SH`.
    Shared,
    /// `LOCK_EX`.
    Exclusive,
}

/// A lock that keeps `getlk`'s requested lock from being granted.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockConflict {
    /// Holder.
    pub owner: LockOwner,
    /// Its type.
    pub kind: LockKind,
    /// Its range.
    pub range: LockRange,
}

/// The volume descriptor, fixed by `Format`.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// Volume id.
    pub uuid: [u8; 16],
    /// Bytes per block: a power of two.
    pub block_size: u32,
    /// [`crate::meta::limits::VOLUME_FORMAT_VERSION`] at format time.
    pub format_version: u32,
    /// Capacity for file data.
    pub capacity_bytes: u64,
    /// Most inodes, the root included.
    pub inodes_max: u64,
}

/// Usage of the volume, as `statfs` reports it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StatFs {
    /// Bytes per block.
    pub block_size: u32,
    /// Blocks of capacity.
    pub blocks_total: u64,
    /// Blocks not in any block map.
    pub blocks_free: u64,
    /// Inodes allowed.
    pub files_total: u64,
    /// Inodes still free.
    pub files_free: u64,
    /// Longest name.
    pub name_max_bytes: u32,
    /// Volume id.
    pub uuid: [u8; 16],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_modes() {
        let masked = CreateMode::masked(0o1_0644 | 0o4000);
        assert_eq!((masked.mode(), masked.umask()), (0o4644, None));
        assert_eq!(CreateMode::from(0o755), CreateMode::masked(0o755));
        let deferred = CreateMode::with_umask(0o100_666, 0o7_022);
        assert_eq!((deferred.mode(), deferred.umask()), (0o666, Some(0o022)));
        let no_umask = CreateMode::with_umask(0o777, 0);
        assert_eq!(no_umask.umask(), Some(0), "a umask of 0 is still carried");
        assert_ne!(no_umask, CreateMode::masked(0o777));
        assert_eq!(format!("{deferred:?}"), "0666 (umask 022)");
    }

    #[test]
    fn libc_conversions() {
        let check =
            |flags: i32, expected: OpenFlags| assert_eq!(OpenFlags::from_libc(flags), expected);
        check(libc::O_RDONLY, OpenFlags::READ);
        check(libc::O_WRONLY | libc::O_APPEND, OpenFlags::WRITE);
        check(libc::O_RDWR | libc::O_CREAT, OpenFlags::READ_WRITE);
        check(
            libc::O_RDONLY | libc::O_TRUNC,
            OpenFlags {
                truncate: true,
                ..OpenFlags::READ
            },
        );
        for kind in [
            FileKind::File,
            FileKind::Dir,
            FileKind::Symlink,
            FileKind::Fifo,
            FileKind::Socket,
            FileKind::CharDev,
            FileKind::BlockDev,
        ] {
            assert_eq!(FileKind::from_mode(kind.type_bits() | 0o755), Some(kind));
        }
        assert_eq!(FileKind::from_mode(0o755), None);
        assert!(
            Timespec {
                sec: -1,
                nsec: 999_999_999
            } < Timespec::from_secs(0)
        );
        assert!(!Timespec {
            sec: 0,
            nsec: NSEC_PER_SEC
        }
        .is_valid());
    }
}
