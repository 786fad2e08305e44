//! Most recently used: evicts the slot inserted or touched last.
//!
//! Right for a file read in a loop that does not fit in the tier: LRU would
//! evict each block just before it is read again and never hit, while MRU
//! keeps the first part of the file resident. Wrong for nearly everything
//! else, so it is only chosen explicitly. [`AccessKind`] is ignored.

use super::list::SlotList;
use super::{AccessKind, EvictionPolicy, SlotIndex};

/// Most-recently-used eviction over an intrusive list (hot end = most
/// recently inserted or touched; victims come from the hot end).
#[derive(Clone, Debug)]
pub struct Mru {
    list: SlotList,
}

impl Mru {
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

impl EvictionPolicy for Mru {
    fn insert(&mut self, slot: SlotIndex, _kind: AccessKind) {
        debug_assert!(!self.list.contains(slot), "insert of resident slot {slot}");
        self.list.link_hot(slot);
    }

    fn touch(&mut self, slot: SlotIndex, _kind: AccessKind) {
        debug_assert!(
            self.list.contains(slot),
            "touch of non-resident slot {slot}"
        );
        if self.list.contains(slot) {
            self.list.link_hot(slot);
        }
    }

    fn remove(&mut self, slot: SlotIndex) {
        self.list.unlink(slot);
    }

    fn victim(&self, skip: &mut dyn FnMut(SlotIndex) -> bool) -> Option<SlotIndex> {
        self.list.hot_to_cold().find(|&slot| !skip(slot))
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

    /// MRU: the same recency order as LRU, evicted from the other end.
    #[derive(Default)]
    struct MruModel(Recency);

    impl Model for MruModel {
        fn insert(&mut self, slot: SlotIndex, _kind: AccessKind) {
            self.0.push_hot(slot);
        }
        fn touch(&mut self, slot: SlotIndex, _kind: AccessKind) {
            self.0.push_hot(slot);
        }
        fn remove(&mut self, slot: SlotIndex) {
            self.0.remove(slot);
        }
        fn eviction_order(&self) -> Vec<SlotIndex> {
            self.0.hot_to_cold()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn matches_model((capacity, ops) in check::ops()) {
            check::against_model(
                &mut Mru::new(capacity),
                &mut MruModel::default(),
                capacity,
                &ops,
            );
        }
    }

    #[test]
    fn evicts_most_recent() {
        let mut mru = Mru::new(4);
        for slot in 0..4 {
            mru.insert(slot, AccessKind::Random);
        }
        mru.touch(1, AccessKind::Random);
        assert_eq!(check::eviction_order(&mru), [1, 3, 2, 0]);
        assert_eq!(mru.victim(&mut |slot| slot == 1), Some(3));
    }

    #[test]
    fn looped_file_larger_than_cache_hits() {
        let hits = check::second_pass_hits_of_looped_file(PolicyKind::Mru);
        assert!(hits >= check::SIM_SLOT_COUNT / 2, "hits {hits}");
    }
}
