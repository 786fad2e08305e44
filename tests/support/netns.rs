//! Network namespaces joined by veth pairs to a bridge, made and always
//! torn down by `scripts/netns`: every node of a multi-node test in its own
//! namespace, as on separate machines, and links that can be cut.

use std::process::Command;

/// A bridge here and `nodes` namespaces on it.
#[derive(Debug)]
pub struct Netns {
    name: String,
    subnet: String,
}

fn script(args: &[&str]) {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/netns"))
        .args(args)
        .output()
        .expect("run scripts/netns");
    assert!(
        out.status.success(),
        "scripts/netns {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// Makes the bridge and the namespaces (named after this process, so
    /// tests running at once do not meet).
    pub fn up(nodes: usize) -> Self {
        let pid = std::process::id();
        let name = format!("dl{}", pid % 100_000);
        let subnet = format!("10.{}.{}", 80 + (pid / 250) % 100, pid % 250);
        script(&["down", &name]);
        let net = Self { name, subnet };
        script(&["up", &net.name, &net.subnet, &nodes.to_string()]);
        net
    }

    /// The bridge's address (this namespace): where masters listen.
    pub fn host_ip(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// Node `i`'s address (1-based).
    pub fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 10 + i)
    }

    /// Node `i`'s namespace, for `nsenter --net=`.
    pub fn path(&self, i: usize) -> String {
        format!("/run/netns/{}-{i}", self.name)
    }

    /// Takes node `i`'s link down: it reaches nobody, nobody reaches it.
    pub fn cut(&self, i: usize) {
        script(&["cut", &self.name, &i.to_string()]);
    }

    /// Brings node `i`'s link back.
    pub fn heal(&self, i: usize) {
        script(&["heal", &self.name, &i.to_string()]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        script(&["down", &self.name]);
    }
}
