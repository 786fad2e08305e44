//! The Lord (the Raft leader's controller role): node liveness. Nodes are
//! learners of the metadata group, so they answer the leader's Raft
//! heartbeats (every `HEARTBEAT_TICKS` ticks): the leader hears every node
//! several times a second without another protocol. A registered cache
//! node the leader has not heard for [`NODE_SUSPECT_AFTER_MS`] is suspect
//! (logged), for [`NODE_DEAD_AFTER_MS`] dead: the Lord proposes
//! `SetCacheNodeLive { live: false }`, the registry's epoch moves, and
//! every node stops placing blocks on it. A dead node heard again for a
//! while is made live again. A new leader counts silence only from when
//! it started leading. A dead node's sessions (its locks and open files)
//! end with their leases, which nobody renews.
//!
//! Bound: a node that stops answering is out of every node's placement
//! within `NODE_DEAD_AFTER_MS + LORD_INTERVAL_MS` plus a commit and the
//! nodes' registry poll (250 ms): about 4 s.

use std::collections::BTreeMap;
use std::time::Instant;

use futures::executor::block_on;
use tracing::{info, warn};

use crate::meta::{CacheNode, Command, MetaState};
use crate::raft_driver::RaftHandle;
use crate::shared_state::SharedState;

/// Silence after which a node is suspect (logged).
pub const NODE_SUSPECT_AFTER_MS: u64 = 1_500;
/// Silence after which a node is dead (out of placement).
pub const NODE_DEAD_AFTER_MS: u64 = 3_000;
/// How often the Lord looks.
pub const LORD_INTERVAL_MS: u64 = 500;

/// What the Lord decides about one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Silent for this long: suspect, not dead yet.
    Suspect(u64),
    /// Silent for this long: mark it dead.
    Dead(u64),
    /// Marked dead, heard again: mark it live.
    Back,
}

/// Judges the registry's nodes from how long ago (ms) each was heard
/// (`None`: never since this replica started) and how long this replica
/// has led. Sans IO.
pub fn judge(
    nodes: &[CacheNode],
    heard: &BTreeMap<u64, u64>,
    leading_ms: u64,
) -> Vec<(u64, Verdict)> {
    nodes
        .iter()
        .filter_map(|node| {
            let heard = heard.get(&node.id).copied();
            // A new leader has not had the time to hear everyone: silence
            // counts from when it started leading. Coming back needs a
            // message actually heard lately.
            let silent = heard.unwrap_or(u64::MAX).min(leading_ms);
            let verdict = match (node.live, silent) {
                (true, s) if s > NODE_DEAD_AFTER_MS => Verdict::Dead(s),
                (true, s) if s > NODE_SUSPECT_AFTER_MS => Verdict::Suspect(s),
                (false, _) if heard.is_some_and(|h| h < NODE_SUSPECT_AFTER_MS) => Verdict::Back,
                _ => return None,
            };
            Some((node.id, verdict))
        })
        .collect()
}

/// The Lord's round, run every [`LORD_INTERVAL_MS`] on every master; it
/// acts only while its master leads.
pub struct Lord {
    handle: RaftHandle<SharedState<MetaState>>,
    local: SharedState<MetaState>,
    leading_since: Option<Instant>,
}

impl std::fmt::Debug for Lord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lord")
            .field("leading_since", &self.leading_since)
            .finish_non_exhaustive()
    }
}

impl Lord {
    /// The Lord of the master with this replica and local copy.
    pub fn new(handle: RaftHandle<SharedState<MetaState>>, local: SharedState<MetaState>) -> Self {
        Self {
            handle,
            local,
            leading_since: None,
        }
    }

    /// One look at the nodes.
    pub fn round(&mut self) {
        let leads = block_on(self.handle.status()).is_ok_and(|s| s.leader == Some(s.id));
        if !leads {
            self.leading_since = None;
            return;
        }
        let since = *self.leading_since.get_or_insert_with(Instant::now);
        let Ok(heard) = block_on(self.handle.heard()) else {
            return;
        };
        let heard: BTreeMap<u64, u64> = heard.into_iter().collect();
        let (_, nodes) = self.local.read().cache_nodes();
        let leading_ms = since.elapsed().as_millis() as u64;
        for (id, verdict) in judge(&nodes, &heard, leading_ms) {
            let live = match verdict {
                Verdict::Suspect(ms) => {
                    warn!(node = id, silent_ms = ms, "cache node suspect: not heard");
                    continue;
                }
                Verdict::Dead(ms) => {
                    warn!(
                        node = id,
                        silent_ms = ms,
                        "cache node dead: its blocks get other homes"
                    );
                    false
                }
                Verdict::Back => {
                    info!(node = id, "cache node heard again: live");
                    true
                }
            };
            let command = Command::SetCacheNodeLive { id, live }.encode();
            if let Err(e) = block_on(self.handle.propose(command)) {
                warn!(node = id, %e, "could not record the node's liveness");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, live: bool) -> CacheNode {
        CacheNode {
            id,
            addr: format!("10.0.0.{id}:7000"),
            cache_bytes: 1,
            live,
        }
    }

    #[test]
    fn silent_nodes_turn_suspect_then_dead_and_heard_ones_come_back() {
        let nodes = [
            node(1, true),
            node(2, true),
            node(3, true),
            node(4, false),
            node(5, false),
        ];
        let heard: BTreeMap<u64, u64> =
            [(1, 100), (2, 2_000), (3, 10_000), (4, 100), (5, 9_000)].into();
        assert_eq!(
            judge(&nodes, &heard, 60_000),
            vec![
                (2, Verdict::Suspect(2_000)),
                (3, Verdict::Dead(10_000)),
                (4, Verdict::Back)
            ]
        );
        // A new leader counts silence from when it started leading; a node
        // never heard is judged by that alone.
        assert_eq!(judge(&nodes, &heard, 1_000), vec![(4, Verdict::Back)]);
        let never = [node(9, true)];
        assert!(judge(&never, &BTreeMap::new(), 1_000).is_empty());
        assert_eq!(
            judge(&never, &BTreeMap::new(), 5_000),
            vec![(9, Verdict::Dead(5_000))]
        );
        // A dead node never heard stays dead.
        assert!(judge(&[node(9, false)], &BTreeMap::new(), 100).is_empty());
    }
}
