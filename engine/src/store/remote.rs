//! The object-store client: blocks, the volume descriptor and metadata
//! snapshots, with timeouts and retries. Runs on the [`ControlPlane`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use super::backoff::{Backoff, SplitMix64};
use super::control::ControlPlane;
use super::object::{
    self, ObjectKind, VolumeDescriptor, DESCRIPTOR_KEY, META_DIR, META_SNAPSHOTS_KEPT,
    OBJECT_HEADER_BYTES,
};
use super::reach::{Admit, Reach};
use super::url::StoreUrl;
use super::{StoreError, STORE_FORMAT_VERSION};
use crate::block::{BlockId, BLOCK_SIZE_MAX_BYTES};

/// Largest block object read from the store: a header and the largest
/// block any volume has.
pub const BLOCK_OBJECT_BYTES_MAX: u64 = OBJECT_HEADER_BYTES as u64 + BLOCK_SIZE_MAX_BYTES as u64;
/// Largest volume descriptor read from the store.
pub const DESCRIPTOR_BYTES_MAX: u64 = 64 * 1024;
/// Largest metadata backup read from the store (the namespace is held in
/// memory whole; the same bound as a Raft snapshot message).
pub const META_SNAPSHOT_BYTES_MAX: u64 = 16 << 30;

/// S3 settings that override the standard `AWS_*` environment variables.
#[derive(Clone, Debug, Default)]
pub struct S3Settings {
    /// Endpoint URL (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT`).
    pub endpoint: Option<String>,
    /// Region (`AWS_REGION`, `AWS_DEFAULT_REGION`; default us-east-1).
    pub region: Option<String>,
    /// Access key id (`AWS_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// Secret access key (`AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key: Option<String>,
    /// Allow plain http (`AWS_ALLOW_HTTP`; default: when the endpoint is http://).
    pub allow_http: Option<bool>,
}

/// Timeouts and retries of store requests.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// S3 overrides of the environment.
    pub s3: S3Settings,
    /// Bound on one request.
    pub request_timeout: Duration,
    /// Bound on connecting.
    pub connect_timeout: Duration,
    /// Attempts of a read (or a direct write) before it fails.
    pub attempts: u32,
    /// First retry delay.
    pub retry_base: Duration,
    /// Largest retry delay.
    pub retry_max: Duration,
}

/// Request timeout by default.
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Connect timeout by default.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Attempts of a read by default.
pub const READ_ATTEMPTS: u32 = 4;

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            s3: S3Settings::default(),
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS),
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_MS),
            attempts: READ_ATTEMPTS,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
        }
    }
}

/// A volume's persistent store. Clones share one client.
#[derive(Clone, Debug)]
pub struct RemoteStore {
    pub(crate) inner: Arc<RemoteInner>,
}

#[derive(Debug)]
pub(crate) struct RemoteInner {
    store: Arc<dyn ObjectStore>,
    /// A local-directory store's directory and a client of it that does
    /// not fsync each object: the journal's uploads write through it and
    /// make a batch durable with one [`RemoteInner::sync_unsynced`].
    unsynced: Option<(Arc<dyn ObjectStore>, PathBuf)>,
    prefix: String,
    pub(crate) name: String,
    pub(crate) control: ControlPlane,
    options: StoreOptions,
    /// Whether the store answers (reads fail fast while it does not).
    reach: Mutex<Reach>,
}

fn env_flag(name: &str) -> Option<bool> {
    std::env::var(name)
        .ok()
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

fn build_s3(bucket: &str, options: &StoreOptions) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let s3 = &options.s3;
    // Precedence: explicit settings, then `AWS_*` variables, then the AWS
    // shared files (~/.aws/credentials and ~/.aws/config).
    let shared = super::aws_config::load();
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_virtual_hosted_style_request(false);
    let endpoint = s3
        .endpoint
        .clone()
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .or_else(|| env("AWS_ENDPOINT"))
        .or_else(|| shared.endpoint.clone());
    if let Some(endpoint) = &endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    let region = s3
        .region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .or_else(|| shared.region.clone())
        .unwrap_or_else(|| "us-east-1".into());
    builder = builder.with_region(region);
    let access_key_id = s3.access_key_id.clone().or_else(|| {
        env("AWS_ACCESS_KEY_ID")
            .is_none()
            .then(|| shared.access_key_id.clone())
            .flatten()
    });
    if let Some(key) = &access_key_id {
        builder = builder.with_access_key_id(key);
    }
    let secret_access_key = s3.secret_access_key.clone().or_else(|| {
        env("AWS_SECRET_ACCESS_KEY")
            .is_none()
            .then(|| shared.secret_access_key.clone())
            .flatten()
    });
    if let Some(secret) = &secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    // An explicit http:// endpoint is a local server: allow it.
    let allow_http = s3
        .allow_http
        .or_else(|| env_flag("AWS_ALLOW_HTTP"))
        .unwrap_or_else(|| {
            endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://"))
        });
    let client = ClientOptions::new()
        .with_timeout(options.request_timeout)
        .with_connect_timeout(options.connect_timeout)
        .with_allow_http(allow_http);
    // Retries are ours (bounded for reads, forever for uploads).
    let retry = RetryConfig {
        max_retries: 0,
        retry_timeout: options.request_timeout,
        ..RetryConfig::default()
    };
    let store = builder
        .with_client_options(client)
        .with_retry(retry)
        .build()
        .map_err(|e| StoreError::Config(format!("s3://{bucket}: {e}")))?;
    Ok(Arc::new(store))
}

impl RemoteStore {
    /// Builds the client from the URL and the `AWS_*` environment (no IO
    /// for S3; a `file://` directory is created if missing).
    pub fn open(url: &StoreUrl, control: &ControlPlane) -> Result<Self, StoreError> {
        Self::open_with(url, control, StoreOptions::default())
    }

    /// [`RemoteStore::open`] with explicit settings.
    pub fn open_with(
        url: &StoreUrl,
        control: &ControlPlane,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        let mut unsynced = None;
        let store: Arc<dyn ObjectStore> = match url {
            StoreUrl::Memory => Arc::new(InMemory::new()),
            StoreUrl::File(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::io("create the store directory", dir, e))?;
                let local = |fsync: bool| {
                    LocalFileSystem::new_with_prefix(dir)
                        .map(|fs| fs.with_fsync(fsync))
                        .map_err(|e| StoreError::Config(format!("{url}: {e}")))
                };
                unsynced = Some((Arc::new(local(false)?) as Arc<dyn ObjectStore>, dir.clone()));
                // fsync files and directories: what is written directly
                // (metadata backups, the descriptor) must be durable when
                // the call returns.
                Arc::new(local(true)?)
            }
            StoreUrl::S3 { bucket, .. } => build_s3(bucket, &options)?,
        };
        Ok(Self {
            inner: Arc::new(RemoteInner {
                store,
                unsynced,
                prefix: url.prefix().to_owned(),
                name: url.to_string(),
                control: control.clone(),
                options,
                reach: Mutex::new(Reach::default()),
            }),
        })
    }

    /// A local-directory store's directory.
    pub fn local_dir(&self) -> Option<&std::path::Path> {
        self.inner.unsynced.as_ref().map(|(_, dir)| dir.as_path())
    }

    /// The store URL.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The control plane the store runs on.
    pub fn control(&self) -> &ControlPlane {
        &self.inner.control
    }

    /// Full key of a block (with the store prefix).
    pub fn block_object_key(&self, id: BlockId) -> String {
        self.inner.full_key(&object::block_key(id))
    }

    /// Writes the volume descriptor. Idempotent for the same descriptor;
    /// refuses a store that holds another one.
    pub async fn format(&self, desc: &VolumeDescriptor) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        let desc = *desc;
        self.inner
            .control
            .run(async move {
                if let Some(existing) = inner.descriptor().await? {
                    if existing == desc {
                        return Ok(());
                    }
                    return Err(StoreError::WrongVolume {
                        store: inner.name.clone(),
                        message: format!(
                            "it is already formatted for volume {} (block size {}, format {}): use another bucket or prefix, or delete that volume first",
                            existing.uuid_hex(),
                            existing.block_size,
                            existing.format_version
                        ),
                    });
                }
                let key = inner.full_key(DESCRIPTOR_KEY);
                inner.put_with_retries(&key, Bytes::from(desc.encode())).await
            })
            .await
    }

    /// The volume descriptor, if the store is formatted. Also the first
    /// request of a mount: a wrong bucket or wrong credentials fail here
    /// with an error that says so.
    pub async fn descriptor(&self) -> Result<Option<VolumeDescriptor>, StoreError> {
        let inner = Arc::clone(&self.inner);
        self.inner
            .control
            .run(async move { inner.descriptor().await })
            .await
    }

    /// Checks that the store holds a volume of this format (and block size).
    pub async fn check(
        &self,
        expected_block_size: Option<u32>,
    ) -> Result<VolumeDescriptor, StoreError> {
        let name = self.inner.name.clone();
        let Some(desc) = self.descriptor().await? else {
            return Err(StoreError::NotFormatted { store: name });
        };
        if desc.format_version != STORE_FORMAT_VERSION {
            return Err(StoreError::WrongVolume {
                store: name,
                message: format!(
                    "store format version {} is not the supported {STORE_FORMAT_VERSION}: use a DatenLord release that supports it",
                    desc.format_version
                ),
            });
        }
        if let Some(expected) = expected_block_size {
            if expected != desc.block_size {
                return Err(StoreError::WrongVolume {
                    store: name,
                    message: format!(
                        "volume {} was formatted with block size {} bytes, not {expected}: mount with --block-size {}",
                        desc.uuid_hex(),
                        desc.block_size,
                        desc.block_size
                    ),
                });
            }
        }
        Ok(desc)
    }

    /// Fetches a whole block, verified; retries transient failures.
    pub async fn get_block(&self, id: BlockId) -> Result<Vec<u8>, StoreError> {
        let inner = Arc::clone(&self.inner);
        self.inner
            .control
            .run(async move { inner.get_block(id).await })
            .await
    }

    /// Stores a block (retries transient failures a bounded number of times).
    pub async fn put_block(&self, id: BlockId, data: &[u8]) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        let encoded = Bytes::from(object::encode(ObjectKind::Block(id), data));
        self.inner
            .control
            .run(async move {
                let key = inner.full_key(&object::block_key(id));
                inner.put_with_retries(&key, encoded).await
            })
            .await
    }

    /// Deletes a block (absent is fine).
    pub async fn delete_block(&self, id: BlockId) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        self.inner
            .control
            .run(async move { inner.delete_block(id).await })
            .await
    }

    /// Every block object of the volume with its last-modified time (for
    /// the orphan scrub); objects under `blocks/` that are not block keys
    /// are skipped.
    pub async fn list_blocks(&self) -> Result<Vec<(BlockId, SystemTime)>, StoreError> {
        let inner = Arc::clone(&self.inner);
        self.inner
            .control
            .run(async move {
                let dir = inner.full_key("blocks");
                let skip = dir.len() - "blocks".len();
                let path = ObjectPath::from(dir.as_str());
                let mut listing = inner.store.list(Some(&path));
                let mut found = Vec::new();
                while let Some(meta) = listing.next().await {
                    let meta = meta.map_err(|e| inner.map_error(&dir, &e))?;
                    let key = meta.location.to_string();
                    if let Some(id) = key.get(skip..).and_then(object::parse_block_key) {
                        found.push((id, SystemTime::from(meta.last_modified)));
                    }
                }
                Ok(found)
            })
            .await
    }

    /// Stores a metadata snapshot under the next sequence number and keeps
    /// the newest [`META_SNAPSHOTS_KEPT`]. Returns the sequence.
    pub async fn put_meta_snapshot(&self, bytes: Vec<u8>) -> Result<u64, StoreError> {
        let inner = Arc::clone(&self.inner);
        self.inner
            .control
            .run(async move {
                let mut seqs = inner.snapshot_seqs().await?;
                let seq = seqs.last().map_or(1, |last| last + 1);
                let encoded = object::encode(ObjectKind::MetaSnapshot(seq), &bytes);
                let key = inner.full_key(&object::snapshot_key(seq));
                inner.put_with_retries(&key, Bytes::from(encoded)).await?;
                seqs.push(seq);
                let old = seqs.len().saturating_sub(META_SNAPSHOTS_KEPT);
                for &stale in &seqs[..old] {
                    let key = inner.full_key(&object::snapshot_key(stale));
                    if let Err(e) = inner.delete_object(&key).await {
                        tracing::warn!(store = %inner.name, %key, error = %e, "cannot delete an old metadata snapshot");
                    }
                }
                Ok(seq)
            })
            .await
    }

    /// The newest metadata snapshot that passes its checks.
    pub async fn latest_meta_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let inner = Arc::clone(&self.inner);
        self.inner
            .control
            .run(async move {
                let seqs = inner.snapshot_seqs().await?;
                for &seq in seqs.iter().rev() {
                    let key = inner.full_key(&object::snapshot_key(seq));
                    let raw = match inner.get_with_retries(&key, META_SNAPSHOT_BYTES_MAX).await {
                        Ok(raw) => raw,
                        Err(StoreError::NotFound { .. }) => continue,
                        Err(e) => return Err(e),
                    };
                    match object::decode(ObjectKind::MetaSnapshot(seq), &raw) {
                        Ok(payload) => return Ok(Some((seq, payload.to_vec()))),
                        Err(reason) => {
                            tracing::error!(store = %inner.name, %key, %reason, "corrupt metadata snapshot skipped");
                        }
                    }
                }
                Ok(None)
            })
            .await
    }
}

impl RemoteInner {
    pub(crate) fn full_key(&self, relative: &str) -> String {
        if self.prefix.is_empty() {
            relative.to_owned()
        } else {
            format!("{}/{relative}", self.prefix)
        }
    }

    pub(crate) fn map_error(&self, key: &str, error: &object_store::Error) -> StoreError {
        let message = error.to_string();
        match error {
            object_store::Error::NotFound { .. } if message.contains("NoSuchBucket") => {
                StoreError::NoSuchBucket {
                    store: self.name.clone(),
                }
            }
            object_store::Error::NotFound { .. } => StoreError::NotFound {
                key: key.to_owned(),
            },
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => StoreError::AccessDenied {
                store: self.name.clone(),
                message,
            },
            _ if [
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "AccessDenied",
                "403 Forbidden",
            ]
            .iter()
            .any(|s| message.contains(s)) =>
            {
                StoreError::AccessDenied {
                    store: self.name.clone(),
                    message,
                }
            }
            _ => StoreError::Unreachable {
                store: self.name.clone(),
                message,
            },
        }
    }

    pub(crate) fn timed_out(&self, key: &str) -> StoreError {
        StoreError::Unreachable {
            store: self.name.clone(),
            message: format!(
                "request for {key} timed out after {} ms",
                self.options.request_timeout.as_millis()
            ),
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(
            self.options.retry_base,
            self.options.retry_max,
            SplitMix64::from_time(),
        )
    }

    /// One GET of at most `bytes_max` bytes, bounded by the request
    /// timeout. A larger object is corrupt (never read whole: its size, or
    /// the bytes the store sends, are checked as they come).
    async fn get_once(&self, key: &str, bytes_max: u64) -> Result<Vec<u8>, StoreError> {
        let path = ObjectPath::from(key);
        let request = async {
            let result = self.store.get(&path).await?;
            let size = result.meta.size;
            if size > bytes_max {
                return Ok(Err(size));
            }
            let mut out = Vec::with_capacity(size as usize);
            let mut stream = result.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                let received = (out.len() + chunk.len()) as u64;
                if received > bytes_max {
                    return Ok(Err(received));
                }
                out.extend_from_slice(&chunk);
            }
            Ok::<_, object_store::Error>(Ok(out))
        };
        match tokio::time::timeout(self.options.request_timeout, request).await {
            Ok(Ok(Ok(bytes))) => Ok(bytes),
            Ok(Ok(Err(size))) => Err(StoreError::Corrupt {
                key: key.to_string(),
                reason: format!(
                    "object of {size} bytes or more, above the {bytes_max}-byte limit for its kind"
                ),
            }),
            Ok(Err(e)) => Err(self.map_error(key, &e)),
            Err(_) => Err(self.timed_out(key)),
        }
    }

    /// The first `len` bytes of an object (an object header), bounded by
    /// the request timeout.
    async fn get_head_once(&self, key: &str, len: usize) -> Result<Vec<u8>, StoreError> {
        let path = ObjectPath::from(key);
        let request = self.store.get_range(&path, 0..len as u64);
        match tokio::time::timeout(self.options.request_timeout, request).await {
            Ok(Ok(bytes)) => Ok(bytes.to_vec()),
            Ok(Err(e)) => Err(self.map_error(key, &e)),
            Err(_) => Err(self.timed_out(key)),
        }
    }

    /// GET of at most `bytes_max` bytes with bounded retries of transient
    /// failures.
    pub(crate) async fn get_with_retries(
        &self,
        key: &str,
        bytes_max: u64,
    ) -> Result<Vec<u8>, StoreError> {
        self.with_retries(key, || self.get_once(key, bytes_max))
            .await
    }

    /// Runs `request` (one attempt of a read of `key`) with bounded
    /// retries of transient failures, unless the store is known down.
    async fn with_retries<T, F, Fut>(&self, key: &str, request: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut backoff = self.backoff();
        let mut attempt = 0;
        loop {
            // Each attempt asks: the store may have been found down since.
            let probe = match self.reach().admit(Instant::now()) {
                Admit::Go => false,
                Admit::Probe => true,
                Admit::Refuse(message) => {
                    return Err(StoreError::Unreachable {
                        store: self.name.clone(),
                        message,
                    })
                }
            };
            let result = request().await;
            self.note(result.as_ref().err());
            match result {
                Err(e) if e.is_transient() && !probe && attempt + 1 < self.options.attempts => {
                    tracing::debug!(store = %self.name, %key, error = %e, attempt, "read failed, retrying");
                    tokio::time::sleep(backoff.delay(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn reach(&self) -> std::sync::MutexGuard<'_, Reach> {
        self.reach.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a request's outcome for [`Reach`]: no answer, or one.
    fn note(&self, error: Option<&StoreError>) {
        let failure = error.filter(|e| e.is_transient()).map(ToString::to_string);
        self.reach().record(failure.as_deref(), Instant::now());
    }

    /// One PUT, bounded by the request timeout.
    pub(crate) async fn put_once(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.put_through(&self.store, key, bytes).await
    }

    async fn put_through(
        &self,
        store: &Arc<dyn ObjectStore>,
        key: &str,
        bytes: Bytes,
    ) -> Result<(), StoreError> {
        let path = ObjectPath::from(key);
        let request = store.put(&path, PutPayload::from(bytes));
        let result = match tokio::time::timeout(self.options.request_timeout, request).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.map_error(key, &e)),
            Err(_) => Err(self.timed_out(key)),
        };
        self.note(result.as_ref().err());
        result
    }

    /// One PUT that may not be durable yet when it returns. Returns
    /// whether it needs [`RemoteInner::sync_unsynced`] before the caller
    /// may forget its own copy: a local-directory store writes the object
    /// without fsyncing it (a file, its new directories and the rename
    /// cost about five file-system journal commits per object; one sync
    /// of a batch costs one); other stores are durable on return.
    pub(crate) async fn put_unsynced(&self, key: &str, bytes: Bytes) -> Result<bool, StoreError> {
        match &self.unsynced {
            Some((store, _)) => self.put_through(store, key, bytes).await.map(|()| true),
            None => self.put_once(key, bytes).await.map(|()| false),
        }
    }

    /// Makes every [`RemoteInner::put_unsynced`] that returned before this
    /// call durable: `syncfs` of the local-directory store's file system
    /// (object by object would need the directories object_store created;
    /// `syncfs` also writes back whatever else is dirty on that file
    /// system). Blocking; nothing to do for other stores.
    pub(crate) fn sync_unsynced(&self) -> Result<(), StoreError> {
        use std::os::fd::AsRawFd;
        let Some((_, dir)) = &self.unsynced else {
            return Ok(());
        };
        let handle = std::fs::File::open(dir).map_err(|e| StoreError::io("open", dir, e))?;
        // SAFETY: syncfs on a descriptor this function owns.
        if unsafe { libc::syncfs(handle.as_raw_fd()) } != 0 {
            return Err(StoreError::io(
                "sync the file system of",
                dir,
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    async fn put_with_retries(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let mut backoff = self.backoff();
        let mut attempt = 0;
        loop {
            match self.put_once(key, bytes.clone()).await {
                Err(e) if e.is_transient() && attempt + 1 < self.options.attempts => {
                    tokio::time::sleep(backoff.delay(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// The object store (for requests the helpers here do not make).
    pub(crate) fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// How long one request may take.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.options.request_timeout
    }

    pub(crate) async fn delete_object(&self, key: &str) -> Result<(), StoreError> {
        let path = ObjectPath::from(key);
        match tokio::time::timeout(self.options.request_timeout, self.store.delete(&path)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => match self.map_error(key, &e) {
                StoreError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
            Err(_) => Err(self.timed_out(key)),
        }
    }

    pub(crate) async fn delete_block(&self, id: BlockId) -> Result<(), StoreError> {
        self.delete_object(&self.full_key(&object::block_key(id)))
            .await
    }

    pub(crate) async fn get_block(&self, id: BlockId) -> Result<Vec<u8>, StoreError> {
        let key = self.full_key(&object::block_key(id));
        let raw = self.get_with_retries(&key, BLOCK_OBJECT_BYTES_MAX).await?;
        match object::decode(ObjectKind::Block(id), &raw) {
            Ok(payload) => Ok(payload.to_vec()),
            Err(reason) => {
                tracing::error!(store = %self.name, %key, block = %id, %reason, "corrupt block object: not served");
                Err(StoreError::Corrupt { key, reason })
            }
        }
    }

    /// A block's payload checksum and length from its object's header (one
    /// ranged GET of the header); `None` when the store has no such object.
    pub(crate) async fn block_checksum(
        &self,
        id: BlockId,
    ) -> Result<Option<(u32, u64)>, StoreError> {
        let key = self.full_key(&object::block_key(id));
        let head = match self
            .with_retries(&key, || self.get_head_once(&key, OBJECT_HEADER_BYTES))
            .await
        {
            Ok(head) => head,
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        match object::block_checksum(id, &head) {
            Ok(sum) => Ok(Some(sum)),
            Err(reason) => {
                tracing::error!(store = %self.name, %key, block = %id, %reason, "corrupt block object header");
                Err(StoreError::Corrupt { key, reason })
            }
        }
    }

    pub(crate) fn block_key(&self, id: BlockId) -> String {
        self.full_key(&object::block_key(id))
    }

    async fn descriptor(&self) -> Result<Option<VolumeDescriptor>, StoreError> {
        let key = self.full_key(DESCRIPTOR_KEY);
        match self.get_with_retries(&key, DESCRIPTOR_BYTES_MAX).await {
            Ok(raw) => VolumeDescriptor::decode(&raw)
                .map(Some)
                .map_err(|reason| StoreError::Corrupt { key, reason }),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sequences of the stored metadata snapshots, ascending.
    async fn snapshot_seqs(&self) -> Result<Vec<u64>, StoreError> {
        let dir = self.full_key(META_DIR);
        let path = ObjectPath::from(dir.as_str());
        let mut listing = self.store.list(Some(&path));
        let mut seqs = Vec::new();
        let collect = async {
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(|e| self.map_error(&dir, &e))?;
                if let Some(seq) = meta
                    .location
                    .filename()
                    .and_then(object::parse_snapshot_name)
                {
                    seqs.push(seq);
                }
            }
            Ok::<(), StoreError>(())
        };
        match tokio::time::timeout(self.options.request_timeout, collect).await {
            Ok(result) => result?,
            Err(_) => return Err(self.timed_out(&dir)),
        }
        seqs.sort_unstable();
        Ok(seqs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    #[test]
    fn only_a_local_directory_store_defers_durability_to_a_sync() {
        let control = ControlPlane::start().expect("control");
        let dir = tempfile::tempdir().expect("store dir");
        let url: StoreUrl = format!("file://{}", dir.path().display())
            .parse()
            .expect("url");
        let store = RemoteStore::open(&url, &control).expect("file store");
        let id = BlockId::new(3, 1, 7);
        let key = store.inner.block_key(id);
        let object = object::encode(object::ObjectKind::Block(id), b"payload");
        let inner = Arc::clone(&store.inner);
        let (put, bytes) = (key.clone(), Bytes::from(object));
        let needs_sync =
            block_on(control.run(async move { inner.put_unsynced(&put, bytes).await }))
                .expect("put");
        assert!(needs_sync);
        store.inner.sync_unsynced().expect("syncfs");
        let back = block_on(store.get_block(id)).expect("the object is there");
        assert_eq!(back, b"payload");

        let memory = RemoteStore::open(&StoreUrl::Memory, &control).expect("memory store");
        let inner = Arc::clone(&memory.inner);
        let bytes = Bytes::from(object::encode(object::ObjectKind::Block(id), b"x"));
        let needs_sync =
            block_on(control.run(async move { inner.put_unsynced(&key, bytes).await }))
                .expect("put");
        assert!(!needs_sync, "durable on return");
        memory.inner.sync_unsynced().expect("nothing to sync");
    }

    #[test]
    fn an_object_larger_than_its_kind_allows_is_corrupt_and_never_read_whole() {
        let control = ControlPlane::start().expect("control");
        let memory = RemoteStore::open(&StoreUrl::Memory, &control).expect("memory store");
        let id = BlockId::new(3, 1, 7);
        let key = memory.inner.block_key(id);
        let payload = vec![7u8; BLOCK_SIZE_MAX_BYTES as usize + 1];
        let bytes = Bytes::from(object::encode(object::ObjectKind::Block(id), &payload));
        let inner = Arc::clone(&memory.inner);
        block_on(control.run(async move { inner.put_once(&key, bytes).await })).expect("put");
        match block_on(memory.get_block(id)) {
            Err(StoreError::Corrupt { reason, .. }) => {
                assert!(reason.contains("limit"), "{reason}");
            }
            other => panic!("expected a corrupt object, got {other:?}"),
        }
    }
}
