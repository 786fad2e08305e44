//! Real `datenlord master` processes on loopback: a three-master group
//! survives `kill -9` of its leader without losing an acknowledged write,
//! and the killed master catches up (from a snapshot, the log having been
//! compacted meanwhile); a single master survives `kill -9` too.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use datenlord_cluster::master::{MetaClient, Query, QueryAnswer};
use datenlord_cluster::meta::{
    Command as MetaCommand, Creds, Timespec, ROOT_INO, VOLUME_FORMAT_VERSION,
};
use datenlord_cluster::replica::Membership;

fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

struct Group {
    addrs: Vec<String>,
    peers: String,
    root: tempfile::TempDir,
    children: Vec<Option<Child>>,
}

impl Group {
    fn new(size: usize) -> Self {
        let addrs: Vec<String> = (0..size).map(|_| free_addr()).collect();
        let peers = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut group = Self {
            addrs,
            peers,
            root: tempfile::tempdir().expect("tempdir"),
            children: (0..size).map(|_| None).collect(),
        };
        for id in 1..=size as u64 {
            group.start(id);
        }
        group
    }

    fn start(&mut self, id: u64) {
        let peers = self.peers.clone();
        self.start_with(id, &peers, false);
    }

    fn start_with(&mut self, id: u64, peers: &str, join: bool) {
        let dir = self.root.path().join(format!("master{id}"));
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
                "20",
            ])
            .args(if join { &["--join"][..] } else { &[][..] })
            .arg("--data-dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn datenlord master");
        self.children[(id - 1) as usize] = Some(child);
    }

    fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.children[(id - 1) as usize].take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    }

    fn client(&self) -> MetaClient {
        MetaClient::new(self.addrs.clone())
    }

    /// The leader, as the masters `among` report it.
    fn leader(&self, among: &[u64]) -> Option<u64> {
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

    fn applied(&self, id: u64) -> u64 {
        let mut one = MetaClient::with_deadline(
            vec![self.addrs[(id - 1) as usize].clone()],
            Duration::from_millis(500),
        );
        one.status().map_or(0, |s| s.applied)
    }

    fn log(&self, id: u64) -> String {
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

fn now() -> Timespec {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    Timespec {
        sec: i64::try_from(d.as_secs()).expect("seconds"),
        nsec: d.subsec_nanos(),
    }
}

fn format(client: &mut MetaClient) {
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

fn mkdir(client: &mut MetaClient, name: &str) {
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

fn names(client: &mut MetaClient) -> Vec<String> {
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

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn killing_the_leader_loses_no_acknowledged_write() {
    let mut group = Group::new(3);
    let mut client = group.client();
    format(&mut client);
    for i in 0..30 {
        mkdir(&mut client, &format!("before-{i}"));
    }
    let old = wait_for("a leader", Duration::from_secs(10), || {
        group.leader(&[1, 2, 3])
    });
    group.kill(old);
    let killed_at = Instant::now();
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != old).collect();
    let new = wait_for("a new leader", Duration::from_secs(10), || {
        group.leader(&rest)
    });
    let election = killed_at.elapsed();
    assert!(
        election < Duration::from_secs(5),
        "new leader after {election:?}"
    );
    assert_ne!(new, old);
    // Writes continue through the new leader; 50 of them outrun the log the
    // old leader knew (snapshots every 20 entries compact it).
    for i in 0..50 {
        mkdir(&mut client, &format!("after-{i}"));
    }
    let listed = names(&mut client);
    for i in 0..30 {
        assert!(listed.contains(&format!("before-{i}")), "lost before-{i}");
    }
    for i in 0..50 {
        assert!(listed.contains(&format!("after-{i}")), "lost after-{i}");
    }
    // The killed master comes back and catches up.
    group.start(old);
    let target = group.applied(new);
    wait_for(
        "the restarted master to catch up",
        Duration::from_secs(15),
        || (group.applied(old) >= target).then_some(()),
    );
    assert!(
        group.log(old).contains("snapshot"),
        "the restarted master should have caught up from a snapshot:\n{}",
        group.log(old)
    );
}

#[test]
fn a_single_master_keeps_acknowledged_writes_across_kill_9() {
    let mut group = Group::new(1);
    let mut client = group.client();
    format(&mut client);
    for i in 0..40 {
        mkdir(&mut client, &format!("d{i}"));
    }
    group.kill(1);
    group.start(1);
    let mut client = group.client();
    let listed = names(&mut client);
    for i in 0..40 {
        assert!(listed.contains(&format!("d{i}")), "lost d{i}");
    }
    // The state is writable again, with the same namespace.
    mkdir(&mut client, "after-restart");
    let dup = client.apply(&MetaCommand::Mkdir {
        parent: ROOT_INO,
        name: b"d0".to_vec(),
        mode: 0o755,
        creds: Creds::root(),
        now: now(),
    });
    assert_eq!(dup.expect_err("exists").errno(), libc::EEXIST);
}

#[test]
fn masters_join_as_learners_get_promoted_and_leave() {
    let mut group = Group::new(3);
    let mut client = group.client();
    format(&mut client);
    for i in 0..30 {
        mkdir(&mut client, &format!("a{i}"));
    }
    // Master 4 joins as a learner: added first, then started with --join.
    let addr4 = free_addr();
    client
        .change_members(&Membership::AddLearner {
            id: 4,
            addr: addr4.clone(),
        })
        .expect("add learner");
    group.addrs.push(addr4.clone());
    group.children.push(None);
    let peers4 = format!("{},4={addr4}", group.peers);
    group.start_with(4, &peers4, true);
    let leader = wait_for("a leader", Duration::from_secs(10), || {
        group.leader(&[1, 2, 3])
    });
    let target = group.applied(leader);
    let deadline = Instant::now() + Duration::from_secs(15);
    while group.applied(4) < target {
        assert!(
            Instant::now() < deadline,
            "the learner did not catch up (applied {} of {target}):\n--- master 4\n{}\n--- leader {leader}\n{}",
            group.applied(4),
            group.log(4),
            group.log(leader)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Master 3 leaves; the learner becomes a voter: the group is {1, 2, 4}.
    client
        .change_members(&Membership::Remove { id: 3 })
        .expect("remove 3");
    group.kill(3);
    client
        .change_members(&Membership::AddVoter { id: 4, addr: addr4 })
        .expect("promote 4");
    for i in 0..20 {
        mkdir(&mut client, &format!("b{i}"));
    }
    // With 4 voting, the group survives losing one more master.
    let leader = wait_for("a leader", Duration::from_secs(10), || {
        group.leader(&[1, 2, 4])
    });
    let other = [1, 2, 4]
        .into_iter()
        .find(|&id| id != leader)
        .expect("a follower");
    group.kill(other);
    for i in 0..10 {
        mkdir(&mut client, &format!("c{i}"));
    }
    let listed = names(&mut client);
    let expected = (0..30)
        .map(|i| format!("a{i}"))
        .chain((0..20).map(|i| format!("b{i}")))
        .chain((0..10).map(|i| format!("c{i}")));
    for name in expected {
        assert!(listed.contains(&name), "lost {name}");
    }
}
