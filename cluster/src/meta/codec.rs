//! Framing of everything the state machine encodes: a magic number, a format
//! version, the payload length and a CRC32C around an rkyv archive. The
//! archive is validated (bytecheck) and copied to an aligned buffer before
//! it is read, so damaged, truncated or foreign bytes are an error, never a
//! panic.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use super::error::DecodeError;

/// Bytes of a frame header: magic, version, length, CRC32C.
pub(crate) const FRAME_HEADER_BYTES: usize = 16;

/// CRC32C (Castagnoli) of `bytes`: every command of the log is framed,
/// so the hardware instruction (the `crc32c` crate) is used where the CPU
/// has it.
pub(crate) fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// The archive of `value`.
///
/// # Panics
/// If the archive exceeds rkyv's 2 GiB relative-pointer range: callers
/// bound what they archive (commands by their limits, snapshots by records).
pub(crate) fn archive<T>(value: &T) -> AlignedVec
where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    rkyv::to_bytes::<rancor::Error>(value).expect("archiving a bounded in-memory value cannot fail")
}

/// The value archived in `payload`, validated.
pub(crate) fn unarchive<T>(payload: &[u8]) -> Result<T, DecodeError>
where
    T: Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + Deserialize<T, HighDeserializer<rancor::Error>>,
{
    let mut aligned = AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    rkyv::from_bytes::<T, rancor::Error>(&aligned).map_err(|e| DecodeError::Archive(e.to_string()))
}

/// Appends a frame of `payload` to `out`.
pub(crate) fn put_frame(out: &mut Vec<u8>, magic: [u8; 4], version: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("frames are bounded far below 4 GiB");
    out.reserve(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Reads the frame at the start of `bytes`: its payload and the bytes after it.
pub(crate) fn take_frame<'a>(
    bytes: &'a [u8],
    magic: [u8; 4],
    version: u32,
    what: &'static str,
    max_bytes: usize,
) -> Result<(&'a [u8], &'a [u8]), DecodeError> {
    let header = bytes
        .get(..FRAME_HEADER_BYTES)
        .ok_or(DecodeError::Truncated {
            what,
            needed: FRAME_HEADER_BYTES,
            available: bytes.len(),
        })?;
    if header[0..4] != magic {
        return Err(DecodeError::BadMagic(what));
    }
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let found = word(4);
    if found != version {
        return Err(DecodeError::UnsupportedVersion {
            what,
            found,
            supported: version,
        });
    }
    let len = word(8) as usize;
    if len > max_bytes {
        return Err(DecodeError::TooLarge {
            what,
            len,
            max: max_bytes,
        });
    }
    let rest = &bytes[FRAME_HEADER_BYTES..];
    let payload = rest.get(..len).ok_or(DecodeError::Truncated {
        what,
        needed: FRAME_HEADER_BYTES + len,
        available: bytes.len(),
    })?;
    if crc32c(payload) != word(12) {
        return Err(DecodeError::Checksum(what));
    }
    Ok((payload, &rest[len..]))
}

/// Reads a frame that must be all of `bytes`.
pub(crate) fn only_frame<'a>(
    bytes: &'a [u8],
    magic: [u8; 4],
    version: u32,
    what: &'static str,
    max_bytes: usize,
) -> Result<&'a [u8], DecodeError> {
    let (payload, rest) = take_frame(bytes, magic, version, what, max_bytes)?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn frames() {
        let mut out = Vec::new();
        put_frame(&mut out, *b"TEST", 7, b"payload");
        let check = |bytes: &[u8], expected: Result<&[u8], DecodeError>| {
            assert_eq!(only_frame(bytes, *b"TEST", 7, "test", 64), expected);
        };
        check(&out, Ok(b"payload"));
        check(
            &out[..out.len() - 1],
            Err(DecodeError::Truncated {
                what: "test",
                needed: 23,
                available: 22,
            }),
        );
        check(
            &out[..3],
            Err(DecodeError::Truncated {
                what: "test",
                needed: 16,
                available: 3,
            }),
        );
        let mut longer = out.clone();
        longer.push(0);
        check(&longer, Err(DecodeError::Trailing(1)));
        let mut flipped = out.clone();
        flipped[20] ^= 1;
        check(&flipped, Err(DecodeError::Checksum("test")));
        let mut magic = out.clone();
        magic[0] = b'X';
        check(&magic, Err(DecodeError::BadMagic("test")));
        assert_eq!(
            only_frame(&out, *b"TEST", 8, "test", 64),
            Err(DecodeError::UnsupportedVersion {
                what: "test",
                found: 7,
                supported: 8
            })
        );
        assert_eq!(
            only_frame(&out, *b"TEST", 7, "test", 3),
            Err(DecodeError::TooLarge {
                what: "test",
                len: 7,
                max: 3
            })
        );
    }
}
