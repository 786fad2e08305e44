//! Least recently used: evicts the slot inserted or touched longest ago.
//!
//! The classic default for workloads with temporal locality. It has no scan
//! resistance: one pass over a file larger than the tier flushes everything
//! (use [`super::Auto`] when scans are expected). [`AccessKind`] is ignored.

use super::list::SlotList;
use super::{AccessKind, EvictionPolicy, SlotIndex};

/// Least-recently-used eviction over an intrusive list (hot end = most
/// recently inserted or touched; victims come from the cold end).
#[derive(Clone, Debug)]
pub struct Lru {
    list: SlotList,
}

impl Lru {
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

impl EvictionPolicy for Lru {
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

    /// LRU in its plainest form: every access moves the slot to the hot end.
    #[derive(Default)]
    struct LruModel(Recency);

    impl Model for LruModel {
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
            self.0.cold_to_hot()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn matches_model((capacity, ops) in check::ops()) {
            check::against_model(
                &mut Lru::new(capacity),
                &mut LruModel::default(),
                capacity,
                &ops,
            );
        }
    }

    #[test]
    fn evicts_least_recent() {
        let mut lru = Lru::new(4);
        for slot in 0..4 {
            lru.insert(slot, AccessKind::Random);
        }
        lru.touch(0, AccessKind::Sequential);
        assert_eq!(check::eviction_order(&lru), [1, 2, 3, 0]);
        assert_eq!(lru.victim(&mut |slot| slot == 1), Some(2));
    }

    #[test]
    fn scan_flushes_hot_set() {
        // The counterpart of `auto`'s scan test: plain LRU loses the hot set.
        let survivors = check::hot_set_survivors_after_scan(PolicyKind::Lru);
        assert_eq!(survivors, 0);
    }
}
