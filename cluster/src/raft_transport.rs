//! Raft messages between master processes over TCP.
//!
//! Frames are `[length u32][crc32c u32][protobuf raft Message]`, length
//! limited by [`FRAME_MAX_BYTES`]; a frame that fails its checks closes the
//! connection (the peer reconnects), it never panics the process. Each peer
//! has a sender thread with a bounded queue; each accepted connection a
//! reader thread that hands messages to the local driver.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tracing::{debug, info, warn};

use crate::raft_driver::{RaftHandle, Transport};
use crate::replica::StateMachine;

/// Largest frame accepted (a snapshot travels in one message).
pub const FRAME_MAX_BYTES: usize = 256 << 20;
/// Messages queued for one peer before new ones are dropped (Raft resends).
pub const PEER_QUEUE_DEPTH: usize = 4096;
/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT_MS: u64 = 500;
/// Pause between reconnection attempts to an unreachable peer.
pub const RECONNECT_BACKOFF_MS: u64 = 200;
/// First bytes a master sends on a connection to a peer (see `listener`).
pub const RAFT_PREAMBLE: [u8; 4] = *b"DLRF";

/// Where the local driver is, once it has started.
pub type LocalHandle<S> = Arc<OnceLock<RaftHandle<S>>>;

/// Tells the local driver how a message fared (unreachable peer, snapshot
/// delivered or lost).
type Reporter = Arc<dyn Fn(&Message, bool) + Send + Sync>;

/// Sends this master's messages to its peers.
pub struct TcpTransport {
    queues: HashMap<u64, flume::Sender<Message>>,
    addrs: BTreeMap<u64, String>,
    reporter: Reporter,
    members_file: Option<PathBuf>,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("peers", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl TcpTransport {
    /// Starts a sender thread per peer (`peers` excludes this master). When
    /// `members_file` is given, the peers' addresses are written there
    /// whenever membership changes, so a restart knows members that joined.
    pub fn new<S: StateMachine + Send + 'static>(
        peers: &BTreeMap<u64, String>,
        local: &LocalHandle<S>,
        members_file: Option<PathBuf>,
    ) -> Self {
        let local = Arc::clone(local);
        let reporter: Reporter =
            Arc::new(move |message, delivered| report(&local, message, delivered));
        let mut transport = Self {
            queues: HashMap::new(),
            addrs: BTreeMap::new(),
            reporter,
            members_file,
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
        let spawned = thread::Builder::new()
            .name(format!("raft-send-{id}"))
            .spawn(move || send_loop(id, &addr, &rx, &reporter));
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
        let mut text = String::new();
        for (id, addr) in &self.addrs {
            let _ = writeln!(text, "{id}={addr}");
        }
        let tmp = path.with_extension("tmp");
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            warn!(path = %path.display(), %e, "cannot record the group's members");
        }
    }
}

/// Reads a members file written by [`TcpTransport`]: `id=host:port` lines.
pub fn read_members(path: &Path) -> Option<BTreeMap<u64, String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let members: BTreeMap<u64, String> = text
        .lines()
        .filter_map(|line| {
            let (id, addr) = line.split_once('=')?;
            Some((id.trim().parse().ok()?, addr.trim().to_string()))
        })
        .collect();
    Some(members)
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

fn send_loop(peer: u64, addr: &str, queue: &flume::Receiver<Message>, reporter: &Reporter) {
    let mut conn: Option<BufWriter<TcpStream>> = None;
    let mut frame = Vec::new();
    while let Ok(message) = queue.recv() {
        if conn.is_none() {
            let resolved = addr.to_socket_addrs().ok().and_then(|mut a| a.next());
            let stream = resolved
                .map(|a| TcpStream::connect_timeout(&a, Duration::from_millis(CONNECT_TIMEOUT_MS)));
            match stream {
                Some(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    info!(peer, addr, "connected to master");
                    let mut writer = BufWriter::new(stream);
                    if writer.write_all(&RAFT_PREAMBLE).is_ok() {
                        conn = Some(writer);
                    }
                }
                failed => {
                    debug!(peer, addr, ?failed, "master unreachable");
                    reporter(&message, false);
                    // Drop what queued up meanwhile: Raft resends what matters.
                    thread::sleep(Duration::from_millis(RECONNECT_BACKOFF_MS));
                    for stale in queue.drain() {
                        reporter(&stale, false);
                    }
                    continue;
                }
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

/// Encodes a message as one frame.
pub fn encode_frame(message: &Message, out: &mut Vec<u8>) -> Result<(), String> {
    let body = message.write_to_bytes().map_err(|e| e.to_string())?;
    if body.len() > FRAME_MAX_BYTES {
        return Err(format!(
            "message of {} bytes exceeds the frame limit",
            body.len()
        ));
    }
    crate::frame::write(out, &[&body]).map_err(|e| e.to_string())
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub fn read_frame(reader: &mut impl Read, buf: &mut Vec<u8>) -> Result<Option<Message>, String> {
    if !crate::frame::read(reader, buf, 0, FRAME_MAX_BYTES)? {
        return Ok(None);
    }
    Message::parse_from_bytes(buf)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Accepts peers' connections on `listener` and delivers their messages
/// addressed to `me` to the local driver.
pub fn serve<S: StateMachine + Send + 'static>(
    listener: TcpListener,
    me: u64,
    local: LocalHandle<S>,
) {
    let spawned = thread::Builder::new()
        .name("raft-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let local = Arc::clone(&local);
                let _ = thread::Builder::new()
                    .name("raft-recv".into())
                    .spawn(move || {
                        let mut preamble = [0u8; 4];
                        if stream.read_exact(&mut preamble).is_ok() && preamble == RAFT_PREAMBLE {
                            receive(stream, me, &local);
                        }
                    });
            }
        });
    if let Err(e) = spawned {
        warn!(%e, "cannot start the Raft listener thread");
    }
}

/// Reads a peer's messages (after its preamble) until it disconnects.
pub(crate) fn receive<S: StateMachine + Send + 'static>(
    stream: TcpStream,
    me: u64,
    local: &LocalHandle<S>,
) {
    let peer = stream.peer_addr().ok();
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        match read_frame(&mut reader, &mut buf) {
            Ok(Some(message)) => {
                if message.to != me {
                    warn!(
                        ?peer,
                        to = message.to,
                        me,
                        "message for another master: closing the connection (check --peers)"
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

#[cfg(test)]
mod tests {
    use super::*;

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

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let mut buf = Vec::new();
            let _ = read_frame(&mut bytes.as_slice(), &mut buf);
        }
    }
}
