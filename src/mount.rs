//! `datenlord mount`: one node with embedded defaults — a single-node
//! metadata group, the block engine, the remote store with its write-back
//! journal, and the FUSE mount — started in dependency order and stopped in
//! reverse, flushing everything on the way down. With `--masters`,
//! `--node-id` and `--node-listen` the node joins a master group instead
//! of running its own metadata (a learner copy, `datenlord_cluster::node`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use tracing::{info, warn};

use datenlord_cluster::link::{check_listen, Security};
use datenlord_cluster::master::Master;
use datenlord_cluster::neighbor::DataLink;
use datenlord_cluster::node::{Node, NodeConfig};
use datenlord_engine::block::{parse_bytes, BlockSize};
use datenlord_engine::config::{DiskConfig, EngineConfig};
use datenlord_engine::store::{
    ControlPlane, RemoteStore, StoreLease, StoreUrl, VolumeDescriptor, WriteBack, WriteBackConfig,
    WriteMode, LEASE_TTL_MS_DEFAULT, STORE_FORMAT_VERSION,
};
use datenlord_engine::BlockId;
use datenlord_fs::MetaLink;
use futures::executor::block_on;

use crate::daemon::{self, Ready, Role};
use crate::neighbors::{NeighborPlan, Neighbors};

/// How long a clean stop waits for the write-back backlog to reach the store.
const DRAIN_TIMEOUT_S: u64 = 60;
/// Journal capacity when the cache disk is not sized (`--cache-size`).
const JOURNAL_CAPACITY_DEFAULT_BYTES: u64 = 4 << 30;
/// How often the metadata is backed up to the store while mounted, by default.
const META_BACKUP_INTERVAL_DEFAULT_S: u64 = 60;
/// How long a stopping node waits for calls in flight through a metadata
/// link (links hold the node weakly; a call holds it while it runs).
const NODE_RELEASE_WAIT_MS: u64 = 5_000;
/// `-o passthrough`: read-only opens (counted at close) before a file gets
/// a local copy: the second open of a file is when it is read again.
const COPY_AFTER_OPENS: u32 = 2;

/// `datenlord mount` arguments.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// Where to mount (an existing, empty directory).
    pub mountpoint: PathBuf,
    /// The node's state: metadata log and snapshots, the default store
    /// (`store/`), cache and journal. Default: /var/lib/datenlord for root,
    /// else $XDG_DATA_HOME/datenlord (~/.local/share/datenlord).
    #[arg(long = "data-dir")]
    pub data_dir: Option<PathBuf>,
    /// The remote store: `file:///abs/dir` or `s3://bucket/prefix` (S3
    /// endpoint and credentials from the AWS_* environment variables, else
    /// from ~/.aws/credentials and ~/.aws/config).
    /// Default: file://<data-dir>/store, formatted on first use.
    #[arg(long)]
    pub store: Option<String>,
    /// Directory of the NVMe cache file, the write-back journal and
    /// passthrough copies. Default: <data-dir>/cache.
    #[arg(long = "cache-dir")]
    pub cache_dir: Option<PathBuf>,
    /// A raw block device (e.g. /dev/nvme0n1) as the NVMe tier instead of
    /// a file in --cache-dir. Refused when mounted, or when it holds a file
    /// system or partition table unless --force-device.
    #[arg(long = "cache-device", value_name = "DEVICE")]
    pub cache_device: Option<PathBuf>,
    /// Use --cache-device even though it holds a file system or a
    /// partition table (it is overwritten).
    #[arg(long = "force-device", requires = "cache_device")]
    pub force_device: bool,
    /// Directory of the write-back journal. Default: <cache-dir>/journal.
    #[arg(long = "journal-dir")]
    pub journal_dir: Option<PathBuf>,
    /// Size of the NVMe tier (e.g. 10G); 0 disables it. Default: 1G for a
    /// cache file, the whole --cache-device.
    #[arg(long = "cache-size")]
    pub cache_size: Option<String>,
    /// Size of the memory tier summed over cores (e.g. 512M).
    #[arg(long = "memory-size", default_value = "256M")]
    pub memory_size: String,
    /// With `-o passthrough`: room for local copies of files read again
    /// and again (whole files in the cache directory, read by the kernel
    /// without the daemon); one copy gets at most half.
    #[arg(long = "passthrough-size", default_value = "1G")]
    pub passthrough_size: String,
    /// Cores (executors and FUSE request loops); default: every CPU allowed.
    #[arg(long)]
    pub cores: Option<usize>,
    /// Block size when this mount formats a new volume (64K..16M).
    #[arg(long = "block-size", default_value = "1M")]
    pub block_size: String,
    /// `back`: fsync returns once data is durable in the local journal,
    /// close once it is visible (see --commit-interval); `through`: close
    /// and fsync return once it is in the store.
    #[arg(long = "write-mode", default_value = "back")]
    pub write_mode: String,
    /// Milliseconds between group commits (embedded mount, write mode
    /// back): a close publishes the file's writes at once (this mount
    /// reads them) and they are durable, journal first then the metadata
    /// log, within this interval; fsync, fdatasync, fsync of a directory
    /// and `datenlord sync` still return once durable. A crash loses at
    /// most the files closed in the last interval, each then at its old
    /// content. 0: every close waits for its commit. A node of a master
    /// group always commits at close.
    #[arg(long = "commit-interval", value_name = "MS", default_value_t = datenlord_fs::COMMIT_INTERVAL_MS_DEFAULT)]
    pub commit_interval_ms: u64,
    /// Mount options, fstab style: ro, allow_other, direct_io,
    /// relatime|noatime|strictatime, writeback_cache, attr_timeout=SECS,
    /// entry_timeout=SECS, negative_timeout=SECS (kernel caching: 24 h each
    /// for the embedded metadata, whose only writer is this mount; 1 s for a
    /// node of a master group), uring|no_uring (FUSE over io_uring: by default when
    /// /sys/module/fuse/parameters/enable_uring is Y), idle_poll=MICROS (spin
    /// idle CPUs at SCHED_IDLE that long after each request: faster
    /// single-threaded metadata on VMs whose idle vCPUs halt at once; uses
    /// otherwise idle CPU time, counted in a container's quota; off by default),
    /// passthrough (files opened read-only twice get a local copy in the
    /// cache directory that the kernel reads directly: FUSE passthrough,
    /// needs root; not with direct_io or writeback_cache), acl|noacl (POSIX
    /// ACLs, on by default: setfacl/getfacl, default ACLs inherited on
    /// create; noacl: the ACL attributes are not supported and the umask
    /// is applied as without ACLs), fsname=NAME and subtype=NAME (what
    /// findmnt and df -T show: the source, and the type fuse.SUBTYPE,
    /// fuse.datenlord by default), no_allow_other.
    #[arg(short = 'o', value_delimiter = ',')]
    pub options: Vec<String>,
    /// Stay in the foreground (logs to stderr).
    #[arg(long)]
    pub foreground: bool,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9100).
    #[arg(long = "metrics-addr")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Also serve the namespace over the S3 API on this address (buckets:
    /// the top-level directories), through this mount's cache. Access key:
    /// DATENLORD_S3_ACCESS_KEY and DATENLORD_S3_SECRET_KEY (requests act
    /// as DATENLORD_S3_IDS=UID:GID, default 0:0).
    #[arg(long = "s3-listen", value_name = "HOST:PORT")]
    pub s3_listen: Option<String>,
    /// The S3 gateway's users instead of the environment's one: a TOML
    /// file of `[[user]]` tables (access_key, secret_key, uid, gid,
    /// optional groups and buckets), readable by its owner only.
    #[arg(long = "s3-credentials", value_name = "FILE")]
    pub s3_credentials: Option<PathBuf>,
    /// Serve S3 over HTTPS with this certificate chain (PEM, leaf first;
    /// reloaded when the file changes), with --s3-tls-key. Without them a
    /// node with --tls-dir serves HTTPS with its cluster certificate when
    /// that names the hosts clients connect by (`certs issue --host`),
    /// else HTTP.
    #[arg(long = "s3-tls-cert", value_name = "FILE", requires = "s3_tls_key")]
    pub s3_tls_cert: Option<PathBuf>,
    /// The private key of --s3-tls-cert (PEM).
    #[arg(long = "s3-tls-key", value_name = "FILE", requires = "s3_tls_cert")]
    pub s3_tls_key: Option<PathBuf>,
    /// Seconds between metadata backups to the store (also made at unmount).
    #[arg(long = "backup-interval", value_name = "SECONDS", default_value_t = META_BACKUP_INTERVAL_DEFAULT_S)]
    pub backup_interval_s: u64,
    /// Seconds a block version no file refers to stays in the store before
    /// it is deleted; at least twice the backup interval (default: three
    /// times it).
    #[arg(long = "gc-grace", value_name = "SECONDS")]
    pub gc_grace_s: Option<u64>,
    /// Seconds between scans of the store for block versions nothing
    /// refers to (left by a crash between upload and metadata update).
    #[arg(long = "scrub-interval", value_name = "SECONDS", default_value_t = crate::scrub::SCRUB_INTERVAL_DEFAULT_S)]
    pub scrub_interval_s: u64,
    /// Join the metadata group of these masters (client addresses,
    /// `host:port,...`) instead of running an embedded one; needs
    /// `--node-id`, `--node-listen` and a `--store` shared by all nodes.
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...")]
    pub masters: Vec<String>,
    /// This node's id in the master group: unique, and no master's (1 to
    /// 65535; the block versions it writes carry it). `cert`: the id of
    /// the node certificate in --tls-dir (`datenlord certs issue --role
    /// node --id N`), which must carry it anyway: one flag for every pod
    /// of a Kubernetes DaemonSet, each node with its own certificate.
    #[arg(long = "node-id", value_name = "N|cert")]
    pub node_id: Option<NodeIdArg>,
    /// Where this node listens for the leader's Raft messages.
    #[arg(long = "node-listen", value_name = "HOST:PORT")]
    pub node_listen: Option<String>,
    /// Where a node of a master group serves its cached blocks to the
    /// other nodes (default: the host of --node-listen, a port the system
    /// picks; the address is registered with the masters).
    #[arg(long = "data-listen", value_name = "HOST:PORT")]
    pub data_listen: Option<String>,
    /// Seconds an embedded mount's lease on an S3 store lives without a
    /// renewal (renewed every third of it): how long a second mount waits
    /// after the first was killed. A local-directory store's lease is
    /// freed at once when its holder dies.
    #[arg(long = "store-lease-ttl", value_name = "SECONDS", default_value_t = LEASE_TTL_MS_DEFAULT / 1000)]
    pub store_lease_ttl_s: u64,
    /// This node's TLS credentials (`ca.pem`, `cert.pem`, `key.pem`, from
    /// `datenlord certs issue --role node --id N`): masters and nodes
    /// then authenticate each other. Required for a --node-listen other
    /// machines can reach, unless --insecure.
    #[arg(long = "tls-dir", value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Plain TCP to the masters on an address other machines can reach:
    /// whoever reaches the port can act as a member. Only on a network
    /// you trust.
    #[arg(long)]
    pub insecure: bool,
    /// How blocks travel between nodes once the mutual-TLS handshake has
    /// authenticated both: `on`, inside TLS; `off`, in clear with a MAC on
    /// every frame (keyed from the handshake: no frame can be changed,
    /// replayed or forged, but anyone on the network can read the data;
    /// only on a fabric you trust). Used on a connection only when both
    /// nodes say `off`.
    #[arg(long = "data-tls", value_enum, default_value_t = OnOff::On)]
    pub data_tls: OnOff,
    /// How this node asks other nodes for blocks: `tcp`, or `rdma` (RDMA
    /// verbs; needs a build with `--features rdma` and an RDMA device:
    /// without them the node says why once in its log and uses TCP).
    #[arg(long = "neighbor-transport", value_enum, default_value_t = NeighborTransport::Tcp)]
    pub neighbor_transport: NeighborTransport,
}

/// `--node-id`: a number, or `cert` (the id the node certificate carries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeIdArg {
    /// The id given.
    Id(u64),
    /// The id of the certificate in `--tls-dir`.
    Cert,
}

impl std::str::FromStr for NodeIdArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "cert" => Ok(Self::Cert),
            n => n.parse().map(Self::Id).map_err(|_| {
                format!(
                    "{text:?}: give a number (1 to {}) or `cert` (the id of the node certificate in --tls-dir)",
                    datenlord_engine::block::VERSION_WRITER_MAX
                )
            }),
        }
    }
}

impl NodeIdArg {
    /// The node's id: the one given, or the one its certificate carries
    /// (a node's; without TLS there is none to take).
    fn resolve(self, security: &Security) -> anyhow::Result<u64> {
        use datenlord_cluster::tls::Role;
        let id = match (self, security.identity()) {
            (Self::Id(id), _) => id,
            (Self::Cert, None) => bail!(
                "--node-id cert takes the id of the node certificate in --tls-dir: give --tls-dir (or a number)"
            ),
            (Self::Cert, Some(who)) if who.role != Role::Node => bail!(
                "--node-id cert: the certificate in --tls-dir is for {who}, not a node: issue one with `datenlord certs issue --role node --id N`"
            ),
            (Self::Cert, Some(who)) => who.id.with_context(|| {
                format!("--node-id cert: the node certificate in --tls-dir ({who}) carries no id")
            })?,
        };
        ensure!(
            (1..=datenlord_engine::block::VERSION_WRITER_MAX).contains(&id),
            "--node-id {id}: a node's id is 1 to {} (the block versions it writes carry it)",
            datenlord_engine::block::VERSION_WRITER_MAX
        );
        Ok(id)
    }
}

/// `--neighbor-transport`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NeighborTransport {
    /// TCP with mutual TLS.
    Tcp,
    /// RDMA verbs (falls back to TCP).
    Rdma,
}

impl NeighborTransport {
    /// The RDMA fabric used (`None`: TCP), said in the log once when it is
    /// not what was asked for; `secured`: the node has certificates.
    fn resolve(
        self,
        secured: bool,
    ) -> Option<std::sync::Arc<dyn datenlord_cluster::neighbor::rdma::fabric::Fabric>> {
        use datenlord_cluster::neighbor::rdma::{choose, Transport};
        choose(
            match self {
                Self::Tcp => Transport::Tcp,
                Self::Rdma => Transport::Rdma,
            },
            secured,
        )
        .0
    }
}

/// A switch of the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

impl MountArgs {
    /// The GC grace period, checked against the backup interval.
    fn gc_grace(&self) -> anyhow::Result<Duration> {
        crate::scrub::gc_grace(self.backup_interval_s, self.gc_grace_s)
    }

    /// The node configuration when `--masters`, `--node-id` and
    /// `--node-listen` are given (all three, or none: the embedded group).
    fn node_config(&self, data_dir: &Path) -> anyhow::Result<Option<NodeConfig>> {
        let masters: Vec<String> = self
            .masters
            .iter()
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty())
            .collect();
        match (masters.is_empty(), self.node_id, &self.node_listen) {
            (true, None, None) => {
                ensure!(
                    self.tls_dir.is_none()
                        && !self.insecure
                        && self.data_listen.is_none()
                        && self.data_tls == OnOff::On
                        && self.neighbor_transport == NeighborTransport::Tcp,
                    "--tls-dir, --insecure, --data-listen, --data-tls and --neighbor-transport are for a node of a master group (with --masters, --node-id and --node-listen); the embedded mount talks to no other process"
                );
                return Ok(None);
            }
            (false, Some(id), Some(listen)) => {
                let embedded_store = format!("file://{}", data_dir.join("store").display());
                match &self.store {
                    None => bail!(
                        "a node of a master group needs --store: the object store every node of the group shares (the embedded default {embedded_store} is this node's alone); format it once with `datenlord format --store URL`"
                    ),
                    Some(store) if store.trim_end_matches('/') == embedded_store => bail!(
                        "--store {store} is the embedded mount's default store, in this node's data directory: a node of a master group needs a store every node shares"
                    ),
                    Some(_) => {}
                }
                let tls_dir = match &self.tls_dir {
                    Some(dir) => Some(dir.canonicalize().with_context(|| {
                        format!(
                            "--tls-dir {}: make it with `datenlord certs issue`",
                            dir.display()
                        )
                    })?),
                    None => None,
                };
                ensure!(
                    tls_dir.is_some() || self.data_tls == OnOff::On,
                    "--data-tls off keeps the mutual-TLS handshake and leaves TLS after it: it needs --tls-dir"
                );
                let security = Security::from_dir(tls_dir.as_deref()).context("--tls-dir")?;
                let id = id.resolve(&security)?;
                check_listen(listen, &security, self.insecure, "--node-listen")
                    .map_err(anyhow::Error::msg)?;
                return Ok(Some(NodeConfig {
                    id,
                    listen: listen.clone(),
                    advertise: None,
                    masters,
                    data_dir: data_dir.join("node"),
                    security,
                }));
            }
            _ => {}
        }
        let missing: Vec<&str> = [
            ("--masters", masters.is_empty()),
            ("--node-id", self.node_id.is_none()),
            ("--node-listen", self.node_listen.is_none()),
        ]
        .iter()
        .filter(|(_, absent)| *absent)
        .map(|(name, _)| *name)
        .collect();
        bail!(
            "--masters, --node-id and --node-listen go together (joining a master group as a node); missing: {}",
            missing.join(", ")
        )
    }
}

/// The metadata a mount runs on: its own single-node group, or a learner
/// copy of a master group's.
enum Metadata {
    Embedded(Master),
    Node(Arc<Node>),
}

impl Metadata {
    fn link(&self) -> MetaLink {
        match self {
            Self::Embedded(master) => MetaLink::from_master(master),
            Self::Node(node) => MetaLink::from_node(node),
        }
    }

    /// "Does the namespace refer to this block version now?", from the
    /// local copy, for the garbage collector's last check before a
    /// deletion; every version is, while the store's `lease` (an embedded
    /// mount's) is not surely held: then nothing is deleted.
    fn in_use(&self, lease: Option<&Arc<StoreLease>>) -> datenlord_engine::store::InUse {
        let local = match self {
            Self::Embedded(master) => master.local(),
            Self::Node(node) => node.local(),
        };
        let lease = lease.cloned();
        Arc::new(move |id: BlockId| {
            lease.as_ref().is_some_and(|lease| !lease.held())
                || local
                    .read()
                    .block_version(datenlord_cluster::meta::Ino(id.ino.0), id.index)
                    == Some(id.version)
        })
    }

    /// A node's block service and cache registration (none for the
    /// embedded group).
    fn serve_blocks(
        &self,
        neighbors: Option<&NeighborPlan>,
        engine: &datenlord_engine::Engine,
        writeback: &WriteBack,
        args: &MountArgs,
        plan: &CachePlan,
    ) -> anyhow::Result<Option<Neighbors>> {
        let (Self::Node(node), Some(neighbors)) = (self, neighbors) else {
            return Ok(None);
        };
        let cache_bytes = plan.cache_bytes(engine);
        let probe = crate::neighbors::health_probe(
            engine.handle(),
            writeback.clone(),
            Arc::clone(&neighbors.stats),
            cache_bytes,
            node.local(),
        );
        Neighbors::start(
            node,
            neighbors,
            &engine.handle(),
            args.data_listen.as_deref(),
            args.insecure,
            cache_bytes,
            probe,
        )
        .map(Some)
    }

    /// Stops the metadata. A node stays a member of the group (a restart
    /// on the same data directory rejoins without being added again).
    fn stop(self) -> anyhow::Result<()> {
        match self {
            Self::Embedded(master) => master.stop().context("stopping the metadata"),
            Self::Node(mut node) => {
                let deadline =
                    std::time::Instant::now() + Duration::from_millis(NODE_RELEASE_WAIT_MS);
                loop {
                    match Arc::try_unwrap(node) {
                        Ok(node) => return node.stop().context("stopping the metadata node"),
                        Err(shared) if std::time::Instant::now() < deadline => {
                            node = shared;
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(_) => {
                            warn!("the metadata node is still in use; it stops with the process");
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

/// The default data directory for this user.
pub fn default_data_dir() -> PathBuf {
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } == 0 {
        return PathBuf::from("/var/lib/datenlord");
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("datenlord");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/share/datenlord")
}

/// Checks the mount point before anything starts (before the daemon
/// forks, so the user sees what to do), and resolves it.
fn check_mountpoint(path: &Path) -> anyhow::Result<PathBuf> {
    datenlord_fuse::check_mountpoint(path)?;
    path.canonicalize()
        .with_context(|| format!("resolving {}", path.display()))
}

/// The data directory's lock and pid file: one daemon per data directory.
/// Held until the process exits (see [`DataDirLock::hold_until_exit`]), so
/// a new daemon of the directory starts only once the old one has let go
/// of everything (its journal, its store lease).
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

/// How long a new mount waits for the previous daemon of its data
/// directory to finish after it was unmounted (flushing, draining the
/// journal, backing up the metadata).
pub const PREVIOUS_DAEMON_WAIT_S: u64 = 300;

impl DataDirLock {
    /// Takes the lock (non-blocking), writes this process's pid to the pid
    /// file and its mount point beside it. A previous daemon of the
    /// directory that is no longer mounted is finishing its work: it is
    /// waited for (up to `PREVIOUS_DAEMON_WAIT_S`), so `umount; mount`
    /// is safe; one still mounted is refused.
    pub fn take(data_dir: &Path, mountpoint: Option<&Path>) -> anyhow::Result<Self> {
        use datenlord_engine::lock_file::{record, try_lock, Lock};
        let path = data_dir.join(PID_FILE);
        let started = std::time::Instant::now();
        let mut told = false;
        loop {
            let holder = match try_lock(&path)
                .with_context(|| format!("locking {}", path.display()))?
            {
                Lock::Held(mut file) => {
                    record(&mut file, format!("{}\n", std::process::id()).as_bytes())?;
                    // Empty for a gateway without a mount.
                    let mounted_at = data_dir.join(MOUNTPOINT_FILE);
                    let recorded = mountpoint.map_or(&[][..], |m| m.as_os_str().as_encoded_bytes());
                    std::fs::write(&mounted_at, recorded)
                        .with_context(|| format!("writing {}", mounted_at.display()))?;
                    if let Some(mountpoint) = mountpoint {
                        remember_mount(mountpoint, data_dir);
                    }
                    return Ok(Self { _file: file });
                }
                Lock::Busy(pid) => pid.trim().to_string(),
            };
            let previous = std::fs::read(data_dir.join(MOUNTPOINT_FILE))
                .ok()
                .map(|bytes| PathBuf::from(String::from_utf8_lossy(&bytes).into_owned()));
            ensure!(
                previous.as_ref().is_none_or(|p| !p.as_os_str().is_empty()),
                "the data directory {} is in use by a datenlord gateway (pid {holder}): stop it first, or use another --data-dir",
                data_dir.display()
            );
            let Some(previous) = previous.filter(|m| !datenlord_fuse::is_mountpoint(m)) else {
                bail!(
                    "the data directory {} is in use by another datenlord (pid {holder}), which is still mounted: unmount it first, or use another --data-dir",
                    data_dir.display()
                );
            };
            ensure!(
                started.elapsed() < Duration::from_secs(PREVIOUS_DAEMON_WAIT_S),
                "the previous datenlord (pid {holder}) of the data directory {} is still finishing {PREVIOUS_DAEMON_WAIT_S} s after it was unmounted from {}: see its log (datenlord.log), or stop it",
                data_dir.display(),
                previous.display()
            );
            if !told {
                info!(pid = %holder, unmounted_from = %previous.display(), "waiting for the previous datenlord of this data directory to finish (it flushes its data and backs up the metadata before it exits)");
                told = true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Keeps the lock until the process exits: the kernel releases it only
    /// once every other lock and file of the daemon is gone too.
    pub fn hold_until_exit(self) {
        std::mem::forget(self);
    }
}

/// Where mounts are remembered by mount point, so that `datenlord umount
/// DIR` finds a mount's data directory without `--data-dir`: under
/// `/run` for root, `$XDG_RUNTIME_DIR` for others (both emptied at boot).
fn mounts_dir() -> Option<PathBuf> {
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } == 0 {
        return Some(PathBuf::from("/run/datenlord/mounts"));
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join("datenlord/mounts"))
}

/// The record of a mount point in [`mounts_dir`]: a stable hash of its
/// path (FNV-1a; the record holds the data directory, whose own record
/// of its mount point is checked before anything is done).
fn mount_record(mountpoint: &Path) -> Option<PathBuf> {
    let hash = mountpoint
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    Some(mounts_dir()?.join(format!("{hash:016x}")))
}

/// Remembers that `data_dir` serves `mountpoint` (best effort: without
/// the record, `datenlord umount` needs `--data-dir`).
fn remember_mount(mountpoint: &Path, data_dir: &Path) {
    let Some(record) = mount_record(mountpoint) else {
        return;
    };
    let data_dir = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    let written = record
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&record, data_dir.as_os_str().as_encoded_bytes()));
    if let Err(e) = written {
        warn!(record = %record.display(), %e, "could not remember this mount: `datenlord umount` will need --data-dir");
    }
}

/// The data directory of the mount at `mountpoint`: `--data-dir`, else
/// the one remembered for it, else the default.
pub fn data_dir_of(mountpoint: &Path, given: Option<&Path>) -> PathBuf {
    if let Some(dir) = given {
        return dir.to_path_buf();
    }
    mount_record(mountpoint)
        .and_then(|record| std::fs::read(record).ok())
        .map_or_else(default_data_dir, |bytes| {
            PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())
        })
}

/// `datenlord umount`: unmount, then wait for the daemon to finish.
#[derive(Debug, clap::Args)]
pub struct UmountArgs {
    /// The mount point.
    pub mountpoint: PathBuf,
    /// The mount's --data-dir (default: the one this machine remembers
    /// for the mount point, else the same default as `datenlord mount`'s).
    #[arg(long = "data-dir")]
    pub data_dir: Option<PathBuf>,
    /// Seconds to wait for the daemon to finish its work and exit.
    #[arg(long = "timeout", value_name = "SECONDS", default_value_t = PREVIOUS_DAEMON_WAIT_S)]
    pub timeout_s: u64,
}

/// Runs `datenlord umount`: unmounts (lazily when files are open, like the
/// daemon's own stop) and returns once the daemon has flushed, drained and
/// exited, so whatever runs next (a new mount, a backup of the data
/// directory, a shutdown) finds everything on disk and in the store.
pub fn umount(args: &UmountArgs) -> anyhow::Result<std::process::ExitCode> {
    use datenlord_engine::lock_file::{try_lock, Lock};
    let mountpoint = args
        .mountpoint
        .canonicalize()
        .with_context(|| format!("resolving {}", args.mountpoint.display()))?;
    let data_dir = data_dir_of(&mountpoint, args.data_dir.as_deref());
    check_served(&data_dir, &mountpoint)?;
    unmount_path(&mountpoint);
    // The daemon holds the data directory's lock until it exits.
    let pid_file = data_dir.join(PID_FILE);
    let deadline = std::time::Instant::now() + Duration::from_secs(args.timeout_s);
    loop {
        match try_lock(&pid_file).with_context(|| format!("locking {}", pid_file.display()))? {
            Lock::Held(_) => break,
            Lock::Busy(pid) => ensure!(
                std::time::Instant::now() < deadline,
                "unmounted {}, but its daemon (pid {}) is still finishing after {} s: see {}",
                mountpoint.display(),
                pid.trim(),
                args.timeout_s,
                data_dir.join("datenlord.log").display()
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(remembered) = mount_record(&mountpoint) {
        let _ = std::fs::remove_file(remembered);
    }
    println!("unmounted {}; its daemon finished", mountpoint.display());
    Ok(std::process::ExitCode::SUCCESS)
}

/// Checks that the daemon of `data_dir` serves `mountpoint` (resolved),
/// and that it is mounted.
pub fn check_served(data_dir: &Path, mountpoint: &Path) -> anyhow::Result<()> {
    let record = data_dir.join(MOUNTPOINT_FILE);
    let served = std::fs::read(&record)
        .map(|bytes| PathBuf::from(String::from_utf8_lossy(&bytes).into_owned()))
        .with_context(|| {
            format!(
                "{} names no datenlord mount: give the mount's --data-dir",
                record.display()
            )
        })?;
    ensure!(
        served == mountpoint,
        "the data directory {} serves {}, not {}: give the mount's --data-dir",
        data_dir.display(),
        served.display(),
        mountpoint.display()
    );
    ensure!(
        datenlord_fuse::is_mountpoint(mountpoint),
        "{} is not mounted",
        mountpoint.display()
    );
    Ok(())
}

/// Creates `dir` if missing and makes it its owner's alone (0700): it
/// holds every user's file data (journal, cache, store) and the metadata,
/// which the mount's permission checks must not be bypassed around. Files
/// the process creates are 0600 (`main` sets the umask).
pub fn private_dir(dir: &Path, what: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {what} {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {what} {} private (0700)", dir.display()))
}

/// The embedded mount's last metadata backup, at unmount (not when another
/// mount may hold the store now).
fn final_backup(master: &Master, lease: &StoreLease, remote: &RemoteStore) {
    if !lease.held() {
        warn!("the store's lease is not held: no metadata backup at unmount");
        return;
    }
    let snapshot = master.local().read().snapshot();
    match block_on(remote.put_meta_snapshot(snapshot)) {
        Ok(seq) => info!(seq, "backed up the metadata to the store"),
        Err(e) => warn!(error = %e, "backing up the metadata to the store"),
    }
}

/// Takes the store's lease for this embedded mount (see
/// `datenlord_engine::store::lease`), or says who holds it.
fn take_store_lease(
    args: &MountArgs,
    store: &Store,
    data_dir: &Path,
) -> anyhow::Result<Arc<StoreLease>> {
    let holder = format!(
        "{} pid {} (data directory {})",
        host_name(),
        std::process::id(),
        data_dir.display()
    );
    let ttl = Duration::from_secs(args.store_lease_ttl_s.max(1));
    let lease = store
        .remote
        .take_lease(&holder, ttl)
        .with_context(|| format!("taking the lease of the store {}", store.url))?;
    Ok(Arc::new(lease))
}

/// This machine's host name, for the store lease's holder.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer.
    let done = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if done && end > 0 {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "an unknown host".into()
    }
}

/// Name of the pid file (and lock) in the data directory.
pub const PID_FILE: &str = "datenlord.pid";
/// Where the daemon of the data directory is mounted (beside the pid).
pub const MOUNTPOINT_FILE: &str = "datenlord.mountpoint";

/// Runs `datenlord mount`.
pub fn run(args: &MountArgs) -> anyhow::Result<std::process::ExitCode> {
    let mountpoint = check_mountpoint(&args.mountpoint)?;
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    private_dir(&data_dir, "the data directory")?;
    let data_dir = data_dir.canonicalize()?;
    // Before the fork, so the user sees a wrong combination at once.
    args.node_config(&data_dir)?;
    let mut ready = if args.foreground {
        Ready::foreground()
    } else {
        match daemon::daemonize(&data_dir.join("datenlord.log"))? {
            Role::Parent(code) => return Ok(code),
            Role::Daemon(ready) => ready,
        }
    };
    match serve(args, &Front::Fuse(&mountpoint), &data_dir, &mut ready) {
        Ok(()) => Ok(std::process::ExitCode::SUCCESS),
        Err(err) => {
            ready.fail(&format!("{err:#}"));
            Err(err)
        }
    }
}

/// The store a mount uses and the volume it holds.
struct Store {
    url: StoreUrl,
    remote: RemoteStore,
    descriptor: VolumeDescriptor,
    /// Kept alive as long as the store is used.
    _control: ControlPlane,
}

/// Opens `--store` (or the embedded default, formatted on first use) and
/// reads its volume descriptor.
fn open_store(args: &MountArgs, data_dir: &Path) -> anyhow::Result<Store> {
    let embedded = args.store.is_none();
    let url: StoreUrl = if let Some(text) = &args.store {
        text.parse().map_err(|e| anyhow::anyhow!("--store: {e}"))?
    } else {
        let dir = data_dir.join("store");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the store directory {}", dir.display()))?;
        let text = format!("file://{}", dir.display());
        text.parse().map_err(|e| anyhow::anyhow!("{text}: {e}"))?
    };
    let control = ControlPlane::start().context("starting the store's runtime")?;
    let remote =
        RemoteStore::open(&url, &control).with_context(|| format!("opening the store {url}"))?;
    let found = block_on(remote.descriptor())
        .with_context(|| format!("reading the volume descriptor of {url}"))?;
    let descriptor = match found {
        Some(d) => d,
        None if embedded => {
            let d = VolumeDescriptor {
                uuid: random_uuid(),
                block_size: parse_block_size(&args.block_size)?,
                format_version: STORE_FORMAT_VERSION,
            };
            block_on(remote.format(&d)).with_context(|| format!("formatting {url}"))?;
            info!(store = %url, block_size = d.block_size, volume = %d.uuid_hex(), "formatted the embedded store on first use");
            d
        }
        None => bail!(
            "the store {url} is not formatted: run `datenlord format --store {url}` first (it writes the volume descriptor)"
        ),
    };
    Ok(Store {
        url,
        remote,
        descriptor,
        _control: control,
    })
}

/// The file system's config from the command line: atime policy, and
/// local copies for `-o passthrough` (in the cache directory).
fn fs_config(
    args: &MountArgs,
    writer: u64,
    parsed: &datenlord_fuse::ParsedOptions,
    opts: &datenlord_fuse::MountOptions,
    plan: &CachePlan,
) -> anyhow::Result<datenlord_fs::FsConfig> {
    let mut config = datenlord_fs::FsConfig {
        // A node's versions name it: until uploaded, its journal holds them.
        writer,
        ..datenlord_fs::FsConfig::default()
    };
    if let Some(atime) = parsed.atime {
        config.atime = atime;
    }
    anyhow::ensure!(
        args.commit_interval_ms <= datenlord_fs::COMMIT_INTERVAL_MS_MAX,
        "--commit-interval {} is above the largest, {} ms",
        args.commit_interval_ms,
        datenlord_fs::COMMIT_INTERVAL_MS_MAX
    );
    // Through: a close returns once its data is in the store. A node: its
    // close must reach the leader for other nodes' opens (close-to-open),
    // which group commits across nodes do not do yet.
    if args.commit_interval_ms > 0 && plan.write_mode == WriteMode::Back && args.masters.is_empty()
    {
        config.commit_interval = Some(Duration::from_millis(args.commit_interval_ms));
    }
    config.abort_after_journal_sync = std::env::var(ABORT_AFTER_JOURNAL_SYNC_ENV)
        .ok()
        .and_then(|n| n.parse().ok());
    if opts.passthrough {
        config.local_copies = Some(datenlord_fs::CopyConfig {
            dir: plan.dir.join("copies"),
            capacity_bytes: parse_bytes(&args.passthrough_size).context("--passthrough-size")?,
            after_opens: COPY_AFTER_OPENS,
        });
    }
    Ok(config)
}

/// Sizes and paths of the node's cache, from the command line.
struct CachePlan {
    dir: PathBuf,
    journal_dir: PathBuf,
    /// The NVMe tier's device (else a file in `dir`).
    device: Option<PathBuf>,
    memory_bytes: u64,
    /// Bytes of the NVMe tier; `None`: the whole device.
    disk_bytes: Option<u64>,
    write_mode: WriteMode,
}

/// Test hook of the crash tests (`FsConfig::abort_after_journal_sync`):
/// the daemon aborts in its Nth group commit with blocks, between the
/// journal sync and the metadata.
pub const ABORT_AFTER_JOURNAL_SYNC_ENV: &str = "DATENLORD_TEST_ABORT_AFTER_JOURNAL_SYNC";

/// The NVMe cache file's size when --cache-size is not given.
const CACHE_FILE_DEFAULT: &str = "1G";

impl CachePlan {
    fn new(args: &MountArgs, data_dir: &Path) -> anyhow::Result<Self> {
        let dir = args
            .cache_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("cache"));
        private_dir(&dir, "the cache directory")?;
        let journal_dir = args
            .journal_dir
            .clone()
            .unwrap_or_else(|| dir.join("journal"));
        if args.journal_dir.is_some() {
            private_dir(&journal_dir, "the journal directory")?;
        }
        if let Some(device) = &args.cache_device {
            crate::device::check(device, args.force_device)?;
        }
        let disk_bytes = match (&args.cache_size, &args.cache_device) {
            (Some(size), _) => Some(parse_bytes(size).context("--cache-size")?),
            (None, Some(_)) => None,
            (None, None) => Some(parse_bytes(CACHE_FILE_DEFAULT).context("--cache-size")?),
        };
        Ok(Self {
            dir,
            journal_dir,
            device: args.cache_device.clone(),
            memory_bytes: parse_bytes(&args.memory_size).context("--memory-size")?,
            disk_bytes,
            write_mode: args
                .write_mode
                .parse()
                .map_err(|e| anyhow::anyhow!("--write-mode: {e}"))?,
        })
    }

    /// The NVMe tier: the device, or a file in the cache directory.
    fn disk(&self) -> Option<DiskConfig> {
        if self.disk_bytes == Some(0) {
            return None;
        }
        Some(DiskConfig {
            path: self.device.clone().unwrap_or_else(|| self.dir.clone()),
            size_bytes: self.disk_bytes,
        })
    }

    /// Bytes this node caches (its weight among cache nodes): memory and
    /// the NVMe tier as the engine laid it out.
    fn cache_bytes(&self, engine: &datenlord_engine::Engine) -> u64 {
        let disk = engine
            .plan()
            .disk
            .as_ref()
            .map_or(0, |(_, layout)| layout.total_bytes());
        self.memory_bytes + disk
    }

    /// The journal takes half of the sized cache disk (at least 64 MiB).
    fn journal_capacity_bytes(&self) -> u64 {
        match self.disk_bytes {
            Some(bytes) if bytes > 0 => (bytes / 2).max(64 << 20),
            // No NVMe tier, or a device (the journal is not on it).
            _ => JOURNAL_CAPACITY_DEFAULT_BYTES,
        }
    }
}

/// The block engine over the store, with its write-back journal.
fn start_engine(
    args: &MountArgs,
    plan: &CachePlan,
    store: &Store,
    meta: &MetaLink,
    neighbors: Option<&NeighborPlan>,
) -> anyhow::Result<(datenlord_engine::Engine, WriteBack)> {
    let mut wb_config = WriteBackConfig::new(plan.journal_dir.clone());
    wb_config.capacity_bytes = plan.journal_capacity_bytes();
    wb_config.mode = plan.write_mode;
    wb_config.gc_grace = args.gc_grace()?;
    let writeback = WriteBack::open(wb_config, store.remote.clone())
        .context("opening the write-back journal")?;
    let block_map = datenlord_fs::BlockMapResolver::new(meta.clone());
    let resolver: datenlord_engine::store::sources::ResolveFn = Arc::new(move |ino, index| {
        datenlord_engine::VersionResolver::current_version(&block_map, ino, index)
    });
    let sources = datenlord_engine::store::StoreSources::new(
        store.remote.clone(),
        Some(writeback.clone()),
        resolver,
    );
    let block_size = BlockSize::new(u64::from(store.descriptor.block_size))
        .map_err(|e| anyhow::anyhow!("the store's block size: {e}"))?;
    let config = EngineConfig {
        cores: args.cores,
        block_size,
        memory_bytes: plan.memory_bytes,
        disk: plan.disk(),
        ..EngineConfig::default()
    };
    let engine = match neighbors {
        // A node of a master group asks blocks' homes before the store.
        Some(n) => datenlord_engine::Engine::start(
            &config,
            datenlord_cluster::neighbor::NeighborSources::new(
                sources,
                n.id,
                n.membership.clone(),
                n.link.clone(),
                Arc::clone(&n.stats),
                block_size.bytes(),
            ),
        ),
        None => datenlord_engine::Engine::start(&config, sources),
    }
    .context("starting the block engine")?;
    Ok((engine, writeback))
}

/// Mount options before `-o`: the embedded group's mount is the only
/// writer of its metadata (the data directory's lock keeps every other
/// process out), so the kernel may keep names and attributes for long; a
/// node of a master group shares the namespace with other nodes and keeps
/// them for [`datenlord_fuse::TTL_DEFAULT`], so their changes show within it.
fn kernel_cache_defaults(mountpoint: &Path, embedded: bool) -> datenlord_fuse::MountOptions {
    let opts = datenlord_fuse::MountOptions::new(mountpoint);
    if embedded {
        opts.sole_writer()
    } else {
        opts
    }
}

/// The embedded single-node group, restored from the store's backup when
/// this data directory is new; or a learner copy of a master group's.
fn start_metadata(
    node_config: Option<NodeConfig>,
    data_dir: &Path,
    store: &Store,
) -> anyhow::Result<Metadata> {
    Ok(match node_config {
        Some(config) => {
            let node = Node::join(&config).with_context(|| {
                format!(
                    "joining the metadata group of {} as node {}",
                    config.masters.join(","),
                    config.id
                )
            })?;
            Metadata::Node(Arc::new(node))
        }
        None => Metadata::Embedded(open_metadata(
            &data_dir.join("meta"),
            &store.remote,
            &store.url,
        )?),
    })
}

/// How a node's blocks travel between nodes.
fn neighbor_plan(args: &MountArgs, config: &NodeConfig) -> NeighborPlan {
    // Asking for rdma where it cannot be used logs why TCP is.
    let secured = matches!(config.security, Security::Tls(_));
    let rdma = args.neighbor_transport.resolve(secured);
    info!(rdma = rdma.is_some(), "neighbor transport");
    NeighborPlan::new(
        config.id,
        DataLink {
            security: config.security.clone(),
            data_tls: args.data_tls == OnOff::On,
            rdma,
        },
    )
}

/// What a node serves its file system through.
pub(crate) enum Front<'a> {
    /// A FUSE mount here (and the S3 gateway of `--s3-listen` beside it).
    Fuse(&'a Path),
    /// The S3 gateway on this address, without a mount.
    S3(&'a str),
}

impl Front<'_> {
    /// The path the kernel options are made for (the data directory for a
    /// gateway, which mounts nothing).
    fn path<'p>(&'p self, data_dir: &'p Path) -> &'p Path {
        self.mountpoint().unwrap_or(data_dir)
    }

    /// The mount point, if there is a mount.
    fn mountpoint(&self) -> Option<&Path> {
        match self {
            Self::Fuse(mountpoint) => Some(mountpoint),
            Self::S3(_) => None,
        }
    }

    /// Says in the log that the node serves.
    fn announce(&self, store: &StoreUrl, cores: usize, metrics: Option<std::net::SocketAddr>) {
        match self {
            Self::Fuse(mountpoint) => {
                info!(mountpoint = %mountpoint.display(), store = %store, cores, metrics_addr = ?metrics, "mounted");
            }
            Self::S3(listen) => {
                info!(%listen, store = %store, cores, metrics_addr = ?metrics, "serving S3 (no mount)");
            }
        }
    }
}

/// The running front ends of a node.
enum Fronts {
    Mounted(
        Box<datenlord_fuse::Mount>,
        Option<crate::gateway::S3Gateway>,
    ),
    Gateway(crate::gateway::S3Gateway),
}

impl Fronts {
    fn start(
        front: &Front<'_>,
        args: &MountArgs,
        fs: &Arc<datenlord_fs::Fs>,
        opts: &datenlord_fuse::MountOptions,
    ) -> anyhow::Result<Self> {
        match front {
            Front::Fuse(_) => {
                let users = crate::gateway::users(
                    args.s3_listen.as_deref(),
                    args.s3_credentials.as_deref(),
                )?;
                let tls = crate::gateway::tls(args.s3_listen.as_deref(), args)?;
                let mount = datenlord_fuse::mount(Arc::clone(fs), opts)?;
                let s3 = crate::gateway::S3Gateway::start(
                    args.s3_listen.as_deref(),
                    (users, tls),
                    fs,
                    Some(&mount),
                )?;
                Ok(Self::Mounted(Box::new(mount), s3))
            }
            Front::S3(listen) => {
                let users = crate::gateway::users(Some(listen), args.s3_credentials.as_deref())?;
                let tls = crate::gateway::tls(Some(listen), args)?;
                let s3 = crate::gateway::S3Gateway::start(Some(listen), (users, tls), fs, None)?;
                s3.map(Self::Gateway)
                    .ok_or_else(|| anyhow::anyhow!("the S3 gateway did not start"))
            }
        }
    }

    fn ops(&self) -> datenlord_fuse::OpStats {
        match self {
            Self::Mounted(mount, _) => mount.stats(),
            Self::Gateway(_) => datenlord_fuse::OpStats::default(),
        }
    }

    /// The S3 gateway's counters, when it serves.
    fn s3_stats(&self) -> Option<Arc<datenlord_s3::S3Stats>> {
        match self {
            Self::Mounted(_, s3) => s3.as_ref().map(crate::gateway::S3Gateway::stats),
            Self::Gateway(s3) => Some(s3.stats()),
        }
    }

    /// Serves until an unmount or SIGTERM/SIGINT (files flushed first),
    /// then stops the gateway.
    fn serve(
        self,
        signals: libc::sigset_t,
        fs: Arc<datenlord_fs::Fs>,
        front: &Front<'_>,
        security: Option<Security>,
    ) -> anyhow::Result<()> {
        match (self, front) {
            (Self::Mounted(mount, s3), Front::Fuse(mountpoint)) => {
                stop_on_signal(signals, fs, mountpoint, security)?;
                let served = mount.wait();
                s3.into_iter().for_each(crate::gateway::S3Gateway::stop);
                served.context("serving the mount")
            }
            (Self::Gateway(s3), _) => s3.serve_until_signal(signals, &fs, security.as_ref()),
            (Self::Mounted(..), Front::S3(_)) => Ok(()),
        }
    }
}

pub(crate) fn serve(
    args: &MountArgs,
    front: &Front<'_>,
    data_dir: &Path,
    ready: &mut Ready,
) -> anyhow::Result<()> {
    // Before any thread starts, so that every thread inherits the mask and
    // only the waiter below receives SIGTERM/SIGINT.
    let signals = crate::block_stop_signals();
    let lock = DataDirLock::take(data_dir, front.mountpoint())?;
    let node_config = args.node_config(data_dir)?;
    // 0 on a mount of its own (see `block::VERSION_WRITER_BITS`).
    let writer = node_config.as_ref().map_or(0, |config| config.id);
    let security = node_config.as_ref().map(|config| config.security.clone());
    let neighbor_plan = node_config
        .as_ref()
        .map(|config| neighbor_plan(args, config));
    let mut opts = kernel_cache_defaults(front.path(data_dir), node_config.is_none());
    let parsed = datenlord_fuse::parse_mount_options(&args.options.join(","))
        .context("in the -o mount options")?;
    parsed.apply(&mut opts);
    let plan = CachePlan::new(args, data_dir)?;
    args.gc_grace()?;
    let store = open_store(args, data_dir)?;
    // An embedded mount is its store's only writer and scrubber: it holds
    // the store's lease for as long as it runs. Nodes of a master group
    // share their store.
    let lease = if node_config.is_none() {
        Some(take_store_lease(args, &store, data_dir)?)
    } else {
        None
    };
    // Metadata: the embedded single-node group, restored from the store's
    // backup when this data directory is new; or a learner copy of a
    // master group's.
    let metadata = start_metadata(node_config, data_dir, &store)?;
    let meta = metadata.link();
    ensure_volume(&meta, &store.descriptor, &store.url)?;
    let (engine, writeback) = start_engine(args, &plan, &store, &meta, neighbor_plan.as_ref())?;
    writeback.set_in_use(metadata.in_use(lease.as_ref()));
    let neighbors =
        metadata.serve_blocks(neighbor_plan.as_ref(), &engine, &writeback, args, &plan)?;

    let fs_config = fs_config(args, writer, &parsed, &opts, &plan)?;
    let sink: Arc<dyn datenlord_fs::BlockSink> = Arc::new(JournalSink(writeback.clone()));
    let fs = datenlord_fs::Fs::new(fs_config, meta.clone(), engine.handle(), sink)
        .context("starting the file system")?;
    if opts.threads == 0 {
        opts.threads = engine.handle().shards();
    }
    let fronts = Fronts::start(front, args, &fs, &opts)?;
    let metrics = match args.metrics_addr {
        Some(addr) => Some(crate::metrics::Endpoint::start(
            addr,
            node_metrics(
                engine.handle(),
                writeback.clone(),
                (fronts.ops(), fronts.s3_stats()),
                Arc::downgrade(&fs),
                neighbor_plan.as_ref().map(|n| Arc::clone(&n.stats)),
            ),
        )?),
        None => None,
    };
    // The masters own a group's metadata: a node neither backs it up nor
    // scrubs the shared store against it (the other nodes' journals hold
    // blocks this node's copy does not refer to yet).
    let (backup, scrub) = if let (Metadata::Embedded(master), Some(lease)) = (&metadata, &lease) {
        let held = Arc::clone(lease);
        let backup = Periodic::start(
            "meta-backup",
            Duration::from_secs(args.backup_interval_s),
            backup_task(master, &store.remote, move || held.held()),
        );
        let scrub = Periodic::start(
            "store-scrub",
            Duration::from_secs(args.scrub_interval_s.max(1)),
            crate::scrub::embedded_task(master, &store.remote, &writeback, args.gc_grace()?),
        );
        (Some(backup), Some(scrub))
    } else {
        info!("node of a master group: the masters own the metadata; no metadata backup or orphan scrub on this node");
        (None, None)
    };
    let control = crate::control::ControlSocket::start(data_dir, Arc::downgrade(&fs))?;
    let metrics_addr = metrics.as_ref().map(crate::metrics::Endpoint::addr);
    front.announce(&store.url, engine.handle().shards(), metrics_addr);
    ready.ok();
    let served = fronts.serve(signals, Arc::clone(&fs), front, security);
    control.stop();
    drop(metrics);
    backup.into_iter().for_each(Periodic::stop);
    scrub.into_iter().for_each(Periodic::stop);
    if let Err(e) = block_on(writeback.drain(Duration::from_secs(DRAIN_TIMEOUT_S))) {
        warn!(error = %e, "the write-back journal still holds data; it is uploaded at the next start");
    }
    if let (Metadata::Embedded(master), Some(lease)) = (&metadata, &lease) {
        final_backup(master, lease, &store.remote);
    }
    drop(fs);
    neighbors.into_iter().for_each(Neighbors::stop);
    engine.shutdown().context("stopping the engine")?;
    writeback.shutdown();
    drop(meta);
    metadata.stop()?;
    if let Some(lease) = &lease {
        lease.release();
    }
    served?;
    info!("stopped");
    lock.hold_until_exit();
    Ok(())
}

/// On SIGTERM/SIGINT: flush, then unmount (lazily if files are still
/// open: the mount then ends when the last one closes). On SIGHUP: reload
/// a node's TLS credentials.
fn stop_on_signal(
    signals: libc::sigset_t,
    fs: Arc<datenlord_fs::Fs>,
    mountpoint: &Path,
    security: Option<Security>,
) -> anyhow::Result<()> {
    let mountpoint = mountpoint.to_path_buf();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let signal = crate::wait_for_stop_signal(&signals, security.as_ref());
            info!(signal, "unmounting on signal");
            if let Err(e) = block_on(fs.flush_all()) {
                warn!(error = %e, "flushing before unmount");
            }
            unmount_path(&mountpoint);
        })
        .context("starting the signal thread")?;
    Ok(())
}

fn parse_block_size(text: &str) -> anyhow::Result<u32> {
    let bytes = parse_bytes(text).context("--block-size")?;
    let size = BlockSize::new(bytes).map_err(|e| anyhow::anyhow!("--block-size: {e}"))?;
    Ok(size.bytes())
}

/// 16 random bytes from the kernel.
pub fn random_uuid() -> [u8; 16] {
    let mut uuid = [0u8; 16];
    // SAFETY: getrandom writes at most `uuid.len()` bytes into the buffer.
    let n = unsafe { libc::getrandom(uuid.as_mut_ptr().cast(), uuid.len(), 0) };
    if n != 16 {
        // getrandom(2) does not fail for 16 bytes once the pool is ready;
        // the clock and pid still make a distinct id should it ever.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        uuid.copy_from_slice(&(t ^ (u128::from(std::process::id()) << 64)).to_le_bytes());
    }
    // RFC 4122 version 4, variant 1.
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    uuid
}

/// Opens the embedded metadata group; a new data directory on a store
/// that has a metadata backup starts from that backup.
fn open_metadata(meta_dir: &Path, remote: &RemoteStore, url: &StoreUrl) -> anyhow::Result<Master> {
    let is_new = !meta_dir
        .join(datenlord_cluster::master::IDENTITY_FILE)
        .exists();
    if is_new {
        let latest = block_on(remote.latest_meta_snapshot())
            .with_context(|| format!("looking for a metadata backup in {url}"))?;
        if let Some((seq, bytes)) = latest {
            let master = Master::embedded_restored(meta_dir, bytes).with_context(|| {
                format!(
                    "restoring the metadata backup #{seq} of {url} into {}",
                    meta_dir.display()
                )
            })?;
            info!(seq, store = %url, "restored the namespace from the store's metadata backup");
            return Ok(master);
        }
    }
    Master::embedded(meta_dir, None)
        .with_context(|| format!("starting the metadata in {}", meta_dir.display()))
}

/// Formats the namespace with the store's volume id on first start, and
/// refuses a namespace that belongs to another volume (the embedded data
/// directory's, or the master group's).
fn ensure_volume(meta: &MetaLink, store: &VolumeDescriptor, url: &StoreUrl) -> anyhow::Result<()> {
    meta.wait_for_leader()
        .context("waiting for the metadata leader")?;
    let whose = if meta.is_node() {
        "the master group holds the namespace of another volume"
    } else {
        "this data directory holds the namespace of another volume"
    };
    let check = |v: &datenlord_cluster::meta::Volume| {
        if v.uuid == store.uuid && v.block_size == store.block_size {
            Ok(())
        } else {
            Err(anyhow::anyhow!(
                "{whose} (block size {} bytes) than the store {url} (volume {}): use that volume's store, or a new --data-dir (or group)",
                v.block_size,
                store.uuid_hex()
            ))
        }
    };
    // Linearizable: after a restart the log is replayed once the leader
    // commits, and the local copy may still be behind at this point.
    let volume = block_on(meta.read_linearizable(|state| state.volume().cloned()))
        .context("reading the namespace's volume")?;
    if let Some(v) = volume {
        return check(&v);
    }
    let command = datenlord_cluster::meta::Command::Format {
        uuid: store.uuid,
        block_size: store.block_size,
        format_version: datenlord_cluster::meta::VOLUME_FORMAT_VERSION,
        capacity_bytes: datenlord_fs::CAPACITY_BYTES_DEFAULT,
        inodes_max: datenlord_fs::INODES_MAX_DEFAULT,
        now: datenlord_fs::now(),
    };
    match block_on(meta.apply(&command)) {
        Ok(_) => {
            info!(volume = %store.uuid_hex(), "formatted a new namespace");
            Ok(())
        }
        // Another node of the group formatted it first: check its volume.
        Err(datenlord_fs::FsError::Meta { .. }) if meta.is_node() => {
            let volume = meta
                .read_latest(|state| state.volume().cloned())
                .context("reading the namespace's volume")?;
            match volume {
                Some(v) => check(&v),
                None => bail!("formatting the namespace was refused and it is still not formatted"),
            }
        }
        Err(e) => Err(e).context("formatting the namespace"),
    }
}

/// Flushed blocks go to the write-back journal (durable before success).
struct JournalSink(WriteBack);

impl datenlord_fs::BlockSink for JournalSink {
    fn commit(
        &self,
        blocks: Vec<(BlockId, Vec<u8>)>,
    ) -> futures::future::BoxFuture<'static, Result<(), datenlord_fs::SinkError>> {
        // The fs's futures run on FUSE request threads (block_on): the
        // append and its fdatasync run there too, as metadata rounds do.
        let commit = self.0.commit_inline(blocks);
        Box::pin(async move {
            commit.await.map_err(|e| datenlord_fs::SinkError {
                errno: e.errno(),
                message: e.to_string(),
            })
        })
    }

    fn collect(&self, garbage: Vec<BlockId>) {
        if let Err(e) = self.0.collect(garbage) {
            warn!(error = %e, "recording garbage block versions (they stay in the store)");
        }
    }
}

/// A background task run every interval while mounted, on its own thread.
pub(crate) struct Periodic {
    stop: Option<flume::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Periodic {
    pub(crate) fn start(
        name: &str,
        interval: Duration,
        mut task: impl FnMut() + Send + 'static,
    ) -> Self {
        let (stop, stopped) = flume::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Err(flume::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    task();
                }
            })
            .ok();
        if thread.is_none() {
            warn!(
                task = name,
                "cannot start a background thread; the task runs at unmount only"
            );
        }
        Self {
            stop: Some(stop),
            thread,
        }
    }

    pub(crate) fn stop(mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Backs up `master`'s metadata to the store when it changed since the
/// last backup, while `writer()` says this process is the one to write
/// them (an embedded mount holding the store's lease, a group's leader).
pub(crate) fn backup_task(
    master: &Master,
    remote: &RemoteStore,
    writer: impl Fn() -> bool + Send + 'static,
) -> impl FnMut() + Send + 'static {
    let local = master.local();
    let remote = remote.clone();
    let mut last: Option<Vec<u8>> = None;
    move || {
        if !writer() {
            return;
        }
        let snapshot = local.read().snapshot();
        if last.as_ref() == Some(&snapshot) {
            return;
        }
        match block_on(remote.put_meta_snapshot(snapshot.clone())) {
            Ok(seq) => {
                tracing::debug!(seq, "metadata backed up");
                last = Some(snapshot);
            }
            Err(e) => warn!(error = %e, "backing up the metadata to the store; retrying later"),
        }
    }
}

/// Unmounts `path`: as root with umount2 (lazily when busy), else through
/// fusermount3.
fn unmount_path(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(c_path.as_ptr(), 0) } == 0 {
        return;
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EBUSY) => {
            warn!(mountpoint = %path.display(), "files are still open: detaching the mount; it ends when the last one closes");
            // SAFETY: as above.
            unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
        }
        Some(libc::EPERM) => {
            let status = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(path)
                .status();
            if !status.is_ok_and(|s| s.success()) {
                warn!(mountpoint = %path.display(), "fusermount3 -u failed");
            }
        }
        _ => warn!(mountpoint = %path.display(), error = %err, "unmount failed"),
    }
}

/// What `/metrics` shows: engine tiers, the write-back backlog, FUSE ops.
fn node_metrics(
    engine: datenlord_engine::EngineHandle,
    writeback: WriteBack,
    (ops, s3): (datenlord_fuse::OpStats, Option<Arc<datenlord_s3::S3Stats>>),
    fs: std::sync::Weak<datenlord_fs::Fs>,
    neighbors: Option<Arc<datenlord_cluster::neighbor::NeighborStats>>,
) -> crate::metrics::Render {
    use crate::metrics::Exposition;
    Arc::new(move || {
        let mut e = Exposition::default();
        if let Ok(shards) = block_on(engine.stats()) {
            render_read_latency(
                &mut e,
                &datenlord_engine::ShardStats::sum(&shards).latency,
                neighbors.as_deref(),
            );
            let mut fields: Vec<(&'static str, Vec<u64>)> = Vec::new();
            for stats in &shards {
                for (i, (name, value)) in stats.fields().into_iter().enumerate() {
                    if fields.len() <= i {
                        fields.push((name, Vec::new()));
                    }
                    fields[i].1.push(value);
                }
            }
            for (name, values) in fields {
                let (metric, kind) = if datenlord_engine::stats::is_gauge(name) {
                    (format!("datenlord_engine_{name}"), "gauge")
                } else {
                    (format!("datenlord_engine_{name}_total"), "counter")
                };
                e.family(&metric, kind, &format!("Engine {kind} {name}, per shard."));
                for (shard, value) in values.iter().enumerate() {
                    e.sample(&metric, &[("shard", &shard.to_string())], *value as f64);
                }
            }
        }
        let backlog = writeback.backlog();
        e.family(
            "datenlord_writeback_backlog_blocks",
            "gauge",
            "Blocks in the write-back journal not yet in the store.",
        );
        e.sample(
            "datenlord_writeback_backlog_blocks",
            &[],
            backlog.entries as f64,
        );
        e.family(
            "datenlord_writeback_backlog_bytes",
            "gauge",
            "Bytes in the write-back journal not yet in the store.",
        );
        e.sample(
            "datenlord_writeback_backlog_bytes",
            &[],
            backlog.bytes as f64,
        );
        e.family(
            "datenlord_writeback_oldest_seconds",
            "gauge",
            "Age of the oldest block waiting for upload.",
        );
        e.sample(
            "datenlord_writeback_oldest_seconds",
            &[],
            backlog.oldest_age.map_or(0.0, |a| a.as_secs_f64()),
        );
        e.family(
            "datenlord_writeback_upload_failing",
            "gauge",
            "1 while uploads to the store fail.",
        );
        e.sample(
            "datenlord_writeback_upload_failing",
            &[],
            f64::from(u8::from(backlog.last_error.is_some())),
        );
        render_ops(&mut e, &ops.snapshot());
        if let Some(s3) = &s3 {
            render_s3(&mut e, &s3.snapshot());
        }
        if let Some(stats) = &neighbors {
            render_neighbors(&mut e, stats);
        }
        let fs = fs.upgrade();
        if let Some((made, held, bytes)) = fs.as_ref().and_then(|fs| fs.copy_counts()) {
            render_copies(&mut e, made, held, bytes);
        }
        if let Some(stats) = fs.as_ref().and_then(|fs| fs.commit_stats()) {
            render_commit(&mut e, stats);
        }
        e.finish()
    })
}

/// The neighbor tier's counters (a node of a master group).
fn render_neighbors(
    e: &mut crate::metrics::Exposition,
    stats: &datenlord_cluster::neighbor::NeighborStats,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let samples = [
        (
            "hits",
            "Blocks other nodes (their homes) delivered to this one.",
            &stats.hits,
        ),
        ("hit_bytes", "Bytes of those blocks.", &stats.hit_bytes),
        (
            "misses",
            "Requests a home answered with no such block.",
            &stats.misses,
        ),
        (
            "errors",
            "Requests to a home that failed or timed out.",
            &stats.errors,
        ),
        (
            "fallbacks",
            "Reads that went to the store because a home failed or was backing off.",
            &stats.fallbacks,
        ),
        (
            "served",
            "Blocks this node served to other nodes.",
            &stats.served,
        ),
        (
            "served_bytes",
            "Bytes of those blocks.",
            &stats.served_bytes,
        ),
        (
            "served_misses",
            "Requests this node answered with a miss or an error.",
            &stats.served_misses,
        ),
        (
            "served_off_shard",
            "Requests served through another core than the block's owner (the requester did not know this node's shards yet).",
            &stats.served_off_shard,
        ),
        (
            "refused",
            "Connections this node refused (handshake, identity, bad frames).",
            &stats.refused,
        ),
        (
            "wait_microseconds",
            "Time spent waiting for homes' answers.",
            &stats.wait_us,
        ),
        (
            "warmed",
            "Blocks this node fetched and kept on warm-up orders.",
            &stats.warmed,
        ),
        (
            "clear_connections",
            "Connections whose frames go in clear with a MAC (--data-tls off on both ends).",
            &stats.clear_connections,
        ),
        (
            "rdma_connections",
            "RDMA connections made or accepted (--neighbor-transport rdma on both ends).",
            &stats.rdma_connections,
        ),
    ];
    for (name, help, counter) in samples {
        let metric = format!("datenlord_neighbor_{name}_total");
        e.family(&metric, "counter", help);
        e.sample(&metric, &[], counter.load(Relaxed) as f64);
    }
}

/// Read latency by tier: the engine's (memory, NVMe, the source below
/// the cache) and, on a node, the neighbor tier's hits and its reads below
/// it (journal and store).
fn render_read_latency(
    e: &mut crate::metrics::Exposition,
    engine: &datenlord_engine::stats::TierLatency,
    neighbor: Option<&datenlord_cluster::neighbor::NeighborStats>,
) {
    const NAME: &str = "datenlord_read_seconds";
    e.family(
        NAME,
        "histogram",
        "Block read latency by the tier that served it (source: below the cache; neighbor: another node's cache; store: this node's journal and the store, under the neighbor tier).",
    );
    let mut tiers = vec![
        ("memory", engine.memory),
        ("nvme", engine.disk),
        ("source", engine.source),
    ];
    if let Some(n) = neighbor {
        tiers.extend([
            ("neighbor", n.hit_latency.snapshot()),
            ("store", n.below_latency.snapshot()),
        ]);
    }
    for (tier, latency) in tiers {
        let sample = crate::metrics::HistogramSample::from_micros(
            &latency.cumulative(),
            latency.count,
            latency.sum_ns,
        );
        e.histogram(NAME, &[("tier", tier)], &sample);
    }
}

/// The local copies of `-o passthrough`.
/// The group commit (close publishes, the commit makes durable).
fn render_commit(e: &mut crate::metrics::Exposition, stats: datenlord_fs::CommitStats) {
    e.family(
        "datenlord_commit_lag_seconds",
        "gauge",
        "Age of the oldest close not yet durable (the window of loss of a crash now).",
    );
    e.sample("datenlord_commit_lag_seconds", &[], stats.lag.as_secs_f64());
    e.family(
        "datenlord_commit_groups_total",
        "counter",
        "Group commits (journal sync, then metadata) done.",
    );
    e.sample("datenlord_commit_groups_total", &[], stats.groups as f64);
    e.family(
        "datenlord_commit_closes_waited_total",
        "counter",
        "Closes that waited because the commit lagged past its bound.",
    );
    e.sample(
        "datenlord_commit_closes_waited_total",
        &[],
        stats.closes_waited as f64,
    );
}

fn render_copies(e: &mut crate::metrics::Exposition, made: u64, held: usize, bytes: u64) {
    let samples = [
        (
            "datenlord_local_copies_made_total",
            "counter",
            "Local copies made for FUSE passthrough.",
            made as f64,
        ),
        (
            "datenlord_local_copies",
            "gauge",
            "Local copies held for FUSE passthrough.",
            held as f64,
        ),
        (
            "datenlord_local_copies_bytes",
            "gauge",
            "Bytes of the local copies held.",
            bytes as f64,
        ),
    ];
    for (name, kind, help, value) in samples {
        e.family(name, kind, help);
        e.sample(name, &[], value);
    }
}

/// One counter of every op: name, help, and the value of an op's sample.
type OpCounter = (
    &'static str,
    &'static str,
    fn(&datenlord_fuse::OpSample) -> u64,
);

fn render_ops(e: &mut crate::metrics::Exposition, ops: &[datenlord_fuse::OpSample]) {
    let counters: [OpCounter; 2] = [
        (
            "datenlord_fuse_requests_total",
            "FUSE requests answered, per op.",
            |op| op.count,
        ),
        (
            "datenlord_fuse_errors_total",
            "FUSE requests answered with an error, per op.",
            |op| op.errors,
        ),
    ];
    for (name, help, value) in counters {
        e.family(name, "counter", help);
        for op in ops {
            e.sample(name, &[("op", op.op)], value(op) as f64);
        }
    }
    e.family(
        "datenlord_fuse_request_seconds",
        "histogram",
        "FUSE request latency, per op.",
    );
    for op in ops {
        let sample = crate::metrics::HistogramSample::from_micros(&op.buckets, op.count, op.sum_ns);
        e.histogram("datenlord_fuse_request_seconds", &[("op", op.op)], &sample);
    }
}

/// The S3 gateway's counters and latency, per S3 operation.
fn render_s3(e: &mut crate::metrics::Exposition, ops: &[datenlord_s3::stats::OpSample]) {
    const LATENCY: &str = "datenlord_s3_request_seconds";
    type S3Counter = (
        &'static str,
        &'static str,
        fn(&datenlord_s3::stats::OpSample) -> u64,
    );
    let counters: [S3Counter; 5] = [
        (
            "datenlord_s3_requests_total",
            "S3 requests answered, per operation (Unrouted: refused before routing).",
            |op| op.requests,
        ),
        (
            "datenlord_s3_client_errors_total",
            "S3 requests answered with a 4xx status, per operation.",
            |op| op.client_errors,
        ),
        (
            "datenlord_s3_server_errors_total",
            "S3 requests answered with a 5xx status or not at all, per operation.",
            |op| op.server_errors,
        ),
        (
            "datenlord_s3_received_bytes_total",
            "Bytes of S3 request bodies, per operation.",
            |op| op.bytes_in,
        ),
        (
            "datenlord_s3_sent_bytes_total",
            "Bytes of S3 answer bodies, per operation.",
            |op| op.bytes_out,
        ),
    ];
    for (name, help, value) in counters {
        e.family(name, "counter", help);
        for op in ops {
            e.sample(name, &[("op", op.op.as_str())], value(op) as f64);
        }
    }
    e.family(
        LATENCY,
        "histogram",
        "S3 request latency until the answer's headers, per operation.",
    );
    for op in ops {
        let sample =
            crate::metrics::HistogramSample::from_micros(&op.buckets, op.requests, op.sum_ns);
        e.histogram(LATENCY, &[("op", op.op.as_str())], &sample);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        mount: MountArgs,
    }

    fn args(extra: &[&str]) -> MountArgs {
        let mut argv = vec!["datenlord", "/mnt"];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).mount
    }

    #[test]
    fn the_embedded_mount_lets_the_kernel_cache_for_long_and_nodes_for_a_second() {
        let embedded = kernel_cache_defaults(Path::new("/mnt"), true);
        let node = kernel_cache_defaults(Path::new("/mnt"), false);
        for (opts, ttl) in [
            (&embedded, datenlord_fuse::TTL_SOLE_WRITER),
            (&node, datenlord_fuse::TTL_DEFAULT),
        ] {
            assert_eq!(
                (opts.attr_timeout, opts.entry_timeout, opts.negative_timeout),
                (ttl, ttl, ttl)
            );
        }
        assert!(datenlord_fuse::TTL_SOLE_WRITER > datenlord_fuse::TTL_DEFAULT);
        // `-o` still decides.
        let mut opts = embedded;
        datenlord_fuse::parse_mount_options("attr_timeout=2,negative_timeout=0")
            .expect("options")
            .apply(&mut opts);
        assert_eq!(opts.attr_timeout, Duration::from_secs(2));
        assert_eq!(opts.entry_timeout, datenlord_fuse::TTL_SOLE_WRITER);
        assert_eq!(opts.negative_timeout, Duration::ZERO);
    }

    #[test]
    fn gc_grace_must_cover_two_backup_intervals() {
        assert_eq!(
            args(&[]).gc_grace().expect("defaults"),
            Duration::from_secs(3 * META_BACKUP_INTERVAL_DEFAULT_S)
        );
        assert_eq!(
            args(&["--backup-interval", "2", "--gc-grace", "4"])
                .gc_grace()
                .expect("twice"),
            Duration::from_secs(4)
        );
        let err = args(&["--backup-interval", "10", "--gc-grace", "5"])
            .gc_grace()
            .expect_err("too short")
            .to_string();
        assert!(err.contains("--gc-grace"), "{err}");
        assert!(args(&["--backup-interval", "0"]).gc_grace().is_err());
    }

    #[test]
    fn node_options_go_together_with_a_shared_store() {
        let data = Path::new("/var/lib/dl");
        assert!(args(&[]).node_config(data).expect("embedded").is_none());
        let node = [
            "--masters",
            "m1:7000, m2:7000",
            "--node-id",
            "9",
            "--node-listen",
            "0.0.0.0:7100",
        ];
        let mut with_store = node.to_vec();
        with_store.extend(["--store", "s3://bucket/vol"]);
        let refused = args(&with_store)
            .node_config(data)
            .expect_err("plain TCP on 0.0.0.0")
            .to_string();
        assert!(refused.contains("--insecure"), "{refused}");
        with_store.push("--insecure");
        let config = args(&with_store)
            .node_config(data)
            .expect("node")
            .expect("a node config");
        assert_eq!(config.masters, ["m1:7000", "m2:7000"]);
        assert_eq!(config.id, 9);
        assert_eq!(config.data_dir, data.join("node"));
        let err = |extra: &[&str]| {
            args(extra)
                .node_config(data)
                .expect_err("refused")
                .to_string()
        };
        assert!(err(&node).contains("needs --store"));
        let mut own_store = node.to_vec();
        own_store.extend(["--store", "file:///var/lib/dl/store/"]);
        assert!(err(&own_store).contains("embedded mount's default store"));
        assert!(err(&["--node-id", "3"]).contains("missing: --masters, --node-listen"));
        // Frames in clear keep the handshake: they need certificates.
        with_store.extend(["--data-tls", "off"]);
        assert!(err(&with_store).contains("needs --tls-dir"));
        assert!(err(&["--data-tls", "off"]).contains("for a node of a master group"));
        assert!(err(&["--neighbor-transport", "rdma"]).contains("for a node of a master group"));
        let rdma = args(&[&with_store[..], &["--neighbor-transport", "rdma"][..]].concat());
        assert_eq!(rdma.neighbor_transport, NeighborTransport::Rdma);
        // No device here (and maybe no RDMA in this build): TCP.
        assert!(rdma.neighbor_transport.resolve(true).is_none());
        let unclear = Cli::try_parse_from(["datenlord", "/mnt", "--data-tls", "maybe"])
            .expect_err("on or off")
            .to_string();
        assert!(unclear.contains("possible values: on, off"), "{unclear}");
    }

    /// `--node-id cert`: the id comes from the node certificate, which
    /// must carry it anyway (`Node::join` checks it), so a DaemonSet's pods
    /// share one command line and cannot pick one id twice unless the CA
    /// issued it twice.
    #[test]
    fn node_id_cert_takes_the_certificates_id() {
        use datenlord_cluster::certs::{init_ca, issue, CertRequest};
        use datenlord_cluster::tls::Role;
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca");
        init_ca(&ca, 30).expect("CA");
        let issued = |name: &str, role: Role, id: Option<u64>| {
            let out = dir.path().join(name);
            let request = CertRequest {
                name: name.into(),
                role,
                id,
                days: 30,
                hosts: Vec::new(),
            };
            issue(&ca, &out, &request).expect("issue");
            out.display().to_string()
        };
        let config = |node_id: &str, tls: Option<&str>| {
            let mut argv = vec![
                "--masters",
                "m1:7001",
                "--node-listen",
                "0.0.0.0:7101",
                "--store",
                "s3://bucket/vol",
                "--node-id",
                node_id,
            ];
            if let Some(tls) = tls {
                argv.extend(["--tls-dir", tls]);
            }
            args(&argv).node_config(Path::new("/var/lib/dl"))
        };
        let node = issued("n1", Role::Node, Some(4242));
        let got = config("cert", Some(&node))
            .expect("node")
            .expect("a node config");
        assert_eq!(got.id, 4242);
        // A number still works, and must be the certificate's (the join
        // refuses another: `Security::check_own`).
        assert_eq!(
            config("17", Some(&node)).expect("node").expect("config").id,
            17
        );
        let err = |node_id: &str, tls: Option<&str>| {
            format!("{:#}", config(node_id, tls).expect_err("refused"))
        };
        let master = issued("m1", Role::Master, Some(1));
        let refused = err("cert", Some(&master));
        assert!(refused.contains("not a node"), "{refused}");
        let admin = issued("ops", Role::Admin, None);
        assert!(err("cert", Some(&admin)).contains("not a node"));
        let without = err("cert", None);
        assert!(without.contains("give --tls-dir"), "{without}");
        let too_big = issued("n2", Role::Node, Some(70_000));
        let refused = err("cert", Some(&too_big));
        assert!(refused.contains("1 to 65535"), "{refused}");
        assert!(err("0", Some(&node)).contains("1 to 65535"));
        let unclear = Cli::try_parse_from(["datenlord", "/mnt", "--node-id", "auto"])
            .expect_err("a number or cert")
            .to_string();
        assert!(unclear.contains("or `cert`"), "{unclear}");
    }
}
