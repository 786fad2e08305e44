//! Test utilities shared by the eviction policies: an O(n) recency model to
//! check each policy against, a sanity checker every policy must pass, the
//! random op sequences driving both, and a tiny cache simulator for
//! workload-level tests (scans, looped files).

use super::{new_policy, AccessKind, EvictionPolicy, PolicyKind, SlotIndex};
use crate::slot::SlotAllocator;
use proptest::prelude::*;
use std::collections::{BTreeSet, HashMap};
use std::ops::Range;

/// Largest tier the random op sequences use: small, so slots collide often.
const OPS_SLOT_COUNT_MAX: u32 = 24;
/// Longest random op sequence.
const OPS_LEN_MAX: usize = 200;

/// Slots in the simulated cache.
pub(super) const SIM_SLOT_COUNT: u32 = 64;
/// Keys in the simulated hot random set.
pub(super) const SIM_HOT_KEY_COUNT: usize = 16;
/// How far ahead the simulated streams prefetch.
const SIM_PREFETCH_BLOCKS: u64 = 4;

/// Reference order of resident slots, coldest first; O(n) per operation.
#[derive(Clone, Debug, Default)]
pub(super) struct Recency {
    cold_to_hot: Vec<SlotIndex>,
}

impl Recency {
    pub(super) fn push_hot(&mut self, slot: SlotIndex) {
        self.remove(slot);
        self.cold_to_hot.push(slot);
    }

    pub(super) fn push_cold(&mut self, slot: SlotIndex) {
        self.remove(slot);
        self.cold_to_hot.insert(0, slot);
    }

    pub(super) fn remove(&mut self, slot: SlotIndex) {
        self.cold_to_hot.retain(|&resident| resident != slot);
    }

    pub(super) fn cold_to_hot(&self) -> Vec<SlotIndex> {
        self.cold_to_hot.clone()
    }

    pub(super) fn hot_to_cold(&self) -> Vec<SlotIndex> {
        self.cold_to_hot.iter().rev().copied().collect()
    }
}

/// The executable specification of one policy.
pub(super) trait Model {
    fn insert(&mut self, slot: SlotIndex, kind: AccessKind);
    fn touch(&mut self, slot: SlotIndex, kind: AccessKind);
    fn remove(&mut self, slot: SlotIndex);
    /// Every resident slot, next victim first.
    fn eviction_order(&self) -> Vec<SlotIndex>;
}

/// One step of a random op sequence.
#[derive(Clone, Debug)]
pub(super) enum Op {
    /// Insert, or touch when the slot is already resident.
    Insert(SlotIndex, AccessKind),
    /// Touch the n-th (mod len) resident slot in eviction order.
    Touch(usize, AccessKind),
    /// Remove any slot, resident, free or out of range.
    Remove(SlotIndex),
    /// Ask for a victim, skipping slots whose bit is set.
    Victim(u64),
}

fn access_kind() -> impl Strategy<Value = AccessKind> {
    prop_oneof![Just(AccessKind::Random), Just(AccessKind::Sequential)]
}

fn op(capacity: u32) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..capacity, access_kind()).prop_map(|(slot, kind)| Op::Insert(slot, kind)),
        4 => (any::<usize>(), access_kind()).prop_map(|(nth, kind)| Op::Touch(nth, kind)),
        2 => (0..capacity + 2).prop_map(Op::Remove),
        2 => any::<u64>().prop_map(Op::Victim),
    ]
}

/// A tier capacity and a random op sequence for it.
pub(super) fn ops() -> impl Strategy<Value = (u32, Vec<Op>)> {
    (1..=OPS_SLOT_COUNT_MAX).prop_flat_map(|capacity| {
        (
            Just(capacity),
            prop::collection::vec(op(capacity), 0..OPS_LEN_MAX),
        )
    })
}

/// Every resident slot of `policy`, next victim first, read through
/// `victim` with a skip-everything closure.
pub(super) fn eviction_order(policy: &dyn EvictionPolicy) -> Vec<SlotIndex> {
    let mut order = Vec::new();
    let victim = policy.victim(&mut |slot| {
        order.push(slot);
        true
    });
    assert_eq!(victim, None, "victim ignored skip");
    order
}

/// What every policy must satisfy, whatever its order.
pub(super) fn sanity(policy: &mut dyn EvictionPolicy, capacity: u32) {
    let order = eviction_order(policy);
    let resident: BTreeSet<_> = order.iter().copied().collect();
    assert_eq!(resident.len(), order.len(), "victim walk repeats a slot");
    assert_eq!(policy.len(), order.len());
    assert_eq!(policy.is_empty(), order.is_empty());
    for slot in (0..capacity + 2).chain([u32::MAX]) {
        assert_eq!(
            policy.contains(slot),
            resident.contains(&slot),
            "slot {slot}"
        );
    }
    // Victims are resident, and there is none when empty.
    let victim = policy.victim(&mut |_| false);
    assert_eq!(victim, order.first().copied());
    assert!(victim.is_none_or(|slot| policy.contains(slot)));
    // Removing a non-resident slot is a no-op.
    let absent = (0..capacity + 2).find(|slot| !resident.contains(slot));
    for slot in absent.into_iter().chain([u32::MAX]) {
        policy.remove(slot);
        assert_eq!(eviction_order(policy), order, "remove of absent {slot}");
    }
}

/// Drives `policy` and `model` through `ops`, asserting after every step
/// that their eviction orders match and that `policy` passes [`sanity`].
pub(super) fn against_model(
    policy: &mut dyn EvictionPolicy,
    model: &mut dyn Model,
    capacity: u32,
    ops: &[Op],
) {
    for op in ops {
        let order = model.eviction_order();
        match *op {
            Op::Insert(slot, kind) if order.contains(&slot) => {
                policy.touch(slot, kind);
                model.touch(slot, kind);
            }
            Op::Insert(slot, kind) => {
                policy.insert(slot, kind);
                model.insert(slot, kind);
            }
            Op::Touch(nth, kind) => {
                if let Some(&slot) = order.get(nth % order.len().max(1)) {
                    policy.touch(slot, kind);
                    model.touch(slot, kind);
                }
            }
            Op::Remove(slot) => {
                policy.remove(slot);
                model.remove(slot);
            }
            Op::Victim(skip_mask) => {
                let skipped = |slot: SlotIndex| skip_mask >> (slot % 64) & 1 == 1;
                let expected = order.iter().copied().find(|&slot| !skipped(slot));
                let mut visited = Vec::new();
                let victim = policy.victim(&mut |slot| {
                    visited.push(slot);
                    skipped(slot)
                });
                assert_eq!(victim, expected);
                // `skip` sees exactly the eviction order up to the victim.
                assert_eq!(visited, order[..visited.len()]);
            }
        }
        sanity(policy, capacity);
        assert_eq!(
            eviction_order(policy),
            model.eviction_order(),
            "after {op:?}"
        );
    }
}

/// A cache of [`SIM_SLOT_COUNT`] blocks that evicts on every fill when full,
/// as the engine does.
struct CacheSim {
    policy: Box<dyn EvictionPolicy>,
    slots: SlotAllocator,
    key_of_slot: Vec<Option<u64>>,
    slot_of_key: HashMap<u64, SlotIndex>,
    /// Blocks fetched from the backend (demand misses and prefetches).
    fill_count: usize,
}

impl CacheSim {
    fn new(kind: PolicyKind) -> Self {
        Self {
            policy: new_policy(kind, SIM_SLOT_COUNT),
            slots: SlotAllocator::new(SIM_SLOT_COUNT),
            key_of_slot: vec![None; SIM_SLOT_COUNT as usize],
            slot_of_key: HashMap::new(),
            fill_count: 0,
        }
    }

    fn is_cached(&self, key: u64) -> bool {
        self.slot_of_key.contains_key(&key)
    }

    fn fill(&mut self, key: u64, kind: AccessKind) -> SlotIndex {
        let slot = self.slots.allocate().unwrap_or_else(|| {
            let victim = self.policy.victim(&mut |_| false).expect("full cache");
            self.policy.remove(victim);
            let evicted = self.key_of_slot[victim as usize].take().expect("mapped");
            self.slot_of_key.remove(&evicted);
            victim
        });
        self.policy.insert(slot, kind);
        self.key_of_slot[slot as usize] = Some(key);
        self.slot_of_key.insert(key, slot);
        self.fill_count += 1;
        slot
    }

    /// A demand read: fill on miss, then touch (a streamed block is both
    /// filled and consumed).
    fn read(&mut self, key: u64, kind: AccessKind) {
        let slot = match self.slot_of_key.get(&key) {
            Some(&slot) => slot,
            None => self.fill(key, kind),
        };
        self.policy.touch(slot, kind);
    }

    /// One sequential stream over `keys`: the first read is random (the
    /// detector has not seen the stream yet), later reads are sequential and
    /// prefetch ahead, bounded by the end of `keys`.
    fn stream(&mut self, keys: Range<u64>) {
        for key in keys.clone() {
            if key == keys.start {
                self.read(key, AccessKind::Random);
                continue;
            }
            self.read(key, AccessKind::Sequential);
            for ahead in key + 1..(key + 1 + SIM_PREFETCH_BLOCKS).min(keys.end) {
                if !self.is_cached(ahead) {
                    self.fill(ahead, AccessKind::Sequential);
                }
            }
        }
    }
}

/// Fills the cache, reads a hot random set repeatedly, streams once through
/// 10× the cache size, and returns how many hot keys are still cached.
pub(super) fn hot_set_survivors_after_scan(kind: PolicyKind) -> usize {
    const COLD_KEYS: Range<u64> = 1_000..1_000 + SIM_SLOT_COUNT as u64;
    const SCAN_KEYS: Range<u64> = 1_000_000..1_000_000 + 10 * SIM_SLOT_COUNT as u64;
    let hot_keys = 0..SIM_HOT_KEY_COUNT as u64;
    let mut sim = CacheSim::new(kind);
    for key in COLD_KEYS {
        sim.read(key, AccessKind::Random);
    }
    for _ in 0..4 {
        for key in hot_keys.clone() {
            sim.read(key, AccessKind::Random);
        }
    }
    assert_eq!(sim.policy.len(), SIM_SLOT_COUNT as usize, "cache is full");
    sim.stream(SCAN_KEYS);
    hot_keys.filter(|&key| sim.is_cached(key)).count()
}

/// Streams twice through a file of 2× the cache size and returns how many
/// of its blocks the second pass did not have to fetch again.
pub(super) fn second_pass_hits_of_looped_file(kind: PolicyKind) -> u32 {
    let file_blocks = 2 * u64::from(SIM_SLOT_COUNT);
    let mut sim = CacheSim::new(kind);
    sim.stream(0..file_blocks);
    let fill_count_first_pass = sim.fill_count;
    assert_eq!(fill_count_first_pass as u64, file_blocks);
    sim.stream(0..file_blocks);
    let fill_count_second_pass = (sim.fill_count - fill_count_first_pass) as u64;
    u32::try_from(file_blocks - fill_count_second_pass).expect("small")
}
