//! Allocated-zero extents (`fallocate` mode 0 and `FALLOC_FL_ZERO_RANGE`).

use super::*;
use crate::meta::ROOT_INO;

use libc::ENOSPC;

fn zero(fs: &mut Fs, ino: Ino, first: u64, last: u64, replace: bool) -> Result<Outcome, i32> {
    let now = fs.now();
    fs.apply(Command::ZeroBlocks {
        ino,
        first,
        last,
        replace,
        creds: root(),
        now,
    })
    .map_err(|e| e.errno())
}

fn grow(fs: &mut Fs, ino: Ino, size: u64) {
    let cmd = fs.setattr_cmd(
        ino,
        AttrChanges {
            size: Some(size),
            ..AttrChanges::default()
        },
        &root(),
    );
    fs.ok(cmd);
}

fn allocated_blocks(fs: &Fs, ino: Ino) -> u64 {
    fs.state.getattr(ino).expect("attr").allocated_bytes / u64::from(BLOCK_BYTES)
}

const B: u64 = BLOCK_BYTES as u64;

#[test]
fn mode_0_allocates_the_holes_and_keeps_the_data() {
    let mut fs = Fs::new();
    let f = fs.file(ROOT_INO, "f", 0o644, &root());
    fs.set_blocks(f, &[(2, 5), (3, 5)], 10 * B, &root());
    zero(&mut fs, f, 0, 9, false).expect("allocate");
    assert_eq!(allocated_blocks(&fs, f), 10);
    assert_eq!(fs.state.block_version(f, 2), Some(5), "data stays");
    assert_eq!(
        fs.state.statfs().expect("statfs").blocks_free,
        (1 << 30) / B - 10
    );
    assert_eq!(fs.state.data_from(f, 0).expect("data"), Some(0));
    assert_eq!(fs.state.hole_from(f, 0).expect("hole"), 10);
    // Again: nothing new; past the end: nothing at all.
    zero(&mut fs, f, 0, 9, false).expect("allocate again");
    zero(&mut fs, f, 10, 1 << 40, false).expect("past the end");
    assert_eq!(allocated_blocks(&fs, f), 10);
}

#[test]
fn zero_range_replaces_blocks_by_one_extent() {
    let mut fs = Fs::new();
    let f = fs.file(ROOT_INO, "f", 0o644, &root());
    fs.set_blocks(f, &[(0, 5), (1, 5), (4, 5)], 6 * B, &root());
    let out = zero(&mut fs, f, 1, 4, true).expect("zero range");
    let mut garbage: Vec<u64> = out.garbage.iter().map(|r| r.index).collect();
    garbage.sort_unstable();
    assert_eq!(garbage, vec![1, 4], "the replaced versions are garbage");
    assert_eq!(fs.state.block_version(f, 1), None);
    assert_eq!(allocated_blocks(&fs, f), 5, "block 0 and the extent 1..=4");
    assert_eq!(fs.state.hole_from(f, 0).expect("hole"), 5);
    assert_eq!(fs.state.data_from(f, 5).expect("data"), None);

    // A write into the extent splits it; the block stays counted once.
    fs.set_blocks(f, &[(2, 9)], 6 * B, &root());
    assert_eq!(allocated_blocks(&fs, f), 5);
    // A punch and a truncation cut it.
    let now = fs.now();
    fs.ok(Command::RemoveBlocks {
        ino: f,
        first: 3,
        last: 3,
        creds: root(),
        now,
    });
    assert_eq!(allocated_blocks(&fs, f), 4);
    assert_eq!(fs.state.hole_from(f, 0).expect("hole"), 3);
    assert_eq!(fs.state.data_from(f, 3).expect("data"), Some(4));
    grow(&mut fs, f, 2 * B);
    assert_eq!(allocated_blocks(&fs, f), 2);
    // Unlink frees everything.
    let cmd = fs.unlink_cmd(ROOT_INO, "f", &root());
    fs.ok(cmd);
    assert_eq!(
        fs.state.statfs().expect("statfs").blocks_free,
        (1 << 30) / B
    );
    assert!(fs.state.zeros.is_empty());
}

#[test]
fn a_huge_range_is_bounded_and_refused_past_the_capacity() {
    let mut fs = Fs::new();
    let f = fs.file(ROOT_INO, "f", 0o644, &root());
    grow(&mut fs, f, i64::MAX as u64 - 64 * 1024);
    // 2^51 blocks do not fit in 1 GiB: ENOSPC, nothing changed.
    assert_eq!(zero(&mut fs, f, 0, u64::MAX, true).err(), Some(ENOSPC));
    assert_eq!(zero(&mut fs, f, 0, u64::MAX, false).err(), Some(ENOSPC));
    assert_eq!(allocated_blocks(&fs, f), 0);
    // What fits is one extent, however many blocks.
    let blocks = (1 << 30) / B;
    zero(&mut fs, f, 1000, 1000 + blocks - 1, true).expect("the whole capacity");
    assert_eq!(allocated_blocks(&fs, f), blocks);
    assert_eq!(fs.state.zeros_of(f).map(|z| z.ranges.len()), Some(1));
    assert_eq!(zero(&mut fs, f, 0, 0, false).err(), Some(ENOSPC));
    let restored = MetaState::restore(&fs.state.snapshot()).expect("restore");
    assert!(restored == fs.state, "extents survive a snapshot");
}
