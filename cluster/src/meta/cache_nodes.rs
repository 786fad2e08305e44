//! The cache nodes of the cluster: where each node serves its cached
//! blocks to the others and how much it caches (its weight in placement).
//! A node registers itself when it starts and unregisters when it stops on
//! purpose; every change moves the registry's epoch, which the placement
//! of blocks is computed for.

use rkyv::{Archive, Deserialize, Serialize};

use super::command::{Outcome, Reply};
use super::error::{DecodeError, MetaError};
use super::limits::{CACHE_NODES_MAX, CACHE_NODE_ADDR_MAX_BYTES};
use super::state::MetaState;

type Result<T> = std::result::Result<T, MetaError>;

/// A node that serves its cached blocks to the others.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CacheNode {
    /// The node's Raft id (its certificate's id).
    pub id: u64,
    /// `host:port` other nodes reach its block service at.
    pub addr: String,
    /// Bytes it caches (memory and NVMe): its share of the blocks.
    pub cache_bytes: u64,
    /// Whether the Lord hears it (a registration is live; the Lord marks
    /// a silent node dead and a heard one live again). Only live nodes are
    /// homes.
    pub live: bool,
}

impl CacheNode {
    /// Checks the record's fields.
    pub fn check(&self) -> std::result::Result<(), &'static str> {
        if self.id == 0 {
            return Err("a cache node's id is not 0");
        }
        if self.addr.is_empty() || self.addr.len() > CACHE_NODE_ADDR_MAX_BYTES {
            return Err("a cache node's address is host:port, at most 255 bytes");
        }
        if self.cache_bytes == 0 {
            return Err("a cache node caches more than 0 bytes");
        }
        Ok(())
    }
}

impl MetaState {
    /// `RegisterCacheNode`: adds or updates a node; the epoch moves only
    /// when something changed.
    pub(super) fn register_cache_node(&mut self, node: &CacheNode) -> Result<Outcome> {
        node.check().map_err(MetaError::Invalid)?;
        let node = &CacheNode {
            live: true,
            ..node.clone()
        };
        if self.cache_nodes.get(&node.id) == Some(node) {
            return Ok(Outcome::reply(Reply::Done));
        }
        if !self.cache_nodes.contains_key(&node.id) && self.cache_nodes.len() >= CACHE_NODES_MAX {
            return Err(MetaError::Invalid(
                "the cluster has the most cache nodes it may have",
            ));
        }
        self.cache_nodes.insert(node.id, node.clone());
        self.cache_epoch += 1;
        Ok(Outcome::reply(Reply::Done))
    }

    /// `UnregisterCacheNode`: removes a node (nothing if it is not there).
    pub(super) fn unregister_cache_node(&mut self, id: u64) -> Outcome {
        if self.cache_nodes.remove(&id).is_some() {
            self.cache_epoch += 1;
        }
        Outcome::reply(Reply::Done)
    }

    /// Snapshot image of the registry: its epoch and nodes.
    pub(super) fn cache_registry_image(&self) -> (u64, Vec<CacheNode>) {
        self.cache_nodes()
    }

    /// Restores nodes of a snapshot's registry record.
    pub(super) fn restore_cache_nodes(
        &mut self,
        epoch: u64,
        nodes: Vec<CacheNode>,
    ) -> std::result::Result<(), DecodeError> {
        let bad = |what: String| DecodeError::Inconsistent(what);
        self.cache_epoch = epoch;
        for node in nodes {
            let id = node.id;
            node.check()
                .map_err(|e| bad(format!("cache node {id}: {e}")))?;
            if self.cache_nodes.insert(id, node).is_some() {
                return Err(bad(format!("cache node {id} appears twice")));
            }
        }
        if self.cache_nodes.len() > CACHE_NODES_MAX {
            return Err(bad("more cache nodes than a cluster holds".into()));
        }
        Ok(())
    }

    /// `SetCacheNodeLive` (the Lord): marks a node live or dead; nothing
    /// for a node not registered or already so.
    pub(super) fn set_cache_node_live(&mut self, id: u64, live: bool) -> Outcome {
        if let Some(node) = self.cache_nodes.get_mut(&id) {
            if node.live != live {
                node.live = live;
                self.cache_epoch += 1;
            }
        }
        Outcome::reply(Reply::Done)
    }

    /// The registry's epoch (it moves with every change) and its nodes,
    /// ordered by id.
    pub fn cache_nodes(&self) -> (u64, Vec<CacheNode>) {
        (
            self.cache_epoch,
            self.cache_nodes.values().cloned().collect(),
        )
    }

    /// The registry's epoch alone (cheap: to see whether it changed).
    pub fn cache_epoch(&self) -> u64 {
        self.cache_epoch
    }
}
