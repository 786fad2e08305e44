//! Access times written behind reads: a read that is due for an atime
//! update (relatime) hands the inode to this writer and returns at once;
//! the writer commits the updates in batches, all proposals of a batch in
//! flight together so the metadata log commits them with one fsync. An
//! atime is advisory: when the queue is full an update is skipped (the
//! next read of the file asks again).

use std::collections::BTreeSet;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Mutex;
use std::thread::JoinHandle;

use datenlord_cluster::meta::{AttrChanges, Command, Creds, Ino, SetTime};
use futures::executor::block_on;
use tracing::debug;

use crate::fs::now;
use crate::meta::MetaLink;

/// Inodes waiting for an atime update before reads skip theirs.
pub const ATIME_QUEUE_DEPTH: usize = 4096;
/// Updates committed together at most.
const ATIME_BATCH_MAX: usize = 256;

#[derive(Debug)]
enum Message {
    Touch(Ino),
    Stop,
}

/// The background writer of access times.
#[derive(Debug)]
pub(crate) struct AtimeWriter {
    queue: SyncSender<Message>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl AtimeWriter {
    pub(crate) fn start(meta: MetaLink) -> std::io::Result<Self> {
        let (queue, inbox) = mpsc::sync_channel(ATIME_QUEUE_DEPTH);
        let thread = std::thread::Builder::new()
            .name("dl-atime".into())
            .spawn(move || run(&meta, &inbox))?;
        Ok(Self {
            queue,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Asks for `ino`'s atime to become the current time (never waits).
    pub(crate) fn touch(&self, ino: Ino) {
        match self.queue.try_send(Message::Touch(ino)) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => debug!(%ino, "atime queue full; update skipped"),
        }
    }

    /// Commits what is queued, then stops the writer.
    pub(crate) fn stop(&self) {
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = self.queue.send(Message::Stop);
            let _ = thread.join();
        }
    }
}

impl Drop for AtimeWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(meta: &MetaLink, inbox: &Receiver<Message>) {
    let mut stopping = false;
    while !stopping {
        let Ok(Message::Touch(first)) = inbox.recv() else {
            return;
        };
        let mut batch = BTreeSet::from([first]);
        while batch.len() < ATIME_BATCH_MAX {
            match inbox.try_recv() {
                Ok(Message::Touch(ino)) => {
                    batch.insert(ino);
                }
                Ok(Message::Stop) => {
                    stopping = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let now = now();
        let commands: Vec<Command> = batch
            .into_iter()
            .map(|ino| Command::SetAttr {
                ino,
                changes: AttrChanges {
                    atime: Some(SetTime::Now),
                    ..AttrChanges::default()
                },
                via_handle: false,
                // The file system updates atime on the reader's behalf: a
                // reader needs no write permission for it.
                creds: Creds::root(),
                now,
            })
            .collect();
        let results = block_on(futures::future::join_all(
            commands.iter().map(|c| meta.apply(c)),
        ));
        for (command, result) in commands.iter().zip(results) {
            if let (Command::SetAttr { ino, .. }, Err(e)) = (command, result) {
                // The file may be gone meanwhile: nothing to do.
                debug!(%ino, error = %e, "atime update failed");
            }
        }
    }
}
