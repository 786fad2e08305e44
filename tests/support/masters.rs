//! A group of real `datenlord master` processes on loopback, and the
//! metadata commands the cluster tests send it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use datenlord_cluster::master::{MetaClient, Query, QueryAnswer};
use datenlord_cluster::meta::{
    Command as MetaCommand, Creds, Timespec, ROOT_INO, VOLUME_FORMAT_VERSION,
};

pub fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

pub struct Group {
    pub addrs: Vec<String>,
    pub peers: String,
    pub root: tempfile::TempDir,
    pub children: Vec<Option<Child>>,
    /// `--snapshot-interval` of every master.
    pub snapshot_interval: u64,
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

    /// Addresses and directories for `size` masters, none started.
    pub fn unstarted(size: usize, snapshot_interval: u64) -> Self {
        let addrs: Vec<String> = (0..size).map(|_| free_addr()).collect();
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
        }
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
            .arg("--data-dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn datenlord master");
        self.children[(id - 1) as usize] = Some(child);
    }

    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.children[(id - 1) as usize].take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    }

    pub fn client(&self) -> MetaClient {
        MetaClient::new(self.addrs.clone())
    }

    /// The leader, as the masters `among` report it.
    pub fn leader(&self, among: &[u64]) -> Option<u64> {
        among.iter().find_map(|&id| {
            let mut one = MetaClient::with_deadline(
                vec![self.addrs[(id - 1) as usize].clone()],
                Duration::from_millis(500),
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
            mode: 0o755,
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
