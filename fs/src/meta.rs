//! [`MetaLink`]: how the file system reaches the metadata — commands go
//! through the Raft driver (the leader), queries read the node's local copy.

use std::time::{Duration, Instant};

use datenlord_cluster::master::{decode_result, Master};
use datenlord_cluster::meta::{Command, MetaState, Outcome};
use datenlord_cluster::raft_driver::RaftHandle;
use datenlord_cluster::shared_state::SharedState;
use futures::executor::block_on;

use crate::error::{FsError, Result};

/// How long startup waits for the metadata group to elect a leader.
pub const LEADER_WAIT_MS_MAX: u64 = 10_000;
const LEADER_POLL_MS: u64 = 10;

/// A connection to the metadata: the Raft handle and the local copy.
#[derive(Clone, Debug)]
pub struct MetaLink {
    handle: RaftHandle<SharedState<MetaState>>,
    local: SharedState<MetaState>,
}

impl MetaLink {
    /// A link from a Raft handle and the local copy it applies to.
    pub fn new(handle: RaftHandle<SharedState<MetaState>>, local: SharedState<MetaState>) -> Self {
        Self { handle, local }
    }

    /// A link to an in-process master (the embedded single-node group).
    pub fn from_master(master: &Master) -> Self {
        Self::new(master.handle(), master.local())
    }

    /// Applies a command through the leader; the local copy reflects it
    /// when this returns (the proposal is answered after the local apply).
    pub async fn apply(&self, command: &Command) -> Result<Outcome> {
        let bytes = self.handle.propose(command.encode()).await?;
        Ok(decode_result(&bytes)?)
    }

    /// Returns once every command applied through this link before the
    /// call is durable in the metadata log (the embedded group writes its
    /// log behind and syncs it on a timer; see `LogSync::Deferred`).
    pub async fn sync(&self) -> Result<()> {
        Ok(self.handle.sync().await?)
    }

    /// Runs a query on the local copy.
    pub fn read<R>(&self, f: impl FnOnce(&MetaState) -> R) -> R {
        f(&self.local.read())
    }

    /// Runs a query once the local copy reflects every command committed
    /// before the call (ReadIndex): after a restart, the log is replayed
    /// first.
    pub async fn read_linearizable<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&MetaState) -> R + Send + 'static,
        R: Send + 'static,
    {
        Ok(self
            .handle
            .read(move |state: &SharedState<MetaState>| f(&state.read()))
            .await?)
    }

    /// Blocks until this replica leads the group (startup only).
    pub(crate) fn wait_for_leader(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_millis(LEADER_WAIT_MS_MAX);
        loop {
            let status = block_on(self.handle.status())?;
            if status.leader == Some(status.id) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(FsError::Config(format!(
                    "the metadata replica {} is not the leader after {} ms (leader: {:?}): \
                     the embedded mount needs a single-node metadata group",
                    status.id, LEADER_WAIT_MS_MAX, status.leader
                )));
            }
            std::thread::sleep(Duration::from_millis(LEADER_POLL_MS));
        }
    }
}
