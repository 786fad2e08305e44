//! Real servers for tests: a moto S3 server (PyPI `moto[server]`, installed
//! by `scripts/test` or `scripts/s3-server`) on a free loopback port,
//! restartable on the same port, killed when dropped; and a loop device
//! standing in for an NVMe namespace (root), detached when dropped.

pub mod lazyfs;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting server may take to answer.
const START_TIMEOUT_S: u64 = 30;

/// A moto S3 server, killed on drop.
#[derive(Debug)]
pub struct Moto {
    child: Option<Child>,
    port: u16,
    /// The address it listens on.
    host: String,
    /// The network namespace it runs in (`/run/netns/NAME`), if not this one.
    netns: Option<String>,
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl Moto {
    /// A server on a free port with `bucket`, or `None` when
    /// DATENLORD_SKIP_S3 is set (machines where moto cannot run).
    pub fn start(bucket: &str) -> Option<Self> {
        Self::start_in(None, "127.0.0.1", bucket)
    }

    /// A server in the network namespace `netns` (a `/run/netns/NAME`
    /// path; `None`: this one) listening on `host`, which this namespace
    /// reaches (a bridge), or `None` as [`Self::start`].
    pub fn start_in(netns: Option<&str>, host: &str, bucket: &str) -> Option<Self> {
        if std::env::var_os("DATENLORD_SKIP_S3").is_some() {
            eprintln!("DATENLORD_SKIP_S3 is set: skipping an S3 test");
            return None;
        }
        let mut moto = Self {
            child: None,
            port: free_port(),
            host: host.to_string(),
            netns: netns.map(str::to_string),
        };
        moto.restart(bucket);
        Some(moto)
    }

    /// (Re)starts the server on its port (moto keeps data in memory: a
    /// restarted server is empty) and creates `bucket`.
    pub fn restart(&mut self, bucket: &str) {
        self.stop();
        let mut command = match &self.netns {
            Some(netns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={netns}")).arg("moto_server");
                c
            }
            None => Command::new("moto_server"),
        };
        let child = command
            .args(["-H", &self.host, "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start moto_server ({e}): run scripts/s3-server once (it installs moto[server] with pip), or set DATENLORD_SKIP_S3=1 to skip the S3 tests"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(START_TIMEOUT_S);
        while TcpStream::connect((self.host.as_str(), self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.create_bucket(bucket);
    }

    /// Stops the server (its data is gone).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://HOST:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    /// Creates a bucket with a raw path-style PUT.
    pub fn create_bucket(&self, bucket: &str) {
        let response = self.raw(&format!("PUT /{bucket}"), "Content-Length: 0\r\n");
        assert!(
            response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
            "{response}"
        );
    }

    /// The keys under `prefix` in `bucket` (one ListObjectsV2 page: up to
    /// 1000), with a raw path-style GET.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let response = self.raw(&format!("GET /{bucket}?list-type=2&prefix={prefix}"), "");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response
            .split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</Key>").map(|(key, _)| key.to_string()))
            .collect()
    }

    /// One HTTP/1.1 request (`METHOD /PATH`, extra header lines) and the
    /// whole response.
    fn raw(&self, request: &str, headers: &str) -> String {
        let mut stream = TcpStream::connect((self.host.as_str(), self.port)).expect("connect");
        write!(
            stream,
            "{request} HTTP/1.1\r\nHost: {}:{}\r\n{headers}Connection: close\r\n\r\n",
            self.host, self.port
        )
        .expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response");
        response
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loop device over a sparse file, as it would be an NVMe namespace
/// (needs root, as in CI); detached when dropped.
#[derive(Debug)]
pub struct LoopDevice {
    path: std::path::PathBuf,
}

impl LoopDevice {
    /// Attaches a device of `bytes` over `backing` (created), with direct
    /// IO so O_DIRECT reads reach the file.
    pub fn attach(backing: &std::path::Path, bytes: u64) -> Self {
        std::fs::File::create(backing)
            .and_then(|f| f.set_len(bytes))
            .expect("backing file");
        let out = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(backing)
            .output()
            .expect("run losetup");
        assert!(
            out.status.success(),
            "losetup needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            path: String::from_utf8_lossy(&out.stdout).trim().into(),
        }
    }

    /// The device's path (`/dev/loopN`).
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}
