//! The node's DatenLord mount: every volume is a directory of it, and
//! every staged or published volume a bind mount of such a directory.
//! The plugin uses a mount that is there, or makes one by running the
//! mount command it was given (`datenlord mount DIR ...`), at start and
//! whenever a request finds the mount gone or dead (its daemon exited:
//! the kernel answers ENOTCONN).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};

use crate::bind;
use crate::error::{Error, Result};
use crate::mountinfo::{self, MountEntry};

/// The node's DatenLord mount.
#[derive(Debug)]
pub struct Namespace {
    mountpoint: PathBuf,
    mount_command: Option<Vec<OsString>>,
    /// One mount attempt at a time.
    mounting: Mutex<()>,
}

/// `statvfs(2)` of `path`.
pub fn statvfs(path: &Path) -> std::io::Result<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a zeroed statvfs is a valid value to be filled in.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a valid out pointer.
    if unsafe { libc::statvfs(c_path.as_ptr(), &raw mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat)
}

/// Whether an IO error says the FUSE daemon behind the path is gone.
pub fn is_dead_mount(error: &std::io::Error) -> bool {
    error.raw_os_error() == Some(libc::ENOTCONN)
}

impl Namespace {
    /// The mount at `mountpoint` (an absolute path without symlinks);
    /// `mount_command` (program and arguments) makes it when it is not
    /// there, `None` leaves that to the operator.
    pub fn new(mountpoint: PathBuf, mount_command: Option<Vec<OsString>>) -> Self {
        debug_assert!(mountpoint.is_absolute());
        debug_assert!(mount_command.as_ref().is_none_or(|c| !c.is_empty()));
        Self {
            mountpoint,
            mount_command,
            mounting: Mutex::new(()),
        }
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The mount, if it is mounted and its daemon answers.
    pub fn live(&self) -> Option<MountEntry> {
        let entries = mountinfo::read().ok()?;
        let entry = mountinfo::top_at(&entries, &self.mountpoint)?;
        (entry.shows(Path::new("/")) && statvfs(&self.mountpoint).is_ok()).then(|| entry.clone())
    }

    /// The mount, made (again) with the mount command if it is not there
    /// or its daemon is gone.
    pub fn ensure(&self) -> Result<MountEntry> {
        let _one = self.mounting.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = self.check()? {
            return Ok(entry);
        }
        let Some(command) = &self.mount_command else {
            return Err(Error::Unavailable(format!(
                "{} is not a DatenLord mount: mount it (`datenlord mount {0}`) or start the plugin with the mount arguments",
                self.mountpoint.display()
            )));
        };
        self.mount(command)?;
        self.check()?.ok_or_else(|| {
            Error::Unavailable(format!(
                "the mount command returned but {} is not a DatenLord mount",
                self.mountpoint.display()
            ))
        })
    }

    /// The live mount; `None` if nothing is mounted (a dead mount is
    /// detached first when the plugin can mount it again).
    fn check(&self) -> Result<Option<MountEntry>> {
        let entries = mountinfo::read().map_err(Error::io("reading /proc/self/mountinfo"))?;
        let Some(entry) = mountinfo::top_at(&entries, &self.mountpoint) else {
            return Ok(None);
        };
        if !entry.shows(Path::new("/")) {
            return Err(Error::FailedPrecondition(format!(
                "{} holds a {} mount of {}, not a DatenLord mount",
                self.mountpoint.display(),
                entry.fs_type,
                entry.root.display()
            )));
        }
        match statvfs(&self.mountpoint) {
            Ok(_) => Ok(Some(entry.clone())),
            Err(e) if is_dead_mount(&e) && self.mount_command.is_some() => {
                tracing::warn!(mountpoint = %self.mountpoint.display(), "the DatenLord mount's daemon is gone: detaching the dead mount to mount again");
                bind::unmount(&self.mountpoint, true).map_err(Error::io(format!(
                    "detaching the dead mount {}",
                    self.mountpoint.display()
                )))?;
                Ok(None)
            }
            Err(e) => Err(Error::io(format!("statvfs {}", self.mountpoint.display()))(
                e,
            )),
        }
    }

    fn mount(&self, command: &[OsString]) -> Result<()> {
        std::fs::create_dir_all(&self.mountpoint).map_err(Error::io(format!(
            "creating the mount point {}",
            self.mountpoint.display()
        )))?;
        tracing::info!(mountpoint = %self.mountpoint.display(), ?command, "mounting DatenLord");
        let (program, args) = command
            .split_first()
            .ok_or_else(|| Error::Unavailable("the mount command is empty".into()))?;
        // The command returns once mounted; its daemon goes on detached.
        let out = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(Error::io(format!("running {}", program.to_string_lossy())))?;
        if !out.status.success() {
            return Err(Error::Unavailable(format!(
                "mounting DatenLord at {} failed ({}): {}",
                self.mountpoint.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }
}
