//! `datenlord`: the DatenLord node binary.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// DatenLord: a distributed cache file system for cloud-native and AI workloads.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect and check the node's block cache.
    #[command(subcommand)]
    Cache(CacheCommand),
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
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
