//! The S3 gateway (`datenlord mount … --s3-listen`), end to end: a real
//! mount serving its namespace over S3 to boto3 (`tests/s3/gateway.py`:
//! buckets, PUT/GET/HEAD/DELETE, ranges, listings with pages and
//! delimiters, the errors clients expect, SigV4 and presigned URLs), each
//! change checked on the FUSE mount of the same process and the other way
//! round.

mod support;

use std::os::unix::fs::PermissionsExt as _;

use support::masters::free_addr;
use support::node::{Mounted, NodeDirs};

const ACCESS: &str = "gateway-test-key";
const SECRET: &str = "gateway-test-secret";

/// A mount serving S3 on a free address as `ACCESS`, with `env` too.
fn mount_with_gateway(dirs: &NodeDirs, env: &[(&str, &str)]) -> (Mounted, String) {
    let addr = free_addr();
    let mut all = vec![
        ("DATENLORD_S3_ACCESS_KEY", ACCESS),
        ("DATENLORD_S3_SECRET_KEY", SECRET),
    ];
    all.extend_from_slice(env);
    let mount = Mounted::start_env(dirs, &["--s3-listen", &addr], &all);
    (mount, addr)
}

/// Runs boto3 script `tests/s3/NAME` against the gateway at `addr` over
/// `mount`; fails the test with its output and the daemon's log.
fn run_script(name: &str, addr: &str, mount: &Mounted) {
    run_python(
        name,
        addr,
        &mount.path().display().to_string(),
        &[],
        &mount.log(),
    );
}

/// Runs boto3 script `tests/s3/NAME ENDPOINT MOUNTPOINT ACCESS SECRET
/// EXTRA…`; `log` goes into the failure message.
fn run_python(name: &str, addr: &str, mountpoint: &str, extra: &[&str], log: &str) {
    let script = format!("{}/tests/s3/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(format!("http://{addr}"))
        .arg(mountpoint)
        .args([ACCESS, SECRET])
        .args(extra)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}\n{}\nlog:\n{log}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

/// `datenlord gateway` on `data_dir`, its log in `log`, once it listens.
fn gateway(addr: &str, data_dir: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    let stderr = std::fs::File::create(log).expect("log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_datenlord"))
        .args(["gateway", "--listen", addr, "--", "--data-dir"])
        .arg(data_dir)
        .env("DATENLORD_S3_ACCESS_KEY", ACCESS)
        .env("DATENLORD_S3_SECRET_KEY", SECRET)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("datenlord gateway");
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the gateway does not listen:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child
}

/// SIGTERM to `child`: its exit status.
fn terminate(mut child: std::process::Child) -> std::process::ExitStatus {
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: a plain kill of our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    child.wait().expect("wait")
}

/// `datenlord gateway` serves the embedded namespace without a mount: a
/// mount of its data directory is refused while it runs, it stops on
/// SIGTERM, and what it stored is there after a restart.
#[test]
fn datenlord_gateway_serves_without_a_mount_and_keeps_objects_across_restarts() {
    let dirs = NodeDirs::new();
    let addr = free_addr();
    let log = dirs.root().join("gateway.log");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let first = gateway(&addr, &dirs.data_dir(), &log);
    run_python("restart.py", &addr, "-", &["put"], &read_log());
    let refused = Mounted::try_start(&dirs.mountpoint(), &dirs.data_dir(), &[])
        .expect_err("a mount of the gateway's data directory");
    assert!(
        refused.contains("in use by a datenlord gateway"),
        "{refused}"
    );
    let status = terminate(first);
    assert!(status.success(), "{status}\n{}", read_log());
    assert!(read_log().contains("stopped"), "{}", read_log());
    let second = gateway(&addr, &dirs.data_dir(), &log);
    run_python("restart.py", &addr, "-", &["check"], &read_log());
    assert!(terminate(second).success(), "{}", read_log());
}

#[test]
fn boto3_reads_and_writes_the_namespace_through_the_gateway() {
    let dirs = NodeDirs::new();
    let (mount, addr) = mount_with_gateway(&dirs, &[]);
    run_script("gateway.py", &addr, &mount);
    mount.unmount();
}

/// Requests act as the access key's uid/gid: fs checks the permissions.
#[test]
fn the_gateway_checks_permissions_as_the_keys_user() {
    let dirs = NodeDirs::new();
    let (mount, addr) = mount_with_gateway(&dirs, &[("DATENLORD_S3_IDS", "65534:65534")]);
    let mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    std::fs::create_dir(mount.path().join("closed")).expect("mkdir closed");
    mode(&mount.path().join("closed"), 0o755);
    std::fs::create_dir(mount.path().join("open")).expect("mkdir open");
    mode(&mount.path().join("open"), 0o777);
    std::fs::write(mount.path().join("open/secret"), b"root only").expect("write secret");
    mode(&mount.path().join("open/secret"), 0o600);
    mode(mount.path(), 0o755);
    run_script("permissions.py", &addr, &mount);
    mount.unmount();
}

/// Several users from `--s3-credentials`: each acts as its uid and sees
/// and uses only the buckets it is bound to.
#[test]
fn users_from_a_credentials_file_are_bound_to_their_buckets() {
    let dirs = NodeDirs::new();
    let credentials = dirs.root().join("credentials.toml");
    std::fs::write(
        &credentials,
        format!(
            "[[user]]\naccess_key = \"{ACCESS}\"\nsecret_key = \"{SECRET}\"\nuid = 0\ngid = 0\n\n\
             [[user]]\naccess_key = \"bound\"\nsecret_key = \"bound-secret\"\nuid = 65534\ngid = 65534\nbuckets = [\"open\"]\n"
        ),
    )
    .expect("credentials");
    std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let addr = free_addr();
    let path = credentials.display().to_string();
    let mount = Mounted::start(&dirs, &["--s3-listen", &addr, "--s3-credentials", &path]);
    for bucket in ["open", "closed"] {
        let dir = mount.path().join(bucket);
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    run_script("users.py", &addr, &mount);
    mount.unmount();
}

#[test]
fn the_gateway_needs_an_access_key() {
    let dirs = NodeDirs::new();
    let addr = free_addr();
    let err = Mounted::try_start(
        &dirs.mountpoint(),
        &dirs.data_dir(),
        &["--s3-listen", &addr],
    )
    .expect_err("no access key");
    assert!(err.contains("DATENLORD_S3_ACCESS_KEY"), "{err}");
}
