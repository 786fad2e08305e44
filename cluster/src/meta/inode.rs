//! An inode as the state keeps it, and a directory's entries.

use std::collections::BTreeMap;

use super::limits::DIR_COOKIE_FIRST;
use super::types::{Attr, FileKind, Ino, Timespec};

/// Extended attributes by name (POSIX ACLs among them).
pub(crate) type Xattrs = BTreeMap<Vec<u8>, Vec<u8>>;

/// One inode. `kind` decides the shape of `body` (checked by the invariants).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Inode {
    pub kind: FileKind,
    /// Permission bits, setuid, setgid, sticky: `0o7777`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub rdev: u32,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub crtime: Timespec,
    pub generation: u64,
    /// Open handles of all sessions; derived from the sessions, kept here
    /// because deferred delete asks for it on every unlink and release.
    pub open_count: u64,
    pub xattrs: Xattrs,
    pub body: Body,
    /// The root of the directory quota (project) this inode counts
    /// against, itself for a root (see `quota`).
    pub project: Option<Ino>,
}

/// What an inode holds besides attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Body {
    /// Regular file: block index -> current version; holes have no entry.
    File {
        blocks: BTreeMap<u64, u64>,
    },
    Dir(Dir),
    Symlink {
        target: Vec<u8>,
    },
    /// Fifo, socket, devices: attributes only.
    Special,
}

/// A directory's entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Dir {
    /// The directory holding this one's entry (root and unlinked
    /// directories: themselves), i.e. what `..` names.
    pub parent: Ino,
    /// Cookie of the next inserted entry: cookies only grow, so a `readdir`
    /// that resumes after a cookie neither repeats nor skips survivors.
    pub next_cookie: u64,
    pub entries: BTreeMap<Vec<u8>, Dirent>,
    /// cookie -> name, the `readdir` order.
    pub by_cookie: BTreeMap<u64, Vec<u8>>,
}

/// One entry of a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dirent {
    pub ino: Ino,
    pub kind: FileKind,
    pub cookie: u64,
}

impl Dir {
    pub fn new(parent: Ino) -> Self {
        Self {
            parent,
            next_cookie: DIR_COOKIE_FIRST,
            entries: BTreeMap::new(),
            by_cookie: BTreeMap::new(),
        }
    }

    pub fn get(&self, name: &[u8]) -> Option<Dirent> {
        self.entries.get(name).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether one more entry can get a cookie (it takes 2^64 inserts to fail).
    pub fn has_cookie_left(&self) -> bool {
        self.next_cookie < u64::MAX
    }

    /// Adds an entry under a fresh cookie. The name must be free and
    /// [`Dir::has_cookie_left`] true: callers check both before mutating.
    pub fn insert(&mut self, name: &[u8], ino: Ino, kind: FileKind) -> u64 {
        debug_assert!(!self.entries.contains_key(name));
        debug_assert!(self.has_cookie_left());
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        self.entries
            .insert(name.to_vec(), Dirent { ino, kind, cookie });
        self.by_cookie.insert(cookie, name.to_vec());
        cookie
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<Dirent> {
        let dirent = self.entries.remove(name)?;
        let removed = self.by_cookie.remove(&dirent.cookie);
        debug_assert!(removed.as_deref() == Some(name));
        Some(dirent)
    }

    /// Points an existing entry at another inode, keeping its cookie (exchange).
    pub fn retarget(&mut self, name: &[u8], ino: Ino, kind: FileKind) {
        let dirent = self.entries.get_mut(name);
        debug_assert!(dirent.is_some());
        if let Some(dirent) = dirent {
            dirent.ino = ino;
            dirent.kind = kind;
        }
    }
}

impl Inode {
    /// A new inode with one link (two for a directory), all times `now`.
    pub fn new(kind: FileKind, mode: u32, uid: u32, gid: u32, now: Timespec, body: Body) -> Self {
        let nlink = if kind == FileKind::Dir { 2 } else { 1 };
        Self {
            kind,
            mode,
            uid,
            gid,
            size: 0,
            nlink,
            rdev: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            generation: 0,
            open_count: 0,
            xattrs: Xattrs::new(),
            body,
            project: None,
        }
    }

    pub fn as_dir(&self) -> Option<&Dir> {
        match &self.body {
            Body::Dir(dir) => Some(dir),
            _ => None,
        }
    }

    pub fn as_dir_mut(&mut self) -> Option<&mut Dir> {
        match &mut self.body {
            Body::Dir(dir) => Some(dir),
            _ => None,
        }
    }

    pub fn blocks(&self) -> Option<&BTreeMap<u64, u64>> {
        match &self.body {
            Body::File { blocks } => Some(blocks),
            _ => None,
        }
    }

    /// Entries in the block map.
    pub fn block_count(&self) -> u64 {
        self.blocks().map_or(0, |b| b.len() as u64)
    }

    /// Bytes of names and values of all extended attributes.
    pub fn xattr_bytes(&self) -> usize {
        self.xattrs.iter().map(|(n, v)| n.len() + v.len()).sum()
    }

    pub fn attr(&self, ino: Ino, block_size: u32) -> Attr {
        Attr {
            ino,
            generation: self.generation,
            kind: self.kind,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            allocated_bytes: self.block_count().saturating_mul(u64::from(block_size)),
            nlink: self.nlink,
            rdev: self.rdev,
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.crtime,
            blksize: block_size,
        }
    }

    /// Sets mtime and ctime: the inode's data (or a directory's entries) changed.
    pub fn touch_data(&mut self, now: Timespec) {
        self.mtime = now;
        self.ctime = now;
    }
}
