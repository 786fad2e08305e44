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

use datenlord_engine::{BlockId, ShardContext, VerifyReport};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use futures::lock::Mutex as AsyncMutex;
use glommio::net::TcpStream;
use tracing::{debug, info, warn};

use super::frame::{
    message_bytes, verify_report_bytes, verify_report_of, FrameError, Header, HeaderBuf, Kind,
    HEADER_BYTES, VERIFY_REPORT_BYTES,
};
use super::mac::{Direction, End, Keys, ALPN_MAC, ALPN_TLS, TAG_BYTES};
use super::rdma::driver::Served;
use super::rdma::handshake::ALPN_RDMA;
use super::{DataLink, NeighborStats};
use crate::link::Security;
use crate::tls::{Identity, Peer, Role, Tls, TlsDir};

/// Requests one connection carries at once (both ends).
pub const IN_FLIGHT_MAX: usize = 32;
/// How long a TCP connect and the TLS handshake may take together.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// A served connection with no request for this long is closed.
pub const IDLE_TIMEOUT_MS: u64 = 5 * 60 * 1000;
/// The route preamble a requester sends in clear before anything else:
/// "DLR1", then the home's shard it wants to talk to (u16 LE;
/// [`ROUTE_ANY`] when it does not know the home's shards yet), then two
/// zero bytes. Only a hint: it picks the shard that serves the
/// connection, nothing else is taken from it before the handshake.
pub const ROUTE_BYTES: usize = 8;
const ROUTE_MAGIC: [u8; 4] = *b"DLR1";
/// A route preamble's "any shard".
pub const ROUTE_ANY: u16 = u16::MAX;
/// The home's hello, its first bytes after the handshake (inside TLS):
/// "DLH1", its shard count and the shard serving the connection (u16 LE
/// each). Tells the requester which shard owns a block on the home.
const HELLO_BYTES: usize = 8;
const HELLO_MAGIC: [u8; 4] = *b"DLH1";
/// Most shards a home may say it has.
pub const HOME_SHARDS_MAX: u16 = 4096;

/// A byte stream: plain TCP or TLS over it.
pub(crate) trait Duplex: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Duplex for T {}

pub(crate) type Stream = Box<dyn Duplex>;

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

fn within<T>(
    ms: u64,
    f: impl std::future::Future<Output = Result<T, NeighborError>>,
) -> impl std::future::Future<Output = Result<T, NeighborError>> {
    super::within(ms, f, move || NeighborError::Timeout(ms))
}

fn identity_of(
    chain: Option<&[rustls::pki_types::CertificateDer<'static>]>,
) -> Result<Identity, NeighborError> {
    Identity::of_chain(chain).map_err(NeighborError::Identity)
}

/// Checks the other end's certificate: node `node` when this end
/// connected to it; a node, or an administrator (who may only send
/// warm-up orders), when this end accepted (`None`).
fn check_peer(tls: &TlsDir, who: &Identity, node: Option<u64>) -> Result<(), NeighborError> {
    let rule = node.map_or(super::PeerRule::NodeOrAdmin, super::PeerRule::Node);
    super::peer_refusal(tls, who, rule).map_or(Ok(()), |m| Err(NeighborError::Identity(m)))
}

fn alpn(data_tls: bool) -> Vec<Vec<u8>> {
    if data_tls {
        vec![ALPN_TLS.to_vec()]
    } else {
        vec![ALPN_MAC.to_vec(), ALPN_TLS.to_vec()]
    }
}

/// What a serving end offers: frames (as `--data-tls` says), and the RDMA
/// handshake when the node has an RDMA fabric.
fn alpn_served(link: &DataLink) -> Vec<Vec<u8>> {
    let mut protocols = alpn(link.data_tls);
    if link.rdma.is_some() {
        protocols.push(ALPN_RDMA.to_vec());
    }
    protocols
}

fn export<D>(
    conn: &rustls::ConnectionCommon<D>,
) -> impl FnMut(&mut [u8], &[u8], &[u8]) -> Result<(), String> + '_ {
    |out, label, context| {
        conn.export_keying_material(out, label, Some(context))
            .map(|_| ())
            .map_err(|e| format!("deriving the frame keys: {e}"))
    }
}

/// A connection's byte stream, and with `--data-tls off` on both ends the
/// keys of its frames' MACs (the stream is then the bare socket).
type Opened = (Stream, Option<Keys>);

/// Which shard of the home serves a connection, and how many it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The home's shard count.
    pub shards: u16,
    /// The shard serving this connection.
    pub shard: u16,
}

impl Hello {
    fn encode(self) -> [u8; HELLO_BYTES] {
        let mut out = [0u8; HELLO_BYTES];
        out[..4].copy_from_slice(&HELLO_MAGIC);
        out[4..6].copy_from_slice(&self.shards.to_le_bytes());
        out[6..].copy_from_slice(&self.shard.to_le_bytes());
        out
    }

    fn decode(bytes: [u8; HELLO_BYTES]) -> Result<Self, NeighborError> {
        let shards = u16::from_le_bytes([bytes[4], bytes[5]]);
        let shard = u16::from_le_bytes([bytes[6], bytes[7]]);
        if bytes[..4] != HELLO_MAGIC || shards == 0 || shards > HOME_SHARDS_MAX || shard >= shards {
            return Err(NeighborError::Io(
                "the home's hello is malformed (another release of DatenLord?)".into(),
            ));
        }
        Ok(Self { shards, shard })
    }
}

/// The route preamble for home shard `want`.
fn route_preamble(want: u16) -> [u8; ROUTE_BYTES] {
    let mut out = [0u8; ROUTE_BYTES];
    out[..4].copy_from_slice(&ROUTE_MAGIC);
    out[4..6].copy_from_slice(&want.to_le_bytes());
    out
}

/// Reads a new connection's route preamble: the shard it asks for
/// ([`ROUTE_ANY`] for any), within the connect timeout.
pub(crate) async fn read_route(tcp: &mut TcpStream) -> Result<u16, NeighborError> {
    let mut preamble = [0u8; ROUTE_BYTES];
    within(CONNECT_TIMEOUT_MS, async {
        tcp.read_exact(&mut preamble).await?;
        Ok(())
    })
    .await?;
    if preamble[..4] != ROUTE_MAGIC || preamble[6..] != [0, 0] {
        return Err(NeighborError::Io(
            "not a DatenLord block connection, or one from an older release (no route preamble)"
                .into(),
        ));
    }
    Ok(u16::from_le_bytes([preamble[4], preamble[5]]))
}

/// Connects to node `node` at `addr` asking for its shard `want`: TCP and
/// the route preamble, then with TLS the handshake and a check that the
/// certificate is that node's, then the home's hello.
async fn connect(
    addr: &str,
    node: u64,
    link: &DataLink,
    want: u16,
    protocols: Vec<Vec<u8>>,
) -> Result<(Opened, Hello), NeighborError> {
    let resolved: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| NeighborError::Io(format!("cannot resolve {addr}: use host:port")))?;
    within(CONNECT_TIMEOUT_MS, async {
        let mut tcp = TcpStream::connect(resolved)
            .await
            .map_err(|e| NeighborError::Io(format!("connecting to {addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        tcp.write_all(&route_preamble(want)).await?;
        let mut hello = [0u8; HELLO_BYTES];
        let Security::Tls(tls_dir) = &link.security else {
            tcp.read_exact(&mut hello).await?;
            return Ok(((Box::new(tcp) as Stream, None), Hello::decode(hello)?));
        };
        let mut config = (*tls_dir.current().client).clone();
        config.alpn_protocols = protocols;
        let mut stream = futures_rustls::TlsConnector::from(Arc::new(config))
            .connect(Tls::server_name(), tcp)
            .await
            .map_err(|e| NeighborError::Io(format!("TLS with {addr}: {e}")))?;
        let who = identity_of(stream.get_ref().1.peer_certificates())?;
        check_peer(tls_dir, &who, Some(node))?;
        // The hello comes inside TLS. With frames in clear it is also the
        // home's word that it has left TLS (its last record; it sends
        // nothing more before a request), so no byte of either side's
        // clear frames can be taken for TLS.
        stream.read_exact(&mut hello).await?;
        let hello = Hello::decode(hello)?;
        if stream.get_ref().1.alpn_protocol() != Some(ALPN_MAC) {
            return Ok(((Box::new(stream) as Stream, None), hello));
        }
        let keys =
            Keys::derive(End::Client, export(stream.get_ref().1)).map_err(NeighborError::Io)?;
        let (tcp, _) = stream.into_inner();
        Ok(((Box::new(tcp) as Stream, Some(keys)), hello))
    })
    .await
}

/// The requesting side of an RDMA connection's handshake connection to
/// node `node`'s shard `want`: mutual TLS (certificates are required)
/// with the RDMA handshake's ALPN name, the peer checked as for frames,
/// then the home's hello; the TLS stream stays the RDMA connection's
/// lifeline. A home without RDMA refuses the ALPN name (the TLS
/// handshake fails).
pub(crate) async fn connect_rdma(
    addr: &str,
    node: u64,
    link: &DataLink,
    want: u16,
) -> Result<(Stream, Hello), NeighborError> {
    if !matches!(link.security, Security::Tls(_)) {
        return Err(NeighborError::Io(
            "RDMA connections are set up over mutual TLS: give the node --tls-dir".into(),
        ));
    }
    let ((stream, _), hello) = connect(addr, node, link, want, vec![ALPN_RDMA.to_vec()]).await?;
    Ok((stream, hello))
}

/// An accepted connection: its stream, who it is, and whether it sets up
/// an RDMA connection (then the stream is its TLS lifeline).
struct Accepted {
    opened: Opened,
    peer: Peer,
    rdma: bool,
}

/// The serving side of a new connection (its route preamble read): the
/// handshake, who it is, and this end's hello.
async fn accept(
    mut tcp: TcpStream,
    link: &DataLink,
    hello: Hello,
) -> Result<Accepted, NeighborError> {
    let _ = tcp.set_nodelay(true);
    let Security::Tls(tls_dir) = &link.security else {
        tcp.write_all(&hello.encode()).await?;
        return Ok(Accepted {
            opened: (Box::new(tcp), None),
            peer: Peer::Unverified,
            rdma: false,
        });
    };
    within(CONNECT_TIMEOUT_MS, async {
        let mut config = (*tls_dir.current().server).clone();
        config.alpn_protocols = alpn_served(link);
        let mut stream = futures_rustls::TlsAcceptor::from(Arc::new(config))
            .accept(tcp)
            .await
            .map_err(|e| NeighborError::Io(format!("TLS handshake: {e}")))?;
        let who = identity_of(stream.get_ref().1.peer_certificates())?;
        let rdma = stream.get_ref().1.alpn_protocol() == Some(ALPN_RDMA);
        if rdma {
            // Only nodes get an RDMA connection.
            super::rdma::handshake::check_peer(tls_dir, &who, None)?;
        } else {
            check_peer(tls_dir, &who, None)?;
        }
        stream.write_all(&hello.encode()).await?;
        stream.flush().await?;
        if stream.get_ref().1.alpn_protocol() != Some(ALPN_MAC) {
            return Ok(Accepted {
                opened: (Box::new(stream) as Stream, None),
                peer: Peer::Certified(who),
                rdma,
            });
        }
        let keys =
            Keys::derive(End::Server, export(stream.get_ref().1)).map_err(NeighborError::Io)?;
        let (tcp, _) = stream.into_inner();
        Ok(Accepted {
            opened: (Box::new(tcp) as Stream, Some(keys)),
            peer: Peer::Certified(who),
            rdma: false,
        })
    })
    .await
}

/// Payloads up to this size go out in one write with their header (and
/// tag); larger ones are written from their own buffer.
const COALESCE_MAX: usize = 64 * 1024;

/// The sending half of a connection: frames, tagged when in clear.
struct Sender {
    writer: WriteHalf<Stream>,
    mac: Option<Direction>,
}

impl Sender {
    async fn send(&mut self, header: &Header, payload: &[u8]) -> io::Result<()> {
        let head = header.encode();
        debug_assert_eq!(head.0.len(), HEADER_BYTES);
        let tag = match &mut self.mac {
            Some(mac) => Some(mac.seal(&head.0, payload).map_err(io::Error::other)?),
            None => None,
        };
        let tag: &[u8] = tag.as_ref().map_or(&[], |t| &t[..]);
        if payload.len() <= COALESCE_MAX {
            let mut frame = Vec::with_capacity(HEADER_BYTES + payload.len() + tag.len());
            frame.extend_from_slice(&head.0);
            frame.extend_from_slice(payload);
            frame.extend_from_slice(tag);
            self.writer.write_all(&frame).await?;
        } else {
            self.writer.write_all(&head.0).await?;
            self.writer.write_all(payload).await?;
            self.writer.write_all(tag).await?;
        }
        self.writer.flush().await
    }
}

/// The receiving half of a connection: frames, checked against their tag
/// when in clear.
struct Receiver {
    reader: ReadHalf<Stream>,
    mac: Option<Direction>,
    head: HeaderBuf,
    block_max: u32,
}

impl Receiver {
    /// The next frame's header (validated) and payload.
    async fn next(&mut self) -> Result<(Header, Vec<u8>), NeighborError> {
        let closed = |e: io::Error| NeighborError::Io(format!("the connection closed: {e}"));
        self.reader
            .read_exact(&mut self.head.0)
            .await
            .map_err(closed)?;
        let header = Header::decode(&self.head, self.block_max)?;
        let mut payload = vec![0u8; header.len as usize];
        self.reader.read_exact(&mut payload).await.map_err(closed)?;
        if let Some(mac) = &mut self.mac {
            let mut tag = [0u8; TAG_BYTES];
            self.reader.read_exact(&mut tag).await.map_err(closed)?;
            mac.open(&self.head.0, &payload, &tag)?;
        }
        Ok((header, payload))
    }
}

/// Splits an opened connection into its two halves.
fn halves((stream, keys): Opened, block_max: u32) -> (Receiver, Sender) {
    let (reader, writer) = stream.split();
    let (send, receive) = keys.map_or((None, None), |k| (Some(k.send), Some(k.receive)));
    (
        Receiver {
            reader,
            mac: receive,
            head: HeaderBuf::default(),
            block_max,
        },
        Sender { writer, mac: send },
    )
}

type Waiter = flume::Sender<Result<Vec<u8>, NeighborError>>;

/// Which answer a request expects when it succeeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// A block's bytes (`Block`).
    Bytes,
    /// `Warmed` (a warm-up order).
    Warmed,
    /// `Verified` (a check of the node's cache).
    Verified,
}

/// What a request asked for, to check its answer against: the block and
/// the most bytes the answer may carry.
#[derive(Clone, Copy, Debug)]
struct Asked {
    id: BlockId,
    max_len: u32,
    want: Want,
}

impl Asked {
    /// An answer about another block, or with more bytes than asked, is a
    /// broken peer: its bytes are never used (the connection closes).
    fn check(&self, answer: &Header) -> Result<(), NeighborError> {
        let id = BlockId::new(answer.ino, answer.index, answer.block_version);
        let kind_fits = match answer.kind {
            Kind::Block => self.want == Want::Bytes,
            Kind::Warmed => self.want == Want::Warmed,
            Kind::Verified => self.want == Want::Verified,
            _ => true,
        };
        if id != self.id || answer.len > self.max_len || !kind_fits {
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
    writer: AsyncMutex<Sender>,
    waiting: RefCell<HashMap<u64, (Asked, Waiter)>>,
    next: Cell<u64>,
    slots: glommio::sync::Semaphore,
    broken: Rc<Cell<bool>>,
    clear: bool,
    hello: Hello,
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
    /// Connects to node `node` at `addr`, served by any of its shards;
    /// answers are read by a task of this shard. `block_max` bounds an
    /// answer's payload.
    pub async fn open(
        node: u64,
        addr: &str,
        link: &DataLink,
        block_max: u32,
    ) -> Result<Rc<Self>, NeighborError> {
        Self::open_to(node, addr, link, block_max, ROUTE_ANY).await
    }

    /// [`Self::open`], served by the home's shard `want` (the owner of the
    /// blocks it will be asked for: no hop between the home's cores) when
    /// the home has it; [`Self::hello`] says which shard serves it.
    pub async fn open_to(
        node: u64,
        addr: &str,
        link: &DataLink,
        block_max: u32,
        want: u16,
    ) -> Result<Rc<Self>, NeighborError> {
        let (opened, hello) = connect(addr, node, link, want, alpn(link.data_tls)).await?;
        let clear = opened.1.is_some();
        let (reader, writer) = halves(opened, block_max);
        let (closing, closed) = flume::bounded::<()>(0);
        let conn = Rc::new(Self {
            node,
            writer: AsyncMutex::new(writer),
            waiting: RefCell::new(HashMap::new()),
            next: Cell::new(1),
            slots: glommio::sync::Semaphore::new(IN_FLIGHT_MAX as u64),
            broken: Rc::new(Cell::new(false)),
            clear,
            hello,
            _closing: closing,
        });
        let weak = Rc::downgrade(&conn);
        glommio::spawn_local(async move {
            let read = Box::pin(read_answers(reader, &weak));
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

    /// The home's shard count and the shard serving this connection.
    pub fn hello(&self) -> Hello {
        self.hello
    }

    /// Whether frames go in clear with a MAC (`--data-tls off` on both
    /// ends).
    pub fn is_clear(&self) -> bool {
        self.clear
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
        let (offset, len) = range.unwrap_or((0, 0));
        let header =
            |request| Header::read_range(request, [id.ino.0, id.index, id.version], offset, len);
        let asked = Asked {
            id,
            max_len: if len == 0 { u32::MAX } else { len },
            want: Want::Bytes,
        };
        self.ask(header, asked, timeout_ms).await
    }

    /// Asks the home to fetch a block version and keep it (warm-up).
    pub async fn warm(&self, id: BlockId, timeout_ms: u64) -> Result<(), NeighborError> {
        let header = |request| Header::warm(request, [id.ino.0, id.index, id.version]);
        let asked = Asked {
            id,
            max_len: 0,
            want: Want::Warmed,
        };
        self.ask(header, asked, timeout_ms).await.map(drop)
    }

    /// Has the node check every block it caches against the store and
    /// drop bad copies (an administrator's request); what it found.
    pub async fn verify(&self, timeout_ms: u64) -> Result<VerifyReport, NeighborError> {
        let asked = Asked {
            id: BlockId::new(0, 0, 0),
            max_len: VERIFY_REPORT_BYTES,
            want: Want::Verified,
        };
        let payload = self.ask(Header::verify, asked, timeout_ms).await?;
        verify_report_of(&payload)
            .ok_or_else(|| NeighborError::Io("a malformed cache check report".into()))
    }

    async fn ask(
        &self,
        header: impl FnOnce(u64) -> Header,
        asked: Asked,
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
            self.waiting.borrow_mut().insert(request, (asked, tx));
            let _unregister = Unregister(self, request);
            {
                let mut writer = self.writer.lock().await;
                if let Err(e) = writer.send(&header(request), &[]).await {
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
async fn read_answers(mut receiver: Receiver, conn: &std::rc::Weak<Conn>) -> NeighborError {
    loop {
        let (header, payload) = match receiver.next().await {
            Ok((h, _)) if h.kind.is_request() => {
                return NeighborError::Io("a request where an answer belongs".into())
            }
            Ok(frame) => frame,
            Err(e) => return e,
        };
        let answer = match header.kind {
            Kind::Block | Kind::Verified => match header.check(&payload) {
                Ok(()) => Ok(payload),
                Err(e) => return e.into(),
            },
            Kind::Warmed => Ok(Vec::new()),
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
    link: DataLink,
    stats: Arc<NeighborStats>,
) {
    let remote = tcp.peer_addr().ok();
    let hello = Hello {
        shards: u16::try_from(ctx.shards()).unwrap_or(HOME_SHARDS_MAX),
        shard: ctx.id().0,
    };
    let Accepted { opened, peer, rdma } = match accept(tcp, &link, hello).await {
        Ok(accepted) => accepted,
        Err(e) => {
            NeighborStats::add(&stats.refused, 1);
            warn!(?remote, %e, "refused a neighbor connection");
            return;
        }
    };
    if rdma {
        let (stream, _) = opened;
        return super::rdma::link::serve(ctx, stream, &link, peer, stats).await;
    }
    if opened.1.is_some() {
        NeighborStats::add(&stats.clear_connections, 1);
    }
    let (mut receiver, sender) = halves(opened, ctx.block_size().bytes());
    let sender = Rc::new(AsyncMutex::new(sender));
    let slots = Rc::new(glommio::sync::Semaphore::new(IN_FLIGHT_MAX as u64));
    let mut checked = Instant::now();
    loop {
        let header = match next_request(&mut receiver, &slots).await {
            Ok((h, _)) if h.kind == Kind::Read && is_admin(&peer) => {
                NeighborStats::add(&stats.refused, 1);
                warn!(?remote, %peer, "an administrator asked for a block's bytes (it may only order warm-ups and cache checks): closing");
                return;
            }
            Ok((h, _)) if h.kind == Kind::Verify && is_node(&peer) => {
                NeighborStats::add(&stats.refused, 1);
                warn!(?remote, %peer, "a node asked for a check of this node's cache (only an administrator may): closing");
                return;
            }
            Ok((h, _)) if h.kind.is_request() => h,
            Ok((h, _)) => {
                NeighborStats::add(&stats.refused, 1);
                warn!(?remote, %peer, kind = ?h.kind, "an answer where a request belongs: closing");
                return;
            }
            Err(e @ NeighborError::Frame(_)) => {
                NeighborStats::add(&stats.refused, 1);
                warn!(?remote, %peer, %e, "bad neighbor frame: closing");
                return;
            }
            Err(e) => {
                debug!(?remote, %peer, %e, "neighbor connection closed");
                return;
            }
        };
        if crate::link::recheck_due(&mut checked) && revoked(&link.security, &peer) {
            warn!(%peer, "its certificate was revoked: closing its neighbor connection");
            return;
        }
        // Back-pressure: no further request is read while the slots are taken.
        let Ok(slot) = slots.acquire_static_permit(1).await else {
            return;
        };
        let (ctx, sender, stats) = (ctx.clone(), Rc::clone(&sender), Arc::clone(&stats));
        glommio::spawn_local(async move {
            let _slot = slot;
            answer(&ctx, header, &sender, &stats).await;
        })
        .detach();
    }
}

/// The next request; a connection with requests in flight is never idle
/// (a cache check may take long), one without any is closed after
/// [`IDLE_TIMEOUT_MS`]. The read of a frame is never cut in the middle.
async fn next_request(
    receiver: &mut Receiver,
    slots: &glommio::sync::Semaphore,
) -> Result<(Header, Vec<u8>), NeighborError> {
    let next = receiver.next();
    futures::pin_mut!(next);
    loop {
        let idle = glommio::timer::sleep(Duration::from_millis(IDLE_TIMEOUT_MS));
        futures::pin_mut!(idle);
        match futures::future::select(next.as_mut(), idle).await {
            futures::future::Either::Left((frame, _)) => return frame,
            futures::future::Either::Right(_) if slots.available() < IN_FLIGHT_MAX as u64 => {}
            futures::future::Either::Right(_) => {
                return Err(NeighborError::Timeout(IDLE_TIMEOUT_MS))
            }
        }
    }
}

fn is_admin(peer: &Peer) -> bool {
    matches!(peer, Peer::Certified(who) if who.role == Role::Admin)
}

fn is_node(peer: &Peer) -> bool {
    matches!(peer, Peer::Certified(who) if who.role == Role::Node)
}

pub(crate) fn revoked(security: &Security, peer: &Peer) -> bool {
    match (security, peer) {
        (Security::Tls(tls), Peer::Certified(who)) => tls.is_revoked(&who.serial),
        _ => false,
    }
}

async fn answer(
    ctx: &ShardContext,
    request: Header,
    sender: &AsyncMutex<Sender>,
    stats: &NeighborStats,
) {
    if request.kind == Kind::Verify {
        return answer_verify(ctx, request, sender).await;
    }
    let id = BlockId::new(request.ino, request.index, request.block_version);
    if request.kind == Kind::Read && id.key().owner(ctx.shards()) != ctx.id() {
        // The requester did not know this node's shards yet, or they
        // changed: served through the owner shard (one hop). (Warm-up
        // orders go on one connection per home, to any shard.)
        NeighborStats::add(&stats.served_off_shard, 1);
    }
    let served = serve_request(ctx, &request, stats).await;
    let message;
    let (header, payload) = match &served {
        Served::Block(_) if request.kind == Kind::Warm => {
            (Header::answer(&request, Kind::Warmed, &[]), &[][..])
        }
        Served::Block(data) => (Header::answer(&request, Kind::Block, data), &data[..]),
        Served::Missing => (Header::answer(&request, Kind::Missing, &[]), &[][..]),
        Served::Failed(e) => {
            message = message_bytes(e).to_vec();
            (
                Header::answer(&request, Kind::Failed, &message),
                &message[..],
            )
        }
    };
    if let Err(e) = sender.lock().await.send(&header, payload).await {
        debug!(%e, "could not answer a neighbor");
    }
}

/// Reads what a `Read` or `Warm` request asks for (a warm-up order is for
/// the whole block: decode refuses one for part): the buffer and the
/// bytes of it read.
async fn read_requested(
    ctx: &ShardContext,
    request: &Header,
) -> Result<(Vec<u8>, usize), datenlord_engine::Error> {
    let id = BlockId::new(request.ino, request.index, request.block_version);
    let (offset, len) = match request.range {
        0 => (0, ctx.block_size().bytes()),
        range => (request.offset, range),
    };
    ctx.read_for_peer(id, offset, len, Vec::new()).await
}

/// Serves a `Read` request (the bytes asked for) or a `Warm` order (the
/// block kept whatever admission would say; no bytes), counted as served,
/// warmed or missed: the answer of both transports.
pub(crate) async fn serve_request(
    ctx: &ShardContext,
    request: &Header,
    stats: &NeighborStats,
) -> Served {
    let done = match read_requested(ctx, request).await {
        Ok((mut buf, n)) => {
            buf.truncate(n);
            if request.kind == Kind::Warm {
                let id = BlockId::new(request.ino, request.index, request.block_version);
                ctx.insert(id, buf).await.map(|_| Vec::new())
            } else {
                Ok(buf)
            }
        }
        Err(e) => Err(e),
    };
    match done {
        Ok(data) if request.kind == Kind::Warm => {
            NeighborStats::add(&stats.warmed, 1);
            Served::Block(data)
        }
        Ok(data) => {
            NeighborStats::add(&stats.served, 1);
            NeighborStats::add(&stats.served_bytes, data.len() as u64);
            Served::Block(data)
        }
        Err(datenlord_engine::Error::NotFound(_)) => {
            NeighborStats::add(&stats.served_misses, 1);
            Served::Missing
        }
        Err(e) => {
            NeighborStats::add(&stats.served_misses, 1);
            Served::Failed(e.to_string())
        }
    }
}

/// Checks every shard's cached blocks against the store and answers
/// what the check found.
async fn answer_verify(ctx: &ShardContext, request: Header, sender: &AsyncMutex<Sender>) {
    let message;
    let (header, payload) = match ctx.verify_cached().await {
        Ok(reports) => {
            let mut sum = VerifyReport::default();
            for report in reports {
                sum += report;
            }
            info!(
                blocks = sum.blocks,
                matched = sum.matched,
                dropped = sum.dropped(),
                absent = sum.absent,
                unchecked = sum.unchecked,
                "checked the cached blocks against the store"
            );
            message = verify_report_bytes(&sum);
            (
                Header::answer(&request, Kind::Verified, &message),
                &message[..],
            )
        }
        Err(e) => {
            message = message_bytes(&format!("checking the cache failed: {e}")).to_vec();
            (
                Header::answer(&request, Kind::Failed, &message),
                &message[..],
            )
        }
    };
    if let Err(e) = sender.lock().await.send(&header, payload).await {
        debug!(%e, "could not answer a cache check");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_names_a_shard_the_home_has_or_is_refused() {
        let hello = Hello {
            shards: 8,
            shard: 7,
        };
        assert_eq!(Hello::decode(hello.encode()).ok(), Some(hello));
        for bad in [
            Hello {
                shards: 8,
                shard: 8,
            },
            Hello {
                shards: 0,
                shard: 0,
            },
            Hello {
                shards: HOME_SHARDS_MAX + 1,
                shard: 0,
            },
        ] {
            assert!(Hello::decode(bad.encode()).is_err(), "{bad:?}");
        }
        let mut foreign = hello.encode();
        foreign[0] = b'X';
        assert!(Hello::decode(foreign).is_err());
        assert_eq!(&route_preamble(3)[..], b"DLR1\x03\0\0\0");
    }

    #[test]
    fn an_answer_about_another_block_or_longer_than_asked_is_refused() {
        let id = BlockId::new(7, 3, 9 << 16);
        let asked = Asked {
            id,
            max_len: 4096,
            want: Want::Bytes,
        };
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
        // A read is not answered "warmed", a warm-up order not with bytes.
        assert!(asked
            .check(&Header::answer(&request, Kind::Warmed, &[]))
            .is_err());
        let warm = Asked {
            id,
            max_len: 0,
            want: Want::Warmed,
        };
        let warm_order = Header::warm(2, [7, 3, 9 << 16]);
        assert!(warm
            .check(&Header::answer(&warm_order, Kind::Warmed, &[]))
            .is_ok());
        assert!(warm
            .check(&Header::answer(&warm_order, Kind::Missing, &[]))
            .is_ok());
        assert!(warm
            .check(&Header::answer(&warm_order, Kind::Block, &[]))
            .is_err());
    }
}
