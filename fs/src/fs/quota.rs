//! Directory quotas on the write path. The metadata counts each project's
//! use (`datenlord_cluster::meta::quota` has the rules) and never refuses
//! a commit for it; a write is refused here, when it is buffered, so no
//! acknowledged byte is ever dropped at commit.
//!
//! A file of a project reserves what its unflushed writes add: the blocks
//! they put where the block map has none, the block holding the end of
//! the file only up to that end (rounded up to 4 KiB, as the metadata
//! charges it), so a small file reserves 4 KiB, not a block. A write that
//! makes the reservation grow fails with `EDQUOT` unless the project's
//! committed use, this node's reservations in it and the new reservation
//! fit in its limit; rewrites of reserved or committed bytes always pass.
//! A file's reservation ends when its writes are committed (the metadata
//! counts them then). Several nodes writing into one project at once see
//! each other's writes only once committed: together they may pass the
//! limit by what they had not committed yet.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::PoisonError;

use datenlord_cluster::meta::{Ino, StatFs, CHARGE_UNIT_BYTES};

use super::{FileShared, FileState, Fs};
use crate::error::{FsError, Result};

/// What the blocks in `unmapped` (none in the block map) cost in a file
/// of `size` bytes: whole blocks, the one holding the end of the file only
/// up to it (the metadata's charge), nothing past the end.
fn reservation(unmapped: &BTreeSet<u64>, size: u64, block_size: u32) -> u64 {
    if size == 0 {
        return 0;
    }
    let bs = u64::from(block_size);
    let last = (size - 1) / bs;
    let whole = (unmapped.range(..=last).count() as u64).saturating_mul(bs);
    if !unmapped.contains(&last) {
        return whole;
    }
    let tail = (size - last * bs)
        .div_ceil(CHARGE_UNIT_BYTES)
        .saturating_mul(CHARGE_UNIT_BYTES)
        .min(bs);
    whole - (bs - tail)
}

impl Fs {
    /// Reserves what a write of `len` bytes at `offset` that leaves file
    /// `ino` (unflushed state `st`, `shared`) `new_size` bytes long adds
    /// to its project's use; `EDQUOT` if it does not fit.
    pub(super) fn reserve_quota(
        &self,
        ino: Ino,
        st: &mut FileState,
        shared: &FileShared,
        offset: u64,
        len: usize,
        new_size: u64,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let Some(quota) = self.meta.read(|s| s.quota(ino)) else {
            return Ok(());
        };
        let bs = u64::from(self.block_size);
        let first = offset / bs;
        let last = (offset + len as u64 - 1) / bs;
        let mut fresh: Vec<u64> = (first..=last)
            .filter(|index| st.dirty.get(*index).is_none() && !st.unmapped.contains(index))
            .collect();
        if !fresh.is_empty() {
            let mapped = self.versions(ino, first, last)?;
            fresh.retain(|index| !mapped.contains_key(index));
        }
        // The set grows (a copy) only when the write adds blocks.
        let grown = (!fresh.is_empty()).then(|| {
            let mut unmapped = st.unmapped.clone();
            unmapped.extend(fresh.iter().copied());
            unmapped
        });
        let before = shared.reserved.load(Ordering::Acquire);
        let after = reservation(
            grown.as_ref().unwrap_or(&st.unmapped),
            new_size,
            self.block_size,
        );
        if after > before {
            // One reservation at a time: two writers never both take the
            // last room.
            let _one = self
                .quota_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mine = if shared.quota_root.load(Ordering::Acquire) == quota.root.0 {
                before
            } else {
                0
            };
            let others = self.reserved_in(quota.root).saturating_sub(mine);
            let used = quota.used_bytes.saturating_add(others);
            if used.saturating_add(after) > quota.limit_bytes {
                return Err(FsError::Quota {
                    root: quota.root.0,
                    limit_bytes: quota.limit_bytes,
                    used_bytes: used.saturating_add(before),
                });
            }
            shared.quota_root.store(quota.root.0, Ordering::Release);
            shared.reserved.store(after, Ordering::Release);
        }
        if let Some(unmapped) = grown {
            st.unmapped = unmapped;
        }
        Ok(())
    }

    /// `EDQUOT` unless `bytes` more (an upper bound of what a `fallocate`
    /// allocates) fit in the directory quota of `ino`.
    pub(super) fn check_allocation(&self, ino: Ino, bytes: u64) -> Result<()> {
        let Some(quota) = self.meta.read(|s| s.quota(ino)) else {
            return Ok(());
        };
        let used = quota
            .used_bytes
            .saturating_add(self.reserved_in(quota.root));
        if used.saturating_add(bytes) > quota.limit_bytes {
            return Err(FsError::Quota {
                root: quota.root.0,
                limit_bytes: quota.limit_bytes,
                used_bytes: used,
            });
        }
        Ok(())
    }

    /// `statfs` from `ino`: inside a directory quota, this node's
    /// unflushed writes there count as used already.
    pub fn statfs(&self, ino: Ino) -> Result<StatFs> {
        let (stat, quota) = self.meta.read(|s| (s.statfs_at(ino), s.quota(ino)));
        let mut stat = stat?;
        if let Some(quota) = quota {
            let reserved = self.reserved_in(quota.root).div_ceil(CHARGE_UNIT_BYTES);
            stat.blocks_free = stat.blocks_free.saturating_sub(reserved);
        }
        Ok(stat)
    }

    /// Bytes this node's unflushed writes reserve in the project of `root`.
    fn reserved_in(&self, root: Ino) -> u64 {
        self.read_files()
            .values()
            .filter(|entry| entry.shared.quota_root.load(Ordering::Acquire) == root.0)
            .map(|entry| entry.shared.reserved.load(Ordering::Acquire))
            .fold(0u64, u64::saturating_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_is_the_metadata_charge_of_the_new_blocks() {
        const MIB: u32 = 1 << 20;
        let m = u64::from(MIB);
        let set = |v: &[u64]| v.iter().copied().collect::<BTreeSet<u64>>();
        assert_eq!(reservation(&set(&[]), 0, MIB), 0);
        assert_eq!(reservation(&set(&[0]), 10, MIB), 4096);
        assert_eq!(reservation(&set(&[0]), m, MIB), m);
        assert_eq!(reservation(&set(&[0, 1]), m + 1, MIB), m + 4096);
        // The end lies in a block already in the map: new blocks are whole.
        assert_eq!(reservation(&set(&[0]), m + 1, MIB), m);
        // Blocks past the end (truncated away) cost nothing.
        assert_eq!(reservation(&set(&[0, 5]), 100, MIB), 4096);
    }
}
