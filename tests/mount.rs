//! `datenlord mount` end to end, as users run it: the real command line,
//! a real FUSE mount, the local-directory store. POSIX conformance
//! (pjdfstest), a random-operation comparison with a local directory (fsx
//! style), real workloads (tar, git, sqlite, cp -a), kill -9 during writes,
//! restart with an empty cache, and restoring the namespace from the
//! store's metadata backup.

mod support;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use support::fsx::{self, FsxConfig};
use support::node::{datenlord, Mounted, NodeDirs, UringSwitch};
use support::store::{age, files_below, FAST_SCRUB};

fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("bash")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "in {}: {script}\nstdout: {}\nstderr: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn mount_errors_say_what_to_do() {
    let dirs = NodeDirs::new();
    let missing = dirs.root().join("no-such-dir");
    let out = datenlord(&[
        "mount",
        &missing.to_string_lossy(),
        "--data-dir",
        &dirs.data_dir().to_string_lossy(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not exist") && err.contains("mkdir"),
        "{err}"
    );

    let out = datenlord(&[
        "mount",
        &dirs.mountpoint().to_string_lossy(),
        "--data-dir",
        &dirs.data_dir().to_string_lossy(),
        "-o",
        "no_such_option",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no_such_option"), "{err}");

    // More memory than the machine has: refused naming the limit, not a
    // daemon that never finishes starting.
    let started = std::time::Instant::now();
    let err = Mounted::try_start(
        &dirs.mountpoint(),
        &dirs.data_dir(),
        &["--memory-size", "100T"],
    )
    .expect_err("100T of memory");
    assert!(err.contains("this machine's memory"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));

    let mounted = Mounted::start(&dirs, &[]);
    let other = NodeDirs::new();
    let out = datenlord(&[
        "mount",
        &dirs.mountpoint().to_string_lossy(),
        "--data-dir",
        &other.data_dir().to_string_lossy(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already a mount point"), "{err}");

    // A second daemon on the same data directory is refused.
    let out = datenlord(&[
        "mount",
        &other.mountpoint().to_string_lossy(),
        "--data-dir",
        &dirs.data_dir().to_string_lossy(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use"), "{err}");
    mounted.unmount();
}

#[test]
fn files_directories_links_and_attributes() {
    let dirs = NodeDirs::new();
    let m = Mounted::start(&dirs, &[]);
    let root = m.path();
    std::fs::create_dir_all(root.join("a/b/c")).expect("mkdir -p");
    std::fs::write(root.join("a/b/c/f"), b"hello").expect("write");
    assert_eq!(std::fs::read(root.join("a/b/c/f")).expect("read"), b"hello");
    std::fs::rename(root.join("a/b/c/f"), root.join("a/g")).expect("rename");
    std::fs::hard_link(root.join("a/g"), root.join("a/h")).expect("link");
    assert_eq!(
        std::fs::metadata(root.join("a/g")).expect("stat").nlink(),
        2
    );
    std::os::unix::fs::symlink("g", root.join("a/s")).expect("symlink");
    assert_eq!(
        std::fs::read(root.join("a/s")).expect("read via link"),
        b"hello"
    );
    std::fs::set_permissions(root.join("a/g"), std::fs::Permissions::from_mode(0o640))
        .expect("chmod");
    assert_eq!(
        std::fs::metadata(root.join("a/h")).expect("stat").mode() & 0o7777,
        0o640
    );
    let mut names: Vec<String> = std::fs::read_dir(root.join("a"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["b", "g", "h", "s"]);
    // A file larger than a block, written at unaligned offsets.
    let big: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    let mut f = std::fs::File::create(root.join("big")).expect("create");
    for chunk in big.chunks(333_333) {
        f.write_all(chunk).expect("write");
    }
    f.sync_all().expect("fsync");
    drop(f);
    assert_eq!(std::fs::read(root.join("big")).expect("read big"), big);
    std::fs::remove_file(root.join("a/h")).expect("unlink");
    std::fs::remove_dir_all(root.join("a")).expect("rm -r");
    m.unmount();
    // Data and namespace survive a clean remount.
    let m = Mounted::start(&dirs, &[]);
    assert_eq!(
        std::fs::read(m.path().join("big")).expect("read big again"),
        big
    );
    assert!(!m.path().join("a").exists());
    m.unmount();
}

/// What `stat` shows of each name after each step of [`change_through`].
type Seen = Vec<(&'static str, Option<(u32, u64, u64, u32, u32, bool)>)>;

/// Changes `root` step by step, each through another name than the one
/// then looked at (hard links share the inode), and records what `stat`
/// shows: mode, links, size (not of directories: file systems differ),
/// owner, group, and whether the mtime is the one set.
fn change_through(root: &Path) -> Seen {
    use std::os::unix::fs::{chown, symlink};
    const MTIME_SET: u64 = 1_000_000_000;
    let stat = |name: &str| {
        std::fs::symlink_metadata(root.join(name)).ok().map(|m| {
            let size = if m.is_dir() { 0 } else { m.size() };
            let mode = m.mode();
            (
                mode,
                m.nlink(),
                size,
                m.uid(),
                m.gid(),
                u64::try_from(m.mtime()) == Ok(MTIME_SET),
            )
        })
    };
    let mut seen = Seen::new();
    let mut look = |step: &'static str, names: &[&str]| {
        for name in names {
            seen.push((step, stat(name)));
        }
    };
    let all = ["f", "d", "d/g", "d/h", "d/l", "nope"];
    std::fs::write(root.join("f"), b"12345").expect("write f");
    std::fs::create_dir(root.join("d")).expect("mkdir d");
    std::fs::hard_link(root.join("f"), root.join("d/g")).expect("link");
    look("start", &all);
    std::fs::set_permissions(root.join("f"), std::fs::Permissions::from_mode(0o640))
        .expect("chmod");
    look("chmod", &["d/g"]);
    let mut g = std::fs::OpenOptions::new()
        .append(true)
        .open(root.join("d/g"))
        .expect("open d/g");
    g.write_all(&[7; 100]).expect("append");
    drop(g);
    look("append", &["f"]);
    let f = std::fs::File::options()
        .write(true)
        .open(root.join("f"))
        .expect("open f");
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(MTIME_SET))
        .expect("set mtime");
    drop(f);
    look("mtime", &["d/g"]);
    chown(root.join("d/g"), Some(1234), Some(5678)).expect("chown");
    look("chown", &["f"]);
    std::fs::remove_file(root.join("d/g")).expect("unlink");
    look("unlink", &["f", "d/g"]);
    std::fs::create_dir(root.join("d/sub")).expect("mkdir d/sub");
    look("mkdir", &["d"]);
    std::fs::rename(root.join("f"), root.join("d/h")).expect("rename");
    look("rename", &["f", "d/h"]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("d/h"))
        .and_then(|f| f.set_len(10))
        .expect("truncate");
    look("truncate", &["d/h"]);
    std::fs::write(root.join("nope"), b"now").expect("create nope");
    look("create", &["nope"]);
    std::fs::remove_dir(root.join("d/sub")).expect("rmdir");
    symlink("h", root.join("d/l")).expect("symlink");
    look("end", &all);
    seen
}

/// The embedded mount is its namespace's only writer: the kernel keeps
/// names, attributes and missing names far past a node's 1 s (a `stat`
/// later asks the daemon nothing), and every change made through the
/// mount still shows at once, as on a local directory. With `-o
/// attr_timeout=1,...` the same stats reach the daemon again.
#[test]
fn the_embedded_mount_keeps_kernel_caches_and_shows_every_change() {
    let local = tempfile::tempdir().expect("tempdir");
    let expected = change_through(local.path());
    let asked = |addr: &str| support::node::fuse_requests_settled(addr, &["lookup", "getattr"]);
    for (extra, cached) in [
        (None, true),
        (
            Some("attr_timeout=1,entry_timeout=1,negative_timeout=1"),
            false,
        ),
    ] {
        let dirs = NodeDirs::new();
        let addr = support::masters::free_addr();
        let mut args = vec!["--metrics-addr", addr.as_str()];
        if let Some(o) = extra {
            args.extend(["-o", o]);
        }
        let m = Mounted::start(&dirs, &args);
        let names = ["f", "d", "d/g", "d/h", "d/l", "nope"];
        std::fs::write(m.path().join("f"), b"x").expect("write");
        std::fs::create_dir(m.path().join("d")).expect("mkdir");
        std::fs::hard_link(m.path().join("f"), m.path().join("d/g")).expect("link");
        let stat_all = || {
            for name in names {
                let _ = std::fs::symlink_metadata(m.path().join(name));
            }
        };
        stat_all();
        let before = asked(&addr);
        std::thread::sleep(std::time::Duration::from_millis(1500));
        stat_all();
        let reached = asked(&addr) - before;
        if cached {
            assert_eq!(reached, 0, "stats 1.5 s later reached the daemon");
        } else {
            assert!(reached >= 4, "only {reached} stats reached the daemon");
        }
        for name in ["d/g", "f", "d"] {
            let path = m.path().join(name);
            if path.is_dir() {
                std::fs::remove_dir(path).expect("rmdir");
            } else {
                std::fs::remove_file(path).expect("unlink");
            }
        }
        assert_eq!(change_through(m.path()), expected, "{extra:?}");
        m.unmount();
    }
}

/// `path` for a libc call.
fn c_path(path: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).expect("a path without NUL")
}

/// The mode bits `statx` gives when asked for the mode alone: what the
/// kernel keeps, unless it was told to drop it.
fn mode_alone(path: &Path) -> u32 {
    let c = c_path(path);
    // SAFETY: statx is plain old data; zeros are valid.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and a statx buffer for the call.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            0,
            libc::STATX_MODE,
            &raw mut stx,
        )
    };
    assert_eq!(rc, 0, "statx {}", path.display());
    u32::from(stx.stx_mode) & 0o7777
}

/// A write by another user clears set-user-ID and set-group-ID (with
/// group-execute) in the file system, and the kernel, which keeps the
/// embedded mount's attributes for long and drops only size and times
/// after a write, is told to drop the mode too: a `statx` for the mode
/// alone shows the cleared bits.
/// Opening a running program to write or truncate it fails with ETXTBSY
/// and leaves it whole and running. (pjdfstest's open::etxtbsy, which
/// opens while the program is still being loaded, failed under load with
/// FUSE's ATOMIC_O_TRUNC on — 14 of 80 runs with three CPU hogs, 0 of 80
/// with it off, the program dying mid-exec with EFAULT; this test checks
/// the semantics once the program runs, not that race.)
#[test]
fn truncating_a_running_program_fails_and_leaves_it_whole() {
    let dirs = NodeDirs::new();
    let m = Mounted::start(&dirs, &[]);
    let program = m.path().join("sleeper");
    std::fs::copy("/bin/sleep", &program).expect("copy /bin/sleep");
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut child = Command::new(&program).arg("30").spawn().expect("run it");
    // Until it runs (the exec's point of no return comes before the
    // loader is done: wait for /proc to show it as the program).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_link(format!("/proc/{}/exe", child.id())).ok() != Some(program.clone()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the program never ran"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for (flags, what) in [
        (libc::O_WRONLY, "O_WRONLY"),
        (libc::O_RDONLY | libc::O_TRUNC, "O_RDONLY|O_TRUNC"),
    ] {
        let c = c_path(&program);
        // SAFETY: a valid C string; the fd, if any, is closed below.
        let fd = unsafe { libc::open(c.as_ptr(), flags) };
        let err = std::io::Error::last_os_error();
        if fd >= 0 {
            // SAFETY: our own fd.
            unsafe { libc::close(fd) };
        }
        assert_eq!(fd, -1, "{what} opened a running program");
        assert_eq!(err.raw_os_error(), Some(libc::ETXTBSY), "{what}: {err}");
    }
    assert_eq!(
        std::fs::read(&program).expect("read"),
        std::fs::read("/bin/sleep").expect("read /bin/sleep"),
        "the program is whole"
    );
    assert!(child.try_wait().expect("wait").is_none(), "it still runs");
    child.kill().expect("kill");
    child.wait().expect("wait");
    // Once it is gone, O_TRUNC truncates.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&program)
        .expect("truncate");
    assert_eq!(std::fs::metadata(&program).expect("stat").len(), 0);
    m.unmount();
}

#[test]
fn privileges_cleared_by_a_write_show_in_the_kernel_at_once() {
    let dirs = NodeDirs::new();
    let m = Mounted::start(&dirs, &["-o", "allow_other"]);
    let f = m.path().join("setid");
    std::fs::write(&f, b"#!/bin/sh\n").expect("create");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o6777)).expect("chmod");
    assert_eq!(mode_alone(&f), 0o6777);
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--", "sh", "-c"])
        .arg(format!("echo x >> {}", f.display()))
        .output()
        .expect("runuser");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode_alone(&f), 0o777, "the kernel still shows the old bits");
    assert_eq!(std::fs::metadata(&f).expect("stat").mode() & 0o7777, 0o777);
    m.unmount();
}

/// The times and block count the file system sets when written blocks are
/// flushed (at close) show in the kernel at once, as they show after a
/// remount, although the embedded mount's kernel keeps attributes for a
/// day and looked at the file before the flush.
#[test]
fn times_set_by_a_flush_show_in_the_kernel_at_once() {
    use std::os::unix::fs::MetadataExt;
    let dirs = NodeDirs::new();
    let m = Mounted::start(&dirs, &[]);
    let path = m.path().join("flushed");
    let mut f = std::fs::File::create(&path).expect("create");
    f.write_all(b"first").expect("write");
    let _ = f.metadata().expect("fstat");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    f.write_all(b"second").expect("write");
    let _ = f.metadata().expect("fstat");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    drop(f);
    let view = |m: std::fs::Metadata| {
        (
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
            m.blocks(),
            m.size(),
        )
    };
    let seen = view(std::fs::metadata(&path).expect("stat"));
    m.unmount();
    let m = Mounted::start(&dirs, &[]);
    let truth = view(std::fs::metadata(m.path().join("flushed")).expect("stat"));
    assert_eq!(
        seen, truth,
        "the kernel kept attributes from before the flush"
    );
    m.unmount();
}

/// What the kernel shows of every kind of change made through the
/// embedded mount (whose kernel keeps attributes for a day) is what the
/// namespace holds: the same stats after a remount. Covers xattrs,
/// fallocate, punching a hole, copy_file_range, utimes, truncate and chmod,
/// besides writes and closes.
#[test]
fn the_kernel_shows_what_the_namespace_holds_after_every_kind_of_change() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let dirs = NodeDirs::new();
    let m = Mounted::start(&dirs, &[]);
    let root = m.path().to_path_buf();
    std::fs::create_dir(root.join("d")).expect("mkdir");
    std::fs::write(root.join("a"), vec![1u8; 100_000]).expect("write a");
    std::fs::write(root.join("b"), vec![2u8; 5_000]).expect("write b");
    let name = c_path(&root.join("a"));
    // SAFETY: valid C strings and a value buffer of its length.
    let set = unsafe {
        libc::setxattr(
            name.as_ptr(),
            c"user.k".as_ptr(),
            b"v".as_ptr().cast(),
            1,
            0,
        )
    };
    assert_eq!(set, 0, "setxattr");
    let file_a = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(root.join("a"))
        .expect("open a");
    // SAFETY: a valid fd and plain integers.
    assert_eq!(
        unsafe { libc::fallocate(file_a.as_raw_fd(), 0, 200_000, 300_000) },
        0,
        "fallocate"
    );
    let file_b = std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("b"))
        .expect("open b");
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::fallocate(file_b.as_raw_fd(), punch, 0, 4096) },
        0,
        "punch"
    );
    drop(file_b);
    let file_c = std::fs::File::create(root.join("c")).expect("create c");
    let mut off_in: i64 = 0;
    let mut off_out: i64 = 0;
    // SAFETY: valid fds and offsets for the call.
    let copied = unsafe {
        libc::copy_file_range(
            file_a.as_raw_fd(),
            &raw mut off_in,
            file_c.as_raw_fd(),
            &raw mut off_out,
            50_000,
            0,
        )
    };
    assert_eq!(copied, 50_000, "copy_file_range");
    drop((file_a, file_c));
    let file_b = std::fs::File::options()
        .write(true)
        .open(root.join("b"))
        .expect("open b");
    file_b
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_100_000_000))
        .expect("utimes");
    drop(file_b);
    std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("c"))
        .and_then(|f| f.set_len(123))
        .expect("truncate");
    std::fs::set_permissions(root.join("a"), std::fs::Permissions::from_mode(0o600))
        .expect("chmod");
    let stats = |root: &Path| -> Vec<(u32, u64, u64, u64, i64, i64)> {
        ["a", "b", "c", "d"]
            .iter()
            .map(|n| {
                let s = std::fs::metadata(root.join(n)).expect("stat");
                (
                    s.mode(),
                    s.nlink(),
                    s.size(),
                    s.blocks(),
                    s.mtime(),
                    s.mtime_nsec(),
                )
            })
            .collect()
    };
    let seen = stats(&root);
    m.unmount();
    let m = Mounted::start(&dirs, &[]);
    assert_eq!(
        stats(m.path()),
        seen,
        "the kernel showed other attributes than the namespace holds"
    );
    m.unmount();
}

/// The fields after the command of `/proc/PID/task/TID/stat`.
fn task_stat(pid: i32, tid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// `-o idle_poll=MICROS`: one `SCHED_IDLE` spinner per CPU in the daemon;
/// they use no CPU time while no request comes, and the mount works.
#[test]
fn idle_poll_spinners_are_idle_class_and_sleep_between_requests() {
    let dirs = NodeDirs::new();
    let m = Mounted::start(&dirs, &["-o", "idle_poll=500"]);
    let pid = m.pid();
    std::fs::write(m.path().join("f"), b"spun").expect("write");
    assert_eq!(std::fs::read(m.path().join("f")).expect("read"), b"spun");
    let spinners = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("tasks")
            .filter_map(|e| {
                let tid = e.ok()?.file_name().into_string().ok()?;
                let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
                comm.starts_with("dl-idle-poll").then_some(tid)
            })
            .collect()
    };
    let tids = spinners();
    // SAFETY: no arguments.
    let cpus = usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(1);
    assert!(
        !tids.is_empty() && tids.len() <= cpus,
        "one spinner per CPU the daemon may use: {tids:?}"
    );
    // Field 41 (39th after the command) is the policy.
    for tid in &tids {
        let stat = task_stat(pid, tid).expect("spinner stat");
        assert_eq!(stat[38], libc::SCHED_IDLE.to_string(), "policy of {tid}");
    }
    // Quiet: utime + stime of the spinners stay put.
    let cpu_ticks = || -> u64 {
        tids.iter()
            .filter_map(|tid| task_stat(pid, tid))
            .map(|s| s[11].parse::<u64>().unwrap_or(0) + s[12].parse::<u64>().unwrap_or(0))
            .sum()
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    let before = cpu_ticks();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let spent = cpu_ticks() - before;
    assert!(
        spent <= 5,
        "idle spinners used {spent} ticks in a quiet second"
    );
    m.unmount();
}

#[test]
fn pjdfstest_passes_on_the_mount() {
    let dirs = NodeDirs::new();
    // The suite switches to unprivileged users: they need allow_other.
    let m = Mounted::start(&dirs, &["-o", "allow_other"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pjdfstest");
    let out = Command::new(&script)
        .arg(m.path())
        .output()
        .expect("scripts/pjdfstest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("Summary:"))
        .unwrap_or("no summary")
        .to_owned();
    let failed: Vec<&str> = stdout.lines().filter(|l| l.ends_with("FAILED")).collect();
    assert!(
        out.status.success(),
        "pjdfstest on the mount: {summary}\nfailed:\n{}\nstderr: {}\nlog:\n{}",
        failed.join("\n"),
        String::from_utf8_lossy(&out.stderr),
        m.log()
    );
    eprintln!("pjdfstest: {summary}");
    m.unmount();
}

fn fsx_against_local(cores: &str, ops: u64, seed: u64) {
    let dirs = NodeDirs::new();
    let m = mount_for_fsx(&dirs, cores, &[]);
    fsx_on(&dirs, &m, ops, seed);
    m.unmount();
}

/// A mount for fsx: 64 KiB blocks keep read-modify-write small; a short GC
/// grace keeps the overwritten versions of 100k ops from filling the disk.
fn mount_for_fsx(dirs: &NodeDirs, cores: &str, extra: &[&str]) -> Mounted {
    let mut args = vec![
        "--cores",
        cores,
        "--block-size",
        "64K",
        "--cache-size",
        "256M",
        "--backup-interval",
        "2",
        "--gc-grace",
        "4",
    ];
    args.extend_from_slice(extra);
    Mounted::start(dirs, &args)
}

/// Runs `ops` fsx operations on the mount and a local directory alike.
fn fsx_on(dirs: &NodeDirs, m: &Mounted, ops: u64, seed: u64) {
    let reference = dirs.root().join("reference");
    std::fs::create_dir_all(&reference).expect("mkdir reference");
    let config = FsxConfig {
        seed,
        ops,
        ..FsxConfig::default()
    };
    if let Err(e) = fsx::run(&config, m.path(), &reference) {
        panic!("{e}\nlog:\n{}", m.log());
    }
}

#[test]
fn fsx_matches_a_local_directory_two_cores() {
    fsx_against_local("2", 100_000, 0x5eed);
}

#[test]
fn fsx_matches_a_local_directory_one_core() {
    fsx_against_local("1", 20_000, 0xfeed);
}

/// fsx on a mount served over FUSE-over-io_uring queues (`-o uring`),
/// then SIGTERM: the daemon ends its ring threads and exits. Shorter than
/// the classic runs (fsx costs ~4 ms an op here, whichever transport).
#[test]
fn fsx_and_sigterm_over_io_uring() {
    let dirs = NodeDirs::new();
    let Some(switch) = UringSwitch::set("Y") else {
        return;
    };
    let m = mount_for_fsx(&dirs, "2", &["-o", "uring"]);
    // The connection keeps the ring; the switch only matters at INIT.
    drop(switch);
    assert!(m.log().contains("FUSE over io_uring"), "{}", m.log());
    fsx_on(&dirs, &m, 5_000, 0x0051_0a11);
    let pid = m.pid();
    // SAFETY: a plain signal to our own daemon.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    support::node::wait_exit(pid, std::time::Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\nlog:\n{}", m.log()));
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .contains(&format!(" {} ", m.path().display()));
    assert!(!mounted, "SIGTERM unmounted\nlog:\n{}", m.log());
}

#[test]
fn workloads_tar_git_sqlite_cp() {
    let dirs = NodeDirs::new();
    let m = Mounted::start(&dirs, &[]);
    let src = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tarball = dirs.root().join("src.tar");
    sh(
        src,
        &format!(
            "tar -cf {} --exclude=target --exclude=.git engine cluster src tests",
            tarball.display()
        ),
    );
    let mnt = m.path();
    sh(
        mnt,
        &format!("mkdir x && tar -xf {} -C x", tarball.display()),
    );
    let local = dirs.root().join("local");
    std::fs::create_dir_all(&local).expect("mkdir");
    sh(&local, &format!("tar -xf {}", tarball.display()));
    let sums = |dir: &Path| sh(dir, "find . -type f -print0 | sort -z | xargs -0 sha256sum");
    assert_eq!(sums(&mnt.join("x")), sums(&local), "tar tree checksums");

    sh(
        &mnt.join("x"),
        "git init -q . && git add -A && git -c user.name=t -c user.email=t@e commit -qm one && git log --oneline | grep -q one && git fsck --no-progress",
    );

    // sqlite with concurrent writers (WAL mode needs shared memory maps
    // and POSIX locks on the mount).
    sh(
        mnt,
        "sqlite3 db.sqlite 'PRAGMA journal_mode=WAL; CREATE TABLE t(w INTEGER, i INTEGER);' >/dev/null
         for w in 1 2 3 4; do
           ( for i in $(seq 1 50); do
               sqlite3 -cmd '.timeout 10000' db.sqlite \"INSERT INTO t VALUES($w, $i);\" || exit 1
             done ) &
         done
         wait
         test \"$(sqlite3 db.sqlite 'SELECT count(*) FROM t;')\" = 200
         test \"$(sqlite3 db.sqlite 'PRAGMA integrity_check;')\" = ok",
    );

    // cp -a round trip keeps modes, links and times.
    sh(
        &local,
        "mkdir -p tree/d && echo data > tree/f && chmod 0751 tree/f && ln tree/f tree/hard && ln -s f tree/sym && touch -d '2001-02-03 04:05:06' tree/f tree/d",
    );
    sh(
        dirs.root(),
        &format!(
            "cp -a local/tree {mnt}/tree && mkdir back && cp -a {mnt}/tree back/ && \
             test \"$(stat -c '%a %Y %h' local/tree/f)\" = \"$(stat -c '%a %Y %h' back/tree/f)\" && \
             test \"$(stat -c '%Y' local/tree/d)\" = \"$(stat -c '%Y' back/tree/d)\" && \
             test \"$(readlink back/tree/sym)\" = f && \
             test \"$(stat -c '%i' {mnt}/tree/f)\" = \"$(stat -c '%i' {mnt}/tree/hard)\"",
            mnt = mnt.display()
        ),
    );
    m.unmount();
}

#[test]
fn kill9_during_writes_keeps_every_fsynced_file() {
    let dirs = NodeDirs::new();
    let m = Mounted::start(&dirs, &[]);
    let mnt = m.path().to_owned();
    // The writer records a file's name only after its fsync returned.
    let synced = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Vec<u8>)>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (synced, stop, mnt) = (synced.clone(), stop.clone(), mnt.clone());
        std::thread::spawn(move || {
            for i in 0u32.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let name = format!("f{i}");
                let data: Vec<u8> = (0..(50_000 + i * 997)).map(|j| (j ^ i) as u8).collect();
                let Ok(mut f) = std::fs::File::create(mnt.join(&name)) else {
                    break;
                };
                if f.write_all(&data).and_then(|()| f.sync_all()).is_err() {
                    break;
                }
                synced.lock().expect("lock").push((name, data));
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(1500));
    m.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = writer.join();
    let synced = synced.lock().expect("lock").clone();
    assert!(synced.len() > 3, "the writer made progress before the kill");
    let m = Mounted::start(&dirs, &[]);
    for (name, data) in &synced {
        let found = std::fs::read(m.path().join(name))
            .unwrap_or_else(|e| panic!("{name} was fsynced before kill -9 but: {e}"));
        assert!(found == *data, "{name}: content differs after kill -9");
    }
    m.unmount();
}

#[test]
fn empty_cache_and_lost_node_are_recovered_from_the_store() {
    let dirs = NodeDirs::new();
    let store_dir = dirs.root().join("store");
    std::fs::create_dir_all(&store_dir).expect("mkdir store");
    let store = format!("file://{}", store_dir.display());
    // An explicit store must be formatted first, and mount says so.
    let err = Mounted::try_start(&dirs.mountpoint(), &dirs.data_dir(), &["--store", &store])
        .expect_err("an unformatted store is refused");
    assert!(err.contains("datenlord format"), "{err}");
    let out = datenlord(&["format", "--store", &store, "--block-size", "256K"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = Mounted::start(&dirs, &["--store", &store]);
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::create_dir(m.path().join("d")).expect("mkdir");
    std::fs::write(m.path().join("d/file"), &data).expect("write");
    m.unmount();

    // Same data dir, cache wiped: everything is read back from the store.
    std::fs::remove_dir_all(dirs.data_dir().join("cache")).expect("wipe cache");
    let m = Mounted::start(&dirs, &["--store", &store]);
    assert_eq!(std::fs::read(m.path().join("d/file")).expect("read"), data);
    m.unmount();

    // The node is lost: a new, empty data dir restores the namespace from
    // the store's metadata backup.
    let fresh = dirs.root().join("fresh-data");
    let m = Mounted::try_start(&dirs.mountpoint(), &fresh, &["--store", &store])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        std::fs::read(m.path().join("d/file")).expect("read restored"),
        data
    );
    assert!(
        m.log().contains("restored the namespace"),
        "the daemon says it restored: {}",
        m.log()
    );
    m.unmount();
}

#[test]
fn sigterm_unmounts_after_flushing_and_metrics_are_served() {
    let dirs = NodeDirs::new();
    let addr = support::masters::free_addr();
    let m = Mounted::start(&dirs, &["--metrics-addr", &addr]);
    let data: Vec<u8> = (0..700_000u32).map(|i| (i % 253) as u8).collect();
    // Written but neither fsynced nor closed when the signal comes.
    let mut f = std::fs::File::create(m.path().join("open")).expect("create");
    f.write_all(&data).expect("write");
    let metrics = support::node::scrape(&addr);
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains("datenlord_fuse_requests_total{op=\"write\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("datenlord_engine_inserts_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("datenlord_writeback_backlog_bytes"),
        "{metrics}"
    );
    let pid = m.pid();
    // SAFETY: a plain signal to our own daemon.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    // The file is still open: the mount is detached at once and ends when
    // the last file closes.
    let mounted = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .contains(&*dirs.mountpoint().to_string_lossy())
    };
    let start = std::time::Instant::now();
    while mounted() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "SIGTERM detached the mount\nlog:\n{}",
            m.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(f);
    support::node::wait_exit(pid, std::time::Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\nlog:\n{}", m.log()));
    assert!(m.log().contains("unmounting on signal"), "{}", m.log());
    assert!(
        !m.log().contains('\x1b'),
        "terminal colors in the log file:\n{}",
        m.log()
    );
    drop(m);
    let m = Mounted::start(&dirs, &[]);
    assert_eq!(std::fs::read(m.path().join("open")).expect("read"), data);
    m.unmount();
}

#[test]
fn orphan_block_versions_in_the_store_are_collected() {
    use datenlord_engine::store::{ControlPlane, RemoteStore, StoreUrl};
    let dirs = NodeDirs::new();
    let m = Mounted::start(&dirs, &[]);
    let kept: Vec<u8> = (0..300_000u32).map(|i| (i % 249) as u8).collect();
    std::fs::write(m.path().join("kept"), &kept).expect("write");
    m.unmount();

    // A version nothing refers to, as a crash between its upload and the
    // metadata commit leaves behind; every object made an hour old.
    let store_dir = dirs.data_dir().join("store");
    let url: StoreUrl = format!("file://{}", store_dir.display())
        .parse()
        .expect("url");
    let control = ControlPlane::start().expect("control plane");
    let remote = RemoteStore::open(&url, &control).expect("open store");
    let orphan = datenlord_engine::BlockId::new(999_999, 0, 1);
    futures::executor::block_on(remote.put_block(orphan, b"orphan")).expect("put orphan");
    let blocks_dir = store_dir.join("blocks");
    for f in files_below(&blocks_dir) {
        age(&f);
    }
    let is_orphan = |p: &Path| p.to_string_lossy().ends_with("/999999/0/1");
    assert!(files_below(&blocks_dir).iter().any(|p| is_orphan(p)));

    let m = Mounted::start(&dirs, &FAST_SCRUB);
    let start = std::time::Instant::now();
    while files_below(&blocks_dir).iter().any(|p| is_orphan(p)) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the orphan was not collected\nlog:\n{}",
            m.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        !files_below(&blocks_dir).is_empty(),
        "referenced blocks stay"
    );
    assert_eq!(std::fs::read(m.path().join("kept")).expect("read"), kept);
    m.unmount();
    // The next start reads everything from the store again.
    std::fs::remove_dir_all(dirs.data_dir().join("cache")).expect("wipe cache");
    let m = Mounted::start(&dirs, &[]);
    assert_eq!(
        std::fs::read(m.path().join("kept")).expect("read again"),
        kept
    );
    m.unmount();
}

/// `-o passthrough` end to end: a file read twice gets a local copy in the
/// cache directory (an unnamed file the daemon holds open), later reads
/// reach no daemon, and a change made while the file is open on its copy
/// is in the file after a remount. With `direct_io` the mount is refused.
#[test]
fn passthrough_mount_reads_a_file_read_again_from_its_local_copy() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let dirs = NodeDirs::new();
    let refused = datenlord(&[
        "mount",
        &dirs.mountpoint().to_string_lossy(),
        "--data-dir",
        &dirs.data_dir().to_string_lossy(),
        "--foreground",
        "-o",
        "passthrough,direct_io",
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("drop one"), "{stderr}");

    let addr = support::masters::free_addr();
    let m = Mounted::start(&dirs, &["--metrics-addr", &addr, "-o", "passthrough"]);
    let path = m.path().join("weights.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).expect("write");
    for _ in 0..2 {
        assert!(std::fs::read(&path).expect("read") == data);
    }
    let copies = dirs.data_dir().join("cache").join("copies");
    let made = || {
        support::node::scrape(&addr)
            .lines()
            .find_map(|l| l.strip_prefix("datenlord_local_copies_made_total "))
            .is_some_and(|n| n.trim() == "1")
    };
    let start = std::time::Instant::now();
    while !made() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "no local copy made\nlog:\n{}",
            m.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The copy is an unnamed file in the cache directory, held open.
    let held = std::fs::read_dir(format!("/proc/{}/fd", m.pid()))
        .expect("daemon fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(&copies))
        .count();
    assert_eq!(held, 1, "copies held open");
    let reads = support::node::fuse_requests_settled(&addr, &["read"]);
    let f = std::fs::File::open(&path).expect("open on the copy");
    // SAFETY: a valid fd; drops the FUSE inode's page cache.
    assert_eq!(
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) },
        0
    );
    let mut got = vec![0u8; data.len()];
    f.read_exact_at(&mut got, 0).expect("read");
    assert!(got == data, "content read on the copy");
    assert_eq!(
        support::node::fuse_requests_settled(&addr, &["read"]),
        reads,
        "reads on the copy reached the daemon\nlog:\n{}",
        m.log()
    );
    let w = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("writable open");
    w.write_all_at(b"tuned", 1_000_000).expect("pwrite");
    f.read_exact_at(&mut got[..5], 1_000_000)
        .expect("read back");
    assert_eq!(&got[..5], b"tuned");
    w.sync_all().expect("fsync");
    drop((w, f));
    m.unmount();
    let m = Mounted::start(&dirs, &[]);
    let mut want = data;
    want[1_000_000..1_000_005].copy_from_slice(b"tuned");
    assert!(std::fs::read(m.path().join("weights.bin")).expect("read") == want);
    m.unmount();
}

/// Entries under `dir` (itself included) that another user could read,
/// write or search: `(path, mode)`.
fn open_to_others(dir: &Path) -> Vec<(std::path::PathBuf, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            out.push((path.clone(), mode));
        }
        if meta.is_dir() {
            stack.extend(
                std::fs::read_dir(&path)
                    .expect("read_dir")
                    .map(|e| e.expect("entry").path()),
            );
        }
    }
    out
}

/// The data directory holds every user's data (journal, cache, store) and
/// the namespace: it, and everything the daemon puts in it, is root's
/// alone, so another user cannot read around the mount's permissions.
#[test]
fn no_other_user_reads_the_data_directory() {
    let dirs = NodeDirs::new();
    let data = dirs.data_dir();
    let m = Mounted::start(&dirs, &["--metrics-addr", "127.0.0.1:0"]);
    let f = m.path().join("secret");
    std::fs::write(&f, vec![7u8; 300_000]).expect("write");
    std::fs::File::open(&f)
        .and_then(|file| file.sync_all())
        .expect("fsync");
    std::fs::read(&f).expect("read back");
    let check = |when: &str| {
        let open = open_to_others(&data);
        assert!(open.is_empty(), "{when}: readable by others: {open:?}");
        let out = Command::new("runuser")
            .args(["-u", "nobody", "--", "sh", "-c"])
            .arg(format!(
                "ls {0} || cat {0}/datenlord.log || find {0} -type f",
                data.display()
            ))
            .output()
            .expect("runuser");
        assert!(
            !out.status.success(),
            "nobody listed or read {}",
            data.display()
        );
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    };
    check("while mounted");
    m.unmount();
    check("after unmount");
    // A data directory made readable by hand is made private again.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let m = Mounted::start(&dirs, &[]);
    check("after a remount");
    m.unmount();
}

/// Two embedded mounts of one store would each scrub the store and delete
/// the other's blocks: the second refuses to start and names the first;
/// once the first is killed, the second starts, and what the first had
/// made durable and backed up is there.
#[test]
fn a_second_embedded_mount_of_one_store_is_refused_until_the_first_is_gone() {
    let (a, b) = (NodeDirs::new(), NodeDirs::new());
    let store_dir = a.root().join("shared-store");
    let store = support::node::formatted_store(&store_dir, "64K");
    let args = [
        "--store",
        &store,
        "--write-mode",
        "through",
        "--backup-interval",
        "1",
        "--gc-grace",
        "2",
    ];
    let first = Mounted::start(&a, &args);
    let data: Vec<u8> = (0..500_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(first.path().join("f"), &data).expect("write");
    let written = std::time::SystemTime::now();
    let err = Mounted::try_start(&b.mountpoint(), &b.data_dir(), &args)
        .expect_err("a second mount of the store");
    assert!(err.contains("is in use by"), "{err}");
    assert!(err.contains(&format!("pid {}", first.pid())), "{err}");
    assert!(err.contains(&a.data_dir().display().to_string()), "{err}");
    // Wait for a metadata backup made after the write, then kill -9.
    support::masters::wait_for_backup(&store_dir, written);
    first.kill9();
    let second = Mounted::start(&b, &args);
    assert_eq!(std::fs::read(second.path().join("f")).expect("read"), data);
    second.unmount();
}

/// `umount DIR; datenlord mount DIR` at once, as scripts, fstab remounts
/// and restarts do: the new daemon waits for the old one to finish
/// (flushing, draining, backing up) instead of failing, and no byte
/// written before an unmount is lost.
#[test]
fn umount_then_mount_at_once_fifty_times_loses_nothing() {
    let dirs = NodeDirs::new();
    let args = [
        "--cores",
        "1",
        "--memory-size",
        "32M",
        "--cache-size",
        "16M",
    ];
    let m = Mounted::start(&dirs, &args);
    let mountpoint = m.path().to_path_buf();
    let mut last_pid = m.pid();
    std::mem::forget(m);
    let content = |cycle: u32| -> Vec<u8> {
        (0..70_000u32)
            .map(|i| (i.wrapping_mul(cycle + 7) % 251) as u8)
            .collect()
    };
    for cycle in 0..50u32 {
        std::fs::write(mountpoint.join(format!("f{cycle}")), content(cycle)).expect("write");
        let out = Command::new("umount")
            .arg(&mountpoint)
            .output()
            .expect("umount");
        assert!(
            out.status.success(),
            "cycle {cycle}: umount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = Mounted::try_start(&mountpoint, &dirs.data_dir(), &args)
            .unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        last_pid = m.pid();
        for earlier in [0, cycle / 2, cycle] {
            assert_eq!(
                std::fs::read(mountpoint.join(format!("f{earlier}"))).expect("read"),
                content(earlier),
                "cycle {cycle}: f{earlier}"
            );
        }
        std::mem::forget(m);
    }
    // The data directory of a daemon still mounted (elsewhere) is refused.
    let other = dirs.root().join("other-mnt");
    std::fs::create_dir_all(&other).expect("mkdir");
    let err = Mounted::try_start(&other, &dirs.data_dir(), &args).expect_err("still mounted");
    assert!(err.contains("still mounted"), "{err}");
    let out = Command::new("umount")
        .arg(&mountpoint)
        .output()
        .expect("umount");
    assert!(out.status.success());
    // The last daemon finishes (drains, backs up) before the directories
    // go: it must not be left running on a deleted data directory.
    support::node::wait_exit(last_pid, std::time::Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("the last daemon: {e}"));
}

/// `datenlord umount` returns only once the daemon has exited: a mount
/// right after it never waits, and the unmount's data is all there.
#[test]
fn datenlord_umount_returns_once_the_daemon_is_gone() {
    let dirs = NodeDirs::new();
    let m = Mounted::start(&dirs, &[]);
    let pid = m.pid();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(m.path().join("f"), &data).expect("write");
    let mountpoint = m.path().to_path_buf();
    std::mem::forget(m);
    // No --data-dir: the machine remembers which data directory serves
    // the mount point (this one is not the default).
    let out = datenlord(&["umount", &mountpoint.to_string_lossy()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Gone, or exited and not yet reaped by init (a zombie).
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
        });
    assert!(
        matches!(state, None | Some('Z' | 'X')),
        "the daemon (pid {pid}) still runs after datenlord umount: state {state:?}"
    );
    let m = Mounted::start(&dirs, &[]);
    assert!(
        !m.log().contains("waiting for the previous datenlord"),
        "{}",
        m.log()
    );
    assert_eq!(std::fs::read(m.path().join("f")).expect("read"), data);
    // Another data directory's mount is not touched.
    let other = NodeDirs::new();
    let out = datenlord(&[
        "umount",
        &mountpoint.to_string_lossy(),
        "--data-dir",
        &other.data_dir().to_string_lossy(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--data-dir"));
    m.unmount();
}

/// A loop device in the target directory as it would be an NVMe
/// namespace; the directory goes with it.
struct LoopDevice {
    path: String,
    // Detached before its backing file's directory goes (field order).
    _device: datenlord_testbed::LoopDevice,
    _dir: tempfile::TempDir,
}

impl LoopDevice {
    fn new(bytes: u64) -> Self {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let device = datenlord_testbed::LoopDevice::attach(&dir.path().join("nvme.img"), bytes);
        Self {
            path: device.path().to_string_lossy().into_owned(),
            _device: device,
            _dir: dir,
        }
    }
}

/// `--cache-device`: a raw device is the NVMe tier (the journal in
/// `--journal-dir`), kept across a remount; a device holding a file
/// system is refused unless `--force-device`, a mounted one always.
#[test]
fn a_raw_device_is_the_cache_and_one_holding_a_file_system_is_refused() {
    let dirs = NodeDirs::new();
    let device = LoopDevice::new(64 << 20);
    let journal = dirs.root().join("journal-elsewhere");
    let journal_arg = journal.to_string_lossy().into_owned();
    let args = [
        "--cache-device",
        device.path.as_str(),
        "--journal-dir",
        &journal_arg,
        "--memory-size",
        "16M",
    ];
    let m = Mounted::start(&dirs, &args);
    let data: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i % 251) as u8).collect();
    std::fs::write(m.path().join("f"), &data).expect("write");
    m.unmount();
    assert!(
        std::fs::read_dir(&journal)
            .expect("the journal directory")
            .count()
            > 0,
        "the journal is in --journal-dir"
    );
    let inspect = datenlord(&["cache", "inspect", "--cache-dir", &device.path]);
    let report = String::from_utf8_lossy(&inspect.stdout).into_owned();
    assert!(
        inspect.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let m = Mounted::start(&dirs, &args);
    assert!(std::fs::read(m.path().join("f")).expect("read") == data);
    m.unmount();

    // A device with a file system: refused, then taken with --force-device.
    let other = LoopDevice::new(64 << 20);
    let mkfs = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", &other.path])
        .output()
        .expect("mkfs.ext4");
    assert!(mkfs.status.success());
    let (mp, dd) = (dirs.root().join("mnt2"), dirs.root().join("data2"));
    std::fs::create_dir_all(&mp).expect("mountpoint");
    let err = Mounted::try_start(&mp, &dd, &["--cache-device", &other.path]).expect_err("ext4");
    assert!(
        err.contains("ext2/3/4") && err.contains("--force-device"),
        "{err}"
    );
    // Mounted: refused even when forced.
    let fs_dir = dirs.root().join("ext4");
    std::fs::create_dir_all(&fs_dir).expect("dir");
    let mounted = std::process::Command::new("mount")
        .arg(&other.path)
        .arg(&fs_dir)
        .output()
        .expect("mount");
    assert!(
        mounted.status.success(),
        "{}",
        String::from_utf8_lossy(&mounted.stderr)
    );
    let err = Mounted::try_start(&mp, &dd, &["--cache-device", &other.path, "--force-device"])
        .expect_err("mounted");
    assert!(err.contains("is mounted at"), "{err}");
    let _ = std::process::Command::new("umount").arg(&fs_dir).output();
    let forced = Mounted::try_start(&mp, &dd, &["--cache-device", &other.path, "--force-device"])
        .expect("forced");
    forced.unmount();
}
