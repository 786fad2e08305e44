//! [`MetaLink`]: how the file system reaches the metadata. Two backends:
//! the embedded single-node group (commands through its Raft driver,
//! queries on the local copy), and a learner [`Node`] of a master group
//! (commands through the group's leader, queries on the node's local copy,
//! linearizable reads by ReadIndex through the leader).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use datenlord_cluster::master::{decode_result, ClientError, Master};
use datenlord_cluster::meta::{Command, MetaState, Outcome};
use datenlord_cluster::node::{Node, NodeError};
use datenlord_cluster::raft_driver::RaftHandle;
use datenlord_cluster::shared_state::SharedState;
use futures::executor::block_on;

use crate::error::{FsError, Result};

/// How long startup waits for the metadata group to elect a leader.
pub const LEADER_WAIT_MS_MAX: u64 = 10_000;
const LEADER_POLL_MS: u64 = 10;

/// A connection to the metadata.
#[derive(Clone, Debug)]
pub struct MetaLink {
    backend: Backend,
}

#[derive(Clone, Debug)]
enum Backend {
    /// An in-process group: its Raft handle and the local copy it applies to.
    Embedded {
        handle: RaftHandle<SharedState<MetaState>>,
        local: SharedState<MetaState>,
    },
    /// A learner copy of a master group. Its calls block the calling
    /// thread (fs futures are driven by `block_on` on FUSE threads). The
    /// link does not keep the node running: whoever started it stops it
    /// (threads of the file system may outlive that), and calls through
    /// a stopped node fail like those through a stopped embedded group.
    Node {
        node: Weak<Node>,
        local: SharedState<MetaState>,
    },
}

impl MetaLink {
    /// A link from a Raft handle and the local copy it applies to.
    pub fn new(handle: RaftHandle<SharedState<MetaState>>, local: SharedState<MetaState>) -> Self {
        Self {
            backend: Backend::Embedded { handle, local },
        }
    }

    /// A link to an in-process master (the embedded single-node group).
    pub fn from_master(master: &Master) -> Self {
        Self::new(master.handle(), master.local())
    }

    /// A link through a node that joined a master group.
    pub fn from_node(node: &Arc<Node>) -> Self {
        Self {
            backend: Backend::Node {
                node: Arc::downgrade(node),
                local: node.local(),
            },
        }
    }

    /// Whether this link is a node of a master group: other nodes change
    /// the namespace too, so the local copy may be behind theirs.
    pub fn is_node(&self) -> bool {
        matches!(self.backend, Backend::Node { .. })
    }

    /// Applies a command through the leader; the local copy reflects it
    /// when this returns (the proposal is answered after the local apply;
    /// a node waits for its copy to catch up). A refusal by the namespace
    /// is [`FsError::Meta`]; any other error leaves the outcome unknown.
    pub async fn apply(&self, command: &Command) -> Result<Outcome> {
        match &self.backend {
            Backend::Embedded { handle, .. } => {
                let bytes = handle.propose(command.encode()).await?;
                Ok(decode_result(&bytes)?)
            }
            Backend::Node { node, .. } => running(node)?
                .apply_async(command)
                .await
                .map_err(node_error),
        }
    }

    /// Applies `commands` together (one Raft round, one log write on the
    /// embedded group; one after the other through a node) and returns
    /// each outcome, in order, as [`Self::apply`] would.
    pub async fn apply_all(&self, commands: &[Command]) -> Vec<Result<Outcome>> {
        match &self.backend {
            Backend::Embedded { handle, .. } => handle
                .propose_all(commands.iter().map(Command::encode).collect())
                .await
                .into_iter()
                .map(|r| Ok(decode_result(&r?)?))
                .collect(),
            Backend::Node { .. } => {
                let mut outcomes = Vec::with_capacity(commands.len());
                for command in commands {
                    outcomes.push(self.apply(command).await);
                }
                outcomes
            }
        }
    }

    /// Returns once every command applied through this link before the
    /// call is durable in the metadata log (the embedded group writes its
    /// log behind and syncs it on a timer; see `LogSync::Deferred`). A
    /// node has nothing to do: masters fdatasync every commit before they
    /// acknowledge it.
    pub async fn sync(&self) -> Result<()> {
        match &self.backend {
            Backend::Embedded { handle, .. } => Ok(handle.sync().await?),
            Backend::Node { .. } => Ok(()),
        }
    }

    /// Runs a query on the local copy.
    pub fn read<R>(&self, f: impl FnOnce(&MetaState) -> R) -> R {
        match &self.backend {
            Backend::Embedded { local, .. } | Backend::Node { local, .. } => f(&local.read()),
        }
    }

    /// Runs a query on a copy that reflects every command committed in the
    /// group before the call — what close-to-open needs. The embedded
    /// group is the only writer of its namespace, so its local copy
    /// already is that copy (once replayed at start: see
    /// [`Self::read_linearizable`]); a node asks the leader (ReadIndex),
    /// blocking the calling thread: never call it from inside a future
    /// (use [`Self::read_linearizable`] there).
    pub fn read_latest<R>(&self, f: impl FnOnce(&MetaState) -> R) -> Result<R> {
        match &self.backend {
            Backend::Embedded { local, .. } => Ok(f(&local.read())),
            Backend::Node { node, .. } => running(node)?.linearizable(f).map_err(node_error),
        }
    }

    /// Runs a query once the local copy reflects every command committed
    /// before the call (ReadIndex): after a restart, the log is replayed
    /// first.
    pub async fn read_linearizable<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&MetaState) -> R + Send + 'static,
        R: Send + 'static,
    {
        match &self.backend {
            Backend::Embedded { handle, .. } => Ok(handle
                .read(move |state: &SharedState<MetaState>| f(&state.read()))
                .await?),
            Backend::Node { node, .. } => running(node)?
                .linearizable_async(f)
                .await
                .map_err(node_error),
        }
    }

    /// Blocks until this replica leads the group (startup only). A node
    /// returns at once: `Node::join` waited for a leader and caught up.
    pub fn wait_for_leader(&self) -> Result<()> {
        let handle = match &self.backend {
            Backend::Embedded { handle, .. } => handle,
            Backend::Node { .. } => return Ok(()),
        };
        let deadline = Instant::now() + Duration::from_millis(LEADER_WAIT_MS_MAX);
        loop {
            let status = block_on(handle.status())?;
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

/// The node, unless it was stopped.
fn running(node: &Weak<Node>) -> Result<Arc<Node>> {
    node.upgrade().ok_or_else(|| node_error(NodeError::Stopped))
}

/// A node's error as the file system sees it: a refusal by the namespace
/// is [`FsError::Meta`] (nothing changed); anything else — masters
/// unreachable, a timeout, an undecodable answer — is
/// [`FsError::Unknown`]: the command may have applied.
fn node_error(e: NodeError) -> FsError {
    match e {
        NodeError::Client(ClientError::Meta { errno, message }) => FsError::Meta { errno, message },
        other => FsError::Unknown {
            errno: other.errno(),
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datenlord_cluster::client_rpc::RpcError;

    fn check(e: NodeError, refused: bool, errno: i32) {
        let fs = node_error(e);
        assert_eq!(matches!(fs, FsError::Meta { .. }), refused, "{fs:?}");
        assert_eq!(fs.errno(), errno, "{fs:?}");
    }

    #[test]
    fn only_a_namespace_refusal_is_a_meta_error() {
        check(
            NodeError::Client(ClientError::Meta {
                errno: libc::ENOENT,
                message: "no such entry".into(),
            }),
            true,
            libc::ENOENT,
        );
        check(
            NodeError::Client(ClientError::Protocol("garbage".into())),
            false,
            libc::EIO,
        );
        check(
            NodeError::Timeout {
                what: "a linearizable read",
                waited: Duration::from_secs(1),
                last: "no leader".into(),
            },
            false,
            libc::ETIMEDOUT,
        );
        check(
            NodeError::Client(ClientError::Rpc(RpcError::Failed("no leader".into()))),
            false,
            libc::EIO,
        );
        check(NodeError::Stopped, false, libc::EIO);
    }
}
