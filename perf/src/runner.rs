//! The driver: creates a workload's files, then runs its op streams on
//! worker threads and records latencies. Each thread issues synchronous IO
//! (queue depth 1), or, for the block workloads at `iodepth` > 1, keeps
//! that many reads/writes in flight through its own io_uring (`ring`).
//! All decisions about *which* op come from `workload`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::buffer::AlignedBuffer;
use crate::error::{Error, Result};
use crate::latency::LatencyBook;
use crate::process::{self, CpuUsage};
use crate::ring::{BlockIo, Completion, Ring};
use crate::spec::{OpKind, RunLimits, Stop, WorkloadSpec};
use crate::workload::{self, FileId, Layout, Op, OpStream, SmallFile};

/// Chunk in which `prepare` writes data files.
pub const PREPARE_CHUNK_BYTES: u64 = 1 << 20;
/// How often the driver thread reports progress.
const PROGRESS_INTERVAL_MS: u64 = 100;
/// Workers publish their op count every this many ops (keeps the shared
/// counter off the hot path).
const PROGRESS_BATCH_OPS: u64 = 64;
/// The driver thread samples measured throughput about this often (for the
/// throughput-over-time plot); it reads the counter it already polls.
pub const TIMELINE_INTERVAL_MS: u64 = 1_000;
/// A last partial interval shorter than this is left out of the timeline
/// (too few ops to give a meaningful rate).
const TIMELINE_MIN_TAIL_MS: u64 = 200;

/// Gets told what the run is doing (the binary draws a progress bar).
pub trait Observer: Sync {
    fn phase(&self, _phase: &str) {}
    fn progress(&self, _progress: Progress) {}
}

/// Observer that shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Observer for Silent {}

#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Measured time so far (0 during warm-up).
    pub measured_ms: u64,
    pub warming_up: bool,
    /// Ops recorded so far.
    pub ops: u64,
    pub stop: Stop,
}

/// A workload's files, created under `<dir>/datenlord-perf`.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub work_dir: PathBuf,
    pub layout: Layout,
}

/// Result of one measured run (or the sum of several, see `merge`).
#[derive(Debug, Clone)]
pub struct Measurement {
    pub latency: LatencyBook,
    pub elapsed_ns: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub cpu: Option<CpuSample>,
    /// Throughput over time: (end of interval in measured seconds, ops/s in
    /// that interval), about one sample per `TIMELINE_INTERVAL_MS`. The op
    /// counts are published in batches of `PROGRESS_BATCH_OPS` per worker,
    /// so a sample may be off by that many ops per thread. Merged rounds
    /// are concatenated on the time axis.
    pub timeline: Vec<(f64, f64)>,
    /// Ops/s of each merged run (compare's rounds), in order; empty for a
    /// single run.
    pub round_ops_per_s: Vec<f64>,
}

/// CPU seconds the process under test used during the measured phase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CpuSample {
    pub pid: u32,
    pub cpu_seconds: f64,
}

impl Measurement {
    pub fn empty() -> Result<Self> {
        Ok(Self {
            latency: LatencyBook::new()?,
            elapsed_ns: 0,
            bytes_read: 0,
            bytes_written: 0,
            cpu: None,
            timeline: Vec::new(),
            round_ops_per_s: Vec::new(),
        })
    }

    /// Adds another run of the same workload (a compare round).
    pub fn merge(&mut self, other: &Self) -> Result<()> {
        self.latency.merge(&other.latency)?;
        if other.round_ops_per_s.is_empty() {
            self.round_ops_per_s.push(other.ops_per_s());
        } else {
            self.round_ops_per_s.extend(&other.round_ops_per_s);
        }
        let offset_s = self.elapsed_s();
        self.timeline
            .extend(other.timeline.iter().map(|&(t, rate)| (t + offset_s, rate)));
        self.elapsed_ns += other.elapsed_ns;
        self.bytes_read += other.bytes_read;
        self.bytes_written += other.bytes_written;
        self.cpu = match (self.cpu, other.cpu) {
            (Some(a), Some(b)) => Some(CpuSample {
                pid: a.pid,
                cpu_seconds: a.cpu_seconds + b.cpu_seconds,
            }),
            (a, b) => a.or(b),
        };
        Ok(())
    }

    pub fn elapsed_s(&self) -> f64 {
        self.elapsed_ns as f64 / 1e9
    }

    fn per_s(&self, value: f64) -> f64 {
        if self.elapsed_ns == 0 {
            0.0
        } else {
            value / self.elapsed_s()
        }
    }

    pub fn ops_per_s(&self) -> f64 {
        self.per_s(self.latency.total_count() as f64)
    }

    pub fn kind_ops_per_s(&self, kind: OpKind) -> f64 {
        self.per_s(self.latency.count(kind) as f64)
    }

    pub fn bytes_per_s(&self) -> f64 {
        self.per_s((self.bytes_read + self.bytes_written) as f64)
    }

    pub fn cpu_usage(&self) -> Option<CpuUsage> {
        let cpu = self.cpu?;
        let ops = self.latency.total_count().max(1) as f64;
        Some(CpuUsage {
            pid: cpu.pid,
            cpu_seconds: cpu.cpu_seconds,
            cores_busy: self.per_s(cpu.cpu_seconds),
            cpu_us_per_op: cpu.cpu_seconds * 1e6 / ops,
        })
    }
}

/// Creates the workload's directories and files (untimed). Data files that
/// already exist with the right size are kept, so repeated runs are quick.
pub fn prepare(dir: &Path, spec: &WorkloadSpec, observer: &dyn Observer) -> Result<Prepared> {
    spec.validate()?;
    let work_dir = dir.join(workload::WORK_DIR_NAME);
    let layout = Layout::of(spec);
    observer.phase(&format!(
        "preparing {} files ({} bytes) in {}",
        layout.files.len(),
        layout.total_bytes(),
        work_dir.display()
    ));
    tracing::info!(dir = %work_dir.display(), files = layout.files.len(), bytes = layout.total_bytes(), "prepare");
    fs::create_dir_all(&work_dir).map_err(|e| Error::io("create directory", &work_dir, e))?;
    for rel in &layout.dirs {
        let path = work_dir.join(rel);
        fs::create_dir_all(&path).map_err(|e| Error::io("create directory", &path, e))?;
    }
    let fill = AlignedBuffer::new(PREPARE_CHUNK_BYTES, spec.seed);
    for entry in &layout.files {
        let path = work_dir.join(&entry.rel_path);
        if fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == entry.size_bytes) {
            continue;
        }
        write_file(&path, entry.size_bytes, fill.as_slice())?;
    }
    let prepared = Prepared { work_dir, layout };
    if spec.direct {
        probe_direct(&prepared)?;
    }
    Ok(prepared)
}

fn write_file(path: &Path, size_bytes: u64, fill: &[u8]) -> Result<()> {
    let mut handle = File::create(path).map_err(|e| Error::io("create", path, e))?;
    let mut left = size_bytes;
    while left > 0 {
        let n = left.min(fill.len() as u64) as usize;
        handle
            .write_all(&fill[..n])
            .map_err(|e| Error::io("write", path, e))?;
        left -= n as u64;
    }
    Ok(())
}

/// Refuses early, with a clear message, when the target does not take O_DIRECT.
fn probe_direct(prepared: &Prepared) -> Result<()> {
    let probe = prepared.work_dir.join("direct-probe");
    let result = open(&probe, OpenMode::Create, true).map(drop);
    let _ = fs::remove_file(&probe);
    result
}

/// Removes everything `prepare` and the run created.
pub fn cleanup(prepared: &Prepared) -> Result<()> {
    fs::remove_dir_all(&prepared.work_dir).map_err(|e| Error::io("remove", &prepared.work_dir, e))
}

/// Runs the workload on prepared files: warm-up, then the measured phase.
/// `pid`: process whose CPU time is reported (e.g. the FUSE daemon).
pub fn measure(
    prepared: &Prepared,
    spec: &WorkloadSpec,
    limits: RunLimits,
    pid: Option<u32>,
    observer: &dyn Observer,
) -> Result<Measurement> {
    spec.validate()?;
    debug_assert_eq!(
        prepared.layout,
        Layout::of(spec),
        "prepared for another spec"
    );
    let start = Instant::now();
    let measure_start = start + Duration::from_millis(limits.warmup_ms);
    let measure_end = match limits.stop {
        Stop::DurationMs(ms) => Some(measure_start + Duration::from_millis(ms)),
        Stop::Ops(_) => None,
    };
    let shared = Shared {
        ops: AtomicU64::new(0),
        finished: AtomicU32::new(0),
        abort: AtomicBool::new(false),
    };
    observer.phase(&format!(
        "running {} on {}",
        spec.kind,
        prepared.work_dir.display()
    ));
    let outcome = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..spec.threads)
            .map(|thread| {
                let quota = match limits.stop {
                    Stop::Ops(total) => Some(share(total, spec.threads, thread)),
                    Stop::DurationMs(_) => None,
                };
                let clock = Clock {
                    measure_start,
                    measure_end,
                    quota,
                };
                let shared = &shared;
                scope.spawn(move || {
                    let result =
                        Worker::new(prepared, spec, thread).and_then(|w| w.run(&clock, shared));
                    if result.is_err() {
                        shared.abort.store(true, Ordering::Relaxed);
                    }
                    shared.finished.fetch_add(1, Ordering::Release);
                    result
                })
            })
            .collect();
        let (cpu_start, timeline) = drive(
            &shared,
            spec.threads,
            measure_start,
            limits.stop,
            pid,
            observer,
        );
        let cpu_end = pid.map(process::cpu_seconds).transpose();
        let results: Vec<Result<WorkerOutput>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect();
        (cpu_start, cpu_end, results, timeline)
    });
    let (cpu_start, cpu_end, results, timeline) = outcome;
    let mut total = Measurement::empty()?;
    total.timeline = timeline;
    let mut finish = measure_start;
    for result in results {
        let output = result?;
        total.latency.merge(&output.latency)?;
        total.bytes_read += output.bytes_read;
        total.bytes_written += output.bytes_written;
        finish = finish.max(output.finish);
    }
    total.elapsed_ns = finish.saturating_duration_since(measure_start).as_nanos() as u64;
    if let (Some(pid), Some(before), Some(after)) = (pid, cpu_start?, cpu_end?) {
        total.cpu = Some(CpuSample {
            pid,
            cpu_seconds: (after - before).max(0.0),
        });
    }
    Ok(total)
}

/// Share of `total` ops for `thread`: even, the first threads take the rest.
fn share(total: u64, threads: u32, thread: u32) -> u64 {
    let threads = u64::from(threads);
    total / threads + u64::from(u64::from(thread) < total % threads)
}

/// Driver thread: progress reports, the CPU sample at the start of the
/// measured phase and the throughput timeline. Returns the CPU sample and
/// the timeline.
fn drive(
    shared: &Shared,
    threads: u32,
    measure_start: Instant,
    stop: Stop,
    pid: Option<u32>,
    observer: &dyn Observer,
) -> (Result<Option<f64>>, Vec<(f64, f64)>) {
    let mut cpu_start = None;
    let mut timeline = Timeline::default();
    loop {
        let now = Instant::now();
        let warming_up = now < measure_start;
        let measured_ms = now.saturating_duration_since(measure_start).as_millis() as u64;
        let ops = shared.ops.load(Ordering::Relaxed);
        if !warming_up && cpu_start.is_none() {
            match pid.map(process::cpu_seconds).transpose() {
                Ok(sample) => cpu_start = Some(sample),
                Err(e) => return (Err(e), timeline.samples),
            }
        }
        if shared.finished.load(Ordering::Acquire) == threads {
            if !warming_up {
                timeline.finish(measured_ms, ops);
            }
            break;
        }
        if !warming_up {
            timeline.tick(measured_ms, ops);
        }
        observer.progress(Progress {
            measured_ms,
            warming_up,
            ops,
            stop,
        });
        let sleep = if warming_up {
            (measure_start - now).min(Duration::from_millis(PROGRESS_INTERVAL_MS))
        } else {
            Duration::from_millis(PROGRESS_INTERVAL_MS)
        };
        // Wake early when the workers are done (tiny op-count runs).
        let deadline = now + sleep;
        while Instant::now() < deadline && shared.finished.load(Ordering::Acquire) < threads {
            std::thread::sleep(Duration::from_millis(1).min(sleep));
        }
    }
    (Ok(cpu_start.flatten()), timeline.samples)
}

/// Per-interval throughput from the shared op counter.
#[derive(Default)]
struct Timeline {
    samples: Vec<(f64, f64)>,
    last_ms: u64,
    last_ops: u64,
}

impl Timeline {
    fn push(&mut self, measured_ms: u64, ops: u64) {
        // A run done within its first millisecond counts as one.
        let span_ms = (measured_ms - self.last_ms).max(1);
        let rate = (ops - self.last_ops) as f64 * 1000.0 / span_ms as f64;
        self.samples.push((measured_ms as f64 / 1000.0, rate));
        self.last_ms = measured_ms;
        self.last_ops = ops;
    }

    fn tick(&mut self, measured_ms: u64, ops: u64) {
        if measured_ms >= self.last_ms + TIMELINE_INTERVAL_MS {
            self.push(measured_ms, ops);
        }
    }

    /// The last, partial interval; a run shorter than one interval (even
    /// one shorter than a millisecond) still gets one sample.
    fn finish(&mut self, measured_ms: u64, ops: u64) {
        let span_ms = measured_ms.saturating_sub(self.last_ms);
        let first = self.samples.is_empty() && (span_ms > 0 || ops > self.last_ops);
        if span_ms >= TIMELINE_MIN_TAIL_MS || first {
            self.push(measured_ms, ops);
        }
    }
}

struct Shared {
    ops: AtomicU64,
    finished: AtomicU32,
    abort: AtomicBool,
}

struct Clock {
    measure_start: Instant,
    measure_end: Option<Instant>,
    quota: Option<u64>,
}

struct WorkerOutput {
    latency: LatencyBook,
    bytes_read: u64,
    bytes_written: u64,
    finish: Instant,
}

#[derive(Clone, Copy)]
enum OpenMode {
    Read,
    ReadWrite,
    Create,
}

fn open(path: &Path, mode: OpenMode, direct: bool) -> Result<File> {
    let mut options = OpenOptions::new();
    match mode {
        OpenMode::Read => options.read(true),
        OpenMode::ReadWrite => options.read(true).write(true),
        OpenMode::Create => options.write(true).create(true).truncate(true),
    };
    if direct {
        options.custom_flags(libc::O_DIRECT);
    }
    options
        .open(path)
        .map_err(|e| io_error("open", path, e, direct))
}

/// EINVAL under O_DIRECT means the file system (or the alignment) refuses
/// direct IO: say so instead of a bare "Invalid argument".
fn io_error(op: &'static str, path: &Path, error: io::Error, direct: bool) -> Error {
    if direct && error.raw_os_error() == Some(libc::EINVAL) {
        Error::DirectUnsupported {
            path: path.to_owned(),
        }
    } else {
        Error::io(op, path, error)
    }
}

/// Seed of worker `thread`'s buffers (what its writes write).
pub fn worker_seed(spec: &WorkloadSpec, thread: u32) -> u64 {
    spec.seed ^ u64::from(thread)
}

struct Worker<'a> {
    prepared: &'a Prepared,
    direct: bool,
    iodepth: u32,
    /// Seed of the slot buffers of `ring` (what queued writes write):
    /// `worker_seed`.
    seed: u64,
    stream: OpStream,
    buffer: AlignedBuffer,
    /// The thread's data file of the block workloads, kept open.
    data_file: Option<(FileId, File)>,
    /// The small file between `Create` and `Fsync`.
    small_file: Option<(SmallFile, File)>,
    latency: LatencyBook,
    bytes_read: u64,
    bytes_written: u64,
}

impl<'a> Worker<'a> {
    fn new(prepared: &'a Prepared, spec: &WorkloadSpec, thread: u32) -> Result<Self> {
        Ok(Self {
            prepared,
            direct: spec.direct,
            iodepth: spec.iodepth,
            seed: worker_seed(spec, thread),
            stream: OpStream::new(spec, thread),
            buffer: AlignedBuffer::new(workload::max_io_bytes(spec), worker_seed(spec, thread)),
            data_file: None,
            small_file: None,
            latency: LatencyBook::new()?,
            bytes_read: 0,
            bytes_written: 0,
        })
    }

    fn run(self, clock: &Clock, shared: &Shared) -> Result<WorkerOutput> {
        if self.iodepth > 1 {
            self.run_queued(clock, shared)
        } else {
            self.run_sync(clock, shared)
        }
    }

    fn run_sync(mut self, clock: &Clock, shared: &Shared) -> Result<WorkerOutput> {
        let mut recorded = 0u64;
        let mut unpublished = 0u64;
        let mut now = Instant::now();
        loop {
            if shared.abort.load(Ordering::Relaxed) {
                break;
            }
            let recording = now >= clock.measure_start;
            let done = clock.measure_end.is_some_and(|end| now >= end)
                || clock.quota.is_some_and(|q| recorded >= q);
            if recording && done {
                break;
            }
            let op = self.stream.next_op();
            self.open_data_file(op)?;
            let started = Instant::now();
            let bytes = self.execute(op)?;
            now = Instant::now();
            if recording {
                self.latency
                    .record(op.kind(), (now - started).as_nanos() as u64);
                match op {
                    Op::Write { .. } | Op::WriteSmall { .. } => self.bytes_written += bytes,
                    _ => self.bytes_read += bytes,
                }
                recorded += 1;
                unpublished += 1;
                if unpublished == PROGRESS_BATCH_OPS {
                    shared.ops.fetch_add(unpublished, Ordering::Relaxed);
                    unpublished = 0;
                }
            }
        }
        shared.ops.fetch_add(unpublished, Ordering::Relaxed);
        Ok(WorkerOutput {
            latency: self.latency,
            bytes_read: self.bytes_read,
            bytes_written: self.bytes_written,
            finish: now,
        })
    }

    /// `iodepth` block IOs in flight: issue while a slot is free and the
    /// run goes on, wait for at least one completion, record, repeat; at
    /// the end drain what is in flight. An op counts in the measured phase
    /// if it was *issued* in it (as on the synchronous path), so an op
    /// quota is met exactly. Latency runs from the op's submission to the
    /// reap of its completion (one clock read per batch of completions).
    fn run_queued(mut self, clock: &Clock, shared: &Shared) -> Result<WorkerOutput> {
        let buffer_bytes = self.buffer.len() as u64;
        let mut ring = Ring::new(self.iodepth, buffer_bytes, self.seed)
            .map_err(|e| Error::io("set up io_uring for", &self.prepared.work_dir, e))?;
        let mut completions: Vec<Completion> = Vec::with_capacity(self.iodepth as usize);
        let mut issued_recording = 0u64;
        let mut unpublished = 0u64;
        let mut first_error: Option<Error> = None;
        let mut now = Instant::now();
        loop {
            let stopping = first_error.is_some() || shared.abort.load(Ordering::Relaxed);
            while !stopping && ring.has_free_slot() {
                let recording = now >= clock.measure_start;
                let done = clock.measure_end.is_some_and(|end| now >= end)
                    || clock.quota.is_some_and(|q| issued_recording >= q);
                if recording && done {
                    break;
                }
                let op = self.stream.next_op();
                let io = self.block_io(op)?;
                self.open_data_file(op)?;
                let (_, handle) = self.data_file.as_ref().expect("opened by open_data_file");
                ring.start(handle.as_raw_fd(), io, recording)
                    .map_err(|e| Error::io("submit io_uring of", &self.prepared.work_dir, e))?;
                issued_recording += u64::from(recording);
            }
            if ring.in_flight() == 0 {
                break;
            }
            ring.submit_and_wait()
                .map_err(|e| Error::io("submit io_uring of", &self.prepared.work_dir, e))?;
            now = Instant::now();
            ring.reap(now, &mut completions);
            for completion in completions.drain(..) {
                let bytes = match completion.result {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        if first_error.is_none() {
                            let (op, path) = self.queued_error_context(completion.io);
                            first_error = Some(io_error(op, &path, e, self.direct));
                        }
                        continue;
                    }
                };
                if !completion.recording {
                    continue;
                }
                self.latency
                    .record(completion.io.kind, completion.latency_ns);
                match completion.io.kind {
                    OpKind::Write => self.bytes_written += bytes,
                    _ => self.bytes_read += bytes,
                }
                unpublished += 1;
                if unpublished == PROGRESS_BATCH_OPS {
                    shared.ops.fetch_add(unpublished, Ordering::Relaxed);
                    unpublished = 0;
                }
            }
        }
        shared.ops.fetch_add(unpublished, Ordering::Relaxed);
        if let Some(error) = first_error {
            return Err(error);
        }
        Ok(WorkerOutput {
            latency: self.latency,
            bytes_read: self.bytes_read,
            bytes_written: self.bytes_written,
            finish: now,
        })
    }

    /// A block workload's op as the ring takes it.
    fn block_io(&self, op: Op) -> Result<BlockIo> {
        match op {
            Op::Read {
                offset_bytes,
                len_bytes,
                ..
            }
            | Op::Write {
                offset_bytes,
                len_bytes,
                ..
            } => Ok(BlockIo {
                kind: op.kind(),
                offset_bytes,
                len_bytes,
            }),
            _ => Err(Error::invalid(
                "iodepth",
                self.iodepth,
                format!("{:?} is not a block read or write", op.kind()),
            )),
        }
    }

    /// The op name and path an error of a queued IO is reported with.
    fn queued_error_context(&self, io: BlockIo) -> (&'static str, PathBuf) {
        let path = self.data_file.as_ref().map_or_else(
            || self.prepared.work_dir.clone(),
            |(file, _)| self.file_path(*file),
        );
        let op = match io.kind {
            OpKind::Write => "write",
            _ => "read",
        };
        (op, path)
    }

    fn path(&self, rel: &Path) -> PathBuf {
        self.prepared.work_dir.join(rel)
    }

    fn file_path(&self, file: FileId) -> PathBuf {
        self.path(&self.prepared.layout.files[file.0 as usize].rel_path)
    }

    /// Opens a block workload's data file outside the timed section.
    fn open_data_file(&mut self, op: Op) -> Result<()> {
        let (Op::Read { file, .. } | Op::Write { file, .. }) = op else {
            return Ok(());
        };
        if self
            .data_file
            .as_ref()
            .is_some_and(|(open, _)| *open == file)
        {
            return Ok(());
        }
        let handle = open(&self.file_path(file), OpenMode::ReadWrite, self.direct)?;
        self.data_file = Some((file, handle));
        Ok(())
    }

    /// Executes one op; returns the bytes it moved.
    fn execute(&mut self, op: Op) -> Result<u64> {
        let direct = self.direct;
        match op {
            Op::Read {
                file,
                offset_bytes,
                len_bytes,
            } => {
                let path = self.file_path(file);
                let (_, handle) = self.data_file.as_ref().expect("opened by open_data_file");
                let buf = &mut self.buffer.as_mut_slice()[..len_bytes as usize];
                let n = handle
                    .read_at(buf, offset_bytes)
                    .map_err(|e| io_error("read", &path, e, direct))?;
                Ok(n as u64)
            }
            Op::Write {
                file,
                offset_bytes,
                len_bytes,
            } => {
                let path = self.file_path(file);
                let (_, handle) = self.data_file.as_ref().expect("opened by open_data_file");
                let buf = &self.buffer.as_slice()[..len_bytes as usize];
                handle
                    .write_all_at(buf, offset_bytes)
                    .map_err(|e| io_error("write", &path, e, direct))?;
                Ok(len_bytes)
            }
            Op::Create { file } => {
                let path = self.path(&file.rel_path());
                let handle = open(&path, OpenMode::Create, direct)?;
                self.small_file = Some((file, handle));
                Ok(0)
            }
            Op::WriteSmall { file, len_bytes } => {
                let path = self.path(&file.rel_path());
                let (_, handle) = self.small_file_for(file, &path)?;
                let buf = &self.buffer.as_slice()[..len_bytes as usize];
                handle
                    .write_all_at(buf, 0)
                    .map_err(|e| io_error("write", &path, e, direct))?;
                Ok(len_bytes)
            }
            Op::Fsync { file } => {
                let path = self.path(&file.rel_path());
                let (_, handle) = self.small_file_for(file, &path)?;
                handle
                    .sync_all()
                    .map_err(|e| Error::io("fsync", &path, e))?;
                self.small_file = None;
                Ok(0)
            }
            Op::Stat { file } => {
                let path = self.path(&file.rel_path());
                fs::metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
                Ok(0)
            }
            Op::ReadSmall { file, len_bytes } => {
                let path = self.path(&file.rel_path());
                let handle = open(&path, OpenMode::Read, direct)?;
                let buf = &mut self.buffer.as_mut_slice()[..len_bytes as usize];
                let n = handle
                    .read_at(buf, 0)
                    .map_err(|e| io_error("read", &path, e, direct))?;
                Ok(n as u64)
            }
            Op::Unlink { file } => {
                let path = self.path(&file.rel_path());
                fs::remove_file(&path).map_err(|e| Error::io("unlink", &path, e))?;
                Ok(0)
            }
            Op::List { dir } => {
                let path = self.path(&self.prepared.layout.listed_dirs[dir.0 as usize]);
                let mut entries = 0u64;
                for entry in fs::read_dir(&path).map_err(|e| Error::io("list", &path, e))? {
                    entry.map_err(|e| Error::io("list", &path, e))?;
                    entries += 1;
                }
                debug_assert!(entries > 0);
                Ok(0)
            }
            Op::Sample { file } => {
                let path = self.file_path(file);
                let size_bytes = self.prepared.layout.files[file.0 as usize].size_bytes;
                let handle = open(&path, OpenMode::Read, direct)?;
                let buf = self.buffer.as_mut_slice();
                let mut offset = 0u64;
                // Stop at the known size: with O_DIRECT a read at the
                // unaligned end-of-file offset would fail.
                while offset < size_bytes {
                    let n = handle
                        .read_at(buf, offset)
                        .map_err(|e| io_error("read", &path, e, direct))?;
                    if n == 0 {
                        break;
                    }
                    offset += n as u64;
                }
                Ok(offset)
            }
        }
    }

    fn small_file_for(&self, file: SmallFile, path: &Path) -> Result<&(SmallFile, File)> {
        match &self.small_file {
            Some(open) if open.0 == file => Ok(open),
            _ => Err(Error::io(
                "use",
                path,
                io::Error::other("small file is not open (op stream out of order)"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{share, Measurement, Timeline};

    #[test]
    fn timeline_samples_each_interval_and_the_tail() {
        let mut t = Timeline::default();
        t.tick(500, 50);
        t.tick(1_000, 100);
        t.tick(1_500, 160);
        t.tick(2_100, 210);
        t.finish(2_150, 215);
        t.finish(2_400, 240);
        assert_eq!(t.samples, [(1.0, 100.0), (2.1, 100.0), (2.4, 100.0)]);
        let mut short = Timeline::default();
        short.finish(50, 10);
        assert_eq!(short.samples, [(0.05, 200.0)]);
        // 400 cached reads can all finish within the first millisecond.
        let mut instant = Timeline::default();
        instant.finish(0, 400);
        assert_eq!(instant.samples, [(0.0, 400_000.0)]);
        let mut idle = Timeline::default();
        idle.finish(0, 0);
        assert!(idle.samples.is_empty());

        let mut a = Measurement::empty().expect("bounds");
        a.elapsed_ns = 2_000_000_000;
        a.timeline = vec![(1.0, 5.0), (2.0, 6.0)];
        let mut total = Measurement::empty().expect("bounds");
        total.merge(&a).expect("merge");
        total.merge(&a).expect("merge");
        assert_eq!(
            total.timeline,
            [(1.0, 5.0), (2.0, 6.0), (3.0, 5.0), (4.0, 6.0)]
        );
    }

    #[test]
    fn shares_add_up() {
        for (total, threads) in [(10, 3), (2, 4), (1000, 7), (0, 2)] {
            let sum: u64 = (0..threads).map(|t| share(total, threads, t)).sum();
            assert_eq!(sum, total);
        }
    }
}
