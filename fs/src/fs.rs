//! [`Fs`]: POSIX operations over the metadata ([`MetaLink`]) and the block
//! engine, with per-inode write buffering and the flush protocol.
//!
//! Flush protocol (the one ordering that keeps data safe): dirty blocks get
//! fresh versions, the sink makes them durable, the engine caches them, and
//! only then does `SetBlocks` make the metadata point at them; the versions
//! the metadata drops are handed to the sink to collect. A crash before
//! `SetBlocks` leaves unreferenced blocks in the store, never a file whose
//! map names a block that does not exist.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use datenlord_cluster::meta::{
    Attr, AttrChanges, BlockRef, Command, CreateMode, Creds, DirEntry, FileKind, FlockKind, Ino,
    LockConflict, LockKind, LockOwner, LockRange, OpenFlags, Outcome, RenameFlags, Reply,
    SessionId, SetTime, Timespec, XattrFlags, BLOCKS_PER_COMMAND_MAX, MAX_FILE_BYTES,
    VOLUME_FORMAT_VERSION,
};
use datenlord_engine::{BlockId, EngineHandle};
use futures::executor::block_on;
use futures::lock::Mutex as AsyncMutex;
use tracing::{debug, info, warn};

use crate::commit::{Admission, CommitStats, Committer};
use crate::config::{AtimePolicy, FsConfig, RELATIME_INTERVAL_SECS};
use crate::copies::{Copies, LocalCopy, OnChange};
use crate::dirty::DirtyFile;
use crate::error::{FsError, Result};
use crate::garbage::GarbageHandoff;
use crate::meta::MetaLink;
use crate::range::{block_start, pieces, PunchSplit};
use crate::sink::BlockSink;
use crate::version::VersionClock;

mod quota;

/// Told of each file a background commit made visible in the metadata
/// (see [`Fs::on_commit`]).
pub type CommitObserver = Arc<dyn Fn(Ino) + Send + Sync>;

/// Files whose attributes at open are remembered for `keep_cache`.
const SEEN_AT_OPEN_MAX: usize = 65_536;
/// Bytes read per step when a local copy is made, written or compared.
const COPY_CHUNK: u64 = 1 << 20;

/// An open file as [`Fs::open`] and [`Fs::create`] return it.
#[derive(Clone, Debug)]
pub struct Opened {
    /// The handle for later calls.
    pub fh: u64,
    /// Attributes at open.
    pub attr: Attr,
    /// The file did not change since it was last opened on this node: page
    /// cache contents may be kept.
    pub keep_cache: bool,
}

#[derive(Clone, Copy, Debug)]
struct Handle {
    ino: Ino,
    write: bool,
    append: bool,
}

/// Unflushed state of one file. Behind an async mutex per inode: writes,
/// flushes and reads of a dirty file are serialized (see ARCHITECTURE.md).
#[derive(Debug)]
struct FileState {
    dirty: DirtyFile,
    /// The size with unflushed writes; `Some` while anything is unflushed.
    size: Option<u64>,
    /// Credentials of the last writer (`SetBlocks` clears setuid for them).
    writer: Creds,
    /// Blocks the unflushed writes put where the block map had none (what
    /// a directory quota reserves, `quota.rs`); empty once committed.
    unmapped: BTreeSet<u64>,
}

impl FileState {
    /// Nothing is unflushed any more (committed, or dropped).
    fn settle(&mut self, shared: &FileShared) {
        self.size = None;
        self.unmapped.clear();
        shared.clear();
    }
}

#[derive(Debug)]
struct FileEntry {
    state: Arc<AsyncMutex<FileState>>,
    /// What `getattr`, `close` and `release` read without waiting for the
    /// inode's mutex.
    shared: Arc<FileShared>,
    /// Handles open on this node.
    opens: u64,
}

/// A snapshot of a file's [`FileShared`] counters.
#[derive(Clone, Copy, Debug)]
struct Pending {
    size: u64,
    new_blocks: u64,
    written_ns: u64,
}

/// The part of a file's unflushed state read without its mutex.
#[derive(Debug, Default)]
struct FileShared {
    /// The size with unflushed writes, or 0.
    size: AtomicU64,
    /// When the last unflushed write happened (ns since the epoch), or 0:
    /// the file's mtime and ctime until its blocks are committed, and the
    /// time the commit stamps.
    mtime_ns: AtomicU64,
    /// Blocks the published writes add to the block map (counted at
    /// close): `getattr` shows them in the allocated size before the
    /// commit, as it will after.
    new_blocks: AtomicU64,
    /// A background commit of the file failed: the next `close` or
    /// `fsync` returns it (once, like Linux's errseq for writeback).
    error: Mutex<Option<FsError>>,
    /// The root of the directory quota the unflushed writes reserved
    /// bytes in (0: none; see `quota.rs`).
    quota_root: AtomicU64,
    /// Bytes the unflushed writes reserved there, until they commit.
    reserved: AtomicU64,
}

impl FileShared {
    fn is_dirty(&self) -> bool {
        self.size.load(Ordering::Acquire) != 0
    }

    fn record(&self, error: FsError) {
        *self.error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
    }

    fn take_error(&self) -> Option<FsError> {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn has_error(&self) -> bool {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Marks the unflushed writes as committed (or dropped).
    fn clear(&self) {
        self.size.store(0, Ordering::Release);
        self.mtime_ns.store(0, Ordering::Release);
        self.new_blocks.store(0, Ordering::Release);
        self.reserved.store(0, Ordering::Release);
    }
}

fn timespec_ns(t: Timespec) -> u64 {
    u64::try_from(t.sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(t.nsec))
}

fn ns_timespec(ns: u64) -> Timespec {
    Timespec {
        sec: i64::try_from(ns / 1_000_000_000).unwrap_or(i64::MAX),
        nsec: u32::try_from(ns % 1_000_000_000).unwrap_or(0),
    }
}

/// The time a commit of the file's unflushed writes stamps: its last
/// write's (now if unknown).
fn write_time(shared: &FileShared) -> Timespec {
    match shared.mtime_ns.load(Ordering::Acquire) {
        0 => now(),
        written => ns_timespec(written),
    }
}

/// A file of a group commit, locked.
type LockedFile<'a> = (
    Ino,
    futures::lock::MutexGuard<'a, FileState>,
    &'a Arc<FileShared>,
);

/// A file's unflushed writes taken as new block versions.
struct Prepared {
    size: u64,
    blocks: Vec<(BlockId, Vec<u8>)>,
}

struct Renewer {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

/// Applies access time updates off the read path (a read never waits for a
/// Raft commit to move atime); one queued update per inode at a time.
struct AtimeWriter {
    queue: mpsc::Sender<Command>,
    queued: Arc<Mutex<HashSet<Ino>>>,
    thread: JoinHandle<()>,
}

impl AtimeWriter {
    fn start(meta: MetaLink) -> Result<Self> {
        let (queue, commands) = mpsc::channel::<Command>();
        let queued: Arc<Mutex<HashSet<Ino>>> = Arc::default();
        let done = Arc::clone(&queued);
        let thread = std::thread::Builder::new()
            .name("dl-atime".into())
            .spawn(move || {
                while let Ok(command) = commands.recv() {
                    if let Err(e) = block_on(meta.apply(&command)) {
                        debug!(error = %e, "atime update failed");
                    }
                    if let Command::SetAttr { ino, .. } = command {
                        done.lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .remove(&ino);
                    }
                }
            })
            .map_err(|e| FsError::Config(format!("cannot start the atime thread: {e}")))?;
        Ok(Self {
            queue,
            queued,
            thread,
        })
    }

    fn submit(&self, command: Command, ino: Ino) {
        let fresh = self
            .queued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(ino);
        if fresh && self.queue.send(command).is_err() {
            debug!(%ino, "atime thread stopped; update dropped");
        }
    }
}

/// The file system of one mount.
pub struct Fs {
    config: FsConfig,
    meta: MetaLink,
    engine: EngineHandle,
    sink: Arc<dyn BlockSink>,
    block_size: u32,
    session: SessionId,
    versions: VersionClock,
    files: RwLock<HashMap<Ino, FileEntry>>,
    handles: RwLock<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// `(mtime, size)` of each file at its last open, for `keep_cache`.
    seen_at_open: Mutex<HashMap<Ino, (Timespec, u64)>>,
    renewer: Mutex<Option<Renewer>>,
    atime: Mutex<Option<AtimeWriter>>,
    flusher: Mutex<Option<Renewer>>,
    garbage: Mutex<Option<GarbageHandoff>>,
    /// Local copies for FUSE passthrough (`FsConfig::local_copies`).
    copies: Option<Copies>,
    /// Makes the copies [`Copies::note_read_close`] asks for.
    copier: Mutex<Option<Copier>>,
    /// Commits published files (`FsConfig::commit_interval`; unset: a
    /// close commits its file itself).
    committer: OnceLock<Committer>,
    commit_observer: OnceLock<CommitObserver>,
    /// Group commits with blocks so far (the crash tests' hook).
    groups_with_blocks: AtomicU64,
    /// Serializes directory quota reservations (`quota.rs`).
    quota_lock: Mutex<()>,
}

/// The thread that makes local copies, one file at a time.
struct Copier {
    queue: mpsc::Sender<Ino>,
    thread: JoinHandle<()>,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("session", &self.session)
            .field("block_size", &self.block_size)
            .finish_non_exhaustive()
    }
}

/// The wall clock as the metadata stores it.
pub fn now() -> Timespec {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timespec {
        sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nsec: d.subsec_nanos(),
    }
}

fn later(t: Timespec, by: Duration) -> Timespec {
    let secs = i64::try_from(by.as_secs()).unwrap_or(i64::MAX);
    let mut sec = t.sec.saturating_add(secs);
    let mut nsec = t.nsec + by.subsec_nanos();
    if nsec >= 1_000_000_000 {
        sec = sec.saturating_add(1);
        nsec -= 1_000_000_000;
    }
    Timespec { sec, nsec }
}

/// 64 bits nobody else drew: the clock in nanoseconds mixed with the pid.
fn random_u64() -> u64 {
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = ns ^ (u64::from(std::process::id()) << 40) ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

fn block_ref_id(r: &BlockRef) -> BlockId {
    BlockId::new(r.ino.0, r.index, r.version)
}

impl Fs {
    /// Starts the file system: waits for the metadata leader, formats the
    /// volume on first start (block size = the engine's), registers this
    /// mount's session and starts renewing its lease from a thread.
    pub fn new(
        config: FsConfig,
        meta: MetaLink,
        engine: EngineHandle,
        sink: Arc<dyn BlockSink>,
    ) -> Result<Arc<Self>> {
        meta.wait_for_leader()?;
        let block_size = engine.block_size().bytes();
        // Linearizable: a restarted master may not have replayed its log yet.
        let volume = block_on(meta.read_linearizable(|s| s.volume().cloned()))?;
        match volume {
            Some(v) if v.block_size != block_size => {
                return Err(FsError::Config(format!(
                "the volume was formatted with {} byte blocks but the engine uses {} byte blocks: \
                     start the engine with --block-size {}",
                v.block_size, block_size, v.block_size
            )))
            }
            Some(_) => {}
            None => {
                let mut uuid = [0u8; 16];
                uuid[..8].copy_from_slice(&random_u64().to_le_bytes());
                uuid[8..].copy_from_slice(&random_u64().rotate_left(17).to_le_bytes());
                block_on(meta.apply(&Command::Format {
                    uuid,
                    block_size,
                    format_version: VOLUME_FORMAT_VERSION,
                    capacity_bytes: config.capacity_bytes,
                    inodes_max: config.inodes_max,
                    now: now(),
                }))?;
                info!(block_size, "formatted a new volume");
            }
        }
        let session = SessionId(random_u64() | 1);
        block_on(meta.apply(&Command::RegisterSession {
            session,
            lease_expires: later(now(), config.session_lease),
        }))?;
        let versions = config.version_seed.map_or_else(
            || VersionClock::from_wall_clock(config.writer),
            |seed| VersionClock::new(seed, config.writer),
        );
        let renewer = start_renewer(meta.clone(), session, config.session_lease)?;
        let atime = AtimeWriter::start(meta.clone())?;
        let garbage = GarbageHandoff::start(meta.clone(), Arc::clone(&sink))?;
        let copies = config.local_copies.clone().map(Copies::open).transpose()?;
        info!(%session, "file system session registered");
        let fs = Arc::new(Self {
            config,
            meta,
            engine,
            sink,
            block_size,
            session,
            versions,
            files: RwLock::new(HashMap::new()),
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            seen_at_open: Mutex::new(HashMap::new()),
            renewer: Mutex::new(Some(renewer)),
            atime: Mutex::new(Some(atime)),
            flusher: Mutex::new(None),
            garbage: Mutex::new(Some(garbage)),
            copies,
            copier: Mutex::new(None),
            committer: OnceLock::new(),
            quota_lock: Mutex::new(()),
            commit_observer: OnceLock::new(),
            groups_with_blocks: AtomicU64::new(0),
        });
        if let Some(interval) = fs.config.commit_interval {
            let weak = Arc::downgrade(&fs);
            let committer = Committer::start(interval, move |inos| {
                let Some(fs) = weak.upgrade() else {
                    return false;
                };
                // Failures are recorded on their files and logged.
                let _ = block_on(fs.commit_group(inos));
                true
            })?;
            let _ = fs.committer.set(committer);
        }
        if fs.copies.is_some() {
            let thread = start_copier(Arc::downgrade(&fs))?;
            *fs.copier.lock().unwrap_or_else(PoisonError::into_inner) = Some(thread);
        }
        if let Some(interval) = fs.config.flush_interval {
            let flusher = start_flusher(Arc::downgrade(&fs), interval)?;
            *fs.flusher
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(flusher);
        }
        Ok(fs)
    }

    /// Bytes per block.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Shards (cores) of the block engine: one FUSE request loop each.
    pub fn shards(&self) -> usize {
        self.engine.shards()
    }

    /// This mount's metadata session.
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// The configuration.
    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    /// Applies a command and hands what it orphaned to the sink, once the
    /// command is durable: the metadata log may be written behind (see
    /// `LogSync::Deferred`), and a version must not be queued for deletion
    /// while a crash could still bring back a map that points at it.
    async fn apply(&self, command: &Command) -> Result<Outcome> {
        let outcome = self.meta.apply(command).await?;
        self.hand_over_garbage(&outcome);
        Ok(outcome)
    }

    /// Hands what an applied command orphaned to the garbage thread.
    fn hand_over_garbage(&self, outcome: &Outcome) {
        if !outcome.garbage.is_empty() {
            let garbage = outcome.garbage.iter().map(block_ref_id).collect();
            let handoff = self.garbage.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(handoff) = handoff.as_ref() {
                handoff.submit(garbage);
            } else {
                warn!("file system stopping: orphaned versions left for the orphan scrub");
            }
        }
    }

    /// Returns once the versions orphaned by every command applied before
    /// the call are handed to the sink (they go in batches, each after the
    /// metadata log is durable).
    pub async fn settle_garbage(&self) {
        let settled = self
            .garbage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(GarbageHandoff::settle);
        if let Some(settled) = settled {
            let _ = settled.await;
        }
    }

    fn reply_attr(outcome: &Outcome) -> Result<Attr> {
        outcome
            .attr()
            .cloned()
            .ok_or(FsError::Invalid("the metadata answered without attributes"))
    }

    /// What the unflushed writes of `ino` add to its attributes, read
    /// *before* the metadata it goes with: a commit first applies its
    /// `SetBlocks`, then clears this, so reading in that order never misses
    /// both (reading the metadata first could get the size before the
    /// commit and the overlay after it: a size that shrinks, and a kernel
    /// that drops the end of its page cache).
    fn pending(&self, ino: Ino) -> Option<Pending> {
        self.read_files().get(&ino).map(|entry| Pending {
            size: entry.shared.size.load(Ordering::Acquire),
            new_blocks: entry.shared.new_blocks.load(Ordering::Acquire),
            written_ns: entry.shared.mtime_ns.load(Ordering::Acquire),
        })
    }

    /// `attr` (read from the metadata after `pending`) with the size and
    /// times unflushed writes give the file.
    fn overlay(&self, mut attr: Attr, pending: Option<Pending>) -> Attr {
        let Some(pending) = pending else {
            return attr;
        };
        attr.size = attr.size.max(pending.size);
        attr.allocated_bytes = attr.allocated_bytes.saturating_add(
            pending
                .new_blocks
                .saturating_mul(u64::from(self.block_size)),
        );
        if pending.written_ns != 0 {
            // What the commit will stamp (see `Fs::commit_time`).
            let stamp = ns_timespec(pending.written_ns).max(attr.ctime);
            attr.mtime = attr.mtime.max(stamp);
            attr.ctime = stamp;
        }
        attr
    }

    /// The current attributes of the file an operation answered with
    /// `attr` (the metadata read again after the unflushed writes; `attr`
    /// itself if the inode is gone meanwhile).
    fn with_pending(&self, attr: Attr) -> Attr {
        let pending = self.pending(attr.ino);
        let current = self.meta.read(|s| s.getattr(attr.ino)).ok();
        self.overlay(current.unwrap_or(attr), pending)
    }

    fn read_files(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Ino, FileEntry>> {
        self.files
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_files(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Ino, FileEntry>> {
        self.files
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn handle(&self, fh: u64) -> Result<Handle> {
        self.handles
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&fh)
            .copied()
            .ok_or(FsError::BadHandle(fh))
    }

    fn file_state(&self, ino: Ino) -> Option<(Arc<AsyncMutex<FileState>>, Arc<FileShared>)> {
        self.read_files()
            .get(&ino)
            .map(|e| (Arc::clone(&e.state), Arc::clone(&e.shared)))
    }

    // ---- queries (the local copy) ----

    /// The entry `name` of `parent`. Through a node of a master group it
    /// is a linearizable read (close-to-open: the lookup the kernel makes
    /// before an `open` sees every change committed before it, on any
    /// node); the embedded group reads its local copy, which is current.
    pub fn lookup(&self, parent: Ino, name: &[u8], creds: &Creds) -> Result<Attr> {
        let attr = self.meta.read_latest(|s| s.lookup(parent, name, creds))??;
        Ok(self.with_pending(attr))
    }

    /// Attributes of `ino` (the size includes unflushed writes).
    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        let pending = self.pending(ino);
        let attr = self.meta.read(|s| s.getattr(ino))?;
        Ok(self.overlay(attr, pending))
    }

    /// The target of a symlink.
    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        Ok(self.meta.read(|s| s.readlink(ino).map(<[u8]>::to_vec))?)
    }

    /// Up to `max_entries` entries of directory `ino` after `after_cookie`.
    pub fn readdir(
        &self,
        ino: Ino,
        after_cookie: u64,
        max_entries: usize,
        creds: &Creds,
    ) -> Result<Vec<DirEntry>> {
        Ok(self
            .meta
            .read(|s| s.readdir(ino, after_cookie, max_entries, creds))?)
    }

    /// What `..` of directory `ino` names.
    pub fn parent(&self, ino: Ino) -> Result<Ino> {
        Ok(self.meta.read(|s| s.parent(ino))?)
    }

    /// `access(2)`.
    pub fn access(&self, ino: Ino, mask: u32, creds: &Creds) -> Result<()> {
        Ok(self.meta.read(|s| s.access(ino, mask, creds))?)
    }

    /// The value of extended attribute `name`.
    pub fn getxattr(&self, ino: Ino, name: &[u8], creds: &Creds) -> Result<Vec<u8>> {
        Ok(self
            .meta
            .read(|s| s.getxattr(ino, name, creds).map(<[u8]>::to_vec))?)
    }

    /// Names of the extended attributes `creds` may see.
    pub fn listxattr(&self, ino: Ino, creds: &Creds) -> Result<Vec<Vec<u8>>> {
        Ok(self.meta.read(|s| {
            s.listxattr(ino, creds)
                .map(|names| names.into_iter().map(<[u8]>::to_vec).collect())
        })?)
    }

    /// `F_GETLK`: the lock that would block `owner`, if any.
    pub fn getlk(
        &self,
        ino: Ino,
        owner: u64,
        range: LockRange,
        kind: LockKind,
    ) -> Result<Option<LockConflict>> {
        let owner = LockOwner {
            session: self.session,
            owner,
        };
        Ok(self.meta.read(|s| s.getlk(ino, owner, range, kind))?)
    }

    /// Block map entries `(index, version)` of `ino` in `first..=last`.
    fn versions(&self, ino: Ino, first: u64, last: u64) -> Result<BTreeMap<u64, u64>> {
        let span =
            usize::try_from(last.saturating_sub(first).saturating_add(1)).unwrap_or(usize::MAX);
        let entries = self.meta.read(|s| s.blocks(ino, first, span))?;
        Ok(entries.into_iter().filter(|&(i, _)| i <= last).collect())
    }

    fn version_of(&self, ino: Ino, index: u64) -> Result<Option<u64>> {
        Ok(self.versions(ino, index, index)?.get(&index).copied())
    }

    // ---- namespace ----

    /// `mknod(2)`: a regular file, fifo, socket or device.
    pub async fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        mode: CreateMode,
        rdev: u32,
        creds: &Creds,
    ) -> Result<Attr> {
        if kind == FileKind::Dir || kind == FileKind::Symlink {
            return Err(FsError::Invalid(
                "mknod makes files, fifos, sockets and devices",
            ));
        }
        let outcome = self
            .apply(&Command::Mknod {
                parent,
                name: name.to_vec(),
                kind,
                mode,
                rdev,
                creds: creds.clone(),
                now: now(),
            })
            .await?;
        Self::reply_attr(&outcome)
    }

    /// `mkdir(2)`.
    pub async fn mkdir(
        &self,
        parent: Ino,
        name: &[u8],
        mode: CreateMode,
        creds: &Creds,
    ) -> Result<Attr> {
        let outcome = self
            .apply(&Command::Mkdir {
                parent,
                name: name.to_vec(),
                mode,
                creds: creds.clone(),
                now: now(),
            })
            .await?;
        Self::reply_attr(&outcome)
    }

    /// `symlink(2)`.
    pub async fn symlink(
        &self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        creds: &Creds,
    ) -> Result<Attr> {
        let outcome = self
            .apply(&Command::Symlink {
                parent,
                name: name.to_vec(),
                target: target.to_vec(),
                creds: creds.clone(),
                now: now(),
            })
            .await?;
        Self::reply_attr(&outcome)
    }

    /// `link(2)`.
    pub async fn link(
        &self,
        ino: Ino,
        new_parent: Ino,
        new_name: &[u8],
        creds: &Creds,
    ) -> Result<Attr> {
        let outcome = self
            .apply(&Command::Link {
                ino,
                new_parent,
                new_name: new_name.to_vec(),
                creds: creds.clone(),
                now: now(),
            })
            .await?;
        Ok(self.with_pending(Self::reply_attr(&outcome)?))
    }

    /// `unlink(2)`; an open file lives on until its last handle closes.
    pub async fn unlink(&self, parent: Ino, name: &[u8], creds: &Creds) -> Result<()> {
        self.apply(&Command::Unlink {
            parent,
            name: name.to_vec(),
            creds: creds.clone(),
            now: now(),
        })
        .await?;
        Ok(())
    }

    /// `rmdir(2)`.
    pub async fn rmdir(&self, parent: Ino, name: &[u8], creds: &Creds) -> Result<()> {
        self.apply(&Command::Rmdir {
            parent,
            name: name.to_vec(),
            creds: creds.clone(),
            now: now(),
        })
        .await?;
        Ok(())
    }

    /// `renameat2(2)`.
    pub async fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
        creds: &Creds,
    ) -> Result<()> {
        self.apply(&Command::Rename {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            flags,
            creds: creds.clone(),
            now: now(),
        })
        .await?;
        Ok(())
    }

    /// `setxattr(2)`.
    pub async fn setxattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: XattrFlags,
        creds: &Creds,
    ) -> Result<()> {
        self.apply(&Command::SetXattr {
            ino,
            name: name.to_vec(),
            value: value.to_vec(),
            flags,
            creds: creds.clone(),
            now: now(),
        })
        .await?;
        Ok(())
    }

    /// `removexattr(2)`.
    pub async fn removexattr(&self, ino: Ino, name: &[u8], creds: &Creds) -> Result<()> {
        self.apply(&Command::RemoveXattr {
            ino,
            name: name.to_vec(),
            creds: creds.clone(),
            now: now(),
        })
        .await?;
        Ok(())
    }

    /// `F_SETLK`: takes (`Some`) or releases (`None`) a record lock; a
    /// conflict fails with `EAGAIN`.
    pub async fn setlk(
        &self,
        ino: Ino,
        owner: u64,
        range: LockRange,
        kind: Option<LockKind>,
    ) -> Result<()> {
        self.apply(&Command::SetLk {
            ino,
            owner,
            session: self.session,
            range,
            kind,
        })
        .await?;
        Ok(())
    }

    /// Drops every POSIX record lock `owner` holds on `ino` (`close(2)`
    /// releases a process's locks; FUSE says so in `flush`). Free when the
    /// file has no record locks at all, the common case.
    pub async fn unlock_owner(&self, ino: Ino, owner: u64) -> Result<()> {
        let anyone = LockOwner {
            session: self.session,
            owner: u64::MAX,
        };
        let locked = self
            .meta
            .read(|s| s.getlk(ino, anyone, LockRange::ALL, LockKind::Write))?;
        if locked.is_none() {
            return Ok(());
        }
        self.setlk(ino, owner, LockRange::ALL, None).await
    }

    /// `flock(LOCK_NB)`: takes or (`None`) releases a whole-file lock.
    pub async fn flock(&self, ino: Ino, owner: u64, kind: Option<FlockKind>) -> Result<()> {
        self.apply(&Command::Flock {
            ino,
            owner,
            session: self.session,
            kind,
        })
        .await?;
        Ok(())
    }

    // ---- open files ----

    fn register_handle(&self, attr: &Attr, flags: i32) -> Opened {
        let open_flags = OpenFlags::from_libc(flags);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                fh,
                Handle {
                    ino: attr.ino,
                    write: open_flags.write,
                    append: flags & libc::O_APPEND != 0,
                },
            );
        self.write_files()
            .entry(attr.ino)
            .or_insert_with(|| FileEntry {
                state: Arc::new(AsyncMutex::new(FileState {
                    dirty: DirtyFile::new(self.block_size),
                    size: None,
                    writer: Creds::root(),
                    unmapped: BTreeSet::new(),
                })),
                shared: Arc::default(),
                opens: 0,
            })
            .opens += 1;
        let seen = (attr.mtime, attr.size);
        let keep_cache = self.seen_at_open.lock().is_ok_and(|mut m| {
            if m.len() >= SEEN_AT_OPEN_MAX && !m.contains_key(&attr.ino) {
                // Forgetting only costs page cache hits on the next open.
                m.clear();
            }
            m.insert(attr.ino, seen) == Some(seen)
        });
        Opened {
            fh,
            attr: attr.clone(),
            keep_cache,
        }
    }

    /// `open(2)` of an existing inode with `open(2)` flags (`O_TRUNC`
    /// truncates, `O_APPEND` makes every write append). Close-to-open
    /// holds on every backend: `Open` is a command, applied in the group's
    /// log order, and the link returns only once the local copy reflects
    /// it — so the attributes and block map this open reads are at least
    /// as new as every close committed before it, on any node.
    pub async fn open(&self, ino: Ino, flags: i32, creds: &Creds) -> Result<Opened> {
        let open_flags = OpenFlags::from_libc(flags);
        let outcome = self
            .apply(&Command::Open {
                session: self.session,
                ino,
                flags: open_flags,
                creds: creds.clone(),
            })
            .await?;
        let mut attr = Self::reply_attr(&outcome)?;
        let opened = self.register_handle(&attr, flags);
        if open_flags.truncate && attr.kind == FileKind::File {
            let changes = AttrChanges {
                size: Some(0),
                ..AttrChanges::default()
            };
            match self.setattr(ino, changes, Some(opened.fh), creds).await {
                Ok(a) => attr = a,
                Err(e) => {
                    let _ = self.release(ino, opened.fh, None).await;
                    return Err(e);
                }
            }
        }
        Ok(Opened {
            attr: self.with_pending(attr),
            ..opened
        })
    }

    /// `open(2)` with `O_CREAT`: creates the file (or opens the existing one
    /// unless `O_EXCL`).
    pub async fn create(
        &self,
        parent: Ino,
        name: &[u8],
        mode: CreateMode,
        flags: i32,
        creds: &Creds,
    ) -> Result<Opened> {
        let open_flags = OpenFlags::from_libc(flags);
        let outcome = self
            .apply(&Command::Create {
                parent,
                name: name.to_vec(),
                mode,
                exclusive: flags & libc::O_EXCL != 0,
                session: self.session,
                flags: open_flags,
                creds: creds.clone(),
                now: now(),
            })
            .await?;
        let Reply::Created { mut attr, created } = outcome.reply else {
            return Err(FsError::Invalid(
                "the metadata answered create without attributes",
            ));
        };
        let opened = self.register_handle(&attr, flags);
        if !created && open_flags.truncate && attr.kind == FileKind::File {
            let changes = AttrChanges {
                size: Some(0),
                ..AttrChanges::default()
            };
            match self
                .setattr(attr.ino, changes, Some(opened.fh), creds)
                .await
            {
                Ok(a) => attr = a,
                Err(e) => {
                    let _ = self.release(attr.ino, opened.fh, None).await;
                    return Err(e);
                }
            }
        }
        Ok(Opened {
            attr: self.with_pending(attr),
            ..opened
        })
    }

    /// Closes handle `fh`: flushes the file (see [`Fs::flush`]), releases
    /// the handle in the metadata (dropping `flock_owner`'s flock), forgets
    /// the file's state once no handle of this node is open and nothing of
    /// it waits for a commit.
    pub async fn release(&self, ino: Ino, fh: u64, flock_owner: Option<u64>) -> Result<()> {
        let removed = self
            .handles
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&fh);
        let Some(handle) = removed else {
            return Err(FsError::BadHandle(fh));
        };
        let flushed = self.flush(ino).await;
        let released = self
            .apply(&Command::Release {
                session: self.session,
                ino,
                flock_owner,
            })
            .await;
        {
            let mut files = self.write_files();
            if let Some(entry) = files.get_mut(&ino) {
                entry.opens = entry.opens.saturating_sub(1);
                // After a failed flush the unflushed blocks stay for
                // `flush_all` (unmount) to retry; a published file stays
                // until its commit (which then forgets it).
                if entry.opens == 0
                    && flushed.is_ok()
                    && !entry.shared.is_dirty()
                    && !entry.shared.has_error()
                {
                    files.remove(&ino);
                }
            }
        }
        flushed?;
        if !handle.write {
            self.want_copy(ino);
        }
        released.map(|_| ())
    }

    /// `close` (`FUSE_FLUSH`): publishes the file's unflushed writes. With
    /// a commit interval (`FsConfig::commit_interval`) they stay where
    /// every reader of this mount sees them and the file joins the next
    /// group commit (within the interval; such a close waits for the
    /// commit when it lags more than `commit::lag_max`); without one they
    /// are committed now, durably. Returns the error of a background
    /// commit of the file that no `close` or `fsync` returned yet.
    pub async fn flush(&self, ino: Ino) -> Result<()> {
        if self.committer.get().is_none() {
            return self.commit_file(ino).await;
        }
        let published = self.flush_in_background(ino).await;
        if let (Ok(true), Some(committer)) = (&published, self.committer.get()) {
            committer.throttle().await;
        }
        let reported = self
            .file_state(ino)
            .and_then(|(_, shared)| shared.take_error());
        published?;
        reported.map_or(Ok(()), Err)
    }

    /// Hands the file's unflushed writes to the commit thread (or commits
    /// them now without one, or when too many bytes wait already).
    async fn flush_in_background(&self, ino: Ino) -> Result<bool> {
        let Some(committer) = self.committer.get() else {
            return self.commit_file(ino).await.map(|()| false);
        };
        self.import_mapped_writes(ino).await?;
        let Some((state, shared)) = self.file_state(ino) else {
            return Ok(false);
        };
        if !shared.is_dirty() {
            return Ok(false);
        }
        // A write by someone else clears set-user-ID and set-group-ID
        // when it commits (`SetBlocks`): such files commit at close, so
        // the kernel sees the bits go with the close (rare files; no
        // copy of the metadata's rule here).
        let mode = self.meta.read(|s| s.getattr(ino)).map(|a| a.mode)?;
        if mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
            return self.commit_file(ino).await.map(|()| false);
        }
        let bytes = {
            let st = state.lock().await;
            let Some(first) = st.dirty.first_index() else {
                return Ok(false);
            };
            let last = st.dirty.last_index().unwrap_or(first);
            let mapped = self.versions(ino, first, last)?;
            let new_blocks = st
                .dirty
                .indices()
                .filter(|index| !mapped.contains_key(index))
                .count() as u64;
            shared.new_blocks.store(new_blocks, Ordering::Release);
            st.dirty.dirty_bytes() as u64
        };
        if committer.publish(ino, bytes) == Admission::CommitNow {
            return self.commit_file(ino).await.map(|()| false);
        }
        Ok(true)
    }

    /// Makes the file's unflushed writes durable and visible now: the
    /// journal first, then the metadata (and its log synced).
    async fn commit_file(&self, ino: Ino) -> Result<()> {
        self.import_mapped_writes(ino).await?;
        let Some((state, pending)) = self.file_state(ino) else {
            return Ok(());
        };
        let mut st = state.lock().await;
        self.flush_locked(ino, &mut st, &pending).await
    }

    /// `fsync(2)`: the file's unflushed writes are committed, then every
    /// metadata change made so far (the file's creation, renames…) is
    /// durable too. Returns the error of an earlier background commit of
    /// the file too, once.
    pub async fn fsync(&self, ino: Ino) -> Result<()> {
        let committed = self.commit_file(ino).await;
        let reported = self
            .file_state(ino)
            .and_then(|(_, shared)| shared.take_error());
        committed?;
        self.meta.sync().await?;
        reported.map_or(Ok(()), Err)
    }

    /// `fsync(2)` on a directory: its entries (every metadata change made
    /// so far) are durable.
    pub async fn fsyncdir(&self) -> Result<()> {
        self.meta.sync().await
    }

    /// Commits every file with unflushed writes as one group and syncs the
    /// metadata log (`datenlord sync`, unmount): returns once all of it is
    /// durable, or the first error (each failed file also keeps it for its
    /// next `close` or `fsync`).
    pub async fn flush_all(&self) -> Result<()> {
        let inos: Vec<Ino> = self.read_files().keys().copied().collect();
        let mut first_error = None;
        for &ino in &inos {
            if let Err(e) = self.import_mapped_writes(ino).await {
                warn!(%ino, error = %e, "importing writes through a mapping failed");
                first_error.get_or_insert(e);
            }
        }
        let dirty: Vec<Ino> = {
            let files = self.read_files();
            let mut dirty: Vec<Ino> = inos
                .into_iter()
                .filter(|ino| files.get(ino).is_some_and(|e| e.shared.is_dirty()))
                .collect();
            dirty.sort_unstable();
            dirty
        };
        if let Err(e) = self.commit_group(dirty).await {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Has `observer` told of every file whose blocks a background commit
    /// made visible in the metadata (the FUSE frontend drops the kernel's
    /// attributes of it: the commit changed its allocated size, and may
    /// have cleared set-user-ID). Set once.
    pub fn on_commit(&self, observer: CommitObserver) {
        if self.commit_observer.set(observer).is_err() {
            warn!("the commit observer was set already");
        }
    }

    /// One group commit (see `commit.rs`): the unflushed writes of `inos`
    /// (in inode order) go to the sink in one commit (one journal append
    /// and fdatasync), then each file's `SetBlocks`, then one metadata log
    /// sync — also when `inos` is empty, so metadata-only changes are
    /// durable within the commit interval too. A failure is recorded on
    /// every file it concerns (and logged); the first one is returned.
    /// The files stay locked throughout: a reader waits for the group
    /// rather than see the block map before it moves.
    async fn commit_group(&self, inos: Vec<Ino>) -> Result<()> {
        let files: Vec<(Ino, Arc<AsyncMutex<FileState>>, Arc<FileShared>)> = inos
            .into_iter()
            .filter_map(|ino| self.file_state(ino).map(|(s, shared)| (ino, s, shared)))
            .collect();
        let mut locked = Vec::with_capacity(files.len());
        for (ino, state, shared) in &files {
            locked.push((*ino, state.lock().await, shared));
        }
        let mut first_error: Option<FsError> = None;
        let mut fail = |ino: Ino, shared: &FileShared, e: FsError| {
            warn!(%ino, error = %e, "background commit failed: the next close or fsync of the file returns it");
            shared.record(e.clone());
            first_error.get_or_insert(e);
        };
        let mut prepared: Vec<Option<Prepared>> = Vec::with_capacity(locked.len());
        for (ino, st, shared) in &mut locked {
            if self.drop_if_deleted(*ino, st, shared) {
                prepared.push(None);
                continue;
            }
            match self.take_dirty(*ino, st) {
                Ok(p) => prepared.push(p),
                Err(e) => {
                    fail(*ino, shared, e);
                    prepared.push(None);
                }
            }
        }
        // What the kernel may hold of each file: told only if the commit
        // changes it (the overlay of `getattr` usually matches).
        let before: HashMap<Ino, Attr> = prepared
            .iter()
            .zip(&locked)
            .filter_map(|(p, (ino, _, _))| {
                Some((*ino, self.getattr(*ino).ok().filter(|_| p.is_some())?))
            })
            .collect();
        let batch: Vec<(BlockId, Vec<u8>)> = prepared
            .iter()
            .flatten()
            .flat_map(|p| p.blocks.iter().cloned())
            .collect();
        let batch_empty = batch.is_empty();
        if !batch_empty {
            debug!(files = locked.len(), blocks = batch.len(), "group commit");
            if let Err(e) = self.sink.commit(batch).await {
                let e = FsError::from(e);
                for ((ino, st, shared), p) in locked.iter_mut().zip(prepared) {
                    if let Some(p) = p {
                        st.dirty
                            .restore(p.blocks.into_iter().map(|(id, d)| (id.index, d)).collect());
                        fail(*ino, shared, e.clone());
                    }
                }
                return Err(first_error.unwrap_or(e));
            }
        }
        if !batch_empty {
            self.maybe_abort_after_journal_sync();
        }
        // Files whose blocks fit one `SetBlocks` (small files) get theirs
        // in one Raft round; larger ones one after the other.
        let mut outcomes: Vec<(usize, Result<()>)> = Vec::with_capacity(locked.len());
        let mut together: Vec<(usize, Prepared)> = Vec::new();
        for (i, p) in prepared.into_iter().enumerate() {
            let Some(p) = p else { continue };
            if p.blocks.len() <= BLOCKS_PER_COMMAND_MAX {
                together.push((i, p));
                continue;
            }
            let (ino, st, shared) = &mut locked[i];
            outcomes.push((i, self.set_blocks(*ino, st, shared, p).await));
        }
        self.set_blocks_together(&mut locked, together, &mut outcomes)
            .await;
        let mut committed = Vec::new();
        for (i, result) in outcomes {
            let (ino, _, shared) = &locked[i];
            match result {
                Ok(()) => committed.push(*ino),
                // Deleted meanwhile: its versions were collected.
                Err(e) if gone(&e) => debug!(%ino, "committed blocks of a deleted file"),
                Err(e) => fail(*ino, shared, e),
            }
        }
        if let Err(e) = self.meta.sync().await {
            for (ino, _, shared) in &locked {
                if committed.contains(ino) {
                    fail(*ino, shared, e.clone());
                }
            }
            first_error.get_or_insert(e);
        }
        self.forget_idle(&locked);
        drop(locked);
        self.tell_observer(committed, &before);
        first_error.map_or(Ok(()), Err)
    }

    /// The `SetBlocks` of the group's small files (`together`: index in
    /// `locked`, blocks) in one Raft round; their outcomes go to
    /// `outcomes`.
    async fn set_blocks_together(
        &self,
        locked: &mut [LockedFile<'_>],
        together: Vec<(usize, Prepared)>,
        outcomes: &mut Vec<(usize, Result<()>)>,
    ) {
        let mut commands = Vec::with_capacity(together.len());
        let mut versions: Vec<(usize, Vec<BlockId>)> = Vec::with_capacity(together.len());
        for (i, p) in &together {
            let (ino, st, shared) = &locked[*i];
            let ids: Vec<BlockId> = p.blocks.iter().map(|(id, _)| *id).collect();
            commands.push(Command::SetBlocks {
                ino: *ino,
                blocks: ids.iter().map(|id| (id.index, id.version)).collect(),
                new_size: Some(p.size),
                creds: st.writer.clone(),
                now: self.commit_time(*ino, shared),
            });
            versions.push((*i, ids));
        }
        let inserts =
            together
                .into_iter()
                .flat_map(|(_, p)| p.blocks)
                .map(|(id, data)| async move {
                    if let Err(e) = self.engine.insert(id, data).await {
                        warn!(%id, error = %e, "caching a written block failed");
                    }
                });
        futures::future::join_all(inserts).await;
        let applied = self.meta.apply_all(&commands).await;
        for ((i, ids), result) in versions.into_iter().zip(applied) {
            let (_, st, shared) = &mut locked[i];
            st.settle(shared);
            match result {
                Ok(outcome) => {
                    self.hand_over_garbage(&outcome);
                    outcomes.push((i, Ok(())));
                }
                Err(e) => {
                    // Refused: the metadata never pointed at them.
                    if refused(&e) {
                        self.sink.collect(ids);
                    }
                    outcomes.push((i, Err(e)));
                }
            }
        }
    }

    /// Drops the unflushed writes of a file unlinked and released since
    /// its close (nobody can read them); whether it did.
    fn drop_if_deleted(&self, ino: Ino, st: &mut FileState, shared: &FileShared) -> bool {
        let deleted = st.size.is_some()
            && self
                .meta
                .read(|s| s.getattr(ino))
                .is_err_and(|e| gone(&FsError::from(e)));
        if deleted {
            debug!(%ino, "dropping the unflushed writes of a deleted file");
            drop(st.dirty.take());
            st.settle(shared);
        }
        deleted
    }

    /// Tells the commit observer of each committed file whose attributes
    /// the commit changed from what `getattr` showed `before` it.
    fn tell_observer(&self, committed: Vec<Ino>, before: &HashMap<Ino, Attr>) {
        let Some(observer) = self.commit_observer.get() else {
            return;
        };
        let view = |a: &Attr| (a.mode, a.mtime, a.ctime, a.size, a.allocated_bytes);
        for ino in committed {
            let now = self.getattr(ino).ok();
            if before.get(&ino).map(view) != now.as_ref().map(view) {
                observer(ino);
            }
        }
    }

    /// Forgets the files nobody holds open once nothing of them waits.
    fn forget_idle(&self, locked: &[LockedFile<'_>]) {
        let mut table = self.write_files();
        for (ino, st, shared) in locked {
            // Only the entry this group committed: while it ran, `release`
            // may have forgotten that one, and an open made a new one
            // whose published writes wait for the next group.
            let idle = table
                .get(ino)
                .is_some_and(|e| e.opens == 0 && Arc::ptr_eq(&e.shared, shared));
            if idle && st.size.is_none() && !shared.has_error() {
                table.remove(ino);
            }
        }
    }

    /// The time a commit of the file's writes stamps as its mtime and
    /// ctime: the last write's, or the file's ctime if a change after the
    /// write moved it later (ctime never goes back). `getattr` shows the
    /// same before the commit, so the commit changes nothing the kernel
    /// saw.
    fn commit_time(&self, ino: Ino, shared: &FileShared) -> Timespec {
        let written = write_time(shared);
        self.meta
            .read(|s| s.getattr(ino))
            .map_or(written, |a| a.ctime.max(written))
    }

    /// The crash tests' hook (`FsConfig::abort_after_journal_sync`).
    fn maybe_abort_after_journal_sync(&self) {
        let Some(n) = self.config.abort_after_journal_sync else {
            return;
        };
        if self.groups_with_blocks.fetch_add(1, Ordering::AcqRel) + 1 == n {
            tracing::error!(
                group = n,
                "test hook: aborting after the journal sync, before the metadata"
            );
            std::process::abort();
        }
    }

    /// Ends the mount's use of the metadata: flushes everything, stops the
    /// lease renewals and unregisters the session (closing its handles and
    /// dropping its locks).
    pub async fn shutdown(&self) -> Result<()> {
        let flushed = self.flush_all().await;
        self.stop_background();
        let unregistered = self
            .apply(&Command::UnregisterSession {
                session: self.session,
            })
            .await;
        // Unregistering may free unlinked files that were still open.
        self.stop_garbage();
        flushed?;
        unregistered.map(|_| ())
    }

    fn stop_background(&self) {
        if let Some(committer) = self.committer.get() {
            // Commits what is queued once more, then ends.
            committer.stop();
        }
        let copier = self
            .copier
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(c) = copier {
            // Closing the queue ends the thread after the copy under way.
            drop(c.queue);
            if c.thread.thread().id() != std::thread::current().id() {
                let _ = c.thread.join();
            }
        }
        let flusher = self
            .flusher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(f) = flusher {
            let _ = f.stop.send(());
            // The flusher itself may drop the last reference to the file
            // system; it cannot wait for itself.
            if f.thread.thread().id() != std::thread::current().id() {
                let _ = f.thread.join();
            }
        }
        let renewer = self
            .renewer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(r) = renewer {
            let _ = r.stop.send(());
            let _ = r.thread.join();
        }
        let atime = self
            .atime
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(a) = atime {
            // Closing the queue ends the thread after the queued updates.
            drop(a.queue);
            let _ = a.thread.join();
        }
    }

    /// Hands over the garbage queued so far and stops its thread; garbage
    /// of later commands is left to the orphan scrub.
    fn stop_garbage(&self) {
        let garbage = self
            .garbage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(g) = garbage {
            g.stop();
        }
    }

    /// Commits the file's unflushed writes now: the sink (durable), the
    /// metadata, the metadata log synced.
    async fn flush_locked(&self, ino: Ino, st: &mut FileState, shared: &FileShared) -> Result<()> {
        let Some(prepared) = self.take_dirty(ino, st)? else {
            return Ok(());
        };
        debug!(%ino, blocks = prepared.blocks.len(), size = prepared.size, "flush");
        if !prepared.blocks.is_empty() {
            let copies: Vec<(BlockId, Vec<u8>)> = prepared.blocks.clone();
            if let Err(e) = self.sink.commit(copies).await {
                st.dirty.restore(
                    prepared
                        .blocks
                        .into_iter()
                        .map(|(id, d)| (id.index, d))
                        .collect(),
                );
                return Err(e.into());
            }
        }
        self.set_blocks(ino, st, shared, prepared).await?;
        // A flushed file (every fsync) is durable: its blocks are in the
        // journal, and its block map in the metadata log.
        self.meta.sync().await
    }

    /// Takes the file's unflushed writes as new block versions (`None`
    /// when it has none); on an error they stay unflushed.
    fn take_dirty(&self, ino: Ino, st: &mut FileState) -> Result<Option<Prepared>> {
        let Some(size) = st.size else {
            return Ok(None);
        };
        let blocks = st.dirty.take();
        let mut batch: Vec<(BlockId, Vec<u8>)> = Vec::with_capacity(blocks.len());
        if let (Some(&first), Some(&last)) = (blocks.keys().next(), blocks.keys().next_back()) {
            let current = match self.versions(ino, first, last) {
                Ok(c) => c,
                Err(e) => {
                    st.dirty.restore(blocks);
                    return Err(e);
                }
            };
            for (index, data) in blocks {
                let version = self.versions.next_after(current.get(&index).copied());
                batch.push((BlockId::new(ino.0, index, version), data));
            }
        }
        Ok(Some(Prepared {
            size,
            blocks: batch,
        }))
    }

    /// Once `prepared`'s blocks are durable in the sink: caches them and
    /// points the metadata at them (`SetBlocks`, stamped with the time of
    /// the last write). The file has no unflushed writes afterwards, also
    /// when this fails.
    async fn set_blocks(
        &self,
        ino: Ino,
        st: &mut FileState,
        shared: &FileShared,
        prepared: Prepared,
    ) -> Result<()> {
        let Prepared { size, blocks } = prepared;
        let ids: Vec<BlockId> = blocks.iter().map(|(id, _)| *id).collect();
        let inserts = blocks.into_iter().map(|(id, data)| async move {
            if let Err(e) = self.engine.insert(id, data).await {
                warn!(%id, error = %e, "caching a written block failed");
            }
        });
        futures::future::join_all(inserts).await;
        let now = self.commit_time(ino, shared);
        let mut chunks: Vec<&[BlockId]> = ids.chunks(BLOCKS_PER_COMMAND_MAX).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for (n, chunk) in chunks.iter().enumerate() {
            let command = Command::SetBlocks {
                ino,
                blocks: chunk.iter().map(|id| (id.index, id.version)).collect(),
                new_size: Some(size),
                creds: st.writer.clone(),
                now,
            };
            if let Err(e) = self.apply(&command).await {
                // Refused: the metadata never pointed at these versions.
                // Otherwise (no answer, a failed log sync) it may have: the
                // orphan scrub collects them if it did not.
                let orphans: Vec<BlockId> = if refused(&e) {
                    chunks[n..].iter().flat_map(|c| c.iter().copied()).collect()
                } else {
                    chunks[n + 1..]
                        .iter()
                        .flat_map(|c| c.iter().copied())
                        .collect()
                };
                self.sink.collect(orphans);
                st.settle(shared);
                return Err(e);
            }
        }
        st.settle(shared);
        Ok(())
    }

    /// The valid bytes of block `index` of `ino` (empty for a hole).
    async fn load_block(&self, ino: Ino, index: u64) -> Result<Vec<u8>> {
        let Some(version) = self.version_of(ino, index)? else {
            return Ok(Vec::new());
        };
        let id = BlockId::new(ino.0, index, version);
        let bs = self.block_size;
        let (mut buf, len) = self
            .engine
            .read(id, 0, bs, Vec::with_capacity(bs as usize))
            .await?;
        buf.truncate(len);
        Ok(buf)
    }

    fn writable(&self, ino: Ino, fh: u64) -> Result<Handle> {
        let handle = self.handle(fh)?;
        if handle.ino != ino || !handle.write {
            return Err(FsError::BadHandle(fh));
        }
        Ok(handle)
    }

    /// Loads the current content of the blocks a partial overwrite of
    /// `offset..offset + len` needs.
    async fn load_bases(
        &self,
        ino: Ino,
        st: &mut FileState,
        offset: u64,
        len: usize,
        size: u64,
    ) -> Result<()> {
        for index in st.dirty.needs_base(offset, len, size) {
            let mut data = self.load_block(ino, index).await?;
            // A block never holds bytes past the end of its file.
            let valid = size.saturating_sub(block_start(index, self.block_size));
            data.truncate(usize::try_from(valid).unwrap_or(usize::MAX));
            st.dirty.set_base(index, data);
        }
        Ok(())
    }

    /// `write(2)` through handle `fh`: buffered until flush (or until the
    /// file's unflushed bytes pass the configured limit).
    pub async fn write(
        &self,
        ino: Ino,
        fh: u64,
        offset: u64,
        data: &[u8],
        creds: &Creds,
    ) -> Result<usize> {
        let handle = self.writable(ino, fh)?;
        let offset = (!handle.append).then_some(offset);
        let (written, _) = self
            .changing(
                ino,
                self.write_at(ino, fh, offset, data, creds),
                |&(n, at)| Some((at, n as u64)),
            )
            .await?;
        Ok(written)
    }

    /// [`Self::write`] at `offset` (`None`: at the end), without the
    /// handle check or the local copy; returns the bytes written and where.
    async fn write_at(
        &self,
        ino: Ino,
        fh: u64,
        offset: Option<u64>,
        data: &[u8],
        creds: &Creds,
    ) -> Result<(usize, u64)> {
        let (state, pending) = self.file_state(ino).ok_or(FsError::BadHandle(fh))?;
        let mut st = state.lock().await;
        let size = match st.size {
            Some(s) => s,
            None => self.meta.read(|s| s.getattr(ino))?.size,
        };
        let offset = offset.unwrap_or(size);
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= MAX_FILE_BYTES)
            .ok_or(FsError::TooBig)?;
        if data.is_empty() {
            return Ok((0, offset));
        }
        let new_size = size.max(end);
        self.reserve_quota(ino, &mut st, &pending, offset, data.len(), new_size)?;
        self.load_bases(ino, &mut st, offset, data.len(), size)
            .await?;
        st.dirty.write(offset, data);
        st.size = Some(new_size);
        pending.size.store(new_size, Ordering::Release);
        pending
            .mtime_ns
            .store(timespec_ns(now()), Ordering::Release);
        if st.writer != *creds {
            st.writer = creds.clone();
        }
        if st.dirty.dirty_bytes() >= self.config.dirty_bytes_per_file_max {
            self.flush_locked(ino, &mut st, &pending).await?;
        }
        Ok((data.len(), offset))
    }

    /// `read(2)`: up to `size` bytes at `offset`, short at the end of file;
    /// sees this node's unflushed writes.
    pub async fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<Vec<u8>> {
        let (out, attr) = self.read_range(ino, offset, size).await?;
        self.touch_atime(&attr);
        Ok(out)
    }

    /// [`Self::read`] without the access time update; also returns the
    /// attributes read.
    async fn read_range(&self, ino: Ino, offset: u64, size: u32) -> Result<(Vec<u8>, Attr)> {
        let state = self.file_state(ino);
        // Without unflushed writes (`pending` is 0; a write sets it before
        // it returns) the block map is current: no lock to take.
        let mut guard = match &state {
            Some((s, pending)) if pending.is_dirty() => Some(s.lock().await),
            _ => None,
        };
        if guard.as_ref().is_some_and(|g| g.size.is_none()) {
            // Nothing unflushed: a flush that held the mutex has updated the
            // block map, so concurrent readers need not wait for each other.
            guard = None;
        }
        let attr = self.meta.read(|s| s.getattr(ino))?;
        if attr.kind == FileKind::Dir {
            return Err(FsError::Meta {
                errno: libc::EISDIR,
                message: "is a directory".into(),
            });
        }
        let file_size = guard.as_ref().and_then(|g| g.size).unwrap_or(attr.size);
        if offset >= file_size || size == 0 {
            return Ok((Vec::new(), attr));
        }
        let len = (file_size - offset).min(u64::from(size)) as usize;
        let mut out = vec![0u8; len];
        let bs = u64::from(self.block_size);
        let last = (offset + len as u64 - 1) / bs;
        let versions = self.versions(ino, offset / bs, last)?;
        let mut fetches = Vec::new();
        let mut rest: &mut [u8] = &mut out;
        for piece in pieces(offset, len, self.block_size) {
            let (dst, tail) = std::mem::take(&mut rest).split_at_mut(piece.len);
            rest = tail;
            if let Some(g) = &guard {
                if g.dirty.read_into(piece.index, piece.start, dst) {
                    continue;
                }
            }
            if let Some(&version) = versions.get(&piece.index) {
                let id = BlockId::new(ino.0, piece.index, version);
                // A memory hit is copied on this thread; only misses wait
                // for a shard.
                if self
                    .engine
                    .read_cached(id, piece.start as u32, dst)
                    .is_some()
                {
                    continue;
                }
                fetches.push(async move {
                    let (buf, n) = self
                        .engine
                        .read(
                            id,
                            piece.start as u32,
                            piece.len as u32,
                            Vec::with_capacity(piece.len),
                        )
                        .await?;
                    let n = n.min(dst.len()).min(buf.len());
                    dst[..n].copy_from_slice(&buf[..n]);
                    Ok::<(), FsError>(())
                });
            }
        }
        futures::future::try_join_all(fetches).await?;
        drop(guard);
        Ok((out, attr))
    }

    fn touch_atime(&self, attr: &Attr) {
        let now = now();
        let due = match self.config.atime {
            AtimePolicy::Noatime => false,
            AtimePolicy::Strictatime => true,
            AtimePolicy::Relatime => {
                // `<` for ctime, not Linux's `<=`: our own atime update sets
                // ctime to the same instant, which must not make every
                // later read update again.
                attr.atime <= attr.mtime
                    || attr.atime < attr.ctime
                    || now.sec.saturating_sub(attr.atime.sec) >= RELATIME_INTERVAL_SECS
            }
        };
        if !due {
            return;
        }
        // The file system updates atime on the reader's behalf: a reader
        // needs no write permission for it.
        let command = Command::SetAttr {
            ino: attr.ino,
            changes: AttrChanges {
                atime: Some(SetTime::Now),
                ..AttrChanges::default()
            },
            via_handle: false,
            creds: Creds::root(),
            now,
        };
        if let Some(writer) = self
            .atime
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            writer.submit(command, attr.ino);
        }
    }

    /// `setattr`: chmod, chown, utimes and truncate in one; `fh` is the
    /// handle of `ftruncate`/`O_TRUNC` (write permission was checked at open).
    pub async fn setattr(
        &self,
        ino: Ino,
        changes: AttrChanges,
        fh: Option<u64>,
        creds: &Creds,
    ) -> Result<Attr> {
        if changes.size.is_none() {
            return self.setattr_inner(ino, changes, fh, creds).await;
        }
        self.changing(ino, self.setattr_inner(ino, changes, fh, creds), |_| None)
            .await
    }

    async fn setattr_inner(
        &self,
        ino: Ino,
        changes: AttrChanges,
        fh: Option<u64>,
        creds: &Creds,
    ) -> Result<Attr> {
        let via_handle = match fh {
            Some(fh) => self.handle(fh).is_ok_and(|h| h.ino == ino && h.write),
            None => false,
        };
        let Some(size) = changes.size else {
            if changes.mtime.is_some() {
                // Unflushed writes are older than this time change: flush
                // them first, or their flush would stamp a later mtime
                // (`cp -a`, `touch -d` after a write).
                self.commit_file(ino).await?;
            }
            let outcome = self
                .apply(&Command::SetAttr {
                    ino,
                    changes,
                    via_handle,
                    creds: creds.clone(),
                    now: now(),
                })
                .await?;
            return Ok(self.with_pending(Self::reply_attr(&outcome)?));
        };
        let state = self.file_state(ino);
        // Without unflushed writes (`pending` is 0; a write sets it before
        // it returns) the block map is current: no lock to take.
        let mut guard = match &state {
            Some((s, pending)) if pending.is_dirty() => Some(s.lock().await),
            _ => None,
        };
        if let (Some(g), Some((_, pending))) = (guard.as_mut(), &state) {
            self.flush_locked(ino, g, pending).await?;
        }
        let old_size = self.meta.read(|s| s.getattr(ino))?.size;
        let outcome = self
            .apply(&Command::SetAttr {
                ino,
                changes,
                via_handle,
                creds: creds.clone(),
                now: now(),
            })
            .await?;
        let mut attr = Self::reply_attr(&outcome)?;
        let bs = u64::from(self.block_size);
        if size < old_size && size % bs != 0 {
            if let Some(a) = self.rewrite_tail(ino, size, creds).await? {
                attr = a;
            }
        }
        drop(guard);
        Ok(attr)
    }

    /// After a truncation to mid-block `size`: writes a new version of the
    /// tail block holding only the bytes below `size`, so that a later
    /// extension reads zeros there.
    async fn rewrite_tail(&self, ino: Ino, size: u64, creds: &Creds) -> Result<Option<Attr>> {
        let bs = u64::from(self.block_size);
        let index = size / bs;
        let keep = (size % bs) as usize;
        let Some(version) = self.version_of(ino, index)? else {
            return Ok(None);
        };
        let id = BlockId::new(ino.0, index, version);
        let (mut data, len) = self
            .engine
            .read(id, 0, keep as u32, Vec::with_capacity(keep))
            .await?;
        data.truncate(len.min(keep));
        let new_id = BlockId::new(ino.0, index, self.versions.next_after(Some(version)));
        self.sink.commit(vec![(new_id, data.clone())]).await?;
        if let Err(e) = self.engine.insert(new_id, data).await {
            warn!(id = %new_id, error = %e, "caching a written block failed");
        }
        let outcome = self
            .apply(&Command::SetBlocks {
                ino,
                blocks: vec![(index, new_id.version)],
                new_size: None,
                creds: creds.clone(),
                now: now(),
            })
            .await;
        match outcome {
            Ok(o) => Ok(Some(Self::reply_attr(&o)?)),
            Err(e) => {
                if refused(&e) {
                    self.sink.collect(vec![new_id]);
                }
                Err(e)
            }
        }
    }

    /// `fallocate(2)`: mode 0 / `FALLOC_FL_KEEP_SIZE` (the size grows unless
    /// kept, then the holes of the range below the end become
    /// allocated-zero extents in one `ZeroBlocks`: `st_blocks`, the
    /// capacity and a directory quota count them, `ENOSPC`/`EDQUOT` when
    /// they do not fit), `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`
    /// (whole blocks become holes with `RemoveBlocks`, the partial blocks
    /// at either end are zeroed and rewritten) and `FALLOC_FL_ZERO_RANGE`
    /// (split as a punch, but the whole blocks become one allocated-zero
    /// extent, so the range stays allocated and `SEEK_DATA` finds it; a
    /// range of 2^63 bytes costs what a small one does). Past the end of
    /// the file with `FALLOC_FL_KEEP_SIZE` nothing is allocated.
    pub async fn fallocate(
        &self,
        ino: Ino,
        fh: u64,
        mode: i32,
        offset: u64,
        len: u64,
        creds: &Creds,
    ) -> Result<()> {
        self.writable(ino, fh)?;
        let change = self.fallocate_inner(ino, fh, mode, offset, len, creds);
        self.changing(ino, change, |()| Some((offset, len))).await
    }

    async fn fallocate_inner(
        &self,
        ino: Ino,
        fh: u64,
        mode: i32,
        offset: u64,
        len: u64,
        creds: &Creds,
    ) -> Result<()> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE_BYTES)
            .ok_or(FsError::TooBig)?;
        if len == 0 {
            return Err(FsError::Invalid("fallocate of zero bytes"));
        }
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        let known =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 || (punch && (!keep_size || zero)) {
            return Err(FsError::NotSupported("fallocate mode"));
        }
        if !punch && !keep_size {
            // The size first: what is allocated lies below the end.
            let attr = self.getattr(ino)?;
            if end > attr.size {
                let changes = AttrChanges {
                    size: Some(end),
                    ..AttrChanges::default()
                };
                self.setattr_inner(ino, changes, Some(fh), creds).await?;
            }
        }
        if !punch && !zero {
            return self.allocate(ino, offset, end, creds).await;
        }
        {
            let (state, pending) = self.file_state(ino).ok_or(FsError::BadHandle(fh))?;
            // Held throughout: writes, flushes and reads of the file wait
            // for the whole punch.
            let mut st = state.lock().await;
            let size = match st.size {
                Some(s) => s,
                None => self.meta.read(|s| s.getattr(ino))?.size,
            };
            let zero_end = end.min(size);
            if offset < zero_end {
                // Both modes split the same way: whole blocks go in one
                // `RemoveBlocks` (bounded whatever the range's length), only
                // the partial ends are loaded and zeroed.
                let split = PunchSplit::new(offset, zero_end, size, self.block_size);
                if !split.holes.is_empty() {
                    // The map first: once it names no version of these
                    // blocks they read as zeros, and their old versions
                    // are collected. A crash after it leaves at most the
                    // partial ends unzeroed (the punch was not answered),
                    // never a map entry naming missing data. A punch makes
                    // holes; ZERO_RANGE one allocated-zero extent.
                    let (first, last) = (split.holes.start, split.holes.end - 1);
                    let command = if zero {
                        let bs = u64::from(self.block_size);
                        self.check_allocation(ino, (last - first + 1).saturating_mul(bs))?;
                        Command::ZeroBlocks {
                            ino,
                            first,
                            last,
                            replace: true,
                            creds: creds.clone(),
                            now: now(),
                        }
                    } else {
                        Command::RemoveBlocks {
                            ino,
                            first,
                            last,
                            creds: creds.clone(),
                            now: now(),
                        }
                    };
                    self.apply(&command).await?;
                    // Unflushed writes to them are punched too.
                    st.dirty.discard(split.holes);
                }
                for part in [split.head, split.tail] {
                    if part.is_empty() {
                        continue;
                    }
                    let part_len =
                        usize::try_from(part.end - part.start).map_err(|_| FsError::TooBig)?;
                    self.load_bases(ino, &mut st, part.start, part_len, size)
                        .await?;
                    st.dirty.punch(part.start, part_len);
                    st.size = Some(size);
                    pending.size.store(size, Ordering::Release);
                    pending
                        .mtime_ns
                        .store(timespec_ns(now()), Ordering::Release);
                    st.writer = creds.clone();
                }
                // Rewrites the zeroed ends (and any other unflushed write).
                self.flush_locked(ino, &mut st, &pending).await?;
            }
        }
        Ok(())
    }

    /// `fallocate` mode 0 of `offset..end`: the holes of the range below
    /// the end become allocated-zero extents; data stays.
    async fn allocate(&self, ino: Ino, offset: u64, end: u64, creds: &Creds) -> Result<()> {
        let size = self.getattr(ino)?.size;
        let alloc_end = end.min(size);
        if offset >= alloc_end {
            return Ok(());
        }
        let bs = u64::from(self.block_size);
        let (first, last) = (offset / bs, (alloc_end - 1) / bs);
        self.check_allocation(ino, (last - first + 1).saturating_mul(bs))?;
        self.apply(&Command::ZeroBlocks {
            ino,
            first,
            last,
            replace: false,
            creds: creds.clone(),
            now: now(),
        })
        .await?;
        Ok(())
    }

    /// `lseek(2)` with `SEEK_DATA` or `SEEK_HOLE`, from the block map (after
    /// flushing): a block in the map or an allocated-zero extent is data, a
    /// missing one a hole, and the end of the file is a hole.
    pub async fn lseek(&self, ino: Ino, offset: u64, whence: i32) -> Result<u64> {
        self.commit_file(ino).await?;
        let size = self.meta.read(|s| s.getattr(ino))?.size;
        if offset >= size {
            return Err(FsError::NoSuchOffset);
        }
        let bs = self.block_size;
        let first = offset / u64::from(bs);
        match whence {
            libc::SEEK_DATA => match self.meta.read(|s| s.data_from(ino, first))? {
                Some(index) if block_start(index, bs) < size => {
                    Ok(offset.max(block_start(index, bs)))
                }
                _ => Err(FsError::NoSuchOffset),
            },
            libc::SEEK_HOLE => {
                let hole = self.meta.read(|s| s.hole_from(ino, first))?;
                Ok(offset.max(block_start(hole, bs)).min(size))
            }
            _ => Err(FsError::Invalid(
                "lseek whence other than SEEK_DATA or SEEK_HOLE",
            )),
        }
    }

    /// `copy_file_range(2)`: copies through the engine, block by block (block
    /// versions belong to their `(ino, index)` and are never shared).
    #[allow(clippy::too_many_arguments)]
    pub async fn copy_range(
        &self,
        ino_in: Ino,
        offset_in: u64,
        ino_out: Ino,
        fh_out: u64,
        offset_out: u64,
        len: u64,
        creds: &Creds,
    ) -> Result<u64> {
        let (from, to) = ((ino_in, offset_in), (ino_out, fh_out, offset_out));
        self.copy_range_seen(from, to, len, creds, &mut |_| {})
            .await
    }

    /// [`Self::copy_range`] from `(ino, offset)` to `(ino, fh, offset)`,
    /// showing `seen` each piece copied, in order (a caller hashing what
    /// it copies).
    pub async fn copy_range_seen(
        &self,
        (ino_in, offset_in): (Ino, u64),
        (ino_out, fh_out, offset_out): (Ino, u64, u64),
        len: u64,
        creds: &Creds,
        seen: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<u64> {
        let mut copied = 0u64;
        while copied < len {
            let chunk = (len - copied).min(u64::from(self.block_size)) as u32;
            let data = self.read(ino_in, offset_in + copied, chunk).await?;
            if data.is_empty() {
                break;
            }
            seen(&data);
            self.write(ino_out, fh_out, offset_out + copied, &data, creds)
                .await?;
            copied += data.len() as u64;
        }
        Ok(copied)
    }
}

// ---- local copies (FUSE passthrough) ----
impl Fs {
    /// The local copy of `ino` that an open with attributes `attr` may hand
    /// to the kernel (reads then go to it, not to the daemon). Only with
    /// local copies configured and an access time policy the open can
    /// honour: the read access is recorded now, as a read would (relatime),
    /// since reads of the copy never reach the file system.
    pub fn attach_copy(&self, attr: &Attr) -> Option<Arc<LocalCopy>> {
        let copies = self.copies.as_ref()?;
        if attr.kind != FileKind::File || self.config.atime == AtimePolicy::Strictatime {
            return None;
        }
        let copy = copies.attach(attr.ino, attr.mtime, attr.size)?;
        self.touch_atime(attr);
        Some(copy)
    }

    /// The kernel opened `ino` on its local copy: until the matching
    /// [`Self::unpin_copy`], every change of the file is written into the
    /// copy before it returns. False if the copy is gone.
    pub fn pin_copy(&self, ino: Ino) -> bool {
        self.copies.as_ref().is_some_and(|c| c.pin(ino))
    }

    /// Ends a [`Self::pin_copy`]; a copy changed while pinned goes with
    /// its last pin.
    pub fn unpin_copy(&self, ino: Ino) {
        if let Some(c) = &self.copies {
            c.unpin(ino);
        }
    }

    /// The group commit's lag and counters (`None` without a commit
    /// interval).
    pub fn commit_stats(&self) -> Option<CommitStats> {
        self.committer.get().map(Committer::stats)
    }

    /// Local copies made so far, held now, and the bytes they hold; `None`
    /// without local copies.
    pub fn copy_counts(&self) -> Option<(u64, usize, u64)> {
        self.copies.as_ref().map(Copies::counts)
    }

    fn want_copy(&self, ino: Ino) {
        let Some(copies) = &self.copies else {
            return;
        };
        if !copies.note_read_close(ino) {
            return;
        }
        let queued = self
            .copier
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|c| c.queue.send(ino).is_ok());
        if !queued {
            copies.abandon(ino);
        }
    }

    /// Makes the local copy of `ino` (on the copier thread).
    async fn make_copy(&self, ino: Ino) {
        let Some(copies) = &self.copies else {
            return;
        };
        match self.copy_file(copies, ino).await {
            Ok(Some((copy, attr))) => {
                if copies.finish(copy, attr.mtime, attr.size) {
                    debug!(%ino, size = attr.size, "local copy made");
                }
            }
            Ok(None) => copies.abandon(ino),
            Err(e) => {
                debug!(%ino, error = %e, "local copy not made");
                copies.abandon(ino);
            }
        }
    }

    /// Writes the whole of `ino` into a new local copy (holes stay holes);
    /// `None` when it does not qualify or changed meanwhile.
    async fn copy_file(&self, copies: &Copies, ino: Ino) -> Result<Option<(LocalCopy, Attr)>> {
        let attr = self.getattr(ino)?;
        if attr.kind != FileKind::File || attr.size == 0 || attr.size > copies.largest_copy() {
            return Ok(None);
        }
        let copy = copies.new_file(ino)?;
        let io = |e: std::io::Error| FsError::Io(format!("writing a local copy: {e}"));
        copy.file().set_len(attr.size).map_err(io)?;
        let mut pos = 0u64;
        while pos < attr.size {
            let want = (attr.size - pos).min(COPY_CHUNK);
            let (data, _) = self.read_range(ino, pos, want as u32).await?;
            if (data.len() as u64) < want {
                return Ok(None);
            }
            if data.iter().any(|&b| b != 0) {
                copy.file().write_all_at(&data, pos).map_err(io)?;
            }
            pos += want;
        }
        copy.set_sentinel()?;
        let after = self.getattr(ino)?;
        if (after.mtime, after.size) != (attr.mtime, attr.size) {
            return Ok(None);
        }
        Ok(Some((copy, attr)))
    }

    /// Runs `change`, a change of `ino`'s data, keeping its local copy
    /// true: an unpinned copy is dropped; a pinned one (the kernel reads
    /// it) gets the bytes of `range(result)` and the new size before the
    /// change returns, after any writes the kernel made to it through a
    /// mapping are imported.
    async fn changing<T, F>(
        &self,
        ino: Ino,
        change: F,
        range: impl FnOnce(&T) -> Option<(u64, u64)>,
    ) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let Some(copies) = &self.copies else {
            return change.await;
        };
        let OnChange::Update(copy) = copies.on_change(ino) else {
            return change.await;
        };
        let _serialized = Arc::clone(&copy.change).lock_owned().await;
        if copy.written_outside() {
            self.import_from_copy(ino, &copy).await?;
        }
        let (out, range) = match change.await {
            Ok(out) => {
                let range = range(&out);
                (Ok(out), range)
            }
            // What a failed change left is unknown: the whole file.
            Err(e) => (Err(e), Some((0, u64::MAX))),
        };
        if let Err(e) = self.write_into_copy(ino, &copy, range).await {
            warn!(%ino, error = %e, "writing a change into the local copy failed");
            return out.and(Err(e));
        }
        out
    }

    /// Writes the file's bytes in `range` (offset, length) into its copy,
    /// then the file's size.
    async fn write_into_copy(
        &self,
        ino: Ino,
        copy: &LocalCopy,
        range: Option<(u64, u64)>,
    ) -> Result<()> {
        let size = self.getattr(ino)?.size;
        let io = |e: std::io::Error| FsError::Io(format!("writing a local copy: {e}"));
        if let Some((offset, len)) = range {
            let end = offset.saturating_add(len).min(size);
            let mut pos = offset;
            while pos < end {
                let want = (end - pos).min(COPY_CHUNK) as u32;
                let (data, _) = self.read_range(ino, pos, want).await?;
                if data.is_empty() {
                    break;
                }
                copy.file().write_all_at(&data, pos).map_err(io)?;
                pos += data.len() as u64;
            }
        }
        copy.file().set_len(size).map_err(io)?;
        copy.set_sentinel()
    }

    /// At flush and fsync of a file the kernel reads from its local copy:
    /// brings in what was written to the copy through a mapping.
    async fn import_mapped_writes(&self, ino: Ino) -> Result<()> {
        let Some((copy, mapped)) = self.copies.as_ref().and_then(|c| c.pinned(ino)) else {
            return Ok(());
        };
        if !mapped && !copy.written_outside() {
            return Ok(());
        }
        let _serialized = Arc::clone(&copy.change).lock_owned().await;
        self.import_from_copy(ino, &copy).await
    }

    /// Writes every 1 MiB piece where the copy differs from the file into
    /// the file. From then on every flush compares again: later writes to
    /// a page already mapped writable change no mtime.
    async fn import_from_copy(&self, ino: Ino, copy: &LocalCopy) -> Result<()> {
        if let Some(c) = &self.copies {
            c.note_mapped(ino);
        }
        let size = self.getattr(ino)?.size;
        let io = |e: std::io::Error| FsError::Io(format!("reading a local copy: {e}"));
        let mut theirs = vec![0u8; COPY_CHUNK as usize];
        let mut pos = 0u64;
        let mut imported = 0u64;
        while pos < size {
            let want = (size - pos).min(COPY_CHUNK);
            let (ours, _) = self.read_range(ino, pos, want as u32).await?;
            let theirs = &mut theirs[..ours.len()];
            copy.file().read_exact_at(theirs, pos).map_err(io)?;
            if ours != *theirs {
                self.write_at(ino, 0, Some(pos), theirs, &Creds::root())
                    .await?;
                imported += want;
            }
            pos += want;
        }
        if imported > 0 {
            info!(%ino, bytes = imported, "imported writes made through a mapping of the local copy");
        }
        copy.set_sentinel()
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        self.stop_background();
        self.stop_garbage();
    }
}

/// Whether the namespace says the inode no longer exists.
fn gone(e: &FsError) -> bool {
    refused(e) && matches!(e.errno(), libc::ESTALE | libc::ENOENT)
}

/// Whether a command failed because the namespace refused it (it changed
/// nothing), as opposed to failing to get an answer or to make it durable
/// (it may have been applied).
fn refused(e: &FsError) -> bool {
    matches!(e, FsError::Meta { .. })
}

/// Renews the session's lease every third of it, and ends the sessions of
/// mounts that stopped renewing (their handles and locks go).
fn start_renewer(meta: MetaLink, session: SessionId, lease: Duration) -> Result<Renewer> {
    let (stop, stopped) = mpsc::channel::<()>();
    let interval = (lease / 3).max(Duration::from_millis(10));
    let thread = std::thread::Builder::new()
        .name("dl-session".into())
        .spawn(move || loop {
            match stopped.recv_timeout(interval) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let renewed = block_on(meta.apply(&Command::RenewSession {
                session,
                lease_expires: later(now(), lease),
            }));
            match renewed {
                Ok(_) => {
                    if let Err(e) = block_on(meta.apply(&Command::ExpireSessions { now: now() })) {
                        debug!(error = %e, "expiring sessions failed");
                    }
                }
                Err(e) => warn!(%session, error = %e, "renewing the session lease failed"),
            }
        })
        .map_err(|e| FsError::Config(format!("cannot start the session thread: {e}")))?;
    Ok(Renewer { stop, thread })
}

/// Flushes files with unflushed writes every `interval`, while the file
/// system lives.
fn start_flusher(fs: std::sync::Weak<Fs>, interval: Duration) -> Result<Renewer> {
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("dl-flusher".into())
        .spawn(move || loop {
            match stopped.recv_timeout(interval) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let Some(fs) = fs.upgrade() else {
                return;
            };
            let dirty: Vec<Ino> = fs
                .read_files()
                .iter()
                .filter(|(_, e)| e.shared.is_dirty())
                .map(|(&ino, _)| ino)
                .collect();
            for ino in dirty {
                if let Err(e) = block_on(fs.flush_in_background(ino)) {
                    debug!(%ino, error = %e, "periodic flush failed");
                }
            }
        })
        .map_err(|e| FsError::Config(format!("cannot start the flusher thread: {e}")))?;
    Ok(Renewer { stop, thread })
}

/// Makes the local copies [`Fs::want_copy`] queues, one at a time, while
/// the file system lives.
fn start_copier(fs: std::sync::Weak<Fs>) -> Result<Copier> {
    let (queue, inos) = mpsc::channel::<Ino>();
    let thread = std::thread::Builder::new()
        .name("dl-copier".into())
        .spawn(move || {
            while let Ok(ino) = inos.recv() {
                let Some(fs) = fs.upgrade() else {
                    return;
                };
                block_on(fs.make_copy(ino));
            }
        })
        .map_err(|e| FsError::Config(format!("cannot start the local copy thread: {e}")))?;
    Ok(Copier { queue, thread })
}
