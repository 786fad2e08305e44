//! Sessions, open handles, record locks and flock.

use super::*;
use crate::meta::{
    FlockKind, LockConflict, LockKind, LockOwner, LockRange, Reply, LOCKS_PER_INODE_MAX, ROOT_INO,
};

use libc::{EAGAIN, EBADF, EEXIST, EINVAL, ENOLCK};

fn setup() -> (Fs, Ino) {
    let mut fs = Fs::new();
    let f = fs.file(ROOT_INO, "f", 0o666, &root());
    fs.open(S1, f, OpenFlags::READ_WRITE);
    fs.open(S2, f, OpenFlags::READ_WRITE);
    (fs, f)
}

fn setlk(
    fs: &mut Fs,
    f: Ino,
    session: SessionId,
    owner: u64,
    start: u64,
    end: u64,
    kind: Option<LockKind>,
) -> Result<(), i32> {
    fs.apply(Command::SetLk {
        ino: f,
        owner,
        session,
        range: LockRange::new(start, end),
        kind,
    })
    .map(|_| ())
    .map_err(|e| e.errno())
}

fn flock(
    fs: &mut Fs,
    f: Ino,
    session: SessionId,
    owner: u64,
    kind: Option<FlockKind>,
) -> Result<(), i32> {
    fs.apply(Command::Flock {
        ino: f,
        owner,
        session,
        kind,
    })
    .map(|_| ())
    .map_err(|e| e.errno())
}

const fn lock_owner(session: SessionId, owner: u64) -> LockOwner {
    LockOwner { session, owner }
}

#[test]
fn record_locks() {
    use LockKind::{Read, Write};
    let (mut fs, f) = setup();
    assert_eq!(setlk(&mut fs, f, S1, 1, 0, 99, Some(Read)), Ok(()));
    assert_eq!(
        setlk(&mut fs, f, S2, 1, 50, 60, Some(Read)),
        Ok(()),
        "readers share"
    );
    assert_eq!(setlk(&mut fs, f, S2, 1, 50, 60, Some(Write)), Err(EAGAIN));
    assert_eq!(
        setlk(&mut fs, f, S1, 2, 50, 50, Some(Write)),
        Err(EAGAIN),
        "another owner of the same session"
    );
    assert_eq!(
        fs.state
            .getlk(f, lock_owner(S2, 1), LockRange::new(0, 10), Write),
        Ok(Some(LockConflict {
            owner: lock_owner(S1, 1),
            kind: Read,
            range: LockRange::new(0, 99),
        }))
    );
    assert_eq!(
        fs.state
            .getlk(f, lock_owner(S1, 1), LockRange::new(0, 10), Write),
        Ok(None)
    );
    assert_eq!(
        fs.state
            .getlk(f, lock_owner(S2, 1), LockRange::new(100, 200), Write),
        Ok(None)
    );
    // Unlock a hole in the middle: the other owner may write there.
    assert_eq!(setlk(&mut fs, f, S2, 1, 50, 60, None), Ok(()));
    assert_eq!(setlk(&mut fs, f, S1, 1, 40, 70, None), Ok(()));
    assert_eq!(setlk(&mut fs, f, S2, 1, 40, 70, Some(Write)), Ok(()));
    assert_eq!(setlk(&mut fs, f, S2, 1, 39, 39, Some(Write)), Err(EAGAIN));
    // To infinity.
    assert_eq!(
        setlk(&mut fs, f, S1, 1, 1000, u64::MAX, Some(Write)),
        Ok(())
    );
    assert_eq!(
        setlk(&mut fs, f, S2, 1, u64::MAX, u64::MAX, Some(Read)),
        Err(EAGAIN)
    );
    assert_eq!(setlk(&mut fs, f, S1, 1, 10, 9, Some(Read)), Err(EINVAL));
}

#[test]
fn locks_need_a_handle_and_go_with_it() {
    use LockKind::Write;
    let (mut fs, f) = setup();
    let g = fs.file(ROOT_INO, "g", 0o666, &root());
    assert_eq!(setlk(&mut fs, g, S1, 1, 0, 0, Some(Write)), Err(EBADF));
    assert_eq!(
        setlk(&mut fs, f, SessionId(9), 1, 0, 0, Some(Write)),
        Err(EBADF)
    );
    fs.open(S1, f, OpenFlags::READ); // a second handle in S1
    assert_eq!(setlk(&mut fs, f, S1, 1, 0, 9, Some(Write)), Ok(()));
    assert_eq!(flock(&mut fs, f, S1, 1, Some(FlockKind::Exclusive)), Ok(()));
    fs.release(S1, f);
    assert_eq!(
        setlk(&mut fs, f, S2, 1, 0, 9, Some(Write)),
        Err(EAGAIN),
        "S1 still has a handle"
    );
    fs.release(S1, f);
    assert_eq!(
        setlk(&mut fs, f, S2, 1, 0, 9, Some(Write)),
        Ok(()),
        "S1's last handle took its locks"
    );
    assert_eq!(flock(&mut fs, f, S2, 1, Some(FlockKind::Exclusive)), Ok(()));
}

#[test]
fn flock_rules() {
    use FlockKind::{Exclusive, Shared};
    let (mut fs, f) = setup();
    assert_eq!(flock(&mut fs, f, S1, 1, Some(Shared)), Ok(()));
    assert_eq!(flock(&mut fs, f, S2, 1, Some(Shared)), Ok(()));
    assert_eq!(flock(&mut fs, f, S2, 1, Some(Exclusive)), Err(EAGAIN));
    assert_eq!(
        fs.state.flock_holders(f).len(),
        2,
        "a failed upgrade keeps the shared lock"
    );
    assert_eq!(flock(&mut fs, f, S1, 1, None), Ok(()));
    assert_eq!(
        flock(&mut fs, f, S2, 1, Some(Exclusive)),
        Ok(()),
        "upgrade when alone"
    );
    assert_eq!(flock(&mut fs, f, S1, 2, Some(Shared)), Err(EAGAIN));
    assert_eq!(
        fs.state.flock_holders(f),
        vec![(lock_owner(S2, 1), Exclusive)]
    );
    // Release with FUSE_RELEASE_FLOCK_UNLOCK drops the owner's flock.
    fs.open(S2, f, OpenFlags::READ);
    fs.ok(Command::Release {
        session: S2,
        ino: f,
        flock_owner: Some(1),
    });
    assert!(fs.state.flock_holders(f).is_empty());
}

#[test]
fn lock_limit() {
    let (mut fs, f) = setup();
    for i in 0..LOCKS_PER_INODE_MAX as u64 {
        fs.state
            .apply(&Command::SetLk {
                ino: f,
                owner: 1,
                session: S1,
                range: LockRange::new(2 * i, 2 * i),
                kind: Some(LockKind::Read),
            })
            .expect("lock");
    }
    fs.state.check_invariants();
    let limit = 2 * LOCKS_PER_INODE_MAX as u64;
    assert_eq!(
        setlk(&mut fs, f, S1, 1, limit, limit, Some(LockKind::Read)),
        Err(ENOLCK)
    );
    assert_eq!(
        setlk(&mut fs, f, S1, 1, 1, 1, Some(LockKind::Read)),
        Ok(()),
        "merging shrinks"
    );
    assert_eq!(setlk(&mut fs, f, S1, 1, 0, 0, None), Ok(()));
}

#[test]
fn sessions() {
    let (mut fs, f) = setup();
    let register = |fs: &mut Fs, session: SessionId, secs: i64| {
        fs.apply(Command::RegisterSession {
            session,
            lease_expires: Timespec::from_secs(secs),
        })
        .map_err(|e| e.errno())
    };
    assert_eq!(register(&mut fs, S1, 5).map(|_| ()), Err(EEXIST));
    let s3 = SessionId(3);
    register(&mut fs, s3, 100).expect("register");
    let release = Command::Release {
        session: s3,
        ino: f,
        flock_owner: None,
    };
    assert_eq!(fs.errno(release), EBADF, "no handle");
    fs.open(s3, f, OpenFlags::READ);
    fs.ok(Command::SetLk {
        ino: f,
        owner: 7,
        session: s3,
        range: LockRange::ALL,
        kind: Some(LockKind::Read),
    });
    fs.ok(Command::RenewSession {
        session: s3,
        lease_expires: Timespec::from_secs(200),
    });
    fs.ok(Command::RenewSession {
        session: s3,
        lease_expires: Timespec::from_secs(150),
    });
    // The file loses its last name while s3 and the others hold it open.
    let cmd = fs.unlink_cmd(ROOT_INO, "f", &root());
    fs.ok(cmd);
    fs.release(S1, f);
    fs.release(S2, f);
    let expire = |fs: &mut Fs, secs: i64| {
        fs.ok(Command::ExpireSessions {
            now: Timespec::from_secs(secs),
        })
    };
    let out = expire(&mut fs, 199);
    assert_eq!(
        out.reply,
        Reply::Expired(vec![]),
        "a renewal never shortens a lease"
    );
    let out = expire(&mut fs, 200);
    assert_eq!(out.reply, Reply::Expired(vec![s3]));
    assert_eq!(
        out.freed,
        vec![f],
        "the expired session held the last handle"
    );
    let open = Command::Open {
        session: s3,
        ino: ROOT_INO,
        flags: OpenFlags::READ,
        creds: root(),
    };
    assert_eq!(fs.errno(open), EBADF);
    // Unregister closes everything too.
    let g = fs.file(ROOT_INO, "g", 0o644, &root());
    fs.open(S1, g, OpenFlags::READ);
    let cmd = fs.unlink_cmd(ROOT_INO, "g", &root());
    fs.ok(cmd);
    let out = fs.ok(Command::UnregisterSession { session: S1 });
    assert_eq!(out.freed, vec![g]);
}
