//! Intrusive doubly linked list over slot indices, shared by the policies.
//!
//! The links live in one array indexed by slot, allocated once in
//! [`SlotList::new`]: linking, unlinking and moving a slot are O(1) and never
//! allocate. The list is circular through a sentinel entry stored after the
//! last slot, which removes every head/tail special case.
//!
//! The two ends are named for what the policies do with them: the *hot* end
//! holds what was placed there most recently by [`SlotList::link_hot`], the
//! *cold* end what was placed by [`SlotList::link_cold`] or has aged out.

use crate::slot::{SlotIndex, SLOT_COUNT_MAX};

/// Link value of a slot that is not in the list.
const UNLINKED: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Link {
    /// Neighbour towards the cold end (the sentinel if this is the coldest).
    colder: u32,
    /// Neighbour towards the hot end (the sentinel if this is the hottest).
    hotter: u32,
}

impl Link {
    const UNLINKED: Self = Self {
        colder: UNLINKED,
        hotter: UNLINKED,
    };
}

/// Fixed-capacity intrusive list of resident slots, ordered cold to hot.
#[derive(Clone, Debug)]
pub(crate) struct SlotList {
    /// `capacity + 1` links; the last one is the sentinel, whose `hotter`
    /// is the coldest slot and whose `colder` is the hottest slot.
    links: Vec<Link>,
    /// Slots `0..capacity`; also the index of the sentinel.
    capacity: u32,
    len: usize,
}

impl SlotList {
    /// An empty list able to hold slots `0..capacity`.
    pub(crate) fn new(capacity: u32) -> Self {
        assert!(
            capacity <= SLOT_COUNT_MAX,
            "slot capacity {capacity} exceeds SLOT_COUNT_MAX {SLOT_COUNT_MAX}"
        );
        let mut links = vec![Link::UNLINKED; capacity as usize + 1];
        links[capacity as usize] = Link {
            colder: capacity,
            hotter: capacity,
        };
        Self {
            links,
            capacity,
            len: 0,
        }
    }

    /// Index of the sentinel entry, one past the last slot.
    fn sentinel(&self) -> u32 {
        self.capacity
    }

    /// Number of linked slots.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether `slot` is linked; `false` for out-of-range slots.
    pub(crate) fn contains(&self, slot: SlotIndex) -> bool {
        slot < self.sentinel() && self.links[slot as usize].hotter != UNLINKED
    }

    /// Links `slot` at the hot end, moving it there if already linked.
    pub(crate) fn link_hot(&mut self, slot: SlotIndex) {
        self.unlink(slot);
        let sentinel = self.sentinel();
        let hottest = self.links[sentinel as usize].colder;
        self.link_between(slot, hottest, sentinel);
    }

    /// Links `slot` at the cold end, moving it there if already linked.
    pub(crate) fn link_cold(&mut self, slot: SlotIndex) {
        self.unlink(slot);
        let sentinel = self.sentinel();
        let coldest = self.links[sentinel as usize].hotter;
        self.link_between(slot, sentinel, coldest);
    }

    /// Unlinks `slot`; returns whether it was linked.
    pub(crate) fn unlink(&mut self, slot: SlotIndex) -> bool {
        if !self.contains(slot) {
            return false;
        }
        let Link { colder, hotter } = self.links[slot as usize];
        self.links[colder as usize].hotter = hotter;
        self.links[hotter as usize].colder = colder;
        self.links[slot as usize] = Link::UNLINKED;
        self.len -= 1;
        true
    }

    /// Slots from the cold end to the hot end.
    pub(crate) fn cold_to_hot(&self) -> Walk<'_> {
        Walk {
            list: self,
            cursor: self.links[self.sentinel() as usize].hotter,
            towards_hot: true,
        }
    }

    /// Slots from the hot end to the cold end.
    pub(crate) fn hot_to_cold(&self) -> Walk<'_> {
        Walk {
            list: self,
            cursor: self.links[self.sentinel() as usize].colder,
            towards_hot: false,
        }
    }

    fn link_between(&mut self, slot: SlotIndex, colder: u32, hotter: u32) {
        assert!(
            slot < self.sentinel(),
            "slot {slot} out of range for capacity {}",
            self.sentinel()
        );
        debug_assert_eq!(self.links[colder as usize].hotter, hotter);
        debug_assert_eq!(self.links[hotter as usize].colder, colder);
        self.links[slot as usize] = Link { colder, hotter };
        self.links[colder as usize].hotter = slot;
        self.links[hotter as usize].colder = slot;
        self.len += 1;
        debug_assert!(self.len <= self.sentinel() as usize);
    }

    /// Full consistency check, O(capacity); for tests.
    #[cfg(test)]
    pub(crate) fn check(&self) {
        let forward: Vec<_> = self.cold_to_hot().collect();
        let mut backward: Vec<_> = self.hot_to_cold().collect();
        backward.reverse();
        assert_eq!(forward, backward);
        assert_eq!(forward.len(), self.len);
        let linked = (0..self.sentinel())
            .filter(|&slot| self.contains(slot))
            .count();
        assert_eq!(linked, self.len);
    }
}

/// Iterator over the linked slots in one direction; see
/// [`SlotList::cold_to_hot`] and [`SlotList::hot_to_cold`].
pub(crate) struct Walk<'list> {
    list: &'list SlotList,
    cursor: u32,
    towards_hot: bool,
}

impl Iterator for Walk<'_> {
    type Item = SlotIndex;

    fn next(&mut self) -> Option<SlotIndex> {
        if self.cursor == self.list.sentinel() {
            return None;
        }
        let slot = self.cursor;
        let link = self.list.links[slot as usize];
        debug_assert_ne!(link.hotter, UNLINKED, "walked onto unlinked slot {slot}");
        self.cursor = if self.towards_hot {
            link.hotter
        } else {
            link.colder
        };
        Some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(list: &SlotList, cold_to_hot: &[SlotIndex]) {
        list.check();
        assert_eq!(list.cold_to_hot().collect::<Vec<_>>(), cold_to_hot);
    }

    #[test]
    fn link_move_unlink() {
        let mut list = SlotList::new(4);
        check(&list, &[]);
        list.link_hot(1);
        list.link_hot(2);
        list.link_cold(3);
        check(&list, &[3, 1, 2]);
        list.link_hot(3);
        check(&list, &[1, 2, 3]);
        list.link_cold(2);
        check(&list, &[2, 1, 3]);
        assert!(list.unlink(1));
        assert!(!list.unlink(1));
        assert!(!list.unlink(0));
        assert!(!list.unlink(4));
        assert!(!list.unlink(u32::MAX));
        check(&list, &[2, 3]);
        assert!(!list.contains(4), "the sentinel is not a slot");
        assert!(list.unlink(2));
        assert!(list.unlink(3));
        check(&list, &[]);
    }

    #[test]
    fn zero_capacity_is_always_empty() {
        let list = SlotList::new(0);
        check(&list, &[]);
        assert!(!list.contains(0));
    }
}
