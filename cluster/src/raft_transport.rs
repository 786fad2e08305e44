//! Raft messages between master processes over TCP.
//!
//! A connection is a [`Link`]: with TLS, both ends are authenticated by
//! their certificates before a byte of Raft is read, and a sender checks it
//! reached the member it meant (its certificate's id). It starts with
//! [`RAFT_PREAMBLE`] and a handshake: the sender offers `[group u64][sender
//! id u64]`, the receiver answers `[verdict u8][its group u64]` and reads
//! messages only when the groups match (see [`crate::group`]) and the
//! sender's certificate is that member's; a sender refused as a member of
//! another group logs why and tries again later, slowly. The group is told
//! only to authenticated peers (0 otherwise). Every message read must come
//! `from` the authenticated member; the replica drops messages from ids
//! that are not members of its configuration.
//!
//! Frames are `[length u32][crc32c u32][kind u8][body]`, length limited by
//! [`FRAME_MAX_BYTES`]. A message that fits travels in one frame (kind
//! `WHOLE`, body = the protobuf raft `Message`); a larger one (a snapshot of
//! a big namespace, a huge entry) in consecutive `CHUNK` frames of at most
//! [`CHUNK_BYTES`], each `[total u64][offset u64][bytes]`, reassembled by
//! the reader up to [`MESSAGE_MAX_BYTES`]. A frame or chunk sequence that
//! fails its checks closes the connection (the peer reconnects); it never
//! panics the process. Each peer has a sender thread with a bounded queue;
//! each accepted connection a reader thread that hands messages to the
//! local driver.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tracing::{debug, error, info, warn};

use crate::group::Member;
use crate::link::{Expect, Link, Security};
use crate::raft_driver::{RaftHandle, Transport};
use crate::replica::StateMachine;
use crate::tls::{Peer, Role};

/// Most message bytes one frame carries; larger messages are chunked.
pub const CHUNK_BYTES: usize = 4 << 20;
/// Largest frame accepted: a chunk and its headers.
pub const FRAME_MAX_BYTES: usize = CHUNK_BYTES + 1 + CHUNK_HEADER_BYTES;
/// Largest message a reader reassembles (the biggest snapshot a follower
/// can receive; it is held in memory, as raft-rs needs it whole).
pub const MESSAGE_MAX_BYTES: u64 = 16 << 30;
const KIND_WHOLE: u8 = 0;
const KIND_CHUNK: u8 = 1;
const CHUNK_HEADER_BYTES: usize = 16;
/// Messages queued for one peer before new ones are dropped (Raft resends).
pub const PEER_QUEUE_DEPTH: usize = 4096;
/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT_MS: u64 = 500;
/// Pause between reconnection attempts to an unreachable peer.
pub const RECONNECT_BACKOFF_MS: u64 = 200;
/// First bytes a master sends on a connection to a peer (see `listener`).
pub const RAFT_PREAMBLE: [u8; 4] = *b"DLRF";
/// How long each side of the handshake waits for the other.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 2_000;
/// Pause before offering again to a peer that refused this group.
pub const REFUSED_BACKOFF_MS: u64 = 5_000;
const VERDICT_ACCEPTED: u8 = 1;
const VERDICT_REFUSED: u8 = 0;

/// Where the local driver is, once it has started.
pub type LocalHandle<S> = Arc<OnceLock<RaftHandle<S>>>;

/// Tells the local driver how a message fared (unreachable peer, snapshot
/// delivered or lost).
type Reporter = Arc<dyn Fn(&Message, bool) + Send + Sync>;

/// Sends this master's messages to its peers.
pub struct TcpTransport {
    me: Member,
    queues: HashMap<u64, flume::Sender<Message>>,
    addrs: BTreeMap<u64, String>,
    reporter: Reporter,
    members_file: Option<PathBuf>,
    security: Security,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("peers", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl TcpTransport {
    /// Starts a sender thread per peer (`peers` excludes this master `me`).
    /// When `members_file` is given, the peers' addresses are written there
    /// whenever membership changes, so a restart knows members that joined.
    pub fn new<S: StateMachine + Send + 'static>(
        me: Member,
        peers: &BTreeMap<u64, String>,
        local: &LocalHandle<S>,
        members_file: Option<PathBuf>,
        security: Security,
    ) -> Self {
        let local = Arc::clone(local);
        let reporter: Reporter =
            Arc::new(move |message, delivered| report(&local, message, delivered));
        let mut transport = Self {
            me,
            queues: HashMap::new(),
            addrs: BTreeMap::new(),
            reporter,
            members_file,
            security,
        };
        for (&id, addr) in peers {
            transport.connect(id, addr);
        }
        transport
    }

    fn connect(&mut self, id: u64, addr: &str) {
        self.queues.remove(&id);
        self.addrs.insert(id, addr.to_string());
        let (tx, rx) = flume::bounded(PEER_QUEUE_DEPTH);
        let reporter = Arc::clone(&self.reporter);
        let addr = addr.to_string();
        let me = self.me;
        let security = self.security.clone();
        let spawned = thread::Builder::new()
            .name(format!("raft-send-{id}"))
            .spawn(move || send_loop(me, id, &addr, &rx, &reporter, &security));
        match spawned {
            Ok(_) => {
                self.queues.insert(id, tx);
            }
            Err(e) => warn!(peer = id, %e, "cannot start the sender thread"),
        }
    }

    fn save_members(&self) {
        let Some(path) = &self.members_file else {
            return;
        };
        if let Err(e) = write_members(path, &self.addrs) {
            warn!(path = %path.display(), %e, "cannot record the group's members");
        }
    }
}

/// First line of a members file: a file without it (empty, torn) is
/// damaged, never "no members".
const MEMBERS_HEADER: &str = "# datenlord members";

/// Records `members` (`id=host:port` lines) in `path` durably: written
/// to a temporary file, synced, renamed over it, the directory synced.
pub(crate) fn write_members(path: &Path, members: &BTreeMap<u64, String>) -> std::io::Result<()> {
    let mut text = format!("{MEMBERS_HEADER}\n");
    for (id, addr) in members {
        let _ = writeln!(text, "{id}={addr}");
    }
    crate::group::replace_file(path, text.as_bytes())
}

/// Reads a members file written by [`write_members`]: `Ok(None)` when
/// there is none; an empty or garbled one is an error that says so.
pub fn read_members(path: &Path) -> Result<Option<BTreeMap<u64, String>>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let damaged = |why: &str| {
        format!(
            "{} {why}: it lists the group's members, without which this member cannot rejoin. Restore it (lines `ID=HOST:PORT` after `{MEMBERS_HEADER}`) or start on a new data directory (nothing was changed)",
            path.display()
        )
    };
    if text.trim().is_empty() {
        return Err(damaged("is empty"));
    }
    // Files written before the header existed start with a member.
    let lines = text.lines().map(str::trim).filter(|l| *l != MEMBERS_HEADER);
    let mut members = BTreeMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let member = line
            .split_once('=')
            .and_then(|(id, addr)| Some((id.trim().parse::<u64>().ok()?, addr.trim())))
            .filter(|(id, addr)| *id != 0 && !addr.is_empty());
        let Some((id, addr)) = member else {
            return Err(damaged(&format!(
                "has a line {line:?} that is not ID=HOST:PORT"
            )));
        };
        members.insert(id, addr.to_string());
    }
    Ok(Some(members))
}

impl Transport for TcpTransport {
    fn send(&mut self, messages: Vec<Message>) {
        for message in messages {
            let to = message.to;
            if let Some(queue) = self.queues.get(&to) {
                if queue.try_send(message).is_err() {
                    debug!("peer queue full; message dropped (Raft will resend)");
                }
            } else {
                warn!(to, "message for an unknown peer dropped");
            }
        }
    }

    fn add_peer(&mut self, id: u64, addr: &str) {
        if self.addrs.get(&id).map(String::as_str) != Some(addr) {
            info!(peer = id, addr, "a master joined the group");
            self.connect(id, addr);
        }
        self.save_members();
    }

    fn remove_peer(&mut self, id: u64) {
        info!(peer = id, "a master left the group");
        // Dropping the queue ends its sender thread.
        self.queues.remove(&id);
        self.addrs.remove(&id);
        self.save_members();
    }
}

fn report<S: StateMachine + Send + 'static>(
    local: &LocalHandle<S>,
    message: &Message,
    delivered: bool,
) {
    let Some(handle) = local.get() else { return };
    if !delivered {
        handle.unreachable(message.to);
    }
    if message.get_msg_type() == MessageType::MsgSnapshot {
        handle.snapshot_status(message.to, delivered);
    }
}

fn send_loop(
    me: Member,
    peer: u64,
    addr: &str,
    queue: &flume::Receiver<Message>,
    reporter: &Reporter,
    security: &Security,
) {
    let mut conn: Option<BufWriter<Link>> = None;
    let mut frame = Vec::new();
    let mut refused_before = false;
    while let Ok(message) = queue.recv() {
        if conn.is_none() {
            let backoff = match connect(me, peer, addr, security) {
                Ok(stream) => {
                    info!(peer, addr, "connected to master");
                    refused_before = false;
                    conn = Some(BufWriter::new(stream));
                    None
                }
                Err(Offer::Refused(theirs)) => {
                    if !refused_before {
                        let theirs = if theirs == 0 {
                            "another metadata group (or does not take this member's id)".to_string()
                        } else {
                            format!("metadata group {theirs:016x}")
                        };
                        error!(
                            peer,
                            addr,
                            "the master at this address is in {theirs}, this one in {:016x}: it refuses this master's messages. Check that every master got the same --peers (and --group) and its own group's --data-dir",
                            me.group
                        );
                    }
                    refused_before = true;
                    Some(REFUSED_BACKOFF_MS)
                }
                Err(Offer::Failed(e)) => {
                    debug!(peer, addr, %e, "master unreachable");
                    Some(RECONNECT_BACKOFF_MS)
                }
            };
            if let Some(backoff) = backoff {
                reporter(&message, false);
                // Drop what queued up meanwhile: Raft resends what matters.
                thread::sleep(Duration::from_millis(backoff));
                for stale in queue.drain() {
                    reporter(&stale, false);
                }
                continue;
            }
        }
        frame.clear();
        if let Err(e) = encode_frame(&message, &mut frame) {
            warn!(peer, %e, "cannot encode a Raft message");
            continue;
        }
        let Some(writer) = conn.as_mut() else {
            continue;
        };
        let mut sent = writer.write_all(&frame);
        if sent.is_ok() && queue.is_empty() {
            sent = writer.flush();
        }
        match sent {
            Ok(()) => reporter(&message, true),
            Err(e) => {
                debug!(peer, %e, "connection to master lost");
                reporter(&message, false);
                conn = None;
            }
        }
    }
}

/// Why a connection to a peer did not start.
#[derive(Debug)]
enum Offer {
    /// The peer is in this other group.
    Refused(u64),
    /// Unreachable, or it broke off the handshake.
    Failed(String),
}

/// Connects to member `peer` at `addr` and offers this member's group.
fn connect(me: Member, peer: u64, addr: &str, security: &Security) -> Result<Link, Offer> {
    let mut link = security
        .connect(
            addr,
            Expect::Member(peer),
            Duration::from_millis(CONNECT_TIMEOUT_MS),
            Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
        )
        .map_err(|e| Offer::Failed(e.to_string()))?;
    offer(&mut link, me)?;
    Ok(link)
}

/// The sender's half of the handshake on a new connection.
fn offer(stream: &mut Link, me: Member) -> Result<(), Offer> {
    let failed = |e: std::io::Error| Offer::Failed(format!("handshake: {e}"));
    let mut hello = Vec::with_capacity(20);
    hello.extend_from_slice(&RAFT_PREAMBLE);
    hello.extend_from_slice(&me.group.to_le_bytes());
    hello.extend_from_slice(&me.id.to_le_bytes());
    stream
        .write_all(&hello)
        .and_then(|()| stream.flush())
        .map_err(failed)?;
    let mut answer = [0u8; 9];
    crate::frame::read_exact_within(stream, &mut answer, HANDSHAKE_TIMEOUT_MS).map_err(failed)?;
    let mut theirs = [0u8; 8];
    theirs.copy_from_slice(&answer[1..]);
    match answer[0] {
        VERDICT_ACCEPTED => Ok(()),
        VERDICT_REFUSED => Err(Offer::Refused(u64::from_le_bytes(theirs))),
        other => Err(Offer::Failed(format!("unknown handshake verdict {other}"))),
    }
}

/// The receiver's half of the handshake, after [`RAFT_PREAMBLE`]: answers
/// the offer and says whether to read the peer's messages (only when it
/// is in this member's group and its certificate is the member's it
/// claims to be).
pub(crate) fn accept(stream: &mut Link, me: Member) -> bool {
    let peer = stream.remote();
    let mut hello = [0u8; 16];
    if let Err(e) = crate::frame::read_exact_within(stream, &mut hello, HANDSHAKE_TIMEOUT_MS) {
        debug!(?peer, %e, "peer broke off the handshake");
        return false;
    }
    let word = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&hello[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    let (theirs, from) = (word(0), word(8));
    let same = theirs == me.group;
    let genuine = stream.peer().speaks_for(from);
    let verdict = if same && genuine {
        VERDICT_ACCEPTED
    } else {
        VERDICT_REFUSED
    };
    // Only an authenticated peer learns which group this is.
    let told = stream.peer().told(me.group);
    let mut answer = Vec::with_capacity(9);
    answer.push(verdict);
    answer.extend_from_slice(&told.to_le_bytes());
    if let Err(e) = stream.write_all(&answer).and_then(|()| stream.flush()) {
        debug!(?peer, %e, "cannot answer the handshake");
        return false;
    }
    if !genuine {
        warn!(
            ?peer,
            from,
            "refused Raft messages offered as member {from} by {}: a certificate speaks only for its own id",
            stream.peer()
        );
        return false;
    }
    if !same {
        warn!(
            ?peer,
            from,
            "refused Raft messages from a member of metadata group {theirs:016x} (this is {:016x}): its data directory or --peers belong to another group",
            me.group
        );
    }
    same
}

/// Encodes a message as one frame, or as chunk frames when larger than
/// [`CHUNK_BYTES`].
pub fn encode_frame(message: &Message, out: &mut Vec<u8>) -> Result<(), String> {
    encode_frames(message, CHUNK_BYTES, out)
}

fn encode_frames(message: &Message, chunk_bytes: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let body = message.write_to_bytes().map_err(|e| e.to_string())?;
    if body.len() as u64 > MESSAGE_MAX_BYTES {
        return Err(format!(
            "message of {} bytes exceeds the {MESSAGE_MAX_BYTES}-byte limit",
            body.len()
        ));
    }
    if body.len() <= chunk_bytes {
        return crate::frame::write(out, &[&[KIND_WHOLE], &body]).map_err(|e| e.to_string());
    }
    let total = (body.len() as u64).to_le_bytes();
    for (i, chunk) in body.chunks(chunk_bytes).enumerate() {
        let offset = ((i * chunk_bytes) as u64).to_le_bytes();
        crate::frame::write(out, &[&[KIND_CHUNK], &total, &offset, chunk])
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Reads one message (one frame, or every chunk of a chunked one);
/// `Ok(None)` at a clean end of stream.
pub fn read_frame(reader: &mut impl Read, buf: &mut Vec<u8>) -> Result<Option<Message>, String> {
    read_frame_within(reader, buf, MESSAGE_MAX_BYTES)
}

/// [`read_frame`] of messages of at most `message_bytes_max` (a peer that
/// may not send snapshots cannot make this process reassemble one).
fn read_frame_within(
    reader: &mut impl Read,
    buf: &mut Vec<u8>,
    message_bytes_max: u64,
) -> Result<Option<Message>, String> {
    let mut assembled: Vec<u8> = Vec::new();
    let mut expected_total: Option<u64> = None;
    loop {
        if !crate::frame::read(reader, buf, 1, FRAME_MAX_BYTES)? {
            return match expected_total {
                None => Ok(None),
                Some(_) => Err("the stream ended inside a chunked message".into()),
            };
        }
        let (kind, body) = buf.split_first().ok_or("empty frame")?;
        match (*kind, expected_total) {
            (KIND_WHOLE, None) => {
                return Message::parse_from_bytes(body)
                    .map(Some)
                    .map_err(|e| e.to_string())
            }
            (KIND_WHOLE, Some(_)) => {
                return Err("a whole message inside a chunked one".into());
            }
            (KIND_CHUNK, _) => {
                let (total, offset, bytes) = chunk_parts(body)?;
                // A sender chunks only messages larger than one chunk.
                if total > message_bytes_max || total <= CHUNK_BYTES as u64 {
                    return Err(format!("chunked message of {total} bytes is not allowed"));
                }
                if expected_total.is_some_and(|t| t != total) {
                    return Err("chunks of one message disagree on its size".into());
                }
                if offset != assembled.len() as u64
                    || offset + bytes.len() as u64 > total
                    || bytes.is_empty()
                {
                    return Err(format!(
                        "chunk at {offset} of {} bytes does not continue {} of {total} bytes",
                        bytes.len(),
                        assembled.len()
                    ));
                }
                expected_total = Some(total);
                // Memory grows with what arrives, not with the claimed total.
                assembled.extend_from_slice(bytes);
                if assembled.len() as u64 == total {
                    return Message::parse_from_bytes(&assembled)
                        .map(Some)
                        .map_err(|e| e.to_string());
                }
            }
            (other, _) => return Err(format!("unknown frame kind {other}")),
        }
    }
}

fn chunk_parts(body: &[u8]) -> Result<(u64, u64, &[u8]), String> {
    if body.len() < CHUNK_HEADER_BYTES {
        return Err("chunk frame too short".into());
    }
    let (header, bytes) = body.split_at(CHUNK_HEADER_BYTES);
    let word = |at: usize| {
        header
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or("chunk header cut short")
    };
    Ok((word(0)?, word(8)?, bytes))
}

/// Reads a peer's messages (after its preamble) until it disconnects.
pub(crate) fn receive<S: StateMachine + Send + 'static>(
    stream: Link,
    me: u64,
    local: &LocalHandle<S>,
) {
    let peer = stream.remote();
    let who = stream.peer().clone();
    let message_bytes_max = message_bytes_max(&who);
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    let mut checked = std::time::Instant::now();
    loop {
        match read_frame_within(&mut reader, &mut buf, message_bytes_max) {
            Ok(Some(message)) => {
                if crate::link::recheck_due(&mut checked) && reader.get_ref().revoked() {
                    warn!(
                        ?peer,
                        "{who}'s certificate was revoked: closing its connection"
                    );
                    return;
                }
                if message.to != me {
                    warn!(
                        ?peer,
                        to = message.to,
                        me,
                        "message for another master: closing the connection (check --peers)"
                    );
                    return;
                }
                if !who.speaks_for(message.from) || !may_send(&who, message.get_msg_type()) {
                    warn!(
                        ?peer,
                        from = message.from,
                        kind = ?message.get_msg_type(),
                        "a Raft message from {who} claims to come from member {} or is not one its role sends: closing the connection",
                        message.from
                    );
                    return;
                }
                let Some(handle) = local.get() else { continue };
                if handle.deliver(message).is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                warn!(?peer, %e, "bad Raft frame: closing the connection");
                return;
            }
        }
    }
}

/// The largest message `who` may send: only masters send snapshots (a
/// leader's), the one message larger than a chunk; a node's answers fit
/// in one frame, so nothing a node sends is reassembled.
fn message_bytes_max(who: &Peer) -> u64 {
    match who {
        Peer::Certified(identity) if identity.role != Role::Master => CHUNK_BYTES as u64,
        _ => MESSAGE_MAX_BYTES,
    }
}

/// Whether `who` may send messages of `kind`. A node is a learner: it
/// answers the leader and asks it for read indexes, and never sends what
/// only voters and leaders send (votes, appends, heartbeats, snapshots),
/// so a node's certificate cannot stand in for a master's.
fn may_send(who: &Peer, kind: MessageType) -> bool {
    match who {
        Peer::Certified(identity) if identity.role == Role::Node => matches!(
            kind,
            MessageType::MsgAppendResponse
                | MessageType::MsgHeartbeatResponse
                | MessageType::MsgReadIndex
        ),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs one handshake per offer against a member 2 of group 8 with
    /// `server`'s credentials: the receiver's verdicts, and each sender's
    /// outcome.
    fn handshakes(
        server: Security,
        offers: Vec<(Security, u64, Member)>,
    ) -> (Vec<bool>, Vec<Result<(), Offer>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let count = offers.len();
        let receiver = thread::spawn(move || {
            let mut verdicts = Vec::new();
            for _ in 0..count {
                let (stream, _) = listener.accept().expect("accept");
                let Ok(mut link) = server.accept(stream) else {
                    verdicts.push(false);
                    continue;
                };
                let mut preamble = [0u8; 4];
                if link.read_exact(&mut preamble).is_err() {
                    verdicts.push(false);
                    continue;
                }
                assert_eq!(preamble, RAFT_PREAMBLE);
                verdicts.push(accept(&mut link, Member { id: 2, group: 8 }));
            }
            verdicts
        });
        let outcomes = offers
            .into_iter()
            .map(|(security, to, me)| connect(me, to, &addr, &security).map(drop))
            .collect();
        (receiver.join().expect("receiver"), outcomes)
    }

    #[test]
    fn a_peer_of_another_group_is_refused_at_the_handshake() {
        let plain = || Security::Insecure;
        let (verdicts, outcomes) = handshakes(
            plain(),
            vec![
                (plain(), 2, Member { id: 1, group: 7 }),
                (plain(), 2, Member { id: 1, group: 8 }),
            ],
        );
        assert_eq!(verdicts, vec![false, true]);
        // An unauthenticated peer is not told the group.
        assert!(
            matches!(outcomes[0], Err(Offer::Refused(0))),
            "{outcomes:?}"
        );
        assert!(outcomes[1].is_ok(), "{outcomes:?}");
        // A peer that breaks off mid-offer is dropped, without a panic.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut cut = std::net::TcpStream::connect(addr).expect("connect");
        cut.write_all(&RAFT_PREAMBLE).expect("preamble");
        cut.write_all(&[1, 2, 3]).expect("part of an offer");
        drop(cut);
        let (stream, _) = listener.accept().expect("accept");
        let mut link = plain().accept(stream).expect("plain");
        let mut preamble = [0u8; 4];
        link.read_exact(&mut preamble).expect("preamble");
        assert!(!accept(&mut link, Member { id: 2, group: 8 }));
    }

    #[test]
    fn certificates_decide_who_may_offer_raft_messages() {
        use crate::certs::testing::TestCa;
        use crate::tls::Role;
        let ca = TestCa::new();
        let stranger_ca = TestCa::new();
        let master = |id| ca.security(Role::Master, Some(id));
        let (verdicts, outcomes) = handshakes(
            master(2),
            vec![
                // A member of the CA in another group learns which group.
                (master(1), 2, Member { id: 1, group: 7 }),
                (master(1), 2, Member { id: 1, group: 8 }),
                // A certificate speaks only for its own id.
                (master(1), 2, Member { id: 3, group: 8 }),
                (
                    ca.security(Role::Admin, None),
                    2,
                    Member { id: 3, group: 8 },
                ),
                // Another CA's certificate and no certificate never get in.
                (
                    stranger_ca.security(Role::Master, Some(1)),
                    2,
                    Member { id: 1, group: 8 },
                ),
                (Security::Insecure, 2, Member { id: 1, group: 8 }),
                // The sender checks it reached the member it meant.
                (master(1), 5, Member { id: 1, group: 8 }),
            ],
        );
        assert_eq!(
            verdicts,
            vec![false, true, false, false, false, false, false]
        );
        assert!(
            matches!(outcomes[0], Err(Offer::Refused(8))),
            "{outcomes:?}"
        );
        assert!(outcomes[1].is_ok(), "{outcomes:?}");
        assert!(
            matches!(outcomes[2], Err(Offer::Refused(8))),
            "{outcomes:?}"
        );
        assert!(
            matches!(outcomes[3], Err(Offer::Refused(8))),
            "{outcomes:?}"
        );
        for (i, outcome) in outcomes.iter().enumerate().skip(4) {
            assert!(matches!(outcome, Err(Offer::Failed(_))), "{i}: {outcome:?}");
        }
        let Err(Offer::Failed(why)) = &outcomes[6] else {
            unreachable!()
        };
        assert!(why.contains("expected member 5"), "{why}");
    }

    #[test]
    fn members_files_read_back_and_an_empty_one_is_damage_not_no_members() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("members");
        assert_eq!(read_members(&path), Ok(None));
        let members = BTreeMap::from([(2, "h2:7001".to_string()), (3, "h3:7001".to_string())]);
        write_members(&path, &members).expect("write");
        assert_eq!(read_members(&path), Ok(Some(members)));
        write_members(&path, &BTreeMap::new()).expect("write");
        assert_eq!(read_members(&path), Ok(Some(BTreeMap::new())), "no peers");
        assert!(!dir.path().join("members.tmp").exists());
        // Written before the header existed.
        std::fs::write(&path, "2=h2:7001\n").expect("old");
        assert_eq!(
            read_members(&path),
            Ok(Some(BTreeMap::from([(2, "h2:7001".to_string())])))
        );
        for (damaged, why) in [
            ("", "is empty"),
            ("\n\n", "is empty"),
            ("2=h2:7001\nx\n", "\"x\""),
        ] {
            std::fs::write(&path, damaged).expect("damage");
            let err = read_members(&path).expect_err("damaged");
            assert!(
                err.contains(why) && err.contains("nothing was changed"),
                "{err}"
            );
        }
    }

    #[test]
    fn frames_roundtrip_and_bad_frames_are_errors() {
        let mut m = Message {
            to: 2,
            from: 1,
            term: 7,
            ..Default::default()
        };
        m.set_msg_type(MessageType::MsgHeartbeat);
        let mut frame = Vec::new();
        encode_frame(&m, &mut frame).expect("encode");
        let mut buf = Vec::new();
        let back = read_frame(&mut frame.as_slice(), &mut buf)
            .expect("read")
            .expect("a message");
        assert_eq!(back, m);
        assert!(read_frame(&mut [].as_slice(), &mut buf)
            .expect("eof")
            .is_none());
        let mut corrupt = frame.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert!(read_frame(&mut corrupt.as_slice(), &mut buf).is_err());
        let mut huge = frame.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_frame(&mut huge.as_slice(), &mut buf)
            .expect_err("too big")
            .contains("limit"));
        assert!(read_frame(&mut frame[..10].as_ref(), &mut buf).is_err());
    }

    fn snapshot_message(bytes: usize) -> Message {
        let mut m = Message {
            to: 3,
            from: 1,
            term: 9,
            ..Default::default()
        };
        m.set_msg_type(MessageType::MsgSnapshot);
        let data: Vec<u8> = (0..bytes).map(|i| (i * 31 % 251) as u8).collect();
        m.mut_snapshot().set_data(data.into());
        m.mut_snapshot().mut_metadata().index = 1234;
        m
    }

    #[test]
    fn big_messages_travel_in_chunks_and_are_reassembled() {
        let big = snapshot_message(3 * CHUNK_BYTES + 12_345);
        let mut small = Message {
            to: 3,
            ..Default::default()
        };
        small.set_msg_type(MessageType::MsgHeartbeat);
        let mut stream = Vec::new();
        encode_frame(&big, &mut stream).expect("encode");
        let frames = {
            let (mut n, mut rest, mut b) = (0, stream.as_slice(), Vec::new());
            while crate::frame::read(&mut rest, &mut b, 1, FRAME_MAX_BYTES).expect("frame") {
                n += 1;
            }
            n
        };
        assert_eq!(frames, 4, "no frame above the limit");
        encode_frame(&small, &mut stream).expect("encode");
        let mut reader = stream.as_slice();
        let mut buf = Vec::new();
        assert_eq!(read_frame(&mut reader, &mut buf).expect("read"), Some(big));
        assert_eq!(
            read_frame(&mut reader, &mut buf).expect("read"),
            Some(small)
        );
        assert_eq!(read_frame(&mut reader, &mut buf).expect("eof"), None);
    }

    #[test]
    fn broken_chunk_sequences_are_errors() {
        let chunk = 1000;
        let m = snapshot_message(3 * chunk + 10);
        let mut frames = Vec::new();
        encode_frames(&m, chunk, &mut frames).expect("encode");
        // Split the stream back into frames to rearrange them.
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut rest = frames.as_slice();
        while rest.len() >= 8 {
            let len = u32::from_le_bytes(rest[..4].try_into().expect("4")) as usize;
            parts.push(rest[..8 + len].to_vec());
            rest = &rest[8 + len..];
        }
        assert_eq!(parts.len(), 4);
        let read = |frames: &[&Vec<u8>]| {
            let bytes: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
            let mut buf = Vec::new();
            read_frame(&mut bytes.as_slice(), &mut buf)
        };
        // A peer that may not send large messages cannot start one.
        let mut frames = Vec::new();
        encode_frame(&snapshot_message(CHUNK_BYTES + 10), &mut frames).expect("encode");
        let mut buf = Vec::new();
        let err = read_frame_within(&mut frames.as_slice(), &mut buf, CHUNK_BYTES as u64)
            .expect_err("a node's snapshot");
        assert!(err.contains("not allowed"), "{err}");
        // A chunked message no larger than one chunk is refused (a sender
        // never chunks it).
        let err = read(&[&parts[0], &parts[1], &parts[2], &parts[3]]).expect_err("too small");
        assert!(err.contains("not allowed"), "{err}");
        // With real chunk sizes: a gap, a cut stream, a whole message inside.
        let big = snapshot_message(CHUNK_BYTES + 10);
        let mut frames = Vec::new();
        encode_frame(&big, &mut frames).expect("encode");
        let first_len = u32::from_le_bytes(frames[..4].try_into().expect("4")) as usize;
        let (first, second) = frames.split_at(8 + first_len);
        let mut buf = Vec::new();
        let err = read_frame(&mut second.to_vec().as_slice(), &mut buf).expect_err("gap");
        assert!(err.contains("does not continue"), "{err}");
        let err = read_frame(&mut first.to_vec().as_slice(), &mut buf).expect_err("cut");
        assert!(err.contains("ended inside"), "{err}");
        let mut whole = Vec::new();
        encode_frame(&Message::default(), &mut whole).expect("encode");
        let mut mixed = first.to_vec();
        mixed.extend_from_slice(&whole);
        let err = read_frame(&mut mixed.as_slice(), &mut buf).expect_err("mixed");
        assert!(err.contains("inside a chunked"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let mut buf = Vec::new();
            let _ = read_frame(&mut bytes.as_slice(), &mut buf);
        }
    }
}
