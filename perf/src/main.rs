//! `datenlord-perf`: run a workload, compare targets, check SLOs.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use datenlord_perf::compare::{self, Target};
use datenlord_perf::report::Report;
use datenlord_perf::runner::{self, Measurement, Observer, Progress};
use datenlord_perf::spec::{RunLimits, Stop, WorkloadKind, WorkloadSpec};
use datenlord_perf::{plot, quantity, slo};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Runs no shorter than this get a progress bar.
const PROGRESS_BAR_MIN_MS: u64 = 2_000;

#[derive(Debug, Parser)]
#[command(
    name = "datenlord-perf",
    version,
    about = "Benchmark harness of DatenLord: workloads, peer comparison, latency SLOs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one workload on one directory.
    Run(RunArgs),
    /// Run one workload on several directories, interleaved, with ratios against a baseline.
    Compare(CompareArgs),
    /// Check a directory against the objectives of a TOML file; exits 1 if any fails.
    Slo(SloArgs),
    /// The raw TCP request/response round trip of a link (the reference for remote reads).
    Pingpong(PingpongArgs),
    /// Load an S3 server: concurrent PUTs or GETs of one object size for a while.
    S3(S3Args),
}

#[derive(Debug, Args)]
struct S3Args {
    /// The server, as `http://host:port`.
    #[arg(long)]
    endpoint: String,
    /// The bucket (it must exist).
    #[arg(long)]
    bucket: String,
    /// Access key id (also from AWS_ACCESS_KEY_ID).
    #[arg(long, env = "AWS_ACCESS_KEY_ID")]
    access_key: String,
    /// Secret access key (also from AWS_SECRET_ACCESS_KEY).
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    secret_key: String,
    /// put or get.
    #[arg(long, value_enum)]
    op: datenlord_perf::s3::S3Op,
    /// Bytes per object.
    #[arg(long, default_value = "1MiB")]
    size: String,
    /// Keys written or read.
    #[arg(long, default_value_t = 64)]
    objects: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// How long to load.
    #[arg(long, default_value = "10s")]
    duration: String,
    /// Write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct PingpongArgs {
    /// Serve round trips on this address (until killed).
    #[arg(long, conflicts_with = "connect")]
    listen: Option<String>,
    /// Make round trips to a server at this address.
    #[arg(long, required_unless_present = "listen")]
    connect: Option<String>,
    /// Bytes of each request (at least 8).
    #[arg(long, default_value = "64")]
    request_size: String,
    /// Bytes of each response.
    #[arg(long, default_value = "4KiB")]
    response_size: String,
    /// How long to make round trips.
    #[arg(long, default_value = "10s")]
    duration: String,
    /// Write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Directory to measure (the run works in DIR/datenlord-perf).
    #[arg(long)]
    dir: PathBuf,
    /// Process whose CPU time to report (e.g. the FUSE daemon).
    #[arg(long)]
    pid: Option<u32>,
    #[command(flatten)]
    workload: WorkloadArgs,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// A target, NAME=DIR (or DIR); repeat for each.
    #[arg(long = "target", required = true)]
    targets: Vec<Target>,
    /// Target the ratios are computed against (default: the first).
    #[arg(long)]
    baseline: Option<String>,
    /// Rounds; each target runs duration/rounds per round, order rotated.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// NAME=PID: charge this process's CPU time to target NAME; repeatable.
    #[arg(long = "pid")]
    pids: Vec<String>,
    /// NAME=N: run target NAME at queue depth N instead of --iodepth;
    /// repeatable. Targets may share a directory, e.g.
    /// `--target qd1=/mnt --target qd16=/mnt --target-iodepth qd16=16`.
    #[arg(long = "target-iodepth", value_name = "NAME=N")]
    target_iodepths: Vec<String>,
    #[command(flatten)]
    workload: WorkloadArgs,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, Args)]
struct SloArgs {
    /// TOML file of objectives (see perf/slo-example.toml).
    #[arg(long)]
    objectives: PathBuf,
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    pid: Option<u32>,
    /// Keep the files the workloads created.
    #[arg(long)]
    keep_files: bool,
    /// Write the verdicts as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct WorkloadArgs {
    /// randread, seqread, seqwrite, randwrite, mixed, smallfiles, listdir, epoch.
    #[arg(long, short)]
    workload: WorkloadKind,
    /// Worker threads (synchronous IO each: queue depth 1 per thread, unless --iodepth).
    #[arg(long, short, default_value_t = 1)]
    threads: u32,
    /// Block reads/writes in flight per thread (1..=256); above 1 each
    /// thread submits through its own io_uring. Block workloads only.
    #[arg(long, default_value_t = datenlord_perf::spec::DEFAULT_IODEPTH_OPS)]
    iodepth: u32,
    /// IO size, e.g. 4KiB (default: 4 KiB random, 1 MiB sequential).
    #[arg(long, value_parser = parse_bytes)]
    block_size: Option<u64>,
    /// Data file size per thread of the block workloads.
    #[arg(long, value_parser = parse_bytes, default_value = "256MiB")]
    file_size: u64,
    /// Reads in percent for `mixed`.
    #[arg(long, default_value_t = 70)]
    read_percent: u8,
    /// File size of `smallfiles`.
    #[arg(long, value_parser = parse_bytes, default_value = "4KiB")]
    small_file_size: u64,
    /// Directory entries of `listdir`.
    #[arg(long, default_value_t = 10_000)]
    dir_entries: u32,
    /// Dataset files of `epoch`.
    #[arg(long, default_value_t = 1_000)]
    dataset_files: u32,
    /// Smallest dataset file of `epoch`.
    #[arg(long, value_parser = parse_bytes, default_value = "100KiB")]
    sample_min: u64,
    /// Largest dataset file of `epoch`.
    #[arg(long, value_parser = parse_bytes, default_value = "1MiB")]
    sample_max: u64,
    /// Open data files with O_DIRECT.
    #[arg(long)]
    direct: bool,
    #[arg(long, default_value_t = datenlord_perf::spec::DEFAULT_SEED)]
    seed: u64,
    /// Measured time, e.g. 10s (default 10s unless --ops is given).
    #[arg(long, value_parser = parse_duration_ms, conflicts_with = "ops")]
    duration: Option<u64>,
    /// Measured ops in total instead of a duration.
    #[arg(long)]
    ops: Option<u64>,
    /// Unrecorded warm-up before measuring.
    #[arg(long, value_parser = parse_duration_ms, default_value = "1s")]
    warmup: u64,
    /// Keep the prepared files (reruns skip preparing them).
    #[arg(long)]
    keep_files: bool,
}

#[derive(Debug, Args)]
struct OutputArgs {
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the Markdown report here (it is printed to stdout anyway).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Write SVG plots into this directory (latency CDF per op, throughput,
    /// throughput over time); the Markdown report links them.
    #[arg(long, value_name = "DIR")]
    plots: Option<PathBuf>,
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    quantity::parse_bytes(text).map_err(|e| e.to_string())
}

fn parse_duration_ms(text: &str) -> Result<u64, String> {
    quantity::parse_duration_ms(text).map_err(|e| e.to_string())
}

impl WorkloadArgs {
    fn spec(&self) -> anyhow::Result<(WorkloadSpec, RunLimits)> {
        let mut spec = WorkloadSpec::new(self.workload);
        spec.threads = self.threads;
        spec.iodepth = self.iodepth;
        if let Some(bytes) = self.block_size {
            spec.block_size_bytes = bytes;
        }
        spec.file_size_bytes = self.file_size;
        spec.read_percent = self.read_percent;
        spec.small_file_bytes = self.small_file_size;
        spec.dir_entries = self.dir_entries;
        spec.dataset_files = self.dataset_files;
        spec.sample_bytes_min = self.sample_min;
        spec.sample_bytes_max = self.sample_max;
        spec.direct = self.direct;
        spec.seed = self.seed;
        spec.validate().context("check the workload options")?;
        let stop = match (self.ops, self.duration) {
            (Some(ops), _) => Stop::Ops(ops),
            (None, duration) => Stop::DurationMs(duration.unwrap_or(slo::DEFAULT_DURATION_MS)),
        };
        Ok((
            spec,
            RunLimits {
                warmup_ms: self.warmup,
                stop,
            },
        ))
    }
}

/// Progress bar on stderr for runs long enough to want one.
struct Bar {
    bar: Option<ProgressBar>,
}

impl Bar {
    fn new(limits: RunLimits, runs: u32) -> Self {
        let long = match limits.stop {
            Stop::DurationMs(ms) => ms.saturating_add(limits.warmup_ms) >= PROGRESS_BAR_MIN_MS,
            Stop::Ops(_) => true,
        };
        let bar = long.then(|| {
            let (total, template) = match limits.stop {
                Stop::DurationMs(ms) => (ms * u64::from(runs), "{msg} [{bar:30}] {pos}/{len} ms"),
                Stop::Ops(ops) => (ops, "{msg} [{bar:30}] {pos}/{len} ops"),
            };
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Self { bar }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Observer for Bar {
    fn phase(&self, phase: &str) {
        tracing::info!("{phase}");
        if let Some(bar) = &self.bar {
            bar.set_message(phase.to_owned());
        }
    }

    fn progress(&self, p: Progress) {
        if let Some(bar) = &self.bar {
            match p.stop {
                // Compare runs many measure() calls: show time per call.
                Stop::DurationMs(_) => {
                    bar.set_position(p.measured_ms.min(bar.length().unwrap_or(u64::MAX)));
                }
                Stop::Ops(_) => bar.set_position(p.ops.min(bar.length().unwrap_or(u64::MAX))),
            }
        }
    }
}

fn write_outputs(
    report: &mut Report,
    output: &OutputArgs,
    targets: &[Target],
    results: &[Measurement],
) -> anyhow::Result<()> {
    if let Some(dir) = &output.plots {
        let series: Vec<plot::Series<'_>> = targets
            .iter()
            .zip(results)
            .map(|(t, m)| plot::Series {
                name: &t.name,
                measurement: m,
            })
            .collect();
        let written = plot::write_all(dir, &series)
            .with_context(|| format!("writing plots to {}", dir.display()))?;
        report.plots = written
            .into_iter()
            .map(|path| plot_link(path, output.markdown.as_deref()))
            .collect();
    }
    let markdown = report.to_markdown();
    if let Some(path) = &output.json {
        std::fs::write(path, report.to_json()?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &output.markdown {
        std::fs::write(path, &markdown).with_context(|| format!("writing {}", path.display()))?;
    }
    std::io::stdout().lock().write_all(markdown.as_bytes())?;
    Ok(())
}

/// The plot's path as linked from the Markdown file: relative to the
/// file's directory when the plot lies under it (lexically), else as given.
fn plot_link(path: PathBuf, markdown: Option<&std::path::Path>) -> PathBuf {
    let parent = markdown
        .and_then(std::path::Path::parent)
        .filter(|p| !p.as_os_str().is_empty());
    match parent.map(|parent| path.strip_prefix(parent)) {
        Some(Ok(relative)) => relative.to_owned(),
        _ => path,
    }
}

fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let (spec, limits) = args.workload.spec()?;
    let bar = Bar::new(limits, 1);
    let prepared = runner::prepare(&args.dir, &spec, &bar)
        .with_context(|| format!("preparing {} in {}", spec.kind, args.dir.display()))?;
    let measured = runner::measure(&prepared, &spec, limits, args.pid, &bar);
    bar.finish();
    let measured =
        measured.with_context(|| format!("running {} in {}", spec.kind, args.dir.display()))?;
    if !args.workload.keep_files {
        runner::cleanup(&prepared)?;
    }
    let target = Target {
        name: target_name(&args.dir),
        dir: args.dir.clone(),
        pid: args.pid,
        iodepth: None,
    };
    let targets = [target];
    let results = [measured];
    let mut report = Report::new(&spec, limits, 1, &targets, &results, None)?;
    write_outputs(&mut report, &args.output, &targets, &results)?;
    Ok(ExitCode::SUCCESS)
}

fn target_name(dir: &std::path::Path) -> String {
    dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn compare_targets(args: &CompareArgs) -> anyhow::Result<ExitCode> {
    let (spec, limits) = args.workload.spec()?;
    let mut targets = args.targets.clone();
    for entry in &args.pids {
        let (name, pid) = entry.split_once('=').context("--pid takes NAME=PID")?;
        let pid: u32 = pid
            .parse()
            .with_context(|| format!("--pid {entry}: not a process id"))?;
        let Some(target) = targets.iter_mut().find(|t| t.name == name) else {
            bail!("--pid {entry}: no target named {name:?}");
        };
        target.pid = Some(pid);
    }
    for entry in &args.target_iodepths {
        let (name, depth) = entry
            .split_once('=')
            .context("--target-iodepth takes NAME=N")?;
        let depth: u32 = depth
            .parse()
            .with_context(|| format!("--target-iodepth {entry}: not a number"))?;
        let Some(target) = targets.iter_mut().find(|t| t.name == name) else {
            bail!("--target-iodepth {entry}: no target named {name:?}");
        };
        target.iodepth = Some(depth);
        target
            .spec(&spec)
            .validate()
            .with_context(|| format!("--target-iodepth {entry}"))?;
    }
    let baseline = args
        .baseline
        .clone()
        .unwrap_or_else(|| targets[0].name.clone());
    if !targets.iter().any(|t| t.name == baseline) {
        bail!("--baseline {baseline:?} is not one of the targets");
    }
    let bar = Bar::new(limits.split(args.rounds), 1);
    let results = compare::compare(
        &targets,
        &spec,
        limits,
        args.rounds,
        args.workload.keep_files,
        &bar,
    );
    bar.finish();
    let results: Vec<Measurement> = results.context("comparing targets")?;
    let mut report = Report::new(
        &spec,
        limits,
        args.rounds,
        &targets,
        &results,
        Some(&baseline),
    )?;
    write_outputs(&mut report, &args.output, &targets, &results)?;
    Ok(ExitCode::SUCCESS)
}

fn check_slo(args: &SloArgs) -> anyhow::Result<ExitCode> {
    let objectives = slo::load(&args.objectives)?;
    // Objectives that share a workload and limits share one run.
    let mut runs: Vec<(WorkloadSpec, RunLimits, Measurement)> = Vec::new();
    let mut verdicts = Vec::new();
    for objective in &objectives {
        let known = runs
            .iter()
            .position(|(s, l, _)| *s == objective.spec && *l == objective.limits);
        let index = if let Some(index) = known {
            index
        } else {
            let bar = Bar::new(objective.limits, 1);
            let prepared = runner::prepare(&args.dir, &objective.spec, &bar)
                .with_context(|| format!("objective {:?}: preparing", objective.name))?;
            let m = runner::measure(&prepared, &objective.spec, objective.limits, args.pid, &bar);
            bar.finish();
            let m = m.with_context(|| format!("objective {:?}: running", objective.name))?;
            if !args.keep_files {
                runner::cleanup(&prepared)?;
            }
            runs.push((objective.spec.clone(), objective.limits, m));
            runs.len() - 1
        };
        verdicts.push(slo::evaluate(objective, &runs[index].2));
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&verdicts)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    std::io::stdout()
        .lock()
        .write_all(slo::render(&verdicts).as_bytes())?;
    Ok(if verdicts.iter().all(|v| v.pass) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match &cli.command {
        Command::Run(args) => run(args),
        Command::Compare(args) => compare_targets(args),
        Command::Slo(args) => check_slo(args),
        Command::Pingpong(args) => pingpong(args),
        Command::S3(args) => s3(args),
    }
}

fn s3(args: &S3Args) -> anyhow::Result<ExitCode> {
    use datenlord_perf::s3;
    let size = quantity::parse_bytes(&args.size)?;
    let load = s3::S3Load {
        endpoint: args.endpoint.clone(),
        bucket: args.bucket.clone(),
        access_key: args.access_key.clone(),
        secret_key: args.secret_key.clone(),
        op: args.op,
        size: usize::try_from(size).context("--size")?,
        objects: args.objects,
        concurrency: args.concurrency,
        duration: std::time::Duration::from_millis(quantity::parse_duration_ms(&args.duration)?),
    };
    let result = s3::run(&load)?;
    println!(
        "{:?} {} B x{}: {} requests ({} errors), {:.0}/s, {:.1} MiB/s, p50 {:.0} us, p90 {:.0} us, p99 {:.0} us",
        result.op,
        result.size,
        result.concurrency,
        result.requests,
        result.errors,
        result.per_second,
        result.mib_per_second,
        result.p50_us,
        result.p90_us,
        result.p99_us
    );
    if let Some(e) = &result.first_error {
        eprintln!("first error: {e}");
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if result.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn pingpong(args: &PingpongArgs) -> anyhow::Result<ExitCode> {
    use datenlord_perf::pingpong;
    if let Some(listen) = &args.listen {
        pingpong::serve(listen)?;
        return Ok(ExitCode::SUCCESS);
    }
    let connect = args.connect.as_deref().unwrap_or_default();
    let size = |text: &str, what: &str| -> anyhow::Result<u32> {
        let bytes = quantity::parse_bytes(text)?;
        u32::try_from(bytes).map_err(|_| anyhow::anyhow!("--{what} {text}: at most 4 GiB"))
    };
    let result = pingpong::run(
        connect,
        size(&args.request_size, "request-size")?,
        size(&args.response_size, "response-size")?,
        std::time::Duration::from_millis(quantity::parse_duration_ms(&args.duration)?),
    )?;
    println!(
        "{} B -> {} B: {} round trips, {:.0}/s, {:.1} MiB/s, p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us",
        result.request,
        result.response,
        result.round_trips,
        result.per_second,
        result.mib_per_second,
        result.p50_us,
        result.p99_us,
        result.p999_us
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
