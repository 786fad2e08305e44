//! An exclusive lock on a file (`flock`, non-blocking) that says who holds
//! it. The data directory, the write-back journal and a local store's
//! lease each belong to one process at a time, and a second one is told
//! who has it. The kernel drops the lock when its holder dies, however it
//! dies.

use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::path::Path;

/// Most bytes of a busy lock file read back (who holds it).
pub const HOLDER_BYTES_MAX: u64 = 4096;

/// What trying a lock found.
#[derive(Debug)]
pub enum Lock {
    /// This process holds it, for as long as the file stays open.
    Held(File),
    /// Another process holds it; what that process wrote in the file.
    Busy(String),
}

/// Takes the exclusive lock of `path` (created if missing) without
/// waiting.
pub fn try_lock(path: &Path) -> std::io::Result<Lock> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    // SAFETY: flock on a descriptor this function owns; no memory is shared.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Lock::Held(file));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(e);
    }
    let mut holder = String::new();
    let _ = (&file).take(HOLDER_BYTES_MAX).read_to_string(&mut holder);
    Ok(Lock::Busy(holder))
}

/// Replaces a held lock file's content with `holder` (who holds it), synced.
pub fn record(file: &mut File, holder: &[u8]) -> std::io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(holder)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_told_who_has_the_lock_until_it_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lock");
        let Lock::Held(mut first) = try_lock(&path).expect("lock") else {
            panic!("a new file is free");
        };
        record(&mut first, b"pid 7").expect("record");
        // flock is per open file: a second open conflicts as another
        // process would.
        match try_lock(&path).expect("try") {
            Lock::Busy(holder) => assert_eq!(holder, "pid 7"),
            Lock::Held(_) => panic!("locked twice"),
        }
        drop(first);
        assert!(matches!(try_lock(&path).expect("try"), Lock::Held(_)));
    }
}
