//! Directory operations: mknod, mkdir, create, symlink, link, unlink,
//! rmdir, rename. The order of checks follows Linux (`fs/namei.c`) so a
//! caller sees the errno the kernel's own file systems give.

use std::collections::BTreeMap;

use super::command::{Outcome, Reply};
use super::error::MetaError;
use super::inode::{Body, Dir, Dirent, Inode};
use super::limits::{LINK_MAX, SYMLINK_MAX_BYTES};
use super::perm::{check_name, check_sticky, new_owner, require, MAY_EXEC, MAY_WRITE, MODE_MASK};
use super::state::{MetaState, Result};
use super::types::{CreateMode, Creds, FileKind, Ino, OpenFlags, RenameFlags, SessionId, Timespec};
use super::xattr::inherit_acls;

/// Permission bits `mkdir` keeps: rwx for all and sticky (setgid only inherits).
const MKDIR_MODE_MASK: u32 = 0o1777;

/// `may_create` on the directory: not removed (`ENOENT`), writable and
/// searchable (`EACCES`).
fn may_create_in(dir: &Inode, creds: &Creds) -> Result<()> {
    if dir.nlink == 0 {
        return Err(MetaError::NotFound);
    }
    require(dir, creds, MAY_WRITE | MAY_EXEC)?;
    if dir.as_dir().is_some_and(|d| !d.has_cookie_left()) {
        return Err(MetaError::NoSpace("the directory ran out of entry cookies"));
    }
    Ok(())
}

impl MetaState {
    /// Checks of every new entry `name` in `parent`.
    fn check_new_entry(&self, parent: Ino, name: &[u8], creds: &Creds) -> Result<()> {
        let dir_inode = self.inode(parent)?;
        let dir = dir_inode.as_dir().ok_or(MetaError::NotDir)?;
        check_name(name)?;
        require(dir_inode, creds, MAY_EXEC)?;
        if dir.get(name).is_some() {
            return Err(MetaError::Exists);
        }
        may_create_in(dir_inode, creds)
    }

    /// Stores `inode` and names it `name` in `parent`. Infallible once the
    /// caller's checks passed.
    fn add_entry(&mut self, parent: Ino, name: &[u8], inode: Inode, now: Timespec) -> Result<Ino> {
        let kind = inode.kind;
        let project = self.project_below(parent);
        let ino = self.insert_inode(inode);
        self.join_project(ino, project);
        let dir_inode = self.inode_mut(parent)?;
        if kind == FileKind::Dir {
            debug_assert!(dir_inode.nlink < LINK_MAX);
            dir_inode.nlink += 1;
        }
        dir_inode.touch_data(now);
        self.dir_mut(parent)?.insert(name, ino, kind);
        Ok(ino)
    }

    /// Removes entry `name` of `parent`, which names `dirent`: its inode
    /// loses a link (a directory both of its own and its parent the `..`).
    /// Freeing the inode is the caller's last step.
    fn detach(&mut self, parent: Ino, name: &[u8], dirent: Dirent, now: Timespec) -> Result<()> {
        let removed = self.dir_mut(parent)?.remove(name);
        debug_assert_eq!(removed, Some(dirent));
        let dir_inode = self.inode_mut(parent)?;
        dir_inode.touch_data(now);
        let victim = self.inode_mut(dirent.ino)?;
        victim.ctime = now;
        if dirent.kind == FileKind::Dir {
            debug_assert!(victim.as_dir().is_some_and(Dir::is_empty));
            victim.nlink = 0;
            // An unlinked directory is its own `..`: no walk up from it
            // reaches a freed inode.
            if let Some(dir) = victim.as_dir_mut() {
                dir.parent = dirent.ino;
            }
            let dir_inode = self.inode_mut(parent)?;
            debug_assert!(dir_inode.nlink > 2);
            dir_inode.nlink -= 1;
        } else {
            debug_assert!(victim.nlink > 0);
            victim.nlink -= 1;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mknod(
        &mut self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        mode: CreateMode,
        rdev: u32,
        creds: &Creds,
        now: Timespec,
    ) -> Result<Outcome> {
        match kind {
            FileKind::Dir => return Err(MetaError::NotPermitted("mknod cannot make a directory")),
            FileKind::Symlink => return Err(MetaError::Invalid("mknod cannot make a symlink")),
            _ => {}
        }
        self.check_new_entry(parent, name, creds)?;
        if kind.is_device() && !creds.is_root() {
            return Err(MetaError::NotPermitted("only root creates device nodes"));
        }
        self.check_inode_space()?;
        let parent_inode = self.inode(parent)?;
        let (gid, owner_mode) = new_owner(parent_inode, creds, mode.mode() & MODE_MASK, false);
        let (mode, xattrs) = inherit_acls(parent_inode, owner_mode, mode.umask(), false)?;
        let body = if kind == FileKind::File {
            Body::File {
                blocks: BTreeMap::new(),
            }
        } else {
            Body::Special
        };
        let mut inode = Inode::new(kind, mode, creds.uid, gid, now, body);
        inode.xattrs = xattrs;
        if kind.is_device() {
            inode.rdev = rdev;
        }
        let ino = self.add_entry(parent, name, inode, now)?;
        Ok(Outcome::reply(Reply::Attr(self.attr_of(ino)?)))
    }

    pub(crate) fn mkdir(
        &mut self,
        parent: Ino,
        name: &[u8],
        mode: CreateMode,
        creds: &Creds,
        now: Timespec,
    ) -> Result<Outcome> {
        self.check_new_entry(parent, name, creds)?;
        let dir_inode = self.inode(parent)?;
        if dir_inode.nlink >= LINK_MAX {
            return Err(MetaError::TooManyLinks);
        }
        self.check_inode_space()?;
        let (gid, owner_mode) = new_owner(dir_inode, creds, mode.mode() & MKDIR_MODE_MASK, true);
        let (mode, xattrs) = inherit_acls(dir_inode, owner_mode, mode.umask(), true)?;
        let mut inode = Inode::new(
            FileKind::Dir,
            mode,
            creds.uid,
            gid,
            now,
            Body::Dir(Dir::new(parent)),
        );
        inode.xattrs = xattrs;
        let ino = self.add_entry(parent, name, inode, now)?;
        Ok(Outcome::reply(Reply::Attr(self.attr_of(ino)?)))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create(
        &mut self,
        parent: Ino,
        name: &[u8],
        mode: CreateMode,
        exclusive: bool,
        session: SessionId,
        flags: OpenFlags,
        creds: &Creds,
        now: Timespec,
    ) -> Result<Outcome> {
        self.check_can_open(session)?;
        let dir_inode = self.inode(parent)?;
        let dir = dir_inode.as_dir().ok_or(MetaError::NotDir)?;
        check_name(name)?;
        require(dir_inode, creds, MAY_EXEC)?;
        if let Some(existing) = dir.get(name) {
            if exclusive {
                return Err(MetaError::Exists);
            }
            let inode = self.inode(existing.ino)?;
            if inode.kind == FileKind::Dir {
                return Err(MetaError::IsDir);
            }
            Self::check_open(inode, flags, creds)?;
            self.add_open(session, existing.ino)?;
            let attr = self.attr_of(existing.ino)?;
            return Ok(Outcome::reply(Reply::Created {
                attr,
                created: false,
            }));
        }
        may_create_in(dir_inode, creds)?;
        self.check_inode_space()?;
        let (gid, owner_mode) = new_owner(dir_inode, creds, mode.mode() & MODE_MASK, false);
        let (mode, xattrs) = inherit_acls(dir_inode, owner_mode, mode.umask(), false)?;
        let mut inode = Inode::new(
            FileKind::File,
            mode,
            creds.uid,
            gid,
            now,
            Body::File {
                blocks: BTreeMap::new(),
            },
        );
        inode.xattrs = xattrs;
        let ino = self.add_entry(parent, name, inode, now)?;
        // A new file opens whatever its mode says (POSIX `open(O_CREAT)`).
        self.add_open(session, ino)?;
        let attr = self.attr_of(ino)?;
        Ok(Outcome::reply(Reply::Created {
            attr,
            created: true,
        }))
    }

    pub(crate) fn symlink(
        &mut self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        creds: &Creds,
        now: Timespec,
    ) -> Result<Outcome> {
        if target.is_empty() {
            return Err(MetaError::NotFound);
        }
        if target.len() > SYMLINK_MAX_BYTES {
            return Err(MetaError::NameTooLong);
        }
        if target.contains(&0) {
            return Err(MetaError::Invalid("a symlink target contains NUL"));
        }
        self.check_new_entry(parent, name, creds)?;
        self.check_inode_space()?;
        let (gid, mode) = new_owner(self.inode(parent)?, creds, 0o777, false);
        let mut inode = Inode::new(
            FileKind::Symlink,
            mode,
            creds.uid,
            gid,
            now,
            Body::Symlink {
                target: target.to_vec(),
            },
        );
        inode.size = target.len() as u64;
        let ino = self.add_entry(parent, name, inode, now)?;
        Ok(Outcome::reply(Reply::Attr(self.attr_of(ino)?)))
    }

    pub(crate) fn link(
        &mut self,
        ino: Ino,
        new_parent: Ino,
        new_name: &[u8],
        creds: &Creds,
        now: Timespec,
    ) -> Result<Outcome> {
        let target = self.inode(ino)?;
        self.check_new_entry(new_parent, new_name, creds)?;
        if target.kind == FileKind::Dir {
            return Err(MetaError::NotPermitted(
                "hard links to directories are not allowed",
            ));
        }
        if target.nlink == 0 {
            return Err(MetaError::NotFound);
        }
        if target.nlink >= LINK_MAX {
            return Err(MetaError::TooManyLinks);
        }
        self.check_same_project(ino, new_parent)?;
        let kind = target.kind;
        let target = self.inode_mut(ino)?;
        target.nlink += 1;
        target.ctime = now;
        self.inode_mut(new_parent)?.touch_data(now);
        self.dir_mut(new_parent)?.insert(new_name, ino, kind);
        Ok(Outcome::reply(Reply::Attr(self.attr_of(ino)?)))
    }

    /// `unlink` (`is_dir == false`) and `rmdir` (`is_dir == true`).
    pub(crate) fn remove_entry(
        &mut self,
        parent: Ino,
        name: &[u8],
        is_dir: bool,
        creds: &Creds,
        now: Timespec,
    ) -> Result<Outcome> {
        let dir_inode = self.inode(parent)?;
        let dir = dir_inode.as_dir().ok_or(MetaError::NotDir)?;
        check_name(name)?;
        require(dir_inode, creds, MAY_EXEC)?;
        let dirent = dir.get(name).ok_or(MetaError::NotFound)?;
        let victim = self.inode(dirent.ino)?;
        require(dir_inode, creds, MAY_WRITE | MAY_EXEC)?;
        check_sticky(dir_inode, victim, creds)?;
        match (is_dir, victim.as_dir()) {
            (true, None) => return Err(MetaError::NotDir),
            (false, Some(_)) => return Err(MetaError::IsDir),
            (true, Some(victim_dir)) if !victim_dir.is_empty() => return Err(MetaError::NotEmpty),
            _ => {}
        }
        let mut out = Outcome::reply(Reply::Done);
        self.detach(parent, name, dirent, now)?;
        self.free_if_unreferenced(dirent.ino, &mut out);
        Ok(out)
    }

    #[allow(clippy::too_many_arguments, clippy::too_many_lines)]
    pub(crate) fn rename(
        &mut self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
        creds: &Creds,
        now: Timespec,
    ) -> Result<Outcome> {
        if flags.noreplace && flags.exchange {
            return Err(MetaError::Invalid(
                "RENAME_NOREPLACE and RENAME_EXCHANGE exclude each other",
            ));
        }
        let old_dir_inode = self.inode(parent)?;
        let old_dir = old_dir_inode.as_dir().ok_or(MetaError::NotDir)?;
        let new_dir_inode = self.inode(new_parent)?;
        let new_dir = new_dir_inode.as_dir().ok_or(MetaError::NotDir)?;
        check_name(name)?;
        check_name(new_name)?;
        require(old_dir_inode, creds, MAY_EXEC)?;
        require(new_dir_inode, creds, MAY_EXEC)?;
        let src = old_dir.get(name).ok_or(MetaError::NotFound)?;
        let dst = new_dir.get(new_name);
        if flags.noreplace && dst.is_some() {
            return Err(MetaError::Exists);
        }
        if flags.exchange && dst.is_none() {
            return Err(MetaError::NotFound);
        }
        // The lock_rename traps: nothing moves below itself.
        if src.kind == FileKind::Dir && self.is_ancestor_or_self(src.ino, new_parent) {
            return Err(MetaError::Invalid(
                "a directory cannot move into its own subtree",
            ));
        }
        if let Some(dst) = dst {
            if dst.kind == FileKind::Dir && self.is_ancestor_or_self(dst.ino, parent) {
                return Err(if flags.exchange {
                    MetaError::Invalid("a directory cannot move into its own subtree")
                } else {
                    MetaError::NotEmpty
                });
            }
            if dst.ino == src.ino {
                // Two links to one inode: POSIX says do nothing and succeed.
                return Ok(Outcome::reply(Reply::Done));
            }
        }
        let src_inode = self.inode(src.ino)?;
        require(old_dir_inode, creds, MAY_WRITE | MAY_EXEC)?;
        check_sticky(old_dir_inode, src_inode, creds)?;
        let dst_inode = match dst {
            None => {
                may_create_in(new_dir_inode, creds)?;
                None
            }
            Some(dst) => {
                let dst_inode = self.inode(dst.ino)?;
                require(new_dir_inode, creds, MAY_WRITE | MAY_EXEC)?;
                check_sticky(new_dir_inode, dst_inode, creds)?;
                if !flags.exchange {
                    match (src.kind == FileKind::Dir, dst.kind == FileKind::Dir) {
                        (true, false) => return Err(MetaError::NotDir),
                        (false, true) => return Err(MetaError::IsDir),
                        _ => {}
                    }
                }
                Some(dst_inode)
            }
        };
        let dst_is_dir = dst.is_some_and(|d| d.kind == FileKind::Dir);
        let src_is_dir = src.kind == FileKind::Dir;
        if parent != new_parent {
            // The `..` entry of a moving directory changes: it must be writable.
            if src_is_dir {
                require(src_inode, creds, MAY_WRITE)?;
            }
            if let (true, true, Some(dst_inode)) = (flags.exchange, dst_is_dir, dst_inode) {
                require(dst_inode, creds, MAY_WRITE)?;
            }
            if src_is_dir && !dst_is_dir && new_dir_inode.nlink >= LINK_MAX {
                return Err(MetaError::TooManyLinks);
            }
            if flags.exchange && !src_is_dir && dst_is_dir && old_dir_inode.nlink >= LINK_MAX {
                return Err(MetaError::TooManyLinks);
            }
            // Directory quotas: nothing but a project's root changes project.
            self.check_same_project(src.ino, new_parent)?;
            if let (true, Some(dst)) = (flags.exchange, dst) {
                self.check_same_project(dst.ino, parent)?;
            }
        }
        if !flags.exchange
            && dst_inode
                .and_then(Inode::as_dir)
                .is_some_and(|d| !d.is_empty())
        {
            return Err(MetaError::NotEmpty);
        }

        // Checks passed: change.
        let mut out = Outcome::reply(Reply::Done);
        match dst {
            Some(dst) if flags.exchange => {
                self.dir_mut(parent)?.retarget(name, dst.ino, dst.kind);
                self.dir_mut(new_parent)?
                    .retarget(new_name, src.ino, src.kind);
                if parent != new_parent {
                    if src_is_dir {
                        self.dir_mut(src.ino)?.parent = new_parent;
                    }
                    if dst_is_dir {
                        self.dir_mut(dst.ino)?.parent = parent;
                    }
                    match (src_is_dir, dst_is_dir) {
                        (true, false) => {
                            self.inode_mut(parent)?.nlink -= 1;
                            self.inode_mut(new_parent)?.nlink += 1;
                        }
                        (false, true) => {
                            self.inode_mut(parent)?.nlink += 1;
                            self.inode_mut(new_parent)?.nlink -= 1;
                        }
                        _ => {}
                    }
                }
                self.inode_mut(dst.ino)?.ctime = now;
            }
            _ => {
                if let Some(dst) = dst {
                    self.detach(new_parent, new_name, dst, now)?;
                }
                self.dir_mut(parent)?.remove(name);
                self.dir_mut(new_parent)?
                    .insert(new_name, src.ino, src.kind);
                if src_is_dir && parent != new_parent {
                    self.inode_mut(parent)?.nlink -= 1;
                    self.inode_mut(new_parent)?.nlink += 1;
                    self.dir_mut(src.ino)?.parent = new_parent;
                }
            }
        }
        self.inode_mut(src.ino)?.ctime = now;
        self.inode_mut(parent)?.touch_data(now);
        self.inode_mut(new_parent)?.touch_data(now);
        if let (Some(dst), false) = (dst, flags.exchange) {
            self.free_if_unreferenced(dst.ino, &mut out);
        }
        Ok(out)
    }
}
