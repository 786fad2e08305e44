//! A `datenlord csi` plugin for end-to-end tests: the real binary in the
//! foreground on a unix socket, with its own DatenLord mount, driven by
//! the driver's gRPC clients. Whatever a test leaves mounted under its
//! directory (bind mounts, the DatenLord mount) is unmounted when the
//! fixture drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use datenlord_csi::proto::controller_client::ControllerClient;
use datenlord_csi::proto::identity_client::IdentityClient;
use datenlord_csi::proto::node_client::NodeClient;
use tonic::transport::Channel;

use super::node::{log_tail, wait_exit, NodeDirs};

/// How long the plugin may take to mount DatenLord and serve.
const START_WAIT_S: u64 = 90;

/// How long the plugin may take to stop after SIGTERM.
const STOP_WAIT_S: u64 = 30;

/// A running `datenlord csi` process.
#[derive(Debug)]
pub struct Plugin {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Plugin {
    /// Starts `datenlord csi ARGS` with its log in `log` and waits until it
    /// serves `socket`.
    pub fn start(args: &[String], socket: &Path, log: &Path) -> Self {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the plugin's log");
        let child = Command::new(env!("CARGO_BIN_EXE_datenlord"))
            .arg("csi")
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("run datenlord csi");
        let mut plugin = Self {
            child,
            socket: socket.to_owned(),
            log: log.to_owned(),
        };
        let start = Instant::now();
        while !socket.exists() {
            if let Some(status) = plugin.child.try_wait().expect("wait") {
                panic!(
                    "datenlord csi exited ({status}) before serving:\n{}",
                    plugin.log()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(START_WAIT_S),
                "datenlord csi does not serve {} after {START_WAIT_S} s:\n{}",
                socket.display(),
                plugin.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        plugin
    }

    /// The plugin's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; its exit status once it stopped.
    pub fn stop(mut self) -> ExitStatus {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: a plain kill of our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(STOP_WAIT_S),
                "datenlord csi still runs {STOP_WAIT_S} s after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The socket it serves.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The driver's three clients on one connection, and a runtime to call them.
#[derive(Debug)]
pub struct Clients {
    runtime: tokio::runtime::Runtime,
    /// Identity service.
    pub identity: IdentityClient<Channel>,
    /// Controller service.
    pub controller: ControllerClient<Channel>,
    /// Node service.
    pub node: NodeClient<Channel>,
}

impl Clients {
    /// Connects to the plugin at `socket`.
    pub fn connect(socket: &Path) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let channel = runtime
            .block_on(datenlord_csi::connect(socket))
            .expect("connect to the plugin");
        Self {
            runtime,
            identity: IdentityClient::new(channel.clone()),
            controller: ControllerClient::new(channel.clone()),
            node: NodeClient::new(channel),
        }
    }

    /// Runs one call: its reply, or the status it failed with.
    pub fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        self.runtime.block_on(call).map(tonic::Response::into_inner)
    }

    /// Runs calls at the same time: their results in order.
    pub fn call_all<T, F>(&self, calls: Vec<F>) -> Vec<Result<T, tonic::Status>>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.runtime
            .block_on(futures::future::join_all(calls))
            .into_iter()
            .map(|r| r.map(tonic::Response::into_inner))
            .collect()
    }
}

/// A plugin serving the controller and node services as node `node-a`,
/// over a DatenLord mount it made itself, in fresh directories.
#[derive(Debug)]
pub struct Fixture {
    /// The test's directories; the DatenLord mount is `dirs.mountpoint()`.
    pub dirs: NodeDirs,
    /// The plugin, while it runs.
    pub plugin: Option<Plugin>,
    args: Vec<String>,
}

impl Fixture {
    /// Starts the plugin with `extra` arguments before `--`.
    pub fn start(extra: &[&str]) -> Self {
        let mut services = vec!["--controller", "--node", "--node-name", "node-a"];
        services.extend_from_slice(extra);
        Self::start_with(&services, &[])
    }

    /// Starts the plugin with `services` (`--controller`, `--node`,
    /// `--node-name`) and mount arguments after `--data-dir`.
    pub fn start_with(services: &[&str], mount: &[String]) -> Self {
        let dirs = NodeDirs::new();
        let mut args: Vec<String> = vec![
            "--endpoint".into(),
            format!("unix://{}", dirs.root().join("csi/csi.sock").display()),
            "--mountpoint".into(),
            dirs.mountpoint().display().to_string(),
        ];
        args.extend(services.iter().map(|s| (*s).to_string()));
        args.extend([
            "--".into(),
            "--data-dir".into(),
            dirs.data_dir().display().to_string(),
        ]);
        args.extend_from_slice(mount);
        let mut fixture = Self {
            dirs,
            plugin: None,
            args,
        };
        fixture.restart();
        fixture
    }

    /// The plugin's socket.
    pub fn socket(&self) -> PathBuf {
        self.dirs.root().join("csi/csi.sock")
    }

    /// Starts the plugin (again, after `stop`).
    pub fn restart(&mut self) {
        assert!(self.plugin.is_none(), "the plugin runs already");
        let log = self.dirs.root().join("csi.log");
        self.plugin = Some(Plugin::start(&self.args, &self.socket(), &log));
    }

    /// Stops the plugin with SIGTERM: its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.plugin.take().expect("the plugin runs").stop()
    }

    /// Clients of the running plugin.
    pub fn clients(&self) -> Clients {
        Clients::connect(&self.socket())
    }

    /// The plugin's log and the DatenLord daemon's.
    pub fn logs(&self) -> String {
        format!(
            "plugin:\n{}\ndatenlord:\n{}",
            std::fs::read_to_string(self.dirs.root().join("csi.log")).unwrap_or_default(),
            log_tail(&self.dirs.data_dir())
        )
    }

    /// The PID of the DatenLord daemon.
    pub fn daemon_pid(&self) -> i32 {
        let text =
            std::fs::read_to_string(self.dirs.data_dir().join("datenlord.pid")).expect("pid file");
        text.trim().parse().expect("pid")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        drop(self.plugin.take());
        unmount_under(self.dirs.root());
        // The DatenLord daemon exits once its mount is gone.
        if let Ok(text) = std::fs::read_to_string(self.dirs.data_dir().join("datenlord.pid")) {
            if let Ok(pid) = text.trim().parse::<i32>() {
                let _ = wait_exit(pid, Duration::from_secs(60));
            }
        }
    }
}

/// Every mount at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = datenlord_csi::mountinfo::read()
        .expect("mount table")
        .into_iter()
        .map(|e| e.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points
}

/// Detaches every mount at or under `dir`.
pub fn unmount_under(dir: &Path) {
    for point in mounts_under(dir) {
        let _ = Command::new("umount").arg("-l").arg(&point).output();
    }
}
