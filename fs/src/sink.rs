//! Where flushed blocks go to become durable: the write-back journal and
//! remote store in production (adapted by the binary), a [`MemoryStore`] in
//! tests.

use std::sync::{Arc, Mutex};

use datenlord_engine::{BlockId, MemoryStore};
use futures::future::BoxFuture;
use futures::FutureExt;

/// Why blocks could not be made durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    /// errno for the caller (usually `EIO`, `ENOSPC` when the store is full).
    pub errno: i32,
    /// What failed, and what to do.
    pub message: String,
}

impl SinkError {
    /// An `EIO` with a message.
    pub fn io(message: impl Into<String>) -> Self {
        Self {
            errno: libc::EIO,
            message: message.into(),
        }
    }
}

/// The durable destination of flushed blocks.
pub trait BlockSink: Send + Sync {
    /// Makes `blocks` durable; the future completes when they are.
    fn commit(&self, blocks: Vec<(BlockId, Vec<u8>)>) -> BoxFuture<'static, Result<(), SinkError>>;
    /// Block versions no file refers to any more: they may be deleted.
    fn collect(&self, garbage: Vec<BlockId>);
}

/// A sink that keeps blocks in a [`MemoryStore`] (the engine's source in
/// tests and the embedded demo) and records what was collected.
#[derive(Debug)]
pub struct MemorySink {
    store: Arc<MemoryStore>,
    collected: Mutex<Vec<BlockId>>,
}

impl MemorySink {
    /// A sink writing into `store`.
    pub fn new(store: Arc<MemoryStore>) -> Arc<Self> {
        Arc::new(Self {
            store,
            collected: Mutex::new(Vec::new()),
        })
    }

    /// Versions collected so far.
    pub fn collected(&self) -> Vec<BlockId> {
        self.collected.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl BlockSink for MemorySink {
    fn commit(&self, blocks: Vec<(BlockId, Vec<u8>)>) -> BoxFuture<'static, Result<(), SinkError>> {
        for (id, data) in blocks {
            self.store.put(id, data);
        }
        futures::future::ready(Ok(())).boxed()
    }

    fn collect(&self, garbage: Vec<BlockId>) {
        if let Ok(mut collected) = self.collected.lock() {
            collected.extend(garbage);
        }
    }
}
