//! One store, one owner: an embedded mount holds a lease on its store, so
//! a second embedded mount of the same store refuses to start (both would
//! scrub the store and delete each other's blocks as orphans).
//!
//! - A local-directory store (`file://`): an exclusive `flock` on its
//!   `lease` file, which also names the holder. The kernel releases it when
//!   the holder dies, however it dies.
//! - Other stores (S3): a `lease` object created only if absent (a
//!   conditional PUT, `If-None-Match: *`) and renewed every third of its
//!   time to live with a PUT conditional on the ETag of the last renewal
//!   (`If-Match`). A lease not renewed for its time to live (and a margin
//!   for clocks that disagree) may be taken over, again with a conditional
//!   PUT, so two contenders cannot both win. A holder whose renewal finds
//!   another holder's object has lost the lease: [`StoreLease::held`]
//!   turns false, and the mount deletes nothing from then on.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt as _, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::remote::RemoteStore;
use super::StoreError;
use crate::lock_file::{self, try_lock, Lock};

/// Name of the lease file or object under the store's prefix.
pub const LEASE_KEY: &str = "lease";
/// How long an object lease lives without a renewal, by default.
pub const LEASE_TTL_MS_DEFAULT: u64 = 30_000;
/// Added to a lease's time to live before another holder may take it over:
/// the holder's and the contender's clocks may disagree by this much.
pub const CLOCK_SKEW_MARGIN_MS: u64 = 5_000;
/// Longest lease record read.
const LEASE_BYTES_MAX: u64 = 4096;
const LEASE_MAGIC: &str = "datenlord store lease";

/// What a lease says: who holds it, and until when (sans IO).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Who holds it, for people: host, process and data directory.
    pub holder: String,
    /// Bumped at every takeover.
    pub epoch: u64,
    /// The holder's wall clock at its last renewal (ms since the epoch).
    pub renewed_ms: u64,
    /// How long it lives without a renewal.
    pub ttl_ms: u64,
}

impl LeaseRecord {
    /// Text lines: a magic line, then `key=value`.
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{LEASE_MAGIC}\nholder={}\nepoch={}\nrenewed_ms={}\nttl_ms={}\n",
            self.holder.replace('\n', " "),
            self.epoch,
            self.renewed_ms,
            self.ttl_ms
        )
        .into_bytes()
    }

    /// Reads [`Self::encode`]'s lines; anything else is an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
        let mut lines = text.lines();
        if lines.next() != Some(LEASE_MAGIC) {
            return Err("not a lease record".into());
        }
        let mut field = |key: &str| -> Result<String, String> {
            lines
                .next()
                .and_then(|line| line.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_string)
                .ok_or_else(|| format!("no {key} line"))
        };
        let number = |text: String, key: &str| {
            text.parse::<u64>()
                .map_err(|_| format!("{key} is not a number"))
        };
        let holder = field("holder")?;
        let epoch = number(field("epoch")?, "epoch")?;
        let renewed_ms = number(field("renewed_ms")?, "renewed_ms")?;
        let ttl_ms = number(field("ttl_ms")?, "ttl_ms")?;
        Ok(Self {
            holder,
            epoch,
            renewed_ms,
            ttl_ms,
        })
    }

    /// Whether another holder may take it over at `now_ms` (its clock).
    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms
            > self
                .renewed_ms
                .saturating_add(self.ttl_ms)
                .saturating_add(CLOCK_SKEW_MARGIN_MS)
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A held lease on a store; released by [`StoreLease::release`] or when
/// dropped (a killed holder's file lease goes with its process, an object
/// lease expires).
#[derive(Debug)]
pub struct StoreLease {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// The flocked lease file (the lock goes with the descriptor).
    File { _file: File },
    /// The lease object and its renewal task.
    Object {
        remote: RemoteStore,
        held: Arc<Held>,
        /// `None` once released.
        renewal: Mutex<Option<Renewal>>,
    },
}

/// The renewal task, stopped when dropped.
#[derive(Debug)]
struct Renewal(tokio::task::AbortHandle);

impl Drop for Renewal {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An object lease's state, shared with its renewal task.
#[derive(Debug)]
struct Held {
    /// Until when (this host's wall clock, ms) the lease is surely ours.
    until_ms: AtomicU64,
    /// Set by `release` before anything else: a renewal that was already
    /// past its PUT when the task was aborted may still store a new
    /// `until_ms`, and must not make a released lease look held.
    released: AtomicBool,
    /// The record and the ETag of its last write.
    last: Mutex<(LeaseRecord, Option<String>)>,
}

impl StoreLease {
    /// Whether the lease is surely still this process's (a file lease
    /// always; an object lease until its last renewal's time to live ran
    /// out, or another holder took it).
    pub fn held(&self) -> bool {
        match &self.kind {
            Kind::File { .. } => true,
            Kind::Object { held, .. } => {
                !held.released.load(Ordering::Acquire)
                    && wall_ms() < held.until_ms.load(Ordering::Acquire)
            }
        }
    }

    /// Gives the lease up (at a clean stop): from now on it is not held,
    /// and the object is deleted when it is still this process's, so the
    /// next mount need not wait for it to expire. Idempotent.
    pub fn release(&self) {
        let Kind::Object {
            remote,
            held,
            renewal,
        } = &self.kind
        else {
            return;
        };
        let Some(renewal) = renewal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        held.released.store(true, Ordering::Release);
        drop(renewal);
        held.until_ms.store(0, Ordering::Release);
        let ours = held
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone();
        let inner = Arc::clone(&remote.inner);
        let released = futures::executor::block_on(remote.inner.control.run(async move {
            let key = inner.full_key(LEASE_KEY);
            let current = inner.get_with_retries(&key, LEASE_BYTES_MAX).await?;
            // Ours if the same holder and epoch (a renewal cut short by the
            // abort may have moved its time).
            if LeaseRecord::decode(&current)
                .is_ok_and(|r| r.holder == ours.holder && r.epoch == ours.epoch)
            {
                inner.delete_object(&key).await?;
            }
            Ok(())
        }));
        if let Err(e) = released {
            tracing::warn!(store = %remote.name(), error = %e, "cannot release the store lease; it expires by itself");
        }
    }
}

impl Drop for StoreLease {
    fn drop(&mut self) {
        self.release();
    }
}

impl RemoteStore {
    /// Takes this store's lease for `holder` (see the module), or says who
    /// holds it. `ttl` is an object lease's time to live.
    pub fn take_lease(&self, holder: &str, ttl: Duration) -> Result<StoreLease, StoreError> {
        if let Some(dir) = self.local_dir() {
            return take_file_lease(self.name(), dir, holder);
        }
        let ttl_ms = (ttl.as_millis() as u64).max(3);
        let record = LeaseRecord {
            holder: holder.to_string(),
            epoch: 1,
            renewed_ms: wall_ms(),
            ttl_ms,
        };
        let inner = Arc::clone(&self.inner);
        let (record, etag) =
            futures::executor::block_on(self.inner.control.run(acquire(inner, record)))?;
        let held = Arc::new(Held {
            until_ms: AtomicU64::new(record.renewed_ms + ttl_ms),
            released: AtomicBool::new(false),
            last: Mutex::new((record, etag)),
        });
        let renewal = self
            .inner
            .control
            .handle()
            .spawn(renew(self.clone(), Arc::clone(&held)))
            .abort_handle();
        let renewal = Mutex::new(Some(Renewal(renewal)));
        Ok(StoreLease {
            kind: Kind::Object {
                remote: self.clone(),
                held,
                renewal,
            },
        })
    }
}

fn leased(store: &str, holder: &str, detail: &str) -> StoreError {
    StoreError::Leased {
        store: store.to_string(),
        holder: holder.to_string(),
        detail: detail.to_string(),
    }
}

fn take_file_lease(store: &str, dir: &Path, holder: &str) -> Result<StoreLease, StoreError> {
    let path: PathBuf = dir.join(LEASE_KEY);
    let mut file =
        match try_lock(&path).map_err(|e| StoreError::io("lock the store lease", &path, e))? {
            Lock::Held(file) => file,
            Lock::Busy(text) => {
                let holder = LeaseRecord::decode(text.as_bytes())
                    .map_or_else(|_| "another process".to_string(), |r| r.holder);
                return Err(leased(
                    store,
                    &holder,
                    "it holds the lock on the store's lease file",
                ));
            }
        };
    let record = LeaseRecord {
        holder: holder.to_string(),
        epoch: 1,
        renewed_ms: wall_ms(),
        ttl_ms: 0,
    };
    lock_file::record(&mut file, &record.encode())
        .map_err(|e| StoreError::io("write the store lease", &path, e))?;
    Ok(StoreLease {
        kind: Kind::File { _file: file },
    })
}

async fn put_lease(
    inner: &super::remote::RemoteInner,
    record: &LeaseRecord,
    mode: PutMode,
) -> Result<Result<Option<String>, object_store::Error>, StoreError> {
    let path = ObjectPath::from(inner.full_key(LEASE_KEY).as_str());
    let payload = PutPayload::from(Bytes::from(record.encode()));
    let options = PutOptions {
        mode,
        ..PutOptions::default()
    };
    match tokio::time::timeout(
        inner.request_timeout(),
        inner.object_store().put_opts(&path, payload, options),
    )
    .await
    {
        Ok(Ok(result)) => Ok(Ok(result.e_tag)),
        Ok(Err(e)) => Ok(Err(e)),
        Err(_) => Err(inner.timed_out(&inner.full_key(LEASE_KEY))),
    }
}

/// Creates the lease object, or takes over an expired one.
async fn acquire(
    inner: Arc<super::remote::RemoteInner>,
    mut record: LeaseRecord,
) -> Result<(LeaseRecord, Option<String>), StoreError> {
    let key = inner.full_key(LEASE_KEY);
    match put_lease(&inner, &record, PutMode::Create).await? {
        Ok(etag) => return Ok((record, etag)),
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => {}
        Err(e) => return Err(inner.map_error(&key, &e)),
    }
    let path = ObjectPath::from(key.as_str());
    let found = tokio::time::timeout(inner.request_timeout(), async {
        let result = inner.object_store().get(&path).await?;
        let etag = result.meta.e_tag.clone();
        let bytes = result.bytes().await?;
        Ok::<_, object_store::Error>((bytes, etag))
    })
    .await
    .map_err(|_| inner.timed_out(&key))?
    .map_err(|e| inner.map_error(&key, &e))?;
    let (bytes, etag) = found;
    let theirs = LeaseRecord::decode(&bytes).map_err(|reason| StoreError::Corrupt {
        key: key.clone(),
        reason: format!("{reason}: delete the lease object if no mount uses the store"),
    })?;
    let now = wall_ms();
    if !theirs.expired(now) {
        let left_s = (theirs.renewed_ms + theirs.ttl_ms + CLOCK_SKEW_MARGIN_MS).saturating_sub(now)
            / 1000
            + 1;
        return Err(leased(
            &inner.name,
            &theirs.holder,
            &format!("its lease was renewed {} ms ago; it expires in about {left_s} s if that mount is gone", now.saturating_sub(theirs.renewed_ms)),
        ));
    }
    record.epoch = theirs.epoch + 1;
    record.renewed_ms = now;
    let update = PutMode::Update(UpdateVersion {
        e_tag: etag,
        version: None,
    });
    match put_lease(&inner, &record, update).await? {
        Ok(etag) => {
            tracing::warn!(store = %inner.name, previous = %theirs.holder, "took over the store lease of a holder that stopped renewing it");
            Ok((record, etag))
        }
        Err(
            object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. },
        ) => Err(leased(
            &inner.name,
            "another mount",
            "it took the expired lease over at the same time",
        )),
        Err(e) => Err(inner.map_error(&key, &e)),
    }
}

/// Renews the lease every third of its time to live until another holder
/// took it (or the task is aborted).
async fn renew(remote: RemoteStore, held: Arc<Held>) {
    let inner = &remote.inner;
    loop {
        let (mut record, etag) = held
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        tokio::time::sleep(Duration::from_millis(record.ttl_ms / 3)).await;
        record.renewed_ms = wall_ms();
        let update = PutMode::Update(UpdateVersion {
            e_tag: etag,
            version: None,
        });
        match put_lease(inner, &record, update).await {
            Ok(Ok(etag)) => {
                held.until_ms
                    .store(record.renewed_ms + record.ttl_ms, Ordering::Release);
                *held.last.lock().unwrap_or_else(PoisonError::into_inner) = (record, etag);
            }
            Ok(Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            )) => {
                held.until_ms.store(0, Ordering::Release);
                tracing::error!(store = %inner.name, "lost the store lease: another mount holds it now; this mount deletes nothing from the store any more (unmount it)");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(store = %inner.name, error = %e, "cannot renew the store lease; retrying");
            }
            Err(e) => {
                tracing::warn!(store = %inner.name, error = %e, "cannot renew the store lease; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_roundtrip_and_expire_after_ttl_and_margin() {
        let record = LeaseRecord {
            holder: "host-a pid 7 data /var/lib/dl".into(),
            epoch: 3,
            renewed_ms: 1_000_000,
            ttl_ms: 30_000,
        };
        assert_eq!(LeaseRecord::decode(&record.encode()), Ok(record.clone()));
        assert!(!record.expired(1_000_000 + 30_000 + CLOCK_SKEW_MARGIN_MS));
        assert!(record.expired(1_000_000 + 30_000 + CLOCK_SKEW_MARGIN_MS + 1));
        for bad in [
            &b""[..],
            b"lease\n",
            b"datenlord store lease\nholder=x\nepoch=y\n",
        ] {
            assert!(LeaseRecord::decode(bad).is_err());
        }
    }

    #[test]
    fn a_local_store_is_leased_by_one_process_at_a_time() {
        let control = super::super::ControlPlane::start().expect("control");
        let dir = tempfile::tempdir().expect("store dir");
        let url: super::super::StoreUrl = format!("file://{}", dir.path().display())
            .parse()
            .expect("url");
        let store = RemoteStore::open(&url, &control).expect("store");
        let first = store
            .take_lease("host-a pid 1", Duration::from_secs(1))
            .expect("first");
        assert!(first.held());
        // flock is per open file: a second take in this process conflicts
        // like another process would.
        let err = store
            .take_lease("host-b pid 2", Duration::from_secs(1))
            .expect_err("second")
            .to_string();
        assert!(err.contains("host-a pid 1"), "{err}");
        drop(first);
        store
            .take_lease("host-b pid 2", Duration::from_secs(1))
            .expect("free again");
    }

    #[test]
    fn an_object_lease_refuses_others_until_it_expires_and_is_lost_to_a_takeover() {
        let control = super::super::ControlPlane::start().expect("control");
        let store =
            RemoteStore::open(&super::super::StoreUrl::Memory, &control).expect("memory store");
        let ttl = Duration::from_millis(300);
        let first = store.take_lease("host-a", ttl).expect("first");
        let err = store
            .take_lease("host-b", ttl)
            .expect_err("held")
            .to_string();
        assert!(err.contains("host-a"), "{err}");
        // Renewals keep it held past its time to live.
        std::thread::sleep(Duration::from_millis(700));
        assert!(first.held());
        assert!(store.take_lease("host-b", ttl).is_err());
        // A released lease is free at once.
        first.release();
        let second = store.take_lease("host-b", ttl).expect("after release");
        assert!(second.held());
        // Another holder's takeover (its object written over this one's)
        // is found at the next renewal: the lease is lost.
        let inner = Arc::clone(&store.inner);
        let theirs = LeaseRecord {
            holder: "host-c".into(),
            epoch: 9,
            renewed_ms: wall_ms(),
            ttl_ms: 300,
        };
        futures::executor::block_on(control.run(async move {
            put_lease(&inner, &theirs, PutMode::Overwrite)
                .await?
                .map_err(|e| inner.map_error("lease", &e))
        }))
        .expect("overwrite");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while second.held() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!second.held(), "a lost lease still counted as held");
        // The lost lease is not released over its new holder's.
        second.release();
        let err = store
            .take_lease("host-d", ttl)
            .expect_err("not yet")
            .to_string();
        assert!(err.contains("host-c"), "{err}");
    }
}
