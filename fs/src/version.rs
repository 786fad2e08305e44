//! Block version allocation.
//!
//! A version names one immutable content of one block `(ino, index)`. The
//! metadata only needs versions of the same block to differ, and the write
//! path wants them to grow (a newer write has a larger version, which makes
//! logs and the write-back journal easy to read).
//!
//! The clock is seeded from the wall clock in nanoseconds when the node
//! starts and counts up by one per block flushed; nothing is persisted. That
//! is safe because (1) every allocation is also at least one above the
//! version the block map holds now ([`VersionClock::next_after`]), so a
//! block's versions strictly increase whatever the clock did, even after a
//! restart with a clock set backwards; and (2) flushes of one block are
//! serialized on this node (the inode's dirty state), so two allocations for
//! the same block never race here. Nodes writing the same block concurrently
//! are serialized by the metadata (the last `SetBlocks` wins and the other
//! version becomes garbage); their versions collide only if both picked the
//! same number, which needs equal nanosecond seeds plus equal counts.

use std::sync::atomic::{AtomicU64, Ordering};

/// Hands out block versions.
#[derive(Debug)]
pub struct VersionClock {
    next: AtomicU64,
}

impl VersionClock {
    /// A clock whose first version is `seed` (at least 1).
    pub fn new(seed: u64) -> Self {
        Self {
            next: AtomicU64::new(seed.max(1)),
        }
    }

    /// A clock seeded from the wall clock (nanoseconds since the epoch).
    pub fn from_wall_clock() -> Self {
        let ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 2));
        Self::new(ns)
    }

    /// A fresh version above `current` (the block's version in the block
    /// map, if any).
    pub fn next_after(&self, current: Option<u64>) -> u64 {
        let drawn = self.next.fetch_add(1, Ordering::Relaxed);
        let floor = current.map_or(0, |c| c.saturating_add(1));
        if drawn >= floor {
            return drawn;
        }
        // The block map is ahead of the clock: jump past it.
        self.next
            .fetch_max(floor.saturating_add(1), Ordering::Relaxed);
        floor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_grow_and_pass_the_current_one() {
        let clock = VersionClock::new(10);
        assert_eq!(clock.next_after(None), 10);
        assert_eq!(clock.next_after(Some(3)), 11);
        assert_eq!(clock.next_after(Some(100)), 101);
        assert_eq!(clock.next_after(None), 102);
        assert_eq!(VersionClock::new(0).next_after(None), 1);
        assert!(VersionClock::from_wall_clock().next_after(None) > 1_600_000_000 * 1_000_000_000);
    }
}
