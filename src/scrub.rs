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

use std::time::{Duration, SystemTime};

use datenlord_cluster::master::Master;
use datenlord_cluster::meta::{Ino, MetaState};
use datenlord_cluster::raft_driver::RaftHandle;
use datenlord_cluster::shared_state::SharedState;
use datenlord_engine::store::gc::GcQueue;
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

/// Whether the namespace names version `id` (as its block's current one).
fn named(state: &MetaState, id: BlockId) -> bool {
    state.block_version(Ino(id.ino.0), id.index) == Some(id.version)
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
                .filter(|&&(id, modified)| modified < cutoff && !named(&state, id) && !held(id))
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

    /// Whether the namespace names `id` now.
    fn names(&self, id: BlockId) -> bool {
        named(&self.local.read(), id)
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

/// Milliseconds since the Unix epoch (the GC queue's clock).
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A master group's scrub, run by its leader: orphans wait a grace in an
/// in-memory GC queue (a new leader starts over), are checked against the
/// namespace again and deleted from the store.
pub(crate) fn master_task(
    master: &std::sync::Arc<Master>,
    remote: &RemoteStore,
    grace: Duration,
) -> impl FnMut() + Send + 'static {
    let master = std::sync::Arc::clone(master);
    let ns = Namespace::of(&master);
    let remote = remote.clone();
    let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
    // The queue's file records are not kept: a new leader scans again.
    let mut doomed = GcQueue::default();
    move || {
        if !master.is_leader() {
            doomed = GcQueue::default();
            return;
        }
        if let Some(found) = scan(&ns, &remote, grace, |_| false) {
            doomed.add(&found, wall_ms().saturating_add(grace_ms));
        }
        let due = doomed.due(wall_ms());
        let mut finished = Vec::with_capacity(due.len());
        for id in due {
            if ns.names(id) {
                error!(block = %id, "an orphan block version queued for deletion is named by the namespace again: kept");
                finished.push(id);
                continue;
            }
            match block_on(remote.delete_block(id)) {
                Ok(()) => finished.push(id),
                Err(e) => {
                    warn!(block = %id, error = %e, "deleting an orphan block version; retried at the next scrub");
                }
            }
        }
        doomed.done(&finished);
        if doomed.pending() > 0 {
            info!(
                waiting = doomed.pending(),
                "orphan block versions waiting for their grace"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
