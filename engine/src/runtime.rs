//! The thread-per-core runtime: one pinned glommio executor per shard, the
//! channel mesh between them, the handle threads outside use, and a clean
//! shutdown (drain every shard, flush, join).

use std::alloc::{alloc_zeroed, dealloc, Layout as AllocLayout};
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::LocalBoxFuture;
use futures::FutureExt;
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use tracing::{info, warn};

use crate::block::{home_shard, BlockId, BlockSize, Ino, ShardId};
use crate::config::{EngineConfig, Plan};
use crate::disk_tier::DiskTier;
use crate::error::{Error, Result};
use crate::hit_view::HitView;
use crate::layout::{Layout, Superblock, SUPERBLOCK_BYTES};
use crate::memory_tier::MemoryTier;
use crate::mesh::{MeshMsg, Peers, MESH_CHANNEL_DEPTH};
use crate::prefetch::{PrefetchQueue, StreamTable};
use crate::shard::{Shard, ShardParts};
use crate::source::SourceFactory;
use crate::stats::ShardStats;
use crate::verify::VerifyReport;

/// How often idle streams are expired.
const STREAM_EXPIRE_INTERVAL_MS: u64 = 250;
/// Poll interval while draining a shard's tasks at shutdown.
const DRAIN_POLL_INTERVAL_MS: u64 = 1;
/// Requests from other threads queued per shard before senders wait.
pub const EXTERNAL_INBOX_DEPTH: usize = 4096;

/// A request from outside the executors.
#[derive(Debug)]
pub enum Request {
    /// Read `len` bytes at `offset` of a block into `buf` (its capacity is
    /// reused; it comes back in the response).
    Read {
        /// The block.
        id: BlockId,
        /// Byte offset inside the block.
        offset: u32,
        /// Bytes wanted.
        len: u32,
        /// Buffer to fill.
        buf: Vec<u8>,
    },
    /// Cache a block a client wrote.
    Insert {
        /// The block.
        id: BlockId,
        /// Its bytes.
        data: Vec<u8>,
    },
    /// Counters of every shard.
    Stats,
}

/// The answer to a [`Request`].
#[derive(Debug)]
pub enum Response {
    /// The filled buffer and its valid length (short at a block's end).
    Read {
        /// The buffer.
        buf: Vec<u8>,
        /// Valid bytes.
        len: usize,
    },
    /// The inserted buffer, for reuse.
    Inserted {
        /// The buffer.
        buf: Vec<u8>,
    },
    /// Counters, one per shard in shard order.
    Stats(Vec<ShardStats>),
}

type SpawnFn = Box<dyn FnOnce(ShardContext) -> LocalBoxFuture<'static, ()> + Send>;

enum External {
    Call {
        request: Request,
        reply: flume::Sender<Result<Response>>,
    },
    Spawn(SpawnFn),
    /// A read of block `id` from its first byte was served through the
    /// owner's `HitView`: the front records it for stream detection.
    Observe(BlockId),
    /// Every executor is up: join the mesh and start serving.
    Go,
    Drain(flume::Sender<()>),
    Stop(flume::Sender<Result<()>>),
}

/// Submits requests to shards from any thread. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    inboxes: Arc<[flume::Sender<External>]>,
    /// Each shard's memory-tier view, set once the shard is built.
    views: Arc<[OnceLock<Arc<HitView>>]>,
    block_size: BlockSize,
}

impl std::fmt::Debug for External {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Call { request, .. } => write!(f, "Call({request:?})"),
            Self::Spawn(_) => f.write_str("Spawn"),
            Self::Observe(id) => write!(f, "Observe({id})"),
            Self::Go => f.write_str("Go"),
            Self::Drain(_) => f.write_str("Drain"),
            Self::Stop(_) => f.write_str("Stop"),
        }
    }
}

impl EngineHandle {
    /// Shards in the engine.
    pub fn shards(&self) -> usize {
        self.inboxes.len()
    }

    /// Block size of the volume.
    pub fn block_size(&self) -> BlockSize {
        self.block_size
    }

    /// Submits a request to `shard` (the front: it detects streams and
    /// forwards to the block's owner) and waits for the answer.
    pub async fn submit(&self, shard: ShardId, request: Request) -> Result<Response> {
        let inbox = self
            .inboxes
            .get(shard.index())
            .ok_or_else(|| Error::InvalidRequest(format!("{shard} does not exist")))?;
        let (reply, answer) = flume::bounded(1);
        inbox
            .send_async(External::Call { request, reply })
            .await
            .map_err(|_| Error::ShutDown)?;
        answer.recv_async().await.map_err(|_| Error::ShutDown)?
    }

    /// Reads through the inode's home shard.
    pub async fn read(
        &self,
        id: BlockId,
        offset: u32,
        len: u32,
        buf: Vec<u8>,
    ) -> Result<(Vec<u8>, usize)> {
        let front = home_shard(id.ino, self.shards());
        match self
            .submit(
                front,
                Request::Read {
                    id,
                    offset,
                    len,
                    buf,
                },
            )
            .await?
        {
            Response::Read { buf, len } => Ok((buf, len)),
            other => Err(unexpected(&other)),
        }
    }

    /// Serves a read from the owner's memory tier on the calling thread,
    /// without a message to the shard: the bytes copied into `dst` (clipped
    /// at the block's end), or `None` when the block is not in memory (then
    /// call [`EngineHandle::read`]). A read from the block's first byte is
    /// reported to the front shard (no wait) so sequential streams are
    /// still detected and prefetched.
    pub fn read_cached(&self, id: BlockId, offset: u32, dst: &mut [u8]) -> Option<usize> {
        let owner = id.key().owner(self.shards());
        let view = self.views.get(owner.index())?.get()?;
        let n = view.read(id, offset as usize, dst)?;
        if offset == 0 {
            if let Some(front) = self.inboxes.get(home_shard(id.ino, self.shards()).index()) {
                // A full inbox drops the hint: prefetch is best effort.
                let _ = front.try_send(External::Observe(id));
            }
        }
        Some(n)
    }

    /// Caches a written block on its owner.
    pub async fn insert(&self, id: BlockId, data: Vec<u8>) -> Result<Vec<u8>> {
        let owner = id.key().owner(self.shards());
        match self.submit(owner, Request::Insert { id, data }).await? {
            Response::Inserted { buf } => Ok(buf),
            other => Err(unexpected(&other)),
        }
    }

    /// Counters of every shard.
    pub async fn stats(&self) -> Result<Vec<ShardStats>> {
        match self.submit(ShardId(0), Request::Stats).await? {
            Response::Stats(all) => Ok(all),
            other => Err(unexpected(&other)),
        }
    }

    /// How many blocks of each file the engine caches, over all shards
    /// (a block in both tiers counts once).
    pub async fn blocks_per_file(&self) -> Result<std::collections::HashMap<Ino, u64>> {
        let shards = self
            .run_on_all(|ctx| async move { ctx.shard.blocks_per_file() })
            .await?;
        let mut total = std::collections::HashMap::new();
        for shard in shards {
            for (ino, blocks) in shard {
                *total.entry(ino).or_insert(0) += blocks;
            }
        }
        Ok(total)
    }

    /// Checks every shard's cached blocks against the source, dropping
    /// wrong copies ([`crate::verify`]); one report per shard.
    pub async fn verify_cached(&self) -> Result<Vec<VerifyReport>> {
        self.run_on_all(|ctx| async move { ctx.shard.verify_cached().await })
            .await
    }

    /// Runs `f` on every shard's executor and returns its results in shard
    /// order. The futures must finish by themselves: shutdown waits for them.
    pub async fn run_on_all<F, Fut, T>(&self, f: F) -> Result<Vec<T>>
    where
        F: Fn(ShardContext) -> Fut + Send + Sync + Clone + 'static,
        Fut: std::future::Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let mut answers = Vec::with_capacity(self.shards());
        for inbox in self.inboxes.iter() {
            let (tx, rx) = flume::bounded(1);
            let f = f.clone();
            let job: SpawnFn = Box::new(move |ctx| {
                async move {
                    let _ = tx.send(f(ctx).await);
                }
                .boxed_local()
            });
            inbox
                .send_async(External::Spawn(job))
                .await
                .map_err(|_| Error::ShutDown)?;
            answers.push(rx);
        }
        let mut results = Vec::with_capacity(answers.len());
        for rx in answers {
            results.push(rx.recv_async().await.map_err(|_| Error::ShutDown)?);
        }
        Ok(results)
    }
}

fn unexpected(response: &Response) -> Error {
    Error::InvalidRequest(format!("unexpected response {response:?}"))
}

/// Access to the local shard for code running on an executor (the FUSE
/// request loops, benchmarks). Not `Send`: it stays on its core.
#[derive(Clone, Debug)]
pub struct ShardContext {
    shard: Rc<Shard>,
}

impl ShardContext {
    /// This shard.
    pub fn id(&self) -> ShardId {
        self.shard.id
    }

    /// Shards in the engine.
    pub fn shards(&self) -> usize {
        self.shard.shards
    }

    /// Block size.
    pub fn block_size(&self) -> BlockSize {
        self.shard.block_size
    }

    /// Reads through this shard (stream detection here, data from the owner).
    pub async fn read(
        &self,
        id: BlockId,
        offset: u32,
        len: u32,
        buf: Vec<u8>,
    ) -> Result<(Vec<u8>, usize)> {
        self.shard.read(id, offset, len, buf).await
    }

    /// Caches a written block on its owner.
    pub async fn insert(&self, id: BlockId, data: Vec<u8>) -> Result<Vec<u8>> {
        self.shard.insert(id, data).await
    }

    /// Reads `len` bytes at `offset` of a block another node asked for
    /// (the neighbor tier's server): from the owner's tiers, a miss from
    /// the source's tiers below, never from another neighbor; no stream
    /// detection here.
    pub async fn read_for_peer(
        &self,
        id: BlockId,
        offset: u32,
        len: u32,
        buf: Vec<u8>,
    ) -> Result<(Vec<u8>, usize)> {
        self.shard.read_for_peer(id, offset, len, buf).await
    }

    /// This shard's counters.
    pub fn local_stats(&self) -> ShardStats {
        self.shard.stats()
    }

    /// Counters of every shard.
    pub async fn stats(&self) -> Result<Vec<ShardStats>> {
        self.shard.all_stats().await
    }

    /// Checks every shard's cached blocks against the source, dropping
    /// wrong copies ([`crate::verify`]); one report per shard.
    pub async fn verify_cached(&self) -> Result<Vec<VerifyReport>> {
        self.shard.verify_all().await
    }

    async fn handle(&self, request: Request) -> Result<Response> {
        match request {
            Request::Read {
                id,
                offset,
                len,
                buf,
            } => {
                let (buf, len) = self.read(id, offset, len, buf).await?;
                Ok(Response::Read { buf, len })
            }
            Request::Insert { id, data } => Ok(Response::Inserted {
                buf: self.insert(id, data).await?,
            }),
            Request::Stats => Ok(Response::Stats(self.stats().await?)),
        }
    }
}

/// A running engine: executors, their inboxes, and how to stop them.
#[derive(Debug)]
pub struct Engine {
    handle: EngineHandle,
    threads: Vec<ExecutorJoinHandle<()>>,
    plan: Plan,
    stopped: bool,
}

/// Sends a start-up failure for its shard if dropped before start-up
/// finished (the executor could not be created, or it panicked).
struct ReadyGuard {
    shard: ShardId,
    tx: flume::Sender<(ShardId, Result<()>)>,
    sent: bool,
}

impl ReadyGuard {
    fn send(mut self, result: Result<()>) {
        self.sent = true;
        let _ = self.tx.send((self.shard, result));
    }
}

impl Drop for ReadyGuard {
    fn drop(&mut self) {
        if !self.sent {
            let _ = self.tx.send((
                self.shard,
                Err(Error::Executor {
                    shard: self.shard.index(),
                    message: "the executor stopped during start-up".into(),
                }),
            ));
        }
    }
}

struct ShardStart {
    plan: Arc<Plan>,
    shard: ShardId,
    epoch: u64,
    factory: Arc<dyn SourceFactory>,
    mesh: MeshBuilder<MeshMsg, Full>,
    inbox: flume::Receiver<External>,
    views: Arc<[OnceLock<Arc<HitView>>]>,
    /// Reports that the executor runs (phase 1).
    up: ReadyGuard,
    /// Reports that the shard serves (phase 2).
    ready: ReadyGuard,
}

impl Engine {
    /// Validates `config`, prepares the cache device and starts one pinned
    /// executor per shard; returns when every shard serves (its NVMe region
    /// restored).
    pub fn start(config: &EngineConfig, factory: impl SourceFactory) -> Result<Self> {
        let factory: Arc<dyn SourceFactory> = Arc::new(factory);
        let plan = config.plan()?;
        let epoch = match &plan.disk {
            Some((path, layout)) => prepare_device(path, layout)?,
            None => 0,
        };
        let shards = plan.shards();
        let plan_shared = Arc::new(plan.clone());
        let mesh = MeshBuilder::<MeshMsg, Full>::full(shards, MESH_CHANNEL_DEPTH);
        let (up_tx, up_rx) = flume::unbounded();
        let (ready_tx, ready_rx) = flume::unbounded();
        let mut inboxes = Vec::with_capacity(shards);
        let views: Arc<[OnceLock<Arc<HitView>>]> = (0..shards).map(|_| OnceLock::new()).collect();
        let mut threads = Vec::with_capacity(shards);
        let mut spawn_error = None;
        for (index, &cpu) in plan.cpus.iter().enumerate() {
            let (tx, rx) = flume::bounded(EXTERNAL_INBOX_DEPTH);
            inboxes.push(tx);
            let start = ShardStart {
                plan: Arc::clone(&plan_shared),
                shard: ShardId(index as u16),
                epoch,
                factory: Arc::clone(&factory),
                mesh: mesh.clone(),
                inbox: rx,
                views: Arc::clone(&views),
                up: ReadyGuard {
                    shard: ShardId(index as u16),
                    tx: up_tx.clone(),
                    sent: false,
                },
                ready: ReadyGuard {
                    shard: ShardId(index as u16),
                    tx: ready_tx.clone(),
                    sent: false,
                },
            };
            let spawned = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .name(&format!("dl-shard{index}"))
                .io_memory(plan.io_memory_bytes)
                .ring_depth(plan.config.ring_depth)
                .spawn(move || run_shard(start));
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    spawn_error = Some(Error::Executor {
                        shard: index,
                        message: e.to_string(),
                    });
                    break;
                }
            }
        }
        drop(up_tx);
        drop(ready_tx);
        // Phase 1: every executor must run before any joins the mesh (a
        // mesh join waits for all peers: one missing executor would hang
        // the others forever).
        if let Some(err) = spawn_error.or_else(|| first_failure(&up_rx, threads.len())) {
            return Err(abort_start(&inboxes, threads, err));
        }
        for inbox in &inboxes {
            let _ = inbox.send(External::Go);
        }
        let mut engine = Self {
            handle: EngineHandle {
                inboxes: inboxes.into(),
                views,
                block_size: plan.config.block_size,
            },
            threads,
            plan,
            stopped: false,
        };
        if let Some(err) = first_failure(&ready_rx, engine.threads.len()) {
            let joined = engine.stop_all();
            engine.stopped = true;
            // A thread's own error (e.g. glommio's memlock check) says more
            // than "stopped during start-up".
            return Err(match (err, joined) {
                (Error::Executor { .. }, Err(thread_err)) => thread_err,
                (err, _) => err,
            });
        }
        info!(
            shards = engine.plan.shards(),
            memory_slots_per_shard = engine.plan.memory_slots_per_shard,
            disk = engine.plan.disk.is_some(),
            "engine started"
        );
        Ok(engine)
    }

    /// A handle for threads outside the executors.
    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// The validated plan the engine runs.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Waits until every shard finished its in-flight work (requests,
    /// NVMe writes, prefetches), flushes the NVMe tier and joins the
    /// executors.
    pub fn shutdown(mut self) -> Result<()> {
        self.stopped = true;
        self.stop_all()
    }

    fn stop_all(&mut self) -> Result<()> {
        let mut drains = Vec::new();
        for inbox in self.handle.inboxes.iter() {
            let (tx, rx) = flume::bounded(1);
            if inbox.send(External::Drain(tx)).is_ok() {
                drains.push(rx);
            }
        }
        for rx in drains {
            let _ = rx.recv();
        }
        let mut result = Ok(());
        let mut stops = Vec::new();
        for inbox in self.handle.inboxes.iter() {
            let (tx, rx) = flume::bounded(1);
            if inbox.send(External::Stop(tx)).is_ok() {
                stops.push(rx);
            }
        }
        for rx in stops {
            if let Ok(Err(e)) = rx.recv() {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        for (index, thread) in self.threads.drain(..).enumerate() {
            if let Err(e) = thread.join() {
                if result.is_ok() {
                    result = Err(Error::Executor {
                        shard: index,
                        message: e.to_string(),
                    });
                }
            }
        }
        result
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if !self.stopped {
            self.stopped = true;
            if let Err(err) = self.stop_all() {
                warn!(%err, "engine stopped with an error");
            }
        }
    }
}

async fn run_shard(start: ShardStart) {
    let ShardStart {
        plan,
        shard: id,
        epoch,
        factory,
        mesh,
        inbox,
        views,
        up,
        ready,
    } = start;
    up.send(Ok(()));
    match inbox.recv_async().await {
        Ok(External::Go) => {}
        Ok(External::Stop(reply)) => {
            let _ = reply.send(Ok(()));
            return ready.send(Err(Error::ShutDown));
        }
        _ => return ready.send(Err(Error::ShutDown)),
    }
    let (senders, receivers) = match mesh.join().await {
        Ok(pair) => pair,
        Err(e) => {
            return ready.send(Err(Error::Executor {
                shard: id.index(),
                message: format!("joining the channel mesh: {e}"),
            }))
        }
    };
    if senders.peer_id() != id.index() {
        return ready.send(Err(Error::Executor {
            shard: id.index(),
            message: format!(
                "mesh peer id {} differs from the shard index",
                senders.peer_id()
            ),
        }));
    }
    let peers = Rc::new(Peers::new(id, senders));
    let shard = match build_shard(&plan, id, epoch, factory.as_ref(), Rc::clone(&peers)).await {
        Ok(shard) => shard,
        Err(e) => {
            peers.close();
            return ready.send(Err(e));
        }
    };
    if let Some(view) = views.get(id.index()) {
        let _ = view.set(shard.memory_view());
    }
    let mut receivers = receivers;
    for (peer, rx) in receivers.streams() {
        let shard = Rc::clone(&shard);
        let peer = ShardId(peer as u16);
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                on_mesh_message(&shard, peer, msg);
            }
            // The peer's executor stopped: nothing it owed will arrive.
            shard.peers.peer_gone(peer);
        })
        .detach();
    }
    let expiring = Rc::clone(&shard);
    glommio::spawn_local(async move {
        while !expiring.is_closing() {
            glommio::timer::sleep(Duration::from_millis(STREAM_EXPIRE_INTERVAL_MS)).await;
            expiring.expire_streams();
        }
    })
    .detach();
    ready.send(Ok(()));

    let stop_reply = serve_inbox(&shard, &inbox).await;
    shard.begin_close();
    // Peers may have handed this shard work after its drain finished (a
    // read of theirs that filled a block here): finish it before the flush.
    while shard.tasks_running() > 0 {
        glommio::timer::sleep(Duration::from_millis(DRAIN_POLL_INTERVAL_MS)).await;
    }
    let synced = shard.sync().await;
    // Readers on other threads miss from now on (the handle outlives us).
    shard.memory_view().retire_all();
    peers.close();
    if let Some(reply) = stop_reply {
        let _ = reply.send(synced);
    }
}

/// Serves requests from other threads until told to stop; returns the
/// stopper's reply channel.
async fn serve_inbox(
    shard: &Rc<Shard>,
    inbox: &flume::Receiver<External>,
) -> Option<flume::Sender<Result<()>>> {
    let ctx = ShardContext {
        shard: Rc::clone(shard),
    };
    loop {
        let Ok(msg) = inbox.recv_async().await else {
            break None;
        };
        match msg {
            External::Call { request, reply } => {
                if shard.is_closing() {
                    let _ = reply.send(Err(Error::ShutDown));
                    continue;
                }
                let ctx = ctx.clone();
                shard.spawn_tracked(async move {
                    let _ = reply.send(ctx.handle(request).await);
                });
            }
            // Dropping a job while closing tells its caller (ShutDown).
            External::Spawn(job) if !shard.is_closing() => shard.spawn_tracked(job(ctx.clone())),
            External::Observe(id) if !shard.is_closing() => {
                shard.observe(id);
            }
            External::Spawn(_) | External::Observe(_) | External::Go => {}
            External::Drain(reply) => {
                shard.begin_close();
                let draining = Rc::clone(shard);
                glommio::spawn_local(async move {
                    while draining.tasks_running() > 0 {
                        glommio::timer::sleep(Duration::from_millis(DRAIN_POLL_INTERVAL_MS)).await;
                    }
                    let _ = reply.send(());
                })
                .detach();
            }
            External::Stop(reply) => break Some(reply),
        }
    }
}

fn on_mesh_message(shard: &Rc<Shard>, peer: ShardId, msg: MeshMsg) {
    match msg {
        MeshMsg::Request { tag, op } => {
            let owner = Rc::clone(shard);
            shard.spawn_tracked(async move {
                let result = owner.execute(op).await;
                owner.peers.reply(peer, tag, result).await;
            });
        }
        MeshMsg::OneWay(op) => {
            let owner = Rc::clone(shard);
            shard.spawn_tracked(async move {
                let _ = owner.execute(op).await;
            });
        }
        MeshMsg::Reply { tag, result } => shard.peers.complete(tag, result),
    }
}

async fn build_shard(
    plan: &Plan,
    id: ShardId,
    epoch: u64,
    factory: &dyn SourceFactory,
    peers: Rc<Peers>,
) -> Result<Rc<Shard>> {
    let config = &plan.config;
    let memory = MemoryTier::new(
        plan.memory_slots_per_shard,
        config.block_size,
        config.policy,
        config.hugepages,
    )?;
    let disk = match &plan.disk {
        Some((path, layout)) => {
            let disk = DiskTier::open(path, *layout, id, epoch, config.policy).await?;
            disk.restore().await?;
            Some(disk)
        }
        None => None,
    };
    Ok(Shard::new(ShardParts {
        id,
        shards: plan.shards(),
        block_size: config.block_size,
        memory,
        disk,
        source: factory.source(id),
        resolver: factory.resolver(id),
        streams: StreamTable::new(config.prefetch),
        prefetch_queue: PrefetchQueue::new(config.prefetch.queue_blocks_max),
        staged_max: config.prefetch.window_blocks_max as usize
            + crate::shard::PREFETCH_INFLIGHT_MAX,
        peers,
    }))
}

/// Collects one report per shard; the first failure, if any.
fn first_failure(reports: &flume::Receiver<(ShardId, Result<()>)>, shards: usize) -> Option<Error> {
    let mut first = None;
    for _ in 0..shards {
        match reports.recv() {
            Ok((_, Ok(()))) => {}
            Ok((_, Err(e))) => {
                first.get_or_insert(e);
            }
            Err(_) => break,
        }
    }
    first
}

/// Stops the executors that came up when another did not, and returns the
/// most telling error.
fn abort_start(
    inboxes: &[flume::Sender<External>],
    threads: Vec<ExecutorJoinHandle<()>>,
    err: Error,
) -> Error {
    let mut thread_error = None;
    for inbox in inboxes {
        let (tx, _rx) = flume::bounded(1);
        let _ = inbox.send(External::Stop(tx));
    }
    for (index, thread) in threads.into_iter().enumerate() {
        if let Err(e) = thread.join() {
            thread_error.get_or_insert(Error::Executor {
                shard: index,
                message: e.to_string(),
            });
        }
    }
    // A thread's own error (e.g. glommio's memlock check) says more than
    // "stopped during start-up".
    match (err, thread_error) {
        (Error::Executor { .. }, Some(thread_err)) => thread_err,
        (err, _) => err,
    }
}

/// A 4 KiB-aligned buffer for O_DIRECT IO outside the executors.
struct AlignedPage {
    ptr: std::ptr::NonNull<u8>,
    layout: AllocLayout,
}

impl AlignedPage {
    fn new(bytes: usize) -> Self {
        let layout = AllocLayout::from_size_align(bytes, 4096).expect("page layout is valid");
        // SAFETY: non-zero size, valid alignment.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self { ptr, layout }
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the allocation is `layout.size()` bytes and owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedPage {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// Reads the superblock: the device keeps its epoch (warm restart) when it
/// was initialised with this layout; otherwise it gets a new epoch, which
/// invalidates every slot at once.
fn prepare_device(path: &Path, layout: &Layout) -> Result<u64> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| Error::io("open the cache device", path, e))?;
    let mut page = AlignedPage::new(SUPERBLOCK_BYTES as usize);
    file.read_exact(page.bytes())
        .map_err(|e| Error::io("read the cache superblock of", path, e))?;
    if let Some(sb) = Superblock::decode(page.bytes()) {
        if sb.matches(layout) {
            info!(path = %path.display(), epoch = sb.epoch, "cache device is warm");
            return Ok(sb.epoch);
        }
        warn!(path = %path.display(), "cache device has another layout (block size, cores or size changed): starting cold");
    } else {
        info!(path = %path.display(), "initialising cache device");
    }
    let epoch = new_epoch();
    page.bytes().fill(0);
    Superblock::new(layout, epoch).encode(page.bytes())?;
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.write_all(page.bytes()))
        .and_then(|()| file.sync_data())
        .map_err(|e| Error::io("write the cache superblock of", path, e))?;
    Ok(epoch)
}

fn new_epoch() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    crate::block::mix64(nanos ^ (u64::from(std::process::id()) << 32))
}
