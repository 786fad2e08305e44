//! Where a block is cached in the cluster: its *cache home*, chosen among
//! the live nodes of a membership epoch by weighted rendezvous
//! (highest-random-weight) hashing of the block's key. Sans IO.
//!
//! Every node computes a block's home from the membership alone, so no
//! per-block location map is kept or looked up (the direction Alluxio 3
//! and JuiceFS's cache groups took). Each (block, node) pair gets a
//! pseudo-random number `u` in (0, 1) from a fixed hash; the node's score
//! is `weight / -ln(u)` (the logarithmic method of weighted rendezvous
//! hashing, as Ceph's straw2), and the highest score is the home. So:
//!
//! - a node holding `w` of the total weight is home to about `w` of the
//!   blocks (weights are cache sizes);
//! - a membership change moves only the blocks whose home changed: a node
//!   joining takes blocks only for itself, a node leaving gives away only
//!   its own;
//! - the key is the block without its version (`ino`, `index`), so every
//!   version of a block has the same home.
//!
//! Nodes running the same build compute the same homes (the hash is
//! fixed; `ln` is the platform's); a node that computed another home (a
//! stale epoch, another build) only misses: block versions are immutable,
//! so a wrong home never serves wrong bytes.

use std::collections::BTreeMap;

/// Most nodes a membership holds.
pub const NODES_MAX: usize = 4096;

/// Errors of building a placement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// A node with no cache takes no blocks: leave it out.
    #[error("node {0} has a cache weight of 0: a node that caches nothing is no block's home")]
    ZeroWeight(u64),
    /// Too many nodes.
    #[error("{0} nodes, more than the {NODES_MAX} a membership holds")]
    TooMany(usize),
}

/// The nodes of one membership epoch and their weights (cache bytes).
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    epoch: u64,
    /// Node id -> weight, ordered by id (ties break the same everywhere).
    nodes: BTreeMap<u64, u64>,
}

impl Placement {
    /// The membership of `epoch`: `(node id, weight)` pairs, weights > 0
    /// (a later pair for the same id replaces the earlier).
    pub fn new(
        epoch: u64,
        nodes: impl IntoIterator<Item = (u64, u64)>,
    ) -> Result<Self, PlacementError> {
        let mut map = BTreeMap::new();
        for (id, weight) in nodes {
            if weight == 0 {
                return Err(PlacementError::ZeroWeight(id));
            }
            map.insert(id, weight);
            if map.len() > NODES_MAX {
                return Err(PlacementError::TooMany(map.len()));
            }
        }
        Ok(Self { epoch, nodes: map })
    }

    /// The membership epoch this placement is of.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// How many nodes it holds.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether it holds no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The cache home of block `index` of file `ino`; `None` without nodes.
    pub fn home(&self, ino: u64, index: u64) -> Option<u64> {
        self.scores(ino, index)
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(id, _)| id)
    }

    /// The nodes in the order a reader should ask them for the block (the
    /// home first): the `n` best scores.
    pub fn homes(&self, ino: u64, index: u64, n: usize) -> Vec<u64> {
        let mut scored: Vec<(u64, f64)> = self.scores(ino, index).collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.into_iter().take(n).map(|(id, _)| id).collect()
    }

    /// Every node with its score for the block (ties: the lower id wins).
    fn scores(&self, ino: u64, index: u64) -> impl Iterator<Item = (u64, f64)> + '_ {
        self.nodes
            .iter()
            .map(move |(&id, &weight)| (id, score(ino, index, id, weight)))
    }
}

/// The node's score for the block: `weight / -ln(u)`, `u` in (0, 1) from
/// the hash of the three ids.
fn score(ino: u64, index: u64, node: u64, weight: u64) -> f64 {
    let h = mix64(mix64(mix64(ino) ^ index.rotate_left(17)) ^ node.rotate_left(41));
    // 53 random bits, never 0 (so ln is finite) and below 1.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    weight as f64 / -u.ln()
}

/// splitmix64's finalizer: spreads nearby inputs apart. Part of the
/// placement: changing it moves every block's home.
fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn placement(nodes: &[(u64, u64)]) -> Placement {
        Placement::new(1, nodes.iter().copied()).expect("placement")
    }

    #[test]
    fn an_empty_membership_has_no_home_and_bad_weights_are_refused() {
        assert_eq!(placement(&[]).home(1, 2), None);
        assert_eq!(
            Placement::new(1, [(1, 5), (2, 0)]),
            Err(PlacementError::ZeroWeight(2))
        );
        let too_many = (0..=NODES_MAX as u64).map(|id| (id, 1));
        assert!(matches!(
            Placement::new(1, too_many),
            Err(PlacementError::TooMany(_))
        ));
    }

    #[test]
    fn homes_are_pinned() {
        // Part of the placement: a change here moves every block's home,
        // which a rolling upgrade pays for with misses.
        let p = placement(&[(1, 1), (2, 1), (3, 1)]);
        let homes: Vec<u64> = (0..8).map(|i| p.home(7, i).expect("home")).collect();
        assert_eq!(homes, PINNED);
    }

    const PINNED: [u64; 8] = [2, 2, 1, 2, 3, 2, 2, 2];

    #[test]
    fn shares_follow_the_weights() {
        let p = placement(&[(1, 1 << 30), (2, 3 << 30)]);
        let blocks = 40_000u64;
        let on_two = (0..blocks)
            .filter(|&i| p.home(i / 64, i % 64) == Some(2))
            .count();
        let share = on_two as f64 / blocks as f64;
        assert!(
            (share - 0.75).abs() < 0.02,
            "node 2 holds {share:.3} of the blocks"
        );
    }

    #[test]
    fn the_ranked_list_starts_with_the_home_and_holds_every_node_once() {
        let p = placement(&[(4, 2), (9, 1), (11, 5), (20, 1)]);
        for i in 0..500 {
            let all = p.homes(3, i, 10);
            assert_eq!(all.len(), 4);
            assert_eq!(Some(all[0]), p.home(3, i));
            let mut sorted = all.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![4, 9, 11, 20]);
        }
    }

    proptest! {
        /// A node joining takes blocks only for itself; one leaving gives
        /// away only its own; the rest stay where they were.
        #[test]
        fn a_membership_change_moves_only_the_blocks_whose_home_changed(
            nodes in proptest::collection::btree_map(1u64..50, 1u64..8, 1..8),
            joining in 50u64..60,
            weight in 1u64..8,
            keys in proptest::collection::vec((0u64..1000, 0u64..1000), 1..200),
        ) {
            let before = Placement::new(1, nodes.clone()).expect("before");
            let mut grown = nodes.clone();
            grown.insert(joining, weight);
            let after = Placement::new(2, grown).expect("after");
            let leaving = *nodes.keys().next().expect("a node");
            let shrunk = Placement::new(
                3,
                nodes.iter().filter(|(&id, _)| id != leaving).map(|(&id, &w)| (id, w)),
            )
            .expect("shrunk");
            for (ino, index) in keys {
                let old = before.home(ino, index).expect("home");
                let new = after.home(ino, index).expect("home");
                prop_assert!(new == old || new == joining, "{old} -> {new}");
                match shrunk.home(ino, index) {
                    Some(home) if old != leaving => prop_assert_eq!(home, old),
                    Some(home) => prop_assert_ne!(home, leaving),
                    None => prop_assert_eq!(nodes.len(), 1),
                }
            }
        }
    }

    /// A seeded run of nodes joining, leaving and flapping: every block
    /// has exactly one home per epoch, computed the same by every node
    /// (here: a placement rebuilt from the same membership), and between
    /// two epochs a block moves only to a node that joined or away from
    /// one that left.
    #[test]
    fn a_seeded_run_of_membership_changes_keeps_one_home_per_block() {
        let mut rng = 0x5eed_u64;
        let mut next = || {
            rng = mix64(rng.wrapping_add(0x9e37_79b9_7f4a_7c15));
            rng
        };
        let mut members: BTreeMap<u64, u64> = (1..=4).map(|id| (id, 1 + id % 3)).collect();
        let mut previous = Placement::new(0, members.clone()).expect("start");
        for epoch in 1..300u64 {
            let id = 1 + next() % 12;
            let joined_or_left = if members.contains_key(&id) && members.len() > 1 {
                members.remove(&id);
                (None, Some(id))
            } else {
                members.insert(id, 1 + next() % 4);
                (Some(id), None)
            };
            let current = Placement::new(epoch, members.clone()).expect("placement");
            let again = Placement::new(epoch, members.iter().rev().map(|(&i, &w)| (i, w)))
                .expect("placement");
            for _ in 0..50 {
                let (ino, index) = (next() % 10_000, next() % 10_000);
                let home = current.home(ino, index).expect("a home");
                assert!(members.contains_key(&home));
                assert_eq!(again.home(ino, index), Some(home), "epoch {epoch}");
                let old = previous.home(ino, index).expect("a home");
                if home != old {
                    assert!(
                        joined_or_left.0 == Some(home) || joined_or_left.1 == Some(old),
                        "epoch {epoch}: block ({ino},{index}) moved {old} -> {home} after {joined_or_left:?}"
                    );
                }
            }
            previous = current;
        }
    }
}
