//! RDMA connections in the neighbor tier's read path: the requesting side
//! ([`open`], used by a shard's [`crate::neighbor::NeighborSources`] when
//! the node has an RDMA fabric) and the serving side ([`serve`], run by
//! the block service for a connection that asked for the RDMA handshake).
//!
//! Both start as a block service connection does: TCP to the home's
//! port, the route preamble naming the home's shard, mutual TLS with the
//! cluster's certificates (ALPN [`super::handshake::ALPN_RDMA`]; a home
//! without a fabric refuses it and the requester uses TCP frames to that
//! node), the home's hello (its shards). Then the queue pairs' hellos
//! ([`super::handshake`]), and from there every request and answer goes
//! over the queue pair ([`super::driver`]). The TLS connection stays open
//! as the lifeline: either end closing it ends the RDMA connection, and
//! the home closes it when the requester's certificate is revoked.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use datenlord_engine::{BlockId, ShardContext};
use futures::io::AsyncReadExt;
use futures::FutureExt;
use tracing::{debug, info, warn};

use super::driver::{self, RdmaConn, ReadBlock};
use super::fabric::{self, Qp};
use super::{dial, handshake, Params, CREDITS_DEFAULT};
use crate::neighbor::conn::{self, Hello, NeighborError, Stream};
use crate::neighbor::{DataLink, NeighborStats};
use crate::tls::Peer;

/// The requesting end of an RDMA connection to one shard of a home, with
/// its lifeline.
pub struct RdmaLink {
    conn: Rc<RdmaConn<Qp>>,
    hello: Hello,
    /// Dropped with the link: ends the lifeline's task, which closes the
    /// TLS connection (the home then stops serving the queue pair).
    _closing: flume::Sender<()>,
}

impl std::fmt::Debug for RdmaLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaLink")
            .field("conn", &self.conn)
            .field("hello", &self.hello)
            .finish_non_exhaustive()
    }
}

impl RdmaLink {
    /// The home's shard count and the shard serving this connection.
    pub fn hello(&self) -> Hello {
        self.hello
    }

    /// Whether the connection failed (a new one is needed).
    pub fn is_broken(&self) -> bool {
        self.conn.is_broken()
    }

    /// Asks for a block version (`range`: only `(offset, len)` of it): its
    /// bytes, written by the home into this end's registered slot and
    /// checked against their checksum, within `timeout_ms`.
    pub async fn read(
        &self,
        id: BlockId,
        range: Option<(u32, u32)>,
        timeout_ms: u64,
    ) -> Result<Vec<u8>, NeighborError> {
        self.conn.read(id, range, timeout_ms).await
    }
}

/// Opens an RDMA connection to node `node` at `addr`, served by its shard
/// `want` ([`conn::ROUTE_ANY`]: any), with a queue pair of this shard's
/// access to `link`'s fabric. `block_max` is the volume's block size.
pub async fn open(
    node: u64,
    addr: &str,
    link: &DataLink,
    want: u16,
    block_max: u32,
) -> Result<RdmaLink, NeighborError> {
    let Some(fabric) = &link.rdma else {
        return Err(NeighborError::Io("this node has no RDMA fabric".into()));
    };
    let (mut stream, hello) = conn::connect_rdma(addr, node, link, want).await?;
    let params = Params::new(CREDITS_DEFAULT, block_max)?;
    let requester = dial::within(async {
        let qp = fabric::on_this_thread(fabric)?.endpoint()?;
        handshake::request(&mut stream, qp, params).await
    })
    .await?;
    let conn = RdmaConn::new(node, requester);
    let (closing, closed) = flume::bounded::<()>(0);
    let weak = Rc::downgrade(&conn);
    glommio::spawn_local(async move {
        let mut byte = [0u8; 1];
        let lifeline = stream.read(&mut byte);
        // The home closed the TLS connection (or sent what it never
        // sends): the queue pair is of no further use.
        if let futures::future::Either::Left(_) =
            futures::future::select(lifeline, closed.recv_async()).await
        {
            if let Some(conn) = weak.upgrade() {
                conn.close();
            }
        }
    })
    .detach();
    Ok(RdmaLink {
        conn,
        hello,
        _closing: closing,
    })
}

/// Serves the RDMA connection whose handshake connection `stream` (TLS,
/// the home's hello sent) came from `peer`, a node: sets up a queue pair
/// of this shard's access to the fabric, then answers its requests from
/// this shard's engine until the requester closes the lifeline, the queue
/// pair breaks, or the peer's certificate is revoked.
pub(crate) async fn serve(
    ctx: ShardContext,
    mut stream: Stream,
    link: &DataLink,
    peer: Peer,
    stats: Arc<NeighborStats>,
) {
    let Some(fabric) = &link.rdma else {
        // The RDMA handshake is offered only with a fabric.
        return;
    };
    let setup = async {
        let params = Params::new(CREDITS_DEFAULT, ctx.block_size().bytes())?;
        let qp = fabric::on_this_thread(fabric)?.endpoint()?;
        handshake::serve(&mut stream, qp, params).await
    };
    let home = match dial::within(setup).await {
        Ok(home) => home,
        Err(e) => {
            NeighborStats::add(&stats.refused, 1);
            warn!(%peer, %e, "could not set up an RDMA connection a node asked for");
            return;
        }
    };
    NeighborStats::add(&stats.rdma_connections, 1);
    debug!(%peer, shard = %ctx.id(), "serving an RDMA connection");
    let read: ReadBlock = {
        let (ctx, stats) = (ctx.clone(), Arc::clone(&stats));
        Rc::new(move |header| {
            let (ctx, stats) = (ctx.clone(), Arc::clone(&stats));
            async move { conn::serve_request(&ctx, &header, &stats).await }.boxed_local()
        })
    };
    let lifeline = async {
        let mut byte = [0u8; 1];
        let read = stream.read(&mut byte);
        futures::pin_mut!(read);
        loop {
            let tick =
                glommio::timer::sleep(Duration::from_millis(crate::link::REVOCATION_RECHECK_MS));
            match futures::future::select(read.as_mut(), Box::pin(tick)).await {
                futures::future::Either::Left(_) => return,
                futures::future::Either::Right(_) => {
                    if conn::revoked(&link.security, &peer) {
                        info!(%peer, "its certificate was revoked: closing its RDMA connection");
                        return;
                    }
                }
            }
        }
    };
    let ended = driver::serve(home, read, lifeline).await;
    debug!(%peer, %ended, "an RDMA connection ended");
}
