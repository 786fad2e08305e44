//! `TinyLFU` admission: should a missed block replace the eviction victim?
//!
//! The eviction policy picks *which* slot to give up; admission decides
//! *whether* a new block is worth that slot. Every access (hit or miss) is
//! recorded in a [`FrequencySketch`], a count-min sketch of recent access
//! frequencies with 4-bit counters that is periodically halved, so it tracks
//! the recent past in a few bits per cached block. A candidate is admitted
//! only when it is strictly more frequent than the victim it would replace:
//! a one-pass scan of never-seen-again blocks cannot flush a frequently used
//! working set (Einziger, Friedman and Manes, ACM Transactions on Storage,
//! 2017).
//!
//! Key hashes come from the caller, already 64-bit and well mixed; the
//! sketch still remixes them before deriving its row indices so that weak
//! hashes (e.g. raw block numbers) do not line up in the same counters.

/// Rows (independent hash functions) of the sketch.
const SKETCH_ROW_COUNT: usize = 4;
/// Bits per counter: 4 bits count up to 15, enough because aging halves the
/// counters every `sample_size` increments, about 10 per cached block.
const COUNTER_BITS: usize = 4;
/// Largest counter value; counters saturate there.
pub const COUNTER_MAX: u8 = (1 << COUNTER_BITS) - 1;
/// Counters packed in one `u64` word.
const COUNTERS_PER_WORD: usize = 64 / COUNTER_BITS;
/// Mask keeping the low 3 bits of every 4-bit counter: the halving step.
const COUNTER_HALVE_MASK: u64 = 0x7777_7777_7777_7777;

/// Counters per row for each cached block.
///
/// Why 4 and not 1: between two agings the sketch takes 10 increments per
/// cached block; with one counter per block and row, counters average ~10
/// and a never-seen-again scan block estimates as high as 6–9, so hundreds
/// of scan blocks per pass beat a working set seen 4–8 times. With 4, scan
/// estimates stay at 1–3 (measured; Caffeine sizes its sketch the same way:
/// 16 counters per cached entry over 4 hashes). Cost: 8 bytes per block.
pub const SKETCH_COUNTERS_PER_ROW_PER_CAPACITY_BLOCK: usize = 4;
/// Fewest counters per row; below this, collisions dominate.
pub const SKETCH_COUNTERS_PER_ROW_MIN: usize = 64;
/// Most counters per row: 4 rows × 2^22 counters × 4 bits = 8 MiB per shard.
/// Beyond that the sketch stops growing with the cache and estimates for
/// very large caches get noisier rather than memory growing unbounded.
pub const SKETCH_COUNTERS_PER_ROW_MAX: usize = 1 << 22;
/// Increments between two agings, per cached block (`TinyLFU`'s W/C = 10).
pub const SAMPLE_SIZE_PER_CAPACITY_BLOCK: usize = 10;

/// Odd multipliers, one per row (from splitmix64/xxhash/murmur3): the top
/// bits of `hash * seed` are a different multiplicative hash for each row.
const ROW_SEEDS: [u64; SKETCH_ROW_COUNT] = [
    0x9E37_79B9_7F4A_7C15,
    0xBF58_476D_1CE4_E5B9,
    0x94D0_49BB_1331_11EB,
    0xC2B2_AE3D_27D4_EB4F,
];

/// Count-min sketch of recent access frequencies: 4 rows of packed 4-bit
/// saturating counters, all halved after every `sample_size` increments.
#[derive(Clone, Debug)]
pub struct FrequencySketch {
    /// `SKETCH_ROW_COUNT` rows of `counters_per_row` counters, row-major,
    /// `COUNTERS_PER_WORD` counters per word.
    words: Vec<u64>,
    /// log2 of the counters per row (a power of two).
    counters_per_row_log2: u32,
    /// Increments between two agings.
    sample_size: usize,
    /// Increments since the last aging.
    increment_count: usize,
}

impl FrequencySketch {
    /// A sketch sized for a cache of `capacity_blocks` blocks: rows of
    /// `next_power_of_two(4 × capacity_blocks)` counters, clamped to
    /// [`SKETCH_COUNTERS_PER_ROW_MIN`]..=[`SKETCH_COUNTERS_PER_ROW_MAX`], aged
    /// every `10 × capacity_blocks` increments.
    #[must_use]
    pub fn new(capacity_blocks: usize) -> Self {
        let counters_per_row = capacity_blocks
            .saturating_mul(SKETCH_COUNTERS_PER_ROW_PER_CAPACITY_BLOCK)
            .clamp(SKETCH_COUNTERS_PER_ROW_MIN, SKETCH_COUNTERS_PER_ROW_MAX)
            .next_power_of_two();
        debug_assert!(counters_per_row <= SKETCH_COUNTERS_PER_ROW_MAX);
        let sketch = Self {
            words: vec![0; SKETCH_ROW_COUNT * counters_per_row / COUNTERS_PER_WORD],
            counters_per_row_log2: counters_per_row.trailing_zeros(),
            sample_size: capacity_blocks
                .max(1)
                .saturating_mul(SAMPLE_SIZE_PER_CAPACITY_BLOCK),
            increment_count: 0,
        };
        debug_assert!(sketch.counters_per_row_log2 >= 6);
        sketch
    }

    /// Counters per row.
    #[must_use]
    pub fn counters_per_row(&self) -> usize {
        1 << self.counters_per_row_log2
    }

    /// Increments between two agings.
    #[must_use]
    pub fn sample_size(&self) -> usize {
        self.sample_size
    }

    /// Counts one access to `key_hash`; ages the sketch every
    /// `sample_size` calls.
    pub fn increment(&mut self, key_hash: u64) {
        let counters = self.counter_indices(key_hash);
        let estimate = self.min_counter(&counters);
        // Conservative update: raise only the counters at the minimum. The
        // others already over-count because of collisions; raising them
        // would only add noise, and the estimate (the minimum) still never
        // under-counts.
        if estimate < COUNTER_MAX {
            for &counter in &counters {
                if self.counter(counter) == estimate {
                    self.set_counter(counter, estimate + 1);
                }
            }
        }
        self.increment_count += 1;
        if self.increment_count >= self.sample_size {
            self.age();
        }
    }

    /// Estimated recent access count of `key_hash`, at most [`COUNTER_MAX`].
    /// Never below the true count (capped at 15) since the last aging.
    #[must_use]
    pub fn estimate(&self, key_hash: u64) -> u8 {
        self.min_counter(&self.counter_indices(key_hash))
    }

    /// Halves every counter so that old popularity fades.
    fn age(&mut self) {
        for word in &mut self.words {
            *word = (*word >> 1) & COUNTER_HALVE_MASK;
        }
        self.increment_count = 0;
    }

    /// Index of the key's counter in each row, over the whole table.
    fn counter_indices(&self, key_hash: u64) -> [usize; SKETCH_ROW_COUNT] {
        let mixed = remix(key_hash);
        let mut indices = [0; SKETCH_ROW_COUNT];
        for (row, (index, seed)) in indices.iter_mut().zip(ROW_SEEDS).enumerate() {
            // Top bits of a multiplicative hash are its best-mixed bits.
            let column = mixed.wrapping_mul(seed) >> (64 - self.counters_per_row_log2);
            #[allow(
                clippy::cast_possible_truncation,
                reason = "column < counters_per_row <= 2^22 fits any usize"
            )]
            let column = column as usize;
            *index = (row << self.counters_per_row_log2) | column;
        }
        indices
    }

    fn min_counter(&self, counters: &[usize; SKETCH_ROW_COUNT]) -> u8 {
        counters
            .iter()
            .map(|&counter| self.counter(counter))
            .min()
            .unwrap_or(0)
    }

    #[allow(
        clippy::cast_possible_truncation,
        reason = "the value is masked to 4 bits before the cast"
    )]
    fn counter(&self, counter: usize) -> u8 {
        let shift = (counter % COUNTERS_PER_WORD) * COUNTER_BITS;
        ((self.words[counter / COUNTERS_PER_WORD] >> shift) & u64::from(COUNTER_MAX)) as u8
    }

    fn set_counter(&mut self, counter: usize, value: u8) {
        debug_assert!(value <= COUNTER_MAX);
        let shift = (counter % COUNTERS_PER_WORD) * COUNTER_BITS;
        let word = &mut self.words[counter / COUNTERS_PER_WORD];
        *word = (*word & !(u64::from(COUNTER_MAX) << shift)) | (u64::from(value) << shift);
    }
}

/// murmur3's 64-bit finalizer: spreads every input bit over the output, so
/// row indices stay independent even for sequential or low-entropy hashes.
fn remix(mut hash: u64) -> u64 {
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    hash ^ (hash >> 33)
}

/// `TinyLFU` admission filter of one shard's cache.
#[derive(Clone, Debug)]
pub struct Admission {
    sketch: FrequencySketch,
}

impl Admission {
    /// A filter for a cache of `capacity_blocks` blocks.
    #[must_use]
    pub fn new(capacity_blocks: usize) -> Self {
        Self {
            sketch: FrequencySketch::new(capacity_blocks),
        }
    }

    /// Records an access to `key_hash`; call on every access, hit or miss.
    pub fn record(&mut self, key_hash: u64) {
        self.sketch.increment(key_hash);
    }

    /// Estimated recent access count of `key_hash` (0..=15).
    #[must_use]
    pub fn frequency(&self, key_hash: u64) -> u8 {
        self.sketch.estimate(key_hash)
    }

    /// Admit `candidate` when there is a free slot (victim `None`) or when
    /// it is strictly more frequent than the victim it would replace.
    ///
    /// Ties go to the victim: replacing a block costs a fill and a write,
    /// so it must buy something.
    #[must_use]
    pub fn admit(&self, candidate_hash: u64, victim_hash: Option<u64>) -> bool {
        victim_hash.is_none_or(|victim| self.frequency(candidate_hash) > self.frequency(victim))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// A well-mixed 64-bit hash of a small key, as callers pass.
    fn hash(key: u64) -> u64 {
        // splitmix64: independent of `remix`, so tests do not lean on it.
        let mut z = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    #[test]
    fn sizing() {
        let check = |capacity, counters_per_row, sample_size| {
            let sketch = FrequencySketch::new(capacity);
            assert_eq!(sketch.counters_per_row(), counters_per_row, "{capacity}");
            assert_eq!(sketch.sample_size(), sample_size, "{capacity}");
            assert_eq!(sketch.words.len() * COUNTERS_PER_WORD, 4 * counters_per_row);
        };
        check(0, 64, 10);
        check(1, 64, 10);
        check(16, 64, 160);
        check(17, 128, 170);
        check(1024, 4096, 10_240);
        check(usize::MAX, SKETCH_COUNTERS_PER_ROW_MAX, usize::MAX);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Before any aging, the estimate is never below the true count
        /// (capped at 15), whatever the collisions.
        #[test]
        fn never_under_counts(
            keys in prop::collection::vec(0u64..40, 0..400),
            raw_hashes in any::<bool>(),
        ) {
            // 64 counters per row and 40 keys: many collisions; aging is
            // disabled.
            let mut sketch = FrequencySketch::new(64);
            sketch.sample_size = usize::MAX;
            let mut counts: HashMap<u64, u8> = HashMap::new();
            for key in keys {
                let key_hash = if raw_hashes { key } else { hash(key) };
                sketch.increment(key_hash);
                let count = counts.entry(key_hash).or_default();
                *count = (*count + 1).min(COUNTER_MAX);
                for (&key_hash, &count) in &counts {
                    prop_assert!(sketch.estimate(key_hash) >= count);
                }
            }
        }
    }

    #[test]
    fn counters_saturate_at_15() {
        let mut sketch = FrequencySketch::new(64);
        for _ in 0..100 {
            sketch.increment(hash(7));
        }
        assert_eq!(sketch.estimate(hash(7)), COUNTER_MAX);
        assert_eq!(sketch.estimate(hash(8)), 0);
    }

    #[test]
    fn aging_halves_every_sample_size_increments() {
        let mut sketch = FrequencySketch::new(64);
        let sample_size = sketch.sample_size();
        for _ in 0..COUNTER_MAX {
            sketch.increment(hash(0));
        }
        let mut key = 1;
        while sketch.increment_count < sample_size - 1 {
            sketch.increment(hash(key));
            key += 1;
        }
        assert_eq!(sketch.estimate(hash(0)), COUNTER_MAX);
        // The same last increment on a copy that never ages: every counter
        // of the aged sketch must be half of the copy's.
        let mut unaged = sketch.clone();
        unaged.sample_size = usize::MAX;
        unaged.increment(hash(key));
        sketch.increment(hash(key));
        for counter in 0..sketch.words.len() * COUNTERS_PER_WORD {
            assert_eq!(sketch.counter(counter), unaged.counter(counter) / 2);
        }
        assert_eq!(sketch.increment_count, 0);
        assert_eq!(sketch.estimate(hash(0)), COUNTER_MAX / 2);
    }

    #[test]
    fn admits_into_free_slot_and_breaks_ties_for_victim() {
        let mut admission = Admission::new(64);
        assert!(admission.admit(hash(1), None));
        assert!(!admission.admit(hash(1), Some(hash(2))), "0 vs 0 is a tie");
        admission.record(hash(1));
        assert!(admission.admit(hash(1), Some(hash(2))));
        assert!(!admission.admit(hash(2), Some(hash(1))));
    }

    /// A hot working set, then a one-pass scan of 10× the capacity: no scan
    /// block is ever admitted over a hot victim, although the scan spans an
    /// aging that halves the hot counts. Checked for several cache sizes and
    /// for raw, unmixed key hashes too.
    #[test]
    fn scan_is_never_admitted_over_hot_set() {
        let raw = |key: u64| key;
        for key_hash in [hash, raw] {
            for capacity_blocks in [64, 256, 4096] {
                check_scan_resistance(capacity_blocks, key_hash);
            }
        }
    }

    fn check_scan_resistance(capacity_blocks: u64, key_hash: fn(u64) -> u64) {
        const HOT_ROUND_COUNT: usize = 8;
        let hot_key_count = capacity_blocks / 4;
        let mut admission = Admission::new(usize::try_from(capacity_blocks).expect("small"));
        for _ in 0..HOT_ROUND_COUNT {
            for key in 0..hot_key_count {
                admission.record(key_hash(key));
            }
        }
        let scan_keys = 1 << 32..(1 << 32) + 10 * capacity_blocks;
        for (n, key) in (0..).zip(scan_keys) {
            admission.record(key_hash(key));
            let victim = key_hash(n % hot_key_count);
            assert!(
                !admission.admit(key_hash(key), Some(victim)),
                "capacity {capacity_blocks}: scan key {key} beat hot key {}",
                n % hot_key_count
            );
        }
    }

    #[test]
    fn frequent_key_is_admitted_over_cold_victim() {
        const CAPACITY_BLOCKS: u64 = 256;
        let mut admission = Admission::new(usize::try_from(CAPACITY_BLOCKS).expect("small"));
        // Background traffic: every other key seen once.
        for key in 1_000..1_000 + CAPACITY_BLOCKS {
            admission.record(hash(key));
        }
        let candidate = hash(1);
        for _ in 0..4 {
            admission.record(candidate);
        }
        for cold_victim in (1_000..1_000 + CAPACITY_BLOCKS).map(hash) {
            assert!(admission.admit(candidate, Some(cold_victim)));
            assert!(!admission.admit(cold_victim, Some(candidate)));
        }
    }
}
