//! Slot allocation for one tier of one shard.
//!
//! A tier (memory arena or disk region) is cut into fixed-size block slots
//! addressed by a dense [`SlotIndex`]. The allocator only hands out indices;
//! it never sees block contents or keys. All of its memory is allocated in
//! [`SlotAllocator::new`], so allocating and freeing on the data path never
//! touches the global allocator.

/// Dense index of a block slot inside one tier of one shard.
pub type SlotIndex = u32;

/// Most slots one tier of one shard may have.
///
/// Why this bound: per-slot metadata (allocator, eviction links) costs
/// 8–16 bytes, so 2^28 slots stay under ~4 GiB of metadata; and indices at
/// the top of the `u32` range stay free for sentinels (`u32::MAX` marks
/// "not in the free stack" here and "unlinked" in the eviction lists).
pub const SLOT_COUNT_MAX: u32 = 1 << 28;

/// Position sentinel: the slot is in use, so it is not in the free stack.
const POSITION_USED: u32 = u32::MAX;

/// Fixed-capacity allocator of slot indices; all memory allocated in `new`.
///
/// Free slots live in a stack; `position[slot]` is the slot's index in that
/// stack, or [`POSITION_USED`]. The position array is what makes
/// [`SlotAllocator::claim`] O(1): a claimed slot is swap-removed from the
/// middle of the stack instead of being skipped lazily later (a lazy skip
/// would let claim/free cycles push duplicates and grow the stack).
#[derive(Clone, Debug)]
pub struct SlotAllocator {
    /// Free slots; the top of the stack is handed out next.
    free_stack: Vec<SlotIndex>,
    /// Per slot: index into `free_stack`, or `POSITION_USED`.
    position: Vec<u32>,
    capacity: u32,
    /// Slots in use: `capacity - free_stack.len()`, kept as a `u32`.
    used: u32,
}

impl SlotAllocator {
    /// An allocator of `capacity` slots, all free.
    ///
    /// # Panics
    /// If `capacity` exceeds [`SLOT_COUNT_MAX`] (a configuration error the
    /// caller must reject before building a tier).
    #[must_use]
    pub fn new(capacity: u32) -> Self {
        assert!(
            capacity <= SLOT_COUNT_MAX,
            "slot capacity {capacity} exceeds SLOT_COUNT_MAX {SLOT_COUNT_MAX}"
        );
        // Reversed so that a fresh allocator hands out 0, 1, 2, ...: low
        // slots first keeps a young cache compact at the start of its region.
        let free_stack: Vec<SlotIndex> = (0..capacity).rev().collect();
        let position = (0..capacity).map(|slot| capacity - 1 - slot).collect();
        let allocator = Self {
            free_stack,
            position,
            capacity,
            used: 0,
        };
        allocator.debug_check();
        allocator
    }

    /// Number of slots managed, used or free.
    #[must_use]
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Number of slots currently in use.
    #[must_use]
    pub fn used(&self) -> u32 {
        self.used
    }

    /// Number of free slots.
    #[must_use]
    pub fn free_count(&self) -> u32 {
        self.capacity - self.used
    }

    /// Takes a free slot, or `None` when all slots are in use. O(1).
    pub fn allocate(&mut self) -> Option<SlotIndex> {
        let slot = self.free_stack.pop()?;
        debug_assert_eq!(self.position[slot as usize] as usize, self.free_stack.len());
        self.position[slot as usize] = POSITION_USED;
        self.used += 1;
        Some(slot)
    }

    /// Returns a used slot to the free pool. O(1).
    ///
    /// Freeing a slot that is free or out of range is a caller bug: it trips
    /// a `debug_assert!` and is otherwise ignored, so state never corrupts.
    pub fn free(&mut self, slot: SlotIndex) {
        let freed = self.try_free(slot);
        debug_assert!(freed, "free of slot {slot} that is not in use");
    }

    /// Like [`SlotAllocator::free`], but reports instead of asserting:
    /// returns `false` (and changes nothing) when `slot` is free or out of
    /// range.
    pub fn try_free(&mut self, slot: SlotIndex) -> bool {
        if !self.is_used(slot) {
            return false;
        }
        self.position[slot as usize] = self.free_count();
        debug_assert!(self.free_stack.len() < self.free_stack.capacity());
        self.free_stack.push(slot);
        self.used -= 1;
        true
    }

    /// Whether `slot` is in use; `false` for out-of-range slots.
    #[must_use]
    pub fn is_used(&self, slot: SlotIndex) -> bool {
        self.position
            .get(slot as usize)
            .is_some_and(|&position| position == POSITION_USED)
    }

    /// Marks a specific slot used (warm restart rebuilds from on-disk
    /// headers). Returns `false` if already used or out of range. O(1).
    pub fn claim(&mut self, slot: SlotIndex) -> bool {
        let Some(&position) = self.position.get(slot as usize) else {
            return false;
        };
        if position == POSITION_USED {
            return false;
        }
        debug_assert_eq!(self.free_stack[position as usize], slot);
        // Swap-remove: the top of the stack takes the claimed slot's place.
        self.free_stack.swap_remove(position as usize);
        if let Some(&moved) = self.free_stack.get(position as usize) {
            self.position[moved as usize] = position;
        }
        self.position[slot as usize] = POSITION_USED;
        self.used += 1;
        true
    }

    /// Full consistency check, O(capacity); debug builds only.
    fn debug_check(&self) {
        if cfg!(debug_assertions) {
            debug_assert_eq!(self.position.len(), self.capacity as usize);
            debug_assert_eq!(self.free_stack.len(), (self.capacity - self.used) as usize);
            for (index, &slot) in self.free_stack.iter().enumerate() {
                debug_assert_eq!(self.position[slot as usize] as usize, index);
            }
            let used = self
                .position
                .iter()
                .filter(|&&position| position == POSITION_USED)
                .count();
            debug_assert_eq!(used + self.free_stack.len(), self.position.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[derive(Clone, Debug)]
    enum Op {
        Allocate,
        /// Frees the n-th used slot (mod used count) of the model.
        FreeUsed(usize),
        /// Frees any slot, possibly free or out of range, via `try_free`.
        TryFree(SlotIndex),
        Claim(SlotIndex),
    }

    fn op_strategy(capacity: u32) -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Allocate),
            2 => any::<usize>().prop_map(Op::FreeUsed),
            1 => (0..capacity + 2).prop_map(Op::TryFree),
            2 => (0..capacity + 2).prop_map(Op::Claim),
        ]
    }

    /// Drives the allocator and a `BTreeSet` model of used slots in step.
    fn check(capacity: u32, ops: &[Op]) {
        let mut allocator = SlotAllocator::new(capacity);
        let mut used: BTreeSet<SlotIndex> = BTreeSet::new();
        for op in ops {
            match *op {
                Op::Allocate => match allocator.allocate() {
                    Some(slot) => {
                        assert!(slot < capacity);
                        assert!(used.insert(slot), "handed out used slot {slot}");
                    }
                    None => assert_eq!(used.len(), capacity as usize),
                },
                Op::FreeUsed(nth) => {
                    if let Some(&slot) = used.iter().nth(nth % used.len().max(1)) {
                        allocator.free(slot);
                        used.remove(&slot);
                    }
                }
                Op::TryFree(slot) => {
                    assert_eq!(allocator.try_free(slot), used.remove(&slot));
                }
                Op::Claim(slot) => {
                    let expected = slot < capacity && !used.contains(&slot);
                    assert_eq!(allocator.claim(slot), expected);
                    if expected {
                        used.insert(slot);
                    }
                }
            }
            assert_eq!(allocator.used() as usize, used.len());
            assert_eq!(allocator.capacity(), capacity);
            for slot in 0..capacity + 2 {
                assert_eq!(allocator.is_used(slot), used.contains(&slot));
            }
            allocator.debug_check();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn matches_model(
            (capacity, ops) in (0u32..24).prop_flat_map(|capacity| {
                (Just(capacity), prop::collection::vec(op_strategy(capacity), 0..200))
            })
        ) {
            check(capacity, &ops);
        }
    }

    #[test]
    fn fresh_allocator_hands_out_low_slots_first() {
        let mut allocator = SlotAllocator::new(4);
        let slots: Vec<_> = std::iter::from_fn(|| allocator.allocate()).collect();
        assert_eq!(slots, [0, 1, 2, 3]);
        assert_eq!(allocator.allocate(), None);
        assert_eq!(allocator.used(), 4);
    }

    #[test]
    fn claim_then_allocate_skips_claimed() {
        let mut allocator = SlotAllocator::new(3);
        assert!(allocator.claim(0));
        assert!(allocator.claim(2));
        assert!(!allocator.claim(2));
        assert!(!allocator.claim(3));
        assert_eq!(allocator.allocate(), Some(1));
        assert_eq!(allocator.allocate(), None);
    }

    #[test]
    fn claim_free_cycles_do_not_grow_memory() {
        let mut allocator = SlotAllocator::new(2);
        let stack_capacity = allocator.free_stack.capacity();
        for _ in 0..1000 {
            assert!(allocator.claim(1));
            allocator.free(1);
        }
        assert_eq!(allocator.free_stack.capacity(), stack_capacity);
        assert_eq!(allocator.used(), 0);
    }

    #[test]
    fn try_free_of_free_slot_changes_nothing() {
        let mut allocator = SlotAllocator::new(2);
        assert_eq!(allocator.allocate(), Some(0));
        assert!(!allocator.try_free(1));
        assert!(!allocator.try_free(7));
        assert_eq!(allocator.used(), 1);
        assert_eq!(allocator.allocate(), Some(1));
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "not in use")]
    fn free_of_free_slot_trips_debug_assert() {
        let mut allocator = SlotAllocator::new(2);
        allocator.free(1);
    }
}
