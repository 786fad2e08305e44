//! A node keeping a learner copy of a group of real `datenlord master`
//! processes: it writes through the leader and sees its writes in its local
//! copy at once, sees other clients' writes in a linearizable read, keeps
//! working after `kill -9` of the leader, rejoins on its data directory
//! (caught up, not added twice) and leaves.

mod support;

use std::path::Path;
use std::time::Duration;

use datenlord_cluster::master::{Query, QueryAnswer};
use datenlord_cluster::meta::{
    Command as MetaCommand, Creds, MetaState, ROOT_INO, VOLUME_FORMAT_VERSION,
};
use datenlord_cluster::node::{Node, NodeConfig};
use datenlord_cluster::shared_state::SharedState;
use support::masters::{free_addr, mkdir, now, wait_for, Group};

const NODE_ID: u64 = 10;

fn format_command() -> MetaCommand {
    MetaCommand::Format {
        uuid: [9; 16],
        block_size: 1 << 20,
        format_version: VOLUME_FORMAT_VERSION,
        capacity_bytes: 1 << 40,
        inodes_max: 1 << 20,
        now: now(),
    }
}

fn mkdir_command(name: &str) -> MetaCommand {
    MetaCommand::Mkdir {
        parent: ROOT_INO,
        name: name.as_bytes().to_vec(),
        mode: 0o755.into(),
        creds: Creds::root(),
        now: now(),
    }
}

fn sees(local: &SharedState<MetaState>, name: &str) -> bool {
    local
        .read()
        .lookup(ROOT_INO, name.as_bytes(), &Creds::root())
        .is_ok()
}

fn config(group: &Group, id: u64, listen: &str, dir: &Path) -> NodeConfig {
    NodeConfig {
        id,
        listen: listen.to_string(),
        advertise: None,
        masters: group.addrs.clone(),
        data_dir: dir.to_path_buf(),
        security: group.security("node", Some(id)),
    }
}

/// Membership changes naming the node that master `id` applied.
fn changes_of_node(group: &Group, id: u64, kind: &str) -> usize {
    group
        .log(id)
        .lines()
        .filter(|l| l.contains("applied a membership change"))
        .filter(|l| l.contains(&format!("{kind} {{ id: {NODE_ID}")))
        .count()
}

#[test]
fn a_learner_node_reads_locally_writes_through_the_leader_and_follows_failover() {
    let mut group = Group::new(3);
    let dir = group.root.path().join("node");
    let listen = free_addr();
    let node_config = config(&group, NODE_ID, &listen, &dir);
    let node = Node::join(&node_config).expect("join");

    // Writes through the node are in its local copy when they return.
    node.apply(&format_command()).expect("format");
    assert!(node.local().read().volume().is_some());
    for i in 0..10 {
        let name = format!("n{i}");
        node.apply(&mkdir_command(&name)).expect("mkdir");
        assert!(sees(&node.local(), &name), "{name} not in the local copy");
    }
    // A retry-safe failure comes back as the namespace's error.
    let dup = node.apply(&mkdir_command("n0")).expect_err("exists");
    assert_eq!(dup.errno(), libc::EEXIST);

    // Another client's write is seen by a linearizable read on the node.
    let mut client = group.client();
    mkdir(&mut client, "from-client");
    let seen = node
        .linearizable(|s| s.lookup(ROOT_INO, b"from-client", &Creds::root()).is_ok())
        .expect("linearizable read");
    assert!(seen);
    let answer = node
        .query(&Query::Lookup {
            parent: ROOT_INO,
            name: b"n3".to_vec(),
            creds: Creds::root(),
        })
        .expect("query");
    assert!(matches!(answer, QueryAnswer::Attr(_)), "{answer:?}");

    // Wrong starts are refused and change nothing.
    let clash = Node::join(&config(
        &group,
        1,
        &free_addr(),
        &group.root.path().join("clash"),
    ))
    .expect_err("a master's id")
    .to_string();
    assert!(clash.contains("id of the master"), "{clash}");
    let other = Node::join(&config(&group, NODE_ID + 1, &free_addr(), &dir))
        .expect_err("another node's directory")
        .to_string();
    assert!(other.contains("check --id and --data-dir"), "{other}");

    // kill -9 of the leader: the node keeps reading and writing.
    let old = wait_for("a leader", Duration::from_secs(10), || {
        group.leader(&[1, 2, 3])
    });
    group.kill(old);
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != old).collect();
    for i in 0..10 {
        let name = format!("after-kill-{i}");
        node.apply(&mkdir_command(&name)).expect("mkdir after kill");
        assert!(sees(&node.local(), &name), "{name} not in the local copy");
    }
    mkdir(&mut client, "after-election");
    let seen = node
        .linearizable(|s| {
            s.lookup(ROOT_INO, b"after-election", &Creds::root())
                .is_ok()
        })
        .expect("linearizable read after the election");
    assert!(seen);
    let status = node.status().expect("status");
    assert!(
        status.leader.is_some_and(|l| rest.contains(&l)),
        "{status:?}"
    );

    // The node stops, the group moves on (past a snapshot: one every 20
    // entries), the node restarts on its directory and catches up.
    node.stop().expect("stop");
    for i in 0..30 {
        mkdir(&mut client, &format!("while-down-{i}"));
    }
    let node = Node::join(&node_config).expect("rejoin");
    for name in (0..30)
        .map(|i| format!("while-down-{i}"))
        .chain(["n0".into(), "after-kill-9".into()])
    {
        assert!(sees(&node.local(), &name), "{name} missing after rejoin");
    }
    node.apply(&mkdir_command("after-rejoin")).expect("mkdir");
    // The group remembered it: added once (a master up all along).
    let witness = rest[0];
    assert_eq!(
        changes_of_node(&group, witness, "Added"),
        1,
        "{}",
        group.log(witness)
    );

    // Leaving removes it; joining again adds it again.
    node.leave().expect("leave");
    wait_for("the removal", Duration::from_secs(10), || {
        (changes_of_node(&group, witness, "Removed") == 1).then_some(())
    });
    mkdir(&mut client, "after-leave");
    let node = Node::join(&node_config).expect("join after leaving");
    assert!(sees(&node.local(), "after-leave"));
    wait_for("the second addition", Duration::from_secs(10), || {
        (changes_of_node(&group, witness, "Added") == 2).then_some(())
    });
    node.stop().expect("stop");
}

#[test]
fn a_node_on_a_copy_of_another_group_is_refused_and_a_new_one_records_the_group() {
    let group = Group::new(3);
    // A node directory that is a copy of another group (its identity file
    // names another group, as after a start against other masters).
    let foreign = group.root.path().join("foreign-node");
    datenlord_cluster::group::record_identity(&foreign, "node", NODE_ID, 0x5eed).expect("record");
    let err = Node::join(&config(&group, NODE_ID, &free_addr(), &foreign))
        .expect_err("a copy of another group")
        .to_string();
    assert!(err.contains("metadata group 0000000000005eed"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    let names: Vec<_> = std::fs::read_dir(&foreign)
        .expect("read_dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, vec![datenlord_cluster::group::IDENTITY_FILE]);

    // A new directory records the masters' group, and a restart keeps it.
    let dir = group.root.path().join("node");
    let listen = free_addr();
    let node = Node::join(&config(&group, NODE_ID, &listen, &dir)).expect("join");
    node.stop().expect("stop");
    let identity = std::fs::read_to_string(dir.join(datenlord_cluster::group::IDENTITY_FILE))
        .expect("identity");
    let recorded = identity
        .lines()
        .find_map(|l| l.strip_prefix("group="))
        .expect("a group line")
        .to_string();
    let status = datenlord_cluster::master::MetaClient::with_deadline(
        vec![group.addrs[0].clone()],
        Duration::from_secs(5),
        &group.security("admin", None),
    )
    .status()
    .expect("status");
    assert_eq!(recorded, format!("{:016x}", status.group));
    let again = Node::join(&config(&group, NODE_ID, &listen, &dir)).expect("rejoin");
    again.stop().expect("stop");
}
