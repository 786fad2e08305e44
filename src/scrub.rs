//! The orphan scrub: block versions in the store that nothing in the
//! namespace refers to — uploaded, and then the metadata update that would
//! have named them never happened (a crash between the journal commit and
//! the metadata commit, a `SetBlocks` whose answer was lost) — are found
//! and deleted. Run by whoever owns the namespace: the embedded mount
//! (holding its store's lease), or the leader of a master group (the nodes
//! of a group do not: the other nodes' journals hold versions their copy
//! does not name yet).
//!
//! Safe by three rules: only objects older than the GC grace are
//! considered (a version between its upload and its metadata commit is
//! younger); the decision is taken from durable metadata (the log is
//! synced first, so a crash cannot bring back a map naming a version
//! queued for deletion); and the reference is checked again right before
//! the deletion, a grace later.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use datenlord_cluster::master::Master;
use datenlord_cluster::meta::{Ino, MetaState};
use datenlord_cluster::raft_driver::RaftHandle;
use datenlord_cluster::shared_state::SharedState;
use datenlord_engine::store::{RemoteStore, WriteBack};
use datenlord_engine::BlockId;
use futures::executor::block_on;
use tracing::{error, info, warn};

/// Blocks checked against the metadata per read lock of the local copy.
const SCRUB_CHUNK_BLOCKS: usize = 4096;
/// How often the store is scanned for orphan block versions, by default.
pub(crate) const SCRUB_INTERVAL_DEFAULT_S: u64 = 600;
/// How many backup intervals a block version that left the namespace stays
/// in the store at least: the newest backup never refers to a deleted block.
const GC_GRACE_BACKUP_INTERVALS_MIN: u64 = 2;

/// The GC grace period (`--gc-grace`, by default three backup intervals),
/// checked against the backup interval.
pub(crate) fn gc_grace(
    backup_interval_s: u64,
    gc_grace_s: Option<u64>,
) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        backup_interval_s > 0,
        "--backup-interval must be at least 1 second"
    );
    let min = backup_interval_s * GC_GRACE_BACKUP_INTERVALS_MIN;
    let grace = gc_grace_s.unwrap_or(3 * backup_interval_s);
    anyhow::ensure!(
        grace >= min,
        "--gc-grace {grace} is shorter than {min} s (twice --backup-interval): a restored backup could refer to deleted blocks; raise --gc-grace or lower --backup-interval"
    );
    Ok(Duration::from_secs(grace))
}

/// The versions of `listed` (block, last modified) older than `cutoff`
/// that `master`'s copy of the namespace does not name and `held` does not
/// claim. The copy is read-locked a chunk at a time, so a large store never
/// holds up the metadata's writer for long.
fn orphans(
    master_local: &SharedState<MetaState>,
    listed: &[(BlockId, SystemTime)],
    cutoff: SystemTime,
    held: impl Fn(BlockId) -> bool,
) -> Vec<BlockId> {
    let mut found = Vec::new();
    for chunk in listed.chunks(SCRUB_CHUNK_BLOCKS) {
        let state = master_local.read();
        found.extend(
            chunk
                .iter()
                .filter(|&&(id, modified)| {
                    modified < cutoff
                        && state.block_version(Ino(id.ino.0), id.index) != Some(id.version)
                        && !held(id)
                })
                .map(|&(id, _)| id),
        );
    }
    found
}

/// What the scrub reads and syncs of a master: its local copy and its
/// Raft handle.
struct Namespace {
    local: SharedState<MetaState>,
    handle: RaftHandle<SharedState<MetaState>>,
}

impl Namespace {
    fn of(master: &Master) -> Self {
        Self {
            local: master.local(),
            handle: master.handle(),
        }
    }

    /// Whether the namespace names no longer `id` (not its current
    /// version).
    fn orphan(&self, id: BlockId) -> bool {
        self.local.read().block_version(Ino(id.ino.0), id.index) != Some(id.version)
    }
}

/// Lists the store and finds its orphans older than `grace`; `None` when
/// the listing failed (logged).
fn scan(
    ns: &Namespace,
    remote: &RemoteStore,
    grace: Duration,
    held: impl Fn(BlockId) -> bool,
) -> Option<Vec<BlockId>> {
    let listed = match block_on(remote.list_blocks()) {
        Ok(listed) => listed,
        Err(e) => {
            warn!(error = %e, "listing the store's blocks for the orphan scrub; retrying later");
            return None;
        }
    };
    let cutoff = SystemTime::now().checked_sub(grace)?;
    let found = orphans(&ns.local, &listed, cutoff, held);
    if found.is_empty() {
        return Some(found);
    }
    info!(
        blocks = found.len(),
        "orphan block versions found in the store; collecting them"
    );
    // From durable metadata only: the copy read above may hold applied
    // commands the log has not synced.
    if let Err(e) = block_on(ns.handle.sync()) {
        warn!(error = %e, "syncing the metadata log before the orphan scrub's collection; retrying later");
        return None;
    }
    Some(found)
}

/// The embedded mount's scrub: orphans go to the write-back's garbage
/// collector (which waits the grace again and checks the reference right
/// before deleting); versions its journal holds are not orphans.
pub(crate) fn embedded_task(
    master: &Master,
    remote: &RemoteStore,
    writeback: &WriteBack,
    grace: Duration,
) -> impl FnMut() + Send + 'static {
    let ns = Namespace::of(master);
    let remote = remote.clone();
    let writeback = writeback.clone();
    move || {
        let Some(found) = scan(&ns, &remote, grace, |id| writeback.journal_holds(id)) else {
            return;
        };
        if found.is_empty() {
            return;
        }
        if let Err(e) = writeback.collect(found) {
            warn!(error = %e, "queueing orphan block versions for collection");
        }
    }
}

/// Orphans waiting their second grace before deletion (sans IO: the
/// caller passes the time and the checks).
#[derive(Debug, Default)]
pub(crate) struct Doomed {
    due: HashMap<BlockId, SystemTime>,
}

impl Doomed {
    /// Queues `found` (found at `now`) to go a `grace` later; the ones
    /// queued already keep their time.
    pub(crate) fn add(&mut self, found: Vec<BlockId>, now: SystemTime, grace: Duration) {
        for id in found {
            self.due.entry(id).or_insert(now + grace);
        }
    }

    /// Takes the versions due at `now`, split by `still_orphan` (checked
    /// right now) into those to delete and those the namespace names again
    /// (an error somewhere: they are kept).
    pub(crate) fn take_due(
        &mut self,
        now: SystemTime,
        still_orphan: impl Fn(BlockId) -> bool,
    ) -> (Vec<BlockId>, Vec<BlockId>) {
        let due: Vec<BlockId> = self
            .due
            .iter()
            .filter(|&(_, &at)| at <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in &due {
            self.due.remove(id);
        }
        due.into_iter().partition(|&id| still_orphan(id))
    }

    /// Forgets everything (this master no longer leads: the next leader
    /// scans again).
    pub(crate) fn clear(&mut self) {
        self.due.clear();
    }

    /// Versions waiting.
    pub(crate) fn len(&self) -> usize {
        self.due.len()
    }
}

/// A master group's scrub, run by its leader: orphans wait a grace in
/// memory (a new leader starts over), are checked against the namespace
/// again and deleted from the store.
pub(crate) fn master_task(
    master: &std::sync::Arc<Master>,
    remote: &RemoteStore,
    grace: Duration,
) -> impl FnMut() + Send + 'static {
    let master = std::sync::Arc::clone(master);
    let ns = Namespace::of(&master);
    let remote = remote.clone();
    let mut doomed = Doomed::default();
    move || {
        if !master.is_leader() {
            doomed.clear();
            return;
        }
        if let Some(found) = scan(&ns, &remote, grace, |_| false) {
            doomed.add(found, SystemTime::now(), grace);
        }
        let (delete, named) = doomed.take_due(SystemTime::now(), |id| ns.orphan(id));
        for id in named {
            error!(block = %id, "an orphan block version queued for deletion is named by the namespace again: kept");
        }
        for id in delete {
            if let Err(e) = block_on(remote.delete_block(id)) {
                warn!(block = %id, error = %e, "deleting an orphan block version; retried at the next scrub");
            }
        }
        if doomed.len() > 0 {
            info!(
                waiting = doomed.len(),
                "orphan block versions waiting for their grace"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(version: u64) -> BlockId {
        BlockId::new(7, 0, version)
    }

    #[test]
    fn orphans_wait_a_grace_and_are_checked_again_before_they_go() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let grace = Duration::from_secs(10);
        let mut doomed = Doomed::default();
        doomed.add(vec![id(1), id(2)], t, grace);
        // Found again later: keeps its first time.
        doomed.add(vec![id(2), id(3)], t + Duration::from_secs(5), grace);
        assert_eq!(doomed.len(), 3);
        let none = doomed.take_due(t + Duration::from_secs(9), |_| true);
        assert_eq!(none, (vec![], vec![]));
        let (mut delete, named) = doomed.take_due(t + Duration::from_secs(10), |v| v != id(2));
        delete.sort_by_key(|b| b.version);
        assert_eq!((delete, named), (vec![id(1)], vec![id(2)]));
        assert_eq!(doomed.len(), 1);
        doomed.clear();
        assert_eq!(doomed.len(), 0);
    }

    #[test]
    fn the_grace_covers_two_backup_intervals() {
        assert_eq!(
            gc_grace(60, None).expect("default"),
            Duration::from_secs(180)
        );
        assert_eq!(gc_grace(1, Some(2)).expect("min"), Duration::from_secs(2));
        assert!(gc_grace(1, Some(1)).is_err());
        assert!(gc_grace(0, None).is_err());
    }
}
