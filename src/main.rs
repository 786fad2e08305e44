//! `datenlord`: the DatenLord node binary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod daemon;
mod metrics;
mod mount;

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
    },
    /// Remove a master from a running group.
    Remove {
        /// Masters of the group.
        #[arg(long, value_delimiter = ',', required = true)]
        masters: Vec<String>,
        /// Id of the master to remove.
        #[arg(long)]
        id: u64,
    },
    /// Show each master's view: leader, term, applied index.
    Status {
        /// Masters to ask.
        #[arg(long, value_delimiter = ',', required = true)]
        masters: Vec<String>,
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
    /// Show the layout of a cache device and the blocks it holds; with
    /// --verify, check every block's checksums (exit status 1 if any fails).
    Inspect {
        /// The --cache-dir of the node, or its raw cache block device.
        #[arg(long = "cache-dir", value_name = "DIR|DEVICE")]
        cache_dir: PathBuf,
        /// Read every block and verify its checksums.
        #[arg(long)]
        verify: bool,
    },
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
    match cli.command {
        Command::Mount(args) => mount::run(&args),
        Command::Format(args) => run_format(&args),
        Command::Master(args) => run_master(&args),
        Command::Members(command) => run_members(command),
        Command::Cache(CacheCommand::Inspect { cache_dir, verify }) => {
            let report = datenlord_engine::inspect::inspect(&cache_dir, verify)
                .with_context(|| format!("inspecting the cache at {}", cache_dir.display()))?;
            let sb = &report.superblock;
            println!("cache: {}", report.path.display());
            println!(
                "layout: block size {} KiB, {} shards x {} slots, header {} bytes, epoch {:016x}",
                sb.block_size / 1024,
                sb.shards,
                sb.slots_per_shard,
                sb.header_bytes,
                sb.epoch
            );
            let mut corrupt = 0;
            for (shard, region) in report.regions.iter().enumerate() {
                let verified = if verify {
                    format!(", {} corrupt", region.corrupt)
                } else {
                    String::new()
                };
                println!(
                    "shard {shard}: {} blocks, {} bytes{verified}",
                    region.blocks, region.bytes
                );
                corrupt += region.corrupt;
            }
            Ok(if corrupt > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

fn run_format(args: &FormatArgs) -> anyhow::Result<ExitCode> {
    use datenlord_engine::store::{
        ControlPlane, RemoteStore, StoreUrl, VolumeDescriptor, STORE_FORMAT_VERSION,
    };
    let url: StoreUrl = args
        .store
        .parse()
        .map_err(|e| anyhow::anyhow!("--store: {e}"))?;
    let bytes = datenlord_engine::block::parse_bytes(&args.block_size).context("--block-size")?;
    let block_size = datenlord_engine::BlockSize::new(bytes)
        .map_err(|e| anyhow::anyhow!("--block-size: {e}"))?;
    let control = ControlPlane::start().context("starting the store's runtime")?;
    let remote = RemoteStore::open(&url, &control).with_context(|| format!("opening {url}"))?;
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

/// Blocks SIGINT and SIGTERM in this thread (and the threads it starts) so
/// that the main thread can wait for them and stop the master cleanly.
fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: plain signal-mask calls on a zeroed, then initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, libc::SIGINT);
        libc::sigaddset(&raw mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut());
        set
    }
}

fn wait_for_stop_signal(set: &libc::sigset_t) -> i32 {
    let mut signal = 0;
    // SAFETY: waits for one of the signals in `set`, blocked above.
    unsafe { libc::sigwait(set, &raw mut signal) };
    signal
}

fn run_master(args: &MasterArgs) -> anyhow::Result<ExitCode> {
    let signals = block_stop_signals();
    let config = datenlord_cluster::master::MasterConfig {
        id: args.id,
        peers: args.peers.clone(),
        data_dir: args.data_dir.clone(),
        snapshot_interval_entries: args.snapshot_interval,
        join: args.join,
        group_name: args.group.clone(),
    };
    let master = datenlord_cluster::master::Master::start(&config).with_context(|| {
        format!(
            "starting metadata master {} with data in {}",
            args.id,
            args.data_dir.display()
        )
    })?;
    let signal = wait_for_stop_signal(&signals);
    tracing::info!(signal, "stopping the metadata master");
    master.stop().context("stopping the metadata master")?;
    Ok(ExitCode::SUCCESS)
}

fn run_members(command: MembersCommand) -> anyhow::Result<ExitCode> {
    use datenlord_cluster::master::MetaClient;
    use datenlord_cluster::replica::Membership;
    let (masters, change) = match command {
        MembersCommand::Add {
            masters,
            id,
            addr,
            learner,
        } => {
            anyhow::ensure!(id != 0, "master id 0 is reserved: number masters from 1");
            let change = if learner {
                Membership::AddLearner { id, addr }
            } else {
                Membership::AddVoter { id, addr }
            };
            (masters, change)
        }
        MembersCommand::Remove { masters, id } => (masters, Membership::Remove { id }),
        MembersCommand::Status { masters } => {
            for addr in &masters {
                let mut one = MetaClient::with_deadline(
                    vec![addr.clone()],
                    std::time::Duration::from_secs(2),
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
            return Ok(ExitCode::SUCCESS);
        }
    };
    MetaClient::new(masters)
        .change_members(&change)
        .with_context(|| format!("applying {change:?}"))?;
    println!("applied {change:?}");
    Ok(ExitCode::SUCCESS)
}
