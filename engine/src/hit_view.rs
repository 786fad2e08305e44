//! A read-only view of one shard's memory tier for threads outside the
//! executors: a memory hit is served on the caller's thread (the FUSE
//! request loop) without a message to the shard.
//!
//! The shard stays the only writer of its arena and index. Readers never
//! block it and never take a lock; they validate what they copied instead
//! (a sequence lock per slot):
//!
//! - Every slot has a sequence number: odd while the slot is free or being
//!   written, even while it holds a published block.
//! - The writer makes a slot odd before it changes its bytes or its
//!   identity, and even again (release) after.
//! - A reader loads the sequence (acquire), checks the identity, copies the
//!   bytes, then (acquire fence) loads the sequence again: if it changed or
//!   was odd, the copy is thrown away and the read takes the shard's path.
//!
//! A small open-addressing table maps a block id's hash to candidate
//! slots. Only the shard writes it; a reader trusts nothing it finds there
//! (the slot's identity is checked under the sequence), so a stale or
//! overwritten entry only costs a miss.
//!
//! Readers record recency in a per-slot `touched` flag; the shard gives a
//! touched eviction victim a second chance (`MemoryTier::victim`).

use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::arena::Mapping;
use crate::block::BlockId;
use crate::slot::SlotIndex;

/// Table entries looked at per lookup (one cache line of `u64`s at most).
const PROBES: usize = 4;

/// The identity of the block a slot holds, readable by other threads.
#[derive(Debug, Default)]
struct SlotCell {
    seq: AtomicU64,
    ino: AtomicU64,
    index: AtomicU64,
    version: AtomicU64,
    len: AtomicU32,
    touched: AtomicBool,
}

/// Counters of hits served through the view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ViewStats {
    /// Reads served.
    pub hits: u64,
    /// Bytes they returned.
    pub bytes: u64,
}

/// The shared view of one shard's memory tier (see the module docs).
#[derive(Debug)]
pub struct HitView {
    mapping: Arc<Mapping>,
    slot_bytes: usize,
    cells: Box<[SlotCell]>,
    table: Box<[AtomicU64]>,
    mask: usize,
    hits: AtomicU64,
    bytes: AtomicU64,
}

impl HitView {
    /// A view of `slots` slots of `slot_bytes` in `mapping`, all free.
    pub(crate) fn new(mapping: Arc<Mapping>, slots: u32, slot_bytes: usize) -> Self {
        let cells: Box<[SlotCell]> = (0..slots)
            .map(|_| SlotCell {
                // Free slots are odd: readers miss them.
                seq: AtomicU64::new(1),
                ..SlotCell::default()
            })
            .collect();
        let table_len = (slots as usize * 2).next_power_of_two().max(PROBES);
        Self {
            mapping,
            slot_bytes,
            cells,
            table: (0..table_len).map(|_| AtomicU64::new(0)).collect(),
            mask: table_len - 1,
            hits: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// Copies `len` bytes at `offset` of block `id` into `dst` if the block
    /// is in the memory tier; the bytes copied (clipped at the block's end,
    /// so 0 past it), or `None` on a miss or when the slot changed during
    /// the copy. Never blocks and never waits for the shard.
    pub fn read(&self, id: BlockId, offset: usize, dst: &mut [u8]) -> Option<usize> {
        let hash = id.hash64();
        for probe in 0..PROBES {
            let entry =
                self.table[(hash as usize).wrapping_add(probe) & self.mask].load(Ordering::Relaxed);
            if entry == 0 || tag(hash) != (entry >> 32) as u32 {
                continue;
            }
            let slot = (entry as u32).wrapping_sub(1);
            if let Some(n) = self.read_slot(slot, id, offset, dst) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(n as u64, Ordering::Relaxed);
                return Some(n);
            }
        }
        None
    }

    fn read_slot(
        &self,
        slot: SlotIndex,
        id: BlockId,
        offset: usize,
        dst: &mut [u8],
    ) -> Option<usize> {
        let cell = self.cells.get(slot as usize)?;
        let before = cell.seq.load(Ordering::Acquire);
        if before & 1 == 1
            || cell.ino.load(Ordering::Relaxed) != id.ino.0
            || cell.index.load(Ordering::Relaxed) != id.index
            || cell.version.load(Ordering::Relaxed) != id.version
        {
            return None;
        }
        let valid = (cell.len.load(Ordering::Relaxed) as usize).min(self.slot_bytes);
        let n = valid.saturating_sub(offset).min(dst.len());
        if n > 0 {
            let base = self.mapping.base()?;
            // SAFETY: offset + n <= valid <= slot_bytes and slot < slots, so
            // the source lies inside the live mapping (kept alive by the
            // Arc). The writer may change these bytes concurrently: they are
            // read with volatile loads and discarded unless the sequence
            // below proves no write overlapped the copy.
            unsafe {
                let src = base.as_ptr().add(slot as usize * self.slot_bytes + offset);
                volatile_copy(src, &mut dst[..n]);
            }
        }
        fence(Ordering::Acquire);
        if cell.seq.load(Ordering::Relaxed) != before {
            // The slot changed under the copy: leave no stray bytes (the
            // caller's fallback may return fewer).
            dst[..n].fill(0);
            return None;
        }
        if !cell.touched.load(Ordering::Relaxed) {
            cell.touched.store(true, Ordering::Relaxed);
        }
        Some(n)
    }

    /// Hits served so far.
    pub fn stats(&self) -> ViewStats {
        ViewStats {
            hits: self.hits.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    // ----- writer side: the owning shard only ---------------------------

    /// Makes `slot` unreadable before its bytes or identity change, and
    /// drops its table entry. Idempotent.
    pub(crate) fn retire(&self, slot: SlotIndex) {
        let Some(cell) = self.cells.get(slot as usize) else {
            return;
        };
        let seq = cell.seq.load(Ordering::Relaxed);
        if seq & 1 == 0 {
            cell.seq.store(seq + 1, Ordering::Relaxed);
            // Orders the odd sequence before the writes that follow (a
            // reader that sees any of them sees the odd value afterwards).
            fence(Ordering::Release);
            let id = BlockId::new(
                cell.ino.load(Ordering::Relaxed),
                cell.index.load(Ordering::Relaxed),
                cell.version.load(Ordering::Relaxed),
            );
            self.unlink(slot, id);
        }
        cell.touched.store(false, Ordering::Relaxed);
    }

    /// Publishes `slot` as holding `len` bytes of block `id` (its bytes
    /// were written after `retire`).
    pub(crate) fn publish(&self, slot: SlotIndex, id: BlockId, len: usize) {
        let Some(cell) = self.cells.get(slot as usize) else {
            return;
        };
        self.retire(slot);
        cell.ino.store(id.ino.0, Ordering::Relaxed);
        cell.index.store(id.index, Ordering::Relaxed);
        cell.version.store(id.version, Ordering::Relaxed);
        cell.len.store(len as u32, Ordering::Relaxed);
        let seq = cell.seq.load(Ordering::Relaxed);
        cell.seq.store(seq + 1, Ordering::Release);
        self.link(slot, id);
    }

    /// Whether readers touched `slot` since the last call (clears the flag).
    pub(crate) fn take_touched(&self, slot: SlotIndex) -> bool {
        self.cells
            .get(slot as usize)
            .is_some_and(|c| c.touched.swap(false, Ordering::Relaxed))
    }

    /// Marks every slot unreadable (the tier is going away).
    pub(crate) fn retire_all(&self) {
        for slot in 0..self.cells.len() {
            self.retire(slot as SlotIndex);
        }
    }

    fn link(&self, slot: SlotIndex, id: BlockId) {
        let hash = id.hash64();
        let entry = (u64::from(tag(hash)) << 32) | u64::from(slot + 1);
        let mut chosen = None;
        for probe in 0..PROBES {
            let at = (hash as usize).wrapping_add(probe) & self.mask;
            let old = self.table[at].load(Ordering::Relaxed);
            // An empty entry, or one whose slot no longer holds a readable
            // block (a stale hint), can be reused.
            let stale = old == 0
                || self
                    .cells
                    .get((old as u32).wrapping_sub(1) as usize)
                    .is_none_or(|c| c.seq.load(Ordering::Relaxed) & 1 == 1);
            if stale {
                chosen = Some(at);
                break;
            }
        }
        // All probes live: this block replaces the first (the other one is
        // then served by the shard, never wrongly).
        let at = chosen.unwrap_or((hash as usize) & self.mask);
        self.table[at].store(entry, Ordering::Relaxed);
    }

    fn unlink(&self, slot: SlotIndex, id: BlockId) {
        let hash = id.hash64();
        for probe in 0..PROBES {
            let at = (hash as usize).wrapping_add(probe) & self.mask;
            if (self.table[at].load(Ordering::Relaxed) as u32).wrapping_sub(1) == slot {
                self.table[at].store(0, Ordering::Relaxed);
            }
        }
    }
}

fn tag(hash: u64) -> u32 {
    (hash >> 32) as u32
}

/// Copies `dst.len()` bytes from `src` with volatile loads (the source may
/// be written concurrently; the caller validates the result).
///
/// # Safety
/// `src..src + dst.len()` must be mapped and readable.
unsafe fn volatile_copy(src: *const u8, dst: &mut [u8]) {
    let len = dst.len();
    let mut i = 0;
    let word = std::mem::size_of::<u64>();
    while i < len && (src as usize + i) % word != 0 {
        // SAFETY: i < len, inside the caller's range.
        dst[i] = unsafe { std::ptr::read_volatile(src.add(i)) };
        i += 1;
    }
    while i + word <= len {
        #[allow(
            clippy::cast_ptr_alignment,
            reason = "the loop above advanced `src + i` to a u64 boundary"
        )]
        // SAFETY: aligned (see above) and inside the caller's range.
        let v = unsafe { std::ptr::read_volatile(src.add(i).cast::<u64>()) };
        dst[i..i + word].copy_from_slice(&v.to_ne_bytes());
        i += word;
    }
    while i < len {
        // SAFETY: i < len, inside the caller's range.
        dst[i] = unsafe { std::ptr::read_volatile(src.add(i)) };
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use super::*;
    use crate::arena::Arena;

    const SLOT: usize = 64 << 10;

    /// The bytes block `id` holds in these tests: a function of its id.
    fn pattern(id: BlockId, len: usize) -> Vec<u8> {
        let seed = id.hash64();
        (0..len)
            .map(|i| (seed.rotate_left((i % 64) as u32) as u8) ^ (i as u8))
            .collect()
    }

    fn fill(arena: &mut Arena, view: &HitView, slot: SlotIndex, id: BlockId, len: usize) {
        view.retire(slot);
        arena.slot_mut(slot)[..len].copy_from_slice(&pattern(id, len));
        view.publish(slot, id, len);
    }

    fn setup(slots: u32) -> (Arena, HitView) {
        let arena = Arena::new(slots, SLOT, false).expect("arena");
        let view = HitView::new(arena.mapping(), slots, SLOT);
        (arena, view)
    }

    #[test]
    fn published_blocks_read_back_and_clip_at_their_end() {
        let (mut arena, view) = setup(4);
        let id = BlockId::new(7, 3, 11);
        fill(&mut arena, &view, 2, id, 10_000);
        let want = pattern(id, 10_000);
        let mut dst = vec![0u8; 4096];
        assert_eq!(view.read(id, 4096, &mut dst), Some(4096));
        assert_eq!(dst, want[4096..8192]);
        // Unaligned start, clipped at the block's end.
        let mut dst = vec![0u8; 4096];
        assert_eq!(view.read(id, 9_001, &mut dst), Some(999));
        assert_eq!(dst[..999], want[9_001..]);
        assert_eq!(view.read(id, 20_000, &mut dst), Some(0), "past the end");
        assert_eq!(
            view.stats(),
            ViewStats {
                hits: 3,
                bytes: 4096 + 999
            }
        );
    }

    #[test]
    fn other_versions_free_and_retired_slots_miss() {
        let (mut arena, view) = setup(2);
        let id = BlockId::new(1, 0, 5);
        let mut dst = vec![0u8; 16];
        assert_eq!(view.read(id, 0, &mut dst), None, "nothing published");
        fill(&mut arena, &view, 0, id, 100);
        assert_eq!(view.read(BlockId::new(1, 0, 6), 0, &mut dst), None);
        assert_eq!(view.read(BlockId::new(1, 1, 5), 0, &mut dst), None);
        assert!(view.read(id, 0, &mut dst).is_some());
        view.retire(0);
        assert_eq!(view.read(id, 0, &mut dst), None, "retired");
        fill(&mut arena, &view, 1, id, 100);
        assert_eq!(
            view.read(id, 0, &mut dst),
            Some(16),
            "moved to another slot"
        );
        view.retire_all();
        assert_eq!(view.read(id, 0, &mut dst), None);
    }

    #[test]
    fn touched_is_set_by_reads_and_taken_once() {
        let (mut arena, view) = setup(1);
        let id = BlockId::new(2, 2, 2);
        fill(&mut arena, &view, 0, id, 64);
        assert!(!view.take_touched(0));
        view.read(id, 0, &mut [0u8; 8]).expect("hit");
        assert!(view.take_touched(0));
        assert!(!view.take_touched(0));
    }

    /// Random publishes and retires over a small table (collisions): every
    /// hit returns the right bytes; blocks not published never hit.
    #[test]
    fn never_a_wrong_hit_under_churn() {
        let slots = 16;
        let (mut arena, view) = setup(slots);
        let mut held: Vec<Option<BlockId>> = vec![None; slots as usize];
        let mut rng = 0x9e37_79b9_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut hits = 0;
        for step in 0..20_000u64 {
            let slot = (next() % u64::from(slots)) as SlotIndex;
            let id = BlockId::new(next() % 8, next() % 8, step);
            if next() % 3 == 0 {
                view.retire(slot);
                held[slot as usize] = None;
            } else {
                let len = 1 + (next() % SLOT as u64) as usize;
                fill(&mut arena, &view, slot, id, len);
                held[slot as usize] = Some(id);
            }
            for probe in held.iter().flatten() {
                let mut dst = vec![0u8; 512];
                let offset = (next() % 1024) as usize;
                if let Some(n) = view.read(*probe, offset, &mut dst) {
                    hits += 1;
                    let want = pattern(*probe, offset + n);
                    assert_eq!(dst[..n], want[offset..], "block {probe}");
                }
            }
            let gone = BlockId::new(99, 0, step);
            assert_eq!(view.read(gone, 0, &mut [0u8; 4]), None);
        }
        assert!(
            hits > 10_000,
            "the table must serve most held blocks: {hits}"
        );
    }

    /// A writer keeps replacing the blocks of two slots while readers copy
    /// them: a reader either misses or gets exactly the block it asked for.
    #[test]
    fn concurrent_rewrites_never_tear_a_hit() {
        let (mut arena, view) = setup(2);
        let view = Arc::new(view);
        let stop = Arc::new(AtomicBool::new(false));
        let ids: Vec<BlockId> = (0..4).map(|v| BlockId::new(3, 0, v)).collect();
        let readers: Vec<_> = (0..2)
            .map(|r| {
                let view = Arc::clone(&view);
                let stop = Arc::clone(&stop);
                let ids = ids.clone();
                std::thread::spawn(move || {
                    let (mut hits, mut misses) = (0u64, 0u64);
                    let mut dst = vec![0u8; SLOT];
                    let mut i = r;
                    while !stop.load(Ordering::Relaxed) {
                        let id = ids[i % ids.len()];
                        i += 1;
                        match view.read(id, 0, &mut dst) {
                            Some(n) => {
                                hits += 1;
                                assert_eq!(n, SLOT);
                                assert!(dst == pattern(id, SLOT), "torn read of {id}");
                            }
                            None => misses += 1,
                        }
                    }
                    (hits, misses)
                })
            })
            .collect();
        let started = std::time::Instant::now();
        let mut round = 0usize;
        while started.elapsed() < std::time::Duration::from_millis(300) {
            let slot = (round % 2) as SlotIndex;
            fill(&mut arena, &view, slot, ids[round % ids.len()], SLOT);
            round += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let mut hits = 0;
        for reader in readers {
            hits += reader.join().expect("reader").0;
        }
        assert!(hits > 0 && round > 10, "hits {hits}, rounds {round}");
    }
}
