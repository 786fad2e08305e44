//! Real `datenlord master` processes on loopback: a three-master group
//! survives `kill -9` of its leader without losing an acknowledged write,
//! and the killed master catches up (from a snapshot, the log having been
//! compacted meanwhile); a single master survives `kill -9` too.

mod support;

use std::time::{Duration, Instant};

use datenlord_cluster::meta::{Command as MetaCommand, Creds, ROOT_INO};
use datenlord_cluster::replica::Membership;
use support::masters::{format, free_addr, mkdir, names, now, wait_for, wait_for_backup, Group};

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
        mode: 0o755.into(),
        creds: Creds::root(),
        now: now(),
    });
    assert_eq!(dup.expect_err("exists").errno(), libc::EEXIST);
}

#[test]
fn masters_join_as_learners_get_promoted_and_leave() {
    // No compaction during this test: master 4 joins as a learner (added
    // first, then started with --join) and gets the log from its first
    // entry, its own addition among them. (A joiner that started with no
    // configuration stopped on that entry: "removed all voters".)
    let mut group = Group::with_snapshot_interval(3, 1_000_000);
    let mut client = group.client();
    format(&mut client);
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
    for i in 0..30 {
        mkdir(&mut client, &format!("a{i}"));
    }
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

/// Every file under `dir` with its bytes (to check nothing was changed).
fn contents(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_file() {
            out.insert(
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read(&path).expect("read"),
            );
        }
    }
    out
}

#[test]
fn a_data_dir_of_another_group_is_refused_and_never_joins() {
    // Group B: a single master with id 3, one directory, one mkdir.
    let mut other = Group::unstarted(3, 20);
    let other_addr = other.addrs[2].clone();
    let other_peers = format!("3={other_addr}");
    let foreign_dir = other.dir(3);
    other.start_on(3, &other_peers, false, &foreign_dir);
    let mut b = datenlord_cluster::master::MetaClient::new(
        vec![other_addr.clone()],
        &other.security("admin", None),
    );
    format(&mut b);
    mkdir(&mut b, "only-in-b");
    other.kill(3);
    let before = contents(&foreign_dir);

    // Group A: three masters. Master 3 is restarted on group B's directory.
    let mut group = Group::new(3);
    let mut client = group.client();
    format(&mut client);
    mkdir(&mut client, "in-a");
    group.kill(3);
    let peers = group.peers.clone();
    group.start_on(3, &peers, false, &foreign_dir);
    let status = wait_for(
        "master 3 to refuse to start",
        Duration::from_secs(10),
        || group.exited(3),
    );
    assert!(!status.success());
    let log = group.log(3);
    assert!(log.contains("metadata group"), "{log}");
    assert!(log.contains("nothing was changed"), "{log}");
    assert_eq!(
        contents(&foreign_dir),
        before,
        "the foreign directory changed"
    );

    // With the rest of group A down, nobody answers at start and it runs:
    // then its Raft connections are refused both ways, group A carries on
    // without it, and nothing crosses between the two logs.
    group.kill(1);
    group.kill(2);
    group.start_on(3, &peers, false, &foreign_dir);
    std::thread::sleep(Duration::from_millis(1500));
    group.start(1);
    group.start(2);
    let mut client = group.client();
    mkdir(&mut client, "in-a-again");
    let listed = names(&mut client);
    assert!(listed.contains(&"in-a".to_string()), "{listed:?}");
    assert!(listed.contains(&"in-a-again".to_string()), "{listed:?}");
    assert!(!listed.contains(&"only-in-b".to_string()), "{listed:?}");
    // (Master 3's log makes it a group of its own, so only 1 and 2 send.)
    wait_for(
        "master 3 to refuse group A's messages",
        Duration::from_secs(10),
        || group.log(3).contains("refused Raft messages").then_some(()),
    );
    wait_for(
        "group A to see the refusal",
        Duration::from_secs(10),
        || {
            (group.log(1) + &group.log(2))
                .contains("refuses this master's messages")
                .then_some(())
        },
    );
    assert!(
        group.exited(3).is_none(),
        "master 3 died:\n{}",
        group.log(3)
    );
    group.kill(3);
    // Group B's namespace is intact: restarted alone, it still has its
    // directory and not group A's.
    other.start_on(3, &other_peers, false, &foreign_dir);
    let listed = names(&mut datenlord_cluster::master::MetaClient::new(
        vec![other_addr],
        &other.security("admin", None),
    ));
    assert_eq!(listed, vec!["only-in-b".to_string()]);
}

/// A master group backs its namespace up to its store (the leader, every
/// --backup-interval); when every master and its data directory is lost,
/// a new group started with `--restore-from-store` on new directories has
/// the namespace back.
#[test]
fn a_group_that_lost_every_master_is_restored_from_the_store() {
    let store_root = tempfile::tempdir().expect("store dir");
    let store = format!("file://{}", store_root.path().display());
    let with_store = |group: &mut Group, restore: bool| {
        group.extra = vec![
            "--store".into(),
            store.clone(),
            "--backup-interval".into(),
            "1".into(),
        ];
        if restore {
            group.extra.push("--restore-from-store".into());
        }
        for id in 1..=3 {
            group.start(id);
        }
    };
    let mut old = Group::unstarted(3, 20);
    with_store(&mut old, false);
    let mut client = old.client();
    format(&mut client);
    for name in ["a", "b", "c"] {
        mkdir(&mut client, name);
    }
    let written = std::time::SystemTime::now();
    wait_for_backup(store_root.path(), written);
    // Every master gone, data directories and all.
    for id in 1..=3 {
        old.kill(id);
    }
    drop(old);
    // A new group (new addresses, directories and certificates) from the
    // store's newest backup.
    let mut new = Group::unstarted(3, 20);
    with_store(&mut new, true);
    let listed = names(&mut new.client());
    assert_eq!(listed, vec!["a".to_string(), "b".into(), "c".into()]);
    mkdir(&mut new.client(), "d");
    // A restore into a directory that holds a log is refused, and changes
    // nothing.
    new.kill(1);
    new.start(1);
    let status = wait_for(
        "master 1 to refuse the restore",
        Duration::from_secs(10),
        || new.exited(1),
    );
    assert!(!status.success());
    assert!(new.log(1).contains("nothing"), "{}", new.log(1));
}

/// A group with a store scrubs it (the leader): a block version nothing
/// refers to, older than the grace, is deleted a grace after it was
/// found; a version the namespace names stays.
#[test]
fn the_leader_deletes_orphan_block_versions_from_the_store() {
    use datenlord_cluster::meta::{CreateMode, FileKind};
    use datenlord_engine::store::{ControlPlane, RemoteStore, StoreUrl};
    use support::store::{age, files_below, FAST_SCRUB};
    let store_root = tempfile::tempdir().expect("store dir");
    let url = format!("file://{}", store_root.path().display());
    let mut group = Group::unstarted(1, 20);
    group.extra = ["--store", &url]
        .into_iter()
        .chain(FAST_SCRUB)
        .map(String::from)
        .collect();
    group.start(1);
    let mut client = group.client();
    format(&mut client);
    let created = client
        .apply(&MetaCommand::Mknod {
            parent: ROOT_INO,
            name: b"named".to_vec(),
            kind: FileKind::File,
            mode: CreateMode::from(0o644),
            rdev: 0,
            creds: Creds::root(),
            now: now(),
        })
        .expect("mknod");
    let ino = created.attr().expect("attributes").ino;
    client
        .apply(&MetaCommand::SetBlocks {
            ino,
            blocks: vec![(0, 5)],
            new_size: Some(5),
            creds: Creds::root(),
            now: now(),
        })
        .expect("set blocks");
    let store_url: StoreUrl = url.parse().expect("url");
    let control = ControlPlane::start().expect("control plane");
    let remote = RemoteStore::open(&store_url, &control).expect("open store");
    let named = datenlord_engine::BlockId::new(ino.0, 0, 5);
    let orphan = datenlord_engine::BlockId::new(ino.0, 0, 4);
    for id in [named, orphan] {
        futures::executor::block_on(remote.put_block(id, b"bytes")).expect("put");
    }
    let blocks = store_root.path().join("blocks");
    for f in files_below(&blocks) {
        age(&f);
    }
    let has = |id: datenlord_engine::BlockId| {
        let key = format!("/{}/{}/{}", id.ino.0, id.index, id.version);
        files_below(&blocks)
            .iter()
            .any(|p| p.to_string_lossy().ends_with(&key))
    };
    wait_for("the orphan's deletion", Duration::from_secs(30), || {
        (!has(orphan)).then_some(())
    });
    assert!(has(named), "the named version stays\n{}", group.log(1));
    assert!(
        group.log(1).contains("orphan block versions found"),
        "{}",
        group.log(1)
    );
}
