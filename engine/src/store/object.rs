//! Key layout and object format of the store (sans-IO).
//!
//! Every object (block, metadata snapshot, volume descriptor) is a 48-byte
//! header followed by its payload:
//!
//! ```text
//! magic "DLOB" | header version u16 | kind u16 | identity 3 x u64 |
//! payload length u64 | payload CRC32C u32 | header CRC32C u32
//! ```
//!
//! The identity is the block id (or the snapshot sequence), so an object
//! copied under the wrong key is caught too. All integers are little endian.
//! The write-back journal stores entries in exactly this format, so an entry
//! is uploaded as is.

use crate::block::BlockId;

/// Version of the store layout a volume descriptor records.
pub const STORE_FORMAT_VERSION: u32 = 1;
/// Bytes of an object header.
pub const OBJECT_HEADER_BYTES: usize = 48;
/// Key of the volume descriptor, relative to the store prefix.
pub const DESCRIPTOR_KEY: &str = "volume";
/// Directory of metadata snapshots, relative to the store prefix.
pub const META_DIR: &str = "meta";
/// Metadata snapshots kept; older ones are deleted.
pub const META_SNAPSHOTS_KEPT: usize = 3;

pub(crate) const MAGIC: [u8; 4] = *b"DLOB";
const HEADER_VERSION: u16 = 1;
const SNAPSHOT_PREFIX: &str = "snapshot-";
const DESCRIPTOR_PAYLOAD_BYTES: usize = 24;

/// What an object holds; checked against what the reader expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    /// A block of a file.
    Block(BlockId),
    /// A metadata snapshot with its sequence number.
    MetaSnapshot(u64),
    /// The volume descriptor.
    Descriptor,
}

impl ObjectKind {
    fn code(self) -> u16 {
        match self {
            Self::Block(_) => 1,
            Self::MetaSnapshot(_) => 2,
            Self::Descriptor => 3,
        }
    }

    fn identity(self) -> [u64; 3] {
        match self {
            Self::Block(id) => [id.ino.0, id.index, id.version],
            Self::MetaSnapshot(seq) => [seq, 0, 0],
            Self::Descriptor => [0; 3],
        }
    }
}

/// Key of a block, relative to the store prefix. The two hex digits come
/// from the hash of `(ino, index)`, spreading keys over 256 prefixes (S3
/// partitions request rates by prefix); all versions of a block share one.
pub fn block_key(id: BlockId) -> String {
    let spread = (id.key().hash64() >> 56) as u8;
    format!(
        "blocks/{spread:02x}/{}/{}/{}",
        id.ino.0, id.index, id.version
    )
}

/// The block a key names (relative to the store prefix), if it is a
/// well-formed block key: `blocks/<spread>/<ino>/<index>/<version>` with the
/// spread its `(ino, index)` hashes to.
pub fn parse_block_key(relative: &str) -> Option<BlockId> {
    let mut parts = relative.strip_prefix("blocks/")?.split('/');
    let spread = parts.next()?;
    let number = |part: Option<&str>| -> Option<u64> {
        let part = part?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (ino, index, version) = (
        number(parts.next())?,
        number(parts.next())?,
        number(parts.next())?,
    );
    if parts.next().is_some() {
        return None;
    }
    let id = BlockId::new(ino, index, version);
    (block_key(id).split('/').nth(1) == Some(spread)).then_some(id)
}

/// Key of a metadata snapshot, relative to the store prefix.
pub fn snapshot_key(seq: u64) -> String {
    format!("{META_DIR}/{SNAPSHOT_PREFIX}{seq:020}")
}

/// The sequence of a snapshot from the last part of its key.
pub fn parse_snapshot_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(SNAPSHOT_PREFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Encodes an object: header + payload.
pub fn encode(kind: ObjectKind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(OBJECT_HEADER_BYTES + payload.len());
    out.extend_from_slice(&encode_header(kind, payload));
    out.extend_from_slice(payload);
    out
}

/// The header [`encode`] puts before `payload`, for writers that write the
/// payload from where it lies.
pub fn encode_header(kind: ObjectKind, payload: &[u8]) -> [u8; OBJECT_HEADER_BYTES] {
    let mut out = Vec::with_capacity(OBJECT_HEADER_BYTES);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&HEADER_VERSION.to_le_bytes());
    out.extend_from_slice(&kind.code().to_le_bytes());
    for word in kind.identity() {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    let header_crc = crc32c::crc32c(&out);
    out.extend_from_slice(&header_crc.to_le_bytes());
    let mut header = [0; OBJECT_HEADER_BYTES];
    header.copy_from_slice(&out);
    header
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Checks an object's header (magic, header checksum, version) and returns
/// its kind code, identity and payload length.
fn header(bytes: &[u8]) -> Result<(u16, [u64; 3], u64), String> {
    if bytes.len() < OBJECT_HEADER_BYTES {
        return Err(format!(
            "{} bytes, shorter than the {OBJECT_HEADER_BYTES}-byte header",
            bytes.len()
        ));
    }
    if bytes[..4] != MAGIC {
        return Err("bad magic: not a DatenLord object".into());
    }
    let header_crc = u32_at(bytes, 44);
    if crc32c::crc32c(&bytes[..44]) != header_crc {
        return Err("header checksum mismatch".into());
    }
    let version = u16_at(bytes, 4);
    if version != HEADER_VERSION {
        return Err(format!("unknown header version {version}"));
    }
    let identity = [u64_at(bytes, 8), u64_at(bytes, 16), u64_at(bytes, 24)];
    Ok((u16_at(bytes, 6), identity, u64_at(bytes, 32)))
}

/// The block and payload length a block object's header names, checked
/// (not the payload: [`decode`] checks that). Lets a reader of objects laid
/// end to end (the journal's segments) find where the next one starts.
pub fn block_header(bytes: &[u8]) -> Result<(BlockId, u64), String> {
    let (kind, [ino, index, version], len) = header(bytes)?;
    let expected = ObjectKind::Block(BlockId::new(0, 0, 0)).code();
    if kind != expected {
        return Err(format!("object kind {kind}, expected {expected}"));
    }
    Ok((BlockId::new(ino, index, version), len))
}

/// The payload CRC32C and length a block object's header gives, checked
/// (magic, header checksum, version, kind, and that it names `id`): what
/// a cached copy of the block must match, read without its payload.
pub fn block_checksum(id: BlockId, header_bytes: &[u8]) -> Result<(u32, u64), String> {
    let (named, len) = block_header(header_bytes)?;
    if named != id {
        return Err(format!(
            "object is block {named}, expected {id}: stored under the wrong key"
        ));
    }
    Ok((u32_at(header_bytes, 40), len))
}

/// Checks an object and returns its payload range, or why it is corrupt.
pub fn decode(expected: ObjectKind, bytes: &[u8]) -> Result<&[u8], String> {
    let (kind, identity, len) = header(bytes)?;
    if kind != expected.code() {
        return Err(format!("object kind {kind}, expected {}", expected.code()));
    }
    if identity != expected.identity() {
        return Err(format!(
            "object is {identity:?}, expected {:?}: stored under the wrong key",
            expected.identity()
        ));
    }
    let payload = &bytes[OBJECT_HEADER_BYTES..];
    if len != payload.len() as u64 {
        return Err(format!(
            "payload is {} bytes, header says {len}",
            payload.len()
        ));
    }
    if crc32c::crc32c(payload) != u32_at(bytes, 40) {
        return Err("payload checksum mismatch".into());
    }
    Ok(payload)
}

/// What `datenlord format` writes: the identity of a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeDescriptor {
    /// Volume id.
    pub uuid: [u8; 16],
    /// Block size of every file of the volume.
    pub block_size: u32,
    /// [`STORE_FORMAT_VERSION`] of the writer.
    pub format_version: u32,
}

impl VolumeDescriptor {
    /// Encodes the descriptor as a store object.
    pub fn encode(&self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(DESCRIPTOR_PAYLOAD_BYTES);
        payload.extend_from_slice(&self.uuid);
        payload.extend_from_slice(&self.block_size.to_le_bytes());
        payload.extend_from_slice(&self.format_version.to_le_bytes());
        encode(ObjectKind::Descriptor, &payload)
    }

    /// Decodes a descriptor object.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let payload = decode(ObjectKind::Descriptor, bytes)?;
        if payload.len() != DESCRIPTOR_PAYLOAD_BYTES {
            return Err(format!(
                "descriptor payload is {} bytes, expected {DESCRIPTOR_PAYLOAD_BYTES}",
                payload.len()
            ));
        }
        let mut uuid = [0; 16];
        uuid.copy_from_slice(&payload[..16]);
        Ok(Self {
            uuid,
            block_size: u32_at(payload, 16),
            format_version: u32_at(payload, 20),
        })
    }

    /// The uuid as 32 hex digits.
    pub fn uuid_hex(&self) -> String {
        use std::fmt::Write;
        self.uuid.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn block_keys_parse_back_and_foreign_keys_do_not() {
        let id = BlockId::new(42, 7, 1_795_614_794_655_390_015);
        assert_eq!(parse_block_key(&block_key(id)), Some(id));
        let key = block_key(id);
        let wrong_spread = key.replacen("blocks/", "blocks/z", 1);
        assert_eq!(parse_block_key(&wrong_spread), None);
        for foreign in [
            "",
            "blocks/",
            "blocks/00/1/2",
            "blocks/00/1/2/3/4",
            "meta/x",
            "blocks/00/a/2/3",
            "blocks/00/-1/2/3",
        ] {
            assert_eq!(parse_block_key(foreign), None, "{foreign}");
        }
    }

    use super::*;

    #[test]
    fn a_block_header_alone_gives_the_payload_checksum_of_that_block_only() {
        let id = BlockId::new(42, 7, 3);
        let object = encode(ObjectKind::Block(id), b"payload");
        let header = &object[..OBJECT_HEADER_BYTES];
        assert_eq!(
            block_checksum(id, header),
            Ok((crc32c::crc32c(b"payload"), 7))
        );
        assert!(
            block_checksum(BlockId::new(42, 7, 4), header).is_err_and(|e| e.contains("wrong key"))
        );
        let mut flipped = header.to_vec();
        flipped[40] ^= 1;
        assert!(block_checksum(id, &flipped).is_err());
        assert!(block_checksum(id, &header[..40]).is_err());
    }

    #[test]
    fn key_layout() {
        let id = BlockId::new(42, 7, 3);
        let key = block_key(id);
        let spread = format!("{:02x}", (id.key().hash64() >> 56) as u8);
        assert_eq!(key, format!("blocks/{spread}/42/7/3"));
        // All versions of a block share the spread prefix.
        assert!(block_key(BlockId::new(42, 7, 9)).starts_with(&format!("blocks/{spread}/42/7/")));
        // Keys spread over many prefixes.
        let prefixes: std::collections::HashSet<String> = (0..1000)
            .map(|i| block_key(BlockId::new(1, i, 1))[7..9].to_owned())
            .collect();
        assert!(prefixes.len() > 200, "{}", prefixes.len());
        assert_eq!(snapshot_key(12), "meta/snapshot-00000000000000000012");
        assert_eq!(
            parse_snapshot_name("snapshot-00000000000000000012"),
            Some(12)
        );
        assert_eq!(parse_snapshot_name("snapshot-12"), None);
        assert_eq!(parse_snapshot_name("snapshot-0000000000000000001x"), None);
        assert_eq!(parse_snapshot_name("other"), None);
    }

    #[test]
    fn block_headers_name_the_block_and_length() {
        let id = BlockId::new(4, 5, 6);
        let object = encode(ObjectKind::Block(id), &[9; 70]);
        assert_eq!(block_header(&object), Ok((id, 70)));
        assert_eq!(block_header(&object[..OBJECT_HEADER_BYTES]), Ok((id, 70)));
        let snapshot = encode(ObjectKind::MetaSnapshot(3), b"x");
        assert!(block_header(&snapshot).is_err_and(|e| e.contains("kind")));
        let mut torn = object.clone();
        torn[20] ^= 1;
        assert!(block_header(&torn).is_err_and(|e| e.contains("header checksum")));
        assert!(block_header(&[0; OBJECT_HEADER_BYTES]).is_err_and(|e| e.contains("magic")));
        assert!(block_header(&object[..40]).is_err_and(|e| e.contains("shorter")));
    }

    fn check(bytes: &[u8], expected: ObjectKind, error: Option<&str>) {
        match (decode(expected, bytes), error) {
            (Ok(_), None) => {}
            (Err(e), Some(fragment)) => assert!(e.contains(fragment), "{e}"),
            (got, want) => panic!("got {got:?}, want error {want:?}"),
        }
    }

    #[test]
    fn codec_round_trip_and_corruption() {
        let id = BlockId::new(1, 2, 3);
        let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let object = encode(ObjectKind::Block(id), &payload);
        assert_eq!(decode(ObjectKind::Block(id), &object), Ok(&payload[..]));
        check(
            &encode(ObjectKind::Block(id), &[]),
            ObjectKind::Block(id),
            None,
        );

        check(&object[..10], ObjectKind::Block(id), Some("shorter"));
        check(
            &object[..object.len() - 1],
            ObjectKind::Block(id),
            Some("header says"),
        );
        check(
            &object,
            ObjectKind::Block(BlockId::new(1, 2, 4)),
            Some("wrong key"),
        );
        check(&object, ObjectKind::MetaSnapshot(1), Some("kind"));
        check(
            b"garbage garbage garbage garbage garbage garbage garbage",
            ObjectKind::Block(id),
            Some("magic"),
        );
        for flip in [4, 20, 40, 47, OBJECT_HEADER_BYTES, object.len() - 1] {
            let mut bad = object.clone();
            bad[flip] ^= 0x10;
            let err = decode(ObjectKind::Block(id), &bad).expect_err("corrupt");
            assert!(err.contains("checksum"), "flip {flip}: {err}");
        }
    }

    #[test]
    fn descriptor_round_trip() {
        let desc = VolumeDescriptor {
            uuid: [7; 16],
            block_size: 1 << 20,
            format_version: STORE_FORMAT_VERSION,
        };
        assert_eq!(VolumeDescriptor::decode(&desc.encode()), Ok(desc));
        assert_eq!(desc.uuid_hex(), "07".repeat(16));
        let mut bad = desc.encode();
        bad[50] ^= 1;
        assert!(VolumeDescriptor::decode(&bad).is_err());
        assert!(VolumeDescriptor::decode(&encode(ObjectKind::Descriptor, b"short")).is_err());
    }

    mod prop {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #[test]
            fn any_block_round_trips_and_any_bit_flip_is_caught(
                ino in any::<u64>(),
                index in any::<u64>(),
                version in any::<u64>(),
                payload in proptest::collection::vec(any::<u8>(), 0..4096),
                flip in any::<prop::sample::Index>(),
                bit in 0u8..8,
            ) {
                let id = BlockId::new(ino, index, version);
                let object = encode(ObjectKind::Block(id), &payload);
                prop_assert_eq!(decode(ObjectKind::Block(id), &object), Ok(&payload[..]));
                let mut bad = object.clone();
                let at = flip.index(bad.len());
                bad[at] ^= 1 << bit;
                prop_assert!(decode(ObjectKind::Block(id), &bad).is_err());
            }

            #[test]
            fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                let _ = decode(ObjectKind::Block(BlockId::new(1, 2, 3)), &bytes);
                let _ = VolumeDescriptor::decode(&bytes);
            }
        }
    }
}
