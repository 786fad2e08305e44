//! Two `datenlord mount` daemons as nodes of one group of real `datenlord
//! master` processes, over one shared `file://` store: close-to-open across
//! nodes (a file closed on one node opens with its bytes on the other, an
//! overwrite too), a directory made on one is seen on the other, and an
//! unlink on one is ENOENT on the other (kernel caches off with `-o`), and
//! a node unmounted and mounted again rejoins and catches up; nodes started
//! with `--node-id cert` join under their certificates' ids. Nodes serve
//! each other's cached blocks: a block is read from the store once, by its
//! home, however many nodes read it, and a node that leaves hands its
//! blocks to the others without a read failing.

mod support;

use std::time::Duration;

use support::masters::{free_addr, wait_for, Group};
use support::node::{metric_sum, Mounted, NodeDirs};

/// Kernel attribute and entry caches off: every path walk asks the node.
const NO_KERNEL_CACHE: &str = "negative_timeout=0,entry_timeout=0,attr_timeout=0";

fn node_args<'a>(
    store: &'a str,
    masters: &'a str,
    id: &'a str,
    listen: &'a str,
    tls: &'a [String],
) -> Vec<&'a str> {
    let mut args = node_args_in(store, masters, id, listen, tls);
    args.extend(["--write-mode", "through"]);
    args
}

/// [`node_args`] without a write mode (the default: `back`).
fn node_args_in<'a>(
    store: &'a str,
    masters: &'a str,
    id: &'a str,
    listen: &'a str,
    tls: &'a [String],
) -> Vec<&'a str> {
    let mut args = vec![
        "--store",
        store,
        "--masters",
        masters,
        "--node-id",
        id,
        "--node-listen",
        listen,
        "-o",
        NO_KERNEL_CACHE,
        "--cores",
        "1",
        "--cache-size",
        "0",
        "--memory-size",
        "32M",
    ];
    args.extend(tls.iter().map(String::as_str));
    args
}

/// Three masters and three (or more) nodes' settings (none mounted):
/// directories, addresses, certificates, one shared store.
struct Cluster {
    group: Group,
    masters: String,
    store: String,
    dirs: Vec<NodeDirs>,
    ids: Vec<String>,
    listens: Vec<String>,
    metrics: Vec<String>,
    tls: Vec<Vec<String>>,
}

impl Cluster {
    /// Masters on `host` (with a leader) for nodes `first..first + 3`,
    /// node `i` listening at `addr(i, port)`.
    fn new(host: &str, first: u64, addr: impl Fn(usize, u16) -> String) -> Self {
        Self::with_nodes(host, first, 3, addr)
    }

    /// [`Self::new`] with `n` nodes.
    fn with_nodes(host: &str, first: u64, n: u64, addr: impl Fn(usize, u16) -> String) -> Self {
        let group = Group::on(host, 3);
        wait_for("a leader", Duration::from_secs(20), || {
            group.leader(&[1, 2, 3])
        });
        let dirs: Vec<NodeDirs> = (0..n).map(|_| NodeDirs::new()).collect();
        Self {
            masters: group.addrs.join(","),
            store: support::node::formatted_store(&dirs[0].root().join("shared-store"), "64K"),
            dirs,
            ids: (0..n).map(|i| (first + i).to_string()).collect(),
            listens: (0..n).map(|i| addr(i as usize, 7000)).collect(),
            metrics: (0..n).map(|i| addr(i as usize, 9100)).collect(),
            tls: (0..n)
                .map(|i| group.tls_args("node", Some(first + i)))
                .collect(),
            group,
        }
    }

    /// On loopback.
    fn local(first: u64) -> Self {
        Self::new("127.0.0.1", first, |_, _| free_addr())
    }

    /// Node `i`'s mount arguments, with its metrics endpoint; `through`
    /// for `--write-mode through`, else the default (`back`).
    fn args(&self, i: usize, through: bool) -> Vec<&str> {
        let mut args = if through {
            node_args(
                &self.store,
                &self.masters,
                &self.ids[i],
                &self.listens[i],
                &self.tls[i],
            )
        } else {
            node_args_in(
                &self.store,
                &self.masters,
                &self.ids[i],
                &self.listens[i],
                &self.tls[i],
            )
        };
        args.extend(["--metrics-addr", &self.metrics[i]]);
        args
    }

    /// Waits until every node's log shows `live` live cache nodes.
    fn wait_registry(&self, live: usize) {
        for dir in &self.dirs {
            wait_registry(&dir.data_dir(), live);
        }
    }

    /// The sum of a metric over every node.
    fn sum(&self, name: &str) -> f64 {
        self.metrics.iter().map(|m| metric_sum(m, name)).sum()
    }
}

/// What two nodes of a master group need: data directories, a store
/// they share, listen addresses and certificates with their ids.
struct TwoNodes {
    masters: String,
    a_dirs: NodeDirs,
    b_dirs: NodeDirs,
    store: String,
    a_listen: String,
    b_listen: String,
    a_tls: Vec<String>,
    b_tls: Vec<String>,
}

impl TwoNodes {
    /// Once `group` has a leader; `ids` go into the certificates.
    fn of(group: &Group, ids: (u64, u64)) -> Self {
        wait_for("a leader", Duration::from_secs(20), || {
            group.leader(&[1, 2, 3])
        });
        let a_dirs = NodeDirs::new();
        let store = support::node::formatted_store(&a_dirs.root().join("shared-store"), "64K");
        Self {
            masters: group.addrs.join(","),
            a_dirs,
            b_dirs: NodeDirs::new(),
            store,
            a_listen: free_addr(),
            b_listen: free_addr(),
            a_tls: group.tls_args("node", Some(ids.0)),
            b_tls: group.tls_args("node", Some(ids.1)),
        }
    }

    /// Mounts node A, or B when `b`, under `--node-id id` with the
    /// arguments `args` makes (`node_args` or `node_args_in`).
    fn mount(&self, b: bool, id: &str, args: NodeArgs) -> Mounted {
        let (dirs, listen, tls) = if b {
            (&self.b_dirs, &self.b_listen, &self.b_tls)
        } else {
            (&self.a_dirs, &self.a_listen, &self.a_tls)
        };
        Mounted::start(dirs, &args(&self.store, &self.masters, id, listen, tls))
    }
}

/// `node_args` or `node_args_in`.
type NodeArgs = for<'a> fn(&'a str, &'a str, &'a str, &'a str, &'a [String]) -> Vec<&'a str>;

fn bytes(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8)
        .collect()
}

#[test]
fn two_mounts_of_one_master_group_see_each_others_closed_files() {
    let group = Group::new(3);
    let nodes = TwoNodes::of(&group, (11, 12));
    let a = nodes.mount(false, "11", node_args);
    let b = nodes.mount(true, "12", node_args);
    let a_log =
        std::fs::read_to_string(nodes.a_dirs.data_dir().join("datenlord.log")).unwrap_or_default();
    assert!(
        a_log.contains("masters own the metadata"),
        "a node says it backs up nothing:\n{}",
        a.log()
    );

    // Close-to-open: written and closed on A, opened and read on B.
    let first = bytes(200_000, 1);
    std::fs::write(a.path().join("f"), &first).expect("write on A");
    let read = std::fs::read(b.path().join("f")).expect("read on B");
    assert!(read == first, "B reads what A closed");
    // An overwrite: B's page cache must not keep the old bytes.
    let second = bytes(200_000, 7);
    std::fs::write(a.path().join("f"), &second).expect("overwrite on A");
    let read = std::fs::read(b.path().join("f")).expect("read again on B");
    assert!(read == second, "B reads A's overwrite");

    // A directory made on B is on A.
    std::fs::create_dir(b.path().join("d")).expect("mkdir on B");
    let meta = std::fs::metadata(a.path().join("d")).expect("stat on A");
    assert!(meta.is_dir());

    // An unlink on A is ENOENT on B.
    std::fs::remove_file(a.path().join("f")).expect("unlink on A");
    let err = std::fs::metadata(b.path().join("f")).expect_err("gone on B");
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");

    // A stopped node stays a member: it remounts on its data directory
    // (rejoining, not added again) and sees what B did meanwhile.
    a.unmount();
    std::fs::write(b.path().join("d/g"), b"while A was down").expect("write on B");
    let a = nodes.mount(false, "11", node_args);
    let read = std::fs::read(a.path().join("d/g")).expect("read on A again");
    assert_eq!(read, b"while A was down");
    let a_log =
        std::fs::read_to_string(nodes.a_dirs.data_dir().join("datenlord.log")).unwrap_or_default();
    assert!(
        a_log.contains("the group remembers this node"),
        "a restarted node rejoins:\n{}",
        a.log()
    );

    a.unmount();
    b.unmount();
}

/// `--node-id cert` (what the Kubernetes DaemonSet runs): each node takes
/// the id its certificate carries, joins under it, and the nodes share the
/// namespace as with ids given by hand.
#[test]
fn nodes_take_their_ids_from_their_certificates() {
    let group = Group::new(3);
    let nodes = TwoNodes::of(&group, (21, 22));
    let a = nodes.mount(false, "cert", node_args_in);
    let b = nodes.mount(true, "cert", node_args_in);
    for (dirs, id) in [(&nodes.a_dirs, 21), (&nodes.b_dirs, 22)] {
        let log =
            std::fs::read_to_string(dirs.data_dir().join("datenlord.log")).unwrap_or_default();
        assert!(
            log.lines()
                .any(|l| l.contains("node joined the metadata group")
                    && l.contains(&format!("id={id}"))),
            "node {id} joins under its certificate's id:\n{log}"
        );
    }
    let data = bytes(300_000, 3);
    std::fs::write(a.path().join("f"), &data).expect("write on A");
    assert!(std::fs::read(b.path().join("f")).expect("read on B") == data);
    a.unmount();
    b.unmount();
}

#[test]
fn node_options_go_together_and_need_a_shared_store() {
    let dirs = NodeDirs::new();
    let masters = free_addr();
    let listen = free_addr();
    let check = |extra: &[&str], expected: &str| {
        let err =
            Mounted::try_start(&dirs.mountpoint(), &dirs.data_dir(), extra).expect_err("refused");
        assert!(err.contains(expected), "{extra:?}: {err}");
    };
    check(
        &["--masters", &masters, "--store", "file:///tmp/x"],
        "missing: --node-id, --node-listen",
    );
    check(&["--node-id", "5"], "missing: --masters, --node-listen");
    check(
        &[
            "--masters",
            &masters,
            "--node-id",
            "5",
            "--node-listen",
            &listen,
        ],
        "needs --store",
    );
    // Plain TCP on an address other machines reach needs --insecure;
    // --tls-dir is for nodes only, and must hold credentials.
    let open = format!("0.0.0.0:{}", listen.rsplit_once(':').expect("port").1);
    for (listen, extra, expected) in [
        (open.as_str(), None, "--insecure"),
        (listen.as_str(), Some("/nonexistent"), "--tls-dir"),
    ] {
        let mut args = vec![
            "--masters",
            &masters,
            "--node-id",
            "5",
            "--node-listen",
            listen,
            "--store",
            "file:///tmp/x",
        ];
        if let Some(dir) = extra {
            args.extend(["--tls-dir", dir]);
        }
        check(&args, expected);
    }
    check(&["--tls-dir", "/tmp"], "for a node of a master group");
}

/// Three nodes read one file written on a fourth: each block is fetched
/// from the store at most once in the cluster (by its home: the others get
/// it from the home's cache), and after the writer leaves (its homes move)
/// every read still succeeds.
#[test]
fn nodes_serve_each_others_blocks_and_the_store_is_read_once_per_block() {
    let c = Cluster::local(21);
    // The second node asks for RDMA: with no device (or no RDMA in the
    // build) it says why once and reads from the others over TCP.
    let rdma = ["--neighbor-transport", "rdma"];
    let nodes: Vec<Mounted> = (0..3)
        .map(|i| {
            let extra: &[&str] = if i == 1 { &rdma } else { &[] };
            Mounted::start(&c.dirs[i], &[&c.args(i, true)[..], extra].concat())
        })
        .collect();
    let log = |i: usize| {
        std::fs::read_to_string(c.dirs[i].data_dir().join("datenlord.log")).unwrap_or_default()
    };
    let fallbacks = |i: usize| log(i).lines().filter(|l| l.contains("using TCP")).count();
    assert_eq!(fallbacks(1), 1, "{}", log(1));
    // This machine has no device; one with a device says it found one.
    assert!(log(1).contains("no RDMA device; using TCP") || log(1).contains("RDMA device "));
    assert_eq!(fallbacks(0), 0, "TCP was asked for: nothing to say");
    // Every node sees the three registered before it reads.
    c.wait_registry(3);
    let blocks = 48;
    let data = bytes(blocks * 65536, 3);
    std::fs::write(nodes[0].path().join("shared"), &data).expect("write on the first node");
    let fetched_before = c.sum("datenlord_engine_source_fetches_total");
    let readers: Vec<_> = [1, 2]
        .into_iter()
        .map(|i| {
            let path = nodes[i].path().join("shared");
            std::thread::spawn(move || std::fs::read(path).expect("read"))
        })
        .collect();
    for reader in readers {
        assert!(reader.join().expect("reader") == data, "identical bytes");
    }
    let sum = |name: &str| c.sum(name);
    let fetched = sum("datenlord_engine_source_fetches_total") - fetched_before;
    let from_neighbors = sum("datenlord_neighbor_hits_total");
    let store_reads = fetched - from_neighbors;
    assert!(from_neighbors > 0.0, "some blocks came from other nodes");
    assert!(
        store_reads <= blocks as f64,
        "{store_reads} store reads for {blocks} blocks read by two nodes ({fetched} fetches, {from_neighbors} from neighbors)"
    );
    assert!(
        sum("datenlord_neighbor_errors_total") < 0.5,
        "no neighbor errors"
    );
    assert!(sum("datenlord_neighbor_served_total") >= from_neighbors);
    // Requests go to the home's core that owns the block; only the first
    // on each connection of a requesting core to a node whose cores it
    // did not know yet may not (3 nodes, at most 2 cores each here).
    let off_shard = sum("datenlord_neighbor_served_off_shard_total");
    assert!(
        off_shard <= 12.0,
        "{off_shard} requests hopped between cores"
    );

    // The writer leaves: its blocks get other homes, every read succeeds.
    let mut nodes = nodes.into_iter();
    let first = nodes.next().expect("first");
    first.unmount();
    let rest: Vec<Mounted> = nodes.collect();
    std::fs::write(rest[0].path().join("after"), &data[..65536 * 8]).expect("write");
    for node in &rest {
        assert!(std::fs::read(node.path().join("shared")).expect("read") == data);
        assert!(std::fs::read(node.path().join("after")).expect("read") == data[..65536 * 8]);
    }
    for node in rest {
        node.unmount();
    }
}

/// Waits until the daemon with data directory `dir` logs a cache registry
/// of `nodes` nodes.
fn wait_registry(dir: &std::path::Path, nodes: usize) {
    let want = format!("nodes={nodes}");
    wait_for("the cache registry", Duration::from_secs(20), || {
        let log = std::fs::read_to_string(dir.join("datenlord.log")).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("cache registry changed"))
            .any(|l| l.contains(&want))
            .then_some(())
    });
}

/// `--write-mode back` across nodes: a file closed on A is read on B while
/// the store is unreachable (A's journal serves it); with A killed before
/// its upload, B's read fails naming A; once the store and A are back, A
/// uploads its journal and B reads the file.
#[test]
fn write_back_blocks_are_served_by_their_writer_until_uploaded() {
    let group = Group::new(3);
    wait_for("a leader", Duration::from_secs(20), || {
        group.leader(&[1, 2, 3])
    });
    let masters = group.addrs.join(",");
    let (a_dirs, b_dirs) = (NodeDirs::new(), NodeDirs::new());
    let store_dir = a_dirs.root().join("shared-store");
    let store = support::node::formatted_store(&store_dir, "64K");
    let (a_listen, b_listen) = (free_addr(), free_addr());
    let (a_tls, b_tls) = (
        group.tls_args("node", Some(31)),
        group.tls_args("node", Some(32)),
    );
    let a_args = node_args_in(&store, &masters, "31", &a_listen, &a_tls);
    let a = Mounted::start(&a_dirs, &a_args);
    let b = Mounted::start(
        &b_dirs,
        &node_args_in(&store, &masters, "32", &b_listen, &b_tls),
    );
    wait_registry(&a_dirs.data_dir(), 2);
    wait_registry(&b_dirs.data_dir(), 2);

    // The store becomes unreachable: a file where its directory was.
    let away = a_dirs.root().join("store-away");
    std::fs::rename(&store_dir, &away).expect("move the store away");
    std::fs::write(&store_dir, b"not a store").expect("block the store");
    let first = bytes(40 * 65536 + 123, 5);
    std::fs::write(a.path().join("y"), &first).expect("write on A (journaled)");
    let read = std::fs::read(b.path().join("y")).expect("read on B from A's journal");
    assert!(read == first, "B reads A's bytes before any upload");

    // A dies before uploading: what only A held fails on B, naming A.
    let second = bytes(8 * 65536, 9);
    std::fs::write(a.path().join("z"), &second).expect("write on A");
    a.kill9();
    let err = std::fs::read(b.path().join("z")).expect_err("only A held it");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let b_log =
        std::fs::read_to_string(b_dirs.data_dir().join("datenlord.log")).unwrap_or_default();
    assert!(
        b_log.contains("node=31") || b_log.contains("node 31"),
        "B's log names A:\n{}",
        b.log()
    );

    // The store and A come back: A uploads its journal, B reads the file.
    std::fs::remove_file(&store_dir).expect("unblock");
    std::fs::rename(&away, &store_dir).expect("store back");
    let a = Mounted::start(&a_dirs, &a_args);
    wait_for("B to read z", Duration::from_secs(30), || {
        std::fs::read(b.path().join("z"))
            .ok()
            .filter(|read| *read == second)
            .map(drop)
    });
    assert!(std::fs::read(b.path().join("y")).expect("read y") == first);
    a.unmount();
    b.unmount();
}

/// Three nodes, each in its own network namespace on a bridge (as on
/// three machines), masters on the bridge's address: blocks travel
/// between nodes over veth; a partitioned node costs the others store
/// reads, never an error; once its link is back it reads the current
/// bytes, never the ones from before. A and B say `--data-tls off`: their
/// blocks go in clear with a MAC between them, in TLS to and from C.
#[test]
fn nodes_on_separate_networks_serve_each_other_and_a_partition_serves_no_wrong_byte() {
    let net = support::netns::Netns::up(3);
    let c = Cluster::new(&net.host_ip(), 41, |i, port| {
        format!("{}:{port}", net.ip(i + 1))
    });
    let nodes: Vec<Mounted> = (0..3)
        .map(|i| {
            let mut args = c.args(i, false);
            if i < 2 {
                args.extend(["--data-tls", "off"]);
            }
            Mounted::start_in(&net.path(i + 1), &c.dirs[i], &args)
        })
        .collect();
    c.wait_registry(3);
    let sum = |name: &str| c.sum(name);

    let v1 = bytes(32 * 65536, 11);
    std::fs::write(nodes[0].path().join("shared"), &v1).expect("write on A");
    for node in &nodes[1..] {
        assert!(std::fs::read(node.path().join("shared")).expect("read") == v1);
    }
    assert!(
        sum("datenlord_neighbor_hits_total") > 0.0,
        "blocks crossed the veths"
    );
    assert!(sum("datenlord_neighbor_served_bytes_total") > 0.0);
    let clear = |i: usize| metric_sum(&c.metrics[i], "datenlord_neighbor_clear_connections_total");
    assert!(clear(1) > 0.0, "B's connections to A are in clear");
    assert!(clear(2) < 0.5, "C keeps TLS on");

    // C is cut off. A overwrites the file and writes another; B reads both
    // (blocks homed at C come from the store or their writer, after C
    // fails to answer).
    net.cut(3);
    let v2 = bytes(32 * 65536, 12);
    std::fs::write(nodes[0].path().join("shared"), &v2).expect("overwrite on A");
    let other = bytes(16 * 65536, 13);
    std::fs::write(nodes[0].path().join("other"), &other).expect("write on A");
    assert!(std::fs::read(nodes[1].path().join("shared")).expect("read on B") == v2);
    assert!(std::fs::read(nodes[1].path().join("other")).expect("read on B") == other);

    // C is back: it reads the new bytes, never its cached old ones.
    net.heal(3);
    let read = wait_for("C to read again", Duration::from_secs(30), || {
        std::fs::read(nodes[2].path().join("shared")).ok()
    });
    assert!(read == v2, "C reads the overwrite");
    assert!(std::fs::read(nodes[2].path().join("other")).expect("read on C") == other);
    for node in nodes {
        node.unmount();
    }
}

/// A node killed in the middle of another node's reads: the reads go on
/// without an error (from the store), the Lord marks the node dead within
/// its bound (`datenlord_cluster::lord`: about 4 s; 20 s allowed here on a
/// busy machine) and `members status` says so; `members forget-node` takes
/// it out (a running node taken out registers again); restarted, it is
/// live again.
#[test]
fn a_killed_node_is_marked_dead_without_failing_reads_and_comes_back_live() {
    let c = Cluster::local(51);
    let (group, masters, dirs) = (&c.group, &c.masters, &c.dirs);
    let args = |i: usize| c.args(i, true);
    let mut nodes: Vec<Option<Mounted>> = (0..3)
        .map(|i| Some(Mounted::start(&dirs[i], &args(i))))
        .collect();
    c.wait_registry(3);
    let path = |i: usize| dirs[i].mountpoint();
    let files: Vec<Vec<u8>> = (0..6).map(|f| bytes(16 * 65536, 100 + f)).collect();
    for (f, data) in files.iter().enumerate() {
        std::fs::write(path(0).join(format!("f{f}")), data).expect("write on the first node");
    }
    let (reader_path, expected) = (path(1), files.clone());
    let (progress, read_one) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for (f, data) in expected.iter().enumerate() {
            let read = std::fs::read(reader_path.join(format!("f{f}"))).expect("no read fails");
            assert!(read == *data, "file {f} reads back");
            let _ = progress.send(f);
        }
    });
    read_one.recv().expect("a first file read");
    nodes[2].take().expect("third").kill9();
    reader.join().expect("every read succeeded");

    let status = || {
        let mut args = vec!["members", "status", "--masters", masters];
        let admin = group.tls_args("admin", None);
        args.extend(admin.iter().map(String::as_str));
        String::from_utf8_lossy(&support::node::datenlord(&args).stdout).into_owned()
    };
    wait_for(
        "the Lord to mark node 53 dead",
        Duration::from_secs(20),
        || {
            status().contains("node 53 at").then_some(())?;
            status()
                .lines()
                .any(|l| l.contains("node 53 at") && l.contains("dead"))
                .then_some(())
        },
    );
    wait_registry(&dirs[1].data_dir(), 2);
    let logs: String = (1..=3).map(|id| group.log(id)).collect();
    assert!(logs.contains("cache node dead"), "{logs}");

    // Gone for good: an administrator takes it out of the registry.
    let forget = |id: &str| {
        let mut args = vec!["members", "forget-node", "--masters", masters, "--id", id];
        let admin = group.tls_args("admin", None);
        args.extend(admin.iter().map(String::as_str));
        let out = support::node::datenlord(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    forget("53");
    assert!(!status().contains("node 53 at"), "{}", status());
    // A running node taken out registers itself again.
    forget("52");
    wait_for(
        "node 52 back in the registry",
        Duration::from_secs(20),
        || {
            status()
                .lines()
                .any(|l| l.contains("node 52 at") && l.contains("live"))
                .then_some(())
        },
    );

    nodes[2] = Some(Mounted::start(&dirs[2], &args(2)));
    wait_for("node 53 live again", Duration::from_secs(20), || {
        status()
            .lines()
            .any(|l| l.contains("node 53 at") && l.contains("live"))
            .then_some(())
    });
    let read = std::fs::read(path(2).join("f5")).expect("read on the restarted node");
    assert!(read == files[5]);
    for node in nodes.into_iter().flatten() {
        node.unmount();
    }
}

/// `datenlord warmup DIR`: each block of a tree written on one node is
/// fetched and kept by its home before anyone reads it, so reads on the
/// other nodes then make no store read. Blocks outside the tree are not
/// warmed; a path that is not there is an error naming it. And each
/// node's health report shows in `members status`.
#[test]
fn warmup_has_the_homes_keep_a_tree_s_blocks_before_anyone_reads_them() {
    let c = Cluster::local(61);
    let nodes: Vec<Mounted> = (0..3)
        .map(|i| Mounted::start(&c.dirs[i], &c.args(i, true)))
        .collect();
    c.wait_registry(3);
    let root = nodes[0].path();
    std::fs::create_dir_all(root.join("data/sub")).expect("mkdir");
    let (a, b) = (bytes(20 * 65536, 21), bytes(12 * 65536 - 100, 22));
    std::fs::write(root.join("data/a"), &a).expect("write");
    std::fs::write(root.join("data/sub/b"), &b).expect("write");
    std::fs::write(root.join("other"), bytes(8 * 65536, 23)).expect("write");
    std::fs::write(root.join("data/empty"), b"").expect("write");

    let warmup = |path: &str, role: &str, id: Option<u64>| {
        let mut args = vec!["warmup", path, "--masters", &c.masters];
        let tls = c.group.tls_args(role, id);
        args.extend(tls.iter().map(String::as_str));
        support::node::datenlord(&args)
    };
    let warmed_before = c.sum("datenlord_neighbor_warmed_total");
    let out = warmup("/data", "admin", None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("warmed 32 of 32 blocks"), "{stdout}");
    let warmed = c.sum("datenlord_neighbor_warmed_total") - warmed_before;
    assert!((warmed - 32.0).abs() < 0.5, "{warmed} blocks warmed");

    let fetched_before = c.sum("datenlord_engine_source_fetches_total");
    let hits_before = c.sum("datenlord_neighbor_hits_total");
    for node in &nodes[1..] {
        assert!(std::fs::read(node.path().join("data/a")).expect("read") == a);
        assert!(std::fs::read(node.path().join("data/sub/b")).expect("read") == b);
    }
    let fetched = c.sum("datenlord_engine_source_fetches_total") - fetched_before;
    let hits = c.sum("datenlord_neighbor_hits_total") - hits_before;
    assert!(hits > 0.0, "blocks came from their homes");
    assert!(
        (fetched - hits).abs() < 0.5,
        "no store read after the warm-up: {fetched} fetches, {hits} from homes"
    );
    // Read latency per tier: every hit from a home is in the neighbor
    // tier's histogram; the warm-up's store reads (of blocks their
    // homes did not hold yet) in the store tier's.
    let tier = |t: &str| c.sum(&format!("datenlord_read_seconds_count{{tier=\"{t}\"}}"));
    assert!((tier("neighbor") - c.sum("datenlord_neighbor_hits_total")).abs() < 0.5);
    assert!(tier("store") > 0.0);
    assert!(tier("source") > 0.0);

    // A node's certificate may order a warm-up too; a missing path fails.
    let out = warmup("/data/sub/b", "node", Some(61));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("warmed 12 of 12 blocks"));
    let out = warmup("/data/nothing", "admin", None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing"));

    // Every node's health report reaches the leader: `members status`
    // shows each node's fill, journal and errors.
    let status = wait_for("three health reports", Duration::from_secs(20), || {
        let mut args = vec!["members", "status", "--masters", &c.masters];
        let tls = c.group.tls_args("admin", None);
        args.extend(tls.iter().map(String::as_str));
        let text = String::from_utf8_lossy(&support::node::datenlord(&args).stdout).into_owned();
        (text.matches("health: ").count() == 3 && text.contains("reported by node-61 "))
            .then_some(text)
    });
    assert!(status.contains("journal 0 blocks"), "{status}");
    assert!(
        status.matches("health: 0 of").count() == 0,
        "every node caches blocks: {status}"
    );
    for node in nodes {
        node.unmount();
    }
}

/// `datenlord cache inspect --verify --masters …`: every node checks the
/// blocks it caches against the store's object headers and drops copies
/// that differ (here: a block object replaced in the store behind the
/// cluster's back); exit status 1 then, 0 once the caches agree again.
#[test]
fn cache_inspect_has_every_node_check_its_blocks_against_the_store() {
    use datenlord_engine::store::object::{encode, parse_block_key, ObjectKind};
    let c = Cluster::local(71);
    let nodes: Vec<Mounted> = (0..3)
        .map(|i| Mounted::start(&c.dirs[i], &c.args(i, true)))
        .collect();
    c.wait_registry(3);
    let data = bytes(16 * 65536, 31);
    std::fs::write(nodes[0].path().join("f"), &data).expect("write");
    for node in &nodes[1..] {
        assert!(std::fs::read(node.path().join("f")).expect("read") == data);
    }
    let inspect = |role: &str, id: Option<u64>| {
        let mut args = vec!["cache", "inspect", "--verify", "--masters", &c.masters];
        let tls = c.group.tls_args(role, id);
        args.extend(tls.iter().map(String::as_str));
        let out = support::node::datenlord(&args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = inspect("admin", None);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        text.matches(" match the store").count(),
        4,
        "3 nodes + all: {text}"
    );
    assert!(text.contains("0 differed and 0 were corrupt"), "{text}");

    // One block object of the file is replaced in the store by a valid
    // object with other bytes.
    let store = c.dirs[0].root().join("shared-store");
    let objects: Vec<std::path::PathBuf> = walk_files(&store.join("blocks"));
    let (path, id) = objects
        .iter()
        .find_map(|p| {
            let relative = p.strip_prefix(&store).ok()?.to_str()?;
            parse_block_key(relative).map(|id| (p.clone(), id))
        })
        .expect("a block object");
    std::fs::write(&path, encode(ObjectKind::Block(id), &vec![9u8; 65536])).expect("replace");
    let (code, text) = inspect("admin", None);
    assert_eq!(code, Some(1), "{text}");
    let all = text
        .lines()
        .find(|l| l.starts_with("all nodes:"))
        .expect("total");
    assert!(!all.contains(" 0 differed"), "some copy differed: {text}");
    // Dropped everywhere: the caches agree with the store again.
    let (code, text) = inspect("admin", None);
    assert_eq!(code, Some(0), "{text}");
    // A node's certificate may not have other nodes check their caches.
    let (code, text) = inspect("node", Some(71));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("not checked"), "{text}");
    for node in nodes {
        node.unmount();
    }
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Multi-cloud HA, with a real S3 server (moto) as the store: 3 masters and
/// 4 nodes, each node and the S3 server in its own network namespace.
/// Once the blocks of a file are at their homes, the S3 server's link
/// goes down: every node still reads the file (from the homes' caches,
/// no store request); a file written meanwhile (write-back) is queued in
/// the writer's journal and read by every node from there, and once the
/// link is back the journal drains to the server, whose objects then serve
/// nodes after the writer left.
#[test]
fn with_the_s3_server_cut_off_cached_blocks_are_read_everywhere_and_writes_drain_when_it_is_back() {
    const BUCKET: &str = "dl-ha";
    let net = support::netns::Netns::up(5);
    let Some(moto) = datenlord_testbed::Moto::start_in(Some(&net.path(5)), &net.ip(5), BUCKET)
    else {
        return;
    };
    // The mounts inherit the store's settings from this process (one test
    // per process under nextest).
    for (key, value) in [
        ("AWS_ENDPOINT_URL", moto.endpoint()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ALLOW_HTTP", "true".into()),
    ] {
        std::env::set_var(key, value);
    }
    let mut c = Cluster::with_nodes(&net.host_ip(), 71, 4, |i, port| {
        format!("{}:{port}", net.ip(i + 1))
    });
    c.store = format!("s3://{BUCKET}/vol");
    let out = support::node::datenlord(&["format", "--store", &c.store, "--block-size", "64K"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nodes: Vec<Mounted> = (0..4)
        .map(|i| Mounted::start_in(&net.path(i + 1), &c.dirs[i], &c.args(i, false)))
        .collect();
    c.wait_registry(4);
    let backlog = |i: usize| metric_sum(&c.metrics[i], "datenlord_writeback_backlog_blocks");

    // A file written on A, uploaded, then read on B: each block is then
    // cached at its home (A wrote its own).
    let first = bytes(24 * 65536, 31);
    std::fs::write(nodes[0].path().join("first"), &first).expect("write on A");
    wait_for("A's upload", Duration::from_secs(60), || {
        (backlog(0) < 0.5).then_some(())
    });
    assert!(std::fs::read(nodes[1].path().join("first")).expect("read on B") == first);

    // The S3 server is cut off: every node reads the file from the homes.
    net.cut(5);
    for node in &nodes {
        assert!(std::fs::read(node.path().join("first")).expect("read") == first);
    }
    // A write meanwhile is queued in A's journal (close returns).
    let second = bytes(8 * 65536, 32);
    std::fs::write(nodes[0].path().join("second"), &second).expect("write on A");
    std::thread::sleep(Duration::from_secs(2));
    assert!(backlog(0) >= 8.0, "queued: {}", backlog(0));
    // ... and read on the other nodes from A's journal (their store reads
    // fail fast once they found the store down).
    for node in &nodes[1..] {
        assert!(std::fs::read(node.path().join("second")).expect("read") == second);
    }
    assert!(backlog(0) >= 8.0, "still queued: {}", backlog(0));

    // The server is back: the journal drains to it.
    net.heal(5);
    wait_for("A's journal to drain", Duration::from_secs(120), || {
        (backlog(0) < 0.5).then_some(())
    });
    let blocks = moto.keys(BUCKET, "vol/blocks/");
    assert!(
        blocks.len() >= 32,
        "{} block objects: {blocks:?}",
        blocks.len()
    );
    // Read from the store by a node that never had it, after A left.
    let mut nodes = nodes.into_iter();
    nodes.next().expect("A").unmount();
    let rest: Vec<Mounted> = nodes.collect();
    for node in &rest {
        assert!(std::fs::read(node.path().join("second")).expect("read") == second);
    }
    for node in rest {
        node.unmount();
    }
}

/// A stand-in for the Kubernetes API server (plain HTTP on loopback): the
/// claims and volumes it holds (path -> JSON), served only with `token`.
fn kube_api(objects: Vec<(String, String)>, token: &'static str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request = String::new();
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                request.push_str(&line);
                line.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or_default();
            let authorized = request
                .lines()
                .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {token}")));
            let (status, body) = match objects.iter().find(|(p, _)| p == path) {
                _ if !authorized => ("401 Unauthorized", "{}".to_string()),
                Some((_, json)) => ("200 OK", json.clone()),
                None => (
                    "404 Not Found",
                    r#"{"kind":"Status","code":404}"#.to_string(),
                ),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

/// POSTs `body` to the extender at `addr` + `path`: the answer's JSON.
fn post_json(addr: &str, path: &str, body: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the extender");
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    let (head, json) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

/// `ExtenderArgs` for a pod in namespace `ml` mounting `claims`, with
/// candidate node names.
fn extender_args(claims: &[&str], nodes: &[&str]) -> String {
    let volumes: Vec<serde_json::Value> = claims
        .iter()
        .enumerate()
        .map(|(i, c)| serde_json::json!({"name": format!("v{i}"), "persistentVolumeClaim": {"claimName": c}}))
        .chain([serde_json::json!({"name": "config", "configMap": {"name": "c"}})])
        .collect();
    serde_json::json!({
        "Pod": {"metadata": {"name": "job", "namespace": "ml"}, "spec": {"volumes": volumes}},
        "NodeNames": nodes,
    })
    .to_string()
}

/// A CSI-style volume `name` (a quota root under /csi-volumes) with `mib`
/// MiB written and read back on `node`, which so holds every block.
fn volume_cached_on(node: &Mounted, name: &str, mib: usize) {
    let dir = node.path().join("csi-volumes").join(name);
    std::fs::create_dir_all(&dir).expect("mkdir volume");
    let ok = std::process::Command::new("setfattr")
        .args(["-n", "trusted.datenlord.quota", "-v", "1073741824"])
        .arg(&dir)
        .status()
        .expect("setfattr");
    assert!(ok.success(), "a quota root");
    let data = bytes(mib << 20, 9);
    std::fs::write(dir.join("data"), &data).expect("write a volume's data");
    assert!(std::fs::read(dir.join("data")).expect("read back") == data);
}

/// `datenlord scheduler-extender` for `c`'s masters (an admin
/// certificate), over a stand-in Kubernetes API holding claims `data-a`,
/// `data-b` (volumes `v-a`, `v-b`), `other` (another driver's) and
/// `pending` (unbound) in namespace `ml`; its log in `dir`. The process
/// and its address, once it listens.
fn start_extender(c: &Cluster, dir: &std::path::Path) -> (std::process::Child, String) {
    let token = dir.join("token");
    std::fs::write(&token, "sekret\n").expect("token");
    let pvc = |pv: &str| format!(r#"{{"spec":{{"volumeName":"{pv}"}}}}"#);
    let pv = |driver: &str, handle: &str| {
        format!(r#"{{"spec":{{"csi":{{"driver":"{driver}","volumeHandle":"{handle}"}}}}}}"#)
    };
    let claims = "/api/v1/namespaces/ml/persistentvolumeclaims";
    let api = kube_api(
        vec![
            (format!("{claims}/data-a"), pvc("pv-a")),
            (format!("{claims}/data-b"), pvc("pv-b")),
            (format!("{claims}/other"), pvc("pv-ebs")),
            (format!("{claims}/pending"), r#"{"spec":{}}"#.to_string()),
            (
                "/api/v1/persistentvolumes/pv-a".into(),
                pv("csi.datenlord.io", "v-a"),
            ),
            (
                "/api/v1/persistentvolumes/pv-b".into(),
                pv("csi.datenlord.io", "v-b"),
            ),
            (
                "/api/v1/persistentvolumes/pv-ebs".into(),
                pv("ebs.csi.aws.com", "v-a"),
            ),
        ],
        "sekret",
    );
    let listen = free_addr();
    let log = std::fs::File::create(dir.join("extender.log")).expect("log");
    let extender = std::process::Command::new(env!("CARGO_BIN_EXE_datenlord"))
        .arg("scheduler-extender")
        .args([
            "--listen",
            &listen,
            "--masters",
            &c.masters,
            "--kube-api",
            &api,
        ])
        .arg("--kube-token-file")
        .arg(&token)
        .args(c.group.tls_args("admin", None))
        .stderr(log)
        .spawn()
        .expect("start the extender");
    wait_for("the extender", Duration::from_secs(10), || {
        std::net::TcpStream::connect(&listen).is_ok().then_some(())
    });
    (extender, listen)
}

/// The scheduler extender, end to end: two nodes of a master group each
/// cache one CSI-style volume (a quota root under /csi-volumes); the
/// extender maps a pod's claims to volumes through a Kubernetes API and
/// scores the node caching a volume's data highest, a pod of an unbound
/// claim neutral; a node whose daemon stopped fails the filter.
#[test]
fn the_scheduler_extender_scores_nodes_by_the_bytes_of_a_pods_volumes_they_cache() {
    let c = Cluster::with_nodes("127.0.0.1", 31, 2, |_, _| free_addr());
    let a = Mounted::start(&c.dirs[0], &c.args(0, true));
    let b = Mounted::start(&c.dirs[1], &c.args(1, true));
    c.wait_registry(2);
    for (name, node, mib) in [("v-a", &a, 3), ("v-b", &b, 1)] {
        volume_cached_on(node, name, mib);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut extender, listen) = start_extender(&c, dir.path());
    let extender_log =
        || std::fs::read_to_string(dir.path().join("extender.log")).unwrap_or_default();

    let nodes = ["node-31", "node-32", "worker-x"];
    let scores = |claims: &[&str]| -> Vec<i64> {
        let answer = post_json(&listen, "/prioritize", &extender_args(claims, &nodes));
        nodes
            .iter()
            .map(|n| {
                answer
                    .as_array()
                    .expect("a list")
                    .iter()
                    .find(|h| h["Host"] == *n)
                    .and_then(|h| h["Score"].as_i64())
                    .expect("a score for every candidate")
            })
            .collect()
    };
    // The nodes count what they cache at their next reports.
    wait_for("the nodes' volume reports", Duration::from_secs(20), || {
        let (a_first, b_first) = (scores(&["data-a"]), scores(&["data-b"]));
        (a_first[0] == 10 && b_first[1] == 10).then_some(())
    });
    let (for_a, for_b) = (scores(&["data-a"]), scores(&["data-b"]));
    assert!(
        for_a[1] < 10 && for_a[2] == 0,
        "{for_a:?}\n{}",
        extender_log()
    );
    assert!(for_b[0] < 10 && for_b[2] == 0, "{for_b:?}");
    // Both volumes: node-31 caches 3 MiB of 4, node-32 1 MiB: 31 leads.
    let both = scores(&["data-a", "data-b"]);
    assert!(both[0] == 10 && both[1] < 10, "{both:?}");
    // Claims of another driver, unbound or unknown: neutral.
    for claims in [&["other"][..], &["pending"], &["nope"], &[]] {
        assert_eq!(scores(claims), [0, 0, 0], "{claims:?}");
    }
    let filter =
        |claims: &[&str]| post_json(&listen, "/scheduler/filter", &extender_args(claims, &nodes));
    let passed = filter(&["data-a"]);
    assert_eq!(passed["NodeNames"], serde_json::json!(nodes), "{passed}");
    assert_eq!(passed["FailedNodes"], serde_json::json!({}));

    // Node B's daemon stops (it leaves the registry): pods with DatenLord
    // volumes no longer go there; others still may.
    b.unmount();
    wait_for(
        "the filter to drop node-32",
        Duration::from_secs(20),
        || {
            let answer = filter(&["data-a"]);
            (answer["NodeNames"] == serde_json::json!(["node-31", "worker-x"])).then_some(answer)
        },
    );
    let answer = filter(&["data-a"]);
    assert!(
        answer["FailedNodes"]["node-32"]
            .as_str()
            .is_some_and(|why| why.contains("not live")),
        "{answer}"
    );
    assert_eq!(filter(&["other"])["NodeNames"], serde_json::json!(nodes));

    // The extender stops on SIGTERM.
    let pid = i32::try_from(extender.id()).expect("pid");
    // SAFETY: a plain kill of our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = extender.wait().expect("wait");
    assert!(status.success(), "{status}\n{}", extender_log());
    a.unmount();
}

/// A node serving only S3 (`datenlord gateway` with the node flags) and a
/// node with a FUSE mount, both of one master group: an object PUT through
/// the gateway is a file on the mount, a file closed on the mount is a GET
/// away, and a delete through the gateway is gone on the mount.
#[test]
fn a_gateway_node_and_a_mounted_node_share_the_namespace() {
    use object_store::path::Path as Key;
    use object_store::{ObjectStoreExt, PutPayload};
    const ACCESS: &str = "nodes-key";
    const SECRET: &str = "nodes-secret";
    let group = Group::new(3);
    let nodes = TwoNodes::of(&group, (21, 22));
    let a = nodes.mount(false, "21", node_args);
    std::fs::create_dir(a.path().join("shared")).expect("a bucket made on A's mount");
    let s3_addr = free_addr();
    let data_dir = nodes.b_dirs.data_dir();
    let log = nodes.b_dirs.root().join("gateway.log");
    let mut flags = vec!["--data-dir", data_dir.to_str().expect("utf-8")];
    flags.extend(node_args(
        &nodes.store,
        &nodes.masters,
        "22",
        &nodes.b_listen,
        &nodes.b_tls,
    ));
    let mut gateway = std::process::Command::new(env!("CARGO_BIN_EXE_datenlord"))
        .args(["gateway", "--listen", &s3_addr, "--"])
        .args(&flags)
        .env("DATENLORD_S3_ACCESS_KEY", ACCESS)
        .env("DATENLORD_S3_SECRET_KEY", SECRET)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("datenlord gateway");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("the gateway to listen", Duration::from_secs(30), || {
        std::net::TcpStream::connect(&s3_addr).ok()
    });
    let (store, runtime) = support::s3::client(&s3_addr, "shared", ACCESS, SECRET);
    let put = bytes(300_000, 3);
    runtime
        .block_on(store.put(&Key::from("from/gateway"), PutPayload::from(put.clone())))
        .unwrap_or_else(|e| panic!("put through B: {e}\n{}", read_log()));
    let on_a = std::fs::read(a.path().join("shared/from/gateway")).expect("read on A");
    assert!(on_a == put, "A reads the object B stored");
    let written = bytes(200_000, 9);
    std::fs::write(a.path().join("shared/from-mount"), &written).expect("write on A");
    let got = runtime
        .block_on(async { store.get(&Key::from("from-mount")).await?.bytes().await })
        .unwrap_or_else(|e| panic!("get through B: {e}\n{}", read_log()));
    assert!(got.as_ref() == &written[..], "B serves the file A closed");
    runtime
        .block_on(store.delete(&Key::from("from/gateway")))
        .expect("delete through B");
    let gone = std::fs::metadata(a.path().join("shared/from/gateway")).expect_err("gone on A");
    assert_eq!(gone.raw_os_error(), Some(libc::ENOENT));
    // SAFETY: a plain kill of our own child.
    unsafe { libc::kill(i32::try_from(gateway.id()).expect("pid"), libc::SIGTERM) };
    let status = gateway.wait().expect("wait");
    assert!(status.success(), "{status}\n{}", read_log());
    a.unmount();
}
