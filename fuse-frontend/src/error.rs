//! [`FuseError`]: why a mount could not be made, each with what to do.

/// Why mounting failed.
#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    /// The mountpoint does not exist.
    #[error("mountpoint {0} does not exist: create it with `mkdir -p {0}`")]
    MountpointMissing(String),
    /// The mountpoint is not a directory.
    #[error("mountpoint {0} is not a directory: mount on an empty directory")]
    NotADirectory(String),
    /// Something is mounted there already, or it is in use.
    #[error("mountpoint {0} is busy: it is already a mount point, or in use; unmount it with `fusermount3 -u {0}` or `umount {0}`, or pick another directory")]
    Busy(String),
    /// No FUSE device.
    #[error("/dev/fuse does not exist: load the module with `modprobe fuse` (in a container: run with --device /dev/fuse)")]
    NoDevice,
    /// Not allowed to mount.
    #[error("not permitted to mount on {0}: {1} (run as root, or install fuse3 so that the setuid fusermount3 exists; allow_other needs user_allow_other in /etc/fuse.conf)")]
    NotPermitted(String, String),
    /// A mount option is wrong.
    #[error("{0}")]
    Options(String),
    /// FUSE over io_uring was asked for (`-o uring`) and cannot be had; the
    /// message says how to enable it.
    #[error("{0}")]
    Uring(String),
    /// The kernel or fuse-backend-rs refused; the message says which step.
    #[error("{0}")]
    Session(String),
    /// The file system failed while unmounting (e.g. a flush).
    #[error("unmount: {0}")]
    Fs(#[from] datenlord_fs::FsError),
}
