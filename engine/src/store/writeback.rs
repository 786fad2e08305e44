//! The write-back journal's driver: segment files on the cache disk, the
//! uploaders and the garbage collector on the control plane.
//!
//! An entry is the encoded block object (header with CRC32C + payload), so
//! it is uploaded as is. Entries are appended to the current segment
//! (`seg-<seq>.log`, see [`super::segment`]) under one writer lock, and a
//! commit returns after one fdatasync of the segments it appended to. A
//! segment is rolled when full, or when it holds no entry any more and has
//! grown past [`SEGMENT_RECYCLE_BYTES`], and deleted once it holds no
//! entry that still waits for upload and is not the one appended to. At
//! open, every segment is read back (a torn tail is ignored, an entry that
//! does not check is copied to `corrupt/` and never uploaded), entries are
//! queued for upload, and a fresh segment is started. Journals of earlier
//! versions held a file per entry (`<ino>-<index>-<version>.blk`): open
//! verifies those, appends them to the fresh segment, syncs it and only
//! then deletes them. The bookkeeping is [`JournalState`]; the GC queue is
//! [`GcQueue`] in the file `gc-queue`.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{watch, Notify};

use super::backoff::{Backoff, SplitMix64};
use super::gc::GcQueue;
use super::journal::{Backlog, GcRemoval, JournalState, UploadHealth};
use super::object::{self, ObjectKind, OBJECT_HEADER_BYTES};
use super::remote::RemoteStore;
use super::segment::{self, Location, SyncNeed};
use super::StoreError;
use crate::block::{BlockId, BLOCK_SIZE_MAX_BYTES};

/// Uploads in flight by default.
pub const UPLOAD_CONCURRENCY_DEFAULT: usize = 8;
/// Most uploads in flight.
pub const UPLOAD_CONCURRENCY_MAX: usize = 64;
/// Grace period before a garbage version is deleted, by default.
pub const GC_GRACE_DEFAULT_MS: u64 = 30_000;
/// Journal capacity by default.
pub const JOURNAL_CAPACITY_DEFAULT_BYTES: u64 = 4 << 30;
/// First retry delay of a failed upload.
pub const UPLOAD_RETRY_BASE_MS: u64 = 100;
/// Largest retry delay of a failed upload (uploads retry forever).
pub const UPLOAD_RETRY_MAX_MS: u64 = 5_000;
/// Longest sleep of the upload dispatcher between checks.
const DISPATCH_IDLE_MS: u64 = 1_000;
/// Size at which the journal starts a new segment, by default.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
/// A segment that holds no entry any more is replaced by a fresh one at
/// the next commit once it has this many bytes, so a crash leaves little
/// for the next open to read back and upload again.
pub const SEGMENT_RECYCLE_BYTES: u64 = 4 << 20;
/// How long uploads to a local-directory store gather before one sync of
/// its file system makes them durable (see [`RemoteStore`]'s
/// `put_unsynced`); their journal entries wait for it.
const STORE_SYNC_BATCH_MS: u64 = 20;
/// Longest sleep of the garbage collector between checks.
const GC_TICK_MAX_MS: u64 = 1_000;

const ENTRY_SUFFIX: &str = ".blk";
const TMP_SUFFIX: &str = ".tmp";
const CORRUPT_DIR: &str = "corrupt";
const GC_QUEUE_FILE: &str = "gc-queue";
const LOCK_FILE: &str = "lock";
const STORE_FILE: &str = "store";

/// When a commit returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WriteMode {
    /// When the blocks are durable in the journal (uploaded later).
    #[default]
    Back,
    /// When the blocks are in the store (waits through outages).
    Through,
}

impl FromStr for WriteMode {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "back" => Ok(Self::Back),
            "through" => Ok(Self::Through),
            other => Err(StoreError::Config(format!(
                "write mode `{other}` is invalid: use `back` (commit when journaled, upload in the background) or `through` (commit when uploaded)"
            ))),
        }
    }
}

/// Settings of the write-back journal.
#[derive(Clone, Debug)]
pub struct WriteBackConfig {
    /// The journal directory (on the cache disk).
    pub journal_dir: PathBuf,
    /// Bytes of entries the journal may hold.
    pub capacity_bytes: u64,
    /// When commits return.
    pub mode: WriteMode,
    /// Uploads in flight.
    pub upload_concurrency: usize,
    /// Wait before a garbage version is deleted.
    pub gc_grace: Duration,
    /// Size at which a new segment is started (an entry larger than this
    /// gets a segment of its own).
    pub segment_bytes: u64,
}

impl WriteBackConfig {
    /// Defaults for a journal in `journal_dir`.
    pub fn new(journal_dir: impl Into<PathBuf>) -> Self {
        Self {
            journal_dir: journal_dir.into(),
            capacity_bytes: JOURNAL_CAPACITY_DEFAULT_BYTES,
            mode: WriteMode::Back,
            upload_concurrency: UPLOAD_CONCURRENCY_DEFAULT,
            gc_grace: Duration::from_millis(GC_GRACE_DEFAULT_MS),
            segment_bytes: SEGMENT_BYTES_DEFAULT,
        }
    }
}

/// The write-back journal of one store. Clones share it; when the last
/// clone is dropped (or at [`WriteBack::shutdown`]) the uploaders and the
/// collector stop and the journal directory is unlocked.
#[derive(Clone, Debug)]
pub struct WriteBack {
    shared: Arc<Shared>,
    owner: Arc<Owner>,
}

/// What the handles own and the background tasks do not: the tasks (to
/// stop them) and the journal directory's lock.
#[derive(Debug)]
struct Owner {
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    _lock: File,
}

impl Owner {
    fn stop(&self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug)]
struct GcFile {
    queue: GcQueue,
    file: File,
}

#[derive(Debug)]
struct Shared {
    config: WriteBackConfig,
    remote: RemoteStore,
    epoch: Instant,
    state: Mutex<JournalState>,
    health: Mutex<UploadHealth>,
    /// Wakes the upload dispatcher.
    wake: Notify,
    /// Bumped whenever entries leave the journal.
    progress: watch::Sender<u64>,
    gc: Mutex<GcFile>,
    /// The segment appended to. Lock order: `syncs`, `writer`, `state`.
    writer: Mutex<Writer>,
    /// What fdatasyncs of segments made durable, and which failed. Held
    /// across each fdatasync: commits take turns, and one that finds its
    /// bytes covered by the sync before it does not sync again (group
    /// commit), while a failure is seen by every commit it concerns.
    syncs: Mutex<segment::SegmentSyncs>,
    /// Uploaded to a local-directory store, not yet synced there: still
    /// in the journal (uploading).
    unsynced: Mutex<Vec<BlockId>>,
    /// Wakes the store sync.
    sync_wake: Notify,
    /// Whether the namespace refers to a block version now: asked right
    /// before a garbage version is deleted (see [`WriteBack::set_in_use`]).
    in_use: ReferenceCheck,
}

/// Whether the namespace refers to a block version (the metadata's answer,
/// which the engine does not know).
pub type InUse = Arc<dyn Fn(BlockId) -> bool + Send + Sync>;

/// The collector's [`InUse`], once the mount set it.
#[derive(Default)]
struct ReferenceCheck(std::sync::OnceLock<InUse>);

impl std::fmt::Debug for ReferenceCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ReferenceCheck")
            .field(&self.0.get().is_some())
            .finish()
    }
}

/// A commit admitted to the journal.
#[derive(Debug)]
struct Admitted {
    /// The blocks it appends (not those another commit made durable).
    work: Vec<(BlockId, Vec<u8>)>,
    /// Their ids, and those another commit is still writing.
    to_write: Vec<BlockId>,
    /// Every block of the commit.
    ids: Vec<BlockId>,
}

/// The segment commits append to.
#[derive(Debug)]
struct Writer {
    seq: u64,
    file: Arc<File>,
    len: u64,
    /// An append or sync failed: the next commit starts a new segment (a
    /// failed append may leave bytes a scan cannot step over).
    broken: bool,
}

/// The bookkeeping is touched briefly and never across IO; a panic while
/// holding it cannot leave it half-updated in a way worse than losing the
/// process, so a poisoned lock is used as is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn entry_name(id: BlockId) -> String {
    format!("{}-{}-{}{ENTRY_SUFFIX}", id.ino.0, id.index, id.version)
}

fn parse_entry_name(name: &str) -> Option<BlockId> {
    let stem = name.strip_suffix(ENTRY_SUFFIX)?;
    let mut parts = stem.split('-').map(str::parse::<u64>);
    let (Some(Ok(ino)), Some(Ok(index)), Some(Ok(version)), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Some(BlockId::new(ino, index, version))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsync the journal directory", dir, e))
}

/// Writes `bytes` to `dir/name` atomically and durably.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = dir.join(format!(".{name}{TMP_SUFFIX}"));
    let target = dir.join(name);
    let mut file = File::create(&tmp).map_err(|e| StoreError::io("create", &tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_data())
        .map_err(|e| StoreError::io("write", &tmp, e))?;
    std::fs::rename(&tmp, &target).map_err(|e| StoreError::io("rename", &tmp, e))?;
    sync_dir(dir)
}

/// Locks the journal directory: two writers would upload and delete each
/// other's entries.
fn lock_journal(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    match crate::lock_file::try_lock(&path).map_err(|e| StoreError::io("lock", &path, e))? {
        crate::lock_file::Lock::Held(file) => Ok(file),
        crate::lock_file::Lock::Busy(_) => Err(StoreError::Config(format!(
            "the write-back journal {} is in use by another datenlord process: stop it, or give this one another journal directory",
            dir.display()
        ))),
    }
}

/// A journal belongs to one store: its blocks must not land in another.
fn check_journal_store(dir: &Path, store: &str) -> Result<(), StoreError> {
    let path = dir.join(STORE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(recorded) if recorded.trim_end() == store => Ok(()),
        Ok(recorded) => Err(StoreError::Config(format!(
            "the write-back journal {} holds blocks of the store {}, not {store}: mount that store to upload them, or use another journal directory",
            dir.display(),
            recorded.trim_end()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_atomically(dir, STORE_FILE, format!("{store}\n").as_bytes())
        }
        Err(e) => Err(StoreError::io("read", &path, e)),
    }
}

fn open_append(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| StoreError::io("open", path, e))
}

/// What open finds in the journal directory.
#[derive(Debug, Default)]
struct Recovered {
    /// Entries read back from segments, oldest segment first.
    entries: Vec<(BlockId, Location)>,
    /// The segments read back that hold entries, in order.
    segments: Vec<u64>,
    /// The highest segment sequence found (0 if none).
    last_segment: u64,
    /// Entry files of journals written before segments, not yet checked.
    legacy: Vec<(BlockId, PathBuf)>,
}

/// Keeps a copy of an entry that does not check, for a person to look
/// at; it is never uploaded.
fn set_aside(dir: &Path, name: &str, bytes: &[u8]) {
    let aside = dir.join(CORRUPT_DIR).join(name);
    if let Err(e) = std::fs::write(&aside, bytes) {
        tracing::warn!(file = %aside.display(), error = %e, "cannot keep a copy of a corrupt journal entry");
    }
}

/// Deletes a segment that holds no entry waiting for upload. Not synced:
/// a segment that comes back after a crash is read again and its entries
/// uploaded again (the same bytes under the same keys; versions deleted
/// since are left to the orphan scrub).
fn remove_segment(dir: &Path, seq: u64) {
    let path = dir.join(segment::segment_name(seq));
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(segment = %path.display(), error = %e, "cannot delete an uploaded journal segment");
        }
    }
}

/// Reads one segment back at open. Returns its entries; a segment with
/// none is deleted.
fn recover_segment(
    dir: &Path,
    store: &str,
    seq: u64,
) -> Result<Vec<(BlockId, Location)>, StoreError> {
    let path = dir.join(segment::segment_name(seq));
    let bytes = std::fs::read(&path).map_err(|e| StoreError::io("read", &path, e))?;
    let scan = segment::scan(&bytes);
    for damaged in &scan.damaged {
        let name = format!("{}.{seq}", entry_name(damaged.id));
        let start = damaged.offset as usize;
        set_aside(dir, &name, &bytes[start..start + damaged.len as usize]);
        tracing::error!(
            store = %store, segment = %path.display(), offset = damaged.offset, block = %damaged.id,
            reason = %damaged.reason, copied_to = %dir.join(CORRUPT_DIR).join(&name).display(),
            "corrupt write-back journal entry: not uploaded"
        );
    }
    if let (Some(reason), Some(resumes)) = (&scan.tail, scan.resumes_at) {
        // Entries after the damage were acknowledged: cutting them would
        // lose them without a word.
        return Err(StoreError::Corrupt {
            key: path.display().to_string(),
            reason: format!(
                "write-back journal segment damaged at byte {} ({reason}) with whole entries after it (from byte {resumes}): not a torn append; nothing was deleted. Copy the segment aside, then remove it to mount without the blocks it holds",
                scan.end
            ),
        });
    }
    if let Some(reason) = &scan.tail {
        tracing::warn!(
            store = %store, segment = %path.display(), at = scan.end,
            bytes = bytes.len() as u64 - scan.end, %reason,
            "write-back journal segment ends in a torn append (a commit that never returned): ignored"
        );
    }
    if scan.entries.is_empty() {
        remove_segment(dir, seq);
    }
    Ok(scan
        .entries
        .into_iter()
        .map(|(id, offset, len)| {
            let location = Location {
                segment: seq,
                offset,
                len,
            };
            (id, location)
        })
        .collect())
}

/// Scans the journal directory at open: reads every segment back, lists
/// entry files of earlier versions and deletes their tmp files (commits
/// that never returned).
fn recover(dir: &Path, store: &str) -> Result<Recovered, StoreError> {
    let corrupt_dir = dir.join(CORRUPT_DIR);
    std::fs::create_dir_all(&corrupt_dir).map_err(|e| StoreError::io("create", &corrupt_dir, e))?;
    let listing = std::fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))?;
    let mut out = Recovered::default();
    let mut segments = Vec::new();
    for dirent in listing {
        let dirent = dirent.map_err(|e| StoreError::io("list", dir, e))?;
        let name = dirent.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = dirent.path();
        if name.ends_with(TMP_SUFFIX) {
            std::fs::remove_file(&path).map_err(|e| StoreError::io("remove", &path, e))?;
        } else if let Some(seq) = segment::parse_segment_name(name) {
            segments.push(seq);
        } else if let Some(id) = parse_entry_name(name) {
            out.legacy.push((id, path));
        }
    }
    segments.sort_unstable();
    for seq in segments {
        let entries = recover_segment(dir, store, seq)?;
        if !entries.is_empty() {
            out.segments.push(seq);
        }
        out.entries.extend(entries);
        out.last_segment = seq;
    }
    sync_dir(dir)?;
    Ok(out)
}

/// Creates segment `seq`, durably named.
fn create_segment(dir: &Path, seq: u64) -> Result<File, StoreError> {
    let path = dir.join(segment::segment_name(seq));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| StoreError::io("create journal segment", &path, e))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Starts the next segment and deletes the one it replaces if that holds
/// no entry.
fn roll(dir: &Path, writer: &mut Writer, state: &Mutex<JournalState>) -> Result<(), StoreError> {
    let seq = writer.seq + 1;
    let file = create_segment(dir, seq)?;
    let freed = lock(state).open_segment(seq);
    *writer = Writer {
        seq,
        file: Arc::new(file),
        len: 0,
        broken: false,
    };
    if let Some(old) = freed {
        remove_segment(dir, old);
    }
    Ok(())
}

/// Appends the entry of block `id` to the current segment (rolling first
/// when it is full, broken, or holds nothing and has grown past
/// [`SEGMENT_RECYCLE_BYTES`]). The caller syncs the returned file.
fn append(
    dir: &Path,
    segment_bytes: u64,
    writer: &mut Writer,
    state: &Mutex<JournalState>,
    id: BlockId,
    payload: &[u8],
) -> Result<(Location, Arc<File>), StoreError> {
    let len = (OBJECT_HEADER_BYTES + payload.len()) as u64;
    let full = writer.len > 0 && writer.len.saturating_add(len) > segment_bytes;
    let recycle =
        writer.len >= SEGMENT_RECYCLE_BYTES && lock(state).active_is_empty() == Some(writer.seq);
    if writer.broken || full || recycle {
        roll(dir, writer, state)?;
    }
    let offset = writer.len;
    let header = object::encode_header(ObjectKind::Block(id), payload);
    let written = writer.file.write_all_at(&header, offset).and_then(|()| {
        writer
            .file
            .write_all_at(payload, offset + header.len() as u64)
    });
    if let Err(e) = written {
        writer.broken = true;
        let path = dir.join(segment::segment_name(writer.seq));
        return Err(StoreError::io("append to journal segment", path, e));
    }
    writer.len += len;
    let location = Location {
        segment: writer.seq,
        offset,
        len,
    };
    Ok((location, Arc::clone(&writer.file)))
}

/// Moves the entry files of a journal written before segments into the
/// current segment: each is checked (a corrupt one goes to `corrupt/`),
/// appended and, once the segments are synced, deleted.
fn migrate_legacy(
    dir: &Path,
    segment_bytes: u64,
    writer: &mut Writer,
    state: &Mutex<JournalState>,
    legacy: &[(BlockId, PathBuf)],
) -> Result<(), StoreError> {
    if legacy.is_empty() {
        return Ok(());
    }
    let mut touched: Vec<Arc<File>> = Vec::new();
    for (id, path) in legacy {
        let raw = std::fs::read(path).map_err(|e| StoreError::io("read", path, e))?;
        let payload = match object::decode(ObjectKind::Block(*id), &raw) {
            Ok(payload) => payload,
            Err(reason) => {
                let aside = dir.join(CORRUPT_DIR).join(entry_name(*id));
                tracing::error!(
                    entry = %path.display(), block = %id, %reason, moved_to = %aside.display(),
                    "corrupt write-back journal entry: moved aside, not uploaded"
                );
                std::fs::rename(path, &aside).map_err(|e| StoreError::io("rename", path, e))?;
                continue;
            }
        };
        if lock(state).contains(*id) {
            continue;
        }
        let (location, file) = append(dir, segment_bytes, writer, state, *id, payload)?;
        lock(state).recover(*id, location, 0);
        if !touched.iter().any(|f| Arc::ptr_eq(f, &file)) {
            touched.push(file);
        }
    }
    for file in touched {
        file.sync_data()
            .map_err(|e| StoreError::io("sync journal segment", dir, e))?;
    }
    for (_, path) in legacy {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("remove", path, e)),
        }
    }
    sync_dir(dir)
}

fn open_gc_queue(dir: &Path) -> Result<GcFile, StoreError> {
    let path = dir.join(GC_QUEUE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(StoreError::io("read", &path, e)),
    };
    let mut replay = GcQueue::replay(&bytes);
    if replay.valid_bytes < bytes.len() || replay.queue.needs_compaction() {
        if replay.valid_bytes < bytes.len() {
            tracing::warn!(file = %path.display(), cut_bytes = bytes.len() - replay.valid_bytes, "GC queue: torn tail cut");
        }
        let compacted = replay.queue.compact();
        write_atomically(dir, GC_QUEUE_FILE, &compacted)?;
    }
    Ok(GcFile {
        queue: replay.queue,
        file: open_append(&path)?,
    })
}

impl WriteBack {
    /// Opens (or creates) the journal: replays its entries and the GC
    /// queue, then starts the uploaders and the collector.
    pub fn open(config: WriteBackConfig, remote: RemoteStore) -> Result<Self, StoreError> {
        if config.capacity_bytes == 0 {
            return Err(StoreError::Config(
                "the write-back journal capacity must be more than 0 bytes".into(),
            ));
        }
        if !(1..=UPLOAD_CONCURRENCY_MAX).contains(&config.upload_concurrency) {
            return Err(StoreError::Config(format!(
                "upload concurrency {} is invalid: use 1 to {UPLOAD_CONCURRENCY_MAX}",
                config.upload_concurrency
            )));
        }
        if config.segment_bytes == 0 {
            return Err(StoreError::Config(
                "the write-back journal segment size must be more than 0 bytes".into(),
            ));
        }
        let dir = &config.journal_dir;
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io("create", dir, e))?;
        let dir_lock = lock_journal(dir)?;
        check_journal_store(dir, remote.name())?;
        let recovered = recover(dir, remote.name())?;
        let state = Mutex::new(JournalState::new(config.capacity_bytes));
        for &(id, location) in &recovered.entries {
            lock(&state).recover(id, location, 0);
        }
        // A segment holding only second copies of entries an older one
        // holds (a failed commit written again) is not needed.
        let holding = lock(&state).segments();
        for &seq in &recovered.segments {
            if !holding.contains(&seq) {
                remove_segment(dir, seq);
            }
        }
        // Always a fresh segment: appending after a torn tail would hide
        // the new entries behind it from the next scan.
        let seq = recovered.last_segment + 1;
        let file = create_segment(dir, seq)?;
        lock(&state).open_segment(seq);
        let mut writer = Writer {
            seq,
            file: Arc::new(file),
            len: 0,
            broken: false,
        };
        migrate_legacy(
            dir,
            config.segment_bytes,
            &mut writer,
            &state,
            &recovered.legacy,
        )?;
        let entries = lock(&state).backlog(0).entries;
        if entries > 0 {
            tracing::info!(
                store = %remote.name(), journal = %dir.display(), entries,
                "write-back journal holds blocks not yet uploaded: uploading them"
            );
        }
        let gc = open_gc_queue(dir)?;
        let shared = Arc::new(Shared {
            remote,
            epoch: Instant::now(),
            state,
            health: Mutex::new(UploadHealth::default()),
            wake: Notify::new(),
            progress: watch::channel(0).0,
            gc: Mutex::new(gc),
            writer: Mutex::new(writer),
            syncs: Mutex::new(segment::SegmentSyncs::default()),
            unsynced: Mutex::new(Vec::new()),
            sync_wake: Notify::new(),
            in_use: ReferenceCheck::default(),
            config,
        });
        let handle = shared.remote.control().handle().clone();
        let uploads = handle.spawn(Arc::clone(&shared).upload_loop());
        let collector = handle.spawn(Arc::clone(&shared).gc_loop());
        let syncer = handle.spawn(Arc::clone(&shared).store_sync_loop());
        let owner = Arc::new(Owner {
            tasks: Mutex::new(vec![
                uploads.abort_handle(),
                collector.abort_handle(),
                syncer.abort_handle(),
            ]),
            _lock: dir_lock,
        });
        Ok(Self { shared, owner })
    }

    /// Makes blocks durable: returns when they are in the journal (mode
    /// `Back`) or in the store (mode `Through`). A full journal fails with
    /// [`StoreError::JournalFull`]; nothing is dropped silently. The future
    /// runs on the control plane and may be awaited on any executor.
    pub fn commit(
        &self,
        blocks: Vec<(BlockId, Vec<u8>)>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        self.shared.remote.control().run(shared.commit(blocks))
    }

    /// [`WriteBack::commit`] whose journal append and fdatasync run in the
    /// thread that polls the future, blocking it: for plain threads (the
    /// FUSE request loops, whose metadata rounds already run inline), it
    /// saves the hops to the control plane, a blocking-pool thread and
    /// back, each a thread wake-up. Never poll it on an executor that
    /// other tasks share (glommio, tokio): use `commit` there. Mode
    /// `Through` still waits for the upload on the control plane.
    pub fn commit_inline(
        &self,
        blocks: Vec<(BlockId, Vec<u8>)>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        async move {
            let admitted = shared.admit(blocks)?;
            shared.journal(&admitted)?;
            if shared.config.mode == WriteMode::Through {
                let control = shared.remote.control().clone();
                control.run(shared.wait_uploaded(admitted.ids)).await?;
            }
            Ok(())
        }
    }

    /// The bytes of a block still in the journal (not yet uploaded), checked
    /// against its CRC. Synchronous: one small file read.
    pub fn journal_get(&self, id: BlockId) -> Option<Vec<u8>> {
        self.shared.journal_get(id)
    }

    /// Whether the journal holds the block (not yet uploaded). Never blocks
    /// on IO: readers ask this before paying for a [`WriteBack::journal_get`]
    /// on a blocking thread. The answer may be stale by the time the caller
    /// acts: an entry leaves only after its upload, so a reader told `true`
    /// that then misses the file finds the block in the store.
    pub fn journal_holds(&self, id: BlockId) -> bool {
        lock(&self.shared.state).contains(id)
    }

    /// Queues versions that left the namespace for deletion after the grace
    /// period (durable: appended to the GC queue file and fsynced).
    // Owned, as the fs layer hands over the garbage list of an applied command.
    #[allow(clippy::needless_pass_by_value)]
    pub fn collect(&self, garbage: Vec<BlockId>) -> Result<(), StoreError> {
        if garbage.is_empty() {
            return Ok(());
        }
        let due_ms = wall_ms().saturating_add(self.shared.config.gc_grace.as_millis() as u64);
        let mut gc = lock(&self.shared.gc);
        let records = gc.queue.add(&garbage, due_ms);
        let path = self.shared.config.journal_dir.join(GC_QUEUE_FILE);
        gc.file
            .write_all(&records)
            .and_then(|()| gc.file.sync_data())
            .map_err(|e| StoreError::io("append to", path, e))
    }

    /// Gives the collector the namespace's answer to "is this version
    /// referenced now?", asked right before each deletion: a version the
    /// namespace refers to is never deleted, whatever queued it (it is
    /// dropped from the queue with an error line). Set once, by the mount.
    pub fn set_in_use(&self, in_use: InUse) {
        if self.shared.in_use.0.set(in_use).is_err() {
            tracing::warn!("the collector's reference check was set already");
        }
    }

    /// Versions waiting in the GC queue.
    pub fn gc_pending(&self) -> usize {
        lock(&self.shared.gc).queue.pending()
    }

    /// The upload backlog.
    pub fn backlog(&self) -> Backlog {
        let mut backlog = lock(&self.shared.state).backlog(self.shared.now_ms());
        backlog.last_error = lock(&self.shared.health).last_error().map(str::to_owned);
        backlog
    }

    /// Waits until every journaled block is uploaded (clean unmount).
    pub async fn drain(&self, timeout: Duration) -> Result<(), StoreError> {
        let shared = Arc::clone(&self.shared);
        self.shared
            .remote
            .control()
            .run(async move {
                let mut progress = shared.progress.subscribe();
                let deadline = tokio::time::Instant::now() + timeout;
                loop {
                    if lock(&shared.state).is_empty() {
                        return Ok(());
                    }
                    match tokio::time::timeout_at(deadline, progress.changed()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return Err(StoreError::ShutDown),
                        Err(_) => {
                            let backlog = lock(&shared.state).backlog(shared.now_ms());
                            let last = lock(&shared.health).last_error().map(str::to_owned);
                            return Err(StoreError::Unreachable {
                                store: shared.remote.name().to_owned(),
                                message: format!(
                                    "the write-back journal {} still holds {} blocks ({} bytes) after {} ms; last upload error: {}",
                                    shared.config.journal_dir.display(),
                                    backlog.entries,
                                    backlog.bytes,
                                    timeout.as_millis(),
                                    last.as_deref().unwrap_or("none")
                                ),
                            });
                        }
                    }
                }
            })
            .await
    }

    /// Stops the uploaders and the collector (even if clones remain).
    /// Journaled blocks stay in the journal and are uploaded by the next
    /// `open`; call [`WriteBack::drain`] first for a clean unmount (an
    /// empty journal deletes its segments here).
    pub fn shutdown(self) {
        self.owner.stop();
        self.shared.release_segments_if_empty();
    }
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn segment_path(&self, seq: u64) -> PathBuf {
        self.config.journal_dir.join(segment::segment_name(seq))
    }

    /// Deletes segments off the caller's executor.
    async fn remove_segments(&self, freed: Vec<u64>) {
        if freed.is_empty() {
            return;
        }
        let dir = self.config.journal_dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for seq in freed {
                remove_segment(&dir, seq);
            }
        })
        .await;
    }

    /// The bytes of an entry as its segment holds them.
    fn read_entry(&self, location: Location) -> std::io::Result<Vec<u8>> {
        let file = File::open(self.segment_path(location.segment))?;
        let mut raw = vec![0; location.len as usize];
        file.read_exact_at(&mut raw, location.offset)?;
        Ok(raw)
    }

    /// After a clean drain: the segments hold nothing to upload, so they
    /// are deleted and the next open has nothing to read back.
    fn release_segments_if_empty(&self) {
        let mut writer = lock(&self.writer);
        let state = lock(&self.state);
        if !state.is_empty() {
            return;
        }
        for seq in state.segments() {
            remove_segment(&self.config.journal_dir, seq);
        }
        writer.broken = true;
    }

    async fn commit(self: Arc<Self>, blocks: Vec<(BlockId, Vec<u8>)>) -> Result<(), StoreError> {
        let admitted = self.admit(blocks)?;
        let ids = admitted.ids.clone();
        let writer = Arc::clone(&self);
        tokio::task::spawn_blocking(move || writer.journal(&admitted))
            .await
            .unwrap_or(Err(StoreError::ShutDown))?;
        self.wait_uploaded(ids).await
    }

    /// Checks a commit and reserves its room in the journal.
    fn admit(&self, blocks: Vec<(BlockId, Vec<u8>)>) -> Result<Admitted, StoreError> {
        if let Some((id, data)) = blocks
            .iter()
            .find(|(_, data)| data.len() > BLOCK_SIZE_MAX_BYTES as usize)
        {
            return Err(StoreError::Config(format!(
                "block {id} has {} bytes, more than the largest block size {BLOCK_SIZE_MAX_BYTES}",
                data.len()
            )));
        }
        let sizes: Vec<(BlockId, u64)> = blocks
            .iter()
            .map(|(id, data)| (*id, (OBJECT_HEADER_BYTES + data.len()) as u64))
            .collect();
        let ids: Vec<BlockId> = sizes.iter().map(|&(id, _)| id).collect();
        let to_write = lock(&self.state)
            .admit(&sizes, self.now_ms())
            .map_err(|full| StoreError::JournalFull {
                store: self.remote.name().to_owned(),
                journal: self.config.journal_dir.clone(),
                backlog_entries: full.entries,
                backlog_bytes: full.used_bytes,
                capacity_bytes: full.capacity_bytes,
                needed_bytes: full.needed_bytes,
            })?;
        let mut wanted: HashSet<BlockId> = to_write.iter().copied().collect();
        let work: Vec<(BlockId, Vec<u8>)> = blocks
            .into_iter()
            .filter(|(id, _)| wanted.remove(id))
            .collect();
        Ok(Admitted {
            work,
            to_write,
            ids,
        })
    }

    /// Appends and syncs an admitted commit (blocking); a failure releases
    /// what it reserved.
    fn journal(&self, admitted: &Admitted) -> Result<(), StoreError> {
        if admitted.to_write.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.write_entries(&admitted.work) {
            let freed = lock(&self.state).abort(&admitted.to_write);
            for seq in freed {
                remove_segment(&self.config.journal_dir, seq);
            }
            return Err(e);
        }
        lock(&self.state).mark_durable(&admitted.to_write, self.now_ms());
        self.wake.notify_one();
        Ok(())
    }

    /// In mode `Through`, waits until the blocks left the journal
    /// (uploaded, durable in the store).
    async fn wait_uploaded(self: Arc<Self>, ids: Vec<BlockId>) -> Result<(), StoreError> {
        if self.config.mode == WriteMode::Through {
            let mut progress = self.progress.subscribe();
            while lock(&self.state).any_pending(&ids) {
                if progress.changed().await.is_err() {
                    return Err(StoreError::ShutDown);
                }
            }
        }
        Ok(())
    }

    /// Appends the entries to the current segment under the writer lock,
    /// then syncs each segment they went to once. An entry another commit
    /// appended already is not appended again, but its segment is synced
    /// too: this commit returns only when the entry is durable.
    fn write_entries(&self, work: &[(BlockId, Vec<u8>)]) -> Result<(), StoreError> {
        let dir = &self.config.journal_dir;
        // Each segment appended to, and how many of its bytes this commit
        // needs durable.
        let mut touched: Vec<(u64, Arc<File>, u64)> = Vec::new();
        {
            let mut writer = lock(&self.writer);
            for (id, data) in work {
                let known = lock(&self.state).location(*id);
                let (at, file) = match known {
                    Some(at) if at.segment == writer.seq => (at, Arc::clone(&writer.file)),
                    Some(at) => match File::open(self.segment_path(at.segment)) {
                        Ok(file) => (at, Arc::new(file)),
                        // Deleted: the entry was uploaded meanwhile.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => {
                            return Err(StoreError::io("open", self.segment_path(at.segment), e))
                        }
                    },
                    None => {
                        let (at, file) = append(
                            dir,
                            self.config.segment_bytes,
                            &mut writer,
                            &self.state,
                            *id,
                            data,
                        )?;
                        lock(&self.state).written(*id, at);
                        (at, file)
                    }
                };
                let through = at.offset + at.len;
                match touched.iter_mut().find(|(seq, _, _)| *seq == at.segment) {
                    Some(entry) => entry.2 = entry.2.max(through),
                    None => touched.push((at.segment, file, through)),
                }
            }
        }
        for (segment, file, through) in touched {
            self.sync_segment(segment, &file, through)?;
        }
        Ok(())
    }

    /// Makes the first `through` bytes of `segment` durable, unless a sync
    /// did already; fails if a sync of it failed before they were covered
    /// (see [`segment::SegmentSyncs`]).
    fn sync_segment(&self, segment: u64, file: &File, through: u64) -> Result<(), StoreError> {
        let mut syncs = lock(&self.syncs);
        match syncs.need(segment, through) {
            SyncNeed::Covered => return Ok(()),
            SyncNeed::Failed => {
                return Err(StoreError::io(
                    "sync journal segment",
                    self.segment_path(segment),
                    std::io::Error::other(
                        "an earlier fdatasync of this segment failed, and entries appended before it may be lost",
                    ),
                ))
            }
            SyncNeed::Sync => {}
        }
        // A sync covers everything appended before it starts.
        let covers = {
            let writer = lock(&self.writer);
            if writer.seq == segment {
                writer.len
            } else {
                u64::MAX
            }
        };
        if let Err(e) = file.sync_data() {
            syncs.failed(segment);
            // The kernel may have dropped the pages it failed to write:
            // later entries go to a new segment.
            let mut writer = lock(&self.writer);
            if writer.seq == segment {
                writer.broken = true;
            }
            return Err(StoreError::io(
                "sync journal segment",
                self.segment_path(segment),
                e,
            ));
        }
        syncs.synced(segment, covers);
        Ok(())
    }

    fn journal_get(&self, id: BlockId) -> Option<Vec<u8>> {
        let location = lock(&self.state).location(id)?;
        let raw = match self.read_entry(location) {
            Ok(raw) => raw,
            // Uploaded and its segment deleted since: the store has it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::error!(segment = %self.segment_path(location.segment).display(), block = %id, error = %e, "cannot read a write-back journal entry");
                return None;
            }
        };
        match object::decode(ObjectKind::Block(id), &raw) {
            Ok(payload) => Some(payload.to_vec()),
            Err(reason) => {
                tracing::error!(segment = %self.segment_path(location.segment).display(), offset = location.offset, block = %id, %reason, "corrupt write-back journal entry: not served");
                None
            }
        }
    }

    /// Starts uploads of due entries, at most `upload_concurrency` at once.
    async fn upload_loop(self: Arc<Self>) {
        let mut uploads = tokio::task::JoinSet::new();
        loop {
            while uploads.try_join_next().is_some() {}
            while uploads.len() < self.config.upload_concurrency {
                let Some(id) = lock(&self.state).next_upload(self.now_ms()) else {
                    break;
                };
                uploads.spawn(Arc::clone(&self).upload(id));
            }
            let now = self.now_ms();
            let idle_ms = lock(&self.state)
                .next_due_ms()
                .map_or(DISPATCH_IDLE_MS, |due| due.saturating_sub(now))
                .clamp(1, DISPATCH_IDLE_MS);
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(idle_ms)) => {}
                Some(_) = uploads.join_next(), if !uploads.is_empty() => {}
            }
        }
    }

    async fn upload(self: Arc<Self>, id: BlockId) {
        let Some(location) = lock(&self.state).location(id) else {
            tracing::error!(block = %id, "write-back journal entry without a location: not uploaded");
            let freed = lock(&self.state).discard(id);
            self.remove_segments(freed.into_iter().collect()).await;
            self.progress.send_modify(|n| *n += 1);
            return;
        };
        let path = self.segment_path(location.segment);
        let reader = Arc::clone(&self);
        let raw = match tokio::task::spawn_blocking(move || reader.read_entry(location)).await {
            Ok(Ok(raw)) => raw,
            Ok(Err(e)) => {
                let now = self.now_ms();
                self.upload_failed(id, &StoreError::io("read journal entry", &path, e), now);
                return;
            }
            Err(_) => return,
        };
        if let Err(reason) = object::decode(ObjectKind::Block(id), &raw) {
            let name = format!("{}.{}", entry_name(id), location.segment);
            tracing::error!(
                store = %self.remote.name(), segment = %path.display(), offset = location.offset,
                block = %id, %reason,
                copied_to = %self.config.journal_dir.join(CORRUPT_DIR).join(&name).display(),
                "corrupt write-back journal entry: not uploaded"
            );
            let dir = self.config.journal_dir.clone();
            let _ = tokio::task::spawn_blocking(move || set_aside(&dir, &name, &raw)).await;
            let freed = lock(&self.state).discard(id);
            self.remove_segments(freed.into_iter().collect()).await;
            self.progress.send_modify(|n| *n += 1);
            return;
        }
        let key = self.remote.inner.block_key(id);
        let started = self.now_ms();
        match self.remote.inner.put_unsynced(&key, Bytes::from(raw)).await {
            Ok(false) => self.uploaded(&[id]).await,
            Ok(true) => {
                lock(&self.unsynced).push(id);
                self.sync_wake.notify_one();
            }
            Err(e) => self.upload_failed(id, &e, started),
        }
    }

    /// Entries whose upload is durable leave the journal.
    async fn uploaded(&self, ids: &[BlockId]) {
        let freed: Vec<u64> = {
            let mut state = lock(&self.state);
            ids.iter().filter_map(|&id| state.upload_done(id)).collect()
        };
        self.remove_segments(freed).await;
        if lock(&self.health).on_success(self.now_ms()) {
            let backlog = lock(&self.state).backlog(self.now_ms());
            tracing::info!(
                store = %self.remote.name(), backlog_entries = backlog.entries,
                backlog_bytes = backlog.bytes,
                "uploads to the store recovered"
            );
        }
        self.progress.send_modify(|n| *n += 1);
    }

    /// Makes uploads to a local-directory store durable in batches: after
    /// the first of a batch, waits [`STORE_SYNC_BATCH_MS`] for more, syncs
    /// the store's file system once, and lets the batch leave the journal.
    /// A failed sync uploads the batch again.
    async fn store_sync_loop(self: Arc<Self>) {
        loop {
            self.sync_wake.notified().await;
            tokio::time::sleep(Duration::from_millis(STORE_SYNC_BATCH_MS)).await;
            let batch = std::mem::take(&mut *lock(&self.unsynced));
            if batch.is_empty() {
                continue;
            }
            let started = self.now_ms();
            let remote = self.remote.clone();
            let synced = tokio::task::spawn_blocking(move || remote.inner.sync_unsynced())
                .await
                .unwrap_or(Err(StoreError::ShutDown));
            match synced {
                Ok(()) => self.uploaded(&batch).await,
                Err(e) => {
                    for id in batch {
                        self.upload_failed(id, &e, started);
                    }
                }
            }
        }
    }

    /// An upload attempt that started at `started_ms` failed.
    fn upload_failed(&self, id: BlockId, error: &StoreError, started_ms: u64) {
        let now = self.now_ms();
        let attempts = lock(&self.state).attempts(id);
        let delay = Backoff::new(
            Duration::from_millis(UPLOAD_RETRY_BASE_MS),
            Duration::from_millis(UPLOAD_RETRY_MAX_MS),
            SplitMix64::from_time(),
        )
        .delay(attempts);
        let (entries, bytes) = {
            let mut state = lock(&self.state);
            state.upload_failed(id, now + delay.as_millis() as u64);
            let backlog = state.backlog(now);
            (backlog.entries, backlog.bytes)
        };
        if let Some(failures) = lock(&self.health).on_failure(now, started_ms, error.to_string()) {
            tracing::warn!(
                store = %self.remote.name(), backlog_entries = entries, backlog_bytes = bytes,
                failures, error = %error,
                "uploads to the store are failing: blocks stay in the write-back journal and are retried"
            );
        }
    }

    /// Deletes garbage versions whose grace period is over.
    async fn gc_loop(self: Arc<Self>) {
        let tick = (self.config.gc_grace / 4).clamp(
            Duration::from_millis(10),
            Duration::from_millis(GC_TICK_MAX_MS),
        );
        loop {
            tokio::time::sleep(tick).await;
            let due = lock(&self.gc).queue.due(wall_ms());
            if due.is_empty() {
                continue;
            }
            let mut done = Vec::with_capacity(due.len());
            for id in due {
                // Re-checked right before anything is removed: a version
                // the namespace refers to must never go, journal entry or
                // store object.
                if self.in_use.0.get().is_some_and(|in_use| in_use(id)) {
                    tracing::error!(
                        store = %self.remote.name(), block = %id,
                        "a block version queued for deletion is referenced by the namespace: kept, and dropped from the GC queue"
                    );
                    done.push(id);
                    continue;
                }
                let removal = lock(&self.state).remove_for_gc(id);
                match removal {
                    GcRemoval::Busy => continue,
                    GcRemoval::Removed { freed } => {
                        self.remove_segments(freed.into_iter().collect()).await;
                        self.progress.send_modify(|n| *n += 1);
                    }
                    GcRemoval::Absent => {}
                }
                match self.remote.inner.delete_block(id).await {
                    Ok(()) => done.push(id),
                    Err(e) => {
                        tracing::debug!(store = %self.remote.name(), block = %id, error = %e, "GC delete failed; retried later");
                        break;
                    }
                }
            }
            if done.is_empty() {
                continue;
            }
            let shared = Arc::clone(&self);
            let recorded = tokio::task::spawn_blocking(move || shared.record_gc_done(&done)).await;
            if let Ok(Err(e)) = recorded {
                tracing::warn!(error = %e, "cannot record finished GC deletions; they are repeated after a restart");
            }
        }
    }

    fn record_gc_done(&self, done: &[BlockId]) -> Result<(), StoreError> {
        let dir = &self.config.journal_dir;
        let path = dir.join(GC_QUEUE_FILE);
        let mut gc = lock(&self.gc);
        let records = gc.queue.done(done);
        gc.file
            .write_all(&records)
            .and_then(|()| gc.file.sync_data())
            .map_err(|e| StoreError::io("append to", &path, e))?;
        if gc.queue.needs_compaction() {
            let compacted = gc.queue.compact();
            write_atomically(dir, GC_QUEUE_FILE, &compacted)?;
            gc.file = open_append(&path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names() {
        let id = BlockId::new(12, 3, 99);
        assert_eq!(entry_name(id), "12-3-99.blk");
        assert_eq!(parse_entry_name("12-3-99.blk"), Some(id));
        for bad in [
            "12-3.blk",
            "12-3-99-1.blk",
            "a-3-99.blk",
            "12-3-99",
            ".12-3-99.blk.0.tmp",
            "gc-queue",
        ] {
            assert_eq!(parse_entry_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn write_modes() {
        assert_eq!("back".parse::<WriteMode>().ok(), Some(WriteMode::Back));
        assert_eq!(
            "Through".parse::<WriteMode>().ok(),
            Some(WriteMode::Through)
        );
        let err = "later".parse::<WriteMode>().expect_err("bad");
        assert!(err.to_string().contains("`back`"), "{err}");
    }
}
