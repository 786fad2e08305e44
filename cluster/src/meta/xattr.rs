//! Extended attributes. Namespaces as Linux (`fs/xattr.c`): `user.` follows
//! the file's rwx bits and exists only on regular files and directories;
//! `trusted.` is root's; `security.` is readable by all and writable by the
//! owner or root (Linux leaves it to the security module); `system.` (POSIX
//! ACLs) is not supported.

use super::command::{Outcome, Reply};
use super::error::MetaError;
use super::inode::Inode;
use super::limits::{
    XATTRS_PER_INODE_MAX, XATTR_BYTES_PER_INODE_MAX, XATTR_NAME_MAX_BYTES, XATTR_VALUE_MAX_BYTES,
};
use super::perm::{owns, require, MAY_READ, MAY_WRITE, S_ISVTX};
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
        Namespace::System => Err(MetaError::NotSupported(
            "system.* attributes (POSIX ACLs) are not supported",
        )),
        Namespace::Unknown => Err(MetaError::NotSupported(
            "attribute names start with user., trusted. or security.",
        )),
        _ if rest.is_empty() => Err(MetaError::Invalid("an attribute name is only a prefix")),
        _ => Ok(()),
    }
}

impl MetaState {
    /// The value of attribute `name` of `ino`.
    pub fn getxattr(&self, ino: Ino, name: &[u8], creds: &Creds) -> Result<&[u8]> {
        self.formatted()?;
        let inode = self.inode(ino)?;
        check_xattr_name(name)?;
        check_xattr_access(inode, name, false, creds)?;
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
        let old = inode.xattrs.get(name);
        match old {
            Some(_) if flags.create => return Err(MetaError::Exists),
            None if flags.replace => return Err(MetaError::NoData),
            _ => {}
        }
        if old.is_none() && inode.xattrs.len() >= XATTRS_PER_INODE_MAX {
            return Err(MetaError::NoSpace(
                "too many extended attributes on one inode",
            ));
        }
        let bytes_after = inode.xattr_bytes() - old.map_or(0, |v| name.len() + v.len())
            + name.len()
            + value.len();
        if bytes_after > XATTR_BYTES_PER_INODE_MAX {
            return Err(MetaError::NoSpace(
                "extended attributes of one inode are too large",
            ));
        }
        let inode = self.inode_mut(ino)?;
        inode.xattrs.insert(name.to_vec(), value.to_vec());
        inode.ctime = now;
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
        if !inode.xattrs.contains_key(name) {
            return Err(MetaError::NoData);
        }
        let inode = self.inode_mut(ino)?;
        inode.xattrs.remove(name);
        inode.ctime = now;
        Ok(Outcome::reply(Reply::Done))
    }
}
