//! Permission rules: rwx checks from credentials, the sticky bit, the rules
//! that clear setuid/setgid, and the syntax of names. Leaves: pure functions
//! of an inode and credentials.

use super::acl::{Acl, ACL_ACCESS};
use super::error::MetaError;
use super::inode::Inode;
use super::limits::NAME_MAX_BYTES;
use super::types::{Creds, FileKind};

pub(crate) const S_ISUID: u32 = 0o4000;
pub(crate) const S_ISGID: u32 = 0o2000;
pub(crate) const S_ISVTX: u32 = 0o1000;
pub(crate) const S_IXGRP: u32 = 0o010;
/// The group class's rwx bits (an access ACL's mask).
pub(crate) const S_IRWXG: u32 = 0o070;
/// Any execute bit.
pub(crate) const S_IXUGO: u32 = 0o111;
/// Bits a mode may carry: permissions, setuid, setgid, sticky.
pub(crate) const MODE_MASK: u32 = 0o7777;

/// Access bits, as `access(2)` spells them (`R_OK`, `W_OK`, `X_OK`).
pub(crate) const MAY_READ: u32 = 4;
pub(crate) const MAY_WRITE: u32 = 2;
pub(crate) const MAY_EXEC: u32 = 1;

type Result<T> = std::result::Result<T, MetaError>;

/// Whether `creds` may access `inode` with every bit of `mask`. Root passes
/// read and write, and execute where any execute bit is set (or on a
/// directory). Otherwise the owner class decides for the owner; for anyone
/// else an access ACL decides when there is one and the group bits (its
/// mask) are not all clear (Linux `acl_permission_check`); else the group
/// class, else other decides alone, as in POSIX (an owner denied by the
/// owner bits is denied even if the other bits allow).
pub(crate) fn permits(inode: &Inode, creds: &Creds, mask: u32) -> bool {
    if creds.is_root() {
        let needs_x = mask & MAY_EXEC != 0;
        return !needs_x || inode.kind == FileKind::Dir || inode.mode & S_IXUGO != 0;
    }
    if creds.uid != inode.uid && inode.mode & S_IRWXG != 0 {
        if let Some(stored) = inode.xattrs.get(ACL_ACCESS) {
            // Stored ACLs were validated when set (and by `restore`); one
            // that no longer decodes grants nothing.
            return match Acl::decode(stored) {
                Ok(Some(acl)) => acl.permits(creds, inode.uid, inode.gid, mask),
                Ok(None) | Err(_) => false,
            };
        }
    }
    let class = if creds.uid == inode.uid {
        inode.mode >> 6
    } else if creds.in_group(inode.gid) {
        inode.mode >> 3
    } else {
        inode.mode
    };
    class & mask & 0o7 == mask
}

/// [`permits`], as an `EACCES` error.
pub(crate) fn require(inode: &Inode, creds: &Creds, mask: u32) -> Result<()> {
    if permits(inode, creds, mask) {
        Ok(())
    } else {
        Err(MetaError::AccessDenied)
    }
}

/// Owner or root (`inode_owner_or_capable`).
pub(crate) fn owns(inode: &Inode, creds: &Creds) -> bool {
    creds.is_root() || creds.uid == inode.uid
}

/// The sticky rule: in a sticky directory only root, the directory's owner
/// or the entry's owner may remove or rename an entry (`EPERM`).
pub(crate) fn check_sticky(dir: &Inode, victim: &Inode, creds: &Creds) -> Result<()> {
    let allowed = dir.mode & S_ISVTX == 0
        || creds.is_root()
        || creds.uid == dir.uid
        || creds.uid == victim.uid;
    if allowed {
        Ok(())
    } else {
        Err(MetaError::NotPermitted(
            "sticky directory: only the owner of the entry or of the directory may remove it",
        ))
    }
}

/// The mode after a non-root caller changed the data or size of a file:
/// setuid goes, and setgid when group-execute is set (setgid without
/// group-execute marks mandatory locking and stays), as Linux
/// `should_remove_suid`.
pub(crate) fn mode_after_write(mode: u32, creds: &Creds) -> u32 {
    if creds.is_root() {
        return mode;
    }
    let mut mode = mode & !S_ISUID;
    if mode & S_IXGRP != 0 {
        mode &= !S_ISGID;
    }
    mode
}

/// The mode of a non-directory after `chown`, root included (Linux
/// `chown_common`): setuid goes; setgid goes when group-execute is set or
/// when the caller is neither root nor in the file's group.
pub(crate) fn mode_after_chown(inode: &Inode, creds: &Creds) -> u32 {
    if inode.kind == FileKind::Dir {
        return inode.mode;
    }
    let mut mode = inode.mode & !S_ISUID;
    let drop_sgid = mode & S_IXGRP != 0 || !(creds.is_root() || creds.in_group(inode.gid));
    if drop_sgid {
        mode &= !S_ISGID;
    }
    mode
}

/// Group and mode of a new inode in `parent` (Linux `inode_init_owner` and
/// `mode_strip_sgid`): a setgid parent gives its group, and its setgid bit
/// to new directories; a non-directory created setgid and group-executable
/// in a setgid parent whose group the caller is not in loses setgid.
pub(crate) fn new_owner(parent: &Inode, creds: &Creds, mode: u32, is_dir: bool) -> (u32, u32) {
    let parent_sgid = parent.mode & S_ISGID != 0;
    if !parent_sgid {
        return (creds.gid, mode);
    }
    if is_dir {
        return (parent.gid, mode | S_ISGID);
    }
    let strip = mode & (S_ISGID | S_IXGRP) == S_ISGID | S_IXGRP
        && !creds.is_root()
        && !creds.in_group(parent.gid);
    let mode = if strip { mode & !S_ISGID } else { mode };
    (parent.gid, mode)
}

/// A directory entry name: not empty, `.` or `..`, no `/` or NUL
/// (`EINVAL`), at most [`NAME_MAX_BYTES`] (`ENAMETOOLONG`). The kernel
/// resolves `.` and `..` itself, so they never name an entry here.
pub(crate) fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() {
        return Err(MetaError::Invalid("empty name"));
    }
    if name == b"." || name == b".." {
        return Err(MetaError::Invalid("`.` and `..` name no entry"));
    }
    if name.iter().any(|&b| b == b'/' || b == 0) {
        return Err(MetaError::Invalid("a name contains `/` or NUL"));
    }
    if name.len() > NAME_MAX_BYTES {
        return Err(MetaError::NameTooLong);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::inode::Body;
    use super::super::types::Timespec;
    use super::*;

    fn file(mode: u32, uid: u32, gid: u32) -> Inode {
        Inode::new(
            FileKind::File,
            mode,
            uid,
            gid,
            Timespec::default(),
            Body::Special,
        )
    }

    #[test]
    fn classes_decide_alone() {
        let user = Creds {
            uid: 10,
            gid: 20,
            groups: vec![30],
        };
        let check = |mode: u32, uid: u32, gid: u32, mask: u32, expected: bool| {
            assert_eq!(
                permits(&file(mode, uid, gid), &user, mask),
                expected,
                "mode {mode:o} uid {uid} gid {gid} mask {mask}"
            );
        };
        check(0o400, 10, 0, MAY_READ, true);
        check(0o070, 10, 20, MAY_READ, false); // owner class decides
        check(0o040, 11, 20, MAY_READ, true);
        check(0o040, 11, 30, MAY_READ, true); // supplementary group
        check(0o007, 11, 30, MAY_READ, false); // group class decides
        check(0o006, 11, 31, MAY_READ | MAY_WRITE, true);
        check(0o004, 11, 31, MAY_READ | MAY_WRITE, false);
        check(0o000, 11, 31, 0, true);
    }

    #[test]
    fn root_needs_an_exec_bit_on_files_only() {
        let root = Creds::root();
        assert!(permits(&file(0o000, 5, 5), &root, MAY_READ | MAY_WRITE));
        assert!(!permits(&file(0o600, 5, 5), &root, MAY_EXEC));
        assert!(permits(&file(0o001, 5, 5), &root, MAY_EXEC));
        let dir = Inode::new(FileKind::Dir, 0, 5, 5, Timespec::default(), Body::Special);
        assert!(permits(&dir, &root, MAY_EXEC));
    }

    #[test]
    fn names() {
        let check = |name: &[u8], errno: Option<i32>| {
            assert_eq!(check_name(name).err().map(|e| e.errno()), errno, "{name:?}");
        };
        check(b"a", None);
        check(&[b'x'; NAME_MAX_BYTES], None);
        check(&[b'x'; NAME_MAX_BYTES + 1], Some(libc::ENAMETOOLONG));
        check(b"", Some(libc::EINVAL));
        check(b".", Some(libc::EINVAL));
        check(b"..", Some(libc::EINVAL));
        check(b"...", None);
        check(b"a/b", Some(libc::EINVAL));
        check(b"a\0", Some(libc::EINVAL));
    }

    #[test]
    fn setid_clearing() {
        let user = Creds::user(10, 20);
        assert_eq!(mode_after_write(0o6755, &user), 0o0755);
        assert_eq!(mode_after_write(0o6745, &user), 0o2745); // no group-exec: setgid stays
        assert_eq!(mode_after_write(0o6755, &Creds::root()), 0o6755);
        assert_eq!(
            mode_after_chown(&file(0o6755, 10, 20), &Creds::root()),
            0o0755
        );
        assert_eq!(
            mode_after_chown(&file(0o6745, 10, 20), &Creds::root()),
            0o2745
        );
        assert_eq!(mode_after_chown(&file(0o6745, 10, 21), &user), 0o0745);
        let mut dir = file(0o6755, 10, 20);
        dir.kind = FileKind::Dir;
        assert_eq!(mode_after_chown(&dir, &user), 0o6755);
    }
}
