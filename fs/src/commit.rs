//! Close publishes, the commit makes durable (ext4's `data=ordered`).
//!
//! A `close` (`FUSE_FLUSH`) of a written file does not flush it: the file's
//! unflushed writes stay in its dirty state, where every reader of this
//! mount already sees them, and the file joins the [`CommitQueue`]. A
//! commit thread takes the whole queue every commit interval (sooner when
//! the published bytes pass [`PUBLISHED_BYTES_KICK`], or when asked by a
//! sync) and commits it as one group (`Fs::commit_group`): every file's
//! blocks go to the journal in one append and one fdatasync, and only then
//! are the `SetBlocks` commands written to the metadata log, which is
//! synced once at the end of the group. So metadata naming a block version
//! reaches the disk only after that version's data, whichever of the two
//! syncs a crash interrupts.
//!
//! This module is the queue's bookkeeping (sans IO) and the thread that
//! drives it; the group commit itself is `Fs`'s.

use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use datenlord_cluster::meta::Ino;

use crate::error::{FsError, Result};

/// Longest commit interval `--commit-interval` accepts.
pub const COMMIT_INTERVAL_MS_MAX: u64 = 60_000;
/// Default commit interval: the window of loss of a closed file that
/// nobody synced (ext4 commits every 5 s).
pub const COMMIT_INTERVAL_MS_DEFAULT: u64 = 50;
/// Published bytes that start a commit before the interval ends.
pub const PUBLISHED_BYTES_KICK: u64 = 64 << 20;
/// Published bytes past which a close commits its own file (the closer
/// waits, as before this change): a bound on the memory published files
/// hold when the commit cannot keep up.
pub const PUBLISHED_BYTES_MAX: u64 = 256 << 20;

/// What a close should do once its file is published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Queued; the commit thread takes it within the interval.
    Queued,
    /// Queued, and the commit thread should start now.
    Kick,
    /// Too many bytes wait: the closer commits its file itself.
    CommitNow,
}

/// Files published since the last commit took the queue (sans IO).
#[derive(Debug, Default)]
pub(crate) struct CommitQueue {
    inos: BTreeSet<Ino>,
    /// Unflushed bytes of the queued files when they were published.
    bytes: u64,
    stop: bool,
}

impl CommitQueue {
    /// Adds `ino`, which holds `bytes` unflushed bytes.
    pub(crate) fn publish(&mut self, ino: Ino, bytes: u64) -> Admission {
        if self.bytes >= PUBLISHED_BYTES_MAX {
            return Admission::CommitNow;
        }
        if self.inos.insert(ino) {
            self.bytes = self.bytes.saturating_add(bytes);
        }
        if self.bytes >= PUBLISHED_BYTES_KICK {
            Admission::Kick
        } else {
            Admission::Queued
        }
    }

    /// Takes every queued file (in inode order: the group locks them in
    /// that order).
    pub(crate) fn take(&mut self) -> Vec<Ino> {
        self.bytes = 0;
        std::mem::take(&mut self.inos).into_iter().collect()
    }

    /// Whether the thread should commit before the interval ends.
    pub(crate) fn urgent(&self) -> bool {
        self.stop || self.bytes >= PUBLISHED_BYTES_KICK
    }
}

/// The queue and the thread that commits it.
pub(crate) struct Committer {
    shared: Arc<(Mutex<CommitQueue>, Condvar)>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn lock(queue: &Mutex<CommitQueue>) -> MutexGuard<'_, CommitQueue> {
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Committer {
    /// Starts the thread: every `interval` (or when the queue is urgent)
    /// it takes the queue and hands it to `commit`, which commits the
    /// files as one group and syncs the metadata log (also when the queue
    /// is empty: metadata-only changes are bounded by the interval too).
    /// `commit` returns `false` once the file system is gone.
    pub(crate) fn start(
        interval: Duration,
        commit: impl Fn(Vec<Ino>) -> bool + Send + 'static,
    ) -> Result<Self> {
        let shared: Arc<(Mutex<CommitQueue>, Condvar)> = Arc::default();
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("dl-commit".into())
            .spawn(move || {
                let (queue, wake) = &*theirs;
                loop {
                    let deadline = Instant::now() + interval;
                    let (inos, stop) = {
                        let mut q = lock(queue);
                        while !q.urgent() {
                            let left = deadline.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                break;
                            }
                            q = wake
                                .wait_timeout(q, left)
                                .unwrap_or_else(PoisonError::into_inner)
                                .0;
                        }
                        (q.take(), q.stop)
                    };
                    let alive = commit(inos);
                    if stop || !alive {
                        return;
                    }
                }
            })
            .map_err(|e| FsError::Config(format!("cannot start the commit thread: {e}")))?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Publishes `ino` (holding `bytes` unflushed bytes).
    pub(crate) fn publish(&self, ino: Ino, bytes: u64) -> Admission {
        let (queue, wake) = &*self.shared;
        let admission = lock(queue).publish(ino, bytes);
        if admission == Admission::Kick {
            wake.notify_all();
        }
        admission
    }

    /// Commits what is queued one last time and ends the thread.
    pub(crate) fn stop(&self) {
        let (queue, wake) = &*self.shared;
        lock(queue).stop = true;
        wake.notify_all();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            // The thread may drop the last reference to the file system.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_kicks_and_refuses_past_its_byte_bounds() {
        let mut q = CommitQueue::default();
        assert_eq!(q.publish(Ino(5), 4096), Admission::Queued);
        assert_eq!(q.publish(Ino(3), 4096), Admission::Queued);
        // Publishing a queued file again counts its bytes once.
        assert_eq!(q.publish(Ino(5), 4096), Admission::Queued);
        assert!(!q.urgent());
        assert_eq!(q.take(), vec![Ino(3), Ino(5)]);
        assert!(q.take().is_empty());
        assert_eq!(q.publish(Ino(7), PUBLISHED_BYTES_KICK), Admission::Kick);
        assert!(q.urgent());
        assert_eq!(q.publish(Ino(8), PUBLISHED_BYTES_MAX), Admission::Kick);
        assert_eq!(q.publish(Ino(9), 1), Admission::CommitNow);
        assert_eq!(q.take(), vec![Ino(7), Ino(8)]);
        assert_eq!(q.publish(Ino(9), 1), Admission::Queued);
    }

    #[test]
    fn the_thread_commits_when_kicked_and_once_more_at_stop() {
        let (seen_tx, seen) = std::sync::mpsc::channel::<Vec<Ino>>();
        // The interval is an hour: only a kick or the stop makes a group.
        let committer = Committer::start(Duration::from_secs(3600), move |inos| {
            let _ = seen_tx.send(inos);
            true
        })
        .expect("thread");
        assert_eq!(committer.publish(Ino(2), 10), Admission::Queued);
        assert_eq!(
            committer.publish(Ino(4), PUBLISHED_BYTES_KICK),
            Admission::Kick
        );
        let kicked = seen
            .recv_timeout(Duration::from_secs(10))
            .expect("a kicked group");
        assert_eq!(kicked, vec![Ino(2), Ino(4)]);
        assert_eq!(committer.publish(Ino(6), 10), Admission::Queued);
        committer.stop();
        assert_eq!(seen.try_iter().last(), Some(vec![Ino(6)]));
    }

    #[test]
    fn the_thread_commits_every_interval() {
        let (seen_tx, seen) = std::sync::mpsc::channel::<Vec<Ino>>();
        let committer = Committer::start(Duration::from_millis(5), move |inos| {
            let _ = seen_tx.send(inos);
            true
        })
        .expect("thread");
        committer.publish(Ino(9), 1);
        // Empty groups come too (they sync the metadata log); wait for ours.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut found = false;
        while !found && Instant::now() < deadline {
            if let Ok(group) = seen.recv_timeout(Duration::from_millis(100)) {
                found = group == vec![Ino(9)];
            }
        }
        committer.stop();
        assert!(found, "the interval never committed the published file");
    }
}
