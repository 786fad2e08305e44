//! `datenlord cache inspect`: the layout and blocks of one node's cache
//! device, read offline (`--cache-dir`); or, with `--masters --verify`,
//! every cache node of the cluster checks the blocks it holds against the
//! store's checksums and drops bad copies
//! (`datenlord_cluster::neighbor::check`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use datenlord_cluster::master::{MetaClient, Query, QueryAnswer};
use datenlord_cluster::neighbor::check::verify_nodes;
use datenlord_cluster::neighbor::DataLink;
use datenlord_engine::block::BLOCK_SIZE_MAX_BYTES;
use datenlord_engine::VerifyReport;

use crate::TlsArgs;

#[derive(Debug, clap::Args)]
pub(crate) struct InspectArgs {
    /// The --cache-dir of the node, or its raw cache block device: read
    /// offline (on a stopped node).
    #[arg(
        long = "cache-dir",
        value_name = "DIR|DEVICE",
        required_unless_present = "masters",
        conflicts_with = "masters"
    )]
    cache_dir: Option<PathBuf>,
    /// Check every block: offline, against the slot's own checksums (exit
    /// status 1 if any fails); with --masters, against the store's, and
    /// copies that differ are dropped (exit status 1 if any did, or a node
    /// could not be checked).
    #[arg(long)]
    verify: bool,
    /// Client addresses of the masters (`host:port`, comma separated):
    /// every live cache node of the cluster checks its cache (with an
    /// admin certificate in --tls-dir).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "HOST:PORT,...",
        requires = "verify"
    )]
    masters: Vec<String>,
    #[command(flatten)]
    tls: TlsArgs,
    /// How long one node may take to check its cache (it reads every
    /// block it holds and asks the store for each one's checksum).
    #[arg(long = "timeout-secs", value_name = "SECONDS", default_value_t = 1800)]
    timeout_secs: u64,
}

pub(crate) fn inspect(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    match &args.cache_dir {
        Some(dir) => inspect_device(dir, args.verify),
        None => verify_cluster(args),
    }
}

fn inspect_device(cache_dir: &std::path::Path, verify: bool) -> anyhow::Result<ExitCode> {
    let report = datenlord_engine::inspect::inspect(cache_dir, verify)
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

fn verify_cluster(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    let security = args.tls.security()?;
    let mut client = MetaClient::new(args.masters.clone(), &security);
    let nodes = match client
        .query(&Query::CacheNodes)
        .context("reading the cache registry")?
    {
        QueryAnswer::CacheNodes { nodes, .. } => nodes,
        other => bail!("the masters answered {other:?} for the cache registry"),
    };
    if nodes.is_empty() {
        println!("no cache node is registered");
        return Ok(ExitCode::SUCCESS);
    }
    let (live, down): (Vec<_>, Vec<_>) = nodes.into_iter().partition(|n| n.live);
    let targets: Vec<(u64, String)> = live.iter().map(|n| (n.id, n.addr.clone())).collect();
    eprintln!(
        "checking the caches of {} node(s) against the store",
        targets.len()
    );
    let link = DataLink::new(security);
    let checks = verify_nodes(
        &targets,
        &link,
        BLOCK_SIZE_MAX_BYTES,
        args.timeout_secs.saturating_mul(1000),
    )
    .context("asking the nodes to check their caches")?;
    let mut bad = false;
    let mut total = VerifyReport::default();
    for ((node, result), (_, addr)) in checks.iter().zip(&targets) {
        match result {
            Ok(r) => {
                println!("node {node} ({addr}): {}", describe(r));
                bad |= r.dropped() > 0;
                total += *r;
            }
            Err(e) => {
                println!("node {node} ({addr}): not checked: {e}");
                bad = true;
            }
        }
    }
    for node in &down {
        println!(
            "node {} ({}): not checked: the Lord does not hear it (dead or stopped)",
            node.id, node.addr
        );
    }
    println!("all nodes: {}", describe(&total));
    Ok(if bad {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn describe(r: &VerifyReport) -> String {
    format!(
        "{} blocks ({} bytes): {} match the store, {} differed and {} were corrupt (dropped), \
         {} not in the store, {} unchecked (store unreachable)",
        r.blocks, r.bytes, r.matched, r.mismatched, r.corrupt, r.absent, r.unchecked
    )
}
