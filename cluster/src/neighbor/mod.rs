//! The neighbor tier: nodes serve each other's cached blocks.
//!
//! Every block has a *cache home* among the registered cache nodes
//! ([`crate::placement`], over the registry in the metadata:
//! [`crate::meta::CacheNode`]). A node that misses a block in its own
//! memory and NVMe asks the block's home ([`NeighborSources`], the
//! engine's source in front of the store); the home serves it from its
//! tiers, or reads it from the store once however many nodes ask (the
//! engine's single flight, [`datenlord_engine::ShardContext::read_for_peer`]),
//! and keeps it. The requester keeps a copy per its own admission. Any
//! neighbor error or timeout falls back to the store, and a home that
//! failed is not asked again for a backoff that grows while it keeps
//! failing. A block a home is asked for never goes on to another
//! neighbor, so requests do not loop when two nodes disagree about a
//! home (a stale registry): that costs a miss, never a wrong byte, since
//! block versions are immutable and every payload is checked against its
//! checksum.
//!
//! Everything runs on the engine's shards: each shard has its own
//! connections to other nodes and its own listening socket on the node's
//! block service port (`SO_REUSEPORT`).

pub mod check;
pub mod conn;
pub mod frame;
pub mod mac;
pub mod rdma;
pub mod warm;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use datenlord_engine::source::{
    BlockSource, ChecksumFuture, SourceFactory, SourceFuture, VersionResolver,
};
use datenlord_engine::stats::SharedLatency;
use datenlord_engine::{BlockId, EngineHandle, ShardContext, ShardId, SourceError};
use futures::FutureExt;
use tracing::{info, warn};

use crate::link::Security;
use crate::meta::CacheNode;
use crate::placement::Placement;
use conn::{Conn, NeighborError};

/// How long a requester waits for a home's answer (the home may itself
/// be reading the block from the store).
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// First pause before a failed home is asked again; it doubles while the
/// home keeps failing, up to [`DOWN_BACKOFF_MAX_MS`].
pub const DOWN_BACKOFF_MIN_MS: u64 = 200;
/// Longest pause before a failed home is asked again.
pub const DOWN_BACKOFF_MAX_MS: u64 = 10_000;

/// Who serves which blocks: the registry's nodes at one epoch.
#[derive(Debug)]
pub struct View {
    placement: Placement,
    addrs: BTreeMap<u64, String>,
}

impl View {
    /// The view of the registry at `epoch`: live nodes are homes; every
    /// registered node's address is kept (a writer's journal is asked
    /// even when the Lord does not hear it). Records a placement cannot
    /// hold (refused by the registry anyway) are left out.
    pub fn new(epoch: u64, nodes: &[CacheNode]) -> Self {
        let usable: Vec<&CacheNode> = nodes.iter().filter(|n| n.check().is_ok()).collect();
        let homes = usable.iter().filter(|n| n.live);
        let placement =
            Placement::new(epoch, homes.map(|n| (n.id, n.cache_bytes))).unwrap_or_else(|e| {
                warn!(%e, "the cache registry cannot be placed over: no neighbor reads");
                Placement::new(epoch, []).unwrap_or_else(|_| unreachable!("empty placement"))
            });
        Self {
            placement,
            addrs: usable.iter().map(|n| (n.id, n.addr.clone())).collect(),
        }
    }

    /// The registry epoch of this view.
    pub fn epoch(&self) -> u64 {
        self.placement.epoch()
    }

    /// A block's home and its address.
    pub fn home(&self, id: BlockId) -> Option<(u64, &str)> {
        let home = self.placement.home(id.ino.0, id.index)?;
        Some((home, self.addrs.get(&home)?.as_str()))
    }

    /// The block service address of a registered node.
    pub fn addr(&self, node: u64) -> Option<&str> {
        self.addrs.get(&node).map(String::as_str)
    }
}

/// The current view, replaced when the registry changes; read by every
/// shard at each miss.
#[derive(Clone, Debug)]
pub struct Membership(Arc<RwLock<Arc<View>>>);

impl Default for Membership {
    fn default() -> Self {
        Self(Arc::new(RwLock::new(Arc::new(View::new(0, &[])))))
    }
}

impl Membership {
    /// The view in use.
    pub fn get(&self) -> Arc<View> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the view.
    pub fn set(&self, view: View) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(view);
    }
}

/// Counters of the neighbor tier on this node (all shards).
#[derive(Debug, Default)]
pub struct NeighborStats {
    /// Blocks a home delivered to this node.
    pub hits: AtomicU64,
    /// Their bytes.
    pub hit_bytes: AtomicU64,
    /// Homes that answered they have no such block (then the store).
    pub misses: AtomicU64,
    /// Requests that failed or timed out.
    pub errors: AtomicU64,
    /// Reads that went to the store because the home failed or was down.
    pub fallbacks: AtomicU64,
    /// Blocks this node served to others.
    pub served: AtomicU64,
    /// Their bytes.
    pub served_bytes: AtomicU64,
    /// Requests this node answered with a miss or an error.
    pub served_misses: AtomicU64,
    /// Requests served on a connection of a shard other than the block's
    /// owner (one hop between this node's cores): the requester did not
    /// know this node's shards yet.
    pub served_off_shard: AtomicU64,
    /// Connections this node refused (handshake, identity, bad frames).
    pub refused: AtomicU64,
    /// Sum of the requester's wait for a home's answer, in microseconds.
    pub wait_us: AtomicU64,
    /// Blocks this node fetched and kept on warm-up orders.
    pub warmed: AtomicU64,
    /// How long homes took to deliver (hits).
    pub hit_latency: SharedLatency,
    /// How long this node's reads below the neighbor tier took (its
    /// journal, then the store), successful ones.
    pub below_latency: SharedLatency,
    /// Connections (made or accepted) whose frames go in clear with a MAC
    /// (`--data-tls off` on both ends).
    pub clear_connections: AtomicU64,
    /// RDMA connections (made or accepted).
    pub rdma_connections: AtomicU64,
}

impl NeighborStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// How a node's block connections are secured.
#[derive(Clone, Debug)]
pub struct DataLink {
    /// Mutual TLS with the cluster's certificates, or plain TCP.
    pub security: Security,
    /// With TLS: frames inside TLS records (`--data-tls on`, the default),
    /// or in clear after the handshake with a per-frame MAC keyed from it
    /// (`off`, used on a connection only when both ends say off:
    /// [`mac`]).
    pub data_tls: bool,
    /// The node's RDMA fabric (`--neighbor-transport rdma` on a machine
    /// with a device): blocks travel over queue pairs to and from nodes
    /// that have one too, TCP frames otherwise. RDMA connections are set
    /// up over mutual TLS: without certificates TCP is used.
    pub rdma: Option<Arc<dyn rdma::fabric::Fabric>>,
}

impl DataLink {
    /// Frames inside TLS when `security` has certificates.
    pub fn new(security: Security) -> Self {
        Self {
            security,
            data_tls: true,
            rdma: None,
        }
    }
}

/// The engine's source factory with the neighbor tier in front of `below`
/// (the store): each shard asks blocks' homes before the store.
#[derive(Debug)]
pub struct NeighborSources<F> {
    below: F,
    me: u64,
    membership: Membership,
    link: DataLink,
    stats: Arc<NeighborStats>,
    block_max: u32,
}

impl<F: SourceFactory> NeighborSources<F> {
    /// Sources for node `me`, asking the homes of `membership` over
    /// connections secured as `link` says, then `below`. `block_max` is the
    /// volume's block size.
    pub fn new(
        below: F,
        me: u64,
        membership: Membership,
        link: DataLink,
        stats: Arc<NeighborStats>,
        block_max: u32,
    ) -> Self {
        Self {
            below,
            me,
            membership,
            link,
            stats,
            block_max,
        }
    }
}

impl<F: SourceFactory> SourceFactory for NeighborSources<F> {
    fn source(&self, shard: ShardId) -> Rc<dyn BlockSource> {
        Rc::new(NeighborSource(Rc::new(Shared {
            below: self.below.source(shard),
            me: self.me,
            membership: self.membership.clone(),
            link: self.link.clone(),
            stats: Arc::clone(&self.stats),
            block_max: self.block_max,
            conns: RefCell::new(HashMap::new()),
            tcp_only: RefCell::new(HashSet::new()),
            home_shards: RefCell::new(HashMap::new()),
            opening: futures::lock::Mutex::new(()),
            down: RefCell::new(HashMap::new()),
        })))
    }

    fn resolver(&self, shard: ShardId) -> Rc<dyn VersionResolver> {
        self.below.resolver(shard)
    }
}

/// A home that failed: not asked again before `until`.
#[derive(Debug, Clone, Copy)]
struct Down {
    until: Instant,
    backoff: Duration,
}

/// A connection to a node's shard: TCP frames or an RDMA queue pair.
#[derive(Clone, Debug)]
enum Link {
    Tcp(Rc<Conn>),
    Rdma(Rc<rdma::link::RdmaLink>),
}

impl Link {
    fn is_broken(&self) -> bool {
        match self {
            Self::Tcp(c) => c.is_broken(),
            Self::Rdma(c) => c.is_broken(),
        }
    }

    fn hello(&self) -> conn::Hello {
        match self {
            Self::Tcp(c) => c.hello(),
            Self::Rdma(c) => c.hello(),
        }
    }

    async fn read(
        &self,
        id: BlockId,
        range: Option<(u32, u32)>,
        timeout_ms: u64,
    ) -> Result<Vec<u8>, NeighborError> {
        match self {
            Self::Tcp(c) => c.read(id, range, timeout_ms).await,
            Self::Rdma(c) => c.read(id, range, timeout_ms).await,
        }
    }
}

/// A connection to a node's shard, with the address it went to.
type Opened = (String, Link);

/// One shard's neighbor tier.
struct Shared {
    below: Rc<dyn BlockSource>,
    me: u64,
    membership: Membership,
    link: DataLink,
    stats: Arc<NeighborStats>,
    block_max: u32,
    /// Open connections by node and the node's shard serving them, with
    /// the address they went to.
    conns: RefCell<HashMap<(u64, u16), Opened>>,
    /// Nodes that took a TCP connection but refused an RDMA one (no
    /// fabric there): asked over TCP until they fail.
    tcp_only: RefCell<HashSet<u64>>,
    /// Each node's shard count, from its hello: a block goes on the
    /// connection to its owner shard there.
    home_shards: RefCell<HashMap<u64, u16>>,
    /// Held while a connection is being made: concurrent misses wait for
    /// it instead of each opening one.
    opening: futures::lock::Mutex<()>,
    down: RefCell<HashMap<u64, Down>>,
}

struct NeighborSource(Rc<Shared>);

/// Where a block may be asked for beyond this node, from one view of the
/// registry.
struct Route {
    /// Its home, unless that is this node, there is none, or it failed
    /// recently.
    home: Option<(u64, String)>,
    /// Its home is another node that failed recently (a fallback).
    home_down: bool,
    /// The node that wrote it, when that is another registered node: until
    /// the version is uploaded, only that node's journal holds it.
    writer: Option<(u64, String)>,
}

impl Route {
    /// Whether a fetch would ask another node.
    fn forwards(&self) -> bool {
        self.home.is_some() || self.writer.is_some()
    }
}

impl Shared {
    /// Where to ask for `id`.
    fn route(&self, id: BlockId) -> Route {
        let view = self.membership.get();
        let home = view.home(id).filter(|(home, _)| *home != self.me);
        let home_down = home.is_some_and(|(home, _)| self.is_down(home));
        let writer = id.writer();
        let writer = if writer == 0 || writer == self.me {
            None
        } else {
            view.addr(writer).map(|addr| (writer, addr.to_string()))
        };
        Route {
            home: home
                .filter(|_| !home_down)
                .map(|(home, addr)| (home, addr.to_string())),
            home_down,
            writer,
        }
    }

    fn is_down(&self, node: u64) -> bool {
        self.down
            .borrow()
            .get(&node)
            .is_some_and(|d| Instant::now() < d.until)
    }

    async fn ask(
        &self,
        node: u64,
        addr: &str,
        id: BlockId,
        range: Option<(u32, u32)>,
    ) -> Result<Vec<u8>, NeighborError> {
        let conn = self.conn(node, addr, id).await?;
        conn.read(id, range, REQUEST_TIMEOUT_MS).await
    }

    /// The shard of `node` that owns `id`, once its hello told its shards.
    fn owner_at(&self, node: u64, id: BlockId) -> Option<u16> {
        let shards = *self.home_shards.borrow().get(&node)?;
        Some(id.key().owner(usize::from(shards)).0)
    }

    /// An open connection to `node`'s shard `shard` (any shard: `None`).
    fn open_conn(&self, node: u64, addr: &str, shard: Option<u16>) -> Option<Link> {
        let usable = |(at, c): &Opened| at == addr && !c.is_broken();
        let conns = self.conns.borrow();
        match shard {
            Some(shard) => conns.get(&(node, shard)).filter(|c| usable(c)),
            None => conns
                .iter()
                .find(|((n, _), c)| *n == node && usable(c))
                .map(|(_, c)| c),
        }
        .map(|(_, c)| c.clone())
    }

    /// This shard's connection to the shard of `node` that owns `id`, made
    /// if there is none. Until the node's hello told its shard count, any
    /// connection to it will do (the node hops to the owner itself).
    async fn conn(&self, node: u64, addr: &str, id: BlockId) -> Result<Link, NeighborError> {
        let want = self.owner_at(node, id);
        if let Some(conn) = self.open_conn(node, addr, want) {
            return Ok(conn);
        }
        let _opening = self.opening.lock().await;
        let want = self.owner_at(node, id);
        if let Some(conn) = self.open_conn(node, addr, want) {
            return Ok(conn);
        }
        let conn = self
            .open(node, addr, want.unwrap_or(conn::ROUTE_ANY))
            .await?;
        let hello = conn.hello();
        self.home_shards.borrow_mut().insert(node, hello.shards);
        let mut conns = self.conns.borrow_mut();
        let entry = (addr.to_string(), conn.clone());
        if let Some(want) = want.filter(|w| *w != hello.shard) {
            // The node could not route it (its shards changed): used for
            // that shard's blocks anyway rather than opening more.
            conns.insert((node, want), entry.clone());
        }
        conns.insert((node, hello.shard), entry);
        Ok(conn)
    }

    /// A new connection to `node`'s shard `want`: over RDMA when this node
    /// has a fabric and `node` did not refuse one, else TCP frames.
    async fn open(&self, node: u64, addr: &str, want: u16) -> Result<Link, NeighborError> {
        let rdma = if self.link.rdma.is_some() && !self.tcp_only.borrow().contains(&node) {
            match rdma::link::open(node, addr, &self.link, want, self.block_max).await {
                Ok(link) => {
                    NeighborStats::add(&self.stats.rdma_connections, 1);
                    return Ok(Link::Rdma(Rc::new(link)));
                }
                Err(e) => Some(e),
            }
        } else {
            None
        };
        let conn = Conn::open_to(node, addr, &self.link, self.block_max, want).await?;
        if let Some(e) = rdma {
            // It answers over TCP: RDMA is what failed.
            self.tcp_only.borrow_mut().insert(node);
            warn!(node, %addr, %e, "no RDMA connection to this node: its blocks come over TCP");
        }
        if conn.is_clear() {
            NeighborStats::add(&self.stats.clear_connections, 1);
        }
        Ok(Link::Tcp(conn))
    }

    fn failed(&self, home: u64, addr: &str, err: &NeighborError) {
        let mut down = self.down.borrow_mut();
        let backoff = down
            .get(&home)
            .map_or(Duration::from_millis(DOWN_BACKOFF_MIN_MS), |d| {
                (d.backoff * 2).min(Duration::from_millis(DOWN_BACKOFF_MAX_MS))
            });
        let first = !down.contains_key(&home);
        down.insert(
            home,
            Down {
                until: Instant::now() + backoff,
                backoff,
            },
        );
        drop(down);
        self.conns.borrow_mut().retain(|(node, _), _| *node != home);
        self.home_shards.borrow_mut().remove(&home);
        self.tcp_only.borrow_mut().remove(&home);
        if first {
            warn!(node = home, %addr, %err, "a neighbor failed: reading from the store; asking it again after a backoff");
        }
    }

    fn succeeded(&self, home: u64) {
        if self.down.borrow_mut().remove(&home).is_some() {
            info!(node = home, "a neighbor answers again");
        }
    }
}

impl Shared {
    /// Asks the home, then the tiers below; a block neither has (not
    /// uploaded yet, or the store is down) is asked of its writer.
    async fn fetch(&self, id: BlockId, route: Route) -> Result<Vec<u8>, SourceError> {
        let mut home_missed = false;
        if let Some((home, addr)) = &route.home {
            match self.ask_counted(*home, addr, id, None).await {
                Ok(data) => return Ok(data),
                Err(NeighborError::Missing) => home_missed = true,
                Err(e) => self.failed(*home, addr, &e),
            }
        }
        self.after_home(id, route, home_missed).await
    }

    /// What [`Self::fetch`] does once the home did not deliver (it said it
    /// has no such block when `home_missed`).
    async fn after_home(
        &self,
        id: BlockId,
        route: Route,
        home_missed: bool,
    ) -> Result<Vec<u8>, SourceError> {
        let home = route.home.map(|(home, _)| home);
        let writer = route.writer;
        if home_missed && writer.as_ref().is_some_and(|(w, _)| Some(*w) == home) {
            // The writer is the home: its journal was looked at.
            return Err(SourceError::NotFound);
        }
        let below = if home_missed && writer.is_some() {
            // The home just looked in the store; the writer's journal is next.
            Err(SourceError::NotFound)
        } else {
            // This node's own journal, then the store.
            self.below_fetch(id).await
        };
        match (below, writer) {
            (Ok(data), _) => Ok(data),
            (Err(e), None) => Err(e),
            (Err(e), Some((writer, _))) if self.is_down(writer) => Err(SourceError::Failed(format!(
                "block {id} is not readable from the store ({e}) and node {writer}, which wrote it, does not answer"
            ))),
            (Err(e), Some((writer, addr))) => match self.ask_counted(writer, &addr, id, None).await {
                Ok(data) => Ok(data),
                Err(NeighborError::Missing) => Err(e),
                Err(err) => {
                    self.failed(writer, &addr, &err);
                    warn!(block = %id, node = writer, %addr, %err, below = %e,
                        "a block version not in the store is held by the node that wrote it, which does not answer: reads of it fail until that node is back and has uploaded its journal");
                    Err(SourceError::Failed(format!(
                        "block {id} is not readable from the store ({e}) and node {writer}, which wrote it, does not answer ({err})"
                    )))
                }
            },
        }
    }

    /// [`Self::ask`] with the counters.
    async fn ask_counted(
        &self,
        node: u64,
        addr: &str,
        id: BlockId,
        range: Option<(u32, u32)>,
    ) -> Result<Vec<u8>, NeighborError> {
        let asked = Instant::now();
        let answer = self.ask(node, addr, id, range).await;
        let stats = &self.stats;
        NeighborStats::add(&stats.wait_us, asked.elapsed().as_micros() as u64);
        match &answer {
            Ok(data) => {
                stats.hit_latency.record_since(asked);
                self.succeeded(node);
                NeighborStats::add(&stats.hits, 1);
                NeighborStats::add(&stats.hit_bytes, data.len() as u64);
            }
            Err(NeighborError::Missing) => NeighborStats::add(&stats.misses, 1),
            Err(_) => {
                NeighborStats::add(&stats.errors, 1);
                NeighborStats::add(&stats.fallbacks, 1);
            }
        }
        answer
    }
}

impl Shared {
    /// A fetch from below (journal, store), timed.
    fn below_fetch(&self, id: BlockId) -> SourceFuture {
        let fetch = self.below.fetch(id);
        let stats = Arc::clone(&self.stats);
        async move {
            let started = Instant::now();
            let result = fetch.await;
            if result.is_ok() {
                stats.below_latency.record_since(started);
            }
            result
        }
        .boxed_local()
    }
}

impl BlockSource for NeighborSource {
    fn fetch(&self, id: BlockId) -> SourceFuture {
        let route = self.0.route(id);
        if route.home_down {
            NeighborStats::add(&self.0.stats.fallbacks, 1);
        }
        if !route.forwards() {
            return self.0.below_fetch(id);
        }
        let shared = Rc::clone(&self.0);
        async move { shared.fetch(id, route).await }.boxed_local()
    }

    fn fetch_for_peer(&self, id: BlockId) -> SourceFuture {
        self.0.below_fetch(id)
    }

    /// Whether a fetch may wait on another node's fetch: only when it asks
    /// a home. Asking the block's writer cannot make two nodes wait on
    /// each other (the writer answers from its journal and the store, never
    /// asking anyone), so a peer's request at a block's home joins the
    /// home's own fetch of it: one store read however many ask at once.
    fn forwards(&self, id: BlockId) -> bool {
        self.0.route(id).home.is_some()
    }

    fn fetch_range(&self, id: BlockId, offset: u32, len: u32) -> Option<SourceFuture> {
        let route = self.0.route(id);
        let (home, addr) = route.home.clone()?;
        let shared = Rc::clone(&self.0);
        Some(
            async move {
                let missed = match shared
                    .ask_counted(home, &addr, id, Some((offset, len)))
                    .await
                {
                    Ok(data) => return Ok(data),
                    Err(NeighborError::Missing) => true,
                    Err(e) => {
                        shared.failed(home, &addr, &e);
                        false
                    }
                };
                // The whole block the usual way (the store, its writer),
                // without asking the home again.
                let block = shared.after_home(id, route, missed).await?;
                let start = (offset as usize).min(block.len());
                let end = (start + len as usize).min(block.len());
                Ok(block[start..end].to_vec())
            }
            .boxed_local(),
        )
    }

    /// What the store (or this node's journal) holds: a cached copy is
    /// checked against the source of truth, never against another cache.
    fn checksum(&self, id: BlockId) -> Option<ChecksumFuture> {
        self.0.below.checksum(id)
    }
}

impl From<NeighborError> for SourceError {
    fn from(e: NeighborError) -> Self {
        match e {
            NeighborError::Missing => Self::NotFound,
            other => Self::Failed(other.to_string()),
        }
    }
}

/// The node's block service: a listening socket per shard on one port,
/// each shard serving the connections it accepts.
#[derive(Debug)]
pub struct NeighborServer {
    addr: SocketAddr,
    stop: Option<flume::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NeighborServer {
    /// Listens on `listen` (port 0: one the system picks) on every shard
    /// of `engine`, serving blocks to nodes that `link` admits.
    pub fn start(
        engine: &EngineHandle,
        listen: &str,
        link: DataLink,
        stats: Arc<NeighborStats>,
    ) -> std::io::Result<Self> {
        let wanted: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(listen)?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("cannot resolve {listen}")))?;
        let first = reuse_port_listener(wanted)?;
        let addr = first
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("the block service socket has no IP address"))?;
        let mut sockets = vec![Some(OwnedFd::from(first))];
        for _ in 1..engine.shards() {
            sockets.push(Some(OwnedFd::from(reuse_port_listener(addr)?)));
        }
        let sockets = Arc::new(Mutex::new(sockets));
        // Each shard's inbox of connections another shard accepted for it.
        let (routes, inboxes): (Vec<_>, Vec<_>) = (0..engine.shards())
            .map(|_| {
                let (tx, rx) = flume::unbounded::<OwnedFd>();
                (tx, Some(rx))
            })
            .unzip();
        let routes = Arc::new(routes);
        let inboxes = Arc::new(Mutex::new(inboxes));
        let (stop, stopped) = flume::bounded::<()>(0);
        let engine = engine.clone();
        let thread = std::thread::Builder::new()
            .name("neighbor-serve".into())
            .spawn(move || {
                let serve = engine.run_on_all(move |ctx| {
                    let socket = take_slot(&sockets, ctx.id().index());
                    let inbox = take_slot(&inboxes, ctx.id().index());
                    let service = Service {
                        ctx: ctx.clone(),
                        link: link.clone(),
                        stats: Arc::clone(&stats),
                        stopped: stopped.clone(),
                        open: Rc::new(std::cell::Cell::new(0)),
                    };
                    serve_shard(service, socket, inbox, Arc::clone(&routes))
                });
                if let Err(e) = futures::executor::block_on(serve) {
                    warn!(%e, "the block service stopped with the engine");
                }
            })?;
        info!(%addr, "serving cached blocks to other nodes");
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address the service listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and closes every served connection (before the
    /// engine stops).
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for NeighborServer {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Takes a shard's part of what was made for every shard.
fn take_slot<T>(all: &Mutex<Vec<Option<T>>>, shard: usize) -> Option<T> {
    all.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_mut(shard)
        .and_then(Option::take)
}

fn reuse_port_listener(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket)
}

/// Most connections one shard serves at once.
pub const CONNECTIONS_PER_SHARD_MAX: usize = 1024;

/// One shard's block service: what its connections need.
#[derive(Clone)]
struct Service {
    ctx: ShardContext,
    link: DataLink,
    stats: Arc<NeighborStats>,
    stopped: flume::Receiver<()>,
    /// Connections this shard serves.
    open: Rc<std::cell::Cell<usize>>,
}

impl Service {
    /// Counts one more connection on this shard, unless it has the most it
    /// may have (then the connection is refused: dropped).
    fn admit(&self) -> bool {
        if self.open.get() >= CONNECTIONS_PER_SHARD_MAX {
            NeighborStats::add(&self.stats.refused, 1);
            warn!(shard = %self.ctx.id(), "too many neighbor connections: refusing one");
            return false;
        }
        self.open.set(self.open.get() + 1);
        true
    }

    /// Serves `tcp` (its route preamble read) on this shard until it
    /// closes or the service stops.
    fn serve(&self, tcp: glommio::net::TcpStream) {
        if !self.admit() {
            return;
        }
        let this = self.clone();
        glommio::spawn_local(async move {
            let serve = conn::serve_connection(
                this.ctx.clone(),
                tcp,
                this.link.clone(),
                Arc::clone(&this.stats),
            );
            futures::future::select(Box::pin(serve), Box::pin(this.stopped.recv_async())).await;
            this.open.set(this.open.get() - 1);
        })
        .detach();
    }

    /// Reads an accepted connection's route preamble and serves it here,
    /// or hands it to the shard it asks for (the owner of the blocks it
    /// will ask about), so no request hops between this node's cores.
    fn route(&self, mut tcp: glommio::net::TcpStream, routes: Arc<Vec<flume::Sender<OwnedFd>>>) {
        // A connection waiting to say where it goes counts against this
        // shard's limit too (it has not authenticated yet).
        if !self.admit() {
            return;
        }
        let this = self.clone();
        glommio::spawn_local(async move {
            let preamble = conn::read_route(&mut tcp).await;
            this.open.set(this.open.get() - 1);
            let want = match preamble {
                Ok(want) => usize::from(want),
                Err(e) => {
                    NeighborStats::add(&this.stats.refused, 1);
                    warn!(remote = ?tcp.peer_addr().ok(), %e, "refused a neighbor connection");
                    return;
                }
            };
            let Some(route) = routes.get(want).filter(|_| want != this.ctx.id().index()) else {
                // Here, or any shard, or one this node does not have.
                return this.serve(tcp);
            };
            // SAFETY: the descriptor is the open socket `tcp` holds until
            // it is dropped below; the duplicate is owned from here on.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(tcp.as_raw_fd()) }
                .try_clone_to_owned();
            drop(tcp);
            match fd {
                Ok(fd) => {
                    let _ = route.send(fd);
                }
                Err(e) => warn!(%e, "handing a neighbor connection to its shard failed"),
            }
        })
        .detach();
    }
}

async fn serve_shard(
    service: Service,
    socket: Option<OwnedFd>,
    inbox: Option<flume::Receiver<OwnedFd>>,
    routes: Arc<Vec<flume::Sender<OwnedFd>>>,
) {
    let (Some(socket), Some(inbox)) = (socket, inbox) else {
        warn!(shard = %service.ctx.id(), "no block service socket for this shard");
        return;
    };
    // Connections other shards accepted for this one.
    let handed = service.clone();
    glommio::spawn_local(async move {
        loop {
            let next = futures::future::select(
                Box::pin(inbox.recv_async()),
                Box::pin(handed.stopped.recv_async()),
            )
            .await;
            let futures::future::Either::Left((Ok(fd), _)) = next else {
                return;
            };
            // SAFETY: a connected TCP socket handed over by its accepting
            // shard, owned by this stream from here on.
            handed.serve(unsafe { glommio::net::TcpStream::from_raw_fd(fd.into_raw_fd()) });
        }
    })
    .detach();
    // SAFETY: the descriptor is a bound, listening TCP socket this
    // function owns from here on.
    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(socket.into_raw_fd()) };
    loop {
        let accepted = futures::future::select(
            Box::pin(listener.accept()),
            Box::pin(service.stopped.recv_async()),
        )
        .await;
        match accepted {
            futures::future::Either::Left((Ok(tcp), _)) => service.route(tcp, Arc::clone(&routes)),
            futures::future::Either::Left((Err(e), _)) => {
                warn!(shard = %service.ctx.id(), %e, "accepting a neighbor connection failed");
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
            futures::future::Either::Right(_) => return,
        }
    }
}

/// Who may be the other end of a neighbor connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PeerRule {
    /// The node this end connected to.
    Node(u64),
    /// Any node of the cluster (an RDMA connection: administrators only
    /// order warm-ups, over TCP).
    AnyNode,
    /// A node, or an administrator (a TCP connection this end accepted).
    NodeOrAdmin,
}

/// Why `who` may not be the other end under `rule` (its role and id, then
/// whether its certificate was revoked); `None` if it may.
pub(crate) fn peer_refusal(
    tls: &crate::tls::TlsDir,
    who: &crate::tls::Identity,
    rule: PeerRule,
) -> Option<String> {
    use crate::tls::Role;
    let (fits, expected) = match rule {
        PeerRule::Node(id) => (
            who.role == Role::Node && who.id == Some(id),
            format!("node {id}"),
        ),
        PeerRule::AnyNode => (
            who.role == Role::Node,
            "a node of the cluster (only nodes get an RDMA connection)".to_string(),
        ),
        PeerRule::NodeOrAdmin => (
            matches!(who.role, Role::Node | Role::Admin),
            "a node or an administrator".to_string(),
        ),
    };
    if !fits {
        return Some(format!("{who} (serial {}) is not {expected}", who.serial));
    }
    tls.revocation(who)
}

/// Runs `f` for at most `ms` milliseconds on the executor's timers;
/// `timed_out` makes the error when it takes longer.
pub(crate) async fn within<T, E>(
    ms: u64,
    f: impl std::future::Future<Output = Result<T, E>>,
    timed_out: impl FnOnce() -> E,
) -> Result<T, E> {
    let limit = std::time::Duration::from_millis(ms);
    match glommio::timer::timeout(limit, async { Ok(f.await) }).await {
        Ok(result) => result,
        Err(_) => Err(timed_out()),
    }
}
