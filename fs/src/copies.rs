//! Local copies: whole files written out to a local file so that the FUSE
//! frontend can hand that file to the kernel (FUSE passthrough) and reads
//! never reach the daemon. They are a cache: an unnamed file (`O_TMPFILE`)
//! in the configured directory, gone when the process ends.
//!
//! Lifecycle of the copy of one inode:
//! - **made** by a background thread after the file was opened read-only
//!   [`CopyConfig::after_opens`] times (once it is read again and again),
//!   if it fits the budget (least recently used copies give way); a change
//!   to the file while it is being made throws it away;
//! - **attached** to an open when the file's mtime and size are what they
//!   were when the copy was finished;
//! - **pinned** while the kernel has opens on it: every change to the file
//!   is then written into the copy too before the change returns (the
//!   kernel reads it directly), and the copy is dropped once the last pin
//!   goes; unpinned, a change just drops it.
//!
//! A pinned copy can also be written by the kernel: a writable open of a
//! file in passthrough mode maps the copy itself (`mmap` goes to the
//! backing file). Its mtime tells: the copy's mtime is set to
//! [`SENTINEL_MTIME`] after each write of ours, and a write through a
//! mapping sets it to the current time. [`crate::Fs`] imports such changes
//! before its own changes, at flush and fsync, and at release.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use datenlord_cluster::meta::{Ino, Timespec};
use futures::lock::Mutex as AsyncMutex;

use crate::error::{FsError, Result};

/// The mtime of a copy that only the file system wrote: one second after
/// the epoch. A write through a mapping moves it to the current time.
pub(crate) const SENTINEL_MTIME: libc::timespec = libc::timespec {
    tv_sec: 1,
    tv_nsec: 0,
};

/// Where local copies go and how much room they may take.
#[derive(Clone, Debug)]
pub struct CopyConfig {
    /// A directory on a local file system (the cache directory's disk).
    pub dir: PathBuf,
    /// Sum of the copies' sizes at most; one copy gets at most half.
    pub capacity_bytes: u64,
    /// Read-only opens (each counted at its close) before a file is copied.
    pub after_opens: u32,
}

/// The local copy of one file.
#[derive(Debug)]
pub struct LocalCopy {
    ino: Ino,
    file: File,
    /// Held across a change of the file and its write into the copy, and
    /// across an import of mapped writes: the two never interleave.
    pub(crate) change: Arc<AsyncMutex<()>>,
}

impl LocalCopy {
    /// The copy's file descriptor, to register with the kernel.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Marks the copy as written only by the file system.
    pub(crate) fn set_sentinel(&self) -> Result<()> {
        let times = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            SENTINEL_MTIME,
        ];
        // SAFETY: the fd is open and `times` holds two timespecs.
        let rc = unsafe { libc::futimens(self.file.as_raw_fd(), times.as_ptr()) };
        if rc != 0 {
            return Err(copy_error(
                "setting the mtime of",
                &std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Whether something other than the file system wrote the copy since
    /// its last [`Self::set_sentinel`].
    pub(crate) fn written_outside(&self) -> bool {
        self.file.metadata().is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.mtime() != SENTINEL_MTIME.tv_sec || m.mtime_nsec() != SENTINEL_MTIME.tv_nsec
        })
    }
}

fn copy_error(what: &str, e: &std::io::Error) -> FsError {
    FsError::Io(format!("{what} a local copy: {e}"))
}

/// What the file system must do about a change to a file.
#[derive(Debug)]
pub(crate) enum OnChange {
    /// No copy (or one that was just dropped): nothing.
    Nothing,
    /// The copy is pinned: write the change into it.
    Update(Arc<LocalCopy>),
}

#[derive(Debug)]
struct Slot {
    copy: Arc<LocalCopy>,
    /// `(mtime, size)` of the file when the copy was finished.
    seen: (Timespec, u64),
    bytes: u64,
    last_use: u64,
    pins: u32,
    /// Changed while pinned: dropped at the last unpin.
    changed: bool,
    /// The kernel wrote it through a mapping: imported at every flush.
    mapped: bool,
}

/// The bookkeeping of the copies, without IO.
#[derive(Debug, Default)]
struct Book {
    slots: HashMap<Ino, Slot>,
    used: u64,
    tick: u64,
    /// Copies being made; `true` once a change spoiled one.
    making: HashMap<Ino, bool>,
    /// Read-only closes per file without a copy.
    read_closes: HashMap<Ino, u32>,
}

/// Files whose read-only closes are counted at most; past it the counts
/// start over (forgetting only delays a copy).
const READ_CLOSES_MAX: usize = 65_536;

impl Book {
    fn remove(&mut self, ino: Ino) -> bool {
        if let Some(slot) = self.slots.remove(&ino) {
            self.used -= slot.bytes;
            true
        } else {
            false
        }
    }

    fn attach(&mut self, ino: Ino, seen: (Timespec, u64)) -> Option<Arc<LocalCopy>> {
        self.tick += 1;
        let tick = self.tick;
        let slot = self.slots.get_mut(&ino)?;
        if slot.pins > 0 || slot.seen == seen {
            slot.last_use = tick;
            return Some(Arc::clone(&slot.copy));
        }
        // Changed behind the copy's back (another node): never served.
        self.remove(ino);
        None
    }

    fn note_read_close(&mut self, ino: Ino, after: u32) -> bool {
        if self.slots.contains_key(&ino) || self.making.contains_key(&ino) {
            return false;
        }
        if self.read_closes.len() >= READ_CLOSES_MAX && !self.read_closes.contains_key(&ino) {
            self.read_closes.clear();
        }
        let n = self.read_closes.entry(ino).or_insert(0);
        *n += 1;
        if *n >= after {
            self.read_closes.remove(&ino);
            self.making.insert(ino, false);
            true
        } else {
            false
        }
    }

    /// Makes room for `bytes`: drops least recently used unpinned copies.
    /// False if the pinned ones leave too little.
    fn make_room(&mut self, bytes: u64, capacity: u64) -> bool {
        while self.used + bytes > capacity {
            let victim = self
                .slots
                .iter()
                .filter(|(_, s)| s.pins == 0)
                .min_by_key(|(_, s)| s.last_use)
                .map(|(&ino, _)| ino);
            match victim {
                Some(ino) => {
                    self.remove(ino);
                }
                None => return false,
            }
        }
        true
    }

    fn finish(&mut self, copy: LocalCopy, seen: (Timespec, u64), capacity: u64) -> bool {
        let ino = copy.ino;
        let spoiled = self.making.remove(&ino).unwrap_or(true);
        if spoiled || self.slots.contains_key(&ino) || !self.make_room(seen.1, capacity) {
            return false;
        }
        self.tick += 1;
        self.used += seen.1;
        self.slots.insert(
            ino,
            Slot {
                copy: Arc::new(copy),
                seen,
                bytes: seen.1,
                last_use: self.tick,
                pins: 0,
                changed: false,
                mapped: false,
            },
        );
        true
    }

    fn on_change(&mut self, ino: Ino) -> OnChange {
        if let Some(spoiled) = self.making.get_mut(&ino) {
            *spoiled = true;
        }
        match self.slots.get_mut(&ino) {
            Some(slot) if slot.pins > 0 => {
                slot.changed = true;
                OnChange::Update(Arc::clone(&slot.copy))
            }
            Some(_) => {
                self.remove(ino);
                OnChange::Nothing
            }
            None => OnChange::Nothing,
        }
    }
}

/// The local copies of one mount.
#[derive(Debug)]
pub(crate) struct Copies {
    config: CopyConfig,
    book: Mutex<Book>,
    made: AtomicU64,
}

impl Copies {
    /// Checks that `config.dir` can hold unnamed files.
    pub(crate) fn open(config: CopyConfig) -> Result<Self> {
        std::fs::create_dir_all(&config.dir).map_err(|e| {
            FsError::Config(format!(
                "cannot create the local copy directory {}: {e}",
                config.dir.display()
            ))
        })?;
        unnamed_file(&config.dir).map_err(|e| {
            FsError::Config(format!(
                "cannot make files for local copies in {}: {e} \
                 (it needs a local file system with O_TMPFILE, such as ext4 or xfs)",
                config.dir.display()
            ))
        })?;
        Ok(Self {
            config,
            book: Mutex::new(Book::default()),
            made: AtomicU64::new(0),
        })
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn largest_copy(&self) -> u64 {
        self.config.capacity_bytes / 2
    }

    pub(crate) fn attach(&self, ino: Ino, mtime: Timespec, size: u64) -> Option<Arc<LocalCopy>> {
        self.book().attach(ino, (mtime, size))
    }

    pub(crate) fn pin(&self, ino: Ino) -> bool {
        match self.book().slots.get_mut(&ino) {
            Some(slot) => {
                slot.pins += 1;
                true
            }
            None => false,
        }
    }

    /// Drops a pin; at the last one a copy that changed meanwhile goes.
    pub(crate) fn unpin(&self, ino: Ino) {
        let mut book = self.book();
        let Some(slot) = book.slots.get_mut(&ino) else {
            return;
        };
        slot.pins = slot.pins.saturating_sub(1);
        if slot.pins == 0 && slot.changed {
            book.remove(ino);
        }
    }

    /// The pinned copy of `ino` and whether it was seen written through a
    /// mapping before.
    pub(crate) fn pinned(&self, ino: Ino) -> Option<(Arc<LocalCopy>, bool)> {
        self.book()
            .slots
            .get(&ino)
            .filter(|s| s.pins > 0)
            .map(|s| (Arc::clone(&s.copy), s.mapped))
    }

    pub(crate) fn note_mapped(&self, ino: Ino) {
        if let Some(slot) = self.book().slots.get_mut(&ino) {
            slot.mapped = true;
            slot.changed = true;
        }
    }

    /// Counts a read-only close; true when the file should be copied now
    /// (the caller then makes it and calls [`Self::finish`]).
    pub(crate) fn note_read_close(&self, ino: Ino) -> bool {
        self.book()
            .note_read_close(ino, self.config.after_opens.max(1))
    }

    pub(crate) fn new_file(&self, ino: Ino) -> Result<LocalCopy> {
        let file = unnamed_file(&self.config.dir).map_err(|e| copy_error("creating", &e))?;
        Ok(LocalCopy {
            ino,
            file,
            change: Arc::new(AsyncMutex::new(())),
        })
    }

    /// Keeps a finished copy unless a change spoiled it or it does not fit.
    pub(crate) fn finish(&self, copy: LocalCopy, mtime: Timespec, size: u64) -> bool {
        let kept = self
            .book()
            .finish(copy, (mtime, size), self.config.capacity_bytes);
        if kept {
            self.made.fetch_add(1, Ordering::Relaxed);
        }
        kept
    }

    /// A copy that could not be made.
    pub(crate) fn abandon(&self, ino: Ino) {
        self.book().making.remove(&ino);
    }

    pub(crate) fn on_change(&self, ino: Ino) -> OnChange {
        self.book().on_change(ino)
    }

    /// Copies finished so far; copies held now and their bytes.
    pub(crate) fn counts(&self) -> (u64, usize, u64) {
        let book = self.book();
        (
            self.made.load(Ordering::Relaxed),
            book.slots.len(),
            book.used,
        )
    }

    #[cfg(test)]
    fn inos(&self) -> std::collections::HashSet<Ino> {
        self.book().slots.keys().copied().collect()
    }
}

/// `FS_NOATIME_FL` (`chattr +A`): reads leave the inode's atime alone.
const FS_NOATIME_FL: libc::c_long = 0x80;

fn unnamed_file(dir: &Path) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .mode(0o600)
        .open(dir)?;
    // The kernel reads the copy for every read of a file on it: no atime
    // check or update of a file nobody sees (file systems without the
    // flag just check it).
    let mut flags: libc::c_long = 0;
    // SAFETY: the ioctls read and write one long through valid pointers.
    unsafe {
        if libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &raw mut flags) == 0 {
            flags |= FS_NOATIME_FL;
            libc::ioctl(file.as_raw_fd(), libc::FS_IOC_SETFLAGS, &raw const flags);
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn t(sec: i64) -> Timespec {
        Timespec { sec, nsec: 0 }
    }

    fn copies(capacity: u64, after: u32) -> (tempfile::TempDir, Copies) {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Copies::open(CopyConfig {
            dir: dir.path().join("copies"),
            capacity_bytes: capacity,
            after_opens: after,
        })
        .expect("copies");
        (dir, c)
    }

    fn make(c: &Copies, ino: u64, mtime: i64, size: u64) -> bool {
        let ino = Ino(ino);
        assert!(c.note_read_close(ino), "copy of {ino} wanted");
        let copy = c.new_file(ino).expect("file");
        c.finish(copy, t(mtime), size)
    }

    #[test]
    fn a_copy_is_wanted_after_the_configured_read_closes_and_only_once() {
        let (_d, c) = copies(1000, 2);
        assert!(!c.note_read_close(Ino(5)));
        assert!(c.note_read_close(Ino(5)));
        // Being made: not wanted again.
        assert!(!c.note_read_close(Ino(5)));
        let copy = c.new_file(Ino(5)).expect("file");
        assert!(c.finish(copy, t(1), 10));
        assert!(!c.note_read_close(Ino(5)));
        assert!(!c.note_read_close(Ino(5)));
    }

    #[test]
    fn attach_needs_the_attributes_the_copy_was_made_at() {
        let (_d, c) = copies(1000, 1);
        assert!(make(&c, 7, 100, 10));
        assert!(c.attach(Ino(7), t(100), 10).is_some());
        // Another mtime: the copy is stale and dropped.
        assert!(c.attach(Ino(7), t(101), 10).is_none());
        assert!(c.attach(Ino(7), t(100), 10).is_none());
        assert_eq!(c.counts().1, 0);
    }

    #[test]
    fn a_change_spoils_a_copy_being_made_and_drops_an_unpinned_one() {
        let (_d, c) = copies(1000, 1);
        assert!(c.note_read_close(Ino(1)));
        assert!(matches!(c.on_change(Ino(1)), OnChange::Nothing));
        let copy = c.new_file(Ino(1)).expect("file");
        assert!(!c.finish(copy, t(1), 10), "spoiled while made");
        assert!(make(&c, 2, 1, 10));
        assert!(matches!(c.on_change(Ino(2)), OnChange::Nothing));
        assert!(c.inos().is_empty());
    }

    #[test]
    fn a_pinned_copy_is_updated_and_dropped_at_its_last_unpin() {
        let (_d, c) = copies(1000, 1);
        assert!(make(&c, 3, 1, 10));
        assert!(c.pin(Ino(3)));
        assert!(c.pin(Ino(3)));
        assert!(matches!(c.on_change(Ino(3)), OnChange::Update(_)));
        // Still served to new opens while pinned, whatever the attributes.
        assert!(c.attach(Ino(3), t(2), 20).is_some());
        c.unpin(Ino(3));
        assert!(c.pinned(Ino(3)).is_some());
        c.unpin(Ino(3));
        assert!(
            c.inos().is_empty(),
            "changed copy dropped at the last unpin"
        );
        // An unchanged copy stays.
        assert!(make(&c, 4, 1, 10));
        assert!(c.pin(Ino(4)));
        c.unpin(Ino(4));
        assert_eq!(c.inos(), HashSet::from([Ino(4)]));
    }

    #[test]
    fn the_least_recently_used_unpinned_copies_make_room() {
        let (_d, c) = copies(100, 1);
        assert!(make(&c, 1, 1, 40));
        assert!(make(&c, 2, 1, 40));
        assert!(c.attach(Ino(1), t(1), 40).is_some());
        // 1 was used last: 2 goes.
        assert!(make(&c, 3, 1, 40));
        assert_eq!(c.inos(), HashSet::from([Ino(1), Ino(3)]));
        assert_eq!(c.counts().2, 80);
        // Pinned copies stay; a copy that cannot fit is not kept.
        assert!(c.pin(Ino(1)));
        assert!(c.pin(Ino(3)));
        assert!(!make(&c, 4, 1, 40));
        assert_eq!(c.inos(), HashSet::from([Ino(1), Ino(3)]));
    }

    #[test]
    fn copies_do_not_track_access_times() {
        let (_d, c) = copies(1000, 1);
        let copy = c.new_file(Ino(3)).expect("file");
        let mut flags: libc::c_long = 0;
        // SAFETY: reads one long into a valid pointer.
        let rc =
            unsafe { libc::ioctl(copy.fd().as_raw_fd(), libc::FS_IOC_GETFLAGS, &raw mut flags) };
        if rc != 0 {
            eprintln!("skipped: the temporary directory's file system has no inode flags");
            return;
        }
        assert_ne!(flags & FS_NOATIME_FL, 0, "flags {flags:#x}");
    }

    #[test]
    fn the_sentinel_mtime_shows_writes_from_outside() {
        use std::os::unix::fs::FileExt;
        let (_d, c) = copies(1000, 1);
        let copy = c.new_file(Ino(9)).expect("file");
        copy.file().write_all_at(b"abc", 0).expect("write");
        copy.set_sentinel().expect("sentinel");
        assert!(!copy.written_outside());
        copy.file().write_all_at(b"x", 1).expect("write");
        assert!(copy.written_outside());
    }
}
