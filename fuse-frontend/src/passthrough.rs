//! FUSE passthrough (`-o passthrough`): an open of a file the file system
//! holds a local copy of is answered with that copy as its backing file,
//! so the kernel reads it (through the local file system's page cache, in
//! large folios) and the daemon never sees the reads.
//!
//! The kernel's rules, and how they are kept:
//! - The daemon registers a backing file with `FUSE_DEV_IOC_BACKING_OPEN`
//!   (needs `CAP_SYS_ADMIN`) and names its id in the open reply; the id is
//!   closed once the inode has no passthrough open left here.
//! - An inode with a passthrough open takes only passthrough opens on the
//!   same backing file (any other open fails with EIO), and an inode with
//!   an open in caching mode takes no passthrough open. So per inode this
//!   counts the opens of each kind: a read-only open gets the copy only
//!   when no caching open exists, and every open of an inode in
//!   passthrough mode (writable ones too) gets it.
//! - A writable open in passthrough mode is `FOPEN_PASSTHROUGH |
//!   FOPEN_DIRECT_IO`: its reads and writes come to the daemon, which
//!   writes every change into the copy before answering (`Fs` pins the
//!   copy for that). Only its `mmap` goes to the copy: the file system
//!   imports what such a mapping writes (see `datenlord_fs::LocalCopy`).
//! - The kernel sends RELEASE after it dropped the open's mode, so a count
//!   here never says less than the kernel has.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use datenlord_fs::{Attr, Fs, Ino};
use tracing::{info, warn};

/// `FOPEN_PASSTHROUGH` in an open reply's flags.
pub(crate) const FOPEN_PASSTHROUGH: u32 = 1 << 7;
/// `FUSE_DEV_IOC_BACKING_OPEN`: `_IOW(229, 1, struct fuse_backing_map)`.
const IOC_BACKING_OPEN: libc::c_ulong = 0x4010_e501;
/// `FUSE_DEV_IOC_BACKING_CLOSE`: `_IOW(229, 2, uint32_t)`.
const IOC_BACKING_CLOSE: libc::c_ulong = 0x4004_e502;

/// `struct fuse_backing_map`.
#[repr(C)]
struct BackingMap {
    fd: i32,
    flags: u32,
    padding: u64,
}

/// How an open is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpenMode {
    /// Through the page cache of the FUSE inode (the daemon serves reads).
    Cached,
    /// On backing file `backing`.
    Passthrough { backing: i32 },
}

#[derive(Debug, Default)]
struct Modes {
    /// Opens in caching mode (any open not on the copy).
    cached: u32,
    /// Opens on the copy, and its backing id.
    passthrough: Option<(u32, i32)>,
}

#[derive(Debug, Default)]
struct State {
    inodes: HashMap<u64, Modes>,
    /// Open handles: inode, and whether on the copy.
    handles: HashMap<u64, (u64, bool)>,
}

/// The passthrough state of one mount.
#[derive(Debug)]
pub(crate) struct Passthrough {
    /// The session's /dev/fuse, for the backing ioctls.
    device: Option<File>,
    enabled: AtomicBool,
    /// Once enabled, handles are tracked until the end.
    tracking: AtomicBool,
    state: Mutex<State>,
}

impl Passthrough {
    pub(crate) fn new(device: Option<File>) -> Self {
        Self {
            device,
            enabled: AtomicBool::new(false),
            tracking: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        }
    }

    /// The kernel agreed to passthrough at INIT.
    pub(crate) fn enable(&self) {
        if self.device.is_some() {
            self.tracking.store(true, Ordering::Release);
            self.enabled.store(true, Ordering::Release);
            info!("FUSE passthrough on: files with a local copy are read by the kernel");
        }
    }

    fn disable(&self, why: &std::io::Error) {
        if self.enabled.swap(false, Ordering::AcqRel) {
            warn!(error = %why, "FUSE passthrough off: the kernel refused a backing file (the daemon needs CAP_SYS_ADMIN)");
        }
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Decides how handle `fh` of `attr.ino` (just opened, writable or
    /// not) is answered, and counts it.
    pub(crate) fn opened(&self, fs: &Fs, attr: &Attr, fh: u64, write: bool) -> OpenMode {
        if !self.tracking.load(Ordering::Acquire) {
            return OpenMode::Cached;
        }
        let ino = attr.ino.0;
        let mut state = self.state();
        let modes = state.inodes.entry(ino).or_default();
        let mode = if let Some((opens, backing)) = modes.passthrough.as_mut() {
            // The kernel takes nothing else now.
            if !fs.pin_copy(attr.ino) {
                warn!(
                    ino,
                    "the local copy of a file open in passthrough mode is gone"
                );
            }
            *opens += 1;
            // Even after passthrough was turned off for new files.
            OpenMode::Passthrough { backing: *backing }
        } else if modes.cached == 0 && !write && self.is_enabled() {
            if let Some(backing) = self.start(fs, attr) {
                modes.passthrough = Some((1, backing));
                OpenMode::Passthrough { backing }
            } else {
                modes.cached += 1;
                OpenMode::Cached
            }
        } else {
            modes.cached += 1;
            OpenMode::Cached
        };
        let on_copy = matches!(mode, OpenMode::Passthrough { .. });
        state.handles.insert(fh, (ino, on_copy));
        mode
    }

    /// Registers the copy of `attr.ino` as a backing file and pins it.
    fn start(&self, fs: &Fs, attr: &Attr) -> Option<i32> {
        let copy = fs.attach_copy(attr)?;
        let device = self.device.as_ref()?;
        let backing = match backing_open(device, copy.fd()) {
            Ok(id) => id,
            Err(e) => {
                if let Some(libc::EPERM | libc::EINVAL | libc::ENOTTY | libc::ELOOP) =
                    e.raw_os_error()
                {
                    self.disable(&e);
                } else {
                    warn!(ino = attr.ino.0, error = %e, "cannot register a local copy with the kernel");
                }
                return None;
            }
        };
        if fs.pin_copy(attr.ino) {
            Some(backing)
        } else {
            // Dropped by a change since `attach_copy`.
            backing_close(device, backing);
            None
        }
    }

    /// Handle `fh` was released (after `Fs::release`).
    pub(crate) fn released(&self, fs: &Fs, fh: u64) {
        if !self.tracking.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.state();
        let Some((ino, on_copy)) = state.handles.remove(&fh) else {
            return;
        };
        let Some(modes) = state.inodes.get_mut(&ino) else {
            return;
        };
        if on_copy {
            fs.unpin_copy(Ino(ino));
            if let Some((opens, backing)) = modes.passthrough.as_mut() {
                *opens -= 1;
                if *opens == 0 {
                    if let Some(device) = &self.device {
                        backing_close(device, *backing);
                    }
                    modes.passthrough = None;
                }
            }
        } else {
            modes.cached = modes.cached.saturating_sub(1);
        }
        if modes.cached == 0 && modes.passthrough.is_none() {
            state.inodes.remove(&ino);
        }
    }
}

fn backing_open(device: &File, fd: BorrowedFd<'_>) -> std::io::Result<i32> {
    let map = BackingMap {
        fd: fd.as_raw_fd(),
        flags: 0,
        padding: 0,
    };
    // SAFETY: the ioctl reads a `fuse_backing_map` from the pointer, which
    // is valid for the call.
    let id = unsafe { libc::ioctl(device.as_raw_fd(), IOC_BACKING_OPEN, &raw const map) };
    if id <= 0 {
        return Err(if id < 0 {
            std::io::Error::last_os_error()
        } else {
            std::io::Error::from_raw_os_error(libc::EINVAL)
        });
    }
    Ok(id)
}

fn backing_close(device: &File, backing: i32) {
    let id = backing as u32;
    // SAFETY: the ioctl reads a u32 from the pointer, valid for the call.
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), IOC_BACKING_CLOSE, &raw const id) };
    if rc != 0 {
        warn!(backing, error = %std::io::Error::last_os_error(), "closing a backing file id failed");
    }
}
