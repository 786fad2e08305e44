//! The write-back journal's driver: entry files on the cache disk, the
//! uploaders and the garbage collector on the control plane.
//!
//! An entry is one file `<ino>-<index>-<version>.blk` holding the encoded
//! block object (header with CRC32C + payload), so it is uploaded as is. A
//! commit writes `.<name>.<n>.tmp`, fdatasyncs it, renames it to its name,
//! and fsyncs the directory once for the whole batch before it returns. At
//! open, tmp files (commits that never finished) are deleted, entries are
//! verified and queued for upload, and a corrupt entry is moved to
//! `corrupt/` and never uploaded. The bookkeeping is [`JournalState`]; the
//! GC queue is [`GcQueue`] in the file `gc-queue`.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{watch, Notify};

use super::backoff::{Backoff, SplitMix64};
use super::gc::GcQueue;
use super::journal::{Backlog, GcRemoval, JournalState, UploadHealth};
use super::object::{self, ObjectKind, OBJECT_HEADER_BYTES};
use super::remote::RemoteStore;
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
/// Threads one commit writes its journal entries from (each entry is a
/// write + fdatasync + rename of its own file).
const JOURNAL_WRITERS_MAX: usize = 4;
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
    tmp_counter: AtomicU64,
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
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::io("open", &path, e))?;
    // SAFETY: flock on a descriptor this function owns; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(StoreError::Config(format!(
                "the write-back journal {} is in use by another datenlord process: stop it, or give this one another journal directory",
                dir.display()
            )));
        }
        return Err(StoreError::io("lock", &path, e));
    }
    Ok(file)
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

/// Scans the journal directory at open: deletes tmp files, verifies
/// entries, moves corrupt ones aside. Returns the good entries and sizes.
fn recover_entries(dir: &Path, store: &str) -> Result<Vec<(BlockId, u64)>, StoreError> {
    let corrupt_dir = dir.join(CORRUPT_DIR);
    std::fs::create_dir_all(&corrupt_dir).map_err(|e| StoreError::io("create", &corrupt_dir, e))?;
    let listing = std::fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))?;
    let mut good = Vec::new();
    for dirent in listing {
        let dirent = dirent.map_err(|e| StoreError::io("list", dir, e))?;
        let name = dirent.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = dirent.path();
        if name.ends_with(TMP_SUFFIX) {
            // A commit that never reached its rename: it never returned.
            std::fs::remove_file(&path).map_err(|e| StoreError::io("remove", &path, e))?;
            continue;
        }
        let Some(id) = parse_entry_name(name) else {
            continue;
        };
        let raw = std::fs::read(&path).map_err(|e| StoreError::io("read", &path, e))?;
        match object::decode(ObjectKind::Block(id), &raw) {
            Ok(_) => good.push((id, raw.len() as u64)),
            Err(reason) => {
                let aside = corrupt_dir.join(name);
                tracing::error!(
                    store = %store, entry = %path.display(), block = %id, %reason,
                    moved_to = %aside.display(),
                    "corrupt write-back journal entry: moved aside, not uploaded"
                );
                std::fs::rename(&path, &aside).map_err(|e| StoreError::io("rename", &path, e))?;
            }
        }
    }
    sync_dir(dir)?;
    Ok(good)
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
        let dir = &config.journal_dir;
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io("create", dir, e))?;
        let dir_lock = lock_journal(dir)?;
        check_journal_store(dir, remote.name())?;
        let mut state = JournalState::new(config.capacity_bytes);
        let recovered = recover_entries(dir, remote.name())?;
        if !recovered.is_empty() {
            tracing::info!(
                store = %remote.name(), journal = %dir.display(), entries = recovered.len(),
                "write-back journal holds blocks not yet uploaded: uploading them"
            );
        }
        for (id, bytes) in recovered {
            state.recover(id, bytes, 0);
        }
        let gc = open_gc_queue(dir)?;
        let shared = Arc::new(Shared {
            remote,
            epoch: Instant::now(),
            state: Mutex::new(state),
            health: Mutex::new(UploadHealth::default()),
            wake: Notify::new(),
            progress: watch::channel(0).0,
            gc: Mutex::new(gc),
            tmp_counter: AtomicU64::new(0),
            config,
        });
        let handle = shared.remote.control().handle().clone();
        let uploads = handle.spawn(Arc::clone(&shared).upload_loop());
        let collector = handle.spawn(Arc::clone(&shared).gc_loop());
        let owner = Arc::new(Owner {
            tasks: Mutex::new(vec![uploads.abort_handle(), collector.abort_handle()]),
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
    /// `open`; call [`WriteBack::drain`] first for a clean unmount.
    pub fn shutdown(self) {
        self.owner.stop();
    }
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn entry_path(&self, id: BlockId) -> PathBuf {
        self.config.journal_dir.join(entry_name(id))
    }

    async fn commit(self: Arc<Self>, blocks: Vec<(BlockId, Vec<u8>)>) -> Result<(), StoreError> {
        if blocks.is_empty() {
            return Ok(());
        }
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
        if !to_write.is_empty() {
            let mut wanted: HashSet<BlockId> = to_write.iter().copied().collect();
            let work: Vec<(BlockId, Vec<u8>)> = blocks
                .into_iter()
                .filter(|(id, _)| wanted.remove(id))
                .collect();
            let writer = Arc::clone(&self);
            let written = tokio::task::spawn_blocking(move || writer.write_entries(&work))
                .await
                .unwrap_or(Err(StoreError::ShutDown));
            if let Err(e) = written {
                let dropped = lock(&self.state).abort(&to_write);
                // Files no commit made durable: a leftover would be uploaded
                // at the next open, a version nobody refers to.
                for id in dropped {
                    let _ = std::fs::remove_file(self.entry_path(id));
                }
                return Err(e);
            }
            lock(&self.state).mark_durable(&to_write, self.now_ms());
            self.wake.notify_one();
        }
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

    /// Writes entry files durably: each file fdatasynced and renamed, the
    /// directory fsynced once.
    fn write_entries(&self, work: &[(BlockId, Vec<u8>)]) -> Result<(), StoreError> {
        // Entries are independent files: writing them from a few threads
        // lets the device and the file system's journal batch the
        // fdatasyncs instead of waiting for each in turn.
        let writers = work.len().clamp(1, JOURNAL_WRITERS_MAX);
        if writers == 1 {
            self.write_chunk(work)?;
            return sync_dir(&self.config.journal_dir);
        }
        let per_writer = work.len().div_ceil(writers);
        let results: Vec<Result<(), StoreError>> = std::thread::scope(|scope| {
            let running: Vec<_> = work
                .chunks(per_writer)
                .map(|chunk| scope.spawn(move || self.write_chunk(chunk)))
                .collect();
            running
                .into_iter()
                .map(|w| w.join().unwrap_or(Err(StoreError::ShutDown)))
                .collect()
        });
        results.into_iter().collect::<Result<(), StoreError>>()?;
        sync_dir(&self.config.journal_dir)
    }

    /// Writes entries one by one: tmp file, fdatasync, rename.
    fn write_chunk(&self, chunk: &[(BlockId, Vec<u8>)]) -> Result<(), StoreError> {
        let dir = &self.config.journal_dir;
        for (id, data) in chunk {
            let encoded = object::encode(ObjectKind::Block(*id), data);
            let name = entry_name(*id);
            let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
            let tmp = dir.join(format!(".{name}.{n}{TMP_SUFFIX}"));
            let target = dir.join(&name);
            let written = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .and_then(|mut file| {
                    file.write_all(&encoded)?;
                    file.sync_data()
                });
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                return Err(StoreError::io("write journal entry", &tmp, e));
            }
            if let Err(e) = std::fs::rename(&tmp, &target) {
                let _ = std::fs::remove_file(&tmp);
                return Err(StoreError::io("rename journal entry", &tmp, e));
            }
        }
        Ok(())
    }

    fn journal_get(&self, id: BlockId) -> Option<Vec<u8>> {
        if !lock(&self.state).contains(id) {
            return None;
        }
        let path = self.entry_path(id);
        let raw = match std::fs::read(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::error!(entry = %path.display(), error = %e, "cannot read a write-back journal entry");
                return None;
            }
        };
        match object::decode(ObjectKind::Block(id), &raw) {
            Ok(payload) => Some(payload.to_vec()),
            Err(reason) => {
                tracing::error!(entry = %path.display(), block = %id, %reason, "corrupt write-back journal entry: not served");
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
        let path = self.entry_path(id);
        let read_path = path.clone();
        let raw = match tokio::task::spawn_blocking(move || std::fs::read(read_path)).await {
            Ok(Ok(raw)) => raw,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::error!(entry = %path.display(), block = %id, "write-back journal entry vanished before upload");
                lock(&self.state).discard(id);
                self.progress.send_modify(|n| *n += 1);
                return;
            }
            Ok(Err(e)) => {
                let now = self.now_ms();
                self.upload_failed(id, &StoreError::io("read journal entry", &path, e), now);
                return;
            }
            Err(_) => return,
        };
        if let Err(reason) = object::decode(ObjectKind::Block(id), &raw) {
            let aside = self
                .config
                .journal_dir
                .join(CORRUPT_DIR)
                .join(entry_name(id));
            tracing::error!(
                store = %self.remote.name(), entry = %path.display(), block = %id, %reason,
                moved_to = %aside.display(),
                "corrupt write-back journal entry: moved aside, not uploaded"
            );
            let _ = std::fs::rename(&path, &aside);
            lock(&self.state).discard(id);
            self.progress.send_modify(|n| *n += 1);
            return;
        }
        let key = self.remote.inner.block_key(id);
        let started = self.now_ms();
        match self.remote.inner.put_once(&key, Bytes::from(raw)).await {
            Ok(()) => {
                let removed = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
                if let Ok(Err(e)) = removed {
                    // Uploaded anyway: a leftover entry is uploaded again at the next open.
                    tracing::warn!(block = %id, error = %e, "cannot remove an uploaded journal entry");
                }
                lock(&self.state).upload_done(id);
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
            Err(e) => self.upload_failed(id, &e, started),
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
                let removal = lock(&self.state).remove_for_gc(id);
                match removal {
                    GcRemoval::Busy => continue,
                    GcRemoval::Removed => {
                        let path = self.entry_path(id);
                        let _ =
                            tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
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
