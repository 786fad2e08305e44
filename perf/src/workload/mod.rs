//! Workload generators: pure, seeded, no IO. A workload describes the files
//! it needs (`Layout`) and hands each thread an endless stream of `Op`s; the
//! runner executes them. The same seed gives the same ops, bit for bit.

mod block;
mod epoch;
mod listing;
mod small_files;

use std::path::PathBuf;

pub use block::BlockStream;
pub use epoch::EpochStream;
pub use listing::ListingStream;
pub use small_files::SmallFileStream;

use crate::rng::SplitMix64;
use crate::spec::{OpKind, WorkloadKind, WorkloadSpec};

/// Folder under the target directory that holds everything a run creates.
pub const WORK_DIR_NAME: &str = "datenlord-perf";

/// Index into `Layout::files`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId(pub u32);

/// Index into `Layout::dirs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DirId(pub u32);

/// A file the small-files workload creates and removes during the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SmallFile {
    pub thread: u32,
    pub seq: u64,
}

impl SmallFile {
    /// Path relative to the work directory.
    pub fn rel_path(self) -> PathBuf {
        PathBuf::from(format!("small/t{}/f{}", self.thread, self.seq))
    }
}

/// One operation. Offsets and lengths are already aligned for O_DIRECT when
/// the spec asks for it (the spec validates the sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read {
        file: FileId,
        offset_bytes: u64,
        len_bytes: u64,
    },
    Write {
        file: FileId,
        offset_bytes: u64,
        len_bytes: u64,
    },
    /// Create (truncate) a small file and keep it open for the next ops.
    Create {
        file: SmallFile,
    },
    /// Write the whole small file through the handle `Create` opened.
    WriteSmall {
        file: SmallFile,
        len_bytes: u64,
    },
    /// fsync the open small file, then close it.
    Fsync {
        file: SmallFile,
    },
    Stat {
        file: SmallFile,
    },
    /// Open the small file again and read it whole.
    ReadSmall {
        file: SmallFile,
        len_bytes: u64,
    },
    Unlink {
        file: SmallFile,
    },
    /// Read a whole directory.
    List {
        dir: DirId,
    },
    /// Open a dataset file, read it whole, close it.
    Sample {
        file: FileId,
    },
}

impl Op {
    pub fn kind(&self) -> OpKind {
        match self {
            Self::Read { .. } | Self::ReadSmall { .. } => OpKind::Read,
            Self::Write { .. } | Self::WriteSmall { .. } => OpKind::Write,
            Self::Create { .. } => OpKind::Create,
            Self::Fsync { .. } => OpKind::Fsync,
            Self::Stat { .. } => OpKind::Stat,
            Self::Unlink { .. } => OpKind::Unlink,
            Self::List { .. } => OpKind::List,
            Self::Sample { .. } => OpKind::Sample,
        }
    }
}

/// A file the workload needs before the run starts (created untimed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative to the work directory.
    pub rel_path: PathBuf,
    pub size_bytes: u64,
}

/// Everything a workload needs on disk before the first op.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// Relative to the work directory, parents first.
    pub dirs: Vec<PathBuf>,
    pub files: Vec<FileEntry>,
    /// Index of the directory that `Op::List` names by `DirId(0)`, ...
    pub listed_dirs: Vec<PathBuf>,
}

impl Layout {
    pub fn of(spec: &WorkloadSpec) -> Self {
        match spec.kind {
            WorkloadKind::RandRead
            | WorkloadKind::SeqRead
            | WorkloadKind::SeqWrite
            | WorkloadKind::RandWrite
            | WorkloadKind::Mixed => block::layout(spec),
            WorkloadKind::SmallFiles => small_files::layout(spec),
            WorkloadKind::ListDir => listing::layout(spec),
            WorkloadKind::Epoch => epoch::layout(spec),
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size_bytes).sum()
    }
}

/// A thread's endless op stream (enum dispatch: no allocation per op).
#[derive(Debug, Clone)]
pub enum OpStream {
    Block(BlockStream),
    SmallFiles(SmallFileStream),
    Listing(ListingStream),
    Epoch(EpochStream),
}

impl OpStream {
    pub fn new(spec: &WorkloadSpec, thread: u32) -> Self {
        debug_assert!(thread < spec.threads);
        let rng = SplitMix64::for_stream(spec.seed, u64::from(thread));
        match spec.kind {
            WorkloadKind::RandRead
            | WorkloadKind::SeqRead
            | WorkloadKind::SeqWrite
            | WorkloadKind::RandWrite
            | WorkloadKind::Mixed => Self::Block(BlockStream::new(spec, thread, rng)),
            WorkloadKind::SmallFiles => Self::SmallFiles(SmallFileStream::new(spec, thread)),
            WorkloadKind::ListDir => Self::Listing(ListingStream),
            WorkloadKind::Epoch => Self::Epoch(EpochStream::new(spec, thread)),
        }
    }

    pub fn next_op(&mut self) -> Op {
        match self {
            Self::Block(s) => s.next_op(),
            Self::SmallFiles(s) => s.next_op(),
            Self::Listing(s) => s.next_op(),
            Self::Epoch(s) => s.next_op(),
        }
    }
}

/// Largest single IO a workload issues: the size of a thread's buffer.
pub fn max_io_bytes(spec: &WorkloadSpec) -> u64 {
    match spec.kind {
        WorkloadKind::SmallFiles => spec.small_file_bytes,
        WorkloadKind::ListDir => 0,
        WorkloadKind::Epoch => epoch::SAMPLE_CHUNK_BYTES,
        _ => spec.block_size_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::{Layout, Op, OpStream};
    use crate::spec::{WorkloadKind, WorkloadSpec};

    fn ops(spec: &WorkloadSpec, thread: u32, count: usize) -> Vec<Op> {
        let mut stream = OpStream::new(spec, thread);
        (0..count).map(|_| stream.next_op()).collect()
    }

    #[test]
    fn every_workload_is_reproducible_from_its_seed() {
        for kind in WorkloadKind::ALL {
            let mut spec = WorkloadSpec::new(kind);
            spec.threads = 3;
            spec.dataset_files = 50;
            assert_eq!(ops(&spec, 1, 500), ops(&spec, 1, 500), "{kind}");
            assert_eq!(Layout::of(&spec), Layout::of(&spec), "{kind}");
            let mut other = spec.clone();
            other.seed ^= 1;
            if matches!(
                kind,
                WorkloadKind::RandRead
                    | WorkloadKind::RandWrite
                    | WorkloadKind::Mixed
                    | WorkloadKind::Epoch
            ) {
                assert_ne!(
                    ops(&spec, 1, 500),
                    ops(&other, 1, 500),
                    "{kind}: seed must matter"
                );
            }
        }
    }

    #[test]
    fn ops_stay_inside_the_layout() {
        for kind in WorkloadKind::ALL {
            let mut spec = WorkloadSpec::new(kind);
            spec.threads = 2;
            spec.file_size_bytes = 1 << 20;
            spec.dataset_files = 20;
            let layout = Layout::of(&spec);
            for thread in 0..spec.threads {
                for op in ops(&spec, thread, 2000) {
                    match op {
                        Op::Read {
                            file,
                            offset_bytes,
                            len_bytes,
                        }
                        | Op::Write {
                            file,
                            offset_bytes,
                            len_bytes,
                        } => {
                            let entry = &layout.files[file.0 as usize];
                            assert!(
                                offset_bytes + len_bytes <= entry.size_bytes,
                                "{kind}: {op:?}"
                            );
                        }
                        Op::Sample { file } => assert!((file.0 as usize) < layout.files.len()),
                        Op::List { dir } => assert!((dir.0 as usize) < layout.listed_dirs.len()),
                        _ => {}
                    }
                }
            }
        }
    }
}
