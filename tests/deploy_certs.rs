//! deploy/certs.sh with the real `datenlord certs` and kubectl's offline
//! `--dry-run=client` output: every Kubernetes node gets a certificate
//! with an id of its own, which `datenlord mount --node-id cert` takes;
//! ids and keys stay the same across runs, a new node gets the next id,
//! and the Secrets hold what the manifests read.

use std::path::Path;
use std::process::{Command, Output};

use datenlord_cluster::link::Security;
use datenlord_cluster::tls::Role;

fn certs_sh(ca: &Path, out: &Path, nodes: &str) -> Output {
    Command::new("sh")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/certs.sh"))
        .args([
            "--ca",
            &ca.to_string_lossy(),
            "--out",
            &out.to_string_lossy(),
        ])
        .args(["--nodes", nodes])
        .env("DATENLORD_BIN", env!("CARGO_BIN_EXE_datenlord"))
        .output()
        .expect("run deploy/certs.sh")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "deploy/certs.sh: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The role and id of the certificate issued as `name`.
fn identity(ca: &Path, name: &str) -> (Role, Option<u64>) {
    let security =
        Security::from_dir(Some(&ca.join("issued").join(name))).expect("a TLS directory");
    let who = security.identity().expect("TLS");
    (who.role, who.id)
}

fn table(ca: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(ca.join("node-ids"))
        .expect("node-ids")
        .lines()
        .map(|line| {
            let (name, id) = line.split_once(' ').expect("NAME ID");
            (name.to_string(), id.parse().expect("an id"))
        })
        .collect()
}

#[test]
fn every_node_gets_its_own_id_and_keeps_it() {
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        // scripts/test installs kubectl (scripts/check-deploy) first.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "kubectl is missing: run scripts/check-deploy once, it installs it"
        );
        eprintln!("skipped: no kubectl (scripts/check-deploy installs it)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, out) = (dir.path().join("ca"), dir.path().join("secrets"));
    let said = ok(&certs_sh(&ca, &out, "node-a node-b"));
    assert!(said.contains("node node-a: id 101 (new)"), "{said}");
    assert_eq!(
        table(&ca),
        [("node-a".to_string(), 101), ("node-b".to_string(), 102)]
    );
    let key_b = std::fs::read(ca.join("issued/node-b/key.pem")).expect("key");

    // Again, with a node that joined: the others keep id and key.
    let said = ok(&certs_sh(&ca, &out, "node-b node-c.example node-a"));
    assert!(
        !said.contains("node-a: id") && said.contains("node node-c.example: id 103 (new)"),
        "{said}"
    );
    assert_eq!(
        table(&ca),
        [
            ("node-a".to_string(), 101),
            ("node-b".to_string(), 102),
            ("node-c.example".to_string(), 103)
        ]
    );
    assert_eq!(
        std::fs::read(ca.join("issued/node-b/key.pem")).expect("key"),
        key_b
    );

    // Each certificate carries its id: what `--node-id cert` takes.
    for (name, id) in table(&ca) {
        assert_eq!(identity(&ca, &name), (Role::Node, Some(id)), "{name}");
    }
    for m in 1..=3 {
        assert_eq!(identity(&ca, &format!("m{m}")), (Role::Master, Some(m)));
    }
    assert_eq!(identity(&ca, "csi-controller"), (Role::Node, Some(100)));
    assert_eq!(identity(&ca, "scheduler-extender"), (Role::Admin, None));

    // The Secrets hold the keys the manifests read.
    let secret = |name: &str| {
        std::fs::read_to_string(out.join(format!("{name}.yaml")))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let nodes = secret("datenlord-node-tls");
    for key in [
        "ca.pem:",
        "node-ids:",
        "node-a.cert.pem:",
        "node-a.key.pem:",
        "node-c.example.cert.pem:",
        "namespace: datenlord",
    ] {
        assert!(nodes.contains(key), "{key} in\n{nodes}");
    }
    let masters = secret("datenlord-master-tls");
    for key in ["m1.cert.pem:", "m2.key.pem:", "m3.cert.pem:", "ca.pem:"] {
        assert!(masters.contains(key), "{key}");
    }
    for name in [
        "datenlord-csi-controller-tls",
        "datenlord-scheduler-extender-tls",
    ] {
        let text = secret(name);
        assert!(
            text.contains("cert.pem:") && text.contains("key.pem:"),
            "{name}"
        );
    }

    // Not a node name: refused, nothing issued for it.
    let out = certs_sh(&ca, &out, "Bad_Name");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a Kubernetes node name"));
    assert!(!ca.join("issued/Bad_Name").exists());
}
