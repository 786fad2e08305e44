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
use futures::channel::oneshot;

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

/// Shortest bound on the commit's lag (see [`lag_max`]).
pub const COMMIT_LAG_MS_MIN: u64 = 1_000;
/// The lag bound in commit intervals (see [`lag_max`]).
pub const COMMIT_LAG_INTERVALS: u32 = 4;

/// How old the oldest close not yet committed may be before closes wait
/// for the commit: `COMMIT_LAG_INTERVALS` intervals, at least
/// `COMMIT_LAG_MS_MIN`. On a loaded machine (a slow fdatasync, a busy
/// Raft round) the commit falls behind its interval; this bounds the
/// window of loss of a crash whatever the load, as ext4 throttles writers
/// once its journal lags.
pub fn lag_max(interval: Duration) -> Duration {
    (interval * COMMIT_LAG_INTERVALS).max(Duration::from_millis(COMMIT_LAG_MS_MIN))
}

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

/// What the commit looks like from outside (for `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Age of the oldest close not yet committed (zero when none waits).
    pub lag: Duration,
    /// Group commits done.
    pub groups: u64,
    /// Closes that waited because the commit lagged more than its bound.
    pub closes_waited: u64,
}

/// Files published since the last commit took the queue, and the groups
/// taken and done (sans IO: callers pass the time).
#[derive(Debug)]
pub(crate) struct CommitQueue {
    inos: BTreeSet<Ino>,
    /// Unflushed bytes of the queued files when they were published.
    bytes: u64,
    stop: bool,
    lag_max: Duration,
    /// When the oldest queued publication happened.
    oldest: Option<Instant>,
    /// The oldest publication of the group being committed.
    in_flight: Option<Instant>,
    /// Groups taken by the thread, and groups it finished.
    taken: u64,
    done: u64,
    /// Closes waiting for group number `.0` to finish.
    waiters: Vec<(u64, oneshot::Sender<()>)>,
    closes_waited: u64,
}

impl CommitQueue {
    pub(crate) fn new(lag_max: Duration) -> Self {
        Self {
            inos: BTreeSet::new(),
            bytes: 0,
            stop: false,
            lag_max,
            oldest: None,
            in_flight: None,
            taken: 0,
            done: 0,
            waiters: Vec::new(),
            closes_waited: 0,
        }
    }

    /// Adds `ino`, which holds `bytes` unflushed bytes, published `now`.
    pub(crate) fn publish(&mut self, ino: Ino, bytes: u64, now: Instant) -> Admission {
        if self.bytes >= PUBLISHED_BYTES_MAX {
            return Admission::CommitNow;
        }
        if self.inos.insert(ino) {
            self.bytes = self.bytes.saturating_add(bytes);
        }
        self.oldest.get_or_insert(now);
        if self.bytes >= PUBLISHED_BYTES_KICK {
            Admission::Kick
        } else {
            Admission::Queued
        }
    }

    /// Age of the oldest close not yet committed, at `now`.
    pub(crate) fn lag(&self, now: Instant) -> Duration {
        [self.in_flight, self.oldest]
            .into_iter()
            .flatten()
            .min()
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }

    /// A close at `now`: the group it must wait for when the commit lags
    /// more than its bound (the group that takes what is queued now, or
    /// the one in flight when nothing is queued), `None` otherwise.
    pub(crate) fn closing(&mut self, now: Instant) -> Option<u64> {
        if self.stop || self.lag(now) <= self.lag_max {
            return None;
        }
        self.closes_waited += 1;
        Some(if self.oldest.is_some() {
            self.taken + 1
        } else {
            self.taken
        })
    }

    /// Registers a close waiting for group `group`; `None` if it is done.
    pub(crate) fn wait_for(&mut self, group: u64) -> Option<oneshot::Receiver<()>> {
        if self.done >= group {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push((group, tx));
        Some(rx)
    }

    /// Takes every queued file (in inode order: the group locks them in
    /// that order) as the next group.
    pub(crate) fn take(&mut self) -> Vec<Ino> {
        self.bytes = 0;
        self.taken += 1;
        self.in_flight = self.oldest.take();
        std::mem::take(&mut self.inos).into_iter().collect()
    }

    /// The group taken last is committed: the closes waiting for it (or
    /// an earlier one) go on.
    pub(crate) fn finish(&mut self) {
        self.done = self.taken;
        self.in_flight = None;
        let done = self.done;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|(group, _)| *group <= done);
        self.waiters = waiting;
        for (_, tx) in ready {
            // A close that gave up waiting dropped its receiver.
            let _ = tx.send(());
        }
    }

    /// Whether the thread should commit before the interval ends.
    pub(crate) fn urgent(&self) -> bool {
        self.stop || self.bytes >= PUBLISHED_BYTES_KICK || !self.waiters.is_empty()
    }

    fn stats(&self, now: Instant) -> CommitStats {
        CommitStats {
            lag: self.lag(now),
            groups: self.done,
            closes_waited: self.closes_waited,
        }
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
        let shared = Arc::new((
            Mutex::new(CommitQueue::new(lag_max(interval))),
            Condvar::new(),
        ));
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
                    let mut q = lock(queue);
                    q.finish();
                    if stop || !alive {
                        // Nobody commits any more: no close may wait.
                        q.stop = true;
                        q.waiters.clear();
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
        let admission = lock(queue).publish(ino, bytes, Instant::now());
        if admission == Admission::Kick {
            wake.notify_all();
        }
        admission
    }

    /// A close: returns at once unless the commit lags more than its
    /// bound ([`lag_max`]); then it starts the commit and waits until
    /// every close before this one is committed.
    pub(crate) async fn throttle(&self) {
        let (queue, wake) = &*self.shared;
        let waiting = {
            let mut q = lock(queue);
            q.closing(Instant::now())
                .and_then(|group| q.wait_for(group))
        };
        if let Some(done) = waiting {
            wake.notify_all();
            // An error: the thread ended, after its last commit.
            let _ = done.await;
        }
    }

    /// The commit's lag and counters.
    pub fn stats(&self) -> CommitStats {
        lock(&self.shared.0).stats(Instant::now())
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
        let mut q = CommitQueue::new(Duration::from_secs(1));
        let t = Instant::now();
        assert_eq!(q.publish(Ino(5), 4096, t), Admission::Queued);
        assert_eq!(q.publish(Ino(3), 4096, t), Admission::Queued);
        // Publishing a queued file again counts its bytes once.
        assert_eq!(q.publish(Ino(5), 4096, t), Admission::Queued);
        assert!(!q.urgent());
        assert_eq!(q.take(), vec![Ino(3), Ino(5)]);
        assert!(q.take().is_empty());
        assert_eq!(q.publish(Ino(7), PUBLISHED_BYTES_KICK, t), Admission::Kick);
        assert!(q.urgent());
        assert_eq!(q.publish(Ino(8), PUBLISHED_BYTES_MAX, t), Admission::Kick);
        assert_eq!(q.publish(Ino(9), 1, t), Admission::CommitNow);
        assert_eq!(q.take(), vec![Ino(7), Ino(8)]);
        assert_eq!(q.publish(Ino(9), 1, t), Admission::Queued);
    }

    #[test]
    fn closes_wait_only_when_the_commit_lags_past_its_bound() {
        let bound = Duration::from_secs(1);
        let mut q = CommitQueue::new(bound);
        let t = Instant::now();
        let at = |ms| t + Duration::from_millis(ms);
        assert_eq!(q.lag(t), Duration::ZERO);
        assert_eq!(q.closing(at(5_000)), None, "nothing waits: no lag");
        q.publish(Ino(1), 10, t);
        q.publish(Ino(2), 10, at(600));
        assert_eq!(q.lag(at(900)), Duration::from_millis(900));
        assert_eq!(q.closing(at(900)), None);
        // The thread takes group 1; it is slow.
        assert_eq!(q.take(), vec![Ino(1), Ino(2)]);
        q.publish(Ino(3), 10, at(1_100));
        // The oldest close (group 1, in flight) is 1.2 s old: wait for the
        // group that takes what is queued now.
        assert_eq!(q.closing(at(1_200)), Some(2));
        let mut waiting = q.wait_for(2).expect("group 2 not done");
        assert!(q.urgent(), "a waiting close starts the commit");
        q.finish();
        assert_eq!(waiting.try_recv(), Ok(None), "group 1 only");
        assert_eq!(q.lag(at(1_200)), Duration::from_millis(100));
        assert_eq!(q.take(), vec![Ino(3)]);
        // Nothing queued, group 2 in flight and late: wait for it.
        assert_eq!(q.closing(at(2_500)), Some(2));
        q.finish();
        assert_eq!(waiting.try_recv(), Ok(Some(())));
        assert!(q.wait_for(2).is_none(), "done already");
        assert!(!q.urgent());
        let stats = q.stats(at(3_000));
        assert_eq!(
            (stats.lag, stats.groups, stats.closes_waited),
            (Duration::ZERO, 2, 2)
        );
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
