//! What goes by SEND over the RDMA transport. Sans IO.
//!
//! A request is a [`Header`] (the TCP path's frame header, encoded and
//! validated by the same code) followed by a [`SLOT_BYTES`] slot: where in
//! the requester's registered memory the home is to RDMA-WRITE the answer's
//! payload. An answer is a bare header; its payload is already in the slot
//! (written before the SEND on the same queue pair). A receive of any
//! other length is a broken peer.

use super::verbs::RemoteSlot;
use crate::neighbor::frame::{FrameError, Header, HeaderBuf, HEADER_BYTES};

/// Bytes of a request's slot: address, rkey, length (little-endian).
pub const SLOT_BYTES: usize = 16;
/// Bytes of a request by SEND.
pub const REQUEST_BYTES: usize = HEADER_BYTES + SLOT_BYTES;
/// Bytes of an answer by SEND.
pub const ANSWER_BYTES: usize = HEADER_BYTES;

/// A request's bytes.
pub fn encode_request(header: &Header, slot: RemoteSlot) -> [u8; REQUEST_BYTES] {
    let mut out = [0u8; REQUEST_BYTES];
    out[..HEADER_BYTES].copy_from_slice(&header.encode().0);
    out[HEADER_BYTES..HEADER_BYTES + 8].copy_from_slice(&slot.addr.to_le_bytes());
    out[HEADER_BYTES + 8..HEADER_BYTES + 12].copy_from_slice(&slot.rkey.to_le_bytes());
    out[HEADER_BYTES + 12..].copy_from_slice(&slot.len.to_le_bytes());
    out
}

/// A received request: its header validated like a TCP frame's
/// (`block_max` bounds lengths and ranges) and the slot it names (not yet
/// checked against anything: [`super::home`] does).
pub fn decode_request(bytes: &[u8], block_max: u32) -> Result<(Header, RemoteSlot), FrameError> {
    if bytes.len() != REQUEST_BYTES {
        return Err(FrameError::Malformed(format!(
            "an RDMA request of {} bytes (it has {REQUEST_BYTES})",
            bytes.len()
        )));
    }
    let header = decode_header(&bytes[..HEADER_BYTES], block_max)?;
    let slot = &bytes[HEADER_BYTES..];
    let word = |at: usize| u32::from_le_bytes([slot[at], slot[at + 1], slot[at + 2], slot[at + 3]]);
    let slot = RemoteSlot {
        addr: u64::from(word(0)) | u64::from(word(4)) << 32,
        rkey: word(8),
        len: word(12),
    };
    Ok((header, slot))
}

/// A received header, validated in an aligned buffer.
pub fn decode_header(bytes: &[u8], block_max: u32) -> Result<Header, FrameError> {
    if bytes.len() != HEADER_BYTES {
        return Err(FrameError::Malformed(format!(
            "a header of {} bytes (it has {HEADER_BYTES})",
            bytes.len()
        )));
    }
    let mut buf = HeaderBuf::default();
    buf.0.copy_from_slice(bytes);
    Header::decode(&buf, block_max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_round_trip() {
        let header = Header::read_range(9, [1, 2, 3], 4096, 100);
        let slot = RemoteSlot {
            addr: 0x7f00_dead_beef,
            rkey: 0xabcd,
            len: 100,
        };
        let bytes = encode_request(&header, slot);
        assert_eq!(decode_request(&bytes, 1 << 20), Ok((header, slot)));
        assert!(decode_request(&bytes[1..], 1 << 20).is_err());
        assert!(decode_header(&bytes[..HEADER_BYTES - 1], 1 << 20).is_err());
    }

    proptest! {
        /// Any received bytes decode to a request within the limits or an
        /// error, never a panic.
        #[test]
        fn arbitrary_requests_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..REQUEST_BYTES + 8)) {
            if let Ok((h, _)) = decode_request(&bytes, 1 << 20) {
                prop_assert!(h.len <= 1 << 20);
            }
        }
    }
}
