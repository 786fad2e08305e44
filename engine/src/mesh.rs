//! Messages between shards over the glommio channel mesh, and the table of
//! requests waiting for a peer's reply. A forwarded request allocates nothing:
//! its reply slot comes from a preallocated table and buffers travel inside
//! the messages.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use glommio::channels::channel_mesh::Senders;
use glommio::sync::Semaphore;

use crate::block::{BlockId, ShardId};
use crate::error::{Error, Result};
use crate::prefetch::StreamId;
use crate::shard::ReadHint;
use crate::stats::ShardStats;
use crate::verify::VerifyReport;

/// Depth of each shard-to-shard channel.
pub const MESH_CHANNEL_DEPTH: usize = 1024;
/// Requests one shard may have outstanding at its peers.
pub const FORWARDED_INFLIGHT_MAX: usize = 4096;

/// Work a shard does as the owner of a block.
#[derive(Debug)]
pub enum Op {
    /// Read `len` bytes at `offset` of a block into `buf`.
    Read {
        /// The block.
        id: BlockId,
        /// Byte offset in the block.
        offset: u32,
        /// Bytes wanted.
        len: u32,
        /// Caller's buffer, returned filled.
        buf: Vec<u8>,
        /// What the caller's stream detector decided.
        hint: ReadHint,
    },
    /// Cache a block written by a client.
    Insert {
        /// The block.
        id: BlockId,
        /// Its bytes; returned for reuse.
        data: Vec<u8>,
    },
    /// Fetch a block ahead of a sequential reader (one way).
    Prefetch {
        /// The stream it belongs to.
        stream: StreamId,
        /// The block.
        id: BlockId,
    },
    /// A stream stopped: drop its queued prefetches (one way).
    Cancel {
        /// The stream.
        stream: StreamId,
    },
    /// Copy of the shard's counters.
    Stats,
    /// Check the shard's cached blocks against the source.
    Verify,
}

/// What an [`Op`] returns.
#[derive(Debug)]
pub enum Reply {
    /// Filled buffer and the number of valid bytes in it.
    Read {
        /// The caller's buffer.
        buf: Vec<u8>,
        /// Valid bytes.
        len: usize,
    },
    /// The inserted bytes, for reuse.
    Inserted {
        /// The caller's buffer.
        buf: Vec<u8>,
    },
    /// Counters.
    Stats(Box<ShardStats>),
    /// What a check of the cached blocks found.
    Verified(VerifyReport),
    /// One-way ops.
    Done,
}

/// A message on the mesh.
#[derive(Debug)]
pub enum MeshMsg {
    /// A request expecting a reply tagged `tag`.
    Request {
        /// Reply slot at the sender.
        tag: u32,
        /// The work.
        op: Op,
    },
    /// A request without reply.
    OneWay(Op),
    /// The answer to a request.
    Reply {
        /// The sender's reply slot.
        tag: u32,
        /// The outcome.
        result: Result<Reply>,
    },
}

#[derive(Debug)]
enum Slot {
    Free,
    /// Sent to `peer`; `abandoned` when the caller gave up waiting.
    Waiting {
        peer: ShardId,
        waker: Option<Waker>,
        abandoned: bool,
    },
    Done(Result<Reply>),
}

/// This shard's end of the mesh.
pub struct Peers {
    me: ShardId,
    senders: Senders<MeshMsg>,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u32>>,
    room: Semaphore,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl Peers {
    /// Wraps the mesh senders of shard `me`.
    pub fn new(me: ShardId, senders: Senders<MeshMsg>) -> Self {
        Self {
            me,
            senders,
            slots: RefCell::new((0..FORWARDED_INFLIGHT_MAX).map(|_| Slot::Free).collect()),
            free: RefCell::new((0..FORWARDED_INFLIGHT_MAX as u32).rev().collect()),
            room: Semaphore::new(FORWARDED_INFLIGHT_MAX as u64),
        }
    }

    fn release(&self, tag: u32) {
        self.slots.borrow_mut()[tag as usize] = Slot::Free;
        self.free.borrow_mut().push(tag);
    }

    /// Sends `op` to `peer` and waits for its reply.
    pub async fn call(self: &Rc<Self>, peer: ShardId, op: Op) -> Result<Reply> {
        debug_assert_ne!(peer, self.me);
        let _permit = self
            .room
            .acquire_permit(1)
            .await
            .map_err(|_| Error::ShutDown)?;
        let tag = self.free.borrow_mut().pop().ok_or(Error::ShutDown)?;
        self.slots.borrow_mut()[tag as usize] = Slot::Waiting {
            peer,
            waker: None,
            abandoned: false,
        };
        // Frees the slot if this call is dropped at any point below.
        let mut waiting = ReplyFuture {
            peers: Rc::clone(self),
            tag,
            sent: false,
            done: false,
        };
        if self
            .senders
            .send_to(peer.index(), MeshMsg::Request { tag, op })
            .await
            .is_err()
        {
            waiting.done = true;
            self.release(tag);
            return Err(Error::ShutDown);
        }
        waiting.sent = true;
        waiting.await
    }

    /// A peer's executor stopped: its outstanding replies will never come.
    pub fn peer_gone(&self, gone: ShardId) {
        let mut slots = self.slots.borrow_mut();
        for (tag, slot) in slots.iter_mut().enumerate() {
            let Slot::Waiting {
                peer,
                waker,
                abandoned,
            } = slot
            else {
                continue;
            };
            if *peer != gone {
                continue;
            }
            if *abandoned {
                *slot = Slot::Free;
                self.free.borrow_mut().push(tag as u32);
            } else {
                if let Some(w) = waker.take() {
                    w.wake();
                }
                *slot = Slot::Done(Err(Error::ShutDown));
            }
        }
    }

    /// Sends a reply to `peer`.
    pub async fn reply(&self, peer: ShardId, tag: u32, result: Result<Reply>) {
        // A peer that stopped no longer waits for anything.
        let _ = self
            .senders
            .send_to(peer.index(), MeshMsg::Reply { tag, result })
            .await;
    }

    /// Sends a one-way op without waiting for room: best effort (prefetch
    /// hints may be dropped under load). Returns whether it was queued.
    pub fn try_send(&self, peer: ShardId, op: Op) -> bool {
        self.senders
            .try_send_to(peer.index(), MeshMsg::OneWay(op))
            .is_ok()
    }

    /// Sends a one-way op, waiting for room.
    pub async fn send(&self, peer: ShardId, op: Op) -> bool {
        self.senders
            .send_to(peer.index(), MeshMsg::OneWay(op))
            .await
            .is_ok()
    }

    /// A reply arrived for `tag`.
    pub fn complete(&self, tag: u32, result: Result<Reply>) {
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.get_mut(tag as usize) else {
            return;
        };
        let Slot::Waiting {
            waker, abandoned, ..
        } = slot
        else {
            return;
        };
        if *abandoned {
            *slot = Slot::Free;
            self.free.borrow_mut().push(tag);
            return;
        }
        if let Some(w) = waker.take() {
            w.wake();
        }
        *slot = Slot::Done(result);
    }

    /// Closes the mesh: peers' receive loops end.
    pub fn close(&self) {
        self.senders.close();
    }
}

struct ReplyFuture {
    peers: Rc<Peers>,
    tag: u32,
    /// Whether the request left: until then nothing can answer it.
    sent: bool,
    done: bool,
}

impl Future for ReplyFuture {
    type Output = Result<Reply>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Reply>> {
        let tag = self.tag;
        let mut slots = self.peers.slots.borrow_mut();
        match std::mem::replace(&mut slots[tag as usize], Slot::Free) {
            Slot::Waiting {
                peer, abandoned, ..
            } => {
                slots[tag as usize] = Slot::Waiting {
                    peer,
                    waker: Some(cx.waker().clone()),
                    abandoned,
                };
                Poll::Pending
            }
            Slot::Done(result) => {
                drop(slots);
                self.peers.free.borrow_mut().push(tag);
                self.done = true;
                Poll::Ready(result)
            }
            Slot::Free => {
                drop(slots);
                self.done = true;
                Poll::Ready(Err(Error::ShutDown))
            }
        }
    }
}

impl Drop for ReplyFuture {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if !self.sent {
            self.peers.release(self.tag);
            return;
        }
        // The caller gave up: free the slot now if the reply is in,
        // otherwise when it arrives (or its peer goes away).
        let mut slots = self.peers.slots.borrow_mut();
        match &mut slots[self.tag as usize] {
            Slot::Waiting {
                abandoned, waker, ..
            } => {
                *abandoned = true;
                *waker = None;
            }
            Slot::Done(_) => {
                slots[self.tag as usize] = Slot::Free;
                drop(slots);
                self.peers.free.borrow_mut().push(self.tag);
            }
            Slot::Free => {}
        }
    }
}
