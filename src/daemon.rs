//! Going to the background the way mount helpers do: the command returns
//! once the file system is mounted (exit 0), or prints why it could not be
//! (exit 1); the daemon keeps running, detached, logging to a file.
//!
//! The fork happens before any thread starts (executors, Raft, tokio): a
//! forked child only has the thread that called `fork`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::Context;

/// Largest readiness message read from the daemon.
const READY_MESSAGE_BYTES_MAX: u64 = 64 * 1024;

/// Tells the waiting parent (if any) how start-up went. Dropped without a
/// word, the parent reports that the daemon died during start-up.
#[derive(Debug)]
pub struct Ready {
    pipe: Option<File>,
}

impl Ready {
    /// A start in the foreground: nobody waits.
    pub fn foreground() -> Self {
        Self { pipe: None }
    }

    /// The file system is serving: the parent exits 0.
    pub fn ok(&mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(b"ok\n");
        }
    }

    /// Start-up failed: the parent prints `message` and exits 1.
    pub fn fail(&mut self, message: &str) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(format!("error: {message}\n").as_bytes());
        }
    }
}

/// What `fork` made of this process.
#[derive(Debug)]
pub enum Role {
    /// The original process, after the daemon reported: its exit status.
    Parent(std::process::ExitCode),
    /// The daemon: it must report through `Ready`.
    Daemon(Ready),
}

/// Forks; the child detaches (new session, stdin from /dev/null, stdout
/// and stderr appended to `log`), the parent waits for its readiness.
pub fn daemonize(log: &Path) -> anyhow::Result<Role> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the log directory {}", dir.display()))?;
    }
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening the log file {}", log.display()))?;
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating the readiness pipe");
    }
    // SAFETY: pipe2 returned two fresh descriptors we now own.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other thread runs yet (see the module comment).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if pid > 0 {
        drop(write_end);
        return Ok(Role::Parent(wait_ready(File::from(read_end), log)));
    }
    drop(read_end);
    // SAFETY: plain calls on descriptors this process owns.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::close(null);
        }
        libc::dup2(log_file.as_raw_fd(), 1);
        libc::dup2(log_file.as_raw_fd(), 2);
    }
    Ok(Role::Daemon(Ready {
        pipe: Some(File::from(write_end)),
    }))
}

fn wait_ready(pipe: File, log: &Path) -> std::process::ExitCode {
    let mut message = String::new();
    let _ = pipe
        .take(READY_MESSAGE_BYTES_MAX)
        .read_to_string(&mut message);
    match message.trim_end() {
        "ok" => std::process::ExitCode::SUCCESS,
        "" => {
            eprintln!(
                "error: the daemon stopped during start-up; see {}",
                log.display()
            );
            std::process::ExitCode::from(1)
        }
        text => {
            eprintln!("{text}");
            std::process::ExitCode::from(1)
        }
    }
}
