//! Mounting and the classic per-core request loops: one OS thread per core,
//! pinned, each reading requests from its own cloned /dev/fuse fd
//! (`FUSE_DEV_IOC_CLONE`) into its own buffers and replying on that fd.
//! With FUSE over io_uring (`uring.rs`) the loops stay for what the kernel
//! still sends through /dev/fuse (INIT, FORGET, INTERRUPT).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use datenlord_fs::Fs;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{FuseBuf, FuseDevWriter, FuseSession, Reader};
use futures::executor::block_on;
use tracing::{debug, info, warn};

use crate::adapter::{AdapterOptions, FuseFs};
use crate::copy_range;
use crate::dispatch::{route, Route, Served};
use crate::error::FuseError;
use crate::idle_poll::IdlePoll;
use crate::lock_wait::{self, Waiters};
use crate::options::MountOptions;
use crate::passthrough::Passthrough;
use crate::stats::{LoopHook, OpStats};
use crate::uring::{self, InitGate};
use crate::uring_abi::OPCODE_INIT;

/// Most request loops one mount runs.
pub const THREADS_MAX: usize = 256;
/// How long `unmount` waits for processes still using a lazily detached
/// mount before it aborts the connection.
pub const UNMOUNT_WAIT_MS: u64 = 5_000;

/// A mounted file system.
pub struct Mount {
    session: Option<FuseSession>,
    threads: Vec<JoinHandle<()>>,
    fs: Arc<Fs>,
    mountpoint: String,
    /// The FUSE connection (minor device number): its
    /// /sys/fs/fuse/connections entry can abort it.
    connection: Option<u32>,
    stats: OpStats,
    /// Requests come over FUSE-over-io_uring queues.
    uring: bool,
    /// `-o idle_poll`'s spinners: stopped with the mount.
    idle_poll: Option<Arc<IdlePoll>>,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount")
            .field("mountpoint", &self.mountpoint)
            .field("threads", &self.threads.len())
            .finish_non_exhaustive()
    }
}

/// Checks that `path` can be mounted on: an existing directory, not a
/// mount point already, with /dev/fuse present. Each error says what to do.
pub fn check_mountpoint(path: &Path) -> Result<(), FuseError> {
    let shown = path.display().to_string();
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(FuseError::NotADirectory(shown)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(FuseError::MountpointMissing(shown))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => return Err(FuseError::Busy(shown)),
        Err(e) => return Err(FuseError::Session(format!("cannot stat {shown}: {e}"))),
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(FuseError::NoDevice);
    }
    // Linux stacks mounts silently; a second mount on the same directory
    // is almost always a mistake (a mount left over from an earlier run).
    if let Ok(canonical) = path.canonicalize() {
        if is_mountpoint(&canonical) {
            return Err(FuseError::Busy(shown));
        }
    }
    Ok(())
}

/// Whether something is mounted on `path` (/proc/self/mountinfo).
pub fn is_mountpoint(path: &Path) -> bool {
    mountinfo_entry(path, |_| Some(())).is_some()
}

/// Applies `f` to the fields of the newest /proc/self/mountinfo line whose
/// mount point is `path`.
fn mountinfo_entry<T>(path: &Path, f: impl Fn(&[&str]) -> Option<T>) -> Option<T> {
    let wanted = path.to_str()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let point = fields.get(4)?;
        (unescape_mountinfo(point) == wanted).then(|| f(&fields))?
    })
}

/// `/proc/self/mountinfo` escapes space, tab, newline and backslash as
/// three octal digits.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let (b'\\', Some(digits)) = (bytes[i], octal) {
            let code = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            out.push(code as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mount_error(path: &str, message: String) -> FuseError {
    if message.contains("EPERM") || message.contains("EACCES") || message.contains("fusermount") {
        FuseError::NotPermitted(path.to_string(), message)
    } else if message.contains("EBUSY") {
        FuseError::Busy(path.to_string())
    } else if message.contains("/dev/fuse") {
        FuseError::NoDevice
    } else {
        FuseError::Session(format!("mounting {path}: {message}"))
    }
}

/// CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is the empty set; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw mut set) };
    if rc != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

pub(crate) fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays in bounds
    // because `cpu` came from sched_getaffinity.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if rc != 0 {
        warn!(cpu, "cannot pin a FUSE request thread");
    }
}

/// The `FileSystem` over `fs` with the mount's options, notifying the
/// kernel through `session`'s /dev/fuse.
/// Passthrough state for a `-o passthrough` mount, sharing the session's
/// /dev/fuse for the backing file ioctls.
fn passthrough(opts: &MountOptions, session: &FuseSession) -> Option<Arc<Passthrough>> {
    if !opts.passthrough {
        return None;
    }
    match session.get_fuse_file().map(File::try_clone) {
        Some(Ok(device)) => Some(Arc::new(Passthrough::new(Some(device)))),
        Some(Err(e)) => {
            warn!(error = %e, "-o passthrough: cannot keep /dev/fuse; reads go through the daemon");
            None
        }
        None => None,
    }
}

/// The options `-o passthrough` cannot go with, as an error that says so.
fn check_passthrough(fs: &Fs, opts: &MountOptions) -> Result<(), FuseError> {
    if !opts.passthrough {
        return Ok(());
    }
    let conflict = if opts.direct_io {
        Some("direct_io")
    } else if opts.writeback_cache {
        Some("writeback_cache")
    } else {
        None
    };
    if let Some(other) = conflict {
        return Err(FuseError::Options(format!(
            "-o passthrough and -o {other} exclude each other (the kernel reads files on a local \
             copy through the local file system's page cache): drop one"
        )));
    }
    if fs.copy_counts().is_none() {
        return Err(FuseError::Options(
            "-o passthrough needs a file system with local copies (FsConfig::local_copies)".into(),
        ));
    }
    Ok(())
}

fn adapter(fs: &Arc<Fs>, opts: &MountOptions, session: &FuseSession) -> FuseFs {
    let adapter = FuseFs::new(
        Arc::clone(fs),
        AdapterOptions {
            direct_io: opts.direct_io,
            writeback_cache: opts.writeback_cache,
            attr_timeout: opts.attr_timeout,
            entry_timeout: opts.entry_timeout,
            negative_timeout: opts.negative_timeout,
            acl: opts.acl,
        },
    );
    match session.get_fuse_file().map(File::try_clone) {
        Some(Ok(device)) => adapter.with_notifier(device),
        Some(Err(e)) => {
            warn!(error = %e, "cannot keep /dev/fuse for notifications");
            adapter
        }
        None => {
            warn!("the FUSE session has no /dev/fuse for notifications");
            adapter
        }
    }
}

/// Mounts `fs` at `opts.mountpoint` and starts the request loops (and,
/// if the kernel agrees, the FUSE-over-io_uring queues).
pub fn mount(fs: Arc<Fs>, opts: &MountOptions) -> Result<Mount, FuseError> {
    check_mountpoint(&opts.mountpoint)?;
    check_passthrough(&fs, opts)?;
    let want_ring = uring::wanted(opts.uring)?;
    let shown = opts.mountpoint.display().to_string();
    let mut session = FuseSession::new(
        &opts.mountpoint,
        &opts.fsname,
        &opts.subtype,
        opts.read_only,
    )
    .map_err(|e| mount_error(&shown, e.to_string()))?;
    session.set_allow_other(opts.allow_other);
    session
        .mount()
        .map_err(|e| mount_error(&shown, e.to_string()))?;
    let passthrough = passthrough(opts, &session);
    let mut adapter = adapter(&fs, opts, &session);
    if let Some(p) = &passthrough {
        adapter = adapter.with_passthrough(Arc::clone(p));
    }
    let threads = if opts.threads == 0 {
        fs.shards()
    } else {
        opts.threads
    }
    .clamp(1, THREADS_MAX);
    let cpus = allowed_cpus();
    let bufsize = session.bufsize();
    let connection = connection_id(session.mountpoint());
    let idle_poll = IdlePoll::for_mount(&cpus, opts.idle_poll);
    let served = Served {
        server: Arc::new(Server::new(adapter)),
        fs: Arc::clone(&fs),
        waiters: Arc::new(Waiters::default()),
        stats: OpStats::default(),
        idle_poll: idle_poll.clone(),
    };
    let mut mount = Mount {
        session: Some(session),
        threads: Vec::with_capacity(threads),
        fs,
        mountpoint: shown,
        connection,
        stats: served.stats.clone(),
        uring: false,
        idle_poll,
    };
    // The rings are made before INIT is answered, so that failing to make
    // them can still leave the ring off.
    let queues = if want_ring {
        match uring::prepare(&cpus) {
            Ok(q) => Some(q),
            Err(e) if opts.uring == crate::UringMode::On => {
                return Err(mount.fail_uring(format!(
                    "cannot create the io_uring queues ({e}); mount with -o no_uring"
                )));
            }
            Err(e) => {
                warn!(error = %e, "cannot create the io_uring queues; serving /dev/fuse reads");
                None
            }
        }
    } else {
        None
    };
    let gate = (queues.is_some() || passthrough.is_some())
        .then(|| Arc::new(InitGate::new(queues.is_some(), passthrough)));
    let sink = match File::options().write(true).open("/dev/null") {
        Ok(f) => Arc::new(f),
        Err(e) => return Err(mount.fail(format!("cannot open /dev/null: {e}"))),
    };
    for n in 0..threads {
        let file = match mount.clone_device() {
            Ok(file) => file,
            Err(e) => return Err(mount.fail(e)),
        };
        let context = LoopContext {
            served: served.clone(),
            device: Arc::new(file),
            init: gate.clone(),
            sink: Arc::clone(&sink),
        };
        let cpu = (!cpus.is_empty()).then(|| cpus[n % cpus.len()]);
        let spawned = std::thread::Builder::new()
            .name(format!("dl-fuse-{n}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    pin_to(cpu);
                }
                serve(&context, bufsize);
            });
        match spawned {
            Ok(t) => mount.threads.push(t),
            Err(e) => return Err(mount.fail(format!("cannot start a request loop: {e}"))),
        }
    }
    if let (Some(queues), Some(gate)) = (queues, gate.as_ref()) {
        mount.start_rings(queues, gate, &served, &sink, opts.uring)?;
    }
    info!(mountpoint = %mount.mountpoint, threads, uring = mount.uring, "mounted");
    Ok(mount)
}

/// The minor device number of the FUSE mount at `mountpoint` (its
/// connection id), from /proc/self/mountinfo: asking the mount itself
/// would need the request loops.
fn connection_id(mountpoint: &Path) -> Option<u32> {
    mountinfo_entry(mountpoint, |fields| {
        fields.get(2)?.split_once(':')?.1.parse().ok()
    })
}

/// What one classic request loop works with.
struct LoopContext {
    served: Served,
    /// Its cloned /dev/fuse fd (shared with its lock waiters).
    device: Arc<File>,
    /// Set when the mount wants FUSE over io_uring: INIT is answered here.
    init: Option<Arc<InitGate>>,
    /// /dev/null: where replies answered into a buffer are "written".
    sink: Arc<File>,
}

/// One request loop: reads a request, lets the server answer it, until the
/// kernel ends the connection (`ENODEV` after unmount).
fn serve(context: &LoopContext, bufsize: usize) {
    let served = &context.served;
    let fd = context.device.as_raw_fd();
    let hook = LoopHook::new(served.stats.clone());
    let mut request = vec![0u8; bufsize];
    let mut reply = vec![0u8; bufsize];
    loop {
        // SAFETY: `request` is a valid buffer of its length for the call.
        let n = unsafe { libc::read(fd, request.as_mut_ptr().cast(), request.len()) };
        let Ok(len) = usize::try_from(n) else {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR | libc::EAGAIN | libc::ENOENT) => continue,
                Some(libc::ENODEV) => {
                    debug!("FUSE connection ended");
                    return;
                }
                _ => {
                    warn!(error = %e, "reading /dev/fuse failed; request loop stops");
                    return;
                }
            }
        };
        if len == 0 {
            return;
        }
        let message = &mut request[..len];
        if let (Some(gate), Some(OPCODE_INIT)) = (&context.init, lock_wait::opcode(message)) {
            uring::answer_init(
                served,
                &hook,
                gate,
                &context.device,
                context.sink.as_raw_fd(),
                message,
                &mut reply,
            );
            continue;
        }
        match route(served, message) {
            Route::Lock(wait) => {
                let device = Arc::clone(&context.device);
                lock_wait::spawn_waiter(
                    Arc::clone(&served.fs),
                    &served.waiters,
                    wait,
                    move |error| lock_wait::reply(&device, wait.unique, error),
                );
                continue;
            }
            Route::Copied { unique, result } => {
                copy_range::reply(&context.device, unique, result);
                continue;
            }
            Route::Server => {}
        }
        let reader = match Reader::<()>::from_fuse_buffer(FuseBuf::new(message)) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "undecodable FUSE request");
                continue;
            }
        };
        let writer = match FuseDevWriter::<()>::new(fd, &mut reply) {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot make a FUSE reply");
                continue;
            }
        };
        if let Err(e) = served
            .server
            .handle_message(reader, writer.into(), None, Some(&hook))
        {
            match e {
                fuse_backend_rs::Error::EncodeMessage(ref io)
                    if io.raw_os_error() == Some(libc::EBADF)
                        || io.raw_os_error() == Some(libc::ENODEV) =>
                {
                    return;
                }
                e => debug!(error = %e, "FUSE request failed"),
            }
        }
    }
}

impl Mount {
    /// A new /dev/fuse fd on this mount's connection.
    fn clone_device(&self) -> Result<File, String> {
        match self.session.as_ref().map(FuseSession::clone_fuse_file) {
            Some(Ok(file)) => Ok(file),
            Some(Err(e)) => Err(format!(
                "cloning the /dev/fuse fd (FUSE_DEV_IOC_CLONE): {e}"
            )),
            None => Err("the FUSE session is gone".into()),
        }
    }

    /// Ends a mount that could not be completed: unmounts, waits for the
    /// loops started so far, and returns `message` as the error.
    fn fail(mut self, message: String) -> FuseError {
        if self.umount().is_ok() {
            let _ = self.join();
        }
        self.session.take();
        FuseError::Session(message)
    }

    /// Waits for INIT and, if the kernel took FUSE over io_uring, starts
    /// the ring queues. A ring the kernel agreed to but that cannot start
    /// fails the mount: the kernel would hold every request for it.
    fn start_rings(
        &mut self,
        queues: uring::Queues,
        gate: &InitGate,
        served: &Served,
        sink: &Arc<File>,
        mode: crate::UringMode,
    ) -> Result<(), FuseError> {
        let forced = mode == crate::UringMode::On;
        let outcome = gate.wait(std::time::Duration::from_millis(uring::INIT_WAIT_MS));
        let payload_bytes = match outcome {
            Some(uring::InitOutcome {
                accepted: Some(bytes),
                ..
            }) => bytes,
            Some(uring::InitOutcome { offered, .. }) => {
                let why = if offered {
                    "the INIT reply with FUSE_OVER_IO_URING was not delivered"
                } else {
                    "the kernel did not offer FUSE over io_uring at INIT"
                };
                if forced {
                    return Err(take(self).fail_uring(format!(
                        "{why}: check `cat {}` says Y (enable it with `echo Y > {}`), \
                         or mount with -o no_uring",
                        uring::ENABLE_PARAMETER,
                        uring::ENABLE_PARAMETER
                    )));
                }
                info!(why, "serving /dev/fuse reads");
                return Ok(());
            }
            None => {
                return Err(take(self).fail_uring(format!(
                    "the kernel sent no INIT within {} ms",
                    uring::INIT_WAIT_MS
                )));
            }
        };
        let started = uring::start(queues, served, sink, payload_bytes, || {
            self.clone_device().map_err(std::io::Error::other)
        });
        let ring_threads = started.threads.len();
        self.threads.extend(started.threads);
        if let Some(why) = started.failure {
            return Err(take(self).fail_uring(format!(
                "FUSE over io_uring could not start ({why}); mount with -o no_uring"
            )));
        }
        self.uring = true;
        uring::log_started(ring_threads, payload_bytes);
        Ok(())
    }

    fn fail_uring(self, message: String) -> FuseError {
        match self.fail(message) {
            FuseError::Session(m) => FuseError::Uring(m),
            e => e,
        }
    }

    /// Whether requests come over FUSE-over-io_uring queues.
    pub fn uring(&self) -> bool {
        self.uring
    }

    /// The mountpoint.
    pub fn mountpoint(&self) -> &str {
        &self.mountpoint
    }

    /// Per-op counters and latencies of the request loops.
    pub fn stats(&self) -> OpStats {
        self.stats.clone()
    }

    /// A notifier of this mount's kernel caches (for other front ends of
    /// the same file system in this process); `None` when /dev/fuse
    /// cannot be shared.
    pub fn notifier(&self) -> Option<crate::adapter::Notifier> {
        let device = self.session.as_ref()?.get_fuse_file()?.try_clone();
        match device {
            Ok(device) => Some(crate::adapter::Notifier::new(device)),
            Err(e) => {
                warn!(error = %e, "cannot share /dev/fuse for notifications");
                None
            }
        }
    }

    /// The file system behind the mount.
    pub fn fs(&self) -> &Arc<Fs> {
        &self.fs
    }

    fn umount(&mut self) -> Result<(), FuseError> {
        match self.session.as_mut() {
            Some(s) => s
                .umount()
                .map_err(|e| FuseError::Session(format!("unmounting {}: {e}", self.mountpoint))),
            None => Ok(()),
        }
    }

    /// Whether every request loop ended within `wait_ms`.
    fn loops_end_within(&self, wait_ms: u64) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
        while self.threads.iter().any(|t| !t.is_finished()) {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        true
    }

    /// Waits for the request loops after an unmount; past
    /// [`UNMOUNT_WAIT_MS`] (a process still uses the detached mount) the
    /// connection is aborted. Never blocks forever: loops that still run
    /// after that are left behind (`false`).
    fn join(&mut self) -> bool {
        let ended = self.loops_end_within(UNMOUNT_WAIT_MS)
            || (self.abort() && self.loops_end_within(UNMOUNT_WAIT_MS));
        if !ended {
            warn!(mountpoint = %self.mountpoint, "FUSE request loops still running; leaving them");
            self.threads.clear();
            return false;
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                warn!("a FUSE request loop panicked");
            }
        }
        true
    }

    /// Aborts the FUSE connection through fusectl (mounting fusectl on
    /// /sys/fs/fuse/connections if it is not).
    fn abort(&self) -> bool {
        let Some(id) = self.connection else {
            warn!(mountpoint = %self.mountpoint, "the mount is still in use and its FUSE connection is unknown");
            return false;
        };
        let dir = "/sys/fs/fuse/connections";
        let path = format!("{dir}/{id}/abort");
        if !Path::new(&path).exists() {
            let (source, target, fstype) = (c"fusectl", c"/sys/fs/fuse/connections", c"fusectl");
            // SAFETY: valid NUL-terminated strings; no data argument.
            let rc = unsafe {
                libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    fstype.as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                warn!(error = %std::io::Error::last_os_error(), "cannot mount fusectl on {dir}");
            }
        }
        warn!(mountpoint = %self.mountpoint, "the detached mount is still in use; aborting its FUSE connection");
        match std::fs::write(&path, b"1") {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, %path, "cannot abort the FUSE connection");
                false
            }
        }
    }

    /// Blocks until the file system is unmounted from outside (`umount`,
    /// `fusermount3 -u`), then flushes and ends the session.
    pub fn wait(mut self) -> Result<(), FuseError> {
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                warn!("a FUSE request loop panicked");
            }
        }
        self.stop_idle_poll();
        self.session.take();
        block_on(self.fs.shutdown())?;
        Ok(())
    }

    /// Unmounts cleanly: flushes all dirty data, unmounts (lazily), waits for
    /// the request loops, and releases the session. A process that still
    /// uses the mount [`UNMOUNT_WAIT_MS`] later has the connection aborted
    /// under it (`ENOTCONN`), so this always returns.
    pub fn unmount(mut self) -> Result<(), FuseError> {
        let flushed = block_on(self.fs.flush_all());
        let unmounted = self.umount();
        let joined = unmounted.is_ok() && self.join();
        self.stop_idle_poll();
        self.session.take();
        let shut = block_on(self.fs.shutdown());
        flushed?;
        unmounted?;
        if !joined {
            return Err(FuseError::Session(format!(
                "{} is still in use and its FUSE connection could not be aborted: \
                 its request loops were left running",
                self.mountpoint
            )));
        }
        shut?;
        info!(mountpoint = %self.mountpoint, "unmounted");
        Ok(())
    }

    fn stop_idle_poll(&mut self) {
        if let Some(poll) = self.idle_poll.take() {
            poll.stop();
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.session.is_some() {
            let _ = block_on(self.fs.flush_all());
            if self.umount().is_ok() {
                let _ = self.join();
            }
        }
        self.stop_idle_poll();
    }
}

/// Moves a mount out of `slot` (leaving an inert one that drops without
/// touching anything), to end it by value.
fn take(slot: &mut Mount) -> Mount {
    let inert = Mount {
        session: None,
        threads: Vec::new(),
        fs: Arc::clone(&slot.fs),
        mountpoint: slot.mountpoint.clone(),
        connection: None,
        stats: slot.stats.clone(),
        uring: false,
        idle_poll: None,
    };
    std::mem::replace(slot, inert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo("/x\\011y\\134z"), "/x\ty\\z");
        // Not an escape: fewer than three octal digits, or not octal.
        assert_eq!(unescape_mountinfo("/a\\04"), "/a\\04");
        assert_eq!(unescape_mountinfo("/a\\089"), "/a\\089");
    }
}
