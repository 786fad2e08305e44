//! AI data-loading epochs: like a training data loader, every epoch reads
//! the whole dataset in a new seeded shuffled order, position `i` of the
//! order going to worker `i % workers`.

use std::path::PathBuf;

use super::{FileEntry, FileId, Layout, Op};
use crate::rng::SplitMix64;
use crate::spec::WorkloadSpec;

/// Chunk in which a sample is read (the thread's buffer size).
pub const SAMPLE_CHUNK_BYTES: u64 = 1 << 20;
/// Files per dataset subdirectory (keeps any one directory reasonable).
const FILES_PER_DIR: u32 = 1000;
/// Streams used for the dataset sizes and the epoch orders, apart from the
/// per-thread streams `0..threads`.
const SIZE_STREAM: u64 = u64::MAX;
const EPOCH_STREAM_BASE: u64 = 1 << 32;

pub(super) fn layout(spec: &WorkloadSpec) -> Layout {
    let mut rng = SplitMix64::for_stream(spec.seed, SIZE_STREAM);
    let dir_count = spec.dataset_files.div_ceil(FILES_PER_DIR);
    let mut dirs = vec![PathBuf::from("dataset")];
    dirs.extend((0..dir_count).map(|d| PathBuf::from(format!("dataset/{d:04}"))));
    let files = (0..spec.dataset_files)
        .map(|i| FileEntry {
            rel_path: PathBuf::from(format!("dataset/{:04}/sample-{i:08}", i / FILES_PER_DIR)),
            size_bytes: rng.between(spec.sample_bytes_min, spec.sample_bytes_max),
        })
        .collect();
    Layout {
        dirs,
        files,
        listed_dirs: Vec::new(),
    }
}

#[derive(Debug, Clone)]
pub struct EpochStream {
    seed: u64,
    worker: u32,
    workers: u32,
    epoch: u64,
    order: Vec<u32>,
    /// Next position in `order` this worker reads.
    position: usize,
}

impl EpochStream {
    pub(super) fn new(spec: &WorkloadSpec, worker: u32) -> Self {
        let mut stream = Self {
            seed: spec.seed,
            worker,
            workers: spec.threads,
            epoch: 0,
            order: (0..spec.dataset_files).collect(),
            position: 0,
        };
        stream.start_epoch(0);
        stream
    }

    /// Epochs completed or started by this worker (0-based current epoch).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn start_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        // Every worker derives the same order from (seed, epoch), as every
        // loader worker shares the sampler's permutation.
        self.order.sort_unstable();
        SplitMix64::for_stream(self.seed, EPOCH_STREAM_BASE + epoch).shuffle(&mut self.order);
        self.position = self.worker as usize;
    }

    pub fn next_op(&mut self) -> Op {
        // A worker beyond the dataset size would never get a sample: it
        // reads position 0 of each epoch instead of spinning.
        if self.position >= self.order.len() {
            let next = self.epoch + 1;
            self.start_epoch(next);
            if self.position >= self.order.len() {
                self.position = 0;
            }
        }
        let file = FileId(self.order[self.position]);
        self.position += self.workers as usize;
        Op::Sample { file }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use crate::spec::{WorkloadKind, WorkloadSpec};
    use crate::workload::{Layout, Op, OpStream};

    #[test]
    fn workers_cover_each_epoch_exactly_once_and_epochs_differ() {
        let mut spec = WorkloadSpec::new(WorkloadKind::Epoch);
        spec.threads = 3;
        spec.dataset_files = 30;
        let epoch_of = |skip_epochs: usize| -> (Vec<u32>, BTreeSet<u32>) {
            let mut order = Vec::new();
            for worker in 0..3 {
                let mut stream = OpStream::new(&spec, worker);
                for _ in 0..skip_epochs * 10 {
                    stream.next_op();
                }
                for _ in 0..10 {
                    match stream.next_op() {
                        Op::Sample { file } => order.push(file.0),
                        op => panic!("unexpected {op:?}"),
                    }
                }
            }
            let set = order.iter().copied().collect();
            (order, set)
        };
        let (first, first_set) = epoch_of(0);
        let (second, second_set) = epoch_of(1);
        assert_eq!(first_set.len(), 30);
        assert_eq!(second_set.len(), 30);
        assert_ne!(first, second);
    }

    #[test]
    fn sample_sizes_within_bounds() {
        let spec = WorkloadSpec::new(WorkloadKind::Epoch);
        let layout = Layout::of(&spec);
        assert_eq!(layout.files.len(), spec.dataset_files as usize);
        assert!(layout
            .files
            .iter()
            .all(|f| (spec.sample_bytes_min..=spec.sample_bytes_max).contains(&f.size_bytes)));
    }
}
