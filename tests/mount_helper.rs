//! `mount.fuse.datenlord` (deploy/), the mount(8) helper, end to end with
//! the real binary: called with mount(8)'s argument convention, and found
//! by `mount -t fuse.datenlord` and by an fstab line in /sbin (in a
//! private mount namespace of the test, where /usr/sbin holds it). Each
//! mount is checked the way users look at it (`findmnt`, `df -T`), written
//! and read, used by a second user (`allow_other` on by default as root,
//! off with `no_allow_other`), and unmounted.

mod support;

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use support::node::{formatted_store, log_tail, wait_exit, NodeDirs};

/// How long a daemon may take to exit after its unmount.
const EXIT_WAIT_S: u64 = 90;

fn helper() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/mount.fuse.datenlord")
}

/// Runs `program args` with the built `datenlord` as the helper's binary.
fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("DATENLORD_BIN", env!("CARGO_BIN_EXE_datenlord"))
        .env("RUST_LOG", "info")
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn ok(out: &Output, what: &str, data_dir: &Path) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}\nlog:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        log_tail(data_dir)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `findmnt`'s type and source of the mount at `dir`.
fn findmnt(dir: &Path, data_dir: &Path) -> String {
    let out = run(
        "findmnt",
        &[
            "-n",
            "-o",
            "FSTYPE,SOURCE",
            "--mountpoint",
            &dir.to_string_lossy(),
        ],
    );
    ok(&out, "findmnt", data_dir).trim().to_string()
}

/// `df -T`'s line of the mount at `dir`: file system, type, ...
fn df_line(dir: &Path, data_dir: &Path) -> Vec<String> {
    let out = run("df", &["-T", &dir.to_string_lossy()]);
    let text = ok(&out, "df -T", data_dir);
    text.lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// A shell command as user nobody.
fn as_nobody(script: &str) -> Output {
    Command::new("runuser")
        .args(["-u", "nobody", "--", "sh", "-c", script])
        .output()
        .expect("runuser")
}

/// Checks what every mount made through the helper must show, and that
/// it serves data.
fn check_mounted(dir: &Path, data_dir: &Path, source: &str) {
    assert_eq!(
        findmnt(dir, data_dir),
        format!("fuse.datenlord {source}"),
        "findmnt shows the type and the source"
    );
    let df = df_line(dir, data_dir);
    assert_eq!(
        df.get(..2),
        Some(&[source.to_string(), "fuse.datenlord".to_string()][..]),
        "df -T: {df:?}"
    );
    std::fs::write(dir.join("hello"), b"through the helper").expect("write");
    assert_eq!(
        std::fs::read(dir.join("hello")).expect("read"),
        b"through the helper"
    );
}

/// Unmounts `dir` with umount(8) and waits for its daemon to exit.
fn unmount(dir: &Path, data_dir: &Path) {
    let pid: i32 = std::fs::read_to_string(data_dir.join("datenlord.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let out = run("umount", &[&dir.to_string_lossy()]);
    ok(&out, "umount", data_dir);
    wait_exit(pid, Duration::from_secs(EXIT_WAIT_S))
        .unwrap_or_else(|e| panic!("{e}\nlog:\n{}", log_tail(data_dir)));
}

/// A directory of the mount every user may write in.
fn shared_dir(dir: &Path) -> PathBuf {
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    shared
}

#[test]
fn the_helper_mounts_embedded_with_allow_other_for_root() {
    let dirs = NodeDirs::new();
    let (mnt, data) = (dirs.mountpoint(), dirs.data_dir());
    let options = format!(
        "_netdev,noauto,nofail,defaults,rw,data_dir={},memory_size=64M,cache_size=64M",
        data.display()
    );
    // mount(8)'s convention: SOURCE DIR, flags, -o OPTIONS.
    let out = run(
        "sh",
        &[
            &helper().to_string_lossy(),
            "embedded",
            &mnt.to_string_lossy(),
            "-n",
            "-o",
            &options,
        ],
    );
    ok(&out, "the helper", &data);
    // It returned once mounted: no waiting needed.
    check_mounted(&mnt, &data, "embedded");
    let shared = shared_dir(&mnt);
    let out = as_nobody(&format!(
        "cat {0}/hello && echo mine > {1}/by-nobody && cat {1}/by-nobody",
        mnt.display(),
        shared.display()
    ));
    assert!(
        out.status.success(),
        "allow_other is on by default as root: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "through the helpermine\n"
    );
    let options = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let line = options
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(&*mnt.to_string_lossy()))
        .expect("the mount in mountinfo");
    assert!(line.contains("allow_other"), "{line}");
    unmount(&mnt, &data);
    assert!(
        !datenlord_fuse_is_mounted(&mnt),
        "unmounted: {}",
        findmnt_raw(&mnt)
    );
}

#[test]
fn no_allow_other_keeps_other_users_out_of_a_store_mount() {
    let dirs = NodeDirs::new();
    let (mnt, data) = (dirs.mountpoint(), dirs.data_dir());
    let store = formatted_store(&dirs.root().join("store"), "64K");
    let options = format!(
        "no_allow_other,noatime,data_dir={},memory_size=64M,cache_size=64M",
        data.display()
    );
    let out = run(
        &helper().to_string_lossy(),
        &[&store, &mnt.to_string_lossy(), "-o", &options],
    );
    ok(&out, "the helper", &data);
    check_mounted(&mnt, &data, &store);
    let out = as_nobody(&format!("ls {}", mnt.display()));
    assert!(
        !out.status.success(),
        "nobody may not enter a mount without allow_other"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    unmount(&mnt, &data);

    // Wrong usage and a failing mount: mount(8)'s exit codes.
    let out = run(&helper().to_string_lossy(), &["embedded"]);
    assert_eq!(out.status.code(), Some(1), "usage");
    let out = run(
        &helper().to_string_lossy(),
        &["nowhere", &mnt.to_string_lossy()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("store URL"));
    let out = run(
        &helper().to_string_lossy(),
        &[
            "embedded",
            &mnt.to_string_lossy(),
            "-o",
            &format!("data_dir={},bogus_option", data.display()),
        ],
    );
    assert_eq!(out.status.code(), Some(32), "a mount that fails");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bogus_option"),
        "datenlord says which option: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// mount(8) looks for helpers in /sbin only: this test's thread moves to
/// a private mount namespace (its children follow it; nothing propagates
/// to the machine) where /usr/sbin is a directory holding the helper.
#[test]
fn mount_t_and_an_fstab_line_find_the_helper() {
    let dirs = NodeDirs::new();
    let sbin = tempfile::tempdir().expect("tempdir");
    let installed = sbin.path().join("mount.fuse.datenlord");
    std::fs::copy(helper(), &installed).expect("copy the helper");
    std::fs::set_permissions(&installed, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    if let Err(why) = private_sbin(sbin.path()) {
        // Root in the machine's user namespace is what the tests run as
        // (scripts/test); anything else cannot mount FUSE either.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "cannot make a private mount namespace: {why}"
        );
        eprintln!("skipped: cannot make a private mount namespace here ({why})");
        return;
    }
    let (mnt, data) = (dirs.mountpoint(), dirs.data_dir());
    let options = format!("data_dir={},memory_size=64M,cache_size=64M", data.display());
    let out = run(
        "mount",
        &[
            "-t",
            "fuse.datenlord",
            "embedded",
            &mnt.to_string_lossy(),
            "-o",
            &options,
        ],
    );
    ok(&out, "mount -t fuse.datenlord", &data);
    check_mounted(&mnt, &data, "embedded");
    unmount(&mnt, &data);

    // An fstab line (in a file of the test: mount --fstab) with a store.
    let store = formatted_store(&dirs.root().join("store"), "64K");
    let data2 = dirs.root().join("data2");
    let fstab = dirs.root().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# a DatenLord volume\n{store} {} fuse.datenlord _netdev,nofail,noatime,data_dir={},memory_size=64M,cache_size=64M 0 0\n",
            mnt.display(),
            data2.display()
        ),
    )
    .expect("fstab");
    let out = run(
        "mount",
        &["--fstab", &fstab.to_string_lossy(), &mnt.to_string_lossy()],
    );
    ok(&out, "mount DIR from an fstab line", &data2);
    check_mounted(&mnt, &data2, &store);
    assert_eq!(
        std::fs::read_dir(&mnt).expect("readdir").count(),
        1,
        "the store's own namespace (only the file just written)"
    );
    unmount(&mnt, &data2);
}

/// Moves this thread into a new mount namespace whose mounts propagate
/// nowhere, with `dir` bind-mounted on /usr/sbin (/sbin on merged-/usr
/// systems, and where mount(8) looks for mount.TYPE).
fn private_sbin(dir: &Path) -> Result<(), String> {
    let sbin = Path::new("/sbin")
        .canonicalize()
        .map_err(|e| format!("/sbin: {e}"))?;
    // SAFETY: unshare only changes this thread's namespaces (and CLONE_FS
    // its root and cwd bookkeeping, which no other thread shares after it).
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(format!("unshare: {}", std::io::Error::last_os_error()));
    }
    let root = CString::new("/").expect("path");
    let none = CString::new("none").expect("none");
    // SAFETY: valid C strings; MS_PRIVATE|MS_REC changes propagation only.
    let private = unsafe {
        libc::mount(
            none.as_ptr(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if private != 0 {
        return Err(format!(
            "making / private: {}",
            std::io::Error::last_os_error()
        ));
    }
    let source = CString::new(dir.as_os_str().as_encoded_bytes()).expect("path");
    let target = CString::new(sbin.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: valid C strings; a bind mount in the private namespace.
    let bound = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if bound != 0 {
        return Err(format!(
            "binding {} on {}: {}",
            dir.display(),
            sbin.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn findmnt_raw(dir: &Path) -> String {
    String::from_utf8_lossy(&run("findmnt", &["--mountpoint", &dir.to_string_lossy()]).stdout)
        .into_owned()
}

fn datenlord_fuse_is_mounted(dir: &Path) -> bool {
    findmnt_raw(dir).contains("fuse.datenlord")
}
