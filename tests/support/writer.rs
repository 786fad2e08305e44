//! A writer of many small files (created, rewritten in place, every
//! fourth fsynced) that records every state a crash may leave each file
//! in, and the check of what a crash left: every file at one of its
//! states, never an error or garbage; every fsynced state kept; every file
//! closed long enough before the writer's last close at least at the
//! state it closed.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Content number `n` of file `i`: its length says which it is.
pub fn content(i: u32, n: u32) -> Vec<u8> {
    let len = 1 + ((i * 7919 + n * 104_729) % 20_000) as usize;
    (0..len)
        .map(|j| (j as u32 ^ i.wrapping_mul(31) ^ n.wrapping_mul(131)) as u8)
        .collect()
}

/// What a writer did to one file, in order: every state a crash may leave
/// it in (the empty file of its creation first), when its last close
/// returned and the state it closed, and the content its last fsync made
/// durable. (A rewrite the kill interrupted leaves a state after the
/// closed one.)
#[derive(Clone, Debug, Default)]
pub struct History {
    pub states: Vec<Vec<u8>>,
    pub last_close: Option<(Instant, usize)>,
    pub synced: Option<usize>,
}

/// What the writer did: each file's history, and when the last close
/// that succeeded and published writes (no fsync before it) started.
pub struct Written {
    pub files: Vec<History>,
    pub last_close_started: Option<Instant>,
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
pub fn write_files(mnt: &Path, stop: &std::sync::atomic::AtomicBool) -> Written {
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

/// Checks every file of `files` under `mnt` after a crash (`what`): at
/// one of its states (a missing file only if nothing of it was synced),
/// every fsynced state kept, and every file closed more than `bound`
/// before the writer's last close (`last_close_started`: the close then
/// found the commit's lag within the bound) at least at the state it
/// closed. Returns the files so checked and those of the last moments
/// found at an older state.
pub fn check_files(
    files: &[History],
    last_close_started: Option<Instant>,
    bound: Duration,
    mnt: &Path,
    what: &str,
) -> (usize, usize) {
    let last = last_close_started.expect("the writer closed files");
    let settled = |closed: Instant| closed + bound < last;
    let (mut settled_files, mut lost_window) = (0, 0);
    for (i, h) in files.iter().enumerate() {
        let path = mnt.join(format!("f{i}"));
        let found = match std::fs::read(&path) {
            Ok(found) => found,
            // Its creation may be lost only if nothing of it was synced.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && h.synced.is_none() => {
                lost_window += 1;
                continue;
            }
            Err(e) => panic!("f{i}: {e} after {what} (an error, not a commit point)"),
        };
        let state = h
            .states
            .iter()
            .rposition(|s| *s == found)
            .unwrap_or_else(|| {
                panic!(
                    "f{i}: {} bytes after {what} match none of its {} states (lengths {:?})",
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
    (settled_files, lost_window)
}

/// Runs [`write_files`] on `mnt` for `running`, then `crash` (which must
/// stop the file system under the writer), and returns what the writer
/// did once it noticed.
pub fn write_until_crash(mnt: &Path, running: Duration, crash: impl FnOnce()) -> Written {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, mnt) = (stop.clone(), mnt.to_owned());
        std::thread::spawn(move || write_files(&mnt, &stop))
    };
    std::thread::sleep(running);
    crash();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().expect("writer");
    assert!(
        written.files.len() > 20,
        "the writer made progress: {}",
        written.files.len()
    );
    written
}
