//! Close publishes, the commit makes durable (issue 23) on a real
//! `datenlord mount`: what a crash keeps of closed files (kill -9, and an
//! abort between the journal sync and the metadata), `datenlord sync`,
//! and `datenlord umount` committing everything.

mod support;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use support::node::{datenlord, Mounted, NodeDirs};

/// The daemon's test hook (src/mount.rs `ABORT_AFTER_JOURNAL_SYNC_ENV`).
const ABORT_AFTER_JOURNAL_SYNC_ENV: &str = "DATENLORD_TEST_ABORT_AFTER_JOURNAL_SYNC";

/// Content number `n` of file `i`: its length says which it is.
fn content(i: u32, n: u32) -> Vec<u8> {
    let len = 1 + ((i * 7919 + n * 104_729) % 20_000) as usize;
    (0..len)
        .map(|j| (j as u32 ^ i.wrapping_mul(31) ^ n.wrapping_mul(131)) as u8)
        .collect()
}

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

/// What a writer did to one file, in order: every state a crash may leave
/// it in (the empty file of its creation first), when its last close
/// returned and the state it closed, and the content its last fsync made
/// durable. (A rewrite the kill interrupted leaves a state after the
/// closed one.)
#[derive(Clone, Debug, Default)]
struct History {
    states: Vec<Vec<u8>>,
    last_close: Option<(Instant, usize)>,
    synced: Option<usize>,
}

/// What the writer did: each file's history, and when the last close
/// that succeeded and published writes (no fsync before it) started.
struct Written {
    files: Vec<History>,
    last_close_started: Option<Instant>,
}

/// Closes `f`, with the error `drop` would ignore.
fn close(f: std::fs::File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = f.into_raw_fd();
    // SAFETY: `fd` was just taken from the file, which no longer owns it.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Writes files (new ones, and whole rewrites in place of earlier ones,
/// every fourth one fsynced) until `stop`.
fn write_files(mnt: &Path, stop: &std::sync::atomic::AtomicBool) -> Written {
    let mut files: Vec<History> = Vec::new();
    let mut last_close_started = None;
    for step in 0u32.. {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        // Two of three steps create a file, the third rewrites one.
        let (i, n) = if step % 3 == 2 && !files.is_empty() {
            let i = step.wrapping_mul(2_654_435_761) % files.len() as u32;
            (i, files[i as usize].states.len() as u32)
        } else {
            (files.len() as u32, 1)
        };
        let path = mnt.join(format!("f{i}"));
        let data = content(i, n);
        if n == 1 {
            files.push(History {
                states: vec![Vec::new()],
                ..History::default()
            });
        }
        let h = &mut files[i as usize];
        // A rewrite keeps the file's length or grows it (no truncation:
        // its states are then exactly old or new bytes).
        let old = h.states.last().cloned().unwrap_or_default();
        let mut new = data;
        if new.len() < old.len() {
            new.extend_from_slice(&old[new.len()..]);
        }
        let opened = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path);
        let Ok(f) = opened else { break };
        h.states.push(new.clone());
        if f.write_all_at(&new, 0).is_err() {
            break;
        }
        let fsynced = step % 4 == 0;
        if fsynced {
            if f.sync_all().is_err() {
                break;
            }
            h.synced = Some(h.states.len() - 1);
        }
        let started = Instant::now();
        if close(f).is_err() {
            break;
        }
        // Only a close that published writes checks the commit's lag.
        if !fsynced {
            last_close_started = Some(started);
        }
        h.last_close = Some((Instant::now(), h.states.len() - 1));
    }
    Written {
        files,
        last_close_started,
    }
}

#[test]
fn kill9_leaves_every_file_at_a_commit_point_and_loses_at_most_the_interval() {
    let dirs = NodeDirs::new();
    let m = Mounted::start(&dirs, &["--commit-interval", "50"]);
    let mnt = m.path().to_owned();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, mnt) = (stop.clone(), mnt.clone());
        std::thread::spawn(move || write_files(&mnt, &stop))
    };
    std::thread::sleep(Duration::from_secs(3));
    m.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let Written {
        files,
        last_close_started,
    } = writer.join().expect("writer");
    assert!(
        files.len() > 20,
        "the writer made progress: {}",
        files.len()
    );

    let m = Mounted::start(&dirs, &[]);
    // A close that publishes writes returns only while the oldest close
    // not yet committed is at most the lag bound old (it waits for the
    // commit otherwise, whatever the load): so when the writer's last such
    // close started, every file closed more than the bound before it was
    // committed.
    let bound = datenlord_fs::commit_lag_max(Duration::from_millis(50));
    let last = last_close_started.expect("the writer closed files");
    let settled = |closed: Instant| closed + bound < last;
    let (mut settled_files, mut lost_window) = (0, 0);
    for (i, h) in files.iter().enumerate() {
        let path = m.path().join(format!("f{i}"));
        let found = match std::fs::read(&path) {
            Ok(found) => found,
            // Its creation may be lost only if nothing of it was synced.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && h.synced.is_none() => {
                lost_window += 1;
                continue;
            }
            Err(e) => panic!("f{i}: {e} after kill -9 (an error, not a commit point)"),
        };
        let state = h
            .states
            .iter()
            .rposition(|s| *s == found)
            .unwrap_or_else(|| {
                panic!(
                    "f{i}: {} bytes after kill -9 match none of its {} states (lengths {:?})",
                    found.len(),
                    h.states.len(),
                    h.states.iter().map(Vec::len).collect::<Vec<_>>()
                )
            });
        if let Some(synced) = h.synced {
            assert!(
                state >= synced,
                "f{i}: fsynced state {synced} lost (found {state})"
            );
        }
        match h.last_close {
            Some((closed, closed_state)) if settled(closed) => {
                settled_files += 1;
                assert!(
                    state >= closed_state,
                    "f{i}: closed at state {closed_state} {:?} before the last close (more than {bound:?}), found at state {state}",
                    last.duration_since(closed),
                );
            }
            _ if state != h.states.len() - 1 => lost_window += 1,
            _ => {}
        }
    }
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
