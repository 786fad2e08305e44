//! POSIX ACLs on a real `datenlord mount`, with the `acl` tools (setfacl,
//! getfacl) as root and as other users: a named user entry grants what the
//! mode denies, the mask limits it, chmod moves the mask, default ACLs are
//! inherited by new files and directories instead of the umask, ACLs
//! survive a remount, and `-o noacl` turns all of it off.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};

use support::node::{Mounted, NodeDirs};

/// A user with no entry in /etc/passwd, named by number only.
const USER_A: u32 = 52_001;
/// Another one.
const USER_B: u32 = 52_002;

/// `bash -c script` in `dir`, as root or as `uid` (its own group of the
/// same number, no supplementary groups).
fn run(dir: &Path, uid: Option<u32>, script: &str) -> Output {
    let mut cmd = match uid {
        None => Command::new("bash"),
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg("--")
                .arg("bash");
            c
        }
    };
    cmd.arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("run bash")
}

/// [`run`], which must succeed: its stdout.
fn ok(dir: &Path, uid: Option<u32>, script: &str) -> String {
    let out = run(dir, uid, script);
    assert!(
        out.status.success(),
        "as {uid:?} in {}: {script}\nstdout: {}\nstderr: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`run`], which must fail with `message` (e.g. "Permission denied") on stderr.
fn fails(dir: &Path, uid: Option<u32>, script: &str, message: &str) {
    let out = run(dir, uid, script);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(message),
        "as {uid:?}: {script} should fail with {message:?}\nstatus {}\nstderr: {stderr}",
        out.status
    );
}

/// `getfacl` of `name` without the header, numeric ids, one entry a line.
fn getfacl(dir: &Path, name: &str) -> Vec<String> {
    ok(dir, None, &format!("getfacl -cn -- {name}"))
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").mode() & 0o7777
}

fn acl_tools() -> bool {
    let found = Command::new("setfacl").arg("--version").output().is_ok();
    if !found {
        // scripts/test installs the `acl` package.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "setfacl missing: apt-get install acl"
        );
        eprintln!("skipped: setfacl/getfacl missing (apt-get install acl)");
    }
    found
}

/// What getfacl shows of `secret` once user A may read it.
fn secret_acl() -> Vec<String> {
    vec![
        "user::rw-".to_owned(),
        format!("user:{USER_A}:r--"),
        "group::---".to_owned(),
        "mask::r--".to_owned(),
        "other::---".to_owned(),
    ]
}

#[test]
fn a_named_user_the_mask_chmod_and_a_remount() {
    if !acl_tools() {
        return;
    }
    let dirs = NodeDirs::new();
    let m = Mounted::start(&dirs, &["-o", "allow_other"]);
    let root = m.path().to_owned();
    ok(
        &root,
        None,
        "umask 022; echo secret > secret; chmod 600 secret",
    );
    // The mode alone denies user A.
    fails(&root, Some(USER_A), "cat secret", "Permission denied");
    assert_eq!(
        getfacl(&root, "secret"),
        ["user::rw-", "group::---", "other::---"]
    );

    // A named entry grants it; the mask shows as the group bits.
    ok(&root, None, &format!("setfacl -m u:{USER_A}:r secret"));
    assert_eq!(getfacl(&root, "secret"), secret_acl());
    assert_eq!(mode(&root.join("secret")), 0o640);
    assert_eq!(ok(&root, Some(USER_A), "cat secret"), "secret\n");
    fails(&root, Some(USER_A), "echo x >> secret", "Permission denied");
    fails(&root, Some(USER_B), "cat secret", "Permission denied");

    // The mask restricts the named entry.
    ok(&root, None, "setfacl -m m::- secret");
    let acl = getfacl(&root, "secret");
    assert!(
        acl.contains(&format!("user:{USER_A}:r--\t#effective:---")),
        "{acl:?}"
    );
    assert_eq!(mode(&root.join("secret")), 0o600);
    fails(&root, Some(USER_A), "cat secret", "Permission denied");

    // chmod sets the mask, not the owning group's entry.
    ok(&root, None, "chmod 660 secret");
    let acl = getfacl(&root, "secret");
    assert!(acl.contains(&"mask::rw-".to_owned()), "{acl:?}");
    assert!(acl.contains(&"group::---".to_owned()), "{acl:?}");
    assert_eq!(ok(&root, Some(USER_A), "cat secret"), "secret\n");
    ok(&root, None, "chmod 600 secret");
    fails(&root, Some(USER_A), "cat secret", "Permission denied");
    ok(&root, None, "chmod 640 secret");

    // The ACL survives a remount.
    m.unmount();
    let m = Mounted::start(&dirs, &["-o", "allow_other"]);
    let root = m.path().to_owned();
    assert_eq!(getfacl(&root, "secret"), secret_acl());
    assert_eq!(ok(&root, Some(USER_A), "cat secret"), "secret\n");
    fails(&root, Some(USER_B), "cat secret", "Permission denied");
    m.unmount();
}

#[test]
fn only_owners_set_acls_and_removing_one_keeps_the_mode() {
    if !acl_tools() {
        return;
    }
    let dirs = NodeDirs::new();
    let m = Mounted::start(&dirs, &["-o", "allow_other"]);
    let root = m.path().to_owned();
    ok(&root, None, "umask 022; echo secret > secret; mkdir pub");
    // Only the owner (or root) sets ACLs; an owner who is not root may.
    fails(
        &root,
        Some(USER_A),
        &format!("setfacl -m u:{USER_A}:rw secret"),
        "Operation not permitted",
    );
    ok(
        &root,
        None,
        &format!("chown {USER_A}:{USER_A} pub; chmod 700 pub"),
    );
    ok(
        &root,
        Some(USER_A),
        &format!("echo mine > pub/own; chmod 600 pub/own; setfacl -m u:{USER_B}:r pub/own"),
    );
    fails(&root, Some(USER_B), "cat pub/own", "Permission denied"); // pub is 0700
    ok(&root, Some(USER_A), &format!("setfacl -m u:{USER_B}:x pub"));
    assert_eq!(ok(&root, Some(USER_B), "cat pub/own"), "mine\n");
    fails(&root, Some(USER_B), "ls pub", "Permission denied");

    // Removing the access ACL leaves the mode.
    ok(&root, None, "setfattr -x system.posix_acl_access pub/own");
    assert_eq!(mode(&root.join("pub/own")), 0o640);
    assert_eq!(
        getfacl(&root, "pub/own"),
        ["user::rw-", "group::r--", "other::---"]
    );
    fails(&root, Some(USER_B), "cat pub/own", "Permission denied");

    // setfacl -b keeps the base entries: an ACL that says no more than the
    // mode, which is not stored.
    ok(
        &root,
        None,
        &format!("echo b > base; chmod 640 base; setfacl -m u:{USER_A}:rw base; setfacl -b base"),
    );
    let acl = getfacl(&root, "base");
    assert_eq!(acl.len(), 3, "{acl:?}");
    fails(
        &root,
        None,
        "getfattr -n system.posix_acl_access base",
        "No such attribute",
    );
    m.unmount();
}

#[test]
fn default_acls_are_inherited_instead_of_the_umask() {
    if !acl_tools() {
        return;
    }
    let dirs = NodeDirs::new();
    let m = Mounted::start(&dirs, &["-o", "allow_other"]);
    let root = m.path().to_owned();
    ok(
        &root,
        None,
        &format!("umask 022; mkdir proj; setfacl -m u:{USER_A}:rwx proj; setfacl -d -m u:{USER_A}:rwx proj"),
    );
    let acl = getfacl(&root, "proj");
    assert!(acl.contains(&format!("user:{USER_A}:rwx")), "{acl:?}");
    assert!(
        acl.contains(&format!("default:user:{USER_A}:rwx")),
        "{acl:?}"
    );
    assert!(acl.contains(&"default:mask::rwx".to_owned()), "{acl:?}");

    // A file created with umask 077 gets the default ACL masked by the
    // mode asked for (0666), not the umask.
    ok(&root, None, "umask 077; echo one > proj/file");
    assert_eq!(mode(&root.join("proj/file")), 0o664);
    assert_eq!(
        getfacl(&root, "proj/file"),
        [
            "user::rw-".to_owned(),
            format!("user:{USER_A}:rwx\t#effective:rw-"),
            "group::r-x\t#effective:r--".to_owned(),
            "mask::rw-".to_owned(),
            "other::r--".to_owned(),
        ]
    );
    ok(&root, Some(USER_A), "echo two >> proj/file");
    assert_eq!(
        std::fs::read(root.join("proj/file")).expect("read"),
        b"one\ntwo\n"
    );

    // A directory gets it as its access and default ACL, and passes it on.
    ok(&root, None, "umask 077; mkdir proj/sub");
    assert_eq!(mode(&root.join("proj/sub")), 0o775);
    let sub = getfacl(&root, "proj/sub");
    assert!(sub.contains(&format!("user:{USER_A}:rwx")), "{sub:?}");
    assert!(
        sub.contains(&format!("default:user:{USER_A}:rwx")),
        "{sub:?}"
    );
    ok(
        &root,
        Some(USER_A),
        "umask 077; echo deep > proj/sub/deep; mkdir proj/sub/d2",
    );
    let deep = root.join("proj/sub/deep");
    assert_eq!(std::fs::metadata(&deep).expect("stat").uid(), USER_A);
    assert_eq!(mode(&deep), 0o664);
    let acl = getfacl(&root, "proj/sub/deep");
    assert!(
        acl.contains(&format!("user:{USER_A}:rwx\t#effective:rw-")),
        "{acl:?}"
    );
    let acl = getfacl(&root, "proj/sub/d2");
    assert!(
        acl.contains(&format!("default:user:{USER_A}:rwx")),
        "{acl:?}"
    );

    // Without a default ACL the umask applies.
    ok(&root, None, "umask 027; mkdir plain; echo x > plain/f");
    assert_eq!(mode(&root.join("plain")), 0o750);
    assert_eq!(mode(&root.join("plain/f")), 0o640);
    assert_eq!(
        getfacl(&root, "plain/f"),
        ["user::rw-", "group::r--", "other::---"]
    );

    // A default ACL on a file is refused.
    fails(&root, None, "setfacl -d -m u:1:r proj/file", "");
    m.unmount();
}

#[test]
fn noacl_turns_acls_off() {
    if !acl_tools() {
        return;
    }
    let dirs = NodeDirs::new();
    let m = Mounted::start(&dirs, &["-o", "allow_other"]);
    let root = m.path().to_owned();
    ok(
        &root,
        None,
        &format!(
            "umask 022; mkdir proj; setfacl -d -m u:{USER_A}:rwx proj; echo one > proj/file; \
             echo open > open; setfacl -m u:{USER_A}:-,m::r open"
        ),
    );
    assert_eq!(mode(&root.join("open")), 0o644);
    fails(&root, Some(USER_A), "cat open", "Permission denied");
    m.unmount();

    // -o noacl: the ACL attributes are not supported, the umask applies
    // (the parent's default ACL is not inherited), and the ACLs already
    // stored still hold in the metadata's checks: the kernel lets user A
    // open `open` by its mode, the metadata refuses by its ACL.
    let m = Mounted::start(&dirs, &["-o", "allow_other,noacl"]);
    let root = m.path().to_owned();
    fails(
        &root,
        None,
        "setfacl -m u:1:r proj/file",
        "Operation not supported",
    );
    fails(
        &root,
        None,
        "getfattr -n system.posix_acl_access proj/file",
        "Operation not supported",
    );
    let listed = ok(&root, None, "getfattr -d -m - proj/file");
    assert!(!listed.contains("posix_acl"), "{listed}");
    ok(
        &root,
        None,
        "umask 077; echo y > proj/noacl; mkdir proj/noacl-dir",
    );
    assert_eq!(mode(&root.join("proj/noacl")), 0o600);
    assert_eq!(mode(&root.join("proj/noacl-dir")), 0o700);
    fails(&root, Some(USER_A), "cat open", "Permission denied");
    assert_eq!(ok(&root, Some(USER_B), "cat open"), "open\n");
    m.unmount();

    // ACLs on again: nothing was inherited under noacl; what was set
    // before is there.
    let m = Mounted::start(&dirs, &["-o", "allow_other"]);
    let root = m.path().to_owned();
    assert_eq!(
        getfacl(&root, "proj/noacl"),
        ["user::rw-", "group::---", "other::---"]
    );
    assert!(getfacl(&root, "proj/file").contains(&"mask::rw-".to_owned()));
    m.unmount();
}
