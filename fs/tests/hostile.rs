//! Hostile but well-formed requests, as the kernel may pass them on from
//! any program: offsets and lengths at the edges of `u64` and of the
//! largest file (`i64::MAX`), to write, read, fallocate (every mode),
//! truncate, lseek and copy_file_range. Each gets an answer or a clear
//! errno — no panic, no hang, nothing allocated in proportion to the
//! numbers — and the file system goes on working. The file system runs
//! over a real embedded master and a real engine, as in `fs.rs`.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use datenlord_cluster::master::Master;
use datenlord_engine::{BlockSize, Engine, EngineConfig, MemoryStore};
use datenlord_fs::{AttrChanges, Creds, Fs, FsConfig, Ino, MemorySink, MetaLink, ROOT_INO};
use futures::executor::block_on;
use proptest::prelude::*;

const BLOCK: u64 = 64 << 10;
/// The largest file (`i64::MAX` bytes).
const MAX: u64 = i64::MAX as u64;
/// How long one hostile request may take.
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// Offsets and lengths at the edges, and some ordinary ones.
fn edge() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(BLOCK - 1),
        Just(BLOCK),
        Just(3 * BLOCK + 17),
        Just(u64::from(u32::MAX)),
        Just(MAX - BLOCK),
        Just(MAX - 1),
        Just(MAX),
        Just(MAX + 1),
        Just(u64::MAX - BLOCK),
        Just(u64::MAX),
        any::<u64>(),
        0..4 * BLOCK,
        (MAX - 4 * BLOCK)..=MAX,
    ]
}

/// Read sizes: the kernel asks at most its `max_pages` (1 MiB by
/// default) of a FUSE file system per request.
fn read_len() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(4096),
        Just(1 << 20),
        0..=(1u32 << 20)
    ]
}

#[derive(Clone, Debug)]
enum Op {
    Write { offset: u64, len: usize },
    Read { offset: u64, len: u32 },
    Fallocate { mode: i32, offset: u64, len: u64 },
    Truncate { size: u64 },
    Lseek { offset: u64, data: bool },
    Copy { from: u64, to: u64, len: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let mode = prop_oneof![
        Just(0),
        Just(libc::FALLOC_FL_KEEP_SIZE),
        Just(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE),
        Just(libc::FALLOC_FL_ZERO_RANGE),
        Just(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE),
        Just(libc::FALLOC_FL_PUNCH_HOLE),
        any::<i32>(),
    ];
    prop_oneof![
        (edge(), 0..3 * BLOCK as usize).prop_map(|(offset, len)| Op::Write { offset, len }),
        (edge(), read_len()).prop_map(|(offset, len)| Op::Read { offset, len }),
        (mode, edge(), edge()).prop_map(|(mode, offset, len)| Op::Fallocate { mode, offset, len }),
        edge().prop_map(|size| Op::Truncate { size }),
        (edge(), any::<bool>()).prop_map(|(offset, data)| Op::Lseek { offset, data }),
        (edge(), edge(), edge()).prop_map(|(from, to, len)| Op::Copy { from, to, len }),
    ]
}

/// Errnos a hostile request may get.
const ALLOWED: [i32; 6] = [
    libc::EFBIG,
    libc::EINVAL,
    libc::ENXIO,
    libc::EOVERFLOW,
    libc::EOPNOTSUPP,
    libc::ENOSPC,
];

struct Env {
    fs: Arc<Fs>,
    engine: Option<Engine>,
    master: Option<Master>,
    _dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let master = Master::embedded(&dir.path().join("meta"), None).expect("master");
        let store = MemoryStore::new();
        let config = EngineConfig {
            cores: Some(1),
            block_size: BlockSize::new(BLOCK).expect("block size"),
            memory_bytes: 64 * BLOCK,
            hugepages: false,
            ..EngineConfig::default()
        };
        let engine = Engine::start(&config, Arc::clone(&store)).expect("engine");
        let fs = Fs::new(
            FsConfig::default(),
            MetaLink::from_master(&master),
            engine.handle(),
            MemorySink::new(store),
        )
        .expect("fs");
        Self {
            fs,
            engine: Some(engine),
            master: Some(master),
            _dir: dir,
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.take() {
            let _ = engine.shutdown();
        }
        if let Some(master) = self.master.take() {
            let _ = master.stop();
        }
    }
}

/// Runs one request; its errno if it failed.
async fn apply(fs: &Fs, ino: Ino, fh: u64, op: &Op) -> Result<(), i32> {
    let creds = Creds::root();
    let result = match *op {
        Op::Write { offset, len } => fs
            .write(ino, fh, offset, &vec![7u8; len], &creds)
            .await
            .map(drop),
        Op::Read { offset, len } => fs.read(ino, offset, len).await.map(|data| {
            assert!(
                data.len() <= len as usize,
                "a read returned more than asked"
            );
        }),
        Op::Fallocate { mode, offset, len } => {
            fs.fallocate(ino, fh, mode, offset, len, &creds).await
        }
        Op::Truncate { size } => {
            let changes = AttrChanges {
                size: Some(size),
                ..AttrChanges::default()
            };
            fs.setattr(ino, changes, Some(fh), &creds).await.map(drop)
        }
        Op::Lseek { offset, data } => {
            let whence = if data {
                libc::SEEK_DATA
            } else {
                libc::SEEK_HOLE
            };
            fs.lseek(ino, offset, whence).await.map(drop)
        }
        Op::Copy { from, to, len } => {
            // At most a few blocks here: the FUSE frontend copies at most
            // `COPY_BYTES_MAX` per request (a short copy), and a copy of
            // holes still writes every byte.
            let len = len.min(4 * BLOCK);
            fs.copy_range(ino, from, ino, fh, to, len, &creds)
                .await
                .map(drop)
        }
    };
    result.map_err(|e| e.errno())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // A hang costs `ANSWER_WITHIN * 4` per shrink step; the panic
        // message names the input anyway.
        max_shrink_iters: 8,
        ..ProptestConfig::default()
    })]

    #[test]
    fn extreme_offsets_and_lengths_get_an_answer_or_a_clear_errno(
        size in edge(),
        ops in proptest::collection::vec(op(), 1..4),
    ) {
        let env = Env::new();
        let fs = Arc::clone(&env.fs);
        let (done, answered) = mpsc::channel();
        let shown = format!("size={size} ops={ops:?}");
        std::thread::spawn(move || {
            let outcome = block_on(async {
                let creds = Creds::root();
                let opened = fs
                    .create(ROOT_INO, b"f", 0o644.into(), libc::O_CREAT | libc::O_RDWR, &creds)
                    .await
                    .expect("create");
                let (ino, fh) = (opened.attr.ino, opened.fh);
                fs.write(ino, fh, 0, b"start", &creds).await.expect("write");
                let grow = AttrChanges {
                    size: Some(size),
                    ..AttrChanges::default()
                };
                let _ = fs.setattr(ino, grow, Some(fh), &creds).await;
                let mut errnos = Vec::new();
                for op in &ops {
                    if let Err(errno) = apply(&fs, ino, fh, op).await {
                        errnos.push((op.clone(), errno));
                    }
                }
                fs.flush(ino).await.expect("flush after hostile requests");
                let attr = fs.getattr(ino).expect("getattr");
                // Still a working file system.
                fs.write(ino, fh, 0, b"after", &creds).await.expect("write after");
                fs.flush(ino).await.expect("flush");
                let back = fs.read(ino, 0, 5).await.expect("read after");
                (errnos, attr.size, back)
            });
            let _ = done.send(outcome);
        });
        let (errnos, size_after, back) = answered
            .recv_timeout(ANSWER_WITHIN * 4)
            .unwrap_or_else(|_| panic!("no answer in time (a hang) for {shown}"));
        for (op, errno) in errnos {
            prop_assert!(ALLOWED.contains(&errno), "{op:?} failed with errno {errno}");
        }
        prop_assert!(size_after <= MAX, "size {size_after}");
        prop_assert_eq!(back, b"after".to_vec());
    }
}
