//! The request/response protocol between metadata clients (nodes, tools)
//! and masters, over TCP.
//!
//! ```text
//! request:  [len u32][crc32c u32][id u64][op u8][payload]
//! response: [len u32][crc32c u32][id u64][status u8][payload]
//! ```
//! A connection is a [`Link`] (with TLS, both ends authenticated first; the
//! handler is told who the client is and decides what it may do). It
//! starts with [`CLIENT_PREAMBLE`] and the metadata group the client
//! expects (`u64`, 0: any; see [`crate::group`]); a master of another
//! group answers [`Status::OtherGroup`] and the client leaves it alone.
//! `len` counts the bytes after the CRC; the CRC covers them. A master that
//! is not the leader answers [`Status::NotLeader`] with the leader's client
//! address, and [`RpcClient`] follows it by itself. A malformed frame closes
//! the connection; it never panics either side.

use std::io::{BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::link::{Expect, Link, Security};
use crate::tls::Peer;

/// Largest request or response accepted.
pub const RPC_FRAME_MAX_BYTES: usize = 64 << 20;
/// Bytes of the fixed part after the CRC: id and op/status.
const FIXED_BYTES: usize = 9;
/// How long a client keeps trying (leader changes included) before failing.
pub const CALL_DEADLINE_MS: u64 = 10_000;
/// Pause before retrying when no master answers or none leads yet.
const RETRY_BACKOFF_MS: u64 = 50;
/// Connect timeout per master.
const CONNECT_TIMEOUT_MS: u64 = 500;
/// First bytes a client sends on a connection (see `listener`).
pub const CLIENT_PREAMBLE: [u8; 4] = *b"DLMC";

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Done; the payload is the result.
    Ok = 0,
    /// Not the leader; the payload is the leader's client address (may be empty).
    NotLeader = 1,
    /// Failed; the payload is a message.
    Failed = 2,
    /// The master is in another group than the client expects; the
    /// payload is its group (`u64`).
    OtherGroup = 3,
}

/// Errors of a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// No master answered as leader before the deadline.
    #[error("no metadata master answered within {0:?} (tried {1}{last}): check that a majority of masters runs, --masters is right and, with TLS, that --tls-dir holds a certificate of the cluster's CA", last = last_error(.2.as_ref()))]
    Unavailable(Duration, String, Option<String>),
    /// The master failed the request.
    #[error("metadata master: {0}")]
    Failed(String),
}

/// What a server's handler returns.
#[derive(Debug)]
pub struct Response {
    /// Outcome kind.
    pub status: Status,
    /// Result, leader address or message.
    pub payload: Vec<u8>,
}

fn last_error(error: Option<&String>) -> String {
    error
        .map(|e| format!("; last error: {e}"))
        .unwrap_or_default()
}

fn write_frame(out: &mut impl Write, id: u64, code: u8, payload: &[u8]) -> std::io::Result<()> {
    crate::frame::write(out, &[&id.to_le_bytes(), &[code], payload])?;
    out.flush()
}

/// Reads a frame: `(id, code, payload)`; `Ok(None)` at a clean end.
fn read_frame(input: &mut impl Read) -> Result<Option<(u64, u8, Vec<u8>)>, String> {
    let mut body = Vec::new();
    if !crate::frame::read(input, &mut body, FIXED_BYTES, RPC_FRAME_MAX_BYTES)? {
        return Ok(None);
    }
    let id = u64::from_le_bytes(body[..8].try_into().map_err(|_| "short frame")?);
    let code = body[8];
    body.drain(..FIXED_BYTES);
    Ok(Some((id, code, body)))
}

/// The handler a master runs for each request: `(who, op, payload) ->
/// Response`.
pub type Handler = Arc<dyn Fn(&Peer, u8, Vec<u8>) -> Response + Send + Sync>;

/// Serves clients on `listener` for a member of `group`, one thread per
/// connection (tests: masters and nodes serve clients on their shared
/// port, `crate::listener`).
pub fn serve(listener: TcpListener, group: u64, handler: Handler, security: Security) {
    let spawned = thread::Builder::new()
        .name("meta-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let handler = Arc::clone(&handler);
                let security = security.clone();
                let _ = thread::Builder::new()
                    .name("meta-client".into())
                    .spawn(move || {
                        let Ok(mut link) = security.accept(stream) else {
                            return;
                        };
                        let mut preamble = [0u8; 4];
                        if link.read_exact(&mut preamble).is_ok() && preamble == CLIENT_PREAMBLE {
                            serve_connection(link, group, &handler);
                        }
                    });
            }
        });
    if let Err(e) = spawned {
        warn!(%e, "cannot start the metadata listener thread");
    }
}

/// How long a new client may take to say which group it expects.
const GROUP_TIMEOUT_MS: u64 = 5_000;

/// Answers a client's requests (after its preamble) for a member of
/// `group` until it disconnects.
pub(crate) fn serve_connection(mut stream: Link, group: u64, handler: &Handler) {
    let peer = stream.remote();
    let who = stream.peer().clone();
    let mut expected = [0u8; 8];
    if let Err(e) = crate::frame::read_exact_within(&mut stream, &mut expected, GROUP_TIMEOUT_MS) {
        debug!(?peer, %e, "client left before saying its group");
        return;
    }
    let expected = u64::from_le_bytes(expected);
    let other_group = expected != 0 && expected != group;
    // Only an authenticated client learns which group this is.
    let told = who.told(group);
    let mut reader = BufReader::new(stream);
    let mut checked = std::time::Instant::now();
    loop {
        match read_frame(&mut reader) {
            Ok(Some(_)) if crate::link::recheck_due(&mut checked) && reader.get_ref().revoked() => {
                warn!(
                    ?peer,
                    "{who}'s certificate was revoked: closing its connection"
                );
                return;
            }
            Ok(Some((id, _, _))) if other_group => {
                warn!(?peer, "a client of metadata group {expected:016x} reached this member of {group:016x}: told it so");
                let _ = write_frame(
                    reader.get_mut(),
                    id,
                    Status::OtherGroup as u8,
                    &told.to_le_bytes(),
                );
                return;
            }
            Ok(Some((id, op, payload))) => {
                let response = handler(&who, op, payload);
                if write_frame(
                    reader.get_mut(),
                    id,
                    response.status as u8,
                    &response.payload,
                )
                .is_err()
                {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                warn!(?peer, %e, "bad metadata request frame: closing the connection");
                return;
            }
        }
    }
}

/// A client of the masters; follows the leader by itself.
#[derive(Debug)]
pub struct RpcClient {
    masters: Vec<String>,
    preferred: Option<String>,
    /// The master connected to, and the connection (written through
    /// `get_mut`: a TLS stream is one object for both directions).
    conn: Option<(String, BufReader<Link>)>,
    security: Security,
    /// Why the last connection attempt or call failed, for the error.
    last_error: Option<String>,
    next_id: u64,
    deadline: Duration,
    /// The group the masters must be in (0: any).
    group: u64,
    /// Addresses that answered as members of another group.
    foreign: Vec<String>,
}

impl RpcClient {
    /// A client of the masters at `masters` (`host:port` each).
    pub fn new(masters: Vec<String>, security: Security) -> Self {
        Self {
            masters,
            preferred: None,
            conn: None,
            security,
            last_error: None,
            next_id: 1,
            deadline: Duration::from_millis(CALL_DEADLINE_MS),
            group: 0,
            foreign: Vec::new(),
        }
    }

    /// Talks only to masters of `group` (0: any) from now on.
    pub fn set_group(&mut self, group: u64) {
        if group != self.group {
            self.group = group;
            self.conn = None;
            self.foreign.clear();
        }
    }

    /// The group this client expects (0: any).
    pub fn group(&self) -> u64 {
        self.group
    }

    /// How this client authenticates.
    pub fn security(&self) -> &Security {
        &self.security
    }

    /// The addresses this client was given.
    pub fn masters(&self) -> &[String] {
        &self.masters
    }

    /// How long a call keeps trying before it fails.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Connects to `addr`, the handshake done by `deadline`.
    fn connect(&self, addr: &str, deadline: Instant) -> Result<BufReader<Link>, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut link = self
            .security
            .connect(
                addr,
                Expect::Server,
                Duration::from_millis(CONNECT_TIMEOUT_MS),
                left.min(Duration::from_millis(crate::link::HANDSHAKE_TIMEOUT_MS)),
            )
            .map_err(|e| format!("{addr}: {e}"))?;
        let mut hello = CLIENT_PREAMBLE.to_vec();
        hello.extend_from_slice(&self.group.to_le_bytes());
        link.write_all(&hello)
            .and_then(|()| link.flush())
            .map_err(|e| format!("{addr}: {e}"))?;
        Ok(BufReader::new(link))
    }

    /// Sends a request to the leader (found and followed as needed) and
    /// returns its result.
    pub fn call(&mut self, op: u8, payload: &[u8]) -> Result<Vec<u8>, RpcError> {
        let deadline = Instant::now() + self.deadline;
        let mut attempt = 0usize;
        loop {
            if Instant::now() > deadline {
                return Err(RpcError::Unavailable(
                    self.deadline,
                    self.masters.join(", "),
                    self.last_error.take(),
                ));
            }
            if self.conn.is_none() {
                if !self.masters.is_empty() && self.masters.iter().all(|a| self.foreign.contains(a))
                {
                    return Err(RpcError::Failed(format!(
                        "every master at {} is in another metadata group than {:016x}: check the addresses",
                        self.masters.join(", "),
                        self.group
                    )));
                }
                let addr = self
                    .preferred
                    .take()
                    .unwrap_or_else(|| self.masters[attempt % self.masters.len().max(1)].clone());
                attempt += 1;
                if self.foreign.contains(&addr) {
                    continue;
                }
                match self.connect(&addr, deadline) {
                    Ok(link) => self.conn = Some((addr, link)),
                    Err(e) => {
                        self.last_error = Some(e);
                        thread::sleep(Duration::from_millis(RETRY_BACKOFF_MS));
                        continue;
                    }
                }
            }
            let id = self.next_id;
            self.next_id += 1;
            let Some((addr, reader)) = self.conn.as_mut() else {
                continue;
            };
            // A master that accepted but does not answer (still starting,
            // stuck) must not hold the call past its deadline.
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let timed = reader
                .get_ref()
                .set_read_timeout(Some(left))
                .and_then(|()| reader.get_ref().set_write_timeout(Some(left)));
            let answer = timed
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    write_frame(reader.get_mut(), id, op, payload).map_err(|e| e.to_string())
                })
                .and_then(|()| read_frame(reader));
            match answer {
                Ok(Some((rid, status, body))) if rid == id => match status {
                    s if s == Status::Ok as u8 => return Ok(body),
                    s if s == Status::Failed as u8 => {
                        return Err(RpcError::Failed(
                            String::from_utf8_lossy(&body).into_owned(),
                        ))
                    }
                    s if s == Status::OtherGroup as u8 => {
                        warn!(addr = %addr, "this master is in another metadata group than {:016x}: leaving it alone", self.group);
                        self.foreign.push(addr.clone());
                        self.conn = None;
                    }
                    _ => {
                        let leader = String::from_utf8_lossy(&body).into_owned();
                        debug!(from = %addr, leader, "following the metadata leader");
                        self.conn = None;
                        if leader.is_empty() {
                            thread::sleep(Duration::from_millis(RETRY_BACKOFF_MS));
                        } else {
                            self.preferred = Some(leader);
                        }
                    }
                },
                Ok(_) => {
                    self.conn = None;
                    thread::sleep(Duration::from_millis(RETRY_BACKOFF_MS));
                }
                Err(e) => {
                    self.last_error = Some(format!("{addr}: {e}"));
                    self.conn = None;
                    thread::sleep(Duration::from_millis(RETRY_BACKOFF_MS));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_roundtrip_and_garbage_is_an_error() {
        let mut buf = Vec::new();
        write_frame(&mut buf, 42, 7, b"payload").expect("write");
        let back = read_frame(&mut buf.as_slice())
            .expect("read")
            .expect("frame");
        assert_eq!(back, (42, 7, b"payload".to_vec()));
        let mut bad = buf.clone();
        bad[10] ^= 1;
        assert!(read_frame(&mut bad.as_slice()).is_err());
        assert!(read_frame(&mut [1u8, 0, 0, 0, 0, 0, 0, 0].as_slice()).is_err());
    }

    #[test]
    fn a_client_follows_the_leader() {
        let follower = TcpListener::bind("127.0.0.1:0").expect("bind");
        let follower_addr = follower.local_addr().expect("addr").to_string();
        let leader = TcpListener::bind("127.0.0.1:0").expect("bind");
        let leader_addr = leader.local_addr().expect("addr").to_string();
        let redirect = leader_addr.clone();
        serve(
            follower,
            1,
            Arc::new(move |_: &Peer, _, _| Response {
                status: Status::NotLeader,
                payload: redirect.clone().into_bytes(),
            }),
            Security::Insecure,
        );
        serve(
            leader,
            1,
            Arc::new(|_: &Peer, op, mut payload| {
                payload.push(op);
                Response {
                    status: Status::Ok,
                    payload,
                }
            }),
            Security::Insecure,
        );
        // The client only knows the follower; it is sent to the leader.
        let mut client = RpcClient::new(vec![follower_addr], Security::Insecure);
        assert_eq!(client.call(3, b"ab").expect("call"), b"ab\x03");
        assert_eq!(client.call(4, b"").expect("call"), b"\x04");
        // Nobody answering is a clear error after the deadline.
        let mut lost = RpcClient::new(vec!["127.0.0.1:1".into()], Security::Insecure)
            .with_deadline(Duration::from_millis(300));
        let err = lost.call(1, b"").expect_err("unavailable").to_string();
        assert!(err.contains("majority of masters"), "{err}");
    }

    #[test]
    fn a_client_leaves_masters_of_another_group_alone() {
        let addr_of = |group: u64| {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("addr").to_string();
            serve(
                listener,
                group,
                Arc::new(move |_: &Peer, _, _| Response {
                    status: Status::Ok,
                    payload: group.to_le_bytes().to_vec(),
                }),
                Security::Insecure,
            );
            addr
        };
        let (one, two) = (addr_of(1), addr_of(2));
        let masters = vec![one.clone(), two.clone()];
        let mut client = RpcClient::new(masters.clone(), Security::Insecure);
        client.set_group(2);
        for _ in 0..3 {
            assert_eq!(client.call(3, b"").expect("call"), 2u64.to_le_bytes());
        }
        let mut any = RpcClient::new(vec![one], Security::Insecure);
        assert_eq!(any.call(3, b"").expect("any group"), 1u64.to_le_bytes());
        let mut lost = RpcClient::new(masters, Security::Insecure);
        lost.set_group(3);
        let err = lost
            .call(3, b"")
            .expect_err("no master of group 3")
            .to_string();
        assert!(err.contains("another metadata group"), "{err}");
    }

    #[test]
    fn a_master_that_accepts_but_never_answers_fails_the_call_at_its_deadline() {
        let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = silent.local_addr().expect("addr").to_string();
        // Connections wait in the backlog, as with a master still starting.
        let mut client = RpcClient::new(vec![addr], Security::Insecure)
            .with_deadline(Duration::from_millis(300));
        let started = Instant::now();
        let err = client.call(1, b"").expect_err("no answer").to_string();
        assert!(err.contains("majority of masters"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the call outlived its deadline: {:?}",
            started.elapsed()
        );
        drop(silent);
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100)) {
            let _ = read_frame(&mut bytes.as_slice());
        }
    }
}
