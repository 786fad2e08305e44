//! [`MetaState`]: the namespace in memory, the `apply` dispatcher, the
//! read-only queries and the helpers every operation shares. The operations
//! themselves live beside it by area (`namespace`, `attr`, `xattr`, `lock`,
//! `session`); each checks everything first and mutates only once nothing
//! can fail, so a failed command leaves the state untouched.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::command::{Command, Outcome, Reply};
use super::error::MetaError;
use super::inode::{Body, Dir, Inode};
use super::limits::{
    BLOCK_SIZE_MAX_BYTES, BLOCK_SIZE_MIN_BYTES, GROUPS_PER_CREDS_MAX, NAME_MAX_BYTES,
    READDIR_ENTRIES_MAX, REVOKED_MAX, SERIAL_HEX_MAX, VOLUME_FORMAT_VERSION,
};
use super::lock::InodeLocks;
use super::perm::{check_name, permits, require, MAY_EXEC, MAY_READ};
use super::session::Session;
use super::types::{
    Attr, BlockRef, Creds, DirEntry, FileKind, Ino, SessionId, StatFs, Timespec, Volume, ROOT_INO,
};

pub(crate) type Result<T> = std::result::Result<T, MetaError>;

/// The metadata of one volume: a pure, deterministic state machine.
///
/// Build it empty with [`MetaState::new`] (then apply `Format`) or from a
/// snapshot with [`MetaState::restore`]; change it only with
/// [`MetaState::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaState {
    pub(crate) volume: Option<Volume>,
    pub(crate) inodes: BTreeMap<Ino, Inode>,
    /// The number the next inode gets; numbers are never reused.
    pub(crate) next_ino: u64,
    pub(crate) next_generation: u64,
    /// Entries in all block maps (statfs "blocks used").
    pub(crate) blocks_used: u64,
    pub(crate) sessions: BTreeMap<SessionId, Session>,
    /// Locks by inode; an inode without locks has no entry.
    pub(crate) locks: BTreeMap<Ino, InodeLocks>,
    /// Serial numbers of revoked peer certificates (lowercase hex).
    pub(crate) revoked: std::collections::BTreeSet<String>,
    /// Nodes serving their cached blocks, by id.
    pub(crate) cache_nodes: BTreeMap<u64, super::cache_nodes::CacheNode>,
    /// Changes made to `cache_nodes` so far.
    pub(crate) cache_epoch: u64,
    /// Directory quotas by root (see `quota`): derived from the inodes'
    /// projects, kept up to date by every command.
    pub(crate) projects: BTreeMap<Ino, super::quota::Project>,
    /// Allocated-zero extents by file (see `zeros`); files without any
    /// have no entry.
    pub(crate) zeros: BTreeMap<Ino, super::zeros::Zeros>,
}

impl Default for MetaState {
    fn default() -> Self {
        Self::new()
    }
}

impl MetaState {
    /// An unformatted state: it accepts `Format` and nothing else.
    pub fn new() -> Self {
        Self {
            volume: None,
            inodes: BTreeMap::new(),
            next_ino: ROOT_INO.0 + 1,
            next_generation: 1,
            blocks_used: 0,
            sessions: BTreeMap::new(),
            locks: BTreeMap::new(),
            revoked: std::collections::BTreeSet::new(),
            cache_nodes: BTreeMap::new(),
            cache_epoch: 0,
            projects: BTreeMap::new(),
            zeros: BTreeMap::new(),
        }
    }

    /// Applies one committed command. Pure: the result and the new state
    /// depend on the state and the command only. On error the state is
    /// unchanged.
    // One arm per command, each only unpacking fields: long, not complex.
    #[allow(clippy::too_many_lines)]
    pub fn apply(&mut self, cmd: &Command) -> Result<Outcome> {
        if cmd.now().is_some_and(|now| !now.is_valid()) {
            return Err(MetaError::Invalid("a time has nanoseconds of 10^9 or more"));
        }
        if cmd
            .creds()
            .is_some_and(|creds| creds.groups.len() > GROUPS_PER_CREDS_MAX)
        {
            return Err(MetaError::Invalid(
                "more supplementary groups than NGROUPS_MAX",
            ));
        }
        if let Command::Format {
            uuid,
            block_size,
            format_version,
            capacity_bytes,
            inodes_max,
            now,
        } = cmd
        {
            let volume = Volume {
                uuid: *uuid,
                block_size: *block_size,
                format_version: *format_version,
                capacity_bytes: *capacity_bytes,
                inodes_max: *inodes_max,
            };
            return self.format(volume, *now);
        }
        match cmd {
            Command::RevokeCertificate { serial } => return self.revoke(serial),
            Command::RegisterCacheNode { node } => return self.register_cache_node(node),
            Command::UnregisterCacheNode { id } => return Ok(self.unregister_cache_node(*id)),
            Command::SetCacheNodeLive { id, live } => {
                return Ok(self.set_cache_node_live(*id, *live))
            }
            _ => {}
        }
        if self.volume.is_none() {
            return Err(MetaError::NotFormatted);
        }
        match cmd {
            Command::Format { .. } => Err(MetaError::AlreadyFormatted),
            Command::RevokeCertificate { serial } => self.revoke(serial),
            Command::RegisterCacheNode { node } => self.register_cache_node(node),
            Command::UnregisterCacheNode { id } => Ok(self.unregister_cache_node(*id)),
            Command::SetCacheNodeLive { id, live } => Ok(self.set_cache_node_live(*id, *live)),
            Command::Mknod {
                parent,
                name,
                kind,
                mode,
                rdev,
                creds,
                now,
            } => self.mknod(*parent, name, *kind, *mode, *rdev, creds, *now),
            Command::Mkdir {
                parent,
                name,
                mode,
                creds,
                now,
            } => self.mkdir(*parent, name, *mode, creds, *now),
            Command::Create {
                parent,
                name,
                mode,
                exclusive,
                session,
                flags,
                creds,
                now,
            } => self.create(
                *parent, name, *mode, *exclusive, *session, *flags, creds, *now,
            ),
            Command::Symlink {
                parent,
                name,
                target,
                creds,
                now,
            } => self.symlink(*parent, name, target, creds, *now),
            Command::Link {
                ino,
                new_parent,
                new_name,
                creds,
                now,
            } => self.link(*ino, *new_parent, new_name, creds, *now),
            Command::Unlink {
                parent,
                name,
                creds,
                now,
            } => self.remove_entry(*parent, name, false, creds, *now),
            Command::Rmdir {
                parent,
                name,
                creds,
                now,
            } => self.remove_entry(*parent, name, true, creds, *now),
            Command::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
                creds,
                now,
            } => self.rename(*parent, name, *new_parent, new_name, *flags, creds, *now),
            Command::SetAttr {
                ino,
                changes,
                via_handle,
                creds,
                now,
            } => self.setattr(*ino, changes, *via_handle, creds, *now),
            Command::Open {
                session,
                ino,
                flags,
                creds,
            } => self.open(*session, *ino, *flags, creds),
            Command::Release {
                session,
                ino,
                flock_owner,
            } => self.release(*session, *ino, *flock_owner),
            Command::SetBlocks {
                ino,
                blocks,
                new_size,
                creds,
                now,
            } => self.set_blocks(*ino, blocks, *new_size, creds, *now),
            Command::RemoveBlocks {
                ino,
                first,
                last,
                creds,
                now,
            } => self.remove_blocks(*ino, *first, *last, creds, *now),
            Command::ZeroBlocks {
                ino,
                first,
                last,
                replace,
                creds,
                now,
            } => self.zero_blocks_cmd(*ino, *first, *last, *replace, creds, *now),
            Command::SetXattr {
                ino,
                name,
                value,
                flags,
                creds,
                now,
            } => self.set_xattr(*ino, name, value, *flags, creds, *now),
            Command::RemoveXattr {
                ino,
                name,
                creds,
                now,
            } => self.remove_xattr(*ino, name, creds, *now),
            Command::SetLk {
                ino,
                owner,
                session,
                range,
                kind,
            } => self.setlk(*ino, *owner, *session, *range, *kind),
            Command::Flock {
                ino,
                owner,
                session,
                kind,
            } => self.flock(*ino, *owner, *session, *kind),
            Command::RegisterSession {
                session,
                lease_expires,
            } => self.register_session(*session, *lease_expires),
            Command::RenewSession {
                session,
                lease_expires,
            } => self.renew_session(*session, *lease_expires),
            Command::UnregisterSession { session } => self.unregister_session(*session),
            Command::ExpireSessions { now } => Ok(self.expire_sessions(*now)),
        }
    }

    pub(super) fn revoke(&mut self, serial: &str) -> Result<Outcome> {
        let serial = serial.to_ascii_lowercase();
        if serial.is_empty()
            || serial.len() > SERIAL_HEX_MAX
            || !serial.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(MetaError::Invalid(
                "a certificate serial is 1 to 40 hex digits",
            ));
        }
        if !self.revoked.contains(&serial) && self.revoked.len() >= REVOKED_MAX {
            return Err(MetaError::Invalid(
                "the revocation list is full: make a new CA and issue new certificates",
            ));
        }
        self.revoked.insert(serial);
        Ok(Outcome::reply(Reply::Done))
    }

    /// Whether the peer certificate with this serial (hex) was revoked.
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked.contains(&serial.to_ascii_lowercase())
    }

    fn format(&mut self, volume: Volume, now: Timespec) -> Result<Outcome> {
        if self.volume.is_some() {
            return Err(MetaError::AlreadyFormatted);
        }
        if !volume.block_size.is_power_of_two()
            || !(BLOCK_SIZE_MIN_BYTES..=BLOCK_SIZE_MAX_BYTES).contains(&volume.block_size)
        {
            return Err(MetaError::Invalid(
                "the block size must be a power of two from 4 KiB to 64 MiB",
            ));
        }
        if volume.format_version != VOLUME_FORMAT_VERSION {
            return Err(MetaError::Invalid("unsupported volume format version"));
        }
        if volume.inodes_max == 0 {
            return Err(MetaError::Invalid(
                "the inode limit must leave room for the root",
            ));
        }
        debug_assert!(self.inodes.is_empty() && self.sessions.is_empty());
        let mut root = Inode::new(
            FileKind::Dir,
            0o755,
            0,
            0,
            now,
            Body::Dir(Dir::new(ROOT_INO)),
        );
        root.generation = self.next_generation;
        self.next_generation += 1;
        let attr = root.attr(ROOT_INO, volume.block_size);
        self.inodes.insert(ROOT_INO, root);
        self.volume = Some(volume);
        Ok(Outcome::reply(Reply::Attr(attr)))
    }

    // ---- helpers shared by the operations ----

    /// Bytes per block (the minimum before `Format`).
    pub(crate) fn block_size(&self) -> u32 {
        self.volume
            .as_ref()
            .map_or(BLOCK_SIZE_MIN_BYTES, |v| v.block_size)
    }

    pub(crate) fn formatted(&self) -> Result<&Volume> {
        self.volume.as_ref().ok_or(MetaError::NotFormatted)
    }

    pub(crate) fn inode(&self, ino: Ino) -> Result<&Inode> {
        self.inodes.get(&ino).ok_or(MetaError::Stale(ino))
    }

    /// The inode to change. Operations call it only after their checks, so
    /// the error is unreachable; it keeps a broken invariant from panicking.
    pub(crate) fn inode_mut(&mut self, ino: Ino) -> Result<&mut Inode> {
        let inode = self.inodes.get_mut(&ino);
        debug_assert!(
            inode.is_some(),
            "inode {ino} vanished between check and change"
        );
        inode.ok_or(MetaError::Stale(ino))
    }

    pub(crate) fn dir_mut(&mut self, ino: Ino) -> Result<&mut Dir> {
        self.inode_mut(ino)?.as_dir_mut().ok_or(MetaError::NotDir)
    }

    pub(crate) fn attr_of(&self, ino: Ino) -> Result<Attr> {
        let block_size = self.block_size();
        let mut attr = self.inode(ino)?.attr(ino, block_size);
        attr.allocated_bytes = attr
            .allocated_bytes
            .saturating_add(self.zero_blocks(ino).saturating_mul(u64::from(block_size)));
        Ok(attr)
    }

    /// Whether one more inode fits (`ENOSPC`).
    pub(crate) fn check_inode_space(&self) -> Result<()> {
        let volume = self.formatted()?;
        if self.inodes.len() as u64 >= volume.inodes_max {
            return Err(MetaError::NoSpace("the volume's inode limit is reached"));
        }
        if self.next_ino == u64::MAX || self.next_generation == u64::MAX {
            return Err(MetaError::NoSpace("inode numbers are exhausted"));
        }
        Ok(())
    }

    /// Gives `inode` a number and a generation and stores it. The caller
    /// checked [`MetaState::check_inode_space`].
    pub(crate) fn insert_inode(&mut self, mut inode: Inode) -> Ino {
        debug_assert!(self.next_ino < u64::MAX && self.next_generation < u64::MAX);
        let ino = Ino(self.next_ino);
        self.next_ino += 1;
        inode.generation = self.next_generation;
        self.next_generation += 1;
        debug_assert!(!self.inodes.contains_key(&ino));
        self.inodes.insert(ino, inode);
        ino
    }

    /// Frees `ino` once nothing refers to it (no link, no open handle): its
    /// blocks become garbage for the block store.
    pub(crate) fn free_if_unreferenced(&mut self, ino: Ino, out: &mut Outcome) {
        let unreferenced = self
            .inodes
            .get(&ino)
            .is_some_and(|inode| inode.nlink == 0 && inode.open_count == 0);
        if !unreferenced {
            return;
        }
        debug_assert!(ino != ROOT_INO);
        debug_assert!(
            !self.locks.contains_key(&ino),
            "locks outlived every handle"
        );
        self.locks.remove(&ino);
        if let Some(inode) = self.inodes.remove(&ino) {
            self.leave_project(ino, &inode);
            if let Some(zeros) = self.zeros.remove(&ino) {
                debug_assert!(self.blocks_used >= zeros.blocks);
                self.blocks_used -= zeros.blocks;
            }
            if let Body::File { blocks } = inode.body {
                debug_assert!(self.blocks_used >= blocks.len() as u64);
                self.blocks_used -= blocks.len() as u64;
                out.garbage
                    .extend(blocks.into_iter().map(|(index, version)| BlockRef {
                        ino,
                        index,
                        version,
                    }));
            }
            out.freed.push(ino);
        }
    }

    /// Whether `ancestor` is `dir` or one of the directories above it.
    pub(crate) fn is_ancestor_or_self(&self, ancestor: Ino, dir: Ino) -> bool {
        let mut cur = dir;
        // A walk longer than the number of inodes would be a cycle, which
        // the invariants exclude; the bound keeps a broken state from hanging.
        for _ in 0..=self.inodes.len() {
            if cur == ancestor {
                return true;
            }
            let Some(parent) = self
                .inodes
                .get(&cur)
                .and_then(Inode::as_dir)
                .map(|d| d.parent)
            else {
                return false;
            };
            if parent == cur {
                return false;
            }
            cur = parent;
        }
        debug_assert!(false, "directory cycle above {dir}");
        false
    }

    // ---- read-only queries ----

    /// The volume descriptor, once formatted.
    pub fn volume(&self) -> Option<&Volume> {
        self.volume.as_ref()
    }

    /// The entry `name` of directory `parent` (needs search permission on it).
    pub fn lookup(&self, parent: Ino, name: &[u8], creds: &Creds) -> Result<Attr> {
        self.formatted()?;
        let dir_inode = self.inode(parent)?;
        let dir = dir_inode.as_dir().ok_or(MetaError::NotDir)?;
        check_name(name)?;
        require(dir_inode, creds, MAY_EXEC)?;
        let dirent = dir.get(name).ok_or(MetaError::NotFound)?;
        self.attr_of(dirent.ino)
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        self.formatted()?;
        self.attr_of(ino)
    }

    /// What `..` of directory `ino` names (the root's is the root).
    pub fn parent(&self, ino: Ino) -> Result<Ino> {
        self.formatted()?;
        let dir = self.inode(ino)?.as_dir().ok_or(MetaError::NotDir)?;
        Ok(dir.parent)
    }

    /// Up to `max_entries` (at most [`READDIR_ENTRIES_MAX`]) entries with a
    /// cookie above `after_cookie`, in cookie order (needs read permission).
    pub fn readdir(
        &self,
        ino: Ino,
        after_cookie: u64,
        max_entries: usize,
        creds: &Creds,
    ) -> Result<Vec<DirEntry>> {
        self.formatted()?;
        let inode = self.inode(ino)?;
        let dir = inode.as_dir().ok_or(MetaError::NotDir)?;
        require(inode, creds, MAY_READ)?;
        let entries = dir
            .by_cookie
            .range((Bound::Excluded(after_cookie), Bound::Unbounded))
            .take(max_entries.min(READDIR_ENTRIES_MAX))
            .filter_map(|(&cookie, name)| {
                let dirent = dir.entries.get(name);
                debug_assert!(dirent.is_some_and(|d| d.cookie == cookie));
                dirent.map(|d| DirEntry {
                    name: name.clone(),
                    ino: d.ino,
                    kind: d.kind,
                    cookie,
                })
            })
            .collect();
        Ok(entries)
    }

    /// The target of symlink `ino` (`EINVAL` for any other kind).
    pub fn readlink(&self, ino: Ino) -> Result<&[u8]> {
        self.formatted()?;
        match &self.inode(ino)?.body {
            Body::Symlink { target } => Ok(target),
            _ => Err(MetaError::Invalid("not a symbolic link")),
        }
    }

    /// Whether `creds` may access `ino` with `mask` (`R_OK | W_OK | X_OK`, or
    /// `F_OK` = 0 for existence).
    pub fn access(&self, ino: Ino, mask: u32, creds: &Creds) -> Result<()> {
        self.formatted()?;
        if mask & !0o7 != 0 {
            return Err(MetaError::Invalid(
                "access mask other than R_OK, W_OK, X_OK",
            ));
        }
        let inode = self.inode(ino)?;
        if mask == 0 || permits(inode, creds, mask) {
            Ok(())
        } else {
            Err(MetaError::AccessDenied)
        }
    }

    /// Usage of the volume.
    pub fn statfs(&self) -> Result<StatFs> {
        let volume = self.formatted()?;
        let blocks_total = volume.capacity_bytes / u64::from(volume.block_size);
        Ok(StatFs {
            block_size: volume.block_size,
            blocks_total,
            blocks_free: blocks_total.saturating_sub(self.blocks_used),
            files_total: volume.inodes_max,
            files_free: volume.inodes_max.saturating_sub(self.inodes.len() as u64),
            name_max_bytes: NAME_MAX_BYTES as u32,
            uuid: volume.uuid,
        })
    }

    /// Up to `max_entries` block map entries `(index, version)` of file
    /// `ino` from `first_index` on, in index order: the read path's map from
    /// offsets to block versions (holes are absent).
    pub fn blocks(
        &self,
        ino: Ino,
        first_index: u64,
        max_entries: usize,
    ) -> Result<Vec<(u64, u64)>> {
        self.formatted()?;
        let inode = self.inode(ino)?;
        match &inode.body {
            Body::File { blocks } => Ok(blocks
                .range(first_index..)
                .take(max_entries)
                .map(|(&i, &v)| (i, v))
                .collect()),
            Body::Dir(_) => Err(MetaError::IsDir),
            _ => Err(MetaError::Invalid("only regular files have blocks")),
        }
    }

    /// The current version of block `index` of `ino`: `None` for a hole, a
    /// missing inode or one without blocks.
    pub fn block_version(&self, ino: Ino, index: u64) -> Option<u64> {
        let next = self.blocks(ino, index, 1).ok()?;
        next.first()
            .filter(|&&(i, _)| i == index)
            .map(|&(_, version)| version)
    }

    /// Open handles of `ino` in `session` (0 if none).
    pub fn open_handles(&self, session: SessionId, ino: Ino) -> u64 {
        self.sessions
            .get(&session)
            .and_then(|s| s.opens.get(&ino))
            .copied()
            .unwrap_or(0)
    }

    /// Number of live inodes (linked, or unlinked but open).
    pub fn inode_count(&self) -> u64 {
        self.inodes.len() as u64
    }
}
