//! A node's part in the neighbor tier: its block service, its entry in the
//! cache registry, and the view of the registry its shards place blocks
//! by (`datenlord_cluster::neighbor`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use datenlord_cluster::link::check_listen;
use datenlord_cluster::neighbor::{DataLink, Membership, NeighborServer, NeighborStats, View};
use datenlord_cluster::node::Node;
use tracing::{info, warn};

use crate::mount::Periodic;

/// How often the registry in the local metadata copy is checked for a
/// new epoch.
const REGISTRY_POLL_MS: u64 = 250;

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
}

impl Neighbors {
    /// Serves this node's cached blocks on `listen` (default: the node's
    /// Raft host, a port the system picks), registers the node with
    /// `cache_bytes` as its weight, and follows the registry.
    pub(crate) fn start(
        node: &Arc<Node>,
        plan: &NeighborPlan,
        engine: &datenlord_engine::EngineHandle,
        listen: Option<&str>,
        insecure: bool,
        cache_bytes: u64,
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
        Ok(Self {
            node: Arc::clone(node),
            server,
            watch,
        })
    }

    /// Leaves the registry (other nodes stop asking this one), then stops
    /// serving.
    pub(crate) fn stop(self) {
        // The watch first: it would register this node again.
        self.watch.stop();
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
