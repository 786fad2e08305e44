//! What the RDMA transport needs of the verbs: one reliable-connected
//! (RC) queue pair with its completion queue and its registered memory.
//!
//! The guarantees written against are the ones an RC queue pair gives,
//! and only those:
//! - work requests posted on one queue (send or receive) complete in the
//!   order they were posted, and each completion names its work request
//!   by the id the poster chose;
//! - a SEND lands in the receive the peer posted first; no posted receive
//!   (or one too small) is an error, never a silent drop;
//! - an RDMA WRITE followed by a SEND on the same queue pair is placed in
//!   the peer's memory before the peer sees that SEND's completion;
//! - a remote access names a region by its remote key (rkey) and must
//!   fall inside it, or it completes with an error status;
//! - any error completion puts the queue pair in the error state: what
//!   was posted after it completes [`WcStatus::Flushed`], nothing more
//!   reaches the peer, and the pair is not used again.
//!
//! Nothing here says *when* a completion arrives: the transport gives
//! every request a deadline.

/// A work request's id, chosen by the poster, returned in its completion.
pub type WrId = u64;

/// A memory region registered with the queue pair's protection domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Region(pub u32);

/// A window of a peer's registered memory, as the peer announced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteSlot {
    /// Its first byte's address in the peer's address space.
    pub addr: u64,
    /// The peer region's remote key.
    pub rkey: u32,
    /// Its bytes.
    pub len: u32,
}

/// What a completed work request was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    /// A SEND this end posted.
    Send,
    /// A receive this end posted (a peer's SEND landed in it).
    Recv,
    /// An RDMA WRITE this end posted.
    Write,
}

/// A completion's status (the subset of `ibv_wc_status` the transport
/// tells apart; everything else is [`WcStatus::Other`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WcStatus {
    /// Done.
    Success,
    /// A local buffer outside its region, or a wrong local key.
    LocalProtection,
    /// A received SEND longer than the posted receive.
    LocalLength,
    /// The peer refused a remote access (wrong rkey, out of bounds).
    RemoteAccess,
    /// The peer found the request invalid.
    RemoteInvalidRequest,
    /// The peer had no receive posted for a SEND, for every retry.
    ReceiverNotReady,
    /// The peer did not acknowledge (gone, link down).
    RetryExceeded,
    /// Posted after the queue pair went to the error state.
    Flushed,
    /// Any other status (its `ibv_wc_status` number).
    Other(u32),
}

/// One entry of the completion queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The id the work request was posted with.
    pub wr_id: WrId,
    /// What it was.
    pub opcode: Opcode,
    /// How it ended.
    pub status: WcStatus,
    /// Bytes received (receives only).
    pub byte_len: u32,
}

/// A verb the queue pair refused at once (nothing was posted).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerbsError {
    /// The queue pair is in the error state.
    #[error("the RDMA queue pair is in the error state")]
    QpError,
    /// A local buffer outside its registered region.
    #[error("bytes {offset}+{len} are outside local region {region:?} of {size} bytes")]
    OutOfRegion {
        /// The region.
        region: Region,
        /// First byte asked for.
        offset: usize,
        /// Bytes asked for.
        len: usize,
        /// The region's size.
        size: usize,
    },
    /// Registering memory, or another resource, failed.
    #[error("{0}")]
    Resource(String),
    /// More work requests than the queue holds.
    #[error("the RDMA work queue is full")]
    QueueFull,
}

/// One end of an RC queue pair, connected to its peer, with its
/// completion queue and the memory it registered.
pub trait Verbs {
    /// Registers `len` zeroed bytes; `remote` lets the peer write them
    /// (RDMA WRITE), else only local use (sources of SENDs and WRITEs,
    /// targets of receives).
    fn register(&mut self, len: usize, remote: bool) -> Result<Region, VerbsError>;

    /// What the peer must name to reach `region` (its first byte's
    /// address, its rkey, its length); `None` for a region the peer may
    /// not write.
    fn remote(&self, region: Region) -> Option<RemoteSlot>;

    /// Copies `out.len()` bytes at `offset` of `region` out, for the CPU.
    /// The transport reads a region's bytes only when no posted work
    /// request covers them (after the completion that filled them).
    fn load(&self, region: Region, offset: usize, out: &mut [u8]) -> Result<(), VerbsError>;

    /// Copies `data` to `offset` of `region`, before posting it.
    fn store(&mut self, region: Region, offset: usize, data: &[u8]) -> Result<(), VerbsError>;

    /// Posts a receive into `len` bytes at `offset` of `region`.
    fn post_recv(
        &mut self,
        wr_id: WrId,
        region: Region,
        offset: usize,
        len: usize,
    ) -> Result<(), VerbsError>;

    /// Posts a SEND of `len` bytes at `offset` of `region`.
    fn post_send(
        &mut self,
        wr_id: WrId,
        region: Region,
        offset: usize,
        len: usize,
    ) -> Result<(), VerbsError>;

    /// Posts an RDMA WRITE of `len` bytes at `offset` of `region` to the
    /// peer's memory at `to.addr` under `to.rkey` (`to.len` is not sent:
    /// the caller checked `len <= to.len`).
    fn post_write(
        &mut self,
        wr_id: WrId,
        region: Region,
        offset: usize,
        len: usize,
        to: RemoteSlot,
    ) -> Result<(), VerbsError>;

    /// Moves up to `max` completions to `out`; how many it took from the
    /// queue (0: none waiting); an error when the queue cannot be read
    /// (the pair is then of no further use).
    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> Result<usize, VerbsError>;

    /// Puts the queue pair in the error state (closing: the peer's next
    /// operations fail).
    fn shut(&mut self);
}

/// A boxed end (of whatever fabric made it) is an end.
impl<T: Verbs + ?Sized> Verbs for Box<T> {
    fn register(&mut self, len: usize, remote: bool) -> Result<Region, VerbsError> {
        (**self).register(len, remote)
    }

    fn remote(&self, region: Region) -> Option<RemoteSlot> {
        (**self).remote(region)
    }

    fn load(&self, region: Region, offset: usize, out: &mut [u8]) -> Result<(), VerbsError> {
        (**self).load(region, offset, out)
    }

    fn store(&mut self, region: Region, offset: usize, data: &[u8]) -> Result<(), VerbsError> {
        (**self).store(region, offset, data)
    }

    fn post_recv(
        &mut self,
        wr_id: WrId,
        region: Region,
        offset: usize,
        len: usize,
    ) -> Result<(), VerbsError> {
        (**self).post_recv(wr_id, region, offset, len)
    }

    fn post_send(
        &mut self,
        wr_id: WrId,
        region: Region,
        offset: usize,
        len: usize,
    ) -> Result<(), VerbsError> {
        (**self).post_send(wr_id, region, offset, len)
    }

    fn post_write(
        &mut self,
        wr_id: WrId,
        region: Region,
        offset: usize,
        len: usize,
        to: RemoteSlot,
    ) -> Result<(), VerbsError> {
        (**self).post_write(wr_id, region, offset, len, to)
    }

    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> Result<usize, VerbsError> {
        (**self).poll(out, max)
    }

    fn shut(&mut self) {
        (**self).shut();
    }
}

/// Checks `offset + len` against a region of `size` bytes.
pub(crate) fn in_region(
    region: Region,
    offset: usize,
    len: usize,
    size: usize,
) -> Result<std::ops::Range<usize>, VerbsError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(offset..end),
        _ => Err(VerbsError::OutOfRegion {
            region,
            offset,
            len,
            size,
        }),
    }
}
