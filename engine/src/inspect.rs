//! Offline inspection of a cache device: what the superblock says and which
//! slots hold valid blocks, optionally verifying every block's checksums.
//! Runs without the engine (plain reads), e.g. on a stopped node.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::block::BlockSize;
use crate::config::CACHE_FILE_NAME;
use crate::error::{Error, Result};
use crate::layout::{verify_chunks, Layout, SlotHeader, Superblock, SUPERBLOCK_BYTES};

/// Per-shard findings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionReport {
    /// Slots with a valid header of the current epoch.
    pub blocks: u64,
    /// Bytes of those blocks.
    pub bytes: u64,
    /// Blocks whose data failed a checksum (only with `verify`).
    pub corrupt: u64,
}

/// What [`inspect`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The file or device inspected.
    pub path: PathBuf,
    /// The superblock.
    pub superblock: Superblock,
    /// One entry per shard.
    pub regions: Vec<RegionReport>,
}

/// Inspects the cache in `path` (a `--cache-dir` or a block device).
pub fn inspect(path: &Path, verify: bool) -> Result<Report> {
    let path = if path.is_dir() {
        path.join(CACHE_FILE_NAME)
    } else {
        path.to_path_buf()
    };
    let file = File::open(&path).map_err(|e| Error::io("open the cache", &path, e))?;
    let mut page = vec![0u8; SUPERBLOCK_BYTES as usize];
    file.read_exact_at(&mut page, 0)
        .map_err(|e| Error::io("read the superblock of", &path, e))?;
    let superblock = Superblock::decode(&page).ok_or_else(|| {
        Error::Config(format!(
            "{} holds no DatenLord cache superblock (never used, or not a cache device)",
            path.display()
        ))
    })?;
    let layout = layout_of(&superblock, &path)?;
    let mut regions = vec![RegionReport::default(); layout.shards as usize];
    let mut header = vec![0u8; layout.header_bytes as usize];
    let mut data = vec![0u8; layout.block_size.bytes_usize()];
    for (shard, region) in regions.iter_mut().enumerate() {
        for slot in 0..layout.slots_per_shard {
            let pos = layout.slot_offset(shard as u32, slot);
            file.read_exact_at(&mut header, pos)
                .map_err(|e| Error::io("read a slot header of", &path, e))?;
            let Some(h) = SlotHeader::decode(&header, &layout, superblock.epoch) else {
                continue;
            };
            region.blocks += 1;
            region.bytes += u64::from(h.len);
            if verify {
                let block = &mut data[..h.len as usize];
                file.read_exact_at(block, pos + u64::from(layout.header_bytes))
                    .map_err(|e| Error::io("read a block of", &path, e))?;
                if !verify_chunks(block, 0, &h.chunk_crcs) {
                    region.corrupt += 1;
                }
            }
        }
    }
    Ok(Report {
        path,
        superblock,
        regions,
    })
}

/// The layout a superblock describes, checked as strictly as a layout the
/// engine computes itself (a superblock can have a valid CRC and still be
/// from a newer version or a damaged writer).
fn layout_of(sb: &Superblock, path: &Path) -> Result<Layout> {
    let unusable = |what: &str| {
        Error::Config(format!(
            "{}: the cache superblock {what}; this cache was not written by this version of DatenLord (or is damaged): delete the file or use another --cache-dir",
            path.display()
        ))
    };
    if sb.format_version != crate::layout::FORMAT_VERSION {
        return Err(unusable(&format!(
            "has format version {}",
            sb.format_version
        )));
    }
    let block_size = BlockSize::new(u64::from(sb.block_size))
        .map_err(|_| unusable("has an invalid block size"))?;
    let shards_ok = sb.shards >= 1 && sb.shards as usize <= crate::block::SHARDS_MAX;
    if !shards_ok
        || sb.header_bytes != crate::layout::header_bytes_for(block_size)
        || sb.slots_per_shard == 0
    {
        return Err(unusable("describes an impossible layout"));
    }
    let layout = Layout {
        block_size,
        shards: sb.shards,
        slots_per_shard: sb.slots_per_shard,
        header_bytes: sb.header_bytes,
    };
    let total =
        (u128::from(layout.slot_bytes()) * u128::from(sb.slots_per_shard) * u128::from(sb.shards))
            + u128::from(SUPERBLOCK_BYTES);
    let meta = std::fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
    let is_device = {
        use std::os::unix::fs::FileTypeExt;
        meta.file_type().is_block_device()
    };
    if !is_device && total > u128::from(meta.len()) {
        return Err(unusable("describes more slots than the file holds"));
    }
    Ok(layout)
}
