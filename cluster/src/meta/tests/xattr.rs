//! Extended attributes.

use super::*;
use crate::meta::{
    XattrFlags, ROOT_INO, XATTRS_PER_INODE_MAX, XATTR_NAME_MAX_BYTES, XATTR_VALUE_MAX_BYTES,
};

use libc::{E2BIG, EACCES, EEXIST, EINVAL, ENODATA, ENOSPC, EOPNOTSUPP, EPERM, ERANGE};

const PLAIN: XattrFlags = XattrFlags {
    create: false,
    replace: false,
};
const CREATE: XattrFlags = XattrFlags {
    create: true,
    replace: false,
};
const REPLACE: XattrFlags = XattrFlags {
    create: false,
    replace: true,
};

fn set(
    fs: &mut Fs,
    ino: Ino,
    name: &[u8],
    value: &[u8],
    flags: XattrFlags,
    creds: &Creds,
) -> Result<(), i32> {
    let now = fs.now();
    fs.apply(Command::SetXattr {
        ino,
        name: name.to_vec(),
        value: value.to_vec(),
        flags,
        creds: creds.clone(),
        now,
    })
    .map(|_| ())
    .map_err(|e| e.errno())
}

fn remove(fs: &mut Fs, ino: Ino, name: &[u8], creds: &Creds) -> Result<(), i32> {
    let now = fs.now();
    fs.apply(Command::RemoveXattr {
        ino,
        name: name.to_vec(),
        creds: creds.clone(),
        now,
    })
    .map(|_| ())
    .map_err(|e| e.errno())
}

fn get(fs: &Fs, ino: Ino, name: &[u8], creds: &Creds) -> Result<Vec<u8>, i32> {
    fs.state
        .getxattr(ino, name, creds)
        .map(<[u8]>::to_vec)
        .map_err(|e| e.errno())
}

fn setup() -> (Fs, Ino) {
    let mut fs = Fs::new();
    fs.chmod(ROOT_INO, 0o777, &root());
    let f = fs.file(ROOT_INO, "f", 0o644, &alice());
    (fs, f)
}

#[test]
fn flags_and_lifecycle() {
    let (mut fs, f) = setup();
    assert_eq!(get(&fs, f, b"user.a", &alice()), Err(ENODATA));
    assert_eq!(
        set(&mut fs, f, b"user.a", b"1", REPLACE, &alice()),
        Err(ENODATA)
    );
    assert_eq!(set(&mut fs, f, b"user.a", b"1", CREATE, &alice()), Ok(()));
    assert_eq!(fs.state.getattr(f).expect("attr").ctime, fs.last());
    assert_eq!(
        set(&mut fs, f, b"user.a", b"2", CREATE, &alice()),
        Err(EEXIST)
    );
    assert_eq!(set(&mut fs, f, b"user.a", b"3", REPLACE, &alice()), Ok(()));
    assert_eq!(set(&mut fs, f, b"user.b", b"", PLAIN, &alice()), Ok(()));
    let both = XattrFlags {
        create: true,
        replace: true,
    };
    assert_eq!(set(&mut fs, f, b"user.c", b"", both, &alice()), Err(EINVAL));
    assert_eq!(get(&fs, f, b"user.a", &bob()), Ok(b"3".to_vec()));
    assert_eq!(
        fs.state.listxattr(f, &bob()).expect("list"),
        vec![b"user.a".as_slice(), b"user.b"]
    );
    assert_eq!(remove(&mut fs, f, b"user.a", &alice()), Ok(()));
    assert_eq!(remove(&mut fs, f, b"user.a", &alice()), Err(ENODATA));
    assert_eq!(get(&fs, f, b"user.a", &alice()), Err(ENODATA));
}

#[test]
fn sizes() {
    let (mut fs, f) = setup();
    let long = [b"user.".as_slice(), &[b'n'; XATTR_NAME_MAX_BYTES - 5]].concat();
    assert_eq!(set(&mut fs, f, &long, b"", PLAIN, &alice()), Ok(()));
    let too_long = [long.as_slice(), b"n"].concat();
    assert_eq!(
        set(&mut fs, f, &too_long, b"", PLAIN, &alice()),
        Err(ERANGE)
    );
    assert_eq!(get(&fs, f, &too_long, &alice()), Err(ERANGE));
    assert_eq!(set(&mut fs, f, b"", b"", PLAIN, &alice()), Err(ERANGE));
    assert_eq!(
        set(
            &mut fs,
            f,
            b"user.v",
            &vec![0; XATTR_VALUE_MAX_BYTES],
            PLAIN,
            &alice()
        ),
        Ok(())
    );
    assert_eq!(
        set(
            &mut fs,
            f,
            b"user.w",
            &vec![0; XATTR_VALUE_MAX_BYTES + 1],
            PLAIN,
            &alice()
        ),
        Err(E2BIG)
    );
    assert_eq!(set(&mut fs, f, b"user.", b"", PLAIN, &alice()), Err(EINVAL));
}

#[test]
fn per_inode_limits() {
    let (mut fs, f) = setup();
    for i in 0..XATTRS_PER_INODE_MAX {
        fs.state
            .apply(&Command::SetXattr {
                ino: f,
                name: format!("user.{i}").into_bytes(),
                value: Vec::new(),
                flags: PLAIN,
                creds: alice(),
                now: Timespec::from_secs(100),
            })
            .expect("setxattr");
    }
    assert_eq!(
        set(&mut fs, f, b"user.more", b"", PLAIN, &alice()),
        Err(ENOSPC)
    );
    assert_eq!(
        set(&mut fs, f, b"user.0", b"replaced", PLAIN, &alice()),
        Ok(())
    );
    let g = fs.file(ROOT_INO, "g", 0o644, &alice());
    let value = vec![0; XATTR_VALUE_MAX_BYTES];
    let mut result = Ok(());
    for i in 0..20 {
        result = set(
            &mut fs,
            g,
            format!("user.{i}").as_bytes(),
            &value,
            PLAIN,
            &alice(),
        );
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, Err(ENOSPC), "1 MiB of attributes per inode");
}

#[test]
fn namespaces() {
    let (mut fs, f) = setup();
    // user.: the file's rwx bits.
    assert_eq!(set(&mut fs, f, b"user.x", b"1", PLAIN, &bob()), Err(EACCES));
    let secret = fs.file(ROOT_INO, "secret", 0o600, &alice());
    assert_eq!(
        set(&mut fs, secret, b"user.x", b"1", PLAIN, &alice()),
        Ok(())
    );
    assert_eq!(get(&fs, secret, b"user.x", &bob()), Err(EACCES));
    assert_eq!(get(&fs, secret, b"user.x", &root()), Ok(b"1".to_vec()));
    // user. only on files and directories.
    let now = fs.now();
    let link = ino_of(&fs.ok(Command::Symlink {
        parent: ROOT_INO,
        name: b"l".to_vec(),
        target: b"f".to_vec(),
        creds: alice(),
        now,
    }));
    assert_eq!(
        set(&mut fs, link, b"user.x", b"1", PLAIN, &alice()),
        Err(EPERM)
    );
    assert_eq!(get(&fs, link, b"user.x", &alice()), Err(ENODATA));
    assert_eq!(
        set(&mut fs, link, b"security.x", b"1", PLAIN, &alice()),
        Ok(())
    );
    // A sticky directory's user attributes are its owner's.
    let tmp = fs.mkdir(ROOT_INO, "tmp", 0o1777, &alice());
    assert_eq!(
        set(&mut fs, tmp, b"user.x", b"1", PLAIN, &bob()),
        Err(EPERM)
    );
    assert_eq!(set(&mut fs, tmp, b"user.x", b"1", PLAIN, &alice()), Ok(()));
    // trusted.: root only, invisible to others.
    assert_eq!(
        set(&mut fs, f, b"trusted.t", b"1", PLAIN, &alice()),
        Err(EPERM)
    );
    assert_eq!(set(&mut fs, f, b"trusted.t", b"1", PLAIN, &root()), Ok(()));
    assert_eq!(get(&fs, f, b"trusted.t", &alice()), Err(ENODATA));
    assert_eq!(get(&fs, f, b"trusted.t", &root()), Ok(b"1".to_vec()));
    assert!(fs.state.listxattr(f, &alice()).expect("list").is_empty());
    assert_eq!(
        fs.state.listxattr(f, &root()).expect("list"),
        vec![b"trusted.t".as_slice()]
    );
    assert_eq!(remove(&mut fs, f, b"trusted.t", &alice()), Err(EPERM));
    // security.: readable by all, written by owner or root.
    assert_eq!(
        set(&mut fs, f, b"security.s", b"1", PLAIN, &bob()),
        Err(EPERM)
    );
    assert_eq!(
        set(&mut fs, f, b"security.s", b"1", PLAIN, &alice()),
        Ok(())
    );
    assert_eq!(get(&fs, f, b"security.s", &bob()), Ok(b"1".to_vec()));
    // system.: the POSIX ACLs only (tests/acl.rs); unknown namespaces are
    // not supported.
    assert_eq!(
        set(&mut fs, f, b"system.posix_acl_access", b"1", PLAIN, &root()),
        Err(EINVAL)
    );
    assert_eq!(
        get(&fs, f, b"system.posix_acl_access", &root()),
        Err(ENODATA)
    );
    assert_eq!(
        set(&mut fs, f, b"system.x", b"1", PLAIN, &root()),
        Err(EOPNOTSUPP)
    );
    assert_eq!(
        set(&mut fs, f, b"other.x", b"1", PLAIN, &alice()),
        Err(EOPNOTSUPP)
    );
    assert_eq!(
        set(&mut fs, f, b"other.x", b"1", PLAIN, &bob()),
        Err(EACCES),
        "rwx first, as Linux"
    );
}
