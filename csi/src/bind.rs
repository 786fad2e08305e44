//! Bind mounts and unmounts (mount(2), umount2(2)): how a volume's
//! directory appears at the staging and target paths.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Mounts `source` (a directory) at `target` as a bind mount, read-only
/// when asked: the read-only flag of a bind mount is set by a remount of
/// the new mount, which leaves the source writable. A failed remount
/// takes the new mount away again.
pub fn bind(source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
    let source_c = c_path(source)?;
    let target_c = c_path(target)?;
    // SAFETY: valid NUL-terminated paths; no file system type or data.
    check(unsafe {
        libc::mount(
            source_c.as_ptr(),
            target_c.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    })?;
    if read_only {
        // SAFETY: as above, on the mount just made.
        let remount = check(unsafe {
            libc::mount(
                std::ptr::null(),
                target_c.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            )
        });
        if let Err(e) = remount {
            let _ = unmount(target, true);
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts the topmost mount at `target`; `detach` (MNT_DETACH) takes it
/// out of the tree even while it is busy or its FUSE daemon is gone.
pub fn unmount(target: &Path, detach: bool) -> io::Result<()> {
    let target_c = c_path(target)?;
    let flags = if detach { libc::MNT_DETACH } else { 0 };
    // SAFETY: a valid NUL-terminated path.
    check(unsafe { libc::umount2(target_c.as_ptr(), flags) })
}
