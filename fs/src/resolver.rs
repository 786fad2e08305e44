//! [`BlockMapResolver`]: the engine's `VersionResolver` (which version of a
//! block prefetch should fetch) answered from the metadata's block map in
//! the node's local copy.

use datenlord_cluster::meta::Ino;
use datenlord_engine::VersionResolver;

use crate::meta::MetaLink;

/// Resolves current block versions from the local metadata copy. Give one
/// to each shard from the engine's `SourceFactory::resolver`.
#[derive(Clone, Debug)]
pub struct BlockMapResolver {
    meta: MetaLink,
}

impl BlockMapResolver {
    /// A resolver reading `meta`'s local copy.
    pub fn new(meta: MetaLink) -> Self {
        Self { meta }
    }
}

impl VersionResolver for BlockMapResolver {
    fn current_version(&self, ino: datenlord_engine::Ino, index: u64) -> Option<u64> {
        let version = self.meta.read(|s| s.block_version(Ino(ino.0), index))?;
        // Past the end of the file is a hole for prefetch too.
        let size = self.meta.read(|s| s.getattr(Ino(ino.0))).ok()?.size;
        let block_size = u64::from(self.meta.read(|s| s.volume().map(|v| v.block_size))?);
        (index.saturating_mul(block_size) < size).then_some(version)
    }
}
