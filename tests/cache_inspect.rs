//! `datenlord cache inspect` on a cache written by a real engine: it lists
//! the blocks, `--verify` exits 1 when a block is corrupt, and a directory
//! without a cache is a clear error.

use std::process::Command;
use std::time::Duration;

use datenlord_engine::{
    BlockId, BlockSize, DiskConfig, Engine, EngineConfig, MemoryStore, ShardStats,
};
use futures::executor::block_on;

const BLOCK: usize = 64 << 10;

fn inspect(dir: &std::path::Path, verify: bool) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_datenlord"));
    cmd.args(["cache", "inspect", "--cache-dir"]).arg(dir);
    if verify {
        cmd.arg("--verify");
    }
    let out = cmd.output().expect("run datenlord");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn inspect_lists_blocks_and_verify_finds_corruption() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let ids: Vec<BlockId> = (0..5).map(|i| BlockId::new(1, i, 1)).collect();
    let store = MemoryStore::new();
    for &id in &ids {
        store.put(id, vec![id.index as u8; BLOCK]);
    }
    let config = EngineConfig {
        cores: Some(1),
        block_size: BlockSize::new(BLOCK as u64).expect("block size"),
        memory_bytes: 0,
        hugepages: false,
        disk: Some(DiskConfig {
            path: dir.path().to_path_buf(),
            size_bytes: Some(8 << 20),
        }),
        ..EngineConfig::default()
    };
    let engine = Engine::start(&config, store).expect("engine");
    let handle = engine.handle();
    // Out of order: no stream, so exactly these blocks are fetched.
    for i in [3usize, 0, 4, 1, 2] {
        block_on(handle.read(ids[i], 0, 4096, Vec::new())).expect("read");
    }
    for _ in 0..2000 {
        let stats = block_on(handle.stats()).expect("stats");
        if ShardStats::sum(&stats).disk_writes >= 5 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    engine.shutdown().expect("shutdown");

    let (code, out, err) = inspect(dir.path(), true);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("shard 0: 5 blocks") && out.contains("0 corrupt"),
        "{out}"
    );

    let file = dir.path().join("datenlord-cache.bin");
    let mut bytes = std::fs::read(&file).expect("read cache");
    // First slot's data starts after the superblock and its header page.
    bytes[4096 + 4096 + 100] ^= 0xff;
    std::fs::write(&file, &bytes).expect("write cache");
    let (code, out, _) = inspect(dir.path(), true);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("1 corrupt"), "{out}");

    let empty = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = inspect(empty.path(), false);
    assert_eq!(code, 2);
    assert!(err.contains("error:"), "{err}");
}
