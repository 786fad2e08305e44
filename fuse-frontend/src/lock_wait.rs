//! Blocking lock requests (`F_SETLKW`, blocking `flock`) answered off the
//! request loops.
//!
//! fuse-backend-rs 0.14 hands `FUSE_SETLKW` to `FileSystem::setlk` without
//! saying it may block, and a request loop that waited for a lock could
//! leave no loop to serve the unlock. So the loops take `FUSE_SETLKW` out
//! of the stream themselves: a waiter thread retries the non-blocking lock
//! with backoff and writes the reply on the device when the lock is granted,
//! an error other than `EAGAIN` comes, or the kernel interrupts the request
//! (`FUSE_INTERRUPT`, answered `EINTR`). How the reply travels is the
//! transport's business: the classic loops write it on their /dev/fuse fd,
//! a ring queue commits it through its ring entry (`uring.rs`).

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datenlord_fs::Fs;
use futures::executor::block_on;
use tracing::{debug, warn};

use crate::adapter::lock_request;

/// `FUSE_SETLKW`.
pub(crate) const OPCODE_SETLKW: u32 = 33;
/// `FUSE_INTERRUPT`.
pub(crate) const OPCODE_INTERRUPT: u32 = 36;
/// Bytes of `fuse_in_header`.
pub(crate) const IN_HEADER_BYTES: usize = 40;
/// Bytes of `fuse_lk_in`.
const LK_IN_BYTES: usize = 48;
/// Bytes of `fuse_out_header`.
pub(crate) const OUT_HEADER_BYTES: usize = 16;
/// First and longest pause between retries of a blocked lock.
const RETRY_FIRST_MS: u64 = 5;
const RETRY_MAX_MS: u64 = 200;
/// Most lock requests waiting at once; past it a request fails `ENOLCK`.
pub const LOCK_WAITERS_MAX: usize = 1024;

pub(crate) fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

pub(crate) fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// The opcode of a request, if it has a header.
pub(crate) fn opcode(request: &[u8]) -> Option<u32> {
    u32_at(request, 4)
}

/// One blocking lock request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LockWait {
    pub unique: u64,
    pub ino: u64,
    pub owner: u64,
    pub start: u64,
    pub end: u64,
    pub lock_type: u32,
    pub lk_flags: u32,
}

/// Decodes a `FUSE_SETLKW` request; `None` if it is malformed.
pub(crate) fn parse_setlkw(request: &[u8]) -> Option<LockWait> {
    if request.len() < IN_HEADER_BYTES + LK_IN_BYTES || opcode(request)? != OPCODE_SETLKW {
        return None;
    }
    let body = IN_HEADER_BYTES;
    Some(LockWait {
        unique: u64_at(request, 8)?,
        ino: u64_at(request, 16)?,
        owner: u64_at(request, body + 8)?,
        start: u64_at(request, body + 16)?,
        end: u64_at(request, body + 24)?,
        lock_type: u32_at(request, body + 32)?,
        lk_flags: u32_at(request, body + 40)?,
    })
}

/// The `unique` a `FUSE_INTERRUPT` request names.
pub(crate) fn parse_interrupt(request: &[u8]) -> Option<u64> {
    if opcode(request)? != OPCODE_INTERRUPT {
        return None;
    }
    u64_at(request, IN_HEADER_BYTES)
}

/// Requests waiting for a lock, and those the kernel interrupted.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    waiting: Mutex<HashSet<u64>>,
    interrupted: Mutex<HashSet<u64>>,
}

impl Waiters {
    /// Records an interrupt of `unique` if it waits here.
    pub(crate) fn interrupt(&self, unique: u64) {
        let waits = self
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&unique);
        if waits {
            self.interrupted
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(unique);
        }
    }

    fn take_interrupt(&self, unique: u64) -> bool {
        self.interrupted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&unique)
    }

    fn done(&self, unique: u64) {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&unique);
        self.take_interrupt(unique);
    }
}

/// Writes a reply without payload on a /dev/fuse fd (`error` is 0 or a
/// negative errno).
pub(crate) fn reply(device: &File, unique: u64, error: i32) {
    let out = crate::uring_abi::out_header(unique, error);
    // SAFETY: `out` is a valid buffer of its length.
    let n = unsafe { libc::write(device.as_raw_fd(), out.as_ptr().cast(), out.len()) };
    if n < 0 {
        // ENOENT: the kernel abandoned the request (its process died).
        debug!(error = %std::io::Error::last_os_error(), unique, "lock reply not delivered");
    }
}

/// Answers `wait` from a new thread once the lock is granted (or refused
/// for good, or interrupted): `respond` gets 0 or a negative errno, once,
/// from that thread (or from this one if no waiter can be started).
pub(crate) fn spawn_waiter(
    fs: Arc<Fs>,
    waiters: &Arc<Waiters>,
    wait: LockWait,
    respond: impl FnOnce(i32) + Send + 'static,
) {
    let admitted = {
        let mut waiting = waiters
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        waiting.len() < LOCK_WAITERS_MAX && waiting.insert(wait.unique)
    };
    if !admitted {
        respond(-libc::ENOLCK);
        return;
    }
    let thread_waiters = Arc::clone(waiters);
    // The responder comes back if the thread cannot start.
    let respond = Arc::new(Mutex::new(Some(respond)));
    let thread_respond = Arc::clone(&respond);
    let spawned = std::thread::Builder::new()
        .name("dl-lock-wait".into())
        .spawn(move || {
            let (fs, waiters) = (fs, thread_waiters);
            let mut pause_ms = RETRY_FIRST_MS;
            let error = loop {
                if waiters.take_interrupt(wait.unique) {
                    break -libc::EINTR;
                }
                match block_on(lock_request(&fs, &wait)) {
                    Ok(()) => break 0,
                    Err(e) if e.errno() == libc::EAGAIN => {}
                    Err(e) => break -e.errno(),
                }
                std::thread::sleep(Duration::from_millis(pause_ms));
                pause_ms = (pause_ms * 2).min(RETRY_MAX_MS);
            };
            waiters.done(wait.unique);
            let respond = thread_respond
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(respond) = respond {
                respond(error);
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start a lock waiter");
        waiters.done(wait.unique);
        let respond = respond
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(respond) = respond {
            respond(-libc::ENOLCK);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setlkw_and_interrupt_requests_decode_and_garbage_does_not() {
        let mut request = vec![0u8; IN_HEADER_BYTES + LK_IN_BYTES];
        request[0..4].copy_from_slice(&88u32.to_le_bytes());
        request[4..8].copy_from_slice(&OPCODE_SETLKW.to_le_bytes());
        request[8..16].copy_from_slice(&7u64.to_le_bytes());
        request[16..24].copy_from_slice(&42u64.to_le_bytes());
        let body = IN_HEADER_BYTES;
        request[body + 8..body + 16].copy_from_slice(&99u64.to_le_bytes());
        request[body + 16..body + 24].copy_from_slice(&10u64.to_le_bytes());
        request[body + 24..body + 32].copy_from_slice(&20u64.to_le_bytes());
        request[body + 32..body + 36].copy_from_slice(&1u32.to_le_bytes());
        request[body + 40..body + 44].copy_from_slice(&1u32.to_le_bytes());
        let wait = parse_setlkw(&request).expect("decodes");
        assert_eq!(
            wait,
            LockWait {
                unique: 7,
                ino: 42,
                owner: 99,
                start: 10,
                end: 20,
                lock_type: 1,
                lk_flags: 1,
            }
        );
        assert_eq!(parse_setlkw(&request[..50]), None, "truncated");
        assert_eq!(parse_interrupt(&request), None, "not an interrupt");
        let mut interrupt = vec![0u8; IN_HEADER_BYTES + 8];
        interrupt[4..8].copy_from_slice(&OPCODE_INTERRUPT.to_le_bytes());
        interrupt[IN_HEADER_BYTES..].copy_from_slice(&7u64.to_le_bytes());
        assert_eq!(parse_interrupt(&interrupt), Some(7));
        assert_eq!(parse_interrupt(&interrupt[..44]), None);
        assert_eq!(opcode(&[1, 2]), None);
    }
}
