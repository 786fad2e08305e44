//! The garbage-collection queue (sans-IO): versions that left the namespace
//! wait for a grace period, then are deleted from the store and the journal.
//!
//! The queue file is a sequence of 37-byte records, appended and fsynced:
//! `kind u8 (1 add, 2 done) | ino u64 | index u64 | version u64 | due_ms u64
//! | crc32c u32` (little endian; `due_ms` is wall-clock Unix time, so the
//! grace period survives restarts). Replay stops at the first torn or
//! corrupt record (only the tail can be torn: records are appended).

use std::collections::BTreeMap;

use crate::block::BlockId;

/// Bytes of one queue record.
pub const GC_RECORD_BYTES: usize = 37;
/// Records of completed deletions tolerated before the file is rewritten.
pub const GC_DONE_RECORDS_MAX: u64 = 4096;

const KIND_ADD: u8 = 1;
const KIND_DONE: u8 = 2;

fn record(kind: u8, id: BlockId, due_ms: u64) -> [u8; GC_RECORD_BYTES] {
    let mut out = [0; GC_RECORD_BYTES];
    out[0] = kind;
    out[1..9].copy_from_slice(&id.ino.0.to_le_bytes());
    out[9..17].copy_from_slice(&id.index.to_le_bytes());
    out[17..25].copy_from_slice(&id.version.to_le_bytes());
    out[25..33].copy_from_slice(&due_ms.to_le_bytes());
    let crc = crc32c::crc32c(&out[..33]);
    out[33..].copy_from_slice(&crc.to_le_bytes());
    out
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// The queue's state.
#[derive(Debug, Default)]
pub struct GcQueue {
    pending: BTreeMap<BlockId, u64>,
    records: u64,
}

/// The result of replaying a queue file.
#[derive(Debug)]
pub struct Replay {
    /// The queue.
    pub queue: GcQueue,
    /// Bytes of valid records; a longer file has a torn tail to cut.
    pub valid_bytes: usize,
}

impl GcQueue {
    /// Replays a queue file.
    pub fn replay(bytes: &[u8]) -> Replay {
        let mut queue = Self::default();
        let mut valid_bytes = 0;
        for chunk in bytes.chunks(GC_RECORD_BYTES) {
            if chunk.len() < GC_RECORD_BYTES {
                break;
            }
            let crc = u32::from_le_bytes([chunk[33], chunk[34], chunk[35], chunk[36]]);
            if crc32c::crc32c(&chunk[..33]) != crc {
                break;
            }
            let id = BlockId::new(u64_at(chunk, 1), u64_at(chunk, 9), u64_at(chunk, 17));
            match chunk[0] {
                KIND_ADD => {
                    queue.pending.insert(id, u64_at(chunk, 25));
                }
                KIND_DONE => {
                    queue.pending.remove(&id);
                }
                _ => break,
            }
            queue.records += 1;
            valid_bytes += GC_RECORD_BYTES;
        }
        Replay { queue, valid_bytes }
    }

    /// Queues versions for deletion at `due_ms`; returns the records to
    /// append. A version already queued keeps its earlier due time (a
    /// repeated report, e.g. by the orphan scrub, never postpones it).
    pub fn add(&mut self, ids: &[BlockId], due_ms: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(ids.len() * GC_RECORD_BYTES);
        for &id in ids {
            if self.pending.contains_key(&id) {
                continue;
            }
            self.pending.insert(id, due_ms);
            out.extend_from_slice(&record(KIND_ADD, id, due_ms));
            self.records += 1;
        }
        out
    }

    /// Deletions done; returns the records to append.
    pub fn done(&mut self, ids: &[BlockId]) -> Vec<u8> {
        let mut out = Vec::with_capacity(ids.len() * GC_RECORD_BYTES);
        for id in ids {
            if self.pending.remove(id).is_some() {
                out.extend_from_slice(&record(KIND_DONE, *id, 0));
                self.records += 1;
            }
        }
        out
    }

    /// Versions whose grace period is over at `now_ms`.
    pub fn due(&self, now_ms: u64) -> Vec<BlockId> {
        self.pending
            .iter()
            .filter(|&(_, &due)| due <= now_ms)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Versions waiting.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Whether the file should be rewritten with only the pending records:
    /// everything is done, or done records pile up.
    pub fn needs_compaction(&self) -> bool {
        let pending = self.pending.len() as u64;
        (pending == 0 && self.records > 0) || self.records > pending + GC_DONE_RECORDS_MAX
    }

    /// The content of the rewritten file (pending records only).
    pub fn compact(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pending.len() * GC_RECORD_BYTES);
        for (&id, &due) in &self.pending {
            out.extend_from_slice(&record(KIND_ADD, id, due));
        }
        self.records = self.pending.len() as u64;
        out
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_repeated_add_keeps_the_first_due_time() {
        let id = BlockId::new(1, 2, 3);
        let mut q = GcQueue::default();
        let first = q.add(&[id], 100);
        assert_eq!(first.len(), GC_RECORD_BYTES);
        assert!(q.add(&[id], 200).is_empty(), "nothing new to record");
        assert_eq!(q.due(150), vec![id]);
        let replayed = GcQueue::replay(&first).queue;
        assert_eq!(replayed.due(150), vec![id]);
    }

    use super::*;

    fn id(i: u64) -> BlockId {
        BlockId::new(3, i, 7)
    }

    #[test]
    fn replay_add_done_and_torn_tail() {
        let mut q = GcQueue::default();
        let mut file = q.add(&[id(0), id(1), id(2)], 100);
        file.extend(q.done(&[id(1), id(9)]));
        assert_eq!(q.due(99), vec![]);
        assert_eq!(q.due(100), vec![id(0), id(2)]);
        let replay = GcQueue::replay(&file);
        assert_eq!(replay.valid_bytes, file.len());
        assert_eq!(replay.queue.due(100), vec![id(0), id(2)]);
        // A torn tail is cut; a corrupt record ends the replay.
        let mut torn = file.clone();
        torn.extend_from_slice(&record(KIND_ADD, id(5), 1)[..20]);
        let replay = GcQueue::replay(&torn);
        assert_eq!(replay.valid_bytes, file.len());
        assert_eq!(replay.queue.pending(), 2);
        let mut corrupt = file.clone();
        corrupt[GC_RECORD_BYTES + 3] ^= 1;
        let replay = GcQueue::replay(&corrupt);
        assert_eq!(replay.valid_bytes, GC_RECORD_BYTES);
        assert_eq!(replay.queue.due(u64::MAX), vec![id(0)]);
    }

    #[test]
    fn compaction() {
        let mut q = GcQueue::default();
        assert!(!q.needs_compaction());
        q.add(&[id(0), id(1)], 5);
        q.done(&[id(0)]);
        assert!(!q.needs_compaction());
        let compacted = q.compact();
        assert_eq!(compacted.len(), GC_RECORD_BYTES);
        assert_eq!(GcQueue::replay(&compacted).queue.due(5), vec![id(1)]);
        q.done(&[id(1)]);
        assert!(q.needs_compaction(), "all done");
        assert!(q.compact().is_empty());
        assert!(!q.needs_compaction());
    }

    mod prop {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            /// A file cut anywhere replays to the state after its last whole record.
            #[test]
            fn any_prefix_replays_to_its_whole_records(
                ops in proptest::collection::vec((any::<bool>(), 0u64..8, 0u64..100), 1..40),
                cut in any::<prop::sample::Index>(),
            ) {
                let mut queue = GcQueue::default();
                let mut file = Vec::new();
                let mut states = vec![queue.due(u64::MAX)];
                for (add, i, due) in ops {
                    let id = BlockId::new(1, i, 1);
                    let records = if add {
                        queue.add(&[id], due)
                    } else {
                        queue.done(&[id])
                    };
                    if records.is_empty() {
                        continue;
                    }
                    file.extend(records);
                    states.push(queue.due(u64::MAX));
                }
                let len = cut.index(file.len() + 1);
                let replay = GcQueue::replay(&file[..len]);
                prop_assert_eq!(replay.valid_bytes, len / GC_RECORD_BYTES * GC_RECORD_BYTES);
                prop_assert_eq!(&replay.queue.due(u64::MAX), &states[len / GC_RECORD_BYTES]);
            }
        }
    }
}
