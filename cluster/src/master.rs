//! A metadata master: the MSE state machine replicated by a Raft driver,
//! one TCP port for its peers and its clients, and the client protocol's
//! operations (propose a command, run a query, report status).
//!
//! The embedded single-node deployment is a master with itself as the only
//! voter; a cluster is 3 or 5 masters started with the same `--peers`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

use futures::executor::block_on;
use rkyv::{Archive, Deserialize, Serialize};
use tracing::{info, warn};

use crate::client_rpc::{Handler, Response, RpcClient, RpcError, Status};
pub use crate::group::IDENTITY_FILE;
use crate::group::{self, embedded_group, group_id, Member, Recorded, Strangers};
use crate::health::{HealthBook, HealthEntry, HealthReport};
use crate::link::Security;
use crate::listener::serve_master;
use crate::meta::{Attr, Command, Creds, DirEntry, Ino, MetaError, MetaState, Outcome, StatFs};
use crate::raft_driver::{DriveError, NoPeers, RaftDriver, RaftHandle};
use crate::raft_log::LogSync;
use crate::raft_transport::{read_members, LocalHandle, TcpTransport};
use crate::replica::{Membership, ReplicaError, StateMachine};
use crate::sessions::SessionProposal;
use crate::shared_state::SharedState;
use crate::tls::{Peer, Role};

/// Client op: propose a [`Command`].
pub const OP_PROPOSE: u8 = 1;
/// Client op: run a [`Query`] (linearizable, ReadIndex).
pub const OP_QUERY: u8 = 2;
/// Client op: the master's [`MasterStatus`].
pub const OP_STATUS: u8 = 3;
/// Client op: change the membership (see [`MetaClient::change_members`]).
pub const OP_MEMBERS: u8 = 4;
/// Operation: revoke a peer certificate (payload: its serial, hex);
/// administrators only.
pub const OP_REVOKE: u8 = 5;
/// Operation: register or unregister a cache node (payload: the encoded
/// `RegisterCacheNode` or `UnregisterCacheNode`); a node only itself.
pub const OP_CACHE_NODE: u8 = 6;
/// Operation: a node's health report (payload: a [`HealthReport`] of
/// itself), kept by the leader.
pub const OP_HEALTH_REPORT: u8 = 7;
/// Operation: the nodes' last health reports, from the leader.
pub const OP_HEALTH: u8 = 8;
/// The file in a master's data directory listing the group's members.
pub const MEMBERS_FILE: &str = "members";

const RESULT_OK: u8 = 0;
const RESULT_META_ERROR: u8 = 1;
const RESULT_UNDECODABLE: u8 = 2;

impl StateMachine for MetaState {
    fn apply(&mut self, _index: u64, command: &[u8]) -> Vec<u8> {
        // Every replica gets the same bytes, so a command that does not
        // decode fails the same way everywhere and changes nothing.
        let result = match Command::decode(command) {
            Ok(command) => MetaState::apply(self, &command),
            Err(e) => return encode_undecodable(&e.to_string()),
        };
        encode_result(&result)
    }

    fn snapshot(&self) -> Vec<u8> {
        MetaState::snapshot(self)
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        *self = MetaState::restore(data).map_err(|e| e.to_string())?;
        Ok(())
    }
}

fn encode_result(result: &Result<Outcome, MetaError>) -> Vec<u8> {
    match result {
        Ok(outcome) => {
            let mut out = vec![RESULT_OK];
            out.extend_from_slice(&outcome.encode());
            out
        }
        Err(e) => {
            let mut out = vec![RESULT_META_ERROR];
            out.extend_from_slice(&e.errno().to_le_bytes());
            out.extend_from_slice(e.to_string().as_bytes());
            out
        }
    }
}

fn encode_undecodable(message: &str) -> Vec<u8> {
    let mut out = vec![RESULT_UNDECODABLE];
    out.extend_from_slice(message.as_bytes());
    out
}

/// Errors a metadata client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The namespace refused the operation; `errno` is for the FUSE edge.
    #[error("{message}")]
    Meta {
        /// errno.
        errno: i32,
        /// Why.
        message: String,
    },
    /// The masters could not be reached or did not answer.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// An answer did not decode (a master of another version?).
    #[error("undecodable answer from a metadata master: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The errno to answer a FUSE request with.
    pub fn errno(&self) -> i32 {
        match self {
            Self::Meta { errno, .. } => *errno,
            Self::Rpc(_) | Self::Protocol(_) => libc::EIO,
        }
    }
}

/// Decodes what [`StateMachine::apply`] returned for a command.
pub fn decode_result(bytes: &[u8]) -> Result<Outcome, ClientError> {
    match bytes.split_first() {
        Some((&RESULT_OK, rest)) => {
            Outcome::decode(rest).map_err(|e| ClientError::Protocol(e.to_string()))
        }
        Some((&RESULT_META_ERROR, rest)) if rest.len() >= 4 => {
            let errno = i32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
            Err(ClientError::Meta {
                errno,
                message: String::from_utf8_lossy(&rest[4..]).into_owned(),
            })
        }
        Some((&RESULT_UNDECODABLE, rest)) => Err(ClientError::Protocol(
            String::from_utf8_lossy(rest).into_owned(),
        )),
        _ => Err(ClientError::Protocol("empty or unknown result".into())),
    }
}

/// Most block map entries one [`Query::Blocks`] returns.
pub const BLOCKS_QUERY_MAX: u32 = 16 * 1024;

/// Read-only operations served from a master's state machine.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// `lookup(parent, name)`.
    Lookup {
        /// Directory.
        parent: Ino,
        /// Entry name.
        name: Vec<u8>,
        /// Caller.
        creds: Creds,
    },
    /// `getattr(ino)`.
    GetAttr {
        /// Inode.
        ino: Ino,
    },
    /// `readdir(ino)` after a cookie.
    ReadDir {
        /// Directory.
        ino: Ino,
        /// Entries after this cookie.
        after_cookie: u64,
        /// At most this many.
        max_entries: u32,
        /// Caller.
        creds: Creds,
    },
    /// `readlink(ino)`.
    ReadLink {
        /// Symlink.
        ino: Ino,
    },
    /// `statfs`.
    StatFs,
    /// The cache node registry.
    CacheNodes,
    /// Up to `max_entries` `(index, version)` entries of a file's block
    /// map from `first_index` on.
    Blocks {
        /// File.
        ino: Ino,
        /// First block index.
        first_index: u64,
        /// At most this many.
        max_entries: u32,
    },
}

/// What a [`Query`] returns.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum QueryAnswer {
    /// Attributes.
    Attr(Attr),
    /// Directory entries.
    Entries(Vec<DirEntry>),
    /// Symlink target.
    Target(Vec<u8>),
    /// File system statistics.
    StatFs(StatFs),
    /// The cache node registry: its epoch and nodes.
    CacheNodes {
        /// Registry epoch.
        epoch: u64,
        /// Registered nodes.
        nodes: Vec<crate::meta::CacheNode>,
    },
    /// The query failed.
    Error {
        /// errno.
        errno: i32,
        /// Why.
        message: String,
    },
    /// Block map entries `(index, version)`, in index order.
    Blocks(Vec<(u64, u64)>),
}

impl Query {
    /// Runs the query on a state machine.
    pub fn run(&self, state: &MetaState) -> QueryAnswer {
        let answer = match self {
            Self::Lookup {
                parent,
                name,
                creds,
            } => state.lookup(*parent, name, creds).map(QueryAnswer::Attr),
            Self::GetAttr { ino } => state.getattr(*ino).map(QueryAnswer::Attr),
            Self::ReadDir {
                ino,
                after_cookie,
                max_entries,
                creds,
            } => state
                .readdir(*ino, *after_cookie, *max_entries as usize, creds)
                .map(QueryAnswer::Entries),
            Self::ReadLink { ino } => state
                .readlink(*ino)
                .map(|t| QueryAnswer::Target(t.to_vec())),
            Self::StatFs => state.statfs().map(QueryAnswer::StatFs),
            Self::CacheNodes => {
                let (epoch, nodes) = state.cache_nodes();
                Ok(QueryAnswer::CacheNodes { epoch, nodes })
            }
            Self::Blocks {
                ino,
                first_index,
                max_entries,
            } => state
                .blocks(
                    *ino,
                    *first_index,
                    (*max_entries).min(BLOCKS_QUERY_MAX) as usize,
                )
                .map(QueryAnswer::Blocks),
        };
        answer.unwrap_or_else(|e| QueryAnswer::Error {
            errno: e.errno(),
            message: e.to_string(),
        })
    }
}

/// The client protocol's payloads are the same validated rkyv archives the
/// metadata codec uses for commands.
fn to_bytes<T>(value: &T) -> Vec<u8>
where
    T: for<'a> Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::rancor::Error,
        >,
    >,
{
    crate::meta::codec::archive(value).to_vec()
}

fn from_bytes<T>(bytes: &[u8]) -> Result<T, ClientError>
where
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
        + Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
{
    crate::meta::codec::unarchive(bytes).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// A master's role as its clients see it.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct MasterStatus {
    /// This master's id.
    pub id: u64,
    /// The leader it knows of (0: none).
    pub leader: u64,
    /// Current term.
    pub term: u64,
    /// Last applied log index.
    pub applied: u64,
    /// The group it belongs to (see [`crate::group`]).
    pub group: u64,
}

/// Errors of starting a master.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The configuration is wrong; the message says how.
    #[error("{0}")]
    Config(String),
    /// The Raft replica could not start.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
}

/// How to run one master.
#[derive(Clone, Debug)]
pub struct MasterConfig {
    /// This master's id (a key of `peers`).
    pub id: u64,
    /// Every master of the group: id -> `host:port` (peers and clients).
    pub peers: BTreeMap<u64, String>,
    /// Where the Raft log and snapshots live.
    pub data_dir: PathBuf,
    /// Snapshot every this many applied entries (`None`: the default).
    pub snapshot_interval_entries: Option<u64>,
    /// Join an existing group (after `datenlord members add`) instead of
    /// bootstrapping one from `peers`.
    pub join: bool,
    /// The group's name at bootstrap (`--group`; may be empty): with the
    /// first `peers`, it makes the group's id (see [`crate::group`]).
    pub group_name: String,
    /// How peers and clients are authenticated.
    pub security: Security,
    /// A metadata backup (the bytes of [`MetaState::snapshot`]) the new
    /// group starts from: every master of it is started with the same one
    /// on a new data directory (`datenlord master --restore-from-store`).
    pub restore: Option<Vec<u8>>,
}

/// A running master.
pub struct Master {
    driver: RaftDriver<SharedState<MetaState>>,
    local: SharedState<MetaState>,
    /// The port peers and clients use; `None` for an embedded master.
    addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Master")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, MasterError> {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            MasterError::Config(format!(
                "cannot resolve master address {addr:?}: use host:port"
            ))
        })
}

impl Master {
    /// Binds this master's port, recovers its log and starts serving.
    pub fn start(config: &MasterConfig) -> Result<Self, MasterError> {
        let own = config.peers.get(&config.id).ok_or_else(|| {
            MasterError::Config(format!(
                "--id {} is not in --peers ({}): list every master, this one included",
                config.id,
                config
                    .peers
                    .keys()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let addr = resolve(own)?;
        let listener = TcpListener::bind(addr).map_err(|e| {
            MasterError::Config(format!(
                "cannot listen on {addr}: {e} (is another master running there?)"
            ))
        })?;
        config
            .security
            .check_own(Role::Master, config.id)
            .map_err(MasterError::Config)?;
        if let Some(backup) = &config.restore {
            if config.join {
                return Err(MasterError::Config(
                    "--join and a restore do not go together: a restored group starts from the backup, with every master of --peers".into(),
                ));
            }
            MetaState::restore(backup).map_err(|e| {
                MasterError::Config(format!("the metadata backup is not usable: {e}"))
            })?;
        }
        let me = Member {
            id: config.id,
            group: choose_group(config)?,
        };
        if let Some(backup) = &config.restore {
            // Every master of the new group starts from the same backup at
            // the same index, with all of --peers as voters: the same state
            // everywhere before the first election. A directory with a log
            // is refused (nothing is overwritten).
            let voters: Vec<u64> = config.peers.keys().copied().collect();
            crate::raft_log::RaftLog::seed(&config.data_dir, &voters, 1, backup.clone())
                .map_err(|e| MasterError::Replica(ReplicaError::from(e)))?;
            info!(id = config.id, "seeded the metadata from a backup");
        }
        // Members that joined after the group started are only in the
        // members file; it is the current list once it exists.
        let members_file = config.data_dir.join(MEMBERS_FILE);
        let members = read_members(&members_file)
            .map_err(MasterError::Config)?
            .unwrap_or_else(|| config.peers.clone());
        let others: BTreeMap<u64, String> = members
            .iter()
            .filter(|(&id, _)| id != config.id)
            .map(|(&id, addr)| (id, addr.clone()))
            .collect();
        let state = SharedState::new(MetaState::new());
        let local: LocalHandle<SharedState<MetaState>> = LocalHandle::default();
        let transport = TcpTransport::new(
            me,
            &others,
            &local,
            Some(members_file),
            config.security.clone(),
        );
        // A joining master learns everything from the leader. A new log
        // starts with the other masters as voters (not itself: it never
        // campaigns before the group adds it): raft-rs cannot apply the
        // entry adding it to an empty configuration ("removed all
        // voters"), which it meets when the leader's log was never
        // compacted; a snapshot from the leader replaces it otherwise.
        let voters: Vec<u64> = if config.join {
            config
                .peers
                .keys()
                .copied()
                .filter(|&id| id != config.id)
                .collect()
        } else {
            config.peers.keys().copied().collect()
        };
        let driver = RaftDriver::start_with(
            config.id,
            &config.data_dir,
            state.clone(),
            &voters,
            transport,
            config.snapshot_interval_entries,
            LogSync::EveryPersist,
        )?;
        let _ = local.set(driver.handle());
        config.security.check_revocations(revoked_in(&state));
        let handler = client_handler(
            driver.handle(),
            config.peers.clone(),
            me.group,
            Arc::new(HealthBook::default()),
        );
        serve_master(listener, me, local, handler, config.security.clone());
        info!(id = config.id, %addr, masters = voters.len(), group = %format!("{:016x}", me.group), tls = config.security.is_tls(), "metadata master serving");
        Ok(Self {
            driver,
            local: state,
            addr: Some(addr),
        })
    }

    /// A single-node group living in this process only (the embedded
    /// default of `datenlord mount`): master 1 is the only voter, no port
    /// is opened and no peer is ever contacted. Its log and snapshots live
    /// in `data_dir` (created if missing; refused if it belongs to another
    /// master). It elects itself at once; the first proposals may still
    /// see `NotLeader` for a moment and should retry.
    pub fn embedded(
        data_dir: &std::path::Path,
        snapshot_interval_entries: Option<u64>,
    ) -> Result<Self, MasterError> {
        group::claim(data_dir, "master", EMBEDDED_ID, embedded_group())?;
        Self::start_embedded(data_dir, snapshot_interval_entries)
    }

    /// An embedded master whose namespace starts from `snapshot` (a
    /// metadata backup: the bytes of [`MetaState::snapshot`]) in a new
    /// data directory. The backup is checked before anything is written;
    /// a directory that already holds a log is refused.
    pub fn embedded_restored(
        data_dir: &std::path::Path,
        snapshot: Vec<u8>,
    ) -> Result<Self, MasterError> {
        MetaState::restore(&snapshot)
            .map_err(|e| MasterError::Config(format!("the metadata backup is not usable: {e}")))?;
        let has_files = std::fs::read_dir(data_dir).is_ok_and(|mut d| d.next().is_some());
        if has_files {
            return Err(MasterError::Config(format!(
                "{} is not empty: a metadata backup is only restored into a new data directory (nothing was changed)",
                data_dir.display()
            )));
        }
        group::claim(data_dir, "master", EMBEDDED_ID, embedded_group())?;
        // The backup's own log index is not needed: the restored group
        // starts a new log after it.
        crate::raft_log::RaftLog::seed(data_dir, &[EMBEDDED_ID], 1, snapshot)
            .map_err(|e| MasterError::Replica(ReplicaError::from(e)))?;
        Self::start_embedded(data_dir, None)
    }

    fn start_embedded(
        data_dir: &std::path::Path,
        snapshot_interval_entries: Option<u64>,
    ) -> Result<Self, MasterError> {
        let state = SharedState::new(MetaState::new());
        let driver = RaftDriver::start_with(
            EMBEDDED_ID,
            data_dir,
            state.clone(),
            &[EMBEDDED_ID],
            NoPeers,
            snapshot_interval_entries,
            LogSync::Deferred,
        )?;
        info!(dir = %data_dir.display(), "embedded metadata master running");
        Ok(Self {
            driver,
            local: state,
            addr: None,
        })
    }

    /// Whether this master leads its group now.
    pub fn is_leader(&self) -> bool {
        block_on(self.driver.handle().status()).is_ok_and(|s| s.leader == Some(s.id))
    }

    /// The driver's handle (for in-process clients: the embedded mode).
    pub fn handle(&self) -> RaftHandle<SharedState<MetaState>> {
        self.driver.handle()
    }

    /// The local copy, for reads in the caller's thread (may lag the leader).
    pub fn local(&self) -> SharedState<MetaState> {
        self.local.clone()
    }

    /// Stops the master after persisting what it accepted.
    pub fn stop(self) -> Result<(), ReplicaError> {
        self.driver.stop()
    }
}

/// Whether the replicated state revokes a certificate serial.
pub(crate) fn revoked_in(state: &SharedState<MetaState>) -> crate::tls::Revoked {
    let state = state.clone();
    Arc::new(move |serial: &str| state.read().is_revoked(serial))
}

/// Id of the only member of an embedded group.
const EMBEDDED_ID: u64 = 1;

/// The group a master runs in: the one its data directory records, the
/// one the running group answers with (`--join`, or a directory that
/// predates recorded groups), or a new one made of `--group` and `--peers`
/// (bootstrap). Refuses a directory of an embedded mount and a start
/// whose answering peers are of another group; records the choice.
fn choose_group(config: &MasterConfig) -> Result<u64, MasterError> {
    let dir = &config.data_dir;
    let recorded = group::check_identity(dir, "master", config.id)?;
    let others: Vec<String> = config
        .peers
        .iter()
        .filter(|(&id, _)| id != config.id)
        .map(|(_, addr)| addr.clone())
        .collect();
    let answers = group::ask_members(&others, &config.security);
    let (group, strangers) = match (recorded, config.join) {
        (Recorded::Member(Some(group)), _) => (group, Strangers::Outvoted),
        (Recorded::New | Recorded::Member(None), true) => {
            let learned = group::prevailing(&answers)?.ok_or_else(|| {
                MasterError::Config(format!(
                    "--join: no master of the group answered at {}: start the joining master while the group runs (after `datenlord members add`)",
                    others.join(", ")
                ))
            })?;
            (learned, Strangers::Outvoted)
        }
        (Recorded::Member(None), false) => match group::prevailing(&answers)? {
            Some(learned) => (learned, Strangers::Outvoted),
            None => (
                group_id(&config.group_name, &config.peers),
                Strangers::Refuse,
            ),
        },
        (Recorded::New, false) => (
            group_id(&config.group_name, &config.peers),
            Strangers::Refuse,
        ),
    };
    if group == embedded_group() {
        let expected = group_id(&config.group_name, &config.peers);
        return Err(group::foreign_dir(
            dir, "master", config.id, group, expected,
        ));
    }
    group::check_peers(group, &answers, others.len(), strangers)?;
    if recorded != Recorded::Member(Some(group)) {
        group::record_identity(dir, "master", config.id, group)?;
    }
    Ok(group)
}

/// Encodes a membership change for [`OP_MEMBERS`]: `add-voter ID ADDR`,
/// `add-learner ID ADDR` or `remove ID`.
pub fn encode_membership(change: &Membership) -> Vec<u8> {
    match change {
        Membership::AddVoter { id, addr } => format!("add-voter {id} {addr}"),
        Membership::AddLearner { id, addr } => format!("add-learner {id} {addr}"),
        Membership::Remove { id } => format!("remove {id}"),
    }
    .into_bytes()
}

/// Decodes [`encode_membership`]; `None` for anything else.
pub fn decode_membership(bytes: &[u8]) -> Option<Membership> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut words = text.split_whitespace();
    let (verb, id) = (words.next()?, words.next()?.parse::<u64>().ok()?);
    if id == 0 {
        return None;
    }
    let change = match (verb, words.next()) {
        ("add-voter", Some(addr)) => Membership::AddVoter {
            id,
            addr: addr.to_string(),
        },
        ("add-learner", Some(addr)) => Membership::AddLearner {
            id,
            addr: addr.to_string(),
        },
        ("remove", None) => Membership::Remove { id },
        _ => return None,
    };
    words.next().is_none().then_some(change)
}

/// What an `OP_PROPOSE` payload may not carry, because its own operation
/// checks who asks: revocations (`OP_REVOKE`, admins) and the cache node
/// registry (`OP_CACHE_NODE`, each node itself).
fn operator_only(payload: &[u8]) -> Option<&'static str> {
    let proposal = SessionProposal::decode(payload)?;
    match Command::decode(proposal.command).ok()? {
        Command::RevokeCertificate { .. } => Some("revoke certificates through a proposal"),
        Command::RegisterCacheNode { .. }
        | Command::UnregisterCacheNode { .. }
        | Command::SetCacheNodeLive { .. } => {
            Some("change the cache node registry through a proposal")
        }
        _ => None,
    }
}

/// The registry change in an `OP_CACHE_NODE` payload, if `who` may make
/// it: a node registers and unregisters only itself; an administrator
/// unregisters any node.
fn cache_node_command(who: &Peer, payload: &[u8]) -> Result<Command, String> {
    let command =
        Command::decode(payload).map_err(|e| format!("send a malformed registry change ({e})"))?;
    let id = match &command {
        Command::RegisterCacheNode { node } => node.id,
        Command::UnregisterCacheNode { id } => *id,
        _ => return Err("send another command than a registry change".into()),
    };
    let forget = matches!(command, Command::UnregisterCacheNode { .. });
    let allowed = match who {
        Peer::Unverified => true,
        // An administrator takes a node that is gone for good out.
        Peer::Certified(me) if forget && me.role == Role::Admin => true,
        Peer::Certified(me) => me.role == Role::Node && me.id == Some(id),
    };
    if allowed {
        Ok(command)
    } else {
        Err(format!("register or unregister cache node {id}"))
    }
}

/// Why a health operation was not done.
enum HealthRefusal {
    /// The peer may not (what it tried).
    Refused(String),
    /// It failed.
    Failed(String),
}

/// `OP_HEALTH` (the reports, to a peer that may read the namespace) or
/// `OP_HEALTH_REPORT` (a node's report of itself), on the leader.
fn health_op(
    who: &Peer,
    op: u8,
    payload: &[u8],
    book: &HealthBook,
) -> Result<Vec<u8>, HealthRefusal> {
    if op == OP_HEALTH {
        if !who.may_use_namespace() {
            return Err(HealthRefusal::Refused("read the nodes' health".into()));
        }
        return Ok(to_bytes(&book.entries()));
    }
    let report: HealthReport =
        from_bytes(payload).map_err(|e| HealthRefusal::Failed(e.to_string()))?;
    let allowed = match who {
        Peer::Unverified => true,
        Peer::Certified(me) => me.role == Role::Node && me.id == Some(report.id),
    };
    if !allowed {
        return Err(HealthRefusal::Refused(format!(
            "report the health of node {}",
            report.id
        )));
    }
    report.check().map_err(HealthRefusal::Failed)?;
    // A certified node goes by its certificate's name, whatever it says.
    let name = match who {
        Peer::Certified(me) => me.name.clone(),
        Peer::Unverified => report.name.clone(),
    };
    if book.record(report, name) {
        Ok(Vec::new())
    } else {
        Err(HealthRefusal::Failed(
            "the leader keeps the health of no more nodes".into(),
        ))
    }
}

/// The client protocol's operations served by a replica (`peers`: id ->
/// client address, for leader redirects).
pub(crate) fn client_handler(
    handle: RaftHandle<SharedState<MetaState>>,
    peers: BTreeMap<u64, String>,
    group: u64,
    health: Arc<HealthBook>,
) -> Handler {
    let not_leader = move |leader: Option<u64>| Response {
        status: Status::NotLeader,
        payload: leader
            .and_then(|l| peers.get(&l))
            .cloned()
            .unwrap_or_default()
            .into_bytes(),
    };
    let failed = |message: String| Response {
        status: Status::Failed,
        payload: message.into_bytes(),
    };
    let ok = |payload: Vec<u8>| Response {
        status: Status::Ok,
        payload,
    };
    let refused = move |who: &Peer, what: &str| {
        warn!(%who, "refused: {what}");
        failed(format!(
            "refused: {who} may not {what} (the namespace takes node and admin certificates; membership changes need an admin certificate)"
        ))
    };
    Arc::new(move |who: &Peer, op, payload| {
        let propose = |command: Vec<u8>| match block_on(handle.propose(command)) {
            Ok(result) => ok(result),
            Err(DriveError::NotLeader { leader }) => not_leader(leader),
            Err(e) => failed(e.to_string()),
        };
        match op {
            OP_PROPOSE | OP_QUERY if !who.may_use_namespace() => {
                refused(who, "read or change the namespace")
            }
            OP_REVOKE => {
                if !who.may_revoke() {
                    return refused(who, "revoke certificates");
                }
                let serial = String::from_utf8_lossy(&payload).into_owned();
                propose(Command::RevokeCertificate { serial }.encode())
            }
            OP_CACHE_NODE => match cache_node_command(who, &payload) {
                Ok(command) => propose(command.encode()),
                Err(what) => refused(who, &what),
            },
            OP_PROPOSE => match operator_only(&payload) {
                None => propose(payload),
                Some(what) => refused(who, what),
            },
            OP_QUERY => {
                let query: Query = match from_bytes(&payload) {
                    Ok(q) => q,
                    Err(e) => return failed(e.to_string()),
                };
                match block_on(
                    handle.read(move |state: &SharedState<MetaState>| query.run(&state.read())),
                ) {
                    Ok(answer) => ok(to_bytes(&answer)),
                    Err(DriveError::NotLeader { leader }) => not_leader(leader),
                    Err(e) => failed(e.to_string()),
                }
            }
            OP_STATUS => match block_on(handle.status()) {
                Ok(s) => ok(to_bytes(&MasterStatus {
                    id: s.id,
                    leader: s.leader.unwrap_or(0),
                    term: s.term,
                    applied: s.applied,
                    group,
                })),
                Err(e) => failed(e.to_string()),
            },
            OP_MEMBERS => {
                let Some(change) = decode_membership(&payload) else {
                    return failed("malformed membership change".into());
                };
                if !who.may_change(&change) {
                    return refused(who, &format!("make the membership change {change:?}"));
                }
                match block_on(handle.change_members(change)) {
                    Ok(()) => ok(Vec::new()),
                    Err(DriveError::NotLeader { leader }) => not_leader(leader),
                    Err(e) => failed(e.to_string()),
                }
            }
            // Health reports live on the leader (in memory, not logged).
            OP_HEALTH_REPORT | OP_HEALTH => {
                match block_on(handle.status()) {
                    Ok(s) if s.leader == Some(s.id) => {}
                    Ok(s) => return not_leader(s.leader),
                    Err(e) => return failed(e.to_string()),
                }
                match health_op(who, op, &payload, &health) {
                    Ok(payload) => ok(payload),
                    Err(HealthRefusal::Refused(what)) => refused(who, &what),
                    Err(HealthRefusal::Failed(message)) => failed(message),
                }
            }
            other => failed(format!("unknown operation {other}")),
        }
    })
}

/// A metadata client of a group of masters (follows the leader).
#[derive(Debug)]
pub struct MetaClient {
    rpc: RpcClient,
    /// This client's session: a random id and the number of its last call
    /// (retries of one call reuse it, so the group applies it once).
    session: u64,
    seq: u64,
}

impl MetaClient {
    /// A client of the masters at `masters` (`host:port`).
    pub fn new(masters: Vec<String>, security: &Security) -> Self {
        Self::from_rpc(RpcClient::new(masters, security.clone()))
    }

    /// A client whose calls give up after `deadline` (status of a given
    /// master).
    pub fn with_deadline(
        masters: Vec<String>,
        deadline: std::time::Duration,
        security: &Security,
    ) -> Self {
        Self::from_rpc(RpcClient::new(masters, security.clone()).with_deadline(deadline))
    }

    /// Talks only to masters of `group` (a member's own client). Other
    /// clients learn the group most of their masters are in at their
    /// first command or query.
    #[must_use]
    pub fn in_group(mut self, group: u64) -> Self {
        self.rpc.set_group(group);
        self
    }

    /// Learns the group more than half of the given masters are in, once
    /// (a master of another group at one of the addresses must not get
    /// this client's writes); until then the call waits for masters to
    /// answer, up to the call deadline.
    fn pin_group(&mut self) -> Result<(), ClientError> {
        if self.rpc.group() != 0 {
            return Ok(());
        }
        let masters = self.rpc.masters().to_vec();
        let deadline = std::time::Instant::now()
            + std::time::Duration::from_millis(crate::client_rpc::CALL_DEADLINE_MS);
        loop {
            let answers = group::ask_members(&masters, self.rpc.security());
            if let Some(found) = group::majority_of(&answers, masters.len()) {
                self.rpc.set_group(found);
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                let seen = answers
                    .iter()
                    .map(|(addr, s)| format!("{addr}: group {:016x}", s.group))
                    .collect::<Vec<_>>();
                return Err(ClientError::Rpc(RpcError::Failed(format!(
                    "no metadata group has more than half of the masters at {} (answers: {}): check that a majority runs and the addresses",
                    masters.join(", "),
                    if seen.is_empty() { "none".to_string() } else { seen.join(", ") }
                ))));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    fn from_rpc(rpc: RpcClient) -> Self {
        Self {
            rpc,
            session: new_session_id(),
            seq: 0,
        }
    }

    /// Applies a command through the leader, once: the transport's retries
    /// (a lost answer, a leader change) carry the same session number.
    pub fn apply(&mut self, command: &Command) -> Result<Outcome, ClientError> {
        self.pin_group()?;
        self.seq += 1;
        let proposal = SessionProposal::encode(self.session, self.seq, &command.encode());
        let result = self.rpc.call(OP_PROPOSE, &proposal)?;
        decode_result(&result)
    }

    /// Runs a linearizable query.
    pub fn query(&mut self, query: &Query) -> Result<QueryAnswer, ClientError> {
        self.pin_group()?;
        let answer = self.rpc.call(OP_QUERY, &to_bytes(query))?;
        match from_bytes::<QueryAnswer>(&answer)? {
            QueryAnswer::Error { errno, message } => Err(ClientError::Meta { errno, message }),
            ok => Ok(ok),
        }
    }

    /// Adds or removes a master (through the leader); returns once the
    /// change is applied on the leader. One change at a time.
    pub fn change_members(&mut self, change: &Membership) -> Result<(), ClientError> {
        self.pin_group()?;
        self.rpc.call(OP_MEMBERS, &encode_membership(change))?;
        Ok(())
    }

    /// Revokes the peer certificate with this serial (hex): every master
    /// and node refuses it from then on (an admin certificate's call).
    pub fn revoke(&mut self, serial: &str) -> Result<(), ClientError> {
        self.pin_group()?;
        // As printed with separators (`5f:9e:…`) or without.
        let serial: String = serial.chars().filter(|c| *c != ':').collect();
        let result = self.rpc.call(OP_REVOKE, serial.as_bytes())?;
        decode_result(&result).map(drop)
    }

    /// Registers this node in the cache registry, or takes it out
    /// (`RegisterCacheNode` / `UnregisterCacheNode`; a node certificate
    /// may only name itself).
    pub fn cache_node(&mut self, command: &Command) -> Result<(), ClientError> {
        self.pin_group()?;
        let result = self.rpc.call(OP_CACHE_NODE, &command.encode())?;
        decode_result(&result).map(drop)
    }

    /// Sends this node's health report to the leader.
    pub fn report_health(&mut self, report: &HealthReport) -> Result<(), ClientError> {
        self.pin_group()?;
        self.rpc.call(OP_HEALTH_REPORT, &to_bytes(report))?;
        Ok(())
    }

    /// The nodes' last health reports, as the leader has them.
    pub fn health(&mut self) -> Result<Vec<HealthEntry>, ClientError> {
        self.pin_group()?;
        from_bytes(&self.rpc.call(OP_HEALTH, &[])?)
    }

    /// The status of the master this client is connected to.
    pub fn status(&mut self) -> Result<MasterStatus, ClientError> {
        let bytes = self.rpc.call(OP_STATUS, &[])?;
        from_bytes(&bytes)
    }
}

/// A client session id unlikely to repeat across processes and restarts.
fn new_session_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CLIENTS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ CLIENTS
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // splitmix64 finalizer: spread nearby inputs apart.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_embedded_master_applies_commands_and_recovers_them() {
        use crate::meta::{Timespec, VOLUME_FORMAT_VERSION};
        let dir = tempfile::tempdir().expect("tempdir");
        let format = Command::Format {
            uuid: [7; 16],
            block_size: 1 << 20,
            format_version: VOLUME_FORMAT_VERSION,
            capacity_bytes: 1 << 30,
            inodes_max: 1000,
            now: Timespec::from_secs(1),
        };
        let master = Master::embedded(dir.path(), None).expect("embedded");
        let mut applied = None;
        for _ in 0..100 {
            match block_on(master.handle().propose(format.encode())) {
                Ok(result) => {
                    applied = Some(decode_result(&result).expect("format"));
                    break;
                }
                Err(DriveError::NotLeader { .. }) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("propose: {e}"),
            }
        }
        assert!(applied.is_some(), "the embedded master never led");
        assert!(master.local().read().volume().is_some());
        master.stop().expect("stop");
        let again = Master::embedded(dir.path(), None).expect("restart");
        let mut recovered = false;
        for _ in 0..100 {
            if again.local().read().volume().is_some() {
                recovered = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(recovered, "the volume did not survive a restart");
        again.stop().expect("stop");
    }

    #[test]
    fn membership_changes_roundtrip_and_garbage_is_refused() {
        for change in [
            Membership::AddVoter {
                id: 4,
                addr: "10.0.0.4:7001".into(),
            },
            Membership::AddLearner {
                id: 5,
                addr: "h:1".into(),
            },
            Membership::Remove { id: 2 },
        ] {
            assert_eq!(decode_membership(&encode_membership(&change)), Some(change));
        }
        for bad in [
            "",
            "add-voter",
            "add-voter 0 a:1",
            "remove 1 extra",
            "promote 3",
            "add-learner x a:1",
        ] {
            assert_eq!(decode_membership(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn results_roundtrip_through_the_client_encoding() {
        let err = MetaError::NotFound;
        let bytes = encode_result(&Err(err.clone()));
        let back = decode_result(&bytes).expect_err("error");
        assert_eq!(back.errno(), libc::ENOENT);
        assert!(decode_result(&[]).is_err());
        assert!(decode_result(&[9, 9, 9]).is_err());
        assert!(decode_result(&encode_undecodable("garbage command")).is_err());
    }

    #[test]
    fn garbage_commands_fail_the_same_way_on_every_replica() {
        let mut state = MetaState::new();
        let result = StateMachine::apply(&mut state, 1, b"not a command");
        assert_eq!(result[0], RESULT_UNDECODABLE);
        assert_eq!(StateMachine::snapshot(&state), MetaState::new().snapshot());
    }
}
