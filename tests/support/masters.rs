//! A group of real `datenlord master` processes on loopback, mutually
//! authenticated with certificates of a cluster CA made by `datenlord
//! certs`, and the metadata commands the cluster tests send it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use datenlord_cluster::link::Security;
use datenlord_cluster::master::{MetaClient, Query, QueryAnswer};
use datenlord_cluster::meta::{
    Command as MetaCommand, Creds, Timespec, ROOT_INO, VOLUME_FORMAT_VERSION,
};

pub fn free_addr() -> String {
    free_addr_on("127.0.0.1")
}

/// A port free on `host` now.
pub fn free_addr_on(host: &str) -> String {
    let listener = TcpListener::bind((host, 0)).expect("bind");
    listener.local_addr().expect("addr").to_string()
}

/// A cluster CA made with `datenlord certs init`, and the TLS
/// directories it issued with `datenlord certs issue`, one per peer.
pub struct Certs {
    root: tempfile::TempDir,
}

impl Certs {
    pub fn new() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let ca = root.path().join("ca");
        certs_command(&["init", path_str(&ca)]);
        Self { root }
    }

    /// The CA directory (`ca.pem`, `ca-key.pem`).
    pub fn ca(&self) -> PathBuf {
        self.root.path().join("ca")
    }

    /// The TLS directory of `role` with `id` (issued at its first use).
    pub fn dir(&self, role: &str, id: Option<u64>) -> PathBuf {
        let name = match id {
            Some(id) => format!("{role}-{id}"),
            None => role.to_string(),
        };
        let dir = self.root.path().join(&name);
        if !dir.exists() {
            let ca = self.ca();
            let id = id.map(|id| id.to_string());
            let mut args = vec![
                "issue",
                "--ca",
                path_str(&ca),
                "--name",
                &name,
                "--role",
                role,
                "--out",
                path_str(&dir),
            ];
            if let Some(id) = &id {
                args.extend(["--id", id]);
            }
            certs_command(&args);
        }
        dir
    }

    /// Credentials of `role` with `id`, for a client in the test process.
    pub fn security(&self, role: &str, id: Option<u64>) -> Security {
        Security::from_dir(Some(&self.dir(role, id))).expect("TLS credentials")
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

/// Runs `datenlord certs ARGS`, which must succeed.
pub fn certs_command(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_datenlord"))
        .arg("certs")
        .args(args)
        .output()
        .expect("run datenlord certs");
    assert!(
        out.status.success(),
        "datenlord certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Group {
    pub addrs: Vec<String>,
    pub peers: String,
    pub root: tempfile::TempDir,
    pub children: Vec<Option<Child>>,
    /// `--snapshot-interval` of every master.
    pub snapshot_interval: u64,
    /// The cluster CA; `None`: masters on plain TCP (loopback).
    pub certs: Option<Certs>,
    /// More arguments for every master started from now on.
    pub extra: Vec<String>,
}

impl Group {
    /// `size` masters that snapshot (and compact) every 20 entries.
    pub fn new(size: usize) -> Self {
        Self::with_snapshot_interval(size, 20)
    }

    /// `size` masters that snapshot every `snapshot_interval` entries.
    pub fn with_snapshot_interval(size: usize, snapshot_interval: u64) -> Self {
        let mut group = Self::unstarted(size, snapshot_interval);
        for id in 1..=size as u64 {
            group.start(id);
        }
        group
    }

    /// `size` masters listening on `host` (an address other network
    /// namespaces reach).
    pub fn on(host: &str, size: usize) -> Self {
        let mut group = Self::unstarted_on(host, size, 20);
        for id in 1..=size as u64 {
            group.start(id);
        }
        group
    }

    /// Addresses and directories for `size` masters, none started.
    pub fn unstarted(size: usize, snapshot_interval: u64) -> Self {
        Self::unstarted_on("127.0.0.1", size, snapshot_interval)
    }

    fn unstarted_on(host: &str, size: usize, snapshot_interval: u64) -> Self {
        let addrs: Vec<String> = (0..size).map(|_| free_addr_on(host)).collect();
        let peers = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        Self {
            addrs,
            peers,
            root: tempfile::tempdir().expect("tempdir"),
            children: (0..size).map(|_| None).collect(),
            snapshot_interval,
            certs: Some(Certs::new()),
            extra: Vec::new(),
        }
    }

    /// `size` masters on plain TCP (no certificates), as on a trusted
    /// loopback.
    pub fn insecure(size: usize) -> Self {
        let mut group = Self::unstarted(size, 20);
        group.certs = None;
        for id in 1..=size as u64 {
            group.start(id);
        }
        group
    }

    /// `--tls-dir DIR` for `role` with `id`, or nothing without TLS.
    pub fn tls_args(&self, role: &str, id: Option<u64>) -> Vec<String> {
        self.certs.as_ref().map_or_else(Vec::new, |certs| {
            vec![
                "--tls-dir".to_string(),
                path_str(&certs.dir(role, id)).to_string(),
            ]
        })
    }

    /// The TLS directory of `role` with `id`, as a `--tls-dir` value.
    pub fn tls_dir(&self, role: &str, id: Option<u64>) -> String {
        let certs = self.certs.as_ref().expect("a TLS group");
        path_str(&certs.dir(role, id)).to_string()
    }

    /// How a client of `role` with `id` in the test process connects.
    pub fn security(&self, role: &str, id: Option<u64>) -> Security {
        self.certs
            .as_ref()
            .map_or(Security::Insecure, |certs| certs.security(role, id))
    }

    pub fn start(&mut self, id: u64) {
        let peers = self.peers.clone();
        self.start_with(id, &peers, false);
    }

    pub fn start_with(&mut self, id: u64, peers: &str, join: bool) {
        let dir = self.dir(id);
        self.start_on(id, peers, join, &dir);
    }

    /// Master `id`'s own data directory.
    pub fn dir(&self, id: u64) -> std::path::PathBuf {
        self.root.path().join(format!("master{id}"))
    }

    /// Starts master `id` on `dir` (its own, or another's).
    pub fn start_on(&mut self, id: u64, peers: &str, join: bool, dir: &std::path::Path) {
        let log = std::fs::File::create(self.root.path().join(format!("master{id}.log")))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_datenlord"))
            .args([
                "master",
                "--id",
                &id.to_string(),
                "--peers",
                peers,
                "--snapshot-interval",
                &self.snapshot_interval.to_string(),
            ])
            .args(if join { &["--join"][..] } else { &[][..] })
            .args(self.tls_args("master", Some(id)))
            .args(&self.extra)
            .arg("--data-dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn datenlord master");
        self.children[(id - 1) as usize] = Some(child);
    }

    /// Sends `signal` to master `id`.
    pub fn signal(&self, id: u64, signal: i32) {
        let child = self.children[(id - 1) as usize]
            .as_ref()
            .expect("a running master");
        let pid = i32::try_from(child.id()).expect("a pid");
        // SAFETY: signals our own child.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill -{signal}");
    }

    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.children[(id - 1) as usize].take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    }

    /// A client with an admin certificate.
    pub fn client(&self) -> MetaClient {
        MetaClient::new(self.addrs.clone(), &self.security("admin", None))
    }

    /// The leader, as the masters `among` report it.
    pub fn leader(&self, among: &[u64]) -> Option<u64> {
        let security = self.security("admin", None);
        among.iter().find_map(|&id| {
            let mut one = MetaClient::with_deadline(
                vec![self.addrs[(id - 1) as usize].clone()],
                Duration::from_millis(500),
                &security,
            );
            one.status()
                .ok()
                .map(|s| s.leader)
                .filter(|&l| l != 0 && among.contains(&l))
        })
    }

    pub fn applied(&self, id: u64) -> u64 {
        let mut one = MetaClient::with_deadline(
            vec![self.addrs[(id - 1) as usize].clone()],
            Duration::from_millis(500),
            &self.security("admin", None),
        );
        one.status().map_or(0, |s| s.applied)
    }

    /// Whether master `id` runs (`Some(status)`: it exited).
    pub fn exited(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let child = self.children[(id - 1) as usize].as_mut()?;
        child.try_wait().expect("try_wait")
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.root.path().join(format!("master{id}.log")))
            .unwrap_or_default()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn now() -> Timespec {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    Timespec {
        sec: i64::try_from(d.as_secs()).expect("seconds"),
        nsec: d.subsec_nanos(),
    }
}

pub fn format(client: &mut MetaClient) {
    client
        .apply(&MetaCommand::Format {
            uuid: [7; 16],
            block_size: 1 << 20,
            format_version: VOLUME_FORMAT_VERSION,
            capacity_bytes: 1 << 40,
            inodes_max: 1 << 20,
            now: now(),
        })
        .expect("format");
}

pub fn mkdir(client: &mut MetaClient, name: &str) {
    client
        .apply(&MetaCommand::Mkdir {
            parent: ROOT_INO,
            name: name.as_bytes().to_vec(),
            mode: 0o755.into(),
            creds: Creds::root(),
            now: now(),
        })
        .unwrap_or_else(|e| panic!("mkdir {name}: {e}"));
}

pub fn names(client: &mut MetaClient) -> Vec<String> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let answer = client
            .query(&Query::ReadDir {
                ino: ROOT_INO,
                after_cookie: after,
                max_entries: 1000,
                creds: Creds::root(),
            })
            .expect("readdir");
        let QueryAnswer::Entries(entries) = answer else {
            panic!("unexpected answer {answer:?}")
        };
        let Some(last) = entries.last() else { break };
        after = last.cookie;
        out.extend(
            entries
                .iter()
                .map(|e| String::from_utf8_lossy(&e.name).into_owned()),
        );
    }
    out
}

/// Waits until the `file://` store in `store_dir` holds a metadata backup
/// written after `since`.
pub fn wait_for_backup(store_dir: &Path, since: std::time::SystemTime) {
    let meta = store_dir.join("meta");
    wait_for("a metadata backup", Duration::from_secs(20), || {
        std::fs::read_dir(&meta)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t > since)
            })
            .then_some(())
    });
}

pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
