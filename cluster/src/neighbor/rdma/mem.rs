//! The verbs in memory: RC queue pairs between ends in one process (on
//! any threads), checked like an HCA checks them, for the transport's
//! tests and for nodes of one test process ([`MemFabric`]).
//!
//! Work requests execute when posted (the peer's memory and completion
//! queue change at once), which keeps the order an RC queue pair
//! guarantees. Like an HCA: a WRITE with a wrong rkey or outside the
//! peer's region completes `RemoteAccess` and puts both ends in the
//! error state; a SEND with no receive posted completes
//! `ReceiverNotReady` (the queue pair is made with finite RNR retries),
//! one longer than the receive `LocalLength` at the receiver; an end in
//! the error state flushes its posted receives and whatever is posted
//! after. A test can make it misbehave through [`MemControl`]: fail the
//! next work request with a status, drop completions, or cut the wire.
//!
//! Each end has its own lock and no operation holds two at once, so ends
//! on different threads never wait on each other for long.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use super::fabric::{Fabric, Qp, ShardFabric};
use super::handshake::{Endpoint, QpAddr, QPN_MAX};
use super::verbs::{
    in_region, Completion, Opcode, Region, RemoteSlot, Verbs, VerbsError, WcStatus, WrId,
};
use super::RdmaError;

/// Where the first region's fake address starts.
const ADDR_BASE: u64 = 0x7f00_0000_0000;
/// Most bytes one end may register (a test's limit, not an HCA's).
pub const REGISTERED_MAX_BYTES: usize = 1 << 30;

/// Fake addresses, unique in the process.
static NEXT_ADDR: AtomicU64 = AtomicU64::new(ADDR_BASE);
/// Remote keys, unique in the process (until they wrap).
static NEXT_RKEY: AtomicU32 = AtomicU32::new(0x1d00);

#[derive(Debug)]
struct MemRegion {
    bytes: Vec<u8>,
    addr: u64,
    rkey: Option<u32>,
}

#[derive(Debug, Default)]
struct End {
    regions: Vec<MemRegion>,
    registered_bytes: usize,
    recvs: VecDeque<(WrId, Region, std::ops::Range<usize>)>,
    cq: VecDeque<Completion>,
    error: bool,
    /// Nothing more reaches this end or leaves it.
    cut: bool,
    fail_next: Option<WcStatus>,
    drop_completions: usize,
}

impl End {
    fn complete(&mut self, wr_id: WrId, opcode: Opcode, status: WcStatus, byte_len: u32) {
        if self.drop_completions > 0 {
            self.drop_completions -= 1;
            return;
        }
        self.cq.push_back(Completion {
            wr_id,
            opcode,
            status,
            byte_len,
        });
    }

    /// The error state: posted receives are flushed.
    fn fail(&mut self) {
        self.error = true;
        while let Some((wr_id, _, _)) = self.recvs.pop_front() {
            self.complete(wr_id, Opcode::Recv, WcStatus::Flushed, 0);
        }
    }

    fn region(&self, region: Region) -> Result<&MemRegion, VerbsError> {
        self.regions
            .get(region.0 as usize)
            .ok_or_else(|| VerbsError::Resource(format!("no region {region:?}")))
    }

    fn local(
        &self,
        region: Region,
        offset: usize,
        len: usize,
    ) -> Result<std::ops::Range<usize>, VerbsError> {
        in_region(region, offset, len, self.region(region)?.bytes.len())
    }

    /// The peer-named window `addr..addr + len` under `rkey`, if one of
    /// this end's remotely writable regions holds all of it.
    fn remote_window(&self, addr: u64, rkey: u32, len: usize) -> Option<(usize, usize)> {
        self.regions.iter().enumerate().find_map(|(i, r)| {
            if r.rkey != Some(rkey) {
                return None;
            }
            let start = usize::try_from(addr.checked_sub(r.addr)?).ok()?;
            in_region(Region(i as u32), start, len, r.bytes.len())
                .ok()
                .map(|_| (i, start))
        })
    }

    /// Takes `data` from a peer: a WRITE to `to`, or a SEND (`to: None`)
    /// into the first posted receive; the status of the poster's
    /// completion.
    fn take(&mut self, data: &[u8], to: Option<RemoteSlot>) -> WcStatus {
        if self.error || self.cut {
            // An end in the error state (or cut off) acknowledges nothing.
            return WcStatus::RetryExceeded;
        }
        if let Some(to) = to {
            let Some((i, start)) = self.remote_window(to.addr, to.rkey, data.len()) else {
                self.fail();
                return WcStatus::RemoteAccess;
            };
            self.regions[i].bytes[start..start + data.len()].copy_from_slice(data);
            return WcStatus::Success;
        }
        let Some((wr_id, region, range)) = self.recvs.pop_front() else {
            return WcStatus::ReceiverNotReady;
        };
        if data.len() > range.len() {
            self.complete(wr_id, Opcode::Recv, WcStatus::LocalLength, 0);
            self.fail();
            return WcStatus::RemoteInvalidRequest;
        }
        let at = range.start;
        self.regions[region.0 as usize].bytes[at..at + data.len()].copy_from_slice(data);
        self.complete(wr_id, Opcode::Recv, WcStatus::Success, data.len() as u32);
        WcStatus::Success
    }
}

type Shared = Arc<Mutex<End>>;

fn lock(end: &Mutex<End>) -> MutexGuard<'_, End> {
    end.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Queue pairs in memory that ends find each other in by queue pair
/// number, across threads: the fabric of nodes in one test process.
#[derive(Clone, Debug, Default)]
pub struct MemFabric(Arc<Registry>);

#[derive(Debug, Default)]
struct Registry {
    ends: Mutex<HashMap<u32, Weak<Mutex<End>>>>,
    next_qpn: AtomicU32,
}

impl MemFabric {
    /// A new, empty fabric.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new end, not connected yet.
    pub fn endpoint(&self) -> MemQp {
        let end: Shared = Arc::new(Mutex::new(End::default()));
        // Queue pairs 0 and 1 are the management ones.
        let qpn = 2 + self.0.next_qpn.fetch_add(1, Ordering::Relaxed) % (QPN_MAX - 1);
        let mut ends = self.0.ends.lock().unwrap_or_else(PoisonError::into_inner);
        ends.retain(|_, e| e.strong_count() > 0);
        ends.insert(qpn, Arc::downgrade(&end));
        MemQp {
            me: end,
            peer: None,
            peer_qpn: None,
            qpn,
            fabric: self.clone(),
        }
    }

    /// Cuts every end made so far: nothing more reaches or leaves them
    /// (their next SEND or WRITE completes `RetryExceeded`), as when a
    /// link goes down. Ends made afterwards work.
    pub fn cut(&self) {
        let ends = self.0.ends.lock().unwrap_or_else(PoisonError::into_inner);
        for end in ends.values().filter_map(Weak::upgrade) {
            lock(&end).cut = true;
        }
    }

    fn find(&self, qpn: u32) -> Option<Shared> {
        let ends = self.0.ends.lock().unwrap_or_else(PoisonError::into_inner);
        ends.get(&qpn).and_then(Weak::upgrade)
    }
}

impl Fabric for MemFabric {
    fn name(&self) -> String {
        "in-memory RDMA fabric".into()
    }

    fn open(&self) -> Result<Rc<dyn ShardFabric>, RdmaError> {
        Ok(Rc::new(self.clone()))
    }
}

impl ShardFabric for MemFabric {
    fn endpoint(&self) -> Result<Qp, RdmaError> {
        Ok(Box::new(Self::endpoint(self)))
    }
}

/// One end of an in-memory RC queue pair.
#[derive(Debug)]
pub struct MemQp {
    me: Shared,
    peer: Option<Shared>,
    /// The peer's queue pair number, once connected.
    peer_qpn: Option<u32>,
    qpn: u32,
    fabric: MemFabric,
}

/// A test's hold on one end: makes it misbehave.
#[derive(Debug, Clone)]
pub struct MemControl {
    me: Shared,
    peer: Option<Shared>,
}

impl MemQp {
    /// Two connected ends.
    pub fn pair() -> (Self, Self) {
        let fabric = MemFabric::new();
        let (mut a, mut b) = (fabric.endpoint(), fabric.endpoint());
        let (a_addr, b_addr) = (a.addr(), b.addr());
        a.connect(&b_addr)
            .and_then(|()| b.connect(&a_addr))
            .unwrap_or_else(|e| unreachable!("two fresh ends connect: {e}"));
        (a, b)
    }

    /// A handle to make this end misbehave.
    pub fn control(&self) -> MemControl {
        MemControl {
            me: Arc::clone(&self.me),
            peer: self.peer.clone(),
        }
    }

    /// Posts a SEND (`to: None`) or a WRITE.
    fn post_out(
        &mut self,
        wr_id: WrId,
        region: Region,
        offset: usize,
        len: usize,
        to: Option<RemoteSlot>,
    ) -> Result<(), VerbsError> {
        let opcode = if to.is_some() {
            Opcode::Write
        } else {
            Opcode::Send
        };
        let mut end = lock(&self.me);
        let range = end.local(region, offset, len)?;
        let status = if end.error {
            WcStatus::Flushed
        } else if let Some(status) = end.fail_next.take() {
            status
        } else if end.cut {
            WcStatus::RetryExceeded
        } else {
            let data = end.regions[region.0 as usize].bytes[range].to_vec();
            drop(end);
            let status = match &self.peer {
                Some(peer) => lock(peer).take(&data, to),
                None => WcStatus::RemoteInvalidRequest,
            };
            end = lock(&self.me);
            status
        };
        end.complete(wr_id, opcode, status, 0);
        if status != WcStatus::Success {
            end.fail();
        }
        Ok(())
    }
}

impl Verbs for MemQp {
    fn register(&mut self, len: usize, remote: bool) -> Result<Region, VerbsError> {
        let mut end = lock(&self.me);
        let registered = end.registered_bytes.saturating_add(len);
        if registered > REGISTERED_MAX_BYTES {
            return Err(VerbsError::Resource(format!(
                "registering {len} bytes: more than {REGISTERED_MAX_BYTES} in all"
            )));
        }
        // Page-aligned fake addresses with a gap, so off-by-one addresses
        // fall outside every region.
        let addr =
            NEXT_ADDR.fetch_add((len as u64).div_ceil(4096) * 4096 + 4096, Ordering::Relaxed);
        let rkey = remote.then(|| NEXT_RKEY.fetch_add(7, Ordering::Relaxed));
        end.registered_bytes = registered;
        end.regions.push(MemRegion {
            bytes: vec![0; len],
            addr,
            rkey,
        });
        Ok(Region(end.regions.len() as u32 - 1))
    }

    fn remote(&self, region: Region) -> Option<RemoteSlot> {
        let end = lock(&self.me);
        let r = end.regions.get(region.0 as usize)?;
        Some(RemoteSlot {
            addr: r.addr,
            rkey: r.rkey?,
            len: u32::try_from(r.bytes.len()).ok()?,
        })
    }

    fn load(&self, region: Region, offset: usize, out: &mut [u8]) -> Result<(), VerbsError> {
        let end = lock(&self.me);
        let range = end.local(region, offset, out.len())?;
        out.copy_from_slice(&end.region(region)?.bytes[range]);
        Ok(())
    }

    fn store(&mut self, region: Region, offset: usize, data: &[u8]) -> Result<(), VerbsError> {
        let mut end = lock(&self.me);
        let range = end.local(region, offset, data.len())?;
        end.regions[region.0 as usize].bytes[range].copy_from_slice(data);
        Ok(())
    }

    fn post_recv(
        &mut self,
        wr_id: WrId,
        region: Region,
        offset: usize,
        len: usize,
    ) -> Result<(), VerbsError> {
        let mut end = lock(&self.me);
        let range = end.local(region, offset, len)?;
        if end.error {
            end.complete(wr_id, Opcode::Recv, WcStatus::Flushed, 0);
        } else {
            end.recvs.push_back((wr_id, region, range));
        }
        Ok(())
    }

    fn post_send(
        &mut self,
        wr_id: WrId,
        region: Region,
        offset: usize,
        len: usize,
    ) -> Result<(), VerbsError> {
        self.post_out(wr_id, region, offset, len, None)
    }

    fn post_write(
        &mut self,
        wr_id: WrId,
        region: Region,
        offset: usize,
        len: usize,
        to: RemoteSlot,
    ) -> Result<(), VerbsError> {
        self.post_out(wr_id, region, offset, len, Some(to))
    }

    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> Result<usize, VerbsError> {
        let mut end = lock(&self.me);
        let n = max.min(end.cq.len());
        out.extend(end.cq.drain(..n));
        Ok(n)
    }

    fn shut(&mut self) {
        lock(&self.me).fail();
    }
}

impl Drop for MemQp {
    /// A destroyed queue pair acknowledges nothing more.
    fn drop(&mut self) {
        lock(&self.me).fail();
    }
}

impl MemControl {
    /// The next SEND or WRITE this end posts completes with `status`
    /// (and puts this end in the error state).
    pub fn fail_next(&self, status: WcStatus) {
        lock(&self.me).fail_next = Some(status);
    }

    /// The next `n` completions of this end are lost.
    pub fn drop_completions(&self, n: usize) {
        lock(&self.me).drop_completions = n;
    }

    /// Cuts the wire: nothing more reaches either end (their next SEND or
    /// WRITE completes `RetryExceeded`; posted receives wait forever).
    pub fn cut(&self) {
        lock(&self.me).cut = true;
        if let Some(peer) = &self.peer {
            lock(peer).cut = true;
        }
    }

    /// Whether this end is in the error state.
    pub fn is_error(&self) -> bool {
        lock(&self.me).error
    }

    /// Receives this end has posted and not yet had filled.
    pub fn recvs_posted(&self) -> usize {
        lock(&self.me).recvs.len()
    }
}

impl Endpoint for MemQp {
    fn addr(&self) -> QpAddr {
        QpAddr {
            qpn: self.qpn,
            psn: 0x42,
            lid: 0,
            gid: [0; 16],
            mtu: 5,
        }
    }

    /// Connects to the fabric's end with the peer's queue pair number
    /// (it must still exist); an end already connected (a pair) only
    /// checks it is its peer's address.
    fn connect(&mut self, peer: &QpAddr) -> Result<(), RdmaError> {
        if let Some(connected) = self.peer_qpn {
            return if connected == peer.qpn {
                Ok(())
            } else {
                Err(RdmaError::Handshake(format!(
                    "connecting to {peer:?}, which is not this pair's other end"
                )))
            };
        }
        let found = self
            .fabric
            .find(peer.qpn)
            .filter(|p| !Arc::ptr_eq(p, &self.me));
        let Some(end) = found else {
            return Err(RdmaError::Handshake(format!(
                "connecting to {peer:?}: no such queue pair on this fabric"
            )));
        };
        self.peer = Some(end);
        self.peer_qpn = Some(peer.qpn);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(qp: &mut MemQp) -> Vec<Completion> {
        let mut out = Vec::new();
        qp.poll(&mut out, 64).expect("poll");
        out
    }

    #[test]
    fn sends_land_in_posted_receives_in_order_and_writes_need_the_rkey() {
        let (mut a, mut b) = MemQp::pair();
        let src = a.register(64, false).expect("register");
        let dst = b.register(64, true).expect("register");
        a.store(src, 0, b"hello world").expect("store");
        b.post_recv(1, dst, 0, 8).expect("recv");
        b.post_recv(2, dst, 8, 8).expect("recv");
        a.post_send(10, src, 0, 5).expect("send");
        a.post_send(11, src, 6, 5).expect("send");
        let got = drain(&mut b);
        assert_eq!(got.iter().map(|c| c.wr_id).collect::<Vec<_>>(), [1, 2]);
        assert!(got
            .iter()
            .all(|c| c.status == WcStatus::Success && c.byte_len == 5));
        let mut out = [0u8; 13];
        b.load(dst, 0, &mut out).expect("load");
        assert_eq!(&out, b"hello\0\0\0world");

        let to = b.remote(dst).expect("remote");
        a.post_write(
            12,
            src,
            0,
            11,
            RemoteSlot {
                addr: to.addr + 54,
                ..to
            },
        )
        .expect("write");
        let sent = drain(&mut a);
        assert_eq!(sent.last().map(|c| c.status), Some(WcStatus::RemoteAccess));
        assert!(a.control().is_error() && b.control().is_error());
        a.post_send(13, src, 0, 1).expect("post");
        assert_eq!(drain(&mut a)[0].status, WcStatus::Flushed);
    }

    #[test]
    fn a_wrong_rkey_a_missing_receive_and_a_short_receive_are_errors() {
        let (mut a, mut b) = MemQp::pair();
        let src = a.register(64, false).expect("register");
        let dst = b.register(64, true).expect("register");
        let to = b.remote(dst).expect("remote");
        a.post_write(
            1,
            src,
            0,
            8,
            RemoteSlot {
                rkey: to.rkey ^ 1,
                ..to
            },
        )
        .expect("write");
        assert_eq!(drain(&mut a)[0].status, WcStatus::RemoteAccess);

        let (mut a, mut b) = MemQp::pair();
        let src = a.register(64, false).expect("register");
        let dst = b.register(64, false).expect("register");
        assert_eq!(b.remote(dst), None);
        a.post_send(1, src, 0, 8).expect("send");
        assert_eq!(drain(&mut a)[0].status, WcStatus::ReceiverNotReady);

        let (mut a, mut b) = MemQp::pair();
        let src = a.register(64, false).expect("register");
        let dst = b.register(64, false).expect("register");
        b.post_recv(7, dst, 0, 4).expect("recv");
        a.post_send(1, src, 0, 8).expect("send");
        assert_eq!(drain(&mut b)[0].status, WcStatus::LocalLength);
        assert!(
            a.post_send(2, src, 60, 8).is_err(),
            "outside the local region"
        );
    }
}
