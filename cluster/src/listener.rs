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

/// How long a new connection may take to say what it is.
const PREAMBLE_TIMEOUT_MS: u64 = 5000;
/// Connections (peers and clients) a master serves at once, one thread
/// each; more are closed at once so a flood cannot exhaust the process.
pub const CONNECTIONS_MAX: usize = 1024;

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
    if let Err(e) = spawn_accept(listener, me, local, handler, security, never) {
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
    let thread = spawn_accept(listener, me, local, handler, security, Arc::clone(&stop))?;
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
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new().name("master-accept".into()).spawn(move || {
        let open = Arc::new(AtomicUsize::new(0));
        for stream in listener.incoming() {
            if stop.load(Ordering::Acquire) {
                return;
            }
            let Ok(stream) = stream else { continue };
            if open.fetch_add(1, Ordering::AcqRel) >= CONNECTIONS_MAX {
                open.fetch_sub(1, Ordering::AcqRel);
                warn!(peer = ?stream.peer_addr().ok(), "too many connections ({CONNECTIONS_MAX}): closing a new one");
                continue;
            }
            let slot = Slot(Arc::clone(&open));
            let local = Arc::clone(&local);
            let handler = Arc::clone(&handler);
            let security = security.clone();
            let _ = thread::Builder::new().name("master-conn".into()).spawn(move || {
                let _slot = slot;
                let remote = stream.peer_addr().ok();
                let mut link = match security.accept(stream) {
                    Ok(link) => link,
                    Err(e) => {
                        warn!(?remote, %e, "refused a connection that did not authenticate with a certificate of this cluster's CA");
                        return;
                    }
                };
                let _ = link.set_read_timeout(Some(Duration::from_millis(PREAMBLE_TIMEOUT_MS)));
                let mut preamble = [0u8; 4];
                if let Err(e) = link.read_exact(&mut preamble) {
                    debug!(%e, "connection closed before saying what it is");
                    return;
                }
                let _ = link.set_read_timeout(None);
                match preamble {
                    RAFT_PREAMBLE => {
                        if accept(&mut link, me) {
                            receive(link, me.id, &local);
                        }
                    }
                    CLIENT_PREAMBLE => serve_connection(link, me.group, &handler),
                    other => warn!(?other, ?remote, "unknown protocol on the master port: closing"),
                }
            });
        }
    })
}
