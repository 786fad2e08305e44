//! Directory quotas: a directory whose `trusted.datenlord.quota` attribute
//! holds a byte count is the root of a *project* (as XFS and ext4 project
//! quotas call it), and every inode below it belongs to that project. A
//! CSI volume is such a directory.
//!
//! The rules are XFS's with project inheritance:
//! - Each inode belongs to at most one project, the one of the directory
//!   it was created in (a project's root belongs to its own). A quota set
//!   inside another project's tree starts a separate project: its inodes
//!   count against it only.
//! - Nothing moves between projects: a rename or link of a non-root inode
//!   into a directory of another project (or from or into no project) is
//!   `EXDEV`, so `mv` copies and deletes, as on XFS. A root itself moves
//!   freely (with its whole tree).
//! - The attribute is set on an empty directory (`ENOTEMPTY` otherwise: a
//!   tree's inodes are never re-assigned), changed at any time (below the
//!   current use too: later writes fail), and removed from an empty root.
//! - A project's use is the bytes its files are charged ([`charge`]) and
//!   its inode count, kept up to date by every command that changes a
//!   block map or a size. An unlinked file still open stays charged until
//!   it is freed; a root freed before such a file keeps its project, with
//!   no limit, until the last member goes.
//!
//! The state machine counts but never refuses block map changes for a
//! quota: a write is refused (`EDQUOT`) by the file system when it is
//! buffered, against the use the replica knows plus this node's unflushed
//! writes, so an acknowledged write is never dropped at commit. Nodes that
//! write into one project at the same moment may overshoot it by what they
//! have not yet committed.

use super::error::MetaError;
use super::inode::{Body, Inode};
use super::state::{MetaState, Result};
use super::types::{FileKind, Ino, StatFs};
use super::zeros::Zeros;

/// The extended attribute that makes a directory a project's root: its
/// limit in bytes, in decimal ASCII.
pub const QUOTA_XATTR: &[u8] = b"trusted.datenlord.quota";

/// The unit files are charged in past their last whole block.
pub const CHARGE_UNIT_BYTES: u64 = 4096;

/// Longest value of the quota attribute (`u64::MAX` has 20 digits).
const QUOTA_VALUE_MAX_BYTES: usize = 20;

/// A project's limit and use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Project {
    /// The root's attribute; 0 once the root is freed.
    pub limit_bytes: u64,
    /// Bytes charged to its files.
    pub used_bytes: u64,
    /// Its inodes, the root included while it lives.
    pub inodes: u64,
}

/// What [`MetaState::quota`] reports of the project an inode belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// The project's root directory.
    pub root: Ino,
    pub limit_bytes: u64,
    pub used_bytes: u64,
    pub inodes: u64,
}

/// Bytes file `inode` is charged: every block in its map, except that the
/// block holding the end of the file counts only up to that end, rounded
/// up to [`CHARGE_UNIT_BYTES`]: a 10-byte file costs 4 KiB, not a block.
/// Allocated-zero extents (`zeros`) count as blocks. Other kinds are
/// charged nothing.
pub(crate) fn charge(inode: &Inode, block_size: u32, zeros: Option<&Zeros>) -> u64 {
    let Body::File { blocks } = &inode.body else {
        return 0;
    };
    let bs = u64::from(block_size);
    let count = (blocks.len() as u64).saturating_add(zeros.map_or(0, |z| z.blocks));
    let whole = count.saturating_mul(bs);
    if inode.size == 0 {
        return whole;
    }
    let last = (inode.size - 1) / bs;
    if !blocks.contains_key(&last) && !zeros.is_some_and(|z| z.contains(last)) {
        return whole;
    }
    let tail = inode.size - last * bs;
    let charged_tail = tail
        .div_ceil(CHARGE_UNIT_BYTES)
        .saturating_mul(CHARGE_UNIT_BYTES)
        .min(bs);
    whole - (bs - charged_tail)
}

/// The limit in a quota attribute's value (decimal bytes, a trailing
/// newline allowed, as `echo` leaves it).
pub(crate) fn parse_limit(value: &[u8]) -> Result<u64> {
    let digits = value.strip_suffix(b"\n").unwrap_or(value);
    if digits.is_empty()
        || digits.len() > QUOTA_VALUE_MAX_BYTES
        || !digits.iter().all(u8::is_ascii_digit)
    {
        return Err(MetaError::Invalid(
            "trusted.datenlord.quota holds a byte count in decimal digits",
        ));
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(MetaError::Invalid(
            "trusted.datenlord.quota is larger than 2^64 - 1 bytes",
        ))
}

impl MetaState {
    /// The project `ino` belongs to, with its limit and use; `None` outside
    /// every project, for an unknown inode, and for the members a freed
    /// root left behind (unlinked files still open: no limit is theirs).
    pub fn quota(&self, ino: Ino) -> Option<Quota> {
        let root = self.inodes.get(&ino)?.project?;
        if !self.inodes.contains_key(&root) {
            return None;
        }
        let project = self.projects.get(&root)?;
        Some(Quota {
            root,
            limit_bytes: project.limit_bytes,
            used_bytes: project.used_bytes,
            inodes: project.inodes,
        })
    }

    /// `statfs` as seen from `ino`: inside a project, its limit as the
    /// size and its use (in [`CHARGE_UNIT_BYTES`] blocks, so `df` shows
    /// the limit exactly) and its inodes as the used ones; elsewhere the
    /// volume's.
    pub fn statfs_at(&self, ino: Ino) -> Result<StatFs> {
        let volume = self.statfs()?;
        let Some(quota) = self.quota(ino) else {
            return Ok(volume);
        };
        let total = quota.limit_bytes.div_ceil(CHARGE_UNIT_BYTES);
        let used = quota.used_bytes.div_ceil(CHARGE_UNIT_BYTES);
        // The volume's free space bounds the project's too.
        let volume_free = volume
            .blocks_free
            .saturating_mul(u64::from(volume.block_size))
            / CHARGE_UNIT_BYTES;
        Ok(StatFs {
            block_size: CHARGE_UNIT_BYTES as u32,
            blocks_total: total,
            blocks_free: total.saturating_sub(used).min(volume_free),
            // Inodes have no limit of their own: the project's count as
            // used, the volume's free ones as free (`df -i` shows both).
            files_total: quota.inodes.saturating_add(volume.files_free),
            ..volume
        })
    }

    /// The project a new entry of directory `parent` joins.
    pub(crate) fn project_below(&self, parent: Ino) -> Option<Ino> {
        self.inodes.get(&parent).and_then(|d| d.project)
    }

    /// `EXDEV` unless `ino` may be named in directory `dir`: a project's
    /// root anywhere, any other inode only within its own project.
    pub(crate) fn check_same_project(&self, ino: Ino, dir: Ino) -> Result<()> {
        let project = self.inode(ino)?.project;
        if project == Some(ino) || project == self.project_below(dir) {
            Ok(())
        } else {
            Err(MetaError::CrossDevice)
        }
    }

    /// A new inode `ino` joins `project` (charged nothing yet).
    pub(crate) fn join_project(&mut self, ino: Ino, project: Option<Ino>) {
        let Some(root) = project else {
            return;
        };
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.project = Some(root);
        }
        if let Some(p) = self.projects.get_mut(&root) {
            p.inodes += 1;
        }
    }

    /// Freed `inode` (number `ino`) leaves its project; the project goes
    /// with its last member, and loses its limit with its root.
    pub(crate) fn leave_project(&mut self, ino: Ino, inode: &Inode) {
        let Some(root) = inode.project else {
            return;
        };
        let charged = charge(inode, self.block_size(), self.zeros.get(&ino));
        let Some(p) = self.projects.get_mut(&root) else {
            return;
        };
        debug_assert!(p.used_bytes >= charged && p.inodes > 0);
        p.used_bytes = p.used_bytes.saturating_sub(charged);
        p.inodes = p.inodes.saturating_sub(1);
        if root == ino {
            p.limit_bytes = 0;
        }
        if p.inodes == 0 {
            self.projects.remove(&root);
        }
    }

    /// Moves the charge of `ino` from `before` (what it was charged before
    /// the command changed its block map or size) to what it is now.
    pub(crate) fn recharge(&mut self, ino: Ino, before: u64) {
        let block_size = self.block_size();
        let Some(inode) = self.inodes.get(&ino) else {
            return;
        };
        let Some(root) = inode.project else {
            return;
        };
        let after = charge(inode, block_size, self.zeros.get(&ino));
        if let Some(p) = self.projects.get_mut(&root) {
            debug_assert!(p.used_bytes >= before);
            p.used_bytes = p.used_bytes.saturating_sub(before).saturating_add(after);
        }
    }

    /// What `ino` is charged now (0 for an unknown inode).
    pub(crate) fn charge_of(&self, ino: Ino) -> u64 {
        self.inodes.get(&ino).map_or(0, |inode| {
            charge(inode, self.block_size(), self.zeros.get(&ino))
        })
    }

    /// Checks of setting the quota attribute of `ino` to `value`, before
    /// anything changes; the limit it sets.
    pub(crate) fn check_set_quota(&self, ino: Ino, value: &[u8]) -> Result<u64> {
        let limit = parse_limit(value)?;
        let inode = self.inode(ino)?;
        let Some(dir) = inode.as_dir() else {
            return Err(MetaError::Invalid(
                "trusted.datenlord.quota belongs on a directory",
            ));
        };
        if inode.project != Some(ino) && !dir.is_empty() {
            return Err(MetaError::NotEmpty);
        }
        Ok(limit)
    }

    /// Makes `ino` (checked by [`Self::check_set_quota`]) a project's root
    /// with `limit`, or changes its limit.
    pub(crate) fn set_quota(&mut self, ino: Ino, limit: u64) {
        if let Some(p) = self.projects.get_mut(&ino) {
            if self
                .inodes
                .get(&ino)
                .is_some_and(|i| i.project == Some(ino))
            {
                p.limit_bytes = limit;
                return;
            }
        }
        let Some(inode) = self.inodes.get(&ino) else {
            return;
        };
        // An empty directory: it leaves its old project, charged nothing.
        if let Some(old) = inode.project {
            if let Some(p) = self.projects.get_mut(&old) {
                p.inodes = p.inodes.saturating_sub(1);
                if p.inodes == 0 {
                    self.projects.remove(&old);
                }
            }
        }
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.project = Some(ino);
        }
        self.projects.insert(
            ino,
            Project {
                limit_bytes: limit,
                used_bytes: 0,
                inodes: 1,
            },
        );
    }

    /// Checks of removing the quota attribute of `ino`: a root must be
    /// empty (its tree would have no project to go to).
    pub(crate) fn check_remove_quota(&self, ino: Ino) -> Result<()> {
        let inode = self.inode(ino)?;
        if inode.project == Some(ino) && inode.as_dir().is_some_and(|d| !d.is_empty()) {
            return Err(MetaError::NotEmpty);
        }
        Ok(())
    }

    /// `ino` (checked by [`Self::check_remove_quota`]) stops being a root
    /// and joins the project of the directory holding it.
    pub(crate) fn remove_quota(&mut self, ino: Ino) {
        let Some(inode) = self.inodes.get(&ino) else {
            return;
        };
        if inode.project != Some(ino) {
            return;
        }
        let parent = inode.as_dir().map_or(ino, |d| d.parent);
        if let Some(p) = self.projects.get_mut(&ino) {
            p.inodes = p.inodes.saturating_sub(1);
            p.limit_bytes = 0;
            if p.inodes == 0 {
                self.projects.remove(&ino);
            }
        }
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.project = None;
        }
        // An unlinked directory is its own parent: it joins nothing.
        let project = if parent == ino {
            None
        } else {
            self.project_below(parent)
        };
        self.join_project(ino, project);
    }

    /// The projects as the inodes say they are (limits from the roots'
    /// attributes, use summed): what `restore` rebuilds and the invariants
    /// compare with.
    pub(crate) fn derive_projects(
        &self,
    ) -> std::result::Result<std::collections::BTreeMap<Ino, Project>, String> {
        let block_size = self.block_size();
        let mut projects = std::collections::BTreeMap::<Ino, Project>::new();
        for (&ino, inode) in &self.inodes {
            let Some(root) = inode.project else {
                continue;
            };
            let p = projects.entry(root).or_default();
            p.inodes += 1;
            p.used_bytes = p
                .used_bytes
                .checked_add(charge(inode, block_size, self.zeros.get(&ino)))
                .ok_or_else(|| format!("project {root} use overflows"))?;
            if root == ino {
                if inode.kind != FileKind::Dir {
                    return Err(format!("project root {ino} is not a directory"));
                }
                let value = inode
                    .xattrs
                    .get(QUOTA_XATTR)
                    .ok_or_else(|| format!("project root {ino} has no quota attribute"))?;
                p.limit_bytes = parse_limit(value)
                    .map_err(|e| format!("project root {ino} quota attribute: {e}"))?;
            }
        }
        Ok(projects)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::meta::types::Timespec;

    const MIB: u32 = 1 << 20;

    fn file(size: u64, blocks: &[u64]) -> Inode {
        let mut inode = Inode::new(
            FileKind::File,
            0o644,
            0,
            0,
            Timespec::from_secs(1),
            Body::File {
                blocks: blocks.iter().map(|&i| (i, 1)).collect::<BTreeMap<_, _>>(),
            },
        );
        inode.size = size;
        inode
    }

    #[test]
    fn the_last_block_is_charged_to_the_end_of_the_file() {
        let m = u64::from(MIB);
        assert_eq!(charge(&file(0, &[]), MIB, None), 0);
        assert_eq!(charge(&file(10, &[0]), MIB, None), 4096);
        assert_eq!(charge(&file(4096, &[0]), MIB, None), 4096);
        assert_eq!(charge(&file(4097, &[0]), MIB, None), 8192);
        assert_eq!(charge(&file(m, &[0]), MIB, None), m);
        assert_eq!(charge(&file(m + 1, &[0, 1]), MIB, None), m + 4096);
        // A hole at the end: whole blocks only.
        assert_eq!(charge(&file(5 * m, &[0, 1]), MIB, None), 2 * m);
        // Holes in the middle cost nothing.
        assert_eq!(charge(&file(3 * m + 100, &[3]), MIB, None), 4096);
        // Blocks smaller than the unit: whole blocks.
        assert_eq!(charge(&file(10, &[0]), 1024, None), 1024);
        let dir = Inode::new(
            FileKind::Dir,
            0o755,
            0,
            0,
            Timespec::from_secs(1),
            Body::Dir(super::super::inode::Dir::new(Ino(1))),
        );
        assert_eq!(charge(&dir, MIB, None), 0);
    }

    #[test]
    fn limits_are_decimal_bytes() {
        assert_eq!(parse_limit(b"0").ok(), Some(0));
        assert_eq!(parse_limit(b"67108864\n").ok(), Some(64 << 20));
        assert_eq!(parse_limit(b"18446744073709551615").ok(), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"\n",
            b"1 ",
            b"0x10",
            b"-1",
            b"18446744073709551616",
            b"1\n\n",
        ] {
            assert!(parse_limit(bad).is_err(), "{bad:?}");
        }
    }
}
