//! Volumes as directories of the DatenLord namespace, through the node's
//! mount: `/<volumes-dir>/<name>`, with the capacity in the directory's
//! extended attribute `trusted.datenlord.quota` (decimal bytes; `trusted.`
//! attributes are root's, so a pod that is not root cannot change it).
//!
//! A volume appears whole or not at all: it is made as
//! `.creating/<name>`, given its capacity, then renamed into place with
//! RENAME_NOREPLACE. A deleted volume is renamed into `.trash/` first (it
//! is gone for every later request at once) and then removed; what a
//! crash leaves in `.trash/` is removed at the next start.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::volume::VolumeName;

/// The extended attribute holding a volume's capacity in bytes.
pub const QUOTA_XATTR: &str = "trusted.datenlord.quota";

/// Where volumes are made before they appear.
const CREATING_DIR: &str = ".creating";

/// Where deleted volumes wait to be removed.
const TRASH_DIR: &str = ".trash";

/// The volumes directory's mode: volumes are reached through their bind
/// mounts, never through this directory, so only root lists them.
const VOLUMES_DIR_MODE: u32 = 0o700;

/// A new volume's mode: a pod runs as any user.
const VOLUME_DIR_MODE: u32 = 0o777;

/// Longest value of the quota attribute.
const MAX_QUOTA_XATTR_BYTES: usize = 32;

/// The volumes of a namespace.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    /// The volumes directory on the mount.
    dir: PathBuf,
    /// The volumes directory as the namespace names it (`/csi-volumes`):
    /// the root a bind mount of a volume shows in the mount table.
    dir_in_namespace: PathBuf,
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
}

fn quota_name() -> CString {
    CString::new(QUOTA_XATTR).unwrap_or_default()
}

impl VolumeStore {
    /// The volumes in `volumes_dir` (a name) of the namespace mounted at
    /// `mountpoint`.
    pub fn new(mountpoint: &Path, volumes_dir: &str) -> Self {
        Self {
            dir: mountpoint.join(volumes_dir),
            dir_in_namespace: Path::new("/").join(volumes_dir),
        }
    }

    /// The volume's directory on the mount.
    pub fn path(&self, name: &VolumeName) -> PathBuf {
        self.dir.join(name.as_str())
    }

    /// The volume's directory as the namespace names it (the root of its
    /// bind mounts in the mount table).
    pub fn path_in_namespace(&self, name: &VolumeName) -> PathBuf {
        self.dir_in_namespace.join(name.as_str())
    }

    /// Makes the volumes directory and its working directories.
    pub fn prepare(&self) -> Result<()> {
        for dir in [
            &self.dir,
            &self.dir.join(CREATING_DIR),
            &self.dir.join(TRASH_DIR),
        ] {
            std::fs::create_dir_all(dir)
                .map_err(Error::io(format!("creating {}", dir.display())))?;
        }
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(VOLUMES_DIR_MODE))
            .map_err(Error::io(format!("chmod {}", self.dir.display())))
    }

    /// The capacity of volume `name`, `None` if there is no such volume.
    pub fn capacity(&self, name: &VolumeName) -> Result<Option<u64>> {
        let path = self.path(name);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(Error::FailedPrecondition(format!(
                    "{} is not a directory: it was not made by the CSI driver",
                    path.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("stat {}", path.display()))(e)),
        }
        read_quota(&path).map(Some)
    }

    /// Makes volume `name` of `bytes`; `false` if a volume of that name
    /// appeared meanwhile (it is left as it is).
    pub fn create(&self, name: &VolumeName, bytes: u64) -> Result<bool> {
        let staging = self.dir.join(CREATING_DIR).join(name.as_str());
        // A start that a crash interrupted.
        match std::fs::remove_dir_all(&staging) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("removing {}", staging.display()))(e)),
        }
        std::fs::create_dir(&staging).map_err(Error::io(format!("mkdir {}", staging.display())))?;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(VOLUME_DIR_MODE))
            .map_err(Error::io(format!("chmod {}", staging.display())))?;
        write_quota(&staging, bytes)?;
        let path = self.path(name);
        match rename_noreplace(&staging, &path) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {
                let _ = std::fs::remove_dir_all(&staging);
                Ok(false)
            }
            Err(e) => Err(Error::io(format!(
                "renaming {} to {}",
                staging.display(),
                path.display()
            ))(e)),
        }
    }

    /// Records a new capacity of volume `name`.
    pub fn set_capacity(&self, name: &VolumeName, bytes: u64) -> Result<()> {
        write_quota(&self.path(name), bytes)
    }

    /// Deletes volume `name` and everything in it; `false` if there was
    /// no such volume.
    pub fn delete(&self, name: &VolumeName) -> Result<bool> {
        let path = self.path(name);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let trash = self
            .dir
            .join(TRASH_DIR)
            .join(format!("{}.{nanos}", name.as_str()));
        match std::fs::rename(&path, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(Error::io(format!(
                    "renaming {} to {}",
                    path.display(),
                    trash.display()
                ))(e))
            }
        }
        // The volume is gone; its files are removed now or at next start.
        if let Err(e) = std::fs::remove_dir_all(&trash) {
            tracing::warn!(path = %trash.display(), error = %e, "a deleted volume's files stay until the plugin starts again");
        }
        Ok(true)
    }

    /// Removes what deletions left in the trash (a crash, an error).
    pub fn purge_trash(&self) {
        let trash = self.dir.join(TRASH_DIR);
        let Ok(entries) = std::fs::read_dir(&trash) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a deleted volume's files");
            }
        }
    }

    /// The names of all volumes, sorted.
    pub fn list(&self) -> Result<Vec<VolumeName>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("listing {}", self.dir.display()))(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(Error::io(format!("listing {}", self.dir.display())))?;
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let name = entry.file_name();
            if let Some(name) = name.to_str().and_then(|n| VolumeName::parse(n).ok()) {
                if is_dir {
                    names.push(name);
                }
            }
        }
        names.sort_unstable();
        Ok(names)
    }
}

fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let from_c = c_path(from)?;
    let to_c = c_path(to)?;
    // SAFETY: valid NUL-terminated paths, relative to no directory fd.
    let result = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn write_quota(dir: &Path, bytes: u64) -> Result<()> {
    let value = bytes.to_string();
    let path_c = c_path(dir).map_err(Error::io(format!("setxattr {}", dir.display())))?;
    // SAFETY: valid NUL-terminated path and name; `value` outlives the call.
    let result = unsafe {
        libc::setxattr(
            path_c.as_ptr(),
            quota_name().as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if result != 0 {
        return Err(Error::io(format!(
            "setting {QUOTA_XATTR} of {}",
            dir.display()
        ))(io::Error::last_os_error()));
    }
    Ok(())
}

fn read_quota(dir: &Path) -> Result<u64> {
    let path_c = c_path(dir).map_err(Error::io(format!("getxattr {}", dir.display())))?;
    let mut buf = [0u8; MAX_QUOTA_XATTR_BYTES];
    // SAFETY: valid NUL-terminated path and name; `buf` is writable for its length.
    let len = unsafe {
        libc::getxattr(
            path_c.as_ptr(),
            quota_name().as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let Ok(len) = usize::try_from(len) else {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENODATA) {
            return Err(Error::FailedPrecondition(format!(
                "{} has no {QUOTA_XATTR}: it was not made by the CSI driver",
                dir.display()
            )));
        }
        return Err(Error::io(format!(
            "reading {QUOTA_XATTR} of {}",
            dir.display()
        ))(e));
    };
    std::str::from_utf8(&buf[..len])
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "{QUOTA_XATTR} of {} is not a number of bytes",
                dir.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in a local temporary directory (`trusted.` attributes need
    /// root; scripts/test runs as root, and under CI a skip is a failure).
    fn local_store() -> Option<(tempfile::TempDir, VolumeStore)> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "the store tests need root (trusted.* attributes)"
            );
            eprintln!("skipped: trusted.* attributes need root");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let store = VolumeStore::new(dir.path(), "csi-volumes");
        store.prepare().expect("prepare");
        Some((dir, store))
    }

    fn name(text: &str) -> VolumeName {
        VolumeName::parse(text).expect("a name")
    }

    #[test]
    fn volumes_appear_whole_and_leave_nothing_behind() {
        let Some((dir, store)) = local_store() else {
            return;
        };
        let v = name("pvc-1");
        assert_eq!(store.capacity(&v).ok(), Some(None));
        // What a crash in the middle of a creation left is replaced.
        std::fs::create_dir_all(dir.path().join("csi-volumes/.creating/pvc-1/junk"))
            .expect("a half-made volume");
        assert!(store.create(&v, 4096).expect("create"));
        assert_eq!(store.capacity(&v).ok(), Some(Some(4096)));
        let mode = std::fs::metadata(store.path(&v))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, VOLUME_DIR_MODE);
        // The name is taken: a second creation leaves the first alone.
        assert!(!store.create(&v, 1).expect("create again"));
        assert_eq!(store.capacity(&v).ok(), Some(Some(4096)));
        let creating = std::fs::read_dir(dir.path().join("csi-volumes/.creating")).expect("ls");
        assert_eq!(creating.count(), 0);
        store.set_capacity(&v, 8192).expect("grow");
        assert_eq!(store.capacity(&v).ok(), Some(Some(8192)));
        assert_eq!(store.list().expect("list"), vec![v.clone()]);
        assert!(store.delete(&v).expect("delete"));
        assert!(!store.delete(&v).expect("delete again"));
        assert!(store.list().expect("list").is_empty());
        // What a deletion could not remove goes at the next start.
        std::fs::create_dir_all(dir.path().join("csi-volumes/.trash/old.1/x")).expect("trash");
        store.purge_trash();
        let trash = std::fs::read_dir(dir.path().join("csi-volumes/.trash")).expect("ls");
        assert_eq!(trash.count(), 0);
    }

    #[test]
    fn what_the_driver_did_not_make_is_refused() {
        let Some((dir, store)) = local_store() else {
            return;
        };
        let root = dir.path().join("csi-volumes");
        std::fs::create_dir(root.join("by-hand")).expect("mkdir");
        std::fs::write(root.join("a-file"), b"x").expect("a file");
        std::fs::create_dir(root.join("not a volume")).expect("mkdir");
        assert!(matches!(
            store.capacity(&name("by-hand")),
            Err(Error::FailedPrecondition(_))
        ));
        assert!(matches!(
            store.capacity(&name("a-file")),
            Err(Error::FailedPrecondition(_))
        ));
        // Only directories with volume names are listed (not the file, the
        // space, nor the driver's own hidden directories).
        assert_eq!(store.list().expect("list"), vec![name("by-hand")]);
    }
}
