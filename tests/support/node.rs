//! A `datenlord mount` daemon for end-to-end tests: started through the
//! real command line (it daemonizes and returns once mounted), stopped by
//! `umount`, or killed with SIGKILL. A mount left behind by a failing test is
//! unmounted when the guard drops.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How long a clean unmount may take before the test fails.
const UNMOUNT_WAIT_S: u64 = 90;

/// Directories of one node: all under a world-searchable temp dir (the
/// POSIX suite switches to unprivileged users that must reach the mount).
#[derive(Debug)]
pub struct NodeDirs {
    root: tempfile::TempDir,
}

impl NodeDirs {
    /// Fresh directories.
    pub fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("datenlord-e2e-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        set_mode(root.path(), 0o755);
        std::fs::create_dir_all(root.path().join("mnt")).expect("mkdir mnt");
        set_mode(&root.path().join("mnt"), 0o755);
        Self { root }
    }

    /// The temp root.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The mount point.
    pub fn mountpoint(&self) -> PathBuf {
        self.root.path().join("mnt")
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A `file://` store in `dir`, formatted by `datenlord format` with
/// `block_size`: its URL.
pub fn formatted_store(dir: &Path, block_size: &str) -> String {
    std::fs::create_dir_all(dir).expect("mkdir store");
    let store = format!("file://{}", dir.display());
    let out = datenlord(&["format", "--store", &store, "--block-size", block_size]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    store
}

/// Runs `datenlord` with `args`.
pub fn datenlord(args: &[&str]) -> Output {
    datenlord_in(None, args)
}

/// Runs `datenlord` with `args` in the network namespace at `netns` (a
/// `/run/netns/NAME` path; the mount namespace stays this one, so its
/// mounts are visible here).
pub fn datenlord_in(netns: Option<&str>, args: &[&str]) -> Output {
    datenlord_env(netns, args, &[])
}

/// [`datenlord_in`] with extra environment variables (test hooks).
pub fn datenlord_env(netns: Option<&str>, args: &[&str], env: &[(&str, &str)]) -> Output {
    let bin = env!("CARGO_BIN_EXE_datenlord");
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={ns}")).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    command
        .args(args)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .output()
        .expect("run datenlord")
}

/// A mounted node.
#[derive(Debug)]
pub struct Mounted {
    mountpoint: PathBuf,
    data_dir: PathBuf,
    unmounted: bool,
}

impl Mounted {
    /// `datenlord mount MOUNTPOINT --data-dir DATA EXTRA...`; panics with the
    /// command's output (and the daemon's log) when it fails.
    pub fn start(dirs: &NodeDirs, extra: &[&str]) -> Self {
        Self::try_start(&dirs.mountpoint(), &dirs.data_dir(), extra)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like `start`, with explicit directories; the error holds the output.
    pub fn try_start(mountpoint: &Path, data_dir: &Path, extra: &[&str]) -> Result<Self, String> {
        Self::try_start_in(None, mountpoint, data_dir, extra)
    }

    /// `start` in the network namespace at `netns`.
    pub fn start_in(netns: &str, dirs: &NodeDirs, extra: &[&str]) -> Self {
        Self::try_start_in(Some(netns), &dirs.mountpoint(), &dirs.data_dir(), extra)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `start` with extra environment variables for the daemon.
    pub fn start_env(dirs: &NodeDirs, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::try_start_env(None, &dirs.mountpoint(), &dirs.data_dir(), extra, env)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start_in(
        netns: Option<&str>,
        mountpoint: &Path,
        data_dir: &Path,
        extra: &[&str],
    ) -> Result<Self, String> {
        Self::try_start_env(netns, mountpoint, data_dir, extra, &[])
    }

    fn try_start_env(
        netns: Option<&str>,
        mountpoint: &Path,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        let mp = mountpoint.to_string_lossy().into_owned();
        let dd = data_dir.to_string_lossy().into_owned();
        let mut args = vec!["mount", mp.as_str(), "--data-dir", dd.as_str()];
        args.extend_from_slice(extra);
        let out = datenlord_env(netns, &args, env);
        if !out.status.success() {
            return Err(format!(
                "datenlord {args:?} failed ({}):\nstdout: {}\nstderr: {}\nlog:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                log_tail(data_dir)
            ));
        }
        Ok(Self {
            mountpoint: mountpoint.to_owned(),
            data_dir: data_dir.to_owned(),
            unmounted: false,
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// PID of the daemon.
    pub fn pid(&self) -> i32 {
        let text = std::fs::read_to_string(self.data_dir.join("datenlord.pid")).expect("pid file");
        text.trim().parse().expect("pid")
    }

    /// Unmounts with `umount` and waits for the daemon to exit cleanly.
    pub fn unmount(mut self) {
        let pid = self.pid();
        let out = Command::new("umount")
            .arg(&self.mountpoint)
            .output()
            .expect("umount");
        assert!(
            out.status.success(),
            "umount {}: {}",
            self.mountpoint.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        self.unmounted = true;
        wait_exit(pid, Duration::from_secs(UNMOUNT_WAIT_S)).unwrap_or_else(|e| {
            panic!("{e}\nlog:\n{}", log_tail(&self.data_dir));
        });
    }

    /// Waits for a daemon that ends by itself (a test hook aborted it)
    /// and detaches the dead mount.
    pub fn wait_crash(mut self, timeout: Duration) {
        let pid = self.pid();
        wait_exit(pid, timeout).unwrap_or_else(|e| {
            panic!("{e}\nlog:\n{}", log_tail(&self.data_dir));
        });
        lazy_unmount(&self.mountpoint);
        self.unmounted = true;
    }

    /// SIGKILLs the daemon (nothing is flushed) and detaches the dead mount.
    pub fn kill9(mut self) {
        let pid = self.pid();
        // SAFETY: a plain kill of our own daemon.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = wait_exit(pid, Duration::from_secs(10));
        lazy_unmount(&self.mountpoint);
        self.unmounted = true;
    }

    /// The daemon's log (its last lines).
    pub fn log(&self) -> String {
        log_tail(&self.data_dir)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if !self.unmounted {
            lazy_unmount(&self.mountpoint);
        }
    }
}

fn lazy_unmount(mountpoint: &Path) {
    let _ = Command::new("umount").arg("-l").arg(mountpoint).output();
}

/// The page the metrics endpoint at `addr` serves (status line included).
pub fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).expect("connect metrics");
    write!(conn, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("read metrics");
    text
}

/// The sum of every sample of metric `name` (all label sets) on the
/// daemon's metrics endpoint at `addr`.
pub fn metric_sum(addr: &str, name: &str) -> f64 {
    scrape(addr)
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum()
}

/// FUSE requests of kind `op` the daemon at `addr` has served.
pub fn fuse_requests(addr: &str, op: &str) -> u64 {
    let line = format!("datenlord_fuse_requests_total{{op=\"{op}\"}} ");
    scrape(addr)
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |n| n.trim().parse().expect("a request count"))
}

/// The sum of [`fuse_requests`] over `ops` once it stopped moving: the
/// daemon counts a request after its reply is out, so a count read right
/// after the syscall may lag.
pub fn fuse_requests_settled(addr: &str, ops: &[&str]) -> u64 {
    let sum = || ops.iter().map(|op| fuse_requests(addr, op)).sum::<u64>();
    let mut last = sum();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = sum();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Waits until process `pid` is gone.
pub fn wait_exit(pid: i32, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    // SAFETY: signal 0 only checks that the process exists.
    while unsafe { libc::kill(pid, 0) } == 0 {
        // The daemon is not our child (it detached), so it cannot linger as
        // a zombie of ours: kill(0) fails once it exited.
        if start.elapsed() > timeout {
            return Err(format!(
                "the daemon (pid {pid}) did not exit within {timeout:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The last lines of the daemon's log.
pub fn log_tail(data_dir: &Path) -> String {
    let text = std::fs::read_to_string(data_dir.join("datenlord.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// Holds the kernel's FUSE-over-io_uring switch
/// (`/sys/module/fuse/parameters/enable_uring`) at a value and puts the
/// old value back when dropped. Tests in other processes that flip it (the
/// fuse-frontend crate's tests take the same lock file) wait meanwhile.
#[derive(Debug)]
pub struct UringSwitch {
    _lock: std::fs::File,
    old: String,
}

impl UringSwitch {
    const PARAMETER: &str = "/sys/module/fuse/parameters/enable_uring";
    const LOCK: &str = "/tmp/datenlord-test-enable-uring.lock";

    /// `None` (and why, printed) if this kernel has no FUSE over io_uring.
    pub fn set(value: &str) -> Option<Self> {
        use std::os::fd::AsRawFd;
        if !Path::new(Self::PARAMETER).exists() {
            eprintln!(
                "skipped: this kernel has no FUSE over io_uring ({} is missing)",
                Self::PARAMETER
            );
            return None;
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(Self::LOCK)
            .expect("open the switch lock");
        // SAFETY: a valid fd.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let old = std::fs::read_to_string(Self::PARAMETER).expect("read enable_uring");
        std::fs::write(Self::PARAMETER, value).expect("set enable_uring");
        Some(Self { _lock: lock, old })
    }
}

impl Drop for UringSwitch {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PARAMETER, self.old.trim());
    }
}
