//! The mount's control socket and `datenlord sync`.
//!
//! The kernel passes neither `sync(2)`/`syncfs(2)` nor an unmount's
//! "write everything" to a FUSE daemon, and a close only publishes a
//! file's writes (they are durable within the commit interval). So a
//! running mount listens on a unix socket in its data directory,
//! `<data-dir>/control.sock`, and `datenlord sync DIR` asks it to commit
//! everything (`Fs::flush_all`: every published or unflushed file in one
//! group commit, the journal synced, then the metadata log) and answers
//! once that is durable.
//!
//! Who may ask: the data directory is 0700 (only its owner and root reach
//! the socket at all), and the daemon also checks the peer's credentials
//! (`SO_PEERCRED`): root or the daemon's own user. The socket does not
//! go through the FUSE request loops, so a sync works while they are
//! busy. Requests are one line (`sync`) and answers one line (`ok` or
//! `error: ...`); at most one is served at a time.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use futures::executor::block_on;
use tracing::{info, warn};

/// The socket's name in the data directory.
pub const CONTROL_SOCKET: &str = "control.sock";
/// Longest request line.
const REQUEST_BYTES_MAX: u64 = 64;
/// How long a connected client may take to send its request.
const REQUEST_TIMEOUT_MS: u64 = 5_000;

/// The daemon's end: a thread answering requests until stopped.
pub struct ControlSocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlSocket {
    /// Listens on `<data_dir>/control.sock` (replacing a socket a crashed
    /// daemon left: the data directory's lock says none other runs).
    pub fn start(data_dir: &Path, fs: Weak<datenlord_fs::Fs>) -> anyhow::Result<Self> {
        let path = data_dir.join(CONTROL_SOCKET);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("listening on {}", path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        // SAFETY: geteuid cannot fail.
        let owner = unsafe { libc::geteuid() };
        let thread = std::thread::Builder::new()
            .name("dl-control".into())
            .spawn(move || serve(&listener, &fs, &stopped, owner))
            .context("starting the control socket thread")?;
        Ok(Self {
            path,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops answering and removes the socket.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accept; the thread sees the flag and ends.
        let _ = UnixStream::connect(&self.path);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: &UnixListener, fs: &Weak<datenlord_fs::Fs>, stop: &AtomicBool, owner: u32) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        match conn {
            Ok(conn) => {
                if let Err(e) = answer(&conn, fs, owner) {
                    warn!(error = %e, "control socket request");
                }
            }
            Err(e) => {
                warn!(error = %e, "control socket accept");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The peer's user id (`SO_PEERCRED`).
fn peer_uid(conn: &UnixStream) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd as _;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            std::ptr::addr_of_mut!(len),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

fn answer(conn: &UnixStream, fs: &Weak<datenlord_fs::Fs>, owner: u32) -> anyhow::Result<()> {
    let uid = peer_uid(conn).context("reading the peer's credentials")?;
    let mut writer = conn.try_clone().context("cloning the connection")?;
    if uid != 0 && uid != owner {
        writeln!(writer, "error: only root or the mount's owner may sync it")?;
        bail!("refused a request of uid {uid}");
    }
    conn.set_read_timeout(Some(Duration::from_millis(REQUEST_TIMEOUT_MS)))?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(conn, REQUEST_BYTES_MAX)).read_line(&mut line)?;
    let reply = match line.trim_end() {
        "sync" => match fs.upgrade() {
            Some(fs) => match block_on(fs.flush_all()) {
                Ok(()) => {
                    info!("synced on request");
                    "ok".to_owned()
                }
                Err(e) => format!("error: {e}"),
            },
            None => "error: the file system is stopping".to_owned(),
        },
        other => format!("error: unknown request {other:?}"),
    };
    writeln!(writer, "{reply}")?;
    Ok(())
}

/// `datenlord sync`: commit everything of a mount, durably.
#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// The mount point.
    pub mountpoint: PathBuf,
    /// The mount's --data-dir (default: the one this machine remembers
    /// for the mount point, else the same default as `datenlord mount`'s).
    #[arg(long = "data-dir")]
    pub data_dir: Option<PathBuf>,
}

/// Runs `datenlord sync`: returns once every file closed (or written)
/// on the mount before the call is durable (journal and metadata log).
pub fn sync(args: &SyncArgs) -> anyhow::Result<std::process::ExitCode> {
    let mountpoint = args
        .mountpoint
        .canonicalize()
        .with_context(|| format!("resolving {}", args.mountpoint.display()))?;
    let data_dir = crate::mount::data_dir_of(&mountpoint, args.data_dir.as_deref());
    crate::mount::check_served(&data_dir, &mountpoint)?;
    let path = data_dir.join(CONTROL_SOCKET);
    let mut conn = UnixStream::connect(&path).with_context(|| {
        format!(
            "connecting to {} (is the daemon of {} running, and are you root or its owner?)",
            path.display(),
            mountpoint.display()
        )
    })?;
    writeln!(conn, "sync").context("sending the request")?;
    let mut reply = String::new();
    BufReader::new(&conn)
        .read_line(&mut reply)
        .context("reading the daemon's answer")?;
    let reply = reply.trim_end();
    ensure!(
        !reply.is_empty(),
        "the daemon closed the connection without an answer"
    );
    if let Some(error) = reply.strip_prefix("error: ") {
        bail!("syncing {}: {error}", mountpoint.display());
    }
    ensure!(
        reply == "ok",
        "unexpected answer from the daemon: {reply:?}"
    );
    Ok(std::process::ExitCode::SUCCESS)
}
