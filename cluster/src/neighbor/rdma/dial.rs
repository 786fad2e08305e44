//! The handshake connection's mutual TLS: the node's certificates, the TCP
//! block service's rustls configurations with the RDMA handshake's own
//! ALPN name, and the peer checked before anything it sends is read
//! ([`super::handshake::check_peer`]). A thin driver on glommio's timers;
//! the stream is any byte stream (TCP in production).

use std::sync::Arc;

use futures::io::{AsyncRead, AsyncWrite};
use futures_rustls::{client, server};

use super::handshake::{check_peer, ALPN_RDMA};
use super::RdmaError;
use crate::tls::{Identity, Tls, TlsDir};

/// How long the TLS handshake and the hellos may take together.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 2_000;

/// Runs `f` with the handshake's deadline.
pub fn within<T>(
    f: impl std::future::Future<Output = Result<T, RdmaError>>,
) -> impl std::future::Future<Output = Result<T, RdmaError>> {
    crate::neighbor::within(HANDSHAKE_TIMEOUT_MS, f, || {
        RdmaError::Handshake(format!("no handshake within {HANDSHAKE_TIMEOUT_MS} ms"))
    })
}

/// The requester's TLS over `stream` to node `node`: its certificate must
/// be that node's, and not revoked.
pub async fn connect<S>(
    stream: S,
    node: u64,
    tls: &TlsDir,
) -> Result<client::TlsStream<S>, RdmaError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut config = (*tls.current().client).clone();
    config.alpn_protocols = vec![ALPN_RDMA.to_vec()];
    let stream = futures_rustls::TlsConnector::from(Arc::new(config))
        .connect(Tls::server_name(), stream)
        .await
        .map_err(|e| RdmaError::Handshake(format!("TLS with node {node}: {e}")))?;
    let who =
        Identity::of_chain(stream.get_ref().1.peer_certificates()).map_err(RdmaError::Identity)?;
    check_peer(tls, &who, Some(node))?;
    Ok(stream)
}

/// The home's TLS over an accepted `stream`: the peer must be a node of
/// the cluster's CA (not an administrator), not revoked; who it is.
pub async fn accept<S>(
    stream: S,
    tls: &TlsDir,
) -> Result<(server::TlsStream<S>, Identity), RdmaError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut config = (*tls.current().server).clone();
    config.alpn_protocols = vec![ALPN_RDMA.to_vec()];
    let stream = futures_rustls::TlsAcceptor::from(Arc::new(config))
        .accept(stream)
        .await
        .map_err(|e| RdmaError::Handshake(format!("TLS handshake: {e}")))?;
    let who =
        Identity::of_chain(stream.get_ref().1.peer_certificates()).map_err(RdmaError::Identity)?;
    check_peer(tls, &who, None)?;
    Ok((stream, who))
}
