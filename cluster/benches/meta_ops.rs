//! Metadata operations per second and latency percentiles: file creates
//! (group-committed Raft proposals), stats from the local copy, listing of
//! a 10k-entry directory and renames, with 1 and 16 concurrent clients, on
//! the embedded single master (in-process handle) and on three masters on
//! loopback (TCP client protocol, writes through the leader).
//!
//! `cargo bench -p datenlord-cluster --bench meta_ops -- [--ops N] [--setup embedded|mount|three]`
//! (`mount`: the group `datenlord mount` embeds, log synced behind)
//! Not a test: numbers depend on the machine; record them with the machine
//! and the command in perf/RESULTS.md.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datenlord_cluster::link::Security;
use datenlord_cluster::master::{Master, MasterConfig, MetaClient, Query, QueryAnswer};
use datenlord_cluster::meta::{
    Command, Creds, FileKind, Ino, MetaState, Outcome, RenameFlags, Timespec, ROOT_INO,
    VOLUME_FORMAT_VERSION,
};
use datenlord_cluster::raft_driver::RaftHandle;
use datenlord_cluster::shared_state::SharedState;
use futures::executor::block_on;
use hdrhistogram::Histogram;

const LATENCY_NS_MAX: u64 = 60_000_000_000;

fn now() -> Timespec {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timespec {
        sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nsec: d.subsec_nanos(),
    }
}

/// One way to reach the metadata: an in-process handle or a TCP client.
enum Access {
    /// Writes through the driver, reads from the local copy.
    Handle(RaftHandle<SharedState<MetaState>>, SharedState<MetaState>),
    Client(Box<MetaClient>),
}

impl Access {
    fn apply(&mut self, cmd: &Command) -> Outcome {
        match self {
            Self::Handle(h, _) => {
                let bytes = block_on(h.propose(cmd.encode())).expect("propose");
                datenlord_cluster::master::decode_result(&bytes).expect("command")
            }
            Self::Client(c) => c.apply(cmd).expect("command"),
        }
    }

    fn stat(&mut self, ino: Ino) {
        match self {
            Self::Handle(_, local) => {
                local.read().getattr(ino).expect("getattr");
            }
            Self::Client(c) => {
                c.query(&Query::GetAttr { ino }).expect("getattr");
            }
        }
    }

    fn list(&mut self, dir: Ino) -> usize {
        let mut after = 0;
        let mut n = 0;
        loop {
            let entries = match self {
                Self::Handle(_, local) => local
                    .read()
                    .readdir(dir, after, 1000, &Creds::root())
                    .expect("readdir"),
                Self::Client(c) => match c
                    .query(&Query::ReadDir {
                        ino: dir,
                        after_cookie: after,
                        max_entries: 1000,
                        creds: Creds::root(),
                    })
                    .expect("readdir")
                {
                    QueryAnswer::Entries(e) => e,
                    other => panic!("unexpected {other:?}"),
                },
            };
            let Some(last) = entries.last() else { return n };
            after = last.cookie;
            n += entries.len();
        }
    }
}

struct Setup {
    name: &'static str,
    access: Box<dyn Fn() -> Access + Send + Sync>,
    _masters: Vec<Master>,
    _dir: tempfile::TempDir,
}

fn embedded() -> Setup {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let addr = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .to_string();
    let config = MasterConfig {
        id: 1,
        peers: BTreeMap::from([(1, addr)]),
        data_dir: dir.path().join("m1"),
        snapshot_interval_entries: None,
        join: false,
        group_name: String::new(),
        security: Security::Insecure,
        restore: None,
    };
    let master = Master::start(&config).expect("master");
    let handle = master.handle();
    let local = master.local();
    std::thread::sleep(Duration::from_millis(300));
    Setup {
        name: "embedded single master",
        access: Box::new(move || Access::Handle(handle.clone(), local.clone())),
        _masters: vec![master],
        _dir: dir,
    }
}

/// The group `datenlord mount` runs: one member, no port, its log synced
/// behind (`LogSync::Deferred`) and each request's round in the caller's
/// thread.
fn mount() -> Setup {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let master = Master::embedded(&dir.path().join("m1"), None).expect("embedded master");
    let handle = master.handle();
    let local = master.local();
    std::thread::sleep(Duration::from_millis(300));
    Setup {
        name: "mount's embedded group",
        access: Box::new(move || Access::Handle(handle.clone(), local.clone())),
        _masters: vec![master],
        _dir: dir,
    }
}

fn three() -> Setup {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let addrs: Vec<String> = (0..3)
        .map(|_| {
            TcpListener::bind("127.0.0.1:0")
                .expect("bind")
                .local_addr()
                .expect("addr")
                .to_string()
        })
        .collect();
    let peers: BTreeMap<u64, String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (i as u64 + 1, a.clone()))
        .collect();
    let masters: Vec<Master> = (1..=3)
        .map(|id| {
            Master::start(&MasterConfig {
                id,
                peers: peers.clone(),
                data_dir: dir.path().join(format!("m{id}")),
                snapshot_interval_entries: None,
                join: false,
                group_name: String::new(),
                security: Security::Insecure,
                restore: None,
            })
            .expect("master")
        })
        .collect();
    Setup {
        name: "3 masters on loopback (TCP)",
        access: Box::new(move || {
            Access::Client(Box::new(MetaClient::new(
                addrs.clone(),
                &Security::Insecure,
            )))
        }),
        _masters: masters,
        _dir: dir,
    }
}

/// Runs `op(client, i)` for `ops` operations split over `clients` threads.
fn measure(
    setup: &Setup,
    clients: usize,
    ops: u64,
    op: &(dyn Fn(&mut Access, u64) + Sync),
) -> (f64, Histogram<u64>) {
    let next = AtomicU64::new(0);
    let started = Instant::now();
    let hist = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| {
                    let mut access = (setup.access)();
                    let mut h =
                        Histogram::<u64>::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("histogram");
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= ops {
                            return h;
                        }
                        let t = Instant::now();
                        op(&mut access, i);
                        let _ = h.record((t.elapsed().as_nanos() as u64).max(1));
                    }
                })
            })
            .collect();
        let mut total = Histogram::<u64>::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("histogram");
        for w in workers {
            total.add(w.join().expect("worker")).expect("merge");
        }
        total
    });
    (ops as f64 / started.elapsed().as_secs_f64(), hist)
}

fn row(setup: &str, op: &str, clients: usize, (rate, h): &(f64, Histogram<u64>)) {
    println!(
        "| {setup} | {op} | {clients} | {rate:.0} | {:.1} | {:.1} | {:.1} |",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
}

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let ops: u64 = arg("--ops").and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let setups = arg("--setup").unwrap_or_else(|| "embedded,mount,three".into());
    println!("| setup | op | clients | ops/s | p50 µs | p99 µs | max µs |");
    println!("|---|---|---|---|---|---|---|");
    for name in setups.split(',') {
        let setup = match name {
            "embedded" => embedded(),
            "mount" => mount(),
            "three" => three(),
            other => panic!("unknown setup {other}: use embedded, mount or three"),
        };
        run_setup(&setup, ops);
    }
}

fn run_setup(setup: &Setup, ops: u64) {
    let mut admin = (setup.access)();
    admin.apply(&Command::Format {
        uuid: [1; 16],
        block_size: 1 << 20,
        format_version: VOLUME_FORMAT_VERSION,
        capacity_bytes: 1 << 50,
        inodes_max: 1 << 30,
        now: now(),
    });
    let mut dir = |name: &str| -> Ino {
        let out = admin.apply(&Command::Mkdir {
            parent: ROOT_INO,
            name: name.as_bytes().to_vec(),
            mode: 0o755.into(),
            creds: Creds::root(),
            now: now(),
        });
        out.attr().expect("attr").ino
    };
    let dirs: Vec<Ino> = ["c1", "c16", "big"].iter().map(|n| dir(n)).collect();
    for (&clients, &parent) in [1usize, 16].iter().zip(&dirs) {
        let create = move |a: &mut Access, i: u64| {
            a.apply(&Command::Mknod {
                parent,
                name: format!("f{i}").into_bytes(),
                kind: FileKind::File,
                mode: 0o644.into(),
                rdev: 0,
                creds: Creds::root(),
                now: now(),
            });
        };
        row(
            setup.name,
            "create",
            clients,
            &measure(setup, clients, ops, &create),
        );
    }
    let stat_ino = dirs[0];
    for clients in [1usize, 16] {
        let stat = move |a: &mut Access, _: u64| a.stat(stat_ino);
        row(
            setup.name,
            "stat",
            clients,
            &measure(setup, clients, ops * 5, &stat),
        );
    }
    // A 10k-entry directory, listed whole per op.
    let big = dirs[2];
    let fill = move |a: &mut Access, i: u64| {
        a.apply(&Command::Mknod {
            parent: big,
            name: format!("e{i}").into_bytes(),
            kind: FileKind::File,
            mode: 0o644.into(),
            rdev: 0,
            creds: Creds::root(),
            now: now(),
        });
    };
    measure(setup, 16, 10_000, &fill);
    let list = move |a: &mut Access, _: u64| assert_eq!(a.list(big), 10_000);
    row(setup.name, "readdir 10k", 1, &measure(setup, 1, 20, &list));
    for (&clients, &parent) in [1usize, 16].iter().zip(&dirs) {
        let rename = move |a: &mut Access, i: u64| {
            a.apply(&Command::Rename {
                parent,
                name: format!("f{i}").into_bytes(),
                new_parent: parent,
                new_name: format!("r{i}").into_bytes(),
                flags: RenameFlags::default(),
                creds: Creds::root(),
                now: now(),
            });
        };
        row(
            setup.name,
            "rename",
            clients,
            &measure(setup, clients, ops, &rename),
        );
    }
}
