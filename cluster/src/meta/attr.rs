//! Attribute changes (`setattr`: chmod, chown, truncate, utimes) and the
//! write path's block map updates (`set_blocks`, and `remove_blocks` for
//! punched holes). All hand back the block versions they orphan, for the
//! block store to collect.

use std::collections::BTreeSet;

use super::acl::{Acl, ACL_ACCESS};
use super::command::{Outcome, Reply};
use super::error::MetaError;
use super::inode::{Body, Inode};
use super::limits::{BLOCKS_PER_COMMAND_MAX, MAX_FILE_BYTES};
use super::perm::{
    mode_after_chown, mode_after_write, owns, permits, require, MAY_WRITE, MODE_MASK, S_ISGID,
};
use super::state::{MetaState, Result};
use super::types::{AttrChanges, BlockRef, Creds, FileKind, Ino, SetTime, Timespec};

/// Blocks that hold bytes `0..size`.
pub(crate) fn blocks_for(size: u64, block_size: u32) -> u64 {
    size.div_ceil(u64::from(block_size))
}

/// Highest block index whose first byte is a valid offset.
fn block_index_max(block_size: u32) -> u64 {
    MAX_FILE_BYTES / u64::from(block_size)
}

/// Only regular files have a size to set or blocks (`EISDIR`, `EINVAL`).
pub(crate) fn require_file(inode: &Inode) -> Result<()> {
    match inode.kind {
        FileKind::File => Ok(()),
        FileKind::Dir => Err(MetaError::IsDir),
        _ => Err(MetaError::Invalid(
            "only regular files have a size and blocks",
        )),
    }
}

/// `chmod` of a file with an access ACL: its owner, mask (or owning
/// group) and other entries follow the new mode (Linux `posix_acl_chmod`).
/// A stored ACL that no longer decodes (never: `set_acl` and `restore`
/// validate) is left as it is.
fn chmod_acl(inode: &mut Inode, mode: u32) {
    let Some(stored) = inode.xattrs.get_mut(ACL_ACCESS) else {
        return;
    };
    if let Ok(Some(mut acl)) = Acl::decode(stored) {
        acl.chmod(mode);
        *stored = acl.encode();
    }
}

impl MetaState {
    /// Checks of a `setattr`, in the order Linux makes them (`vfs_truncate`,
    /// `may_setattr`, `setattr_prepare`).
    fn check_setattr(
        inode: &Inode,
        changes: &AttrChanges,
        via_handle: bool,
        creds: &Creds,
    ) -> Result<()> {
        let times = [changes.atime, changes.mtime];
        for time in times.iter().flatten() {
            if let SetTime::At(t) = time {
                if !t.is_valid() {
                    return Err(MetaError::Invalid("a time has nanoseconds of 10^9 or more"));
                }
            }
        }
        if let Some(size) = changes.size {
            require_file(inode)?;
            if !via_handle {
                require(inode, creds, MAY_WRITE)?;
            }
            if size > MAX_FILE_BYTES {
                return Err(MetaError::FileTooBig);
            }
        }
        let sets_explicit_time = times.iter().any(|t| matches!(t, Some(SetTime::At(_))));
        let touches = times.iter().any(|t| matches!(t, Some(SetTime::Now)));
        if touches
            && !sets_explicit_time
            && !owns(inode, creds)
            && !permits(inode, creds, MAY_WRITE)
        {
            return Err(MetaError::AccessDenied);
        }
        if let Some(uid) = changes.uid {
            if !(creds.is_root() || (creds.uid == inode.uid && uid == inode.uid)) {
                return Err(MetaError::NotPermitted("only root may give a file away"));
            }
        }
        if let Some(gid) = changes.gid {
            let may = creds.is_root()
                || (creds.uid == inode.uid && (gid == inode.gid || creds.in_group(gid)));
            if !may {
                return Err(MetaError::NotPermitted(
                    "only the owner may change the group, and only to a group of theirs",
                ));
            }
        }
        if changes.mode.is_some() && !owns(inode, creds) {
            return Err(MetaError::NotPermitted(
                "only the owner may change the mode",
            ));
        }
        if sets_explicit_time && !owns(inode, creds) {
            return Err(MetaError::NotPermitted(
                "only the owner may set explicit times",
            ));
        }
        Ok(())
    }

    pub(crate) fn setattr(
        &mut self,
        ino: Ino,
        changes: &AttrChanges,
        via_handle: bool,
        creds: &Creds,
        now: Timespec,
    ) -> Result<Outcome> {
        Self::check_setattr(self.inode(ino)?, changes, via_handle, creds)?;
        let block_size = self.block_size();
        let charged = self.charge_of(ino);
        let mut out = Outcome::reply(Reply::Done);
        let inode = self.inode_mut(ino)?;
        let mut dropped: u64 = 0;
        if let Some(size) = changes.size {
            if let Body::File { blocks } = &mut inode.body {
                let cut = blocks.split_off(&blocks_for(size, block_size));
                dropped = cut.len() as u64;
                out.garbage
                    .extend(cut.into_iter().map(|(index, version)| BlockRef {
                        ino,
                        index,
                        version,
                    }));
            }
            // The data layer rewrites a partial last block; past `size`
            // readers see zeros whatever the old block held.
            inode.size = size;
            inode.touch_data(now);
            inode.mode = mode_after_write(inode.mode, creds);
        }
        if changes.uid.is_some() || changes.gid.is_some() {
            if changes.mode.is_none() {
                inode.mode = mode_after_chown(inode, creds);
            }
            inode.uid = changes.uid.unwrap_or(inode.uid);
            inode.gid = changes.gid.unwrap_or(inode.gid);
        }
        if let Some(mode) = changes.mode {
            let mut mode = mode & MODE_MASK;
            if !creds.is_root() && !creds.in_group(inode.gid) {
                mode &= !S_ISGID;
            }
            inode.mode = mode;
            chmod_acl(inode, mode);
        }
        let at = |t: SetTime| match t {
            SetTime::Now => now,
            SetTime::At(t) => t,
        };
        if let Some(t) = changes.atime {
            inode.atime = at(t);
        }
        if let Some(t) = changes.mtime {
            inode.mtime = at(t);
        }
        if !changes.is_empty() {
            inode.ctime = now;
        }
        if let Some(size) = changes.size {
            dropped += self.cut_zeros(ino, blocks_for(size, block_size), u64::MAX);
        }
        debug_assert!(self.blocks_used >= dropped);
        self.blocks_used -= dropped;
        self.recharge(ino, charged);
        out.reply = Reply::Attr(self.attr_of(ino)?);
        Ok(out)
    }

    pub(crate) fn set_blocks(
        &mut self,
        ino: Ino,
        blocks: &[(u64, u64)],
        new_size: Option<u64>,
        creds: &Creds,
        now: Timespec,
    ) -> Result<Outcome> {
        let (block_size, capacity_blocks, inode, map) = self.file_blocks(ino)?;
        if blocks.len() > BLOCKS_PER_COMMAND_MAX {
            return Err(MetaError::Invalid(
                "too many blocks in one command; split the write",
            ));
        }
        if new_size.is_some_and(|s| s > MAX_FILE_BYTES)
            || blocks.iter().any(|&(i, _)| i > block_index_max(block_size))
        {
            return Err(MetaError::FileTooBig);
        }
        let size = inode.size.max(new_size.unwrap_or(0));
        let end_index = blocks_for(size, block_size);
        let mut seen = BTreeSet::new();
        let mut added: u64 = 0;
        for &(index, _) in blocks {
            if index >= end_index {
                return Err(MetaError::Invalid("a block lies past the end of the file"));
            }
            if !seen.insert(index) {
                return Err(MetaError::Invalid(
                    "a block index appears twice in one command",
                ));
            }
            if !map.contains_key(&index) && !self.zeros_of(ino).is_some_and(|z| z.contains(index)) {
                added += 1;
            }
        }
        if self.blocks_used + added > capacity_blocks {
            return Err(MetaError::NoSpace("the volume's capacity is used up"));
        }

        let charged = self.charge_of(ino);
        let mut out = Outcome::reply(Reply::Done);
        let inode = self.inode_mut(ino)?;
        if let Body::File { blocks: map } = &mut inode.body {
            for &(index, version) in blocks {
                match map.insert(index, version) {
                    // Rewriting the current version changes nothing to collect.
                    Some(old) if old != version => out.garbage.push(BlockRef {
                        ino,
                        index,
                        version: old,
                    }),
                    _ => {}
                }
            }
        }
        inode.size = size;
        inode.touch_data(now);
        inode.mode = mode_after_write(inode.mode, creds);
        // A block written inside an extent leaves it (it stays counted).
        if self.zeros.contains_key(&ino) {
            for &(index, _) in blocks {
                self.cut_zeros(ino, index, index);
            }
        }
        self.blocks_used += added;
        self.recharge(ino, charged);
        out.reply = Reply::Attr(self.attr_of(ino)?);
        Ok(out)
    }

    /// Punch hole: the entries of blocks `first..=last` leave the map and
    /// their versions become garbage. The size never changes (reads of a
    /// hole give zeros); mtime and ctime move and setuid/setgid clear as on
    /// a write. Like `set_blocks`, no permission check: write permission
    /// was checked when the handle was opened.
    pub(crate) fn remove_blocks(
        &mut self,
        ino: Ino,
        first: u64,
        last: u64,
        creds: &Creds,
        now: Timespec,
    ) -> Result<Outcome> {
        let (block_size, ..) = self.file_blocks(ino)?;
        if first > last {
            return Err(MetaError::Invalid("an empty block range"));
        }
        if last > block_index_max(block_size) {
            return Err(MetaError::FileTooBig);
        }

        let charged = self.charge_of(ino);
        let mut out = Outcome::reply(Reply::Done);
        self.unmap_range(ino, first, last, creds, now, &mut out)?;
        let dropped = out.garbage.len() as u64 + self.cut_zeros(ino, first, last);
        debug_assert!(self.blocks_used >= dropped);
        self.blocks_used -= dropped;
        self.recharge(ino, charged);
        out.reply = Reply::Attr(self.attr_of(ino)?);
        Ok(out)
    }
}

impl MetaState {
    /// What the commands changing a file's blocks start from: the volume's
    /// block size and capacity in blocks, and file `ino` with its block map
    /// (the errors of a volume not formatted, an unknown inode, or one that
    /// is no regular file).
    pub(crate) fn file_blocks(
        &self,
        ino: Ino,
    ) -> Result<(u32, u64, &Inode, &std::collections::BTreeMap<u64, u64>)> {
        let volume = self.formatted()?;
        let block_size = volume.block_size;
        let capacity_blocks = volume.capacity_bytes / u64::from(block_size);
        let inode = self.inode(ino)?;
        require_file(inode)?;
        let Body::File { blocks } = &inode.body else {
            return Err(MetaError::Invalid(
                "only regular files have a size and blocks",
            ));
        };
        Ok((block_size, capacity_blocks, inode, blocks))
    }

    /// The block map entries of `first..=last` of file `ino` leave it and
    /// their versions become garbage in `out` (visiting only the entries
    /// that exist); times move and setuid/setgid clear as on a write.
    pub(crate) fn unmap_range(
        &mut self,
        ino: Ino,
        first: u64,
        last: u64,
        creds: &Creds,
        now: Timespec,
        out: &mut Outcome,
    ) -> Result<()> {
        let inode = self.inode_mut(ino)?;
        if let Body::File { blocks } = &mut inode.body {
            let removed: Vec<(u64, u64)> = blocks
                .range(first..=last)
                .map(|(&index, &version)| (index, version))
                .collect();
            for (index, version) in removed {
                blocks.remove(&index);
                out.garbage.push(BlockRef {
                    ino,
                    index,
                    version,
                });
            }
        }
        inode.touch_data(now);
        inode.mode = mode_after_write(inode.mode, creds);
        Ok(())
    }
}
