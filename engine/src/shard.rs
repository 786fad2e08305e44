//! One shard: the owner of a slice of the block space on one core.
//!
//! As the *owner* of a block, a shard serves it from its tier chain
//! (memory -> NVMe -> source), fetches each missing block once however many
//! readers wait for it, admits and evicts, and prefetches ahead of streams.
//! As the *front* of a request (the shard it entered on), it detects
//! sequential streams, sends prefetch hints to the owners of the next
//! blocks, and forwards the request to the owner when that is another shard.
//! All state is owned by the shard's executor: `RefCell`, never a lock.

use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use futures::future::{LocalBoxFuture, Shared};
use futures::FutureExt;
use tracing::{debug, warn};

use crate::admission::Admission;
use crate::block::{BlockId, BlockMap, BlockSize, ShardId};
use crate::disk_tier::{DiskRead, DiskTier, WriteOutcome};
use crate::error::{Error, Result};
use crate::eviction::AccessKind;
use crate::hit_view::HitView;
use crate::memory_tier::MemoryTier;
use crate::mesh::{Op, Peers, Reply};
use crate::prefetch::{PrefetchQueue, StreamId, StreamTable};
use crate::source::{BlockSource, SourceError, VersionResolver};
use crate::stats::ShardStats;
use crate::verify::VerifyReport;

/// Prefetch fetches one shard runs at once.
pub const PREFETCH_INFLIGHT_MAX: usize = 16;
/// NVMe writes (demotions, fills) one shard keeps in flight; beyond it a
/// clean block is simply not written down.
pub const DISK_WRITES_INFLIGHT_MAX: usize = 64;
/// Background promotions (NVMe -> memory) in flight per shard.
pub const PROMOTIONS_INFLIGHT_MAX: usize = 8;
/// Accesses (per the frequency sketch) before an NVMe hit is promoted.
pub const PROMOTE_FREQUENCY_MIN: u8 = 2;
/// A random read of at most this fraction of a block fetches only its
/// bytes when the source can (see [`RANGE_THEN_BLOCK_ACCESSES`]).
pub const RANGE_READ_FRACTION: u32 = 8;
/// A block read in small random pieces is fetched whole (in the background)
/// from this many recent accesses on (the admission sketch's estimate): a
/// few small reads of a block seldom mean more, and fetching whole blocks
/// behind them cost the neighbor tier's 4 KiB reads a 5× higher p99 when
/// the reads spread over more blocks than the cache holds (from 2
/// accesses on as well: perf/RESULTS.md, session 11).
pub const RANGE_THEN_BLOCK_ACCESSES: u8 = 4;
/// Prefetched-but-unread blocks remembered for the prefetch-hit counter.
const PREFETCHED_TRACKED_MAX: usize = 4096;

/// What the front's stream detector says about one read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadHint {
    /// How the eviction policy should treat the block.
    pub kind: AccessKind,
    /// Whether admission counts this access: a further small read inside
    /// the block a stream just read does not make the block any hotter.
    pub counts: bool,
    /// Whether another node asked for the block: a miss then goes to the
    /// source's own tiers below ([`BlockSource::fetch_for_peer`]), never
    /// back to a neighbor.
    pub for_peer: bool,
}

impl ReadHint {
    /// A random access that counts (callers without a stream detector).
    pub const RANDOM: Self = Self {
        kind: AccessKind::Random,
        counts: true,
        for_peer: false,
    };
    /// A read another node asked for (it runs its own stream detection).
    pub const PEER: Self = Self {
        kind: AccessKind::Random,
        counts: true,
        for_peer: true,
    };
}

/// Outcome of a single-flight fetch, shareable between waiters.
#[derive(Clone, Debug)]
enum FetchError {
    NotFound,
    Failed(String),
    ShutDown,
}

/// A fetched block, shared by its waiters. `Rc<Vec<u8>>` rather than
/// `Rc<[u8]>`: wrapping the source's buffer costs no copy of the block.
type FetchedBlock = Rc<Vec<u8>>;
type FetchResult = std::result::Result<FetchedBlock, FetchError>;
type SharedFetch = Shared<LocalBoxFuture<'static, FetchResult>>;

/// A fetch in flight is keyed by its block and by whether it may wait on
/// another node ([`BlockSource::forwards`]). A read for a peer never joins
/// such a fetch: two nodes that each think the other is a block's home
/// would otherwise wait on each other until a timeout.
type FlightKey = (BlockId, bool);

/// Everything one shard owns.
pub struct Shard {
    pub(crate) id: ShardId,
    pub(crate) shards: usize,
    pub(crate) block_size: BlockSize,
    pub(crate) memory: RefCell<MemoryTier>,
    /// Other threads' read-only view of `memory`.
    view: Arc<HitView>,
    pub(crate) disk: Option<DiskTier>,
    pub(crate) source: Rc<dyn BlockSource>,
    resolver: Rc<dyn VersionResolver>,
    admission: RefCell<Admission>,
    inflight: RefCell<BlockMap<FlightKey, SharedFetch>>,
    streams: RefCell<StreamTable>,
    streams_prefetching: RefCell<HashSet<StreamId>>,
    prefetch_queue: RefCell<PrefetchQueue>,
    prefetch_running: Cell<usize>,
    prefetched: RefCell<HashSet<BlockId, crate::block::BlockHashBuilder>>,
    /// Prefetched blocks that admission kept out of both tiers, held until
    /// their stream reads them: a readahead buffer outside the cache, so a
    /// scan neither pollutes the cache nor fetches its blocks twice. Holds
    /// at most one window plus the fetches in flight.
    staged: RefCell<VecDeque<(BlockId, FetchedBlock)>>,
    staged_max: usize,
    disk_writes_running: Cell<usize>,
    promotions_running: Cell<usize>,
    /// Request and background tasks alive; shutdown waits for zero.
    tasks_running: Cell<usize>,
    closing: Cell<bool>,
    stats: RefCell<ShardStats>,
    started: Instant,
    pub(crate) peers: Rc<Peers>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Counts a task alive for as long as it is held.
struct TaskGuard(Rc<Shard>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.tasks_running.set(self.0.tasks_running.get() - 1);
    }
}

/// The parts a shard is built from.
#[allow(
    missing_debug_implementations,
    reason = "holds trait objects without Debug"
)]
pub struct ShardParts {
    /// Shard index.
    pub id: ShardId,
    /// Shards in the engine.
    pub shards: usize,
    /// Block size.
    pub block_size: BlockSize,
    /// Memory tier.
    pub memory: MemoryTier,
    /// NVMe tier.
    pub disk: Option<DiskTier>,
    /// Source below the cache.
    pub source: Rc<dyn BlockSource>,
    /// Current block versions, for prefetch.
    pub resolver: Rc<dyn VersionResolver>,
    /// Stream detection.
    pub streams: StreamTable,
    /// Prefetch queue.
    pub prefetch_queue: PrefetchQueue,
    /// Prefetched blocks held outside the tiers (see `Shard::staged`).
    pub staged_max: usize,
    /// Mesh end.
    pub peers: Rc<Peers>,
}

impl Shard {
    /// Assembles a shard.
    pub fn new(parts: ShardParts) -> Rc<Self> {
        let blocks = parts.memory.capacity() as usize
            + parts.disk.as_ref().map_or(0, |d| d.capacity() as usize);
        let view = parts.memory.view();
        Rc::new(Self {
            id: parts.id,
            view,
            shards: parts.shards,
            block_size: parts.block_size,
            memory: RefCell::new(parts.memory),
            disk: parts.disk,
            source: parts.source,
            resolver: parts.resolver,
            admission: RefCell::new(Admission::new(blocks.max(1))),
            inflight: RefCell::new(BlockMap::default()),
            streams: RefCell::new(parts.streams),
            streams_prefetching: RefCell::new(HashSet::new()),
            prefetch_queue: RefCell::new(parts.prefetch_queue),
            prefetch_running: Cell::new(0),
            prefetched: RefCell::new(HashSet::default()),
            staged: RefCell::new(VecDeque::with_capacity(parts.staged_max)),
            staged_max: parts.staged_max,
            disk_writes_running: Cell::new(0),
            promotions_running: Cell::new(0),
            tasks_running: Cell::new(0),
            closing: Cell::new(false),
            stats: RefCell::new(ShardStats::default()),
            started: Instant::now(),
            peers: parts.peers,
        })
    }

    /// Runs `fut` as a task the shutdown waits for.
    pub(crate) fn spawn_tracked(
        self: &Rc<Self>,
        fut: impl std::future::Future<Output = ()> + 'static,
    ) {
        self.tasks_running.set(self.tasks_running.get() + 1);
        let guard = TaskGuard(Rc::clone(self));
        glommio::spawn_local(async move {
            let _guard = guard;
            fut.await;
        })
        .detach();
    }

    /// Tasks alive (requests and background work).
    pub(crate) fn tasks_running(&self) -> usize {
        self.tasks_running.get()
    }

    /// Stops taking new work; queued prefetches are dropped.
    pub(crate) fn begin_close(&self) {
        self.closing.set(true);
        let mut queue = self.prefetch_queue.borrow_mut();
        while queue.pop().is_some() {}
    }

    /// Whether the shard stopped taking new work.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// Flushes the NVMe tier.
    pub(crate) async fn sync(&self) -> Result<()> {
        match &self.disk {
            Some(disk) => disk.sync().await,
            None => Ok(()),
        }
    }

    /// How many blocks of each file this shard's tiers hold (a block in
    /// both tiers counts once). Walks the whole index: for reports every
    /// few seconds, not for the data path.
    pub fn blocks_per_file(&self) -> std::collections::HashMap<crate::block::Ino, u64> {
        let in_memory: HashSet<BlockId> = self.memory.borrow().ids().into_iter().collect();
        let mut per_file = std::collections::HashMap::new();
        let on_disk = self.disk.as_ref().map(DiskTier::ids).unwrap_or_default();
        for id in in_memory
            .iter()
            .copied()
            .chain(on_disk.into_iter().filter(|id| !in_memory.contains(id)))
        {
            *per_file.entry(id.ino).or_insert(0) += 1;
        }
        per_file
    }

    /// A copy of this shard's counters.
    pub fn stats(&self) -> ShardStats {
        let mut stats = *self.stats.borrow();
        let view = self.view.stats();
        stats.reads += view.hits;
        stats.memory_hits += view.hits;
        stats.view_hits += view.hits;
        stats.read_bytes += view.bytes;
        stats.memory_blocks_held = self.memory.borrow().len() as u64;
        stats.disk_blocks_held = self.disk.as_ref().map_or(0, |d| d.len() as u64);
        stats
    }

    /// The view other threads read this shard's memory hits through.
    pub(crate) fn memory_view(&self) -> Arc<HitView> {
        Arc::clone(&self.view)
    }

    fn count(&self, f: impl FnOnce(&mut ShardStats)) {
        f(&mut self.stats.borrow_mut());
    }

    fn now_tick_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    // ----- front side -------------------------------------------------

    /// Reads through this shard as the front: stream detection, prefetch
    /// hints, then the owner (this shard or a peer).
    pub async fn read(
        self: &Rc<Self>,
        id: BlockId,
        offset: u32,
        len: u32,
        buf: Vec<u8>,
    ) -> Result<(Vec<u8>, usize)> {
        let hint = self.observe(id);
        self.read_at_owner(id, offset, len, buf, hint).await
    }

    /// Reads `len` bytes at `offset` of a block for another node: no
    /// stream detection (the requester runs its own), straight to the
    /// owner, and a miss fetches the whole block from the source's tiers
    /// below (never from a neighbor) and keeps it per admission.
    pub async fn read_for_peer(
        self: &Rc<Self>,
        id: BlockId,
        offset: u32,
        len: u32,
        buf: Vec<u8>,
    ) -> Result<(Vec<u8>, usize)> {
        self.read_at_owner(id, offset, len, buf, ReadHint::PEER)
            .await
    }

    /// Reads at the block's owner: this shard, or a peer over the mesh.
    async fn read_at_owner(
        self: &Rc<Self>,
        id: BlockId,
        offset: u32,
        len: u32,
        buf: Vec<u8>,
        hint: ReadHint,
    ) -> Result<(Vec<u8>, usize)> {
        let owner = id.key().owner(self.shards);
        if owner == self.id {
            let mut buf = buf;
            let n = self.read_owned(id, offset, len, &mut buf, hint).await?;
            return Ok((buf, n));
        }
        self.count(|s| s.forwarded += 1);
        let op = Op::Read {
            id,
            offset,
            len,
            buf,
            hint,
        };
        match self.peers.call(owner, op).await? {
            Reply::Read { buf, len } => Ok((buf, len)),
            other => Err(Error::InvalidRequest(format!(
                "unexpected reply to a read: {other:?}"
            ))),
        }
    }

    /// Inserts a written block through this shard as the front.
    pub async fn insert(self: &Rc<Self>, id: BlockId, data: Vec<u8>) -> Result<Vec<u8>> {
        let owner = id.key().owner(self.shards);
        if owner == self.id {
            self.insert_owned(id, &data)?;
            return Ok(data);
        }
        self.count(|s| s.forwarded += 1);
        match self.peers.call(owner, Op::Insert { id, data }).await? {
            Reply::Inserted { buf } => Ok(buf),
            other => Err(Error::InvalidRequest(format!(
                "unexpected reply to an insert: {other:?}"
            ))),
        }
    }

    /// Counters of every shard, this one first asked last.
    pub async fn all_stats(self: &Rc<Self>) -> Result<Vec<ShardStats>> {
        let mut all = Vec::with_capacity(self.shards);
        for peer in 0..self.shards {
            let peer = ShardId(peer as u16);
            if peer == self.id {
                all.push(self.stats());
                continue;
            }
            match self.peers.call(peer, Op::Stats).await? {
                Reply::Stats(s) => all.push(*s),
                other => {
                    return Err(Error::InvalidRequest(format!(
                        "unexpected reply to stats: {other:?}"
                    )))
                }
            }
        }
        Ok(all)
    }

    /// Checks every shard's cached blocks against the source (see
    /// [`crate::verify`]); one report per shard, in shard order.
    pub async fn verify_all(self: &Rc<Self>) -> Result<Vec<VerifyReport>> {
        let mut all = Vec::with_capacity(self.shards);
        for peer in 0..self.shards {
            let peer = ShardId(peer as u16);
            if peer == self.id {
                all.push(self.verify_cached().await);
                continue;
            }
            match self.peers.call(peer, Op::Verify).await? {
                Reply::Verified(report) => all.push(report),
                other => {
                    return Err(Error::InvalidRequest(format!(
                        "unexpected reply to a cache check: {other:?}"
                    )))
                }
            }
        }
        Ok(all)
    }

    /// Records an access in the stream table and sends prefetch hints.
    pub(crate) fn observe(self: &Rc<Self>, id: BlockId) -> ReadHint {
        let access =
            self.streams
                .borrow_mut()
                .on_access(id.ino.0, id.index, u64::MAX, self.now_tick_ms());
        if let Some(stopped) = access.cancelled {
            self.stop_stream(self.global_stream(stopped));
        }
        if !access.prefetch.is_empty() {
            let stream = self.global_stream(access.stream);
            self.streams_prefetching.borrow_mut().insert(stream);
            for index in access.prefetch {
                let Some(version) = self.resolver.current_version(id.ino, index) else {
                    break;
                };
                let next = BlockId {
                    ino: id.ino,
                    index,
                    version,
                };
                let owner = next.key().owner(self.shards);
                if owner == self.id {
                    self.enqueue_prefetch(stream, next);
                } else if !self
                    .peers
                    .try_send(owner, Op::Prefetch { stream, id: next })
                {
                    self.count(|s| s.prefetch_dropped += 1);
                }
            }
        }
        ReadHint {
            kind: access.kind,
            counts: !access.repeat,
            for_peer: false,
        }
    }

    /// Stream ids are per front shard; the shard index in the top bits makes
    /// them unique in every owner's queue.
    fn global_stream(&self, local: StreamId) -> StreamId {
        StreamId((u64::from(self.id.0) << 48) | (local.0 & ((1 << 48) - 1)))
    }

    /// Tells every shard to drop the queued prefetches of a stream that
    /// stopped (only streams that issued any).
    fn stop_stream(self: &Rc<Self>, stream: StreamId) {
        if !self.streams_prefetching.borrow_mut().remove(&stream) {
            return;
        }
        for peer in 0..self.shards {
            let peer = ShardId(peer as u16);
            if peer == self.id {
                self.cancel_stream(stream);
            } else {
                let shard = Rc::clone(self);
                self.spawn_tracked(async move {
                    shard.peers.send(peer, Op::Cancel { stream }).await;
                });
            }
        }
    }

    /// Drops idle streams; called periodically.
    pub(crate) fn expire_streams(self: &Rc<Self>) {
        let expired = self.streams.borrow_mut().expire(self.now_tick_ms());
        for stream in expired {
            self.stop_stream(self.global_stream(stream));
        }
    }

    // ----- owner side -------------------------------------------------

    /// Executes an op received from a peer.
    pub async fn execute(self: &Rc<Self>, op: Op) -> Result<Reply> {
        match op {
            Op::Read {
                id,
                offset,
                len,
                mut buf,
                hint,
            } => {
                let len = self.read_owned(id, offset, len, &mut buf, hint).await?;
                Ok(Reply::Read { buf, len })
            }
            Op::Insert { id, data } => {
                self.insert_owned(id, &data)?;
                Ok(Reply::Inserted { buf: data })
            }
            Op::Prefetch { stream, id } => {
                self.enqueue_prefetch(stream, id);
                Ok(Reply::Done)
            }
            Op::Cancel { stream } => {
                self.cancel_stream(stream);
                Ok(Reply::Done)
            }
            Op::Stats => Ok(Reply::Stats(Box::new(self.stats()))),
            Op::Verify => Ok(Reply::Verified(self.verify_cached().await)),
        }
    }

    fn check_range(&self, id: BlockId, offset: u32, len: u32) -> Result<()> {
        let end = u64::from(offset) + u64::from(len);
        if end > u64::from(self.block_size.bytes()) {
            return Err(Error::InvalidRequest(format!(
                "read of block {id} at offset {offset} length {len} goes past the {}-byte block",
                self.block_size.bytes()
            )));
        }
        if id.key().owner(self.shards) != self.id {
            return Err(Error::InvalidRequest(format!(
                "block {id} does not belong to {}",
                self.id
            )));
        }
        Ok(())
    }

    /// Serves a read of a block this shard owns from the fastest tier.
    pub async fn read_owned(
        self: &Rc<Self>,
        id: BlockId,
        offset: u32,
        len: u32,
        buf: &mut Vec<u8>,
        hint: ReadHint,
    ) -> Result<usize> {
        self.check_range(id, offset, len)?;
        let started = Instant::now();
        let (offset, len) = (offset as usize, len as usize);
        let kind = hint.kind;
        if hint.counts {
            self.admission.borrow_mut().record(id.hash64());
        }
        if !self.prefetched.borrow().is_empty() && self.prefetched.borrow_mut().remove(&id) {
            self.count(|s| s.prefetch_hits += 1);
        }
        {
            let mut memory = self.memory.borrow_mut();
            if let Some(slot) = memory.lookup(id, kind) {
                let n = copy_range(memory.block(slot), offset, len, buf);
                drop(memory);
                self.count(|s| {
                    s.reads += 1;
                    s.memory_hits += 1;
                    s.read_bytes += n as u64;
                    s.latency.memory.record_since(started);
                });
                return Ok(n);
            }
        }
        self.count(|s| s.memory_misses += 1);
        if let Some(n) = self.read_staged(id, offset, len, buf) {
            return Ok(n);
        }
        if let Some(disk) = &self.disk {
            match disk.read(id, offset, len, kind).await {
                Ok(DiskRead::Hit {
                    data,
                    skip,
                    len: n,
                    block_len,
                }) => {
                    buf.clear();
                    buf.extend_from_slice(&data.as_slice()[skip..skip + n]);
                    self.count(|s| {
                        s.reads += 1;
                        s.disk_hits += 1;
                        s.read_bytes += n as u64;
                        s.latency.disk.record_since(started);
                    });
                    let whole = (offset == 0 && n == block_len as usize).then_some(&buf[..]);
                    self.maybe_promote(id, kind, whole);
                    return Ok(n);
                }
                Ok(DiskRead::Corrupt) => self.count(|s| s.checksum_failures += 1),
                Ok(DiskRead::Miss) => {}
                Err(err) => {
                    warn!(shard = %self.id, block = %id, %err, "NVMe read failed; reading from the source");
                }
            }
            self.count(|s| s.disk_misses += 1);
        }
        let n = if let Some(n) = self.read_range(id, offset, len, buf, hint).await? {
            n
        } else {
            let data = self.fetch(id, kind, hint.for_peer).await?;
            let n = copy_range(&data, offset, len, buf);
            self.count(|s| {
                s.reads += 1;
                s.read_bytes += n as u64;
            });
            n
        };
        self.count(|s| s.latency.source.record_since(started));
        Ok(n)
    }

    /// A small random read: only its bytes, when the source serves ranges
    /// (`None`: fetch the whole block). It does not wait for a fetch of
    /// the whole block in flight (a block's transfer costs more than a few
    /// KiB's). When no such fetch is in flight, the block was read at
    /// least [`RANGE_THEN_BLOCK_ACCESSES`] times lately and a tier would
    /// keep it, the whole block is then fetched in the background (the
    /// reader does not wait for it); otherwise only the bytes asked for
    /// move.
    async fn read_range(
        self: &Rc<Self>,
        id: BlockId,
        offset: usize,
        len: usize,
        buf: &mut Vec<u8>,
        hint: ReadHint,
    ) -> Result<Option<usize>> {
        let small = len <= (self.block_size.bytes() / RANGE_READ_FRACTION) as usize;
        if hint.for_peer || hint.kind != AccessKind::Random || !small {
            return Ok(None);
        }
        let keep = !self.is_fetching(id)
            && self.admission.borrow().frequency(id.hash64()) >= RANGE_THEN_BLOCK_ACCESSES
            && self.would_keep(id);
        // Offsets and lengths were checked against the block size.
        let Some(fetch) = self.source.fetch_range(id, offset as u32, len as u32) else {
            return Ok(None);
        };
        match fetch.await {
            Ok(data) => {
                if keep && !self.is_fetching(id) {
                    let shard = Rc::clone(self);
                    self.spawn_tracked(async move {
                        let _ = shard.fetch(id, AccessKind::Random, false).await;
                    });
                }
                let n = data.len().min(len);
                buf.clear();
                buf.extend_from_slice(&data[..n]);
                self.count(|s| {
                    s.reads += 1;
                    s.read_bytes += n as u64;
                    s.source_range_fetches += 1;
                    s.source_bytes += n as u64;
                });
                Ok(Some(n))
            }
            Err(SourceError::NotFound) => Err(Error::NotFound(id)),
            Err(SourceError::Failed(message)) => {
                self.count(|s| s.source_errors += 1);
                Err(Error::Source { id, message })
            }
        }
    }

    /// Whether a fetch of `id` is in flight (of either kind).
    fn is_fetching(&self, id: BlockId) -> bool {
        let inflight = self.inflight.borrow();
        inflight.contains_key(&(id, false)) || inflight.contains_key(&(id, true))
    }

    /// Whether a fetched block would be kept: a free memory slot, a victim
    /// admission lets it replace, or room on NVMe.
    fn would_keep(self: &Rc<Self>, id: BlockId) -> bool {
        {
            let mut memory = self.memory.borrow_mut();
            if memory.capacity() > 0 {
                if memory.has_free_slot() {
                    return true;
                }
                let victim =
                    memory.victim(&mut |read| self.admission.borrow_mut().record(read.hash64()));
                if victim
                    .is_some_and(|v| self.admission.borrow().admit(id.hash64(), Some(v.hash64())))
                {
                    return true;
                }
            }
        }
        self.disk.is_some() && self.disk_admits(id)
    }

    /// Caches a block a client wrote: always admitted (it is the newest data).
    pub fn insert_owned(self: &Rc<Self>, id: BlockId, data: &[u8]) -> Result<()> {
        if id.key().owner(self.shards) != self.id || data.len() > self.block_size.bytes_usize() {
            return Err(Error::InvalidRequest(format!(
                "insert of block {id} with {} bytes: blocks hold at most {} bytes and belong to shard {}",
                data.len(),
                self.block_size.bytes(),
                id.key().owner(self.shards)
            )));
        }
        self.count(|s| s.inserts += 1);
        self.place(id, data, AccessKind::Random, true);
        Ok(())
    }

    /// Fetches a block from the source once, however many readers wait.
    /// A fetch for a peer (`for_peer`) joins only a fetch that does not
    /// wait on another node, and asks the source's tiers below.
    async fn fetch(
        self: &Rc<Self>,
        id: BlockId,
        kind: AccessKind,
        for_peer: bool,
    ) -> Result<FetchedBlock> {
        let existing = {
            let inflight = self.inflight.borrow();
            let below = inflight.get(&(id, false));
            if for_peer {
                below.cloned()
            } else {
                below.or_else(|| inflight.get(&(id, true))).cloned()
            }
        };
        let shared = if let Some(shared) = existing {
            self.count(|s| s.fetch_joins += 1);
            shared
        } else {
            let key = (id, !for_peer && self.source.forwards(id));
            // The fetch runs as its own task so it completes even if every
            // reader gives up; the shared wrapper, polled only by readers
            // after it is in the map, takes it out of the map.
            let owner = Rc::clone(self);
            let task =
                glommio::spawn_local(
                    async move { owner.fetch_and_place(id, kind, for_peer).await },
                )
                .detach();
            let owner = Rc::clone(self);
            let fetch = async move {
                let result = task.await.unwrap_or(Err(FetchError::ShutDown));
                owner.inflight.borrow_mut().remove(&key);
                result
            }
            .boxed_local()
            .shared();
            self.inflight.borrow_mut().insert(key, fetch.clone());
            fetch
        };
        shared.await.map_err(|e| match e {
            FetchError::NotFound => Error::NotFound(id),
            FetchError::Failed(message) => Error::Source { id, message },
            FetchError::ShutDown => Error::ShutDown,
        })
    }

    async fn fetch_and_place(
        self: &Rc<Self>,
        id: BlockId,
        kind: AccessKind,
        for_peer: bool,
    ) -> FetchResult {
        let fetch = if for_peer {
            self.source.fetch_for_peer(id)
        } else {
            self.source.fetch(id)
        };
        let data = match fetch.await {
            Ok(data) => data,
            Err(SourceError::NotFound) => return Err(FetchError::NotFound),
            Err(SourceError::Failed(message)) => {
                self.count(|s| s.source_errors += 1);
                return Err(FetchError::Failed(message));
            }
        };
        if data.len() > self.block_size.bytes_usize() {
            self.count(|s| s.source_errors += 1);
            return Err(FetchError::Failed(format!(
                "the source returned {} bytes for block {id}, more than the {}-byte block size",
                data.len(),
                self.block_size.bytes()
            )));
        }
        self.count(|s| {
            s.source_fetches += 1;
            s.source_bytes += data.len() as u64;
        });
        if !data.is_empty() {
            self.place(id, &data, kind, false);
        }
        Ok(Rc::new(data))
    }

    /// Puts a block in memory, or failing that on NVMe, per admission.
    fn place(self: &Rc<Self>, id: BlockId, data: &[u8], kind: AccessKind, forced: bool) {
        if self.put_memory(id, data, kind, forced) {
            return;
        }
        if self.disk.is_some() && (forced || self.disk_admits(id)) {
            self.write_down(id, data, kind);
        }
    }

    fn disk_admits(&self, id: BlockId) -> bool {
        let Some(disk) = &self.disk else { return false };
        if !disk.is_full() {
            return true;
        }
        let admitted = self
            .admission
            .borrow()
            .admit(id.hash64(), disk.victim().map(BlockId::hash64));
        if !admitted {
            self.count(|s| s.admissions_rejected += 1);
        }
        admitted
    }

    /// Inserts into the memory tier, evicting (and demoting) its victim when
    /// the candidate is admitted. Returns whether the block is in memory.
    fn put_memory(
        self: &Rc<Self>,
        id: BlockId,
        data: &[u8],
        kind: AccessKind,
        forced: bool,
    ) -> bool {
        let mut memory = self.memory.borrow_mut();
        if memory.capacity() == 0 || data.len() > self.block_size.bytes_usize() {
            return false;
        }
        if memory.contains(id) {
            return true;
        }
        if !memory.has_free_slot() {
            // Blocks read through the view since the policy last saw them
            // get a second chance, and their reads count for admission.
            let Some(victim) =
                memory.victim(&mut |read| self.admission.borrow_mut().record(read.hash64()))
            else {
                return false;
            };
            if !forced
                && !self
                    .admission
                    .borrow()
                    .admit(id.hash64(), Some(victim.hash64()))
            {
                self.count(|s| s.admissions_rejected += 1);
                return false;
            }
            if let Some(disk) = &self.disk {
                if !disk.contains(victim) && self.disk_admits(victim) {
                    if let Some(block) = memory.get(victim) {
                        self.count(|s| s.demotions += 1);
                        self.write_down(victim, block, AccessKind::Random);
                    }
                }
            }
            memory.remove(victim);
            self.count(|s| s.memory_evictions += 1);
        }
        memory.insert(id, data, kind)
    }

    /// Writes a block to the NVMe tier in the background.
    fn write_down(self: &Rc<Self>, id: BlockId, data: &[u8], kind: AccessKind) {
        let Some(disk) = &self.disk else { return };
        if self.disk_writes_running.get() >= DISK_WRITES_INFLIGHT_MAX {
            debug!(shard = %self.id, block = %id, "NVMe write queue full; block not written down");
            self.count(|s| s.disk_writes_dropped += 1);
            return;
        }
        let prepared = match disk.prepare(id, data) {
            Ok(p) => p,
            Err(err) => {
                warn!(shard = %self.id, block = %id, %err, "cannot lay out an NVMe write");
                return;
            }
        };
        self.disk_writes_running
            .set(self.disk_writes_running.get() + 1);
        let shard = Rc::clone(self);
        self.spawn_tracked(async move {
            if let Some(disk) = &shard.disk {
                match disk.write(prepared, kind).await {
                    Ok(WriteOutcome::Written { evicted }) => shard.count(|s| {
                        s.disk_writes += 1;
                        s.disk_evictions += u64::from(evicted.is_some());
                    }),
                    Ok(WriteOutcome::Skipped) => {}
                    Err(err) => {
                        warn!(shard = %shard.id, block = %id, %err, "NVMe write failed");
                        shard.count(|s| s.disk_write_errors += 1);
                    }
                }
            }
            shard
                .disk_writes_running
                .set(shard.disk_writes_running.get() - 1);
        });
    }

    /// Copies a hot NVMe block up to memory: from `whole` when the read
    /// already holds the whole block, else by a background read.
    fn maybe_promote(self: &Rc<Self>, id: BlockId, kind: AccessKind, whole: Option<&[u8]>) {
        let hot = {
            let memory = self.memory.borrow();
            memory.capacity() > 0
                && !memory.contains(id)
                && self.admission.borrow().frequency(id.hash64()) >= PROMOTE_FREQUENCY_MIN
        };
        if !hot {
            return;
        }
        if let Some(block) = whole {
            if self.put_memory(id, block, kind, false) {
                self.count(|s| s.promotions += 1);
            }
            return;
        }
        if self.promotions_running.get() >= PROMOTIONS_INFLIGHT_MAX || self.closing.get() {
            return;
        }
        self.promotions_running
            .set(self.promotions_running.get() + 1);
        let shard = Rc::clone(self);
        let block_bytes = self.block_size.bytes_usize();
        self.spawn_tracked(async move {
            if let Some(disk) = &shard.disk {
                if let Ok(DiskRead::Hit {
                    data, skip, len, ..
                }) = disk.read(id, 0, block_bytes, kind).await
                {
                    if len > 0
                        && shard.put_memory(id, &data.as_slice()[skip..skip + len], kind, false)
                    {
                        shard.count(|s| s.promotions += 1);
                    }
                }
            }
            shard
                .promotions_running
                .set(shard.promotions_running.get() - 1);
        });
    }

    // ----- prefetch ---------------------------------------------------

    fn enqueue_prefetch(self: &Rc<Self>, stream: StreamId, id: BlockId) {
        if self.closing.get() {
            return;
        }
        if !self
            .prefetch_queue
            .borrow_mut()
            .push(stream, id.ino.0, id.index, id.version)
        {
            self.count(|s| s.prefetch_dropped += 1);
            return;
        }
        self.pump_prefetch();
    }

    /// Keeps a prefetched block that no tier admitted until it is read.
    fn stage_if_uncached(&self, id: BlockId, data: FetchedBlock) {
        let cached =
            self.memory.borrow().contains(id) || self.disk.as_ref().is_some_and(|d| d.contains(id));
        if cached {
            return;
        }
        let mut staged = self.staged.borrow_mut();
        if staged.len() >= self.staged_max {
            staged.pop_front();
        }
        staged.push_back((id, data));
    }

    /// Serves a read from the staged prefetches (once: a streamed block is
    /// read by its stream and then not needed again).
    fn read_staged(
        &self,
        id: BlockId,
        offset: usize,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Option<usize> {
        let mut staged = self.staged.borrow_mut();
        let at = staged.iter().position(|(staged_id, _)| *staged_id == id)?;
        let data = &staged[at].1;
        let n = copy_range(data, offset, len, buf);
        // Small reads inside the block (e.g. 128 KiB kernel reads) come in
        // order; the one reaching the block's end releases it.
        if offset + len >= data.len() {
            staged.remove(at);
        }
        drop(staged);
        self.count(|s| {
            s.reads += 1;
            s.read_bytes += n as u64;
        });
        Some(n)
    }

    fn cancel_stream(&self, stream: StreamId) {
        let n = self.prefetch_queue.borrow_mut().cancel(stream);
        self.count(|s| s.prefetch_cancelled += n as u64);
    }

    /// Starts queued prefetches up to the in-flight bound.
    fn pump_prefetch(self: &Rc<Self>) {
        while self.prefetch_running.get() < PREFETCH_INFLIGHT_MAX {
            let Some((_, ino, index, version)) = self.prefetch_queue.borrow_mut().pop() else {
                break;
            };
            let id = BlockId::new(ino, index, version);
            let cached = self.memory.borrow().contains(id)
                || self.disk.as_ref().is_some_and(|d| d.contains(id))
                || self.is_fetching(id);
            if cached {
                continue;
            }
            self.prefetch_running.set(self.prefetch_running.get() + 1);
            self.count(|s| s.prefetch_issued += 1);
            let shard = Rc::clone(self);
            self.spawn_tracked(async move {
                if let Ok(data) = shard.fetch(id, AccessKind::Sequential, false).await {
                    let mut prefetched = shard.prefetched.borrow_mut();
                    if prefetched.len() >= PREFETCHED_TRACKED_MAX {
                        prefetched.clear();
                    }
                    prefetched.insert(id);
                    drop(prefetched);
                    shard.stage_if_uncached(id, data);
                }
                shard.prefetch_running.set(shard.prefetch_running.get() - 1);
                shard.pump_prefetch();
            });
        }
    }
}

/// Copies `len` bytes at `offset` of a block into `buf` (fewer at the
/// block's end); returns the count. Reuses `buf`'s capacity.
fn copy_range(block: &[u8], offset: usize, len: usize, buf: &mut Vec<u8>) -> usize {
    let start = offset.min(block.len());
    let end = (offset + len).min(block.len());
    buf.clear();
    buf.extend_from_slice(&block[start..end]);
    end - start
}

#[cfg(test)]
mod tests {
    use super::copy_range;

    #[test]
    fn copy_range_clips_at_block_end() {
        let block: Vec<u8> = (0..100).collect();
        let mut buf = Vec::with_capacity(64);
        assert_eq!(copy_range(&block, 10, 5, &mut buf), 5);
        assert_eq!(buf, vec![10, 11, 12, 13, 14]);
        assert_eq!(copy_range(&block, 98, 10, &mut buf), 2);
        assert_eq!(copy_range(&block, 200, 10, &mut buf), 0);
        assert!(buf.is_empty());
    }
}
