//! The FUSE-over-io_uring wire format (kernel uapi `linux/fuse.h`, 6.14+),
//! sans IO: the per-entry header buffer, the SQE command area, the INIT
//! flag that turns the ring on, and the list of CPUs the kernel makes
//! queues for. The driver (`uring.rs`) does the syscalls.
//!
//! An entry is two buffers registered with the kernel: a header buffer
//! (`fuse_uring_req_header`: 128 bytes for `fuse_in_header` on fetch and
//! `fuse_out_header` on commit, 128 bytes for the op's first argument —
//! its fixed header, possibly empty —, then `fuse_uring_ent_in_out`) and a
//! payload buffer for the remaining arguments (names, write data) or the
//! reply's body (everything after `fuse_out_header`).

use crate::lock_wait::{u32_at, u64_at, IN_HEADER_BYTES, OUT_HEADER_BYTES};

/// `FUSE_URING_IN_OUT_HEADER_SZ`: room for the in or out header.
pub(crate) const IN_OUT_AREA_BYTES: usize = 128;
/// `FUSE_URING_OP_IN_OUT_SZ`: room for the op's first argument.
pub(crate) const OP_AREA_BYTES: usize = 128;
/// Where `op_in` starts in the header buffer.
const OP_AREA_AT: usize = IN_OUT_AREA_BYTES;
/// Where `fuse_uring_ent_in_out` starts: flags u64, commit_id u64,
/// payload_sz u32, padding u32, reserved u64.
const ENT_IN_OUT_AT: usize = IN_OUT_AREA_BYTES + OP_AREA_BYTES;
const COMMIT_ID_AT: usize = ENT_IN_OUT_AT + 8;
const PAYLOAD_SZ_AT: usize = ENT_IN_OUT_AT + 16;
/// Bytes of `fuse_uring_req_header`.
pub(crate) const RING_HEADER_BYTES: usize = ENT_IN_OUT_AT + 32;

/// `FUSE_IO_URING_CMD_REGISTER`: hand the kernel an entry and fetch a
/// request into it.
pub(crate) const CMD_REGISTER: u32 = 1;
/// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`: the reply in the entry, and fetch
/// the next request into it.
pub(crate) const CMD_COMMIT_AND_FETCH: u32 = 2;
/// The header and the payload buffer (`sqe->len` of a REGISTER).
pub(crate) const ENTRY_IOVECS: u32 = 2;

/// `FUSE_INIT`.
pub(crate) const OPCODE_INIT: u32 = 26;
/// `FUSE_INIT_EXT`: `flags2` is valid.
const FLAG_INIT_EXT: u32 = 1 << 30;
/// `FUSE_OVER_IO_URING` (bit 41 of the 64 flags: bit 9 of `flags2`).
pub(crate) const FLAG2_OVER_IO_URING: u32 = 1 << 9;
/// `FUSE_PASSTHROUGH` (bit 37: bit 5 of `flags2`).
pub(crate) const FLAG2_PASSTHROUGH: u32 = 1 << 5;
/// `fuse_init_in`: major, minor, max_readahead, flags, then flags2.
const INIT_IN_FLAGS_AT: usize = IN_HEADER_BYTES + 12;
const INIT_IN_FLAGS2_AT: usize = IN_HEADER_BYTES + 16;
/// `fuse_init_out` after the out header: flags at 12, max_write at 20,
/// max_pages (u16) at 28, flags2 at 32; 64 bytes in all (7.23+).
const INIT_OUT_FLAGS_AT: usize = OUT_HEADER_BYTES + 12;
const INIT_OUT_MAX_WRITE_AT: usize = OUT_HEADER_BYTES + 20;
const INIT_OUT_MAX_PAGES_AT: usize = OUT_HEADER_BYTES + 28;
const INIT_OUT_FLAGS2_AT: usize = OUT_HEADER_BYTES + 32;
/// `max_stack_depth` (u32) after `flags2`.
const INIT_OUT_MAX_STACK_DEPTH_AT: usize = OUT_HEADER_BYTES + 36;
const INIT_OUT_BYTES: usize = 64;
/// `FUSE_MIN_READ_BUFFER`: the kernel's smallest payload buffer.
const MIN_PAYLOAD_BYTES: usize = 8192;

/// Most CPU queues handled (the kernel makes one per possible CPU).
pub(crate) const QUEUES_MAX: usize = 4096;

fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// The 80-byte command area of an SQE128: `fuse_uring_cmd_req` (flags
/// u64 = 0, commit_id u64, qid u16, padding).
pub(crate) fn cmd_req(commit_id: u64, qid: u16) -> [u8; 80] {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_le_bytes());
    cmd[16..18].copy_from_slice(&qid.to_le_bytes());
    cmd
}

/// Where a fetched request's parts are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RingRequest {
    /// What the commit names (the request's `unique`).
    pub commit_id: u64,
    /// Bytes of the op's first argument in `op_in`.
    pub op_bytes: usize,
    /// Bytes of the payload buffer the request fills.
    pub payload_bytes: usize,
}

/// Decodes the header buffer of an entry the kernel filled; an error says
/// why it cannot be served (answered `EIO`, never a panic). The commit id
/// is in the error too, so the entry can still be answered.
pub(crate) fn decode_request(
    header: &[u8],
    payload_max_bytes: usize,
) -> Result<RingRequest, (u64, &'static str)> {
    let commit_id = u64_at(header, COMMIT_ID_AT).ok_or((0, "short ring header"))?;
    let fail = |why| Err((commit_id, why));
    let (Some(len), Some(payload), Some(unique)) = (
        u32_at(header, 0),
        u32_at(header, PAYLOAD_SZ_AT),
        u64_at(header, 8),
    ) else {
        return fail("short ring header");
    };
    let (len, payload) = (len as usize, payload as usize);
    if unique != commit_id {
        return fail("commit id is not the request's unique");
    }
    if payload > payload_max_bytes {
        return fail("payload larger than the buffer");
    }
    let Some(op_bytes) = len.checked_sub(IN_HEADER_BYTES + payload) else {
        return fail("request length shorter than its parts");
    };
    if op_bytes > OP_AREA_BYTES {
        return fail("op header larger than its area");
    }
    Ok(RingRequest {
        commit_id,
        op_bytes,
        payload_bytes: payload,
    })
}

/// Writes `in header | op header` of a fetched request into `dst` (which
/// must be `IN_HEADER_BYTES + op_bytes` long): the front of the message
/// fuse-backend-rs decodes, the payload following it.
pub(crate) fn copy_request_front(header: &[u8], op_bytes: usize, dst: &mut [u8]) {
    debug_assert_eq!(dst.len(), IN_HEADER_BYTES + op_bytes);
    dst[..IN_HEADER_BYTES].copy_from_slice(&header[..IN_HEADER_BYTES]);
    dst[IN_HEADER_BYTES..].copy_from_slice(&header[OP_AREA_AT..OP_AREA_AT + op_bytes]);
}

/// Puts a reply's out header into the header buffer and says how many
/// payload bytes follow it.
pub(crate) fn put_reply_header(header: &mut [u8], out_header: &[u8], payload_bytes: u32) {
    header[..OUT_HEADER_BYTES].copy_from_slice(&out_header[..OUT_HEADER_BYTES]);
    put_u32(header, PAYLOAD_SZ_AT, payload_bytes);
}

/// A reply without body: `error` is 0 or a negative errno.
pub(crate) fn out_header(unique: u64, error: i32) -> [u8; OUT_HEADER_BYTES] {
    let mut out = [0u8; OUT_HEADER_BYTES];
    out[0..4].copy_from_slice(&(OUT_HEADER_BYTES as u32).to_le_bytes());
    out[4..8].copy_from_slice(&error.to_le_bytes());
    out[8..16].copy_from_slice(&unique.to_le_bytes());
    out
}

/// Whether a `FUSE_INIT` request offers `FUSE_OVER_IO_URING` (the kernel
/// does when `enable_uring` is on).
pub(crate) fn init_offers_uring(request: &[u8]) -> bool {
    init_offers(request, FLAG2_OVER_IO_URING)
}

/// Whether a `FUSE_INIT` request offers `FUSE_PASSTHROUGH` (a kernel built
/// with `CONFIG_FUSE_PASSTHROUGH`).
pub(crate) fn init_offers_passthrough(request: &[u8]) -> bool {
    init_offers(request, FLAG2_PASSTHROUGH)
}

fn init_offers(request: &[u8], wanted: u32) -> bool {
    let flags = u32_at(request, INIT_IN_FLAGS_AT).unwrap_or(0);
    flags & FLAG_INIT_EXT != 0
        && u32_at(request, INIT_IN_FLAGS2_AT).is_some_and(|f| f & wanted != 0)
}

/// Turns `FUSE_PASSTHROUGH` on in a successful `FUSE_INIT` reply, with a
/// stacking depth of 1 (backing files on a file system that stacks on
/// nothing, such as ext4 or xfs). False (reply unchanged) if the reply is
/// an error or too short.
pub(crate) fn accept_passthrough(reply: &mut [u8]) -> bool {
    if u32_at(reply, 4) != Some(0) || reply.len() < OUT_HEADER_BYTES + INIT_OUT_BYTES {
        return false;
    }
    let (Some(flags), Some(flags2)) = (
        u32_at(reply, INIT_OUT_FLAGS_AT),
        u32_at(reply, INIT_OUT_FLAGS2_AT),
    ) else {
        return false;
    };
    put_u32(reply, INIT_OUT_FLAGS_AT, flags | FLAG_INIT_EXT);
    put_u32(reply, INIT_OUT_FLAGS2_AT, flags2 | FLAG2_PASSTHROUGH);
    put_u32(reply, INIT_OUT_MAX_STACK_DEPTH_AT, 1);
    true
}

/// Turns `FUSE_OVER_IO_URING` on in a successful `FUSE_INIT` reply and
/// returns the payload buffer size the kernel will require of each entry;
/// `None` (reply unchanged) if the reply is an error or too short.
pub(crate) fn accept_uring(reply: &mut [u8], page_bytes: usize) -> Option<usize> {
    let error = u32_at(reply, 4)?;
    if error != 0 || reply.len() < OUT_HEADER_BYTES + INIT_OUT_BYTES {
        return None;
    }
    let flags = u32_at(reply, INIT_OUT_FLAGS_AT)? | FLAG_INIT_EXT;
    let flags2 = u32_at(reply, INIT_OUT_FLAGS2_AT)? | FLAG2_OVER_IO_URING;
    put_u32(reply, INIT_OUT_FLAGS_AT, flags);
    put_u32(reply, INIT_OUT_FLAGS2_AT, flags2);
    let max_write = u32_at(reply, INIT_OUT_MAX_WRITE_AT)? as usize;
    let max_pages = usize::from(u16::from_le_bytes(
        reply
            .get(INIT_OUT_MAX_PAGES_AT..INIT_OUT_MAX_PAGES_AT + 2)?
            .try_into()
            .ok()?,
    ));
    // The kernel's `max_payload_sz`.
    Some(MIN_PAYLOAD_BYTES.max(max_write).max(max_pages * page_bytes))
}

/// How many CPUs a cpu list (`/sys/devices/system/cpu/possible`: `0-3,6`)
/// names: the kernel's number of ring queues.
pub(crate) fn cpu_list_count(list: &str) -> Option<usize> {
    let mut count = 0usize;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (low, high) = part.split_once('-').unwrap_or((part, part));
        let (low, high) = (low.parse::<usize>().ok()?, high.parse::<usize>().ok()?);
        count = count.checked_add(high.checked_sub(low)? + 1)?;
    }
    (1..=QUEUES_MAX).contains(&count).then_some(count)
}

/// Which ring thread serves which queue: one thread per CPU the process
/// may run on (pinned there), serving that CPU's queue; queues of CPUs
/// without a thread (not allowed, offline) are spread over the threads.
/// `(cpu to pin, queues)` per thread; no allowed CPU gives one unpinned
/// thread for every queue.
pub(crate) fn plan_queues(queues: usize, allowed: &[usize]) -> Vec<(Option<usize>, Vec<u16>)> {
    let cpus: Vec<usize> = allowed.iter().copied().filter(|&c| c < queues).collect();
    if cpus.is_empty() {
        return vec![(
            None,
            (0..queues).filter_map(|q| u16::try_from(q).ok()).collect(),
        )];
    }
    let mut plan: Vec<(Option<usize>, Vec<u16>)> =
        cpus.iter().map(|&c| (Some(c), Vec::new())).collect();
    let mut spread = 0;
    for q in 0..queues {
        let Ok(qid) = u16::try_from(q) else { break };
        let thread = if let Some(own) = cpus.iter().position(|&c| c == q) {
            own
        } else {
            spread += 1;
            (spread - 1) % cpus.len()
        };
        plan[thread].1.push(qid);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_header(len: u32, unique: u64, op: &[u8], payload: u32, commit_id: u64) -> Vec<u8> {
        let mut h = vec![0u8; RING_HEADER_BYTES];
        h[0..4].copy_from_slice(&len.to_le_bytes());
        h[4..8].copy_from_slice(&15u32.to_le_bytes());
        h[8..16].copy_from_slice(&unique.to_le_bytes());
        h[OP_AREA_AT..OP_AREA_AT + op.len()].copy_from_slice(op);
        h[COMMIT_ID_AT..COMMIT_ID_AT + 8].copy_from_slice(&commit_id.to_le_bytes());
        put_u32(&mut h, PAYLOAD_SZ_AT, payload);
        h
    }

    #[test]
    fn requests_decode_and_bad_headers_are_refused_with_their_commit_id() {
        let h = ring_header(40 + 40 + 100, 9, &[7u8; 40], 100, 9);
        let req = decode_request(&h, 4096).expect("decodes");
        assert_eq!(
            req,
            RingRequest {
                commit_id: 9,
                op_bytes: 40,
                payload_bytes: 100
            }
        );
        let mut front = vec![0u8; 80];
        copy_request_front(&h, 40, &mut front);
        assert_eq!(&front[..4], &180u32.to_le_bytes());
        assert_eq!(&front[40..], &[7u8; 40]);
        // Payload past the buffer, length short of its parts, op header
        // past its area, commit id not the unique, truncated header.
        let check = |h: &[u8], why: &str| {
            let err = decode_request(h, 64).expect_err(why);
            assert_eq!(err.1, why);
        };
        check(&h, "payload larger than the buffer");
        check(
            &ring_header(50, 9, &[], 20, 9),
            "request length shorter than its parts",
        );
        check(
            &ring_header(40 + 200, 9, &[], 0, 9),
            "op header larger than its area",
        );
        check(
            &ring_header(40, 9, &[], 0, 10),
            "commit id is not the request's unique",
        );
        assert_eq!(decode_request(&h[..100], 64), Err((0, "short ring header")));
    }

    #[test]
    fn replies_put_their_header_and_payload_size() {
        let mut h = vec![0u8; RING_HEADER_BYTES];
        put_reply_header(&mut h, &out_header(5, -libc::ENOENT), 0);
        assert_eq!(u32_at(&h, 0), Some(16));
        assert_eq!(u32_at(&h, 4), Some((-libc::ENOENT) as u32));
        assert_eq!(u64_at(&h, 8), Some(5));
        put_reply_header(&mut h, &out_header(5, 0), 4096);
        assert_eq!(u32_at(&h, PAYLOAD_SZ_AT), Some(4096));
        let cmd = cmd_req(77, 3);
        assert_eq!(u64_at(&cmd, 8), Some(77));
        assert_eq!(&cmd[16..18], &3u16.to_le_bytes());
        assert!(cmd[..8].iter().chain(&cmd[18..]).all(|&b| b == 0));
    }

    #[test]
    fn passthrough_offer_and_acceptance() {
        let mut request = vec![0u8; IN_HEADER_BYTES + 64];
        put_u32(&mut request, INIT_IN_FLAGS_AT, FLAG_INIT_EXT);
        put_u32(&mut request, INIT_IN_FLAGS2_AT, FLAG2_OVER_IO_URING);
        assert!(!init_offers_passthrough(&request));
        put_u32(&mut request, INIT_IN_FLAGS2_AT, FLAG2_PASSTHROUGH);
        assert!(init_offers_passthrough(&request));
        assert!(!init_offers_uring(&request));

        let mut reply = vec![0u8; OUT_HEADER_BYTES + INIT_OUT_BYTES];
        put_u32(&mut reply, INIT_OUT_FLAGS_AT, 1);
        put_u32(&mut reply, INIT_OUT_FLAGS2_AT, FLAG2_OVER_IO_URING);
        assert!(accept_passthrough(&mut reply));
        assert_eq!(u32_at(&reply, INIT_OUT_FLAGS_AT), Some(1 | FLAG_INIT_EXT));
        assert_eq!(
            u32_at(&reply, INIT_OUT_FLAGS2_AT),
            Some(FLAG2_OVER_IO_URING | FLAG2_PASSTHROUGH)
        );
        assert_eq!(u32_at(&reply, INIT_OUT_MAX_STACK_DEPTH_AT), Some(1));
        // Errors and short replies stay as they are.
        let mut error = out_header(1, -libc::EPROTO).to_vec();
        error.resize(OUT_HEADER_BYTES + INIT_OUT_BYTES, 0);
        assert!(!accept_passthrough(&mut error));
        assert!(!accept_passthrough(&mut reply[..OUT_HEADER_BYTES + 30]));
    }

    #[test]
    fn init_offer_and_acceptance() {
        let mut request = vec![0u8; IN_HEADER_BYTES + 64];
        assert!(!init_offers_uring(&request));
        put_u32(&mut request, INIT_IN_FLAGS2_AT, FLAG2_OVER_IO_URING);
        assert!(
            !init_offers_uring(&request),
            "flags2 only counts with INIT_EXT"
        );
        put_u32(&mut request, INIT_IN_FLAGS_AT, FLAG_INIT_EXT);
        assert!(init_offers_uring(&request));
        assert!(!init_offers_uring(&request[..IN_HEADER_BYTES + 10]));

        let mut reply = vec![0u8; OUT_HEADER_BYTES + INIT_OUT_BYTES];
        put_u32(&mut reply, INIT_OUT_FLAGS_AT, 1);
        put_u32(&mut reply, INIT_OUT_MAX_WRITE_AT, 1 << 20);
        reply[INIT_OUT_MAX_PAGES_AT..INIT_OUT_MAX_PAGES_AT + 2]
            .copy_from_slice(&256u16.to_le_bytes());
        assert_eq!(accept_uring(&mut reply, 4096), Some(1 << 20));
        assert_eq!(u32_at(&reply, INIT_OUT_FLAGS_AT), Some(1 | FLAG_INIT_EXT));
        assert_eq!(
            u32_at(&reply, INIT_OUT_FLAGS2_AT),
            Some(FLAG2_OVER_IO_URING)
        );
        // More pages than max_write: the pages decide.
        reply[INIT_OUT_MAX_PAGES_AT..INIT_OUT_MAX_PAGES_AT + 2]
            .copy_from_slice(&512u16.to_le_bytes());
        assert_eq!(accept_uring(&mut reply, 4096), Some(2 << 20));
        // An error reply or a short (old ABI) one is left alone.
        let mut short = reply[..OUT_HEADER_BYTES + 24].to_vec();
        assert_eq!(accept_uring(&mut short, 4096), None);
        put_u32(&mut reply, 4, (-libc::EPROTO) as u32);
        assert_eq!(accept_uring(&mut reply, 4096), None);
    }

    #[test]
    fn cpu_lists_count_and_queues_are_planned() {
        assert_eq!(cpu_list_count("0-1\n"), Some(2));
        assert_eq!(cpu_list_count("0-3,6,8-9"), Some(7));
        assert_eq!(cpu_list_count("0"), Some(1));
        assert_eq!(cpu_list_count(""), None);
        assert_eq!(cpu_list_count("3-1"), None);
        assert_eq!(cpu_list_count("x"), None);
        assert_eq!(
            plan_queues(2, &[0, 1]),
            vec![(Some(0), vec![0]), (Some(1), vec![1])]
        );
        // Allowed on 1 and 3 of 4: queues 0 and 2 spread over both.
        assert_eq!(
            plan_queues(4, &[1, 3]),
            vec![(Some(1), vec![0, 1]), (Some(3), vec![2, 3])]
        );
        assert_eq!(plan_queues(3, &[]), vec![(None, vec![0, 1, 2])]);
        assert_eq!(plan_queues(1, &[5]), vec![(None, vec![0])]);
    }
}
