//! End-to-end tests of the engine: real executors, a real cache file with
//! O_DIRECT IO, real child processes killed with SIGKILL.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use std::os::unix::fs::FileExt;

use datenlord_engine::layout::{Layout, SlotHeader};
use datenlord_engine::{
    BlockId, BlockSize, DiskConfig, Engine, EngineConfig, EngineHandle, Ino, MemoryStore, Request,
    Response, ShardId, ShardStats, VerifyReport,
};
use futures::executor::block_on;

const BLOCK: usize = 64 << 10;

fn config(cores: usize, memory_blocks_per_shard: u64, disk: Option<(&Path, u64)>) -> EngineConfig {
    EngineConfig {
        cores: Some(cores),
        block_size: BlockSize::new(BLOCK as u64).expect("block size"),
        memory_bytes: memory_blocks_per_shard * cores as u64 * BLOCK as u64,
        hugepages: false,
        disk: disk.map(|(path, size)| DiskConfig {
            path: path.to_path_buf(),
            size_bytes: Some(size),
        }),
        ..EngineConfig::default()
    }
}

/// Deterministic content of a block, different for every id.
fn content(id: BlockId, len: usize) -> Vec<u8> {
    let seed =
        id.ino.0.wrapping_mul(31) ^ id.index.wrapping_mul(131) ^ id.version.wrapping_mul(1031);
    (0..len)
        .map(|i| (seed.wrapping_add(i as u64 * 7) % 251) as u8)
        .collect()
}

fn store_with(ids: &[BlockId]) -> Arc<MemoryStore> {
    let store = MemoryStore::new();
    for &id in ids {
        store.put(id, content(id, BLOCK));
    }
    store
}

fn read_all(handle: &EngineHandle, id: BlockId) -> Vec<u8> {
    let (buf, n) =
        block_on(handle.read(id, 0, BLOCK as u32, Vec::with_capacity(BLOCK))).expect("read");
    assert_eq!(n, buf.len());
    buf
}

fn totals(handle: &EngineHandle) -> ShardStats {
    ShardStats::sum(&block_on(handle.stats()).expect("stats"))
}

fn blocks(ino: u64, n: u64) -> Vec<BlockId> {
    (0..n).map(|i| BlockId::new(ino, i, 1)).collect()
}

/// Waits until the engine's background NVMe writes reach `n`.
fn wait_disk_writes(handle: &EngineHandle, n: u64) {
    for _ in 0..2000 {
        if totals(handle).disk_writes >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("NVMe writes never reached {n}: {:?}", totals(handle));
}

#[test]
fn reads_come_from_the_source_then_from_memory() {
    let ids = blocks(1, 8);
    let store = store_with(&ids);
    let engine = Engine::start(&config(1, 16, None), store.clone()).expect("start");
    let handle = engine.handle();
    // Not in file order, so no stream is detected and nothing prefetched.
    let order = [3, 0, 6, 1, 7, 4, 2, 5];
    for _pass in 0..2 {
        for i in order {
            assert_eq!(read_all(&handle, ids[i]), content(ids[i], BLOCK));
        }
    }
    let s = totals(&handle);
    assert_eq!(store.fetches(), 8);
    assert_eq!(
        (s.reads, s.memory_hits, s.source_fetches, s.prefetch_issued),
        (16, 8, 8, 0),
        "{s:?}"
    );
    engine.shutdown().expect("shutdown");
}

#[test]
fn partial_reads_and_file_tails() {
    let tail = BlockId::new(2, 5, 3);
    let store = MemoryStore::new();
    store.put(tail, content(tail, 1000));
    let engine = Engine::start(&config(1, 4, None), store.clone()).expect("start");
    let handle = engine.handle();
    let (buf, n) = block_on(handle.read(tail, 500, 4096, Vec::new())).expect("read");
    assert_eq!(n, 500);
    assert_eq!(buf, content(tail, 1000)[500..]);
    let (_, n) = block_on(handle.read(tail, 2000, 4096, Vec::new())).expect("read past tail");
    assert_eq!(n, 0);
    let err =
        block_on(handle.read(tail, BLOCK as u32 - 10, 4096, Vec::new())).expect_err("past block");
    assert!(err.to_string().contains("goes past"), "{err}");
    let missing =
        block_on(handle.read(BlockId::new(9, 9, 9), 0, 10, Vec::new())).expect_err("missing");
    assert!(missing.to_string().contains("not found"), "{missing}");
    engine.shutdown().expect("shutdown");
}

#[test]
fn cross_shard_routing_on_two_executors() {
    let ids = blocks(3, 16);
    let store = store_with(&ids);
    let engine = Engine::start(&config(2, 16, None), store.clone()).expect("start");
    let handle = engine.handle();
    // Submit every block to every shard as the front: half of them are owned
    // by the other shard and must be forwarded over the mesh.
    for front in [ShardId(0), ShardId(1)] {
        for &id in &ids {
            let request = Request::Read {
                id,
                offset: 100,
                len: 1000,
                buf: Vec::new(),
            };
            match block_on(handle.submit(front, request)).expect("submit") {
                Response::Read { buf, len } => {
                    assert_eq!(len, 1000);
                    assert_eq!(buf, content(id, BLOCK)[100..1100]);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let per_shard = block_on(handle.stats()).expect("stats");
    let owned: Vec<u64> = (0..2)
        .map(|s| {
            ids.iter()
                .filter(|id| id.key().owner(2) == ShardId(s))
                .count() as u64
        })
        .collect();
    assert!(
        owned[0] > 0 && owned[1] > 0,
        "both shards own blocks: {owned:?}"
    );
    for s in 0..2 {
        // Every block is read twice (once per front) on its owner...
        assert_eq!(per_shard[s].reads, 2 * owned[s], "{per_shard:?}");
        // ...and each front forwarded the blocks the other shard owns.
        assert_eq!(per_shard[s].forwarded, owned[1 - s], "{per_shard:?}");
    }
    assert_eq!(store.fetches(), 16);
    engine.shutdown().expect("shutdown");
}

#[test]
fn concurrent_misses_make_one_fetch() {
    let id = BlockId::new(4, 0, 1);
    let store = store_with(&[id]);
    store.set_delay(Duration::from_millis(100));
    let engine = Engine::start(&config(2, 4, None), store.clone()).expect("start");
    let handle = engine.handle();
    let reads = (0..100).map(|i| {
        let front = ShardId(i % 2);
        handle.submit(
            front,
            Request::Read {
                id,
                offset: 0,
                len: BLOCK as u32,
                buf: Vec::new(),
            },
        )
    });
    let results = block_on(futures::future::join_all(reads));
    for r in results {
        match r.expect("read") {
            Response::Read { buf, .. } => assert_eq!(buf, content(id, BLOCK)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(store.fetches(), 1, "100 concurrent misses, one fetch");
    let s = totals(&handle);
    assert_eq!(s.fetch_joins, 99, "{s:?}");
    engine.shutdown().expect("shutdown");
}

#[test]
fn source_errors_reach_the_reader_and_nothing_is_cached() {
    let id = BlockId::new(5, 0, 1);
    let store = store_with(&[id]);
    store.set_failing(true);
    let engine = Engine::start(&config(1, 4, None), store.clone()).expect("start");
    let handle = engine.handle();
    let err = block_on(handle.read(id, 0, 10, Vec::new())).expect_err("outage");
    assert!(err.to_string().contains("injected outage"), "{err}");
    store.set_failing(false);
    assert_eq!(read_all(&handle, id), content(id, BLOCK));
    assert_eq!(totals(&handle).source_errors, 1);
    engine.shutdown().expect("shutdown");
}

#[test]
fn memory_evictions_demote_to_nvme_and_hits_come_back() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let ids = blocks(6, 24);
    let store = store_with(&ids);
    let engine =
        Engine::start(&config(1, 4, Some((dir.path(), 8 << 20))), store.clone()).expect("start");
    let handle = engine.handle();
    for &id in &ids {
        assert_eq!(read_all(&handle, id), content(id, BLOCK));
    }
    // 24 blocks through 4 memory slots: fetched blocks beyond memory go to
    // NVMe directly or by demotion; wait for those writes to land.
    let s = totals(&handle);
    assert!(s.memory_evictions + s.admissions_rejected > 0, "{s:?}");
    wait_disk_writes(&handle, 20);
    let before = store.fetches();
    for &id in &ids {
        assert_eq!(read_all(&handle, id), content(id, BLOCK));
    }
    let s = totals(&handle);
    assert_eq!(
        store.fetches(),
        before,
        "every block served by memory or NVMe: {s:?}"
    );
    assert!(s.disk_hits >= 20, "{s:?}");
    // Every block is held once or in both tiers; each counts once.
    let per_file = block_on(handle.blocks_per_file()).expect("per file");
    assert_eq!(
        per_file.into_iter().collect::<Vec<_>>(),
        [(Ino(6), 24)],
        "{s:?}"
    );
    engine.shutdown().expect("shutdown");
}

#[test]
fn a_long_scan_does_not_flush_the_hot_set() {
    // Four small hot files, read over and over while one pass over a file
    // 25 times larger than the memory tier streams through.
    let hot: Vec<BlockId> = (0..4).map(|ino| BlockId::new(100 + ino, 0, 1)).collect();
    let scan = blocks(8, 200);
    let all: Vec<_> = hot.iter().chain(&scan).copied().collect();
    let store = store_with(&all);
    let engine = Engine::start(&config(1, 8, None), store.clone()).expect("start");
    let handle = engine.handle();
    for _ in 0..4 {
        for &id in &hot {
            read_all(&handle, id);
        }
    }
    let mut hot_reads = 0;
    let before = totals(&handle);
    for chunk in scan.chunks(8) {
        for &id in chunk {
            assert_eq!(read_all(&handle, id), content(id, BLOCK));
        }
        for &id in &hot {
            assert_eq!(read_all(&handle, id), content(id, BLOCK));
            hot_reads += 1;
        }
    }
    let after = totals(&handle);
    let scan_memory_hits = after.memory_hits - before.memory_hits - hot_reads;
    assert!(
        after.memory_hits - before.memory_hits >= hot_reads,
        "every hot read during the scan hit memory: {after:?}"
    );
    assert!(
        scan_memory_hits < 50,
        "the scan did not take over the memory tier: {after:?}"
    );
    assert!(after.admissions_rejected > 0, "{after:?}");
    assert_eq!(
        store.fetches(),
        204,
        "every block fetched once, prefetched or not"
    );
    engine.shutdown().expect("shutdown");
}

#[test]
fn sequential_reads_prefetch_and_random_reads_do_not() {
    let seq = blocks(9, 64);
    let random = blocks(10, 64);
    let all: Vec<_> = seq.iter().chain(&random).copied().collect();
    let store = store_with(&all);
    store.set_delay(Duration::from_millis(2));
    let engine = Engine::start(&config(2, 256, None), store.clone()).expect("start");
    let handle = engine.handle();
    for &id in &seq {
        // Several small reads inside each block, like 128 KiB kernel reads.
        for part in 0..4u32 {
            let (buf, n) =
                block_on(handle.read(id, part * 16384, 16384, Vec::new())).expect("read");
            assert_eq!(
                buf[..n],
                content(id, BLOCK)[part as usize * 16384..][..16384]
            );
        }
    }
    let s = totals(&handle);
    assert!(s.prefetch_issued >= 32, "{s:?}");
    assert!(s.prefetch_hits >= 16, "{s:?}");
    assert!(store.fetches() <= 64, "no block fetched twice");
    let issued = s.prefetch_issued;
    for i in [17u64, 3, 40, 9, 55, 30, 1, 62, 20, 47] {
        read_all(&handle, random[i as usize]);
    }
    assert_eq!(
        totals(&handle).prefetch_issued,
        issued,
        "random reads prefetch nothing"
    );
    engine.shutdown().expect("shutdown");
}

#[test]
fn inserted_blocks_are_served_and_survive_a_clean_restart() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let ids = blocks(11, 12);
    let empty = MemoryStore::new();
    let cfg = config(2, 0, Some((dir.path(), 8 << 20)));
    let engine = Engine::start(&cfg, empty.clone()).expect("start");
    let handle = engine.handle();
    for &id in &ids {
        block_on(handle.insert(id, content(id, BLOCK - 7))).expect("insert");
    }
    // Shut down at once: the in-flight NVMe writes must be drained.
    engine.shutdown().expect("shutdown");
    let engine = Engine::start(&cfg, empty.clone()).expect("restart");
    let handle = engine.handle();
    for &id in &ids {
        let (buf, n) = block_on(handle.read(id, 0, BLOCK as u32, Vec::new())).expect("warm read");
        assert_eq!(n, BLOCK - 7);
        assert_eq!(buf, content(id, BLOCK - 7));
    }
    assert_eq!(empty.fetches(), 0, "served from the warm NVMe tier");
    assert_eq!(totals(&handle).disk_hits, 12);
    engine.shutdown().expect("shutdown");
}

/// A one-shard engine with no memory tier and an 8 MiB NVMe tier in
/// `dir`, over a store of 6 blocks of inode `ino`, which it has read and
/// written to the NVMe tier.
fn nvme_only(dir: &Path, ino: u64) -> (Vec<BlockId>, Arc<MemoryStore>, EngineConfig, Engine) {
    let ids = blocks(ino, 6);
    let store = store_with(&ids);
    let cfg = config(1, 0, Some((dir, 8 << 20)));
    let engine = Engine::start(&cfg, store.clone()).expect("start");
    let handle = engine.handle();
    for &id in &ids {
        read_all(&handle, id);
    }
    wait_disk_writes(&handle, 6);
    (ids, store, cfg, engine)
}

#[test]
fn corrupt_slots_are_dropped_and_refetched_never_served() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (ids, store, cfg, engine) = nvme_only(dir.path(), 12);
    engine.shutdown().expect("shutdown");

    // Flip one byte in the data of every slot.
    let file = dir.path().join("datenlord-cache.bin");
    let report = datenlord_engine::inspect::inspect(dir.path(), true).expect("inspect");
    assert_eq!(report.regions[0].blocks, 6);
    assert_eq!(report.regions[0].corrupt, 0);
    let sb = report.superblock;
    let mut bytes = std::fs::read(&file).expect("read cache file");
    for slot in 0..6u64 {
        let data =
            4096 + slot * (u64::from(sb.header_bytes) + BLOCK as u64) + u64::from(sb.header_bytes);
        bytes[(data + 12345) as usize] ^= 0x40;
    }
    std::fs::write(&file, &bytes).expect("write cache file");
    assert_eq!(
        datenlord_engine::inspect::inspect(dir.path(), true)
            .expect("inspect")
            .regions[0]
            .corrupt,
        6
    );

    let engine = Engine::start(&cfg, store.clone()).expect("restart");
    let handle = engine.handle();
    let before = store.fetches();
    for &id in &ids {
        assert_eq!(
            read_all(&handle, id),
            content(id, BLOCK),
            "never serve corrupt data"
        );
    }
    let s = totals(&handle);
    assert_eq!(s.checksum_failures, 6, "{s:?}");
    assert_eq!(store.fetches() - before, 6, "refetched from the source");
    // A 4 KiB read of an untouched chunk of a re-written slot is fine too.
    wait_disk_writes(&handle, 6);
    let (buf, _) = block_on(handle.read(ids[0], 4096, 4096, Vec::new())).expect("read");
    assert_eq!(buf, content(ids[0], BLOCK)[4096..8192]);
    engine.shutdown().expect("shutdown");
}

#[test]
fn a_changed_layout_starts_cold_instead_of_misreading() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let ids = blocks(13, 4);
    let store = store_with(&ids);
    let engine =
        Engine::start(&config(1, 0, Some((dir.path(), 8 << 20))), store.clone()).expect("start");
    for &id in &ids {
        read_all(&engine.handle(), id);
    }
    wait_disk_writes(&engine.handle(), 4);
    engine.shutdown().expect("shutdown");
    // Two cores now: ownership and regions differ, so the cache is reset.
    let engine =
        Engine::start(&config(2, 0, Some((dir.path(), 8 << 20))), store.clone()).expect("restart");
    let before = store.fetches();
    for &id in &ids {
        assert_eq!(read_all(&engine.handle(), id), content(id, BLOCK));
    }
    assert_eq!(store.fetches() - before, 4);
    engine.shutdown().expect("shutdown");
}

#[test]
fn hot_nvme_blocks_are_promoted_to_memory() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (a, b, c) = (
        BlockId::new(15, 0, 1),
        BlockId::new(16, 0, 1),
        BlockId::new(17, 0, 1),
    );
    let store = store_with(&[a, b, c]);
    let engine =
        Engine::start(&config(1, 2, Some((dir.path(), 8 << 20))), store.clone()).expect("start");
    let handle = engine.handle();
    read_all(&handle, a);
    read_all(&handle, b);
    // Memory is full of equally cold blocks: C is not admitted there and
    // lands on NVMe.
    read_all(&handle, c);
    wait_disk_writes(&handle, 1);
    let s = totals(&handle);
    assert_eq!((s.admissions_rejected, s.memory_evictions), (1, 0), "{s:?}");
    // Two more reads of a 4 KiB piece make C hot: it is promoted in the
    // background, evicting (and demoting) the colder A.
    // (Reads of one block in quick succession are one access, as when the
    // kernel splits a read: space them out.)
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(30));
        let (buf, _) = block_on(handle.read(c, 8192, 4096, Vec::new())).expect("read");
        assert_eq!(buf, content(c, BLOCK)[8192..12288]);
    }
    for _ in 0..2000 {
        if totals(&handle).promotions == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = totals(&handle);
    assert_eq!((before.promotions, before.demotions), (1, 1), "{before:?}");
    assert_eq!(read_all(&handle, c), content(c, BLOCK));
    let after = totals(&handle);
    assert_eq!(
        after.memory_hits - before.memory_hits,
        1,
        "C now served from memory: {after:?}"
    );
    wait_disk_writes(&handle, 2);
    assert_eq!(read_all(&handle, a), content(a, BLOCK));
    assert_eq!(
        totals(&handle).disk_hits - after.disk_hits,
        1,
        "A was demoted to NVMe"
    );
    assert_eq!(store.fetches(), 3);
    engine.shutdown().expect("shutdown");
}

#[test]
fn a_stopped_stream_cancels_its_queued_prefetches() {
    let file = blocks(18, 200);
    let store = store_with(&file);
    store.set_delay(Duration::from_millis(30));
    let engine = Engine::start(&config(1, 256, None), store.clone()).expect("start");
    let handle = engine.handle();
    // Sequential reads grow the window to 32 blocks while at most 16
    // prefetches run at once: the rest wait in the queue...
    for &id in &file[..8] {
        read_all(&handle, id);
    }
    // ...until a random jump stops the stream.
    read_all(&handle, file[150]);
    let s = totals(&handle);
    assert!(s.prefetch_cancelled > 0, "{s:?}");
    assert!(
        store.fetches() < 100,
        "cancelled prefetches are not fetched: {}",
        store.fetches()
    );
    engine.shutdown().expect("shutdown");
}

#[test]
fn a_raw_block_device_serves_as_the_nvme_tier() {
    // A loop device stands in for an NVMe namespace (needs root, as in CI).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let device_guard =
        datenlord_testbed::LoopDevice::attach(&dir.path().join("nvme.img"), 16 << 20);
    let device = device_guard.path().to_path_buf();
    let ids = blocks(19, 10);
    let store = store_with(&ids);
    let cfg = EngineConfig {
        disk: Some(DiskConfig {
            path: device.clone(),
            size_bytes: None,
        }),
        ..config(2, 0, None)
    };
    let engine = Engine::start(&cfg, store.clone()).expect("start on a block device");
    let total_slots: u64 = engine
        .plan()
        .disk
        .as_ref()
        .map_or(0, |(_, l)| u64::from(l.slots_per_shard) * 2);
    assert!(
        total_slots >= 200,
        "the whole 16 MiB device is used: {total_slots} slots"
    );
    for &id in &ids {
        read_all(&engine.handle(), id);
    }
    wait_disk_writes(&engine.handle(), 10);
    engine.shutdown().expect("shutdown");
    let empty = MemoryStore::new();
    let engine = Engine::start(&cfg, empty.clone()).expect("restart");
    for &id in &ids {
        assert_eq!(read_all(&engine.handle(), id), content(id, BLOCK));
    }
    assert_eq!(empty.fetches(), 0, "warm from the device");
    engine.shutdown().expect("shutdown");
    drop(device_guard);
}

// ----- bad configuration ---------------------------------------------

#[test]
fn bad_configurations_fail_with_clear_errors() {
    let store = MemoryStore::new();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let check = |cfg: EngineConfig, needle: &str| {
        let err = Engine::start(&cfg, store.clone())
            .expect_err("must fail")
            .to_string();
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    };
    check(config(1024, 1, None), "or fewer");
    check(config(1, 0, Some((dir.path(), 128 << 10))), "--cache-size");
    check(
        config(1, 0, Some((&dir.path().join("nope"), 8 << 20))),
        "create the directory",
    );
    let mut cfg = config(1, 0, None);
    cfg.memory_bytes = 1000;
    check(cfg, "--memory-size");
}

#[test]
fn a_cache_dir_without_o_direct_is_refused() {
    // ramfs has no O_DIRECT; mounting it needs root (CI and scripts/test run as root).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let status = Command::new("mount")
        .args(["-t", "ramfs", "ramfs"])
        .arg(dir.path())
        .status()
        .expect("run mount");
    assert!(
        status.success(),
        "mounting ramfs needs root: run the tests as root (scripts/test does)"
    );
    let result = Engine::start(
        &config(1, 0, Some((dir.path(), 8 << 20))),
        MemoryStore::new(),
    );
    let _ = Command::new("umount").arg(dir.path()).status();
    let err = result.expect_err("no O_DIRECT").to_string();
    assert!(err.contains("O_DIRECT") && err.contains("ext4"), "{err}");
}

// ----- child processes -------------------------------------------------

const CHILD_ENV: &str = "DATENLORD_ENGINE_TEST_CHILD";

/// Runs `child_process_entry` of this test binary in a new process.
fn spawn_child(role: &str, dir: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_process_entry",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, role)
        .env("CHILD_DIR", dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn child")
}

#[test]
#[ignore = "entry point of the child processes started by other tests; runs only when they spawn it"]
fn child_process_entry() {
    let Ok(role) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(std::env::var("CHILD_DIR").expect("CHILD_DIR"));
    match role.as_str() {
        "fill-then-hang" => {
            let ids = blocks(14, 20);
            let store = store_with(&ids);
            let engine = Engine::start(&config(2, 0, Some((&dir, 8 << 20))), store).expect("start");
            let handle = engine.handle();
            for &id in &ids {
                read_all(&handle, id);
            }
            wait_disk_writes(&handle, 20);
            println!("FILLED");
            // Keep reading until killed, so SIGKILL lands mid-work.
            loop {
                for &id in &ids {
                    read_all(&handle, id);
                }
            }
        }
        "memlock" => {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: reading and lowering this process's own soft limit.
            assert_eq!(
                unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &raw mut lim) },
                0
            );
            lim.rlim_cur = 256 << 10;
            assert_eq!(
                unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const lim) },
                0
            );
            let err =
                Engine::start(&config(2, 1, None), MemoryStore::new()).expect_err("limit too low");
            println!("ERROR: {err}");
        }
        other => panic!("unknown child role {other}"),
    }
}

#[test]
fn warm_restart_after_kill_9() {
    use std::io::BufRead;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let mut child = spawn_child("fill-then-hang", dir.path());
    let stdout = child.stdout.take().expect("stdout");
    let filled = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("FILLED"));
    assert!(filled, "child did not fill its cache");
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");

    // The blocks exist nowhere but in the killed process's NVMe tier.
    let empty = MemoryStore::new();
    let engine =
        Engine::start(&config(2, 0, Some((dir.path(), 8 << 20))), empty.clone()).expect("restart");
    let handle = engine.handle();
    for id in blocks(14, 20) {
        assert_eq!(read_all(&handle, id), content(id, BLOCK));
    }
    assert_eq!(empty.fetches(), 0);
    assert_eq!(totals(&handle).disk_hits, 20);
    engine.shutdown().expect("shutdown");
}

#[test]
fn too_low_memlock_names_the_limit() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let output = spawn_child("memlock", dir.path())
        .wait_with_output()
        .expect("child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("RLIMIT_MEMLOCK") && stdout.contains("ulimit -l"),
        "{stdout}"
    );
}

#[test]
fn memory_hits_are_served_on_the_callers_thread_and_still_drive_prefetch() {
    let ids = blocks(21, 24);
    let store = store_with(&ids);
    let engine = Engine::start(&config(2, 32, None), store.clone()).expect("start");
    let handle = engine.handle();
    let mut dst = vec![0u8; 4096];
    assert_eq!(
        handle.read_cached(ids[0], 0, &mut dst),
        None,
        "not cached yet"
    );
    // Cache blocks 0..6 through the shards, out of order (no stream).
    for i in [5, 2, 0, 4, 1, 3] {
        read_all(&handle, ids[i]);
    }
    let before = totals(&handle);
    assert_eq!(before.view_hits, 0);
    for (i, &id) in ids.iter().enumerate().take(6) {
        let want = content(id, BLOCK);
        let offset = (i * 4096 + 100) as u32;
        assert_eq!(handle.read_cached(id, offset, &mut dst), Some(4096));
        assert_eq!(dst, want[offset as usize..offset as usize + 4096]);
    }
    // Clipped at the block's end.
    let tail = (BLOCK - 10) as u32;
    assert_eq!(handle.read_cached(ids[1], tail, &mut dst), Some(10));
    let after = totals(&handle);
    assert_eq!(after.view_hits, 7);
    assert_eq!(after.memory_hits - before.memory_hits, 7);
    assert_eq!(after.reads - before.reads, 7);
    assert_eq!(after.read_bytes - before.read_bytes, 6 * 4096 + 10);
    // Sequential reads from each block's first byte, served by the view,
    // are reported to the front: the stream prefetches blocks past 6.
    for &id in ids.iter().take(6) {
        assert!(handle.read_cached(id, 0, &mut dst).is_some());
    }
    let fetched = store.fetches();
    for _ in 0..400 {
        if store.fetches() > fetched || totals(&handle).prefetch_issued > before.prefetch_issued {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        totals(&handle).prefetch_issued > before.prefetch_issued,
        "hits through the view must still detect the stream: {:?}",
        totals(&handle)
    );
    engine.shutdown().expect("shutdown");
    assert_eq!(
        handle.read_cached(ids[0], 0, &mut dst),
        None,
        "engine stopped"
    );
}

/// A block's bytes in `store`, as a source answers.
fn stored(store: &MemoryStore, id: BlockId) -> Result<Vec<u8>, datenlord_engine::SourceError> {
    store
        .get(id)
        .map(|d| d.to_vec())
        .ok_or(datenlord_engine::SourceError::NotFound)
}

/// A source in front of a [`MemoryStore`] that, like the neighbor tier,
/// forwards local misses to "another node" (here: a fetch held until the
/// test opens a gate) and serves peers' requests from the store.
struct Forwarding {
    store: Arc<MemoryStore>,
    gate: flume::Receiver<()>,
    for_peer: Arc<std::sync::atomic::AtomicU64>,
}

impl datenlord_engine::BlockSource for Forwarding {
    fn fetch(&self, id: BlockId) -> datenlord_engine::source::SourceFuture {
        let (store, gate) = (Arc::clone(&self.store), self.gate.clone());
        Box::pin(async move {
            let _ = gate.recv_async().await;
            stored(&store, id)
        })
    }

    fn fetch_for_peer(&self, id: BlockId) -> datenlord_engine::source::SourceFuture {
        self.for_peer
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let store = Arc::clone(&self.store);
        Box::pin(async move { stored(&store, id) })
    }

    fn forwards(&self, _id: BlockId) -> bool {
        true
    }
}

struct ForwardingFactory {
    store: Arc<MemoryStore>,
    gate: flume::Receiver<()>,
    for_peer: Arc<std::sync::atomic::AtomicU64>,
}

impl datenlord_engine::SourceFactory for ForwardingFactory {
    fn source(&self, _shard: ShardId) -> std::rc::Rc<dyn datenlord_engine::BlockSource> {
        std::rc::Rc::new(Forwarding {
            store: Arc::clone(&self.store),
            gate: self.gate.clone(),
            for_peer: Arc::clone(&self.for_peer),
        })
    }
    fn resolver(&self, shard: ShardId) -> std::rc::Rc<dyn datenlord_engine::VersionResolver> {
        datenlord_engine::SourceFactory::resolver(&self.store, shard)
    }
}

#[test]
fn a_peer_read_never_waits_on_a_fetch_that_asks_another_node() {
    let id = BlockId::new(7, 0, 1);
    let store = store_with(&[id]);
    let (open, gate) = flume::unbounded();
    let for_peer = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let factory = ForwardingFactory {
        store: Arc::clone(&store),
        gate,
        for_peer: Arc::clone(&for_peer),
    };
    let engine = Engine::start(&config(2, 4, None), factory).expect("start");
    let handle = engine.handle();
    // A local read misses and its fetch waits on "the other node".
    let local = std::thread::spawn({
        let handle = handle.clone();
        move || read_all(&handle, id)
    });
    std::thread::sleep(Duration::from_millis(100));
    assert!(!local.is_finished(), "the local fetch is held at the gate");
    // Were a peer's read to join the held fetch, it would wait for this
    // (and would never reach `fetch_for_peer`).
    let opener = std::thread::spawn({
        let open = open.clone();
        move || {
            std::thread::sleep(Duration::from_secs(3));
            let _ = open.send(());
        }
    });
    // A peer's request is served from below meanwhile, from either shard.
    let peer_reads = block_on(handle.run_on_all(move |ctx| async move {
        ctx.read_for_peer(id, 0, BLOCK as u32, Vec::new())
            .await
            .map(|(buf, _)| buf)
    }))
    .expect("run");
    for buf in peer_reads {
        assert_eq!(buf.expect("peer read"), content(id, BLOCK));
    }
    assert!(!local.is_finished(), "the local fetch is still held");
    assert!(for_peer.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    // The held local read completes once released.
    open.send(()).expect("gate");
    assert_eq!(local.join().expect("local read"), content(id, BLOCK));
    opener.join().expect("opener");
    assert_eq!(read_all(&handle, id), content(id, BLOCK));
    engine.shutdown().expect("shutdown");
}

/// A source that serves byte ranges (as the neighbor tier does), counting.
struct Ranges {
    store: Arc<MemoryStore>,
    ranges: Arc<std::sync::atomic::AtomicU64>,
}

impl Ranges {
    /// A source over `store` and its count of range fetches.
    fn over(store: &Arc<MemoryStore>) -> (Self, Arc<std::sync::atomic::AtomicU64>) {
        let ranges = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let source = Self {
            store: Arc::clone(store),
            ranges: Arc::clone(&ranges),
        };
        (source, ranges)
    }
}

impl datenlord_engine::BlockSource for Ranges {
    fn fetch(&self, id: BlockId) -> datenlord_engine::source::SourceFuture {
        let store = Arc::clone(&self.store);
        Box::pin(async move { stored(&store, id) })
    }

    fn fetch_range(
        &self,
        id: BlockId,
        offset: u32,
        len: u32,
    ) -> Option<datenlord_engine::source::SourceFuture> {
        self.ranges
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let store = Arc::clone(&self.store);
        Some(Box::pin(async move {
            let block = store
                .get(id)
                .ok_or(datenlord_engine::SourceError::NotFound)?;
            let start = (offset as usize).min(block.len());
            let end = (start + len as usize).min(block.len());
            Ok(block[start..end].to_vec())
        }))
    }
}

impl datenlord_engine::SourceFactory for Ranges {
    fn source(&self, _shard: ShardId) -> std::rc::Rc<dyn datenlord_engine::BlockSource> {
        std::rc::Rc::new(Ranges {
            store: Arc::clone(&self.store),
            ranges: Arc::clone(&self.ranges),
        })
    }
    fn resolver(&self, shard: ShardId) -> std::rc::Rc<dyn datenlord_engine::VersionResolver> {
        datenlord_engine::SourceFactory::resolver(&self.store, shard)
    }
}

#[test]
fn a_small_random_read_of_a_block_the_cache_will_not_keep_fetches_only_its_bytes() {
    // One block per inode: no stream to detect.
    let ids: Vec<BlockId> = (0..8).map(|i| BlockId::new(100 + i, 0, 1)).collect();
    let store = store_with(&ids);
    let (factory, ranges) = Ranges::over(&store);
    let engine = Engine::start(&config(1, 4, None), factory).expect("start");
    let handle = engine.handle();
    // Four whole reads fill the memory tier (room for four).
    for &id in &ids[..4] {
        assert_eq!(read_all(&handle, id), content(id, BLOCK));
    }
    assert_eq!(ranges.load(std::sync::atomic::Ordering::Relaxed), 0);
    // A 4 KiB read of a cold block admission would not let in: only its bytes.
    let cold = ids[5];
    let (buf, n) = block_on(handle.read(cold, 8192, 4096, Vec::new())).expect("read");
    assert_eq!(&buf[..n], &content(cold, BLOCK)[8192..8192 + 4096]);
    let s = totals(&handle);
    assert_eq!(s.source_range_fetches, 1, "{s:?}");
    assert_eq!(s.source_fetches, 4, "no whole fetch for it: {s:?}");
    // A whole read of it fetches the block.
    assert_eq!(read_all(&handle, cold), content(cold, BLOCK));
    assert_eq!(totals(&handle).source_fetches, 5);
    engine.shutdown().expect("shutdown");
}

#[test]
fn a_small_random_read_of_a_block_the_cache_keeps_gets_its_bytes_first_then_the_block() {
    let ids: Vec<BlockId> = (0..2).map(|i| BlockId::new(200 + i, 0, 1)).collect();
    let store = store_with(&ids);
    let (factory, ranges) = Ranges::over(&store);
    let engine = Engine::start(&config(1, 4, None), factory).expect("start");
    let handle = engine.handle();
    // Room in memory: the reader gets its 4 KiB from a range fetch; the
    // first small reads of a block move only their bytes, the one that
    // makes RANGE_THEN_BLOCK_ACCESSES has the whole block follow in the
    // background.
    let id = ids[0];
    let (buf, n) = block_on(handle.read(id, 4096, 4096, Vec::new())).expect("read");
    assert_eq!(&buf[..n], &content(id, BLOCK)[4096..8192]);
    assert_eq!(ranges.load(std::sync::atomic::Ordering::Relaxed), 1);
    let latency = totals(&handle).latency;
    assert_eq!(latency.source.count, 1, "the read is timed as the source's");
    assert!(latency.source.sum_ns > 0);
    let small_reads = u64::from(datenlord_engine::shard::RANGE_THEN_BLOCK_ACCESSES);
    for i in 1..small_reads {
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(
            totals(&handle).source_fetches,
            0,
            "{i} small reads: no whole fetch"
        );
        let offset = 4096 * (i as u32 + 1);
        let (buf, n) = block_on(handle.read(id, offset, 4096, Vec::new())).expect("read");
        let at = offset as usize;
        assert_eq!(&buf[..n], &content(id, BLOCK)[at..at + 4096]);
    }
    assert_eq!(
        ranges.load(std::sync::atomic::Ordering::Relaxed),
        small_reads
    );
    let mut cached = false;
    for _ in 0..500 {
        if totals(&handle).source_fetches == 1 {
            cached = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(cached, "the whole block was fetched: {:?}", totals(&handle));
    // Then reads of it are memory hits: no further fetch of any kind.
    assert_eq!(read_all(&handle, id), content(id, BLOCK));
    let s = totals(&handle);
    assert!(s.memory_hits >= 1, "{s:?}");
    assert_eq!(s.source_fetches, 1, "{s:?}");
    assert_eq!(
        ranges.load(std::sync::atomic::Ordering::Relaxed),
        small_reads
    );
    engine.shutdown().expect("shutdown");
}

/// Ranges at once; whole blocks only once a gate opens.
struct GatedWhole {
    store: Arc<MemoryStore>,
    gate: flume::Receiver<()>,
}

impl datenlord_engine::BlockSource for GatedWhole {
    fn fetch(&self, id: BlockId) -> datenlord_engine::source::SourceFuture {
        let (store, gate) = (Arc::clone(&self.store), self.gate.clone());
        Box::pin(async move {
            let _ = gate.recv_async().await;
            stored(&store, id)
        })
    }

    fn fetch_range(
        &self,
        id: BlockId,
        offset: u32,
        len: u32,
    ) -> Option<datenlord_engine::source::SourceFuture> {
        let store = Arc::clone(&self.store);
        Some(Box::pin(async move {
            let block = stored(&store, id)?;
            Ok(block[offset as usize..(offset + len) as usize].to_vec())
        }))
    }
}

impl datenlord_engine::SourceFactory for GatedWhole {
    fn source(&self, _shard: ShardId) -> std::rc::Rc<dyn datenlord_engine::BlockSource> {
        std::rc::Rc::new(GatedWhole {
            store: Arc::clone(&self.store),
            gate: self.gate.clone(),
        })
    }
    fn resolver(&self, shard: ShardId) -> std::rc::Rc<dyn datenlord_engine::VersionResolver> {
        datenlord_engine::SourceFactory::resolver(&self.store, shard)
    }
}

#[test]
fn a_small_random_read_does_not_wait_for_its_blocks_whole_fetch_in_flight() {
    let id = BlockId::new(300, 0, 1);
    let store = store_with(&[id]);
    let (open, gate) = flume::unbounded();
    let factory = GatedWhole {
        store: Arc::clone(&store),
        gate,
    };
    let engine = Engine::start(&config(1, 4, None), factory).expect("start");
    let handle = engine.handle();
    // A whole read: its fetch waits at the gate.
    let whole = {
        let handle = handle.clone();
        std::thread::spawn(move || read_all(&handle, id))
    };
    for _ in 0..500 {
        if totals(&handle).memory_misses >= 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // A 4 KiB read of the same block meanwhile: its bytes by a range.
    let (tx, rx) = flume::bounded(1);
    {
        let handle = handle.clone();
        std::thread::spawn(move || {
            let _ = tx.send(block_on(handle.read(id, 8192, 4096, Vec::new())));
        });
    }
    let small = rx.recv_timeout(Duration::from_secs(20));
    let whole_done_early = whole.is_finished();
    // Open the gate before judging, so that a failure does not hang.
    open.send(()).expect("open");
    let (buf, n) = small
        .expect("the small read waited for the whole fetch")
        .expect("read");
    assert_eq!(&buf[..n], &content(id, BLOCK)[8192..12288]);
    assert!(!whole_done_early, "the whole fetch was still at the gate");
    assert_eq!(totals(&handle).source_range_fetches, 1);
    assert_eq!(whole.join().expect("whole read"), content(id, BLOCK));
    engine.shutdown().expect("shutdown");
}

#[test]
fn a_check_of_cached_blocks_drops_copies_that_differ_from_the_source_and_keeps_the_rest() {
    let ids = blocks(40, 8);
    let store = store_with(&ids);
    let engine = Engine::start(&config(1, 16, None), store.clone()).expect("start");
    let handle = engine.handle();
    for &id in &ids {
        read_all(&handle, id);
    }
    // A written block the store does not hold (not uploaded yet).
    let written = BlockId::new(40, 99, 1);
    block_on(handle.insert(written, content(written, 100))).expect("insert");
    // The store's copies of two blocks change under the cache.
    for &id in &ids[..2] {
        store.put(id, content(BlockId::new(1, 1, 1), BLOCK));
    }
    let checked = block_on(handle.verify_cached()).expect("verify");
    let sum = checked
        .into_iter()
        .fold(VerifyReport::default(), |mut a, r| {
            a += r;
            a
        });
    assert_eq!(
        sum,
        VerifyReport {
            blocks: 9,
            bytes: 8 * BLOCK as u64 + 100,
            matched: 6,
            mismatched: 2,
            absent: 1,
            ..VerifyReport::default()
        }
    );
    // The dropped blocks come from the store again; the others from memory.
    let before = store.fetches();
    assert_eq!(
        read_all(&handle, ids[0]),
        content(BlockId::new(1, 1, 1), BLOCK)
    );
    assert_eq!(read_all(&handle, ids[2]), content(ids[2], BLOCK));
    assert_eq!(store.fetches() - before, 1);
    // A source that cannot answer drops nothing (ids[1] is not cached
    // again yet).
    store.set_failing(true);
    let sum = block_on(handle.verify_cached()).expect("verify")[0];
    assert_eq!((sum.blocks, sum.unchecked, sum.dropped()), (8, 8, 0));
    assert_eq!(totals(&handle).memory_blocks_held, 8);
    engine.shutdown().expect("shutdown");
}

#[test]
fn a_check_of_nvme_blocks_drops_corrupt_and_differing_copies_for_good() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (ids, store, cfg, engine) = nvme_only(dir.path(), 41);
    let handle = engine.handle();
    // Corrupt the data of slot 5 on the device; change the store's copy of
    // another block.
    let file = dir.path().join("datenlord-cache.bin");
    let layout = Layout::new(8 << 20, cfg.block_size, 1).expect("layout");
    let sb = datenlord_engine::inspect::inspect(dir.path(), false)
        .expect("inspect")
        .superblock;
    let mut header = vec![0u8; layout.header_bytes as usize];
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file)
        .expect("open cache file");
    device
        .read_exact_at(&mut header, layout.slot_offset(0, 5))
        .expect("read header");
    let corrupted = SlotHeader::decode(&header, &layout, sb.epoch)
        .expect("slot 5 holds a block")
        .block_id();
    device
        .write_all_at(&[0x5a; 16], layout.data_offset(0, 5) + 100)
        .expect("corrupt");
    device.sync_all().expect("sync");
    let changed = *ids.iter().find(|&&id| id != corrupted).expect("another");
    store.put(changed, content(BlockId::new(2, 2, 2), BLOCK));

    let sum = block_on(handle.verify_cached()).expect("verify")[0];
    assert_eq!((sum.blocks, sum.matched), (6, 4), "{sum:?}");
    assert_eq!((sum.corrupt, sum.mismatched), (1, 1), "{sum:?}");
    engine.shutdown().expect("shutdown");
    // Neither comes back after a restart; both are read from the store.
    assert_eq!(
        datenlord_engine::inspect::inspect(dir.path(), true)
            .expect("inspect")
            .regions[0],
        datenlord_engine::inspect::RegionReport {
            blocks: 4,
            bytes: 4 * BLOCK as u64,
            corrupt: 0
        }
    );
    let engine = Engine::start(&cfg, store.clone()).expect("restart");
    let handle = engine.handle();
    let before = store.fetches();
    assert_eq!(
        read_all(&handle, changed),
        content(BlockId::new(2, 2, 2), BLOCK)
    );
    assert_eq!(read_all(&handle, corrupted), content(corrupted, BLOCK));
    assert_eq!(store.fetches() - before, 2);
    engine.shutdown().expect("shutdown");
}
