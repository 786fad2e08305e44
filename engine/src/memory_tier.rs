//! The memory tier of one shard: block index, arena and eviction policy.
//! Plain code with no IO; the shard decides admission and demotion. Other
//! threads read hits through its `HitView`, which it keeps up to date.

use std::sync::Arc;

use crate::arena::{Arena, Backing};
use crate::block::{BlockId, BlockMap, BlockSize};
use crate::error::Result;
use crate::eviction::{new_policy, AccessKind, EvictionPolicy, PolicyKind};
use crate::hit_view::HitView;
use crate::slot::{SlotAllocator, SlotIndex};

#[derive(Clone, Copy, Debug)]
struct SlotMeta {
    id: BlockId,
    len: u32,
}

/// Cached blocks in memory.
pub struct MemoryTier {
    arena: Arena,
    map: BlockMap<BlockId, SlotIndex>,
    meta: Vec<SlotMeta>,
    slots: SlotAllocator,
    policy: Box<dyn EvictionPolicy>,
    view: Arc<HitView>,
}

/// Victims the policy may pass over because readers outside the shard
/// touched them since it last looked (second chances per eviction).
const SECOND_CHANCES_MAX: usize = 8;

impl std::fmt::Debug for MemoryTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTier")
            .field("capacity", &self.capacity())
            .field("used", &self.map.len())
            .finish_non_exhaustive()
    }
}

impl MemoryTier {
    /// A tier of `slots` blocks; all memory is allocated here.
    pub fn new(
        slots: u32,
        block_size: BlockSize,
        policy: PolicyKind,
        hugepages: bool,
    ) -> Result<Self> {
        let arena = Arena::new(slots, block_size.bytes_usize(), hugepages)?;
        let view = Arc::new(HitView::new(arena.mapping(), slots, arena.slot_bytes()));
        let mut map = BlockMap::default();
        map.reserve(slots as usize);
        Ok(Self {
            arena,
            map,
            meta: vec![
                SlotMeta {
                    id: BlockId::new(0, 0, 0),
                    len: 0
                };
                slots as usize
            ],
            slots: SlotAllocator::new(slots),
            policy: new_policy(policy, slots),
            view,
        })
    }

    /// The view other threads read hits through.
    pub fn view(&self) -> Arc<HitView> {
        Arc::clone(&self.view)
    }

    /// Slots in the tier.
    pub fn capacity(&self) -> u32 {
        self.slots.capacity()
    }

    /// Blocks cached.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no block is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// What backs the arena.
    pub fn backing(&self) -> Backing {
        self.arena.backing()
    }

    /// Whether the block is cached (no recency update).
    pub fn contains(&self, id: BlockId) -> bool {
        self.map.contains_key(&id)
    }

    /// Looks a block up and records the access; the slot on a hit.
    pub fn lookup(&mut self, id: BlockId, kind: AccessKind) -> Option<SlotIndex> {
        let slot = *self.map.get(&id)?;
        self.policy.touch(slot, kind);
        Some(slot)
    }

    /// The cached blocks, in no particular order.
    pub fn ids(&self) -> Vec<BlockId> {
        self.map.keys().copied().collect()
    }

    /// The bytes of a cached block without recording an access.
    pub fn get(&self, id: BlockId) -> Option<&[u8]> {
        self.map.get(&id).map(|&slot| self.block(slot))
    }

    /// The valid bytes of a cached block.
    pub fn block(&self, slot: SlotIndex) -> &[u8] {
        &self.arena.slot(slot)[..self.meta[slot as usize].len as usize]
    }

    /// Whether a block can be inserted without evicting.
    pub fn has_free_slot(&self) -> bool {
        self.slots.used() < self.slots.capacity()
    }

    /// The block to evict next: the policy's victim, except that a block
    /// read through the view since the policy last passed it gets a second
    /// chance (it counts as an access, reported to `touched`), up to
    /// `SECOND_CHANCES_MAX` times.
    pub fn victim(&mut self, touched: &mut dyn FnMut(BlockId)) -> Option<BlockId> {
        for _ in 0..SECOND_CHANCES_MAX {
            let slot = self.policy.victim(&mut |_| false)?;
            if !self.view.take_touched(slot) {
                return Some(self.meta[slot as usize].id);
            }
            self.policy.touch(slot, AccessKind::Random);
            touched(self.meta[slot as usize].id);
        }
        self.policy
            .victim(&mut |_| false)
            .map(|slot| self.meta[slot as usize].id)
    }

    /// Removes a block; its bytes stay readable through the returned slot
    /// until the next insert.
    pub fn remove(&mut self, id: BlockId) -> Option<SlotIndex> {
        let slot = self.map.remove(&id)?;
        self.view.retire(slot);
        self.policy.remove(slot);
        self.slots.free(slot);
        Some(slot)
    }

    /// Inserts a block into a free slot; `false` when the tier is full (the
    /// caller evicts first) or empty of slots, or the block is too large.
    pub fn insert(&mut self, id: BlockId, data: &[u8], kind: AccessKind) -> bool {
        if self.map.contains_key(&id) {
            return true;
        }
        let Some(slot) = self.slots.allocate() else {
            return false;
        };
        self.view.retire(slot);
        let dst = self.arena.slot_mut(slot);
        if data.len() > dst.len() {
            self.slots.free(slot);
            return false;
        }
        dst[..data.len()].copy_from_slice(data);
        self.meta[slot as usize] = SlotMeta {
            id,
            len: data.len() as u32,
        };
        self.map.insert(id, slot);
        self.view.publish(slot, id, data.len());
        self.policy.insert(slot, kind);
        debug_assert_eq!(self.map.len(), self.policy.len());
        true
    }
}

impl Drop for MemoryTier {
    fn drop(&mut self) {
        // Readers holding the view must miss from now on.
        self.view.retire_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier(slots: u32) -> MemoryTier {
        MemoryTier::new(
            slots,
            BlockSize::new(64 << 10).expect("bs"),
            PolicyKind::Lru,
            false,
        )
        .expect("tier")
    }

    #[test]
    fn insert_lookup_evict() {
        let mut t = tier(2);
        let (a, b, c) = (
            BlockId::new(1, 0, 1),
            BlockId::new(1, 1, 1),
            BlockId::new(1, 2, 1),
        );
        assert!(t.insert(a, &[1; 100], AccessKind::Random));
        assert!(t.insert(b, &vec![2; 65536], AccessKind::Random));
        assert!(!t.insert(c, &[3; 10], AccessKind::Random), "full");
        let slot = t.lookup(a, AccessKind::Random).expect("hit");
        assert_eq!(t.block(slot), &[1; 100][..]);
        assert_eq!(t.victim(&mut |_| {}), Some(b), "a was touched last");
        t.remove(b);
        assert!(t.insert(c, &[3; 10], AccessKind::Random));
        assert_eq!(t.lookup(b, AccessKind::Random), None);
        assert_eq!(t.len(), 2);
        assert!(
            !t.insert(BlockId::new(9, 9, 9), &vec![0; 65537], AccessKind::Random) || t.len() == 2
        );
    }

    #[test]
    fn view_serves_hits_and_touched_victims_get_a_second_chance() {
        let mut t = tier(2);
        let (a, b, c) = (
            BlockId::new(1, 0, 1),
            BlockId::new(1, 1, 1),
            BlockId::new(1, 2, 1),
        );
        assert!(t.insert(a, &[7; 300], AccessKind::Random));
        assert!(t.insert(b, &[8; 300], AccessKind::Random));
        let view = t.view();
        let mut dst = [0u8; 400];
        assert_eq!(view.read(a, 100, &mut dst), Some(200));
        assert!(dst[..200].iter().all(|&x| x == 7));
        // `a` is the LRU victim, but the view read it since.
        let mut second = Vec::new();
        assert_eq!(t.victim(&mut |id| second.push(id)), Some(b));
        assert_eq!(second, vec![a]);
        t.remove(b);
        assert_eq!(view.read(b, 0, &mut dst), None, "removed blocks miss");
        assert!(t.insert(c, &[9; 10], AccessKind::Random));
        assert_eq!(view.read(c, 0, &mut dst), Some(10));
        drop(t);
        assert_eq!(view.read(a, 0, &mut dst), None, "the tier is gone");
    }

    #[test]
    fn oversized_block_is_refused() {
        let mut t = tier(1);
        assert!(!t.insert(BlockId::new(1, 0, 1), &vec![0; 65537], AccessKind::Random));
        assert!(t.has_free_slot());
        assert!(t.is_empty());
    }

    #[test]
    fn zero_slots() {
        let mut t = tier(0);
        assert!(!t.insert(BlockId::new(1, 0, 1), &[1], AccessKind::Random));
        assert_eq!(t.victim(&mut |_| {}), None);
    }
}
