//! Real `datenlord master` processes on loopback: a three-master group
//! survives `kill -9` of its leader without losing an acknowledged write,
//! and the killed master catches up (from a snapshot, the log having been
//! compacted meanwhile); a single master survives `kill -9` too.

mod support;

use std::time::{Duration, Instant};

use datenlord_cluster::meta::{Command as MetaCommand, Creds, ROOT_INO};
use datenlord_cluster::replica::Membership;
use support::masters::{format, free_addr, mkdir, names, now, wait_for, Group};

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
