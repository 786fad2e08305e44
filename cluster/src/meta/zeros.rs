//! Allocated-zero extents: ranges of a file's blocks that are allocated
//! (they count in `st_blocks`, the volume's capacity and a directory
//! quota, and `SEEK_DATA` finds them) but hold zeros and have no block
//! version, so no object in the store. `fallocate` makes them: mode 0
//! allocates the holes of a range, `FALLOC_FL_ZERO_RANGE` replaces a
//! range's whole blocks by one extent (their versions become garbage).
//! One command covers any range in time and memory of what it changes,
//! whatever the range's length; the capacity bounds what may be
//! allocated (`ENOSPC`, as ext4 answers a fallocate it cannot hold).
//!
//! A file's extents are disjoint from its block map and from each other,
//! lie below its end and are kept merged; a write into one makes that
//! block an ordinary block (the extent splits), a truncation or a punched
//! hole cuts them, and they go with the file.

use std::collections::BTreeMap;

use super::attr::blocks_for;
use super::command::{Outcome, Reply};
use super::error::MetaError;
use super::state::{MetaState, Result};
use super::types::{Creds, Ino, Timespec};

/// One file's extents: first block -> last block (inclusive), disjoint
/// and not adjacent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Zeros {
    pub ranges: BTreeMap<u64, u64>,
    /// Blocks in `ranges`.
    pub blocks: u64,
}

impl Zeros {
    /// Whether block `index` is in an extent.
    pub fn contains(&self, index: u64) -> bool {
        self.ranges
            .range(..=index)
            .next_back()
            .is_some_and(|(_, &last)| last >= index)
    }

    /// Where extents that reach `first` or later start: the first of the
    /// one holding `first`, or `first`.
    pub fn scan_start(&self, first: u64) -> u64 {
        self.ranges
            .range(..first)
            .next_back()
            .filter(|(_, &l)| l >= first)
            .map_or(first, |(&f, _)| f)
    }

    /// Blocks of `first..=last` in extents.
    pub fn count_in(&self, first: u64, last: u64) -> u64 {
        let mut count = 0;
        for (&f, &l) in self.ranges.range(self.scan_start(first)..=last) {
            count += l.min(last) - f.max(first) + 1;
        }
        count
    }

    /// Takes `first..=last` out of the extents; the blocks removed.
    pub fn remove(&mut self, first: u64, last: u64) -> u64 {
        let hit: Vec<(u64, u64)> = self
            .ranges
            .range(self.scan_start(first)..=last)
            .map(|(&f, &l)| (f, l))
            .collect();
        let mut removed = 0;
        for (f, l) in hit {
            self.ranges.remove(&f);
            if f < first {
                self.ranges.insert(f, first - 1);
            }
            if l > last {
                self.ranges.insert(last + 1, l);
            }
            removed += l.min(last) - f.max(first) + 1;
        }
        self.blocks -= removed;
        removed
    }

    /// Adds `first..=last`, which no extent holds, merging neighbours.
    pub fn insert(&mut self, first: u64, last: u64) {
        debug_assert_eq!(self.count_in(first, last), 0);
        let mut lo = first;
        let mut hi = last;
        if let Some((&f, &l)) = self.ranges.range(..first).next_back() {
            if l.checked_add(1) == Some(first) {
                self.ranges.remove(&f);
                lo = f;
            }
        }
        if let Some(after) = last.checked_add(1) {
            if let Some(l) = self.ranges.remove(&after) {
                hi = l;
            }
        }
        self.ranges.insert(lo, hi);
        self.blocks += last - first + 1;
    }

    /// The first block at or after `index` in an extent.
    pub fn next_from(&self, index: u64) -> Option<u64> {
        if self.contains(index) {
            return Some(index);
        }
        self.ranges.range(index..).next().map(|(&f, _)| f)
    }

    /// The last block of the extent holding `index`.
    pub fn end_of(&self, index: u64) -> Option<u64> {
        self.ranges
            .range(..=index)
            .next_back()
            .filter(|(_, &l)| l >= index)
            .map(|(_, &l)| l)
    }
}

impl MetaState {
    /// `SEEK_DATA` in blocks: the first block of file `ino` at or after
    /// `index` that is allocated (mapped or in a zero extent).
    pub fn data_from(&self, ino: Ino, index: u64) -> Result<Option<u64>> {
        self.formatted()?;
        let blocks = self
            .inode(ino)?
            .blocks()
            .ok_or(MetaError::Invalid("only regular files have blocks"))?;
        let mapped = blocks.range(index..).next().map(|(&i, _)| i);
        let zeroed = self.zeros.get(&ino).and_then(|z| z.next_from(index));
        Ok(match (mapped, zeroed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// `SEEK_HOLE` in blocks: the first block of file `ino` at or after
    /// `index` that is neither mapped nor in a zero extent (costs the
    /// allocated blocks and extents it passes).
    pub fn hole_from(&self, ino: Ino, index: u64) -> Result<u64> {
        self.formatted()?;
        let blocks = self
            .inode(ino)?
            .blocks()
            .ok_or(MetaError::Invalid("only regular files have blocks"))?;
        let zeros = self.zeros.get(&ino);
        let mut at = index;
        loop {
            if let Some(last) = zeros.and_then(|z| z.end_of(at)) {
                at = last.saturating_add(1);
                continue;
            }
            let run = blocks
                .range(at..)
                .zip(at..)
                .take_while(|((&i, _), expected)| i == *expected)
                .count() as u64;
            if run == 0 {
                return Ok(at);
            }
            at = at.saturating_add(run);
        }
    }

    /// The extents of `ino`, if it has any.
    pub(crate) fn zeros_of(&self, ino: Ino) -> Option<&Zeros> {
        self.zeros.get(&ino)
    }

    /// Blocks of `ino` in extents.
    pub(crate) fn zero_blocks(&self, ino: Ino) -> u64 {
        self.zeros.get(&ino).map_or(0, |z| z.blocks)
    }

    /// Takes `first..` (to the end) out of the extents of `ino`; the
    /// blocks removed.
    pub(crate) fn cut_zeros(&mut self, ino: Ino, first: u64, last: u64) -> u64 {
        let Some(zeros) = self.zeros.get_mut(&ino) else {
            return 0;
        };
        let removed = zeros.remove(first, last);
        if zeros.blocks == 0 {
            self.zeros.remove(&ino);
        }
        removed
    }

    /// `fallocate` of blocks `first..=last` of regular file `ino`: with
    /// `replace` (ZERO_RANGE) the range becomes one extent and its block
    /// versions garbage; without (mode 0) only its holes become extents.
    /// Blocks at or past the end of the file are left alone (the caller
    /// sets the size first). Times move as on a write with `replace`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn zero_blocks_cmd(
        &mut self,
        ino: Ino,
        first: u64,
        last: u64,
        replace: bool,
        creds: &Creds,
        now: Timespec,
    ) -> Result<Outcome> {
        let (block_size, capacity_blocks, inode, blocks) = self.file_blocks(ino)?;
        if first > last {
            return Err(MetaError::Invalid("an empty block range"));
        }
        let end = blocks_for(inode.size, block_size);
        if first >= end {
            return Ok(Outcome::reply(Reply::Attr(self.attr_of(ino)?)));
        }
        let last = last.min(end - 1);
        let mapped: Vec<u64> = blocks.range(first..=last).map(|(&i, _)| i).collect();
        let zeroed = self.zeros.get(&ino).map_or(0, |z| z.count_in(first, last));
        let allocated = mapped.len() as u64 + zeroed;
        let added = (last - first + 1) - allocated;
        if self.blocks_used + added > capacity_blocks {
            return Err(MetaError::NoSpace("the volume's capacity is used up"));
        }

        let charged = self.charge_of(ino);
        let mut out = Outcome::reply(Reply::Done);
        let zeros = self.zeros.entry(ino).or_default();
        if replace {
            zeros.remove(first, last);
            zeros.insert(first, last);
        } else {
            // The holes between the mapped blocks and the extents.
            let mut at = first;
            let mut holes = Vec::new();
            let mut taken = mapped.iter().map(|&i| (i, i)).collect::<Vec<_>>();
            taken.extend(
                zeros
                    .ranges
                    .range(zeros.scan_start(first)..=last)
                    .map(|(&f, &l)| (f, l)),
            );
            taken.sort_unstable();
            for (f, l) in taken {
                if f > at {
                    holes.push((at, f - 1));
                }
                at = at.max(l.saturating_add(1));
            }
            if at <= last {
                holes.push((at, last));
            }
            for (f, l) in holes {
                zeros.insert(f, l);
            }
        }
        if replace {
            self.unmap_range(ino, first, last, creds, now, &mut out)?;
        }
        if self.zeros.get(&ino).is_some_and(|z| z.blocks == 0) {
            self.zeros.remove(&ino);
        }
        // Mapped blocks that became extents stay counted.
        self.blocks_used += added;
        self.recharge(ino, charged);
        out.reply = Reply::Attr(self.attr_of(ino)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zeros(ranges: &[(u64, u64)]) -> Zeros {
        let mut z = Zeros::default();
        for &(f, l) in ranges {
            z.insert(f, l);
        }
        z
    }

    #[test]
    fn extents_merge_split_and_count() {
        let mut z = zeros(&[(0, 9), (20, 29)]);
        assert_eq!((z.blocks, z.ranges.len()), (20, 2));
        z.insert(10, 19);
        assert_eq!(z.ranges.iter().collect::<Vec<_>>(), vec![(&0, &29)]);
        assert_eq!(z.count_in(5, 7), 3);
        assert_eq!(z.remove(5, 7), 3);
        assert_eq!(
            z.ranges.iter().map(|(&f, &l)| (f, l)).collect::<Vec<_>>(),
            vec![(0, 4), (8, 29)]
        );
        assert!(z.contains(4) && !z.contains(5) && z.contains(8));
        assert_eq!(z.next_from(5), Some(8));
        assert_eq!(z.end_of(9), Some(29));
        assert_eq!(z.count_in(0, u64::MAX), 27);
        assert_eq!(z.remove(3, u64::MAX), 24);
        assert_eq!(z.blocks, 3);
        // Huge ranges cost what they hold.
        let mut z = zeros(&[(0, u64::MAX - 1)]);
        assert_eq!(z.blocks, u64::MAX);
        assert_eq!(z.remove(1, u64::MAX - 2), u64::MAX - 2);
        assert_eq!(z.blocks, 2);
    }
}
