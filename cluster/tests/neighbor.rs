//! The neighbor tier between real engines in one process: real executors,
//! real sockets on loopback, mutual TLS with certificates of a test CA.
//! Each "node" has its own store below its cache (a `MemoryStore`), so
//! where a block came from is visible in the stores' fetch counts.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use datenlord_cluster::certs::{init_ca, issue, CertRequest};
use datenlord_cluster::link::Security;
use datenlord_cluster::meta::CacheNode;
use datenlord_cluster::neighbor::conn::ROUTE_ANY;
use datenlord_cluster::neighbor::rdma::fabric::Fabric;
use datenlord_cluster::neighbor::rdma::mem::MemFabric;
use datenlord_cluster::neighbor::{
    DataLink, Membership, NeighborServer, NeighborSources, NeighborStats, View,
};
use datenlord_cluster::tls::Role;
use datenlord_engine::{BlockId, BlockSize, Engine, EngineConfig, EngineHandle, MemoryStore};
use futures::executor::block_on;

const BLOCK: usize = 64 << 10;

fn content(id: BlockId) -> Vec<u8> {
    let seed = id.ino.0 * 31 + id.index * 131 + id.version;
    (0..BLOCK)
        .map(|i| (seed.wrapping_add(i as u64 * 7) % 251) as u8)
        .collect()
}

fn version(id: BlockId, version: u64) -> BlockId {
    BlockId::new(id.ino.0, id.index, version)
}

fn security(ca: &Path, dir: &Path, id: u64) -> Security {
    let request = CertRequest {
        name: format!("node-{id}"),
        role: Role::Node,
        id: Some(id),
        days: 1,
        hosts: Vec::new(),
    };
    issue(ca, dir, &request).expect("issue");
    Security::from_dir(Some(dir)).expect("load")
}

struct TestNode {
    id: u64,
    store: Arc<MemoryStore>,
    engine: Option<Engine>,
    server: Option<NeighborServer>,
    stats: Arc<NeighborStats>,
    membership: Membership,
}

impl TestNode {
    fn start(id: u64, security: &Security, membership: Membership) -> Self {
        Self::with_memory(id, &DataLink::new(security.clone()), membership, 64)
    }

    /// A node whose memory tier holds `blocks` blocks.
    fn with_memory(id: u64, link: &DataLink, membership: Membership, blocks: u64) -> Self {
        Self::with_cores(id, link, membership, blocks, 2)
    }

    /// [`Self::with_memory`] on `cores` shards.
    fn with_cores(
        id: u64,
        link: &DataLink,
        membership: Membership,
        blocks: u64,
        cores: usize,
    ) -> Self {
        let store = MemoryStore::new();
        let stats = Arc::new(NeighborStats::default());
        let config = EngineConfig {
            cores: Some(cores),
            block_size: BlockSize::new(BLOCK as u64).expect("block size"),
            memory_bytes: blocks * BLOCK as u64,
            hugepages: false,
            ..EngineConfig::default()
        };
        let sources = NeighborSources::new(
            Arc::clone(&store),
            id,
            membership.clone(),
            link.clone(),
            Arc::clone(&stats),
            BLOCK as u32,
        );
        let engine = Engine::start(&config, sources).expect("engine");
        let server = NeighborServer::start(
            &engine.handle(),
            "127.0.0.1:0",
            link.clone(),
            Arc::clone(&stats),
        )
        .expect("serve");
        Self {
            id,
            store,
            engine: Some(engine),
            server: Some(server),
            stats,
            membership,
        }
    }

    fn handle(&self) -> EngineHandle {
        self.engine.as_ref().expect("running").handle()
    }

    fn record(&self) -> CacheNode {
        CacheNode {
            id: self.id,
            addr: self.server.as_ref().expect("serving").addr().to_string(),
            cache_bytes: 1 << 30,
            live: true,
        }
    }

    fn read(&self, id: BlockId) -> Result<Vec<u8>, datenlord_engine::Error> {
        block_on(self.handle().read(id, 0, BLOCK as u32, Vec::new())).map(|(buf, _)| buf)
    }

    fn stop_serving(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.stop_serving();
        if let Some(engine) = self.engine.take() {
            let _ = engine.shutdown();
        }
    }
}

/// An administrator's link, with a certificate of the CA in `dir/ca`.
fn admin_link(dir: &Path) -> DataLink {
    let admin_dir = dir.join("admin");
    let request = CertRequest {
        name: "admin".into(),
        role: Role::Admin,
        id: None,
        days: 1,
        hosts: Vec::new(),
    };
    issue(&dir.join("ca"), &admin_dir, &request).expect("issue");
    DataLink::new(Security::from_dir(Some(&admin_dir)).expect("load"))
}

/// Two nodes sharing one membership; returns them and, for each, the
/// blocks of inode 9 (index 0..n) whose home is that node.
fn pair(dir: &Path, n: u64) -> (TestNode, TestNode, Vec<BlockId>, Vec<BlockId>) {
    let ca = dir.join("ca");
    init_ca(&ca, 1).expect("ca");
    let membership = Membership::default();
    let a = TestNode::start(1, &security(&ca, &dir.join("n1"), 1), membership.clone());
    let b = TestNode::start(2, &security(&ca, &dir.join("n2"), 2), membership.clone());
    let view = View::new(1, &[a.record(), b.record()]);
    let (mut at_a, mut at_b) = (Vec::new(), Vec::new());
    for index in 0..n {
        let id = BlockId::new(9, index, 1 << 16);
        match view.home(id).map(|(home, _)| home) {
            Some(1) => at_a.push(id),
            Some(2) => at_b.push(id),
            other => panic!("home {other:?}"),
        }
    }
    membership.set(view);
    assert!(!at_a.is_empty() && !at_b.is_empty(), "both nodes are homes");
    (a, b, at_a, at_b)
}

#[test]
fn a_miss_is_served_by_the_blocks_home_which_reads_its_store_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, _, at_b) = pair(dir.path(), 32);
    // Only B's store has the blocks: A can read them only through B.
    for &id in &at_b {
        b.store.put(id, content(id));
    }
    for &id in &at_b {
        assert_eq!(a.read(id).expect("read through the home"), content(id));
    }
    assert_eq!(a.store.fetches(), 0, "A never needed its store");
    assert_eq!(b.store.fetches(), at_b.len() as u64, "B read each once");
    assert_eq!(a.stats.hits.load(Ordering::Relaxed), at_b.len() as u64);
    assert_eq!(b.stats.served.load(Ordering::Relaxed), at_b.len() as u64);
    // A keeps its copy: a second read is a hit in A's own memory.
    for &id in &at_b {
        assert_eq!(a.read(id).expect("cached"), content(id));
    }
    assert_eq!(b.stats.served.load(Ordering::Relaxed), at_b.len() as u64);
    // Cold blocks that several readers want at once cost one store read
    // at the home.
    let cold = BlockId::new(9, 0, 2 << 16);
    let cold = if b.membership.get().home(cold).map(|h| h.0) == Some(2) {
        cold
    } else {
        version(at_b[0], 3 << 16)
    };
    b.store.put(cold, content(cold));
    b.store.set_delay(Duration::from_millis(200));
    let before = b.store.fetches();
    let handle = a.handle();
    let reads = (0..8).map(|_| handle.read(cold, 0, BLOCK as u32, Vec::new()));
    for r in block_on(futures::future::join_all(reads)) {
        assert_eq!(r.expect("read").0, content(cold));
    }
    let direct = b.read(cold).expect("home's own read");
    assert_eq!(direct, content(cold));
    assert_eq!(
        b.store.fetches() - before,
        1,
        "one store read for every reader"
    );
}

/// Each requesting shard talks to the home's shard that owns the block:
/// once the home's hello told its shard count, no request hops between
/// the home's cores, whatever the two nodes' shard counts.
#[test]
fn requests_reach_the_home_shard_that_owns_the_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca");
    init_ca(&ca, 1).expect("ca");
    for (requester_cores, home_cores) in [(2, 2), (1, 2), (2, 1)] {
        let membership = Membership::default();
        let link = |id: u64| {
            DataLink::new(security(
                &ca,
                &dir.path()
                    .join(format!("{requester_cores}{home_cores}-{id}")),
                id,
            ))
        };
        let a = TestNode::with_cores(1, &link(1), membership.clone(), 256, requester_cores);
        let b = TestNode::with_cores(2, &link(2), membership.clone(), 256, home_cores);
        // B is the only live node: the home of every block.
        let a_record = CacheNode {
            live: false,
            ..a.record()
        };
        membership.set(View::new(1, &[a_record, b.record()]));
        let ids: Vec<BlockId> = (0..64).map(|i| BlockId::new(5, i, 1 << 16)).collect();
        for &id in &ids {
            b.store.put(id, content(id));
        }
        // The first request of each of A's shards may go on a connection
        // to any of B's shards (B's shards are not known yet).
        for &id in &ids[..8] {
            assert_eq!(a.read(id).expect("read"), content(id));
        }
        let off = b.stats.served_off_shard.load(Ordering::Relaxed);
        assert!(off <= requester_cores as u64, "{off}");
        for &id in &ids[8..] {
            assert_eq!(a.read(id).expect("read"), content(id));
        }
        assert_eq!(
            b.stats.served_off_shard.load(Ordering::Relaxed),
            off,
            "{requester_cores} requesting shards, {home_cores} home shards"
        );
        assert_eq!(a.stats.hits.load(Ordering::Relaxed), ids.len() as u64);
    }
}

#[test]
fn a_failed_home_costs_a_store_read_never_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, mut b, _, at_b) = pair(dir.path(), 32);
    for &id in &at_b {
        a.store.put(id, content(id));
        b.store.put(id, content(id));
    }
    b.stop_serving();
    for &id in &at_b {
        assert_eq!(a.read(id).expect("from A's store"), content(id));
    }
    assert_eq!(a.store.fetches(), at_b.len() as u64);
    assert!(a.stats.fallbacks.load(Ordering::Relaxed) >= at_b.len() as u64);
    // A block missing at the home (and its store) is looked for below.
    let only_here = version(at_b[0], 7 << 16);
    a.store.put(only_here, content(only_here));
    assert_eq!(a.read(only_here).expect("below"), content(only_here));
}

#[test]
fn strangers_and_garbage_are_refused_and_the_service_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, _, at_b) = pair(dir.path(), 32);
    for &id in &at_b {
        b.store.put(id, content(id));
    }
    let addr = b.record().addr;
    // Plain TCP with garbage: the TLS handshake fails, nothing is served.
    let mut plain = std::net::TcpStream::connect(&addr).expect("connect");
    plain.write_all(&[0x5a; 512]).expect("write");
    let mut rest = Vec::new();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = plain.read_to_end(&mut rest);
    // A certificate of another CA is refused at the handshake.
    let other_ca = dir.path().join("other-ca");
    init_ca(&other_ca, 1).expect("ca");
    let stranger = security(&other_ca, &dir.path().join("stranger"), 1);
    let membership = Membership::default();
    let c = TestNode::start(1, &stranger, membership.clone());
    membership.set(View::new(1, &[c.record(), b.record()]));
    let id = at_b[0];
    c.store.put(id, content(id));
    assert_eq!(c.read(id).expect("its own store"), content(id));
    assert_eq!(
        c.stats.hits.load(Ordering::Relaxed),
        0,
        "B served no stranger"
    );
    // B counts a refusal when its side of the handshake ends, which may
    // be after the stranger's side gave up.
    for _ in 0..500 {
        if b.stats.refused.load(Ordering::Relaxed) >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        b.stats.refused.load(Ordering::Relaxed) >= 2,
        "{:?}",
        b.stats
    );
    // A node whose certificate names another id than the registry says
    // is not believed either: A expects node 2 at B's address.
    let (d_dir, ca) = (dir.path().join("n3"), dir.path().join("ca"));
    let impostor = TestNode::start(3, &security(&ca, &d_dir, 3), Membership::default());
    let forged = CacheNode {
        id: 2,
        addr: impostor.record().addr,
        cache_bytes: 1 << 30,
        live: true,
    };
    a.membership.set(View::new(2, &[a.record(), forged]));
    let other = at_b[1];
    impostor.store.put(other, vec![0xee; BLOCK]);
    a.store.put(other, content(other));
    assert_eq!(a.read(other).expect("from A's store"), content(other));
    assert_eq!(impostor.stats.served.load(Ordering::Relaxed), 0);
    // And the real home still serves, once the failed "node 2" is asked
    // again (its backoff).
    a.membership.set(View::new(3, &[a.record(), b.record()]));
    std::thread::sleep(Duration::from_millis(
        datenlord_cluster::neighbor::DOWN_BACKOFF_MIN_MS + 200,
    ));
    let third = at_b[2];
    assert_eq!(a.read(third).expect("through B"), content(third));
    assert!(a.stats.hits.load(Ordering::Relaxed) >= 1);
}

/// A version's low bits name the node that wrote it: a block neither its
/// home nor the store has (not uploaded yet) is asked of its writer, and
/// when the writer is gone the error names it.
#[test]
fn a_block_not_in_the_store_is_served_by_the_node_that_wrote_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, mut b, at_a, at_b) = pair(dir.path(), 32);
    let written_by = |id: BlockId, node: u64| BlockId::new(id.ino.0, id.index, (5 << 16) | node);
    // Homed at A, homed at B: B "wrote" both; only B holds them (its
    // store stands in for its journal).
    let (home_a, home_b) = (written_by(at_a[0], 2), written_by(at_b[0], 2));
    for id in [home_a, home_b] {
        b.store.put(id, content(id));
    }
    assert_eq!(a.read(home_a).expect("from the writer"), content(home_a));
    assert_eq!(
        a.read(home_b).expect("from the home, the writer"),
        content(home_b)
    );
    assert_eq!(a.stats.hits.load(Ordering::Relaxed), 2);
    // The writer gone, a block only it held fails, naming it.
    let lost = written_by(at_a[1], 2);
    b.store.put(lost, content(lost));
    b.stop_serving();
    let err = a.read(lost).expect_err("only the writer had it");
    assert!(err.to_string().contains("node 2"), "{err}");
    // A block nobody wrote (writer 0) is simply not found.
    let nobody = written_by(at_a[2], 0);
    assert!(matches!(
        a.read(nobody),
        Err(datenlord_engine::Error::NotFound(_))
    ));
}

/// A home reading a block that another node wrote, while a peer asks it
/// for the same block, makes one store read: the peer's request joins the
/// home's own fetch (asking the writer, if it came to that, cannot make
/// two nodes wait on each other).
#[test]
fn a_home_and_a_peer_reading_one_block_at_once_make_one_store_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, _, at_b) = pair(dir.path(), 32);
    // Written by A, homed at B, in B's store only (uploaded).
    let ids: Vec<BlockId> = at_b
        .iter()
        .map(|id| BlockId::new(id.ino.0, id.index, (6 << 16) | 1))
        .collect();
    for &id in &ids {
        b.store.put(id, content(id));
    }
    b.store.set_delay(Duration::from_millis(100));
    let (ha, hb) = (a.handle(), b.handle());
    let reads: Vec<_> = ids
        .iter()
        .flat_map(|&id| {
            [ha.clone(), hb.clone()].map(|h| {
                std::thread::spawn(move || {
                    block_on(h.read(id, 0, BLOCK as u32, Vec::new())).map(|(buf, _)| buf)
                })
            })
        })
        .collect();
    for (i, read) in reads.into_iter().enumerate() {
        let id = ids[i / 2];
        assert_eq!(read.join().expect("reader").expect("read"), content(id));
    }
    assert_eq!(
        b.store.fetches(),
        ids.len() as u64,
        "one store read per block"
    );
}

/// A small random read of a block the requester will not keep (its memory
/// is full of blocks as hot) moves only the bytes asked for; the home
/// keeps the whole block.
#[test]
fn a_small_read_the_requester_will_not_keep_moves_only_its_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca");
    init_ca(&ca, 1).expect("ca");
    let membership = Membership::default();
    // A: 2 cores, 2 blocks of memory each.
    let a = TestNode::with_memory(
        1,
        &DataLink::new(security(&ca, &dir.path().join("n1"), 1)),
        membership.clone(),
        4,
    );
    let b = TestNode::start(
        2,
        &security(&ca, &dir.path().join("n2"), 2),
        membership.clone(),
    );
    let view = View::new(1, &[a.record(), b.record()]);
    // Blocks of their own inodes (no stream), homed at B.
    let at_b: Vec<BlockId> = (0..400)
        .map(|ino| BlockId::new(1000 + ino, 0, 1 << 16))
        .filter(|&id| view.home(id).map(|h| h.0) == Some(2))
        .take(12)
        .collect();
    membership.set(view);
    for &id in &at_b {
        b.store.put(id, content(id));
    }
    // Whole reads fill A's memory.
    for &id in &at_b[..8] {
        assert_eq!(a.read(id).expect("whole"), content(id));
    }
    let served = b.stats.served_bytes.load(Ordering::Relaxed);
    for &id in &at_b[8..] {
        let (buf, n) = block_on(a.handle().read(id, 4096, 4096, Vec::new())).expect("a small read");
        assert_eq!(&buf[..n], &content(id)[4096..8192]);
    }
    let moved = b.stats.served_bytes.load(Ordering::Relaxed) - served;
    assert_eq!(moved, 4 * 4096, "only the bytes asked for crossed");
    // The home kept the whole blocks: reading them again costs no store read.
    let fetched = b.store.fetches();
    for &id in &at_b[8..] {
        let _ = b.read(id).expect("home");
    }
    assert_eq!(b.store.fetches(), fetched);
}

/// What a relay saw the far end send (the first MiB).
type Seen = Arc<std::sync::Mutex<Vec<u8>>>;

/// A TCP relay to `to` that flips one byte of what the far end sends back,
/// `at` bytes into the first connection (none with `None`; later
/// connections pass intact), and keeps what it relays back.
fn relay(to: std::net::SocketAddr, at: Option<usize>) -> (std::net::SocketAddr, Seen) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Seen::default();
    let kept = Arc::clone(&seen);
    std::thread::spawn(move || {
        let mut first = true;
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = std::net::TcpStream::connect(to) else {
                return;
            };
            let flip = at.filter(|_| std::mem::take(&mut first));
            let kept = Arc::clone(&kept);
            let (mut c_in, mut s_out) = (
                client.try_clone().expect("clone"),
                server.try_clone().expect("clone"),
            );
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut s_out);
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 16 << 10];
                let mut seen = 0usize;
                loop {
                    let n = match s_in.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if let Some(at) = flip.filter(|&at| (seen..seen + n).contains(&at)) {
                        buf[at - seen] ^= 0x40;
                    }
                    seen += n;
                    let mut kept = kept.lock().expect("kept");
                    if kept.len() < 1 << 20 {
                        kept.extend_from_slice(&buf[..n]);
                    }
                    drop(kept);
                    if c_out.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn contains(haystack: &Seen, needle: &[u8]) -> bool {
    let haystack = haystack.lock().expect("seen");
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn with_data_tls_off_on_both_ends_frames_go_in_clear_and_a_changed_byte_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca");
    init_ca(&ca, 1).expect("ca");
    let clear = |id: u64, data_tls: bool| DataLink {
        security: security(&ca, &dir.path().join(format!("n{id}")), id),
        data_tls,
        rdma: None,
    };
    let membership = Membership::default();
    let a = TestNode::with_memory(1, &clear(1, false), membership.clone(), 64);
    let b = TestNode::with_memory(2, &clear(2, false), membership.clone(), 64);
    let c = TestNode::with_memory(3, &clear(3, true), Membership::default(), 64);
    // B is reached through a relay that changes one byte of the first
    // block it sends (the handshake is a few KiB; a block is 64 KiB).
    let b_addr = b.server.as_ref().expect("serving").addr();
    let (relay_addr, seen) = relay(b_addr, Some(8 << 10));
    let through_relay = CacheNode {
        addr: relay_addr.to_string(),
        ..b.record()
    };
    let view = View::new(1, &[a.record(), through_relay]);
    let at_b: Vec<BlockId> = (0..64)
        .map(|index| BlockId::new(9, index, 1 << 16))
        .filter(|&id| view.home(id).map(|h| h.0) == Some(2))
        .take(6)
        .collect();
    membership.set(view);
    for &id in &at_b {
        a.store.put(id, content(id));
        b.store.put(id, content(id));
    }
    // The changed byte: a MAC failure, the connection closed, a store
    // read at A instead; never the changed bytes.
    assert_eq!(a.read(at_b[0]).expect("read"), content(at_b[0]));
    assert_eq!(a.stats.errors.load(Ordering::Relaxed), 1);
    assert_eq!(a.store.fetches(), 1);
    // After the backoff, a new connection: blocks come from B in clear.
    std::thread::sleep(Duration::from_millis(500));
    for &id in &at_b[1..] {
        assert_eq!(a.read(id).expect("read"), content(id));
    }
    assert_eq!(a.store.fetches(), 1, "the other blocks came from B");
    assert_eq!(a.stats.hits.load(Ordering::Relaxed), at_b.len() as u64 - 1);
    // The broken connection and its replacement, and one more for each
    // of B's shards the blocks belong to (connections go shard to shard):
    // each counted on both ends.
    let clear_b = b.stats.clear_connections.load(Ordering::Relaxed);
    assert_eq!(a.stats.clear_connections.load(Ordering::Relaxed), clear_b);
    assert!((2..=5).contains(&clear_b), "{clear_b} clear connections");
    let last = content(*at_b.last().expect("blocks"));
    assert!(contains(&seen, &last[1000..1100]), "blocks went in clear");
    // C keeps TLS on: its connections to B carry frames in TLS records.
    let (relay_addr, seen) = relay(b_addr, None);
    let through_relay = CacheNode {
        addr: relay_addr.to_string(),
        ..b.record()
    };
    c.membership.set(View::new(1, &[c.record(), through_relay]));
    for &id in &at_b {
        let id = version(id, 5 << 16);
        b.store.put(id, content(id));
    }
    let mut from_b = Vec::new();
    for &id in &at_b {
        let id = version(id, 5 << 16);
        if c.membership.get().home(id).map(|h| h.0) == Some(2) {
            assert_eq!(c.read(id).expect("read"), content(id));
            from_b.push(id);
        }
    }
    assert!(!from_b.is_empty(), "some block is homed at B");
    assert!(!seen.lock().expect("seen").is_empty());
    for &id in &from_b {
        assert!(!contains(&seen, &content(id)[1000..1100]), "in TLS");
    }
    assert_eq!(c.stats.hits.load(Ordering::Relaxed), from_b.len() as u64);
    assert_eq!(c.stats.clear_connections.load(Ordering::Relaxed), 0);
    assert_eq!(b.stats.clear_connections.load(Ordering::Relaxed), clear_b);
}

#[test]
fn an_administrator_may_order_warm_ups_but_not_read_blocks() {
    use datenlord_cluster::neighbor::conn::Conn;
    use datenlord_cluster::neighbor::warm::warm;
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, at_a, at_b) = pair(dir.path(), 32);
    for (node, ids) in [(&a, &at_a), (&b, &at_b)] {
        for &id in ids {
            node.store.put(id, content(id));
        }
    }
    let admin = admin_link(dir.path());
    let mut blocks: Vec<BlockId> = at_a.iter().chain(&at_b).copied().collect();
    // One block no store has: its home answers that it is missing.
    blocks.push(BlockId::new(77, 0, 1 << 16));
    let mut reports = 0;
    let report = warm(
        &b.membership.get(),
        &blocks,
        &admin,
        BLOCK as u32,
        &mut |_| reports += 1,
    )
    .expect("warm");
    assert!(reports >= 1, "progress is reported");
    assert_eq!(report.blocks, blocks.len() as u64);
    assert_eq!(report.warmed, blocks.len() as u64 - 1, "{report:?}");
    assert_eq!((report.missing, report.failed), (1, 0), "{report:?}");
    let warmed = |n: &TestNode| n.stats.warmed.load(Ordering::Relaxed);
    assert_eq!(warmed(&a) + warmed(&b), blocks.len() as u64 - 1);
    // The homes hold the blocks: reads of B's blocks on A cost B no store
    // read.
    let fetched = b.store.fetches();
    for &id in &at_b {
        assert_eq!(a.read(id).expect("from B"), content(id));
    }
    assert_eq!(b.store.fetches(), fetched);
    // An administrator's connection asking for bytes is closed.
    let refused = b.stats.refused.load(Ordering::Relaxed);
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 << 10)
        .make()
        .expect("executor");
    let addr = b.record().addr;
    let read = executor.run(async {
        let conn = Conn::open(2, &addr, &admin, BLOCK as u32)
            .await
            .expect("the handshake succeeds");
        conn.read(at_b[0], None, 5_000).await
    });
    assert!(read.is_err(), "an administrator reads no block");
    assert_eq!(b.stats.refused.load(Ordering::Relaxed), refused + 1);
}

#[test]
fn an_administrator_has_every_node_check_its_cache_against_the_store_and_a_node_may_not() {
    use datenlord_cluster::neighbor::check::verify_nodes;
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, at_a, at_b) = pair(dir.path(), 32);
    for (node, ids) in [(&a, &at_a), (&b, &at_b)] {
        for &id in ids {
            node.store.put(id, content(id));
        }
    }
    for &id in at_a.iter().chain(&at_b) {
        assert_eq!(a.read(id).expect("read"), content(id));
    }
    // B's store now holds other bytes for one of its blocks.
    let changed = at_b[0];
    b.store.put(changed, content(version(changed, 5)));
    let admin = admin_link(dir.path());
    let nodes = [(1, a.record().addr), (2, b.record().addr)];
    let checks = verify_nodes(&nodes, &admin, BLOCK as u32, 30_000).expect("check");
    let report = |node: usize| match &checks[node] {
        (_, Ok(report)) => *report,
        (id, Err(e)) => panic!("node {id}: {e}"),
    };
    // A's own blocks match its store; its copies of B's blocks are not in
    // A's store (each node has its own here): kept, counted apart.
    let (ra, rb) = (report(0), report(1));
    assert_eq!((ra.matched, ra.dropped()), (at_a.len() as u64, 0), "{ra:?}");
    assert_eq!(ra.blocks, ra.matched + ra.absent, "{ra:?}");
    assert_eq!(rb.blocks, at_b.len() as u64, "{rb:?}");
    assert_eq!((rb.matched, rb.mismatched), (rb.blocks - 1, 1), "{rb:?}");
    // B dropped its copy: the next read gets the store's bytes.
    assert_eq!(b.read(changed).expect("read"), content(version(changed, 5)));
    // A node may not have another node check its cache.
    let refused = b.stats.refused.load(Ordering::Relaxed);
    let node_link = DataLink::new(Security::from_dir(Some(&dir.path().join("n1"))).expect("load"));
    let checks = verify_nodes(&nodes[1..], &node_link, BLOCK as u32, 5_000).expect("check");
    assert!(checks[0].1.is_err(), "{checks:?}");
    assert_eq!(b.stats.refused.load(Ordering::Relaxed), refused + 1);
    // A stopped node is a failed check, not a hang.
    drop(b);
    let checks = verify_nodes(&nodes, &admin, BLOCK as u32, 5_000).expect("check");
    assert!(checks[0].1.is_ok() && checks[1].1.is_err(), "{checks:?}");
}

/// A seeded run of membership changes seen differently by each node
/// (joins, leaves, stale views, a registered node nobody answers at, a
/// node that stops serving) with reads of several versions of blocks: a
/// stale or wrong home costs a miss (a store read), never a wrong byte.
/// `DATENLORD_SEED` replays a run.
#[test]
fn a_seeded_run_of_joins_leaves_and_stale_views_serves_no_wrong_byte() {
    let seed: u64 = std::env::var("DATENLORD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0019);
    let mut state = seed;
    // SplitMix64: enough for picking steps.
    let mut next = move |bound: u64| {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % bound
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca");
    init_ca(&ca, 1).expect("ca");
    let mut nodes: Vec<TestNode> = (1..=3)
        .map(|id| {
            let security = security(&ca, &dir.path().join(format!("n{id}")), id);
            TestNode::with_memory(id, &DataLink::new(security), Membership::default(), 16)
        })
        .collect();
    let ghost = CacheNode {
        id: 9,
        addr: "127.0.0.1:1".into(),
        cache_bytes: 1 << 30,
        live: true,
    };
    let mut records: Vec<CacheNode> = nodes.iter().map(TestNode::record).collect();
    records.push(ghost);
    // Every store has every version: any fallback finds the bytes.
    let ids: Vec<BlockId> = (0..6)
        .flat_map(|ino| (0..4).map(move |index| (ino, index)))
        .flat_map(|(ino, index)| (1..=3).map(move |v| BlockId::new(600 + ino, index, v << 16)))
        .collect();
    for node in &nodes {
        for &id in &ids {
            node.store.put(id, content(id));
        }
    }
    let mut epoch = 1;
    for step in 0..300 {
        if step == 150 {
            // A node leaves for good; the others' views may still name it.
            nodes[2].stop_serving();
        }
        // One node's view changes: a random subset of the registry.
        if next(3) == 0 {
            let n = next(3) as usize;
            let view: Vec<CacheNode> = records.iter().filter(|_| next(3) != 0).cloned().collect();
            epoch += 1;
            nodes[n].membership.set(View::new(epoch, &view));
        }
        let reader = next(3) as usize;
        let id = ids[next(ids.len() as u64) as usize];
        let got = nodes[reader].read(id).unwrap_or_else(|e| {
            panic!("seed {seed} step {step}: read of {id} on node {reader}: {e}")
        });
        assert!(
            got == content(id),
            "seed {seed} step {step}: node {reader} read wrong bytes for {id}"
        );
    }
    let hits: u64 = nodes
        .iter()
        .map(|n| n.stats.hits.load(Ordering::Relaxed))
        .sum();
    assert!(hits > 0, "some reads were served by homes");
}

/// Node `id`'s link, on `fabric` when given (RDMA), TCP frames otherwise.
fn rdma_link(ca: &Path, dir: &Path, id: u64, fabric: Option<&MemFabric>) -> DataLink {
    DataLink {
        rdma: fabric.map(|f| Arc::new(f.clone()) as Arc<dyn Fabric>),
        ..DataLink::new(security(ca, &dir.join(format!("n{id}")), id))
    }
}

/// Node A and node B, the home of every block (A is not live).
fn a_asks_b(a: &TestNode, b: &TestNode) {
    let a_record = CacheNode {
        live: false,
        ..a.record()
    };
    a.membership.set(View::new(1, &[a_record, b.record()]));
}

fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Two nodes on one RDMA fabric (in memory: queue pairs between the two
/// engines' shard threads, checked like an HCA): a miss is asked of the
/// home over a queue pair, the home writes the block into the
/// requester's registered slot, and only the home reads its store. When
/// the fabric goes down the requester falls back to its store without an
/// error, and once the home's backoff ends a new queue pair serves again.
#[test]
fn over_rdma_the_home_writes_blocks_into_the_requesters_slots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca");
    init_ca(&ca, 1).expect("ca");
    let fabric = MemFabric::new();
    let membership = Membership::default();
    let link = |id| rdma_link(&ca, dir.path(), id, Some(&fabric));
    let a = TestNode::with_memory(1, &link(1), membership.clone(), 256);
    let b = TestNode::with_memory(2, &link(2), membership, 256);
    a_asks_b(&a, &b);
    let ids: Vec<BlockId> = (0..48).map(|i| BlockId::new(5, i, 1 << 16)).collect();
    for &id in &ids {
        b.store.put(id, content(id));
    }
    let handle = a.handle();
    let reads = ids
        .iter()
        .map(|&id| handle.read(id, 0, BLOCK as u32, Vec::new()));
    for (r, &id) in block_on(futures::future::join_all(reads))
        .into_iter()
        .zip(&ids)
    {
        assert_eq!(r.expect("read over RDMA").0, content(id));
    }
    assert_eq!(a.store.fetches(), 0, "A never needed its store");
    assert_eq!(b.store.fetches(), ids.len() as u64, "B read each once");
    assert_eq!(count(&a.stats.hits), ids.len() as u64);
    assert_eq!(count(&b.stats.served), ids.len() as u64);
    let made = count(&a.stats.rdma_connections);
    assert!(
        (1..=4).contains(&made),
        "one per requesting shard and home shard: {made}"
    );
    assert_eq!(
        count(&b.stats.rdma_connections),
        made,
        "B served each of them"
    );
    assert_eq!(count(&a.stats.clear_connections), 0);

    // The fabric goes down: reads fall back to A's store, no error.
    fabric.cut();
    let later: Vec<BlockId> = (100..108).map(|i| BlockId::new(5, i, 1 << 16)).collect();
    for &id in &later {
        a.store.put(id, content(id));
        b.store.put(id, content(id));
    }
    for &id in &later {
        assert_eq!(a.read(id).expect("from A's store"), content(id));
    }
    assert!(count(&a.stats.fallbacks) >= 1);
    assert!(count(&a.stats.errors) >= 1, "the cut queue pair failed");
    // After the backoff a new queue pair (made after the cut) serves.
    std::thread::sleep(Duration::from_millis(
        datenlord_cluster::neighbor::DOWN_BACKOFF_MIN_MS * 2,
    ));
    let again: Vec<BlockId> = (200..208).map(|i| BlockId::new(5, i, 1 << 16)).collect();
    for &id in &again {
        b.store.put(id, content(id));
    }
    let fetched = a.store.fetches();
    for &id in &again {
        assert_eq!(a.read(id).expect("over RDMA again"), content(id));
    }
    assert_eq!(a.store.fetches(), fetched, "the home served them");
    assert!(count(&a.stats.rdma_connections) > made, "a new queue pair");
}

/// A node with an RDMA fabric asks a node without one over TCP frames
/// (the home refuses the RDMA handshake's ALPN name), and a node without
/// one asks a node with one over TCP frames too.
#[test]
fn a_node_without_rdma_is_asked_and_asks_over_tcp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca");
    init_ca(&ca, 1).expect("ca");
    let fabric = MemFabric::new();
    for (a_has, b_has) in [(true, false), (false, true)] {
        let sub = dir.path().join(format!("{a_has}-{b_has}"));
        let on = |has: bool| has.then_some(&fabric);
        let membership = Membership::default();
        let a = TestNode::with_memory(
            1,
            &rdma_link(&ca, &sub, 1, on(a_has)),
            membership.clone(),
            64,
        );
        let b = TestNode::with_memory(2, &rdma_link(&ca, &sub, 2, on(b_has)), membership, 64);
        a_asks_b(&a, &b);
        let ids: Vec<BlockId> = (0..16).map(|i| BlockId::new(6, i, 1 << 16)).collect();
        for &id in &ids {
            b.store.put(id, content(id));
        }
        for &id in &ids {
            assert_eq!(a.read(id).expect("over TCP"), content(id));
        }
        assert_eq!(a.store.fetches(), 0, "{a_has} {b_has}");
        assert_eq!(count(&a.stats.hits), ids.len() as u64);
        assert_eq!(count(&a.stats.rdma_connections), 0);
        assert_eq!(count(&b.stats.rdma_connections), 0);
        assert_eq!(count(&a.stats.errors), 0, "RDMA refused is no read error");
    }
}

/// An administrator's certificate gets no RDMA connection (it may only
/// order warm-ups, over TCP): the home refuses the handshake.
#[test]
fn an_administrator_gets_no_rdma_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca");
    init_ca(&ca, 1).expect("ca");
    let fabric = MemFabric::new();
    let b = TestNode::with_memory(
        2,
        &rdma_link(&ca, dir.path(), 2, Some(&fabric)),
        Membership::default(),
        64,
    );
    let admin = DataLink {
        rdma: Some(Arc::new(fabric.clone()) as Arc<dyn Fabric>),
        ..admin_link(dir.path())
    };
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 << 10)
        .make()
        .expect("executor");
    let addr = b.record().addr;
    let opened = executor.run(async {
        datenlord_cluster::neighbor::rdma::link::open(2, &addr, &admin, ROUTE_ANY, BLOCK as u32)
            .await
            .map(|_| ())
    });
    assert!(opened.is_err(), "refused");
    assert_eq!(count(&b.stats.refused), 1);
    assert_eq!(count(&b.stats.rdma_connections), 0);
}
