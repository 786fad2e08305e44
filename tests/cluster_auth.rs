//! Cluster traffic is mutually authenticated (real `datenlord master`
//! processes with certificates of a CA made by `datenlord certs`): a client
//! without a certificate or with another CA's is refused, a node's
//! certificate cannot change the membership and a master's cannot use the
//! namespace, and forged Raft messages — from a stranger, from a member
//! claiming another member's id, from a node posing as a leader — stop no
//! master and move no term. Masters and nodes refuse plain TCP on an
//! address other machines can reach unless told `--insecure`.

mod support;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use datenlord_cluster::link::{Expect, Security};
use datenlord_cluster::master::MetaClient;
use datenlord_cluster::raft_transport::{encode_frame, RAFT_PREAMBLE};
use raft::eraftpb::{Message, MessageType};
use support::masters::{format, free_addr, mkdir, names, wait_for, Certs, Group};

fn datenlord(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_datenlord"))
        .args(args)
        .output()
        .expect("run datenlord")
}

/// A group of three with a leader and a formatted namespace.
fn running_group() -> (Group, u64) {
    let group = Group::new(3);
    let mut client = group.client();
    format(&mut client);
    mkdir(&mut client, "before");
    let leader = wait_for("a leader", Duration::from_secs(10), || {
        group.leader(&[1, 2, 3])
    });
    (group, leader)
}

/// Each master's (id, term, leader), asked with an admin certificate.
fn views(group: &Group) -> Vec<(u64, u64, u64)> {
    let admin = group.security("admin", None);
    group
        .addrs
        .iter()
        .map(|addr| {
            let status =
                MetaClient::with_deadline(vec![addr.clone()], Duration::from_secs(5), &admin)
                    .status()
                    .expect("status");
            (status.id, status.term, status.leader)
        })
        .collect()
}

#[test]
fn clients_without_a_certificate_of_the_ca_are_refused() {
    let (group, _) = running_group();
    let deadline = Duration::from_millis(1500);
    // No certificate: the TLS handshake fails before a request is read.
    let mut plain = MetaClient::with_deadline(group.addrs.clone(), deadline, &Security::Insecure);
    let err = plain.status().expect_err("plain TCP refused").to_string();
    assert!(err.contains("--tls-dir"), "{err}");
    // A certificate of another CA, even an admin's.
    let stranger = Certs::new();
    let mut foreign = MetaClient::with_deadline(
        group.addrs.clone(),
        deadline,
        &stranger.security("admin", None),
    );
    let err = foreign
        .status()
        .expect_err("another CA refused")
        .to_string();
    assert!(err.contains("no metadata master answered"), "{err}");
    // A master's certificate may ask the status, not use the namespace.
    let mut as_master = MetaClient::with_deadline(
        group.addrs.clone(),
        Duration::from_secs(5),
        &group.security("master", Some(1)),
    );
    as_master.status().expect("a master may ask the status");
    let err = as_master
        .apply(&datenlord_cluster::meta::Command::Mkdir {
            parent: datenlord_cluster::meta::ROOT_INO,
            name: b"by-a-master".to_vec(),
            mode: 0o755.into(),
            creds: datenlord_cluster::meta::Creds::root(),
            now: support::masters::now(),
        })
        .expect_err("a master certificate may not change the namespace")
        .to_string();
    assert!(err.contains("refused"), "{err}");
    // Nothing changed, and the refusals are in the masters' logs.
    assert_eq!(names(&mut group.client()), vec!["before".to_string()]);
    let logs: String = (1..=3).map(|id| group.log(id)).collect();
    assert!(
        logs.contains("did not authenticate with a certificate of this cluster's CA"),
        "{logs}"
    );
}

#[test]
fn only_an_admin_certificate_changes_the_membership() {
    let (group, _) = running_group();
    let masters = group.addrs.join(",");
    let tls = |role: &str, id: Option<u64>| group.tls_dir(role, id);
    let spare = free_addr();
    let change = |tls_dir: &str, verb: &str, id: &str| {
        let mut args = vec!["members", verb, "--masters", &masters, "--id", id];
        if verb == "add" {
            args.extend(["--addr", &spare, "--learner"]);
        }
        args.extend(["--tls-dir", tls_dir]);
        datenlord(&args)
    };
    // A node adds only itself, a master never, and nobody without a
    // certificate: each is refused, and nothing is applied.
    for (who, id) in [
        (tls("node", Some(10)), "11"),
        (tls("master", Some(2)), "11"),
    ] {
        let out = change(&who, "add", id);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("refused"), "{stderr}");
        assert!(stderr.contains("admin certificate"), "{stderr}");
    }
    let out = change(&tls("node", Some(10)), "remove", "3");
    assert!(!out.status.success());
    let out = datenlord(&["members", "remove", "--masters", &masters, "--id", "3"]);
    assert!(!out.status.success(), "no certificate");
    let logs: String = (1..=3).map(|id| group.log(id)).collect();
    assert!(!logs.contains("applied a membership change"), "{logs}");
    // The admin's change goes through, on the command line as in the library.
    let out = change(&tls("admin", None), "add", "11");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = change(&tls("admin", None), "remove", "11");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the changes to apply", Duration::from_secs(10), || {
        let logs: String = (1..=3).map(|id| group.log(id)).collect();
        (logs.matches("applied a membership change").count() >= 6).then_some(())
    });
}

/// Opens a Raft connection to master `to` with `security`, offering
/// member `as_id` of `group_id`: whether the master accepted the offer.
fn raft_link(
    group: &Group,
    to: u64,
    security: &Security,
    as_id: u64,
    group_id: u64,
) -> Option<datenlord_cluster::link::Link> {
    let addr = &group.addrs[(to - 1) as usize];
    let mut link = security
        .connect(
            addr,
            Expect::Member(to),
            Duration::from_millis(500),
            Duration::from_secs(2),
        )
        .ok()?;
    let mut hello = RAFT_PREAMBLE.to_vec();
    hello.extend_from_slice(&group_id.to_le_bytes());
    hello.extend_from_slice(&as_id.to_le_bytes());
    link.write_all(&hello).ok()?;
    link.flush().ok()?;
    let mut answer = [0u8; 9];
    link.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    link.read_exact(&mut answer).ok()?;
    (answer[0] == 1).then_some(link)
}

/// A heartbeat that would make its receiver follow `from` at a much
/// higher term and commit far past its log (raft-rs panics on that).
fn forged_heartbeat(from: u64, to: u64, term: u64) -> Vec<u8> {
    let mut m = Message {
        from,
        to,
        term: term + 100,
        commit: 1 << 40,
        ..Default::default()
    };
    m.set_msg_type(MessageType::MsgHeartbeat);
    let mut frame = Vec::new();
    encode_frame(&m, &mut frame).expect("encode");
    frame
}

/// Whether the master closed the connection after `frame` (it reads no
/// further message from a peer that broke a rule).
fn closed_after(mut link: datenlord_cluster::link::Link, frame: &[u8]) -> bool {
    let sent = link.write_all(frame).and_then(|()| link.flush());
    if sent.is_err() {
        return true;
    }
    let _ = link.set_read_timeout(Some(Duration::from_secs(5)));
    let mut byte = [0u8; 1];
    matches!(link.read(&mut byte), Ok(0) | Err(_))
}

#[test]
fn forged_raft_messages_stop_no_master_and_move_no_term() {
    let (group, leader) = running_group();
    let before = views(&group);
    let term = before[0].1;
    let group_id = group.client().status().expect("status").group;
    let follower = [1, 2, 3]
        .into_iter()
        .find(|&id| id != leader)
        .expect("a follower");

    // A stranger without a certificate never gets to the handshake.
    assert!(raft_link(&group, follower, &Security::Insecure, leader, group_id).is_none());
    let stranger = Certs::new();
    let other_ca = stranger.security("master", Some(leader));
    assert!(raft_link(&group, follower, &other_ca, leader, group_id).is_none());

    // A member's certificate offering another member's id is refused.
    let other = [1, 2, 3]
        .into_iter()
        .find(|&id| id != leader && id != follower)
        .expect("a third master");
    let its_own = group.security("master", Some(other));
    assert!(raft_link(&group, follower, &its_own, leader, group_id).is_none());
    // Offering its own id and then sending a message from the leader's id
    // closes the connection before the message reaches Raft.
    let link = raft_link(&group, follower, &its_own, other, group_id).expect("own id accepted");
    assert!(closed_after(
        link,
        &forged_heartbeat(leader, follower, term)
    ));
    // A node's certificate under its own id: a heartbeat is not a message
    // a learner sends.
    let node = group.security("node", Some(10));
    let link = raft_link(&group, follower, &node, 10, group_id).expect("node offer accepted");
    assert!(closed_after(link, &forged_heartbeat(10, follower, term)));

    // Every master runs, nobody's term moved, and the group still commits.
    let mut group = group;
    for id in 1..=3 {
        assert!(
            group.exited(id).is_none(),
            "master {id} stopped:\n{}",
            group.log(id)
        );
    }
    let after = views(&group);
    assert_eq!(before, after, "a forged message changed a master's view");
    mkdir(&mut group.client(), "after");
    // The masters' data directories are their owner's alone.
    for id in 1..=3 {
        let dir = group.dir(id);
        let mode = |p: &std::path::Path| {
            std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(p).expect("stat").permissions(),
            ) & 0o777
        };
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            assert_eq!(
                mode(&path) & 0o077,
                0,
                "{} is open to others",
                path.display()
            );
        }
    }
    let logs: String = (1..=3).map(|id| group.log(id)).collect();
    assert!(
        logs.contains("a certificate speaks only for its own id"),
        "{logs}"
    );
    assert!(logs.contains("is not one its role sends"), "{logs}");
}

#[test]
fn plain_tcp_on_a_reachable_address_needs_insecure() {
    let port = free_addr().rsplit_once(':').expect("port").1.to_string();
    let open = format!("0.0.0.0:{port}");
    let peers = format!("1={open}");
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("m1");
    let dir = dir.to_str().expect("utf-8");
    let out = datenlord(&["master", "--id", "1", "--peers", &peers, "--data-dir", dir]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--insecure") && stderr.contains("datenlord certs"),
        "{stderr}"
    );
    assert!(!std::path::Path::new(dir).exists(), "nothing was made");

    // With --insecure it serves (and stops on SIGTERM).
    let mut child = Command::new(env!("CARGO_BIN_EXE_datenlord"))
        .args([
            "master",
            "--id",
            "1",
            "--peers",
            &peers,
            "--data-dir",
            dir,
            "--insecure",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let addr = format!("127.0.0.1:{port}");
    wait_for("the insecure master", Duration::from_secs(10), || {
        MetaClient::with_deadline(
            vec![addr.clone()],
            Duration::from_millis(300),
            &Security::Insecure,
        )
        .status()
        .ok()
    });
    let pid = i32::try_from(child.id()).expect("a pid");
    // SAFETY: signals our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(child.wait().expect("wait").success());

    // A master given another role's certificate says which it needs.
    let certs = Certs::new();
    let node_dir = certs.dir("node", Some(1));
    let local = format!("1={}", free_addr());
    let out = datenlord(&[
        "master",
        "--id",
        "1",
        "--peers",
        &local,
        "--data-dir",
        root.path().join("m2").to_str().expect("utf-8"),
        "--tls-dir",
        node_dir.to_str().expect("utf-8"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--role master --id 1"), "{stderr}");
}

#[test]
fn certs_commands_refuse_what_cannot_work() {
    let root = tempfile::tempdir().expect("tempdir");
    let ca = root.path().join("ca");
    let ca = ca.to_str().expect("utf-8");
    assert!(datenlord(&["certs", "init", ca]).status.success());
    let again = datenlord(&["certs", "init", ca]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a CA"));
    let out = root.path().join("m");
    let out = out.to_str().expect("utf-8");
    let issue = |extra: &[&str]| {
        let mut args = vec!["certs", "issue", "--ca", ca, "--name", "m1", "--out", out];
        args.extend(extra);
        datenlord(&args)
    };
    let missing_id = issue(&["--role", "master"]);
    assert!(String::from_utf8_lossy(&missing_id.stderr).contains("give --id"));
    let bad_role = issue(&["--role", "root", "--id", "1"]);
    assert!(String::from_utf8_lossy(&bad_role.stderr).contains("master, node or admin"));
    let ok = issue(&["--role", "master", "--id", "1"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("master 1"));
    // Keys are the owner's alone.
    let key = std::fs::metadata(format!("{out}/key.pem")).expect("key");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600
    );
}

#[test]
fn a_panic_in_the_raft_thread_ends_the_master_and_a_restart_recovers() {
    let (mut group, leader) = running_group();
    let term = views(&group)[0].1;
    let group_id = group.client().status().expect("status").group;
    let follower = [1, 2, 3]
        .into_iter()
        .find(|&id| id != leader)
        .expect("a follower");
    // The leader's own certificate and id (a member is trusted) with a
    // heartbeat whose commit lies past the follower's log: raft-rs panics.
    let leaders = group.security("master", Some(leader));
    let mut link = raft_link(&group, follower, &leaders, leader, group_id).expect("accepted");
    let mut m = Message {
        from: leader,
        to: follower,
        term,
        commit: 1 << 40,
        ..Default::default()
    };
    m.set_msg_type(MessageType::MsgHeartbeat);
    let mut frame = Vec::new();
    encode_frame(&m, &mut frame).expect("encode");
    link.write_all(&frame)
        .and_then(|()| link.flush())
        .expect("send");
    let status = wait_for("the follower to end", Duration::from_secs(10), || {
        group.exited(follower)
    });
    assert_eq!(status.code(), Some(70), "{}", group.log(follower));
    let log = group.log(follower);
    assert!(log.contains("the Raft replica panicked"), "{log}");
    assert!(log.contains("a restart recovers"), "{log}");
    // The others go on; the restarted follower catches up.
    mkdir(&mut group.client(), "while-down");
    group.start(follower);
    let leader_applied = group.applied(leader);
    wait_for(
        "the restarted follower to catch up",
        Duration::from_secs(20),
        || (group.applied(follower) >= leader_applied).then_some(()),
    );
    assert_eq!(
        names(&mut group.client()),
        vec!["before".to_string(), "while-down".to_string()]
    );
}

/// The serial of the certificate master `id` presents now.
fn presented_serial(group: &Group, id: u64) -> String {
    let link = group
        .security("admin", None)
        .connect(
            &group.addrs[(id - 1) as usize],
            Expect::Member(id),
            Duration::from_millis(500),
            Duration::from_secs(2),
        )
        .expect("connect");
    match link.peer() {
        datenlord_cluster::tls::Peer::Certified(who) => who.serial.clone(),
        datenlord_cluster::tls::Peer::Unverified => panic!("a TLS group answered in plain"),
    }
}

#[test]
fn a_master_reloads_its_certificate_on_sighup_and_keeps_it_when_the_new_one_is_wrong() {
    let (group, _) = running_group();
    let certs = group.certs.as_ref().expect("a TLS group");
    let dir = certs.dir("master", Some(1));
    let ca = certs.ca();
    let before = presented_serial(&group, 1);
    // A renewed certificate and key, moved over the old files.
    let replace_with = |role: &str, name: &str| {
        let new = dir.with_file_name(name);
        support::masters::certs_command(&[
            "issue",
            "--ca",
            ca.to_str().expect("utf-8"),
            "--name",
            name,
            "--role",
            role,
            "--id",
            "1",
            "--out",
            new.to_str().expect("utf-8"),
        ]);
        for file in ["cert.pem", "key.pem"] {
            std::fs::rename(new.join(file), dir.join(file)).expect("move");
        }
    };
    replace_with("master", "m1-renewed");
    group.signal(1, libc::SIGHUP);
    let renewed = wait_for("the renewed certificate", Duration::from_secs(10), || {
        let now = presented_serial(&group, 1);
        (now != before).then_some(now)
    });
    assert!(group.log(1).contains("reloaded the TLS credentials"));
    mkdir(&mut group.client(), "after-renewal");
    // A certificate of another role is refused; the one in use stays.
    replace_with("node", "m1-wrong");
    group.signal(1, libc::SIGHUP);
    wait_for("the refusal", Duration::from_secs(10), || {
        group.log(1).contains("could not be reloaded").then_some(())
    });
    assert!(group.log(1).contains("kept the credentials in use"));
    assert_eq!(presented_serial(&group, 1), renewed);
    mkdir(&mut group.client(), "after-refusal");
    let mut group = group;
    assert!(group.exited(1).is_none(), "SIGHUP stopped master 1");
}

#[test]
fn a_revoked_certificate_is_refused_by_every_master_even_after_a_restart() {
    let (mut group, _) = running_group();
    let node = group.security("node", Some(10));
    let mut as_node = MetaClient::with_deadline(group.addrs.clone(), Duration::from_secs(2), &node);
    as_node.status().expect("the node is served");
    let serial = node.identity().expect("a TLS identity").serial;
    let masters = group.addrs.join(",");
    let dir = |role: &str, id: Option<u64>| group.tls_dir(role, id);
    // Only an admin revokes.
    let admin_serial = group
        .security("admin", None)
        .identity()
        .expect("admin")
        .serial;
    let revoke = |serial: &str, tls_dir: &str| {
        datenlord(&[
            "certs",
            "revoke",
            "--masters",
            &masters,
            "--serial",
            serial,
            "--tls-dir",
            tls_dir,
        ])
    };
    let out = revoke(&admin_serial, &dir("node", Some(10)));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));
    let out = revoke(&serial, &dir("admin", None));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The open connection is closed at its next request after the recheck,
    // and new ones are refused by every master.
    std::thread::sleep(Duration::from_millis(1200));
    for addr in &group.addrs {
        let err = MetaClient::with_deadline(vec![addr.clone()], Duration::from_millis(800), &node)
            .status()
            .expect_err("revoked")
            .to_string();
        assert!(err.contains("no metadata master answered"), "{addr}: {err}");
    }
    assert!(as_node.status().is_err(), "the open connection was kept");
    let logs: String = (1..=3).map(|id| group.log(id)).collect();
    assert!(logs.contains("which is revoked"), "{logs}");
    // The list is replicated state: it survives restarts of every master.
    for id in 1..=3 {
        group.kill(id);
    }
    for id in 1..=3 {
        group.start(id);
    }
    wait_for(
        "a leader after the restart",
        Duration::from_secs(20),
        || group.leader(&[1, 2, 3]),
    );
    let err = MetaClient::with_deadline(group.addrs.clone(), Duration::from_millis(800), &node)
        .status()
        .expect_err("still revoked")
        .to_string();
    assert!(err.contains("no metadata master answered"), "{err}");
    mkdir(&mut group.client(), "after-restart");
}

/// The cache node registry says where to ask for blocks: a node registers
/// only itself, through its own operation; nobody slips a registration or
/// a revocation into an ordinary proposal.
#[test]
fn a_node_registers_only_itself_and_proposals_carry_no_registry_change_or_revocation() {
    use datenlord_cluster::meta::{CacheNode, Command};
    let (group, _) = running_group();
    let deadline = Duration::from_secs(5);
    let node = group.security("node", Some(10));
    let mut as_node = MetaClient::with_deadline(group.addrs.clone(), deadline, &node);
    let register = |id: u64| Command::RegisterCacheNode {
        node: CacheNode {
            id,
            addr: "127.0.0.1:7000".into(),
            cache_bytes: 1 << 30,
            live: true,
        },
    };
    as_node
        .cache_node(&register(10))
        .expect("a node registers itself");
    as_node
        .cache_node(&Command::UnregisterCacheNode { id: 10 })
        .expect("and unregisters itself");
    let refused = |result: Result<(), String>, what: &str| {
        let err = result.expect_err(what);
        assert!(err.contains("refused"), "{what}: {err}");
    };
    refused(
        as_node.cache_node(&register(11)).map_err(|e| e.to_string()),
        "another node's registration",
    );
    refused(
        as_node
            .cache_node(&Command::UnregisterCacheNode { id: 11 })
            .map_err(|e| e.to_string()),
        "another node's removal",
    );
    let admin = group.security("admin", None);
    let mut as_admin = MetaClient::with_deadline(group.addrs.clone(), deadline, &admin);
    refused(
        as_admin
            .cache_node(&register(10))
            .map_err(|e| e.to_string()),
        "an admin is no cache node",
    );
    // An administrator takes a node (gone for good) out of the registry.
    as_node.cache_node(&register(10)).expect("registered again");
    as_admin
        .cache_node(&Command::UnregisterCacheNode { id: 10 })
        .expect("an admin forgets a node");
    for command in [
        register(10),
        Command::RevokeCertificate {
            serial: "abcdef".into(),
        },
    ] {
        refused(
            as_node.apply(&command).map(drop).map_err(|e| e.to_string()),
            "through a proposal",
        );
    }
}

/// A node reports only its own health, to the leader, which keeps the last
/// report of each node; nodes and admins read them.
#[test]
fn a_node_reports_only_its_own_health_and_the_leader_keeps_the_last_report() {
    use datenlord_cluster::health::{HealthReport, NodeHealth};
    let (group, _) = running_group();
    let deadline = Duration::from_secs(5);
    let mut as_node = MetaClient::with_deadline(
        group.addrs.clone(),
        deadline,
        &group.security("node", Some(10)),
    );
    let report = |id: u64, cached_bytes: u64| HealthReport {
        id,
        // What a node says of its name counts for nothing with TLS.
        name: "someone-else".into(),
        health: NodeHealth {
            cached_bytes,
            journal_blocks: 3,
            ..NodeHealth::default()
        },
    };
    as_node.report_health(&report(10, 1)).expect("its own");
    as_node.report_health(&report(10, 2)).expect("again");
    let err = as_node
        .report_health(&report(11, 5))
        .expect_err("another node's")
        .to_string();
    assert!(err.contains("refused"), "{err}");
    let mut as_admin = MetaClient::with_deadline(
        group.addrs.clone(),
        deadline,
        &group.security("admin", None),
    );
    let err = as_admin
        .report_health(&report(10, 9))
        .expect_err("an admin is no node")
        .to_string();
    assert!(err.contains("refused"), "{err}");
    let entries = as_admin.health().expect("the leader's book");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!((entries[0].id, entries[0].health.cached_bytes), (10, 2));
    assert_eq!(entries[0].health.journal_blocks, 3);
    assert_eq!(entries[0].name, "node-10", "the certificate's name");
    assert!(entries[0].age_ms < 60_000);
    // A report the leader will not keep: a clear refusal.
    let mut oversized = report(10, 1);
    oversized.health.volumes = vec![
        datenlord_cluster::health::VolumeCache::default();
        datenlord_cluster::health::HEALTH_VOLUMES_MAX + 1
    ];
    let err = as_node
        .report_health(&oversized)
        .expect_err("too many volumes")
        .to_string();
    assert!(err.contains("volumes"), "{err}");
}
