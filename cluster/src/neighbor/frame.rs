//! Frames of the neighbor block protocol. Sans IO.
//!
//! A frame is a fixed-size rkyv-archived [`Header`], then `len` payload
//! bytes. The receiver reads exactly [`HEADER_BYTES`] into an aligned
//! buffer, validates the archive in place (bytecheck: field tags, the
//! magic, the protocol version), checks the payload length against what
//! the header's kind allows, and only then reads the payload: a peer
//! cannot make the receiver allocate more than one block, and a malformed
//! header is an error (the connection is closed), never a panic.
//!
//! Requests: `Read` names a block version; `Warm` asks the home to fetch
//! one and keep it (warm-up orders); `Verify` (an administrator's, naming
//! no block) asks a node to check its cached blocks against the store.
//! Answers carry the request's number: `Block` (the block's valid bytes
//! and their CRC32C, checked by the receiver before the bytes are used or
//! cached), `Warmed` (no payload), `Verified` (the check's counters,
//! [`VERIFY_REPORT_BYTES`]), `Missing` (the block is in none of the home's
//! tiers nor the store), `Failed` (a short message). Answers may come in
//! any order: a connection carries several requests at once.

use rkyv::{Archive, Deserialize, Serialize};

/// "DLNB", the first field of every header.
pub const MAGIC: u32 = u32::from_le_bytes(*b"DLNB");
/// Version of the protocol this code speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Longest `Failed` message.
pub const MESSAGE_MAX_BYTES: u32 = 1024;
/// Bytes of a `Verified` payload: the counters of
/// [`datenlord_engine::VerifyReport`], little-endian u64 words.
pub const VERIFY_REPORT_BYTES: u32 = 7 * 8;
/// Bytes of an archived header on the wire.
pub const HEADER_BYTES: usize = std::mem::size_of::<ArchivedHeader>();

/// What a frame is.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
#[repr(u8)]
pub enum Kind {
    /// Asks for a block version (no payload).
    Read,
    /// A block's valid bytes (the payload).
    Block,
    /// The block is nowhere (no payload).
    Missing,
    /// The home could not read it (payload: a UTF-8 message).
    Failed,
    /// Asks the home to fetch a block version and keep it (warm-up; no
    /// payload either way).
    Warm,
    /// The home now holds the block (no payload).
    Warmed,
    /// Asks a node to check every block it caches against the store and
    /// drop bad copies (an administrator's request; names no block).
    Verify,
    /// What the check found (payload: [`VERIFY_REPORT_BYTES`]).
    Verified,
}

impl Kind {
    /// Whether the frame is a request (else an answer).
    pub fn is_request(self) -> bool {
        matches!(self, Self::Read | Self::Warm | Self::Verify)
    }
}

/// The header of every frame.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: u32,
    /// [`PROTOCOL_VERSION`].
    pub version: u16,
    /// What the frame is.
    pub kind: Kind,
    /// The request's number on its connection (answers repeat it).
    pub request: u64,
    /// The block: inode, index, version.
    pub ino: u64,
    /// Block index in the file.
    pub index: u64,
    /// Block version.
    pub block_version: u64,
    /// A `Read` of part of the block: its first byte.
    pub offset: u32,
    /// A `Read` of part of the block: its bytes (0: the whole block).
    pub range: u32,
    /// Payload bytes after the header.
    pub len: u32,
    /// CRC32C of the payload.
    pub crc: u32,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not an archived header of this protocol.
    #[error("malformed frame header ({0})")]
    Malformed(String),
    /// Another magic: not a DatenLord neighbor connection.
    #[error("not a DatenLord neighbor frame (magic {0:#010x})")]
    Magic(u32),
    /// Another protocol version.
    #[error("neighbor protocol version {0}, this node speaks {PROTOCOL_VERSION}: run the same release on every node")]
    Version(u16),
    /// A payload longer than the kind allows.
    #[error("a {kind:?} frame of {len} bytes, more than the {max} it may carry")]
    TooLong {
        /// The frame's kind.
        kind: Kind,
        /// The length it claimed.
        len: u32,
        /// The most it may carry.
        max: u32,
    },
    /// The payload does not match its checksum.
    #[error("the payload of a {len}-byte block does not match its checksum")]
    Checksum {
        /// Payload bytes.
        len: u32,
    },
    /// With `--data-tls off`: the frame's tag does not check (changed,
    /// dropped, replayed or reordered on the way).
    #[error("frame {0} of the connection fails its MAC: it was changed on the way")]
    Mac(u64),
}

/// An aligned buffer the size of one header, to read a header into.
#[derive(Debug, Clone)]
#[repr(C, align(16))]
pub struct HeaderBuf(pub [u8; HEADER_BYTES]);

impl Default for HeaderBuf {
    fn default() -> Self {
        Self([0; HEADER_BYTES])
    }
}

impl Header {
    /// A request for a block version.
    pub fn read(request: u64, ino: u64, index: u64, block_version: u64) -> Self {
        Self::new(Kind::Read, request, ino, index, block_version, &[])
    }

    /// A request for `range` bytes at `offset` of a block version.
    pub fn read_range(request: u64, id: [u64; 3], offset: u32, range: u32) -> Self {
        Self {
            offset,
            range,
            ..Self::read(request, id[0], id[1], id[2])
        }
    }

    /// A warm-up request for a block version.
    pub fn warm(request: u64, id: [u64; 3]) -> Self {
        Self::new(Kind::Warm, request, id[0], id[1], id[2], &[])
    }

    /// A request to check the node's cached blocks.
    pub fn verify(request: u64) -> Self {
        Self::new(Kind::Verify, request, 0, 0, 0, &[])
    }

    /// An answer of `kind` to `to`, for `payload`.
    pub fn answer(to: &Self, kind: Kind, payload: &[u8]) -> Self {
        Self::new(
            kind,
            to.request,
            to.ino,
            to.index,
            to.block_version,
            payload,
        )
    }

    fn new(
        kind: Kind,
        request: u64,
        ino: u64,
        index: u64,
        block_version: u64,
        payload: &[u8],
    ) -> Self {
        Self {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            kind,
            request,
            ino,
            index,
            block_version,
            offset: 0,
            range: 0,
            // Callers send at most a block (≤ 64 MiB) or a bounded message.
            len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
            crc: crc32c::crc32c(payload),
        }
    }

    /// The header's bytes on the wire.
    pub fn encode(&self) -> HeaderBuf {
        let mut out = HeaderBuf::default();
        // Archiving a plain struct of integers cannot fail.
        if let Ok(bytes) = rkyv::to_bytes::<rkyv::rancor::Error>(self) {
            let n = bytes.len().min(HEADER_BYTES);
            out.0[..n].copy_from_slice(&bytes[..n]);
        }
        out
    }

    /// Validates a received header in place; `block_max` is the most a
    /// `Block` payload may hold (the receiver's block size).
    pub fn decode(buf: &HeaderBuf, block_max: u32) -> Result<Self, FrameError> {
        let archived = rkyv::access::<ArchivedHeader, rkyv::rancor::Error>(&buf.0)
            .map_err(|e| FrameError::Malformed(e.to_string()))?;
        let magic = archived.magic.to_native();
        if magic != MAGIC {
            return Err(FrameError::Magic(magic));
        }
        let version = archived.version.to_native();
        if version != PROTOCOL_VERSION {
            return Err(FrameError::Version(version));
        }
        let kind = match archived.kind {
            ArchivedKind::Read => Kind::Read,
            ArchivedKind::Block => Kind::Block,
            ArchivedKind::Missing => Kind::Missing,
            ArchivedKind::Failed => Kind::Failed,
            ArchivedKind::Warm => Kind::Warm,
            ArchivedKind::Warmed => Kind::Warmed,
            ArchivedKind::Verify => Kind::Verify,
            ArchivedKind::Verified => Kind::Verified,
        };
        let len = archived.len.to_native();
        let max = match kind {
            Kind::Read | Kind::Missing | Kind::Warm | Kind::Warmed | Kind::Verify => 0,
            Kind::Block => block_max,
            Kind::Verified => VERIFY_REPORT_BYTES,
            Kind::Failed => MESSAGE_MAX_BYTES,
        };
        if len > max {
            return Err(FrameError::TooLong { kind, len, max });
        }
        let (offset, range) = (archived.offset.to_native(), archived.range.to_native());
        if kind != Kind::Read && (offset, range) != (0, 0) {
            // Only a read names part of a block: a warm-up order for part
            // of one would have the home keep a cut block.
            return Err(FrameError::Malformed(format!(
                "a {kind:?} frame names bytes {offset}+{range} of a block"
            )));
        }
        if u64::from(offset) + u64::from(range) > u64::from(block_max) {
            return Err(FrameError::TooLong {
                kind,
                len: offset.saturating_add(range),
                max: block_max,
            });
        }
        Ok(Self {
            magic,
            version,
            kind,
            request: archived.request.to_native(),
            ino: archived.ino.to_native(),
            index: archived.index.to_native(),
            block_version: archived.block_version.to_native(),
            offset,
            range,
            len,
            crc: archived.crc.to_native(),
        })
    }

    /// Checks a received payload against the header's checksum.
    pub fn check(&self, payload: &[u8]) -> Result<(), FrameError> {
        if payload.len() != self.len as usize || crc32c::crc32c(payload) != self.crc {
            return Err(FrameError::Checksum { len: self.len });
        }
        Ok(())
    }
}

/// The payload of a `Verified` answer.
pub fn verify_report_bytes(report: &datenlord_engine::VerifyReport) -> Vec<u8> {
    report
        .to_words()
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect()
}

/// The report a `Verified` payload carries; `None` if it is not one.
pub fn verify_report_of(payload: &[u8]) -> Option<datenlord_engine::VerifyReport> {
    if payload.len() != VERIFY_REPORT_BYTES as usize {
        return None;
    }
    let mut words = [0u64; 7];
    for (word, bytes) in words.iter_mut().zip(payload.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(bytes);
        *word = u64::from_le_bytes(b);
    }
    Some(datenlord_engine::VerifyReport::from_words(words))
}

/// A `Failed` message cut to [`MESSAGE_MAX_BYTES`] on a character boundary.
pub fn message_bytes(message: &str) -> &[u8] {
    let mut end = message.len().min(MESSAGE_MAX_BYTES as usize);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message.as_bytes()[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BLOCK: u32 = 1 << 20;

    #[test]
    fn headers_round_trip_and_answers_name_their_request() {
        let read = Header::read(7, 42, 3, 9);
        assert_eq!(Header::decode(&read.encode(), BLOCK), Ok(read));
        let payload = vec![5u8; 4096];
        let block = Header::answer(&read, Kind::Block, &payload);
        let back = Header::decode(&block.encode(), BLOCK).expect("decode");
        assert_eq!((back.request, back.ino, back.index), (7, 42, 3));
        assert_eq!(back.check(&payload), Ok(()));
        let mut flipped = payload.clone();
        flipped[100] ^= 1;
        assert_eq!(
            back.check(&flipped),
            Err(FrameError::Checksum { len: 4096 })
        );
        assert!(back.check(&payload[..4095]).is_err());
    }

    #[test]
    fn ranges_round_trip_and_may_not_pass_the_block() {
        let part = Header::read_range(3, [42, 1, 9], 4096, 8192);
        assert_eq!(Header::decode(&part.encode(), BLOCK), Ok(part));
        let beyond = Header::read_range(3, [42, 1, 9], BLOCK - 10, 11);
        assert!(Header::decode(&beyond.encode(), BLOCK).is_err());
        let huge = Header::read_range(3, [42, 1, 9], u32::MAX, u32::MAX);
        assert!(Header::decode(&huge.encode(), BLOCK).is_err());
    }

    #[test]
    fn lengths_beyond_what_a_kind_carries_are_refused_before_reading() {
        let read = Header::read(1, 1, 0, 1);
        let big = Header {
            len: BLOCK + 1,
            ..Header::answer(&read, Kind::Block, &[])
        };
        assert!(matches!(
            Header::decode(&big.encode(), BLOCK),
            Err(FrameError::TooLong { .. })
        ));
        let read_with_payload = Header { len: 1, ..read };
        assert!(Header::decode(&read_with_payload.encode(), BLOCK).is_err());
        let long_message = Header {
            len: MESSAGE_MAX_BYTES + 1,
            ..Header::answer(&read, Kind::Failed, &[])
        };
        assert!(Header::decode(&long_message.encode(), BLOCK).is_err());
        assert_eq!(message_bytes(&"é".repeat(600)).len(), 1024);
        assert!(std::str::from_utf8(message_bytes(&"é".repeat(600))).is_ok());
    }

    #[test]
    fn only_a_read_names_part_of_a_block() {
        let part = Header::read_range(1, [1, 0, 1], 4096, 4096);
        assert!(Header::decode(&part.encode(), BLOCK).is_ok());
        let warm_part = Header {
            offset: 4096,
            range: 4096,
            ..Header::warm(1, [1, 0, 1])
        };
        assert!(matches!(
            Header::decode(&warm_part.encode(), BLOCK),
            Err(FrameError::Malformed(_))
        ));
        let answer_part = Header {
            range: 1,
            ..Header::answer(&part, Kind::Block, &[0; 10])
        };
        assert!(Header::decode(&answer_part.encode(), BLOCK).is_err());
        assert!(Header::decode(&Header::warm(1, [1, 0, 1]).encode(), BLOCK).is_ok());
    }

    #[test]
    fn a_verify_report_travels_in_a_bounded_payload() {
        let report = datenlord_engine::VerifyReport {
            blocks: 9,
            bytes: 1 << 40,
            matched: 5,
            mismatched: 1,
            corrupt: 1,
            absent: 1,
            unchecked: 1,
        };
        let payload = verify_report_bytes(&report);
        let answer = Header::answer(&Header::verify(4), Kind::Verified, &payload);
        let back = Header::decode(&answer.encode(), BLOCK).expect("decode");
        assert_eq!(back.check(&payload), Ok(()));
        assert_eq!(verify_report_of(&payload), Some(report));
        assert_eq!(verify_report_of(&payload[..8]), None);
        let longer = Header {
            len: VERIFY_REPORT_BYTES + 1,
            ..answer
        };
        assert!(matches!(
            Header::decode(&longer.encode(), BLOCK),
            Err(FrameError::TooLong { .. })
        ));
        assert!(Header::verify(1).kind.is_request());
    }

    #[test]
    fn foreign_magic_version_and_kind_are_refused() {
        let read = Header::read(1, 1, 0, 1);
        let other = Header { magic: 1, ..read };
        assert_eq!(
            Header::decode(&other.encode(), BLOCK),
            Err(FrameError::Magic(1))
        );
        let newer = Header { version: 2, ..read };
        assert_eq!(
            Header::decode(&newer.encode(), BLOCK),
            Err(FrameError::Version(2))
        );
        // The kind is one byte of the archive: a value past the enum's
        // variants fails validation.
        let mut buf = read.encode();
        let at = (0..HEADER_BYTES)
            .find(|&i| {
                let mut b = buf.clone();
                b.0[i] = 200;
                matches!(Header::decode(&b, BLOCK), Err(FrameError::Malformed(_)))
            })
            .expect("some byte is the kind's tag");
        buf.0[at] = 200;
        assert!(matches!(
            Header::decode(&buf, BLOCK),
            Err(FrameError::Malformed(_))
        ));
    }

    proptest! {
        /// Any bytes at all decode to a header or an error, never a panic,
        /// and whatever decodes respects the length limits.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), HEADER_BYTES)) {
            let mut buf = HeaderBuf::default();
            buf.0.copy_from_slice(&bytes);
            if let Ok(h) = Header::decode(&buf, BLOCK) {
                prop_assert!(h.len <= BLOCK);
                prop_assert_eq!(h.magic, MAGIC);
            }
        }

        /// A valid header with one byte changed is refused or decodes to
        /// a header that still respects the limits.
        #[test]
        fn damaged_headers_stay_within_limits(
            request in any::<u64>(), ino in any::<u64>(), at in 0..HEADER_BYTES, byte in any::<u8>()
        ) {
            let mut buf = Header::read(request, ino, 0, 1).encode();
            buf.0[at] = byte;
            if let Ok(h) = Header::decode(&buf, BLOCK) {
                prop_assert!(h.len <= BLOCK);
            }
        }
    }
}
