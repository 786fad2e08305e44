//! POSIX ACLs: the `system.posix_acl_*` attributes, the mode they set and
//! follow, the access check and inheritance on create.

use super::*;
use crate::meta::{CreateMode, XattrFlags, ROOT_INO};

use libc::{EACCES, EINVAL, ENODATA, EOPNOTSUPP, EPERM};

const ACCESS: &[u8] = b"system.posix_acl_access";
const DEFAULT: &[u8] = b"system.posix_acl_default";

const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const NOBODY: u32 = u32::MAX;

/// An ACL value from `(tag, perm, id)` entries, as setfacl writes it.
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    crate::meta::acl::raw(entries)
}

/// `user::owner, user:id:named, group::group, mask::mask, other::other`.
fn with_user(owner: u16, id: u32, named: u16, group: u16, mask: u16, other: u16) -> Vec<u8> {
    acl(&[
        (USER_OBJ, owner, NOBODY),
        (USER, named, id),
        (GROUP_OBJ, group, NOBODY),
        (MASK, mask, NOBODY),
        (OTHER, other, NOBODY),
    ])
}

fn set(fs: &mut Fs, ino: Ino, name: &[u8], value: &[u8], creds: &Creds) -> Result<(), i32> {
    let now = fs.now();
    fs.apply(Command::SetXattr {
        ino,
        name: name.to_vec(),
        value: value.to_vec(),
        flags: XattrFlags::default(),
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

fn get(fs: &Fs, ino: Ino, name: &[u8]) -> Result<Vec<u8>, i32> {
    fs.state
        .getxattr(ino, name, &bob())
        .map(<[u8]>::to_vec)
        .map_err(|e| e.errno())
}

fn mode(fs: &Fs, ino: Ino) -> u32 {
    fs.state.getattr(ino).expect("attr").mode & 0o7777
}

fn may(fs: &Fs, ino: Ino, mask: u32, creds: &Creds) -> bool {
    fs.state.access(ino, mask, creds).is_ok()
}

/// A world-writable root and a file of alice's with `mode`.
fn setup(file_mode: u32) -> (Fs, Ino) {
    let mut fs = Fs::new();
    fs.chmod(ROOT_INO, 0o777, &root());
    let f = fs.file(ROOT_INO, "f", file_mode, &alice());
    (fs, f)
}

#[test]
fn a_named_user_gets_what_the_mode_denies_within_the_mask() {
    let (mut fs, f) = setup(0o600);
    assert!(!may(&fs, f, 4, &bob()));
    // setfacl -m u:bob:rw-
    assert_eq!(
        set(
            &mut fs,
            f,
            ACCESS,
            &with_user(6, 1001, 6, 0, 6, 0),
            &alice()
        ),
        Ok(())
    );
    assert_eq!(mode(&fs, f), 0o660, "the mask shows as the group bits");
    assert_eq!(get(&fs, f, ACCESS), Ok(with_user(6, 1001, 6, 0, 6, 0)));
    assert_eq!(fs.state.getattr(f).expect("attr").ctime, fs.last());
    assert!(may(&fs, f, 4 | 2, &bob()));
    assert!(!may(&fs, f, 1, &bob()));
    // Carol is in alice's group, whose entry grants nothing.
    assert!(!may(&fs, f, 4, &carol()));
    // chmod g-w: the mask loses w, the named entry keeps it but it no
    // longer counts.
    fs.chmod(f, 0o640, &alice());
    assert_eq!(get(&fs, f, ACCESS), Ok(with_user(6, 1001, 6, 0, 4, 0)));
    assert!(may(&fs, f, 4, &bob()));
    assert!(!may(&fs, f, 2, &bob()));
    // chmod 0: nothing for bob, and the check takes the mode's shortcut.
    fs.chmod(f, 0o600, &alice());
    assert!(!may(&fs, f, 4, &bob()));
    // The owner follows the owner bits, not a named entry for the owner.
    assert_eq!(
        set(
            &mut fs,
            f,
            ACCESS,
            &with_user(0, 1000, 7, 0, 7, 0),
            &alice()
        ),
        Ok(())
    );
    assert_eq!(mode(&fs, f), 0o070);
    assert!(!may(&fs, f, 4, &alice()));
    assert!(may(&fs, f, 4, &root()));
}

#[test]
fn named_groups_and_the_mask() {
    let (mut fs, f) = setup(0o600);
    // group:101 (bob's) r-x, mask r--.
    let value = acl(&[
        (USER_OBJ, 6, NOBODY),
        (GROUP_OBJ, 0, NOBODY),
        (GROUP, 5, 101),
        (MASK, 4, NOBODY),
        (OTHER, 0, NOBODY),
    ]);
    assert_eq!(set(&mut fs, f, ACCESS, &value, &alice()), Ok(()));
    assert_eq!(mode(&fs, f), 0o640);
    assert!(may(&fs, f, 4, &bob()));
    assert!(!may(&fs, f, 1, &bob()), "masked out");
    assert!(
        !may(&fs, f, 4, &carol()),
        "owning group entry grants nothing"
    );
    let dave = Creds::user(1003, 103);
    assert!(!may(&fs, f, 4, &dave), "other grants nothing");
}

#[test]
fn an_acl_that_is_only_a_mode_sets_the_mode() {
    let (mut fs, f) = setup(0o600);
    let minimal = acl(&[
        (USER_OBJ, 7, NOBODY),
        (GROUP_OBJ, 5, NOBODY),
        (OTHER, 4, NOBODY),
    ]);
    assert_eq!(set(&mut fs, f, ACCESS, &minimal, &alice()), Ok(()));
    assert_eq!(mode(&fs, f), 0o754);
    assert_eq!(get(&fs, f, ACCESS), Err(ENODATA), "no ACL stored");
    assert!(fs.state.listxattr(f, &alice()).expect("list").is_empty());
    // Replacing an extended ACL by a minimal one drops it.
    assert_eq!(
        set(
            &mut fs,
            f,
            ACCESS,
            &with_user(6, 1001, 6, 4, 6, 0),
            &alice()
        ),
        Ok(())
    );
    assert_eq!(fs.state.listxattr(f, &alice()).expect("list"), vec![ACCESS]);
    assert_eq!(set(&mut fs, f, ACCESS, &minimal, &alice()), Ok(()));
    assert_eq!(get(&fs, f, ACCESS), Err(ENODATA));
    // A header alone removes the ACL and leaves the mode.
    assert_eq!(
        set(
            &mut fs,
            f,
            ACCESS,
            &with_user(6, 1001, 6, 4, 6, 0),
            &alice()
        ),
        Ok(())
    );
    assert_eq!(set(&mut fs, f, ACCESS, &acl(&[]), &alice()), Ok(()));
    assert_eq!(get(&fs, f, ACCESS), Err(ENODATA));
    assert_eq!(mode(&fs, f), 0o660);
}

#[test]
fn removing_the_access_acl_leaves_the_mode() {
    let (mut fs, f) = setup(0o600);
    assert_eq!(
        set(
            &mut fs,
            f,
            ACCESS,
            &with_user(6, 1001, 6, 4, 6, 0),
            &alice()
        ),
        Ok(())
    );
    assert_eq!(remove(&mut fs, f, ACCESS, &bob()), Err(EPERM));
    assert_eq!(remove(&mut fs, f, ACCESS, &alice()), Ok(()));
    assert_eq!(mode(&fs, f), 0o660);
    assert_eq!(get(&fs, f, ACCESS), Err(ENODATA));
    // The mode's group class decides again: bob is other.
    assert!(!may(&fs, f, 4, &bob()));
    // Removing what is not there succeeds, as on ext4 and xfs.
    assert_eq!(remove(&mut fs, f, ACCESS, &alice()), Ok(()));
    assert_eq!(remove(&mut fs, f, DEFAULT, &alice()), Ok(()));
}

#[test]
fn who_may_set_acls_and_what_is_refused() {
    let (mut fs, f) = setup(0o666);
    let value = with_user(6, 1001, 6, 4, 6, 0);
    // Anyone may read ACLs; only the owner or root may set them.
    assert_eq!(set(&mut fs, f, ACCESS, &value, &bob()), Err(EPERM));
    assert_eq!(set(&mut fs, f, ACCESS, &value, &root()), Ok(()));
    assert_eq!(get(&fs, f, ACCESS), Ok(value.clone()));
    // Malformed values: EINVAL; another version: EOPNOTSUPP (Linux).
    let mut torn = value.clone();
    torn.pop();
    assert_eq!(set(&mut fs, f, ACCESS, &torn, &alice()), Err(EINVAL));
    assert_eq!(set(&mut fs, f, ACCESS, b"", &alice()), Err(EINVAL));
    let no_mask = acl(&[
        (USER_OBJ, 6, NOBODY),
        (USER, 6, 1001),
        (GROUP_OBJ, 4, NOBODY),
        (OTHER, 0, NOBODY),
    ]);
    assert_eq!(set(&mut fs, f, ACCESS, &no_mask, &alice()), Err(EINVAL));
    let bad_perm = with_user(6, 1001, 8, 4, 6, 0);
    assert_eq!(set(&mut fs, f, ACCESS, &bad_perm, &alice()), Err(EINVAL));
    let mut v1 = value.clone();
    v1[0] = 1;
    assert_eq!(set(&mut fs, f, ACCESS, &v1, &alice()), Err(EOPNOTSUPP));
    // A default ACL on a file: EACCES to set, nothing to read or remove.
    assert_eq!(set(&mut fs, f, DEFAULT, &value, &alice()), Err(EACCES));
    assert_eq!(get(&fs, f, DEFAULT), Err(ENODATA));
    assert_eq!(set(&mut fs, f, DEFAULT, &acl(&[]), &alice()), Ok(()));
    // Symlinks have none; other system. names are not supported.
    let now = fs.now();
    let link = ino_of(&fs.ok(Command::Symlink {
        parent: ROOT_INO,
        name: b"l".to_vec(),
        target: b"f".to_vec(),
        creds: alice(),
        now,
    }));
    assert_eq!(
        set(&mut fs, link, ACCESS, &value, &alice()),
        Err(EOPNOTSUPP)
    );
    assert_eq!(get(&fs, link, ACCESS), Err(EOPNOTSUPP));
    assert_eq!(
        set(&mut fs, f, b"system.other", b"1", &root()),
        Err(EOPNOTSUPP)
    );
}

#[test]
fn setting_an_access_acl_clears_setgid_outside_the_group() {
    let (mut fs, f) = setup(0o2770);
    let value = with_user(7, 1001, 7, 7, 7, 0);
    // alice is in the file's group (100): setgid stays.
    assert_eq!(set(&mut fs, f, ACCESS, &value, &alice()), Ok(()));
    assert_eq!(mode(&fs, f), 0o2770);
    // Given to a group alice is not in, her next ACL change clears it;
    // root's would not.
    let chown = fs_setattr_gid(&mut fs, f, 555);
    fs.ok(chown);
    fs.chmod(f, 0o2770, &root());
    assert_eq!(set(&mut fs, f, ACCESS, &value, &root()), Ok(()));
    assert_eq!(mode(&fs, f), 0o2770);
    assert_eq!(set(&mut fs, f, ACCESS, &value, &alice()), Ok(()));
    assert_eq!(mode(&fs, f), 0o770);
}

fn fs_setattr_gid(fs: &mut Fs, ino: Ino, gid: u32) -> Command {
    fs.setattr_cmd(
        ino,
        AttrChanges {
            gid: Some(gid),
            ..AttrChanges::default()
        },
        &root(),
    )
}

/// A directory of alice's with default ACL `user::rwx, user:bob:rwx,
/// group::r-x, mask::rwx, other::r-x`.
fn dir_with_default(fs: &mut Fs) -> (Ino, Vec<u8>) {
    let d = fs.mkdir(ROOT_INO, "d", 0o755, &alice());
    let default = with_user(7, 1001, 7, 5, 7, 5);
    assert_eq!(set(fs, d, DEFAULT, &default, &alice()), Ok(()));
    assert_eq!(get(fs, d, DEFAULT), Ok(default.clone()));
    assert_eq!(mode(fs, d), 0o755, "a default ACL leaves the mode");
    (d, default)
}

fn create(fs: &mut Fs, parent: Ino, name: &str, mode: CreateMode) -> Ino {
    let now = fs.now();
    let outcome = fs.ok(Command::Create {
        parent,
        name: name.into(),
        mode,
        exclusive: true,
        session: S1,
        flags: OpenFlags::WRITE,
        creds: alice(),
        now,
    });
    ino_of(&outcome)
}

#[test]
fn new_inodes_inherit_the_default_acl_instead_of_the_umask() {
    let (mut fs, _) = setup(0o600);
    let (d, default) = dir_with_default(&mut fs);
    // creat(0666) with umask 077: the umask is not applied; the inherited
    // ACL is masked by the mode asked for.
    let f = create(&mut fs, d, "f", CreateMode::with_umask(0o666, 0o077));
    assert_eq!(mode(&fs, f), 0o664);
    assert_eq!(get(&fs, f, ACCESS), Ok(with_user(6, 1001, 7, 5, 6, 4)));
    assert_eq!(
        get(&fs, f, DEFAULT),
        Err(ENODATA),
        "files get no default ACL"
    );
    assert!(may(&fs, f, 4 | 2, &bob()));
    assert!(!may(&fs, f, 1, &bob()), "masked by the mode");
    // mkdir(0777): a directory gets both, the default as it was.
    let now = fs.now();
    let sub = ino_of(&fs.ok(Command::Mkdir {
        parent: d,
        name: b"sub".to_vec(),
        mode: CreateMode::with_umask(0o777, 0o077),
        creds: alice(),
        now,
    }));
    assert_eq!(mode(&fs, sub), 0o775);
    assert_eq!(get(&fs, sub, ACCESS), Ok(default.clone()));
    assert_eq!(get(&fs, sub, DEFAULT), Ok(default.clone()));
    // ...and passes it on.
    let deep = create(&mut fs, sub, "deep", CreateMode::with_umask(0o600, 0o022));
    assert_eq!(mode(&fs, deep), 0o600);
    assert_eq!(get(&fs, deep, ACCESS), Ok(with_user(6, 1001, 7, 5, 0, 0)));
    assert!(!may(&fs, deep, 4, &bob()), "a mode of 0600 masks bob out");
    // mknod (a fifo) inherits like a file.
    let now = fs.now();
    let fifo = ino_of(&fs.ok(Command::Mknod {
        parent: d,
        name: b"p".to_vec(),
        kind: FileKind::Fifo,
        mode: CreateMode::with_umask(0o644, 0o077),
        rdev: 0,
        creds: alice(),
        now,
    }));
    assert_eq!(mode(&fs, fifo), 0o644);
    assert_eq!(get(&fs, fifo, ACCESS), Ok(with_user(6, 1001, 7, 5, 4, 4)));
}

#[test]
fn without_a_default_acl_the_umask_applies() {
    let (mut fs, _) = setup(0o600);
    let d = fs.mkdir(ROOT_INO, "plain", 0o777, &alice());
    let f = create(&mut fs, d, "f", CreateMode::with_umask(0o666, 0o027));
    assert_eq!(mode(&fs, f), 0o640);
    assert_eq!(get(&fs, f, ACCESS), Err(ENODATA));
    // A minimal default ACL: inherited as a mode only (no access ACL).
    let minimal = acl(&[
        (USER_OBJ, 7, NOBODY),
        (GROUP_OBJ, 5, NOBODY),
        (OTHER, 0, NOBODY),
    ]);
    assert_eq!(set(&mut fs, d, DEFAULT, &minimal, &alice()), Ok(()));
    let g = create(&mut fs, d, "g", CreateMode::with_umask(0o666, 0o022));
    assert_eq!(mode(&fs, g), 0o640);
    assert_eq!(get(&fs, g, ACCESS), Err(ENODATA));
}

#[test]
fn a_masked_mode_inherits_nothing() {
    // A mount without ACLs applies the umask itself and asks for no
    // inheritance.
    let (mut fs, _) = setup(0o600);
    let (d, _) = dir_with_default(&mut fs);
    let f = create(&mut fs, d, "f", CreateMode::masked(0o640));
    assert_eq!(mode(&fs, f), 0o640);
    assert_eq!(get(&fs, f, ACCESS), Err(ENODATA));
    assert!(!may(&fs, f, 4, &bob()));
}

#[test]
fn acls_survive_a_snapshot() {
    let (mut fs, f) = setup(0o600);
    let (d, default) = dir_with_default(&mut fs);
    assert_eq!(
        set(
            &mut fs,
            f,
            ACCESS,
            &with_user(6, 1001, 6, 0, 6, 0),
            &alice()
        ),
        Ok(())
    );
    let restored = MetaState::restore(&fs.state.snapshot()).expect("restore");
    assert_eq!(restored, fs.state);
    assert_eq!(
        restored.getxattr(d, DEFAULT, &bob()),
        Ok(default.as_slice())
    );
    assert!(restored.access(f, 6, &bob()).is_ok());
}
