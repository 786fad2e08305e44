//! The extender's HTTP endpoint: `POST …/filter` and `POST …/prioritize`
//! (under any prefix the scheduler's `urlPrefix` has), JSON in and out.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tracing::{debug, warn};

use super::kube::Kube;
use super::{failed_nodes, scores, scores_json, CacheSource, NodeCache, Request};

/// Largest request read: a pod and, without `nodeCacheCapable`, every
/// candidate Node object (a few KiB each).
pub const REQUEST_MAX_BYTES: usize = 64 << 20;

/// What the extender asks: the Kubernetes API and the masters.
pub struct Extender {
    kube: Kube,
    source: Arc<dyn CacheSource>,
}

impl std::fmt::Debug for Extender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extender")
            .field("kube", &self.kube)
            .finish_non_exhaustive()
    }
}

impl Extender {
    /// An extender asking `kube` for claims and `source` for caches.
    pub fn new(kube: Kube, source: Arc<dyn CacheSource>) -> Self {
        Self { kube, source }
    }

    /// What each node caches of the pod's DatenLord volumes, by node
    /// name; empty when the pod has none, or when they cannot be known
    /// (then logged: the pod schedules without locality).
    async fn locality(&self, request: &Request) -> BTreeMap<String, NodeCache> {
        let mut volumes = BTreeSet::new();
        for claim in request.claims() {
            match self.kube.volume_of(&claim).await {
                Ok(Some(volume)) => {
                    volumes.insert(volume);
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(%e, claim = %claim.name, namespace = %claim.namespace, "cannot map a claim to its volume: scheduling without locality");
                    return BTreeMap::new();
                }
            }
        }
        if volumes.is_empty() {
            return BTreeMap::new();
        }
        let volumes: Vec<String> = volumes.into_iter().collect();
        let source = Arc::clone(&self.source);
        let asked = volumes.clone();
        match tokio::task::spawn_blocking(move || source.nodes(&asked)).await {
            Ok(Ok(nodes)) => nodes,
            Ok(Err(e)) => {
                warn!(%e, ?volumes, "cannot read the nodes' caches: scheduling without locality");
                BTreeMap::new()
            }
            Err(e) => {
                warn!(%e, "the cache lookup failed: scheduling without locality");
                BTreeMap::new()
            }
        }
    }
}

/// Serves `extender` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    extender: Arc<Extender>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = axum::Router::new()
        .fallback(handle)
        .layer(axum::extract::DefaultBodyLimit::max(REQUEST_MAX_BYTES))
        .with_state(extender);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn handle(
    State(extender): State<Arc<Extender>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let verb = uri.path().rsplit('/').next().unwrap_or_default();
    if method != Method::POST || !matches!(verb, "filter" | "prioritize") {
        return (
            StatusCode::NOT_FOUND,
            "the DatenLord scheduler extender serves POST …/filter and POST …/prioritize\n",
        )
            .into_response();
    }
    let request = match Request::parse(&body) {
        Ok(request) => request,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let candidates = request.candidates();
    let nodes = extender.locality(&request).await;
    let answer = if verb == "filter" {
        let failed = failed_nodes(&candidates, &nodes);
        debug!(candidates = candidates.len(), failed = ?failed.keys().collect::<Vec<_>>(), "filter");
        request.filter_result(&failed)
    } else {
        let scores = scores(&candidates, &nodes);
        debug!(?scores, "prioritize");
        scores_json(&scores)
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        answer.to_string(),
    )
        .into_response()
}
