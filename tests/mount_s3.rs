//! `datenlord mount` on an S3 store (a real moto server on loopback):
//! format, write back, read everything again from S3 with an empty cache,
//! and clear errors for an unformatted store, a missing bucket and wrong
//! credentials. Set DATENLORD_SKIP_S3=1 where moto cannot run.

mod support;

use std::process::Command;

use datenlord_testbed::Moto;
use support::node::{Mounted, NodeDirs};

const BUCKET: &str = "dl-mount";

/// `datenlord ARGS` with the S3 environment of `moto`.
fn datenlord_s3(moto: &Moto, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_datenlord"))
        .args(args)
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ALLOW_HTTP", "true")
        .output()
        .expect("run datenlord")
}

fn with_s3_env<T>(moto: &Moto, f: impl FnOnce() -> T) -> T {
    // The daemon inherits the environment of `datenlord mount`; the mount
    // helpers run it from this process, so set it here (tests in this
    // binary run one per process under nextest).
    std::env::set_var("AWS_ENDPOINT_URL", moto.endpoint());
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ALLOW_HTTP", "true");
    f()
}

#[test]
fn s3_store_round_trip_and_clear_errors() {
    let Some(moto) = Moto::start(BUCKET) else {
        return;
    };
    let dirs = NodeDirs::new();
    let store = format!("s3://{BUCKET}/vol1");

    // Unformatted: mount refuses and says to format.
    let out = datenlord_s3(
        &moto,
        &[
            "mount",
            &dirs.mountpoint().to_string_lossy(),
            "--data-dir",
            &dirs.data_dir().to_string_lossy(),
            "--store",
            &store,
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("datenlord format"),
        "{err}"
    );

    // A missing bucket is named as such.
    let out = datenlord_s3(&moto, &["format", "--store", "s3://no-such-bucket/x"]);
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(!out.status.success() && err.contains("bucket"), "{err}");

    let out = datenlord_s3(
        &moto,
        &["format", "--store", &store, "--block-size", "256K"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = datenlord_s3(&moto, &["format", "--store", &store]);
    assert!(
        !out.status.success(),
        "a formatted store is not formatted again"
    );

    // Endpoint, region and keys from the AWS shared files alone.
    let aws = dirs.root().join("aws");
    std::fs::create_dir_all(&aws).expect("mkdir aws");
    std::fs::write(
        aws.join("config"),
        format!(
            "[default]\nregion = us-east-1\nendpoint_url = {}\n",
            moto.endpoint()
        ),
    )
    .expect("config");
    std::fs::write(
        aws.join("credentials"),
        "[default]\naws_access_key_id = test\naws_secret_access_key = test\n",
    )
    .expect("credentials");
    let out = Command::new(env!("CARGO_BIN_EXE_datenlord"))
        .args(["format", "--store", &format!("s3://{BUCKET}/vol2")])
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", aws.join("config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", aws.join("credentials"))
        .output()
        .expect("run datenlord");
    assert!(
        out.status.success(),
        "format with the AWS shared files: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let data: Vec<u8> = (0..2_500_000u32).map(|i| (i * 31 % 251) as u8).collect();
    with_s3_env(&moto, || {
        let m = Mounted::start(&dirs, &["--store", &store]);
        std::fs::create_dir(m.path().join("d")).expect("mkdir");
        std::fs::write(m.path().join("d/f"), &data).expect("write");
        // Unmount drains the write-back journal into S3.
        m.unmount();

        std::fs::remove_dir_all(dirs.data_dir().join("cache")).expect("wipe cache");
        let m = Mounted::start(&dirs, &["--store", &store]);
        assert_eq!(
            std::fs::read(m.path().join("d/f")).expect("read back from S3"),
            data
        );
        m.unmount();
    });
}

/// Two embedded mounts of one S3 store: the second is refused and names
/// the first while the first renews its lease; after the first is killed
/// (no release), its lease expires after its time to live and the clock
/// margin, and the second takes it over and reads what the first wrote.
#[test]
fn a_killed_mounts_s3_lease_expires_and_is_taken_over() {
    let Some(moto) = Moto::start(BUCKET) else {
        return;
    };
    let store = format!("s3://{BUCKET}/leased");
    let out = datenlord_s3(&moto, &["format", "--store", &store, "--block-size", "64K"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (a, b) = (NodeDirs::new(), NodeDirs::new());
    let args = [
        "--store",
        &store,
        "--write-mode",
        "through",
        "--store-lease-ttl",
        "1",
        "--backup-interval",
        "1",
        "--gc-grace",
        "2",
    ];
    with_s3_env(&moto, || {
        let first = Mounted::start(&a, &args);
        std::fs::write(first.path().join("f"), b"written by the first mount").expect("write");
        // Renewed well past its time to live: still refused.
        std::thread::sleep(std::time::Duration::from_secs(3));
        let err = Mounted::try_start(&b.mountpoint(), &b.data_dir(), &args)
            .expect_err("a second mount of the store");
        assert!(err.contains("is in use by"), "{err}");
        assert!(err.contains(&format!("pid {}", first.pid())), "{err}");
        first.kill9();
        // Expired after 1 s and the 5 s clock margin: retried until then.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let second = loop {
            match Mounted::try_start(&b.mountpoint(), &b.data_dir(), &args) {
                Ok(m) => break m,
                Err(e) if e.contains("is in use by") => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "never taken over: {e}"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert!(
            second.log().contains("took over the store lease"),
            "{}",
            second.log()
        );
        assert_eq!(
            std::fs::read(second.path().join("f")).expect("read"),
            b"written by the first mount"
        );
        second.unmount();
    });
}
