//! Queue depth for the block workloads: one io_uring per worker thread with
//! `iodepth` slots, each slot one aligned buffer allocated up front and at
//! most one read or write in flight. A thin driver: which op to issue, and
//! whether its latency counts, is decided by the runner (and the op by the
//! seeded `workload` stream, unchanged).
//!
//! Each op is submitted as soon as it is issued (one `io_uring_enter` per
//! op, like fio's default `iodepth_batch_submit=1`); completions are reaped
//! in batches. On this project's VM, batching submissions instead (one
//! enter per refill) gave ~8 % fewer 4 KiB O_DIRECT reads at depth 16 and a
//! p50 about 70 µs higher (perf/RESULTS.md, "Queue depth").
//!
//! Short reads and writes are resubmitted for their remainder (like
//! `write_all_at` on the synchronous path), so a slot completes only when
//! its whole block has moved; the latency covers every resubmission. A
//! completion that moves nothing (0 bytes: the file ended early) or fails
//! is handed back as an error.

use std::io;
use std::os::fd::RawFd;
use std::time::Instant;

use io_uring::{opcode, types, IoUring};

use crate::buffer::AlignedBuffer;
use crate::spec::{OpKind, MAX_IODEPTH_OPS};

/// One block IO as the ring sees it (the runner maps `Op::Read`/`Op::Write`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockIo {
    pub kind: OpKind,
    pub offset_bytes: u64,
    pub len_bytes: u64,
}

/// A finished slot: the op, whether it started in the measured phase, its
/// latency from first submission to last completion, and its bytes.
#[derive(Debug)]
pub struct Completion {
    pub io: BlockIo,
    pub recording: bool,
    pub latency_ns: u64,
    pub result: io::Result<u64>,
}

#[derive(Debug)]
struct Slot {
    buffer: AlignedBuffer,
    fd: RawFd,
    io: BlockIo,
    recording: bool,
    submitted: Instant,
    /// Bytes moved by earlier (short) completions of this op.
    done_bytes: u64,
}

pub struct Ring {
    uring: IoUring,
    slots: Vec<Slot>,
    /// Slots with nothing in flight.
    free: Vec<usize>,
    /// (user data, result) of one batch of completions, reused.
    reaped: Vec<(u64, i32)>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("slots", &self.slots.len())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// A ring of `depth` slots with buffers of `buffer_bytes` each, filled
    /// with bytes seeded by `seed` (what the writes write).
    pub fn new(depth: u32, buffer_bytes: u64, seed: u64) -> io::Result<Self> {
        debug_assert!((1..=MAX_IODEPTH_OPS).contains(&depth));
        let ring = new_ring(depth)?;
        let now = Instant::now();
        let slots: Vec<Slot> = (0..u64::from(depth))
            .map(|slot| Slot {
                buffer: AlignedBuffer::new(buffer_bytes, slot_seed(seed, slot)),
                fd: -1,
                io: BlockIo {
                    kind: OpKind::Read,
                    offset_bytes: 0,
                    len_bytes: 0,
                },
                recording: false,
                submitted: now,
                done_bytes: 0,
            })
            .collect();
        Ok(Self {
            uring: ring,
            free: (0..slots.len()).rev().collect(),
            reaped: Vec::with_capacity(slots.len()),
            slots,
        })
    }

    pub fn has_free_slot(&self) -> bool {
        !self.free.is_empty()
    }

    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Submits `io` on `fd` from a free slot; its latency starts now.
    pub fn start(&mut self, fd: RawFd, io: BlockIo, recording: bool) -> io::Result<()> {
        debug_assert!(matches!(io.kind, OpKind::Read | OpKind::Write));
        let index = self
            .free
            .pop()
            .expect("start() is called only with a free slot");
        let slot = &mut self.slots[index];
        assert!(
            io.len_bytes <= slot.buffer.len() as u64,
            "op larger than its slot buffer"
        );
        slot.fd = fd;
        slot.io = io;
        slot.recording = recording;
        slot.done_bytes = 0;
        slot.submitted = Instant::now();
        self.push(index);
        self.enter(0)
    }

    /// Submits what is queued (resubmitted remainders) and waits until at
    /// least one op completes (or was already complete).
    pub fn submit_and_wait(&mut self) -> io::Result<()> {
        self.enter(1)
    }

    fn enter(&mut self, want: usize) -> io::Result<()> {
        loop {
            match self.uring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes the completions that arrived, stamping them `now`: finished
    /// slots go to `out` and are free again; short ones are queued again
    /// for their remainder.
    pub fn reap(&mut self, now: Instant, out: &mut Vec<Completion>) {
        self.reaped.clear();
        self.reaped
            .extend(self.uring.completion().map(|c| (c.user_data(), c.result())));
        for i in 0..self.reaped.len() {
            let (user_data, result) = self.reaped[i];
            let index = user_data as usize;
            let slot = &mut self.slots[index];
            let left_bytes = slot.io.len_bytes - slot.done_bytes;
            let result = match u64::try_from(result) {
                Err(_) => Err(io::Error::from_raw_os_error(-result)),
                Ok(0) => Err(io::Error::from(match slot.io.kind {
                    OpKind::Write => io::ErrorKind::WriteZero,
                    _ => io::ErrorKind::UnexpectedEof,
                })),
                Ok(n) if n < left_bytes => {
                    slot.done_bytes += n;
                    self.push(index);
                    continue;
                }
                Ok(n) => {
                    debug_assert_eq!(n, left_bytes, "the kernel moved more than asked");
                    Ok(slot.io.len_bytes)
                }
            };
            out.push(Completion {
                io: slot.io,
                recording: slot.recording,
                latency_ns: now.saturating_duration_since(slot.submitted).as_nanos() as u64,
                result,
            });
            self.free.push(index);
        }
    }

    /// Queues the rest of slot `index`'s op.
    fn push(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        let done = slot.done_bytes as usize;
        let len = (slot.io.len_bytes - slot.done_bytes) as u32;
        let offset = slot.io.offset_bytes + slot.done_bytes;
        let buf = slot.buffer.as_mut_slice()[done..].as_mut_ptr();
        let entry = match slot.io.kind {
            OpKind::Write => opcode::Write::new(types::Fd(slot.fd), buf.cast_const(), len)
                .offset(offset)
                .build(),
            _ => opcode::Read::new(types::Fd(slot.fd), buf, len)
                .offset(offset)
                .build(),
        }
        .user_data(index as u64);
        // SAFETY: the buffer is the slot's own, valid for `len` bytes past
        // `done` (asserted in `start`), and is neither touched nor freed
        // until the kernel completes this entry: the slot is not free
        // until `reap` sees it, and `Drop` waits for every slot in flight
        // (or leaks the buffers). The queue cannot be full: it has a place
        // for every slot and a slot has at most one entry in it.
        let pushed = unsafe { self.uring.submission().push(&entry) };
        assert!(pushed.is_ok(), "submission queue smaller than the slots");
    }

    /// Waits for everything in flight, dropping the results.
    fn drain(&mut self) -> io::Result<()> {
        let mut sink = Vec::with_capacity(self.slots.len());
        while self.in_flight() > 0 {
            self.submit_and_wait()?;
            self.reap(Instant::now(), &mut sink);
            sink.clear();
        }
        Ok(())
    }
}

impl Drop for Ring {
    /// The kernel may still write into the buffers of ops in flight (an
    /// early return on an error): wait for them, and if even that fails,
    /// leak the buffers rather than free memory under a pending read.
    fn drop(&mut self) {
        if self.in_flight() > 0 && self.drain().is_err() {
            std::mem::forget(std::mem::take(&mut self.slots));
        }
    }
}

/// Seed of slot `slot`'s buffer in a ring made with `seed`: what the
/// queued writes of that slot write.
pub fn slot_seed(seed: u64, slot: u64) -> u64 {
    seed ^ (slot << 32)
}

/// A ring set up like fio's io_uring engine (one issuer, completions run
/// when the thread asks for them), or a plain one on kernels without those
/// flags (before 6.1).
fn new_ring(depth: u32) -> io::Result<IoUring> {
    let entries = depth.next_power_of_two();
    let tuned = IoUring::builder()
        .setup_coop_taskrun()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(entries * 2)
        .build(entries);
    match tuned {
        Ok(ring) => Ok(ring),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::debug!("io_uring without DEFER_TASKRUN: {e}");
            IoUring::new(entries)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::Write as _;
    use std::os::fd::AsRawFd;
    use std::time::Instant;

    use super::{BlockIo, Ring};
    use crate::spec::OpKind;

    #[test]
    fn reads_back_what_it_wrote_with_ops_in_flight() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("data");
        let mut file = File::create(&path).expect("create");
        file.write_all(&vec![0u8; 64 << 10]).expect("fill");
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        let fd = file.as_raw_fd();
        let mut ring = Ring::new(8, 4096, 7).expect("io_uring");
        let mut done = Vec::new();
        for block in 0..8u64 {
            let io = BlockIo {
                kind: OpKind::Write,
                offset_bytes: block * 4096,
                len_bytes: 4096,
            };
            ring.start(fd, io, true).expect("submit");
        }
        assert!(!ring.has_free_slot());
        while ring.in_flight() > 0 {
            ring.submit_and_wait().expect("submit");
            ring.reap(Instant::now(), &mut done);
        }
        assert_eq!(done.len(), 8);
        assert!(done.iter().all(|c| matches!(c.result, Ok(4096))));
        let written = std::fs::read(&path).expect("read back");
        let slot0 = ring.slots.iter().find(|s| s.io.offset_bytes == 0);
        let slot0 = slot0.expect("a slot wrote block 0");
        assert_eq!(&written[..4096], &slot0.buffer.as_slice()[..4096]);
        assert!(written[32 << 10..].iter().all(|&b| b == 0));

        // A read past the end of the file fails instead of counting 0 bytes.
        done.clear();
        let past_end = BlockIo {
            kind: OpKind::Read,
            offset_bytes: 64 << 10,
            len_bytes: 4096,
        };
        ring.start(fd, past_end, true).expect("submit");
        ring.submit_and_wait().expect("submit");
        ring.reap(Instant::now(), &mut done);
        assert_eq!(done.len(), 1);
        assert_eq!(
            done[0].result.as_ref().map_err(std::io::Error::kind).err(),
            Some(std::io::ErrorKind::UnexpectedEof)
        );
    }
}
