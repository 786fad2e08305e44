//! Reports: JSON for machines, Markdown for people. Every report carries
//! the machine, kernel, command line, date and tool version, and in a
//! comparison the ratios against the baseline measured in the same run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::compare::Target;
use crate::error::{Error, Result};
use crate::latency::LatencySummary;
use crate::machine::{self, Machine};
use crate::process::CpuUsage;
use crate::quantity::format_bytes;
use crate::runner::Measurement;
use crate::spec::{OpKind, RunLimits, Stop, WorkloadKind, WorkloadSpec};

/// How IO is issued, so that results at different queue depths are not
/// mistaken for one another.
pub fn io_model(spec: &WorkloadSpec) -> String {
    depth_model(spec.iodepth)
}

fn depth_model(iodepth: u32) -> String {
    if iodepth > 1 {
        format!("threads x io_uring (queue depth {iodepth} per thread)")
    } else {
        "threads x synchronous IO (queue depth 1 per thread)".to_owned()
    }
}

/// What the Markdown prints for a ratio that has no value.
const NO_RATIO: &str = "n/a";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub tool: String,
    pub command_line: Vec<String>,
    pub date_utc: String,
    pub machine: Machine,
    pub io_model: String,
    pub workload: WorkloadSpec,
    pub limits: RunLimits,
    pub rounds: u32,
    pub baseline: Option<String>,
    pub targets: Vec<TargetReport>,
    /// SVG plots of this run (`--plots`), as linked from the Markdown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plots: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetReport {
    pub name: String,
    pub dir: PathBuf,
    /// Queue depth this target ran at (the workload's unless overridden).
    #[serde(default = "one")]
    pub iodepth: u32,
    pub elapsed_s: f64,
    pub ops: u64,
    pub ops_per_s: f64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub bytes_per_s: f64,
    /// Per op type, keyed by `OpKind` name.
    pub latency: BTreeMap<String, LatencySummary>,
    pub cpu: Option<CpuUsage>,
    /// How ops/s varied across compare's rounds (2 rounds or more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds: Option<RoundSpread>,
    pub vs_baseline: Option<Ratios>,
}

/// This target divided by the baseline: a throughput ratio above 1 is
/// faster, a latency ratio above 1 is slower. `None` (JSON `null`, Markdown
/// "n/a") where the baseline measured 0 or nothing: there is no ratio.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ratios {
    pub op: OpKind,
    pub ops_per_s: Option<f64>,
    pub bytes_per_s: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    /// Smallest and largest ops/s ratio of one round against the same
    /// round of the baseline (rounds are interleaved, so round by round
    /// the two saw the same machine); `None` for a single round.
    #[serde(default)]
    pub ops_per_s_round_min: Option<f64>,
    #[serde(default)]
    pub ops_per_s_round_max: Option<f64>,
}

/// Ops/s of each round and their spread: a difference between targets
/// smaller than this spread is noise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundSpread {
    pub ops_per_s: Vec<f64>,
    pub ops_per_s_min: f64,
    pub ops_per_s_max: f64,
    pub ops_per_s_mean: f64,
    /// Coefficient of variation: sample standard deviation / mean, in
    /// percent; `None` when the mean is 0.
    pub cv_percent: Option<f64>,
}

impl RoundSpread {
    /// `None` below 2 rounds (no spread to tell).
    pub fn of(ops_per_s: &[f64]) -> Option<Self> {
        if ops_per_s.len() < 2 {
            return None;
        }
        let n = ops_per_s.len() as f64;
        let mean = ops_per_s.iter().sum::<f64>() / n;
        let variance = ops_per_s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        Some(Self {
            ops_per_s: ops_per_s.to_vec(),
            ops_per_s_min: ops_per_s.iter().copied().fold(f64::INFINITY, f64::min),
            ops_per_s_max: ops_per_s.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            ops_per_s_mean: mean,
            cv_percent: (mean > 0.0).then(|| variance.sqrt() / mean * 100.0),
        })
    }
}

/// `a / b`, or `None` when `b` is not a positive number.
fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

fn one() -> u32 {
    1
}

impl TargetReport {
    fn new(target: &Target, spec: &WorkloadSpec, m: &Measurement) -> Self {
        Self {
            name: target.name.clone(),
            dir: target.dir.clone(),
            iodepth: target.spec(spec).iodepth,
            elapsed_s: m.elapsed_s(),
            ops: m.latency.total_count(),
            ops_per_s: m.ops_per_s(),
            bytes_read: m.bytes_read,
            bytes_written: m.bytes_written,
            bytes_per_s: m.bytes_per_s(),
            latency: m
                .latency
                .kinds()
                .map(|k| (k.name().to_owned(), m.latency.summary(k)))
                .collect(),
            cpu: m.cpu_usage(),
            rounds: RoundSpread::of(&m.round_ops_per_s),
            vs_baseline: None,
        }
    }

    fn ratios(&self, base: &Self, op: OpKind) -> Ratios {
        let lat =
            |r: &Self, f: fn(&LatencySummary) -> f64| r.latency.get(op.name()).map_or(f64::NAN, f);
        let per_round: Vec<Option<f64>> = match (&self.rounds, &base.rounds) {
            (Some(mine), Some(theirs)) if mine.ops_per_s.len() == theirs.ops_per_s.len() => mine
                .ops_per_s
                .iter()
                .zip(&theirs.ops_per_s)
                .map(|(&a, &b)| ratio(a, b))
                .collect(),
            _ => Vec::new(),
        };
        // Any round without a ratio leaves the range without one too.
        let known: Option<Vec<f64>> = per_round.into_iter().collect();
        let known = known.filter(|k| !k.is_empty());
        Ratios {
            op,
            ops_per_s: ratio(self.ops_per_s, base.ops_per_s),
            bytes_per_s: ratio(self.bytes_per_s, base.bytes_per_s),
            p50: ratio(lat(self, |s| s.p50_us), lat(base, |s| s.p50_us)),
            p99: ratio(lat(self, |s| s.p99_us), lat(base, |s| s.p99_us)),
            ops_per_s_round_min: known
                .as_ref()
                .map(|k| k.iter().copied().fold(f64::INFINITY, f64::min)),
            ops_per_s_round_max: known.map(|k| k.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
        }
    }
}

impl Report {
    /// `results[i]` belongs to `targets[i]`; `baseline` names a target.
    pub fn new(
        spec: &WorkloadSpec,
        limits: RunLimits,
        rounds: u32,
        targets: &[Target],
        results: &[Measurement],
        baseline: Option<&str>,
    ) -> Result<Self> {
        debug_assert_eq!(targets.len(), results.len());
        let mut reports: Vec<TargetReport> = targets
            .iter()
            .zip(results)
            .map(|(t, m)| TargetReport::new(t, spec, m))
            .collect();
        if let Some(name) = baseline {
            let base = reports
                .iter()
                .find(|r| r.name == name)
                .cloned()
                .ok_or_else(|| {
                    Error::Compare(format!("baseline {name:?} is not one of the targets"))
                })?;
            for report in &mut reports {
                report.vs_baseline = Some(report.ratios(&base, spec.kind.main_op()));
            }
        }
        Ok(Self {
            tool: format!("datenlord-perf {}", env!("CARGO_PKG_VERSION")),
            command_line: std::env::args().collect(),
            date_utc: machine::now_utc(),
            machine: Machine::detect(),
            io_model: if reports.iter().all(|r| r.iodepth == spec.iodepth) {
                io_model(spec)
            } else {
                let per_target: Vec<String> = reports
                    .iter()
                    .map(|r| format!("{}: {}", r.name, depth_model(r.iodepth)))
                    .collect();
                format!("per target; {}", per_target.join("; "))
            },
            workload: spec.clone(),
            limits,
            rounds,
            baseline: baseline.map(str::to_owned),
            targets: reports,
            plots: Vec::new(),
        })
    }

    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        self.write_markdown(&mut out)
            .expect("writing to a String cannot fail");
        out
    }

    fn write_markdown(&self, out: &mut String) -> std::fmt::Result {
        let m = &self.machine;
        writeln!(out, "## datenlord-perf: {}\n", describe(&self.workload))?;
        writeln!(out, "- date: {}", self.date_utc)?;
        writeln!(
            out,
            "- machine: {} CPUs ({}), {:.1} GiB memory, kernel {}",
            m.nproc,
            m.cpu_model,
            m.memory_bytes as f64 / f64::from(1 << 30),
            m.kernel
        )?;
        writeln!(out, "- command: `{}`", self.command_line.join(" "))?;
        writeln!(out, "- tool: {}; IO: {}", self.tool, self.io_model)?;
        let stop = match self.limits.stop {
            Stop::DurationMs(ms) => format!("{ms} ms"),
            Stop::Ops(ops) => format!("{ops} ops"),
        };
        writeln!(
            out,
            "- run: {stop} after {} ms warm-up, {} round(s){}\n",
            self.limits.warmup_ms,
            self.rounds,
            if self.rounds > 1 {
                ", targets interleaved"
            } else {
                ""
            }
        )?;
        writeln!(
            out,
            "| target | op | ops | ops/s | MiB/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs |"
        )?;
        writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        for t in &self.targets {
            writeln!(
                out,
                "| {} | all | {} | {:.0} | {:.1} | | | | | |",
                t.name,
                t.ops,
                t.ops_per_s,
                t.bytes_per_s / f64::from(1 << 20)
            )?;
            for (op, s) in &t.latency {
                writeln!(
                    out,
                    "| {} | {op} | {} | {:.0} | | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                    t.name,
                    s.count,
                    s.count as f64 / t.elapsed_s.max(f64::MIN_POSITIVE),
                    s.p50_us,
                    s.p90_us,
                    s.p99_us,
                    s.p999_us,
                    s.max_us
                )?;
            }
        }
        self.write_ratios(out)?;
        self.write_spread(out)?;
        if self.targets.iter().any(|t| t.cpu.is_some()) {
            writeln!(out, "\nCPU of the process under test:\n")?;
            writeln!(out, "| target | pid | CPU s | cores busy | CPU µs/op |")?;
            writeln!(out, "|---|---:|---:|---:|---:|")?;
            for t in &self.targets {
                if let Some(c) = &t.cpu {
                    writeln!(
                        out,
                        "| {} | {} | {:.2} | {:.2} | {:.2} |",
                        t.name, c.pid, c.cpu_seconds, c.cores_busy, c.cpu_us_per_op
                    )?;
                }
            }
        }
        self.write_plot_links(out)
    }

    /// Ratios against the baseline, with their round-by-round range.
    fn write_ratios(&self, out: &mut String) -> std::fmt::Result {
        let Some(base) = &self.baseline else {
            return Ok(());
        };
        let op = self.workload.kind.main_op();
        writeln!(
            out,
            "\nRatios against `{base}` (throughput > 1 is faster, latency > 1 is slower):\n"
        )?;
        writeln!(
            out,
            "| target | ops/s × | ops/s × per round (min–max) | MiB/s × | {op} p50 × | {op} p99 × |"
        )?;
        writeln!(out, "|---|---:|---:|---:|---:|---:|")?;
        let mut missing = false;
        for t in &self.targets {
            if let Some(r) = &t.vs_baseline {
                let cells = [r.ops_per_s, r.bytes_per_s, r.p50, r.p99].map(cell);
                let range = match (r.ops_per_s_round_min, r.ops_per_s_round_max) {
                    (Some(min), Some(max)) => format!("{min:.2}–{max:.2}"),
                    _ => NO_RATIO.to_owned(),
                };
                missing |= cells.iter().any(|c| c == NO_RATIO) || range == NO_RATIO;
                writeln!(
                    out,
                    "| {} | {} | {range} | {} | {} | {} |",
                    t.name, cells[0], cells[1], cells[2], cells[3]
                )?;
            }
        }
        if missing {
            writeln!(
                out,
                "\n{NO_RATIO}: the baseline measured 0 there (or there was a single \
                 round), so there is no ratio; the JSON says `null`."
            )?;
        }
        Ok(())
    }

    /// Ops/s round by round: a ratio inside this spread is noise.
    fn write_spread(&self, out: &mut String) -> std::fmt::Result {
        if !self.targets.iter().any(|t| t.rounds.is_some()) {
            return Ok(());
        }
        writeln!(
            out,
            "\nSpread across rounds (ops/s of each round; CV = standard deviation / mean):\n"
        )?;
        writeln!(
            out,
            "| target | rounds | min ops/s | max ops/s | CV % | each round |"
        )?;
        writeln!(out, "|---|---:|---:|---:|---:|---|")?;
        for t in &self.targets {
            let Some(r) = &t.rounds else { continue };
            let each: Vec<String> = r.ops_per_s.iter().map(|x| format!("{x:.0}")).collect();
            let cv = r
                .cv_percent
                .map_or_else(|| NO_RATIO.to_owned(), |cv| format!("{cv:.1}"));
            writeln!(
                out,
                "| {} | {} | {:.0} | {:.0} | {cv} | {} |",
                t.name,
                r.ops_per_s.len(),
                r.ops_per_s_min,
                r.ops_per_s_max,
                each.join(", ")
            )?;
        }
        Ok(())
    }

    fn write_plot_links(&self, out: &mut String) -> std::fmt::Result {
        if self.plots.is_empty() {
            return Ok(());
        }
        writeln!(out, "\nPlots:\n")?;
        for plot in &self.plots {
            let link = plot.display().to_string();
            let title = plot
                .file_stem()
                .map_or_else(|| link.clone(), |s| s.to_string_lossy().into_owned());
            writeln!(out, "![{title}](<{link}>)")?;
        }
        Ok(())
    }
}

/// A ratio for the Markdown: two decimals, or "n/a".
fn cell(value: Option<f64>) -> String {
    value.map_or_else(|| NO_RATIO.to_owned(), |v| format!("{v:.2}"))
}

/// "randread, 4 KiB blocks, 4 threads, O_DIRECT, seed 42".
pub fn describe(spec: &WorkloadSpec) -> String {
    let shape = match spec.kind {
        WorkloadKind::RandRead
        | WorkloadKind::SeqRead
        | WorkloadKind::SeqWrite
        | WorkloadKind::RandWrite => {
            format!(
                "{} blocks on {} files",
                format_bytes(spec.block_size_bytes),
                format_bytes(spec.file_size_bytes)
            )
        }
        WorkloadKind::Mixed => format!(
            "{} blocks on {} files, {}% reads",
            format_bytes(spec.block_size_bytes),
            format_bytes(spec.file_size_bytes),
            spec.read_percent
        ),
        WorkloadKind::SmallFiles => format!("{} files", format_bytes(spec.small_file_bytes)),
        WorkloadKind::ListDir => format!("{} entries", spec.dir_entries),
        WorkloadKind::Epoch => format!(
            "{} files of {}–{}",
            spec.dataset_files,
            format_bytes(spec.sample_bytes_min),
            format_bytes(spec.sample_bytes_max)
        ),
    };
    let depth = if spec.iodepth > 1 {
        format!(", iodepth {}", spec.iodepth)
    } else {
        String::new()
    };
    format!(
        "{}, {shape}, {} thread(s){depth}, {}, seed {}",
        spec.kind,
        spec.threads,
        if spec.direct { "O_DIRECT" } else { "buffered" },
        spec.seed
    )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::Report;
    use crate::compare::Target;
    use crate::runner::Measurement;
    use crate::spec::{OpKind, RunLimits, Stop, WorkloadKind, WorkloadSpec};

    fn measurement(latency_ns: u64, count: u64) -> Measurement {
        let mut m = Measurement::empty().expect("histogram bounds");
        for _ in 0..count {
            m.latency.record(OpKind::Read, latency_ns);
        }
        m.bytes_read = count * 4096;
        m.elapsed_ns = 1_000_000_000;
        m
    }

    #[test]
    fn ratios_against_baseline_and_markdown() {
        let targets: Vec<Target> = ["local=/a", "fuse=/b"]
            .iter()
            .map(|t| t.parse().expect("valid"))
            .collect();
        let results = [measurement(10_000, 1000), measurement(20_000, 500)];
        let spec = WorkloadSpec::new(WorkloadKind::RandRead);
        let limits = RunLimits {
            warmup_ms: 0,
            stop: Stop::DurationMs(1000),
        };
        let report = Report::new(&spec, limits, 2, &targets, &results, Some("local"))
            .expect("baseline exists");
        let fuse = report.targets[1].vs_baseline.expect("ratios");
        assert!(fuse.ops_per_s.is_some_and(|r| (r - 0.5).abs() < 1e-9));
        assert!(fuse.p99.is_some_and(|r| (r - 2.0).abs() < 0.01));
        let md = report.to_markdown();
        assert!(md.contains("| fuse | read | 500 | 500 |"), "{md}");
        assert!(md.contains("| fuse | all | 500 | 500 | 2.0 |"), "{md}");
        assert!(md.contains("Ratios against `local`"));
        assert!(!md.contains("Plots:"));
        let mut with_plots = report.clone();
        with_plots.plots = vec![PathBuf::from("plots/throughput.svg")];
        let md = with_plots.to_markdown();
        assert!(
            md.contains("Plots:\n\n![throughput](<plots/throughput.svg>)"),
            "{md}"
        );
        let json = report.to_json().expect("serializable");
        let back: Report = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back.targets[0].dir, PathBuf::from("/a"));
        assert!(Report::new(&spec, limits, 1, &targets, &results, Some("nope")).is_err());
    }

    /// Three rounds merged per target, as compare does.
    fn rounds(per_round: &[(u64, u64)]) -> Measurement {
        let mut total = Measurement::empty().expect("histogram bounds");
        for &(latency_ns, count) in per_round {
            total.merge(&measurement(latency_ns, count)).expect("merge");
        }
        total
    }

    #[test]
    fn round_spread_and_zero_baseline_ratios_are_explicit() {
        let targets: Vec<Target> = ["idle=/a", "busy=/b"]
            .iter()
            .map(|t| t.parse().expect("valid"))
            .collect();
        // The baseline did nothing at all: every ratio against it is n/a.
        let results = [
            rounds(&[(1, 0), (1, 0), (1, 0)]),
            rounds(&[(10_000, 900), (10_000, 1000), (10_000, 1100)]),
        ];
        let spec = WorkloadSpec::new(WorkloadKind::RandRead);
        let limits = RunLimits {
            warmup_ms: 0,
            stop: Stop::DurationMs(3000),
        };
        let report = Report::new(&spec, limits, 3, &targets, &results, Some("idle"))
            .expect("baseline exists");
        let busy = &report.targets[1];
        let spread = busy.rounds.as_ref().expect("3 rounds");
        assert_eq!(spread.ops_per_s, [900.0, 1000.0, 1100.0]);
        assert_eq!(
            (spread.ops_per_s_min, spread.ops_per_s_max),
            (900.0, 1100.0)
        );
        assert!(spread.cv_percent.is_some_and(|cv| (cv - 10.0).abs() < 1e-9));
        assert_eq!(
            report.targets[0].rounds.as_ref().and_then(|r| r.cv_percent),
            None
        );
        let r = busy.vs_baseline.expect("ratios");
        assert_eq!(
            (
                r.ops_per_s,
                r.bytes_per_s,
                r.p50,
                r.p99,
                r.ops_per_s_round_min
            ),
            (None, None, None, None, None)
        );

        let json = report.to_json().expect("serializable");
        let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert!(value["targets"][1]["vs_baseline"]["ops_per_s"].is_null());
        assert_eq!(value["targets"][1]["rounds"]["ops_per_s_max"], 1100.0);
        let back: Report = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back.targets[1].vs_baseline, busy.vs_baseline);

        let md = report.to_markdown();
        assert!(
            md.contains("| busy | n/a | n/a | n/a | n/a | n/a |"),
            "{md}"
        );
        assert!(md.contains("n/a: the baseline measured 0"), "{md}");
        assert!(
            md.contains("| busy | 3 | 900 | 1100 | 10.0 | 900, 1000, 1100 |"),
            "{md}"
        );
        assert!(md.contains("| idle | 3 | 0 | 0 | n/a | 0, 0, 0 |"), "{md}");

        // Against a baseline that did run, the per-round range is given.
        let report = Report::new(&spec, limits, 3, &targets, &results, Some("busy"))
            .expect("baseline exists");
        let r = report.targets[1].vs_baseline.expect("ratios");
        assert_eq!(
            (r.ops_per_s_round_min, r.ops_per_s_round_max),
            (Some(1.0), Some(1.0))
        );
        assert!(report.to_markdown().contains("| busy | 1.00 | 1.00–1.00 |"));
    }
}
