//! The invariants of [`MetaState`], checked as a whole: by tests after every
//! step, and by `restore` on every decoded snapshot (a snapshot that breaks
//! one is refused, so no later `apply` can trip over it).

use std::collections::BTreeMap;

use super::acl::{Acl, ACL_ACCESS, ACL_DEFAULT};
use super::attr::blocks_for;
use super::inode::{Body, Inode};
use super::limits::{
    BLOCK_SIZE_MAX_BYTES, BLOCK_SIZE_MIN_BYTES, DIR_COOKIE_FIRST, LINK_MAX, LOCKS_PER_INODE_MAX,
    MAX_FILE_BYTES, OPEN_HANDLES_PER_SESSION_MAX, SESSIONS_MAX, SYMLINK_MAX_BYTES,
    VOLUME_FORMAT_VERSION, XATTRS_PER_INODE_MAX, XATTR_BYTES_PER_INODE_MAX, XATTR_NAME_MAX_BYTES,
    XATTR_VALUE_MAX_BYTES,
};
use super::lock::posix_conflict;
use super::perm::{check_name, MODE_MASK};
use super::state::MetaState;
use super::types::{FileKind, FlockKind, Ino, Volume, ROOT_INO};

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// The POSIX ACLs of `inode`: valid, an access ACL more than a mode and
/// in step with the mode, none on symlinks, a default ACL on directories
/// only, and no other `system.` attribute.
fn check_acls(ino: Ino, inode: &Inode) -> Result<(), String> {
    for (name, value) in inode.xattrs.range(b"system.".to_vec()..) {
        if !name.starts_with(b"system.") {
            break;
        }
        let acl = match Acl::decode(value) {
            Ok(Some(acl)) => acl,
            other => {
                return Err(format!(
                    "inode {ino} ACL {name:?} does not decode: {other:?}"
                ))
            }
        };
        if name == ACL_ACCESS {
            ensure!(
                inode.kind != FileKind::Symlink,
                "symlink {ino} has an access ACL"
            );
            ensure!(
                !acl.is_minimal() && acl.mode_bits() == inode.mode & 0o777,
                "inode {ino} access ACL is not in step with mode {:o}",
                inode.mode
            );
        } else if name == ACL_DEFAULT {
            ensure!(
                inode.kind == FileKind::Dir,
                "inode {ino} has a default ACL and is not a directory"
            );
        } else {
            return Err(format!("inode {ino} has system attribute {name:?}"));
        }
    }
    Ok(())
}

impl MetaState {
    /// Panics with the first broken invariant.
    pub fn check_invariants(&self) {
        if let Err(broken) = self.validate() {
            panic!("metadata invariant broken: {broken}");
        }
    }

    /// The first broken invariant, if any:
    /// - every directory entry names a live inode of the entry's kind;
    /// - a file's nlink is the number of entries naming it; a directory's is
    ///   2 + its subdirectories, and it is named by exactly one entry, in
    ///   the directory its `..` names; no directory is its own ancestor;
    /// - an inode without links is open somewhere (else it was freed);
    /// - open counts, block and inode counters match what they count;
    /// - locks are held by registered sessions on inodes they hold open,
    ///   are canonical per owner and never conflict;
    /// - every value is within its limit.
    pub fn validate(&self) -> Result<(), String> {
        let Some(volume) = &self.volume else {
            ensure!(
                self.inodes.is_empty() && self.sessions.is_empty() && self.locks.is_empty(),
                "an unformatted state holds inodes, sessions or locks"
            );
            return Ok(());
        };
        ensure!(
            volume.block_size.is_power_of_two()
                && (BLOCK_SIZE_MIN_BYTES..=BLOCK_SIZE_MAX_BYTES).contains(&volume.block_size),
            "block size {} out of range",
            volume.block_size
        );
        ensure!(
            volume.format_version == VOLUME_FORMAT_VERSION,
            "volume format version {}",
            volume.format_version
        );
        let root = self.inodes.get(&ROOT_INO).ok_or("no root inode")?;
        ensure!(
            root.as_dir().is_some_and(|d| d.parent == ROOT_INO),
            "the root is not a directory that is its own parent"
        );
        ensure!(
            self.inodes.len() as u64 <= volume.inodes_max,
            "more inodes than the volume allows"
        );
        if let Some((&last, _)) = self.inodes.last_key_value() {
            ensure!(last.0 < self.next_ino, "inode {last} not below next_ino");
        }
        ensure!(
            self.sessions.len() <= SESSIONS_MAX,
            "more sessions than SESSIONS_MAX"
        );
        self.validate_tree(volume)?;
        self.validate_sessions()?;
        self.validate_locks()
    }

    /// Allocated-zero extents: of live regular files, below their end,
    /// disjoint from their block maps and each other, not adjacent, none
    /// empty, counted right; their blocks.
    fn validate_zeros(&self, block_size: u32) -> Result<u64, String> {
        let mut total: u64 = 0;
        for (&ino, zeros) in &self.zeros {
            let inode = self
                .inodes
                .get(&ino)
                .ok_or_else(|| format!("zero extents of missing inode {ino}"))?;
            let blocks = inode
                .blocks()
                .ok_or_else(|| format!("zero extents of {ino}, not a regular file"))?;
            let end = blocks_for(inode.size, block_size);
            let mut count: u64 = 0;
            let mut previous: Option<u64> = None;
            for (&first, &last) in &zeros.ranges {
                ensure!(first <= last, "file {ino} has an empty zero extent");
                ensure!(last < end, "file {ino} has a zero extent past its end");
                ensure!(
                    previous.is_none_or(|p| p.saturating_add(1) < first),
                    "file {ino} has overlapping or adjacent zero extents"
                );
                ensure!(
                    blocks.range(first..=last).next().is_none(),
                    "file {ino} has a zero extent over a mapped block"
                );
                count += last - first + 1;
                previous = Some(last);
            }
            ensure!(
                count > 0 && count == zeros.blocks,
                "file {ino} zero extents count {} blocks, hold {count}",
                zeros.blocks
            );
            total += count;
        }
        Ok(total)
    }

    /// Directory quotas: each project's limit and use are what its
    /// members say, and a live root is in its own project.
    fn validate_projects(&self) -> Result<(), String> {
        for (&ino, inode) in &self.inodes {
            let Some(dir) = inode.as_dir() else {
                continue;
            };
            for (name, dirent) in &dir.entries {
                let project = self.inodes.get(&dirent.ino).and_then(|t| t.project);
                ensure!(
                    project == Some(dirent.ino) || project == inode.project,
                    "entry {name:?} of {ino} is in project {project:?}, its directory in {:?}",
                    inode.project
                );
            }
        }
        let derived = self.derive_projects()?;
        ensure!(
            derived == self.projects,
            "projects {:?} but the inodes say {derived:?}",
            self.projects
        );
        for root in self.projects.keys() {
            if let Some(inode) = self.inodes.get(root) {
                ensure!(
                    inode.project == Some(*root),
                    "project {root} has a live root in project {:?}",
                    inode.project
                );
            }
        }
        Ok(())
    }

    /// Inodes, entries, link counts, the block counter, no cycles.
    fn validate_tree(&self, volume: &Volume) -> Result<(), String> {
        // Entries naming each inode, and subdirectories of each directory.
        let mut links: BTreeMap<Ino, u32> = BTreeMap::new();
        let mut subdirs: BTreeMap<Ino, u32> = BTreeMap::new();
        let mut blocks_used: u64 = 0;
        for (&ino, inode) in &self.inodes {
            self.validate_inode(ino, inode, volume.block_size)?;
            blocks_used += inode.block_count();
            let Some(dir) = inode.as_dir() else {
                continue;
            };
            for (name, dirent) in &dir.entries {
                let target = self.inodes.get(&dirent.ino).ok_or_else(|| {
                    format!("entry {name:?} of {ino} names missing inode {}", dirent.ino)
                })?;
                ensure!(
                    target.kind == dirent.kind,
                    "entry {name:?} of {ino} has the wrong kind"
                );
                ensure!(
                    dirent.ino != ROOT_INO,
                    "entry {name:?} of {ino} names the root"
                );
                *links.entry(dirent.ino).or_insert(0) += 1;
                if let Some(sub) = target.as_dir() {
                    ensure!(
                        sub.parent == ino,
                        "directory {} is in {ino} but its `..` is {}",
                        dirent.ino,
                        sub.parent
                    );
                    *subdirs.entry(ino).or_insert(0) += 1;
                }
            }
        }
        blocks_used += self.validate_zeros(volume.block_size)?;
        ensure!(
            blocks_used == self.blocks_used,
            "blocks_used {} but the block maps hold {blocks_used}",
            self.blocks_used
        );
        ensure!(
            blocks_used.saturating_mul(u64::from(volume.block_size)) <= volume.capacity_bytes,
            "more blocks than the capacity"
        );
        self.validate_projects()?;

        for (&ino, inode) in &self.inodes {
            let named = links.get(&ino).copied().unwrap_or(0);
            if inode.kind == FileKind::Dir {
                let expected = 2 + subdirs.get(&ino).copied().unwrap_or(0);
                if ino == ROOT_INO || named == 1 {
                    ensure!(
                        inode.nlink == expected,
                        "directory {ino} nlink {} != {expected}",
                        inode.nlink
                    );
                } else {
                    ensure!(named == 0, "directory {ino} is named by {named} entries");
                    let dir = inode.as_dir().ok_or("directory without entries")?;
                    ensure!(
                        inode.nlink == 0 && dir.is_empty() && dir.parent == ino,
                        "unlinked directory {ino} has links, entries or a parent"
                    );
                }
            } else {
                ensure!(
                    inode.nlink == named,
                    "inode {ino} nlink {} != {named} entries",
                    inode.nlink
                );
            }
            ensure!(
                inode.nlink > 0 || inode.open_count > 0,
                "inode {ino} has no link and no handle but was not freed"
            );
            ensure!(
                inode.nlink <= LINK_MAX,
                "inode {ino} has more than LINK_MAX links"
            );
        }

        // No cycles: every linked directory reaches the root.
        for (&ino, inode) in &self.inodes {
            if inode.kind != FileKind::Dir || inode.nlink == 0 {
                continue;
            }
            let mut cur = ino;
            let mut steps = 0;
            while cur != ROOT_INO {
                let parent = self
                    .inodes
                    .get(&cur)
                    .and_then(Inode::as_dir)
                    .map(|d| d.parent);
                cur = parent.ok_or_else(|| format!("the parent chain of {ino} breaks"))?;
                steps += 1;
                ensure!(steps <= self.inodes.len(), "directory {ino} is in a cycle");
            }
        }
        Ok(())
    }

    fn validate_inode(&self, ino: Ino, inode: &Inode, block_size: u32) -> Result<(), String> {
        ensure!(
            inode.mode & !MODE_MASK == 0,
            "inode {ino} mode {:o} has type bits",
            inode.mode
        );
        ensure!(
            inode.generation > 0 && inode.generation < self.next_generation,
            "inode {ino} generation out of range"
        );
        for t in [inode.atime, inode.mtime, inode.ctime, inode.crtime] {
            ensure!(t.is_valid(), "inode {ino} has a time with nsec {}", t.nsec);
        }
        ensure!(
            inode.xattrs.len() <= XATTRS_PER_INODE_MAX
                && inode.xattr_bytes() <= XATTR_BYTES_PER_INODE_MAX
                && inode.xattrs.iter().all(|(n, v)| {
                    !n.is_empty()
                        && n.len() <= XATTR_NAME_MAX_BYTES
                        && v.len() <= XATTR_VALUE_MAX_BYTES
                }),
            "inode {ino} extended attributes exceed their limits"
        );
        check_acls(ino, inode)?;
        ensure!(
            inode.kind.is_device() || inode.rdev == 0,
            "inode {ino} has an rdev"
        );
        match (&inode.body, inode.kind) {
            (Body::File { blocks }, FileKind::File) => {
                ensure!(
                    inode.size <= MAX_FILE_BYTES,
                    "file {ino} size beyond MAX_FILE_BYTES"
                );
                let end = blocks_for(inode.size, block_size);
                if let Some((&last, _)) = blocks.last_key_value() {
                    ensure!(
                        last < end,
                        "file {ino} has block {last} past its size {}",
                        inode.size
                    );
                }
            }
            (Body::Dir(dir), FileKind::Dir) => {
                ensure!(inode.size == 0, "directory {ino} has a size");
                ensure!(
                    dir.entries.len() == dir.by_cookie.len(),
                    "directory {ino} cookie index out of step"
                );
                for (name, dirent) in &dir.entries {
                    check_name(name).map_err(|e| format!("directory {ino} entry {name:?}: {e}"))?;
                    ensure!(
                        dirent.cookie >= DIR_COOKIE_FIRST
                            && dirent.cookie < dir.next_cookie
                            && dir.by_cookie.get(&dirent.cookie) == Some(name),
                        "directory {ino} entry {name:?} has a bad cookie"
                    );
                }
            }
            (Body::Symlink { target }, FileKind::Symlink) => {
                ensure!(
                    !target.is_empty()
                        && target.len() <= SYMLINK_MAX_BYTES
                        && !target.contains(&0)
                        && inode.size == target.len() as u64,
                    "symlink {ino} has a bad target"
                );
            }
            (
                Body::Special,
                FileKind::Fifo | FileKind::Socket | FileKind::CharDev | FileKind::BlockDev,
            ) => {
                ensure!(inode.size == 0, "special file {ino} has a size");
            }
            _ => {
                return Err(format!(
                    "inode {ino} body does not match kind {:?}",
                    inode.kind
                ))
            }
        }
        Ok(())
    }

    fn validate_sessions(&self) -> Result<(), String> {
        let mut opens: BTreeMap<Ino, u64> = BTreeMap::new();
        for (id, session) in &self.sessions {
            ensure!(
                session.lease_expires.is_valid(),
                "session {id} lease has a bad time"
            );
            let mut handles: u64 = 0;
            for (&ino, &count) in &session.opens {
                ensure!(count > 0, "session {id} holds zero handles of {ino}");
                ensure!(
                    self.inodes.contains_key(&ino),
                    "session {id} holds freed inode {ino}"
                );
                handles = handles
                    .checked_add(count)
                    .ok_or_else(|| format!("session {id} handle count overflows"))?;
                let total = opens.entry(ino).or_insert(0);
                *total = total
                    .checked_add(count)
                    .ok_or_else(|| format!("open count of {ino} overflows"))?;
            }
            ensure!(
                handles == session.handles && handles <= OPEN_HANDLES_PER_SESSION_MAX,
                "session {id} handle count {} != {handles}",
                session.handles
            );
        }
        for (&ino, inode) in &self.inodes {
            let expected = opens.get(&ino).copied().unwrap_or(0);
            ensure!(
                inode.open_count == expected,
                "inode {ino} open count {} != {expected} session handles",
                inode.open_count
            );
        }
        Ok(())
    }

    fn validate_locks(&self) -> Result<(), String> {
        for (&ino, locks) in &self.locks {
            ensure!(!locks.is_empty(), "inode {ino} has an empty lock entry");
            ensure!(self.inodes.contains_key(&ino), "locks on freed inode {ino}");
            ensure!(
                locks.posix.len() + locks.flock.len() <= LOCKS_PER_INODE_MAX,
                "inode {ino} has more than LOCKS_PER_INODE_MAX locks"
            );
            let holders = locks
                .posix
                .iter()
                .map(|l| l.owner)
                .chain(locks.flock.iter().map(|h| h.owner));
            for owner in holders {
                let open = self
                    .sessions
                    .get(&owner.session)
                    .is_some_and(|s| s.opens.contains_key(&ino));
                ensure!(
                    open,
                    "a lock on {ino} is held by session {} without a handle",
                    owner.session
                );
            }
            for (i, lock) in locks.posix.iter().enumerate() {
                ensure!(
                    lock.range.start <= lock.range.end,
                    "inverted lock range on {ino}"
                );
                if let Some(next) = locks.posix.get(i + 1) {
                    ensure!(
                        (lock.owner, lock.range.start) < (next.owner, next.range.start),
                        "locks on {ino} out of order"
                    );
                    if next.owner == lock.owner {
                        ensure!(
                            lock.range.end < next.range.start,
                            "overlapping locks of one owner on {ino}"
                        );
                        ensure!(
                            lock.kind != next.kind || lock.range.end + 1 != next.range.start,
                            "unmerged adjacent locks on {ino}"
                        );
                    }
                }
                ensure!(
                    posix_conflict(&locks.posix, lock.owner, lock.range, lock.kind).is_none(),
                    "conflicting record locks on {ino}"
                );
            }
            let exclusive = locks.flock.iter().any(|h| h.kind == FlockKind::Exclusive);
            ensure!(
                !exclusive || locks.flock.len() == 1,
                "an exclusive flock on {ino} is not alone"
            );
            ensure!(
                locks.flock.windows(2).all(|w| w[0].owner < w[1].owner),
                "flock holders of {ino} repeat or are out of order"
            );
        }
        Ok(())
    }
}
