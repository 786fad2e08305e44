//! setattr (chmod, chown, truncate, times) and set_blocks.

use super::*;
use crate::meta::{Attr, BlockRef, SetTime, MAX_FILE_BYTES, ROOT_INO};

use libc::{EACCES, EFBIG, EINVAL, EISDIR, EPERM};

fn fs_with_file(mode: u32, owner: &Creds) -> (Fs, Ino) {
    let mut fs = Fs::new();
    fs.chmod(ROOT_INO, 0o777, &root());
    let f = fs.file(ROOT_INO, "f", mode, owner);
    (fs, f)
}

/// Applies `changes` to `ino` as `creds`: the new attributes or the errno.
fn check(fs: &mut Fs, ino: Ino, changes: AttrChanges, creds: &Creds) -> Result<Attr, i32> {
    let cmd = fs.setattr_cmd(ino, changes, creds);
    fs.apply(cmd)
        .map(|o| o.attr().cloned().expect("attr"))
        .map_err(|e| e.errno())
}

fn mode(m: u32) -> AttrChanges {
    AttrChanges {
        mode: Some(m),
        ..AttrChanges::default()
    }
}

fn owner(uid: Option<u32>, gid: Option<u32>) -> AttrChanges {
    AttrChanges {
        uid,
        gid,
        ..AttrChanges::default()
    }
}

fn size(s: u64) -> AttrChanges {
    AttrChanges {
        size: Some(s),
        ..AttrChanges::default()
    }
}

#[test]
fn chmod_rules() {
    let (mut fs, f) = fs_with_file(0o644, &alice());
    assert_eq!(check(&mut fs, f, mode(0o600), &bob()), Err(EPERM));
    let attr = check(&mut fs, f, mode(0o100_755), &alice()).expect("chmod");
    assert_eq!(attr.mode, 0o755, "type bits are ignored");
    assert_eq!(attr.ctime, fs.last());
    // Setgid survives only for members of the file's group.
    let attr = check(&mut fs, f, owner(None, Some(101)), &root()).expect("chgrp");
    assert_eq!(attr.gid, 101);
    assert_eq!(
        check(&mut fs, f, mode(0o2755), &alice()).map(|a| a.mode),
        Ok(0o755)
    );
    assert_eq!(
        check(&mut fs, f, mode(0o2755), &root()).map(|a| a.mode),
        Ok(0o2755)
    );
    assert_eq!(
        check(&mut fs, f, mode(0o4755), &alice()).map(|a| a.mode),
        Ok(0o4755)
    );
}

#[test]
fn chown_rules() {
    let (mut fs, f) = fs_with_file(0o644, &alice());
    assert_eq!(
        check(&mut fs, f, owner(Some(1001), None), &alice()),
        Err(EPERM)
    );
    assert_eq!(
        check(&mut fs, f, owner(Some(1000), None), &alice()).map(|a| a.uid),
        Ok(1000)
    );
    assert_eq!(
        check(&mut fs, f, owner(None, Some(101)), &alice()),
        Err(EPERM),
        "not her group"
    );
    assert_eq!(
        check(&mut fs, f, owner(None, Some(100)), &bob()),
        Err(EPERM),
        "not his file"
    );
    let carols = fs.file(ROOT_INO, "c", 0o644, &carol());
    assert_eq!(
        check(&mut fs, carols, owner(None, Some(100)), &carol()).map(|a| a.gid),
        Ok(100)
    );
    let attr = check(&mut fs, f, owner(Some(1001), Some(101)), &root()).expect("chown");
    assert_eq!((attr.uid, attr.gid, attr.ctime), (1001, 101, fs.last()));
}

#[test]
fn chown_clears_setid() {
    let (mut fs, f) = fs_with_file(0o644, &alice());
    let check_mode =
        |fs: &mut Fs, ino: Ino, before: u32, changes: AttrChanges, creds: &Creds, after: u32| {
            fs.chmod(ino, before, &root());
            assert_eq!(
                check(fs, ino, changes, creds).map(|a| a.mode),
                Ok(after),
                "{before:o}"
            );
        };
    // Root: setuid always goes on a non-directory, setgid when group-executable.
    check_mode(&mut fs, f, 0o6755, owner(Some(1000), None), &root(), 0o755);
    check_mode(&mut fs, f, 0o6745, owner(Some(1000), None), &root(), 0o2745);
    // The owner changing the group to one of hers.
    check_mode(&mut fs, f, 0o6755, owner(None, Some(100)), &alice(), 0o755);
    // Directories keep their bits.
    let d = fs.mkdir(ROOT_INO, "d", 0o755, &alice());
    check_mode(&mut fs, d, 0o3755, owner(Some(1001), None), &root(), 0o3755);
}

#[test]
fn times() {
    let (mut fs, f) = fs_with_file(0o646, &alice());
    let at = Timespec { sec: 42, nsec: 7 };
    let explicit = AttrChanges {
        atime: Some(SetTime::At(at)),
        mtime: Some(SetTime::At(at)),
        ..AttrChanges::default()
    };
    let now = AttrChanges {
        atime: Some(SetTime::Now),
        mtime: Some(SetTime::Now),
        ..AttrChanges::default()
    };
    assert_eq!(check(&mut fs, f, explicit.clone(), &bob()), Err(EPERM));
    let attr = check(&mut fs, f, explicit, &alice()).expect("utimes");
    assert_eq!((attr.atime, attr.mtime, attr.ctime), (at, at, fs.last()));
    // "Now" needs ownership or write permission (other has rw here).
    let attr = check(&mut fs, f, now.clone(), &bob()).expect("touch");
    assert_eq!((attr.atime, attr.mtime), (fs.last(), fs.last()));
    fs.chmod(f, 0o644, &alice());
    assert_eq!(check(&mut fs, f, now, &bob()), Err(EACCES));
    // An empty setattr changes nothing, not even ctime.
    let before = fs.state.getattr(f).expect("attr");
    assert_eq!(
        check(&mut fs, f, AttrChanges::default(), &bob()),
        Ok(before)
    );
}

#[test]
fn truncate_rules() {
    let (mut fs, f) = fs_with_file(0o644, &alice());
    assert_eq!(check(&mut fs, f, size(0), &bob()), Err(EACCES));
    let cmd = Command::SetAttr {
        ino: f,
        changes: size(10),
        via_handle: true,
        creds: bob(),
        now: fs.now(),
    };
    assert_eq!(
        fs.ok(cmd).attr().map(|a| a.size),
        Some(10),
        "through an open handle"
    );
    assert_eq!(
        check(&mut fs, f, size(MAX_FILE_BYTES + 1), &alice()),
        Err(EFBIG)
    );
    assert_eq!(
        check(&mut fs, f, size(MAX_FILE_BYTES), &alice()).map(|a| a.size),
        Ok(MAX_FILE_BYTES)
    );
    assert_eq!(check(&mut fs, ROOT_INO, size(0), &root()), Err(EISDIR));
    let cmd = fs.mknod_cmd(ROOT_INO, "fifo", FileKind::Fifo, 0o666, &alice());
    let fifo = ino_of(&fs.ok(cmd));
    assert_eq!(check(&mut fs, fifo, size(0), &alice()), Err(EINVAL));
}

#[test]
fn truncate_drops_blocks_past_the_end() {
    let (mut fs, f) = fs_with_file(0o6775, &alice());
    let bs = u64::from(BLOCK_BYTES);
    fs.set_blocks(f, &[(0, 1), (1, 2), (2, 3), (5, 4)], 6 * bs, &root());
    let cmd = fs.setattr_cmd(f, size(bs + 1), &alice());
    let out = fs.ok(cmd);
    let dropped: Vec<(u64, u64)> = out.garbage.iter().map(|b| (b.index, b.version)).collect();
    assert_eq!(dropped, vec![(2, 3), (5, 4)], "block 1 still holds byte bs");
    let attr = out.attr().cloned().expect("attr");
    assert_eq!(
        (attr.size, attr.mtime, attr.ctime),
        (bs + 1, fs.last(), fs.last())
    );
    assert_eq!(
        attr.mode, 0o775,
        "a non-root truncate clears setuid and setgid"
    );
    assert_eq!(
        fs.state.blocks(f, 0, 100).expect("blocks"),
        vec![(0, 1), (1, 2)]
    );
    let cmd = fs.setattr_cmd(f, size(bs), &alice());
    assert_eq!(fs.ok(cmd).garbage.len(), 1);
    let cmd = fs.setattr_cmd(f, size(0), &alice());
    assert_eq!(fs.ok(cmd).garbage.len(), 1);
    assert_eq!(
        fs.state.statfs().expect("statfs").blocks_free,
        CAPACITY_BYTES / bs
    );
}

#[test]
fn set_blocks_rules() {
    let (mut fs, f) = fs_with_file(0o6755, &alice());
    let bs = u64::from(BLOCK_BYTES);
    let run = |fs: &mut Fs, blocks: Vec<(u64, u64)>, new_size: Option<u64>, creds: &Creds| {
        let now = fs.now();
        fs.apply(Command::SetBlocks {
            ino: f,
            blocks,
            new_size,
            creds: creds.clone(),
            now,
        })
        .map_err(|e| e.errno())
    };
    let out = run(&mut fs, vec![(0, 1), (1, 2)], Some(bs + 5), &root()).expect("write");
    let attr = out.attr().cloned().expect("attr");
    assert_eq!(
        (attr.size, attr.mode, attr.mtime),
        (bs + 5, 0o6755, fs.last()),
        "root keeps setid"
    );
    // Overwrite: the old version is garbage, an unchanged one is not.
    let out = run(&mut fs, vec![(0, 3), (1, 2)], None, &alice()).expect("write");
    assert_eq!(
        out.garbage,
        vec![BlockRef {
            ino: f,
            index: 0,
            version: 1
        }]
    );
    assert_eq!(out.attr().map(|a| (a.size, a.mode)), Some((bs + 5, 0o755)));
    // A write never shrinks the file.
    let out = run(&mut fs, vec![(0, 4)], Some(1), &alice()).expect("write");
    assert_eq!(out.attr().map(|a| a.size), Some(bs + 5));
    assert_eq!(
        run(&mut fs, vec![(2, 9)], None, &alice()),
        Err(EINVAL),
        "past the end"
    );
    assert_eq!(
        run(&mut fs, vec![(1, 9), (1, 10)], None, &alice()),
        Err(EINVAL),
        "twice"
    );
    assert_eq!(
        run(&mut fs, vec![], Some(MAX_FILE_BYTES + 1), &alice()),
        Err(EFBIG)
    );
    assert_eq!(
        run(&mut fs, vec![(MAX_FILE_BYTES / bs + 1, 1)], None, &alice()),
        Err(EFBIG)
    );
    // The last block that holds a valid offset.
    let last = MAX_FILE_BYTES / bs;
    assert!(run(&mut fs, vec![(last, 1)], Some(MAX_FILE_BYTES), &alice()).is_ok());
    let now = fs.now();
    let on_dir = Command::SetBlocks {
        ino: ROOT_INO,
        blocks: vec![],
        new_size: None,
        creds: root(),
        now,
    };
    assert_eq!(fs.errno(on_dir), EISDIR);
}

/// `RemoveBlocks` as `creds` on `ino`: the outcome or the errno.
fn remove(fs: &mut Fs, ino: Ino, first: u64, last: u64, creds: &Creds) -> Result<Outcome, i32> {
    let now = fs.now();
    fs.apply(Command::RemoveBlocks {
        ino,
        first,
        last,
        creds: creds.clone(),
        now,
    })
    .map_err(|e| e.errno())
}

#[test]
fn remove_blocks_punches_holes_and_keeps_the_size() {
    let (mut fs, f) = fs_with_file(0o6755, &alice());
    let bs = u64::from(BLOCK_BYTES);
    fs.set_blocks(
        f,
        &[(0, 1), (1, 2), (2, 3), (4, 4), (6, 5)],
        6 * bs + 9,
        &root(),
    );
    let free = fs.state.statfs().expect("statfs").blocks_free;
    let out = remove(&mut fs, f, 1, 4, &alice()).expect("punch");
    let gone: Vec<(u64, u64)> = out.garbage.iter().map(|b| (b.index, b.version)).collect();
    assert_eq!(
        gone,
        vec![(1, 2), (2, 3), (4, 4)],
        "block 3 was a hole already"
    );
    assert!(out.freed.is_empty());
    let attr = out.attr().cloned().expect("attr");
    assert_eq!(
        (attr.size, attr.allocated_bytes, attr.mtime, attr.ctime),
        (6 * bs + 9, 2 * bs, fs.last(), fs.last()),
        "the size stays; allocation shrinks; times move as on a write"
    );
    assert_eq!(
        attr.mode, 0o755,
        "a non-root punch clears setuid and setgid"
    );
    assert_eq!(
        fs.state.blocks(f, 0, 100).expect("blocks"),
        vec![(0, 1), (6, 5)]
    );
    assert_eq!(fs.state.block_version(f, 2), None);
    assert_eq!(fs.state.statfs().expect("statfs").blocks_free, free + 3);
    // Punching holes again, or past the end of the file, removes nothing
    // but is still a change of the data.
    for (first, last) in [(2, 5), (7, 1 << 40)] {
        let out = remove(&mut fs, f, first, last, &root()).expect("punch");
        assert!(out.garbage.is_empty());
        assert_eq!(
            out.attr().map(|a| (a.size, a.mtime)),
            Some((6 * bs + 9, fs.last()))
        );
    }
    // The last block goes too when asked.
    let out = remove(&mut fs, f, 6, 6, &root()).expect("punch");
    assert_eq!(out.garbage.len(), 1);
    assert_eq!(fs.state.blocks(f, 0, 100).expect("blocks"), vec![(0, 1)]);
    // Root keeps setid bits.
    fs.chmod(f, 0o6755, &root());
    let out = remove(&mut fs, f, 0, 0, &root()).expect("punch");
    assert_eq!(
        out.attr().map(|a| (a.mode, a.allocated_bytes)),
        Some((0o6755, 0))
    );
    assert_eq!(
        fs.state.statfs().expect("statfs").blocks_free,
        CAPACITY_BYTES / bs
    );
}

#[test]
fn remove_blocks_rules() {
    let (mut fs, f) = fs_with_file(0o644, &alice());
    let bs = u64::from(BLOCK_BYTES);
    fs.set_blocks(f, &[(0, 1), (1, 2)], 2 * bs, &alice());
    assert_eq!(
        remove(&mut fs, f, 1, 0, &alice()).err(),
        Some(EINVAL),
        "empty range"
    );
    let last = MAX_FILE_BYTES / bs;
    assert_eq!(remove(&mut fs, f, 0, last + 1, &alice()).err(), Some(EFBIG));
    assert_eq!(
        remove(&mut fs, f, last, last, &alice()).map(|o| o.garbage.len()),
        Ok(0),
        "the last block that holds a valid offset"
    );
    assert_eq!(remove(&mut fs, ROOT_INO, 0, 0, &root()).err(), Some(EISDIR));
    let cmd = fs.mknod_cmd(ROOT_INO, "fifo", FileKind::Fifo, 0o666, &alice());
    let fifo = ino_of(&fs.ok(cmd));
    assert_eq!(remove(&mut fs, fifo, 0, 0, &alice()).err(), Some(EINVAL));
    assert_eq!(
        remove(&mut fs, Ino(9999), 0, 0, &root()).err(),
        Some(libc::ESTALE)
    );
    // Like SetBlocks, no permission check: the handle was opened for writing.
    assert_eq!(
        remove(&mut fs, f, 0, 0, &bob()).map(|o| o.garbage.len()),
        Ok(1)
    );
    // An unlinked open file's remaining blocks are collected once, when freed.
    fs.open(S1, f, OpenFlags::READ_WRITE);
    let cmd = fs.unlink_cmd(ROOT_INO, "f", &alice());
    fs.ok(cmd);
    assert_eq!(
        remove(&mut fs, f, 0, 0, &alice()).map(|o| o.garbage.len()),
        Ok(0)
    );
    let out = fs.release(S1, f);
    assert_eq!(out.freed, vec![f]);
    assert_eq!(
        out.garbage,
        vec![BlockRef {
            ino: f,
            index: 1,
            version: 2
        }]
    );
}
