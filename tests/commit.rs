//! Close publishes, the commit makes durable (issue 23) on a real
//! `datenlord mount`: what a crash keeps of closed files (kill -9, and an
//! abort between the journal sync and the metadata), `datenlord sync`,
//! and `datenlord umount` committing everything.

mod support;

use std::os::unix::fs::FileExt;
use std::time::Duration;

use support::node::{datenlord, Mounted, NodeDirs};
use support::writer::{check_files, content, write_until_crash, Written};

/// The daemon's test hook (src/mount.rs `ABORT_AFTER_JOURNAL_SYNC_ENV`).
const ABORT_AFTER_JOURNAL_SYNC_ENV: &str = "DATENLORD_TEST_ABORT_AFTER_JOURNAL_SYNC";

fn sync(dirs: &NodeDirs) -> std::process::Output {
    let mnt = dirs.mountpoint();
    let data = dirs.data_dir();
    datenlord(&[
        "sync",
        &mnt.to_string_lossy(),
        "--data-dir",
        &data.to_string_lossy(),
    ])
}

fn assert_ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kill9_leaves_every_file_at_a_commit_point_and_loses_at_most_the_interval() {
    let dirs = NodeDirs::new();
    let m = Mounted::start(&dirs, &["--commit-interval", "50"]);
    let mnt = m.path().to_owned();
    let Written {
        files,
        last_close_started,
    } = write_until_crash(&mnt, Duration::from_secs(3), || m.kill9());

    let m = Mounted::start(&dirs, &[]);
    // A close that publishes writes returns only while the oldest close
    // not yet committed is at most the lag bound old (it waits for the
    // commit otherwise, whatever the load): so when the writer's last such
    // close started, every file closed more than the bound before it was
    // committed.
    let bound = datenlord_fs::commit_lag_max(Duration::from_millis(50));
    let (settled_files, lost_window) =
        check_files(&files, last_close_started, bound, m.path(), "kill -9");
    assert!(settled_files > 10, "few files to check: {settled_files}");
    eprintln!(
        "{} files: {settled_files} closed > {bound:?} before the last close all at their closed content or later; {lost_window} of the last moments at an older state",
        files.len()
    );
    m.unmount();
}

#[test]
fn a_crash_between_the_journal_sync_and_the_metadata_leaves_the_old_content() {
    let dirs = NodeDirs::new();
    // The interval is a minute: only `datenlord sync` commits. The second
    // group commit with blocks aborts the daemon after its journal sync.
    let m = Mounted::start_env(
        &dirs,
        &["--commit-interval", "60000"],
        &[(ABORT_AFTER_JOURNAL_SYNC_ENV, "2")],
    );
    let mnt = m.path().to_owned();
    let old = content(1, 1);
    std::fs::write(mnt.join("a"), &old).expect("write a");
    assert_ok(&sync(&dirs), "the first sync");
    // Overwrite a in place (same length) and create b; their group dies.
    let new = content(2, 2)[..old.len().min(content(2, 2).len())].to_vec();
    let mut replaced = old.clone();
    replaced[..new.len()].copy_from_slice(&new);
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("a"))
            .expect("open a");
        f.write_all_at(&new, 0).expect("rewrite a");
    }
    std::fs::write(mnt.join("b"), content(3, 1)).expect("write b");
    let out = sync(&dirs);
    assert!(!out.status.success(), "the daemon aborted in this sync");
    m.wait_crash(Duration::from_secs(30));

    let m = Mounted::start(&dirs, &[]);
    assert_eq!(
        std::fs::read(m.path().join("a")).expect("read a"),
        old,
        "a keeps the content of the last commit"
    );
    assert_eq!(
        std::fs::read(m.path().join("b")).expect("read b"),
        Vec::<u8>::new(),
        "b exists (its creation was logged) with none of the data that never committed"
    );
    // And the mount goes on: the same files written again are kept.
    std::fs::write(m.path().join("a"), &replaced).expect("rewrite a");
    assert_ok(&sync(&dirs), "a sync after the restart");
    m.kill9();
    let m = Mounted::start(&dirs, &[]);
    assert_eq!(std::fs::read(m.path().join("a")).expect("read a"), replaced);
    m.unmount();
}

#[test]
fn datenlord_sync_and_umount_commit_what_closes_only_published() {
    let dirs = NodeDirs::new();
    let interval = ["--commit-interval", "60000"];
    let m = Mounted::start(&dirs, &interval);
    let mnt = m.path().to_owned();
    std::fs::write(mnt.join("synced"), content(4, 1)).expect("write");
    assert_ok(&sync(&dirs), "sync");
    // Closed, not synced: a minute from durable, and lost by kill -9.
    std::fs::write(mnt.join("published"), content(5, 1)).expect("write");
    assert_eq!(
        std::fs::read(mnt.join("published")).expect("read"),
        content(5, 1),
        "visible at once"
    );
    m.kill9();
    let m = Mounted::start(&dirs, &interval);
    assert_eq!(
        std::fs::read(m.path().join("synced")).expect("read"),
        content(4, 1)
    );
    assert!(
        std::fs::read(m.path().join("published"))
            .expect("read")
            .is_empty(),
        "a close alone made nothing durable (interval of a minute)"
    );
    // umount commits everything before the daemon exits.
    std::fs::write(m.path().join("at-umount"), content(6, 1)).expect("write");
    let out = datenlord(&[
        "umount",
        &dirs.mountpoint().to_string_lossy(),
        "--data-dir",
        &dirs.data_dir().to_string_lossy(),
    ]);
    assert_ok(&out, "umount");
    std::mem::forget(m);
    let m = Mounted::start(&dirs, &[]);
    assert_eq!(
        std::fs::read(m.path().join("at-umount")).expect("read"),
        content(6, 1)
    );
    // A sync of something that is not this data directory's mount fails.
    let out = datenlord(&[
        "sync",
        "/tmp",
        "--data-dir",
        &dirs.data_dir().to_string_lossy(),
    ]);
    assert!(
        !out.status.success(),
        "a sync of the wrong directory is refused"
    );
    m.unmount();
}
