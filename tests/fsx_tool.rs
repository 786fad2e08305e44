//! The fsx-style checker itself: two local directories agree, and a
//! difference between them is found and reported with its seed.

mod support;

use support::fsx::{run, FsxConfig};

#[test]
fn local_directories_agree() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    let config = FsxConfig {
        ops: 3_000,
        ..FsxConfig::default()
    };
    run(&config, a.path(), b.path()).expect("two local directories behave alike");
}

#[test]
fn a_difference_is_reported_with_its_seed() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    let config = FsxConfig {
        ops: 200,
        seed: 7,
        corrupt_writes_from: Some(150),
        ..FsxConfig::default()
    };
    let err = run(&config, a.path(), b.path()).expect_err("flipped bytes must be found");
    assert!(err.contains("seed 7"), "{err}");
}
