//! Auto: an LRU made scan resistant by the prefetch stream detector.
//!
//! One list, evicted from its cold end, where each access is placed
//! according to its [`AccessKind`]:
//!
//! - **Random insert or touch** goes to the hot end, as in LRU: random
//!   reads are what the cache is for.
//! - **Sequential touch** (a block being consumed by a sequential stream)
//!   goes to the *cold* end. A streamed block is rarely read again soon, so
//!   consumed scan blocks are evicted before anything else, and the most
//!   recently consumed first (MRU among scan blocks). That is what keeps the
//!   beginning of a looped file larger than the cache resident, where LRU
//!   would evict every block just before its next read.
//! - **Sequential insert** (a prefetched block not read yet) goes to the hot
//!   end, so prefetched blocks survive until their stream reads them.
//!
//! A one-pass scan therefore recycles its own slots and leaves the hot
//! random set alone; a block later read at random moves back to the hot end.

use super::list::SlotList;
use super::{AccessKind, EvictionPolicy, SlotIndex};

/// Scan-resistant eviction: LRU for random accesses, consumed sequential
/// blocks evicted first (see the module documentation).
#[derive(Clone, Debug)]
pub struct Auto {
    list: SlotList,
}

impl Auto {
    /// An empty policy for slots `0..capacity`.
    ///
    /// # Panics
    /// If `capacity` exceeds [`crate::slot::SLOT_COUNT_MAX`].
    #[must_use]
    pub fn new(capacity: u32) -> Self {
        Self {
            list: SlotList::new(capacity),
        }
    }
}

impl EvictionPolicy for Auto {
    fn insert(&mut self, slot: SlotIndex, _kind: AccessKind) {
        debug_assert!(!self.list.contains(slot), "insert of resident slot {slot}");
        // Both kinds go hot: a prefetched block must outlive the consumed
        // ones until its stream reaches it.
        self.list.link_hot(slot);
    }

    fn touch(&mut self, slot: SlotIndex, kind: AccessKind) {
        debug_assert!(
            self.list.contains(slot),
            "touch of non-resident slot {slot}"
        );
        if !self.list.contains(slot) {
            return;
        }
        match kind {
            AccessKind::Random => self.list.link_hot(slot),
            AccessKind::Sequential => self.list.link_cold(slot),
        }
    }

    fn remove(&mut self, slot: SlotIndex) {
        self.list.unlink(slot);
    }

    fn victim(&self, skip: &mut dyn FnMut(SlotIndex) -> bool) -> Option<SlotIndex> {
        self.list.cold_to_hot().find(|&slot| !skip(slot))
    }

    fn len(&self) -> usize {
        self.list.len()
    }

    fn contains(&self, slot: SlotIndex) -> bool {
        self.list.contains(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::super::check::{self, Model, Recency};
    use super::super::PolicyKind;
    use super::*;
    use proptest::prelude::*;

    /// The module documentation's three rules, on a plain vector.
    #[derive(Default)]
    struct AutoModel(Recency);

    impl Model for AutoModel {
        fn insert(&mut self, slot: SlotIndex, _kind: AccessKind) {
            self.0.push_hot(slot);
        }
        fn touch(&mut self, slot: SlotIndex, kind: AccessKind) {
            match kind {
                AccessKind::Random => self.0.push_hot(slot),
                AccessKind::Sequential => self.0.push_cold(slot),
            }
        }
        fn remove(&mut self, slot: SlotIndex) {
            self.0.remove(slot);
        }
        fn eviction_order(&self) -> Vec<SlotIndex> {
            self.0.cold_to_hot()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn matches_model((capacity, ops) in check::ops()) {
            check::against_model(
                &mut Auto::new(capacity),
                &mut AutoModel::default(),
                capacity,
                &ops,
            );
        }
    }

    #[test]
    fn consumed_scan_blocks_go_first_most_recent_first() {
        let mut auto = Auto::new(6);
        auto.insert(0, AccessKind::Random);
        auto.insert(1, AccessKind::Random);
        for slot in 2..6 {
            auto.insert(slot, AccessKind::Sequential);
        }
        auto.touch(2, AccessKind::Sequential);
        auto.touch(3, AccessKind::Sequential);
        auto.touch(0, AccessKind::Random);
        // Consumed 3 then 2 first; then the random 1, the unread prefetched
        // 4 and 5, and the just-touched 0.
        assert_eq!(check::eviction_order(&auto), [3, 2, 1, 4, 5, 0]);
    }

    #[test]
    fn hot_set_survives_scan() {
        let survivors = check::hot_set_survivors_after_scan(PolicyKind::Auto);
        assert_eq!(survivors, check::SIM_HOT_KEY_COUNT);
    }

    #[test]
    fn looped_file_larger_than_cache_hits() {
        let hits = check::second_pass_hits_of_looped_file(PolicyKind::Auto);
        assert!(hits >= check::SIM_SLOT_COUNT / 2, "hits {hits}");
        assert_eq!(check::second_pass_hits_of_looped_file(PolicyKind::Lru), 0);
    }
}
