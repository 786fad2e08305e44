//! The power-cut file system on a real FUSE mount: what a cut keeps and
//! loses, and an injected fsync error.

use std::io::Write;
use std::os::unix::fs::FileExt;

use datenlord_testbed::lazyfs::{can_mount, LazyMount};

fn dirs() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let backing = dir.path().join("backing");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&backing).expect("mkdir");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    (dir, backing, mnt)
}

#[test]
fn a_cut_keeps_what_was_synced_and_loses_the_rest() {
    if !can_mount() {
        eprintln!("skipped: needs root and /dev/fuse");
        return;
    }
    let (_dir, backing, mnt) = dirs();
    let m = LazyMount::mount(&backing, &mnt).expect("mount");
    let mut synced = std::fs::File::create(mnt.join("synced")).expect("create");
    synced.write_all(b"durable").expect("write");
    synced.sync_data().expect("fdatasync");
    // Written after the sync: lost.
    synced.write_all(b" and more").expect("write");
    std::fs::write(mnt.join("unsynced"), b"gone").expect("write");
    std::fs::create_dir(mnt.join("d")).expect("mkdir");
    let f = std::fs::File::create(mnt.join("d/tmp")).expect("create");
    f.write_all_at(b"renamed", 0).expect("write");
    f.sync_all().expect("fsync");
    std::fs::rename(mnt.join("d/tmp"), mnt.join("d/final")).expect("rename");
    // Reads see the unsynced writes before the cut.
    assert_eq!(
        std::fs::read(mnt.join("synced")).expect("read"),
        b"durable and more"
    );
    assert_eq!(std::fs::read(mnt.join("unsynced")).expect("read"), b"gone");
    let truncated = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("d/final"))
        .expect("open");
    truncated.set_len(3).expect("truncate");
    assert_eq!(std::fs::read(mnt.join("d/final")).expect("read"), b"ren");
    drop((synced, f, truncated));
    m.cut();

    let m = LazyMount::mount(&backing, &mnt).expect("mount again");
    assert_eq!(std::fs::read(mnt.join("synced")).expect("read"), b"durable");
    assert_eq!(
        std::fs::read(mnt.join("unsynced")).expect("read"),
        b"",
        "the create survives (metadata), its data does not"
    );
    assert_eq!(
        std::fs::read(mnt.join("d/final")).expect("read"),
        b"renamed",
        "the unsynced truncation is lost too"
    );
    drop(m);
}

#[test]
fn an_injected_fsync_error_loses_the_writes_it_covered() {
    if !can_mount() {
        eprintln!("skipped: needs root and /dev/fuse");
        return;
    }
    let (_dir, backing, mnt) = dirs();
    let m = LazyMount::mount(&backing, &mnt).expect("mount");
    let f = std::fs::File::create(mnt.join("log")).expect("create");
    f.write_all_at(b"first", 0).expect("write");
    f.sync_data().expect("fdatasync");
    m.fs().fail_next_fsync("log");
    f.write_all_at(b"second", 5).expect("write");
    let err = f.sync_data().expect_err("the injected error");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert_eq!(m.fs().failed_fsyncs(), 1);
    // The failed sync dropped the writes it covered (like pages lost to a
    // failed writeback); the next sync succeeds.
    assert_eq!(std::fs::read(mnt.join("log")).expect("read"), b"first");
    f.write_all_at(b"third", 5).expect("write");
    f.sync_data().expect("fdatasync");
    drop(f);
    m.cut();
    let m = LazyMount::mount(&backing, &mnt).expect("mount again");
    assert_eq!(std::fs::read(mnt.join("log")).expect("read"), b"firstthird");
    drop(m);
}
