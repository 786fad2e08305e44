//! What to run: the workload, its parameters and the run limits. Plain data,
//! validated once, shared by the generators, the runner and the reports.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const MAX_THREADS: u32 = 1024;
pub const MAX_BLOCK_BYTES: u64 = 64 << 20;
pub const MAX_FILE_BYTES: u64 = 1 << 40;
pub const MAX_DIR_ENTRIES: u32 = 10_000_000;
pub const MAX_DATASET_FILES: u32 = 10_000_000;
/// Buffer and offset alignment for O_DIRECT: the logical block size of every
/// device we target divides it.
pub const DIRECT_ALIGN_BYTES: u64 = 4096;
/// Most block reads/writes one worker thread keeps in flight (`iodepth`):
/// fio's usual top, and small enough that a thread's slot buffers
/// (`iodepth` x block size) stay bounded.
pub const MAX_IODEPTH_OPS: u32 = 256;

pub const DEFAULT_FILE_BYTES: u64 = 256 << 20;
pub const DEFAULT_SMALL_FILE_BYTES: u64 = 4 << 10;
pub const DEFAULT_DIR_ENTRIES: u32 = 10_000;
pub const DEFAULT_DATASET_FILES: u32 = 1_000;
pub const DEFAULT_SAMPLE_BYTES_MIN: u64 = 100 << 10;
pub const DEFAULT_SAMPLE_BYTES_MAX: u64 = 1 << 20;
pub const DEFAULT_READ_PERCENT: u8 = 70;
pub const DEFAULT_SEED: u64 = 0x00da_7e41_0bd0;
/// Queue depth 1: synchronous `pread`/`pwrite`, no io_uring.
pub const DEFAULT_IODEPTH_OPS: u32 = 1;

/// The workload families of issue 7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// Random reads of `block_size` (4 KiB by default).
    RandRead,
    /// Sequential reads of `block_size` (1 MiB by default).
    SeqRead,
    /// Sequential writes of `block_size` (1 MiB by default).
    SeqWrite,
    /// Random writes of `block_size`.
    RandWrite,
    /// Random reads and writes, `read_percent` of them reads.
    Mixed,
    /// create / write / fsync / stat / read / unlink cycles of small files.
    SmallFiles,
    /// Full listings of a directory of `dir_entries` entries.
    ListDir,
    /// AI data-loading epochs: a dataset of many files read whole, in a
    /// seeded shuffled order split across the workers.
    Epoch,
}

impl WorkloadKind {
    pub const ALL: [Self; 8] = [
        Self::RandRead,
        Self::SeqRead,
        Self::SeqWrite,
        Self::RandWrite,
        Self::Mixed,
        Self::SmallFiles,
        Self::ListDir,
        Self::Epoch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::RandRead => "randread",
            Self::SeqRead => "seqread",
            Self::SeqWrite => "seqwrite",
            Self::RandWrite => "randwrite",
            Self::Mixed => "mixed",
            Self::SmallFiles => "smallfiles",
            Self::ListDir => "listdir",
            Self::Epoch => "epoch",
        }
    }

    /// The op whose latency headlines this workload (SLO default, ratios).
    pub fn main_op(self) -> OpKind {
        match self {
            Self::RandRead | Self::SeqRead | Self::Mixed => OpKind::Read,
            Self::SeqWrite | Self::RandWrite => OpKind::Write,
            Self::SmallFiles => OpKind::Create,
            Self::ListDir => OpKind::List,
            Self::Epoch => OpKind::Sample,
        }
    }

    /// The block workloads: one data file per thread, reads and writes
    /// of `block_size`; the only ones that take an `iodepth` above 1.
    pub fn is_block(self) -> bool {
        matches!(
            self,
            Self::RandRead | Self::SeqRead | Self::SeqWrite | Self::RandWrite | Self::Mixed
        )
    }

    fn default_block_bytes(self) -> u64 {
        match self {
            Self::SeqRead | Self::SeqWrite => 1 << 20,
            _ => 4 << 10,
        }
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WorkloadKind {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        parse_named(&Self::ALL, Self::name, "workload", text)
    }
}

/// Op types measured separately, each with its own latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    Read,
    Write,
    Create,
    Fsync,
    Stat,
    Unlink,
    List,
    /// One dataset sample: open, read whole, close.
    Sample,
}

impl OpKind {
    pub const COUNT: usize = 8;
    pub const ALL: [Self; Self::COUNT] = [
        Self::Read,
        Self::Write,
        Self::Create,
        Self::Fsync,
        Self::Stat,
        Self::Unlink,
        Self::List,
        Self::Sample,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Create => "create",
            Self::Fsync => "fsync",
            Self::Stat => "stat",
            Self::Unlink => "unlink",
            Self::List => "list",
            Self::Sample => "sample",
        }
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OpKind {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        parse_named(&Self::ALL, Self::name, "op", text)
    }
}

/// One workload, fully parameterized. Fields that a kind does not use are
/// kept (and reported) so that a report states everything that was set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    pub kind: WorkloadKind,
    /// Worker threads; each issues synchronous IO, or keeps `iodepth`
    /// block IOs in flight through its own io_uring.
    pub threads: u32,
    /// Block reads/writes in flight per thread, 1..=`MAX_IODEPTH_OPS`. 1 is
    /// synchronous `pread`/`pwrite`; above 1 each thread submits through
    /// its own io_uring (block workloads only). Absent in reports written
    /// before it existed: those ran at 1.
    #[serde(default = "default_iodepth")]
    pub iodepth: u32,
    /// IO size of the block workloads.
    pub block_size_bytes: u64,
    /// Size of each thread's data file in the block workloads.
    pub file_size_bytes: u64,
    /// Share of reads in `mixed`, 0..=100.
    pub read_percent: u8,
    /// File size of `smallfiles`.
    pub small_file_bytes: u64,
    /// Directory size of `listdir`.
    pub dir_entries: u32,
    /// Dataset size (files) of `epoch`.
    pub dataset_files: u32,
    pub sample_bytes_min: u64,
    pub sample_bytes_max: u64,
    /// Open data files with O_DIRECT (bypass the page cache).
    pub direct: bool,
    pub seed: u64,
}

impl WorkloadSpec {
    /// Defaults of `kind`: 4 KiB random IO, 1 MiB sequential IO, 256 MiB
    /// files, 10k-entry directories, a 1000-file dataset of 100 KiB–1 MiB.
    pub fn new(kind: WorkloadKind) -> Self {
        Self {
            kind,
            threads: 1,
            iodepth: DEFAULT_IODEPTH_OPS,
            block_size_bytes: kind.default_block_bytes(),
            file_size_bytes: DEFAULT_FILE_BYTES,
            read_percent: DEFAULT_READ_PERCENT,
            small_file_bytes: DEFAULT_SMALL_FILE_BYTES,
            dir_entries: DEFAULT_DIR_ENTRIES,
            dataset_files: DEFAULT_DATASET_FILES,
            sample_bytes_min: DEFAULT_SAMPLE_BYTES_MIN,
            sample_bytes_max: DEFAULT_SAMPLE_BYTES_MAX,
            direct: false,
            seed: DEFAULT_SEED,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.threads == 0 || self.threads > MAX_THREADS {
            return Err(Error::invalid(
                "threads",
                self.threads,
                format!("must be 1..={MAX_THREADS}"),
            ));
        }
        if self.iodepth == 0 || self.iodepth > MAX_IODEPTH_OPS {
            return Err(Error::invalid(
                "iodepth",
                self.iodepth,
                format!("must be 1..={MAX_IODEPTH_OPS} ops in flight per thread"),
            ));
        }
        if self.iodepth > 1 && !self.kind.is_block() {
            return Err(Error::invalid(
                "iodepth",
                self.iodepth,
                format!(
                    "{} issues one op at a time; only randread, seqread, seqwrite, \
                     randwrite and mixed take an iodepth above 1",
                    self.kind
                ),
            ));
        }
        if self.block_size_bytes == 0 || self.block_size_bytes > MAX_BLOCK_BYTES {
            return Err(Error::invalid(
                "block size",
                self.block_size_bytes,
                format!("must be 1..={MAX_BLOCK_BYTES} bytes"),
            ));
        }
        if self.file_size_bytes < self.block_size_bytes || self.file_size_bytes > MAX_FILE_BYTES {
            return Err(Error::invalid(
                "file size",
                self.file_size_bytes,
                format!("must be between the block size and {MAX_FILE_BYTES} bytes"),
            ));
        }
        if self.read_percent > 100 {
            return Err(Error::invalid(
                "read percent",
                self.read_percent,
                "must be 0..=100",
            ));
        }
        if self.small_file_bytes == 0 || self.small_file_bytes > MAX_BLOCK_BYTES {
            return Err(Error::invalid(
                "small file size",
                self.small_file_bytes,
                format!("must be 1..={MAX_BLOCK_BYTES} bytes"),
            ));
        }
        if self.dir_entries == 0 || self.dir_entries > MAX_DIR_ENTRIES {
            return Err(Error::invalid(
                "dir entries",
                self.dir_entries,
                format!("must be 1..={MAX_DIR_ENTRIES}"),
            ));
        }
        if self.dataset_files == 0 || self.dataset_files > MAX_DATASET_FILES {
            return Err(Error::invalid(
                "dataset files",
                self.dataset_files,
                format!("must be 1..={MAX_DATASET_FILES}"),
            ));
        }
        if self.sample_bytes_min == 0
            || self.sample_bytes_min > self.sample_bytes_max
            || self.sample_bytes_max > MAX_BLOCK_BYTES
        {
            return Err(Error::invalid(
                "sample sizes",
                format!("{}..{}", self.sample_bytes_min, self.sample_bytes_max),
                format!("need 1 <= min <= max <= {MAX_BLOCK_BYTES} bytes"),
            ));
        }
        if self.direct {
            let (what, bytes) = match self.kind {
                WorkloadKind::SmallFiles => ("small file size", self.small_file_bytes),
                _ => ("block size", self.block_size_bytes),
            };
            if bytes % DIRECT_ALIGN_BYTES != 0 {
                return Err(Error::invalid(
                    what,
                    bytes,
                    format!("must be a multiple of {DIRECT_ALIGN_BYTES} bytes with O_DIRECT"),
                ));
            }
        }
        Ok(())
    }
}

fn default_iodepth() -> u32 {
    DEFAULT_IODEPTH_OPS
}

/// How long a run lasts. Warm-up ops run the same stream but are not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunLimits {
    pub warmup_ms: u64,
    pub stop: Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// Measure for this long after the warm-up.
    DurationMs(u64),
    /// Measure this many ops in total, split evenly across threads.
    Ops(u64),
}

impl RunLimits {
    /// The same run cut into `parts` (compare's rounds).
    #[must_use]
    pub fn split(self, parts: u32) -> Self {
        let parts = u64::from(parts.max(1));
        Self {
            warmup_ms: self.warmup_ms / parts,
            stop: match self.stop {
                Stop::DurationMs(ms) => Stop::DurationMs((ms / parts).max(1)),
                Stop::Ops(ops) => Stop::Ops((ops / parts).max(1)),
            },
        }
    }
}

/// The item of `all` whose `name` is `text`, or an error listing the names.
fn parse_named<T: Copy>(
    all: &[T],
    name: fn(T) -> &'static str,
    what: &'static str,
    text: &str,
) -> Result<T> {
    all.iter()
        .copied()
        .find(|&item| name(item) == text)
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|&item| name(item)).collect();
            Error::invalid(what, text, format!("expected one of {}", names.join(", ")))
        })
}

#[cfg(test)]
mod tests {
    use super::{WorkloadKind, WorkloadSpec, MAX_IODEPTH_OPS};

    #[test]
    fn names_round_trip() {
        for kind in WorkloadKind::ALL {
            assert_eq!(kind.name().parse::<WorkloadKind>().ok(), Some(kind));
        }
        assert!("nope".parse::<WorkloadKind>().is_err());
    }

    #[test]
    fn defaults_validate_and_direct_needs_alignment() {
        for kind in WorkloadKind::ALL {
            assert!(WorkloadSpec::new(kind).validate().is_ok(), "{kind}");
        }
        let mut spec = WorkloadSpec::new(WorkloadKind::RandRead);
        spec.block_size_bytes = 1000;
        assert!(spec.validate().is_ok());
        spec.direct = true;
        assert!(spec.validate().is_err());
    }

    /// `iodepth` of `kind` with O_DIRECT and `block_bytes`: valid or not.
    fn check_iodepth(kind: WorkloadKind, iodepth: u32, block_bytes: u64, valid: bool) {
        let mut spec = WorkloadSpec::new(kind);
        spec.iodepth = iodepth;
        spec.block_size_bytes = block_bytes;
        spec.direct = true;
        assert_eq!(
            spec.validate().is_ok(),
            valid,
            "{kind} iodepth {iodepth} block {block_bytes}: {:?}",
            spec.validate()
        );
    }

    #[test]
    fn iodepth_bounds_block_workloads_and_direct_alignment() {
        for kind in WorkloadKind::ALL {
            check_iodepth(kind, 1, 4096, true);
            check_iodepth(kind, 0, 4096, false);
            check_iodepth(kind, MAX_IODEPTH_OPS + 1, 4096, false);
            check_iodepth(kind, 16, 4096, kind.is_block());
            check_iodepth(kind, MAX_IODEPTH_OPS, 4096, kind.is_block());
        }
        // A deep queue does not relax the O_DIRECT alignment rule.
        check_iodepth(WorkloadKind::RandRead, 16, 1000, false);
        check_iodepth(WorkloadKind::RandWrite, 16, 6144, false);
        check_iodepth(WorkloadKind::RandWrite, 16, 8192, true);
        // Reports written before `iodepth` existed still load, at depth 1.
        let mut json =
            serde_json::to_value(WorkloadSpec::new(WorkloadKind::RandRead)).expect("serializable");
        json.as_object_mut().expect("a struct").remove("iodepth");
        let old: WorkloadSpec = serde_json::from_value(json).expect("old report");
        assert_eq!(old.iodepth, 1);
    }
}
