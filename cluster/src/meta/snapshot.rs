//! Snapshots of the whole state: a sequence of framed records (header,
//! inodes, directory entries, block maps, sessions, locks, end), each an
//! rkyv archive of bounded size. Records keep every archive far below
//! rkyv's 2 GiB pointer range however large the namespace grows; the end
//! record counts the records so truncation is caught, and each frame's
//! CRC32C catches damage. `restore` rebuilds the state and refuses it
//! unless every invariant holds.

use std::collections::BTreeMap;

use rkyv::{Archive, Deserialize, Serialize};

use super::codec::{archive, put_frame, take_frame, unarchive};
use super::error::DecodeError;
use super::inode::{Body, Dir, Dirent, Inode};
use super::limits::{
    SNAPSHOT_FORMAT_VERSION, SNAPSHOT_RECORD_BYTES_MAX, SNAPSHOT_RECORD_BYTES_TARGET,
    SNAPSHOT_RECORD_ITEMS_MAX,
};
use super::lock::{FlockHolder, InodeLocks, PosixLock};
use super::session::Session;
use super::state::MetaState;
use super::types::{
    FileKind, FlockKind, Ino, LockKind, LockOwner, LockRange, SessionId, Timespec, Volume,
};

const SNAPSHOT_MAGIC: [u8; 4] = *b"DLMS";
const WHAT: &str = "snapshot record";
/// Estimated archived bytes of an item besides its variable-length parts.
const ITEM_FIXED_BYTES: usize = 128;

#[derive(Archive, Serialize, Deserialize, Debug)]
enum Record {
    Header {
        volume: Option<Volume>,
        next_ino: u64,
        next_generation: u64,
    },
    Inodes(Vec<InodeImage>),
    Dirents {
        dir: Ino,
        entries: Vec<DirentImage>,
    },
    Blocks {
        ino: Ino,
        blocks: Vec<(u64, u64)>,
    },
    Sessions(Vec<SessionImage>),
    Locks(Vec<LockImage>),
    /// Last record: how many came before it.
    End {
        records: u64,
    },
    // New records go after `End`: a record's tag is its position, and
    // snapshots written before keep their meaning.
    /// Serial numbers of revoked peer certificates.
    Revoked(Vec<String>),
    /// The cache node registry: its epoch and (some of) its nodes.
    CacheNodes {
        epoch: u64,
        nodes: Vec<super::cache_nodes::CacheNode>,
    },
    /// Inodes in a directory quota's project: (inode, the project's root).
    /// The projects' limits and use follow from the inodes.
    Projects(Vec<(Ino, Ino)>),
    /// Allocated-zero extents of a file: (first block, last block).
    Zeros {
        ino: Ino,
        ranges: Vec<(u64, u64)>,
    },
}

#[derive(Archive, Serialize, Deserialize, Debug)]
struct InodeImage {
    ino: Ino,
    kind: FileKind,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    nlink: u32,
    rdev: u32,
    atime: Timespec,
    mtime: Timespec,
    ctime: Timespec,
    crtime: Timespec,
    generation: u64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    symlink_target: Vec<u8>,
    /// Directories: `..` and the next cookie (the entries follow in `Dirents`).
    dir: Option<(Ino, u64)>,
}

#[derive(Archive, Serialize, Deserialize, Debug)]
struct DirentImage {
    name: Vec<u8>,
    ino: Ino,
    kind: FileKind,
    cookie: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug)]
struct SessionImage {
    session: SessionId,
    lease_expires: Timespec,
    opens: Vec<(Ino, u64)>,
}

#[derive(Archive, Serialize, Deserialize, Debug)]
struct LockImage {
    ino: Ino,
    posix: Vec<(LockOwner, LockRange, LockKind)>,
    flock: Vec<(LockOwner, FlockKind)>,
}

/// Appends records to a snapshot, batching items into bounded records.
struct Writer {
    out: Vec<u8>,
    records: u64,
}

impl Writer {
    fn push(&mut self, record: &Record) {
        put_frame(
            &mut self.out,
            SNAPSHOT_MAGIC,
            SNAPSHOT_FORMAT_VERSION,
            &archive(record),
        );
        self.records += 1;
    }
}

/// Items collected until a record is full.
struct Batch<T> {
    items: Vec<T>,
    bytes: usize,
}

impl<T> Batch<T> {
    fn new() -> Self {
        Self {
            items: Vec::new(),
            bytes: 0,
        }
    }

    /// Adds an item of about `bytes`; the full batch when it is time to write one.
    fn add(&mut self, item: T, bytes: usize) -> Option<Vec<T>> {
        self.items.push(item);
        self.bytes += bytes;
        let full = self.items.len() >= SNAPSHOT_RECORD_ITEMS_MAX
            || self.bytes >= SNAPSHOT_RECORD_BYTES_TARGET;
        full.then(|| self.take())
    }

    fn take(&mut self) -> Vec<T> {
        self.bytes = 0;
        std::mem::take(&mut self.items)
    }
}

fn image_of(ino: Ino, inode: &Inode) -> InodeImage {
    InodeImage {
        ino,
        kind: inode.kind,
        mode: inode.mode,
        uid: inode.uid,
        gid: inode.gid,
        size: inode.size,
        nlink: inode.nlink,
        rdev: inode.rdev,
        atime: inode.atime,
        mtime: inode.mtime,
        ctime: inode.ctime,
        crtime: inode.crtime,
        generation: inode.generation,
        xattrs: inode
            .xattrs
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect(),
        symlink_target: match &inode.body {
            Body::Symlink { target } => target.clone(),
            _ => Vec::new(),
        },
        dir: inode.as_dir().map(|d| (d.parent, d.next_cookie)),
    }
}

fn inode_of(image: InodeImage) -> Result<Inode, DecodeError> {
    let body = match (image.kind, image.dir) {
        (FileKind::Dir, Some((parent, next_cookie))) => Body::Dir(Dir {
            parent,
            next_cookie,
            entries: BTreeMap::new(),
            by_cookie: BTreeMap::new(),
        }),
        (FileKind::Dir, None) | (_, Some(_)) => {
            return Err(inconsistent(format!(
                "inode {} kind and body disagree",
                image.ino
            )))
        }
        (FileKind::File, None) => Body::File {
            blocks: BTreeMap::new(),
        },
        (FileKind::Symlink, None) => Body::Symlink {
            target: image.symlink_target,
        },
        (_, None) => Body::Special,
    };
    let xattr_count = image.xattrs.len();
    let xattrs: BTreeMap<Vec<u8>, Vec<u8>> = image.xattrs.into_iter().collect();
    if xattrs.len() != xattr_count {
        return Err(inconsistent(format!(
            "inode {} repeats an xattr",
            image.ino
        )));
    }
    Ok(Inode {
        kind: image.kind,
        mode: image.mode,
        uid: image.uid,
        gid: image.gid,
        size: image.size,
        nlink: image.nlink,
        rdev: image.rdev,
        atime: image.atime,
        mtime: image.mtime,
        ctime: image.ctime,
        crtime: image.crtime,
        generation: image.generation,
        open_count: 0,
        xattrs,
        body,
        project: None,
    })
}

fn inconsistent(why: String) -> DecodeError {
    DecodeError::Inconsistent(why)
}

impl MetaState {
    /// The whole state as bytes: deterministic (equal states give equal
    /// bytes), versioned, checksummed.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut w = Writer {
            out: Vec::new(),
            records: 0,
        };
        w.push(&Record::Header {
            volume: self.volume.clone(),
            next_ino: self.next_ino,
            next_generation: self.next_generation,
        });

        let mut inodes = Batch::new();
        for (&ino, inode) in &self.inodes {
            let bytes = ITEM_FIXED_BYTES + inode.xattr_bytes() + inode.size.min(4096) as usize;
            if let Some(full) = inodes.add(image_of(ino, inode), bytes) {
                w.push(&Record::Inodes(full));
            }
        }
        if !inodes.items.is_empty() {
            w.push(&Record::Inodes(inodes.take()));
        }

        for (&ino, inode) in &self.inodes {
            if let Some(dir) = inode.as_dir() {
                let mut entries = Batch::new();
                for (name, d) in &dir.entries {
                    let image = DirentImage {
                        name: name.clone(),
                        ino: d.ino,
                        kind: d.kind,
                        cookie: d.cookie,
                    };
                    if let Some(full) = entries.add(image, ITEM_FIXED_BYTES + name.len()) {
                        w.push(&Record::Dirents {
                            dir: ino,
                            entries: full,
                        });
                    }
                }
                if !entries.items.is_empty() {
                    w.push(&Record::Dirents {
                        dir: ino,
                        entries: entries.take(),
                    });
                }
            }
            if let Some(map) = inode.blocks() {
                let pairs: Vec<(u64, u64)> = map.iter().map(|(&i, &v)| (i, v)).collect();
                for chunk in pairs.chunks(SNAPSHOT_RECORD_ITEMS_MAX) {
                    w.push(&Record::Blocks {
                        ino,
                        blocks: chunk.to_vec(),
                    });
                }
            }
        }

        let mut sessions = Batch::new();
        for (&session, s) in &self.sessions {
            let image = SessionImage {
                session,
                lease_expires: s.lease_expires,
                opens: s.opens.iter().map(|(&i, &c)| (i, c)).collect(),
            };
            let bytes = ITEM_FIXED_BYTES + 16 * s.opens.len();
            if let Some(full) = sessions.add(image, bytes) {
                w.push(&Record::Sessions(full));
            }
        }
        if !sessions.items.is_empty() {
            w.push(&Record::Sessions(sessions.take()));
        }

        let mut locks = Batch::new();
        for (&ino, l) in &self.locks {
            let image = LockImage {
                ino,
                posix: l.posix.iter().map(|p| (p.owner, p.range, p.kind)).collect(),
                flock: l.flock.iter().map(|h| (h.owner, h.kind)).collect(),
            };
            let bytes = ITEM_FIXED_BYTES * (1 + l.posix.len() + l.flock.len());
            if let Some(full) = locks.add(image, bytes) {
                w.push(&Record::Locks(full));
            }
        }
        if !locks.items.is_empty() {
            w.push(&Record::Locks(locks.take()));
        }

        let revoked: Vec<String> = self.revoked.iter().cloned().collect();
        for chunk in revoked.chunks(SNAPSHOT_RECORD_ITEMS_MAX) {
            w.push(&Record::Revoked(chunk.to_vec()));
        }

        self.push_registry(&mut w);

        self.push_files_extras(&mut w);

        let records = w.records;
        w.push(&Record::End { records });
        w.out
    }

    /// Directory quota membership and allocated-zero extents.
    fn push_files_extras(&self, w: &mut Writer) {
        let members: Vec<(Ino, Ino)> = self
            .inodes
            .iter()
            .filter_map(|(&ino, inode)| inode.project.map(|root| (ino, root)))
            .collect();
        for chunk in members.chunks(SNAPSHOT_RECORD_ITEMS_MAX) {
            w.push(&Record::Projects(chunk.to_vec()));
        }
        for (&ino, zeros) in &self.zeros {
            let ranges: Vec<(u64, u64)> = zeros.ranges.iter().map(|(&f, &l)| (f, l)).collect();
            for chunk in ranges.chunks(SNAPSHOT_RECORD_ITEMS_MAX) {
                w.push(&Record::Zeros {
                    ino,
                    ranges: chunk.to_vec(),
                });
            }
        }
    }

    /// The cache node registry's records; an emptied registry still
    /// records its epoch (epochs never go back).
    fn push_registry(&self, w: &mut Writer) {
        let (epoch, nodes) = self.cache_registry_image();
        if epoch == 0 {
            return;
        }
        if nodes.is_empty() {
            w.push(&Record::CacheNodes { epoch, nodes });
            return;
        }
        for chunk in nodes.chunks(SNAPSHOT_RECORD_ITEMS_MAX) {
            w.push(&Record::CacheNodes {
                epoch,
                nodes: chunk.to_vec(),
            });
        }
    }

    /// The state in `bytes` from [`MetaState::snapshot`]. Damaged,
    /// truncated, foreign or inconsistent bytes are an error.
    pub fn restore(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut state = Self::new();
        let mut rest = bytes;
        let mut records: u64 = 0;
        loop {
            let (payload, after) = take_frame(
                rest,
                SNAPSHOT_MAGIC,
                SNAPSHOT_FORMAT_VERSION,
                WHAT,
                SNAPSHOT_RECORD_BYTES_MAX,
            )?;
            rest = after;
            let record: Record = unarchive(payload)?;
            match record {
                Record::Header {
                    volume,
                    next_ino,
                    next_generation,
                } if records == 0 => {
                    state.volume = volume;
                    state.next_ino = next_ino;
                    state.next_generation = next_generation;
                }
                _ if records == 0 => {
                    return Err(inconsistent("the first record is not the header".into()))
                }
                Record::Header { .. } => return Err(inconsistent("a second header".into())),
                Record::End { records: count } => {
                    if count != records {
                        return Err(inconsistent(format!(
                            "the end record counts {count} records, {records} came before it"
                        )));
                    }
                    if !rest.is_empty() {
                        return Err(DecodeError::Trailing(rest.len()));
                    }
                    break;
                }
                record => state.restore_record(record)?,
            }
            records += 1;
        }
        state.derive_counters()?;
        state.validate().map_err(DecodeError::Inconsistent)?;
        Ok(state)
    }

    fn restore_record(&mut self, record: Record) -> Result<(), DecodeError> {
        match record {
            Record::Header { .. } | Record::End { .. } => {
                debug_assert!(false, "handled by restore");
            }
            Record::CacheNodes { epoch, nodes } => self.restore_cache_nodes(epoch, nodes)?,
            Record::Projects(members) => self.restore_projects(members)?,
            Record::Zeros { ino, ranges } => self.restore_zeros(ino, ranges)?,
            Record::Revoked(serials) => {
                if let Some(bad) = serials.into_iter().find(|s| self.revoke(s).is_err()) {
                    return Err(inconsistent(format!("bad revoked serial {bad:?}")));
                }
            }
            Record::Inodes(images) => {
                for image in images {
                    let ino = image.ino;
                    if self.inodes.insert(ino, inode_of(image)?).is_some() {
                        return Err(inconsistent(format!("inode {ino} appears twice")));
                    }
                }
            }
            Record::Dirents { dir, entries } => {
                let d = self
                    .inodes
                    .get_mut(&dir)
                    .and_then(Inode::as_dir_mut)
                    .ok_or_else(|| {
                        inconsistent(format!("entries for {dir}, not a known directory"))
                    })?;
                for e in entries {
                    let dirent = Dirent {
                        ino: e.ino,
                        kind: e.kind,
                        cookie: e.cookie,
                    };
                    if d.by_cookie.insert(e.cookie, e.name.clone()).is_some()
                        || d.entries.insert(e.name, dirent).is_some()
                    {
                        return Err(inconsistent(format!(
                            "directory {dir} repeats an entry or cookie"
                        )));
                    }
                }
            }
            Record::Blocks { ino, blocks } => {
                let Some(Body::File { blocks: map }) =
                    self.inodes.get_mut(&ino).map(|i| &mut i.body)
                else {
                    return Err(inconsistent(format!("blocks for {ino}, not a known file")));
                };
                for (index, version) in blocks {
                    if map.insert(index, version).is_some() {
                        return Err(inconsistent(format!("file {ino} repeats block {index}")));
                    }
                }
            }
            Record::Sessions(images) => {
                for image in images {
                    let count = image.opens.len();
                    let opens: BTreeMap<Ino, u64> = image.opens.into_iter().collect();
                    let handles = opens.values().try_fold(0u64, |sum, &c| sum.checked_add(c));
                    let (Some(handles), true) = (handles, opens.len() == count) else {
                        return Err(inconsistent(format!(
                            "session {} handles are malformed",
                            image.session
                        )));
                    };
                    let session = Session {
                        lease_expires: image.lease_expires,
                        opens,
                        handles,
                    };
                    if self.sessions.insert(image.session, session).is_some() {
                        return Err(inconsistent(format!(
                            "session {} appears twice",
                            image.session
                        )));
                    }
                }
            }
            Record::Locks(images) => {
                for image in images {
                    let locks = InodeLocks {
                        posix: image
                            .posix
                            .into_iter()
                            .map(|(owner, range, kind)| PosixLock { owner, range, kind })
                            .collect(),
                        flock: image
                            .flock
                            .into_iter()
                            .map(|(owner, kind)| FlockHolder { owner, kind })
                            .collect(),
                    };
                    if self.locks.insert(image.ino, locks).is_some() {
                        return Err(inconsistent(format!("locks of {} appear twice", image.ino)));
                    }
                }
            }
        }
        Ok(())
    }

    /// The projects of the inodes in a `Projects` record.
    fn restore_projects(&mut self, members: Vec<(Ino, Ino)>) -> Result<(), DecodeError> {
        for (ino, root) in members {
            let inode = self.inodes.get_mut(&ino).ok_or_else(|| {
                inconsistent(format!("project member {ino} is not a known inode"))
            })?;
            if inode.project.replace(root).is_some() {
                return Err(inconsistent(format!("inode {ino} is in two projects")));
            }
        }
        Ok(())
    }

    /// Allocated-zero extents of `ino` from a `Zeros` record (the
    /// invariants check their places).
    fn restore_zeros(&mut self, ino: Ino, ranges: Vec<(u64, u64)>) -> Result<(), DecodeError> {
        let zeros = self.zeros.entry(ino).or_default();
        for (first, last) in ranges {
            let blocks = (last - first.min(last)).checked_add(1);
            let blocks = blocks
                .filter(|_| first <= last)
                .and_then(|b| zeros.blocks.checked_add(b))
                .ok_or_else(|| inconsistent(format!("file {ino} has a bad zero extent")))?;
            if zeros.ranges.insert(first, last).is_some() {
                return Err(inconsistent(format!("file {ino} repeats a zero extent")));
            }
            zeros.blocks = blocks;
        }
        Ok(())
    }

    /// Open counts and the block counter, which the snapshot leaves out
    /// because they follow from what it holds.
    fn derive_counters(&mut self) -> Result<(), DecodeError> {
        for (id, session) in &self.sessions {
            for (ino, &count) in &session.opens {
                let inode = self.inodes.get_mut(ino).ok_or_else(|| {
                    inconsistent(format!("session {id} holds unknown inode {ino}"))
                })?;
                inode.open_count = inode
                    .open_count
                    .checked_add(count)
                    .ok_or_else(|| inconsistent(format!("open count of {ino} overflows")))?;
            }
        }
        self.blocks_used = self
            .inodes
            .values()
            .map(Inode::block_count)
            .chain(self.zeros.values().map(|z| z.blocks))
            .try_fold(0u64, u64::checked_add)
            .ok_or_else(|| inconsistent("block count overflows".into()))?;
        self.projects = self.derive_projects().map_err(inconsistent)?;
        Ok(())
    }
}
