//! Property tests over random command sequences: the state machine against
//! the reference model (errno or result after every step, full tree
//! listings, counters), determinism of replay, and snapshot/restore in the
//! middle of a sequence.

use proptest::prelude::*;

use super::model::{Done, Model, Path, Row};
use super::*;
use crate::meta::{FlockKind, LockKind, LockRange, XattrFlags, ROOT_INO};

const NAMES: [&str; 4] = ["a", "b", "c", "d"];
const MODES: [u32; 10] = [
    0o755, 0o777, 0o777, 0o1777, 0o2775, 0o2777, 0o700, 0o555, 0o644, 0o4755,
];
const USERS: usize = 4;
const BS: u64 = BLOCK_BYTES as u64;

fn creds_of(i: usize) -> Creds {
    [root(), alice(), bob(), carol()][i % USERS].clone()
}

/// Where an operation acts: chosen at run time among what exists, so most
/// operations meet an entry (random paths would mostly miss).
#[derive(Clone, Copy, Debug)]
enum Target {
    /// An existing entry (index into the model's paths, root excluded).
    Existing(usize),
    /// A name of the pool in an existing directory (or, with `any_parent`,
    /// under any existing entry, to meet ENOTDIR).
    At {
        dir: usize,
        name: usize,
        any_parent: bool,
    },
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        at: Target,
        mode: usize,
        exclusive: bool,
        write: bool,
        user: usize,
    },
    Mkdir {
        at: Target,
        mode: usize,
        user: usize,
    },
    Symlink {
        at: Target,
        user: usize,
    },
    Link {
        src: Target,
        at: Target,
        user: usize,
    },
    Unlink {
        at: Target,
        user: usize,
    },
    Rmdir {
        at: Target,
        user: usize,
    },
    Rename {
        from: Target,
        to: Target,
        flags: u8,
        user: usize,
    },
    Truncate {
        at: Target,
        size: u64,
        via_handle: bool,
        user: usize,
    },
    Chmod {
        at: Target,
        mode: usize,
        user: usize,
    },
    Write {
        at: Target,
        index: u64,
        size: u8,
        user: usize,
    },
    Punch {
        at: Target,
        first: u64,
        last: u64,
        user: usize,
    },
    Open {
        at: Target,
        write: bool,
        user: usize,
    },
    Release {
        handle: usize,
    },
    // State only (the model has no locks or xattrs): they feed the
    // invariant checks and the snapshot tests.
    Lock {
        handle: usize,
        owner: u64,
        start: u64,
        len: u64,
        kind: u8,
    },
    Flock {
        handle: usize,
        owner: u64,
        kind: u8,
    },
    Xattr {
        at: Target,
        value_len: usize,
        user: usize,
    },
}

/// Mostly a new name in a directory.
fn arb_new() -> impl Strategy<Value = Target> {
    prop_oneof![
        1 => any::<usize>().prop_map(Target::Existing),
        6 => (any::<usize>(), 0..NAMES.len(), prop::bool::weighted(0.1))
            .prop_map(|(dir, name, any_parent)| Target::At { dir, name, any_parent }),
    ]
}

/// Mostly an existing entry.
fn arb_old() -> impl Strategy<Value = Target> {
    prop_oneof![
        4 => any::<usize>().prop_map(Target::Existing),
        1 => (any::<usize>(), 0..NAMES.len(), prop::bool::weighted(0.1))
            .prop_map(|(dir, name, any_parent)| Target::At { dir, name, any_parent }),
    ]
}

/// Blocks `first..=last` among the few a file of the test holds, mostly
/// non-empty, sometimes reaching past the end.
fn arb_block_range() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        9 => (0u64..5, 0u64..4).prop_map(|(first, span)| (first, first + span)),
        1 => (1u64..5).prop_map(|first| (first, first - 1)),
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    let u = 0..USERS;
    let m = 0..MODES.len();
    prop_oneof![
        4 => (arb_new(), m.clone(), any::<bool>(), any::<bool>(), u.clone())
            .prop_map(|(at, mode, exclusive, write, user)| Op::Create { at, mode, exclusive, write, user }),
        4 => (arb_new(), m.clone(), u.clone()).prop_map(|(at, mode, user)| Op::Mkdir { at, mode, user }),
        1 => (arb_new(), u.clone()).prop_map(|(at, user)| Op::Symlink { at, user }),
        2 => (arb_old(), arb_new(), u.clone()).prop_map(|(src, at, user)| Op::Link { src, at, user }),
        2 => (arb_old(), u.clone()).prop_map(|(at, user)| Op::Unlink { at, user }),
        2 => (arb_old(), u.clone()).prop_map(|(at, user)| Op::Rmdir { at, user }),
        5 => (arb_old(), prop_oneof![arb_new(), arb_old()], prop::sample::select(vec![0u8, 0, 0, 1, 2, 2, 3]), u.clone())
            .prop_map(|(from, to, flags, user)| Op::Rename { from, to, flags, user }),
        1 => (arb_old(), 0..3 * BS, any::<bool>(), u.clone())
            .prop_map(|(at, size, via_handle, user)| Op::Truncate { at, size, via_handle, user }),
        2 => (arb_old(), m, u.clone()).prop_map(|(at, mode, user)| Op::Chmod { at, mode, user }),
        3 => (arb_old(), 0u64..4, 0u8..4, u.clone())
            .prop_map(|(at, index, size, user)| Op::Write { at, index, size, user }),
        2 => (arb_old(), arb_block_range(), u.clone())
            .prop_map(|(at, (first, last), user)| Op::Punch { at, first, last, user }),
        2 => (arb_old(), any::<bool>(), u.clone()).prop_map(|(at, write, user)| Op::Open { at, write, user }),
        2 => any::<usize>().prop_map(|handle| Op::Release { handle }),
        1 => (any::<usize>(), 0u64..3, 0u64..64, 1u64..32, 0u8..3)
            .prop_map(|(handle, owner, start, len, kind)| Op::Lock { handle, owner, start, len, kind }),
        1 => (any::<usize>(), 0u64..3, 0u8..3).prop_map(|(handle, owner, kind)| Op::Flock { handle, owner, kind }),
        1 => (arb_old(), 0usize..16, u).prop_map(|(at, value_len, user)| Op::Xattr { at, value_len, user }),
    ]
}

fn summarize(result: Result<Outcome, MetaError>) -> Result<Done, i32> {
    result
        .map(|o| {
            let mut garbage: Vec<(u64, u64, u64)> = o
                .garbage
                .iter()
                .map(|b| (b.ino.0, b.index, b.version))
                .collect();
            garbage.sort_unstable();
            let mut freed: Vec<u64> = o.freed.iter().map(|i| i.0).collect();
            freed.sort_unstable();
            Done {
                ino: o.attr().map(|a| a.ino.0),
                garbage,
                freed,
            }
        })
        .map_err(|e| e.errno())
}

/// A parent directory (as both sides name it) and a name in it.
struct Place {
    dir: Path,
    parent: Ino,
    name: String,
}

impl Place {
    fn name(&self) -> Vec<u8> {
        self.name.as_bytes().to_vec()
    }

    fn path(&self) -> Path {
        let mut p = self.dir.clone();
        p.push(self.name.clone());
        p
    }
}

/// Drives the state machine and the model with the same operations.
struct Runner {
    fs: Fs,
    model: Model,
    /// Inodes of the open handles of session S1, one entry per handle.
    handles: Vec<u64>,
    version: u64,
    /// Every command applied to the state, in order (for replays).
    log: Vec<Command>,
}

impl Runner {
    fn new(root_mode: u32) -> Self {
        let mut runner = Self {
            fs: Fs::new(),
            model: Model::new(root_mode, BS),
            handles: Vec::new(),
            version: 0,
            log: Vec::new(),
        };
        let cmd = runner.fs.setattr_cmd(
            ROOT_INO,
            AttrChanges {
                mode: Some(root_mode),
                ..AttrChanges::default()
            },
            &root(),
        );
        runner.apply(cmd).expect("chmod root");
        runner
    }

    fn apply(&mut self, cmd: Command) -> Result<Outcome, MetaError> {
        let result = self.fs.apply(cmd.clone());
        self.log.push(cmd);
        result
    }

    fn resolve(&self, path: &[String]) -> Option<Ino> {
        let mut ino = ROOT_INO;
        for name in path {
            ino = self
                .fs
                .state
                .lookup(ino, name.as_bytes(), &root())
                .ok()?
                .ino;
        }
        Some(ino)
    }

    /// The inode at `path` if it exists, after checking both sides agree.
    fn both(&self, path: &[String]) -> Result<Option<Ino>, TestCaseError> {
        let state = self.resolve(path);
        prop_assert_eq!(
            state.map(|i| i.0),
            self.model.id(path),
            "resolving {:?}",
            path
        );
        Ok(state)
    }

    /// Where `target` points now: a parent (path and inode) and a name.
    fn place(&self, target: Target) -> Result<Option<Place>, TestCaseError> {
        let (dir, name) = match target {
            Target::Existing(i) => {
                let paths: Vec<&Path> = self.model.paths.keys().filter(|p| !p.is_empty()).collect();
                if paths.is_empty() {
                    return Ok(None);
                }
                let mut dir = paths[i % paths.len()].clone();
                let name = dir.pop().expect("not the root");
                (dir, name)
            }
            Target::At {
                dir,
                name,
                any_parent,
            } => {
                let dirs: Vec<&Path> = self
                    .model
                    .paths
                    .iter()
                    .filter(|(_, id)| any_parent || self.model.nodes[*id].kind == FileKind::Dir)
                    .map(|(p, _)| p)
                    .collect();
                (dirs[dir % dirs.len()].clone(), NAMES[name].to_string())
            }
        };
        let parent = self.both(&dir)?.expect("a path of the model");
        Ok(Some(Place { dir, parent, name }))
    }

    /// The place and the inode `target` names, when it names one.
    fn existing(&self, target: Target) -> Result<Option<(Place, Path, Ino)>, TestCaseError> {
        let Some(place) = self.place(target)? else {
            return Ok(None);
        };
        let path = place.path();
        Ok(self.both(&path)?.map(|ino| (place, path, ino)))
    }

    fn handle(&self, i: usize) -> Option<Ino> {
        (!self.handles.is_empty()).then(|| Ino(self.handles[i % self.handles.len()]))
    }

    #[allow(clippy::too_many_lines)]
    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let results: Option<(Result<Done, i32>, Result<Done, i32>)> = match *op {
            Op::Create {
                at,
                mode,
                exclusive,
                write,
                user,
            } => match self.place(at)? {
                None => None,
                Some(p) => {
                    let creds = creds_of(user);
                    let now = self.fs.now();
                    let flags = if write {
                        OpenFlags::READ_WRITE
                    } else {
                        OpenFlags::READ
                    };
                    let state = self.apply(Command::Create {
                        parent: p.parent,
                        name: p.name(),
                        mode: MODES[mode].into(),
                        exclusive,
                        session: S1,
                        flags,
                        creds: creds.clone(),
                        now,
                    });
                    let model =
                        self.model
                            .create(&p.dir, &p.name, MODES[mode], exclusive, write, &creds);
                    if let Ok(Done { ino: Some(ino), .. }) = &model {
                        self.handles.push(*ino);
                    }
                    Some((summarize(state), model))
                }
            },
            Op::Mkdir { at, mode, user } => match self.place(at)? {
                None => None,
                Some(p) => {
                    let creds = creds_of(user);
                    let now = self.fs.now();
                    let state = self.apply(Command::Mkdir {
                        parent: p.parent,
                        name: p.name(),
                        mode: MODES[mode].into(),
                        creds: creds.clone(),
                        now,
                    });
                    let model = self.model.mkdir(&p.dir, &p.name, MODES[mode], &creds);
                    Some((summarize(state), model))
                }
            },
            Op::Symlink { at, user } => match self.place(at)? {
                None => None,
                Some(p) => {
                    let creds = creds_of(user);
                    let now = self.fs.now();
                    let state = self.apply(Command::Symlink {
                        parent: p.parent,
                        name: p.name(),
                        target: b"t".to_vec(),
                        creds: creds.clone(),
                        now,
                    });
                    let model = self.model.symlink(&p.dir, &p.name, &creds);
                    Some((summarize(state), model))
                }
            },
            Op::Link { src, at, user } => match (self.existing(src)?, self.place(at)?) {
                (Some((_, src_path, ino)), Some(p)) => {
                    let creds = creds_of(user);
                    let now = self.fs.now();
                    let state = self.apply(Command::Link {
                        ino,
                        new_parent: p.parent,
                        new_name: p.name(),
                        creds: creds.clone(),
                        now,
                    });
                    let model = self.model.link(&src_path, &p.dir, &p.name, &creds);
                    Some((summarize(state), model))
                }
                _ => None,
            },
            Op::Unlink { at, user } | Op::Rmdir { at, user } => match self.place(at)? {
                None => None,
                Some(p) => {
                    let creds = creds_of(user);
                    let now = self.fs.now();
                    let rmdir = matches!(op, Op::Rmdir { .. });
                    let (parent, name) = (p.parent, p.name());
                    let cmd = if rmdir {
                        Command::Rmdir {
                            parent,
                            name,
                            creds: creds.clone(),
                            now,
                        }
                    } else {
                        Command::Unlink {
                            parent,
                            name,
                            creds: creds.clone(),
                            now,
                        }
                    };
                    let state = self.apply(cmd);
                    let model = self.model.remove(&p.dir, &p.name, rmdir, &creds);
                    Some((summarize(state), model))
                }
            },
            Op::Rename {
                from,
                to,
                flags,
                user,
            } => match (self.place(from)?, self.place(to)?) {
                (Some(a), Some(b)) => {
                    let creds = creds_of(user);
                    let now = self.fs.now();
                    let (noreplace, exchange) = (flags & 1 != 0, flags & 2 != 0);
                    let state = self.apply(Command::Rename {
                        parent: a.parent,
                        name: a.name(),
                        new_parent: b.parent,
                        new_name: b.name(),
                        flags: RenameFlags {
                            noreplace,
                            exchange,
                        },
                        creds: creds.clone(),
                        now,
                    });
                    let model = self.model.rename(
                        (&a.dir, &a.name),
                        (&b.dir, &b.name),
                        noreplace,
                        exchange,
                        &creds,
                    );
                    Some((summarize(state), model))
                }
                _ => None,
            },
            Op::Truncate {
                at,
                size,
                via_handle,
                user,
            } => match self.existing(at)? {
                None => None,
                Some((_, path, ino)) => {
                    let creds = creds_of(user);
                    let now = self.fs.now();
                    let state = self.apply(Command::SetAttr {
                        ino,
                        changes: AttrChanges {
                            size: Some(size),
                            ..AttrChanges::default()
                        },
                        via_handle,
                        creds: creds.clone(),
                        now,
                    });
                    let model = self.model.truncate(&path, size, via_handle, &creds);
                    Some((summarize(state), model))
                }
            },
            Op::Chmod { at, mode, user } => match self.existing(at)? {
                None => None,
                Some((_, path, ino)) => {
                    let creds = creds_of(user);
                    let cmd = self.fs.setattr_cmd(
                        ino,
                        AttrChanges {
                            mode: Some(MODES[mode]),
                            ..AttrChanges::default()
                        },
                        &creds,
                    );
                    let state = self.apply(cmd);
                    let model = self.model.chmod(&path, MODES[mode], &creds);
                    Some((summarize(state), model))
                }
            },
            Op::Write {
                at,
                index,
                size,
                user,
            } => match self.existing(at)? {
                None => None,
                Some((_, path, ino)) => {
                    let creds = creds_of(user);
                    let new_size = match size {
                        0 => None,
                        1 => Some(index * BS + 1),
                        2 => Some((index + 1) * BS),
                        _ => Some(index * BS),
                    };
                    self.version += 1;
                    let now = self.fs.now();
                    let state = self.apply(Command::SetBlocks {
                        ino,
                        blocks: vec![(index, self.version)],
                        new_size,
                        creds: creds.clone(),
                        now,
                    });
                    let model =
                        self.model
                            .write_block(&path, index, self.version, new_size, &creds);
                    Some((summarize(state), model))
                }
            },
            Op::Punch {
                at,
                first,
                last,
                user,
            } => match self.existing(at)? {
                None => None,
                Some((_, path, ino)) => {
                    let creds = creds_of(user);
                    let now = self.fs.now();
                    let state = self.apply(Command::RemoveBlocks {
                        ino,
                        first,
                        last,
                        creds: creds.clone(),
                        now,
                    });
                    let model = self.model.punch(&path, first, last, &creds);
                    Some((summarize(state), model))
                }
            },
            Op::Open { at, write, user } => match self.existing(at)? {
                None => None,
                Some((_, path, ino)) => {
                    let creds = creds_of(user);
                    let flags = if write {
                        OpenFlags::READ_WRITE
                    } else {
                        OpenFlags::READ
                    };
                    let state = self.apply(Command::Open {
                        session: S1,
                        ino,
                        flags,
                        creds: creds.clone(),
                    });
                    let model = self.model.open(&path, write, &creds);
                    if model.is_ok() {
                        self.handles.push(ino.0);
                    }
                    Some((summarize(state), model))
                }
            },
            Op::Release { handle } => match self.handle(handle) {
                None => None,
                Some(ino) => {
                    let at = self
                        .handles
                        .iter()
                        .position(|&h| h == ino.0)
                        .expect("handle");
                    self.handles.remove(at);
                    let state = self.apply(Command::Release {
                        session: S1,
                        ino,
                        flock_owner: None,
                    });
                    let model = Ok(self.model.release(ino.0));
                    Some((summarize(state), model))
                }
            },
            Op::Lock {
                handle,
                owner,
                start,
                len,
                kind,
            } => {
                if let Some(ino) = self.handle(handle) {
                    let kind = match kind {
                        0 => None,
                        1 => Some(LockKind::Read),
                        _ => Some(LockKind::Write),
                    };
                    let range = LockRange::new(start, start + len - 1);
                    let _ = self.apply(Command::SetLk {
                        ino,
                        owner,
                        session: S1,
                        range,
                        kind,
                    });
                }
                None
            }
            Op::Flock {
                handle,
                owner,
                kind,
            } => {
                if let Some(ino) = self.handle(handle) {
                    let kind = match kind {
                        0 => None,
                        1 => Some(FlockKind::Shared),
                        _ => Some(FlockKind::Exclusive),
                    };
                    let _ = self.apply(Command::Flock {
                        ino,
                        owner,
                        session: S1,
                        kind,
                    });
                }
                None
            }
            Op::Xattr {
                at,
                value_len,
                user,
            } => {
                if let Some((_, _, ino)) = self.existing(at)? {
                    let now = self.fs.now();
                    let _ = self.apply(Command::SetXattr {
                        ino,
                        name: b"user.k".to_vec(),
                        value: vec![7; value_len],
                        flags: XattrFlags::default(),
                        creds: creds_of(user),
                        now,
                    });
                }
                None
            }
        };
        if let Some((state, model)) = results {
            prop_assert_eq!(state, model, "after {:?}", op);
        }
        self.compare()
    }

    fn listing(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let mut stack = vec![(String::new(), ROOT_INO)];
        while let Some((path, ino)) = stack.pop() {
            let a = self.fs.state.getattr(ino).expect("listed inode");
            rows.push((
                path.clone(),
                a.kind,
                a.mode,
                a.uid,
                a.gid,
                a.size,
                a.nlink,
                ino.0,
            ));
            if a.kind == FileKind::Dir {
                for e in self
                    .fs
                    .state
                    .readdir(ino, 0, usize::MAX, &root())
                    .expect("readdir")
                {
                    let name = String::from_utf8(e.name).expect("pool names are UTF-8");
                    let child = if path.is_empty() {
                        name
                    } else {
                        format!("{path}/{name}")
                    };
                    stack.push((child, e.ino));
                }
            }
        }
        rows.sort();
        rows
    }

    fn compare(&self) -> Result<(), TestCaseError> {
        let mut expected = self.model.listing();
        expected.sort();
        prop_assert_eq!(self.listing(), expected);
        prop_assert_eq!(self.fs.state.inode_count(), self.model.nodes.len() as u64);
        let st = self.fs.state.statfs().expect("statfs");
        prop_assert_eq!(st.blocks_total - st.blocks_free, self.model.blocks_used());
        for (&id, node) in &self.model.nodes {
            prop_assert_eq!(
                self.fs.state.open_handles(S1, Ino(id)),
                node.opens,
                "handles of {}",
                id
            );
            if node.kind == FileKind::File {
                let map = self
                    .fs
                    .state
                    .blocks(Ino(id), 0, usize::MAX)
                    .expect("blocks");
                let expected: Vec<(u64, u64)> = node.blocks.iter().map(|(&i, &v)| (i, v)).collect();
                prop_assert_eq!(map, expected, "block map of {}", id);
                let attr = self.fs.state.getattr(Ino(id)).expect("attr");
                prop_assert_eq!(attr.allocated_bytes, node.blocks.len() as u64 * BS);
            }
        }
        Ok(())
    }
}

fn run(root_mode: u32, ops: &[Op]) -> Result<Runner, TestCaseError> {
    let mut runner = Runner::new(root_mode);
    for op in ops {
        runner.step(op)?;
    }
    Ok(runner)
}

/// A fresh harness state with `cmds` applied (results ignored).
fn replay(cmds: &[Command]) -> MetaState {
    let mut state = Fs::new().state;
    for cmd in cmds {
        let _ = state.apply(cmd);
    }
    state
}

fn arb_root_mode() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![0o777, 0o1777, 0o2777])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn state_machine_matches_the_model(root_mode in arb_root_mode(), ops in prop::collection::vec(arb_op(), 1..100)) {
        run(root_mode, &ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn replay_is_deterministic(root_mode in arb_root_mode(), ops in prop::collection::vec(arb_op(), 1..60)) {
        let runner = run(root_mode, &ops)?;
        let bytes = runner.fs.state.snapshot();
        prop_assert!(replay(&runner.log).snapshot() == bytes);
        prop_assert!(replay(&runner.log).snapshot() == bytes);
    }

    #[test]
    fn restore_continues_identically(
        root_mode in arb_root_mode(),
        ops in prop::collection::vec(arb_op(), 1..60),
        split in any::<prop::sample::Index>(),
    ) {
        let runner = run(root_mode, &ops)?;
        let k = split.index(runner.log.len() + 1);
        let mut original = replay(&runner.log[..k]);
        let mut restored = MetaState::restore(&original.snapshot()).expect("restore");
        prop_assert!(restored == original);
        for cmd in &runner.log[k..] {
            prop_assert_eq!(original.apply(cmd), restored.apply(cmd));
        }
        prop_assert!(original.snapshot() == restored.snapshot());
        prop_assert!(original == runner.fs.state);
    }
}
