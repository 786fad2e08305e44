//! The NVMe tier driver of one shard: O_DIRECT IO on the shard's region of
//! the cache device through glommio, around the sans-IO [`DiskIndex`].

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use futures::StreamExt;
use glommio::io::{DmaBuffer, DmaFile, OpenOptions, ReadResult};
use tracing::{debug, info, warn};

use crate::block::{BlockId, BlockMap, ShardId};
use crate::disk_index::DiskIndex;
use crate::error::{Error, Result};
use crate::eviction::{AccessKind, PolicyKind};
use crate::layout::{verify_chunks, Layout, SlotHeader, CHUNK_BYTES};

/// Header reads in flight during a warm restart.
const RESTORE_READS_INFLIGHT_MAX: usize = 32;

/// Bytes of an NVMe hit.
#[derive(Debug)]
pub enum DiskBytes {
    /// Nothing was requested inside the block's length.
    Empty,
    /// Chunk-aligned bytes read from the device.
    Device(ReadResult),
    /// The block's write is still in flight: its buffer, `start..end`.
    InFlight(Rc<DmaBuffer>, usize, usize),
}

impl DiskBytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Self::Empty => &[],
            Self::Device(read) => read,
            Self::InFlight(buffer, start, end) => &buffer.as_bytes()[*start..*end],
        }
    }
}

/// Outcome of a read from the NVMe tier.
#[derive(Debug)]
pub enum DiskRead {
    /// The block is not on this tier.
    Miss,
    /// The block was here but its data failed a checksum: it is dropped.
    Corrupt,
    /// The requested bytes are `data[skip..skip + len]`.
    Hit {
        /// The bytes read.
        data: DiskBytes,
        /// Offset of the first requested byte in `data`.
        skip: usize,
        /// Valid requested bytes (shorter at the block's end).
        len: usize,
        /// Valid bytes of the whole block.
        block_len: u32,
    },
}

/// A block laid out for one O_DIRECT write: header page(s), then data.
/// From `prepare` on, reads of the block are served from its buffer.
#[derive(Debug)]
pub struct PreparedWrite {
    id: BlockId,
    header: SlotHeader,
    buffer: Rc<DmaBuffer>,
}

/// What [`DiskTier::write`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The block is on the device; `evicted` made room for it.
    Written {
        /// The block evicted, if any.
        evicted: Option<BlockId>,
    },
    /// Not written: already there, or every slot pinned or being written.
    Skipped,
}

/// Result of restoring a region after a restart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Slots with a valid header, now readable.
    pub blocks: u64,
    /// Slots with a valid header that were not kept (duplicate or foreign).
    pub skipped: u64,
    /// Slots whose header could not be read (device errors).
    pub unreadable: u64,
}

/// One shard's region of the cache device.
#[derive(Debug)]
pub struct DiskTier {
    file: DmaFile,
    path: PathBuf,
    layout: Layout,
    shard: u32,
    epoch: u64,
    index: RefCell<DiskIndex>,
    /// Blocks whose write is in flight, readable from their buffers so a
    /// block is never unreachable between memory eviction and NVMe commit.
    in_flight: RefCell<BlockMap<BlockId, (Rc<DmaBuffer>, u32)>>,
}

impl DiskTier {
    /// Opens the cache device for `shard`'s region.
    pub async fn open(
        path: &Path,
        layout: Layout,
        shard: ShardId,
        epoch: u64,
        policy: PolicyKind,
    ) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(path)
            .await
            .map_err(|e| {
                Error::io(
                    "open the cache device",
                    path,
                    std::io::Error::other(e.to_string()),
                )
            })?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            layout,
            shard: u32::from(shard.0),
            epoch,
            index: RefCell::new(DiskIndex::new(&layout, policy)),
            in_flight: RefCell::new(BlockMap::default()),
        })
    }

    /// Rebuilds the index from the slot headers of this shard's region.
    pub async fn restore(&self) -> Result<Restored> {
        let header_bytes = self.layout.header_bytes as usize;
        let mut reads = futures::stream::iter(0..self.layout.slots_per_shard)
            .map(|slot| async move {
                let pos = self.layout.slot_offset(self.shard, slot);
                (slot, self.file.read_at_aligned(pos, header_bytes).await)
            })
            .buffer_unordered(RESTORE_READS_INFLIGHT_MAX);
        let mut restored = Restored::default();
        while let Some((slot, read)) = reads.next().await {
            let page = match read {
                Ok(page) => page,
                Err(e) => {
                    // One unreadable sector costs one slot, not the node.
                    warn!(shard = self.shard, slot, err = %e, path = %self.path.display(), "cannot read a slot header; slot skipped");
                    restored.unreadable += 1;
                    continue;
                }
            };
            let Some(header) = SlotHeader::decode(&page, &self.layout, self.epoch) else {
                continue;
            };
            let owner = header.block_id().key().owner(self.layout.shards as usize);
            if u32::from(owner.0) == self.shard && self.index.borrow_mut().restore(slot, &header) {
                restored.blocks += 1;
            } else {
                restored.skipped += 1;
            }
        }
        info!(
            shard = self.shard,
            blocks = restored.blocks,
            skipped = restored.skipped,
            "NVMe tier restored"
        );
        Ok(restored)
    }

    /// Slots in the region.
    pub fn capacity(&self) -> u32 {
        self.index.borrow().capacity()
    }

    /// Readable blocks.
    pub fn len(&self) -> usize {
        self.index.borrow().len()
    }

    /// Whether no block is readable.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the block is here or being written.
    pub fn contains(&self, id: BlockId) -> bool {
        self.index.borrow().contains(id)
    }

    /// The block this tier would evict next.
    pub fn victim(&self) -> Option<BlockId> {
        self.index.borrow().victim()
    }

    /// Whether a block can be written without evicting.
    pub fn is_full(&self) -> bool {
        let index = self.index.borrow();
        index.len() >= index.capacity() as usize
    }

    /// Reads `len` bytes at `offset` of a block, verifying every chunk read.
    pub async fn read(
        &self,
        id: BlockId,
        offset: usize,
        len: usize,
        kind: AccessKind,
    ) -> Result<DiskRead> {
        let Some((slot, block_len)) = self.index.borrow_mut().lookup_pin(id, kind) else {
            return Ok(self.read_in_flight(id, offset, len));
        };
        let result = self.read_pinned(id, slot, offset, len, block_len).await;
        self.index.borrow_mut().unpin(slot);
        result
    }

    /// Reads a whole block, verifying its chunks, without recording an
    /// access (a check of the cache is not a use of the block). A block
    /// whose write is still in flight is read from its buffer.
    pub async fn read_quietly(&self, id: BlockId) -> Result<DiskRead> {
        let whole = self.layout.block_size.bytes_usize();
        let Some((slot, block_len)) = self.index.borrow_mut().pin(id) else {
            return Ok(self.read_in_flight(id, 0, whole));
        };
        let result = self.read_pinned(id, slot, 0, whole, block_len).await;
        self.index.borrow_mut().unpin(slot);
        result
    }

    /// The blocks this region holds, in no particular order.
    pub fn ids(&self) -> Vec<BlockId> {
        self.index.borrow().ids()
    }

    /// Drops a block whose bytes are wrong (they differ from the store's):
    /// its slot header is erased so a restart does not restore it; the slot
    /// is reused once the erase is done. Returns whether the block was here.
    pub async fn discard(&self, id: BlockId) -> bool {
        let Some((slot, _)) = self.index.borrow_mut().pin(id) else {
            return false;
        };
        let dropped = self.index.borrow_mut().drop_slot(id, slot);
        if dropped {
            warn!(shard = self.shard, block = %id, slot, "NVMe copy differs from the store: dropped, will refetch");
            self.erase_header(slot).await;
        }
        self.index.borrow_mut().unpin(slot);
        dropped
    }

    fn read_in_flight(&self, id: BlockId, offset: usize, len: usize) -> DiskRead {
        let in_flight = self.in_flight.borrow();
        let Some((buffer, block_len)) = in_flight.get(&id) else {
            return DiskRead::Miss;
        };
        let header = self.layout.header_bytes as usize;
        let start = offset.min(*block_len as usize);
        let end = (offset + len).min(*block_len as usize);
        DiskRead::Hit {
            data: DiskBytes::InFlight(Rc::clone(buffer), header + start, header + end),
            skip: 0,
            len: end - start,
            block_len: *block_len,
        }
    }

    async fn read_pinned(
        &self,
        id: BlockId,
        slot: u32,
        offset: usize,
        len: usize,
        block_len: u32,
    ) -> Result<DiskRead> {
        let block_len_usize = block_len as usize;
        let start = offset.min(block_len_usize);
        let end = (offset + len).min(block_len_usize);
        if start == end {
            return Ok(DiskRead::Hit {
                data: DiskBytes::Empty,
                skip: 0,
                len: 0,
                block_len,
            });
        }
        let first_chunk = start / CHUNK_BYTES;
        let aligned_start = first_chunk * CHUNK_BYTES;
        let aligned_end = end.next_multiple_of(CHUNK_BYTES);
        let pos = self.layout.data_offset(self.shard, slot) + aligned_start as u64;
        let data = self
            .file
            .read_at_aligned(pos, aligned_end - aligned_start)
            .await
            .map_err(|e| self.io_error("read", &e))?;
        let verified_end = aligned_end.min(block_len_usize) - aligned_start;
        let ok = data.len() >= verified_end
            && verify_chunks(
                &data[..verified_end],
                first_chunk,
                self.index.borrow().crcs(slot),
            );
        if !ok {
            warn!(shard = self.shard, block = %id, slot, "NVMe slot failed its checksum: dropped, will refetch");
            self.index.borrow_mut().drop_slot(id, slot);
            self.erase_header(slot).await;
            return Ok(DiskRead::Corrupt);
        }
        Ok(DiskRead::Hit {
            data: DiskBytes::Device(data),
            skip: start - aligned_start,
            len: end - start,
            block_len,
        })
    }

    /// Overwrites a slot's header so a restart does not restore it again.
    async fn erase_header(&self, slot: u32) {
        let mut page = self
            .file
            .alloc_dma_buffer(self.layout.header_bytes as usize);
        page.as_bytes_mut().fill(0);
        if let Err(err) = self
            .file
            .write_at(page, self.layout.slot_offset(self.shard, slot))
            .await
        {
            warn!(shard = self.shard, slot, %err, "erasing a corrupt slot header failed");
        }
    }

    /// Lays a block out for writing (copies `data`, so the caller's buffer,
    /// e.g. a memory slot being evicted, is free again at once).
    pub fn prepare(&self, id: BlockId, data: &[u8]) -> Result<PreparedWrite> {
        if data.is_empty() || data.len() > self.layout.block_size.bytes_usize() {
            return Err(Error::InvalidRequest(format!(
                "block {id} has {} bytes; blocks hold 1 to {} bytes",
                data.len(),
                self.layout.block_size.bytes()
            )));
        }
        let header_bytes = self.layout.header_bytes as usize;
        let header = SlotHeader::for_block(id, self.epoch, data);
        let mut buffer = self
            .file
            .alloc_dma_buffer(header_bytes + data.len().next_multiple_of(CHUNK_BYTES));
        let bytes = buffer.as_bytes_mut();
        bytes[..header_bytes].fill(0);
        header.encode(&mut bytes[..header_bytes])?;
        bytes[header_bytes..header_bytes + data.len()].copy_from_slice(data);
        bytes[header_bytes + data.len()..].fill(0);
        let buffer = Rc::new(buffer);
        // Readable from now on: a block evicted from memory must not
        // disappear until its NVMe copy is committed.
        self.in_flight
            .borrow_mut()
            .insert(id, (Rc::clone(&buffer), header.len));
        Ok(PreparedWrite { id, header, buffer })
    }

    /// Writes a prepared block into a slot, evicting when full.
    pub async fn write(&self, prepared: PreparedWrite, kind: AccessKind) -> Result<WriteOutcome> {
        let Some(reservation) = self.index.borrow_mut().reserve(prepared.id) else {
            debug!(shard = self.shard, block = %prepared.id, "NVMe write skipped: present or no free slot");
            self.forget_in_flight(&prepared);
            return Ok(WriteOutcome::Skipped);
        };
        let pos = self.layout.slot_offset(self.shard, reservation.slot);
        let written = self
            .file
            .write_rc_at(Rc::clone(&prepared.buffer), pos)
            .await;
        self.forget_in_flight(&prepared);
        match written {
            Ok(_) => {
                self.index
                    .borrow_mut()
                    .commit(reservation.slot, &prepared.header, kind);
                Ok(WriteOutcome::Written {
                    evicted: reservation.evicted,
                })
            }
            Err(e) => {
                self.index.borrow_mut().abort(reservation.slot);
                Err(self.io_error("write", &e))
            }
        }
    }

    /// Stops serving reads from a write's buffer (only if it is this write's).
    fn forget_in_flight(&self, prepared: &PreparedWrite) {
        let mut in_flight = self.in_flight.borrow_mut();
        if in_flight
            .get(&prepared.id)
            .is_some_and(|(buffer, _)| Rc::ptr_eq(buffer, &prepared.buffer))
        {
            in_flight.remove(&prepared.id);
        }
    }

    /// Flushes written slots to stable storage (warm restart after a clean stop).
    pub async fn sync(&self) -> Result<()> {
        self.file
            .fdatasync()
            .await
            .map_err(|e| self.io_error("fdatasync", &e))
    }

    fn io_error(&self, op: &'static str, e: &glommio::GlommioError<()>) -> Error {
        Error::io(op, &self.path, std::io::Error::other(e.to_string()))
    }
}
