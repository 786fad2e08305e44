//! Directory quotas: projects, charges, moves between projects, snapshots.

use super::*;
use crate::meta::{XattrFlags, QUOTA_XATTR, ROOT_INO};

use libc::{EINVAL, ENOTEMPTY, EPERM, EXDEV};

fn set_quota(fs: &mut Fs, dir: Ino, value: &[u8], creds: &Creds) -> Result<(), i32> {
    let now = fs.now();
    fs.apply(Command::SetXattr {
        ino: dir,
        name: QUOTA_XATTR.to_vec(),
        value: value.to_vec(),
        flags: XattrFlags::default(),
        creds: creds.clone(),
        now,
    })
    .map(|_| ())
    .map_err(|e| e.errno())
}

fn remove_quota(fs: &mut Fs, dir: Ino) -> Result<(), i32> {
    let now = fs.now();
    fs.apply(Command::RemoveXattr {
        ino: dir,
        name: QUOTA_XATTR.to_vec(),
        creds: root(),
        now,
    })
    .map(|_| ())
    .map_err(|e| e.errno())
}

/// A volume directory `/vol` of `limit` bytes, and a plain directory `/plain`.
fn setup(limit: u64) -> (Fs, Ino, Ino) {
    let mut fs = Fs::new();
    let vol = fs.mkdir(ROOT_INO, "vol", 0o777, &root());
    let plain = fs.mkdir(ROOT_INO, "plain", 0o777, &root());
    set_quota(&mut fs, vol, limit.to_string().as_bytes(), &root()).expect("quota");
    (fs, vol, plain)
}

fn used(fs: &Fs, ino: Ino) -> u64 {
    fs.state.quota(ino).expect("in a project").used_bytes
}

#[test]
fn a_quota_root_counts_what_its_tree_holds() {
    let (mut fs, vol, plain) = setup(10 * u64::from(BLOCK_BYTES));
    let q = fs.state.quota(vol).expect("vol is a project");
    assert_eq!(
        (q.root, q.limit_bytes, q.used_bytes, q.inodes),
        (vol, 40960, 0, 1)
    );
    assert_eq!(fs.state.quota(plain), None);
    assert_eq!(fs.state.quota(ROOT_INO), None);

    let sub = fs.mkdir(vol, "sub", 0o777, &alice());
    let f = fs.file(sub, "f", 0o644, &alice());
    let q = fs.state.quota(f).expect("f is in vol's project");
    assert_eq!((q.root, q.inodes), (vol, 3));
    fs.set_blocks(
        f,
        &[(0, 1), (1, 1), (2, 1)],
        3 * u64::from(BLOCK_BYTES),
        &alice(),
    );
    assert_eq!(used(&fs, vol), 3 * u64::from(BLOCK_BYTES));
    // Files outside count against no project.
    let g = fs.file(plain, "g", 0o644, &alice());
    fs.set_blocks(g, &[(0, 1)], 10, &alice());
    assert_eq!(used(&fs, vol), 3 * u64::from(BLOCK_BYTES));

    // statfs from inside shows the limit and the use, in 4 KiB blocks.
    let st = fs.state.statfs_at(f).expect("statfs");
    assert_eq!(
        (st.block_size, st.blocks_total, st.blocks_free),
        (4096, 10, 7)
    );
    assert_eq!(st.files_total - st.files_free, 3, "vol, sub and f");
    let whole = fs.state.statfs_at(plain).expect("statfs");
    assert_eq!(whole, fs.state.statfs().expect("statfs"));

    // Truncation and punched holes give bytes back; a rewrite costs nothing.
    fs.set_blocks(f, &[(0, 2)], 10, &alice());
    assert_eq!(used(&fs, vol), 3 * u64::from(BLOCK_BYTES));
    let cmd = fs.setattr_cmd(
        f,
        AttrChanges {
            size: Some(2 * u64::from(BLOCK_BYTES)),
            ..AttrChanges::default()
        },
        &alice(),
    );
    fs.ok(cmd);
    assert_eq!(used(&fs, vol), 2 * u64::from(BLOCK_BYTES));
    let now = fs.now();
    fs.ok(Command::RemoveBlocks {
        ino: f,
        first: 0,
        last: 0,
        creds: alice(),
        now,
    });
    assert_eq!(used(&fs, vol), u64::from(BLOCK_BYTES));

    // Unlink frees the file's charge and its inode.
    let cmd = fs.unlink_cmd(sub, "f", &alice());
    fs.ok(cmd);
    let q = fs.state.quota(vol).expect("project");
    assert_eq!((q.used_bytes, q.inodes), (0, 2));
}

#[test]
fn only_root_makes_an_empty_directory_a_project() {
    let mut fs = Fs::new();
    fs.chmod(ROOT_INO, 0o777, &root());
    let full = fs.mkdir(ROOT_INO, "d", 0o777, &alice());
    assert_eq!(set_quota(&mut fs, full, b"4096", &alice()), Err(EPERM));
    for bad in [
        &b""[..],
        b"-1",
        b"1e9",
        b" 5",
        b"99999999999999999999999",
        b"18446744073709551616",
    ] {
        assert_eq!(
            set_quota(&mut fs, full, bad, &root()),
            Err(EINVAL),
            "{bad:?}"
        );
    }
    let file = fs.file(ROOT_INO, "f", 0o644, &alice());
    assert_eq!(set_quota(&mut fs, file, b"4096", &root()), Err(EINVAL));
    fs.file(full, "x", 0o644, &alice());
    assert_eq!(set_quota(&mut fs, full, b"4096", &root()), Err(ENOTEMPTY));
    let empty = fs.mkdir(ROOT_INO, "e", 0o777, &alice());
    set_quota(&mut fs, empty, b"4096\n", &root()).expect("echo's newline is accepted");
    assert_eq!(fs.state.quota(empty).map(|q| q.limit_bytes), Some(4096));
    // A root's limit changes whatever it holds, below its use too.
    let g = fs.file(empty, "g", 0o644, &alice());
    fs.set_blocks(g, &[(0, 1)], 4096, &alice());
    set_quota(&mut fs, empty, b"1", &root()).expect("a smaller limit");
    let q = fs.state.quota(empty).expect("project");
    assert_eq!((q.limit_bytes, q.used_bytes), (1, 4096));
    assert_eq!(fs.state.statfs_at(g).expect("statfs").blocks_free, 0);
}

#[test]
fn nothing_but_a_root_moves_between_projects() {
    let (mut fs, vol, plain) = setup(1 << 20);
    let other = fs.mkdir(ROOT_INO, "other", 0o777, &root());
    set_quota(&mut fs, other, b"1048576", &root()).expect("quota");
    let f = fs.file(vol, "f", 0o644, &alice());
    let d = fs.mkdir(vol, "d", 0o777, &alice());
    let p = fs.file(plain, "p", 0o644, &alice());

    for (from, to) in [
        ((vol, "f"), (plain, "f")),
        ((vol, "f"), (other, "f")),
        ((vol, "d"), (ROOT_INO, "d")),
        ((plain, "p"), (vol, "p")),
    ] {
        let cmd = fs.rename_cmd(from, to, RenameFlags::default(), &root());
        assert_eq!(fs.errno(cmd), EXDEV, "{from:?} -> {to:?}");
    }
    let cmd = fs.rename_cmd(
        (vol, "f"),
        (plain, "p"),
        RenameFlags {
            exchange: true,
            ..RenameFlags::default()
        },
        &alice(),
    );
    assert_eq!(fs.errno(cmd), EXDEV);
    let now = fs.now();
    let cmd = Command::Link {
        ino: f,
        new_parent: plain,
        new_name: b"l".to_vec(),
        creds: alice(),
        now,
    };
    assert_eq!(fs.errno(cmd), EXDEV);
    let now = fs.now();
    let cmd = Command::Link {
        ino: p,
        new_parent: vol,
        new_name: b"l".to_vec(),
        creds: alice(),
        now,
    };
    assert_eq!(fs.errno(cmd), EXDEV);

    // Within a project anything goes.
    let cmd = fs.rename_cmd((vol, "f"), (d, "f"), RenameFlags::default(), &alice());
    fs.ok(cmd);
    let now = fs.now();
    fs.ok(Command::Link {
        ino: f,
        new_parent: vol,
        new_name: b"l".to_vec(),
        creds: alice(),
        now,
    });
    // A root moves with its tree, which stays charged to it.
    fs.set_blocks(f, &[(0, 1)], 100, &alice());
    let cmd = fs.rename_cmd(
        (ROOT_INO, "vol"),
        (plain, "vol"),
        RenameFlags::default(),
        &root(),
    );
    fs.ok(cmd);
    let q = fs.state.quota(f).expect("project");
    assert_eq!((q.root, q.used_bytes, q.inodes), (vol, 4096, 3));
}

#[test]
fn a_quota_inside_a_project_is_a_project_of_its_own() {
    let (mut fs, vol, _) = setup(1 << 20);
    let inner = fs.mkdir(vol, "inner", 0o777, &root());
    assert_eq!(fs.state.quota(vol).map(|q| q.inodes), Some(2));
    set_quota(&mut fs, inner, b"8192", &root()).expect("nested quota");
    assert_eq!(fs.state.quota(vol).map(|q| q.inodes), Some(1));
    let f = fs.file(inner, "f", 0o644, &alice());
    fs.set_blocks(f, &[(0, 1)], 4096, &alice());
    assert_eq!(used(&fs, inner), 4096);
    assert_eq!(used(&fs, vol), 0);
    // The inner root moves freely; its files do not.
    let cmd = fs.rename_cmd((inner, "f"), (vol, "f"), RenameFlags::default(), &root());
    assert_eq!(fs.errno(cmd), EXDEV);
    // Removing the quota of a non-empty root is refused; of an empty
    // one, the directory joins the project around it.
    assert_eq!(remove_quota(&mut fs, inner), Err(ENOTEMPTY));
    let cmd = fs.unlink_cmd(inner, "f", &root());
    fs.ok(cmd);
    remove_quota(&mut fs, inner).expect("remove");
    assert_eq!(fs.state.quota(inner).map(|q| q.root), Some(vol));
    assert_eq!(fs.state.quota(vol).map(|q| q.inodes), Some(2));
}

#[test]
fn an_open_unlinked_file_stays_charged_until_freed() {
    let (mut fs, vol, _) = setup(1 << 20);
    let f = fs.file(vol, "f", 0o644, &alice());
    fs.set_blocks(f, &[(0, 1)], 4096, &alice());
    fs.open(S1, f, OpenFlags::default());
    let cmd = fs.unlink_cmd(vol, "f", &alice());
    fs.ok(cmd);
    assert_eq!(used(&fs, vol), 4096);
    // The root goes before the file: the file is in no limited project.
    let cmd = fs.rmdir_cmd(ROOT_INO, "vol", &root());
    fs.ok(cmd);
    assert_eq!(fs.state.quota(f), None);
    assert_eq!(
        fs.state.statfs_at(f).expect("statfs"),
        fs.state.statfs().expect("statfs")
    );
    let restored = MetaState::restore(&fs.state.snapshot()).expect("restore");
    assert!(
        restored == fs.state,
        "an orphaned project survives a snapshot"
    );
    fs.release(S1, f);
    assert!(fs.state.projects.is_empty());
}

#[test]
fn projects_survive_a_snapshot() {
    let (mut fs, vol, _) = setup(1 << 20);
    let d = fs.mkdir(vol, "d", 0o777, &alice());
    let f = fs.file(d, "f", 0o644, &alice());
    fs.set_blocks(f, &[(0, 1), (2, 1)], 9000, &alice());
    let restored = MetaState::restore(&fs.state.snapshot()).expect("restore");
    assert!(restored == fs.state);
    assert_eq!(restored.quota(f), fs.state.quota(f));
    assert_eq!(restored.quota(f).map(|q| q.used_bytes), Some(8192));
}
