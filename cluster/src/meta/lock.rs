//! POSIX record locks (`fcntl` F_GETLK/F_SETLK) and `flock` locks, held by
//! `(session, owner)` on inodes the session has open. Locking never blocks
//! here: a conflict is `EAGAIN`, and waiting is the caller's retry loop.
//! Locks of one owner are kept split and merged like Linux keeps them:
//! disjoint, sorted, adjacent ranges of one type merged.

use super::command::{Outcome, Reply};
use super::error::MetaError;
use super::limits::LOCKS_PER_INODE_MAX;
use super::state::{MetaState, Result};
use super::types::{FlockKind, Ino, LockConflict, LockKind, LockOwner, LockRange, SessionId};

/// One record lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PosixLock {
    pub owner: LockOwner,
    pub range: LockRange,
    pub kind: LockKind,
}

/// One `flock` holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FlockHolder {
    pub owner: LockOwner,
    pub kind: FlockKind,
}

/// The locks on one inode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct InodeLocks {
    /// Sorted by (owner, start); an owner's ranges are disjoint and
    /// adjacent ranges of one kind are merged.
    pub posix: Vec<PosixLock>,
    /// One entry per owner; an exclusive holder is alone.
    pub flock: Vec<FlockHolder>,
}

impl InodeLocks {
    pub fn is_empty(&self) -> bool {
        self.posix.is_empty() && self.flock.is_empty()
    }

    fn len(&self) -> usize {
        self.posix.len() + self.flock.len()
    }
}

/// The first lock (lowest start) of another owner that keeps `owner` from
/// locking `range` with `kind`.
pub(crate) fn posix_conflict(
    locks: &[PosixLock],
    owner: LockOwner,
    range: LockRange,
    kind: LockKind,
) -> Option<PosixLock> {
    locks
        .iter()
        .filter(|l| {
            l.owner != owner
                && l.range.overlaps(&range)
                && (kind == LockKind::Write || l.kind == LockKind::Write)
        })
        .min_by_key(|l| (l.range.start, l.owner))
        .copied()
}

/// `locks` after `owner` set `range` to `kind` (`None`: unlocked): the
/// owner's locks inside the range are cut away (split where the range falls
/// inside one), the new lock added, and touching ranges of one kind merged.
pub(crate) fn posix_set(
    locks: &[PosixLock],
    owner: LockOwner,
    range: LockRange,
    kind: Option<LockKind>,
) -> Vec<PosixLock> {
    debug_assert!(range.start <= range.end);
    let mut mine: Vec<PosixLock> = Vec::new();
    for l in locks.iter().filter(|l| l.owner == owner) {
        if !l.range.overlaps(&range) {
            mine.push(*l);
            continue;
        }
        if l.range.start < range.start {
            mine.push(PosixLock {
                range: LockRange::new(l.range.start, range.start - 1),
                ..*l
            });
        }
        if l.range.end > range.end {
            mine.push(PosixLock {
                range: LockRange::new(range.end + 1, l.range.end),
                ..*l
            });
        }
    }
    if let Some(kind) = kind {
        mine.push(PosixLock { owner, range, kind });
    }
    mine.sort_by_key(|l| l.range.start);
    let mut merged: Vec<PosixLock> = Vec::with_capacity(mine.len());
    for l in mine {
        match merged.last_mut() {
            Some(prev)
                if prev.kind == l.kind && prev.range.end.checked_add(1) == Some(l.range.start) =>
            {
                prev.range.end = l.range.end;
            }
            _ => merged.push(l),
        }
    }
    let mut out: Vec<PosixLock> = locks.iter().filter(|l| l.owner != owner).copied().collect();
    out.extend(merged);
    out.sort_by_key(|l| (l.owner, l.range.start));
    out
}

impl MetaState {
    /// The session exists and holds `ino` open (a lock needs an open file).
    fn check_lock_holder(&self, ino: Ino, session: SessionId) -> Result<()> {
        self.inode(ino)?;
        let s = self
            .sessions
            .get(&session)
            .ok_or(MetaError::UnknownSession(session))?;
        if !s.opens.contains_key(&ino) {
            return Err(MetaError::BadHandle(
                "locking needs an open handle of the inode",
            ));
        }
        Ok(())
    }

    /// `F_GETLK`: the lock that would keep `owner` from taking `kind` on
    /// `range`, or `None` if it would be granted.
    pub fn getlk(
        &self,
        ino: Ino,
        owner: LockOwner,
        range: LockRange,
        kind: LockKind,
    ) -> Result<Option<LockConflict>> {
        self.formatted()?;
        self.inode(ino)?;
        if range.start > range.end {
            return Err(MetaError::Invalid("lock range ends before it starts"));
        }
        let conflict = self
            .locks
            .get(&ino)
            .and_then(|locks| posix_conflict(&locks.posix, owner, range, kind));
        Ok(conflict.map(|l| LockConflict {
            owner: l.owner,
            kind: l.kind,
            range: l.range,
        }))
    }

    /// `flock` holders of `ino`, for diagnostics and tests.
    pub fn flock_holders(&self, ino: Ino) -> Vec<(LockOwner, FlockKind)> {
        self.locks
            .get(&ino)
            .map(|l| l.flock.iter().map(|h| (h.owner, h.kind)).collect())
            .unwrap_or_default()
    }

    pub(crate) fn setlk(
        &mut self,
        ino: Ino,
        owner: u64,
        session: SessionId,
        range: LockRange,
        kind: Option<LockKind>,
    ) -> Result<Outcome> {
        self.check_lock_holder(ino, session)?;
        if range.start > range.end {
            return Err(MetaError::Invalid("lock range ends before it starts"));
        }
        let owner = LockOwner { session, owner };
        let current = self.locks.get(&ino).cloned().unwrap_or_default();
        if let Some(kind) = kind {
            if posix_conflict(&current.posix, owner, range, kind).is_some() {
                return Err(MetaError::WouldBlock);
            }
        }
        let held = current.len();
        let posix = posix_set(&current.posix, owner, range, kind);
        let next = InodeLocks {
            posix,
            flock: current.flock,
        };
        // Unlocking may split a range and so add a lock; only growth fails.
        if next.len() > LOCKS_PER_INODE_MAX && next.len() > held {
            return Err(MetaError::TooManyLocks);
        }
        self.store_locks(ino, next);
        Ok(Outcome::reply(Reply::Done))
    }

    pub(crate) fn flock(
        &mut self,
        ino: Ino,
        owner: u64,
        session: SessionId,
        kind: Option<FlockKind>,
    ) -> Result<Outcome> {
        self.check_lock_holder(ino, session)?;
        let owner = LockOwner { session, owner };
        let mut next = self.locks.get(&ino).cloned().unwrap_or_default();
        let others = || next.flock.iter().filter(|h| h.owner != owner);
        if let Some(kind) = kind {
            let conflict = match kind {
                FlockKind::Shared => others().any(|h| h.kind == FlockKind::Exclusive),
                FlockKind::Exclusive => others().next().is_some(),
            };
            if conflict {
                return Err(MetaError::WouldBlock);
            }
        }
        let had = next.flock.len();
        next.flock.retain(|h| h.owner != owner);
        if let Some(kind) = kind {
            next.flock.push(FlockHolder { owner, kind });
            next.flock.sort_by_key(|h| h.owner);
            if next.flock.len() > had && next.len() > LOCKS_PER_INODE_MAX {
                return Err(MetaError::TooManyLocks);
            }
        }
        self.store_locks(ino, next);
        Ok(Outcome::reply(Reply::Done))
    }

    fn store_locks(&mut self, ino: Ino, locks: InodeLocks) {
        if locks.is_empty() {
            self.locks.remove(&ino);
        } else {
            self.locks.insert(ino, locks);
        }
    }

    /// Drops every lock `session` holds on `ino`.
    pub(crate) fn drop_session_locks(&mut self, ino: Ino, session: SessionId) {
        if let Some(locks) = self.locks.get_mut(&ino) {
            locks.posix.retain(|l| l.owner.session != session);
            locks.flock.retain(|h| h.owner.session != session);
            if locks.is_empty() {
                self.locks.remove(&ino);
            }
        }
    }

    /// Drops the `flock` of one owner on `ino`.
    pub(crate) fn drop_flock(&mut self, ino: Ino, session: SessionId, owner: u64) {
        let owner = LockOwner { session, owner };
        if let Some(locks) = self.locks.get_mut(&ino) {
            locks.flock.retain(|h| h.owner != owner);
            if locks.is_empty() {
                self.locks.remove(&ino);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const fn owner(n: u64) -> LockOwner {
        LockOwner {
            session: SessionId(1),
            owner: n,
        }
    }

    fn lock(o: u64, start: u64, end: u64, kind: LockKind) -> PosixLock {
        PosixLock {
            owner: owner(o),
            range: LockRange::new(start, end),
            kind,
        }
    }

    use LockKind::{Read as R, Write as W};

    #[test]
    fn split_and_merge() {
        let check = |before: &[PosixLock],
                     o: u64,
                     start: u64,
                     end: u64,
                     kind: Option<LockKind>,
                     after: &[PosixLock]| {
            assert_eq!(
                posix_set(before, owner(o), LockRange::new(start, end), kind),
                after
            );
        };
        // Unlock the middle of a range: split in two.
        check(
            &[lock(1, 0, 99, W)],
            1,
            10,
            19,
            None,
            &[lock(1, 0, 9, W), lock(1, 20, 99, W)],
        );
        // Relock the middle with another kind: three pieces.
        check(
            &[lock(1, 0, 99, W)],
            1,
            10,
            19,
            Some(R),
            &[lock(1, 0, 9, W), lock(1, 10, 19, R), lock(1, 20, 99, W)],
        );
        // Adjacent same kind merges, different kind does not.
        check(
            &[lock(1, 0, 9, R)],
            1,
            10,
            19,
            Some(R),
            &[lock(1, 0, 19, R)],
        );
        check(
            &[lock(1, 0, 9, R)],
            1,
            10,
            19,
            Some(W),
            &[lock(1, 0, 9, R), lock(1, 10, 19, W)],
        );
        // Bridging two ranges merges all three.
        check(
            &[lock(1, 0, 9, R), lock(1, 20, 29, R)],
            1,
            10,
            19,
            Some(R),
            &[lock(1, 0, 29, R)],
        );
        // Other owners are untouched.
        check(
            &[lock(2, 0, 9, R)],
            1,
            0,
            9,
            Some(R),
            &[lock(1, 0, 9, R), lock(2, 0, 9, R)],
        );
        // To infinity.
        check(
            &[lock(1, 5, u64::MAX, W)],
            1,
            10,
            u64::MAX,
            None,
            &[lock(1, 5, 9, W)],
        );
        check(
            &[lock(1, 0, 4, W)],
            1,
            5,
            u64::MAX,
            Some(W),
            &[lock(1, 0, u64::MAX, W)],
        );
    }

    #[test]
    fn conflicts() {
        let locks = [lock(1, 0, 9, R), lock(2, 20, 29, W)];
        let check = |o: u64, start: u64, end: u64, kind: LockKind, expected: Option<u64>| {
            let found = posix_conflict(&locks, owner(o), LockRange::new(start, end), kind);
            assert_eq!(found.map(|l| l.owner.owner), expected);
        };
        check(3, 0, 9, R, None);
        check(3, 0, 9, W, Some(1));
        check(3, 10, 19, W, None);
        check(3, 25, 25, R, Some(2));
        check(1, 0, 9, W, None); // own locks never conflict
        check(3, 0, u64::MAX, W, Some(1)); // lowest start first
    }

    /// Bytes of the model: which owners hold which kind on each byte.
    const MODEL_BYTES: u64 = 24;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Against a per-byte model: after any sequence of sets, each byte is
        /// held exactly as the last set covering it says, conflicts are found
        /// exactly where the model has them, and the representation stays
        /// canonical (disjoint, sorted, merged).
        #[test]
        fn posix_set_matches_byte_model(
            ops in proptest::collection::vec((0u64..3, 0..MODEL_BYTES, 0..MODEL_BYTES, 0u8..3), 1..40)
        ) {
            let mut locks: Vec<PosixLock> = Vec::new();
            let mut model = [[None::<LockKind>; MODEL_BYTES as usize]; 3];
            for (o, a, b, k) in ops {
                let (start, end) = (a.min(b), a.max(b));
                let kind = match k { 0 => None, 1 => Some(R), _ => Some(W) };
                let range = LockRange::new(start, end);
                let model_conflict = kind.is_some_and(|kind| (start..=end).any(|byte| {
                    (0..3).filter(|&other| other != o).any(|other| {
                        model[other as usize][byte as usize].is_some_and(|held| held == W || kind == W)
                    })
                }));
                let conflict = kind.and_then(|kind| posix_conflict(&locks, owner(o), range, kind));
                prop_assert_eq!(conflict.is_some(), model_conflict);
                if conflict.is_some() {
                    continue;
                }
                locks = posix_set(&locks, owner(o), range, kind);
                for byte in start..=end {
                    model[o as usize][byte as usize] = kind;
                }
                for o in 0..3u64 {
                    let mine: Vec<&PosixLock> = locks.iter().filter(|l| l.owner == owner(o)).collect();
                    for w in mine.windows(2) {
                        prop_assert!(w[0].range.end < w[1].range.start);
                        prop_assert!(!(w[0].kind == w[1].kind && w[0].range.end + 1 == w[1].range.start));
                    }
                    for byte in 0..MODEL_BYTES {
                        let held = mine.iter().find(|l| l.range.start <= byte && byte <= l.range.end).map(|l| l.kind);
                        prop_assert_eq!(held, model[o as usize][byte as usize]);
                    }
                }
            }
        }
    }
}
