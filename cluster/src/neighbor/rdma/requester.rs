//! The requesting end of an RDMA connection. Sans IO: the caller posts
//! with [`Requester::start`], and drives completions and deadlines with
//! [`Requester::progress`] on its own clock.
//!
//! Memory, registered once per connection: per credit, a request buffer
//! (SEND source), an answer buffer (a posted receive) and a landing slot
//! of `block_max` bytes the home may RDMA-WRITE. A request takes a credit:
//! its SEND names that credit's slot; the home writes the payload there,
//! then SENDs the answer header. Exactly `credits` receives stay posted and
//! at most `credits` requests are out, so an answer always finds a
//! receive. A credit is free again once both its SEND completed and its
//! answer came (the completion queue orders neither before the other).
//!
//! Anything wrong breaks the connection, for every request on it: an
//! error completion (the queue pair is then in the error state), a header
//! that fails validation, an answer to no outstanding request, about
//! another block, longer than the slot, or failing its checksum. A request
//! past its deadline breaks it too: the home may still write that slot
//! later, so it is never handed to another request. The caller then falls
//! back (the store) and makes a new connection, as with TCP.

use std::collections::HashMap;

use datenlord_engine::BlockId;

use super::verbs::{Completion, Opcode, Region, RemoteSlot, Verbs, WcStatus};
use super::wire::{decode_header, encode_request, ANSWER_BYTES, REQUEST_BYTES};
use super::{Params, RdmaError, POLL_BATCH};
use crate::neighbor::conn::NeighborError;
use crate::neighbor::frame::{Header, Kind};

/// An answer handed back: the block's bytes (checked against their
/// checksum), or why not.
pub type Answer = Result<Vec<u8>, NeighborError>;

const WR_SEND: u64 = 1 << 32;
const WR_RECV: u64 = 2 << 32;
const WR_INDEX: u64 = (1 << 32) - 1;

#[derive(Debug)]
struct Pending {
    credit: u16,
    id: BlockId,
    max_len: u32,
    deadline_ms: u64,
    timeout_ms: u64,
}

/// The requesting end of one RDMA connection.
#[derive(Debug)]
pub struct Requester<V: Verbs> {
    qp: V,
    params: Params,
    requests: Region,
    answers: Region,
    slots: Region,
    /// The slots as the home names them.
    landing: RemoteSlot,
    free: Vec<u16>,
    /// Credits whose SEND has not completed yet.
    sending: Vec<bool>,
    pending: HashMap<u64, Pending>,
    next_request: u64,
    broken: Option<NeighborError>,
    completions: Vec<Completion>,
}

impl<V: Verbs> Requester<V> {
    /// Registers the connection's memory on `qp` and posts its receives.
    pub fn new(mut qp: V, params: Params) -> Result<Self, RdmaError> {
        let credits = usize::from(params.credits);
        let block = params.block_max as usize;
        let requests = qp.register(credits * REQUEST_BYTES, false)?;
        let answers = qp.register(credits * ANSWER_BYTES, false)?;
        let slots = qp.register(credits * block, true)?;
        let landing = qp.remote(slots).ok_or_else(|| {
            RdmaError::Protocol("the landing slots are not remotely writable".into())
        })?;
        for i in 0..credits {
            qp.post_recv(WR_RECV | i as u64, answers, i * ANSWER_BYTES, ANSWER_BYTES)?;
        }
        Ok(Self {
            landing,
            qp,
            params,
            requests,
            answers,
            slots,
            free: (0..params.credits).rev().collect(),
            sending: vec![false; credits],
            pending: HashMap::new(),
            next_request: 1,
            broken: None,
            completions: Vec::with_capacity(POLL_BATCH),
        })
    }

    /// The landing slots, as the home must be told (the handshake).
    pub fn landing(&self) -> RemoteSlot {
        self.landing
    }

    /// Requests that may start now.
    pub fn credits_free(&self) -> usize {
        self.free.len()
    }

    /// Requests out.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Why the connection broke, once it did.
    pub fn broken(&self) -> Option<&NeighborError> {
        self.broken.as_ref()
    }

    /// The queue pair (tests make it misbehave through it).
    pub fn qp(&self) -> &V {
        &self.qp
    }

    /// Asks for a block version (`range`: only `(offset, len)` of it), to
    /// be answered by `now_ms + timeout_ms`; the request's number. Needs a
    /// free credit ([`Self::credits_free`]).
    pub fn start(
        &mut self,
        id: BlockId,
        range: Option<(u32, u32)>,
        now_ms: u64,
        timeout_ms: u64,
    ) -> Result<u64, NeighborError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        let Some(credit) = self.free.pop() else {
            return Err(NeighborError::Io("no free RDMA credit".into()));
        };
        let (offset, len) = range.unwrap_or((0, 0));
        let request = self.next_request;
        self.next_request = request.wrapping_add(1).max(1);
        let header = Header::read_range(request, [id.ino.0, id.index, id.version], offset, len);
        let i = usize::from(credit);
        let block = self.params.block_max;
        let slot_len = if len == 0 { block } else { len.min(block) };
        let slot = RemoteSlot {
            addr: self.landing.addr + u64::from(credit) * u64::from(block),
            rkey: self.landing.rkey,
            len: slot_len,
        };
        let bytes = encode_request(&header, slot);
        let posted = self
            .qp
            .store(self.requests, i * REQUEST_BYTES, &bytes)
            .and_then(|()| {
                self.qp.post_send(
                    WR_SEND | u64::from(credit),
                    self.requests,
                    i * REQUEST_BYTES,
                    REQUEST_BYTES,
                )
            });
        if let Err(e) = posted {
            self.free.push(credit);
            let e = NeighborError::Io(format!("posting an RDMA request: {e}"));
            self.break_with(e.clone());
            return Err(e);
        }
        self.sending[i] = true;
        self.pending.insert(
            request,
            Pending {
                credit,
                id,
                max_len: slot_len,
                deadline_ms: now_ms.saturating_add(timeout_ms),
                timeout_ms,
            },
        );
        Ok(request)
    }

    /// Handles what completed and what is past its deadline at `now_ms`;
    /// the requests that ended, with their answers.
    pub fn progress(&mut self, now_ms: u64) -> Vec<(u64, Answer)> {
        let mut done = Vec::new();
        if self.broken.is_some() {
            return done;
        }
        loop {
            self.completions.clear();
            let n = match self.qp.poll(&mut self.completions, POLL_BATCH) {
                Ok(n) => n,
                Err(e) => {
                    self.break_with(io(&e));
                    done.extend(self.drain_pending());
                    return done;
                }
            };
            let completions = std::mem::take(&mut self.completions);
            for c in &completions {
                if let Err(e) = self.complete(c, &mut done) {
                    self.completions = completions;
                    self.break_with(e);
                    done.extend(self.drain_pending());
                    return done;
                }
            }
            self.completions = completions;
            if n == 0 {
                break;
            }
        }
        if let Some(p) = self.pending.values().find(|p| p.deadline_ms <= now_ms) {
            // Its slot may still be written: the connection goes.
            self.break_with(NeighborError::Timeout(p.timeout_ms));
            done.extend(self.drain_pending());
        }
        done
    }

    fn complete(
        &mut self,
        c: &Completion,
        done: &mut Vec<(u64, Answer)>,
    ) -> Result<(), NeighborError> {
        if c.status != WcStatus::Success {
            return Err(NeighborError::Io(format!(
                "an RDMA {:?} completed with {:?}",
                c.opcode, c.status
            )));
        }
        let index = (c.wr_id & WR_INDEX) as usize;
        match (c.opcode, c.wr_id & !WR_INDEX) {
            (Opcode::Send, WR_SEND) if index < self.sending.len() => {
                self.sending[index] = false;
                self.release(index);
                Ok(())
            }
            (Opcode::Recv, WR_RECV) if index < usize::from(self.params.credits) => {
                let (request, answer) = self.answered(index, c.byte_len)?;
                done.push((request, answer));
                Ok(())
            }
            _ => Err(NeighborError::Io(format!(
                "an RDMA completion of no request: {c:?}"
            ))),
        }
    }

    /// A free credit once its SEND completed and its answer came.
    fn release(&mut self, index: usize) {
        let answered = !self
            .pending
            .values()
            .any(|p| usize::from(p.credit) == index);
        if answered && !self.sending[index] {
            self.free.push(index as u16);
        }
    }

    /// An answer landed in receive `index`: check it, repost the receive.
    fn answered(&mut self, index: usize, byte_len: u32) -> Result<(u64, Answer), NeighborError> {
        if byte_len as usize != ANSWER_BYTES {
            return Err(NeighborError::Io(format!(
                "an RDMA answer of {byte_len} bytes (they have {ANSWER_BYTES})"
            )));
        }
        let mut bytes = [0u8; ANSWER_BYTES];
        let at = index * ANSWER_BYTES;
        self.qp
            .load(self.answers, at, &mut bytes)
            .map_err(|e| io(&e))?;
        self.qp
            .post_recv(WR_RECV | index as u64, self.answers, at, ANSWER_BYTES)
            .map_err(|e| io(&e))?;
        let header = decode_header(&bytes, self.params.block_max)?;
        let Some(p) = self.pending.remove(&header.request) else {
            return Err(NeighborError::Io(format!(
                "an RDMA answer to request {}, which is not outstanding",
                header.request
            )));
        };
        match self.answer(&p, &header) {
            Ok(answer) => {
                self.release(usize::from(p.credit));
                Ok((header.request, answer))
            }
            Err(e) => {
                // Broken: the request fails with every other one.
                self.pending.insert(header.request, p);
                Err(e)
            }
        }
    }

    /// The answer's payload from its slot, checked; an error for a broken
    /// peer.
    fn answer(&self, p: &Pending, header: &Header) -> Result<Answer, NeighborError> {
        let id = BlockId::new(header.ino, header.index, header.block_version);
        let fits = matches!(header.kind, Kind::Block | Kind::Missing | Kind::Failed);
        if id != p.id || header.len > p.max_len || !fits {
            return Err(NeighborError::Io(format!(
                "answered {:?} of block {id} ({} bytes) to a request for {} (at most {} bytes)",
                header.kind, header.len, p.id, p.max_len
            )));
        }
        let mut payload = vec![0u8; header.len as usize];
        let at = usize::from(p.credit) * self.params.block_max as usize;
        self.qp
            .load(self.slots, at, &mut payload)
            .map_err(|e| io(&e))?;
        Ok(match header.kind {
            Kind::Block => {
                header.check(&payload)?;
                Ok(payload)
            }
            Kind::Missing => Err(NeighborError::Missing),
            _ => Err(NeighborError::Failed(
                String::from_utf8_lossy(&payload).into_owned(),
            )),
        })
    }

    fn break_with(&mut self, e: NeighborError) {
        if self.broken.is_none() {
            self.qp.shut();
            self.broken = Some(e);
        }
    }

    fn drain_pending(&mut self) -> Vec<(u64, Answer)> {
        let e = self
            .broken
            .clone()
            .unwrap_or_else(|| NeighborError::Io("the RDMA connection failed".into()));
        let mut ended: Vec<_> = self
            .pending
            .drain()
            .map(|(r, _)| (r, Err(e.clone())))
            .collect();
        ended.sort_by_key(|(r, _)| *r);
        ended
    }

    /// Closes the connection: every outstanding request fails.
    pub fn close(&mut self) -> Vec<(u64, Answer)> {
        self.break_with(NeighborError::Io("the RDMA connection was closed".into()));
        self.drain_pending()
    }
}

fn io(e: &super::verbs::VerbsError) -> NeighborError {
    NeighborError::Io(e.to_string())
}

impl<V: super::handshake::Endpoint> Requester<V> {
    /// Connects the queue pair to the home's; the home takes `credits`
    /// requests at once (its hello, checked), so no more go out.
    pub fn connect(
        &mut self,
        home: &super::handshake::QpAddr,
        credits: u16,
    ) -> Result<(), RdmaError> {
        self.qp.connect(home)?;
        self.free.retain(|&c| c < credits);
        Ok(())
    }
}
