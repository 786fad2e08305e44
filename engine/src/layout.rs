//! On-disk format of the NVMe tier: the layout of the cache device and the
//! codecs of its superblock and slot headers. Pure code: no IO.
//!
//! ```text
//! offset 0                  superblock (4 KiB)
//! SUPERBLOCK_BYTES          region of shard 0: slots_per_shard slots
//!   slot = [header (header_bytes)][block data (block_size)]
//! ...                       region of shard 1, ...
//! ```
//! A slot header and its data are written with one O_DIRECT write. The header
//! carries the block id, its length and a CRC32C per 4 KiB chunk of data, so a
//! 4 KiB read is verified without reading the whole block, and a torn write
//! (new header, old data) fails its checksum instead of being served.
//! Every header carries the superblock's `epoch`: when the layout changes
//! (block size, shard count, size) the device is re-initialised with a new
//! epoch and every old header stops counting, without rewriting the device.

use rkyv::{Archive, Deserialize, Serialize};

use crate::block::{BlockId, BlockSize};
use crate::error::{Error, Result};

/// Bytes reserved for the superblock at the start of the device.
pub const SUPERBLOCK_BYTES: u64 = 4096;
/// Unit of O_DIRECT IO and of data checksums.
pub const CHUNK_BYTES: usize = 4096;
/// Fewest slots a shard's NVMe region may have.
pub const DISK_SLOTS_PER_SHARD_MIN: u64 = 4;
/// Bytes before the archived record in a header page: length and CRC32C.
const RECORD_PREFIX_BYTES: usize = 8;
/// Bytes of a slot header besides the chunk checksums (rkyv record + prefix).
const HEADER_FIXED_BYTES: usize = 128;
/// Identifies a DatenLord cache superblock.
pub const SUPERBLOCK_MAGIC: u64 = 0x4441_5445_4e43_4143; // "DATENCAC"
/// Identifies a slot header.
pub const SLOT_MAGIC: u64 = 0x444c_534c_4f54_3031; // "DLSLOT01"
/// Version of this on-disk format.
pub const FORMAT_VERSION: u32 = 1;

/// Geometry of a cache device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Block size of the volume.
    pub block_size: BlockSize,
    /// Shards, one region each.
    pub shards: u32,
    /// Slots in each shard's region.
    pub slots_per_shard: u32,
    /// Bytes of a slot header (a multiple of [`CHUNK_BYTES`]).
    pub header_bytes: u32,
}

impl Layout {
    /// Fits as many slots as `size_bytes` holds, split evenly over `shards`.
    pub fn new(size_bytes: u64, block_size: BlockSize, shards: usize) -> Result<Self> {
        let header_bytes = header_bytes_for(block_size);
        let slot_bytes = u64::from(header_bytes) + u64::from(block_size.bytes());
        let per_shard = size_bytes.saturating_sub(SUPERBLOCK_BYTES) / shards as u64 / slot_bytes;
        if per_shard < DISK_SLOTS_PER_SHARD_MIN {
            let needed = SUPERBLOCK_BYTES + DISK_SLOTS_PER_SHARD_MIN * shards as u64 * slot_bytes;
            return Err(Error::Config(format!(
                "--cache-size {size_bytes} is too small for {shards} shards of {} KiB blocks: use at least {needed} bytes ({} MiB)",
                block_size.bytes() / 1024,
                needed.div_ceil(1 << 20)
            )));
        }
        let slots_per_shard = u32::try_from(per_shard).map_err(|_| {
            Error::Config(format!(
                "--cache-size {size_bytes} needs more than 2^32 slots per shard: use a larger --block-size, more --cores or a smaller --cache-size"
            ))
        })?;
        Ok(Self {
            block_size,
            shards: shards as u32,
            slots_per_shard,
            header_bytes,
        })
    }

    /// Bytes of one slot (header + data).
    pub fn slot_bytes(&self) -> u64 {
        u64::from(self.header_bytes) + u64::from(self.block_size.bytes())
    }

    /// Bytes of one shard's region.
    pub fn region_bytes(&self) -> u64 {
        self.slot_bytes() * u64::from(self.slots_per_shard)
    }

    /// Bytes of the whole device in use.
    pub fn total_bytes(&self) -> u64 {
        SUPERBLOCK_BYTES + self.region_bytes() * u64::from(self.shards)
    }

    /// Device offset of a slot's header.
    pub fn slot_offset(&self, shard: u32, slot: u32) -> u64 {
        debug_assert!(shard < self.shards && slot < self.slots_per_shard);
        SUPERBLOCK_BYTES
            + self.region_bytes() * u64::from(shard)
            + self.slot_bytes() * u64::from(slot)
    }

    /// Device offset of a slot's data.
    pub fn data_offset(&self, shard: u32, slot: u32) -> u64 {
        self.slot_offset(shard, slot) + u64::from(self.header_bytes)
    }

    /// Checksummed chunks in a full block.
    pub fn chunks_per_block(&self) -> usize {
        self.block_size.bytes_usize() / CHUNK_BYTES
    }
}

/// Header bytes for a block size: room for one CRC per chunk, page aligned.
pub fn header_bytes_for(block_size: BlockSize) -> u32 {
    let chunks = block_size.bytes_usize() / CHUNK_BYTES;
    (HEADER_FIXED_BYTES + 4 * chunks).next_multiple_of(CHUNK_BYTES) as u32
}

/// The superblock: which layout and epoch the device was initialised with.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// [`SUPERBLOCK_MAGIC`].
    pub magic: u64,
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Block size in bytes.
    pub block_size: u32,
    /// Shards.
    pub shards: u32,
    /// Slots per shard region.
    pub slots_per_shard: u32,
    /// Header bytes per slot.
    pub header_bytes: u32,
    /// Random per initialisation; slot headers of another epoch are ignored.
    pub epoch: u64,
}

impl Superblock {
    /// The superblock for a layout.
    pub fn new(layout: &Layout, epoch: u64) -> Self {
        Self {
            magic: SUPERBLOCK_MAGIC,
            format_version: FORMAT_VERSION,
            block_size: layout.block_size.bytes(),
            shards: layout.shards,
            slots_per_shard: layout.slots_per_shard,
            header_bytes: layout.header_bytes,
            epoch,
        }
    }

    /// Whether the device was initialised with exactly this layout.
    pub fn matches(&self, layout: &Layout) -> bool {
        self.magic == SUPERBLOCK_MAGIC
            && self.format_version == FORMAT_VERSION
            && self.block_size == layout.block_size.bytes()
            && self.shards == layout.shards
            && self.slots_per_shard == layout.slots_per_shard
            && self.header_bytes == layout.header_bytes
    }

    /// Writes the superblock into the start of `page` (at least 4 KiB, zeroed by the caller).
    pub fn encode(&self, page: &mut [u8]) -> Result<()> {
        to_record_bytes(rkyv::to_bytes::<rkyv::rancor::Error>(self), page)
    }

    /// Reads a superblock; `None` when the page holds none or a corrupt one.
    pub fn decode(page: &[u8]) -> Option<Self> {
        let bytes = record_bytes(page)?;
        rkyv::from_bytes::<Self, rkyv::rancor::Error>(&bytes)
            .ok()
            .filter(|sb| sb.magic == SUPERBLOCK_MAGIC)
    }
}

/// The header of one NVMe slot.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SlotHeader {
    /// [`SLOT_MAGIC`].
    pub magic: u64,
    /// Epoch of the superblock the slot was written under.
    pub epoch: u64,
    /// Block inode.
    pub ino: u64,
    /// Block index.
    pub index: u64,
    /// Block version.
    pub version: u64,
    /// Valid bytes of the block (less than the block size for a file tail).
    pub len: u32,
    /// CRC32C of each 4 KiB chunk of the valid bytes (the last one partial).
    pub chunk_crcs: Vec<u32>,
}

impl SlotHeader {
    /// The header describing `data` as block `id`.
    pub fn for_block(id: BlockId, epoch: u64, data: &[u8]) -> Self {
        Self {
            magic: SLOT_MAGIC,
            epoch,
            ino: id.ino.0,
            index: id.index,
            version: id.version,
            len: data.len() as u32,
            chunk_crcs: data.chunks(CHUNK_BYTES).map(crc32c::crc32c).collect(),
        }
    }

    /// The block this header describes.
    pub fn block_id(&self) -> BlockId {
        BlockId::new(self.ino, self.index, self.version)
    }

    /// Writes the header into `page` (`header_bytes` long, zeroed by the caller).
    pub fn encode(&self, page: &mut [u8]) -> Result<()> {
        to_record_bytes(rkyv::to_bytes::<rkyv::rancor::Error>(self), page)
    }

    /// Reads a header that belongs to `epoch` and fits `layout`; `None` for
    /// an empty, corrupt, foreign or stale slot.
    pub fn decode(page: &[u8], layout: &Layout, epoch: u64) -> Option<Self> {
        let bytes = record_bytes(page)?;
        let header = rkyv::from_bytes::<Self, rkyv::rancor::Error>(&bytes).ok()?;
        let chunks = (header.len as usize).div_ceil(CHUNK_BYTES);
        let valid = header.magic == SLOT_MAGIC
            && header.epoch == epoch
            && header.len > 0
            && header.len <= layout.block_size.bytes()
            && header.chunk_crcs.len() == chunks;
        valid.then_some(header)
    }
}

/// Verifies the chunks of `data` (which starts at chunk `first_chunk` of the
/// block) against their checksums. `data` holds whole chunks except that the
/// last one may end at the block's length.
pub fn verify_chunks(data: &[u8], first_chunk: usize, crcs: &[u32]) -> bool {
    data.chunks(CHUNK_BYTES).enumerate().all(|(i, chunk)| {
        crcs.get(first_chunk + i)
            .is_some_and(|&crc| crc32c::crc32c(chunk) == crc)
    })
}

fn to_record_bytes<E: std::fmt::Display>(
    bytes: std::result::Result<rkyv::util::AlignedVec, E>,
    page: &mut [u8],
) -> Result<()> {
    let bytes =
        bytes.map_err(|e| Error::InvalidRequest(format!("encoding an on-disk record: {e}")))?;
    let end = RECORD_PREFIX_BYTES + bytes.len();
    if end > page.len() {
        return Err(Error::InvalidRequest(format!(
            "on-disk record of {} bytes does not fit its {}-byte page",
            bytes.len(),
            page.len()
        )));
    }
    page[0..4].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
    page[4..8].copy_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
    page[RECORD_PREFIX_BYTES..end].copy_from_slice(&bytes);
    Ok(())
}

/// The archived bytes of a record whose length and CRC check out, copied to
/// an aligned buffer (rkyv needs alignment; a copy is cheap on this cold path).
fn record_bytes(page: &[u8]) -> Option<rkyv::util::AlignedVec> {
    let len = u32::from_le_bytes(page.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(page.get(4..8)?.try_into().ok()?);
    let bytes = page.get(RECORD_PREFIX_BYTES..RECORD_PREFIX_BYTES.checked_add(len)?)?;
    if len == 0 || crc32c::crc32c(bytes) != crc {
        return None;
    }
    let mut aligned = rkyv::util::AlignedVec::with_capacity(len);
    aligned.extend_from_slice(bytes);
    Some(aligned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn layout() -> Layout {
        Layout::new(64 << 20, BlockSize::new(256 << 10).expect("bs"), 2).expect("layout")
    }

    #[test]
    fn geometry() {
        let l = layout();
        assert_eq!(l.header_bytes, 4096);
        assert_eq!(l.slot_bytes(), 4096 + (256 << 10));
        assert!(l.total_bytes() <= 64 << 20);
        assert_eq!(l.slot_offset(0, 0), SUPERBLOCK_BYTES);
        assert_eq!(l.slot_offset(1, 0), SUPERBLOCK_BYTES + l.region_bytes());
        assert_eq!(l.data_offset(0, 1) % CHUNK_BYTES as u64, 0);
        // 16 MiB blocks need 4096 checksums: a 20 KiB header.
        assert_eq!(
            header_bytes_for(BlockSize::new(16 << 20).expect("bs")),
            5 * 4096
        );
    }

    #[test]
    fn superblock_roundtrip_and_mismatch() {
        let l = layout();
        let sb = Superblock::new(&l, 77);
        let mut page = vec![0u8; 4096];
        sb.encode(&mut page).expect("encode");
        let back = Superblock::decode(&page).expect("decode");
        assert_eq!(back, sb);
        assert!(back.matches(&l));
        let other =
            Layout::new(64 << 20, BlockSize::new(256 << 10).expect("bs"), 1).expect("layout");
        assert!(!back.matches(&other));
        assert_eq!(Superblock::decode(&[0u8; 4096]), None);
    }

    proptest! {
        #[test]
        fn header_roundtrip(len in 1usize..(256 << 10), seed in any::<u8>(), epoch in any::<u64>()) {
            let l = layout();
            let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
            let id = BlockId::new(9, 3, 12);
            let header = SlotHeader::for_block(id, epoch, &data);
            let mut page = vec![0u8; l.header_bytes as usize];
            header.encode(&mut page).expect("encode");
            let back = SlotHeader::decode(&page, &l, epoch).expect("decode");
            prop_assert_eq!(back.block_id(), id);
            prop_assert!(verify_chunks(&data, 0, &back.chunk_crcs));
            prop_assert_eq!(SlotHeader::decode(&page, &l, epoch ^ 1), None);
        }

        #[test]
        fn any_flipped_header_byte_is_detected(pos in 0usize..200, bit in 0u8..8) {
            let l = layout();
            let data = vec![5u8; 10_000];
            let header = SlotHeader::for_block(BlockId::new(1, 2, 3), 4, &data);
            let mut page = vec![0u8; l.header_bytes as usize];
            header.encode(&mut page).expect("encode");
            let used = 8 + u32::from_le_bytes(page[0..4].try_into().expect("4")) as usize;
            let pos = pos % used;
            page[pos] ^= 1 << bit;
            prop_assert_eq!(SlotHeader::decode(&page, &l, 4), None);
        }

        #[test]
        fn flipped_data_fails_its_chunk(pos in 0usize..10_000, bit in 0u8..8) {
            let mut data = vec![5u8; 10_000];
            let crcs = SlotHeader::for_block(BlockId::new(1, 2, 3), 4, &data).chunk_crcs;
            data[pos] ^= 1 << bit;
            prop_assert!(!verify_chunks(&data, 0, &crcs));
            let chunk = pos / CHUNK_BYTES;
            let start = chunk * CHUNK_BYTES;
            let end = (start + CHUNK_BYTES).min(data.len());
            prop_assert!(!verify_chunks(&data[start..end], chunk, &crcs));
        }
    }

    #[test]
    fn too_small_cache_is_a_clear_error() {
        let msg = Layout::new(1 << 20, BlockSize::default(), 2)
            .expect_err("small")
            .to_string();
        assert!(
            msg.contains("--cache-size") && msg.contains("at least"),
            "{msg}"
        );
    }
}
