//! `FUSE_COPY_FILE_RANGE`, answered by the request loop itself:
//! fuse-backend-rs 0.14 has no `FileSystem` op for it and answers ENOSYS,
//! after which the kernel copies through user space by itself (a read and a
//! write request per chunk, the data crossing /dev/fuse twice). Here the
//! copy runs inside the daemon (`Fs::copy_range`), with one request and no
//! data on /dev/fuse.

use std::fs::File;
use std::os::fd::AsRawFd;

use datenlord_fs::{Fs, Ino};
use fuse_backend_rs::api::filesystem::Context;
use futures::executor::block_on;
use tracing::debug;

use crate::adapter::creds;
use crate::lock_wait::{u32_at, u64_at, IN_HEADER_BYTES, OUT_HEADER_BYTES};

/// `FUSE_COPY_FILE_RANGE`.
pub(crate) const OPCODE_COPY_FILE_RANGE: u32 = 47;
/// `struct fuse_copy_file_range_in`: fh_in, off_in, nodeid_out, fh_out,
/// off_out, len, flags (all u64).
const COPY_IN_BYTES: usize = 56;
/// `struct fuse_write_out`: size (u32) and padding.
const WRITE_OUT_BYTES: usize = 8;
/// Most bytes one request copies: the reply's size is a u32 (the kernel
/// asks again for the rest).
const COPY_BYTES_MAX: u64 = (u32::MAX as u64) & !0xfff;

/// One decoded request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CopyRequest {
    pub unique: u64,
    pub ino_in: u64,
    pub off_in: u64,
    pub ino_out: u64,
    pub fh_out: u64,
    pub off_out: u64,
    pub len: u64,
    pub flags: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// Decodes a `FUSE_COPY_FILE_RANGE` request; `None` if it is malformed.
pub(crate) fn parse(request: &[u8]) -> Option<CopyRequest> {
    if request.len() < IN_HEADER_BYTES + COPY_IN_BYTES
        || crate::lock_wait::opcode(request)? != OPCODE_COPY_FILE_RANGE
    {
        return None;
    }
    let body = IN_HEADER_BYTES;
    Some(CopyRequest {
        unique: u64_at(request, 8)?,
        ino_in: u64_at(request, 16)?,
        uid: u32_at(request, 24)?,
        gid: u32_at(request, 28)?,
        pid: u32_at(request, 32)?,
        off_in: u64_at(request, body + 8)?,
        ino_out: u64_at(request, body + 16)?,
        fh_out: u64_at(request, body + 24)?,
        off_out: u64_at(request, body + 32)?,
        len: u64_at(request, body + 40)?,
        flags: u64_at(request, body + 48)?,
    })
}

/// Runs the copy: the bytes copied (short at the source's end), or an
/// errno.
pub(crate) fn run(fs: &Fs, req: &CopyRequest) -> Result<u32, i32> {
    if req.flags != 0 {
        // copy_file_range(2) defines no flags yet.
        return Err(libc::EINVAL);
    }
    let ctx = Context {
        uid: req.uid,
        gid: req.gid,
        pid: i32::try_from(req.pid).unwrap_or(0),
    };
    let len = req.len.min(COPY_BYTES_MAX);
    let copied = block_on(fs.copy_range(
        Ino(req.ino_in),
        req.off_in,
        Ino(req.ino_out),
        req.fh_out,
        req.off_out,
        len,
        &creds(&ctx),
    ))
    .map_err(|e| e.errno())?;
    Ok(u32::try_from(copied).unwrap_or(u32::MAX))
}

/// Bytes of the longest reply: out header and `fuse_write_out`.
pub(crate) const REPLY_BYTES_MAX: usize = OUT_HEADER_BYTES + WRITE_OUT_BYTES;

/// Encodes the reply: `fuse_write_out` with the bytes copied, or the
/// error; the reply is the first `len` bytes.
pub(crate) fn encode_reply(
    unique: u64,
    result: Result<u32, i32>,
) -> ([u8; REPLY_BYTES_MAX], usize) {
    let mut out = [0u8; REPLY_BYTES_MAX];
    let (len, error) = match result {
        Ok(size) => {
            out[OUT_HEADER_BYTES..OUT_HEADER_BYTES + 4].copy_from_slice(&size.to_le_bytes());
            (out.len(), 0)
        }
        Err(errno) => (OUT_HEADER_BYTES, -errno),
    };
    out[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    out[4..8].copy_from_slice(&error.to_le_bytes());
    out[8..16].copy_from_slice(&unique.to_le_bytes());
    (out, len)
}

/// Writes the reply on a /dev/fuse fd.
pub(crate) fn reply(device: &File, unique: u64, result: Result<u32, i32>) {
    let (out, len) = encode_reply(unique, result);
    // SAFETY: `out[..len]` is a valid buffer of that length.
    let n = unsafe { libc::write(device.as_raw_fd(), out.as_ptr().cast(), len) };
    if n < 0 {
        // ENOENT: the kernel abandoned the request (its process died).
        debug!(error = %std::io::Error::last_os_error(), unique, "copy_file_range reply not delivered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(len: usize) -> Vec<u8> {
        let mut r = vec![0u8; len];
        r[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        r[4..8].copy_from_slice(&OPCODE_COPY_FILE_RANGE.to_le_bytes());
        r[8..16].copy_from_slice(&77u64.to_le_bytes());
        r[16..24].copy_from_slice(&5u64.to_le_bytes());
        r[24..28].copy_from_slice(&1000u32.to_le_bytes());
        r[28..32].copy_from_slice(&100u32.to_le_bytes());
        r[32..36].copy_from_slice(&4242u32.to_le_bytes());
        let body = IN_HEADER_BYTES;
        for (i, v) in [9u64, 4096, 6, 3, 8192, 65536, 0].iter().enumerate() {
            if body + i * 8 + 8 <= len {
                r[body + i * 8..body + i * 8 + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        r
    }

    #[test]
    fn parses_a_request_and_refuses_short_or_other_ones() {
        let r = request(IN_HEADER_BYTES + COPY_IN_BYTES);
        assert_eq!(
            parse(&r),
            Some(CopyRequest {
                unique: 77,
                ino_in: 5,
                off_in: 4096,
                ino_out: 6,
                fh_out: 3,
                off_out: 8192,
                len: 65536,
                flags: 0,
                uid: 1000,
                gid: 100,
                pid: 4242,
            })
        );
        assert_eq!(parse(&r[..IN_HEADER_BYTES + COPY_IN_BYTES - 1]), None);
        let mut other = r.clone();
        other[4..8].copy_from_slice(&16u32.to_le_bytes());
        assert_eq!(parse(&other), None);
        assert_eq!(parse(&[]), None);
    }
}
