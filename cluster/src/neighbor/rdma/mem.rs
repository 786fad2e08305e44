//! The verbs in memory: the two ends of one RC queue pair in one process,
//! checked like an HCA checks them, for the transport's tests.
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

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use super::verbs::{
    in_region, Completion, Opcode, Region, RemoteSlot, Verbs, VerbsError, WcStatus, WrId,
};

/// Where the first region's fake address starts.
const ADDR_BASE: u64 = 0x7f00_0000_0000;
/// Most bytes one end may register (a test's limit, not an HCA's).
pub const REGISTERED_MAX_BYTES: usize = 1 << 30;

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
}

#[derive(Debug)]
struct Wire {
    ends: [End; 2],
    cut: bool,
    next_addr: u64,
    next_rkey: u32,
}

/// One end of an in-memory RC queue pair.
#[derive(Debug)]
pub struct MemQp {
    wire: Rc<RefCell<Wire>>,
    me: usize,
}

/// A test's hold on one end: makes it misbehave.
#[derive(Debug, Clone)]
pub struct MemControl {
    wire: Rc<RefCell<Wire>>,
    me: usize,
}

impl MemQp {
    /// Two connected ends.
    pub fn pair() -> (Self, Self) {
        let wire = Rc::new(RefCell::new(Wire {
            ends: [End::default(), End::default()],
            cut: false,
            next_addr: ADDR_BASE,
            next_rkey: 0x1d00,
        }));
        (
            Self {
                wire: Rc::clone(&wire),
                me: 0,
            },
            Self { wire, me: 1 },
        )
    }

    /// A handle to make this end misbehave.
    pub fn control(&self) -> MemControl {
        MemControl {
            wire: Rc::clone(&self.wire),
            me: self.me,
        }
    }

    /// Runs a WRITE or a SEND at the peer; the status of the poster's
    /// completion and the bytes received.
    fn deliver(
        wire: &mut Wire,
        me: usize,
        opcode: Opcode,
        data: &[u8],
        to: Option<RemoteSlot>,
    ) -> WcStatus {
        if wire.cut {
            return WcStatus::RetryExceeded;
        }
        let peer = &mut wire.ends[1 - me];
        if peer.error {
            // An end in the error state acknowledges nothing.
            return WcStatus::RetryExceeded;
        }
        if let Some(to) = to {
            let Some((i, start)) = peer.remote_window(to.addr, to.rkey, data.len()) else {
                peer.fail();
                return WcStatus::RemoteAccess;
            };
            peer.regions[i].bytes[start..start + data.len()].copy_from_slice(data);
            return WcStatus::Success;
        }
        debug_assert_eq!(opcode, Opcode::Send);
        let Some((wr_id, region, range)) = peer.recvs.pop_front() else {
            return WcStatus::ReceiverNotReady;
        };
        if data.len() > range.len() {
            peer.complete(wr_id, Opcode::Recv, WcStatus::LocalLength, 0);
            peer.fail();
            return WcStatus::RemoteInvalidRequest;
        }
        let at = range.start;
        peer.regions[region.0 as usize].bytes[at..at + data.len()].copy_from_slice(data);
        peer.complete(wr_id, Opcode::Recv, WcStatus::Success, data.len() as u32);
        WcStatus::Success
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
        let mut wire = self.wire.borrow_mut();
        let opcode = if to.is_some() {
            Opcode::Write
        } else {
            Opcode::Send
        };
        let range = wire.ends[self.me].local(region, offset, len)?;
        let end = &mut wire.ends[self.me];
        let status = if end.error {
            WcStatus::Flushed
        } else if let Some(status) = end.fail_next.take() {
            status
        } else {
            let data = end.regions[region.0 as usize].bytes[range].to_vec();
            Self::deliver(&mut wire, self.me, opcode, &data, to)
        };
        let end = &mut wire.ends[self.me];
        end.complete(wr_id, opcode, status, 0);
        if status != WcStatus::Success {
            end.fail();
        }
        Ok(())
    }
}

impl Verbs for MemQp {
    fn register(&mut self, len: usize, remote: bool) -> Result<Region, VerbsError> {
        let mut wire = self.wire.borrow_mut();
        let registered = wire.ends[self.me].registered_bytes.saturating_add(len);
        if registered > REGISTERED_MAX_BYTES {
            return Err(VerbsError::Resource(format!(
                "registering {len} bytes: more than {REGISTERED_MAX_BYTES} in all"
            )));
        }
        let addr = wire.next_addr;
        // Page-aligned fake addresses with a gap, so off-by-one addresses
        // fall outside every region.
        wire.next_addr += (len as u64).div_ceil(4096) * 4096 + 4096;
        let rkey = remote.then(|| {
            wire.next_rkey = wire.next_rkey.wrapping_mul(31).wrapping_add(7);
            wire.next_rkey
        });
        let end = &mut wire.ends[self.me];
        end.registered_bytes = registered;
        end.regions.push(MemRegion {
            bytes: vec![0; len],
            addr,
            rkey,
        });
        Ok(Region(end.regions.len() as u32 - 1))
    }

    fn remote(&self, region: Region) -> Option<RemoteSlot> {
        let wire = self.wire.borrow();
        let r = wire.ends[self.me].regions.get(region.0 as usize)?;
        Some(RemoteSlot {
            addr: r.addr,
            rkey: r.rkey?,
            len: u32::try_from(r.bytes.len()).ok()?,
        })
    }

    fn load(&self, region: Region, offset: usize, out: &mut [u8]) -> Result<(), VerbsError> {
        let wire = self.wire.borrow();
        let end = &wire.ends[self.me];
        let range = end.local(region, offset, out.len())?;
        out.copy_from_slice(&end.region(region)?.bytes[range]);
        Ok(())
    }

    fn store(&mut self, region: Region, offset: usize, data: &[u8]) -> Result<(), VerbsError> {
        let mut wire = self.wire.borrow_mut();
        let end = &mut wire.ends[self.me];
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
        let mut wire = self.wire.borrow_mut();
        let end = &mut wire.ends[self.me];
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
        let mut wire = self.wire.borrow_mut();
        let cq = &mut wire.ends[self.me].cq;
        let n = max.min(cq.len());
        out.extend(cq.drain(..n));
        Ok(n)
    }

    fn shut(&mut self) {
        self.wire.borrow_mut().ends[self.me].fail();
    }
}

impl MemControl {
    /// The next SEND or WRITE this end posts completes with `status`
    /// (and puts this end in the error state).
    pub fn fail_next(&self, status: WcStatus) {
        self.wire.borrow_mut().ends[self.me].fail_next = Some(status);
    }

    /// The next `n` completions of this end are lost.
    pub fn drop_completions(&self, n: usize) {
        self.wire.borrow_mut().ends[self.me].drop_completions = n;
    }

    /// Cuts the wire: nothing more reaches either end (their next SEND or
    /// WRITE completes `RetryExceeded`; posted receives wait forever).
    pub fn cut(&self) {
        self.wire.borrow_mut().cut = true;
    }

    /// Whether this end is in the error state.
    pub fn is_error(&self) -> bool {
        self.wire.borrow().ends[self.me].error
    }

    /// Receives this end has posted and not yet had filled.
    pub fn recvs_posted(&self) -> usize {
        self.wire.borrow().ends[self.me].recvs.len()
    }
}

impl super::handshake::Endpoint for MemQp {
    fn addr(&self) -> super::handshake::QpAddr {
        super::handshake::QpAddr {
            qpn: 0x100 + self.me as u32,
            psn: 0x42,
            lid: 0,
            gid: [0; 16],
            mtu: 5,
        }
    }

    /// The pair is wired from the start; connecting checks the peer's
    /// address is its own end's, as the handshake must have passed it.
    fn connect(&mut self, peer: &super::handshake::QpAddr) -> Result<(), super::RdmaError> {
        let other = Self {
            wire: Rc::clone(&self.wire),
            me: 1 - self.me,
        };
        if *peer != super::handshake::Endpoint::addr(&other) {
            return Err(super::RdmaError::Handshake(format!(
                "connecting to {peer:?}, which is not this pair's other end"
            )));
        }
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
