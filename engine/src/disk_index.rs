//! Bookkeeping of one shard's NVMe region: which slot holds which block,
//! the chunk checksums of every slot, pins of slots under IO, and eviction.
//! Plain code with no IO; `disk_tier` drives the device around it.

use crate::block::{BlockId, BlockMap};
use crate::eviction::{new_policy, AccessKind, EvictionPolicy, PolicyKind};
use crate::layout::{Layout, SlotHeader};
use crate::slot::{SlotAllocator, SlotIndex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Empty,
    /// Reserved for a write in flight: not readable, not evictable.
    Writing,
    /// Holds a verified header; readable.
    Valid,
    /// Dropped while pinned: freed by the last unpin.
    Dropped,
}

#[derive(Clone, Copy, Debug)]
struct SlotMeta {
    id: BlockId,
    len: u32,
    state: SlotState,
    /// Reads in flight; a pinned slot is never reused.
    pins: u32,
}

/// A slot reserved for writing a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The slot to write.
    pub slot: SlotIndex,
    /// The block evicted to make room, if any.
    pub evicted: Option<BlockId>,
}

/// Index of one shard's NVMe region.
pub struct DiskIndex {
    map: BlockMap<BlockId, SlotIndex>,
    writing: BlockMap<BlockId, SlotIndex>,
    meta: Vec<SlotMeta>,
    crcs: Vec<u32>,
    chunks_per_block: usize,
    slots: SlotAllocator,
    policy: Box<dyn EvictionPolicy>,
}

impl std::fmt::Debug for DiskIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskIndex")
            .field("capacity", &self.slots.capacity())
            .field("valid", &self.map.len())
            .field("writing", &self.writing.len())
            .finish_non_exhaustive()
    }
}

impl DiskIndex {
    /// An empty index for a region of `layout`.
    pub fn new(layout: &Layout, policy: PolicyKind) -> Self {
        let slots = layout.slots_per_shard;
        let mut map = BlockMap::default();
        map.reserve(slots as usize);
        Self {
            map,
            writing: BlockMap::default(),
            meta: vec![
                SlotMeta {
                    id: BlockId::new(0, 0, 0),
                    len: 0,
                    state: SlotState::Empty,
                    pins: 0,
                };
                slots as usize
            ],
            crcs: vec![0; slots as usize * layout.chunks_per_block()],
            chunks_per_block: layout.chunks_per_block(),
            slots: SlotAllocator::new(slots),
            policy: new_policy(policy, slots),
        }
    }

    /// Readable blocks.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no block is readable.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Slots in the region.
    pub fn capacity(&self) -> u32 {
        self.slots.capacity()
    }

    /// Whether the block is readable or being written.
    pub fn contains(&self, id: BlockId) -> bool {
        self.map.contains_key(&id) || self.writing.contains_key(&id)
    }

    /// Looks a block up, records the access and pins the slot for a read;
    /// returns the slot and the block's length. Call [`Self::unpin`] after.
    pub fn lookup_pin(&mut self, id: BlockId, kind: AccessKind) -> Option<(SlotIndex, u32)> {
        let (slot, len) = self.pin(id)?;
        self.policy.touch(slot, kind);
        Some((slot, len))
    }

    /// Pins a block's slot like [`Self::lookup_pin`] without recording an
    /// access (a check of the cache is not a use of the block).
    pub fn pin(&mut self, id: BlockId) -> Option<(SlotIndex, u32)> {
        let slot = *self.map.get(&id)?;
        let meta = &mut self.meta[slot as usize];
        meta.pins += 1;
        Some((slot, meta.len))
    }

    /// The readable blocks, in no particular order.
    pub fn ids(&self) -> Vec<BlockId> {
        self.map.keys().copied().collect()
    }

    /// Releases a pin taken by [`Self::lookup_pin`].
    pub fn unpin(&mut self, slot: SlotIndex) {
        let meta = &mut self.meta[slot as usize];
        debug_assert!(meta.pins > 0);
        meta.pins = meta.pins.saturating_sub(1);
        if meta.pins == 0 && meta.state == SlotState::Dropped {
            meta.state = SlotState::Empty;
            self.slots.free(slot);
        }
    }

    /// Chunk checksums of a valid slot.
    pub fn crcs(&self, slot: SlotIndex) -> &[u32] {
        let meta = &self.meta[slot as usize];
        let chunks = (meta.len as usize).div_ceil(crate::layout::CHUNK_BYTES);
        let start = slot as usize * self.chunks_per_block;
        &self.crcs[start..start + chunks]
    }

    /// The block the policy would evict next (never a pinned slot).
    pub fn victim(&self) -> Option<BlockId> {
        let meta = &self.meta;
        self.policy
            .victim(&mut |slot| meta[slot as usize].pins > 0)
            .map(|slot| meta[slot as usize].id)
    }

    /// Reserves a slot to write `id`, evicting the policy's victim when the
    /// region is full. `None` when the block is already here or being
    /// written, or every slot is pinned or being written.
    pub fn reserve(&mut self, id: BlockId) -> Option<Reservation> {
        if self.contains(id) {
            return None;
        }
        let (slot, evicted) = if let Some(slot) = self.slots.allocate() {
            (slot, None)
        } else {
            let meta = &self.meta;
            let slot = self.policy.victim(&mut |s| meta[s as usize].pins > 0)?;
            let victim = self.meta[slot as usize].id;
            self.map.remove(&victim);
            self.policy.remove(slot);
            (slot, Some(victim))
        };
        self.meta[slot as usize] = SlotMeta {
            id,
            len: 0,
            state: SlotState::Writing,
            pins: 0,
        };
        self.writing.insert(id, slot);
        Some(Reservation { slot, evicted })
    }

    /// The write of a reserved slot completed: the block becomes readable.
    pub fn commit(&mut self, slot: SlotIndex, header: &SlotHeader, kind: AccessKind) {
        let meta = &mut self.meta[slot as usize];
        debug_assert_eq!(meta.state, SlotState::Writing);
        debug_assert_eq!(meta.id, header.block_id());
        self.writing.remove(&meta.id);
        meta.state = SlotState::Valid;
        meta.len = header.len;
        let start = slot as usize * self.chunks_per_block;
        self.crcs[start..start + header.chunk_crcs.len()].copy_from_slice(&header.chunk_crcs);
        self.map.insert(meta.id, slot);
        self.policy.insert(slot, kind);
    }

    /// The write of a reserved slot failed: the slot is free again.
    pub fn abort(&mut self, slot: SlotIndex) {
        let meta = &mut self.meta[slot as usize];
        debug_assert_eq!(meta.state, SlotState::Writing);
        self.writing.remove(&meta.id);
        meta.state = SlotState::Empty;
        self.slots.free(slot);
    }

    /// Drops a valid block (its data failed a checksum). Returns its slot,
    /// whose header the caller erases on the device; the slot is reusable
    /// once the last pin is released.
    pub fn drop_block(&mut self, id: BlockId) -> Option<SlotIndex> {
        let slot = *self.map.get(&id)?;
        self.drop_slot(id, slot).then_some(slot)
    }

    /// Drops `id` only if it still lives in `slot` (a reader that found a
    /// bad checksum in an old copy must not drop a fresh copy elsewhere).
    /// Returns whether it did.
    pub fn drop_slot(&mut self, id: BlockId, slot: SlotIndex) -> bool {
        if self.map.get(&id) != Some(&slot) {
            return false;
        }
        self.map.remove(&id);
        self.policy.remove(slot);
        let meta = &mut self.meta[slot as usize];
        if meta.pins == 0 {
            meta.state = SlotState::Empty;
            self.slots.free(slot);
        } else {
            // Stays allocated until the last reader unpins, so no write
            // lands under a read in flight.
            meta.state = SlotState::Dropped;
        }
        true
    }

    /// Warm restart: a slot read back from the device with a valid header.
    /// Returns false when the slot or the block is already taken (a duplicate
    /// left behind by an older eviction: the first one found wins).
    pub fn restore(&mut self, slot: SlotIndex, header: &SlotHeader) -> bool {
        let id = header.block_id();
        if self.map.contains_key(&id) || !self.slots.claim(slot) {
            return false;
        }
        self.meta[slot as usize] = SlotMeta {
            id,
            len: header.len,
            state: SlotState::Writing,
            pins: 0,
        };
        self.writing.insert(id, slot);
        self.commit(slot, header, AccessKind::Random);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::BlockSize;

    fn index(slots: u64) -> (DiskIndex, Layout) {
        let bs = BlockSize::new(64 << 10).expect("bs");
        let slot_bytes = 4096 + (64 << 10);
        let layout = Layout::new(4096 + slots * slot_bytes, bs, 1).expect("layout");
        (DiskIndex::new(&layout, PolicyKind::Lru), layout)
    }

    fn header(id: BlockId, len: usize) -> SlotHeader {
        SlotHeader::for_block(id, 1, &vec![id.index as u8; len])
    }

    #[test]
    fn reserve_commit_lookup() {
        let (mut idx, _) = index(4);
        let id = BlockId::new(1, 0, 1);
        let r = idx.reserve(id).expect("slot");
        assert_eq!(r.evicted, None);
        assert!(idx.contains(id));
        assert_eq!(
            idx.lookup_pin(id, AccessKind::Random),
            None,
            "not readable while writing"
        );
        assert_eq!(idx.reserve(id), None, "no double write");
        idx.commit(r.slot, &header(id, 5000), AccessKind::Random);
        let (slot, len) = idx.lookup_pin(id, AccessKind::Random).expect("hit");
        assert_eq!((slot, len), (r.slot, 5000));
        assert_eq!(idx.crcs(slot).len(), 2);
        idx.unpin(slot);
    }

    #[test]
    fn eviction_skips_pinned_slots() {
        let (mut idx, _) = index(4);
        let ids: Vec<_> = (0..4).map(|i| BlockId::new(1, i, 1)).collect();
        for &id in &ids {
            let r = idx.reserve(id).expect("slot");
            idx.commit(r.slot, &header(id, 100), AccessKind::Random);
        }
        let (pinned, _) = idx.lookup_pin(ids[0], AccessKind::Random).expect("hit");
        // ids[0] was touched last but is pinned anyway; LRU victim is ids[1].
        let r = idx.reserve(BlockId::new(2, 0, 1)).expect("evicts");
        assert_eq!(r.evicted, Some(ids[1]));
        idx.abort(r.slot);
        // Pin everything: nothing can be reserved.
        let mut pins = vec![pinned];
        for &id in &ids[2..] {
            pins.push(idx.lookup_pin(id, AccessKind::Random).expect("hit").0);
        }
        let r = idx
            .reserve(BlockId::new(2, 1, 1))
            .expect("the aborted slot is free");
        assert_eq!(r.evicted, None);
        assert_eq!(
            idx.reserve(BlockId::new(2, 2, 1)),
            None,
            "all pinned or writing"
        );
        for p in pins {
            idx.unpin(p);
        }
        assert!(idx.reserve(BlockId::new(2, 2, 1)).is_some());
    }

    #[test]
    fn dropped_block_under_a_reader_is_reused_only_after_unpin() {
        let (mut idx, _) = index(4);
        let id = BlockId::new(1, 0, 1);
        let r = idx.reserve(id).expect("slot");
        idx.commit(r.slot, &header(id, 100), AccessKind::Random);
        let (slot, _) = idx.lookup_pin(id, AccessKind::Random).expect("hit");
        assert_eq!(idx.drop_block(id), Some(slot));
        assert_eq!(idx.lookup_pin(id, AccessKind::Random), None);
        for i in 1..4 {
            let id = BlockId::new(3, i, 1);
            let r = idx.reserve(id).expect("slot");
            assert_ne!(r.slot, slot);
            idx.commit(r.slot, &header(id, 100), AccessKind::Random);
        }
        assert_eq!(
            idx.reserve(BlockId::new(3, 9, 1)).map(|r| r.evicted),
            Some(Some(BlockId::new(3, 1, 1)))
        );
        idx.unpin(slot);
        assert_eq!(
            idx.reserve(BlockId::new(3, 10, 1))
                .map(|r| (r.slot, r.evicted)),
            Some((slot, None))
        );
    }

    #[test]
    fn restore_keeps_first_duplicate() {
        let (mut idx, _) = index(4);
        let id = BlockId::new(7, 7, 7);
        assert!(idx.restore(2, &header(id, 10)));
        assert!(!idx.restore(3, &header(id, 10)));
        assert!(!idx.restore(2, &header(BlockId::new(8, 8, 8), 10)));
        assert_eq!(idx.len(), 1);
        let (slot, len) = idx.lookup_pin(id, AccessKind::Random).expect("restored");
        assert_eq!((slot, len), (2, 10));
    }
}
