//! `datenlord`: the DatenLord node binary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod cache;
mod control;
mod csi;
mod daemon;
mod device;
mod extender;
mod gateway;
mod metrics;
mod mount;
mod neighbors;
mod scrub;
mod warmup;

/// DatenLord: a distributed cache file system for cloud-native and AI workloads.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mount the file system (embedded defaults: a single-node metadata
    /// group, the store in <data-dir>/store, formatted on first use). Returns
    /// once mounted; the daemon keeps serving until `umount` or SIGTERM.
    Mount(Box<mount::MountArgs>),
    /// Unmount a mount and wait until its daemon has finished (flushed,
    /// drained the journal, backed up the metadata) and exited: `datenlord
    /// umount DIR; datenlord mount DIR` is always safe.
    Umount(mount::UmountArgs),
    /// Commit everything written on a mount (the kernel does not pass
    /// sync(2) or syncfs(2) to it) and return once it is durable.
    Sync(control::SyncArgs),
    /// Format a remote store: write its volume descriptor (uuid, block
    /// size, format version). Refuses a store formatted differently.
    Format(FormatArgs),
    /// Inspect and check the node's block cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Run a metadata master: one member of the Raft group that holds the
    /// namespace. Start 3 (or 5) with the same --peers; stops cleanly on
    /// SIGTERM or Ctrl-C.
    Master(MasterArgs),
    /// Change or show the membership of a running group of masters.
    #[command(subcommand)]
    Members(MembersCommand),
    /// Make the cluster's certificate authority and its peers'
    /// certificates (mutual TLS between masters, nodes and admins).
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Have the cache nodes fetch a file's or a directory tree's blocks
    /// from the store ahead of a job: each block's home node keeps it
    /// (with an admin or node certificate). Shows progress; exits 1 if
    /// some block could not be warmed.
    Warmup(warmup::WarmupArgs),
    /// Serve the Kubernetes CSI driver (csi.datenlord.io) on a unix
    /// socket: volumes are directories of the node's DatenLord mount,
    /// which the plugin makes when it is not there. Stops on SIGTERM.
    Csi(Box<csi::CsiArgs>),
    /// Serve kube-scheduler's extender API (POST /filter, /prioritize):
    /// pods go to nodes that cache their DatenLord volumes, scored by the
    /// bytes each caches (from the nodes' reports to the masters; the
    /// pods' claims are read from the Kubernetes API). Stops on SIGTERM.
    SchedulerExtender(Box<extender::ExtenderArgs>),
    /// Serve the namespace over the S3 API without a FUSE mount (buckets:
    /// its top-level directories), through a node's cache: the embedded
    /// defaults of `datenlord mount`, or the node given by its flags after
    /// `--`. Access key: DATENLORD_S3_ACCESS_KEY and
    /// DATENLORD_S3_SECRET_KEY. Runs in the foreground; stops on SIGTERM.
    Gateway(Box<gateway::GatewayArgs>),
}

/// How a command talks to the cluster: the TLS directory, or plain TCP.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TlsArgs {
    /// This process's TLS credentials: `ca.pem`, `cert.pem` and `key.pem`
    /// (from `datenlord certs issue`). Every peer is then authenticated
    /// by a certificate of the cluster's CA.
    #[arg(long = "tls-dir", value_name = "DIR")]
    tls_dir: Option<PathBuf>,
}

/// How a client command reaches the masters: their addresses and its TLS
/// directory.
#[derive(Debug, clap::Args)]
pub(crate) struct MastersArgs {
    /// Client addresses of the masters (`host:port`, comma separated).
    #[arg(
        long,
        value_delimiter = ',',
        required = true,
        value_name = "HOST:PORT,..."
    )]
    masters: Vec<String>,
    #[command(flatten)]
    tls: TlsArgs,
}

impl TlsArgs {
    fn security(&self) -> anyhow::Result<datenlord_cluster::link::Security> {
        datenlord_cluster::link::Security::from_dir(self.tls_dir.as_deref()).with_context(|| {
            format!(
                "--tls-dir {}",
                self.tls_dir
                    .as_deref()
                    .unwrap_or(std::path::Path::new(""))
                    .display()
            )
        })
    }
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Make a new cluster CA in DIR: `ca.pem` (give it to every peer) and
    /// `ca-key.pem` (keep it private: it makes masters).
    Init {
        /// Where the CA goes (created 0700).
        dir: PathBuf,
        /// Days the CA is valid.
        #[arg(long, default_value_t = datenlord_cluster::certs::CA_DAYS_DEFAULT)]
        days: u32,
    },
    /// Issue a peer's key and certificate, carrying its role and Raft id,
    /// into a directory usable as its --tls-dir.
    Issue {
        /// The CA directory (from `certs init`).
        #[arg(long)]
        ca: PathBuf,
        /// A name for people (host name): the certificate's common name.
        #[arg(long)]
        name: String,
        /// master, node or admin (admins change the membership).
        #[arg(long)]
        role: datenlord_cluster::tls::Role,
        /// The Raft id: the master's --id or the node's --node-id (not for admins).
        #[arg(long)]
        id: Option<u64>,
        /// Where to write `ca.pem`, `cert.pem` and `key.pem` (default: ./NAME).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = datenlord_cluster::certs::CERT_DAYS_DEFAULT)]
        days: u32,
        /// A host name or IP address the certificate is also valid for
        /// (repeatable): what S3 clients of a gateway using this
        /// certificate connect by. Cluster peers do not need it.
        #[arg(long = "host", value_name = "NAME|IP")]
        hosts: Vec<String>,
    },
    /// Revoke a certificate before it expires (a lost key, a retired
    /// host): the masters record its serial and every master and node
    /// refuses it from then on. Needs an admin certificate.
    Revoke {
        /// Masters of the group (any of them; the leader is found).
        #[arg(long, value_delimiter = ',', required = true)]
        masters: Vec<String>,
        /// The certificate's serial number (hex, as `certs issue` prints it).
        #[arg(long)]
        serial: String,
        #[command(flatten)]
        tls: TlsArgs,
    },
}

#[derive(Debug, clap::Args)]
struct FormatArgs {
    /// The store: `file:///abs/dir` or `s3://bucket/prefix` (endpoint and
    /// credentials from the AWS_* environment variables, else from
    /// ~/.aws/credentials and ~/.aws/config).
    #[arg(long)]
    store: String,
    /// Block size of the volume (a power of two, 64K..16M).
    #[arg(long = "block-size", default_value = "1M")]
    block_size: String,
}

#[derive(Debug, clap::Args)]
struct MasterArgs {
    /// This master's id: one of the ids in --peers.
    #[arg(long)]
    id: u64,
    /// Every master of the group, this one included: `1=host:port,2=host:port,...`.
    /// Each port serves both the other masters and metadata clients.
    #[arg(long, value_parser = parse_peers)]
    peers: BTreeMap<u64, String>,
    /// Directory of this master's Raft log and snapshots (created if missing).
    #[arg(long = "data-dir")]
    data_dir: PathBuf,
    /// Snapshot the namespace (and compact the log) every this many changes.
    #[arg(long = "snapshot-interval", value_name = "ENTRIES")]
    snapshot_interval: Option<u64>,
    /// Join a running group instead of starting a new one: first add this
    /// master with `datenlord members add`, then start it with --join (its
    /// data directory must be new).
    #[arg(long)]
    join: bool,
    /// Name of a new group: with --peers it makes the group's id, which
    /// every member records and checks on each connection, so a data
    /// directory of another group is refused. Give a new name when a group
    /// is created again on the same addresses. Used only at bootstrap.
    #[arg(long, default_value = "")]
    group: String,
    #[command(flatten)]
    tls: TlsArgs,
    /// The group's store (`file:///abs/dir` or `s3://bucket/prefix`, as the
    /// nodes' `--store`): the leader backs the namespace up to it every
    /// --backup-interval, so losing every master does not lose it.
    #[arg(long)]
    store: Option<String>,
    /// Seconds between the leader's metadata backups to --store.
    #[arg(long = "backup-interval", value_name = "SECONDS", default_value_t = MASTER_BACKUP_INTERVAL_DEFAULT_S)]
    backup_interval_s: u64,
    /// Seconds a block version nothing refers to stays in --store before
    /// the leader's orphan scrub deletes it (default: three
    /// --backup-interval; at least two).
    #[arg(long = "gc-grace", value_name = "SECONDS")]
    gc_grace_s: Option<u64>,
    /// Seconds between the leader's scans of --store for block versions
    /// nothing refers to (left by a node's crash between its upload and
    /// its metadata update).
    #[arg(long = "scrub-interval", value_name = "SECONDS", default_value_t = scrub::SCRUB_INTERVAL_DEFAULT_S)]
    scrub_interval_s: u64,
    /// Start a new group from --store's newest metadata backup: give it to
    /// every master of the new group, each on a new data directory.
    #[arg(long = "restore-from-store", requires = "store")]
    restore_from_store: bool,
    /// Serve plain TCP on an address other machines can reach (no
    /// --tls-dir): whoever reaches the port can act as a member or as
    /// root on the namespace. Only on a network you trust.
    #[arg(long)]
    insecure: bool,
}

#[derive(Debug, Subcommand)]
enum MembersCommand {
    /// Add a master to a running group (as a voter, or with --learner as a
    /// learner that copies the namespace without voting).
    Add {
        /// Masters of the group (any of them; the leader is found).
        #[arg(long, value_delimiter = ',', required = true)]
        masters: Vec<String>,
        /// Id of the new master.
        #[arg(long)]
        id: u64,
        /// Address (host:port) the new master will listen on.
        #[arg(long)]
        addr: String,
        /// Add as a learner.
        #[arg(long)]
        learner: bool,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Remove a master from a running group.
    Remove {
        /// Masters of the group.
        #[arg(long, value_delimiter = ',', required = true)]
        masters: Vec<String>,
        /// Id of the master to remove.
        #[arg(long)]
        id: u64,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Take a cache node out of the cache registry (one that is gone for
    /// good: a running node registers itself again). Admin certificate.
    ForgetNode {
        /// Masters of the group.
        #[arg(long, value_delimiter = ',', required = true)]
        masters: Vec<String>,
        /// Id of the node.
        #[arg(long)]
        id: u64,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Show each master's view: leader, term, applied index.
    Status {
        /// Masters to ask.
        #[arg(long, value_delimiter = ',', required = true)]
        masters: Vec<String>,
        #[command(flatten)]
        tls: TlsArgs,
    },
}

fn parse_peers(text: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut peers = BTreeMap::new();
    for item in text.split(',').filter(|s| !s.trim().is_empty()) {
        let (id, addr) = item.split_once('=').ok_or_else(|| {
            format!("{item:?}: write each master as ID=HOST:PORT, e.g. 1=10.0.0.1:7001")
        })?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("{id:?}: a master id is a positive number"))?;
        if id == 0 {
            return Err("master id 0 is reserved: number masters from 1".into());
        }
        if peers.insert(id, addr.trim().to_string()).is_some() {
            return Err(format!("master id {id} appears twice in --peers"));
        }
    }
    if peers.is_empty() {
        return Err("--peers lists no master".into());
    }
    Ok(peers)
}

#[derive(Debug, Subcommand)]
enum CacheCommand {
    /// Show the layout of a node's cache device and the blocks it holds
    /// (offline, --cache-dir), or have every cache node of the cluster
    /// check its blocks against the store (--masters --verify).
    Inspect(cache::InspectArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Colors only on a terminal, and never for a mount that goes to the
    // background: its stderr becomes the log file.
    let daemonizes = matches!(&cli.command, Command::Mount(args) if !args.foreground);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && !daemonizes;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if matches!(cli.command, Command::Mount(_) | Command::Master(_)) {
        // Everything a node or master writes (journal, cache, store
        // objects, Raft log, snapshots, logs) is its owner's alone: the
        // mount's permission checks must not be bypassed around it.
        // SAFETY: umask only sets the process's file mode mask.
        unsafe { libc::umask(0o077) };
    }
    match cli.command {
        Command::Mount(args) => mount::run(&args),
        Command::Umount(args) => mount::umount(&args),
        Command::Sync(args) => control::sync(&args),
        Command::Format(args) => run_format(&args),
        Command::Master(args) => run_master(&args),
        Command::Members(command) => run_members(command),
        Command::Certs(command) => run_certs(command),
        Command::Warmup(args) => warmup::run(&args),
        Command::Cache(CacheCommand::Inspect(args)) => cache::inspect(&args),
        Command::Csi(args) => csi::run(&args),
        Command::SchedulerExtender(args) => extender::run(&args),
        Command::Gateway(args) => gateway::run(&args),
    }
}

fn run_format(args: &FormatArgs) -> anyhow::Result<ExitCode> {
    use datenlord_engine::store::{VolumeDescriptor, STORE_FORMAT_VERSION};
    let bytes = datenlord_engine::block::parse_bytes(&args.block_size).context("--block-size")?;
    let block_size = datenlord_engine::BlockSize::new(bytes)
        .map_err(|e| anyhow::anyhow!("--block-size: {e}"))?;
    let (url, remote) = open_store(&args.store)?;
    let descriptor = VolumeDescriptor {
        uuid: mount::random_uuid(),
        block_size: block_size.bytes(),
        format_version: STORE_FORMAT_VERSION,
    };
    futures::executor::block_on(remote.format(&descriptor))
        .with_context(|| format!("formatting {url}"))?;
    let written = futures::executor::block_on(remote.descriptor())
        .with_context(|| format!("reading back the descriptor of {url}"))?
        .ok_or_else(|| anyhow::anyhow!("{url}: the descriptor just written is missing"))?;
    println!(
        "formatted {url}: volume {}, block size {} KiB",
        written.uuid_hex(),
        written.block_size / 1024
    );
    Ok(ExitCode::SUCCESS)
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (and the threads it
/// starts) so that one thread can wait for them: stop cleanly, or reload
/// the TLS credentials.
pub(crate) fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: plain signal-mask calls on a zeroed, then initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, libc::SIGINT);
        libc::sigaddset(&raw mut set, libc::SIGTERM);
        libc::sigaddset(&raw mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut());
        set
    }
}

/// Waits for SIGINT or SIGTERM; on each SIGHUP meanwhile, reloads the TLS
/// credentials of `security` (certificate rotation) and goes on waiting.
pub(crate) fn wait_for_stop_signal(
    set: &libc::sigset_t,
    security: Option<&datenlord_cluster::link::Security>,
) -> i32 {
    loop {
        let mut signal = 0;
        // SAFETY: waits for one of the signals in `set`, blocked above.
        unsafe { libc::sigwait(set, &raw mut signal) };
        if signal != libc::SIGHUP {
            return signal;
        }
        match security.map(datenlord_cluster::link::Security::reload) {
            Some(Ok(Some(identity))) => tracing::info!(
                %identity,
                serial = %identity.serial,
                "SIGHUP: reloaded the TLS credentials; new connections use them"
            ),
            Some(Err(e)) => tracing::error!(
                error = %e,
                "SIGHUP: the TLS credentials could not be reloaded; the ones in use stay"
            ),
            Some(Ok(None)) | None => {
                tracing::info!("SIGHUP: no TLS credentials to reload");
            }
        }
    }
}

fn run_master(args: &MasterArgs) -> anyhow::Result<ExitCode> {
    let signals = block_stop_signals();
    let security = args.tls.security()?;
    if let Some(own) = args.peers.get(&args.id) {
        datenlord_cluster::link::check_listen(own, &security, args.insecure, "--peers")
            .map_err(anyhow::Error::msg)?;
    }
    let store = args.store.as_deref().map(open_store).transpose()?;
    let restore = match (&store, args.restore_from_store) {
        (Some((url, remote)), true) => {
            let (seq, bytes) = futures::executor::block_on(remote.latest_meta_snapshot())
                .with_context(|| format!("reading the newest metadata backup of {url}"))?
                .ok_or_else(|| {
                    anyhow::anyhow!("--restore-from-store: {url} holds no metadata backup")
                })?;
            tracing::info!(seq, store = %url, "starting the group from this metadata backup");
            Some(bytes)
        }
        _ => None,
    };
    let config = datenlord_cluster::master::MasterConfig {
        id: args.id,
        peers: args.peers.clone(),
        data_dir: args.data_dir.clone(),
        snapshot_interval_entries: args.snapshot_interval,
        join: args.join,
        group_name: args.group.clone(),
        security: security.clone(),
        restore,
    };
    mount::private_dir(&args.data_dir, "the master's data directory")?;
    let master = std::sync::Arc::new(
        datenlord_cluster::master::Master::start(&config).with_context(|| {
            format!(
                "starting metadata master {} with data in {}",
                args.id,
                args.data_dir.display()
            )
        })?,
    );
    let grace = scrub::gc_grace(args.backup_interval_s, args.gc_grace_s)?;
    let store_tasks = store.map(|(_, remote)| {
        // The leader's copy is the newest; one writer at a time.
        let leader = std::sync::Arc::clone(&master);
        let backup = mount::Periodic::start(
            "meta-backup",
            std::time::Duration::from_secs(args.backup_interval_s.max(1)),
            mount::backup_task(&master, &remote, move || leader.is_leader()),
        );
        let scrub = mount::Periodic::start(
            "store-scrub",
            std::time::Duration::from_secs(args.scrub_interval_s.max(1)),
            scrub::master_task(&master, &remote, grace),
        );
        [backup, scrub]
    });
    // The Lord: while this master leads, it marks silent cache nodes dead.
    let mut lord = datenlord_cluster::lord::Lord::new(master.handle(), master.local());
    let lord = mount::Periodic::start(
        "lord",
        std::time::Duration::from_millis(datenlord_cluster::lord::LORD_INTERVAL_MS),
        move || lord.round(),
    );
    let signal = wait_for_stop_signal(&signals, Some(&security));
    tracing::info!(signal, "stopping the metadata master");
    lord.stop();
    store_tasks
        .into_iter()
        .flatten()
        .for_each(mount::Periodic::stop);
    let master = std::sync::Arc::into_inner(master)
        .ok_or_else(|| anyhow::anyhow!("the metadata master is still in use"))?;
    master.stop().context("stopping the metadata master")?;
    Ok(ExitCode::SUCCESS)
}

/// Default seconds between a master group's metadata backups.
const MASTER_BACKUP_INTERVAL_DEFAULT_S: u64 = 60;

/// Opens a store given on the command line: its URL and a client of it.
fn open_store(
    text: &str,
) -> anyhow::Result<(
    datenlord_engine::store::StoreUrl,
    datenlord_engine::store::RemoteStore,
)> {
    use datenlord_engine::store::{ControlPlane, RemoteStore, StoreUrl};
    let url: StoreUrl = text.parse().map_err(|e| anyhow::anyhow!("--store: {e}"))?;
    let control = ControlPlane::start().context("starting the store's runtime")?;
    let remote = RemoteStore::open(&url, &control).with_context(|| format!("opening {url}"))?;
    Ok((url, remote))
}

fn run_members(command: MembersCommand) -> anyhow::Result<ExitCode> {
    use datenlord_cluster::master::MetaClient;
    use datenlord_cluster::replica::Membership;
    let (masters, change, tls) = match command {
        MembersCommand::Add {
            masters,
            id,
            addr,
            learner,
            tls,
        } => {
            anyhow::ensure!(id != 0, "master id 0 is reserved: number masters from 1");
            let change = if learner {
                Membership::AddLearner { id, addr }
            } else {
                Membership::AddVoter { id, addr }
            };
            (masters, change, tls)
        }
        MembersCommand::Remove { masters, id, tls } => (masters, Membership::Remove { id }, tls),
        MembersCommand::ForgetNode { masters, id, tls } => {
            let command = datenlord_cluster::meta::Command::UnregisterCacheNode { id };
            MetaClient::new(masters, &tls.security()?)
                .cache_node(&command)
                .with_context(|| format!("taking node {id} out of the cache registry"))?;
            println!("node {id} is out of the cache registry");
            return Ok(ExitCode::SUCCESS);
        }
        MembersCommand::Status { masters, tls } => {
            let security = tls.security()?;
            for addr in &masters {
                let mut one = MetaClient::with_deadline(
                    vec![addr.clone()],
                    std::time::Duration::from_secs(2),
                    &security,
                );
                match one.status() {
                    Ok(s) => println!(
                        "{addr}: master {} leader {} term {} applied {}",
                        s.id,
                        if s.leader == 0 {
                            "none".to_string()
                        } else {
                            s.leader.to_string()
                        },
                        s.term,
                        s.applied
                    ),
                    Err(e) => println!("{addr}: unreachable ({e})"),
                }
            }
            print_cache_nodes(&masters, &security);
            return Ok(ExitCode::SUCCESS);
        }
    };
    MetaClient::new(masters, &tls.security()?)
        .change_members(&change)
        .with_context(|| format!("applying {change:?}"))?;
    println!("applied {change:?}");
    Ok(ExitCode::SUCCESS)
}

/// The cache node registry as the leader sees it, one line per node.
fn print_cache_nodes(masters: &[String], security: &datenlord_cluster::link::Security) {
    use datenlord_cluster::master::{MetaClient, Query, QueryAnswer};
    let mut client = MetaClient::with_deadline(
        masters.to_vec(),
        std::time::Duration::from_secs(5),
        security,
    );
    match client.query(&Query::CacheNodes) {
        Ok(QueryAnswer::CacheNodes { epoch, nodes }) => {
            let health: std::collections::BTreeMap<u64, _> = client
                .health()
                .unwrap_or_default()
                .into_iter()
                .map(|entry| (entry.id, entry))
                .collect();
            println!("cache nodes (registry epoch {epoch}):");
            for n in nodes {
                println!(
                    "  node {} at {}: {}, caches {} bytes",
                    n.id,
                    n.addr,
                    if n.live { "live" } else { "dead" },
                    n.cache_bytes
                );
                match health.get(&n.id) {
                    Some(entry) => println!("    {}", describe_health(entry)),
                    None => println!("    no health report (yet)"),
                }
            }
        }
        Ok(other) => println!("cache nodes: unexpected answer {other:?}"),
        Err(e) => println!("cache nodes: not available ({e})"),
    }
}

/// One node's last health report, for `members status`.
fn describe_health(entry: &datenlord_cluster::health::HealthEntry) -> String {
    let h = &entry.health;
    let fill = if h.cache_capacity == 0 {
        0.0
    } else {
        h.cached_bytes as f64 * 100.0 / h.cache_capacity as f64
    };
    format!(
        "health: {} of {} bytes cached ({fill:.0}%, of {} volumes), journal {} blocks ({} bytes, oldest {} ms), disk errors {}, neighbor errors {}, load {:.2}; reported by {} {:.1} s ago",
        h.cached_bytes,
        h.cache_capacity,
        h.volumes.len(),
        h.journal_blocks,
        h.journal_bytes,
        h.journal_oldest_ms,
        h.disk_errors,
        h.neighbor_errors,
        h.load_milli as f64 / 1000.0,
        if entry.name.is_empty() { "?" } else { &entry.name },
        entry.age_ms as f64 / 1000.0
    )
}

fn run_certs(command: CertsCommand) -> anyhow::Result<ExitCode> {
    use datenlord_cluster::certs;
    match command {
        CertsCommand::Init { dir, days } => {
            certs::init_ca(&dir, days)
                .with_context(|| format!("making a cluster CA in {}", dir.display()))?;
            println!(
                "made a cluster CA in {}: give {} to every peer (`certs issue` copies it), keep {} private",
                dir.display(),
                dir.join(datenlord_cluster::tls::CA_CERT_FILE).display(),
                dir.join(certs::CA_KEY_FILE).display()
            );
        }
        CertsCommand::Issue {
            ca,
            name,
            role,
            id,
            out,
            days,
            hosts,
        } => {
            let out = out.unwrap_or_else(|| PathBuf::from(&name));
            let request = certs::CertRequest {
                name,
                role,
                id,
                days,
                hosts,
            };
            let identity = certs::issue(&ca, &out, &request).with_context(|| {
                format!("issuing a certificate with the CA in {}", ca.display())
            })?;
            println!(
                "issued a certificate for {identity} (serial {}) in {}: use it as --tls-dir",
                identity.serial,
                out.display()
            );
        }
        CertsCommand::Revoke {
            masters,
            serial,
            tls,
        } => {
            datenlord_cluster::master::MetaClient::new(masters, &tls.security()?)
                .revoke(&serial)
                .with_context(|| format!("revoking the certificate with serial {serial}"))?;
            println!("revoked the certificate with serial {serial}: masters and nodes refuse it from now on");
        }
    }
    Ok(ExitCode::SUCCESS)
}
