//! A node's learner copy of a master group: a local replica that receives
//! the log without voting, serves reads from its own copy, forwards writes
//! to the leader, and follows leader changes by itself.
//!
//! ```text
//!   Node::apply ──MetaClient (session)──▶ leader ──log──▶ learner replica ─▶ local copy
//!   Node::linearizable ──ReadIndex (raft-rs forwards it to the leader)──▶
//!        wait until applied ≥ the leader's commit index ─▶ run on the local copy
//! ```
//!
//! A write returns once the group applied it *and* a ReadIndex read after
//! it was served here, so the caller reads its own writes from
//! [`Node::local`] at once. raft-rs learners are followers that do not
//! vote: a learner forwards `MsgReadIndex` to the leader it knows and the
//! leader answers with `MsgReadIndexResp` (its commit index, confirmed by a
//! quorum of heartbeats), so a learner's ReadIndex is as linearizable as a
//! voter's.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use raft::eraftpb::Message;
use tracing::{debug, error, info, warn};

use crate::client_rpc::RpcError;
use crate::group::{self, Member, Recorded, Strangers};
use crate::link::Security;
use crate::listener::{serve_stoppable, Listening};
use crate::master::{
    client_handler, ClientError, MasterError, MasterStatus, MetaClient, Query, QueryAnswer,
    MEMBERS_FILE,
};
use crate::meta::{CacheNode, Command, MetaState, Outcome};
use crate::raft_driver::{DriveError, RaftDriver, RaftHandle, Status, Transport};
use crate::raft_log::{LogSync, RaftLog};
use crate::raft_transport::{read_members, write_members, LocalHandle, TcpTransport};
use crate::replica::{Membership, ReplicaError};
use crate::shared_state::SharedState;
use crate::tls::Role;

/// How long [`Node::join`] may take: being added and catching up.
pub const JOIN_TIMEOUT_MS: u64 = 60_000;
/// How long a linearizable read keeps asking (it spans a leader election).
pub const READ_TIMEOUT_MS: u64 = 15_000;
/// How long a membership change of the node keeps being retried (the group
/// takes one change at a time).
pub const MEMBERS_TIMEOUT_MS: u64 = 20_000;
/// A restarted node the group remembers waits this long to be caught up
/// before it asks to be added again (the group may have removed it while
/// it was down).
pub const REJOIN_WAIT_MS: u64 = 5_000;
/// How long asking one master for its id may take.
pub const DISCOVERY_TIMEOUT_MS: u64 = 1_000;
/// Pause between attempts to learn the id of a master that did not answer.
pub const REDISCOVERY_INTERVAL_MS: u64 = 1_000;
/// Pause between retries of a read or a membership change.
const RETRY_BACKOFF_MS: u64 = 50;
/// The file in a node's data directory holding the address the group last
/// added it with; absent after [`Node::leave`].
pub const NODE_ADDR_FILE: &str = "node.addr";

/// Errors of a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration or data directory is wrong; the message says how.
    #[error("{0}")]
    Config(String),
    /// The local replica could not start or failed.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// The masters refused or did not answer a request.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Something did not complete in time.
    #[error("{what} did not complete within {waited:?} (last: {last}): is a majority of masters up and can they reach this node?")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// How long.
        waited: Duration,
        /// The last error seen.
        last: String,
    },
    /// The local replica stopped.
    #[error("the node's metadata replica stopped")]
    Stopped,
}

impl NodeError {
    /// The errno to answer a FUSE request with.
    pub fn errno(&self) -> i32 {
        match self {
            Self::Client(e) => e.errno(),
            Self::Timeout { .. } => libc::ETIMEDOUT,
            Self::Config(_) | Self::Replica(_) | Self::Stopped => libc::EIO,
        }
    }
}

impl From<MasterError> for NodeError {
    fn from(e: MasterError) -> Self {
        match e {
            MasterError::Config(message) => Self::Config(message),
            MasterError::Replica(e) => Self::Replica(e),
        }
    }
}

/// How to run a node's learner copy.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id in the group: unique, and no master's.
    pub id: u64,
    /// `host:port` to listen on for the leader's Raft messages.
    pub listen: String,
    /// The address masters reach this node at (`None`: `listen`, with
    /// the port the system picked if `listen` asked for port 0).
    pub advertise: Option<String>,
    /// Client addresses of the masters (`host:port`); ids are asked.
    pub masters: Vec<String>,
    /// Where the node's Raft log and snapshots live.
    pub data_dir: PathBuf,
    /// How masters and this node authenticate each other.
    pub security: Security,
}

/// A running learner copy of the metadata group.
pub struct Node {
    id: u64,
    addr: String,
    data_dir: PathBuf,
    local: SharedState<MetaState>,
    handle: RaftHandle<SharedState<MetaState>>,
    /// One connection to the leader; writes through the node take turns.
    client: Mutex<MetaClient>,
    // Stopped in this order: no new connections, then the replica.
    listening: Listening,
    rediscovery: Rediscovery,
    driver: RaftDriver<SharedState<MetaState>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts the local replica, has the leader add it as a learner (unless
    /// the group remembers it from an earlier start on this data
    /// directory) and returns once the local copy has caught up with the
    /// leader's commit index.
    pub fn join(config: &NodeConfig) -> Result<Self, NodeError> {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(JOIN_TIMEOUT_MS);
        if config.masters.is_empty() {
            return Err(NodeError::Config(
                "no master addresses: list the group's masters (host:port)".into(),
            ));
        }
        config
            .security
            .check_own(Role::Node, config.id)
            .map_err(NodeError::Config)?;
        let recorded = group::check_identity(&config.data_dir, "node", config.id)?;
        let members_file = config.data_dir.join(MEMBERS_FILE);
        let (answers, unknown) = discover(&config.masters, &config.security);
        let (me, discovered) = settle_group(config, recorded, &answers)?;
        check_id(config.id, &discovered)?;
        let remembered = remembered_as_learner(&config.data_dir, config.id)?;
        let listener = bind(&config.listen)?;
        let addr = advertised(config, &listener)?;
        // Members this replica learned from the group's conf changes, plus
        // the masters answering now (their addresses win).
        let mut peers = read_members(&members_file)
            .map_err(NodeError::Config)?
            .unwrap_or_default();
        peers.extend(discovered.clone());
        peers.remove(&config.id);
        write_members(&members_file, &peers).map_err(|e| {
            NodeError::Config(format!("cannot write {}: {e}", members_file.display()))
        })?;

        let state = SharedState::new(MetaState::new());
        let local_handle: LocalHandle<SharedState<MetaState>> = LocalHandle::default();
        let (learned_tx, learned_rx) = flume::unbounded();
        let transport = NodeTransport {
            tcp: TcpTransport::new(
                me,
                &peers,
                &local_handle,
                Some(members_file),
                config.security.clone(),
            ),
            learned: learned_rx,
        };
        // A new log starts with the masters as voters (this node not among
        // them: it never campaigns). Without a configuration, a leader
        // whose log is not compacted yet sends entries from index 1, and
        // applying this node's own `AddLearner` to an empty configuration
        // fails in raft-rs ("removed all voters"); with it, the change
        // applies as on every master. A snapshot from the leader replaces
        // it wholesale; a restarted node's log keeps its own. The log is
        // synced every Ready like a master's (the leader acts on what a
        // learner acknowledges).
        let voters: Vec<u64> = discovered.keys().copied().collect();
        let driver = RaftDriver::start_with(
            config.id,
            &config.data_dir,
            state.clone(),
            &voters,
            transport,
            None,
            LogSync::EveryPersist,
        )?;
        let handle = driver.handle();
        let _ = local_handle.set(handle.clone());
        config
            .security
            .check_revocations(crate::master::revoked_in(&state));
        // A node never leads: health reports sent here are redirected.
        let health = Arc::new(crate::health::HealthBook::default());
        let handler = client_handler(handle.clone(), discovered, me.group, health);
        let listening =
            serve_stoppable(listener, me, local_handle, handler, config.security.clone())
                .map_err(|e| NodeError::Config(format!("cannot start the node listener: {e}")))?;
        let rediscovery =
            Rediscovery::start(unknown, me.group, learned_tx, config.security.clone());
        let node = Self {
            id: config.id,
            addr: addr.clone(),
            data_dir: config.data_dir.clone(),
            local: state,
            handle,
            client: Mutex::new(
                MetaClient::new(config.masters.clone(), &config.security).in_group(me.group),
            ),
            listening,
            rediscovery,
            driver,
        };
        let last_addr = std::fs::read_to_string(config.data_dir.join(NODE_ADDR_FILE)).ok();
        if needs_add(remembered, last_addr.as_deref(), &addr) {
            node.add_self()?;
        } else {
            info!(id = node.id, %addr, "the group remembers this node: not adding it again");
            let rejoin = Instant::now() + Duration::from_millis(REJOIN_WAIT_MS);
            if let Err(e) = node.barrier(rejoin.min(deadline), "catching up") {
                warn!(id = node.id, %e, "not caught up: asking the group to add this node again");
                node.add_self()?;
            }
        }
        node.barrier(deadline, "catching up with the leader")?;
        info!(
            id = node.id,
            %addr,
            applied = node.status().map_or(0, |s| s.applied),
            took_ms = started.elapsed().as_millis() as u64,
            "node joined the metadata group as a learner and caught up"
        );
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The address the group reaches this node at.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The local copy, readable from any thread without a round trip. It
    /// may lag the leader, but reflects every write made through
    /// [`Self::apply`] once that returned.
    pub fn local(&self) -> SharedState<MetaState> {
        self.local.clone()
    }

    /// Runs `f` on the local copy once it reflects every write the group
    /// committed before this call (ReadIndex through the leader): what
    /// close-to-open needs at `open`.
    pub fn linearizable<R>(&self, f: impl FnOnce(&MetaState) -> R) -> Result<R, NodeError> {
        block_on(self.linearizable_async(f))
    }

    /// [`Self::linearizable`] for callers that are futures themselves
    /// (a `block_on` inside another one panics). Between retries it
    /// sleeps on the calling thread: poll it from a thread of its own (a
    /// FUSE request thread's `block_on`), not from a shared executor.
    pub async fn linearizable_async<R>(
        &self,
        f: impl FnOnce(&MetaState) -> R,
    ) -> Result<R, NodeError> {
        let deadline = Instant::now() + Duration::from_millis(READ_TIMEOUT_MS);
        self.barrier_async(deadline, "a linearizable read").await?;
        // The copy only moves forward, so it is at least as new as the
        // index the read was served at.
        Ok(f(&self.local.read()))
    }

    /// A linearizable [`Query`] answered from the local copy.
    pub fn query(&self, query: &Query) -> Result<QueryAnswer, NodeError> {
        match self.linearizable(|state| query.run(state))? {
            QueryAnswer::Error { errno, message } => {
                Err(NodeError::Client(ClientError::Meta { errno, message }))
            }
            answer => Ok(answer),
        }
    }

    /// Applies a command through the leader (once, even across retries and
    /// leader changes) and returns once the local copy reflects it.
    pub fn apply(&self, command: &Command) -> Result<Outcome, NodeError> {
        block_on(self.apply_async(command))
    }

    /// [`Self::apply`] for callers that are futures themselves; it blocks
    /// the calling thread on the leader's answer (see
    /// [`Self::linearizable_async`]).
    pub async fn apply_async(&self, command: &Command) -> Result<Outcome, NodeError> {
        let outcome = self
            .client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .apply(command)?;
        let deadline = Instant::now() + Duration::from_millis(READ_TIMEOUT_MS);
        self.barrier_async(deadline, "showing an applied write in the local copy")
            .await?;
        Ok(outcome)
    }

    /// Registers this node in the cache registry (its block service at
    /// `addr`, `cache_bytes` cached) and returns once the local copy shows
    /// it: other nodes start asking it for the blocks it is home to.
    pub fn register_cache(&self, addr: &str, cache_bytes: u64) -> Result<(), NodeError> {
        let node = CacheNode {
            id: self.id,
            addr: addr.to_string(),
            cache_bytes,
            live: true,
        };
        node.check().map_err(|e| NodeError::Config(e.to_string()))?;
        self.cache_change(&Command::RegisterCacheNode { node })
    }

    /// Takes this node out of the cache registry (before a planned stop):
    /// its blocks get other homes at once.
    pub fn unregister_cache(&self) -> Result<(), NodeError> {
        self.cache_change(&Command::UnregisterCacheNode { id: self.id })
    }

    /// Tells the leader how this node is (Sklavin's report).
    pub fn report_health(&self, health: crate::health::NodeHealth) -> Result<(), NodeError> {
        let report = crate::health::HealthReport {
            id: self.id,
            name: host_name(),
            health,
        };
        self.client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .report_health(&report)?;
        Ok(())
    }

    fn cache_change(&self, command: &Command) -> Result<(), NodeError> {
        self.client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cache_node(command)?;
        let deadline = Instant::now() + Duration::from_millis(READ_TIMEOUT_MS);
        self.barrier(deadline, "showing the cache registry change")
    }

    /// The local replica's role and progress.
    pub fn status(&self) -> Result<Status, NodeError> {
        block_on(self.handle.status()).map_err(|_| NodeError::Stopped)
    }

    /// Removes this node from the group, then stops it. A later
    /// [`Self::join`] on the same data directory adds it again.
    pub fn leave(self) -> Result<(), NodeError> {
        self.change_members(&Membership::Remove { id: self.id })?;
        let addr_file = self.data_dir.join(NODE_ADDR_FILE);
        if let Err(e) = std::fs::remove_file(&addr_file) {
            warn!(path = %addr_file.display(), %e, "cannot forget the node's address");
        }
        info!(id = self.id, "node left the metadata group");
        self.stop()
    }

    /// Stops the node (it stays a member: a restart rejoins).
    pub fn stop(self) -> Result<(), NodeError> {
        self.listening.stop();
        self.rediscovery.stop();
        self.driver.stop()?;
        Ok(())
    }

    fn add_self(&self) -> Result<(), NodeError> {
        self.change_members(&Membership::AddLearner {
            id: self.id,
            addr: self.addr.clone(),
        })?;
        let addr_file = self.data_dir.join(NODE_ADDR_FILE);
        std::fs::write(&addr_file, &self.addr)
            .map_err(|e| NodeError::Config(format!("cannot write {}: {e}", addr_file.display())))?;
        info!(id = self.id, addr = %self.addr, "added to the metadata group as a learner");
        Ok(())
    }

    /// A membership change through the leader; retried while the group is
    /// busy with another change.
    fn change_members(&self, change: &Membership) -> Result<(), NodeError> {
        let limit = Duration::from_millis(MEMBERS_TIMEOUT_MS);
        let deadline = Instant::now() + limit;
        let mut client = self.client.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            match client.change_members(change) {
                Ok(()) => return Ok(()),
                // A master refuses a change while another is pending.
                Err(ClientError::Rpc(RpcError::Failed(message))) if Instant::now() < deadline => {
                    debug!(?change, message, "membership change refused; retrying");
                    std::thread::sleep(Duration::from_millis(RETRY_BACKOFF_MS * 4));
                }
                Err(e @ ClientError::Rpc(RpcError::Failed(_))) => {
                    return Err(NodeError::Timeout {
                        what: "a membership change",
                        waited: limit,
                        last: e.to_string(),
                    })
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Returns once the local copy reflects everything the group committed
    /// before the call (a ReadIndex read through the local replica, asked
    /// again until `deadline` while no leader is known or one is elected).
    fn barrier(&self, deadline: Instant, what: &'static str) -> Result<(), NodeError> {
        block_on(self.barrier_async(deadline, what))
    }

    async fn barrier_async(&self, deadline: Instant, what: &'static str) -> Result<(), NodeError> {
        let started = Instant::now();
        loop {
            let last = match self.handle.read(|_| ()).await {
                Ok(()) => return Ok(()),
                Err(DriveError::Stopped) => return Err(NodeError::Stopped),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(NodeError::Timeout {
                    what,
                    waited: started.elapsed(),
                    last: last.to_string(),
                });
            }
            debug!(%last, "read index not served yet; asking again");
            std::thread::sleep(Duration::from_millis(RETRY_BACKOFF_MS));
        }
    }
}

/// Refuses id 0 and the id of a master (adding a master's id as a learner
/// would demote that master).
fn check_id(id: u64, masters: &BTreeMap<u64, String>) -> Result<(), NodeError> {
    if id == 0 {
        return Err(NodeError::Config(
            "node id 0 is reserved: pick an id no master uses".into(),
        ));
    }
    if let Some(addr) = masters.get(&id) {
        return Err(NodeError::Config(format!(
            "node id {id} is the id of the master at {addr}: pick an id no master uses (nothing was changed)"
        )));
    }
    Ok(())
}

/// Whether the node must ask to be added: the group does not remember it
/// (first start, or it left), or it listens at another address now.
fn needs_add(remembered: bool, last_addr: Option<&str>, addr: &str) -> bool {
    !remembered || last_addr != Some(addr)
}

/// The group this node's copy belongs to: the one most masters that
/// answered are in, which a directory recording another refuses. Records
/// it and returns the masters of that group (id -> address).
fn settle_group(
    config: &NodeConfig,
    recorded: Recorded,
    answers: &[(String, MasterStatus)],
) -> Result<(Member, BTreeMap<u64, String>), NodeError> {
    // A recorded group stays (refused only when most masters are in one
    // other group: the directory is the stranger); a new copy takes the
    // group most masters that answered are in.
    let group = match recorded {
        Recorded::Member(Some(found)) => found,
        Recorded::New | Recorded::Member(None) => group::prevailing(answers)?.ok_or_else(|| {
            NodeError::Config(format!(
                "no master answered at {}: check the addresses and that the masters run",
                config.masters.join(", ")
            ))
        })?,
    };
    group::check_peers(group, answers, config.masters.len(), Strangers::Outvoted)?;
    let me = Member {
        id: config.id,
        group,
    };
    let discovered: BTreeMap<u64, String> = answers
        .iter()
        .filter(|(_, status)| status.group == me.group)
        .map(|(addr, status)| (status.id, addr.clone()))
        .collect();
    if discovered.is_empty() {
        return Err(NodeError::Config(format!(
            "no master of this node's metadata group {group:016x} answered at {}: check the addresses and that the masters run",
            config.masters.join(", ")
        )));
    }
    // Recorded only once accepted, as a master does: a refusal says
    // "nothing was changed".
    if recorded != Recorded::Member(Some(group)) {
        group::record_identity(&config.data_dir, "node", config.id, group)?;
    }
    Ok((me, discovered))
}

/// Asks every master (at once) for its status: `(answers, addresses that
/// did not answer)`.
fn discover(masters: &[String], security: &Security) -> (Vec<(String, MasterStatus)>, Vec<String>) {
    let mut found = Vec::new();
    let mut unknown = Vec::new();
    for (addr, status) in masters.iter().zip(ask_masters(masters, security)) {
        if let Some(status) = status {
            found.push((addr.clone(), status));
        } else {
            warn!(addr, "master did not answer; will ask again");
            unknown.push(addr.clone());
        }
    }
    (found, unknown)
}

/// The status of each of `masters` (asked at once), in their order; `None`
/// for those that did not answer, or not as a member (id 0).
fn ask_masters(masters: &[String], security: &Security) -> Vec<Option<MasterStatus>> {
    group::ask_each(masters, DISCOVERY_TIMEOUT_MS, security)
        .into_iter()
        .map(|status| status.filter(|s| s.id != 0))
        .collect()
}

/// Whether the log in `dir` says this node is a learner of its group.
/// Refuses a log in which it votes (a master's data directory).
fn remembered_as_learner(dir: &Path, id: u64) -> Result<bool, NodeError> {
    let log = RaftLog::open(dir).map_err(ReplicaError::from)?;
    let conf = log.conf_state();
    if conf.get_voters().contains(&id) {
        return Err(NodeError::Config(format!(
            "the Raft log in {} has node {id} as a voter: this is a master's data directory (nothing was changed)",
            dir.display()
        )));
    }
    Ok(conf.get_learners().contains(&id))
}

fn bind(listen: &str) -> Result<TcpListener, NodeError> {
    let addr: SocketAddr = listen
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            NodeError::Config(format!(
                "cannot resolve the node's listen address {listen:?}: use host:port"
            ))
        })?;
    TcpListener::bind(addr).map_err(|e| {
        NodeError::Config(format!(
            "cannot listen on {addr}: {e} (is another node running there?)"
        ))
    })
}

fn advertised(config: &NodeConfig, listener: &TcpListener) -> Result<String, NodeError> {
    if let Some(addr) = &config.advertise {
        return Ok(addr.clone());
    }
    let bound = listener
        .local_addr()
        .map_err(|e| NodeError::Config(format!("cannot read the listen address: {e}")))?;
    if bound.ip().is_unspecified() {
        return Err(NodeError::Config(format!(
            "listening on {bound}: give the address masters reach this node at (advertise)"
        )));
    }
    // Port 0 asked the system for one: advertise the one it gave.
    Ok(if config.listen.ends_with(":0") {
        bound.to_string()
    } else {
        config.listen.clone()
    })
}

/// The node's transport: TCP to its peers, plus masters whose ids were
/// learned after the start (a master down when the node joined may lead
/// later).
struct NodeTransport {
    tcp: TcpTransport,
    learned: flume::Receiver<(u64, String)>,
}

impl Transport for NodeTransport {
    fn send(&mut self, messages: Vec<Message>) {
        for (id, addr) in self.learned.try_iter() {
            self.tcp.add_peer(id, &addr);
        }
        self.tcp.send(messages);
    }

    fn add_peer(&mut self, id: u64, addr: &str) {
        self.tcp.add_peer(id, addr);
    }

    fn remove_peer(&mut self, id: u64) {
        self.tcp.remove_peer(id);
    }
}

/// A thread asking masters that did not answer at the start for their id.
struct Rediscovery {
    stop: Option<flume::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Rediscovery {
    fn start(
        mut unknown: Vec<String>,
        group: u64,
        learned: flume::Sender<(u64, String)>,
        security: Security,
    ) -> Self {
        if unknown.is_empty() {
            return Self {
                stop: None,
                thread: None,
            };
        }
        let (stop, stopped) = flume::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("node-discovery".into())
            .spawn(move || {
                let interval = Duration::from_millis(REDISCOVERY_INTERVAL_MS);
                while !unknown.is_empty() {
                    // A message or a dropped sender both mean stop.
                    if !matches!(
                        stopped.recv_timeout(interval),
                        Err(flume::RecvTimeoutError::Timeout)
                    ) {
                        return;
                    }
                    let answers = ask_masters(&unknown, &security);
                    let mut answers = answers.into_iter();
                    unknown.retain(|addr| match answers.next().flatten() {
                        Some(status) if status.group != group => {
                            error!(
                                addr,
                                id = status.id,
                                "the master at this address is in metadata group {:016x}, not this node's {group:016x}: ignoring it (check --masters)",
                                status.group
                            );
                            false
                        }
                        Some(status) => {
                            info!(id = status.id, addr, "learned a master's id");
                            let _ = learned.send((status.id, addr.clone()));
                            false
                        }
                        None => true,
                    });
                }
            });
        match thread {
            Ok(thread) => Self {
                stop: Some(stop),
                thread: Some(thread),
            },
            Err(e) => {
                warn!(%e, "cannot start the master discovery thread");
                Self {
                    stop: None,
                    thread: None,
                }
            }
        }
    }

    fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Rediscovery {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// This machine's host name (its UTS namespace's), the name a node goes
/// by in its reports without a certificate; empty when unreadable.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| {
            name.trim()
                .chars()
                .filter(char::is_ascii)
                .take(crate::health::HEALTH_NAME_MAX_BYTES)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::Replica;

    #[test]
    fn a_master_id_is_refused() {
        let masters: BTreeMap<u64, String> =
            [(1, "a:1".to_string()), (2, "b:2".to_string())].into();
        check_id(3, &masters).expect("free id");
        let err = check_id(2, &masters).expect_err("clash").to_string();
        assert!(err.contains("master at b:2"), "{err}");
        assert!(check_id(0, &masters).is_err());
    }

    #[test]
    fn a_node_is_added_unless_the_group_remembers_it_at_the_same_address() {
        let check = |remembered, last: Option<&str>, addr, expected| {
            assert_eq!(
                needs_add(remembered, last, addr),
                expected,
                "{remembered} {last:?} {addr}"
            );
        };
        check(false, None, "h:1", true);
        check(false, Some("h:1"), "h:1", true);
        check(true, Some("h:1"), "h:1", false);
        check(true, Some("h:1"), "h:2", true);
        check(true, None, "h:1", true);
    }

    #[test]
    fn a_log_where_the_node_votes_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = RaftLog::open(dir.path()).expect("open");
        let mut cs = raft::eraftpb::ConfState::default();
        cs.set_voters(vec![1, 2, 3]);
        cs.set_learners(vec![9]);
        log.initialize(cs).expect("initialize");
        log.persist().expect("persist");
        drop(log);
        assert!(remembered_as_learner(dir.path(), 9).expect("learner"));
        assert!(!remembered_as_learner(dir.path(), 4).expect("unknown"));
        let err = remembered_as_learner(dir.path(), 2)
            .expect_err("voter")
            .to_string();
        assert!(err.contains("master's data directory"), "{err}");
    }

    /// Replicas in one process, messages passed by hand until quiet.
    fn pump(replicas: &mut BTreeMap<u64, Replica<MetaState>>) -> Result<(), String> {
        for _ in 0..100 {
            let mut mail = Vec::new();
            for (id, replica) in replicas.iter_mut() {
                let out = replica
                    .handle_ready()
                    .map_err(|e| format!("replica {id}: {e}"))?;
                mail.extend(out.messages);
            }
            if mail.is_empty() {
                return Ok(());
            }
            for message in mail {
                if let Some(replica) = replicas.get_mut(&message.to) {
                    replica.step(message).map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// A fresh group of three adds learner 10 (whose log starts with
    /// `learner_voters` as its configuration); the leader's log is not
    /// compacted, so the learner gets entries from index 1. Returns the
    /// learner's and the leader's applied index.
    fn add_learner_to_a_fresh_group(learner_voters: &[u64]) -> Result<(u64, u64), String> {
        let mut replicas = BTreeMap::new();
        for id in 1..=3 {
            let replica = Replica::new(id, RaftLog::in_memory(), MetaState::new(), &[1, 2, 3])
                .map_err(|e| e.to_string())?;
            replicas.insert(id, replica);
        }
        let leader = replicas.get_mut(&1).ok_or("no replica 1")?;
        leader.campaign().map_err(|e| e.to_string())?;
        pump(&mut replicas)?;
        let learner = Replica::new(10, RaftLog::in_memory(), MetaState::new(), learner_voters)
            .map_err(|e| e.to_string())?;
        replicas.insert(10, learner);
        let leader = replicas.get_mut(&1).ok_or("no replica 1")?;
        assert!(leader.is_leader());
        leader
            .propose_membership(&Membership::AddLearner {
                id: 10,
                addr: "h:1".into(),
            })
            .map_err(|e| e.to_string())?;
        pump(&mut replicas)?;
        for _ in 0..crate::replica::HEARTBEAT_TICKS * 3 {
            replicas.get_mut(&1).ok_or("no replica 1")?.tick();
            pump(&mut replicas)?;
        }
        Ok((replicas[&10].applied(), replicas[&1].applied()))
    }

    /// Messages from a removed member, from id 0 and from the receiver's
    /// own id are dropped before raft-rs sees them: a heartbeat claiming a
    /// far higher term and a commit past the log (which raft-rs would
    /// follow, or panic on) moves nothing.
    #[test]
    fn messages_from_removed_members_and_impossible_senders_are_dropped() {
        use raft::eraftpb::MessageType;
        let mut replicas = BTreeMap::new();
        for id in 1..=3 {
            let replica = Replica::new(id, RaftLog::in_memory(), MetaState::new(), &[1, 2, 3])
                .expect("replica");
            replicas.insert(id, replica);
        }
        replicas
            .get_mut(&1)
            .expect("1")
            .campaign()
            .expect("campaign");
        pump(&mut replicas).expect("pump");
        replicas
            .get_mut(&1)
            .expect("1")
            .propose_membership(&Membership::Remove { id: 3 })
            .expect("remove 3");
        pump(&mut replicas).expect("pump");
        let term = replicas[&1].term();
        let forged = |from: u64, to: u64, kind: MessageType| {
            let mut m = Message {
                from,
                to,
                term: term + 100,
                commit: 1 << 40,
                ..Default::default()
            };
            m.set_msg_type(kind);
            m
        };
        for (to, message) in [
            (1, forged(3, 1, MessageType::MsgHeartbeat)),
            (2, forged(3, 2, MessageType::MsgRequestVote)),
            (2, forged(0, 2, MessageType::MsgAppend)),
            (2, forged(2, 2, MessageType::MsgHeartbeat)),
        ] {
            replicas
                .get_mut(&to)
                .expect("replica")
                .step(message)
                .expect("dropped, not an error");
            pump(&mut replicas).expect("pump");
        }
        for id in [1, 2] {
            assert_eq!(replicas[&id].term(), term, "replica {id}'s term moved");
        }
        assert!(replicas[&1].is_leader());
    }

    #[test]
    fn a_new_learner_needs_a_configuration_to_apply_its_own_addition() {
        // Empty, as a master started with --join: raft-rs refuses the change.
        let err = add_learner_to_a_fresh_group(&[]).expect_err("empty configuration");
        assert!(err.contains("removed all voters"), "{err}");
        // With the masters as voters, as Node::join starts it: caught up.
        let (learner, leader) = add_learner_to_a_fresh_group(&[1, 2, 3]).expect("learner");
        assert!(leader >= 2, "leader applied {leader}");
        assert_eq!(learner, leader);
    }
}
