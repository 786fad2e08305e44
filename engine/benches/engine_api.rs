//! Benchmark of the engine API (issue 3): 4 KiB random reads and 1 MiB
//! sequential reads that hit the memory tier or the NVMe tier, on 1..n
//! cores, reporting ops/s and latency percentiles (hdrhistogram).
//!
//! Run it through `scripts/bench-engine`, which adds the fio baseline on
//! the cache file this bench leaves behind (`--keep-cache`), or directly:
//! `cargo bench -p datenlord-engine --bench engine_api -- --help`.
//!
//! How it measures:
//! - Each core count gets a fresh engine per tier. Memory runs: NVMe tier
//!   off, every memory slot filled. NVMe runs: memory tier off (every
//!   fetched block goes down to NVMe), every NVMe slot filled, so the whole
//!   laid-out cache file is written and fio can read any of it.
//! - Each shard reads the blocks it owns (the local path); `-any` workloads
//!   read every block through the local shard, which forwards to the owner.
//! - Queue depth = tasks per shard. A task times each read with one clock
//!   read per op (the end of one op is the start of the next).
//! - A warm-up phase checks every byte read against the source; the
//!   measured phase then runs for a fixed time. Afterwards the engine's
//!   counters must show that every read was a hit on the tier under test and
//!   that nothing was fetched from the source; a run that fails this is
//!   marked and the bench exits non-zero.
//! - `raw4k`/`raw1m` rows are the same loop copying from a plain buffer of
//!   the same size on the same cores: the floor of the memory-tier path.
//!   `glommio4k` rows read the cache file with glommio alone (same CPUs, io
//!   memory and ring depth, no engine): the floor of the NVMe-tier path.
//! - CPU columns are the measuring threads' own CPU time (user + system)
//!   over the measured phase, per core and per op.

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datenlord_engine::config::CACHE_FILE_NAME;
use datenlord_engine::layout::SUPERBLOCK_BYTES;
use datenlord_engine::shard::DISK_WRITES_INFLIGHT_MAX;
use datenlord_engine::{
    BlockId, BlockSize, DiskConfig, Engine, EngineConfig, EngineHandle, MemoryStore, ShardContext,
    ShardStats,
};
use futures::executor::block_on;
use hdrhistogram::Histogram;

/// Bytes of a small random read.
const SMALL_READ_BYTES: usize = 4096;
/// Highest latency the histograms hold; slower ops saturate to it.
const LATENCY_NS_MAX: u64 = 10_000_000_000;
/// Significant digits of the latency histograms.
const LATENCY_SIGFIG: u8 = 3;
/// Ops between two `yield_if_needed` calls of a task, so a task whose reads
/// never block (memory hits) still lets the executor's other tasks run.
const YIELD_EVERY_OPS: u64 = 256;
/// NVMe writes the fill keeps in flight per shard: half the engine's bound,
/// beyond which it silently skips writing a block down.
const FILL_WRITES_INFLIGHT_MAX: u64 = DISK_WRITES_INFLIGHT_MAX as u64 / 2;
/// How long to wait for the fill's NVMe writes to land.
const FILL_WRITES_TIMEOUT_SECS: u64 = 300;
/// Inode of the memory-tier data set.
const MEMORY_INO: u64 = 1;
/// Inode of the NVMe-tier data set.
const NVME_INO: u64 = 2;
/// Multiplier of the content generator (2^64 / golden ratio).
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

const USAGE: &str = "\
engine_api: benchmark of the DatenLord engine API

USAGE: cargo bench -p datenlord-engine --bench engine_api -- [OPTIONS]

OPTIONS:
  --cores LIST            core counts to run, e.g. 1,2            [1,2]
  --workload LIST         mem4k,mem1m,nvme4k,nvme1m; add -any to read every
                          block through the local shard (cross-shard)
                                                                  [mem4k,mem1m,nvme4k,nvme1m]
  --qd LIST               tasks per shard for nvme* workloads     [1,32]
  --mem-qd LIST           tasks per shard for mem* workloads      [1]
  --duration-secs N       measured time per run                   [5]
  --warmup-secs N         verified warm-up time per run           [1]
  --baseline-secs N       time of each raw memcpy baseline run    [2]
  --cache-dir DIR         directory of the NVMe cache file        [$HOME/.cache/datenlord-bench]
  --cache-bytes SIZE      cache file size (e.g. 2GiB)             [2GiB]
  --memory-bytes SIZE     memory-tier data per run (e.g. 256MiB)  [256MiB]
  --keep-cache            keep the cache file (for fio) and print FIO_TARGET
  --hugepages             back the memory tier with hugetlb pages
  --seed N                seed of the access patterns             [42]
  --help                  this text
";

fn main() {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("engine_api: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    match run(&args) {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("engine_api: some runs failed their hit checks (marked FAILED above)");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("engine_api: {e}");
            std::process::exit(1);
        }
    }
}

// ----- arguments ------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tier {
    Memory,
    Nvme,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pattern {
    /// 4 KiB at a random 4 KiB-aligned offset of a random block.
    Random4k,
    /// Whole blocks in file order.
    Sequential1m,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Workload {
    tier: Tier,
    pattern: Pattern,
    /// Read every block through the local shard (half of them forwarded
    /// on 2 cores) instead of only the blocks it owns.
    any_shard: bool,
}

impl Workload {
    fn parse(s: &str) -> Result<Self, String> {
        let (base, any_shard) = match s.strip_suffix("-any") {
            Some(base) => (base, true),
            None => (s, false),
        };
        let (tier, pattern) = match base {
            "mem4k" => (Tier::Memory, Pattern::Random4k),
            "mem1m" => (Tier::Memory, Pattern::Sequential1m),
            "nvme4k" => (Tier::Nvme, Pattern::Random4k),
            "nvme1m" => (Tier::Nvme, Pattern::Sequential1m),
            _ => return Err(format!("unknown workload {s:?}")),
        };
        Ok(Self {
            tier,
            pattern,
            any_shard,
        })
    }

    fn name(self) -> String {
        let tier = match self.tier {
            Tier::Memory => "mem",
            Tier::Nvme => "nvme",
        };
        let size = match self.pattern {
            Pattern::Random4k => "4k",
            Pattern::Sequential1m => "1m",
        };
        let route = if self.any_shard { "-any" } else { "" };
        format!("{tier}{size}{route}")
    }
}

#[derive(Clone, Debug)]
struct Args {
    cores: Vec<usize>,
    workloads: Vec<Workload>,
    nvme_qd: Vec<usize>,
    mem_qd: Vec<usize>,
    duration: Duration,
    warmup: Duration,
    baseline: Duration,
    cache_dir: PathBuf,
    cache_bytes: u64,
    memory_bytes: u64,
    keep_cache: bool,
    hugepages: bool,
    seed: u64,
}

impl Args {
    /// `Ok(None)` for `--help`.
    fn parse(mut words: impl Iterator<Item = String>) -> Result<Option<Self>, String> {
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
        let mut args = Self {
            cores: vec![1, 2],
            workloads: ["mem4k", "mem1m", "nvme4k", "nvme1m"]
                .iter()
                .map(|w| Workload::parse(w))
                .collect::<Result<_, _>>()?,
            nvme_qd: vec![1, 32],
            mem_qd: vec![1],
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            baseline: Duration::from_secs(2),
            cache_dir: home.join(".cache/datenlord-bench"),
            cache_bytes: 2 << 30,
            memory_bytes: 256 << 20,
            keep_cache: false,
            hugepages: false,
            seed: 42,
        };
        while let Some(flag) = words.next() {
            let mut value = || words.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                // cargo bench passes --bench to harness = false targets.
                "--bench" => {}
                "--help" | "-h" => return Ok(None),
                "--cores" => args.cores = parse_list(&value()?)?,
                "--workload" | "--workloads" => {
                    args.workloads = value()?
                        .split(',')
                        .map(Workload::parse)
                        .collect::<Result<_, _>>()?;
                }
                "--qd" => args.nvme_qd = parse_list(&value()?)?,
                "--mem-qd" => args.mem_qd = parse_list(&value()?)?,
                "--duration-secs" => args.duration = parse_secs(&value()?)?,
                "--warmup-secs" => args.warmup = parse_secs(&value()?)?,
                "--baseline-secs" => args.baseline = parse_secs(&value()?)?,
                "--cache-dir" => args.cache_dir = PathBuf::from(value()?),
                "--cache-bytes" => args.cache_bytes = parse_bytes(&value()?)?,
                "--memory-bytes" => args.memory_bytes = parse_bytes(&value()?)?,
                "--keep-cache" => args.keep_cache = true,
                "--hugepages" => args.hugepages = true,
                "--seed" => {
                    let v = value()?;
                    args.seed = v.parse().map_err(|e| format!("--seed {v}: {e}"))?;
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if args.cores.contains(&0) || args.nvme_qd.contains(&0) || args.mem_qd.contains(&0) {
            return Err("core counts and queue depths must be at least 1".into());
        }
        Ok(Some(args))
    }
}

fn parse_list(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .map(|v| v.trim().parse().map_err(|e| format!("{v:?}: {e}")))
        .collect()
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!("{s:?}: a duration must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let number: u64 = number.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => return Err(format!("{s:?}: unknown unit (use KiB, MiB or GiB)")),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

// ----- data ------------------------------------------------------------

/// splitmix64: a seeded, allocation-free PRNG for the access patterns.
#[derive(Clone, Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (the modulo bias is irrelevant here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Deterministic content of a block, different for every block and word.
fn content(id: BlockId, len: usize) -> Vec<u8> {
    let seed = SplitMix(id.ino.0 ^ id.index.rotate_left(20) ^ id.version.rotate_left(40)).next();
    let mut data = Vec::with_capacity(len);
    for word in 0..(len / 8) as u64 {
        data.extend_from_slice(&(seed ^ word.wrapping_mul(GOLDEN_GAMMA)).to_le_bytes());
    }
    data.resize(len, 0);
    data
}

/// The blocks of one run: in the source, and split by owner shard.
#[derive(Clone, Debug)]
struct DataSet {
    store: Arc<MemoryStore>,
    /// Per shard, the blocks it owns in file (index) order.
    owned: Arc<Vec<Vec<BlockId>>>,
    /// Every block in file order.
    all: Arc<Vec<BlockId>>,
}

impl DataSet {
    /// Exactly `per_shard` blocks owned by each shard, taken in index order
    /// from one file (an index whose owner already has its share is left
    /// out), so each shard's tier can be filled to the last slot.
    fn new(ino: u64, shards: usize, per_shard: usize, block_bytes: usize) -> Self {
        let store = MemoryStore::new();
        let mut owned = vec![Vec::with_capacity(per_shard); shards];
        let mut all = Vec::with_capacity(per_shard * shards);
        let mut index = 0;
        while all.len() < per_shard * shards {
            let id = BlockId::new(ino, index, 1);
            let mine = &mut owned[id.key().owner(shards).index()];
            if mine.len() < per_shard {
                store.put(id, content(id, block_bytes));
                mine.push(id);
                all.push(id);
            }
            index += 1;
        }
        Self {
            store,
            owned: Arc::new(owned),
            all: Arc::new(all),
        }
    }

    fn blocks(&self) -> u64 {
        self.all.len() as u64
    }
}

// ----- runs ------------------------------------------------------------

/// One measured run, as printed.
#[derive(Clone, Debug)]
struct Row {
    workload: String,
    cores: usize,
    /// `None` for the raw baselines (one thread per core, no tasks).
    qd: Option<usize>,
    ops: u64,
    secs: f64,
    op_bytes: usize,
    hist: Histogram<u64>,
    /// Cores kept busy by the measuring threads (see [`Measured::busy`]).
    busy: f64,
    /// Counter deltas over the whole run (warm-up included).
    counters: Option<ShardStats>,
    /// Why the run's hit check failed, if it did.
    failure: Option<String>,
}

impl Row {
    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    /// CPU time of the measuring threads per op.
    fn cpu_us_per_op(&self) -> f64 {
        1e6 * self.busy / self.ops_per_sec()
    }

    fn us(&self, quantile: f64) -> f64 {
        self.hist.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn print_table_line(&self) {
        let ops = self.ops_per_sec();
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {:.0} | {:.2} | {} |",
            self.workload,
            self.cores,
            self.qd.map_or_else(|| "-".into(), |q| q.to_string()),
            ops,
            ops / self.cores as f64,
            ops * self.op_bytes as f64 / f64::from(1 << 20),
            self.us(0.5),
            self.us(0.99),
            self.us(0.999),
            self.hist.max() as f64 / 1000.0,
            100.0 * self.busy / self.cores as f64,
            self.cpu_us_per_op(),
            match (&self.failure, &self.counters) {
                (Some(_), _) => "FAILED",
                (None, Some(_)) => "ok",
                (None, None) => "-",
            }
        );
    }

    fn print_result_line(&self) {
        println!(
            "RESULT workload={} cores={} qd={} ops_s={:.0} p50_us={:.2} p99_us={:.2} p999_us={:.2} cpu_us_per_op={:.2}",
            self.workload,
            self.cores,
            self.qd.unwrap_or(0),
            self.ops_per_sec(),
            self.us(0.5),
            self.us(0.99),
            self.us(0.999),
            self.cpu_us_per_op(),
        );
    }
}

const TABLE_HEADER: &str = "\
| workload | cores | QD/core | ops/s | ops/s/core | MiB/s | p50 µs | p99 µs | p99.9 µs | max µs | CPU busy/core % | CPU µs/op | hits |
|---|---|---|---|---|---|---|---|---|---|---|---|---|";

fn run(args: &Args) -> Result<bool, String> {
    let block_bytes = BlockSize::default().bytes_usize();
    print_header(args);
    let mut rows = Vec::new();
    let mut fio_target = None;
    for &cores in &args.cores {
        let per_shard_memory = (args.memory_bytes / block_bytes as u64 / cores as u64) as usize;
        for pattern in [Pattern::Random4k, Pattern::Sequential1m] {
            if args
                .workloads
                .iter()
                .any(|w| w.tier == Tier::Memory && w.pattern == pattern)
            {
                let row = raw_baseline(pattern, cores, per_shard_memory, args)?;
                row.print_table_line();
                rows.push(row);
            }
        }
        for tier in [Tier::Memory, Tier::Nvme] {
            let workloads: Vec<Workload> = args
                .workloads
                .iter()
                .copied()
                .filter(|w| w.tier == tier && (cores > 1 || !w.any_shard))
                .collect();
            if workloads.is_empty() {
                continue;
            }
            let (engine, set) = match tier {
                Tier::Memory => start_memory_engine(args, cores, per_shard_memory)?,
                Tier::Nvme => start_nvme_engine(args, cores)?,
            };
            let handle = engine.handle();
            let qds = match tier {
                Tier::Memory => &args.mem_qd,
                Tier::Nvme => &args.nvme_qd,
            };
            for &workload in &workloads {
                for &qd in qds {
                    let row = measure(&handle, &set, workload, cores, qd, args)?;
                    row.print_table_line();
                    rows.push(row);
                }
            }
            let disk = engine.plan().disk.clone();
            engine
                .shutdown()
                .map_err(|e| format!("engine shutdown: {e}"))?;
            if let Some((path, layout)) = disk {
                // Same file, same CPUs, same io_uring setup, no engine.
                let region = DeviceRegion {
                    path,
                    offset: SUPERBLOCK_BYTES,
                    bytes: layout.total_bytes() - SUPERBLOCK_BYTES,
                };
                if workloads.iter().any(|w| w.pattern == Pattern::Random4k) {
                    for &qd in qds {
                        let row = glommio_baseline(&region, cores, qd, args)?;
                        row.print_table_line();
                        rows.push(row);
                    }
                }
                fio_target = Some((region, cores));
            }
        }
    }
    print_summary(&rows, args);
    if let Some((region, cores)) = fio_target {
        let path = region.path;
        if args.keep_cache {
            // Every slot was written, so the region holds data throughout.
            println!(
                "FIO_TARGET path={} offset={} bytes={} cores={cores}",
                path.display(),
                region.offset,
                region.bytes
            );
        } else {
            std::fs::remove_file(&path).map_err(|e| format!("remove {}: {e}", path.display()))?;
        }
    }
    Ok(rows.iter().all(|r| r.failure.is_none()))
}

fn print_header(args: &Args) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("# engine_api");
    println!(
        "cpu: {cpu}; load average at start: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "duration {:?}, warm-up {:?}, cache file {} ({} MiB), memory data {} MiB, hugepages {}, seed {}",
        args.duration,
        args.warmup,
        args.cache_dir.join(CACHE_FILE_NAME).display(),
        args.cache_bytes >> 20,
        args.memory_bytes >> 20,
        args.hugepages,
        args.seed
    );
    println!(
        "clock read: {:.1} ns (one per op is inside every latency)",
        clock_read_ns()
    );
    println!();
    println!("{TABLE_HEADER}");
}

/// Cost of one `Instant::now()`.
fn clock_read_ns() -> f64 {
    const READS: u32 = 1_000_000;
    let start = Instant::now();
    let mut last = start;
    for _ in 0..READS {
        last = std::hint::black_box(Instant::now());
    }
    (last - start).as_nanos() as f64 / f64::from(READS)
}

fn start_memory_engine(
    args: &Args,
    cores: usize,
    per_shard: usize,
) -> Result<(Engine, DataSet), String> {
    let block_bytes = BlockSize::default().bytes_usize();
    if per_shard == 0 {
        return Err(format!(
            "--memory-bytes {} holds no block per shard on {cores} cores",
            args.memory_bytes
        ));
    }
    let set = DataSet::new(MEMORY_INO, cores, per_shard, block_bytes);
    let config = EngineConfig {
        cores: Some(cores),
        block_size: BlockSize::default(),
        memory_bytes: (per_shard * cores * block_bytes) as u64,
        hugepages: args.hugepages,
        disk: None,
        ..EngineConfig::default()
    };
    let engine = Engine::start(&config, Arc::clone(&set.store))
        .map_err(|e| format!("start the memory-tier engine on {cores} cores: {e}"))?;
    if engine.plan().memory_slots_per_shard as usize != per_shard {
        return Err(format!(
            "memory tier has {} slots per shard, expected {per_shard}",
            engine.plan().memory_slots_per_shard
        ));
    }
    fill(&engine.handle(), &set, Tier::Memory, args.seed)?;
    Ok((engine, set))
}

fn start_nvme_engine(args: &Args, cores: usize) -> Result<(Engine, DataSet), String> {
    std::fs::create_dir_all(&args.cache_dir)
        .map_err(|e| format!("create {}: {e}", args.cache_dir.display()))?;
    // A cache file left by an earlier run with the same layout would be
    // restored warm, and the fill below would wait for NVMe writes that
    // never come: always start from a cold device.
    let _ = std::fs::remove_file(
        args.cache_dir
            .join(datenlord_engine::config::CACHE_FILE_NAME),
    );
    let config = EngineConfig {
        cores: Some(cores),
        block_size: BlockSize::default(),
        memory_bytes: 0,
        hugepages: false,
        disk: Some(DiskConfig {
            path: args.cache_dir.clone(),
            size_bytes: Some(args.cache_bytes),
        }),
        ..EngineConfig::default()
    };
    let plan = config
        .plan()
        .map_err(|e| format!("plan the NVMe engine on {cores} cores: {e}"))?;
    let (_, layout) = plan.disk.ok_or("NVMe tier not planned")?;
    let per_shard = layout.slots_per_shard as usize;
    let set = DataSet::new(
        NVME_INO,
        cores,
        per_shard,
        BlockSize::default().bytes_usize(),
    );
    let engine = Engine::start(&config, Arc::clone(&set.store))
        .map_err(|e| format!("start the NVMe-tier engine on {cores} cores: {e}"))?;
    let started = Instant::now();
    fill(&engine.handle(), &set, Tier::Nvme, args.seed)?;
    println!(
        "<!-- nvme fill on {cores} cores: {} blocks in {:.1} s -->",
        set.blocks(),
        started.elapsed().as_secs_f64()
    );
    Ok((engine, set))
}

/// Reads every block once in a shuffled order (no stream is detected, so
/// nothing is prefetched), which places it in the tier under test, and
/// waits for the NVMe writes to land.
fn fill(handle: &EngineHandle, set: &DataSet, tier: Tier, seed: u64) -> Result<(), String> {
    let owned = Arc::clone(&set.owned);
    let results = block_on(handle.run_on_all(move |ctx: ShardContext| {
        let owned = Arc::clone(&owned);
        async move {
            let mine = &owned[ctx.id().index()];
            let mut order: Vec<usize> = (0..mine.len()).collect();
            let mut rng = SplitMix(seed ^ (u64::from(ctx.id().0) << 32));
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
            let writes_before = ctx.local_stats().disk_writes;
            let mut buf = Vec::with_capacity(SMALL_READ_BYTES);
            for (issued, &i) in (1u64..).zip(&order) {
                let (b, _) = ctx
                    .read(mine[i], 0, SMALL_READ_BYTES as u32, buf)
                    .await
                    .map_err(|e| format!("fill read of {}: {e}", mine[i]))?;
                buf = b;
                if tier == Tier::Nvme {
                    // Prefetch may write blocks before the fill reads them,
                    // so writes can exceed reads: saturate, never wrap.
                    while issued.saturating_sub(ctx.local_stats().disk_writes - writes_before)
                        >= FILL_WRITES_INFLIGHT_MAX
                    {
                        glommio::timer::sleep(Duration::from_micros(100)).await;
                    }
                }
            }
            Ok::<(), String>(())
        }
    }))
    .map_err(|e| format!("fill: {e}"))?;
    results.into_iter().collect::<Result<(), String>>()?;
    let deadline = Instant::now() + Duration::from_secs(FILL_WRITES_TIMEOUT_SECS);
    loop {
        let totals = totals(handle)?;
        if totals.source_fetches != set.blocks() {
            return Err(format!(
                "fill fetched {} blocks, expected {}: {totals:?}",
                totals.source_fetches,
                set.blocks()
            ));
        }
        let landed = match tier {
            Tier::Memory => totals.memory_evictions == 0,
            Tier::Nvme => totals.disk_writes >= set.blocks(),
        };
        if landed && totals.disk_write_errors == 0 {
            return Ok(());
        }
        if totals.disk_write_errors > 0 || Instant::now() > deadline {
            return Err(format!(
                "fill did not land in the {tier:?} tier: {totals:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn totals(handle: &EngineHandle) -> Result<ShardStats, String> {
    let all = block_on(handle.stats()).map_err(|e| format!("stats: {e}"))?;
    Ok(ShardStats::sum(&all))
}

/// Everything a shard's tasks need; `Send` so it crosses into the executor.
#[derive(Clone, Debug)]
struct RunSpec {
    workload: Workload,
    qd: usize,
    warmup: Duration,
    duration: Duration,
    seed: u64,
    block_bytes: usize,
    set: DataSet,
}

/// What one task (or one shard, merged) measured.
#[derive(Clone, Debug)]
struct Measured {
    hist: Histogram<u64>,
    /// Reads timed in the measured phase.
    ops: u64,
    /// Reads of the warm-up phase (each checked against the source).
    warm_ops: u64,
    /// From the end of the warm-up to the last completion.
    window: Duration,
    /// Cores kept busy in the measured phase (thread CPU time / wall time,
    /// summed over threads; user and kernel time of the thread itself).
    busy: f64,
}

impl Measured {
    fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, LATENCY_NS_MAX, LATENCY_SIGFIG)
                .expect("histogram bounds are valid"),
            ops: 0,
            warm_ops: 0,
            window: Duration::ZERO,
            busy: 0.0,
        }
    }

    fn merge(&mut self, other: &Self) {
        self.hist.add(&other.hist).expect("histograms share bounds");
        self.ops += other.ops;
        self.warm_ops += other.warm_ops;
        self.window = self.window.max(other.window);
        self.busy += other.busy;
    }
}

/// Samples the calling thread's CPU time over a phase of its work.
#[derive(Clone, Copy, Debug)]
struct CpuMeter {
    cpu: Duration,
    wall: Instant,
}

impl CpuMeter {
    fn start() -> Self {
        Self {
            cpu: thread_cpu_time(),
            wall: Instant::now(),
        }
    }

    /// Fraction of one core the thread used since `start`.
    fn busy(self) -> f64 {
        let wall = self.wall.elapsed().as_secs_f64();
        if wall > 0.0 {
            thread_cpu_time().saturating_sub(self.cpu).as_secs_f64() / wall
        } else {
            0.0
        }
    }
}

/// User plus system CPU time of the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn measure(
    handle: &EngineHandle,
    set: &DataSet,
    workload: Workload,
    cores: usize,
    qd: usize,
    args: &Args,
) -> Result<Row, String> {
    let block_bytes = BlockSize::default().bytes_usize();
    let spec = RunSpec {
        workload,
        qd,
        warmup: args.warmup,
        duration: args.duration,
        seed: args.seed,
        block_bytes,
        set: set.clone(),
    };
    let before = totals(handle)?;
    let shards = block_on(handle.run_on_all(move |ctx: ShardContext| {
        let spec = spec.clone();
        async move { measure_shard(ctx, spec).await }
    }))
    .map_err(|e| format!("{}: {e}", workload.name()))?;
    let after = totals(handle)?;
    let mut total = Measured::new();
    let mut secs = 0.0;
    for shard in shards {
        let shard = shard?;
        // Each shard's rate over its own window, summed.
        secs = f64::max(secs, shard.window.as_secs_f64());
        total.merge(&shard);
    }
    let counters = delta(&before, &after);
    let failure = check_hits(workload.tier, &total, &counters);
    if let Some(why) = &failure {
        println!(
            "<!-- {} on {cores} cores QD {qd} FAILED: {why} -->",
            workload.name()
        );
    }
    println!(
        "<!-- {} cores={cores} qd={qd}: reads={} memory_hits={} disk_hits={} source_fetches={} forwarded={} prefetch_issued={} -->",
        workload.name(),
        counters.reads,
        counters.memory_hits,
        counters.disk_hits,
        counters.source_fetches,
        counters.forwarded,
        counters.prefetch_issued
    );
    Ok(Row {
        workload: workload.name(),
        cores,
        qd: Some(qd),
        ops: total.ops,
        secs,
        op_bytes: match workload.pattern {
            Pattern::Random4k => SMALL_READ_BYTES,
            Pattern::Sequential1m => block_bytes,
        },
        hist: total.hist,
        busy: total.busy,
        counters: Some(counters),
        failure,
    })
}

/// The counters the checks and the report use, after minus before.
fn delta(before: &ShardStats, after: &ShardStats) -> ShardStats {
    ShardStats {
        reads: after.reads - before.reads,
        memory_hits: after.memory_hits - before.memory_hits,
        disk_hits: after.disk_hits - before.disk_hits,
        source_fetches: after.source_fetches - before.source_fetches,
        forwarded: after.forwarded - before.forwarded,
        prefetch_issued: after.prefetch_issued - before.prefetch_issued,
        ..ShardStats::default()
    }
}

/// Every read of the run must be a hit on `tier`, and the source untouched.
fn check_hits(tier: Tier, measured: &Measured, d: &ShardStats) -> Option<String> {
    let ops = measured.ops + measured.warm_ops;
    let hits = match tier {
        Tier::Memory => d.memory_hits,
        Tier::Nvme => d.disk_hits,
    };
    if d.source_fetches != 0 {
        Some(format!("{} source fetches", d.source_fetches))
    } else if d.reads != ops {
        Some(format!(
            "engine counted {} reads, the bench made {ops}",
            d.reads
        ))
    } else if hits != ops {
        Some(format!("{hits} {tier:?} hits for {ops} reads"))
    } else {
        None
    }
}

async fn measure_shard(ctx: ShardContext, spec: RunSpec) -> Result<Measured, String> {
    let targets: Rc<[BlockId]> = if spec.workload.any_shard {
        spec.set.all.as_slice().into()
    } else {
        spec.set.owned[ctx.id().index()].as_slice().into()
    };
    if targets.is_empty() {
        return Err(format!("{} owns no blocks", ctx.id()));
    }
    let measure_from = Instant::now() + spec.warmup;
    let until = measure_from + spec.duration;
    let spec = Rc::new(spec);
    let cursor = Rc::new(Cell::new(0usize));
    let tasks: Vec<_> = (0..spec.qd)
        .map(|task| {
            let job = Task {
                ctx: ctx.clone(),
                spec: Rc::clone(&spec),
                targets: Rc::clone(&targets),
                cursor: Rc::clone(&cursor),
                rng: SplitMix(spec.seed ^ (u64::from(ctx.id().0) << 32) ^ task as u64),
                meters_cpu: task == 0,
                measure_from,
                until,
            };
            glommio::spawn_local(job.run())
        })
        .collect();
    let mut merged = Measured::new();
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(m) => merged.merge(&m),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(merged), Err)
}

/// One reader at queue depth 1; a shard runs `qd` of them.
struct Task {
    ctx: ShardContext,
    spec: Rc<RunSpec>,
    targets: Rc<[BlockId]>,
    /// Next block of the shard's sequential walk (shared by its tasks).
    cursor: Rc<Cell<usize>>,
    rng: SplitMix,
    /// Task 0 of a shard also meters the executor thread's CPU time.
    meters_cpu: bool,
    measure_from: Instant,
    until: Instant,
}

impl Task {
    fn next_read(&mut self) -> (BlockId, usize, usize) {
        match self.spec.workload.pattern {
            Pattern::Random4k => {
                let id = self.targets[self.rng.below(self.targets.len())];
                let chunks = self.spec.block_bytes / SMALL_READ_BYTES;
                let offset = self.rng.below(chunks) * SMALL_READ_BYTES;
                (id, offset, SMALL_READ_BYTES)
            }
            Pattern::Sequential1m => {
                let i = self.cursor.get();
                self.cursor.set((i + 1) % self.targets.len());
                (self.targets[i], 0, self.spec.block_bytes)
            }
        }
    }

    async fn run(mut self) -> Result<Measured, String> {
        let mut measured = Measured::new();
        let mut buf = Vec::with_capacity(self.spec.block_bytes);
        let mut meter = None;
        let mut started = Instant::now();
        loop {
            let (id, offset, len) = self.next_read();
            let (b, n) = self
                .ctx
                .read(id, offset as u32, len as u32, buf)
                .await
                .map_err(|e| format!("read {id} at {offset} len {len}: {e}"))?;
            buf = b;
            let done = Instant::now();
            if started < self.measure_from {
                measured.warm_ops += 1;
                self.verify(id, offset, len, n, &buf)?;
            } else {
                let ns = u64::try_from((done - started).as_nanos()).unwrap_or(u64::MAX);
                measured.hist.saturating_record(ns.max(1));
                measured.ops += 1;
                measured.window = done - self.measure_from;
            }
            if done >= self.until {
                measured.busy = meter.map_or(0.0, CpuMeter::busy);
                // The last read of the measured phase is checked too.
                self.verify(id, offset, len, n, &buf)?;
                return Ok(measured);
            }
            if self.meters_cpu && meter.is_none() && done >= self.measure_from {
                meter = Some(CpuMeter::start());
            }
            started = done;
            if (measured.ops + measured.warm_ops) % YIELD_EVERY_OPS == 0 {
                glommio::yield_if_needed().await;
                started = Instant::now();
            }
        }
    }

    fn verify(
        &self,
        id: BlockId,
        offset: usize,
        len: usize,
        n: usize,
        buf: &[u8],
    ) -> Result<(), String> {
        let expected = self
            .spec
            .set
            .store
            .get(id)
            .ok_or_else(|| format!("block {id} is not in the source"))?;
        let want = &expected[offset.min(expected.len())..(offset + len).min(expected.len())];
        if n != want.len() || buf.len() < n || &buf[..n] != want {
            let first_diff = buf.iter().zip(want).position(|(a, b)| a != b);
            return Err(format!(
                "WRONG DATA: read of {id} at {offset} len {len} returned {n} bytes (expected {}), first differing byte {first_diff:?}",
                want.len()
            ));
        }
        Ok(())
    }
}

// ----- raw memcpy baseline ---------------------------------------------

/// The memory-tier loop without the engine: one thread per core (pinned
/// like the shards), each copying out of its own buffer of the same size
/// as a shard's memory tier.
fn raw_baseline(
    pattern: Pattern,
    cores: usize,
    blocks_per_core: usize,
    args: &Args,
) -> Result<Row, String> {
    let block_bytes = BlockSize::default().bytes_usize();
    let cpus = datenlord_engine::config::allowed_cpus().map_err(|e| e.to_string())?;
    if cpus.len() < cores {
        return Err(format!("{cores} cores requested, {} allowed", cpus.len()));
    }
    let duration = args.baseline;
    let seed = args.seed;
    let threads: Vec<_> = cpus[..cores]
        .iter()
        .enumerate()
        .map(|(i, &cpu)| {
            std::thread::spawn(move || {
                pin_to(cpu);
                raw_copy_loop(
                    pattern,
                    blocks_per_core * block_bytes,
                    block_bytes,
                    duration,
                    seed ^ i as u64,
                )
            })
        })
        .collect();
    let mut total = Measured::new();
    for t in threads {
        let m = t.join().map_err(|_| "raw baseline thread panicked")?;
        total.merge(&m);
    }
    let (name, op_bytes) = match pattern {
        Pattern::Random4k => ("raw4k", SMALL_READ_BYTES),
        Pattern::Sequential1m => ("raw1m", block_bytes),
    };
    Ok(Row {
        workload: name.into(),
        cores,
        qd: None,
        ops: total.ops,
        secs: total.window.as_secs_f64(),
        op_bytes,
        hist: total.hist,
        busy: total.busy,
        counters: None,
        failure: None,
    })
}

fn raw_copy_loop(
    pattern: Pattern,
    arena_bytes: usize,
    block_bytes: usize,
    duration: Duration,
    seed: u64,
) -> Measured {
    let arena: Vec<u8> = (0..arena_bytes).map(|i| i as u8).collect();
    let blocks = arena_bytes / block_bytes;
    let mut rng = SplitMix(seed);
    let mut buf: Vec<u8> = Vec::with_capacity(block_bytes);
    let mut measured = Measured::new();
    let mut next_block = 0;
    let meter = CpuMeter::start();
    let start = Instant::now();
    let until = start + duration;
    let mut started = start;
    loop {
        let (offset, len) = match pattern {
            Pattern::Random4k => {
                let block = rng.below(blocks);
                let chunk = rng.below(block_bytes / SMALL_READ_BYTES);
                (
                    block * block_bytes + chunk * SMALL_READ_BYTES,
                    SMALL_READ_BYTES,
                )
            }
            Pattern::Sequential1m => {
                next_block = (next_block + 1) % blocks;
                (next_block * block_bytes, block_bytes)
            }
        };
        buf.clear();
        buf.extend_from_slice(&arena[offset..offset + len]);
        std::hint::black_box(&buf);
        let done = Instant::now();
        let ns = u64::try_from((done - started).as_nanos()).unwrap_or(u64::MAX);
        measured.hist.saturating_record(ns.max(1));
        measured.ops += 1;
        if done >= until {
            measured.window = done - start;
            measured.busy = meter.busy();
            return measured;
        }
        started = done;
    }
}

fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is plain data (zeroed is the empty set); the
    // calls only read and write the set passed to them.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set);
    }
}

// ----- raw io_uring baseline ---------------------------------------------

/// The written part of the cache file: every slot of every shard.
#[derive(Clone, Debug)]
struct DeviceRegion {
    path: PathBuf,
    offset: u64,
    bytes: u64,
}

/// 4 KiB random O_DIRECT reads of the cache file with glommio alone: one
/// executor per core (pinned, io memory and ring depth as the engine's),
/// `qd` tasks each, executor `i` reading the `i`-th slice of the region
/// like fio's job `i`. It splits the gap to fio into what the runtime's IO
/// path costs and what the engine adds on top.
fn glommio_baseline(
    region: &DeviceRegion,
    cores: usize,
    qd: usize,
    args: &Args,
) -> Result<Row, String> {
    let cpus = datenlord_engine::config::allowed_cpus().map_err(|e| e.to_string())?;
    let io_memory = datenlord_engine::config::io_memory_per_executor(
        datenlord_engine::config::memlock_limit_bytes(),
        cores,
        None,
    )
    .map_err(|e| e.to_string())?;
    let slice_bytes =
        region.bytes / cores as u64 / SMALL_READ_BYTES as u64 * SMALL_READ_BYTES as u64;
    let (warmup, duration, seed) = (args.warmup, args.duration, args.seed);
    let mut executors = Vec::with_capacity(cores);
    for (i, &cpu) in cpus.iter().take(cores).enumerate() {
        let path = region.path.clone();
        let start = region.offset + i as u64 * slice_bytes;
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu))
            .name(&format!("glommio-base{i}"))
            .io_memory(io_memory)
            .ring_depth(EngineConfig::default().ring_depth)
            .spawn(move || async move {
                let file = Rc::new(
                    glommio::io::DmaFile::open(&path)
                        .await
                        .map_err(|e| format!("open {}: {e}", path.display()))?,
                );
                let measure_from = Instant::now() + warmup;
                let until = measure_from + duration;
                let tasks: Vec<_> = (0..qd)
                    .map(|task| {
                        let file = Rc::clone(&file);
                        let rng = SplitMix(seed ^ ((i as u64) << 32) ^ task as u64);
                        glommio::spawn_local(raw_read_loop(
                            file,
                            rng,
                            task == 0,
                            (start, slice_bytes),
                            measure_from,
                            until,
                        ))
                    })
                    .collect();
                let mut merged = Measured::new();
                for task in tasks {
                    merged.merge(&task.await?);
                }
                Ok::<Measured, String>(merged)
            })
            .map_err(|e| format!("start a glommio executor on CPU {cpu}: {e}"))?;
        executors.push(executor);
    }
    let mut total = Measured::new();
    for executor in executors {
        let measured = executor
            .join()
            .map_err(|e| format!("glommio baseline executor: {e}"))??;
        total.merge(&measured);
    }
    Ok(Row {
        workload: "glommio4k".into(),
        cores,
        qd: Some(qd),
        ops: total.ops,
        secs: total.window.as_secs_f64(),
        op_bytes: SMALL_READ_BYTES,
        hist: total.hist,
        busy: total.busy,
        counters: None,
        failure: None,
    })
}

async fn raw_read_loop(
    file: Rc<glommio::io::DmaFile>,
    mut rng: SplitMix,
    meters_cpu: bool,
    (start, bytes): (u64, u64),
    measure_from: Instant,
    until: Instant,
) -> Result<Measured, String> {
    let chunks = (bytes / SMALL_READ_BYTES as u64) as usize;
    let mut measured = Measured::new();
    let mut meter = None;
    let mut started = Instant::now();
    loop {
        let pos = start + (rng.below(chunks) * SMALL_READ_BYTES) as u64;
        let data = file
            .read_at_aligned(pos, SMALL_READ_BYTES)
            .await
            .map_err(|e| format!("glommio read at {pos}: {e}"))?;
        std::hint::black_box(&data);
        let done = Instant::now();
        if started < measure_from {
            measured.warm_ops += 1;
        } else {
            let ns = u64::try_from((done - started).as_nanos()).unwrap_or(u64::MAX);
            measured.hist.saturating_record(ns.max(1));
            measured.ops += 1;
            measured.window = done - measure_from;
        }
        if done >= until {
            measured.busy = meter.map_or(0.0, CpuMeter::busy);
            return Ok(measured);
        }
        if meters_cpu && meter.is_none() && done >= measure_from {
            meter = Some(CpuMeter::start());
        }
        started = done;
    }
}

// ----- summary ---------------------------------------------------------

fn print_summary(rows: &[Row], args: &Args) {
    println!();
    println!("## Summary");
    println!();
    println!("{TABLE_HEADER}");
    for row in rows {
        row.print_table_line();
    }
    println!();
    for row in rows {
        row.print_result_line();
    }
    println!();
    println!("## Goals measured in this run");
    println!();
    for row in rows.iter().filter(|r| r.workload == "mem4k") {
        let per_core = row.ops_per_sec() / row.cores as f64;
        println!(
            "- mem4k on {} core(s), QD {}: {per_core:.0} reads/s per core vs goal 1000000: {}",
            row.cores,
            row.qd.unwrap_or(0),
            met(per_core >= 1_000_000.0)
        );
    }
    let low = args.cores.iter().min().copied().unwrap_or(1);
    for high in rows.iter().filter(|r| r.cores > low) {
        let Some(base) = rows
            .iter()
            .find(|r| r.cores == low && r.workload == high.workload && r.qd == high.qd)
        else {
            continue;
        };
        let ratio = high.ops_per_sec() / base.ops_per_sec();
        let goal = 0.9 * high.cores as f64 / low as f64;
        let verdict = if high.qd.is_none() {
            "raw copy, for context"
        } else {
            met(ratio >= goal)
        };
        println!(
            "- {} QD {}: {} cores / {low} core = {ratio:.3}x vs goal {goal:.1}x: {verdict}",
            high.workload,
            high.qd.map_or_else(|| "-".into(), |q| q.to_string()),
            high.cores,
        );
    }
    for row in rows.iter().filter(|r| r.workload.starts_with("mem")) {
        let Some(raw) = rows.iter().find(|r| {
            r.cores == row.cores
                && r.qd.is_none()
                && r.workload == row.workload.replace("mem", "raw").replace("-any", "")
        }) else {
            continue;
        };
        println!(
            "- {} on {} core(s): {:.0} ns per read vs {:.0} ns for the raw copy ({:.2}x of the raw rate)",
            row.workload,
            row.cores,
            1e9 * row.cores as f64 / row.ops_per_sec(),
            1e9 * raw.cores as f64 / raw.ops_per_sec(),
            row.ops_per_sec() / raw.ops_per_sec()
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!();
    println!(
        "load average at end: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}
