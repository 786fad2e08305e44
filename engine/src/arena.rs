//! The memory tier's arena: one mapping per shard, carved into block slots at
//! start, so a hit never calls the global allocator.

use std::ptr::NonNull;
use std::sync::Arc;

use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::slot::SlotIndex;

/// Size of the hugetlb pages the arena asks for (x86-64 and arm64 default).
pub const HUGEPAGE_BYTES: usize = 2 << 20;

/// What backs an arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// Explicit hugetlb pages (MAP_HUGETLB).
    HugeTlb,
    /// Normal pages, with transparent hugepages advised.
    Normal,
    /// Nothing: an arena of zero slots.
    Empty,
}

/// One anonymous mapping, unmapped when the last owner drops it: the arena
/// and the shard's `HitView` (other threads read through it) share it.
#[derive(Debug)]
pub struct Mapping {
    base: Option<NonNull<u8>>,
    bytes: usize,
}

// SAFETY: the mapping is plain memory with no thread affinity. Writes go
// through the owning shard's `Arena` (exclusive borrow); other threads only
// read it through `HitView`, which validates every copy with a sequence
// lock, so sharing the pointer across threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: see `Send`.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Start of the mapping (`None` for an empty arena).
    pub(crate) fn base(&self) -> Option<NonNull<u8>> {
        self.base
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let Some(base) = self.base {
            // SAFETY: unmapping exactly the mapping created in `Arena::new`;
            // no owner remains to read it.
            unsafe { libc::munmap(base.as_ptr().cast(), self.bytes) };
        }
    }
}

/// Block slots in one anonymous mapping owned by one shard.
#[derive(Debug)]
pub struct Arena {
    mapping: Arc<Mapping>,
    slot_bytes: usize,
    slots: u32,
    backing: Backing,
}

impl Arena {
    /// Maps `slots` slots of `slot_bytes`, hugetlb-backed when `hugepages`
    /// and the system has enough free hugepages, else normal pages. Pages are
    /// populated now so the hit path never faults.
    pub fn new(slots: u32, slot_bytes: usize, hugepages: bool) -> Result<Self> {
        let bytes = slots as usize * slot_bytes;
        if bytes == 0 {
            return Ok(Self {
                mapping: Arc::new(Mapping {
                    base: None,
                    bytes: 0,
                }),
                slot_bytes,
                slots: 0,
                backing: Backing::Empty,
            });
        }
        if hugepages {
            let map_bytes = bytes.next_multiple_of(HUGEPAGE_BYTES);
            match map(map_bytes, libc::MAP_HUGETLB) {
                Ok(base) => {
                    info!(bytes = map_bytes, "memory tier backed by hugetlb pages");
                    return Ok(Self {
                        mapping: Arc::new(Mapping {
                            base: Some(base),
                            bytes: map_bytes,
                        }),
                        slot_bytes,
                        slots,
                        backing: Backing::HugeTlb,
                    });
                }
                Err(err) => info!(
                    bytes = map_bytes,
                    %err,
                    "no hugetlb pages for the memory tier (configure vm.nr_hugepages to use them); using normal pages"
                ),
            }
        }
        let base = map(bytes, 0).map_err(|source| Error::Arena { bytes, source })?;
        // SAFETY: advising a mapping we own; failure only loses an optimisation.
        let rc = unsafe { libc::madvise(base.as_ptr().cast(), bytes, libc::MADV_HUGEPAGE) };
        if rc != 0 {
            warn!(err = %std::io::Error::last_os_error(), "madvise(MADV_HUGEPAGE) failed");
        }
        Ok(Self {
            mapping: Arc::new(Mapping {
                base: Some(base),
                bytes,
            }),
            slot_bytes,
            slots,
            backing: Backing::Normal,
        })
    }

    /// What backs the arena.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// Number of slots.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Bytes per slot.
    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// The mapping, for a `HitView`.
    pub(crate) fn mapping(&self) -> Arc<Mapping> {
        Arc::clone(&self.mapping)
    }

    /// The bytes of a slot.
    pub fn slot(&self, slot: SlotIndex) -> &[u8] {
        assert!(slot < self.slots, "slot {slot} out of {}", self.slots);
        let Some(base) = self.mapping.base else {
            return &[];
        };
        // SAFETY: slot < slots, so the range lies inside the live mapping,
        // which lives as long as self; shared borrow of self prevents writes.
        unsafe {
            std::slice::from_raw_parts(
                base.as_ptr().add(slot as usize * self.slot_bytes),
                self.slot_bytes,
            )
        }
    }

    /// The bytes of a slot, writable.
    pub fn slot_mut(&mut self, slot: SlotIndex) -> &mut [u8] {
        assert!(slot < self.slots, "slot {slot} out of {}", self.slots);
        let Some(base) = self.mapping.base else {
            return &mut [];
        };
        // SAFETY: as in `slot`, and the exclusive borrow of self makes this
        // the only reference into the mapping.
        unsafe {
            std::slice::from_raw_parts_mut(
                base.as_ptr().add(slot as usize * self.slot_bytes),
                self.slot_bytes,
            )
        }
    }
}

fn map(bytes: usize, extra_flags: libc::c_int) -> std::io::Result<NonNull<u8>> {
    // SAFETY: anonymous private mapping; the kernel picks the address.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE | extra_flags,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    NonNull::new(ptr.cast()).ok_or_else(|| std::io::Error::other("mmap returned null"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_hugepages() -> usize {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| {
                        l.strip_prefix("HugePages_Free:")
                            .map(|v| v.trim().parse().ok())
                    })
                    .flatten()
            })
            .unwrap_or(0)
    }

    #[test]
    fn slots_are_disjoint_and_writable() {
        let mut arena = Arena::new(4, 64 << 10, false).expect("arena");
        assert_eq!(arena.backing(), Backing::Normal);
        for s in 0..4 {
            arena.slot_mut(s).fill(s as u8 + 1);
        }
        for s in 0..4 {
            assert!(arena.slot(s).iter().all(|&b| b == s as u8 + 1));
        }
    }

    #[test]
    fn hugepages_used_when_configured_else_fallback() {
        // scripts/test reserves hugepages as root, so both paths run in CI:
        // this test sees them, the empty-system case is forced by asking
        // for more than exist.
        let slot_bytes = 1 << 20;
        let arena = Arena::new(2, slot_bytes, true).expect("arena");
        let expect = if free_hugepages() >= 1 {
            Backing::HugeTlb
        } else {
            Backing::Normal
        };
        assert_eq!(arena.backing(), expect);
        let too_many = (free_hugepages() as u32 + 8) * 2;
        let arena = Arena::new(too_many, slot_bytes, true).expect("fallback arena");
        assert_eq!(arena.backing(), Backing::Normal);
    }

    #[test]
    fn empty_arena() {
        let arena = Arena::new(0, 1 << 20, true).expect("arena");
        assert_eq!(arena.backing(), Backing::Empty);
        assert_eq!(arena.slots(), 0);
    }
}
