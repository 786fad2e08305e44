//! The serving end (the home) of an RDMA connection. Sans IO: the caller
//! takes requests with [`Home::poll`], reads the blocks however it reads
//! them, and hands each answer to [`Home::answer`].
//!
//! Every request is checked before anything is done for it: its header
//! as a TCP frame's (magic, version, kind, lengths, range within a
//! block), then its slot against the landing region the requester
//! announced in the handshake (the same rkey; the whole slot inside the
//! region; exactly the bytes the request may be answered with: the range,
//! or a block). A request that fails any check breaks the connection (the
//! TCP path closes it too); nothing from the peer indexes memory unchecked.
//!
//! An answer's payload is copied into a staging buffer of this end's
//! registered memory, RDMA-WRITten to the request's slot, and the answer
//! header SENT after it on the same queue pair: the requester sees the
//! header only once the payload is in place. A staging buffer is free
//! again when both completed. Requests beyond the free buffers wait in
//! arrival order (at most `credits`: the receives posted bound them).

use std::collections::VecDeque;

use super::verbs::{Completion, Opcode, Region, RemoteSlot, Verbs, WcStatus};
use super::wire::{decode_request, ANSWER_BYTES, REQUEST_BYTES};
use super::{Params, RdmaError, POLL_BATCH};
use crate::neighbor::frame::{message_bytes, Header, Kind};

const WR_RECV: u64 = 1 << 32;
const WR_WRITE: u64 = 2 << 32;
const WR_SEND: u64 = 3 << 32;
const WR_INDEX: u64 = (1 << 32) - 1;

/// A checked request, holding a staging buffer until it is answered.
#[derive(Debug)]
pub struct Request {
    /// Its header (a `Read`, validated).
    pub header: Header,
    slot: RemoteSlot,
    staging: u16,
}

/// What a request is answered with.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// The bytes asked for (at most the slot's length).
    Block(&'a [u8]),
    /// The block is nowhere.
    Missing,
    /// Reading it failed.
    Failed(&'a str),
}

/// The serving end of one RDMA connection.
#[derive(Debug)]
pub struct Home<V: Verbs> {
    qp: V,
    params: Params,
    peer: RemoteSlot,
    requests: Region,
    staging: Region,
    answers: Region,
    free: Vec<u16>,
    /// Completions each staging buffer still waits for.
    busy: Vec<u8>,
    parked: VecDeque<(Header, RemoteSlot)>,
    broken: Option<RdmaError>,
    completions: Vec<Completion>,
}

impl<V: Verbs> Home<V> {
    /// Registers the connection's memory on `qp` and posts its receives;
    /// `peer` is the landing region the requester announced.
    pub fn new(mut qp: V, params: Params, peer: RemoteSlot) -> Result<Self, RdmaError> {
        let credits = usize::from(params.credits);
        let requests = qp.register(credits * REQUEST_BYTES, false)?;
        let staging = qp.register(credits * params.block_max as usize, false)?;
        let answers = qp.register(credits * ANSWER_BYTES, false)?;
        for i in 0..credits {
            qp.post_recv(
                WR_RECV | i as u64,
                requests,
                i * REQUEST_BYTES,
                REQUEST_BYTES,
            )?;
        }
        Ok(Self {
            qp,
            params,
            peer,
            requests,
            staging,
            answers,
            free: (0..params.credits).rev().collect(),
            busy: vec![0; credits],
            parked: VecDeque::new(),
            broken: None,
            completions: Vec::with_capacity(POLL_BATCH),
        })
    }

    /// Why the connection broke, once it did.
    pub fn broken(&self) -> Option<&RdmaError> {
        self.broken.as_ref()
    }

    /// The queue pair (tests make it misbehave through it).
    pub fn qp(&self) -> &V {
        &self.qp
    }

    /// The requests that arrived and have a staging buffer; an error once
    /// the connection broke (it is then of no further use).
    pub fn poll(&mut self) -> Result<Vec<Request>, RdmaError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        loop {
            self.completions.clear();
            let n = match self.qp.poll(&mut self.completions, POLL_BATCH) {
                Ok(n) => n,
                Err(e) => return Err(self.break_with(e.into())),
            };
            let completions = std::mem::take(&mut self.completions);
            let handled = completions.iter().try_for_each(|c| self.complete(c));
            self.completions = completions;
            if let Err(e) = handled {
                return Err(self.break_with(e));
            }
            if n == 0 {
                break;
            }
        }
        let mut ready = Vec::new();
        while !self.free.is_empty() {
            let Some((header, slot)) = self.parked.pop_front() else {
                break;
            };
            let staging = self.free.pop().unwrap_or_default();
            ready.push(Request {
                header,
                slot,
                staging,
            });
        }
        Ok(ready)
    }

    fn complete(&mut self, c: &Completion) -> Result<(), RdmaError> {
        if c.status != WcStatus::Success {
            return Err(RdmaError::Completion(c.opcode, c.status));
        }
        let index = (c.wr_id & WR_INDEX) as usize;
        if index >= usize::from(self.params.credits) {
            return Err(RdmaError::Protocol(format!(
                "a completion of no request: {c:?}"
            )));
        }
        match (c.opcode, c.wr_id & !WR_INDEX) {
            (Opcode::Recv, WR_RECV) => self.arrived(index, c.byte_len),
            (Opcode::Write, WR_WRITE) | (Opcode::Send, WR_SEND) if self.busy[index] > 0 => {
                self.busy[index] -= 1;
                if self.busy[index] == 0 {
                    self.free.push(index as u16);
                }
                Ok(())
            }
            _ => Err(RdmaError::Protocol(format!(
                "a completion of no request: {c:?}"
            ))),
        }
    }

    /// A request landed in receive `index`: check it, park it, repost.
    fn arrived(&mut self, index: usize, byte_len: u32) -> Result<(), RdmaError> {
        if byte_len as usize != REQUEST_BYTES {
            return Err(RdmaError::Protocol(format!(
                "an RDMA request of {byte_len} bytes (they have {REQUEST_BYTES})"
            )));
        }
        let mut bytes = [0u8; REQUEST_BYTES];
        let at = index * REQUEST_BYTES;
        self.qp.load(self.requests, at, &mut bytes)?;
        self.qp
            .post_recv(WR_RECV | index as u64, self.requests, at, REQUEST_BYTES)?;
        let (header, slot) = decode_request(&bytes, self.params.block_max)?;
        if header.kind != Kind::Read {
            return Err(RdmaError::Protocol(format!(
                "a {:?} frame by RDMA (only reads go this way; warm-up orders go by TCP)",
                header.kind
            )));
        }
        check_slot(&header, slot, self.peer, self.params.block_max)?;
        if self.parked.len() >= usize::from(self.params.credits) {
            return Err(RdmaError::Protocol("more requests than credits".into()));
        }
        self.parked.push_back((header, slot));
        Ok(())
    }

    /// Answers `request`: the payload by RDMA WRITE to its slot, then the
    /// header by SEND.
    // Taken by value: a request is answered once (its staging buffer).
    #[allow(clippy::needless_pass_by_value)]
    pub fn answer(&mut self, request: Request, outcome: Outcome<'_>) -> Result<(), RdmaError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        let Request {
            header,
            slot,
            staging,
        } = request;
        let posted = self.post_answer(&header, slot, staging, outcome);
        posted.map_err(|e| self.break_with(e))
    }

    fn post_answer(
        &mut self,
        request: &Header,
        slot: RemoteSlot,
        staging: u16,
        outcome: Outcome<'_>,
    ) -> Result<(), RdmaError> {
        let slot_len = slot.len as usize;
        let (kind, payload) = match outcome {
            Outcome::Block(data) if data.len() <= slot_len => (Kind::Block, data),
            Outcome::Block(data) => {
                return Err(RdmaError::Protocol(format!(
                    "a {}-byte answer for a {slot_len}-byte slot",
                    data.len()
                )))
            }
            Outcome::Missing => (Kind::Missing, &[][..]),
            Outcome::Failed(message) => {
                let bytes = message_bytes(message);
                (Kind::Failed, &bytes[..bytes.len().min(slot_len)])
            }
        };
        let i = usize::from(staging);
        let header = Header::answer(request, kind, payload);
        let mut waits = 1;
        if !payload.is_empty() {
            let at = i * self.params.block_max as usize;
            self.qp.store(self.staging, at, payload)?;
            let to = RemoteSlot {
                len: payload.len() as u32,
                ..slot
            };
            self.qp
                .post_write(WR_WRITE | i as u64, self.staging, at, payload.len(), to)?;
            waits += 1;
        }
        self.busy[i] = waits;
        self.qp
            .store(self.answers, i * ANSWER_BYTES, &header.encode().0)?;
        self.qp.post_send(
            WR_SEND | i as u64,
            self.answers,
            i * ANSWER_BYTES,
            ANSWER_BYTES,
        )?;
        Ok(())
    }

    fn break_with(&mut self, e: RdmaError) -> RdmaError {
        if self.broken.is_none() {
            self.qp.shut();
            self.broken = Some(e.clone());
        }
        e
    }
}

/// Checks a request's slot against the landing region `peer` announced:
/// its rkey, the first byte of one of the region's slots (a block each),
/// inside the region, and exactly the bytes the request may be answered
/// with.
fn check_slot(
    header: &Header,
    slot: RemoteSlot,
    peer: RemoteSlot,
    block_max: u32,
) -> Result<(), RdmaError> {
    let wanted = if header.range == 0 {
        block_max
    } else {
        header.range
    };
    let end = slot.addr.checked_add(u64::from(slot.len));
    let region_end = peer.addr.checked_add(u64::from(peer.len));
    let aligned = slot
        .addr
        .checked_sub(peer.addr)
        .is_some_and(|at| at % u64::from(block_max) == 0);
    let inside = aligned && matches!((end, region_end), (Some(e), Some(r)) if e <= r);
    if slot.rkey != peer.rkey || !inside || slot.len != wanted {
        return Err(RdmaError::Protocol(format!(
            "request {} names slot {:#x}+{} (rkey {:#x}) for {wanted} bytes, not a slot of its landing region {:#x}+{} (rkey {:#x}) or of another length",
            header.request, slot.addr, slot.len, slot.rkey, peer.addr, peer.len, peer.rkey
        )));
    }
    Ok(())
}
