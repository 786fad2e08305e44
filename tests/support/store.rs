//! The `file://` store's objects as files: listing them, ageing them.

use std::path::Path;

/// Flags that make the orphan scrub run every second with a grace of two
/// (and backups every second, as the grace needs).
pub const FAST_SCRUB: [&str; 6] = [
    "--backup-interval",
    "1",
    "--gc-grace",
    "2",
    "--scrub-interval",
    "1",
];

/// Every regular file below `dir`.
pub fn files_below(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Sets a file's mtime an hour back.
pub fn age(path: &Path) {
    let c =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("a path without NUL");
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let hour_ago = libc::timespec {
        tv_sec: i64::try_from(now_s).expect("time") - 3600,
        tv_nsec: 0,
    };
    let times = [hour_ago, hour_ago];
    // SAFETY: a valid path and two timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}
