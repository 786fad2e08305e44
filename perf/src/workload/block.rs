//! Block IO on one data file per thread: random/sequential reads and
//! writes, and a random read/write mix.

use std::path::PathBuf;

use super::{FileEntry, FileId, Layout, Op};
use crate::rng::SplitMix64;
use crate::spec::{WorkloadKind, WorkloadSpec};

pub(super) fn layout(spec: &WorkloadSpec) -> Layout {
    Layout {
        dirs: vec![PathBuf::from("block")],
        files: (0..spec.threads)
            .map(|thread| FileEntry {
                rel_path: PathBuf::from(format!("block/data.{thread}")),
                size_bytes: spec.file_size_bytes,
            })
            .collect(),
        listed_dirs: Vec::new(),
    }
}

#[derive(Debug, Clone)]
pub struct BlockStream {
    kind: WorkloadKind,
    file: FileId,
    block_bytes: u64,
    blocks: u64,
    read_percent: u64,
    /// Next block of the sequential workloads; threads start spread apart
    /// so they do not all read the same region of their files in lockstep.
    cursor: u64,
    rng: SplitMix64,
}

impl BlockStream {
    pub(super) fn new(spec: &WorkloadSpec, thread: u32, rng: SplitMix64) -> Self {
        let blocks = spec.file_size_bytes / spec.block_size_bytes;
        debug_assert!(blocks > 0, "validate() keeps file size >= block size");
        Self {
            kind: spec.kind,
            file: FileId(thread),
            block_bytes: spec.block_size_bytes,
            blocks,
            read_percent: u64::from(spec.read_percent),
            cursor: 0,
            rng,
        }
    }

    pub fn next_op(&mut self) -> Op {
        let (is_read, block) = match self.kind {
            WorkloadKind::SeqRead | WorkloadKind::SeqWrite => {
                let block = self.cursor;
                self.cursor = (self.cursor + 1) % self.blocks;
                (self.kind == WorkloadKind::SeqRead, block)
            }
            WorkloadKind::RandWrite => (false, self.rng.below(self.blocks)),
            WorkloadKind::Mixed => {
                let is_read = self.rng.below(100) < self.read_percent;
                (is_read, self.rng.below(self.blocks))
            }
            _ => (true, self.rng.below(self.blocks)),
        };
        let offset_bytes = block * self.block_bytes;
        if is_read {
            Op::Read {
                file: self.file,
                offset_bytes,
                len_bytes: self.block_bytes,
            }
        } else {
            Op::Write {
                file: self.file,
                offset_bytes,
                len_bytes: self.block_bytes,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::{WorkloadKind, WorkloadSpec};
    use crate::workload::{FileId, Op, OpStream};

    #[test]
    fn sequential_wraps_and_mixed_keeps_its_ratio() {
        let mut spec = WorkloadSpec::new(WorkloadKind::SeqRead);
        spec.file_size_bytes = 3 << 20;
        let mut stream = OpStream::new(&spec, 0);
        let offsets: Vec<u64> = (0..4)
            .map(|_| match stream.next_op() {
                Op::Read {
                    offset_bytes, file, ..
                } => {
                    assert_eq!(file, FileId(0));
                    offset_bytes
                }
                op => panic!("unexpected {op:?}"),
            })
            .collect();
        assert_eq!(offsets, [0, 1 << 20, 2 << 20, 0]);

        let mut spec = WorkloadSpec::new(WorkloadKind::Mixed);
        spec.read_percent = 70;
        let mut stream = OpStream::new(&spec, 0);
        let reads = (0..10_000)
            .filter(|_| matches!(stream.next_op(), Op::Read { .. }))
            .count();
        assert!((6_700..7_300).contains(&reads), "{reads}");
    }
}
