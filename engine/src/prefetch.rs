//! Sequential stream detection and the per-shard prefetch queue.
//!
//! [`StreamTable`] watches block accesses per inode and decides, for each
//! one, whether it continues a sequential stream ([`AccessKind`] for the
//! eviction policy) and which blocks to read ahead. [`PrefetchQueue`] holds
//! the read-ahead blocks until the driver has IO depth to spare. Both are
//! sans-IO: time is a virtual tick passed in by the caller, and the driver
//! does the reads.
//!
//! Read-ahead ramps up like Linux's: the first sequential hit looks 1 block
//! ahead (with the default config), and every further hit doubles the
//! lookahead up to `window_blocks_max`. Once ramped up, each sequential
//! block read issues about one new prefetch, keeping `window_blocks_max`
//! blocks in flight ahead of the reader.

use crate::eviction::AccessKind;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::BuildHasherDefault;
use std::ops::Range;

/// Largest accepted `window_blocks_max`: 1 GiB of lookahead per stream
/// with 1 MiB blocks.
pub const WINDOW_BLOCKS_CEILING: u32 = 1024;
/// Largest accepted `streams_max` per shard: the stream table is scanned
/// linearly when full, so it must stay small.
pub const STREAMS_CEILING: usize = 4096;
/// Largest accepted `queue_blocks_max` per shard: push deduplicates by a
/// linear scan of the queue, so it must stay small.
pub const QUEUE_BLOCKS_CEILING: usize = 65_536;

/// The empty prefetch range returned when nothing is to be read ahead.
const NO_PREFETCH: Range<u64> = 0..0;

/// Read-ahead limits of one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefetchConfig {
    /// Lookahead of a stream's first sequential hit, in blocks (>= 1).
    pub window_blocks_initial: u32,
    /// Lookahead a stream ramps up to, in blocks (>= initial).
    pub window_blocks_max: u32,
    /// Streams tracked at once; the least recently used one is dropped to
    /// make room (>= 1).
    pub streams_max: usize,
    /// Ticks without access after which [`StreamTable::expire`] drops a
    /// stream.
    pub stream_idle_ticks: u64,
    /// Prefetches queued at once; further ones are dropped (>= 1).
    pub queue_blocks_max: usize,
    /// A read of the stream's last block within this many ticks of the
    /// previous one is a *repeat* (the kernel splitting one read of a block
    /// into several requests), not a new access.
    pub repeat_window_ticks: u64,
}

impl Default for PrefetchConfig {
    /// Initial window 1 block (a lone pair of adjacent reads costs at most
    /// one wasted block), max 32 blocks (32 MiB ahead with 1 MiB blocks,
    /// enough to hide backend latency for one reader), 64 streams (more
    /// concurrent sequential readers than one core can serve well), 1000
    /// idle ticks, a queue of 256 blocks (8 full windows), and 10 ticks
    /// for repeats (the engine ticks in milliseconds).
    fn default() -> Self {
        Self {
            window_blocks_initial: 1,
            window_blocks_max: 32,
            streams_max: 64,
            stream_idle_ticks: 1000,
            queue_blocks_max: 256,
            repeat_window_ticks: 10,
        }
    }
}

impl PrefetchConfig {
    /// Checks the bounds documented on each field and the `*_CEILING`
    /// constants.
    ///
    /// # Errors
    /// The first violated bound, as a message for the user.
    pub fn validate(&self) -> Result<(), InvalidPrefetchConfig> {
        let reason = if self.window_blocks_initial == 0 {
            "window_blocks_initial must be at least 1"
        } else if self.window_blocks_max < self.window_blocks_initial {
            "window_blocks_max must be at least window_blocks_initial"
        } else if self.window_blocks_max > WINDOW_BLOCKS_CEILING {
            "window_blocks_max exceeds WINDOW_BLOCKS_CEILING (1024)"
        } else if self.streams_max == 0 || self.streams_max > STREAMS_CEILING {
            "streams_max must be in 1..=4096"
        } else if self.queue_blocks_max == 0 || self.queue_blocks_max > QUEUE_BLOCKS_CEILING {
            "queue_blocks_max must be in 1..=65536"
        } else {
            return Ok(());
        };
        Err(InvalidPrefetchConfig { reason })
    }
}

/// Why a [`PrefetchConfig`] was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidPrefetchConfig {
    reason: &'static str,
}

impl fmt::Display for InvalidPrefetchConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid prefetch config: {}", self.reason)
    }
}

impl std::error::Error for InvalidPrefetchConfig {}

/// Identifies one detected stream so its queued prefetches can be cancelled.
///
/// Unique within one [`StreamTable`]: ids are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamId(pub u64);

/// What [`StreamTable::on_access`] decided about one access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// How the eviction policy should treat the block.
    pub kind: AccessKind,
    /// The stream the access belongs to; tag its prefetches with it.
    pub stream: StreamId,
    /// Block indices to prefetch now, never issued before for `stream`;
    /// empty when none.
    pub prefetch: Range<u64>,
    /// A stream that ended with this access (replaced by a random jump, or
    /// dropped to make room): cancel its queued prefetches. Only reported
    /// for streams that issued prefetches, since no other can have any.
    pub cancelled: Option<StreamId>,
    /// The same block as the stream's previous access (a small read inside
    /// a block already read): admission should not count it again.
    pub repeat: bool,
}

/// Per-inode stream state.
#[derive(Clone, Copy, Debug)]
struct Stream {
    id: StreamId,
    /// Kind of the last access that moved the stream.
    kind: AccessKind,
    index_last: u64,
    /// Lookahead of the next sequential hit.
    window_blocks: u32,
    /// Exclusive end of the indices issued under `id`.
    issued_until: u64,
    /// Whether `id` ever issued a prefetch (so may have queued entries).
    issued_any: bool,
    tick_last: u64,
    /// Value of `StreamTable::access_count` at the last access: a total
    /// order for least-recently-used eviction, with no ties.
    access_seq_last: u64,
}

/// Deterministic hasher: iteration order must not depend on a per-process
/// random seed, so simulator runs replay. Inode numbers come from our own
/// metadata service, not from an adversary, so `HashDoS` is not a concern.
type InoHasher = BuildHasherDefault<DefaultHasher>;

/// Sequential stream detector for the inodes of one shard.
#[derive(Clone, Debug)]
pub struct StreamTable {
    config: PrefetchConfig,
    /// At most `config.streams_max` streams; allocated up front.
    streams: HashMap<u64, Stream, InoHasher>,
    stream_id_next: u64,
    access_count: u64,
}

impl StreamTable {
    /// An empty table.
    ///
    /// # Panics
    /// If `config` fails [`PrefetchConfig::validate`]; validate it when
    /// loading configuration.
    #[must_use]
    pub fn new(config: PrefetchConfig) -> Self {
        if let Err(error) = config.validate() {
            panic!("{error}");
        }
        Self {
            config,
            streams: HashMap::with_capacity_and_hasher(config.streams_max, InoHasher::default()),
            stream_id_next: 0,
            access_count: 0,
        }
    }

    /// Record an access to block `index` of inode `ino` at virtual time
    /// `now_tick`. `limit` is the exclusive upper bound of valid block
    /// indices (file length in blocks; `u64::MAX` if unknown): prefetch
    /// ranges never reach it.
    ///
    /// Returns the access kind and the block indices to prefetch now (an
    /// empty range when none), never re-issuing indices already issued for
    /// this stream.
    pub fn on_access(&mut self, ino: u64, index: u64, limit: u64, now_tick: u64) -> Access {
        self.access_count += 1;
        let access_seq = self.access_count;
        let id_next = StreamId(self.stream_id_next);
        let window_blocks_max = self.config.window_blocks_max;

        let Some(stream) = self.streams.get_mut(&ino) else {
            let cancelled = if self.streams.len() < self.config.streams_max {
                None
            } else {
                self.drop_least_recent()
            };
            self.stream_id_next += 1;
            let stream = self.stream_start(id_next, index, now_tick, access_seq);
            self.streams.insert(ino, stream);
            debug_assert!(self.streams.len() <= self.config.streams_max);
            return Access {
                kind: AccessKind::Random,
                stream: id_next,
                prefetch: NO_PREFETCH,
                cancelled,
                repeat: false,
            };
        };
        let tick_previous = stream.tick_last;
        stream.tick_last = now_tick;
        stream.access_seq_last = access_seq;

        if index == stream.index_last {
            // Several small reads inside one block: the stream is neither
            // advanced nor broken.
            return Access {
                kind: stream.kind,
                stream: stream.id,
                prefetch: NO_PREFETCH,
                cancelled: None,
                repeat: now_tick.saturating_sub(tick_previous) <= self.config.repeat_window_ticks,
            };
        }

        if stream.index_last.checked_add(1) == Some(index) {
            stream.kind = AccessKind::Sequential;
            stream.index_last = index;
            let start = stream.issued_until.max(index.saturating_add(1));
            let end = index
                .saturating_add(1)
                .saturating_add(u64::from(stream.window_blocks))
                .min(limit);
            let prefetch = if start < end {
                stream.issued_until = end;
                stream.issued_any = true;
                start..end
            } else {
                NO_PREFETCH
            };
            stream.window_blocks = stream
                .window_blocks
                .saturating_mul(2)
                .min(window_blocks_max);
            debug_assert!(prefetch.end <= limit);
            return Access {
                kind: AccessKind::Sequential,
                stream: stream.id,
                prefetch,
                cancelled: None,
                repeat: false,
            };
        }

        // A jump: whatever was read ahead is now unlikely to be read, and
        // a fresh id lets the queue drop it without touching what the new
        // stream will issue.
        let cancelled = stream.issued_any.then_some(stream.id);
        self.stream_id_next += 1;
        let stream_new = self.stream_start(id_next, index, now_tick, access_seq);
        self.streams.insert(ino, stream_new);
        Access {
            kind: AccessKind::Random,
            stream: id_next,
            prefetch: NO_PREFETCH,
            cancelled,
            repeat: false,
        }
    }

    /// Streams idle for more than `stream_idle_ticks` are dropped; returns
    /// the ids of those that issued prefetches, oldest first, so their
    /// queued prefetches can be cancelled.
    pub fn expire(&mut self, now_tick: u64) -> Vec<StreamId> {
        let idle_ticks_max = self.config.stream_idle_ticks;
        let mut expired = Vec::new();
        self.streams.retain(|_, stream| {
            let idle = now_tick.saturating_sub(stream.tick_last) > idle_ticks_max;
            if idle && stream.issued_any {
                expired.push(stream.id);
            }
            !idle
        });
        expired.sort_unstable_by_key(|id| id.0);
        expired
    }

    /// Number of tracked streams, at most `streams_max`.
    #[must_use]
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether no stream is tracked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    fn stream_start(&self, id: StreamId, index: u64, now_tick: u64, access_seq: u64) -> Stream {
        Stream {
            id,
            kind: AccessKind::Random,
            index_last: index,
            window_blocks: self.config.window_blocks_initial,
            issued_until: index.saturating_add(1),
            issued_any: false,
            tick_last: now_tick,
            access_seq_last: access_seq,
        }
    }

    /// Drops the least recently accessed stream; returns its id if it may
    /// have queued prefetches. O(`streams_max`), but only when a new stream
    /// arrives at a full table; a linked LRU would cost more than it saves
    /// at 64 streams.
    fn drop_least_recent(&mut self) -> Option<StreamId> {
        let (&ino, _) = self
            .streams
            .iter()
            .min_by_key(|(_, stream)| stream.access_seq_last)?;
        let stream = self.streams.remove(&ino)?;
        stream.issued_any.then_some(stream.id)
    }
}

/// Bounded FIFO of blocks to prefetch for one shard, tagged with their
/// stream; all memory allocated in `new`.
#[derive(Clone, Debug)]
pub struct PrefetchQueue {
    /// `(stream, ino, index, version)`, oldest first.
    entries: VecDeque<(StreamId, u64, u64, u64)>,
    capacity: usize,
}

impl PrefetchQueue {
    /// An empty queue holding at most `capacity` blocks.
    ///
    /// # Panics
    /// If `capacity` exceeds [`QUEUE_BLOCKS_CEILING`].
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        assert!(
            capacity <= QUEUE_BLOCKS_CEILING,
            "prefetch queue capacity {capacity} exceeds QUEUE_BLOCKS_CEILING"
        );
        Self {
            entries: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Queues version `version` of block `index` of `ino` for `stream`.
    /// Returns `false` (dropped) when full or already queued for the same
    /// `(ino, index)`. O(len).
    pub fn push(&mut self, stream: StreamId, ino: u64, index: u64, version: u64) -> bool {
        if self.entries.len() >= self.capacity {
            return false;
        }
        let queued = self
            .entries
            .iter()
            .any(|&(_, queued_ino, queued_index, _)| (queued_ino, queued_index) == (ino, index));
        if queued {
            return false;
        }
        self.entries.push_back((stream, ino, index, version));
        debug_assert!(self.entries.len() <= self.capacity);
        true
    }

    /// The oldest queued `(stream, ino, index, version)`.
    pub fn pop(&mut self) -> Option<(StreamId, u64, u64, u64)> {
        self.entries.pop_front()
    }

    /// Removes the queued entries of `stream`; returns how many. O(len).
    pub fn cancel(&mut self, stream: StreamId) -> usize {
        let len_before = self.entries.len();
        self.entries
            .retain(|&(queued_stream, _, _, _)| queued_stream != stream);
        len_before - self.entries.len()
    }

    /// Number of queued blocks.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is queued.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Most blocks the queue holds.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    const INO: u64 = 7;

    fn config(window_blocks_initial: u32, window_blocks_max: u32) -> PrefetchConfig {
        PrefetchConfig {
            window_blocks_initial,
            window_blocks_max,
            ..PrefetchConfig::default()
        }
    }

    fn seq(table: &mut StreamTable, index: u64, limit: u64) -> Access {
        table.on_access(INO, index, limit, 0)
    }

    /// Reads `0..count` of one inode in order, each block `repeat` times,
    /// and checks: ranges are contiguous and disjoint starting at block 2,
    /// stay below `limit`, prefetch every block before it is read, and look
    /// ahead `initial × 2^(hits-1)` blocks capped at the max, unless cut by
    /// `limit`; repeated reads of a block issue nothing.
    fn check_sequential(config: PrefetchConfig, count: u64, limit: u64, repeat: usize) {
        let mut table = StreamTable::new(config);
        let first = seq(&mut table, 0, limit);
        assert_eq!(
            (first.kind, first.prefetch.clone()),
            (AccessKind::Random, NO_PREFETCH)
        );
        let mut issued_until = 2;
        let mut window_blocks = u64::from(config.window_blocks_initial);
        for index in 1..count {
            assert!(
                index < 2 || index >= limit || index < issued_until,
                "{index} not prefetched"
            );
            let access = seq(&mut table, index, limit);
            assert_eq!(access.kind, AccessKind::Sequential);
            assert_eq!((access.stream, access.cancelled), (first.stream, None));
            let lookahead_end = index + 1 + window_blocks;
            if lookahead_end <= limit {
                assert_eq!(
                    access.prefetch,
                    issued_until..lookahead_end,
                    "index {index}"
                );
            } else if issued_until < limit {
                assert_eq!(access.prefetch, issued_until..limit, "index {index}");
            } else {
                assert!(access.prefetch.is_empty(), "index {index}");
            }
            issued_until = issued_until.max(access.prefetch.end);
            window_blocks = (window_blocks * 2).min(u64::from(config.window_blocks_max));
            for _ in 1..repeat {
                let again = seq(&mut table, index, limit);
                assert_eq!(again.kind, AccessKind::Sequential);
                assert_eq!((again.stream, again.cancelled), (first.stream, None));
                assert!(again.prefetch.is_empty());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn sequential_ranges(
            (initial, max) in (1u32..5).prop_flat_map(|initial| (Just(initial), initial..64)),
            count in 1u64..200,
            limit in prop_oneof![1u64..250, Just(u64::MAX)],
            repeat in 1usize..4,
        ) {
            check_sequential(config(initial, max), count, limit, repeat);
        }
    }

    #[test]
    fn windows_grow_1_2_4_capped() {
        let mut table = StreamTable::new(config(1, 8));
        seq(&mut table, 0, u64::MAX);
        let lookahead: Vec<u64> = (1..8)
            .map(|index| seq(&mut table, index, u64::MAX).prefetch.end - (index + 1))
            .collect();
        assert_eq!(lookahead, [1, 2, 4, 8, 8, 8, 8]);
    }

    #[test]
    fn same_block_reads_issue_nothing_and_keep_kind() {
        let mut table = StreamTable::new(PrefetchConfig::default());
        let first = seq(&mut table, 5, u64::MAX);
        assert!(!first.repeat);
        let again = seq(&mut table, 5, u64::MAX);
        assert_eq!(
            again,
            Access {
                repeat: true,
                ..first
            }
        );
        let hit = seq(&mut table, 6, u64::MAX);
        assert_eq!(hit.prefetch, 7..8);
        assert!(!hit.repeat);
        for _ in 0..3 {
            let again = seq(&mut table, 6, u64::MAX);
            assert_eq!(
                (again.kind, again.stream),
                (AccessKind::Sequential, hit.stream)
            );
            assert!(again.prefetch.is_empty());
            assert!(
                again.repeat,
                "admission counts a block once per stream pass"
            );
        }
        // The same block read again much later is a new access.
        let later = table.on_access(INO, 6, u64::MAX, 10_000);
        assert!(!later.repeat);
        assert_eq!(seq(&mut table, 7, u64::MAX).prefetch, 8..10);
    }

    #[test]
    fn jump_resets_window_and_cancels() {
        let mut table = StreamTable::new(PrefetchConfig::default());
        let first = seq(&mut table, 0, u64::MAX);
        for index in 1..5 {
            seq(&mut table, index, u64::MAX);
        }
        let jump = seq(&mut table, 100, u64::MAX);
        assert_eq!(jump.kind, AccessKind::Random);
        assert_ne!(jump.stream, first.stream);
        assert_eq!(jump.cancelled, Some(first.stream));
        assert!(jump.prefetch.is_empty());
        let hit = seq(&mut table, 101, u64::MAX);
        assert_eq!((hit.stream, hit.prefetch), (jump.stream, 102..103));
        // Going backwards is a jump too; the hit above issued a prefetch
        // under the new id, so that id is reported.
        let back = seq(&mut table, 100, u64::MAX);
        assert_eq!(back.cancelled, Some(jump.stream));
        // A jump before any prefetch has nothing to cancel.
        assert_eq!(seq(&mut table, 50, u64::MAX).cancelled, None);
    }

    #[test]
    fn never_prefetches_at_or_beyond_limit() {
        let mut table = StreamTable::new(PrefetchConfig::default());
        let ranges: Vec<_> = (0..6)
            .map(|index| seq(&mut table, index, 5).prefetch)
            .collect();
        assert_eq!(ranges, [0..0, 2..3, 3..5, 0..0, 0..0, 0..0]);
        // Block indices near u64::MAX do not overflow.
        let mut table = StreamTable::new(PrefetchConfig::default());
        seq(&mut table, u64::MAX - 2, u64::MAX);
        assert_eq!(seq(&mut table, u64::MAX - 1, u64::MAX).prefetch, 0..0);
        assert_eq!(seq(&mut table, u64::MAX, u64::MAX).prefetch, 0..0);
    }

    #[test]
    fn full_table_drops_least_recent_stream() {
        let mut table = StreamTable::new(PrefetchConfig {
            streams_max: 2,
            ..PrefetchConfig::default()
        });
        let allocated = table.streams.capacity();
        let one = table.on_access(1, 0, u64::MAX, 0);
        table.on_access(1, 1, u64::MAX, 0); // issues a prefetch
        table.on_access(2, 0, u64::MAX, 0);
        let three = table.on_access(3, 0, u64::MAX, 0);
        assert_eq!(three.cancelled, Some(one.stream));
        assert_eq!(table.len(), 2);
        // Inode 2 had issued nothing, so dropping it reports nothing.
        let again = table.on_access(1, 2, u64::MAX, 0);
        assert_eq!((again.kind, again.cancelled), (AccessKind::Random, None));
        assert_eq!(table.len(), 2);
        for ino in 10..100 {
            table.on_access(ino, 0, u64::MAX, 0);
        }
        assert_eq!(table.len(), 2);
        assert_eq!(table.streams.capacity(), allocated, "no reallocation");
    }

    #[test]
    fn expire_drops_idle_streams() {
        let mut table = StreamTable::new(PrefetchConfig {
            stream_idle_ticks: 10,
            ..PrefetchConfig::default()
        });
        let one = table.on_access(1, 0, u64::MAX, 0);
        table.on_access(1, 1, u64::MAX, 5); // issues a prefetch
        table.on_access(2, 0, u64::MAX, 0); // issues nothing
        table.on_access(3, 0, u64::MAX, 12);
        assert!(table.expire(15).is_empty(), "idle for exactly 10 ticks");
        assert_eq!(table.len(), 2);
        assert_eq!(table.expire(16), [one.stream]);
        assert_eq!(table.len(), 1);
        assert!(table.expire(22).is_empty());
        assert_eq!(table.len(), 1);
        assert!(table.expire(23).is_empty());
        assert!(table.is_empty());
    }

    #[test]
    fn invalid_config_is_rejected() {
        let check = |config: PrefetchConfig, ok: bool| assert_eq!(config.validate().is_ok(), ok);
        check(PrefetchConfig::default(), true);
        check(config(0, 4), false);
        check(config(4, 2), false);
        check(config(1, WINDOW_BLOCKS_CEILING + 1), false);
        let zero_streams = PrefetchConfig {
            streams_max: 0,
            ..PrefetchConfig::default()
        };
        check(zero_streams, false);
        let error = config(0, 4).validate().expect_err("invalid");
        assert!(error.to_string().contains("window_blocks_initial"));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Access {
            ino: u64,
            step: Step,
            limit: u64,
            ticks: u64,
        },
        Expire {
            ticks: u64,
        },
    }

    #[derive(Clone, Copy, Debug)]
    enum Step {
        Same,
        Next,
        Jump(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let step = prop_oneof![
            2 => Just(Step::Same),
            5 => Just(Step::Next),
            2 => (0u64..64).prop_map(Step::Jump),
        ];
        let limit = prop_oneof![16u64..80, Just(u64::MAX)];
        prop_oneof![
            10 => (0u64..6, step, limit, 0u64..4)
                .prop_map(|(ino, step, limit, ticks)| Op::Access { ino, step, limit, ticks }),
            1 => (0u64..40).prop_map(|ticks| Op::Expire { ticks }),
        ]
    }

    /// Random multi-inode traffic against a small table: bounds, no
    /// re-issue within a stream, never reaching `limit`, ids never reused,
    /// and every replaced stream that issued prefetches reported exactly
    /// once.
    fn check_streams(ops: &[Op]) {
        let config = PrefetchConfig {
            streams_max: 3,
            stream_idle_ticks: 20,
            ..PrefetchConfig::default()
        };
        let mut table = StreamTable::new(config);
        let mut now_tick = 0;
        let mut index_last: HashMap<u64, u64> = HashMap::new();
        // Per live stream (as far as reports tell): its inode and whether it
        // issued prefetches.
        let mut live: HashMap<StreamId, (u64, bool)> = HashMap::new();
        let mut ended: HashSet<StreamId> = HashSet::new();
        let mut issued: HashMap<StreamId, HashSet<u64>> = HashMap::new();
        for op in ops {
            match *op {
                Op::Expire { ticks } => {
                    now_tick += ticks;
                    for id in table.expire(now_tick) {
                        let (_, issued_any) = live.remove(&id).expect("expired a live stream");
                        assert!(issued_any);
                        assert!(ended.insert(id));
                    }
                }
                Op::Access {
                    ino,
                    step,
                    limit,
                    ticks,
                } => {
                    now_tick += ticks;
                    let last = index_last.get(&ino).copied().unwrap_or(0);
                    let index = match step {
                        Step::Same => last,
                        Step::Next => last + 1,
                        Step::Jump(index) => index,
                    };
                    index_last.insert(ino, index);
                    let access = table.on_access(ino, index, limit, now_tick);
                    assert!(!ended.contains(&access.stream), "id reused");
                    if let Some(id) = access.cancelled {
                        let (_, issued_any) = live.remove(&id).expect("cancelled a live stream");
                        assert!(issued_any);
                        assert!(ended.insert(id));
                    }
                    // A stream of the same inode that issued prefetches and
                    // was replaced must have been reported by now.
                    live.retain(|&id, &mut (live_ino, issued_any)| {
                        let replaced = live_ino == ino && id != access.stream;
                        assert!(!(replaced && issued_any), "stream {id:?} not reported");
                        !replaced
                    });
                    let entry = live.entry(access.stream).or_insert((ino, false));
                    assert_eq!(entry.0, ino);
                    if !access.prefetch.is_empty() {
                        assert_eq!(access.kind, AccessKind::Sequential);
                        assert!(access.prefetch.start > index);
                        assert!(access.prefetch.end <= limit);
                        entry.1 = true;
                        let issued = issued.entry(access.stream).or_default();
                        for block in access.prefetch.clone() {
                            assert!(issued.insert(block), "re-issued {block}");
                        }
                    }
                }
            }
            assert!(table.len() <= config.streams_max);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn streams_stay_bounded_and_consistent(ops in prop::collection::vec(op(), 0..200)) {
            check_streams(&ops);
        }
    }

    #[test]
    fn queue_is_bounded_fifo_with_dedup() {
        let mut queue = PrefetchQueue::new(3);
        let (a, b) = (StreamId(1), StreamId(2));
        assert!(queue.push(a, 1, 10, 7));
        assert!(queue.push(b, 2, 10, 7));
        assert!(!queue.push(b, 1, 10, 8), "already queued");
        assert!(queue.push(a, 1, 11, 7));
        assert!(!queue.push(a, 1, 12, 7), "full");
        assert_eq!(queue.len(), 3);
        assert_eq!(queue.pop(), Some((a, 1, 10, 7)));
        assert!(queue.push(b, 1, 10, 8), "no longer queued");
        assert_eq!(queue.cancel(a), 1);
        assert_eq!(queue.cancel(a), 0);
        assert_eq!(queue.pop(), Some((b, 2, 10, 7)));
        assert_eq!(queue.pop(), Some((b, 1, 10, 8)));
        assert_eq!(queue.pop(), None);
        assert!(queue.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Against a `Vec` model; memory never grows past the first
        /// allocation.
        #[test]
        fn queue_matches_model(
            capacity in 1usize..16,
            ops in prop::collection::vec((0u8..3, 0u64..3, 0u64..3, 0u64..8), 0..200),
        ) {
            let mut queue = PrefetchQueue::new(capacity);
            let allocated = queue.entries.capacity();
            let mut model: Vec<(StreamId, u64, u64, u64)> = Vec::new();
            for (op, stream, ino, index) in ops {
                let stream = StreamId(stream);
                match op {
                    0 => {
                        let expected = model.len() < capacity
                            && !model.iter().any(|&(_, i, x, _)| (i, x) == (ino, index));
                        prop_assert_eq!(queue.push(stream, ino, index, ino ^ index), expected);
                        if expected {
                            model.push((stream, ino, index, ino ^ index));
                        }
                    }
                    1 => {
                        let expected = (!model.is_empty()).then(|| model.remove(0));
                        prop_assert_eq!(queue.pop(), expected);
                    }
                    _ => {
                        let len_before = model.len();
                        model.retain(|&(s, _, _, _)| s != stream);
                        prop_assert_eq!(queue.cancel(stream), len_before - model.len());
                    }
                }
                prop_assert_eq!(queue.len(), model.len());
                prop_assert_eq!(queue.entries.capacity(), allocated);
            }
        }
    }
}
