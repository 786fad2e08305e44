//! Client sessions with leases, the open handles they hold, and deferred
//! delete: an inode whose last link goes while a handle is open lives on
//! (nlink 0) until the last handle closes or its session ends.

use std::collections::BTreeMap;

use super::command::{Outcome, Reply};
use super::error::MetaError;
use super::inode::Inode;
use super::limits::{OPEN_HANDLES_PER_SESSION_MAX, SESSIONS_MAX};
use super::perm::{require, MAY_READ, MAY_WRITE};
use super::state::{MetaState, Result};
use super::types::{Creds, FileKind, Ino, OpenFlags, SessionId, Timespec};

/// One client session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Session {
    pub lease_expires: Timespec,
    /// Open handles by inode (no zero entries).
    pub opens: BTreeMap<Ino, u64>,
    /// Sum of `opens`.
    pub handles: u64,
}

impl MetaState {
    /// The session exists and may open one more handle.
    pub(crate) fn check_can_open(&self, session: SessionId) -> Result<()> {
        let s = self
            .sessions
            .get(&session)
            .ok_or(MetaError::UnknownSession(session))?;
        if s.handles >= OPEN_HANDLES_PER_SESSION_MAX {
            return Err(MetaError::TooManyOpen);
        }
        Ok(())
    }

    /// Whether `creds` may open `inode` with `flags` (Linux `may_open`).
    pub(crate) fn check_open(inode: &Inode, flags: OpenFlags, creds: &Creds) -> Result<()> {
        let writes = flags.write || flags.truncate;
        match inode.kind {
            FileKind::Symlink => return Err(MetaError::Loop),
            FileKind::Dir if writes => return Err(MetaError::IsDir),
            _ => {}
        }
        let mut mask = 0;
        if flags.read {
            mask |= MAY_READ;
        }
        if writes {
            mask |= MAY_WRITE;
        }
        require(inode, creds, mask)
    }

    /// Counts one more handle of `ino` in `session` (checked by
    /// [`MetaState::check_can_open`]).
    pub(crate) fn add_open(&mut self, session: SessionId, ino: Ino) -> Result<()> {
        let s = self
            .sessions
            .get_mut(&session)
            .ok_or(MetaError::UnknownSession(session))?;
        *s.opens.entry(ino).or_insert(0) += 1;
        s.handles += 1;
        self.inode_mut(ino)?.open_count += 1;
        Ok(())
    }

    pub(crate) fn open(
        &mut self,
        session: SessionId,
        ino: Ino,
        flags: OpenFlags,
        creds: &Creds,
    ) -> Result<Outcome> {
        self.check_can_open(session)?;
        Self::check_open(self.inode(ino)?, flags, creds)?;
        self.add_open(session, ino)?;
        Ok(Outcome::reply(Reply::Attr(self.attr_of(ino)?)))
    }

    pub(crate) fn release(
        &mut self,
        session: SessionId,
        ino: Ino,
        flock_owner: Option<u64>,
    ) -> Result<Outcome> {
        let s = self
            .sessions
            .get_mut(&session)
            .ok_or(MetaError::UnknownSession(session))?;
        let Some(count) = s.opens.get_mut(&ino) else {
            return Err(MetaError::BadHandle(
                "the session has no open handle of this inode",
            ));
        };
        *count -= 1;
        let last_in_session = *count == 0;
        if last_in_session {
            s.opens.remove(&ino);
        }
        s.handles -= 1;
        let inode = self.inode_mut(ino)?;
        debug_assert!(inode.open_count > 0);
        inode.open_count -= 1;
        if last_in_session {
            // No process of the session holds the file open, so none holds
            // a lock on it either.
            self.drop_session_locks(ino, session);
        } else if let Some(owner) = flock_owner {
            self.drop_flock(ino, session, owner);
        }
        let mut out = Outcome::reply(Reply::Done);
        self.free_if_unreferenced(ino, &mut out);
        Ok(out)
    }

    pub(crate) fn register_session(
        &mut self,
        session: SessionId,
        lease_expires: Timespec,
    ) -> Result<Outcome> {
        if self.sessions.contains_key(&session) {
            return Err(MetaError::Exists);
        }
        if self.sessions.len() >= SESSIONS_MAX {
            return Err(MetaError::NoSpace("too many client sessions"));
        }
        self.sessions.insert(
            session,
            Session {
                lease_expires,
                opens: BTreeMap::new(),
                handles: 0,
            },
        );
        Ok(Outcome::reply(Reply::Done))
    }

    pub(crate) fn renew_session(
        &mut self,
        session: SessionId,
        lease_expires: Timespec,
    ) -> Result<Outcome> {
        let s = self
            .sessions
            .get_mut(&session)
            .ok_or(MetaError::UnknownSession(session))?;
        // Renewals may commit out of order; a lease never shrinks.
        s.lease_expires = s.lease_expires.max(lease_expires);
        Ok(Outcome::reply(Reply::Done))
    }

    pub(crate) fn unregister_session(&mut self, session: SessionId) -> Result<Outcome> {
        if !self.sessions.contains_key(&session) {
            return Err(MetaError::UnknownSession(session));
        }
        let mut out = Outcome::reply(Reply::Done);
        self.end_session(session, &mut out);
        Ok(out)
    }

    pub(crate) fn expire_sessions(&mut self, now: Timespec) -> Outcome {
        let expired: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.lease_expires <= now)
            .map(|(&id, _)| id)
            .collect();
        let mut out = Outcome::reply(Reply::Done);
        for &session in &expired {
            self.end_session(session, &mut out);
        }
        out.reply = Reply::Expired(expired);
        out
    }

    /// Closes every handle of `session`, drops its locks, frees what that
    /// leaves unreferenced.
    fn end_session(&mut self, session: SessionId, out: &mut Outcome) {
        let Some(s) = self.sessions.remove(&session) else {
            return;
        };
        for (ino, count) in s.opens {
            if let Some(inode) = self.inodes.get_mut(&ino) {
                debug_assert!(inode.open_count >= count);
                inode.open_count -= count;
            }
            self.drop_session_locks(ino, session);
            self.free_if_unreferenced(ino, out);
        }
    }
}
