//! Encodings: commands and outcomes round-trip, snapshots restore equal
//! states, and garbage, truncated or damaged bytes are errors, never panics.

use proptest::prelude::*;

use super::*;
use crate::meta::{
    Attr, BlockRef, CreateMode, DecodeError, FlockKind, LockKind, LockRange, Reply, SetTime,
    XattrFlags, ROOT_INO,
};

fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn arb_time() -> impl Strategy<Value = Timespec> {
    (any::<i64>(), any::<u32>()).prop_map(|(sec, nsec)| Timespec { sec, nsec })
}

fn arb_create_mode() -> impl Strategy<Value = CreateMode> {
    prop_oneof![
        any::<u32>().prop_map(CreateMode::masked),
        (any::<u32>(), any::<u32>()).prop_map(|(mode, umask)| CreateMode::with_umask(mode, umask)),
    ]
}

fn arb_creds() -> impl Strategy<Value = Creds> {
    (
        any::<u32>(),
        any::<u32>(),
        prop::collection::vec(any::<u32>(), 0..4),
    )
        .prop_map(|(uid, gid, groups)| Creds { uid, gid, groups })
}

/// Mostly inodes that exist in [`busy_state`], sometimes any number.
fn arb_ino() -> impl Strategy<Value = Ino> {
    prop_oneof![3 => (0u64..12).prop_map(Ino), 1 => any::<u64>().prop_map(Ino)]
}

fn arb_kind() -> impl Strategy<Value = FileKind> {
    prop::sample::select(vec![
        FileKind::File,
        FileKind::Dir,
        FileKind::Symlink,
        FileKind::Fifo,
        FileKind::Socket,
        FileKind::CharDev,
        FileKind::BlockDev,
    ])
}

fn arb_flags() -> impl Strategy<Value = OpenFlags> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(read, write, truncate)| OpenFlags {
        read,
        write,
        truncate,
    })
}

fn arb_set_time() -> impl Strategy<Value = Option<SetTime>> {
    prop::option::of(prop_oneof![
        Just(SetTime::Now),
        arb_time().prop_map(SetTime::At)
    ])
}

fn arb_changes() -> impl Strategy<Value = AttrChanges> {
    (
        prop::option::of(any::<u32>()),
        prop::option::of(any::<u32>()),
        prop::option::of(any::<u32>()),
        prop::option::of(any::<u64>()),
        arb_set_time(),
        arb_set_time(),
    )
        .prop_map(|(mode, uid, gid, size, atime, mtime)| AttrChanges {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        })
}

fn arb_session() -> impl Strategy<Value = SessionId> {
    prop_oneof![3 => (0u64..4).prop_map(SessionId), 1 => any::<u64>().prop_map(SessionId)]
}

/// Any command, fields arbitrary.
// One strategy per variant, listed: long, not complex.
#[allow(clippy::too_many_lines)]
fn arb_command() -> impl Strategy<Value = Command> {
    let name = || arb_bytes(12);
    prop_oneof![
        (
            any::<[u8; 16]>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            arb_time()
        )
            .prop_map(
                |(uuid, block_size, format_version, capacity_bytes, inodes_max, now)| {
                    Command::Format {
                        uuid,
                        block_size,
                        format_version,
                        capacity_bytes,
                        inodes_max,
                        now,
                    }
                }
            ),
        (
            arb_ino(),
            name(),
            arb_kind(),
            arb_create_mode(),
            any::<u32>(),
            arb_creds(),
            arb_time()
        )
            .prop_map(
                |(parent, name, kind, mode, rdev, creds, now)| Command::Mknod {
                    parent,
                    name,
                    kind,
                    mode,
                    rdev,
                    creds,
                    now
                }
            ),
        (
            arb_ino(),
            name(),
            arb_create_mode(),
            arb_creds(),
            arb_time()
        )
            .prop_map(|(parent, name, mode, creds, now)| Command::Mkdir {
                parent,
                name,
                mode,
                creds,
                now
            }),
        (
            arb_ino(),
            name(),
            arb_create_mode(),
            any::<bool>(),
            arb_session(),
            arb_flags(),
            arb_creds(),
            arb_time()
        )
            .prop_map(
                |(parent, name, mode, exclusive, session, flags, creds, now)| Command::Create {
                    parent,
                    name,
                    mode,
                    exclusive,
                    session,
                    flags,
                    creds,
                    now
                }
            ),
        (arb_ino(), name(), arb_bytes(40), arb_creds(), arb_time()).prop_map(
            |(parent, name, target, creds, now)| Command::Symlink {
                parent,
                name,
                target,
                creds,
                now
            }
        ),
        (arb_ino(), arb_ino(), name(), arb_creds(), arb_time()).prop_map(
            |(ino, new_parent, new_name, creds, now)| Command::Link {
                ino,
                new_parent,
                new_name,
                creds,
                now
            }
        ),
        (arb_ino(), name(), arb_creds(), arb_time()).prop_map(|(parent, name, creds, now)| {
            Command::Unlink {
                parent,
                name,
                creds,
                now,
            }
        }),
        (arb_ino(), name(), arb_creds(), arb_time()).prop_map(|(parent, name, creds, now)| {
            Command::Rmdir {
                parent,
                name,
                creds,
                now,
            }
        }),
        (
            arb_ino(),
            name(),
            arb_ino(),
            name(),
            any::<(bool, bool)>(),
            arb_creds(),
            arb_time()
        )
            .prop_map(
                |(parent, name, new_parent, new_name, (noreplace, exchange), creds, now)| {
                    Command::Rename {
                        parent,
                        name,
                        new_parent,
                        new_name,
                        flags: RenameFlags {
                            noreplace,
                            exchange,
                        },
                        creds,
                        now,
                    }
                }
            ),
        (
            arb_ino(),
            arb_changes(),
            any::<bool>(),
            arb_creds(),
            arb_time()
        )
            .prop_map(|(ino, changes, via_handle, creds, now)| Command::SetAttr {
                ino,
                changes,
                via_handle,
                creds,
                now
            }),
        (arb_session(), arb_ino(), arb_flags(), arb_creds()).prop_map(
            |(session, ino, flags, creds)| Command::Open {
                session,
                ino,
                flags,
                creds
            }
        ),
        (arb_session(), arb_ino(), prop::option::of(any::<u64>())).prop_map(
            |(session, ino, flock_owner)| Command::Release {
                session,
                ino,
                flock_owner
            }
        ),
        (
            arb_ino(),
            prop::collection::vec(any::<(u64, u64)>(), 0..8),
            prop::option::of(any::<u64>()),
            arb_creds(),
            arb_time()
        )
            .prop_map(|(ino, blocks, new_size, creds, now)| Command::SetBlocks {
                ino,
                blocks,
                new_size,
                creds,
                now
            }),
        (
            arb_ino(),
            name(),
            arb_bytes(20),
            any::<(bool, bool)>(),
            arb_creds(),
            arb_time()
        )
            .prop_map(|(ino, name, value, (create, replace), creds, now)| {
                Command::SetXattr {
                    ino,
                    name,
                    value,
                    flags: XattrFlags { create, replace },
                    creds,
                    now,
                }
            }),
        (arb_ino(), name(), arb_creds(), arb_time()).prop_map(|(ino, name, creds, now)| {
            Command::RemoveXattr {
                ino,
                name,
                creds,
                now,
            }
        }),
        (
            arb_ino(),
            any::<u64>(),
            arb_session(),
            any::<(u64, u64)>(),
            prop::option::of(prop_oneof![Just(LockKind::Read), Just(LockKind::Write)])
        )
            .prop_map(|(ino, owner, session, (start, end), kind)| Command::SetLk {
                ino,
                owner,
                session,
                range: LockRange { start, end },
                kind
            }),
        (
            arb_ino(),
            any::<u64>(),
            arb_session(),
            prop::option::of(prop_oneof![
                Just(FlockKind::Shared),
                Just(FlockKind::Exclusive)
            ])
        )
            .prop_map(|(ino, owner, session, kind)| Command::Flock {
                ino,
                owner,
                session,
                kind
            }),
        (arb_session(), arb_time()).prop_map(|(session, lease_expires)| Command::RegisterSession {
            session,
            lease_expires
        }),
        (arb_session(), arb_time()).prop_map(|(session, lease_expires)| Command::RenewSession {
            session,
            lease_expires
        }),
        arb_session().prop_map(|session| Command::UnregisterSession { session }),
        arb_time().prop_map(|now| Command::ExpireSessions { now }),
        (
            arb_ino(),
            any::<u64>(),
            any::<u64>(),
            arb_creds(),
            arb_time()
        )
            .prop_map(|(ino, first, last, creds, now)| Command::RemoveBlocks {
                ino,
                first,
                last,
                creds,
                now
            }),
        (
            arb_ino(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            arb_creds(),
            arb_time()
        )
            .prop_map(
                |(ino, first, last, replace, creds, now)| Command::ZeroBlocks {
                    ino,
                    first,
                    last,
                    replace,
                    creds,
                    now
                }
            ),
    ]
}

/// A state with some of everything: directories, files with blocks and
/// xattrs, a symlink, a device, an unlinked open file, sessions, locks.
fn busy_state() -> MetaState {
    let mut fs = Fs::new();
    let d = fs.mkdir(ROOT_INO, "d", 0o777, &root());
    fs.chmod(d, 0o2777, &root());
    let f = fs.file(d, "f", 0o644, &alice());
    fs.set_blocks(f, &[(0, 1), (3, 2)], 4 * BS_U64, &alice());
    let now = fs.now();
    fs.ok(Command::SetXattr {
        ino: f,
        name: b"user.k".to_vec(),
        value: b"v".to_vec(),
        flags: XattrFlags::default(),
        creds: alice(),
        now,
    });
    let now = fs.now();
    fs.ok(Command::Symlink {
        parent: d,
        name: b"l".to_vec(),
        target: b"f".to_vec(),
        creds: alice(),
        now,
    });
    let now = fs.now();
    fs.ok(Command::Mknod {
        parent: ROOT_INO,
        name: b"null".to_vec(),
        kind: FileKind::CharDev,
        mode: 0o666.into(),
        rdev: 0x0103,
        creds: root(),
        now,
    });
    let g = fs.file(d, "g", 0o644, &alice());
    fs.set_blocks(g, &[(0, 7)], 10, &alice());
    fs.open(S1, g, OpenFlags::READ);
    fs.open(S2, f, OpenFlags::READ);
    let cmd = fs.unlink_cmd(d, "g", &alice());
    fs.ok(cmd);
    fs.ok(Command::SetLk {
        ino: f,
        owner: 3,
        session: S2,
        range: LockRange::new(0, 99),
        kind: Some(LockKind::Write),
    });
    fs.ok(Command::Flock {
        ino: g,
        owner: 1,
        session: S1,
        kind: Some(FlockKind::Shared),
    });
    fs.state
}

const BS_U64: u64 = BLOCK_BYTES as u64;

#[test]
fn snapshot_round_trip() {
    let state = busy_state();
    let bytes = state.snapshot();
    let restored = MetaState::restore(&bytes).expect("restore");
    assert!(restored == state);
    assert_eq!(restored.snapshot(), bytes);
    let empty = MetaState::new();
    assert!(MetaState::restore(&empty.snapshot()).expect("restore empty") == empty);
}

/// Revoked certificate serials are replicated state: they survive a
/// snapshot, formatted volume or not, and bad serials change nothing.
#[test]
fn revoked_serials_round_trip_and_bad_ones_are_refused() {
    for mut state in [MetaState::new(), busy_state()] {
        let revoke = |serial: &str| Command::RevokeCertificate {
            serial: serial.to_string(),
        };
        state.apply(&revoke("5F9EA0")).expect("revoke");
        state
            .apply(&revoke("5f9ea0"))
            .expect("again: nothing changes");
        for bad in ["", "xyz", "5f:9e", &"a".repeat(41)] {
            assert_eq!(
                state.apply(&revoke(bad)).expect_err(bad).errno(),
                libc::EINVAL,
                "{bad:?}"
            );
        }
        assert!(state.is_revoked("5f9ea0") && state.is_revoked("5F9EA0"));
        assert!(!state.is_revoked("5f9ea1"));
        let restored = MetaState::restore(&state.snapshot()).expect("restore");
        assert!(restored == state);
        assert!(restored.is_revoked("5f9ea0"));
    }
}

/// The cache node registry is replicated state: changes move its epoch
/// (an unchanged registration does not), it survives a snapshot emptied
/// or not, and bad records change nothing.
#[test]
fn cache_nodes_register_update_unregister_and_round_trip() {
    for mut state in [MetaState::new(), busy_state()] {
        let node = |id: u64, port: u16, cache_bytes: u64| crate::meta::CacheNode {
            id,
            addr: format!("10.0.0.{id}:{port}"),
            cache_bytes,
            live: true,
        };
        let register = |n| Command::RegisterCacheNode { node: n };
        state
            .apply(&register(node(4, 7000, 1 << 30)))
            .expect("register");
        state
            .apply(&register(node(5, 7000, 2 << 30)))
            .expect("register");
        assert_eq!(state.cache_epoch(), 2);
        state
            .apply(&register(node(4, 7000, 1 << 30)))
            .expect("same again");
        assert_eq!(state.cache_epoch(), 2, "nothing changed");
        state
            .apply(&register(node(4, 7001, 1 << 30)))
            .expect("moved");
        assert_eq!(state.cache_epoch(), 3);
        for bad in [
            node(0, 1, 1),
            node(6, 1, 0),
            crate::meta::CacheNode {
                id: 6,
                addr: "a".repeat(256),
                cache_bytes: 1,
                live: true,
            },
        ] {
            let err = state.apply(&register(bad.clone())).expect_err("bad");
            assert_eq!(err.errno(), libc::EINVAL, "{bad:?}");
        }
        assert_eq!(state.cache_epoch(), 3, "refused records change nothing");
        // The Lord marks a node dead, then live again; a registration is live.
        let live = |id: u64, live: bool| Command::SetCacheNodeLive { id, live };
        state.apply(&live(5, false)).expect("dead");
        state.apply(&live(5, false)).expect("dead again: nothing");
        state.apply(&live(99, false)).expect("unknown: nothing");
        assert_eq!(state.cache_epoch(), 4);
        assert!(!state.cache_nodes().1[1].live);
        let restored = MetaState::restore(&state.snapshot()).expect("restore");
        assert!(
            !restored.cache_nodes().1[1].live,
            "liveness is in snapshots"
        );
        state.apply(&live(5, true)).expect("live");
        assert_eq!(state.cache_epoch(), 5);
        let restored = MetaState::restore(&state.snapshot()).expect("restore");
        assert!(restored == state);
        assert_eq!(restored.cache_nodes(), state.cache_nodes());
        assert_eq!(state.cache_nodes().1.len(), 2);
        state
            .apply(&Command::UnregisterCacheNode { id: 4 })
            .expect("unregister");
        state
            .apply(&Command::UnregisterCacheNode { id: 5 })
            .expect("unregister");
        state
            .apply(&Command::UnregisterCacheNode { id: 5 })
            .expect("twice: nothing");
        assert_eq!(state.cache_nodes(), (7, Vec::new()));
        let restored = MetaState::restore(&state.snapshot()).expect("restore emptied");
        assert_eq!(
            restored.cache_nodes(),
            (7, Vec::new()),
            "the epoch never goes back"
        );
    }
}

/// A namespace larger than one snapshot record of each kind still
/// round-trips (records split at `SNAPSHOT_RECORD_ITEMS_MAX` items).
#[test]
fn snapshot_splits_into_records() {
    let mut fs = Fs::new();
    let now = fs.now();
    let items = crate::meta::SNAPSHOT_RECORD_ITEMS_MAX as u64 + 100;
    let f = fs.file(ROOT_INO, "big", 0o644, &root());
    let blocks: Vec<(u64, u64)> = (0..items).map(|i| (i, i + 1)).collect();
    for chunk in blocks.chunks(crate::meta::BLOCKS_PER_COMMAND_MAX) {
        fs.state
            .apply(&Command::SetBlocks {
                ino: f,
                blocks: chunk.to_vec(),
                new_size: Some(items * BS_U64),
                creds: root(),
                now,
            })
            .expect("set blocks");
    }
    for i in 0..items {
        fs.state
            .apply(&Command::Mknod {
                parent: ROOT_INO,
                name: format!("p{i}").into_bytes(),
                kind: FileKind::Fifo,
                mode: 0o644.into(),
                rdev: 0,
                creds: root(),
                now,
            })
            .expect("mknod");
    }
    let bytes = fs.state.snapshot();
    let restored = MetaState::restore(&bytes).expect("restore");
    assert!(restored == fs.state);
    assert_eq!(
        restored.blocks(f, 0, usize::MAX).expect("blocks").len() as u64,
        items
    );
}

#[test]
fn snapshot_errors() {
    let bytes = busy_state().snapshot();
    assert!(matches!(
        MetaState::restore(&[]),
        Err(DecodeError::Truncated { .. })
    ));
    assert!(matches!(
        MetaState::restore(b"not a snapshot at all"),
        Err(DecodeError::BadMagic(_))
    ));
    let mut newer = bytes.clone();
    newer[4] = 99;
    assert!(matches!(
        MetaState::restore(&newer),
        Err(DecodeError::UnsupportedVersion { .. })
    ));
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        MetaState::restore(&longer),
        Err(DecodeError::Trailing(1))
    ));
    // Every strict prefix fails: the end record is missing or cut.
    for len in (0..bytes.len()).step_by(7) {
        assert!(
            MetaState::restore(&bytes[..len]).is_err(),
            "prefix of {len} bytes"
        );
    }
}

#[test]
fn inconsistent_snapshot_is_refused() {
    let mut state = busy_state();
    // Break one invariant behind apply's back: a link count.
    let f = state.lookup(Ino(2), b"f", &root()).expect("lookup").ino;
    state.inodes.get_mut(&f).expect("inode").nlink = 5;
    match MetaState::restore(&state.snapshot()) {
        Err(DecodeError::Inconsistent(why)) => assert!(why.contains("nlink"), "{why}"),
        other => panic!("{other:?}"),
    }
}

/// `prefix` (hex) followed by `zeros` zero bytes.
fn bytes_of(prefix: &str, zeros: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..prefix.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&prefix[i..i + 2], 16).expect("hex"))
        .collect();
    bytes.resize(bytes.len() + zeros, 0);
    bytes
}

/// Raft log entries written by earlier versions decode to the same
/// commands: a command's tag is its position in the enum and the archive's
/// root sits at a fixed distance from its end, so new variants go last and
/// may not be larger than the largest one. (Bytes encoded before
/// `RemoveBlocks` existed; a `Mkdir` from before its mode said who applies
/// the umask: a plain mode is a masked one.)
#[test]
fn earlier_log_entries_keep_their_meaning() {
    let mkdir = bytes_of(
        concat!(
            "444c4d4301000000a800000052eeda86640000000600000002000000000000000200000000000000",
            "e8ffffff01000000ed0100000400000005000000d8ffffff0100000000000000070000000000000008",
        ),
        103,
    );
    let expire = bytes_of(
        "444c4d4301000000a0000000c7599ea91400000000000000050000000000000006",
        143,
    );
    let set_blocks = bytes_of(
        concat!(
            "444c4d4301000000b80000006cea50630100000000000000020000000000000006000000",
            "000000000c000000000000000900000000000000d8ffffff010000000100000000000000",
            "03000000000000000400000005000000c8ffffff01000000070000000000000008",
        ),
        95,
    );
    let pinned = [
        (
            mkdir,
            Command::Mkdir {
                parent: Ino(2),
                name: b"d".to_vec(),
                mode: CreateMode::masked(0o755),
                creds: Creds {
                    uid: 4,
                    gid: 5,
                    groups: vec![6],
                },
                now: Timespec { sec: 7, nsec: 8 },
            },
        ),
        (
            expire,
            Command::ExpireSessions {
                now: Timespec { sec: 5, nsec: 6 },
            },
        ),
        (
            set_blocks,
            Command::SetBlocks {
                ino: Ino(9),
                blocks: vec![(1, 2)],
                new_size: Some(3),
                creds: Creds {
                    uid: 4,
                    gid: 5,
                    groups: vec![6],
                },
                now: Timespec { sec: 7, nsec: 8 },
            },
        ),
    ];
    for (bytes, cmd) in pinned {
        assert_eq!(Command::decode(&bytes), Ok(cmd.clone()));
        assert_eq!(cmd.encode(), bytes, "{cmd:?} encodes as before");
    }
}

#[test]
fn outcome_round_trip() {
    let attr = busy_state().getattr(ROOT_INO).expect("attr");
    let outcomes = [
        Outcome::reply(Reply::Done),
        Outcome {
            reply: Reply::Attr(attr.clone()),
            garbage: vec![BlockRef {
                ino: Ino(5),
                index: 1,
                version: 2,
            }],
            freed: vec![Ino(5)],
        },
        Outcome::reply(Reply::Created {
            attr: Attr { size: 9, ..attr },
            created: true,
        }),
        Outcome::reply(Reply::Expired(vec![S1, S2])),
    ];
    for outcome in outcomes {
        let bytes = outcome.encode();
        assert_eq!(Outcome::decode(&bytes), Ok(outcome));
        assert!(Outcome::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(
            Command::decode(&bytes).is_err(),
            "an outcome is not a command"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn command_round_trip(cmd in arb_command()) {
        let bytes = cmd.encode();
        prop_assert_eq!(Command::decode(&bytes), Ok(cmd));
        // Truncated at any point: an error.
        for len in 0..bytes.len() {
            prop_assert!(Command::decode(&bytes[..len]).is_err());
        }
    }

    #[test]
    fn command_damage_is_detected(cmd in arb_command(), at in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let mut bytes = cmd.encode();
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        prop_assert!(Command::decode(&bytes).is_err());
    }

    #[test]
    fn garbage_never_panics(bytes in arb_bytes(512)) {
        let _ = Command::decode(&bytes);
        let _ = Outcome::decode(&bytes);
        let _ = MetaState::restore(&bytes);
    }

    /// Garbage behind a valid frame header reaches the rkyv validator
    /// (the CRC is recomputed so only the archive check stands guard).
    #[test]
    fn garbage_archives_never_panic(payload in arb_bytes(512)) {
        let mut bytes = Vec::new();
        crate::meta::codec::put_frame(&mut bytes, *b"DLMC", crate::meta::COMMAND_FORMAT_VERSION, &payload);
        let _ = Command::decode(&bytes);
        let mut snapshot = Vec::new();
        crate::meta::codec::put_frame(&mut snapshot, *b"DLMS", crate::meta::SNAPSHOT_FORMAT_VERSION, &payload);
        let _ = MetaState::restore(&snapshot);
    }

    /// Any applied command, valid or not, on a busy state: no panic, the
    /// invariants hold, and a failed command changes nothing.
    #[test]
    fn arbitrary_commands_keep_invariants(cmds in prop::collection::vec(arb_command(), 1..20)) {
        let mut state = busy_state();
        for cmd in &cmds {
            let before = state.clone();
            if state.apply(cmd).is_err() {
                prop_assert!(state == before);
            }
            state.check_invariants();
        }
    }

    #[test]
    fn snapshot_damage_is_detected(at in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let mut bytes = busy_state().snapshot();
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        prop_assert!(MetaState::restore(&bytes).is_err());
    }
}
