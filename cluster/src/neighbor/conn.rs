//! Connections of the neighbor tier, on the engine's shards: glommio
//! sockets, mutual TLS over them (rustls through futures' async IO), and
//! the two ends of the block protocol ([`super::frame`]).
//!
//! The requesting end ([`Conn`]) keeps up to [`IN_FLIGHT_MAX`] requests
//! outstanding on one connection (a further request waits for a free
//! slot: back-pressure), matches answers to requests by number, and gives
//! every request a deadline. The serving end ([`serve_connection`]) stops
//! reading requests while [`IN_FLIGHT_MAX`] are being served, answers
//! each from the engine as it completes, and closes a connection that is
//! idle for [`IDLE_TIMEOUT_MS`], sends a bad frame, or whose certificate
//! was revoked.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datenlord_engine::{BlockId, ShardContext};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use futures::lock::Mutex as AsyncMutex;
use glommio::net::TcpStream;
use tracing::{debug, warn};

use super::frame::{message_bytes, FrameError, Header, HeaderBuf, Kind, HEADER_BYTES};
use super::NeighborStats;
use crate::link::Security;
use crate::tls::{Identity, Peer, Role, Tls, TlsDir};

/// Requests one connection carries at once (both ends).
pub const IN_FLIGHT_MAX: usize = 32;
/// How long a TCP connect and the TLS handshake may take together.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// A served connection with no request for this long is closed.
pub const IDLE_TIMEOUT_MS: u64 = 5 * 60 * 1000;

/// A byte stream: plain TCP or TLS over it.
pub(crate) trait Duplex: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Duplex for T {}

type Stream = Box<dyn Duplex>;

/// Why a neighbor did not deliver a block.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NeighborError {
    /// Connecting, the handshake or the connection failed.
    #[error("{0}")]
    Io(String),
    /// The other end is not who it should be.
    #[error("{0}")]
    Identity(String),
    /// The other end broke the protocol.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// No answer within the deadline.
    #[error("no answer within {0} ms")]
    Timeout(u64),
    /// The home has the block in none of its tiers, nor does the store.
    #[error("the block is not found")]
    Missing,
    /// The home could not read it.
    #[error("the home failed: {0}")]
    Failed(String),
}

impl From<io::Error> for NeighborError {
    fn from(e: io::Error) -> Self {
        Self::Io(e.to_string())
    }
}

async fn within<T>(
    ms: u64,
    f: impl std::future::Future<Output = Result<T, NeighborError>>,
) -> Result<T, NeighborError> {
    match glommio::timer::timeout(Duration::from_millis(ms), async { Ok(f.await) }).await {
        Ok(result) => result,
        Err(_) => Err(NeighborError::Timeout(ms)),
    }
}

fn identity_of(
    chain: Option<&[rustls::pki_types::CertificateDer<'static>]>,
) -> Result<Identity, NeighborError> {
    Identity::of_chain(chain).map_err(NeighborError::Identity)
}

fn check_peer(tls: &TlsDir, who: &Identity, node: Option<u64>) -> Result<(), NeighborError> {
    if who.role != Role::Node || node.is_some_and(|id| who.id != Some(id)) {
        return Err(NeighborError::Identity(format!(
            "{who} (serial {}) is not {}",
            who.serial,
            node.map_or("a node".to_string(), |id| format!("node {id}"))
        )));
    }
    if tls.is_revoked(&who.serial) {
        return Err(NeighborError::Identity(format!(
            "{who} presented certificate serial {}, which is revoked",
            who.serial
        )));
    }
    Ok(())
}

/// Connects to node `node` at `addr`: TCP, then with TLS the handshake and
/// a check that the certificate is that node's.
async fn connect(addr: &str, node: u64, security: &Security) -> Result<Stream, NeighborError> {
    let resolved: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| NeighborError::Io(format!("cannot resolve {addr}: use host:port")))?;
    within(CONNECT_TIMEOUT_MS, async {
        let tcp = TcpStream::connect(resolved)
            .await
            .map_err(|e| NeighborError::Io(format!("connecting to {addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let Security::Tls(tls_dir) = security else {
            return Ok(Box::new(tcp) as Stream);
        };
        let connector = futures_rustls::TlsConnector::from(Arc::clone(&tls_dir.current().client));
        let stream = connector
            .connect(Tls::server_name(), tcp)
            .await
            .map_err(|e| NeighborError::Io(format!("TLS with {addr}: {e}")))?;
        let who = identity_of(stream.get_ref().1.peer_certificates())?;
        check_peer(tls_dir, &who, Some(node))?;
        Ok(Box::new(stream) as Stream)
    })
    .await
}

/// The serving side of a new connection: the handshake and who it is.
async fn accept(tcp: TcpStream, security: &Security) -> Result<(Stream, Peer), NeighborError> {
    let _ = tcp.set_nodelay(true);
    let Security::Tls(tls_dir) = security else {
        return Ok((Box::new(tcp), Peer::Unverified));
    };
    within(CONNECT_TIMEOUT_MS, async {
        let acceptor = futures_rustls::TlsAcceptor::from(Arc::clone(&tls_dir.current().server));
        let stream = acceptor
            .accept(tcp)
            .await
            .map_err(|e| NeighborError::Io(format!("TLS handshake: {e}")))?;
        let who = identity_of(stream.get_ref().1.peer_certificates())?;
        check_peer(tls_dir, &who, None)?;
        Ok((Box::new(stream) as Stream, Peer::Certified(who)))
    })
    .await
}

type Waiter = flume::Sender<Result<Vec<u8>, NeighborError>>;

/// What a request asked for, to check its answer against: the block and
/// the most bytes the answer may carry.
#[derive(Clone, Copy, Debug)]
struct Asked {
    id: BlockId,
    max_len: u32,
}

impl Asked {
    /// An answer about another block, or with more bytes than asked, is a
    /// broken peer: its bytes are never used (the connection closes).
    fn check(&self, answer: &Header) -> Result<(), NeighborError> {
        let id = BlockId::new(answer.ino, answer.index, answer.block_version);
        if id != self.id || answer.len > self.max_len {
            return Err(NeighborError::Io(format!(
                "answered block {id} ({} bytes) to a request for {} (at most {} bytes)",
                answer.len, self.id, self.max_len
            )));
        }
        Ok(())
    }
}

/// The requesting end of one connection to a neighbor, on one shard.
pub struct Conn {
    node: u64,
    writer: AsyncMutex<WriteHalf<Stream>>,
    waiting: RefCell<HashMap<u64, (Asked, Waiter)>>,
    next: Cell<u64>,
    slots: glommio::sync::Semaphore,
    broken: Rc<Cell<bool>>,
    /// Dropped with the connection: ends its answer reader.
    _closing: flume::Sender<()>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("node", &self.node)
            .field("in_flight", &self.waiting.borrow().len())
            .field("broken", &self.broken.get())
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Connects to node `node` at `addr`; answers are read by a task of
    /// this shard. `block_max` bounds an answer's payload.
    pub async fn open(
        node: u64,
        addr: &str,
        security: &Security,
        block_max: u32,
    ) -> Result<Rc<Self>, NeighborError> {
        let stream = connect(addr, node, security).await?;
        let (reader, writer) = stream.split();
        let (closing, closed) = flume::bounded::<()>(0);
        let conn = Rc::new(Self {
            node,
            writer: AsyncMutex::new(writer),
            waiting: RefCell::new(HashMap::new()),
            next: Cell::new(1),
            slots: glommio::sync::Semaphore::new(IN_FLIGHT_MAX as u64),
            broken: Rc::new(Cell::new(false)),
            _closing: closing,
        });
        let weak = Rc::downgrade(&conn);
        glommio::spawn_local(async move {
            let read = Box::pin(read_answers(reader, &weak, block_max));
            // The connection dropped (replaced, or its node failed): stop
            // reading, which closes the socket.
            if let futures::future::Either::Left((err, _)) =
                futures::future::select(read, closed.recv_async()).await
            {
                if let Some(conn) = weak.upgrade() {
                    conn.fail_all(&err);
                }
            }
        })
        .detach();
        Ok(conn)
    }

    /// Whether the connection failed (a new one is needed).
    pub fn is_broken(&self) -> bool {
        self.broken.get()
    }

    fn fail_all(&self, err: &NeighborError) {
        self.broken.set(true);
        for (_, (_, waiter)) in self.waiting.borrow_mut().drain() {
            let _ = waiter.try_send(Err(err.clone()));
        }
    }

    /// Asks for a block version (`range`: only `(offset, len)` of it); the
    /// answer's bytes, checked against their checksum, within `timeout_ms`.
    pub async fn read(
        &self,
        id: BlockId,
        range: Option<(u32, u32)>,
        timeout_ms: u64,
    ) -> Result<Vec<u8>, NeighborError> {
        within(timeout_ms, async {
            let _slot = self
                .slots
                .acquire_permit(1)
                .await
                .map_err(|e| NeighborError::Io(e.to_string()))?;
            if self.broken.get() {
                return Err(NeighborError::Io("the connection failed".into()));
            }
            let request = self.next.get();
            self.next.set(request.wrapping_add(1));
            let (tx, rx) = flume::bounded(1);
            let (offset, len) = range.unwrap_or((0, 0));
            let asked = Asked {
                id,
                max_len: if len == 0 { u32::MAX } else { len },
            };
            self.waiting.borrow_mut().insert(request, (asked, tx));
            let _unregister = Unregister(self, request);
            let header =
                Header::read_range(request, [id.ino.0, id.index, id.version], offset, len).encode();
            {
                let mut writer = self.writer.lock().await;
                let sent = async {
                    writer.write_all(&header.0).await?;
                    writer.flush().await
                }
                .await;
                if let Err(e) = sent {
                    drop(writer);
                    let err = NeighborError::Io(format!("sending to node {}: {e}", self.node));
                    self.fail_all(&err);
                    return Err(err);
                }
            }
            rx.recv_async()
                .await
                .unwrap_or_else(|_| Err(NeighborError::Io("the connection failed".into())))
        })
        .await
    }
}

/// Forgets a request's waiter when its caller gives up (timeout).
struct Unregister<'a>(&'a Conn, u64);

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.0.waiting.borrow_mut().remove(&self.1);
    }
}

/// Reads answers until the connection fails; returns why it did.
async fn read_answers(
    mut reader: ReadHalf<Stream>,
    conn: &std::rc::Weak<Conn>,
    block_max: u32,
) -> NeighborError {
    let mut buf = HeaderBuf::default();
    loop {
        if let Err(e) = reader.read_exact(&mut buf.0).await {
            return NeighborError::Io(format!("the connection closed: {e}"));
        }
        let header = match Header::decode(&buf, block_max) {
            Ok(h) if h.kind != Kind::Read => h,
            Ok(_) => return NeighborError::Io("a request where an answer belongs".into()),
            Err(e) => return e.into(),
        };
        let mut payload = vec![0u8; header.len as usize];
        if let Err(e) = reader.read_exact(&mut payload).await {
            return NeighborError::Io(format!("the connection closed: {e}"));
        }
        let answer = match header.kind {
            Kind::Block => match header.check(&payload) {
                Ok(()) => Ok(payload),
                Err(e) => return e.into(),
            },
            Kind::Missing => Err(NeighborError::Missing),
            _ => Err(NeighborError::Failed(
                String::from_utf8_lossy(&payload).into_owned(),
            )),
        };
        let Some(conn) = conn.upgrade() else {
            return NeighborError::Io("closed".into());
        };
        // A request whose caller gave up has no waiter: its answer is dropped.
        let waiter = conn.waiting.borrow_mut().remove(&header.request);
        if let Some((asked, waiter)) = waiter {
            if let Err(e) = asked.check(&header) {
                return e;
            }
            let _ = waiter.try_send(answer);
        }
    }
}

/// Serves one accepted connection until it closes, is idle too long,
/// breaks the protocol, or `stop` fires.
pub(crate) async fn serve_connection(
    ctx: ShardContext,
    tcp: TcpStream,
    security: Security,
    stats: Arc<NeighborStats>,
) {
    let remote = tcp.peer_addr().ok();
    let (stream, peer) = match accept(tcp, &security).await {
        Ok(accepted) => accepted,
        Err(e) => {
            NeighborStats::add(&stats.refused, 1);
            warn!(?remote, %e, "refused a neighbor connection");
            return;
        }
    };
    let block_max = ctx.block_size().bytes();
    let (mut reader, writer) = stream.split();
    let writer = Rc::new(AsyncMutex::new(writer));
    let slots = Rc::new(glommio::sync::Semaphore::new(IN_FLIGHT_MAX as u64));
    let mut checked = Instant::now();
    let mut buf = HeaderBuf::default();
    loop {
        let read = within(IDLE_TIMEOUT_MS, async {
            reader.read_exact(&mut buf.0).await?;
            Ok(())
        })
        .await;
        if let Err(e) = read {
            debug!(?remote, %peer, %e, "neighbor connection closed");
            return;
        }
        if crate::link::recheck_due(&mut checked) && revoked(&security, &peer) {
            warn!(%peer, "its certificate was revoked: closing its neighbor connection");
            return;
        }
        let header = match Header::decode(&buf, block_max) {
            Ok(h) if h.kind == Kind::Read => h,
            Ok(h) => {
                NeighborStats::add(&stats.refused, 1);
                warn!(?remote, %peer, kind = ?h.kind, "an answer where a request belongs: closing");
                return;
            }
            Err(e) => {
                NeighborStats::add(&stats.refused, 1);
                warn!(?remote, %peer, %e, "bad neighbor frame: closing");
                return;
            }
        };
        // Back-pressure: no further request is read while the slots are taken.
        let Ok(slot) = slots.acquire_static_permit(1).await else {
            return;
        };
        let (ctx, writer, stats) = (ctx.clone(), Rc::clone(&writer), Arc::clone(&stats));
        glommio::spawn_local(async move {
            let _slot = slot;
            answer(&ctx, header, &writer, &stats).await;
        })
        .detach();
    }
}

fn revoked(security: &Security, peer: &Peer) -> bool {
    match (security, peer) {
        (Security::Tls(tls), Peer::Certified(who)) => tls.is_revoked(&who.serial),
        _ => false,
    }
}

async fn answer(
    ctx: &ShardContext,
    request: Header,
    writer: &AsyncMutex<WriteHalf<Stream>>,
    stats: &NeighborStats,
) {
    let id = BlockId::new(request.ino, request.index, request.block_version);
    let (offset, len) = match request.range {
        0 => (0, ctx.block_size().bytes()),
        range => (request.offset, range),
    };
    let result = ctx.read_for_peer(id, offset, len, Vec::new()).await;
    let (header, payload) = match &result {
        Ok((buf, n)) => {
            let data = &buf[..*n];
            NeighborStats::add(&stats.served, 1);
            NeighborStats::add(&stats.served_bytes, *n as u64);
            (Header::answer(&request, Kind::Block, data), data)
        }
        Err(datenlord_engine::Error::NotFound(_)) => {
            NeighborStats::add(&stats.served_misses, 1);
            (Header::answer(&request, Kind::Missing, &[]), &[][..])
        }
        Err(e) => {
            NeighborStats::add(&stats.served_misses, 1);
            let message = message_bytes(&e.to_string()).to_vec();
            let header = Header::answer(&request, Kind::Failed, &message);
            let mut w = writer.lock().await;
            let _ = send(&mut w, &header, &message).await;
            return;
        }
    };
    let mut w = writer.lock().await;
    if let Err(e) = send(&mut w, &header, payload).await {
        debug!(%e, "could not answer a neighbor");
    }
}

async fn send(w: &mut WriteHalf<Stream>, header: &Header, payload: &[u8]) -> io::Result<()> {
    let head = header.encode();
    debug_assert_eq!(head.0.len(), HEADER_BYTES);
    w.write_all(&head.0).await?;
    w.write_all(payload).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_about_another_block_or_longer_than_asked_is_refused() {
        let id = BlockId::new(7, 3, 9 << 16);
        let asked = Asked { id, max_len: 4096 };
        let request = Header::read_range(1, [7, 3, 9 << 16], 0, 4096);
        assert!(asked
            .check(&Header::answer(&request, Kind::Block, &[0; 4096]))
            .is_ok());
        assert!(asked
            .check(&Header::answer(&request, Kind::Block, &[0; 4097]))
            .is_err());
        let other = Header::read(1, 7, 4, 9 << 16);
        assert!(asked
            .check(&Header::answer(&other, Kind::Block, &[0; 10]))
            .is_err());
        let older = Header::read(1, 7, 3, 8 << 16);
        assert!(asked
            .check(&Header::answer(&older, Kind::Block, &[0; 10]))
            .is_err());
    }
}
