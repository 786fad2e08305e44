//! DatenLord's S3 gateway: the namespace over the S3 API (protocol, XML
//! and SigV4 from `s3s`), served through `fs`, so through the node's cache,
//! beside or without a FUSE mount of the same file system.
//!
//! Buckets are the top-level directories of the volume and keys are paths
//! below them (`key`): an object is a file, a file is an object. A PUT
//! streams its body into a hidden temporary file next to the key, step by
//! step (never whole in memory), makes it durable (fsync), records its MD5
//! as its ETag in an extended attribute, and renames it onto the key, so
//! readers see the old object or the new one whole; the answer comes only
//! then. A GET streams the file (ranges too) with a bounded read-ahead.
//! Listings walk the directories in key order (`list`). Permissions are the
//! file system's, checked by fs with the uid/gid the access key acts as
//! (`users`). When a FUSE mount of the same file system runs in the
//! process, its kernel caches are told of every name the gateway changes
//! ([`gateway::KernelCaches`]).

pub mod gateway;
pub mod key;
pub mod list;
pub mod stats;
pub mod tls;
pub mod users;

use std::future::Future;
use std::sync::Arc;

pub use gateway::{Gateway, KernelCaches};
pub use stats::S3Stats;
pub use users::Users;

/// How long connections in flight get after the stop.
const STOP_GRACE_S: u64 = 10;

/// Serves `gateway` on `listener` (HTTP/1.1, path-style requests, SigV4;
/// HTTPS with `tls`) until `stop` completes; then gives requests in flight
/// a grace period.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Gateway,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: impl Future<Output = ()> + Send,
) {
    let mut builder = s3s::service::S3ServiceBuilder::new(gateway.clone());
    builder.set_auth(UsersAuth(gateway.users()));
    builder.set_access(UsersAccess(gateway.users()));
    let s3 = builder.build();
    let stats = gateway.stats();
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let close = continues_without_body(request.headers());
            let bytes_in = content_length(request.headers());
            let (s3, stats, started) = (s3.clone(), Arc::clone(&stats), std::time::Instant::now());
            async move {
                let (answer, op) = stats::scoped(hyper::service::Service::call(&s3, request)).await;
                stats.record(stats::Answered {
                    op,
                    status: answer.as_ref().ok().map(|r| r.status().as_u16()),
                    bytes_in,
                    bytes_out: answer.as_ref().map_or(0, |r| content_length(r.headers())),
                    started,
                });
                let mut response = answer?;
                if close {
                    response.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, s3s::HttpError>(response)
            }
        });
    let server = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut stop = std::pin::pin!(stop);
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(%e, "the S3 gateway could not accept a connection");
                    continue;
                }
            },
            () = stop.as_mut() => break,
        };
        // Headers and a streamed body go out in separate writes: without
        // TCP_NODELAY the body waits for the headers' delayed ACK (40 ms a
        // small GET; found by scripts/perf-s3).
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(%peer, %e, "could not set TCP_NODELAY on an S3 connection");
        }
        let (server, service, watcher) = (server.clone(), service.clone(), graceful.watcher());
        let Some(tls) = tls.clone() else {
            let connection = server.serve_connection(hyper_util::rt::TokioIo::new(socket), service);
            let connection = watcher.watch(connection.into_owned());
            tokio::spawn(async move {
                let _ = connection.await;
            });
            continue;
        };
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, tls.accept(socket))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, %e, "an S3 client's TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "an S3 client did not finish its TLS handshake in time");
                    return;
                }
            };
            let connection = server.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = watcher.watch(connection.into_owned()).await;
        });
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(std::time::Duration::from_secs(STOP_GRACE_S)) => {
            tracing::warn!("S3 requests still in flight {STOP_GRACE_S} s after the stop: stopping anyway");
        }
    }
}

/// Whether a request asks for `100 Continue` with an empty body. No
/// `100 Continue` is sent for an empty body (there is nothing to wait
/// for), and botocore then mishandles the connection's next request (it
/// waits for its read timeout); such a connection is closed after the
/// answer instead.
fn continues_without_body(headers: &http::HeaderMap) -> bool {
    let expects = headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let empty = headers
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() == b"0");
    expects && empty
}

/// A message's `Content-Length` (0 when absent or not a number).
fn content_length(headers: &http::HeaderMap) -> u64 {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0)
}

/// The users as s3s's access control (bucket bindings); it also names
/// the request's operation for the counters (s3s calls it for every
/// routed request).
struct UsersAccess(std::sync::Arc<Users>);

#[async_trait::async_trait]
impl s3s::access::S3Access for UsersAccess {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> s3s::S3Result<()> {
        stats::routed(cx.s3_op().name());
        self.0.check(cx).await
    }

    async fn copy_object(
        &self,
        req: &mut s3s::S3Request<s3s::dto::CopyObjectInput>,
    ) -> s3s::S3Result<()> {
        s3s::access::S3Access::copy_object(&*self.0, req).await
    }
}

/// The users as s3s's authentication.
struct UsersAuth(std::sync::Arc<Users>);

#[async_trait::async_trait]
impl s3s::auth::S3Auth for UsersAuth {
    async fn get_secret_key(&self, access_key: &str) -> s3s::S3Result<s3s::auth::SecretKey> {
        self.0.get_secret_key(access_key).await
    }
}
