//! Setting up an RDMA connection, authenticated by the cluster's mutual
//! TLS (issue 18).
//!
//! The requester opens a TCP connection to the home's block service port
//! and makes the mutual-TLS handshake with the node's certificates (the
//! TCP block service's configuration, with its own ALPN name,
//! [`ALPN_RDMA`]); each end checks the other's certificate as the TCP
//! path does — the home must be the node expected, the requester a node
//! of the CA (an administrator gets no RDMA data path: it may only order
//! warm-ups, over TCP), neither revoked. Only then do they exchange a
//! [`Hello`] each, inside TLS: the queue pair's address (number, first
//! packet sequence number, LID, GID, MTU), the credits and block size, and
//! the requester's landing region (address, rkey, length). Every field is
//! checked before use; the home then checks every request's slot against
//! that region ([`super::home`]). The TLS connection stays open as the
//! RDMA connection's lifeline: either end closing it ends the connection.
//!
//! What TLS does not give: RDMA packets themselves are neither encrypted
//! nor authenticated (RoCE v2 / InfiniBand have no such layer); an RC
//! queue pair accepts packets only from the queue pair it was connected
//! to, with the right sequence numbers, and payloads carry their CRC32C.
//! For trusted fabrics, as `--data-tls off` is.

use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::home::Home;
use super::requester::Requester;
use super::verbs::{RemoteSlot, Verbs};
use super::{Params, RdmaError};
use crate::tls::{Identity, TlsDir};

/// ALPN name of an RDMA connection's handshake on the block service port.
pub const ALPN_RDMA: &[u8] = b"datenlord-rdma-handshake";
/// "DLRH", the first field of a hello.
pub const HELLO_MAGIC: u32 = u32::from_le_bytes(*b"DLRH");
/// Version of the RDMA handshake and transport.
pub const HELLO_VERSION: u16 = 1;
/// Bytes of a hello on the wire.
pub const HELLO_BYTES: usize = 64;
/// Largest queue pair number and packet sequence number (24 bits).
pub const QPN_MAX: u32 = (1 << 24) - 1;

/// Where a queue pair is, for its peer to connect to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct QpAddr {
    /// Queue pair number.
    pub qpn: u32,
    /// First packet sequence number it sends.
    pub psn: u32,
    /// Its port's LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// Its port's GID (RoCE: from its IP address).
    pub gid: [u8; 16],
    /// Path MTU, as `ibv_mtu` numbers it (1: 256 bytes .. 5: 4096).
    pub mtu: u8,
}

/// One end of a queue pair before and while it is connected.
pub trait Endpoint: Verbs {
    /// Its address, to send to the peer.
    fn addr(&self) -> QpAddr;
    /// Connects it to the peer's queue pair (ready to send and receive).
    fn connect(&mut self, peer: &QpAddr) -> Result<(), RdmaError>;
}

impl<T: Endpoint + ?Sized> Endpoint for Box<T> {
    fn addr(&self) -> QpAddr {
        (**self).addr()
    }

    fn connect(&mut self, peer: &QpAddr) -> Result<(), RdmaError> {
        (**self).connect(peer)
    }
}

/// Which end sent a hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The end that asks for blocks.
    Requester,
    /// The end that serves them.
    Home,
}

/// What each end tells the other, inside TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Who sends it.
    pub side: Side,
    /// Its queue pair.
    pub qp: QpAddr,
    /// Requests at once it can take.
    pub credits: u16,
    /// Its block size.
    pub block_max: u32,
    /// The requester's landing region (zero from the home).
    pub landing: RemoteSlot,
}

impl Hello {
    /// Its bytes.
    pub fn encode(&self) -> [u8; HELLO_BYTES] {
        let mut out = [0u8; HELLO_BYTES];
        out[0..4].copy_from_slice(&HELLO_MAGIC.to_le_bytes());
        out[4..6].copy_from_slice(&HELLO_VERSION.to_le_bytes());
        out[6] = match self.side {
            Side::Requester => 1,
            Side::Home => 2,
        };
        out[7] = self.qp.mtu;
        out[8..12].copy_from_slice(&self.qp.qpn.to_le_bytes());
        out[12..16].copy_from_slice(&self.qp.psn.to_le_bytes());
        out[16..18].copy_from_slice(&self.qp.lid.to_le_bytes());
        out[18..20].copy_from_slice(&self.credits.to_le_bytes());
        out[20..24].copy_from_slice(&self.block_max.to_le_bytes());
        out[24..40].copy_from_slice(&self.qp.gid);
        out[40..48].copy_from_slice(&self.landing.addr.to_le_bytes());
        out[48..52].copy_from_slice(&self.landing.rkey.to_le_bytes());
        out[52..56].copy_from_slice(&self.landing.len.to_le_bytes());
        out
    }

    /// A received hello, checked: the magic, the version, the side
    /// expected, 24-bit numbers, an MTU `ibv_mtu` knows, the credits and
    /// block size (the same as ours), and a requester's landing region
    /// (exactly its credits' slots, not wrapping the address space).
    pub fn decode(
        bytes: &[u8; HELLO_BYTES],
        from: Side,
        block_max: u32,
    ) -> Result<Self, RdmaError> {
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let bad = |what: String| Err(RdmaError::Handshake(what));
        if u32_at(0) != HELLO_MAGIC {
            return bad(format!(
                "not a DatenLord RDMA hello (magic {:#010x})",
                u32_at(0)
            ));
        }
        if u16_at(4) != HELLO_VERSION {
            return bad(format!(
                "RDMA handshake version {}, this node speaks {HELLO_VERSION}: run the same release on every node",
                u16_at(4)
            ));
        }
        let side = match (bytes[6], from) {
            (1, Side::Requester) => Side::Requester,
            (2, Side::Home) => Side::Home,
            (other, _) => return bad(format!("a hello from side {other}, expected the {from:?}")),
        };
        let mut gid = [0u8; 16];
        gid.copy_from_slice(&bytes[24..40]);
        let qp = QpAddr {
            qpn: u32_at(8),
            psn: u32_at(12),
            lid: u16_at(16),
            gid,
            mtu: bytes[7],
        };
        // QPs 0 and 1 are the subnet management and general service ones.
        if !(2..=QPN_MAX).contains(&qp.qpn) || qp.psn > QPN_MAX || !(1..=5).contains(&qp.mtu) {
            return bad(format!(
                "queue pair {qp:?} is not one a peer can connect to"
            ));
        }
        let params = Params::new(u16_at(18), u32_at(20))?;
        if params.block_max != block_max {
            return bad(format!(
                "the peer's block size is {} bytes, this node's {block_max}: the nodes serve another volume",
                params.block_max
            ));
        }
        let hi = u64::from(u32_at(44)) << 32;
        let landing = RemoteSlot {
            addr: hi | u64::from(u32_at(40)),
            rkey: u32_at(48),
            len: u32_at(52),
        };
        let slots = u64::from(params.credits) * u64::from(block_max);
        let fits = match side {
            Side::Requester => {
                u64::from(landing.len) == slots && landing.addr.checked_add(slots).is_some()
            }
            Side::Home => {
                landing
                    == RemoteSlot {
                        addr: 0,
                        rkey: 0,
                        len: 0,
                    }
            }
        };
        if !fits {
            return bad(format!(
                "landing region {:#x}+{} for {} credits of {block_max} bytes",
                landing.addr, landing.len, params.credits
            ));
        }
        Ok(Self {
            side,
            qp,
            credits: params.credits,
            block_max,
            landing,
        })
    }
}

async fn send_hello<S: AsyncWrite + Unpin>(stream: &mut S, hello: &Hello) -> Result<(), RdmaError> {
    stream
        .write_all(&hello.encode())
        .await
        .map_err(|e| closed(&e))?;
    stream.flush().await.map_err(|e| closed(&e))
}

async fn receive_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    from: Side,
    block_max: u32,
) -> Result<Hello, RdmaError> {
    let mut bytes = [0u8; HELLO_BYTES];
    stream
        .read_exact(&mut bytes)
        .await
        .map_err(|e| closed(&e))?;
    Hello::decode(&bytes, from, block_max)
}

fn closed(e: &std::io::Error) -> RdmaError {
    RdmaError::Handshake(format!("the handshake connection failed: {e}"))
}

/// The requester's side over an authenticated `stream`: announces `qp`
/// and its landing slots, takes the home's answer, connects the queue
/// pair. The connection's credits are the fewer of the two ends'.
pub async fn request<S, E>(stream: &mut S, qp: E, params: Params) -> Result<Requester<E>, RdmaError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    E: Endpoint,
{
    let addr = qp.addr();
    let mut requester = Requester::new(qp, params)?;
    let mine = Hello {
        side: Side::Requester,
        qp: addr,
        credits: params.credits,
        block_max: params.block_max,
        landing: requester.landing(),
    };
    send_hello(stream, &mine).await?;
    let home = receive_hello(stream, Side::Home, params.block_max).await?;
    requester.connect(&home.qp, home.credits)?;
    Ok(requester)
}

/// The home's side over an authenticated `stream`: takes the requester's
/// hello, connects `qp` to it, posts its receives, then answers (so the
/// requester sends nothing before a receive waits for it).
pub async fn serve<S, E>(stream: &mut S, mut qp: E, params: Params) -> Result<Home<E>, RdmaError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    E: Endpoint,
{
    let peer = receive_hello(stream, Side::Requester, params.block_max).await?;
    let credits = params.credits.min(peer.credits);
    let addr = qp.addr();
    qp.connect(&peer.qp)?;
    let home = Home::new(qp, Params::new(credits, params.block_max)?, peer.landing)?;
    let mine = Hello {
        side: Side::Home,
        qp: addr,
        credits,
        block_max: params.block_max,
        landing: RemoteSlot {
            addr: 0,
            rkey: 0,
            len: 0,
        },
    };
    send_hello(stream, &mine).await?;
    Ok(home)
}

/// Whether the certificate that made the TLS handshake may have an RDMA
/// connection: `node` when this end connected to it; any node when it
/// accepted (`None`); never an administrator; never a revoked one.
pub fn check_peer(tls: &TlsDir, who: &Identity, node: Option<u64>) -> Result<(), RdmaError> {
    let rule = node.map_or(
        crate::neighbor::PeerRule::AnyNode,
        crate::neighbor::PeerRule::Node,
    );
    crate::neighbor::peer_refusal(tls, who, rule).map_or(Ok(()), |m| Err(RdmaError::Identity(m)))
}
