//! The store as the engine's source of blocks: the journal first (blocks
//! not yet uploaded), then the store.

use std::rc::Rc;
use std::sync::Arc;

use futures::FutureExt;

use super::remote::RemoteStore;
use super::writeback::WriteBack;
use super::StoreError;
use crate::block::{BlockId, Ino, ShardId};
use crate::source::{
    BlockSource, Checksum, ChecksumFuture, SourceError, SourceFactory, SourceFuture,
    VersionResolver,
};

/// The current version of a block (the metadata's block map).
pub type ResolveFn = Arc<dyn Fn(Ino, u64) -> Option<u64> + Send + Sync>;

/// Makes each shard's view of the store.
#[derive(Clone)]
pub struct StoreSources {
    remote: RemoteStore,
    writeback: Option<WriteBack>,
    resolver: ResolveFn,
}

impl std::fmt::Debug for StoreSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSources")
            .field("store", &self.remote.name())
            .field("writeback", &self.writeback.is_some())
            .finish_non_exhaustive()
    }
}

impl StoreSources {
    /// Sources reading `remote`, after `writeback`'s journal when given.
    pub fn new(remote: RemoteStore, writeback: Option<WriteBack>, resolver: ResolveFn) -> Self {
        Self {
            remote,
            writeback,
            resolver,
        }
    }
}

struct StoreSource {
    remote: RemoteStore,
    writeback: Option<WriteBack>,
}

struct FnResolver(ResolveFn);

impl VersionResolver for FnResolver {
    fn current_version(&self, ino: Ino, index: u64) -> Option<u64> {
        (self.0)(ino, index)
    }
}

/// The block from the write-back journal, if it holds it. Most misses are
/// not in the journal: its index answers without IO, and only a
/// journaled block costs a blocking-pool hop.
async fn journaled(
    writeback: Option<WriteBack>,
    handle: &tokio::runtime::Handle,
    id: BlockId,
) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(writeback) = writeback.filter(|w| w.journal_holds(id)) else {
        return Ok(None);
    };
    handle
        .spawn_blocking(move || writeback.journal_get(id))
        .await
        .map_err(|_| StoreError::ShutDown)
}

impl BlockSource for StoreSource {
    fn fetch(&self, id: BlockId) -> SourceFuture {
        let inner = Arc::clone(&self.remote.inner);
        let writeback = self.writeback.clone();
        let handle = self.remote.control().handle().clone();
        let fetch = self.remote.control().run(async move {
            if let Some(data) = journaled(writeback, &handle, id).await? {
                return Ok(data);
            }
            inner.get_block(id).await
        });
        async move {
            fetch.await.map_err(|e| match e {
                StoreError::NotFound { .. } => SourceError::NotFound,
                other => SourceError::Failed(other.to_string()),
            })
        }
        .boxed_local()
    }

    fn checksum(&self, id: BlockId) -> Option<ChecksumFuture> {
        Some(self.lookup_checksum(id))
    }
}

impl StoreSource {
    /// What the journal or the store holds of a block version.
    fn lookup_checksum(&self, id: BlockId) -> ChecksumFuture {
        let inner = Arc::clone(&self.remote.inner);
        let writeback = self.writeback.clone();
        let handle = self.remote.control().handle().clone();
        let lookup = self.remote.control().run(async move {
            if let Some(data) = journaled(writeback, &handle, id).await? {
                return Ok(Some((crc32c::crc32c(&data), data.len() as u64)));
            }
            inner.block_checksum(id).await
        });
        async move {
            match lookup.await {
                Ok(Some((crc, len))) => Ok(Checksum::Known { crc, len }),
                Ok(None) => Ok(Checksum::Absent),
                Err(e) => Err(SourceError::Failed(e.to_string())),
            }
        }
        .boxed_local()
    }
}

impl SourceFactory for StoreSources {
    fn source(&self, _shard: ShardId) -> Rc<dyn BlockSource> {
        Rc::new(StoreSource {
            remote: self.remote.clone(),
            writeback: self.writeback.clone(),
        })
    }

    fn resolver(&self, _shard: ShardId) -> Rc<dyn VersionResolver> {
        Rc::new(FnResolver(Arc::clone(&self.resolver)))
    }
}
