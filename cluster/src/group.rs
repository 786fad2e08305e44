//! Which metadata group a data directory, a master and a connection
//! belong to.
//!
//! A group's id is fixed when the group is bootstrapped: a hash of its
//! name (`--group`, empty by default) and its first members (`--peers`,
//! `id=host:port`), so the masters started together agree on it without
//! talking. Every master and node records the id in its data directory's
//! identity file next to its role and its own id; a master that joins
//! later and a node learn it from the group. A Raft connection starts with
//! it, and one from another group is refused before any message is read:
//! a data directory of another group never trades log entries with this
//! one (raft-rs would panic on the conflicting log, or worse, merge it).
//! At start, the members that answer are asked for their group too, so a
//! mixed-up data directory or `--peers` is refused with a message instead
//! of being found out later in the logs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use tracing::warn;

use crate::link::Security;
use crate::master::{MasterError, MasterStatus, MetaClient};

/// Name of the file that records which group member a data directory
/// belongs to.
pub const IDENTITY_FILE: &str = "master.identity";

/// How long a start waits for each member it asks for its group.
pub const ASK_TIMEOUT_MS: u64 = 400;

/// Who this process is in its group: its id and the group's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// The member's id (master or node).
    pub id: u64,
    /// The group's id ([`group_id`]).
    pub group: u64,
}

/// The id of a group bootstrapped as `name` with `members` (id ->
/// `host:port`, as given to every master in `--peers`).
pub fn group_id(name: &str, members: &BTreeMap<u64, String>) -> u64 {
    let mut text = format!("datenlord metadata group\n{name}\n");
    for (id, addr) in members {
        let _ = writeln!(text, "{id}={addr}");
    }
    // FNV-1a: stable across builds and platforms, unlike std's hashers.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // 0 is never a group (it reads as "unknown" in old files).
    hash.max(1)
}

/// The group of the embedded single-node master of `datenlord mount`
/// (never on the network; recorded so a networked master refuses its
/// directory and the other way round).
pub fn embedded_group() -> u64 {
    group_id("embedded", &BTreeMap::from([(1, String::new())]))
}

/// What a data directory says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// A new (missing or empty) directory.
    New,
    /// This member's directory; its group if the file records one (files
    /// written before groups were recorded do not).
    Member(Option<u64>),
}

fn identity_text(role: &str, id: u64) -> String {
    format!("datenlord metadata {role}\nid={id}\n")
}

/// Reads the identity in `dir` for `role` `id`: refuses a directory of
/// another member or of something else. Deletes and writes nothing.
pub fn check_identity(dir: &Path, role: &str, id: u64) -> Result<Recorded, MasterError> {
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(found) => {
            let recorded = found
                .strip_prefix(&identity_text(role, id))
                .and_then(|rest| parse_group(rest.trim_end()));
            recorded.ok_or_else(|| {
                MasterError::Config(format!(
                    "{} belongs to another {role}:\n{found}but this is {role} {id}: check --id and --data-dir (nothing was changed)",
                    dir.display()
                ))
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let has_files = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
            if has_files {
                return Err(MasterError::Config(format!(
                    "{} is not empty and has no {IDENTITY_FILE}: it is not a {role}'s data directory; use an empty or new directory (nothing was changed)",
                    dir.display()
                )));
            }
            Ok(Recorded::New)
        }
        Err(e) => Err(MasterError::Config(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// `""` (no group recorded) or `group=HEX`; `None` for anything else.
fn parse_group(rest: &str) -> Option<Recorded> {
    if rest.is_empty() {
        return Some(Recorded::Member(None));
    }
    let hex = rest.strip_prefix("group=")?;
    u64::from_str_radix(hex, 16)
        .ok()
        .filter(|&g| g != 0)
        .map(|g| Recorded::Member(Some(g)))
}

/// Records `role` `id` of `group` in `dir` (created if missing), replacing
/// the file atomically and durably.
pub fn record_identity(dir: &Path, role: &str, id: u64, group: u64) -> Result<(), MasterError> {
    let path = dir.join(IDENTITY_FILE);
    let text = format!("{}group={group:016x}\n", identity_text(role, id));
    std::fs::create_dir_all(dir)
        .and_then(|()| replace_file(&path, text.as_bytes()))
        .map_err(|e| MasterError::Config(format!("cannot write {}: {e}", path.display())))
}

/// Replaces `path` with `bytes` so that a crash leaves the old file or the
/// new one, never an empty or partial one: written to a temporary file,
/// synced, renamed over `path`, and the directory synced.
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    std::fs::File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
}

/// Checks `dir` for `role` `id` and records `group` there when the
/// directory is new or predates recorded groups; refuses a directory of
/// another group. For members whose group is known from the start (the
/// embedded master).
pub fn claim(dir: &Path, role: &str, id: u64, group: u64) -> Result<(), MasterError> {
    match check_identity(dir, role, id)? {
        Recorded::Member(Some(found)) if found == group => Ok(()),
        Recorded::Member(Some(found)) => Err(foreign_dir(dir, role, id, found, group)),
        Recorded::New | Recorded::Member(None) => record_identity(dir, role, id, group),
    }
}

/// The error for a directory recording `found` where `expected` runs.
pub fn foreign_dir(dir: &Path, role: &str, id: u64, found: u64, expected: u64) -> MasterError {
    let what = |g: u64| {
        if g == embedded_group() {
            "the embedded metadata of a `datenlord mount`".to_string()
        } else {
            format!("metadata group {g:016x}")
        }
    };
    MasterError::Config(format!(
        "{} holds {role} {id} of {}, but this {role} is starting in {}: use the data directory of this group (or a new one), or fix --peers/--masters (nothing was changed)",
        dir.display(),
        what(found),
        what(expected)
    ))
}

/// The status of the master (or node) at `addr`, if it answers within
/// `timeout_ms`.
pub fn ask(addr: &str, timeout_ms: u64, security: &Security) -> Option<MasterStatus> {
    MetaClient::with_deadline(
        vec![addr.to_string()],
        Duration::from_millis(timeout_ms),
        security,
    )
    .status()
    .ok()
}

/// Asks each of `addrs` (at once, briefly) for its status; returns the
/// answers of those that gave one.
pub fn ask_members(addrs: &[String], security: &Security) -> Vec<(String, MasterStatus)> {
    addrs
        .iter()
        .cloned()
        .zip(ask_each(addrs, ASK_TIMEOUT_MS, security))
        .filter_map(|(addr, status)| Some((addr, status?)))
        .collect()
}

/// Asks each of `addrs` at once for its status, waiting at most
/// `timeout_ms` for any: the answers in the order of `addrs`.
pub fn ask_each(
    addrs: &[String],
    timeout_ms: u64,
    security: &Security,
) -> Vec<Option<MasterStatus>> {
    let asks: Vec<_> = addrs
        .iter()
        .map(|addr| {
            let addr = addr.clone();
            let security = security.clone();
            std::thread::spawn(move || ask(&addr, timeout_ms, &security))
        })
        .collect();
    asks.into_iter()
        .map(|ask| ask.join().ok().flatten())
        .collect()
}

/// How members that answered in another group are judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strangers {
    /// Any of them refuses the start (a new member: its configuration is
    /// what differs).
    Refuse,
    /// Only more than half of those asked, in one other group, refuse the
    /// start (this directory is the odd one out); fewer are warned about
    /// (their messages will be refused), so one misplaced member does not
    /// stop the others.
    Outvoted,
}

/// Checks this member's `group` against the members that answered
/// (`answers`, out of `asked` addresses).
pub fn check_peers(
    group: u64,
    answers: &[(String, MasterStatus)],
    asked: usize,
    strangers: Strangers,
) -> Result<(), MasterError> {
    let others: Vec<&(String, MasterStatus)> =
        answers.iter().filter(|(_, s)| s.group != group).collect();
    if others.is_empty() {
        return Ok(());
    }
    let named = others
        .iter()
        .map(|(addr, status)| {
            format!(
                "{addr} (id {}) is in group {:016x}",
                status.id, status.group
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let outvoted = tally(answers)
        .into_iter()
        .any(|(g, n)| g != group && n * 2 > asked);
    if strangers == Strangers::Refuse || outvoted {
        return Err(MasterError::Config(format!(
            "this member is in metadata group {group:016x}, but {named}: every master of a group must be started with the same --peers (and --group), a master joining a running group needs --join, and a data directory belongs to one group only (nothing was changed)"
        )));
    }
    warn!(
        "this member is in metadata group {group:016x}, but {named}: their Raft messages will be refused; check their --peers and data directories"
    );
    Ok(())
}

/// The group most of `answers` are in; `None` when there are none, an
/// error when two groups have as many answers each.
pub fn prevailing(answers: &[(String, MasterStatus)]) -> Result<Option<u64>, MasterError> {
    let counts = tally(answers);
    let Some(most) = counts.values().copied().max() else {
        return Ok(None);
    };
    let top: Vec<u64> = counts
        .iter()
        .filter(|&(_, &n)| n == most)
        .map(|(&g, _)| g)
        .collect();
    match top[..] {
        [group] => Ok(Some(group)),
        _ => Err(MasterError::Config(format!(
            "the masters that answered are in different metadata groups ({}): check --masters/--peers",
            answers
                .iter()
                .map(|(addr, s)| format!("{addr}: {:016x}", s.group))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The group more than half of `asked` addresses answered with.
pub fn majority_of(answers: &[(String, MasterStatus)], asked: usize) -> Option<u64> {
    tally(answers)
        .into_iter()
        .find(|&(_, n)| n * 2 > asked)
        .map(|(group, _)| group)
}

fn tally(answers: &[(String, MasterStatus)]) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for (_, status) in answers {
        *counts.entry(status.group).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(list: &[(u64, &str)]) -> BTreeMap<u64, String> {
        list.iter().map(|&(id, a)| (id, a.to_string())).collect()
    }

    #[test]
    fn members_are_asked_at_once() {
        // Listeners that accept and never answer: each ask waits out its
        // timeout, so one after another would take three of them.
        let silent: Vec<std::net::TcpListener> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let addrs: Vec<String> = silent
            .iter()
            .map(|l| l.local_addr().expect("addr").to_string())
            .collect();
        let start = std::time::Instant::now();
        let answers = ask_each(&addrs, 1_000, &Security::Insecure);
        assert_eq!(answers.len(), 3);
        assert!(answers.iter().all(Option::is_none));
        assert!(
            start.elapsed() < Duration::from_millis(2_500),
            "asked in turn: {:?}",
            start.elapsed()
        );
        assert!(ask_members(&addrs, &Security::Insecure).is_empty());
    }

    #[test]
    fn group_ids_follow_the_name_and_the_first_members() {
        let a = peers(&[(1, "h1:7001"), (2, "h2:7001"), (3, "h3:7001")]);
        assert_eq!(group_id("", &a), group_id("", &a.clone()));
        assert_ne!(group_id("", &a), group_id("prod", &a));
        let moved = peers(&[(1, "h1:7001"), (2, "h2:7001"), (3, "h4:7001")]);
        assert_ne!(group_id("", &a), group_id("", &moved));
        assert_ne!(group_id("", &a), embedded_group());
        assert_ne!(group_id("", &a), 0);
    }

    #[test]
    fn a_data_dir_of_another_member_or_group_is_refused_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            check_identity(dir.path(), "master", 2).expect("new dir"),
            Recorded::New
        );
        record_identity(dir.path(), "master", 2, 77).expect("record");
        assert_eq!(
            check_identity(dir.path(), "master", 2).expect("same master"),
            Recorded::Member(Some(77))
        );
        claim(dir.path(), "master", 2, 77).expect("same group");
        let err = check_identity(dir.path(), "master", 3)
            .expect_err("other id")
            .to_string();
        assert!(err.contains("check --id and --data-dir"), "{err}");
        let err = claim(dir.path(), "master", 2, 78)
            .expect_err("other group")
            .to_string();
        assert!(err.contains("metadata group 000000000000004d"), "{err}");
        assert!(err.contains("nothing was changed"), "{err}");
        assert_eq!(
            check_identity(dir.path(), "master", 2).expect("kept"),
            Recorded::Member(Some(77))
        );
        let err = check_identity(dir.path(), "node", 2)
            .expect_err("a master's dir for a node")
            .to_string();
        assert!(err.contains("belongs to another node"), "{err}");

        let foreign = tempfile::tempdir().expect("tempdir");
        std::fs::write(foreign.path().join("something"), b"x").expect("write");
        let err = check_identity(foreign.path(), "master", 1)
            .expect_err("foreign dir")
            .to_string();
        assert!(err.contains("not a master's data directory"), "{err}");
        assert!(foreign.path().join("something").exists());
    }

    #[test]
    fn files_without_a_group_are_adopted_and_garbage_groups_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(IDENTITY_FILE), identity_text("master", 1)).expect("old");
        assert_eq!(
            check_identity(dir.path(), "master", 1).expect("old file"),
            Recorded::Member(None)
        );
        claim(dir.path(), "master", 1, embedded_group()).expect("adopted");
        assert_eq!(
            check_identity(dir.path(), "master", 1).expect("recorded"),
            Recorded::Member(Some(embedded_group()))
        );
        for bad in ["group=zz\n", "group=0\n", "extra\n", "group=12\ngroup=13\n"] {
            let text = format!("{}{bad}", identity_text("master", 1));
            std::fs::write(dir.path().join(IDENTITY_FILE), text).expect("write");
            assert!(check_identity(dir.path(), "master", 1).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn members_of_another_group_are_named_and_outvote_only_as_a_majority() {
        let status = |id, group| MasterStatus {
            id,
            leader: 0,
            term: 1,
            applied: 1,
            group,
        };
        let answer = |addr: &str, id, group| (addr.to_string(), status(id, group));
        for strangers in [Strangers::Refuse, Strangers::Outvoted] {
            check_peers(5, &[], 2, strangers).expect("nobody answered");
            check_peers(5, &[answer("a:1", 1, 5)], 2, strangers).expect("same group");
        }
        let mixed = [answer("a:1", 1, 5), answer("b:2", 2, 6)];
        let err = check_peers(5, &mixed, 2, Strangers::Refuse)
            .expect_err("a new member refuses any stranger")
            .to_string();
        assert!(
            err.contains("b:2 (id 2) is in group 0000000000000006"),
            "{err}"
        );
        assert!(!err.contains("a:1"), "{err}");
        // One stranger out of two asked: a warning only.
        check_peers(5, &mixed, 2, Strangers::Outvoted).expect("one stranger");
        check_peers(5, &[answer("b:2", 2, 6)], 2, Strangers::Outvoted).expect("one of two");
        // Both others agree on another group: this member is the stranger.
        let both = [answer("a:1", 1, 6), answer("b:2", 2, 6)];
        assert!(check_peers(5, &both, 2, Strangers::Outvoted).is_err());

        assert_eq!(prevailing(&[]).expect("none"), None);
        let three = [
            answer("a:1", 1, 6),
            answer("b:2", 2, 5),
            answer("c:3", 3, 6),
        ];
        assert_eq!(prevailing(&three).expect("majority"), Some(6));
        assert!(prevailing(&mixed).is_err(), "a tie names no group");
        assert_eq!(majority_of(&three, 3), Some(6));
        assert_eq!(majority_of(&three, 5), None, "two of five is no majority");
        assert_eq!(majority_of(&mixed, 2), None);
    }
}
