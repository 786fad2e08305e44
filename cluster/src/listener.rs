//! One TCP port per master for both its peers (Raft messages) and its
//! clients (metadata requests): the first four bytes of a connection say
//! which it is, so a master is one address in `--peers` and in clients'
//! `--masters`, and a leader redirect names the address clients already use.
//! With TLS, the handshake (and so the peer's certificate) comes before
//! those four bytes: nothing of either protocol is read from a stranger.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tracing::{debug, warn};

use crate::client_rpc::{serve_connection, Handler, CLIENT_PREAMBLE};
use crate::group::Member;
use crate::link::Security;
use crate::raft_transport::{accept, receive, LocalHandle, RAFT_PREAMBLE};
use crate::replica::StateMachine;

/// How long a new connection may take to say what it is (after its TLS
/// handshake, which has its own limit).
const PREAMBLE_TIMEOUT_MS: u64 = 5000;
/// New connections being authenticated and saying what they are, at once:
/// strangers hold only these, never a peer's or a client's place.
pub const HANDSHAKES_MAX: usize = 64;
/// Raft connections (masters and nodes) served at once, one thread each.
pub const PEER_CONNECTIONS_MAX: usize = 1024;
/// Client connections served at once, one thread each.
pub const CLIENT_CONNECTIONS_MAX: usize = 1024;
/// A connection that sends nothing for this long is closed (its peer
/// connects again when it has something to say).
pub const IDLE_TIMEOUT_MS: u64 = 300_000;

/// The limits a listener enforces (the constants above; smaller in tests).
#[derive(Clone, Copy, Debug)]
struct Limits {
    handshakes_max: usize,
    peers_max: usize,
    clients_max: usize,
    preamble_timeout_ms: u64,
    idle_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshakes_max: HANDSHAKES_MAX,
            peers_max: PEER_CONNECTIONS_MAX,
            clients_max: CLIENT_CONNECTIONS_MAX,
            preamble_timeout_ms: PREAMBLE_TIMEOUT_MS,
            idle_timeout_ms: IDLE_TIMEOUT_MS,
        }
    }
}

/// A bounded count of connections of one kind; more are closed at once so
/// a flood cannot exhaust the process.
#[derive(Clone, Debug)]
struct Quota {
    open: Arc<AtomicUsize>,
    max: usize,
    what: &'static str,
}

impl Quota {
    fn new(max: usize, what: &'static str) -> Self {
        Self {
            open: Arc::new(AtomicUsize::new(0)),
            max,
            what,
        }
    }

    /// A place, held until the slot is dropped; `None` when all are taken.
    fn take(&self, remote: Option<SocketAddr>) -> Option<Slot> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            warn!(
                ?remote,
                "too many {} ({}): closing a new one", self.what, self.max
            );
            return None;
        }
        Some(Slot(Arc::clone(&self.open)))
    }
}

/// Counts a connection for as long as it is held.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts connections on `listener`: peers' go to the local Raft driver,
/// clients' to `handler`. Serves for the life of the process.
pub fn serve_master<S: StateMachine + Send + 'static>(
    listener: TcpListener,
    me: Member,
    local: LocalHandle<S>,
    handler: Handler,
    security: Security,
) {
    let never = Arc::new(AtomicBool::new(false));
    if let Err(e) = spawn_accept(
        listener,
        me,
        local,
        handler,
        security,
        never,
        Limits::default(),
    ) {
        warn!(%e, "cannot start the master listener thread");
    }
}

/// A listener started by [`serve_stoppable`]; stopping (or dropping) it
/// closes the port, so a replica restarted in the same process can bind it
/// again. Connections already accepted end when their peer or the local
/// driver goes away.
#[derive(Debug)]
pub struct Listening {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listening {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the port and waits for the accept thread to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::Release);
        // Wake the blocked accept; it sees the flag and returns.
        let woken = TcpStream::connect_timeout(&self.addr, Duration::from_millis(WAKE_TIMEOUT_MS));
        if woken.is_ok() {
            let _ = thread.join();
        } else {
            warn!(addr = %self.addr, "cannot wake the listener to stop it; leaving its thread");
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How long stopping a listener waits to connect to it.
const WAKE_TIMEOUT_MS: u64 = 1000;

/// [`serve_master`] that can be stopped (a node's replica lives inside a
/// longer-lived process).
pub fn serve_stoppable<S: StateMachine + Send + 'static>(
    listener: TcpListener,
    me: Member,
    local: LocalHandle<S>,
    handler: Handler,
    security: Security,
) -> std::io::Result<Listening> {
    let mut addr = listener.local_addr()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let thread = spawn_accept(
        listener,
        me,
        local,
        handler,
        security,
        Arc::clone(&stop),
        Limits::default(),
    )?;
    Ok(Listening {
        addr,
        stop,
        thread: Some(thread),
    })
}

fn spawn_accept<S: StateMachine + Send + 'static>(
    listener: TcpListener,
    me: Member,
    local: LocalHandle<S>,
    handler: Handler,
    security: Security,
    stop: Arc<AtomicBool>,
    limits: Limits,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new().name("master-accept".into()).spawn(move || {
        let handshakes = Quota::new(limits.handshakes_max, "connections in their handshake");
        let peers = Quota::new(limits.peers_max, "Raft connections");
        let clients = Quota::new(limits.clients_max, "client connections");
        for stream in listener.incoming() {
            if stop.load(Ordering::Acquire) {
                return;
            }
            let Ok(stream) = stream else { continue };
            let remote = stream.peer_addr().ok();
            let Some(shaking) = handshakes.take(remote) else {
                continue;
            };
            let local = Arc::clone(&local);
            let handler = Arc::clone(&handler);
            let security = security.clone();
            let (peers, clients) = (peers.clone(), clients.clone());
            let _ = thread::Builder::new().name("master-conn".into()).spawn(move || {
                let mut link = match security.accept(stream) {
                    Ok(link) => link,
                    Err(e) => {
                        warn!(?remote, %e, "refused a connection that did not authenticate with a certificate of this cluster's CA");
                        return;
                    }
                };
                let _ = link.set_read_timeout(Some(Duration::from_millis(limits.preamble_timeout_ms)));
                let mut preamble = [0u8; 4];
                if let Err(e) = link.read_exact(&mut preamble) {
                    debug!(%e, "connection closed before saying what it is");
                    return;
                }
                drop(shaking);
                let _ = link.set_read_timeout(Some(Duration::from_millis(limits.idle_timeout_ms)));
                match preamble {
                    RAFT_PREAMBLE => {
                        let Some(_slot) = peers.take(remote) else { return };
                        if accept(&mut link, me) {
                            receive(link, me.id, &local);
                        }
                    }
                    CLIENT_PREAMBLE => {
                        let Some(_slot) = clients.take(remote) else { return };
                        serve_connection(link, me.group, &handler);
                    }
                    other => warn!(?other, ?remote, "unknown protocol on the master port: closing"),
                }
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::client_rpc::{Response, RpcClient, Status};
    use crate::meta::MetaState;
    use crate::shared_state::SharedState;
    use crate::tls::Peer;

    /// Whether the server closes `stream` within a second.
    fn closed(stream: &mut TcpStream) -> bool {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(n) => n == 0,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }

    #[test]
    fn strangers_peers_and_clients_have_their_own_places_and_idlers_go() {
        let limits = Limits {
            handshakes_max: 2,
            peers_max: 1,
            clients_max: 1,
            preamble_timeout_ms: 400,
            idle_timeout_ms: 400,
        };
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handler: Handler = Arc::new(|_: &Peer, _, payload| Response {
            status: Status::Ok,
            payload,
        });
        let local: LocalHandle<SharedState<MetaState>> = LocalHandle::default();
        let stop = Arc::new(AtomicBool::new(false));
        let me = Member { id: 1, group: 5 };
        spawn_accept(
            listener,
            me,
            local,
            handler,
            Security::Insecure,
            stop,
            limits,
        )
        .expect("listener");
        let client = || {
            RpcClient::new(vec![addr.to_string()], Security::Insecure)
                .with_deadline(Duration::from_millis(300))
        };
        // Two silent strangers hold every handshake place: a third
        // connection is closed at once.
        let mut silent: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let mut third = TcpStream::connect(addr).expect("connect");
        assert!(closed(&mut third), "a third stranger was kept");
        // Past the preamble timeout the strangers are gone, and a client
        // is served.
        for stranger in &mut silent {
            assert!(closed(stranger), "a silent stranger was kept");
        }
        let mut first = client();
        assert_eq!(first.call(1, b"hi").expect("served"), b"hi");
        // The only client place is taken: another client is refused...
        let err = client().call(1, b"x").expect_err("no place");
        assert!(
            err.to_string().contains("no metadata master answered"),
            "{err}"
        );
        // ...but a Raft peer has a place of its own.
        let mut peer = TcpStream::connect(addr).expect("connect");
        peer.write_all(&crate::raft_transport::RAFT_PREAMBLE)
            .expect("preamble");
        std::thread::sleep(Duration::from_millis(100));
        let mut hello = Vec::new();
        hello.extend_from_slice(&5u64.to_le_bytes());
        hello.extend_from_slice(&2u64.to_le_bytes());
        peer.write_all(&hello).expect("offer");
        let mut answer = [0u8; 9];
        peer.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        peer.read_exact(&mut answer).expect("an answer");
        assert_eq!(answer[0], 1, "the peer was accepted");
        // Idle connections are closed after the idle timeout: the client
        // place is free again, and the first client reconnects.
        std::thread::sleep(Duration::from_millis(800));
        assert!(closed(&mut peer), "an idle peer was kept");
        assert_eq!(client().call(1, b"again").expect("served"), b"again");
        assert_eq!(first.call(1, b"back").expect("reconnected"), b"back");
    }
}
