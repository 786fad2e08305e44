//! One member of a Raft group: raft-rs's `RawNode` over the persistent
//! [`RaftLog`], driving a [`StateMachine`]. No threads, sockets or clocks:
//! the driver feeds it ticks, messages and proposals and sends what
//! [`Replica::handle_ready`] returns, so the same code runs in a process, in
//! tests that pass messages by hand, and under a simulator.

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, Snapshot,
};
use raft::{Config, RawNode, StateRole, Storage};
use tracing::{debug, info};

use crate::raft_log::{LogError, LogSync, PendingSync, RaftLog};
use crate::sessions::{Dedup, SessionProposal, Sessions};

/// Ticks without a heartbeat before a follower campaigns.
pub const ELECTION_TICKS: usize = 10;
/// Ticks between leader heartbeats.
pub const HEARTBEAT_TICKS: usize = 3;
/// Applied entries between two snapshots (and log compactions), at least.
pub const SNAPSHOT_INTERVAL_ENTRIES: u64 = 10_000;
/// Unless told an interval, a replica also waits until the log since its
/// last snapshot holds as many bytes as that snapshot, or this many: a
/// snapshot costs its size, so a large namespace is not written again every
/// `SNAPSHOT_INTERVAL_ENTRIES` (a million files would make every create pay
/// for a 150 MB snapshot every 10 000 commands). Below the log's segment
/// size, so the log is compacted before its segment rolls.
pub const SNAPSHOT_LOG_BYTES_MAX: u64 = 32 << 20;
/// Largest message of appended entries sent to one follower.
pub const MESSAGE_ENTRIES_MAX_BYTES: u64 = 1 << 20;
/// Append messages in flight to one follower.
pub const INFLIGHT_MESSAGES_MAX: usize = 256;
/// Bytes of a proposal's context: proposing node id, incarnation and
/// proposal id.
const PROPOSAL_CONTEXT_BYTES: usize = 24;

/// The deterministic state machine a group replicates.
pub trait StateMachine {
    /// Applies a committed command; the result goes back to its proposer.
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8>;
    /// Serializes the whole state.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the state with a snapshot.
    fn restore(&mut self, data: &[u8]) -> Result<(), String>;
}

/// Errors of a replica.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The persistent log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// raft-rs refused an operation.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// A snapshot could not be loaded into the state machine.
    #[error("the state machine rejected snapshot {index}: {reason}")]
    Snapshot {
        /// Snapshot index.
        index: u64,
        /// Why.
        reason: String,
    },
    /// A proposal was made to a replica that is not the leader.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this replica knows of.
        leader: Option<u64>,
    },
}

/// A committed entry this replica applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Log index.
    pub index: u64,
    /// The proposal id, when this replica proposed it.
    pub proposal: Option<u64>,
    /// What the state machine returned.
    pub result: Vec<u8>,
}

/// What one [`Replica::handle_ready`] produced for the driver.
#[derive(Debug, Default)]
pub struct Output {
    /// Messages to send to peers.
    pub messages: Vec<Message>,
    /// Entries applied, in order.
    pub applied: Vec<Applied>,
    /// Read requests (ids from [`Replica::read_index`]) now safe to serve
    /// from the local state machine (linearizable).
    pub reads: Vec<u64>,
    /// Membership changes applied, in order.
    pub members: Vec<MemberChange>,
}

/// A change of the group's membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// A voter or learner joined (or a learner became a voter) at `addr`.
    Added {
        /// Its id.
        id: u64,
        /// Its address, as proposed.
        addr: String,
        /// Whether it only learns (no vote).
        learner: bool,
    },
    /// A member left.
    Removed {
        /// Its id.
        id: u64,
    },
}

/// A proposed membership change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Membership {
    /// Add (or promote to) a voter at an address.
    AddVoter {
        /// Its id.
        id: u64,
        /// `host:port`.
        addr: String,
    },
    /// Add a learner at an address: it receives the log, does not vote.
    AddLearner {
        /// Its id.
        id: u64,
        /// `host:port`.
        addr: String,
    },
    /// Remove a voter or learner.
    Remove {
        /// Its id.
        id: u64,
    },
}

/// One member of a Raft group.
pub struct Replica<S: StateMachine> {
    id: u64,
    /// Distinguishes this start of the replica from earlier ones, so that
    /// entries proposed before a restart (and re-applied after it) are not
    /// mistaken for the proposals of the new process.
    incarnation: u64,
    node: RawNode<RaftLog>,
    state_machine: S,
    applied: u64,
    pending_reads: Vec<(u64, u64)>,
    /// Client sessions: which retried proposals were applied already.
    sessions: Sessions,
    snapshot_interval_entries: u64,
    /// Whether the interval was set ([`Self::set_snapshot_interval`]):
    /// then it alone decides (see [`SNAPSHOT_LOG_BYTES_MAX`]).
    snapshot_interval_fixed: bool,
    snapshots_installed: u64,
    /// Members removed by a configuration change this replica applied
    /// (until added again): their messages are dropped, so a removed
    /// master cannot disturb the group. Not every non-member: a replica
    /// restarted on an old log does not know the members added since,
    /// and must still hear a leader that joined meanwhile.
    removed: std::collections::BTreeSet<u64>,
    /// When each peer's last message arrived (the Lord's view of node
    /// liveness: learners answer the leader's heartbeats).
    heard: std::collections::BTreeMap<u64, std::time::Instant>,
}

impl<S: StateMachine> std::fmt::Debug for Replica<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.id)
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

impl<S: StateMachine> Replica<S> {
    /// Starts replica `id` on `log`. A log without configuration is
    /// bootstrapped with `voters` (all members of a new group must be
    /// bootstrapped with the same set); otherwise `voters` is ignored.
    pub fn new(
        id: u64,
        log: RaftLog,
        state_machine: S,
        voters: &[u64],
    ) -> Result<Self, ReplicaError> {
        Self::build(id, log, state_machine, voters, None)
    }

    /// [`Self::new`] with a fixed election timeout of `ticks` (at least
    /// `ELECTION_TICKS`) instead of raft-rs's random one in
    /// `[ELECTION_TICKS, 2 × ELECTION_TICKS)`: a simulation that picks each
    /// replica's timeout from its seed replays its elections exactly.
    pub fn with_election_timeout(
        id: u64,
        log: RaftLog,
        state_machine: S,
        voters: &[u64],
        ticks: usize,
    ) -> Result<Self, ReplicaError> {
        Self::build(
            id,
            log,
            state_machine,
            voters,
            Some(ticks.max(ELECTION_TICKS)),
        )
    }

    fn build(
        id: u64,
        mut log: RaftLog,
        mut state_machine: S,
        voters: &[u64],
        election_ticks: Option<usize>,
    ) -> Result<Self, ReplicaError> {
        // A replica that joins an existing group starts without voters and
        // gets everything (configuration included) from the leader.
        if !log.initial_state()?.initialized() && !voters.is_empty() {
            let mut cs = raft::eraftpb::ConfState::default();
            cs.set_voters(voters.to_vec());
            log.initialize(cs)?;
        }
        let snapshot = log.latest_snapshot();
        let applied = snapshot.get_metadata().index;
        let mut sessions = Sessions::default();
        if applied > 0 {
            let (table, state) =
                Sessions::unwrap_snapshot(snapshot.get_data()).map_err(|reason| {
                    ReplicaError::Snapshot {
                        index: applied,
                        reason,
                    }
                })?;
            state_machine
                .restore(state)
                .map_err(|reason| ReplicaError::Snapshot {
                    index: applied,
                    reason,
                })?;
            sessions = table;
        }
        let config = Config {
            id,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            applied,
            max_size_per_msg: MESSAGE_ENTRIES_MAX_BYTES,
            max_inflight_msgs: INFLIGHT_MESSAGES_MAX,
            check_quorum: true,
            pre_vote: true,
            // raft-rs draws the timeout from [min, max): one value is fixed.
            min_election_tick: election_ticks.unwrap_or(0),
            max_election_tick: election_ticks.map_or(0, |t| t + 1),
            ..Config::default()
        };
        let logger = crate::raft_logger::logger(id);
        let node = RawNode::new(&config, log, &logger)?;
        Ok(Self {
            id,
            incarnation: new_incarnation(),
            node,
            state_machine,
            applied,
            pending_reads: Vec::new(),
            sessions,
            snapshot_interval_entries: SNAPSHOT_INTERVAL_ENTRIES,
            snapshot_interval_fixed: false,
            snapshots_installed: 0,
            removed: std::collections::BTreeSet::new(),
            heard: std::collections::BTreeMap::new(),
        })
    }

    /// Snapshot (and compact) every `entries` applied entries, whatever
    /// the sizes of the log and the snapshot.
    pub fn set_snapshot_interval(&mut self, entries: u64) {
        self.snapshot_interval_entries = entries.max(1);
        self.snapshot_interval_fixed = true;
    }

    /// Snapshots received from a leader since this replica started.
    pub fn snapshots_installed(&self) -> u64 {
        self.snapshots_installed
    }

    /// This replica's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The leader this replica knows of.
    pub fn leader(&self) -> Option<u64> {
        let leader = self.node.raft.leader_id;
        (leader != raft::INVALID_ID).then_some(leader)
    }

    /// Whether this replica is the leader.
    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// Current term.
    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    /// Index of the last applied entry.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// When the log makes writes durable (see [`LogSync`]).
    pub fn set_log_sync(&mut self, sync: LogSync) {
        self.node.mut_store().set_sync(sync);
    }

    /// Whether the log holds writes not yet made durable.
    pub fn log_unsynced(&self) -> bool {
        self.node.store().has_unsynced()
    }

    /// fdatasyncs of the log so far.
    pub fn log_syncs(&self) -> u64 {
        self.node.store().syncs()
    }

    /// Makes every write of the log durable (one fdatasync), whatever its
    /// [`LogSync`] policy.
    pub fn sync_log(&mut self) -> Result<(), ReplicaError> {
        self.node.mut_store().sync()?;
        Ok(())
    }

    /// [`RaftLog::begin_sync`]: the fdatasync to run outside the caller's
    /// lock (`None`: nothing to sync).
    pub fn begin_sync_log(&mut self) -> Result<Option<PendingSync>, ReplicaError> {
        Ok(self.node.mut_store().begin_sync()?)
    }

    /// [`RaftLog::end_sync`].
    pub fn end_sync_log(
        &mut self,
        pending: &PendingSync,
        result: std::io::Result<()>,
    ) -> Result<(), ReplicaError> {
        self.node.mut_store().end_sync(pending, result)?;
        Ok(())
    }

    /// Index of the last committed entry.
    pub fn committed(&self) -> u64 {
        self.node.raft.raft_log.committed
    }

    /// The state machine (reads from the local copy).
    pub fn state_machine(&self) -> &S {
        &self.state_machine
    }

    /// The persistent log.
    pub fn log(&self) -> &RaftLog {
        self.node.store()
    }

    /// Waits for a snapshot being written in the background and compacts
    /// the log up to it.
    pub fn wait_snapshot(&mut self) -> Result<(), ReplicaError> {
        self.node.mut_store().wait_snapshot()?;
        Ok(())
    }

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.node.tick();
    }

    /// Campaigns to become leader now (a single-node group elects itself).
    pub fn campaign(&mut self) -> Result<(), ReplicaError> {
        Ok(self.node.campaign()?)
    }

    /// Feeds a message from a peer.
    /// Messages from id 0, from this replica's own id or from a removed
    /// member are dropped (a peer's certificate already vouched for the
    /// sender's id, `crate::raft_transport`).
    pub fn step(&mut self, message: Message) -> Result<(), ReplicaError> {
        let from = message.from;
        if from == 0 || from == self.id || self.removed.contains(&from) {
            debug!(
                replica = self.id,
                from,
                kind = ?message.get_msg_type(),
                "dropped a Raft message from a non-member"
            );
            return Ok(());
        }
        self.heard.insert(from, std::time::Instant::now());
        Ok(self.node.step(message)?)
    }

    /// How long ago each peer's last message arrived, in milliseconds.
    pub fn heard(&self) -> Vec<(u64, u64)> {
        self.heard
            .iter()
            .map(|(&id, at)| (id, at.elapsed().as_millis() as u64))
            .collect()
    }

    /// Tells raft whether a snapshot message sent to `to` arrived (the
    /// transport must report it: a lost snapshot otherwise stalls that
    /// follower until it is reported).
    pub fn report_snapshot(&mut self, to: u64, delivered: bool) {
        let status = if delivered {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.node.report_snapshot(to, status);
    }

    /// Tells raft that a message to `to` could not be sent.
    pub fn report_unreachable(&mut self, to: u64) {
        self.node.report_unreachable(to);
    }

    /// Proposes a command; its result comes back in [`Output::applied`]
    /// with `proposal` set, once committed and applied.
    pub fn propose(&mut self, proposal: u64, command: Vec<u8>) -> Result<(), ReplicaError> {
        if !self.is_leader() {
            return Err(ReplicaError::NotLeader {
                leader: self.leader(),
            });
        }
        let mut context = Vec::with_capacity(PROPOSAL_CONTEXT_BYTES);
        context.extend_from_slice(&self.id.to_le_bytes());
        context.extend_from_slice(&self.incarnation.to_le_bytes());
        context.extend_from_slice(&proposal.to_le_bytes());
        self.node.propose(context, command)?;
        Ok(())
    }

    /// Proposes a membership change; applied (one at a time, as raft-rs
    /// requires) it comes back in [`Output::members`] on every replica.
    pub fn propose_membership(&mut self, change: &Membership) -> Result<(), ReplicaError> {
        if !self.is_leader() {
            return Err(ReplicaError::NotLeader {
                leader: self.leader(),
            });
        }
        let mut cc = ConfChange::default();
        match change {
            Membership::AddVoter { id, addr } => {
                cc.set_change_type(ConfChangeType::AddNode);
                cc.node_id = *id;
                cc.context = addr.clone().into_bytes().into();
            }
            Membership::AddLearner { id, addr } => {
                cc.set_change_type(ConfChangeType::AddLearnerNode);
                cc.node_id = *id;
                cc.context = addr.clone().into_bytes().into();
            }
            Membership::Remove { id } => {
                cc.set_change_type(ConfChangeType::RemoveNode);
                cc.node_id = *id;
            }
        }
        self.node.propose_conf_change(Vec::new(), cc)?;
        Ok(())
    }

    /// Asks for a linearizable read; `request` comes back in
    /// [`Output::reads`] once the local state machine is up to date.
    pub fn read_index(&mut self, request: u64) {
        self.node.read_index(request.to_le_bytes().to_vec());
    }

    /// Persists, applies and collects everything raft-rs has ready; the
    /// one place where the log is written and the state machine changed.
    pub fn handle_ready(&mut self) -> Result<Output, ReplicaError> {
        let mut out = Output::default();
        if self.node.store().snapshot_in_progress() {
            let started = std::time::Instant::now();
            if self.node.mut_store().finish_snapshot()? {
                debug!(
                    replica = self.id,
                    index = self.node.store().latest_snapshot().get_metadata().index,
                    compact_ms = started.elapsed().as_secs_f64() * 1e3,
                    "snapshot written, log compacted"
                );
            }
        }
        if !self.node.has_ready() {
            return Ok(out);
        }
        let mut ready = self.node.ready();
        out.messages.extend(ready.take_messages());
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot().clone())?;
        }
        self.apply_entries(ready.take_committed_entries(), &mut out)?;
        let store = self.node.mut_store();
        store.append(ready.entries())?;
        if let Some(hs) = ready.hs() {
            store.set_hard_state(hs.clone())?;
        }
        store.persist()?;
        for read in ready.take_read_states() {
            let request = read
                .request_ctx
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes);
            if let Some(request) = request {
                self.pending_reads.push((read.index, request));
            }
        }
        out.messages.extend(ready.take_persisted_messages());
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().set_commit(commit)?;
        }
        out.messages.extend(light.take_messages());
        self.apply_entries(light.take_committed_entries(), &mut out)?;
        self.node.advance_apply();
        // The commit index is volatile state in Raft (a restarted replica
        // learns it again): its record waits in the log's buffer for the
        // next persist or sync, no write of its own.
        let applied = self.applied;
        self.pending_reads.retain(|&(index, request)| {
            let ready = index <= applied;
            if ready {
                out.reads.push(request);
            }
            !ready
        });
        self.maybe_snapshot()?;
        Ok(out)
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<(), ReplicaError> {
        let index = snapshot.get_metadata().index;
        let (sessions, state) = Sessions::unwrap_snapshot(snapshot.get_data())
            .map_err(|reason| ReplicaError::Snapshot { index, reason })?;
        self.state_machine
            .restore(state)
            .map_err(|reason| ReplicaError::Snapshot { index, reason })?;
        self.sessions = sessions;
        self.node.mut_store().install_snapshot(snapshot)?;
        self.applied = index;
        self.snapshots_installed += 1;
        info!(
            replica = self.id,
            index, "installed a snapshot from the leader"
        );
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<Entry>, out: &mut Output) -> Result<(), ReplicaError> {
        for entry in entries {
            if entry.index <= self.applied {
                continue;
            }
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {}
                EntryType::EntryNormal => {
                    let result = self.apply_command(entry.index, &entry.data);
                    out.applied.push(Applied {
                        index: entry.index,
                        proposal: self.own_proposal(&entry.context),
                        result,
                    });
                }
                EntryType::EntryConfChange => {
                    let change =
                        ConfChange::parse_from_bytes(&entry.data).map_err(raft::Error::from)?;
                    let cs = self.node.apply_conf_change(&change)?;
                    let learner = cs.get_learners().contains(&change.node_id);
                    self.node.mut_store().set_conf_state(cs)?;
                    out.members.push(match change.get_change_type() {
                        ConfChangeType::RemoveNode => {
                            self.removed.insert(change.node_id);
                            MemberChange::Removed { id: change.node_id }
                        }
                        ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                            self.removed.remove(&change.node_id);
                            MemberChange::Added {
                                id: change.node_id,
                                addr: String::from_utf8_lossy(&change.context).into_owned(),
                                learner,
                            }
                        }
                    });
                    info!(replica = self.id, index = entry.index, change = ?out.members.last(), "applied a membership change");
                }
                EntryType::EntryConfChangeV2 => {
                    let change =
                        ConfChangeV2::parse_from_bytes(&entry.data).map_err(raft::Error::from)?;
                    let cs = self.node.apply_conf_change(&change)?;
                    self.node.mut_store().set_conf_state(cs)?;
                }
            }
            self.applied = entry.index;
        }
        Ok(())
    }

    /// Applies one command; a client's retry of a command already applied
    /// gets the recorded result instead (see `sessions`).
    fn apply_command(&mut self, index: u64, data: &[u8]) -> Vec<u8> {
        let Some(proposal) = SessionProposal::decode(data) else {
            return self.state_machine.apply(index, data);
        };
        match self.sessions.check(&proposal) {
            Dedup::Apply => {
                let result = self.state_machine.apply(index, proposal.command);
                self.sessions.record(&proposal, index, &result);
                result
            }
            Dedup::Repeat(result) => result,
            Dedup::Forgotten => Vec::new(),
        }
    }

    fn own_proposal(&self, context: &[u8]) -> Option<u64> {
        if context.len() != PROPOSAL_CONTEXT_BYTES {
            return None;
        }
        let word = |at: usize| {
            context
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
        };
        let (node, incarnation, proposal) = (word(0)?, word(8)?, word(16)?);
        (node == self.id && incarnation == self.incarnation).then_some(proposal)
    }

    /// Snapshots the state machine at the applied index and compacts the
    /// log when a follower needs one, or when due: every
    /// `snapshot_interval_entries`, and (unless the interval was set) once
    /// the log outweighs the last snapshot or [`SNAPSHOT_LOG_BYTES_MAX`].
    /// Serializing happens here; the log writes the snapshot in place or
    /// in the background (`SnapshotWrites`), and takes no new one before
    /// the last is adopted.
    fn maybe_snapshot(&mut self) -> Result<(), ReplicaError> {
        let store = self.node.store();
        let last_snapshot = store.latest_snapshot().get_metadata().index;
        if store.snapshot_in_progress() {
            // Asked again once this one is adopted.
            return Ok(());
        }
        let wanted = store.take_snapshot_wanted();
        if self.applied <= last_snapshot {
            return Ok(());
        }
        let due = self.applied - last_snapshot >= self.snapshot_interval_entries
            && (self.snapshot_interval_fixed
                || store.entry_bytes()
                    >= (store.latest_snapshot().get_data().len() as u64)
                        .min(SNAPSHOT_LOG_BYTES_MAX));
        if !wanted && !due {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut snapshot = Snapshot::default();
        let meta = snapshot.mut_metadata();
        meta.index = self.applied;
        meta.term = store.term(self.applied)?;
        meta.set_conf_state(store.conf_state().clone());
        snapshot.set_data(
            self.sessions
                .wrap_snapshot(self.state_machine.snapshot())
                .into(),
        );
        let bytes = snapshot.get_data().len();
        let serialized = started.elapsed();
        let store = self.node.mut_store();
        store.begin_snapshot(snapshot)?;
        debug!(
            replica = self.id,
            index = self.applied,
            bytes,
            serialize_ms = serialized.as_secs_f64() * 1e3,
            in_caller_ms = started.elapsed().as_secs_f64() * 1e3,
            background = store.snapshot_in_progress(),
            "snapshot taken"
        );
        Ok(())
    }
}

fn new_incarnation() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STARTS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let start = STARTS.fetch_add(1, Ordering::Relaxed);
    (nanos ^ (u64::from(std::process::id()) << 40))
        .wrapping_add(start.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}
