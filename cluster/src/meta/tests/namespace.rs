//! Directory operations, volume format, readdir, lookup and access.

use super::*;
use crate::meta::{
    Reply, SetTime, DIR_COOKIE_FIRST, LINK_MAX, NAME_MAX_BYTES, ROOT_INO, SYMLINK_MAX_BYTES,
};

use libc::{
    EACCES, EBADF, EEXIST, EINVAL, EIO, EISDIR, EMLINK, ENAMETOOLONG, ENOENT, ENOSPC, ENOTDIR,
    ENOTEMPTY, EPERM, ESTALE,
};

const NOFLAGS: RenameFlags = RenameFlags {
    noreplace: false,
    exchange: false,
};
const NOREPLACE: RenameFlags = RenameFlags {
    noreplace: true,
    exchange: false,
};
const EXCHANGE: RenameFlags = RenameFlags {
    noreplace: false,
    exchange: true,
};

/// A state with `/pub` (0777, root's) and `/tmp` (sticky 1777, root's).
fn fs() -> (Fs, Ino, Ino) {
    let mut fs = Fs::new();
    let public = fs.mkdir(ROOT_INO, "pub", 0o777, &root());
    let tmp = fs.mkdir(ROOT_INO, "tmp", 0o1777, &root());
    (fs, public, tmp)
}

#[test]
fn format_once_and_nothing_before() {
    let mut state = MetaState::new();
    let mkdir = Command::Mkdir {
        parent: ROOT_INO,
        name: b"a".to_vec(),
        mode: 0o755.into(),
        creds: root(),
        now: Timespec::from_secs(1),
    };
    assert_eq!(state.apply(&mkdir).map_err(|e| e.errno()), Err(EIO));
    assert_eq!(state.getattr(ROOT_INO).map_err(|e| e.errno()), Err(EIO));
    let mut bad = format_cmd(CAPACITY_BYTES, INODES_MAX);
    if let Command::Format { block_size, .. } = &mut bad {
        *block_size = 4097;
    }
    assert_eq!(state.apply(&bad).map_err(|e| e.errno()), Err(EINVAL));
    let outcome = state
        .apply(&format_cmd(CAPACITY_BYTES, INODES_MAX))
        .expect("format");
    let attr = outcome.attr().expect("root attr").clone();
    assert_eq!(
        (attr.ino, attr.kind, attr.mode, attr.uid, attr.gid, attr.nlink),
        (ROOT_INO, FileKind::Dir, 0o755, 0, 0, 2)
    );
    assert_eq!(
        state
            .apply(&format_cmd(CAPACITY_BYTES, INODES_MAX))
            .map_err(|e| e.errno()),
        Err(EEXIST)
    );
    state.check_invariants();
    assert_eq!(state.volume().map(|v| v.uuid), Some([7; 16]));
}

#[test]
fn mkdir_rules() {
    let (mut fs, public, _) = fs();
    let check = |fs: &mut Fs, parent: Ino, name: &str, creds: &Creds, errno: i32| {
        let cmd = fs.mkdir_cmd(parent, name, 0o755, creds);
        assert_eq!(fs.errno(cmd), errno, "mkdir {name}");
    };
    let d = fs.mkdir(public, "d", 0o755, &alice());
    let attr = fs.state.getattr(d).expect("attr");
    assert_eq!(
        (attr.nlink, attr.uid, attr.gid, attr.mode),
        (2, 1000, 100, 0o755)
    );
    assert_eq!(fs.state.getattr(public).expect("attr").nlink, 3);
    assert_eq!(fs.state.getattr(public).expect("attr").mtime, fs.last());
    check(&mut fs, public, "d", &alice(), EEXIST);
    check(&mut fs, d, "x", &bob(), EACCES); // no write on d
    fs.chmod(d, 0o766, &alice());
    check(&mut fs, d, "x", &bob(), EACCES); // write but no search
    check(&mut fs, public, "", &alice(), EINVAL);
    check(&mut fs, public, "a/b", &alice(), EINVAL);
    check(&mut fs, public, "..", &alice(), EINVAL);
    check(
        &mut fs,
        public,
        &"n".repeat(NAME_MAX_BYTES + 1),
        &alice(),
        ENAMETOOLONG,
    );
    fs.mkdir(public, &"n".repeat(NAME_MAX_BYTES), 0o755, &alice());
    let f = fs.file(public, "f", 0o644, &alice());
    check(&mut fs, f, "x", &alice(), ENOTDIR);
    check(&mut fs, Ino(999), "x", &alice(), ESTALE);
    // mode keeps rwx and sticky only; setuid/setgid do not come from mkdir
    let m = fs.mkdir(public, "m", 0o7777, &alice());
    assert_eq!(fs.state.getattr(m).expect("attr").mode, 0o1777);
}

#[test]
fn setgid_directories_propagate() {
    let (mut fs, public, _) = fs();
    let shared = fs.mkdir(public, "shared", 0o777, &alice());
    fs.chmod(shared, 0o2777, &alice());
    let sub = fs.mkdir(shared, "sub", 0o755, &bob());
    let attr = fs.state.getattr(sub).expect("attr");
    assert_eq!(
        (attr.gid, attr.mode),
        (100, 0o2755),
        "group and setgid inherited"
    );
    let f = fs.file(shared, "f", 0o2755, &bob());
    let attr = fs.state.getattr(f).expect("attr");
    assert_eq!(
        (attr.gid, attr.mode),
        (100, 0o755),
        "bob is not in group 100: setgid stripped"
    );
    let g = fs.file(shared, "g", 0o2755, &carol());
    assert_eq!(
        fs.state.getattr(g).expect("attr").mode,
        0o2755,
        "carol is in group 100"
    );
    let h = fs.file(public, "h", 0o2755, &bob());
    assert_eq!(
        fs.state.getattr(h).expect("attr").mode,
        0o2755,
        "no setgid parent: kept"
    );
}

#[test]
fn mknod_kinds() {
    let (mut fs, public, _) = fs();
    let cmd = fs.mknod_cmd(public, "dev", FileKind::CharDev, 0o600, &alice());
    assert_eq!(fs.errno(cmd), EPERM);
    let cmd = fs.mknod_cmd(public, "dir", FileKind::Dir, 0o600, &alice());
    assert_eq!(fs.errno(cmd), EPERM);
    let cmd = fs.mknod_cmd(public, "lnk", FileKind::Symlink, 0o600, &alice());
    assert_eq!(fs.errno(cmd), EINVAL);
    let now = fs.now();
    let dev = ino_of(&fs.ok(Command::Mknod {
        parent: public,
        name: b"dev".to_vec(),
        kind: FileKind::BlockDev,
        mode: 0o660.into(),
        rdev: 0x0801,
        creds: root(),
        now,
    }));
    let attr = fs.state.getattr(dev).expect("attr");
    assert_eq!(
        (attr.kind, attr.rdev, attr.st_mode()),
        (FileKind::BlockDev, 0x0801, libc::S_IFBLK | 0o660)
    );
    for (name, kind) in [("fifo", FileKind::Fifo), ("sock", FileKind::Socket)] {
        let cmd = fs.mknod_cmd(public, name, kind, 0o644, &alice());
        let attr = fs.ok(cmd).attr().cloned().expect("attr");
        assert_eq!((attr.kind, attr.nlink, attr.rdev), (kind, 1, 0));
    }
}

#[test]
fn inode_limit() {
    let mut fs = Fs::with_limits(CAPACITY_BYTES, 3);
    fs.mkdir(ROOT_INO, "a", 0o755, &root());
    fs.file(ROOT_INO, "b", 0o644, &root());
    let cmd = fs.mkdir_cmd(ROOT_INO, "c", 0o755, &root());
    assert_eq!(fs.errno(cmd), ENOSPC);
    assert_eq!(fs.state.statfs().expect("statfs").files_free, 0);
    let cmd = fs.unlink_cmd(ROOT_INO, "b", &root());
    fs.ok(cmd);
    fs.mkdir(ROOT_INO, "c", 0o755, &root());
}

#[test]
fn create_opens() {
    let (mut fs, public, _) = fs();
    let create = |fs: &mut Fs, exclusive: bool, flags: OpenFlags, creds: &Creds| {
        let now = fs.now();
        fs.apply(Command::Create {
            parent: public,
            name: b"f".to_vec(),
            mode: 0o444.into(),
            exclusive,
            session: S1,
            flags,
            creds: creds.clone(),
            now,
        })
    };
    // A new file opens for writing whatever its mode.
    let out = create(&mut fs, true, OpenFlags::WRITE, &alice()).expect("create");
    let Reply::Created {
        attr,
        created: true,
    } = &out.reply
    else {
        panic!("{out:?}")
    };
    assert_eq!(fs.state.open_handles(S1, attr.ino), 1);
    assert_eq!(
        create(&mut fs, true, OpenFlags::READ, &alice()).map_err(|e| e.errno()),
        Err(EEXIST)
    );
    // Existing: opened with a permission check.
    assert_eq!(
        create(&mut fs, false, OpenFlags::WRITE, &alice()).map_err(|e| e.errno()),
        Err(EACCES)
    );
    let out = create(&mut fs, false, OpenFlags::READ, &bob()).expect("open existing");
    assert!(matches!(out.reply, Reply::Created { created: false, .. }));
    assert_eq!(fs.state.open_handles(S1, attr.ino), 2);
    let now = fs.now();
    let unknown = Command::Create {
        parent: public,
        name: b"g".to_vec(),
        mode: 0o644.into(),
        exclusive: true,
        session: SessionId(9),
        flags: OpenFlags::READ,
        creds: alice(),
        now,
    };
    assert_eq!(fs.errno(unknown), EBADF);
    fs.mkdir(public, "d", 0o777, &alice());
    let now = fs.now();
    let on_dir = Command::Create {
        parent: public,
        name: b"d".to_vec(),
        mode: 0o644.into(),
        exclusive: false,
        session: S1,
        flags: OpenFlags::READ,
        creds: alice(),
        now,
    };
    assert_eq!(fs.errno(on_dir), EISDIR);
}

#[test]
fn symlinks() {
    let (mut fs, public, _) = fs();
    let check = |fs: &mut Fs, name: &str, target: Vec<u8>| {
        let now = fs.now();
        fs.apply(Command::Symlink {
            parent: public,
            name: name.into(),
            target,
            creds: alice(),
            now,
        })
        .map(|o| ino_of(&o))
        .map_err(|e| e.errno())
    };
    let l = check(&mut fs, "l", b"../some/where".to_vec()).expect("symlink");
    assert_eq!(fs.state.readlink(l).expect("readlink"), b"../some/where");
    let attr = fs.state.getattr(l).expect("attr");
    assert_eq!(
        (attr.size, attr.mode, attr.kind),
        (13, 0o777, FileKind::Symlink)
    );
    assert!(check(&mut fs, "max", vec![b'x'; SYMLINK_MAX_BYTES]).is_ok());
    assert_eq!(
        check(&mut fs, "long", vec![b'x'; SYMLINK_MAX_BYTES + 1]),
        Err(ENAMETOOLONG)
    );
    assert_eq!(check(&mut fs, "empty", Vec::new()), Err(ENOENT));
    assert_eq!(check(&mut fs, "l", b"x".to_vec()), Err(EEXIST));
    assert_eq!(
        fs.state.readlink(public).map_err(|e| e.errno()),
        Err(EINVAL)
    );
    // A symlink is not opened (O_NOFOLLOW semantics).
    let open = Command::Open {
        session: S1,
        ino: l,
        flags: OpenFlags::READ,
        creds: alice(),
    };
    assert_eq!(fs.errno(open), libc::ELOOP);
}

#[test]
fn hard_links() {
    let (mut fs, public, _) = fs();
    let f = fs.file(public, "f", 0o644, &alice());
    let d = fs.mkdir(public, "d", 0o755, &alice());
    let link = |fs: &mut Fs, ino: Ino, name: &str, creds: &Creds| {
        let now = fs.now();
        fs.apply(Command::Link {
            ino,
            new_parent: public,
            new_name: name.into(),
            creds: creds.clone(),
            now,
        })
        .map(|o| o.attr().cloned().expect("attr"))
        .map_err(|e| e.errno())
    };
    let attr = link(&mut fs, f, "g", &bob()).expect("link");
    assert_eq!((attr.nlink, attr.ctime), (2, fs.last()));
    assert_eq!(fs.lookup(public, "g"), f);
    assert_eq!(link(&mut fs, d, "e", &alice()), Err(EPERM));
    assert_eq!(link(&mut fs, f, "g", &alice()), Err(EEXIST));
    assert_eq!(link(&mut fs, Ino(999), "x", &alice()), Err(ESTALE));
    // An unlinked file that is still open cannot get a name back.
    fs.open(S1, f, OpenFlags::READ);
    for name in ["f", "g"] {
        let cmd = fs.unlink_cmd(public, name, &alice());
        fs.ok(cmd);
    }
    assert_eq!(fs.state.getattr(f).expect("open orphan").nlink, 0);
    assert_eq!(link(&mut fs, f, "back", &alice()), Err(ENOENT));
}

#[test]
fn link_max() {
    let (mut fs, public, _) = fs();
    let f = fs.file(public, "f", 0o644, &root());
    let now = fs.now();
    // Raw apply: the harness's per-command state comparison is too slow for 65k links.
    for i in 1..LINK_MAX {
        fs.state
            .apply(&Command::Link {
                ino: f,
                new_parent: public,
                new_name: format!("l{i}").into_bytes(),
                creds: root(),
                now,
            })
            .expect("link");
    }
    fs.state.check_invariants();
    assert_eq!(fs.state.getattr(f).expect("attr").nlink, LINK_MAX);
    let cmd = Command::Link {
        ino: f,
        new_parent: public,
        new_name: b"one-more".to_vec(),
        creds: root(),
        now,
    };
    assert_eq!(fs.state.apply(&cmd).map_err(|e| e.errno()), Err(EMLINK));
}

#[test]
fn subdirectory_max() {
    let (mut fs, public, _) = fs();
    let now = fs.now();
    for i in 2..LINK_MAX {
        fs.state
            .apply(&Command::Mkdir {
                parent: public,
                name: format!("d{i}").into_bytes(),
                mode: 0o755.into(),
                creds: root(),
                now,
            })
            .expect("mkdir");
    }
    assert_eq!(fs.state.getattr(public).expect("attr").nlink, LINK_MAX);
    let cmd = fs.mkdir_cmd(public, "over", 0o755, &root());
    assert_eq!(fs.state.apply(&cmd).map_err(|e| e.errno()), Err(EMLINK));
    // Moving a directory in is one more link too.
    let other = fs.mkdir(ROOT_INO, "other", 0o755, &root());
    fs.mkdir(other, "x", 0o755, &root());
    let cmd = fs.rename_cmd((other, "x"), (public, "x"), NOFLAGS, &root());
    assert_eq!(fs.state.apply(&cmd).map_err(|e| e.errno()), Err(EMLINK));
}

#[test]
fn unlink_and_rmdir() {
    let (mut fs, public, tmp) = fs();
    let d = fs.mkdir(public, "d", 0o755, &alice());
    fs.file(d, "f", 0o644, &alice());
    let check = |fs: &mut Fs, cmd: Command, errno: i32| assert_eq!(fs.errno(cmd), errno);
    let cmd = fs.unlink_cmd(public, "d", &alice());
    check(&mut fs, cmd, EISDIR);
    let cmd = fs.rmdir_cmd(public, "d", &alice());
    check(&mut fs, cmd, ENOTEMPTY);
    let cmd = fs.rmdir_cmd(d, "f", &alice());
    check(&mut fs, cmd, ENOTDIR);
    let cmd = fs.unlink_cmd(d, "f", &bob());
    check(&mut fs, cmd, EACCES);
    let cmd = fs.unlink_cmd(d, "nope", &alice());
    check(&mut fs, cmd, ENOENT);
    for name in [".", ".."] {
        let cmd = fs.rmdir_cmd(ROOT_INO, name, &root());
        check(&mut fs, cmd, EINVAL);
    }
    let cmd = fs.unlink_cmd(d, "f", &alice());
    fs.ok(cmd);
    let cmd = fs.rmdir_cmd(public, "d", &alice());
    let out = fs.ok(cmd);
    assert_eq!(out.freed, vec![d]);
    assert_eq!(fs.state.getattr(public).expect("attr").nlink, 2);
    assert_eq!(fs.state.getattr(d).map_err(|e| e.errno()), Err(ESTALE));

    // Sticky: bob cannot remove alice's entry; the directory owner (root) can.
    fs.file(tmp, "a", 0o666, &alice());
    fs.file(tmp, "b", 0o666, &alice());
    let cmd = fs.unlink_cmd(tmp, "a", &bob());
    check(&mut fs, cmd, EPERM);
    let cmd = fs.unlink_cmd(tmp, "a", &alice());
    fs.ok(cmd);
    let cmd = fs.unlink_cmd(tmp, "b", &root());
    fs.ok(cmd);
}

#[test]
fn deferred_delete() {
    let (mut fs, public, _) = fs();
    let f = fs.file(public, "f", 0o644, &alice());
    fs.set_blocks(f, &[(0, 10), (2, 11)], 3 * u64::from(BLOCK_BYTES), &alice());
    fs.open(S1, f, OpenFlags::READ);
    fs.open(S2, f, OpenFlags::READ);
    let cmd = fs.unlink_cmd(public, "f", &alice());
    let out = fs.ok(cmd);
    assert!(out.freed.is_empty() && out.garbage.is_empty());
    assert_eq!(fs.state.getattr(f).expect("still open").nlink, 0);
    assert_eq!(
        fs.state.statfs().expect("statfs").blocks_free,
        CAPACITY_BYTES / 4096 - 2
    );
    assert!(fs.release(S1, f).freed.is_empty());
    let out = fs.release(S2, f);
    assert_eq!(out.freed, vec![f]);
    let garbage: Vec<(u64, u64)> = out.garbage.iter().map(|b| (b.index, b.version)).collect();
    assert_eq!(garbage, vec![(0, 10), (2, 11)]);
    assert!(out.garbage.iter().all(|b| b.ino == f));
    assert_eq!(
        fs.state.statfs().expect("statfs").blocks_free,
        CAPACITY_BYTES / 4096
    );
}

#[test]
fn removed_directory_stays_while_open() {
    let (mut fs, public, _) = fs();
    let d = fs.mkdir(public, "d", 0o777, &alice());
    fs.open(S1, d, OpenFlags::READ);
    let cmd = fs.rmdir_cmd(public, "d", &alice());
    assert!(fs.ok(cmd).freed.is_empty());
    assert_eq!(fs.state.getattr(d).expect("open").nlink, 0);
    assert_eq!(fs.state.parent(d).expect("parent"), d);
    let cmd = fs.mkdir_cmd(d, "x", 0o755, &alice());
    assert_eq!(fs.errno(cmd), ENOENT, "no entries in a removed directory");
    let cmd = fs.rename_cmd((ROOT_INO, "pub"), (d, "x"), NOFLAGS, &root());
    assert_eq!(fs.errno(cmd), ENOENT);
    assert_eq!(fs.release(S1, d).freed, vec![d]);
}

#[test]
fn rename_files() {
    let (mut fs, public, _) = fs();
    let a = fs.file(public, "a", 0o644, &alice());
    let b = fs.file(public, "b", 0o644, &alice());
    fs.set_blocks(b, &[(0, 5)], 10, &alice());
    let cmd = fs.rename_cmd((public, "a"), (public, "b"), NOREPLACE, &alice());
    assert_eq!(fs.errno(cmd), EEXIST);
    let cmd = fs.rename_cmd((public, "a"), (public, "b"), NOFLAGS, &alice());
    let out = fs.ok(cmd);
    assert_eq!(out.freed, vec![b], "the replaced file is freed");
    assert_eq!(out.garbage.len(), 1);
    assert_eq!(fs.names(public), vec!["b"]);
    assert_eq!(fs.lookup(public, "b"), a);
    assert_eq!(fs.state.getattr(a).expect("attr").ctime, fs.last());
    assert_eq!(fs.state.getattr(public).expect("attr").mtime, fs.last());
    // Two links to one file: nothing happens.
    let now = fs.now();
    fs.ok(Command::Link {
        ino: a,
        new_parent: public,
        new_name: b"c".to_vec(),
        creds: alice(),
        now,
    });
    let cmd = fs.rename_cmd((public, "b"), (public, "c"), NOFLAGS, &alice());
    assert_eq!(fs.ok(cmd).reply, Reply::Done);
    assert_eq!(fs.names(public), vec!["b", "c"]);
    assert_eq!(fs.state.getattr(a).expect("attr").nlink, 2);
    let cmd = fs.rename_cmd((public, "nope"), (public, "x"), NOFLAGS, &alice());
    assert_eq!(fs.errno(cmd), ENOENT);
    let cmd = fs.rename_cmd((public, "b"), (public, "x"), EXCHANGE, &alice());
    assert_eq!(fs.errno(cmd), ENOENT);
    let both = RenameFlags {
        noreplace: true,
        exchange: true,
    };
    let cmd = fs.rename_cmd((public, "b"), (public, "x"), both, &alice());
    assert_eq!(fs.errno(cmd), EINVAL);
}

#[test]
fn rename_directories() {
    let (mut fs, public, _) = fs();
    let a = fs.mkdir(public, "a", 0o755, &alice());
    let sub = fs.mkdir(a, "sub", 0o755, &alice());
    let b = fs.mkdir(public, "b", 0o755, &alice());
    fs.mkdir(b, "inner", 0o755, &alice());
    let empty = fs.mkdir(public, "empty", 0o755, &alice());
    fs.file(public, "f", 0o644, &alice());
    let check =
        |fs: &mut Fs, from: (Ino, &str), to: (Ino, &str), flags: RenameFlags, errno: i32| {
            let cmd = fs.rename_cmd(from, to, flags, &alice());
            assert_eq!(fs.errno(cmd), errno, "{from:?} -> {to:?}");
        };
    check(&mut fs, (public, "a"), (sub, "x"), NOFLAGS, EINVAL); // into own subtree
    check(&mut fs, (public, "a"), (a, "x"), NOFLAGS, EINVAL);
    check(&mut fs, (a, "sub"), (ROOT_INO, "pub"), NOFLAGS, ENOTEMPTY); // target is an ancestor
    check(&mut fs, (public, "a"), (public, "b"), NOFLAGS, ENOTEMPTY);
    check(&mut fs, (public, "a"), (public, "f"), NOFLAGS, ENOTDIR);
    check(&mut fs, (public, "f"), (public, "empty"), NOFLAGS, EISDIR);
    // Directory over an empty directory, across parents: `..` counts move.
    let cmd = fs.rename_cmd((public, "a"), (b, "inner"), NOFLAGS, &alice());
    let out = fs.ok(cmd);
    assert_eq!(out.freed.len(), 1, "the replaced empty directory is freed");
    assert_eq!(fs.state.parent(a).expect("parent"), b);
    assert_eq!(fs.state.getattr(b).expect("attr").nlink, 3);
    assert_eq!(fs.state.getattr(public).expect("attr").nlink, 4); // b, empty, (a left)
    let cmd = fs.rename_cmd((b, "inner"), (public, "empty"), NOFLAGS, &alice());
    fs.ok(cmd);
    assert_eq!(fs.state.getattr(b).expect("attr").nlink, 2);
    assert_eq!(fs.state.getattr(empty).map_err(|e| e.errno()), Err(ESTALE));
}

#[test]
fn rename_exchange() {
    let (mut fs, public, _) = fs();
    let d1 = fs.mkdir(public, "d1", 0o755, &alice());
    let d2 = fs.mkdir(public, "d2", 0o755, &alice());
    let sub = fs.mkdir(d1, "sub", 0o755, &alice());
    let f = fs.file(d2, "f", 0o644, &alice());
    let cookies = |fs: &Fs, dir: Ino| -> Vec<u64> {
        fs.state
            .readdir(dir, 0, 100, &root())
            .expect("readdir")
            .iter()
            .map(|e| e.cookie)
            .collect()
    };
    let before = (cookies(&fs, d1), cookies(&fs, d2));
    let cmd = fs.rename_cmd((d1, "sub"), (d2, "f"), EXCHANGE, &alice());
    fs.ok(cmd);
    assert_eq!(fs.lookup(d1, "sub"), f);
    assert_eq!(fs.lookup(d2, "f"), sub);
    assert_eq!(fs.state.parent(sub).expect("parent"), d2);
    assert_eq!(fs.state.getattr(d1).expect("attr").nlink, 2);
    assert_eq!(fs.state.getattr(d2).expect("attr").nlink, 3);
    assert_eq!(
        (cookies(&fs, d1), cookies(&fs, d2)),
        before,
        "exchange keeps cookies"
    );
    // A directory cannot trade places with its own ancestor.
    let cmd = fs.rename_cmd((public, "d2"), (d2, "f"), EXCHANGE, &alice());
    assert_eq!(fs.errno(cmd), EINVAL);
    let cmd = fs.rename_cmd((d2, "f"), (public, "d2"), EXCHANGE, &alice());
    assert_eq!(fs.errno(cmd), EINVAL);
}

#[test]
fn rename_permissions() {
    let (mut fs, public, tmp) = fs();
    // Moving a directory to another parent rewrites its `..`: it must be writable.
    let d = fs.mkdir(public, "d", 0o555, &alice());
    let other = fs.mkdir(public, "other", 0o777, &alice());
    let cmd = fs.rename_cmd((public, "d"), (other, "d"), NOFLAGS, &bob());
    assert_eq!(fs.errno(cmd), EACCES);
    let cmd = fs.rename_cmd((public, "d"), (public, "e"), NOFLAGS, &bob());
    fs.ok(cmd); // same parent: `..` unchanged
    let cmd = fs.rename_cmd((public, "e"), (other, "d"), NOFLAGS, &root());
    fs.ok(cmd);
    assert_eq!(fs.state.parent(d).expect("parent"), other);
    // Sticky source and target.
    fs.file(tmp, "alices", 0o666, &alice());
    fs.file(tmp, "bobs", 0o666, &bob());
    let cmd = fs.rename_cmd((tmp, "alices"), (tmp, "mine"), NOFLAGS, &bob());
    assert_eq!(fs.errno(cmd), EPERM);
    let cmd = fs.rename_cmd((tmp, "bobs"), (tmp, "alices"), NOFLAGS, &bob());
    assert_eq!(fs.errno(cmd), EPERM);
    let cmd = fs.rename_cmd((tmp, "bobs"), (tmp, "bobs2"), NOFLAGS, &bob());
    fs.ok(cmd);
    // No write permission on the source directory.
    let ro = fs.mkdir(public, "ro", 0o755, &alice());
    fs.file(ro, "x", 0o644, &alice());
    let cmd = fs.rename_cmd((ro, "x"), (public, "x"), NOFLAGS, &bob());
    assert_eq!(fs.errno(cmd), EACCES);
}

#[test]
fn readdir_cookies_are_stable() {
    let (mut fs, public, _) = fs();
    for name in ["a", "b", "c", "d"] {
        fs.file(public, name, 0o644, &alice());
    }
    let page = fs.state.readdir(public, 0, 2, &root()).expect("readdir");
    let names: Vec<&[u8]> = page.iter().map(|e| e.name.as_slice()).collect();
    assert_eq!(names, [b"a", b"b"]);
    assert_eq!(page[0].cookie, DIR_COOKIE_FIRST);
    // Remove a seen and an unseen entry, add one: the resumed listing
    // neither repeats nor skips survivors.
    let cmd = fs.unlink_cmd(public, "a", &alice());
    fs.ok(cmd);
    let cmd = fs.unlink_cmd(public, "c", &alice());
    fs.ok(cmd);
    fs.file(public, "e", 0o644, &alice());
    let rest = fs
        .state
        .readdir(public, page[1].cookie, 100, &root())
        .expect("readdir");
    let names: Vec<&[u8]> = rest.iter().map(|e| e.name.as_slice()).collect();
    assert_eq!(names, [b"d".as_slice(), b"e"]);
    assert!(rest.windows(2).all(|w| w[0].cookie < w[1].cookie));
    assert!(fs
        .state
        .readdir(public, u64::MAX, 100, &root())
        .expect("readdir")
        .is_empty());
    // A renamed entry gets a new cookie: it shows up again after the cursor.
    let cmd = fs.rename_cmd((public, "b"), (public, "z"), NOFLAGS, &alice());
    fs.ok(cmd);
    let rest = fs
        .state
        .readdir(public, page[1].cookie, 100, &root())
        .expect("readdir");
    assert_eq!(
        rest.last().map(|e| e.name.as_slice()),
        Some(b"z".as_slice())
    );
    // Permissions and kinds.
    let secret = fs.mkdir(public, "secret", 0o300, &alice());
    assert_eq!(
        fs.state
            .readdir(secret, 0, 10, &bob())
            .map_err(|e| e.errno()),
        Err(EACCES)
    );
    let f = fs.lookup(public, "d");
    assert_eq!(
        fs.state.readdir(f, 0, 10, &bob()).map_err(|e| e.errno()),
        Err(ENOTDIR)
    );
    let entry = &fs.state.readdir(public, 0, 100, &root()).expect("readdir")[0];
    assert_eq!((entry.kind, entry.ino), (FileKind::File, f));
}

#[test]
fn lookup_and_access() {
    let (mut fs, public, _) = fs();
    let d = fs.mkdir(public, "d", 0o700, &alice());
    let f = fs.file(d, "f", 0o640, &alice());
    assert_eq!(fs.state.lookup(d, b"f", &alice()).map(|a| a.ino), Ok(f));
    assert_eq!(
        fs.state.lookup(d, b"f", &bob()).map_err(|e| e.errno()),
        Err(EACCES)
    );
    assert_eq!(
        fs.state.lookup(d, b"g", &alice()).map_err(|e| e.errno()),
        Err(ENOENT)
    );
    let check = |creds: &Creds, ino: Ino, mask: u32, ok: bool| {
        assert_eq!(
            fs.state.access(ino, mask, creds).is_ok(),
            ok,
            "{creds:?} {ino} {mask}"
        );
    };
    check(&alice(), f, 6, true);
    check(&carol(), f, 4, true); // group read
    check(&carol(), f, 2, false);
    check(&bob(), f, 4, false);
    check(&bob(), f, 0, true); // F_OK
    check(&root(), f, 6, true);
    check(&root(), f, 1, false); // root needs some x bit on a file
    check(&root(), d, 1, true);
    assert_eq!(
        fs.state.access(f, 8, &root()).map_err(|e| e.errno()),
        Err(EINVAL)
    );
}

#[test]
fn statfs_counts() {
    let mut fs = Fs::with_limits(8 * u64::from(BLOCK_BYTES), 100);
    let f = fs.file(ROOT_INO, "f", 0o644, &root());
    fs.set_blocks(
        f,
        &[(0, 1), (1, 2), (3, 3)],
        4 * u64::from(BLOCK_BYTES),
        &root(),
    );
    let st = fs.state.statfs().expect("statfs");
    assert_eq!(
        (
            st.blocks_total,
            st.blocks_free,
            st.files_total,
            st.files_free
        ),
        (8, 5, 100, 98)
    );
    assert_eq!(
        fs.state.getattr(f).expect("attr").allocated_bytes,
        3 * u64::from(BLOCK_BYTES)
    );
    let now = fs.now();
    let too_many = Command::SetBlocks {
        ino: f,
        blocks: (4..10).map(|i| (i, 9)).collect(),
        new_size: Some(10 * u64::from(BLOCK_BYTES)),
        creds: root(),
        now,
    };
    assert_eq!(fs.errno(too_many), ENOSPC);
}

#[test]
fn times_on_create_and_remove() {
    let (mut fs, public, _) = fs();
    let f = fs.file(public, "f", 0o644, &alice());
    let created = fs.last();
    let attr = fs.state.getattr(f).expect("attr");
    assert_eq!(
        [attr.atime, attr.mtime, attr.ctime, attr.crtime],
        [created; 4]
    );
    let now = fs.now();
    fs.ok(Command::Link {
        ino: f,
        new_parent: public,
        new_name: b"g".to_vec(),
        creds: alice(),
        now,
    });
    let cmd = fs.unlink_cmd(public, "g", &alice());
    fs.ok(cmd);
    let attr = fs.state.getattr(f).expect("attr");
    assert_eq!((attr.ctime, attr.mtime), (fs.last(), created));
    let cmd = fs.setattr_cmd(
        f,
        AttrChanges {
            atime: Some(SetTime::At(Timespec {
                sec: 5,
                nsec: 1_000_000_000,
            })),
            ..AttrChanges::default()
        },
        &alice(),
    );
    assert_eq!(fs.errno(cmd), EINVAL);
}
