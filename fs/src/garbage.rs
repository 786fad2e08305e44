//! Hands the block versions that commands orphaned to the sink, in batches
//! and off the request path, each batch only after the metadata log is
//! durable: the embedded group writes its log behind (`LogSync::Deferred`),
//! and a crash must never bring back a block map that names a version
//! already queued for deletion. One log sync and one `collect` (itself an
//! fsynced append to the GC queue) then serve many unlinks, truncates and
//! overwrites instead of one each.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use datenlord_engine::BlockId;
use futures::channel::oneshot;
use futures::executor::block_on;
use tracing::warn;

use crate::error::{FsError, Result};
use crate::meta::MetaLink;
use crate::sink::BlockSink;

/// How long the first garbage of a batch waits for more.
pub const GARBAGE_BATCH_MS: u64 = 20;
/// Most versions in one batch.
const GARBAGE_BATCH_MAX: usize = 65_536;

enum Message {
    Garbage(Vec<BlockId>),
    /// Answered once everything queued before it is handed over.
    Settle(oneshot::Sender<()>),
}

/// The hand-off thread and its queue.
pub(crate) struct GarbageHandoff {
    queue: mpsc::Sender<Message>,
    thread: JoinHandle<()>,
}

impl GarbageHandoff {
    pub(crate) fn start(meta: MetaLink, sink: Arc<dyn BlockSink>) -> Result<Self> {
        let (queue, messages) = mpsc::channel::<Message>();
        let thread = std::thread::Builder::new()
            .name("dl-garbage".into())
            .spawn(move || run(&meta, sink.as_ref(), &messages))
            .map_err(|e| FsError::Config(format!("cannot start the garbage thread: {e}")))?;
        Ok(Self { queue, thread })
    }

    /// Queues versions the metadata no longer names.
    pub(crate) fn submit(&self, garbage: Vec<BlockId>) {
        if !garbage.is_empty() && self.queue.send(Message::Garbage(garbage)).is_err() {
            warn!("the garbage thread stopped; versions left for the orphan scrub");
        }
    }

    /// A future that completes once everything queued so far is handed to
    /// the sink (or given up on after a failed log sync).
    pub(crate) fn settle(&self) -> oneshot::Receiver<()> {
        let (done, settled) = oneshot::channel();
        let _ = self.queue.send(Message::Settle(done));
        settled
    }

    /// Hands over what is queued, then stops the thread.
    pub(crate) fn stop(self) {
        drop(self.queue);
        let _ = self.thread.join();
    }
}

fn run(meta: &MetaLink, sink: &dyn BlockSink, messages: &mpsc::Receiver<Message>) {
    let mut open = true;
    while open {
        let Ok(first) = messages.recv() else { return };
        let mut batch = Vec::new();
        let mut settled = Vec::new();
        let mut next = Some(first);
        let deadline = Instant::now() + Duration::from_millis(GARBAGE_BATCH_MS);
        while let Some(message) = next.take() {
            match message {
                Message::Garbage(ids) => batch.extend(ids),
                Message::Settle(done) => settled.push(done),
            }
            // Gather until the window closes, the batch is full, or someone
            // waits for it (`settle`).
            if !settled.is_empty() || batch.len() >= GARBAGE_BATCH_MAX {
                break;
            }
            match messages.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(message) => next = Some(message),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
            }
        }
        hand_over(meta, sink, batch);
        for done in settled {
            let _ = done.send(());
        }
    }
}

/// Makes the metadata log durable, then gives `batch` to the sink. If the
/// log cannot be synced the versions stay where they are: the orphan scrub
/// finds them once no durable map names them.
fn hand_over(meta: &MetaLink, sink: &dyn BlockSink, batch: Vec<BlockId>) {
    if batch.is_empty() {
        return;
    }
    match block_on(meta.sync()) {
        Ok(()) => sink.collect(batch),
        Err(e) => warn!(
            versions = batch.len(),
            error = %e,
            "the metadata log could not be synced; orphaned versions are left for the orphan scrub"
        ),
    }
}
