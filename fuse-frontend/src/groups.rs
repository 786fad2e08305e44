//! Supplementary groups of the processes that make requests. The kernel
//! sends a request's uid, gid and pid, not the caller's supplementary
//! groups; `/proc/PID/status` has them, and generating and parsing it
//! costs more than serving a lookup (non-root stats ran at 25K/s against
//! 60–68K/s for root, whose groups are never read). So the groups read
//! for a (pid, uid, gid) are kept for [`GROUPS_TTL`].
//!
//! What a kept answer can get wrong: a process whose supplementary groups
//! change while its pid, uid and gid stay (only a process with
//! `CAP_SETGID` and a non-root fsuid can do that: file servers switching
//! users) is judged by its old groups for up to [`GROUPS_TTL`]. The kernel
//! checks every request's permissions with the caller's real credentials
//! first (`default_permissions`), so old groups can refuse for that long
//! what the kernel allowed, never allow what it refused. A status whose
//! fsuid or fsgid is not the request's (the caller exited and its pid was
//! reused) gives no groups and is not kept.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How long the groups read for a (pid, uid, gid) are used.
pub const GROUPS_TTL: Duration = Duration::from_secs(1);
/// Callers kept at most; past that, expired ones are dropped (all, if
/// none has expired).
const GROUPS_KEPT_MAX: usize = 4096;

/// A caller's credentials as `/proc/PID/status` shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcCreds {
    /// The fsuid (4th `Uid:` field).
    pub fsuid: u32,
    /// The fsgid (4th `Gid:` field).
    pub fsgid: u32,
    /// The `Groups:` line.
    pub groups: Vec<u32>,
}

/// Parses the `Uid:`, `Gid:` and `Groups:` lines of a `/proc/PID/status`;
/// `None` when one is missing or malformed.
pub fn parse_status(status: &str) -> Option<ProcCreds> {
    let line = |key: &str| status.lines().find_map(|l| l.strip_prefix(key));
    let fs_id = |key: &str| -> Option<u32> { line(key)?.split_whitespace().nth(3)?.parse().ok() };
    let groups = line("Groups:")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<Vec<u32>, _>>()
        .ok()?;
    Some(ProcCreds {
        fsuid: fs_id("Uid:")?,
        fsgid: fs_id("Gid:")?,
        groups,
    })
}

fn read_status(pid: libc::pid_t) -> Option<ProcCreds> {
    parse_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// A caller: pid, fsuid, fsgid.
type Caller = (libc::pid_t, u32, u32);

/// The groups kept per caller, with when they were read.
#[derive(Debug, Default)]
pub struct GroupsCache {
    kept: Mutex<HashMap<Caller, (Instant, Vec<u32>)>>,
}

impl GroupsCache {
    /// The supplementary groups of the caller `pid` with fsuid `uid` and
    /// fsgid `gid`, at `now`: kept ones if younger than [`GROUPS_TTL`],
    /// else `read(pid)`'s. No groups when `read` fails or shows other ids.
    pub fn groups(
        &self,
        pid: libc::pid_t,
        uid: u32,
        gid: u32,
        now: Instant,
        read: impl FnOnce(libc::pid_t) -> Option<ProcCreds>,
    ) -> Vec<u32> {
        if pid <= 0 {
            return Vec::new();
        }
        let key = (pid, uid, gid);
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, groups)) = kept.get(&key) {
            if now.saturating_duration_since(*at) < GROUPS_TTL {
                return groups.clone();
            }
        }
        // Read outside the lock: other loops' callers need not wait.
        drop(kept);
        let Some(status) = read(pid).filter(|s| s.fsuid == uid && s.fsgid == gid) else {
            return Vec::new();
        };
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() >= GROUPS_KEPT_MAX {
            kept.retain(|_, (at, _)| now.saturating_duration_since(*at) < GROUPS_TTL);
            if kept.len() >= GROUPS_KEPT_MAX {
                kept.clear();
            }
        }
        kept.insert(key, (now, status.groups.clone()));
        status.groups
    }
}

/// The supplementary groups of a request's caller (through the process's
/// cache).
pub fn supplementary_groups(pid: libc::pid_t, uid: u32, gid: u32) -> Vec<u32> {
    static CACHE: OnceLock<GroupsCache> = OnceLock::new();
    CACHE
        .get_or_init(GroupsCache::default)
        .groups(pid, uid, gid, Instant::now(), read_status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    const STATUS: &str =
        "Name:\tsh\nUid:\t1000\t1000\t1000\t1001\nGid:\t100\t100\t100\t101\nGroups:\t4 24 27 \n";

    #[test]
    fn status_lines_are_parsed_and_garbage_is_none() {
        assert_eq!(
            parse_status(STATUS),
            Some(ProcCreds {
                fsuid: 1001,
                fsgid: 101,
                groups: vec![4, 24, 27]
            })
        );
        assert_eq!(
            parse_status("Uid:\t1\t1\t1\t1\nGid:\t2\t2\t2\t2\nGroups:\n").map(|c| c.groups),
            Some(vec![])
        );
        assert_eq!(
            parse_status("Uid:\t1\t1\t1\nGid:\t2\t2\t2\t2\nGroups:\n"),
            None
        );
        assert_eq!(
            parse_status("Uid:\t1\t1\t1\t1\nGid:\t2\t2\t2\t2\nGroups:\t4 x\n"),
            None
        );
        assert_eq!(parse_status(""), None);
    }

    #[test]
    fn groups_are_read_once_per_caller_and_ttl_and_only_for_the_same_ids() {
        let cache = GroupsCache::default();
        let reads = Cell::new(0);
        let read = |_pid| {
            reads.set(reads.get() + 1);
            parse_status(STATUS)
        };
        let t0 = Instant::now();
        assert_eq!(cache.groups(7, 1001, 101, t0, read), vec![4, 24, 27]);
        assert_eq!(
            cache.groups(7, 1001, 101, t0 + GROUPS_TTL / 2, read),
            vec![4, 24, 27]
        );
        assert_eq!(reads.get(), 1, "kept within the TTL");
        assert_eq!(
            cache.groups(7, 1001, 101, t0 + GROUPS_TTL, read),
            vec![4, 24, 27]
        );
        assert_eq!(reads.get(), 2, "read again after it");
        // Other ids than the status shows (a reused pid): no groups, not kept.
        assert!(cache.groups(7, 1002, 101, t0, read).is_empty());
        assert!(cache.groups(7, 1002, 101, t0, read).is_empty());
        assert_eq!(reads.get(), 4);
        // An unreadable status, or no pid: no groups.
        assert!(cache.groups(8, 1, 1, t0, |_| None).is_empty());
        assert!(cache.groups(0, 1001, 101, t0, read).is_empty());
        assert_eq!(reads.get(), 4);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = GroupsCache::default();
        let t0 = Instant::now();
        let fake = |_pid| parse_status(STATUS);
        for pid in 1..=i32::try_from(GROUPS_KEPT_MAX).expect("small") + 10 {
            cache.groups(pid, 1001, 101, t0, fake);
        }
        let kept = cache.kept.lock().expect("lock").len();
        assert!(kept <= GROUPS_KEPT_MAX, "{kept}");
    }

    #[test]
    fn this_process_is_read_from_proc() {
        // SAFETY: plain id getters.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let pid = libc::pid_t::try_from(std::process::id()).expect("pid");
        let own = read_status(pid).expect("own status");
        assert_eq!((own.fsuid, own.fsgid), (uid, gid));
        assert_eq!(supplementary_groups(pid, uid, gid), own.groups);
        assert!(supplementary_groups(pid, uid.wrapping_add(1), gid).is_empty());
    }
}
