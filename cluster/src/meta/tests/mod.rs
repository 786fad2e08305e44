//! Tests of the state machine: a small harness (`Fs`) that applies commands
//! and checks after each one that every invariant holds and that a failed
//! command changed nothing; unit tests by area; property tests against a
//! reference model and of the encodings.

mod acl;
mod attr;
mod codec;
mod lock;
mod model;
mod model_prop;
mod namespace;
mod quota;
mod xattr;
mod zeros;

use std::collections::BTreeSet;

use super::{
    AttrChanges, Command, Creds, FileKind, Ino, MetaError, MetaState, OpenFlags, Outcome,
    RenameFlags, SessionId, Timespec, VOLUME_FORMAT_VERSION,
};

pub(super) const BLOCK_BYTES: u32 = 4096;
pub(super) const CAPACITY_BYTES: u64 = 1 << 30;
pub(super) const INODES_MAX: u64 = 1 << 20;
pub(super) const S1: SessionId = SessionId(1);
pub(super) const S2: SessionId = SessionId(2);
/// Leases far in the future unless a test expires them.
pub(super) const LEASE: Timespec = Timespec::from_secs(1 << 40);

pub(super) fn root() -> Creds {
    Creds::root()
}

/// uid 1000, group 100.
pub(super) fn alice() -> Creds {
    Creds {
        uid: 1000,
        gid: 100,
        groups: vec![100],
    }
}

/// uid 1001, group 101, not in alice's group.
pub(super) fn bob() -> Creds {
    Creds {
        uid: 1001,
        gid: 101,
        groups: vec![101],
    }
}

/// uid 1002, group 102 and alice's group 100.
pub(super) fn carol() -> Creds {
    Creds {
        uid: 1002,
        gid: 102,
        groups: vec![102, 100],
    }
}

pub(super) fn format_cmd(capacity_bytes: u64, inodes_max: u64) -> Command {
    Command::Format {
        uuid: [7; 16],
        block_size: BLOCK_BYTES,
        format_version: VOLUME_FORMAT_VERSION,
        capacity_bytes,
        inodes_max,
        now: Timespec::from_secs(1),
    }
}

/// A formatted state with two registered sessions, a clock, and checks
/// after every command.
pub(super) struct Fs {
    pub state: MetaState,
    clock: i64,
    /// Every block version reported as garbage so far: `(ino, index, version)`.
    garbage: BTreeSet<(u64, u64, u64)>,
}

impl Fs {
    pub fn new() -> Self {
        Self::with_limits(CAPACITY_BYTES, INODES_MAX)
    }

    pub fn with_limits(capacity_bytes: u64, inodes_max: u64) -> Self {
        let mut fs = Self {
            state: MetaState::new(),
            clock: 10,
            garbage: BTreeSet::new(),
        };
        fs.ok(format_cmd(capacity_bytes, inodes_max));
        for session in [S1, S2] {
            fs.ok(Command::RegisterSession {
                session,
                lease_expires: LEASE,
            });
        }
        fs
    }

    /// A fresh time, later than every earlier one.
    pub fn now(&mut self) -> Timespec {
        self.clock += 1;
        Timespec::from_secs(self.clock)
    }

    /// The time the last command carried.
    pub fn last(&self) -> Timespec {
        Timespec::from_secs(self.clock)
    }

    /// Applies `cmd`; afterwards every invariant holds, an error left the
    /// state as it was, and every version reported as garbage is referenced
    /// by no block map and was never reported before.
    // Owned, so tests build commands inline.
    #[allow(clippy::needless_pass_by_value)]
    pub fn apply(&mut self, cmd: Command) -> Result<Outcome, MetaError> {
        let before = self.state.clone();
        let result = self.state.apply(&cmd);
        self.state.check_invariants();
        match &result {
            Err(_) => assert!(
                self.state == before,
                "failed command {cmd:?} changed the state"
            ),
            Ok(outcome) => {
                for block in &outcome.garbage {
                    assert_ne!(
                        self.state.block_version(block.ino, block.index),
                        Some(block.version),
                        "{cmd:?} reported {block:?} as garbage but the map still names it"
                    );
                    assert!(
                        self.garbage
                            .insert((block.ino.0, block.index, block.version)),
                        "{cmd:?} reported {block:?} as garbage a second time"
                    );
                }
            }
        }
        result
    }

    pub fn ok(&mut self, cmd: Command) -> Outcome {
        let shown = format!("{cmd:?}");
        self.apply(cmd)
            .unwrap_or_else(|e| panic!("{shown} failed: {e} (errno {})", e.errno()))
    }

    pub fn errno(&mut self, cmd: Command) -> i32 {
        let shown = format!("{cmd:?}");
        match self.apply(cmd) {
            Ok(outcome) => panic!("{shown} succeeded with {outcome:?}"),
            Err(e) => e.errno(),
        }
    }

    pub fn mkdir(&mut self, parent: Ino, name: &str, mode: u32, creds: &Creds) -> Ino {
        let cmd = self.mkdir_cmd(parent, name, mode, creds);
        ino_of(&self.ok(cmd))
    }

    pub fn mkdir_cmd(&mut self, parent: Ino, name: &str, mode: u32, creds: &Creds) -> Command {
        Command::Mkdir {
            parent,
            name: name.into(),
            mode: mode.into(),
            creds: creds.clone(),
            now: self.now(),
        }
    }

    /// A regular file made with mknod (not opened).
    pub fn file(&mut self, parent: Ino, name: &str, mode: u32, creds: &Creds) -> Ino {
        let cmd = self.mknod_cmd(parent, name, FileKind::File, mode, creds);
        ino_of(&self.ok(cmd))
    }

    pub fn mknod_cmd(
        &mut self,
        parent: Ino,
        name: &str,
        kind: FileKind,
        mode: u32,
        creds: &Creds,
    ) -> Command {
        Command::Mknod {
            parent,
            name: name.into(),
            kind,
            mode: mode.into(),
            rdev: 0,
            creds: creds.clone(),
            now: self.now(),
        }
    }

    pub fn unlink_cmd(&mut self, parent: Ino, name: &str, creds: &Creds) -> Command {
        Command::Unlink {
            parent,
            name: name.into(),
            creds: creds.clone(),
            now: self.now(),
        }
    }

    pub fn rmdir_cmd(&mut self, parent: Ino, name: &str, creds: &Creds) -> Command {
        Command::Rmdir {
            parent,
            name: name.into(),
            creds: creds.clone(),
            now: self.now(),
        }
    }

    pub fn rename_cmd(
        &mut self,
        from: (Ino, &str),
        to: (Ino, &str),
        flags: RenameFlags,
        creds: &Creds,
    ) -> Command {
        Command::Rename {
            parent: from.0,
            name: from.1.into(),
            new_parent: to.0,
            new_name: to.1.into(),
            flags,
            creds: creds.clone(),
            now: self.now(),
        }
    }

    pub fn setattr_cmd(&mut self, ino: Ino, changes: AttrChanges, creds: &Creds) -> Command {
        Command::SetAttr {
            ino,
            changes,
            via_handle: false,
            creds: creds.clone(),
            now: self.now(),
        }
    }

    pub fn chmod(&mut self, ino: Ino, mode: u32, creds: &Creds) {
        let cmd = self.setattr_cmd(
            ino,
            AttrChanges {
                mode: Some(mode),
                ..AttrChanges::default()
            },
            creds,
        );
        self.ok(cmd);
    }

    pub fn open(&mut self, session: SessionId, ino: Ino, flags: OpenFlags) {
        self.ok(Command::Open {
            session,
            ino,
            flags,
            creds: root(),
        });
    }

    pub fn release(&mut self, session: SessionId, ino: Ino) -> Outcome {
        self.ok(Command::Release {
            session,
            ino,
            flock_owner: None,
        })
    }

    pub fn set_blocks(
        &mut self,
        ino: Ino,
        blocks: &[(u64, u64)],
        new_size: u64,
        creds: &Creds,
    ) -> Outcome {
        let now = self.now();
        self.ok(Command::SetBlocks {
            ino,
            blocks: blocks.to_vec(),
            new_size: Some(new_size),
            creds: creds.clone(),
            now,
        })
    }

    /// The inode `name` in `parent` names (looked up as root).
    pub fn lookup(&self, parent: Ino, name: &str) -> Ino {
        match self.state.lookup(parent, name.as_bytes(), &root()) {
            Ok(attr) => attr.ino,
            Err(e) => panic!("lookup {name}: {e}"),
        }
    }

    /// Names in `dir`, in readdir order.
    pub fn names(&self, dir: Ino) -> Vec<String> {
        self.state
            .readdir(dir, 0, usize::MAX, &root())
            .expect("readdir")
            .into_iter()
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect()
    }
}

pub(super) fn ino_of(outcome: &Outcome) -> Ino {
    outcome.attr().expect("an outcome with attributes").ino
}
