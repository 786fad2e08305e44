//! A connection between cluster peers: plain TCP, or TCP under mutual TLS
//! ([`crate::tls`]), with who the other end is. Every cluster protocol
//! (Raft between members, the metadata client protocol) runs over a
//! [`Link`]; with TLS, nothing of a protocol is read before the peer's
//! certificate is checked.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConnection, ServerConnection, StreamOwned};

use crate::tls::{Identity, Peer, Role, Tls, TlsDir};

/// How long an accepted connection's TLS handshake may take.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// How often an open connection's certificate is checked against the
/// revocation list again (at its next message).
pub const REVOCATION_RECHECK_MS: u64 = 1_000;

/// Whether an open connection last checked at `checked` is due for
/// another revocation check (then `checked` moves to now).
pub(crate) fn recheck_due(checked: &mut std::time::Instant) -> bool {
    if checked.elapsed() < Duration::from_millis(REVOCATION_RECHECK_MS) {
        return false;
    }
    *checked = std::time::Instant::now();
    true
}

/// How this process talks to its cluster.
#[derive(Clone, Debug)]
pub enum Security {
    /// Mutual TLS with the cluster CA's certificates.
    Tls(Arc<TlsDir>),
    /// Plain TCP, every peer trusted: loopback only, unless the operator
    /// said `--insecure`.
    Insecure,
}

/// What a connecting side requires of the certificate it is answered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A master or node serving the client protocol.
    Server,
    /// The group member with this Raft id (a master or a node).
    Member(u64),
}

impl Expect {
    fn check(self, who: &Identity) -> Result<(), String> {
        let serves = matches!(who.role, Role::Master | Role::Node);
        let ok = match self {
            Self::Server => serves,
            Self::Member(id) => serves && who.id == Some(id),
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "answered by {who} (serial {}), expected {}",
                who.serial,
                match self {
                    Self::Server => "a master or node".to_string(),
                    Self::Member(id) => format!("member {id}"),
                }
            ))
        }
    }
}

/// Why a connection did not start.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No such address.
    #[error("cannot resolve {0}: use host:port")]
    Resolve(String),
    /// TCP or TLS failed (unreachable, or the other side refused the
    /// handshake: no certificate, another CA, a revoked one).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The other side's certificate is of the CA but not who was expected.
    #[error("{0}")]
    Identity(String),
}

impl Security {
    /// Loads the credentials of `tls_dir`, or plain TCP without one.
    pub fn from_dir(tls_dir: Option<&std::path::Path>) -> Result<Self, crate::tls::TlsError> {
        Ok(match tls_dir {
            Some(dir) => Self::Tls(Arc::new(TlsDir::load(dir)?)),
            None => Self::Insecure,
        })
    }

    /// Whether connections are authenticated.
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// Who this process is (with TLS).
    pub fn identity(&self) -> Option<Identity> {
        match self {
            Self::Tls(tls) => Some(tls.identity()),
            Self::Insecure => None,
        }
    }

    /// Checks that this process's own certificate (with TLS) is for `role`
    /// with `id`, and says which to issue otherwise.
    pub fn check_own(&self, role: Role, id: u64) -> Result<(), String> {
        match self.identity() {
            Some(who) if who.role != role || who.id != Some(id) => Err(format!(
                "the certificate in --tls-dir is for {who}, not {} {id}: issue one with `datenlord certs issue --role {} --id {id}`",
                role.as_str(),
                role.as_str()
            )),
            _ => Ok(()),
        }
    }

    /// Refuses, from now on, peers whose certificate `revoked` names
    /// (connections being made and, at their next check, open ones).
    pub fn check_revocations(&self, revoked: crate::tls::Revoked) {
        if let Self::Tls(tls) = self {
            tls.check_revocations(revoked);
        }
    }

    /// Reloads the TLS directory (certificate rotation); `Ok(None)`
    /// without TLS. On an error the credentials in use stay.
    pub fn reload(&self) -> Result<Option<Identity>, crate::tls::TlsError> {
        match self {
            Self::Tls(tls) => tls.reload().map(Some),
            Self::Insecure => Ok(None),
        }
    }

    /// Connects to `addr` within `timeout`, completes the TLS handshake
    /// within `handshake` and checks the other side is `expect`.
    pub fn connect(
        &self,
        addr: &str,
        expect: Expect,
        timeout: Duration,
        handshake: Duration,
    ) -> Result<Link, LinkError> {
        let resolved: SocketAddr = addr
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| LinkError::Resolve(addr.to_string()))?;
        let mut tcp = TcpStream::connect_timeout(&resolved, timeout)?;
        let _ = tcp.set_nodelay(true);
        let Self::Tls(tls) = self else {
            return Ok(Link::plain(tcp));
        };
        let tls_dir = tls;
        let tls = tls.current();
        let mut conn = ClientConnection::new(Arc::clone(&tls.client), Tls::server_name())
            .map_err(std::io::Error::other)?;
        shake(&mut tcp, handshake, |tcp| {
            while conn.is_handshaking() {
                conn.complete_io(tcp)?;
            }
            Ok(())
        })?;
        let who = identity(conn.peer_certificates())?;
        expect.check(&who).map_err(LinkError::Identity)?;
        refuse_revoked(tls_dir, &who)?;
        Ok(Link {
            stream: Stream::Client(Box::new(StreamOwned::new(conn, tcp))),
            peer: Peer::Certified(who),
            revocations: Some(Arc::clone(tls_dir)),
        })
    }

    /// The accepting side of a new connection: completes the handshake
    /// (bounded by [`HANDSHAKE_TIMEOUT_MS`]) and says who connected.
    pub fn accept(&self, mut tcp: TcpStream) -> Result<Link, LinkError> {
        let _ = tcp.set_nodelay(true);
        let Self::Tls(tls) = self else {
            return Ok(Link::plain(tcp));
        };
        let tls_dir = tls;
        let mut conn = ServerConnection::new(Arc::clone(&tls.current().server))
            .map_err(std::io::Error::other)?;
        shake(
            &mut tcp,
            Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
            |tcp| {
                while conn.is_handshaking() {
                    conn.complete_io(tcp)?;
                }
                Ok(())
            },
        )?;
        let who = identity(conn.peer_certificates())?;
        refuse_revoked(tls_dir, &who)?;
        Ok(Link {
            stream: Stream::Server(Box::new(StreamOwned::new(conn, tcp))),
            peer: Peer::Certified(who),
            revocations: Some(Arc::clone(tls_dir)),
        })
    }
}

/// Refuses to serve plain TCP on an address other machines can reach,
/// unless the operator said so (`insecure`): without certificates anyone
/// who reaches the port may act as any member or as root on the
/// namespace. `what` names the flag for the message (`--peers`).
pub fn check_listen(
    listen: &str,
    security: &Security,
    insecure: bool,
    what: &str,
) -> Result<(), String> {
    if security.is_tls() || insecure {
        return Ok(());
    }
    let addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|e| format!("{what} {listen}: {e}"))?
        .collect();
    if addrs.iter().all(|a| a.ip().is_loopback()) {
        return Ok(());
    }
    Err(format!(
        "{what} {listen} is reachable from other machines and no --tls-dir was given: anyone reaching it could act as a member of the cluster. Make certificates with `datenlord certs init` and `datenlord certs issue`, and give --tls-dir (or --insecure on a network you trust)"
    ))
}

fn refuse_revoked(tls: &TlsDir, who: &Identity) -> Result<(), LinkError> {
    tls.revocation(who)
        .map_or(Ok(()), |m| Err(LinkError::Identity(m)))
}

/// Runs the handshake's `steps` on `tcp`, each read and write waiting at
/// most `limit`, then clears the timeouts.
fn shake(
    tcp: &mut TcpStream,
    limit: Duration,
    steps: impl FnOnce(&mut TcpStream) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let limit = Some(limit.max(Duration::from_millis(1)));
    tcp.set_read_timeout(limit)?;
    tcp.set_write_timeout(limit)?;
    steps(tcp)?;
    tcp.set_read_timeout(None)?;
    tcp.set_write_timeout(None)
}

fn identity(
    chain: Option<&[rustls::pki_types::CertificateDer<'static>]>,
) -> Result<Identity, LinkError> {
    Identity::of_chain(chain).map_err(LinkError::Identity)
}

enum Stream {
    Plain(TcpStream),
    Client(Box<StreamOwned<ClientConnection, TcpStream>>),
    Server(Box<StreamOwned<ServerConnection, TcpStream>>),
}

/// One connection and who is at its other end.
pub struct Link {
    stream: Stream,
    peer: Peer,
    /// Where to ask whether the peer's certificate was revoked since.
    revocations: Option<Arc<TlsDir>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("remote", &self.tcp().peer_addr().ok())
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A plain TCP connection: its peer is unverified.
    fn plain(tcp: TcpStream) -> Self {
        Self {
            stream: Stream::Plain(tcp),
            peer: Peer::Unverified,
            revocations: None,
        }
    }

    /// Who the other end is.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Whether the peer's certificate was revoked after it connected.
    pub fn revoked(&self) -> bool {
        match (&self.peer, &self.revocations) {
            (Peer::Certified(who), Some(tls)) => tls.is_revoked(&who.serial),
            _ => false,
        }
    }

    /// The TCP connection beneath (timeouts, addresses).
    pub fn tcp(&self) -> &TcpStream {
        match &self.stream {
            Stream::Plain(tcp) => tcp,
            Stream::Client(tls) => tls.get_ref(),
            Stream::Server(tls) => tls.get_ref(),
        }
    }

    /// The other end's address, for logs.
    pub fn remote(&self) -> Option<SocketAddr> {
        self.tcp().peer_addr().ok()
    }

    /// Sets how long a read may wait (`None`: forever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.tcp().set_read_timeout(timeout)
    }

    /// Sets how long a write may wait (`None`: forever).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.tcp().set_write_timeout(timeout)
    }
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.stream {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Client(tls) => tls.read(buf),
            Stream::Server(tls) => tls.read(buf),
        }
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.stream {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Client(tls) => tls.write(buf),
            Stream::Server(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.stream {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Client(tls) => tls.flush(),
            Stream::Server(tls) => tls.flush(),
        }
    }
}
