//! Mounting and the per-core request loops: one OS thread per core, pinned,
//! each reading requests from its own cloned /dev/fuse fd
//! (`FUSE_DEV_IOC_CLONE`) into its own buffers and replying on that fd.

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
use crate::error::FuseError;
use crate::options::MountOptions;
use crate::stats::{LoopHook, OpStats};

/// Most request loops one mount runs.
pub const THREADS_MAX: usize = 256;
/// Subtype shown as `fuse.datenlord` in the mount table.
const SUBTYPE: &str = "datenlord";

/// A mounted file system.
pub struct Mount {
    session: Option<FuseSession>,
    threads: Vec<JoinHandle<()>>,
    fs: Arc<Fs>,
    mountpoint: String,
    stats: OpStats,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount")
            .field("mountpoint", &self.mountpoint)
            .field("threads", &self.threads.len())
            .finish_non_exhaustive()
    }
}

fn check_mountpoint(path: &Path) -> Result<(), FuseError> {
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
    Ok(())
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

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays in bounds
    // because `cpu` came from sched_getaffinity.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if rc != 0 {
        warn!(cpu, "cannot pin the FUSE request loop");
    }
}

/// Mounts `fs` at `opts.mountpoint` and starts the request loops.
pub fn mount(fs: Arc<Fs>, opts: &MountOptions) -> Result<Mount, FuseError> {
    check_mountpoint(&opts.mountpoint)?;
    let shown = opts.mountpoint.display().to_string();
    let mut session = FuseSession::new(&opts.mountpoint, &opts.fsname, SUBTYPE, opts.read_only)
        .map_err(|e| mount_error(&shown, e.to_string()))?;
    session.set_allow_other(opts.allow_other);
    session
        .mount()
        .map_err(|e| mount_error(&shown, e.to_string()))?;
    let adapter = FuseFs::new(
        Arc::clone(&fs),
        AdapterOptions {
            direct_io: opts.direct_io,
            writeback_cache: opts.writeback_cache,
        },
    );
    let server = Arc::new(Server::new(adapter));
    let threads = if opts.threads == 0 {
        fs.shards()
    } else {
        opts.threads
    }
    .clamp(1, THREADS_MAX);
    let cpus = allowed_cpus();
    let bufsize = session.bufsize();
    let mut mount = Mount {
        session: Some(session),
        threads: Vec::with_capacity(threads),
        fs,
        mountpoint: shown,
        stats: OpStats::default(),
    };
    for n in 0..threads {
        let file = match mount.session.as_ref().map(FuseSession::clone_fuse_file) {
            Some(Ok(file)) => file,
            Some(Err(e)) => {
                let _ = mount.umount();
                return Err(FuseError::Session(format!(
                    "cloning the /dev/fuse fd (FUSE_DEV_IOC_CLONE): {e}"
                )));
            }
            None => return Err(FuseError::Session("the FUSE session is gone".into())),
        };
        let server = Arc::clone(&server);
        let stats = mount.stats.clone();
        let cpu = (!cpus.is_empty()).then(|| cpus[n % cpus.len()]);
        let spawned = std::thread::Builder::new()
            .name(format!("dl-fuse-{n}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    pin_to(cpu);
                }
                serve(&server, &file, bufsize, &LoopHook::new(stats));
            });
        match spawned {
            Ok(t) => mount.threads.push(t),
            Err(e) => {
                let _ = mount.umount();
                return Err(FuseError::Session(format!(
                    "cannot start a request loop: {e}"
                )));
            }
        }
    }
    info!(mountpoint = %mount.mountpoint, threads, "mounted");
    Ok(mount)
}

/// One request loop: reads a request, lets the server answer it, until the
/// kernel ends the connection (`ENODEV` after unmount).
fn serve(server: &Server<FuseFs>, file: &File, bufsize: usize, hook: &LoopHook) {
    let fd = file.as_raw_fd();
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
        let reader = match Reader::<()>::from_fuse_buffer(FuseBuf::new(&mut request[..len])) {
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
        if let Err(e) = server.handle_message(reader, writer.into(), None, Some(hook)) {
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
    /// The mountpoint.
    pub fn mountpoint(&self) -> &str {
        &self.mountpoint
    }

    /// Per-op counters and latencies of the request loops.
    pub fn stats(&self) -> OpStats {
        self.stats.clone()
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

    fn join(&mut self) {
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                warn!("a FUSE request loop panicked");
            }
        }
    }

    /// Blocks until the file system is unmounted from outside (`umount`,
    /// `fusermount3 -u`), then flushes and ends the session.
    pub fn wait(mut self) -> Result<(), FuseError> {
        self.join();
        self.session.take();
        block_on(self.fs.shutdown())?;
        Ok(())
    }

    /// Unmounts cleanly: flushes all dirty data, unmounts, waits for the
    /// request loops, and releases the session.
    pub fn unmount(mut self) -> Result<(), FuseError> {
        let flushed = block_on(self.fs.flush_all());
        let unmounted = self.umount();
        if unmounted.is_ok() {
            self.join();
        }
        self.session.take();
        let shut = block_on(self.fs.shutdown());
        flushed?;
        unmounted?;
        shut?;
        info!(mountpoint = %self.mountpoint, "unmounted");
        Ok(())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.session.is_some() {
            let _ = block_on(self.fs.flush_all());
            if self.umount().is_ok() {
                self.join();
            }
        }
    }
}
