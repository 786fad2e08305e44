//! An S3 load generator: `concurrency` clients PUT or GET objects of one
//! size for a while against any S3 endpoint (DatenLord's gateway, `juicefs
//! gateway`, s3s-fs…), timed at the client. The same client and settings
//! for every server, so only the servers differ between runs.
//!
//! The client is object_store's (SigV4, path-style, HTTP keep-alive), no
//! retries: a failed request counts as an error, not as a slow success.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::latency::MAX_LATENCY_NS;

/// What a run does to each object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum S3Op {
    /// PUT objects (overwriting `objects` keys round robin).
    Put,
    /// GET objects (the `objects` keys are PUT first, then read at random).
    Get,
    /// HEAD objects (PUT first, as for GET).
    Head,
}

/// Where and how to load an S3 server.
#[derive(Debug, Clone)]
pub struct S3Load {
    /// `http://host:port`.
    pub endpoint: String,
    /// The bucket (must exist).
    pub bucket: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// PUT or GET.
    pub op: S3Op,
    /// Bytes per object.
    pub size: usize,
    /// Keys used.
    pub objects: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// How long to load.
    pub duration: Duration,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct S3Result {
    /// PUT or GET.
    pub op: S3Op,
    /// Bytes per object.
    pub size: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// Requests that succeeded.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Why the first failed request failed.
    pub first_error: Option<String>,
    /// Successful requests per second.
    pub per_second: f64,
    /// Object bytes per second, in MiB.
    pub mib_per_second: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
}

fn failed(what: &str, e: impl std::fmt::Display) -> Error {
    Error::InvalidValue {
        what: "S3 run",
        value: what.to_string(),
        reason: e.to_string(),
    }
}

/// Runs `load`.
pub fn run(load: &S3Load) -> Result<S3Result> {
    if load.objects == 0 || load.concurrency == 0 {
        return Err(failed("objects and concurrency", "give at least 1 of each"));
    }
    let store = AmazonS3Builder::new()
        .with_endpoint(&load.endpoint)
        .with_allow_http(true)
        .with_bucket_name(&load.bucket)
        .with_region("us-east-1")
        .with_access_key_id(&load.access_key)
        .with_secret_access_key(&load.secret_key)
        .with_virtual_hosted_style_request(false)
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(true)
                .with_timeout(Duration::from_secs(120)),
        )
        .with_retry(RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        })
        .build()
        .map_err(|e| failed("client", e))?;
    let store: Arc<dyn ObjectStore> = Arc::new(store);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| failed("runtime", e))?;
    runtime.block_on(drive(store, load))
}

fn key(i: usize) -> Key {
    Key::from(format!("perf/object-{i:06}"))
}

/// One request of `op` on `key`: fine, or why not.
async fn request(
    store: &dyn ObjectStore,
    op: S3Op,
    key: &Key,
    payload: &bytes::Bytes,
) -> std::result::Result<(), String> {
    match op {
        S3Op::Put => store
            .put(key, PutPayload::from(payload.clone()))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        S3Op::Get => match store.get(key).await {
            Ok(result) => match result.bytes().await {
                Ok(b) if b.len() == payload.len() => Ok(()),
                Ok(b) => Err(format!("{} bytes, not {}", b.len(), payload.len())),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        },
        S3Op::Head => match store.head(key).await {
            Ok(m) if m.size == payload.len() as u64 => Ok(()),
            Ok(m) => Err(format!("size {}, not {}", m.size, payload.len())),
            Err(e) => Err(e.to_string()),
        },
    }
}

async fn drive(store: Arc<dyn ObjectStore>, load: &S3Load) -> Result<S3Result> {
    let payload: Vec<u8> = (0..load.size).map(|i| (i % 251) as u8).collect();
    let payload = bytes::Bytes::from(payload);
    if load.op != S3Op::Put {
        for i in 0..load.objects {
            store
                .put(&key(i), PutPayload::from(payload.clone()))
                .await
                .map_err(|e| failed("filling the objects to GET", e))?;
        }
    }
    let histogram = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_NS, 3)
        .map_err(|e| Error::Histogram(e.to_string()))?;
    let histogram = Arc::new(Mutex::new(histogram));
    let (stop, errors, next) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..load.concurrency {
        let (store, payload, histogram) =
            (Arc::clone(&store), payload.clone(), Arc::clone(&histogram));
        let (stop, errors, next) = (Arc::clone(&stop), Arc::clone(&errors), Arc::clone(&next));
        let first_error = Arc::clone(&first_error);
        let (op, objects) = (load.op, load.objects);
        tasks.push(tokio::spawn(async move {
            let mut mine = Histogram::<u64>::new_from(
                &*histogram.lock().unwrap_or_else(PoisonError::into_inner),
            );
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let k = key(match op {
                    S3Op::Put => n as usize % objects,
                    // A spread that visits every key (a multiplicative hash).
                    S3Op::Get | S3Op::Head => {
                        (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % objects
                    }
                });
                let t = Instant::now();
                let outcome = request(&*store, op, &k, &payload).await;
                match outcome {
                    Ok(()) => {
                        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        mine.saturating_record(ns.max(1));
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get_or_insert(e);
                        // A server that fails at once must not starve the timer.
                        tokio::task::yield_now().await;
                    }
                }
            }
            let _ = histogram
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .add(&mine);
        }));
    }
    tokio::time::sleep(load.duration).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.map_err(|e| failed("a client task", e))?;
    }
    let first = first_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let seconds = started.elapsed().as_secs_f64();
    let histogram = histogram.lock().unwrap_or_else(PoisonError::into_inner);
    let n = histogram.len();
    let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(S3Result {
        op: load.op,
        size: load.size,
        concurrency: load.concurrency,
        requests: n,
        errors: errors.load(Ordering::Relaxed),
        first_error: first,
        per_second: n as f64 / seconds,
        mib_per_second: (n as f64 * load.size as f64) / seconds / f64::from(1 << 20),
        p50_us: us(0.5),
        p90_us: us(0.9),
        p99_us: us(0.99),
    })
}
