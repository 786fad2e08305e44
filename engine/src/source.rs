//! What lies below a shard's own tiers: one trait for a source of blocks.
//!
//! The chain is memory -> NVMe -> source. The source is the remote object
//! store (`store::StoreSources`, or the in-memory [`MemoryStore`] of tests
//! and benchmarks), or the neighbor tier (cluster) in front of it: other
//! nodes serve their cached blocks, and a block they are asked for comes
//! from the tiers below ([`BlockSource::fetch_for_peer`]).

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::LocalBoxFuture;
use futures::FutureExt;

use crate::block::{BlockId, Ino, ShardId};

/// Why a source could not deliver a block.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The source has no such block.
    #[error("no such block")]
    NotFound,
    /// The source failed; the message names it and the cause.
    #[error("{0}")]
    Failed(String),
}

/// A fetch in progress.
pub type SourceFuture = LocalBoxFuture<'static, Result<Vec<u8>, SourceError>>;

/// What a source says a block version's bytes are, without sending them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// The block's CRC32C and length in the source.
    Known {
        /// CRC32C of the block's valid bytes.
        crc: u32,
        /// Its valid bytes.
        len: u64,
    },
    /// The source holds no such version (deleted since, or written on
    /// another node and not uploaded yet).
    Absent,
}

/// A checksum lookup in progress.
pub type ChecksumFuture = LocalBoxFuture<'static, Result<Checksum, SourceError>>;

/// A source of whole blocks. Instances live on one shard (no `Send`).
pub trait BlockSource {
    /// Fetches the valid bytes of a block (shorter than the block size for a
    /// file's tail).
    fn fetch(&self, id: BlockId) -> SourceFuture;

    /// Fetches a block another node asked this one for: from the tiers
    /// that do not ask other nodes (a source that forwards to neighbors
    /// overrides it), so requests between nodes never loop.
    fn fetch_for_peer(&self, id: BlockId) -> SourceFuture {
        self.fetch(id)
    }

    /// Whether [`Self::fetch`] of `id` may wait on another node's fetches
    /// (it asks another node that may itself ask onwards): then the engine
    /// does not make a peer's request wait on that fetch.
    fn forwards(&self, _id: BlockId) -> bool {
        false
    }

    /// Fetches only `len` bytes at `offset` of a block (fewer at its end),
    /// for a small read of a block the cache will not keep; `None` when
    /// this source has no cheaper way than the whole block (the store:
    /// its objects are checked whole).
    fn fetch_range(&self, _id: BlockId, _offset: u32, _len: u32) -> Option<SourceFuture> {
        None
    }

    /// The checksum of a block as this source holds it (for checking
    /// cached copies, [`crate::verify`]); `None` when this source cannot
    /// tell without sending the block.
    fn checksum(&self, _id: BlockId) -> Option<ChecksumFuture> {
        None
    }
}

/// Tells which version of a block is current: the metadata's block map.
/// Prefetch needs it, since the engine only knows the blocks it was asked for.
pub trait VersionResolver {
    /// Current version of block `index` of `ino`; `None` for a hole or a
    /// block past the end of the file (prefetch stops there).
    fn current_version(&self, ino: Ino, index: u64) -> Option<u64>;
}

/// Makes each shard's source and resolver (they are not `Send`).
pub trait SourceFactory: Send + Sync + 'static {
    /// The source of blocks below the cache for `shard`.
    fn source(&self, shard: ShardId) -> Rc<dyn BlockSource>;
    /// The version resolver for `shard`.
    fn resolver(&self, shard: ShardId) -> Rc<dyn VersionResolver>;
}

/// Blocks kept in process memory: the embedded stand-in for the remote
/// store until it lands, and the source of unit tests and benchmarks. It
/// counts fetches and can delay or fail them, to test single flight and
/// error paths.
#[derive(Debug, Default)]
pub struct MemoryStore {
    blocks: RwLock<HashMap<BlockId, Arc<[u8]>>>,
    current: RwLock<HashMap<(Ino, u64), u64>>,
    fetches: AtomicU64,
    delay_us: AtomicU64,
    failing: std::sync::atomic::AtomicBool,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Stores a block and makes its version the current one.
    pub fn put(&self, id: BlockId, data: Vec<u8>) {
        if let Ok(mut blocks) = self.blocks.write() {
            blocks.insert(id, data.into());
        }
        if let Ok(mut current) = self.current.write() {
            current.insert((id.ino, id.index), id.version);
        }
    }

    /// The stored bytes of a block.
    pub fn get(&self, id: BlockId) -> Option<Arc<[u8]>> {
        self.blocks.read().ok()?.get(&id).cloned()
    }

    /// Fetches served so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Delays every fetch (simulates a remote store's latency).
    pub fn set_delay(&self, delay: Duration) {
        self.delay_us.store(
            u64::try_from(delay.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Makes every fetch fail (simulates an outage).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }
}

/// One shard's view of a [`MemoryStore`].
#[derive(Debug)]
struct MemoryStoreShard(Arc<MemoryStore>);

impl BlockSource for MemoryStoreShard {
    fn fetch(&self, id: BlockId) -> SourceFuture {
        let store = Arc::clone(&self.0);
        async move {
            store.fetches.fetch_add(1, Ordering::Relaxed);
            let delay_us = store.delay_us.load(Ordering::Relaxed);
            if delay_us > 0 {
                glommio::timer::sleep(Duration::from_micros(delay_us)).await;
            }
            if store.failing.load(Ordering::Relaxed) {
                return Err(SourceError::Failed("memory store: injected outage".into()));
            }
            store
                .get(id)
                .map(|d| d.to_vec())
                .ok_or(SourceError::NotFound)
        }
        .boxed_local()
    }

    fn checksum(&self, id: BlockId) -> Option<ChecksumFuture> {
        let store = Arc::clone(&self.0);
        Some(
            async move {
                if store.failing.load(Ordering::Relaxed) {
                    return Err(SourceError::Failed("memory store: injected outage".into()));
                }
                Ok(store.get(id).map_or(Checksum::Absent, |d| Checksum::Known {
                    crc: crc32c::crc32c(&d),
                    len: d.len() as u64,
                }))
            }
            .boxed_local(),
        )
    }
}

impl VersionResolver for MemoryStoreShard {
    fn current_version(&self, ino: Ino, index: u64) -> Option<u64> {
        self.0.current.read().ok()?.get(&(ino, index)).copied()
    }
}

impl SourceFactory for Arc<MemoryStore> {
    fn source(&self, _shard: ShardId) -> Rc<dyn BlockSource> {
        Rc::new(MemoryStoreShard(Arc::clone(self)))
    }
    fn resolver(&self, _shard: ShardId) -> Rc<dyn VersionResolver> {
        Rc::new(MemoryStoreShard(Arc::clone(self)))
    }
}
