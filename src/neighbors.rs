//! A node's part in the neighbor tier: its block service, its entry in the
//! cache registry, and the view of the registry its shards place blocks
//! by (`datenlord_cluster::neighbor`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use datenlord_cluster::health::{
    largest_volumes, parse_loadavg, NodeHealth, VolumeCache, HEALTH_INTERVAL_MS, HEALTH_VOLUMES_MAX,
};
use datenlord_cluster::link::check_listen;
use datenlord_cluster::meta::{Ino, MetaState};
use datenlord_cluster::neighbor::{DataLink, Membership, NeighborServer, NeighborStats, View};
use datenlord_cluster::node::Node;
use datenlord_cluster::shared_state::SharedState;
use datenlord_engine::store::WriteBack;
use datenlord_engine::ShardStats;
use tracing::{info, warn};

use crate::mount::Periodic;

/// How often the registry in the local metadata copy is checked for a
/// new epoch.
const REGISTRY_POLL_MS: u64 = 250;
/// A node counts what it caches of each volume (a walk of its whole cache
/// index) at every health report while it holds up to this many blocks,
/// and every `held / VOLUMES_WALK_BLOCKS` reports above (at most every
/// [`VOLUMES_EVERY_REPORTS_MAX`]): the walk costs about the same per
/// report whatever the cache's size.
const VOLUMES_WALK_BLOCKS: u64 = 1 << 16;
/// Longest gap, in reports, between two counts (30 s).
const VOLUMES_EVERY_REPORTS_MAX: u64 = 15;

/// What the engine's sources need before the engine starts.
#[derive(Clone, Debug)]
pub(crate) struct NeighborPlan {
    pub(crate) id: u64,
    pub(crate) membership: Membership,
    pub(crate) link: DataLink,
    pub(crate) stats: Arc<NeighborStats>,
}

impl NeighborPlan {
    pub(crate) fn new(id: u64, link: DataLink) -> Self {
        Self {
            id,
            membership: Membership::default(),
            link,
            stats: Arc::new(NeighborStats::default()),
        }
    }
}

/// The running block service and registry watch of a node.
pub(crate) struct Neighbors {
    node: Arc<Node>,
    server: NeighborServer,
    watch: Periodic,
    health: Periodic,
}

/// How a node tells how it is (Sklavin's report), when asked.
pub(crate) type HealthProbe = Box<dyn FnMut() -> NodeHealth + Send>;

/// What a node reports: its engine's fill and NVMe errors, its write-back
/// backlog, the machine's load, its failed neighbor requests, and what it
/// caches of each volume (counted from its engine's index and the local
/// metadata copy, see [`VOLUMES_WALK_BLOCKS`]).
pub(crate) fn health_probe(
    engine: datenlord_engine::EngineHandle,
    writeback: WriteBack,
    stats: Arc<NeighborStats>,
    capacity: u64,
    local: SharedState<MetaState>,
) -> HealthProbe {
    let mut volumes = Vec::new();
    let mut since_count = u64::MAX;
    Box::new(move || {
        let shards = futures::executor::block_on(engine.stats()).unwrap_or_default();
        let total = ShardStats::sum(&shards);
        let block = u64::from(engine.block_size().bytes());
        let held = total.memory_blocks_held + total.disk_blocks_held;
        let every = (held / VOLUMES_WALK_BLOCKS).clamp(1, VOLUMES_EVERY_REPORTS_MAX);
        if since_count >= every {
            volumes = cached_volumes(&engine, &local);
            since_count = 0;
        }
        since_count = since_count.saturating_add(1);
        let backlog = writeback.backlog();
        NodeHealth {
            cached_bytes: held * block,
            cache_capacity: capacity,
            disk_errors: total.disk_write_errors + total.checksum_failures,
            journal_blocks: backlog.entries,
            journal_bytes: backlog.bytes,
            journal_oldest_ms: backlog
                .oldest_age
                .map_or(0, |a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX)),
            load_milli: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|text| parse_loadavg(&text))
                .unwrap_or(0),
            neighbor_errors: stats.errors.load(Ordering::Relaxed),
            volumes: volumes.clone(),
        }
    })
}

/// Bytes this node caches of each volume (directory quota project), the
/// largest [`HEALTH_VOLUMES_MAX`]; blocks of files in no project count
/// nowhere.
fn cached_volumes(
    engine: &datenlord_engine::EngineHandle,
    local: &SharedState<MetaState>,
) -> Vec<VolumeCache> {
    let per_file = match futures::executor::block_on(engine.blocks_per_file()) {
        Ok(per_file) => per_file,
        Err(e) => {
            warn!(%e, "could not count the cached blocks of each volume");
            return Vec::new();
        }
    };
    let block = u64::from(engine.block_size().bytes());
    let mut per_root = std::collections::HashMap::<u64, u64>::new();
    {
        let state = local.read();
        for (ino, blocks) in per_file {
            if let Some(quota) = state.quota(Ino(ino.0)) {
                *per_root.entry(quota.root.0).or_default() += blocks.saturating_mul(block);
            }
        }
    }
    largest_volumes(per_root, HEALTH_VOLUMES_MAX)
}

impl Neighbors {
    /// Serves this node's cached blocks on `listen` (default: the node's
    /// Raft host, a port the system picks), registers the node with
    /// `cache_bytes` as its weight, follows the registry, and reports
    /// `probe`'s health to the leader every `HEALTH_INTERVAL_MS`.
    pub(crate) fn start(
        node: &Arc<Node>,
        plan: &NeighborPlan,
        engine: &datenlord_engine::EngineHandle,
        listen: Option<&str>,
        insecure: bool,
        cache_bytes: u64,
        mut probe: HealthProbe,
    ) -> anyhow::Result<Self> {
        let host = node
            .addr()
            .rsplit_once(':')
            .map_or(node.addr(), |(host, _)| host)
            .to_string();
        let listen = listen.map_or_else(|| format!("{host}:0"), str::to_string);
        check_listen(&listen, &plan.link.security, insecure, "--data-listen")
            .map_err(anyhow::Error::msg)?;
        follow(node, &plan.membership);
        let server =
            NeighborServer::start(engine, &listen, plan.link.clone(), Arc::clone(&plan.stats))
                .with_context(|| format!("serving cached blocks on --data-listen {listen}"))?;
        let addr = advertised(server.addr(), &host);
        node.register_cache(&addr, cache_bytes)
            .context("registering this node's cache with the masters")?;
        follow(node, &plan.membership);
        info!(%addr, cache_bytes, "this node serves its cached blocks to the others");
        let (watched, membership) = (Arc::clone(node), plan.membership.clone());
        let watch = Periodic::start(
            "cache-registry",
            Duration::from_millis(REGISTRY_POLL_MS),
            move || {
                if follow(&watched, &membership) {
                    register_again(&watched, &addr, cache_bytes);
                }
            },
        );
        let reporter = Arc::clone(node);
        let mut failing = false;
        let health = Periodic::start(
            "node-health",
            Duration::from_millis(HEALTH_INTERVAL_MS),
            move || match reporter.report_health(probe()) {
                Ok(()) => failing = false,
                // Once per streak: the leader may be changing.
                Err(e) if !std::mem::replace(&mut failing, true) => {
                    warn!(%e, "could not report this node's health to the leader");
                }
                Err(_) => {}
            },
        );
        Ok(Self {
            node: Arc::clone(node),
            server,
            watch,
            health,
        })
    }

    /// Leaves the registry (other nodes stop asking this one), then stops
    /// serving.
    pub(crate) fn stop(self) {
        // The watch first: it would register this node again.
        self.watch.stop();
        self.health.stop();
        if let Err(e) = self.node.unregister_cache() {
            warn!(%e, "could not leave the cache registry: other nodes fall back to the store until this node is back");
        }
        self.server.stop();
    }
}

/// The address others reach the service at: the bound one, with the
/// node's host when it listens on every interface.
fn advertised(bound: SocketAddr, host: &str) -> String {
    if bound.ip().is_unspecified() {
        format!("{host}:{}", bound.port())
    } else {
        bound.to_string()
    }
}

/// Puts the registry of the local copy into `membership` when its epoch
/// moved; says whether this node is missing from it (an administrator
/// took it out while it runs).
fn follow(node: &Node, membership: &Membership) -> bool {
    let local = node.local();
    let state = local.read();
    let epoch = state.cache_epoch();
    if epoch == membership.get().epoch() {
        return false;
    }
    let (epoch, nodes) = state.cache_nodes();
    drop(state);
    let live = nodes.iter().filter(|n| n.live).count();
    info!(
        epoch,
        nodes = live,
        registered = nodes.len(),
        "cache registry changed"
    );
    let missing = !nodes.iter().any(|n| n.id == node.id());
    membership.set(View::new(epoch, &nodes));
    missing
}

/// Registers this running node again after it was taken out.
fn register_again(node: &Node, addr: &str, cache_bytes: u64) {
    match node.register_cache(addr, cache_bytes) {
        Ok(()) => {
            info!(%addr, "this node was out of the cache registry while running: registered again");
        }
        Err(e) => {
            warn!(%e, "could not register this node again; retried at the next registry change");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_on_every_interface_is_advertised_with_the_nodes_host() {
        let any: SocketAddr = "0.0.0.0:7100".parse().expect("addr");
        assert_eq!(advertised(any, "10.1.2.3"), "10.1.2.3:7100");
        let one: SocketAddr = "10.9.9.9:7100".parse().expect("addr");
        assert_eq!(advertised(one, "10.1.2.3"), "10.9.9.9:7100");
    }
}
