//! Block version allocation.
//!
//! A version names one immutable content of one block `(ino, index)`. The
//! metadata only needs versions of the same block to differ, and the write
//! path wants them to grow (a newer write has a larger version, which makes
//! logs and the write-back journal easy to read).
//!
//! A version is `sequence << VERSION_WRITER_BITS | writer`: the low bits
//! name the node that wrote it (0 on a mount of its own), so that until
//! its upload finished, other nodes know whose journal holds it; versions
//! of different writers never collide. The sequence clock is seeded from
//! the wall clock in units of [`SEED_UNIT_NS`] when the node starts and
//! counts up by one per block flushed; nothing is persisted. That
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

use datenlord_engine::block::{VERSION_WRITER_BITS, VERSION_WRITER_MAX};

/// Wall-clock units of the sequence seed: 10 µs, so that the sequence
/// (64 - 16 bits) lasts until 2059.
pub const SEED_UNIT_NS: u128 = 10_000;
/// The largest sequence a version holds.
const SEQUENCE_MAX: u64 = u64::MAX >> VERSION_WRITER_BITS;

/// Hands out block versions.
#[derive(Debug)]
pub struct VersionClock {
    next: AtomicU64,
    writer: u64,
}

impl VersionClock {
    /// A clock whose first sequence is `seed` (at least 1), for versions
    /// written by node `writer` (at most [`VERSION_WRITER_MAX`]; 0 on a
    /// mount of its own).
    pub fn new(seed: u64, writer: u64) -> Self {
        Self {
            next: AtomicU64::new(seed.clamp(1, SEQUENCE_MAX)),
            writer: writer & VERSION_WRITER_MAX,
        }
    }

    /// A clock seeded from the wall clock.
    pub fn from_wall_clock(writer: u64) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| {
                u64::try_from(d.as_nanos() / SEED_UNIT_NS).unwrap_or(SEQUENCE_MAX / 2)
            });
        Self::new(seed, writer)
    }

    /// A fresh version above `current` (the block's version in the block
    /// map, if any).
    pub fn next_after(&self, current: Option<u64>) -> u64 {
        let drawn = self.next.fetch_add(1, Ordering::Relaxed);
        let floor = current.map_or(0, |c| (c >> VERSION_WRITER_BITS).saturating_add(1));
        let sequence = if drawn >= floor {
            drawn
        } else {
            // The block map is ahead of the clock: jump past it.
            self.next
                .fetch_max(floor.saturating_add(1), Ordering::Relaxed);
            floor
        };
        (sequence.min(SEQUENCE_MAX) << VERSION_WRITER_BITS) | self.writer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 1 << VERSION_WRITER_BITS;

    #[test]
    fn versions_grow_pass_the_current_one_and_name_their_writer() {
        let clock = VersionClock::new(10, 7);
        assert_eq!(clock.next_after(None), 10 * W + 7);
        assert_eq!(clock.next_after(Some(3 * W + 9)), 11 * W + 7);
        assert_eq!(clock.next_after(Some(100 * W + 9)), 101 * W + 7);
        assert!(clock.next_after(Some(100 * W + 9)) > 101 * W + 7);
        assert_eq!(VersionClock::new(0, 0).next_after(None), W);
        let wall = VersionClock::from_wall_clock(3).next_after(None);
        assert_eq!(datenlord_engine::BlockId::new(1, 0, wall).writer(), 3);
        assert!(wall >> VERSION_WRITER_BITS > 1_600_000_000 * 100_000);
        // A version of the old layout (nanoseconds) is passed too.
        let old = 1_750_000_000_000_000_000;
        assert!(VersionClock::from_wall_clock(3).next_after(Some(old)) > old);
        // Two writers never draw the same version.
        let (a, b) = (VersionClock::new(5, 1), VersionClock::new(5, 2));
        assert_ne!(a.next_after(None), b.next_after(None));
    }
}
