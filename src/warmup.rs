//! `datenlord warmup PATH`: the home nodes of a file's or a directory
//! tree's blocks fetch them from the store and keep them, ahead of a job
//! (`datenlord_cluster::neighbor::warm`). The namespace is walked through
//! the masters; the orders go to the homes that the cache registry
//! places the blocks at.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::{bail, Context};
use datenlord_cluster::master::{ClientError, MetaClient, Query, QueryAnswer, BLOCKS_QUERY_MAX};
use datenlord_cluster::meta::{Creds, FileKind, Ino, ROOT_INO};
use datenlord_cluster::neighbor::warm::{warm, WarmReport};
use datenlord_cluster::neighbor::{DataLink, View};
use datenlord_engine::block::BLOCK_SIZE_MAX_BYTES;
use datenlord_engine::BlockId;

use crate::MastersArgs;

/// Entries asked per `readdir`.
const READDIR_BATCH: u32 = 1024;

#[derive(Debug, clap::Args)]
pub(crate) struct WarmupArgs {
    /// A file or directory of the namespace, as a path from the root of
    /// the volume (what every mount shows): `/` for everything.
    path: String,
    #[command(flatten)]
    cluster: MastersArgs,
}

/// What a walk of the namespace found.
#[derive(Debug, Default)]
struct Found {
    files: u64,
    bytes: u64,
    blocks: Vec<BlockId>,
}

pub(crate) fn run(args: &WarmupArgs) -> anyhow::Result<ExitCode> {
    let security = args.cluster.tls.security()?;
    let mut client = MetaClient::new(args.cluster.masters.clone(), &security);
    let (ino, kind, size) = resolve(&mut client, &args.path)?;
    let mut found = Found::default();
    walk(&mut client, ino, kind, size, &mut found)
        .with_context(|| format!("listing the blocks under {}", args.path))?;
    let view = match client
        .query(&Query::CacheNodes)
        .context("reading the cache registry")?
    {
        QueryAnswer::CacheNodes { epoch, nodes } => View::new(epoch, &nodes),
        other => bail!("the masters answered {other:?} for the cache registry"),
    };
    eprintln!(
        "warmup: {} files, {} blocks ({} bytes) under {}",
        found.files,
        found.blocks.len(),
        found.bytes,
        args.path
    );
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut progress = |r: &WarmReport| {
        let line = format!(
            "warmup: {}/{} blocks ({} warmed, {} not in the store, {} failed)",
            r.done(),
            r.blocks,
            r.warmed,
            r.missing,
            r.failed
        );
        if interactive {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
        let _ = std::io::stderr().flush();
    };
    let link = DataLink::new(security);
    let report = warm(
        &view,
        &found.blocks,
        &link,
        BLOCK_SIZE_MAX_BYTES,
        &mut progress,
    )
    .context("sending warm-up orders")?;
    if interactive {
        eprintln!();
    }
    for (node, why) in &report.failures {
        if *node == 0 {
            eprintln!("warmup: {why}");
        } else {
            eprintln!("warmup: node {node} failed: {why}");
        }
    }
    println!(
        "warmed {} of {} blocks under {} ({} not in the store yet, {} failed)",
        report.warmed, report.blocks, args.path, report.missing, report.failed
    );
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The inode, kind and size at `path` (from the volume's root).
fn resolve(client: &mut MetaClient, path: &str) -> anyhow::Result<(Ino, FileKind, u64)> {
    if !path.starts_with('/') {
        bail!(
            "{path}: give the path from the volume's root, starting with / (e.g. /datasets/train)"
        );
    }
    let (mut ino, mut kind, mut size) = (ROOT_INO, FileKind::Dir, 0);
    for name in path.split('/').filter(|n| !n.is_empty() && *n != ".") {
        if kind != FileKind::Dir {
            bail!("{path}: a component before {name} is not a directory");
        }
        let query = Query::Lookup {
            parent: ino,
            name: name.as_bytes().to_vec(),
            creds: Creds::root(),
        };
        match client
            .query(&query)
            .with_context(|| format!("looking up {name} in {path}"))?
        {
            QueryAnswer::Attr(attr) => (ino, kind, size) = (attr.ino, attr.kind, attr.size),
            other => bail!("the masters answered {other:?} to a lookup"),
        }
    }
    Ok((ino, kind, size))
}

/// Adds the blocks of the file or tree at `ino` to `found`.
fn walk(
    client: &mut MetaClient,
    ino: Ino,
    kind: FileKind,
    size: u64,
    found: &mut Found,
) -> anyhow::Result<()> {
    let mut dirs = Vec::new();
    match kind {
        FileKind::File => add_file(client, ino, size, found)?,
        FileKind::Dir => dirs.push(ino),
        _ => {}
    }
    while let Some(dir) = dirs.pop() {
        let mut after_cookie = 0;
        loop {
            let query = Query::ReadDir {
                ino: dir,
                after_cookie,
                max_entries: READDIR_BATCH,
                creds: Creds::root(),
            };
            let entries = match client.query(&query) {
                Ok(QueryAnswer::Entries(entries)) => entries,
                Err(e) if gone(&e) => break,
                Ok(other) => bail!("the masters answered {other:?} to a readdir"),
                Err(e) => return Err(e.into()),
            };
            let Some(last) = entries.last() else { break };
            after_cookie = last.cookie;
            for entry in entries {
                if entry.name == b"." || entry.name == b".." {
                    continue;
                }
                match entry.kind {
                    FileKind::Dir => dirs.push(entry.ino),
                    FileKind::File => {
                        let attr = match client.query(&Query::GetAttr { ino: entry.ino }) {
                            Ok(QueryAnswer::Attr(attr)) => attr,
                            // Removed since the listing: nothing to warm.
                            Err(e) if gone(&e) => continue,
                            Ok(other) => bail!("the masters answered {other:?} to a getattr"),
                            Err(e) => return Err(e.into()),
                        };
                        add_file(client, entry.ino, attr.size, found)?;
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// Whether a query failed because its inode was removed meanwhile.
fn gone(e: &ClientError) -> bool {
    matches!(e, ClientError::Meta { errno, .. } if *errno == libc::ENOENT)
}

fn add_file(client: &mut MetaClient, ino: Ino, size: u64, found: &mut Found) -> anyhow::Result<()> {
    found.files += 1;
    found.bytes += size;
    let mut first_index = 0;
    loop {
        let query = Query::Blocks {
            ino,
            first_index,
            max_entries: BLOCKS_QUERY_MAX,
        };
        let entries = match client.query(&query) {
            Ok(QueryAnswer::Blocks(entries)) => entries,
            Err(e) if gone(&e) => return Ok(()),
            Ok(other) => bail!("the masters answered {other:?} to a block map query"),
            Err(e) => return Err(e.into()),
        };
        let Some(&(last, _)) = entries.last() else {
            return Ok(());
        };
        found.blocks.extend(
            entries
                .iter()
                .map(|&(index, version)| BlockId::new(ino.0, index, version)),
        );
        first_index = last + 1;
    }
}
