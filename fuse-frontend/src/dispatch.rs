//! What every transport does with a request before fuse-backend-rs sees
//! it: blocking lock requests go to a waiter (`lock_wait`),
//! `FUSE_COPY_FILE_RANGE` is answered here (`copy_range`), an interrupt is
//! noted for the waiters. The classic /dev/fuse loops (`mount.rs`) and the
//! ring queues (`uring.rs`) differ only in how a request arrives and how
//! its reply leaves.

use std::os::fd::RawFd;
use std::sync::Arc;

use datenlord_fs::Fs;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{FuseBuf, FuseDevWriter, Reader};
use tracing::debug;

use crate::adapter::FuseFs;
use crate::copy_range;
use crate::idle_poll::IdlePoll;
use crate::lock_wait::{self, LockWait, Waiters, OUT_HEADER_BYTES};
use crate::stats::{LoopHook, OpStats};

/// What the request loops of one mount serve with.
#[derive(Clone)]
pub(crate) struct Served {
    pub server: Arc<Server<FuseFs>>,
    pub fs: Arc<Fs>,
    pub waiters: Arc<Waiters>,
    /// Per-op counters of the mount.
    pub stats: OpStats,
    /// `-o idle_poll`'s spinners, told of every request.
    pub idle_poll: Option<Arc<IdlePoll>>,
}

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// fuse-backend-rs answers it.
    Server,
    /// A blocking lock: a waiter answers it later.
    Lock(LockWait),
    /// Answered already (copy_file_range): the reply to send.
    Copied {
        unique: u64,
        result: Result<u32, i32>,
    },
}

/// Decides where `message` (in header, op header, payload) goes, running a
/// copy_file_range on the way.
pub(crate) fn route(served: &Served, message: &[u8]) -> Route {
    if let Some(poll) = &served.idle_poll {
        poll.activity();
    }
    match lock_wait::opcode(message) {
        Some(lock_wait::OPCODE_SETLKW) => {
            if let Some(wait) = lock_wait::parse_setlkw(message) {
                return Route::Lock(wait);
            }
        }
        Some(copy_range::OPCODE_COPY_FILE_RANGE) => {
            if let Some(copy) = copy_range::parse(message) {
                let started = std::time::Instant::now();
                let result = copy_range::run(&served.fs, &copy);
                served.stats.record(
                    copy_range::OPCODE_COPY_FILE_RANGE,
                    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
                    result.is_err(),
                );
                return Route::Copied {
                    unique: copy.unique,
                    result,
                };
            }
        }
        Some(lock_wait::OPCODE_INTERRUPT) => {
            if let Some(unique) = lock_wait::parse_interrupt(message) {
                served.waiters.interrupt(unique);
            }
        }
        _ => {}
    }
    Route::Server
}

/// Lets fuse-backend-rs answer `message` into `out` instead of a device:
/// the writer is split at its end, which makes it buffer the whole reply
/// (out header first) in `out`; the few replies it commits itself
/// (errors, read and readdir data) are written to `sink`, an fd that
/// discards them (/dev/null). Returns the reply's length, `None` if no
/// reply was made.
pub(crate) fn answer_into(
    served: &Served,
    hook: &LoopHook,
    message: &mut [u8],
    out: &mut [u8],
    sink: RawFd,
) -> Option<usize> {
    out.get_mut(..OUT_HEADER_BYTES)?.fill(0);
    let reader = Reader::<()>::from_fuse_buffer(FuseBuf::new(message)).ok()?;
    let mut writer = FuseDevWriter::<()>::new(sink, out).ok()?;
    let whole = writer.available_bytes();
    // The part past the end is empty; splitting makes `writer` buffered.
    let _past_end = writer.split_at(whole).ok()?;
    if let Err(e) = served
        .server
        .handle_message(reader, writer.into(), None, Some(hook))
    {
        debug!(error = %e, "FUSE request failed");
    }
    let len = lock_wait::u32_at(out, 0)? as usize;
    (OUT_HEADER_BYTES..=out.len()).contains(&len).then_some(len)
}
