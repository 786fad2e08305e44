//! Benchmark of the remote store tier (issue 5), engine path and plain
//! object_store side by side in one run:
//!
//! 1. Cold sequential read of one file (1 MiB blocks of one inode) through
//!    the engine (a fresh `Engine` over `StoreSources`, prefetch on, a
//!    resolver that knows every block, one reader thread calling
//!    `EngineHandle::read` block by block) vs `RemoteStore::get_block` of the
//!    same objects, in order from one thread (`get-seq`) and with the
//!    concurrency the engine's prefetch reached at the store (`get-conc`).
//! 2. Upload through the write-back journal (`WriteBack`, mode back: commit
//!    rate = journal durability, drain = upload rate) vs plain
//!    `RemoteStore::put_block`, sequential and with the uploaders'
//!    concurrency.
//!
//! Stores: `file://` in a temp dir (on the disk of `--dir`) and a local S3
//! server (`moto_server` on 127.0.0.1, started here like engine/tests/store.rs
//! does; scripts/s3-server installs it). No timed assertions: the bench
//! prints tables and ratios; it fails only if a read returns wrong data.
//!
//! Before each `file://` read run the store's files are dropped from the page
//! cache (`posix_fadvise(DONTNEED)`, these files only), so reads are cold at
//! the disk too (`--keep-page-cache` to skip). The moto server keeps its
//! objects in its own memory.
//!
//! `cargo bench -p datenlord-engine --bench store_read -- --help`

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datenlord_engine::source::SourceFuture;
use datenlord_engine::store::sources::ResolveFn;
use datenlord_engine::store::{
    ControlPlane, RemoteStore, S3Settings, StoreOptions, StoreSources, StoreUrl, WriteBack,
    WriteBackConfig, WriteMode,
};
use datenlord_engine::{
    BlockId, BlockSize, BlockSource, Engine, EngineConfig, PrefetchConfig, ShardId, ShardStats,
    SourceFactory, VersionResolver,
};
use futures::executor::block_on;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::{FutureExt, StreamExt};
use hdrhistogram::Histogram;

/// Block size of the volume.
const BLOCK: usize = 1 << 20;
/// Inode of the read data set.
const READ_INO: u64 = 1;
/// First inode of the write runs (one per run).
const WRITE_INO: u64 = 100;
/// Highest latency the histograms hold; slower ops saturate to it.
const LATENCY_NS_MAX: u64 = 120_000_000_000;
/// Concurrency of the untimed upload of the read data set.
const PREPARE_CONCURRENCY: usize = 16;
/// Bound on the drain of the write-back journal.
const DRAIN_TIMEOUT_SECS: u64 = 1800;
/// Bucket created in the moto server.
const BUCKET: &str = "datenlord-bench";

const USAGE: &str = "\
store_read: benchmark of the remote store tier (issue 5)

USAGE: cargo bench -p datenlord-engine --bench store_read -- [OPTIONS]

OPTIONS:
  --stores LIST           file,s3                                  [file,s3]
  --read-mib N            file size read from file://, MiB         [1024]
  --s3-read-mib N         file size read from S3 (moto), MiB       [1024]
  --rounds N              read rounds per store (file://)          [3]
  --s3-rounds N           read rounds per store (S3)               [1]
  --cores LIST            engine shards to run                     [1,2]
  --memory-mib N          engine memory tier, MiB (all shards)     [256]
  --window N              prefetch window_blocks_max               [engine default]
  --journal LIST          engine sources: with an (empty) write-back
                          journal, without, or both: on,off        [on]
  --write-mib N           blocks committed in the write runs       [256]
  --s3-write-mib N        the same for S3                          [256]
  --commit-blocks N       blocks per commit                        [1]
  --upload-concurrency N  write-back uploaders                     [8]
  --skip-read / --skip-write
  --keep-page-cache       do not drop the file:// objects from the page cache
  --dir DIR               where the temp store and journal go      [$TMPDIR]
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
            eprintln!("store_read: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("store_read: {e}");
        std::process::exit(1);
    }
}

// ----- arguments ------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StoreKind {
    File,
    S3,
}

impl StoreKind {
    fn name(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::S3 => "s3-moto",
        }
    }
}

#[derive(Clone, Debug)]
#[allow(clippy::struct_excessive_bools)]
struct Args {
    stores: Vec<StoreKind>,
    read_mib: u64,
    s3_read_mib: u64,
    rounds: usize,
    s3_rounds: usize,
    cores: Vec<usize>,
    memory_mib: u64,
    window: Option<u32>,
    journal: Vec<bool>,
    write_mib: u64,
    s3_write_mib: u64,
    commit_blocks: usize,
    upload_concurrency: usize,
    skip_read: bool,
    skip_write: bool,
    keep_page_cache: bool,
    dir: PathBuf,
}

impl Args {
    /// `Ok(None)` for `--help`.
    fn parse(mut words: impl Iterator<Item = String>) -> Result<Option<Self>, String> {
        let mut args = Self {
            stores: vec![StoreKind::File, StoreKind::S3],
            read_mib: 1024,
            s3_read_mib: 1024,
            rounds: 3,
            s3_rounds: 1,
            cores: vec![1, 2],
            memory_mib: 256,
            window: None,
            journal: vec![true],
            write_mib: 256,
            s3_write_mib: 256,
            commit_blocks: 1,
            upload_concurrency: 8,
            skip_read: false,
            skip_write: false,
            keep_page_cache: false,
            dir: std::env::temp_dir(),
        };
        while let Some(word) = words.next() {
            let mut value = || words.next().ok_or_else(|| format!("{word} needs a value"));
            match word.as_str() {
                "--help" | "-h" => return Ok(None),
                // cargo bench passes --bench to harness = false targets.
                "--bench" => {}
                "--stores" => {
                    args.stores = value()?
                        .split(',')
                        .map(|s| match s.trim() {
                            "file" => Ok(StoreKind::File),
                            "s3" => Ok(StoreKind::S3),
                            other => Err(format!("unknown store {other:?} (use file, s3)")),
                        })
                        .collect::<Result<_, _>>()?;
                }
                "--read-mib" => args.read_mib = number(&value()?)?,
                "--s3-read-mib" => args.s3_read_mib = number(&value()?)?,
                "--rounds" => args.rounds = number(&value()?)?,
                "--s3-rounds" => args.s3_rounds = number(&value()?)?,
                "--cores" => {
                    args.cores = value()?.split(',').map(number).collect::<Result<_, _>>()?;
                }
                "--memory-mib" => args.memory_mib = number(&value()?)?,
                "--window" => args.window = Some(number(&value()?)?),
                "--journal" => {
                    args.journal = value()?
                        .split(',')
                        .map(|s| match s.trim() {
                            "on" => Ok(true),
                            "off" => Ok(false),
                            other => Err(format!("--journal {other:?}: use on, off")),
                        })
                        .collect::<Result<_, _>>()?;
                }
                "--write-mib" => args.write_mib = number(&value()?)?,
                "--s3-write-mib" => args.s3_write_mib = number(&value()?)?,
                "--commit-blocks" => args.commit_blocks = number(&value()?)?,
                "--upload-concurrency" => args.upload_concurrency = number(&value()?)?,
                "--skip-read" => args.skip_read = true,
                "--skip-write" => args.skip_write = true,
                "--keep-page-cache" => args.keep_page_cache = true,
                "--dir" => args.dir = PathBuf::from(value()?),
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        if args.commit_blocks == 0 || args.upload_concurrency == 0 || args.cores.contains(&0) {
            return Err("--commit-blocks, --upload-concurrency and --cores must be > 0".into());
        }
        Ok(Some(args))
    }
}

fn number<T: std::str::FromStr>(s: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    s.trim().parse().map_err(|e| format!("{s:?}: {e}"))
}

// ----- data -----------------------------------------------------------

/// Block contents: the block's index and ino in the first 16 bytes (checked
/// on every read), a cheap pattern after.
fn content(ino: u64, index: u64) -> Vec<u8> {
    let mut data = Vec::with_capacity(BLOCK);
    let mut x = ino.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index;
    data.extend_from_slice(&index.to_le_bytes());
    data.extend_from_slice(&ino.to_le_bytes());
    while data.len() < BLOCK {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(BLOCK);
    data
}

fn check(id: BlockId, data: &[u8]) -> Result<(), String> {
    let ok = data.len() == BLOCK
        && data[..8] == id.index.to_le_bytes()
        && data[8..16] == id.ino.0.to_le_bytes();
    if ok {
        Ok(())
    } else {
        Err(format!("block {id}: wrong data ({} bytes)", data.len()))
    }
}

fn read_id(index: u64) -> BlockId {
    BlockId::new(READ_INO, index, 1)
}

// ----- stores ---------------------------------------------------------

/// A moto S3 server, killed on drop.
struct Moto {
    child: std::process::Child,
    port: u16,
}

impl Moto {
    fn start() -> Result<Self, String> {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("free port: {e}"))?
            .port();
        let child = std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start moto_server ({e}): run scripts/s3-server once, or use --stores file"))?;
        let moto = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(format!("moto_server did not answer on port {port}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        write!(
            stream,
            "PUT /{BUCKET} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .map_err(|e| e.to_string())?;
        if !response.contains(" 200 ") {
            return Err(format!("create bucket: {response}"));
        }
        Ok(moto)
    }

    fn options(&self) -> StoreOptions {
        StoreOptions {
            s3: S3Settings {
                endpoint: Some(format!("http://127.0.0.1:{}", self.port)),
                region: Some("us-east-1".into()),
                access_key_id: Some("test".into()),
                secret_access_key: Some("test".into()),
                allow_http: Some(true),
            },
            ..StoreOptions::default()
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One store under test and what keeps it alive.
struct Target {
    kind: StoreKind,
    store: RemoteStore,
    /// The `file://` directory (its files are dropped from the page cache).
    dir: Option<PathBuf>,
    _moto: Option<Moto>,
}

fn open_target(kind: StoreKind, control: &ControlPlane, scratch: &Path) -> Result<Target, String> {
    match kind {
        StoreKind::File => {
            let dir = scratch.join("store");
            let url: StoreUrl = format!("file://{}", dir.display())
                .parse()
                .map_err(|e| format!("{e}"))?;
            let store = RemoteStore::open(&url, control).map_err(|e| e.to_string())?;
            Ok(Target {
                kind,
                store,
                dir: Some(dir),
                _moto: None,
            })
        }
        StoreKind::S3 => {
            let moto = Moto::start()?;
            let url: StoreUrl = format!("s3://{BUCKET}/vol")
                .parse()
                .map_err(|e| format!("{e}"))?;
            let store =
                RemoteStore::open_with(&url, control, moto.options()).map_err(|e| e.to_string())?;
            Ok(Target {
                kind,
                store,
                dir: None,
                _moto: Some(moto),
            })
        }
    }
}

/// Drops every file under `dir` from the page cache (they are fsynced, so
/// clean): the next read goes to the disk. Touches no other file.
fn drop_page_cache(dir: &Path) -> Result<usize, String> {
    use std::os::fd::AsRawFd;
    let mut dropped = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))? {
            let entry = entry.map_err(|e| e.to_string())?;
            let path = entry.path();
            if entry.file_type().map_err(|e| e.to_string())?.is_dir() {
                pending.push(path);
                continue;
            }
            let file =
                std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            // SAFETY: an advisory call on a descriptor owned by `file`.
            let rc =
                unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            if rc == 0 {
                dropped += 1;
            }
        }
    }
    Ok(dropped)
}

/// Uploads the read data set (untimed).
fn prepare(store: &RemoteStore, blocks: u64) -> Result<Duration, String> {
    let started = Instant::now();
    block_on(async {
        let mut puts = futures::stream::iter(0..blocks)
            .map(|index| {
                let store = store.clone();
                async move {
                    let id = read_id(index);
                    store.put_block(id, &content(READ_INO, index)).await
                }
            })
            .buffer_unordered(PREPARE_CONCURRENCY);
        while let Some(put) = puts.next().await {
            put.map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    })?;
    Ok(started.elapsed())
}

// ----- measurements ---------------------------------------------------

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("histogram bounds")
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One measured run.
#[derive(Clone, Debug)]
struct Row {
    store: &'static str,
    round: usize,
    path: String,
    concurrency: String,
    blocks: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    note: String,
}

impl Row {
    fn mib_per_sec(&self) -> f64 {
        self.blocks as f64 / self.elapsed.as_secs_f64()
    }

    fn p(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

const READ_HEADER: &str = "\
| store | round | path | store concurrency | MiB | MiB/s | × get-seq | × get-conc | p50 µs | p99 µs | p99.9 µs | max µs |
|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|";

fn print_read_row(row: &Row, seq: Option<f64>, conc: Option<f64>) {
    let ratio = |base: Option<f64>| {
        base.map_or_else(|| "-".into(), |b| format!("{:.2}", row.mib_per_sec() / b))
    };
    println!(
        "| {} | {} | {} | {} | {} | {:.0} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
        row.store,
        row.round,
        row.path,
        row.concurrency,
        row.blocks,
        row.mib_per_sec(),
        ratio(seq),
        ratio(conc),
        row.p(0.5),
        row.p(0.99),
        row.p(0.999),
        row.latency.max() as f64 / 1000.0,
    );
}

/// In-flight fetches at the store, seen by a wrapper around the engine's
/// sources (outside the engine: atomics and a lock are fine here).
#[derive(Debug, Default)]
struct Meter {
    inflight: AtomicUsize,
    max: AtomicUsize,
    fetches: AtomicU64,
    busy_ns: AtomicU64,
    latency: Mutex<Option<Histogram<u64>>>,
}

impl Meter {
    fn new() -> Arc<Self> {
        let meter = Self::default();
        *meter.latency.lock().expect("meter lock") = Some(histogram());
        Arc::new(meter)
    }
}

struct MeteredSources {
    inner: StoreSources,
    meter: Arc<Meter>,
}

struct MeteredSource {
    inner: Rc<dyn BlockSource>,
    meter: Arc<Meter>,
}

impl BlockSource for MeteredSource {
    fn fetch(&self, id: BlockId) -> SourceFuture {
        let meter = Arc::clone(&self.meter);
        let now = meter.inflight.fetch_add(1, Ordering::Relaxed) + 1;
        meter.max.fetch_max(now, Ordering::Relaxed);
        let started = Instant::now();
        let fetch = self.inner.fetch(id);
        async move {
            let result = fetch.await;
            let took = ns(started.elapsed());
            meter.inflight.fetch_sub(1, Ordering::Relaxed);
            meter.fetches.fetch_add(1, Ordering::Relaxed);
            meter.busy_ns.fetch_add(took, Ordering::Relaxed);
            if let Some(h) = meter.latency.lock().expect("meter lock").as_mut() {
                h.saturating_record(took);
            }
            result
        }
        .boxed_local()
    }
}

impl SourceFactory for MeteredSources {
    fn source(&self, shard: ShardId) -> Rc<dyn BlockSource> {
        Rc::new(MeteredSource {
            inner: self.inner.source(shard),
            meter: Arc::clone(&self.meter),
        })
    }

    fn resolver(&self, shard: ShardId) -> Rc<dyn VersionResolver> {
        self.inner.resolver(shard)
    }
}

/// `get_block` in order from one thread.
fn get_seq(store: &RemoteStore, blocks: u64) -> Result<(Duration, Histogram<u64>), String> {
    let mut latency = histogram();
    let started = Instant::now();
    for index in 0..blocks {
        let id = read_id(index);
        let t = Instant::now();
        let data = block_on(store.get_block(id)).map_err(|e| format!("get {id}: {e}"))?;
        latency.saturating_record(ns(t.elapsed()));
        check(id, &data)?;
    }
    Ok((started.elapsed(), latency))
}

/// `get_block` with `depth` requests in flight, consumed in order by one
/// thread (a reader with a readahead window); latency = the reader's wait
/// for each next block. Also returns each request's own latency.
fn get_conc(
    store: &RemoteStore,
    blocks: u64,
    depth: usize,
) -> Result<(Duration, Histogram<u64>, Histogram<u64>), String> {
    let mut latency = histogram();
    let mut requests = histogram();
    let started = Instant::now();
    let get = |index: u64| {
        let fetch = store.get_block(read_id(index));
        let t = Instant::now();
        // FuturesOrdered polls every woken request, so the time is taken
        // when the answer arrives, not when the reader gets to it.
        fetch.map(move |r| (r, ns(t.elapsed())))
    };
    block_on(async {
        let mut window = FuturesOrdered::new();
        let mut next = 0;
        while next < blocks && window.len() < depth {
            window.push_back(get(next));
            next += 1;
        }
        for index in 0..blocks {
            let id = read_id(index);
            let t = Instant::now();
            let (data, took) = window.next().await.ok_or("window ran dry")?;
            let data = data.map_err(|e| format!("get {id}: {e}"))?;
            latency.saturating_record(ns(t.elapsed()));
            requests.saturating_record(took);
            if next < blocks {
                window.push_back(get(next));
                next += 1;
            }
            check(id, &data)?;
        }
        Ok::<(), String>(())
    })?;
    Ok((started.elapsed(), latency, requests))
}

struct EngineRun {
    elapsed: Duration,
    latency: Histogram<u64>,
    stats: ShardStats,
    max_inflight: usize,
    mean_inflight: f64,
    fetch_latency: Histogram<u64>,
}

/// Store fetches the engine's prefetch keeps in flight at most: the window
/// ahead of the reader, at most `PREFETCH_INFLIGHT_MAX` per shard.
fn nominal_depth(args: &Args, cores: usize) -> usize {
    let window = args
        .window
        .unwrap_or(PrefetchConfig::default().window_blocks_max) as usize;
    window.min(datenlord_engine::shard::PREFETCH_INFLIGHT_MAX * cores)
}

fn engine_config(args: &Args, cores: usize) -> Result<EngineConfig, String> {
    let mut prefetch = PrefetchConfig::default();
    if let Some(window) = args.window {
        prefetch.window_blocks_max = window;
        prefetch.queue_blocks_max = prefetch.queue_blocks_max.max(8 * window as usize);
    }
    Ok(EngineConfig {
        cores: Some(cores),
        block_size: BlockSize::new(BLOCK as u64).map_err(|e| e.to_string())?,
        memory_bytes: args.memory_mib << 20,
        hugepages: false,
        disk: None,
        prefetch,
        ..EngineConfig::default()
    })
}

/// A fresh engine over the store; one thread reads every block in order.
fn engine_read(
    args: &Args,
    store: &RemoteStore,
    journal: Option<&WriteBack>,
    cores: usize,
    blocks: u64,
) -> Result<EngineRun, String> {
    let resolver: ResolveFn =
        Arc::new(move |ino, index| (ino.0 == READ_INO && index < blocks).then_some(1));
    let meter = Meter::new();
    let sources = MeteredSources {
        inner: StoreSources::new(store.clone(), journal.cloned(), resolver),
        meter: Arc::clone(&meter),
    };
    let engine = Engine::start(&engine_config(args, cores)?, sources).map_err(|e| e.to_string())?;
    let handle = engine.handle();
    let mut latency = histogram();
    let mut buf = Vec::with_capacity(BLOCK);
    let started = Instant::now();
    for index in 0..blocks {
        let id = read_id(index);
        let t = Instant::now();
        let (b, n) = block_on(handle.read(id, 0, BLOCK as u32, buf))
            .map_err(|e| format!("engine read {id}: {e}"))?;
        latency.saturating_record(ns(t.elapsed()));
        check(id, &b[..n])?;
        buf = b;
    }
    let elapsed = started.elapsed();
    let mut stats = ShardStats::default();
    for s in block_on(handle.stats()).map_err(|e| e.to_string())? {
        stats += s;
    }
    engine.shutdown().map_err(|e| e.to_string())?;
    let fetch_latency = meter
        .latency
        .lock()
        .expect("meter lock")
        .take()
        .unwrap_or_else(histogram);
    Ok(EngineRun {
        elapsed,
        latency,
        stats,
        max_inflight: meter.max.load(Ordering::Relaxed),
        mean_inflight: meter.busy_ns.load(Ordering::Relaxed) as f64 / ns(elapsed) as f64,
        fetch_latency,
    })
}

// ----- the runs ---------------------------------------------------------

fn run(args: &Args) -> Result<(), String> {
    print_header(args);
    let control = ControlPlane::start().map_err(|e| e.to_string())?;
    let mut summary = Vec::new();
    for &kind in &args.stores {
        let scratch = tempfile::Builder::new()
            .prefix("datenlord-store-bench")
            .tempdir_in(&args.dir)
            .map_err(|e| format!("temp dir in {}: {e}", args.dir.display()))?;
        let target = open_target(kind, &control, scratch.path())?;
        if !args.skip_read {
            read_runs(args, &target, scratch.path(), &mut summary)?;
        }
        if !args.skip_write {
            write_runs(args, &target, scratch.path(), &mut summary)?;
        }
    }
    println!();
    println!("## Summary");
    println!();
    for line in &summary {
        println!("{line}");
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
    Ok(())
}

fn print_header(args: &Args) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("# store_read");
    println!(
        "machine: {} CPUs ({cpu}), kernel {}",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        kernel.trim()
    );
    println!(
        "block 1 MiB; engine: cores {:?}, memory tier {} MiB, no NVMe tier, prefetch window max {}, {} prefetches in flight per shard; journal in engine sources: {:?}",
        args.cores,
        args.memory_mib,
        args.window.unwrap_or(PrefetchConfig::default().window_blocks_max),
        datenlord_engine::shard::PREFETCH_INFLIGHT_MAX,
        args.journal,
    );
    println!(
        "control plane: {} tokio threads; page cache of file:// objects dropped before each read run: {}",
        datenlord_engine::store::control::CONTROL_THREADS,
        !args.keep_page_cache
    );
}

/// What the engine's counters and the source wrapper saw in one run.
fn engine_note(run: &EngineRun, what: &str) -> String {
    let s = &run.stats;
    format!(
        "- {what}: store fetches {} (prefetch issued {}, reads that joined a fetch {}), prefetch hits {}, memory hits {}, memory evictions {}, admissions rejected {}, source errors {}; fetches in flight max {} mean {:.1}; store fetch latency p50 {:.0} µs p99 {:.0} µs",
        s.source_fetches, s.prefetch_issued, s.fetch_joins, s.prefetch_hits, s.memory_hits,
        s.memory_evictions, s.admissions_rejected, s.source_errors,
        run.max_inflight, run.mean_inflight,
        run.fetch_latency.value_at_quantile(0.5) as f64 / 1000.0,
        run.fetch_latency.value_at_quantile(0.99) as f64 / 1000.0,
    )
}

fn read_runs(
    args: &Args,
    target: &Target,
    scratch: &Path,
    summary: &mut Vec<String>,
) -> Result<(), String> {
    let (mib, rounds) = match target.kind {
        StoreKind::File => (args.read_mib, args.rounds),
        StoreKind::S3 => (args.s3_read_mib, args.s3_rounds),
    };
    let store = &target.store;
    let took = prepare(store, mib)?;
    println!();
    println!(
        "## Cold sequential read, {} store, {mib} MiB ({mib} blocks, one inode); upload took {:.1} s",
        target.kind.name(),
        took.as_secs_f64()
    );
    // An empty write-back journal, as a mount has (the engine asks it first).
    let journal = WriteBack::open(
        WriteBackConfig::new(scratch.join("read-journal")),
        store.clone(),
    )
    .map_err(|e| e.to_string())?;
    let name = target.kind.name();
    let mut rows: Vec<Row> = Vec::new();
    let mut notes = Vec::new();
    let cold = |what: &str| -> Result<(), String> {
        if let (Some(dir), false) = (&target.dir, args.keep_page_cache) {
            let n = drop_page_cache(dir)?;
            if n < mib as usize {
                return Err(format!(
                    "{what}: only {n} store files dropped from the page cache"
                ));
            }
        }
        Ok(())
    };
    for round in 1..=rounds {
        let mut depths = Vec::new();
        for &cores in &args.cores {
            for &with_journal in &args.journal {
                cold("engine")?;
                let run = engine_read(args, store, with_journal.then_some(&journal), cores, mib)?;
                let path = format!(
                    "engine {cores} core{}{}",
                    if cores == 1 { "" } else { "s" },
                    if with_journal { "" } else { " no-journal" }
                );
                notes.push(engine_note(&run, &format!("{name} round {round} {path}")));
                // The baseline runs at the bound the engine's prefetch can
                // reach (its measured max wanders by one or two below it).
                let bound = nominal_depth(args, cores);
                if !depths.contains(&bound) {
                    depths.push(bound);
                }
                rows.push(Row {
                    store: name,
                    round,
                    path,
                    concurrency: format!(
                        "≤ {} (max {} mean {:.1})",
                        nominal_depth(args, cores),
                        run.max_inflight,
                        run.mean_inflight
                    ),
                    blocks: mib,
                    elapsed: run.elapsed,
                    latency: run.latency,
                    note: nominal_depth(args, cores).to_string(),
                });
            }
        }
        cold("get-seq")?;
        let (elapsed, latency) = get_seq(store, mib)?;
        rows.push(Row {
            store: name,
            round,
            path: "get-seq".into(),
            concurrency: "1".into(),
            blocks: mib,
            elapsed,
            latency,
            note: String::new(),
        });
        depths.sort_unstable();
        for depth in depths {
            cold("get-conc")?;
            let (elapsed, latency, requests) = get_conc(store, mib, depth.max(1))?;
            notes.push(format!(
                "- {name} round {round} get-conc {depth}: request latency p50 {:.0} µs p99 {:.0} µs",
                requests.value_at_quantile(0.5) as f64 / 1000.0,
                requests.value_at_quantile(0.99) as f64 / 1000.0,
            ));
            rows.push(Row {
                store: name,
                round,
                path: format!("get-conc {depth}"),
                concurrency: depth.to_string(),
                blocks: mib,
                elapsed,
                latency,
                note: depth.to_string(),
            });
        }
    }
    journal.shutdown();
    report_reads(name, mib, &rows, &notes, summary);
    Ok(())
}

/// Prints a store's read table and notes, and adds its summary lines.
fn report_reads(name: &str, mib: u64, rows: &[Row], notes: &[String], summary: &mut Vec<String>) {
    println!();
    println!("{READ_HEADER}");
    let seq_of = |round: usize| {
        rows.iter()
            .find(|r| r.round == round && r.path == "get-seq")
            .map(Row::mib_per_sec)
    };
    let conc_of = |round: usize, depth: &str| {
        rows.iter()
            .find(|r| r.round == round && r.path.starts_with("get-conc") && r.note == depth)
            .map(Row::mib_per_sec)
    };
    for row in rows {
        let conc = if row.path.starts_with("engine") {
            conc_of(row.round, &row.note)
        } else {
            None
        };
        print_read_row(row, seq_of(row.round), conc);
    }
    println!();
    println!("(latency = the reader's wait per block: one `EngineHandle::read`, one `get_block`, or the wait for the next in-order block of the get-conc window)");
    for note in notes {
        println!("{note}");
    }
    // Medians over rounds.
    let mut paths: Vec<String> = Vec::new();
    for row in rows {
        if !paths.contains(&row.path) && !row.path.starts_with("get-conc") {
            paths.push(row.path.clone());
        }
    }
    // The mean of the middle two for an even count.
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        f64::midpoint(values[(n - 1) / 2], values[n / 2])
    };
    let seq = median(
        &mut rows
            .iter()
            .filter(|r| r.path == "get-seq")
            .map(Row::mib_per_sec)
            .collect(),
    );
    for path in paths.iter().filter(|p| p.starts_with("engine")) {
        let engine: Vec<&Row> = rows.iter().filter(|r| &r.path == path).collect();
        let mut ratios: Vec<f64> = engine
            .iter()
            .filter_map(|r| conc_of(r.round, &r.note).map(|c| r.mib_per_sec() / c))
            .collect();
        let mut rates: Vec<f64> = engine.iter().map(|r| r.mib_per_sec()).collect();
        let mut p50: Vec<f64> = engine.iter().map(|r| r.p(0.5)).collect();
        let mut p99: Vec<f64> = engine.iter().map(|r| r.p(0.99)).collect();
        let ratio = median(&mut ratios);
        summary.push(format!(
            "- read {name} {mib} MiB, {path}: median {:.0} MiB/s (p50 {:.0} µs, p99 {:.0} µs per block) = {ratio:.2}× get-conc at the same concurrency (goal ≥ 0.9×: {}), {:.2}× get-seq ({seq:.0} MiB/s); {} round(s)",
            median(&mut rates),
            median(&mut p50),
            median(&mut p99),
            if ratio >= 0.9 { "met" } else { "NOT met" },
            median(&mut rates) / seq,
            engine.len(),
        ));
    }
    for row in rows.iter().filter(|r| r.path.starts_with("get")) {
        summary.push(format!(
            "- read {name} {mib} MiB, {} round {}: {:.0} MiB/s (p50 {:.0} µs, p99 {:.0} µs)",
            row.path,
            row.round,
            row.mib_per_sec(),
            row.p(0.5),
            row.p(0.99)
        ));
    }
}

/// Writes a journal holding `payloads` as the write-back of earlier
/// versions left it (a file per entry in the store's object format, the
/// store's URL recorded; see `engine/src/store/writeback.rs`), reopens it
/// (recovery verifies every entry and moves it into a segment, untimed),
/// and times the uploaders draining it. Returns the recovery time and the
/// drain time.
fn full_journal_drain(
    args: &Args,
    target: &Target,
    scratch: &Path,
    payloads: &[Vec<u8>],
) -> Result<(Duration, Duration), String> {
    use datenlord_engine::store::object::{encode, ObjectKind};
    let dir = scratch.join("journal-full");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("store"), format!("{}\n", target.store.name()))
        .map_err(|e| e.to_string())?;
    for (index, data) in payloads.iter().enumerate() {
        let id = BlockId::new(WRITE_INO + 3, index as u64, 1);
        let name = format!("{}-{}-{}.blk", id.ino.0, id.index, id.version);
        std::fs::write(dir.join(name), encode(ObjectKind::Block(id), data))
            .map_err(|e| e.to_string())?;
    }
    let mut config = WriteBackConfig::new(&dir);
    config.upload_concurrency = args.upload_concurrency;
    let t = Instant::now();
    let wb = WriteBack::open(config, target.store.clone()).map_err(|e| e.to_string())?;
    let recovered = t.elapsed();
    let started = Instant::now();
    let backlog = wb.backlog().entries;
    if backlog + 2 * args.upload_concurrency as u64 <= payloads.len() as u64 {
        return Err(format!(
            "the reopened journal holds {backlog} of {} entries: did the journal format change?",
            payloads.len()
        ));
    }
    block_on(wb.drain(Duration::from_secs(DRAIN_TIMEOUT_SECS)))
        .map_err(|e| format!("drain: {e}"))?;
    let drained = started.elapsed();
    wb.shutdown();
    Ok((recovered, drained))
}

/// `put_block` of `payloads` as blocks of `ino`, `depth` in flight; one
/// latency per put.
fn plain_puts(
    store: &RemoteStore,
    ino: u64,
    payloads: &[Vec<u8>],
    depth: usize,
) -> Result<(Duration, Histogram<u64>), String> {
    let mut latency = histogram();
    let started = Instant::now();
    block_on(async {
        let mut running = FuturesUnordered::new();
        let mut pending = payloads
            .iter()
            .enumerate()
            .map(|(i, data)| (BlockId::new(ino, i as u64, 1), data));
        loop {
            while running.len() < depth {
                let Some((id, data)) = pending.next() else {
                    break;
                };
                let put = store.put_block(id, data);
                running.push(async move {
                    let t = Instant::now();
                    put.await.map_err(|e| format!("put {id}: {e}"))?;
                    Ok::<u64, String>(ns(t.elapsed()))
                });
            }
            match running.next().await {
                Some(took) => latency.saturating_record(took?),
                None => break,
            }
        }
        Ok::<(), String>(())
    })?;
    Ok((started.elapsed(), latency))
}

fn write_runs(
    args: &Args,
    target: &Target,
    scratch: &Path,
    summary: &mut Vec<String>,
) -> Result<(), String> {
    let mib = match target.kind {
        StoreKind::File => args.write_mib,
        StoreKind::S3 => args.s3_write_mib,
    };
    let name = target.kind.name();
    let store = &target.store;
    println!();
    println!(
        "## Upload, {name} store, {mib} MiB ({mib} blocks): write-back (mode back, {} uploaders, {} block(s) per commit, journal on the disk of {}) vs plain put_block",
        args.upload_concurrency,
        args.commit_blocks,
        args.dir.display()
    );
    let payloads: Vec<Vec<u8>> = (0..mib).map(|i| content(WRITE_INO, i)).collect();
    let ids = |ino: u64| (0..mib).map(move |i| BlockId::new(ino, i, 1));

    // Write-back: commits from one thread, then drain.
    let mut config = WriteBackConfig::new(scratch.join("journal"));
    config.mode = WriteMode::Back;
    config.upload_concurrency = args.upload_concurrency;
    let wb = WriteBack::open(config, store.clone()).map_err(|e| e.to_string())?;
    let mut commit_latency = histogram();
    let mut batches: Vec<Vec<(BlockId, Vec<u8>)>> = Vec::new();
    for chunk in ids(WRITE_INO)
        .zip(payloads.iter().cloned())
        .collect::<Vec<_>>()
        .chunks(args.commit_blocks)
    {
        batches.push(chunk.to_vec());
    }
    let started = Instant::now();
    for batch in batches {
        let t = Instant::now();
        block_on(wb.commit(batch)).map_err(|e| format!("commit: {e}"))?;
        commit_latency.saturating_record(ns(t.elapsed()));
    }
    let committed = started.elapsed();
    block_on(wb.drain(Duration::from_secs(DRAIN_TIMEOUT_SECS)))
        .map_err(|e| format!("drain: {e}"))?;
    let drained = started.elapsed();
    wb.shutdown();

    // Uploads alone: a journal already full of the blocks, drained by
    // the uploaders. The journal is filled through a store that refuses
    // every upload (nothing listens at its endpoint), then reopened for the
    // real store (its recovery verifies every entry: untimed).
    let (reopened, drain_only) = full_journal_drain(args, target, scratch, &payloads)?;

    // Plain puts of the same blocks (other inodes): one at a time, then as
    // many in flight as uploaders.
    let (seq, seq_latency) = plain_puts(store, WRITE_INO + 1, &payloads, 1)?;
    let (conc, conc_latency) =
        plain_puts(store, WRITE_INO + 2, &payloads, args.upload_concurrency)?;

    let rate = |d: Duration| mib as f64 / d.as_secs_f64();
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!();
    println!("| store | path | concurrency | MiB | MiB/s | × put-conc | p50 µs | p99 µs |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let line = |path: &str, c: String, d: Duration, h: Option<&Histogram<u64>>| {
        let (p50, p99) = h.map_or_else(
            || ("-".to_owned(), "-".to_owned()),
            |h| (format!("{:.0}", us(h, 0.5)), format!("{:.0}", us(h, 0.99))),
        );
        println!(
            "| {name} | {path} | {c} | {mib} | {:.0} | {:.2} | {p50} | {p99} |",
            rate(d),
            rate(d) / rate(conc)
        );
    };
    line(
        "write-back commit (journal durable)",
        "1 committer".into(),
        committed,
        Some(&commit_latency),
    );
    line(
        "write-back commit → drain done (uploaded)",
        format!("{} uploaders", args.upload_concurrency),
        drained,
        None,
    );
    line(
        "write-back drain of a full journal (uploads alone)",
        format!("{} uploaders", args.upload_concurrency),
        drain_only,
        None,
    );
    line("put-seq", "1".into(), seq, Some(&seq_latency));
    line(
        "put-conc",
        args.upload_concurrency.to_string(),
        conc,
        Some(&conc_latency),
    );
    println!();
    println!("(commit latency = one `commit` of {} block(s); put latency = one `put_block`; drain finished {:.2} s after the last commit; the full journal's recovery at open took {:.2} s, untimed)", args.commit_blocks, drained.saturating_sub(committed).as_secs_f64(), reopened.as_secs_f64());
    summary.push(format!(
        "- write {name} {mib} MiB: commit {:.0} MiB/s (p50 {:.0} µs, p99 {:.0} µs per commit), commit → uploaded {:.0} MiB/s = {:.2}× put-conc, drain of a full journal {:.0} MiB/s = {:.2}× put-conc {} ({:.0} MiB/s), put-seq {:.0} MiB/s",
        rate(committed),
        us(&commit_latency, 0.5),
        us(&commit_latency, 0.99),
        rate(drained),
        rate(drained) / rate(conc),
        rate(drain_only),
        rate(drain_only) / rate(conc),
        args.upload_concurrency,
        rate(conc),
        rate(seq),
    ));
    Ok(())
}
