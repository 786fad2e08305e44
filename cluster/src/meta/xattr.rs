//! Extended attributes. Namespaces as Linux (`fs/xattr.c`): `user.` follows
//! the file's rwx bits and exists only on regular files and directories;
//! `trusted.` is root's; `security.` is readable by all and writable by the
//! owner or root (Linux leaves it to the security module); `system.` holds
//! the POSIX ACLs, `system.posix_acl_access` and `system.posix_acl_default`
//! (no other name), readable by all and set by the owner or root (Linux
//! `set_posix_acl`; the codec and the mode rules are in `acl`).
//!
//! ACLs are attributes like the others in the state (snapshots and the
//! limits count them) with rules of their own: a value is validated and
//! stored in canonical form; an access ACL that says no more than a mode
//! only sets the mode; setting an access ACL sets the mode's rwx bits (and
//! clears setgid for a caller outside the file's group who is not root);
//! a default ACL exists on directories only (setting one elsewhere is
//! `EACCES`, removing one a no-op); removing an ACL that is not there
//! succeeds (ext4, xfs); `XATTR_CREATE`/`XATTR_REPLACE` are ignored, as the
//! kernel ignores them for ACLs; symlinks have none (`EOPNOTSUPP`).

use super::acl::{Acl, AclError, ACL_ACCESS, ACL_DEFAULT};
use super::command::{Outcome, Reply};
use super::error::MetaError;
use super::inode::{Inode, Xattrs};
use super::limits::{
    XATTRS_PER_INODE_MAX, XATTR_BYTES_PER_INODE_MAX, XATTR_NAME_MAX_BYTES, XATTR_VALUE_MAX_BYTES,
};
use super::perm::{owns, require, MAY_READ, MAY_WRITE, S_ISGID, S_ISVTX};
use super::quota::QUOTA_XATTR;
use super::state::{MetaState, Result};
use super::types::{Creds, FileKind, Ino, Timespec, XattrFlags};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Namespace {
    User,
    Trusted,
    Security,
    System,
    Unknown,
}

const NAMESPACES: [(&[u8], Namespace); 4] = [
    (b"user.", Namespace::User),
    (b"trusted.", Namespace::Trusted),
    (b"security.", Namespace::Security),
    (b"system.", Namespace::System),
];

/// The namespace of `name` and the rest of the name after its prefix.
fn namespace(name: &[u8]) -> (Namespace, &[u8]) {
    NAMESPACES
        .iter()
        .find_map(|&(prefix, ns)| name.strip_prefix(prefix).map(|rest| (ns, rest)))
        .unwrap_or((Namespace::Unknown, name))
}

/// Name length (`ERANGE`).
fn check_xattr_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name.len() > XATTR_NAME_MAX_BYTES {
        return Err(MetaError::Range);
    }
    Ok(())
}

/// Whether `creds` may read (`write == false`) or change attribute `name`
/// of `inode`, then whether the namespace is supported (Linux
/// `xattr_permission`, then the handler lookup).
fn check_xattr_access(inode: &Inode, name: &[u8], write: bool, creds: &Creds) -> Result<()> {
    let (ns, rest) = namespace(name);
    match ns {
        Namespace::Security => {
            if write && !owns(inode, creds) {
                return Err(MetaError::NotPermitted(
                    "only the owner or root may change security attributes",
                ));
            }
        }
        Namespace::System => {}
        Namespace::Trusted => {
            if !creds.is_root() {
                return Err(if write {
                    MetaError::NotPermitted("trusted attributes are root's")
                } else {
                    MetaError::NoData
                });
            }
        }
        Namespace::User | Namespace::Unknown => {
            if ns == Namespace::User {
                if !matches!(inode.kind, FileKind::File | FileKind::Dir) {
                    return Err(if write {
                        MetaError::NotPermitted(
                            "user attributes exist on regular files and directories only",
                        )
                    } else {
                        MetaError::NoData
                    });
                }
                if inode.kind == FileKind::Dir
                    && inode.mode & S_ISVTX != 0
                    && write
                    && !owns(inode, creds)
                {
                    return Err(MetaError::NotPermitted(
                        "user attributes of a sticky directory are its owner's",
                    ));
                }
            }
            require(inode, creds, if write { MAY_WRITE } else { MAY_READ })?;
        }
    }
    match ns {
        Namespace::System if acl_kind(name).is_some() => Ok(()),
        Namespace::System => Err(MetaError::NotSupported(
            "the system.* attributes are system.posix_acl_access and system.posix_acl_default",
        )),
        Namespace::Unknown => Err(MetaError::NotSupported(
            "attribute names start with user., trusted. or security.",
        )),
        _ if rest.is_empty() => Err(MetaError::Invalid("an attribute name is only a prefix")),
        _ => Ok(()),
    }
}

/// Which POSIX ACL an attribute name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AclKind {
    Access,
    Default,
}

fn acl_kind(name: &[u8]) -> Option<AclKind> {
    if name == ACL_ACCESS {
        Some(AclKind::Access)
    } else if name == ACL_DEFAULT {
        Some(AclKind::Default)
    } else {
        None
    }
}

fn acl_error(e: AclError) -> MetaError {
    match e {
        AclError::Version => MetaError::NotSupported("POSIX ACLs are stored in version 2"),
        AclError::Invalid(why) => MetaError::Invalid(why),
    }
}

/// A symlink has no ACLs (Linux: no ACL operations on symlinks).
fn check_acl_holder(inode: &Inode) -> Result<()> {
    if inode.kind == FileKind::Symlink {
        return Err(MetaError::NotSupported("symlinks have no ACLs"));
    }
    Ok(())
}

/// Whether `inode` has room for attribute `name` holding `value_len` bytes
/// (replacing its current value).
fn check_room(inode: &Inode, name: &[u8], value_len: usize) -> Result<()> {
    let old = inode.xattrs.get(name);
    if old.is_none() && inode.xattrs.len() >= XATTRS_PER_INODE_MAX {
        return Err(MetaError::NoSpace(
            "too many extended attributes on one inode",
        ));
    }
    let bytes_after =
        inode.xattr_bytes() - old.map_or(0, |v| name.len() + v.len()) + name.len() + value_len;
    if bytes_after > XATTR_BYTES_PER_INODE_MAX {
        return Err(MetaError::NoSpace(
            "extended attributes of one inode are too large",
        ));
    }
    Ok(())
}

/// The mode and attributes of a new inode in `parent` (`mode` after
/// [`new_owner`](super::perm::new_owner)): with a `umask` handed over
/// (POSIX ACLs on), a parent's default ACL becomes the new inode's access
/// ACL masked by the mode, and a new directory's default ACL too, in place
/// of the umask (Linux `posix_acl_create`); without a default ACL the
/// umask applies. Without a umask (the caller applied it) nothing is
/// inherited.
pub(crate) fn inherit_acls(
    parent: &Inode,
    mode: u32,
    umask: Option<u32>,
    is_dir: bool,
) -> Result<(u32, Xattrs)> {
    let mut xattrs = Xattrs::new();
    let Some(umask) = umask else {
        return Ok((mode, xattrs));
    };
    let default = parent.xattrs.get(ACL_DEFAULT);
    let Some(mut access) = default
        .map(|bytes| Acl::decode(bytes).map_err(acl_error))
        .transpose()?
        .flatten()
    else {
        return Ok((mode & !(umask & 0o777), xattrs));
    };
    let mode = access.mask_for_create(mode);
    if !access.is_minimal() {
        xattrs.insert(ACL_ACCESS.to_vec(), access.encode());
    }
    if let (true, Some(default)) = (is_dir, default) {
        xattrs.insert(ACL_DEFAULT.to_vec(), default.clone());
    }
    Ok((mode, xattrs))
}

impl MetaState {
    /// The value of attribute `name` of `ino`.
    pub fn getxattr(&self, ino: Ino, name: &[u8], creds: &Creds) -> Result<&[u8]> {
        self.formatted()?;
        let inode = self.inode(ino)?;
        check_xattr_name(name)?;
        check_xattr_access(inode, name, false, creds)?;
        if acl_kind(name).is_some() {
            check_acl_holder(inode)?;
        }
        inode
            .xattrs
            .get(name)
            .map(Vec::as_slice)
            .ok_or(MetaError::NoData)
    }

    /// Names of the attributes of `ino` that `creds` may see (`trusted.`
    /// only for root), in byte order.
    pub fn listxattr(&self, ino: Ino, creds: &Creds) -> Result<Vec<&[u8]>> {
        self.formatted()?;
        let inode = self.inode(ino)?;
        Ok(inode
            .xattrs
            .keys()
            .filter(|name| creds.is_root() || namespace(name).0 != Namespace::Trusted)
            .map(Vec::as_slice)
            .collect())
    }

    pub(crate) fn set_xattr(
        &mut self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: XattrFlags,
        creds: &Creds,
        now: Timespec,
    ) -> Result<Outcome> {
        if flags.create && flags.replace {
            return Err(MetaError::Invalid(
                "XATTR_CREATE and XATTR_REPLACE exclude each other",
            ));
        }
        let inode = self.inode(ino)?;
        check_xattr_name(name)?;
        if value.len() > XATTR_VALUE_MAX_BYTES {
            return Err(MetaError::TooBig);
        }
        check_xattr_access(inode, name, true, creds)?;
        if let Some(kind) = acl_kind(name) {
            let acl = Acl::decode(value).map_err(acl_error)?;
            return self.set_acl(ino, kind, acl.as_ref(), creds, now);
        }
        match inode.xattrs.get(name) {
            Some(_) if flags.create => return Err(MetaError::Exists),
            None if flags.replace => return Err(MetaError::NoData),
            _ => {}
        }
        check_room(inode, name, value.len())?;
        let quota = if name == QUOTA_XATTR {
            Some(self.check_set_quota(ino, value)?)
        } else {
            None
        };
        let inode = self.inode_mut(ino)?;
        inode.xattrs.insert(name.to_vec(), value.to_vec());
        inode.ctime = now;
        if let Some(limit) = quota {
            self.set_quota(ino, limit);
        }
        Ok(Outcome::reply(Reply::Done))
    }

    pub(crate) fn remove_xattr(
        &mut self,
        ino: Ino,
        name: &[u8],
        creds: &Creds,
        now: Timespec,
    ) -> Result<Outcome> {
        let inode = self.inode(ino)?;
        check_xattr_name(name)?;
        check_xattr_access(inode, name, true, creds)?;
        if let Some(kind) = acl_kind(name) {
            return self.set_acl(ino, kind, None, creds, now);
        }
        if !inode.xattrs.contains_key(name) {
            return Err(MetaError::NoData);
        }
        let quota = name == QUOTA_XATTR;
        if quota {
            self.check_remove_quota(ino)?;
        }
        let inode = self.inode_mut(ino)?;
        inode.xattrs.remove(name);
        inode.ctime = now;
        if quota {
            self.remove_quota(ino);
        }
        Ok(Outcome::reply(Reply::Done))
    }

    /// Sets (`Some`) or removes (`None`) the access or default ACL of
    /// `ino`, in the order of Linux `set_posix_acl`.
    fn set_acl(
        &mut self,
        ino: Ino,
        kind: AclKind,
        acl: Option<&Acl>,
        creds: &Creds,
        now: Timespec,
    ) -> Result<Outcome> {
        let inode = self.inode(ino)?;
        check_acl_holder(inode)?;
        if kind == AclKind::Default && inode.kind != FileKind::Dir {
            return match acl {
                Some(_) => Err(MetaError::AccessDenied),
                None => Ok(Outcome::reply(Reply::Done)),
            };
        }
        if !owns(inode, creds) {
            return Err(MetaError::NotPermitted(
                "only the owner or root may change a file's ACLs",
            ));
        }
        let name = match kind {
            AclKind::Access => ACL_ACCESS,
            AclKind::Default => ACL_DEFAULT,
        };
        let mut mode = inode.mode;
        let mut stored = None;
        if let Some(acl) = acl {
            if kind == AclKind::Access {
                mode = (mode & !0o777) | acl.mode_bits();
                // Linux `posix_acl_update_mode`.
                if !creds.is_root() && !creds.in_group(inode.gid) {
                    mode &= !S_ISGID;
                }
            }
            if kind == AclKind::Default || !acl.is_minimal() {
                let value = acl.encode();
                check_room(inode, name, value.len())?;
                stored = Some(value);
            }
        }
        let changed = inode.xattrs.get(name) != stored.as_ref() || inode.mode != mode;
        if !changed && acl.is_none() {
            // Removing an ACL that is not there.
            return Ok(Outcome::reply(Reply::Done));
        }
        let inode = self.inode_mut(ino)?;
        match stored {
            Some(value) => inode.xattrs.insert(name.to_vec(), value),
            None => inode.xattrs.remove(name),
        };
        inode.mode = mode;
        inode.ctime = now;
        Ok(Outcome::reply(Reply::Done))
    }
}
