//! The thread that drives one [`Replica`]: it owns the replica and its state
//! machine, ticks the Raft clock, moves messages between the replica and a
//! [`Transport`], and serves proposals and linearizable reads sent from any
//! thread through a [`RaftHandle`].
//!
//! Every loop iteration drains all waiting requests before one
//! `handle_ready`, so concurrent proposals share one log write and one
//! fsync (group commit).
//!
//! A single-member group with a deferred log sync (the embedded master)
//! runs *inline*: a caller takes the replica's lock and runs the round
//! for its own request in its own thread, so a proposal costs no thread
//! hand-off (two context switches, often across CPUs, were most of a
//! metadata command's time). The driver thread still ticks the clock and
//! makes the log durable when its deferred sync is due; it takes the same
//! lock for its rounds. A group with peers cannot run inline: its rounds
//! wait on the network and share fsyncs between callers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use raft::eraftpb::Message;
use tracing::{error, warn};

use crate::raft_log::{LogSync, RaftLog, SnapshotWrites};
use crate::replica::{MemberChange, Membership, Replica, ReplicaError, StateMachine};

/// Interval of the Raft logical clock.
pub const TICK_INTERVAL_MS: u64 = 100;
/// Requests waiting in a driver's inbox before senders block.
pub const INBOX_DEPTH: usize = 4096;
/// Requests one driver iteration takes before persisting (bounds latency).
const BATCH_REQUESTS_MAX: usize = 1024;
/// With [`LogSync::Deferred`], the longest a written log record waits for
/// its fdatasync (a `sync` request makes it durable at once).
pub const DEFERRED_SYNC_MS: u64 = 50;
/// A proposal or read not answered within this time fails with
/// [`DriveError::Timeout`] (no quorum, or the leader changed under it).
pub const REQUEST_TIMEOUT_MS: u64 = 5000;
/// A read not answered within this time asks again: raft-rs drops read
/// requests a new leader cannot serve yet, and messages get lost.
pub const READ_RETRY_MS: u64 = 200;

/// Errors seen by callers of a [`RaftHandle`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriveError {
    /// This replica is not the leader; `leader` is who is, if known.
    #[error("not the leader (leader: {leader:?}); send writes to the leader")]
    NotLeader {
        /// The known leader.
        leader: Option<u64>,
    },
    /// The driver stopped (shutdown or a fatal log error).
    #[error("the metadata replica stopped")]
    Stopped,
    /// Raft refused the request (e.g. a membership change while another is
    /// pending); the message says why.
    #[error("refused: {0}")]
    Refused(String),
    /// The request did not complete in time (e.g. no quorum).
    #[error("no answer within {0:?}: is a majority of masters up?")]
    Timeout(Duration),
}

/// Moves Raft messages to peers.
pub trait Transport: Send + 'static {
    /// Sends messages; undeliverable ones are reported back through
    /// [`RaftHandle::unreachable`] by the transport when it finds out.
    fn send(&mut self, messages: Vec<Message>);
    /// A member joined the group at `addr` (sent to every replica).
    fn add_peer(&mut self, _id: u64, _addr: &str) {}
    /// A member left the group.
    fn remove_peer(&mut self, _id: u64) {}
}

/// A transport for single-node groups: there are no peers.
#[derive(Debug, Default)]
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&mut self, messages: Vec<Message>) {
        if !messages.is_empty() {
            warn!(
                count = messages.len(),
                "single-node group produced messages for peers; dropped"
            );
        }
    }
}

/// A read: called once, with the state machine or with why it cannot run.
type ReadFn<S> = Box<dyn FnOnce(Result<&S, DriveError>) + Send>;
type ProposalReply = flume::Sender<Result<Vec<u8>, DriveError>>;
type MemberReply = flume::Sender<Result<(), DriveError>>;

enum Request<S> {
    Propose {
        command: Vec<u8>,
        reply: ProposalReply,
    },
    Read(ReadFn<S>),
    ReadLocal(ReadFn<S>),
    ChangeMembers {
        change: Membership,
        reply: MemberReply,
    },
    Message(Box<Message>),
    Unreachable(u64),
    SnapshotStatus {
        to: u64,
        delivered: bool,
    },
    Status(flume::Sender<Status>),
    Heard(flume::Sender<Vec<(u64, u64)>>),
    /// Make every write accepted so far durable, then answer.
    Sync(MemberReply),
    Stop,
}

/// A snapshot of the replica's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// This replica.
    pub id: u64,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Last applied index.
    pub applied: u64,
    /// fdatasyncs of the log since the replica started.
    pub log_syncs: u64,
    /// Whether the log holds writes not yet fdatasynced.
    pub log_unsynced: bool,
}

/// Sends requests to a driver from any thread. Cheap to clone.
pub struct RaftHandle<S> {
    inbox: flume::Sender<Request<S>>,
    /// The replica, for groups that run callers' rounds inline.
    inline: Option<Arc<dyn Rounds<S>>>,
}

impl<S> Clone for RaftHandle<S> {
    fn clone(&self) -> Self {
        Self {
            inbox: self.inbox.clone(),
            inline: self.inline.clone(),
        }
    }
}

impl<S> std::fmt::Debug for RaftHandle<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftHandle").finish_non_exhaustive()
    }
}

impl<S: StateMachine + Send + 'static> RaftHandle<S> {
    /// Hands a request to the driver: runs its round here for an inline
    /// group, else queues it for the driver thread.
    async fn submit(&self, request: Request<S>) -> Result<(), DriveError> {
        if let Some(core) = &self.inline {
            return core.run_round(request);
        }
        self.inbox
            .send_async(request)
            .await
            .map_err(|_| DriveError::Stopped)
    }

    /// Proposes a command and waits for the state machine's result.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>, DriveError> {
        let (reply, answer) = flume::bounded(1);
        self.submit(Request::Propose { command, reply }).await?;
        answer.recv_async().await.map_err(|_| DriveError::Stopped)?
    }

    /// Proposes `commands` together and waits for each result, in order.
    /// An inline group runs them in one round of the caller's (one log
    /// write, the lock taken once); a driver thread batches them anyway.
    pub async fn propose_all(&self, commands: Vec<Vec<u8>>) -> Vec<Result<Vec<u8>, DriveError>> {
        let mut answers = Vec::with_capacity(commands.len());
        let mut requests = Vec::with_capacity(commands.len());
        for command in commands {
            let (reply, answer) = flume::bounded(1);
            requests.push(Request::Propose { command, reply });
            answers.push(answer);
        }
        let submitted = if let Some(core) = &self.inline {
            core.run_round_all(requests)
        } else {
            let mut sent = Ok(());
            for request in requests {
                if self.inbox.send_async(request).await.is_err() {
                    sent = Err(DriveError::Stopped);
                    break;
                }
            }
            sent
        };
        let mut results = Vec::with_capacity(answers.len());
        for answer in answers {
            let result = match &submitted {
                Err(e) => Err(e.clone()),
                Ok(()) => answer
                    .recv_async()
                    .await
                    .map_err(|_| DriveError::Stopped)
                    .and_then(|r| r),
            };
            results.push(result);
        }
        results
    }

    /// Runs `f` on the state machine once it reflects every write committed
    /// before this call (ReadIndex): a linearizable read.
    pub async fn read<R, F>(&self, f: F) -> Result<R, DriveError>
    where
        F: FnOnce(&S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.run_read(f, Request::Read).await
    }

    /// Runs `f` on the local copy as it is now (may lag the leader).
    pub async fn read_local<R, F>(&self, f: F) -> Result<R, DriveError>
    where
        F: FnOnce(&S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.run_read(f, Request::ReadLocal).await
    }

    async fn run_read<R, F>(&self, f: F, kind: fn(ReadFn<S>) -> Request<S>) -> Result<R, DriveError>
    where
        F: FnOnce(&S) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = flume::bounded(1);
        let read: ReadFn<S> = Box::new(move |state| {
            let _ = tx.send(state.map(f));
        });
        self.submit(kind(read)).await?;
        rx.recv_async().await.map_err(|_| DriveError::Stopped)?
    }

    /// Changes the group's membership (through the leader) and waits until
    /// the change is applied here.
    pub async fn change_members(&self, change: Membership) -> Result<(), DriveError> {
        let (reply, answer) = flume::bounded(1);
        self.submit(Request::ChangeMembers { change, reply })
            .await?;
        answer.recv_async().await.map_err(|_| DriveError::Stopped)?
    }

    /// Delivers a message from a peer.
    pub fn deliver(&self, message: Message) -> Result<(), DriveError> {
        self.inbox
            .send(Request::Message(Box::new(message)))
            .map_err(|_| DriveError::Stopped)
    }

    /// Reports that a peer could not be reached.
    pub fn unreachable(&self, peer: u64) {
        let _ = self.inbox.send(Request::Unreachable(peer));
    }

    /// Reports whether a snapshot sent to `to` arrived.
    pub fn snapshot_status(&self, to: u64, delivered: bool) {
        let _ = self.inbox.send(Request::SnapshotStatus { to, delivered });
    }

    /// Returns once every command this replica accepted before the call is
    /// durable in its log (one fdatasync, shared by concurrent callers).
    /// Needed only with [`LogSync::Deferred`]; otherwise commands are
    /// durable when answered.
    pub async fn sync(&self) -> Result<(), DriveError> {
        if let Some(core) = &self.inline {
            return core.sync_unlocked();
        }
        let (reply, answer) = flume::bounded(1);
        self.submit(Request::Sync(reply)).await?;
        answer.recv_async().await.map_err(|_| DriveError::Stopped)?
    }

    /// How long ago (ms) each peer's last Raft message arrived: on the
    /// leader, the liveness of every member and node.
    pub async fn heard(&self) -> Result<Vec<(u64, u64)>, DriveError> {
        let (tx, rx) = flume::bounded(1);
        self.submit(Request::Heard(tx)).await?;
        rx.recv_async().await.map_err(|_| DriveError::Stopped)
    }

    /// The replica's role and progress.
    pub async fn status(&self) -> Result<Status, DriveError> {
        let (tx, rx) = flume::bounded(1);
        self.submit(Request::Status(tx)).await?;
        rx.recv_async().await.map_err(|_| DriveError::Stopped)
    }
}

/// A running driver thread.
pub struct RaftDriver<S> {
    handle: RaftHandle<S>,
    thread: Option<JoinHandle<Result<(), ReplicaError>>>,
}

impl<S> std::fmt::Debug for RaftDriver<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftDriver").finish_non_exhaustive()
    }
}

impl<S: StateMachine + Send + 'static> RaftDriver<S> {
    /// Opens the log in `dir`, starts replica `id` of the group `voters`
    /// and its driver thread. A single-voter group elects itself at once.
    pub fn start(
        id: u64,
        dir: &Path,
        state_machine: S,
        voters: &[u64],
        transport: impl Transport,
    ) -> Result<Self, ReplicaError> {
        Self::start_with(
            id,
            dir,
            state_machine,
            voters,
            transport,
            None,
            LogSync::EveryPersist,
        )
    }

    /// [`Self::start`], snapshotting every `snapshot_interval_entries`
    /// applied entries instead of the default, with the log's `log_sync`
    /// policy (`Deferred` only for a group of one: see [`LogSync`]).
    pub fn start_with(
        id: u64,
        dir: &Path,
        state_machine: S,
        voters: &[u64],
        transport: impl Transport,
        snapshot_interval_entries: Option<u64>,
        log_sync: LogSync,
    ) -> Result<Self, ReplicaError> {
        if log_sync == LogSync::Deferred && voters != [id] {
            return Err(ReplicaError::Snapshot {
                index: 0,
                reason: "a deferred log sync is only for a single-member group".into(),
            });
        }
        let mut log = RaftLog::open(dir)?;
        log.set_sync(log_sync);
        // A large namespace's snapshot takes hundreds of milliseconds to
        // write and sync: not in the path of the commands behind it.
        log.set_snapshot_writes(SnapshotWrites::Background);
        let mut replica = Replica::new(id, log, state_machine, voters)?;
        if let Some(entries) = snapshot_interval_entries {
            replica.set_snapshot_interval(entries);
        }
        if voters == [id] {
            replica.campaign()?;
        }
        let (inbox, requests) = flume::bounded(INBOX_DEPTH);
        let core = Arc::new(Mutex::new(Core::new(replica, Box::new(transport))));
        let inline =
            (log_sync == LogSync::Deferred).then(|| Arc::clone(&core) as Arc<dyn Rounds<S>>);
        let thread = std::thread::Builder::new()
            .name(format!("raft-{id}"))
            .spawn(move || or_end_process(id, || run(&core, &requests)))
            .map_err(|e| ReplicaError::Snapshot {
                index: 0,
                reason: format!("cannot start the Raft thread: {e}"),
            })?;
        Ok(Self {
            handle: RaftHandle { inbox, inline },
            thread: Some(thread),
        })
    }

    /// A handle for other threads.
    pub fn handle(&self) -> RaftHandle<S> {
        self.handle.clone()
    }

    /// Stops the thread after it persisted everything it accepted.
    pub fn stop(mut self) -> Result<(), ReplicaError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), ReplicaError> {
        let _ = self.handle.inbox.send(Request::Stop);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(ReplicaError::Snapshot {
                index: 0,
                reason: "the Raft thread panicked".into(),
            }),
            None => Ok(()),
        }
    }
}

impl<S> Drop for RaftDriver<S> {
    fn drop(&mut self) {
        let _ = self.handle.inbox.send(Request::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Pending<S> {
    next_id: u64,
    proposals: HashMap<u64, (Instant, ProposalReply)>,
    reads: HashMap<u64, (Instant, ReadFn<S>)>,
    /// Membership changes proposed here: the member id, and who waits.
    members: Vec<(Instant, u64, MemberReply)>,
    /// When each pending read was last asked for.
    read_asked: HashMap<u64, Instant>,
    /// Callers waiting for the log to be durable.
    syncs: Vec<MemberReply>,
}

impl<S> Pending<S> {
    /// Reads whose last ask got no answer in time: ask again.
    fn reads_to_retry(&mut self, now: Instant) -> Vec<u64> {
        let retry = Duration::from_millis(READ_RETRY_MS);
        let mut again = Vec::new();
        for (id, asked) in &mut self.read_asked {
            if now.duration_since(*asked) >= retry {
                *asked = now;
                again.push(*id);
            }
        }
        again
    }

    /// Fails requests that waited longer than [`REQUEST_TIMEOUT_MS`].
    fn expire(&mut self, now: Instant) {
        let limit = Duration::from_millis(REQUEST_TIMEOUT_MS);
        self.proposals.retain(|_, (since, reply)| {
            let alive = now.duration_since(*since) < limit;
            if !alive {
                let _ = reply.send(Err(DriveError::Timeout(limit)));
            }
            alive
        });
        let expired: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, (since, _))| now.duration_since(*since) >= limit)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some((_, read)) = self.reads.remove(&id) {
                read(Err(DriveError::Timeout(limit)));
            }
        }
        let reads = &self.reads;
        self.read_asked.retain(|id, _| reads.contains_key(id));
        self.members.retain(|(since, _, reply)| {
            let alive = now.duration_since(*since) < limit;
            if !alive {
                let _ = reply.send(Err(DriveError::Timeout(limit)));
            }
            alive
        });
    }
}

/// Runs a caller's request in a round of its own (inline groups).
trait Rounds<S>: Send + Sync {
    fn run_round(&self, request: Request<S>) -> Result<(), DriveError>;
    /// Runs one round for all of `requests`.
    fn run_round_all(&self, requests: Vec<Request<S>>) -> Result<(), DriveError>;
    /// Makes every write so far durable with the fdatasync outside the
    /// lock: inline rounds of other callers (metadata commands of FUSE
    /// requests) do not wait for the disk.
    fn sync_unlocked(&self) -> Result<(), DriveError>;
}

impl<S: StateMachine + Send> Rounds<S> for Mutex<Core<S>> {
    fn run_round(&self, request: Request<S>) -> Result<(), DriveError> {
        let mut core = lock(self);
        if core.is_done() {
            return Err(DriveError::Stopped);
        }
        let id = core.replica.id();
        or_end_process(id, || core.round(std::iter::once(request)));
        Ok(())
    }

    fn run_round_all(&self, requests: Vec<Request<S>>) -> Result<(), DriveError> {
        let mut core = lock(self);
        if core.is_done() {
            return Err(DriveError::Stopped);
        }
        let id = core.replica.id();
        or_end_process(id, || core.round(requests.into_iter()));
        Ok(())
    }

    fn sync_unlocked(&self) -> Result<(), DriveError> {
        let pending = {
            let mut core = lock(self);
            if core.is_done() {
                return Err(DriveError::Stopped);
            }
            match core.replica.begin_sync_log() {
                Ok(pending) => pending,
                Err(e) => return Err(core.fail(e)),
            }
        };
        let Some(pending) = pending else {
            return Ok(());
        };
        let result = pending.file.sync_data();
        let mut core = lock(self);
        if core.is_done() {
            return Err(DriveError::Stopped);
        }
        match core.replica.end_sync_log(&pending, result) {
            Ok(()) => {
                core.next_sync = Instant::now() + Duration::from_millis(DEFERRED_SYNC_MS);
                Ok(())
            }
            Err(e) => Err(core.fail(e)),
        }
    }
}

/// Exit status of a process whose Raft replica panicked (sysexits'
/// EX_SOFTWARE).
pub const RAFT_PANIC_EXIT_CODE: i32 = 70;

/// Runs `f`; if it panics (raft-rs panics on messages that contradict its
/// log, `fatal!`), logs why and ends the process. A replica that unwound
/// mid-round is in no state to go on, and a process that lingers without
/// its Raft thread serves nothing and is never restarted; the log on disk
/// holds everything acknowledged, so a restart recovers.
fn or_end_process<T>(replica: u64, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(value) => value,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(ToString::to_string)
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            error!(
                replica,
                "the Raft replica panicked ({what}): ending the process (exit status {RAFT_PANIC_EXIT_CODE}); a restart recovers from the log on disk"
            );
            std::process::exit(RAFT_PANIC_EXIT_CODE)
        }
    }
}

/// The replica and what its rounds keep between them.
struct Core<S: StateMachine> {
    replica: Replica<S>,
    pending: Pending<S>,
    transport: Box<dyn Transport>,
    next_tick: Instant,
    next_sync: Instant,
    /// A `Stop` was taken: the round that took it made the log durable.
    stopping: bool,
    /// The replica failed in a round; the driver thread returns it.
    failed: Option<ReplicaError>,
    /// The driver thread has taken the failure.
    failure_taken: bool,
}

fn lock<S: StateMachine>(core: &Mutex<Core<S>>) -> MutexGuard<'_, Core<S>> {
    core.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<S: StateMachine> Core<S> {
    fn new(replica: Replica<S>, transport: Box<dyn Transport>) -> Self {
        let now = Instant::now();
        Self {
            replica,
            pending: Pending {
                next_id: 1,
                proposals: HashMap::new(),
                reads: HashMap::new(),
                read_asked: HashMap::new(),
                members: Vec::new(),
                syncs: Vec::new(),
            },
            transport,
            next_tick: now + Duration::from_millis(TICK_INTERVAL_MS),
            next_sync: now + Duration::from_millis(DEFERRED_SYNC_MS),
            stopping: false,
            failed: None,
            failure_taken: false,
        }
    }

    /// A failure of the replica outside a round: it stops, as one in a
    /// round would (the driver thread returns it).
    fn fail(&mut self, e: ReplicaError) -> DriveError {
        error!(replica = self.replica.id(), %e, "the Raft log cannot be synced; stopping the replica");
        self.failed = Some(e);
        DriveError::Stopped
    }

    /// Whether no more rounds run (stopped, or the replica failed).
    fn is_done(&self) -> bool {
        self.stopping || self.failed.is_some() || self.failure_taken
    }

    /// When the driver thread must run a round without a request: the
    /// next tick, or the next deferred sync (inline rounds may have
    /// written the log since the thread last looked).
    fn wake_at(&self) -> Instant {
        self.next_tick.min(self.next_sync)
    }

    /// Takes `requests`, ticks when due, persists, applies and answers.
    /// Requests after the end are dropped: their callers see `Stopped`.
    fn round(&mut self, requests: impl Iterator<Item = Request<S>>) {
        if self.is_done() {
            return;
        }
        for request in requests {
            self.stopping |= accept(&mut self.replica, &mut self.pending, request);
        }
        if let Err(e) = self.step() {
            error!(replica = self.replica.id(), %e, "the Raft replica failed; stopping it");
            self.failed = Some(e);
        }
    }

    fn step(&mut self) -> Result<(), ReplicaError> {
        let tick = Duration::from_millis(TICK_INTERVAL_MS);
        if Instant::now() >= self.next_tick {
            self.replica.tick();
            self.next_tick += tick;
            if self.next_tick < Instant::now() {
                self.next_tick = Instant::now() + tick;
            }
        }
        let out = self.replica.handle_ready()?;
        let (replica, pending) = (&mut self.replica, &mut self.pending);
        self.transport.send(out.messages);
        for change in &out.members {
            let id = match change {
                MemberChange::Added { id, addr, .. } => {
                    if *id != replica.id() {
                        self.transport.add_peer(*id, addr);
                    }
                    *id
                }
                MemberChange::Removed { id } => {
                    self.transport.remove_peer(*id);
                    *id
                }
            };
            pending.members.retain(|(_, waiting, reply)| {
                let done = *waiting == id;
                if done {
                    let _ = reply.send(Ok(()));
                }
                !done
            });
        }
        for applied in out.applied {
            if let Some((_, reply)) = applied.proposal.and_then(|p| pending.proposals.remove(&p)) {
                let _ = reply.send(Ok(applied.result));
            }
        }
        for id in out.reads {
            pending.read_asked.remove(&id);
            if let Some((_, read)) = pending.reads.remove(&id) {
                read(Ok(replica.state_machine()));
            }
        }
        for id in pending.reads_to_retry(Instant::now()) {
            replica.read_index(id);
        }
        if !replica.is_leader() && !pending.proposals.is_empty() {
            // Lost leadership: proposals may never commit here; callers retry
            // at the new leader (a command is applied at most once per
            // proposal, and these may still commit: see ARCHITECTURE.md).
            let leader = replica.leader();
            for (_, (_, reply)) in pending.proposals.drain() {
                let _ = reply.send(Err(DriveError::NotLeader { leader }));
            }
        }
        pending.expire(Instant::now());
        self.next_sync = sync_if_due(replica, &mut pending.syncs, self.next_sync, self.stopping)?;
        if self.stopping {
            // After the final sync (a failed snapshot write must not keep
            // the log from being durable): a snapshot being written is
            // adopted, so a clean stop leaves the log compacted.
            replica.wait_snapshot()?;
        }
        Ok(())
    }
}

/// The driver thread: a round for each batch of queued requests, and one
/// whenever the clock ticks or a deferred sync is due, until a `Stop` or
/// a failure of the replica.
fn run<S: StateMachine>(
    core: &Mutex<Core<S>>,
    requests: &flume::Receiver<Request<S>>,
) -> Result<(), ReplicaError> {
    loop {
        let wake = lock(core).wake_at();
        let timeout = wake.saturating_duration_since(Instant::now());
        let first = match requests.recv_timeout(timeout) {
            Ok(request) => Some(request),
            Err(flume::RecvTimeoutError::Timeout) => None,
            Err(flume::RecvTimeoutError::Disconnected) => Some(Request::Stop),
        };
        let mut core = lock(core);
        core.round(
            first
                .into_iter()
                .chain(requests.try_iter().take(BATCH_REQUESTS_MAX)),
        );
        if let Some(e) = core.failed.take() {
            core.failure_taken = true;
            return Err(e);
        }
        if core.stopping {
            return Ok(());
        }
    }
}

/// Makes the log durable when someone waits for it, when written records
/// waited `DEFERRED_SYNC_MS`, or at stop; answers the waiters. Returns
/// when the next timed sync is due.
fn sync_if_due<S: StateMachine>(
    replica: &mut Replica<S>,
    waiting: &mut Vec<MemberReply>,
    due: Instant,
    stopping: bool,
) -> Result<Instant, ReplicaError> {
    let now = Instant::now();
    if replica.log_unsynced() {
        if waiting.is_empty() && now < due && !stopping {
            return Ok(due);
        }
        if let Err(e) = replica.sync_log() {
            error!(replica = replica.id(), %e, "the Raft log cannot be synced; stopping the replica");
            return Err(e);
        }
    }
    for reply in waiting.drain(..) {
        let _ = reply.send(Ok(()));
    }
    Ok(now + Duration::from_millis(DEFERRED_SYNC_MS))
}

/// Takes one request; returns whether the driver should stop.
fn accept<S: StateMachine>(
    replica: &mut Replica<S>,
    pending: &mut Pending<S>,
    request: Request<S>,
) -> bool {
    match request {
        Request::Propose { command, reply } => {
            let id = pending.next_id;
            pending.next_id += 1;
            match replica.propose(id, command) {
                Ok(()) => {
                    pending.proposals.insert(id, (Instant::now(), reply));
                }
                Err(ReplicaError::NotLeader { leader }) => {
                    let _ = reply.send(Err(DriveError::NotLeader { leader }));
                }
                Err(e) => {
                    warn!(%e, "proposal refused");
                    let _ = reply.send(Err(DriveError::NotLeader {
                        leader: replica.leader(),
                    }));
                }
            }
        }
        Request::Read(read) => {
            if replica.leader().is_none() {
                read(Err(DriveError::NotLeader { leader: None }));
                return false;
            }
            let id = pending.next_id;
            pending.next_id += 1;
            pending.reads.insert(id, (Instant::now(), read));
            pending.read_asked.insert(id, Instant::now());
            replica.read_index(id);
        }
        Request::ReadLocal(read) => read(Ok(replica.state_machine())),
        Request::ChangeMembers { change, reply } => {
            let id = match &change {
                Membership::AddVoter { id, .. }
                | Membership::AddLearner { id, .. }
                | Membership::Remove { id } => *id,
            };
            match replica.propose_membership(&change) {
                Ok(()) => pending.members.push((Instant::now(), id, reply)),
                Err(ReplicaError::NotLeader { leader }) => {
                    let _ = reply.send(Err(DriveError::NotLeader { leader }));
                }
                Err(e) => {
                    warn!(%e, "membership change refused");
                    let _ = reply.send(Err(DriveError::Refused(e.to_string())));
                }
            }
        }
        Request::Message(message) => {
            if let Err(e) = replica.step(*message) {
                warn!(replica = replica.id(), %e, "dropped a Raft message");
            }
        }
        Request::Unreachable(peer) => replica.report_unreachable(peer),
        Request::SnapshotStatus { to, delivered } => replica.report_snapshot(to, delivered),
        Request::Status(reply) => {
            let _ = reply.send(Status {
                id: replica.id(),
                leader: replica.leader(),
                term: replica.term(),
                applied: replica.applied(),
                log_syncs: replica.log_syncs(),
                log_unsynced: replica.log_unsynced(),
            });
        }
        Request::Heard(reply) => {
            let _ = reply.send(replica.heard());
        }
        Request::Sync(reply) => pending.syncs.push(reply),
        Request::Stop => return true,
    }
    false
}
