//! Latency objectives: a TOML file of "this workload, this op, p99 under
//! X µs at at least Y ops/s", parsed with line numbers in every error, and a
//! pure evaluation of a measurement against each objective.
//!
//! ```toml
//! [defaults]            # optional, applies to every objective
//! duration = "10s"
//! warmup = "1s"
//! threads = 4
//!
//! [[objective]]
//! name = "4k randread p99"
//! workload = "randread"
//! block_size = "4KiB"
//! op = "read"           # default: the workload's main op
//! percentile = 99.0     # default: 99
//! max_latency_us = 300
//! min_ops_per_s = 50000
//! ```

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::quantity::{parse_bytes, parse_duration_ms};
use crate::runner::Measurement;
use crate::spec::{OpKind, RunLimits, Stop, WorkloadKind, WorkloadSpec};

/// Objectives in one file.
pub const MAX_OBJECTIVES: usize = 256;
/// Larger SLO files are refused before parsing.
pub const MAX_SLO_FILE_BYTES: u64 = 1 << 20;
pub const DEFAULT_DURATION_MS: u64 = 10_000;
pub const DEFAULT_WARMUP_MS: u64 = 1_000;
pub const DEFAULT_PERCENTILE: f64 = 99.0;

/// A checked objective, ready to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    pub name: String,
    /// Line of the `[[objective]]` in the file.
    pub line: usize,
    pub spec: WorkloadSpec,
    pub limits: RunLimits,
    pub op: OpKind,
    pub percentile: f64,
    pub max_latency_us: Option<f64>,
    pub min_ops_per_s: Option<f64>,
}

/// Outcome of one objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub name: String,
    pub workload: WorkloadKind,
    pub op: OpKind,
    pub percentile: f64,
    /// `None` when no op of that kind completed.
    pub latency_us: Option<f64>,
    pub max_latency_us: Option<f64>,
    pub ops_per_s: f64,
    pub min_ops_per_s: Option<f64>,
    pub pass: bool,
}

pub fn load(path: &Path) -> Result<Vec<Objective>> {
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io("read", path, e))?
        .len();
    if size > MAX_SLO_FILE_BYTES {
        return Err(Error::invalid(
            "SLO file",
            path.display(),
            format!("larger than {MAX_SLO_FILE_BYTES} bytes"),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    parse(path, &text)
}

/// Parses and checks an SLO file; `path` only labels errors.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Objective>> {
    let at = |offset: usize, message: String| {
        let (line, column) = line_column(text, offset);
        Error::SloParse {
            path: path.to_owned(),
            line,
            column,
            message,
        }
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        at(
            e.span().map_or(0, |s| s.start),
            e.message().trim().to_owned(),
        )
    })?;
    if raw.objective.is_empty() {
        return Err(at(0, "no [[objective]] table".to_owned()));
    }
    if raw.objective.len() > MAX_OBJECTIVES {
        return Err(at(0, format!("more than {MAX_OBJECTIVES} objectives")));
    }
    let defaults = raw.defaults.unwrap_or_default();
    raw.objective
        .into_iter()
        .map(|spanned| {
            let offset = spanned.span().start;
            let line = line_column(text, offset).0;
            spanned
                .into_inner()
                .check(&defaults, line)
                .map_err(|message| at(offset, message))
        })
        .collect()
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Judges one objective against the measurement of its workload.
pub fn evaluate(objective: &Objective, m: &Measurement) -> Verdict {
    let latency_us = m.latency.percentile_us(objective.op, objective.percentile);
    let ops_per_s = m.kind_ops_per_s(objective.op);
    let latency_ok = match (objective.max_latency_us, latency_us) {
        (None, _) => true,
        (Some(max), Some(measured)) => measured <= max,
        (Some(_), None) => false,
    };
    let throughput_ok = objective.min_ops_per_s.is_none_or(|min| ops_per_s >= min);
    Verdict {
        name: objective.name.clone(),
        workload: objective.spec.kind,
        op: objective.op,
        percentile: objective.percentile,
        latency_us,
        max_latency_us: objective.max_latency_us,
        ops_per_s,
        min_ops_per_s: objective.min_ops_per_s,
        pass: latency_ok && throughput_ok && m.latency.count(objective.op) > 0,
    }
}

/// Markdown table of verdicts, failures marked.
pub fn render(verdicts: &[Verdict]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| objective | workload | op | latency | limit | ops/s | min ops/s | result |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---|");
    for v in verdicts {
        let latency = v.latency_us.map_or_else(
            || "no ops".to_owned(),
            |us| format!("p{} {us:.1} µs", v.percentile),
        );
        let limit = v
            .max_latency_us
            .map_or_else(|| "-".to_owned(), |us| format!("<= {us} µs"));
        let min = v
            .min_ops_per_s
            .map_or_else(|| "-".to_owned(), |ops| format!(">= {ops}"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {latency} | {limit} | {:.0} | {min} | {} |",
            v.name,
            v.workload,
            v.op,
            v.ops_per_s,
            if v.pass { "pass" } else { "**FAIL**" }
        );
    }
    let failed = verdicts.iter().filter(|v| !v.pass).count();
    let _ = writeln!(
        out,
        "\n{} of {} objectives passed",
        verdicts.len() - failed,
        verdicts.len()
    );
    out
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    defaults: Option<RawRun>,
    #[serde(default)]
    objective: Vec<toml::Spanned<RawObjective>>,
}

/// Run parameters settable in `[defaults]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    threads: Option<u32>,
    direct: Option<bool>,
    seed: Option<u64>,
    duration: Option<Duration>,
    ops: Option<u64>,
    warmup: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObjective {
    name: String,
    workload: Kind,
    op: Option<Op>,
    percentile: Option<f64>,
    max_latency_us: Option<f64>,
    min_ops_per_s: Option<f64>,
    block_size: Option<Bytes>,
    file_size: Option<Bytes>,
    read_percent: Option<u8>,
    small_file_size: Option<Bytes>,
    dir_entries: Option<u32>,
    dataset_files: Option<u32>,
    sample_min: Option<Bytes>,
    sample_max: Option<Bytes>,
    threads: Option<u32>,
    iodepth: Option<u32>,
    direct: Option<bool>,
    seed: Option<u64>,
    duration: Option<Duration>,
    ops: Option<u64>,
    warmup: Option<Duration>,
}

impl RawObjective {
    fn check(self, defaults: &RawRun, line: usize) -> std::result::Result<Objective, String> {
        let name = self.name.trim().to_owned();
        if name.is_empty() {
            return Err("objective name is empty".to_owned());
        }
        let fail = |message: String| format!("objective {name:?}: {message}");
        let mut spec = WorkloadSpec::new(self.workload.0);
        set(&mut spec.block_size_bytes, self.block_size.map(|b| b.0));
        set(&mut spec.file_size_bytes, self.file_size.map(|b| b.0));
        set(&mut spec.read_percent, self.read_percent);
        set(
            &mut spec.small_file_bytes,
            self.small_file_size.map(|b| b.0),
        );
        set(&mut spec.dir_entries, self.dir_entries);
        set(&mut spec.dataset_files, self.dataset_files);
        set(&mut spec.sample_bytes_min, self.sample_min.map(|b| b.0));
        set(&mut spec.sample_bytes_max, self.sample_max.map(|b| b.0));
        set(&mut spec.threads, self.threads.or(defaults.threads));
        set(&mut spec.iodepth, self.iodepth);
        set(&mut spec.direct, self.direct.or(defaults.direct));
        set(&mut spec.seed, self.seed.or(defaults.seed));
        spec.validate().map_err(|e| fail(e.to_string()))?;
        // The objective's own ops/duration replaces the defaults' whole.
        let (ops, duration) = if self.ops.is_some() || self.duration.is_some() {
            (self.ops, self.duration)
        } else {
            (defaults.ops, defaults.duration)
        };
        let stop = match (ops, duration) {
            (Some(_), Some(_)) => {
                return Err(fail("set either ops or duration, not both".to_owned()))
            }
            (Some(ops), None) => Stop::Ops(ops),
            (None, duration) => Stop::DurationMs(duration.map_or(DEFAULT_DURATION_MS, |d| d.0)),
        };
        let warmup_ms = self
            .warmup
            .or(defaults.warmup)
            .map_or(DEFAULT_WARMUP_MS, |d| d.0);
        let percentile = self.percentile.unwrap_or(DEFAULT_PERCENTILE);
        if !(percentile > 0.0 && percentile <= 100.0) {
            return Err(fail(format!("percentile {percentile} is not in (0, 100]")));
        }
        if self.max_latency_us.is_none() && self.min_ops_per_s.is_none() {
            return Err(fail("set max_latency_us, min_ops_per_s or both".to_owned()));
        }
        for (what, value) in [
            ("max_latency_us", self.max_latency_us),
            ("min_ops_per_s", self.min_ops_per_s),
        ] {
            if value.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                return Err(fail(format!("{what} must be a non-negative number")));
            }
        }
        Ok(Objective {
            name,
            line,
            op: self.op.map_or(spec.kind.main_op(), |o| o.0),
            spec,
            limits: RunLimits { warmup_ms, stop },
            percentile,
            max_latency_us: self.max_latency_us,
            min_ops_per_s: self.min_ops_per_s,
        })
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

/// A size or duration written as a string ("4KiB") or a bare integer.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Quantity {
    Int(u64),
    Text(String),
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "Quantity")]
struct Bytes(u64);

impl TryFrom<Quantity> for Bytes {
    type Error = Error;

    fn try_from(q: Quantity) -> Result<Self> {
        match q {
            Quantity::Int(n) => Ok(Self(n)),
            Quantity::Text(t) => parse_bytes(&t).map(Self),
        }
    }
}

/// Milliseconds; a bare integer is seconds.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "Quantity")]
struct Duration(u64);

impl TryFrom<Quantity> for Duration {
    type Error = Error;

    fn try_from(q: Quantity) -> Result<Self> {
        match q {
            Quantity::Int(secs) => Ok(Self(secs.saturating_mul(1000))),
            Quantity::Text(t) => parse_duration_ms(&t).map(Self),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
struct Kind(WorkloadKind);

impl TryFrom<String> for Kind {
    type Error = Error;

    fn try_from(text: String) -> Result<Self> {
        text.parse().map(Self)
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
struct Op(OpKind);

impl TryFrom<String> for Op {
    type Error = Error;

    fn try_from(text: String) -> Result<Self> {
        text.parse().map(Self)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{evaluate, parse, render};
    use crate::error::Error;
    use crate::runner::Measurement;
    use crate::spec::{OpKind, Stop, WorkloadKind};

    const GOOD: &str = r#"
[defaults]
threads = 4
duration = "2s"

[[objective]]
name = "4k randread p99"
workload = "randread"
block_size = "4KiB"
max_latency_us = 300
min_ops_per_s = 50000

[[objective]]
name = "listing"
workload = "listdir"
dir_entries = 1000
percentile = 50
ops = 100
max_latency_us = 5000.5
"#;

    /// Parses `text` expecting an error at `line` whose message contains `needle`.
    fn check_error(text: &str, line: usize, needle: &str) {
        match parse(Path::new("slo.toml"), text) {
            Err(Error::SloParse {
                line: got, message, ..
            }) => {
                assert_eq!(got, line, "{message}");
                assert!(message.contains(needle), "{message:?} lacks {needle:?}");
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn parses_objectives_with_defaults() {
        let objectives = parse(Path::new("slo.toml"), GOOD).expect("valid file");
        assert_eq!(objectives.len(), 2);
        let a = &objectives[0];
        assert_eq!(
            (a.spec.kind, a.op, a.spec.threads, a.line),
            (WorkloadKind::RandRead, OpKind::Read, 4, 6)
        );
        assert_eq!(a.spec.block_size_bytes, 4096);
        assert_eq!(a.limits.stop, Stop::DurationMs(2000));
        assert!((a.percentile - 99.0).abs() < f64::EPSILON);
        let b = &objectives[1];
        assert_eq!((b.op, b.limits.stop), (OpKind::List, Stop::Ops(100)));
        assert!(b.min_ops_per_s.is_none());
    }

    #[test]
    fn malformed_toml_names_the_line() {
        check_error("[[objective]]\nname = \"x\"\nworkload = randread\n", 3, "");
        check_error(
            "[[objective]]\nname = \"x\"\nworkload = \"randred\"\nmax_latency_us = 1\n",
            3,
            "randread",
        );
        check_error(
            "[[objective]]\nname = \"x\"\nworkload = \"randread\"\nblock_size = \"4 parsecs\"\n",
            4,
            "unit",
        );
        check_error(
            "[[objective]]\nname = \"x\"\nworkload = \"randread\"\nmax_latancy_us = 1\n",
            4,
            "max_latancy_us",
        );
        check_error(
            "\n\n[[objective]]\nname = \"x\"\nworkload = \"randread\"\n",
            3,
            "max_latency_us",
        );
        check_error("[[objective]]\nname = \"x\"\nworkload = \"randread\"\npercentile = 120.0\nmax_latency_us = 1\n", 1, "percentile");
        check_error("# nothing\n", 1, "no [[objective]]");
    }

    #[test]
    fn evaluation_passes_and_fails() {
        let objectives = parse(Path::new("slo.toml"), GOOD).expect("valid file");
        let mut m = Measurement::empty().expect("histogram bounds");
        for _ in 0..100_000 {
            m.latency.record(OpKind::Read, 200_000);
        }
        m.elapsed_ns = 1_000_000_000;
        let v = evaluate(&objectives[0], &m);
        assert!(v.pass, "{v:?}");
        m.elapsed_ns = 4_000_000_000; // 25k ops/s < 50k
        assert!(!evaluate(&objectives[0], &m).pass);
        m.elapsed_ns = 1_000_000_000;
        m.latency.record(OpKind::Read, 0);
        for _ in 0..2000 {
            m.latency.record(OpKind::Read, 400_000);
        }
        assert!(!evaluate(&objectives[0], &m).pass, "p99 now 400 µs");
        let none = evaluate(&objectives[1], &m);
        assert!(!none.pass && none.latency_us.is_none());
        let table = render(&[v, none]);
        assert!(
            table.contains("**FAIL**") && table.contains("1 of 2 objectives passed"),
            "{table}"
        );
    }
}

#[cfg(test)]
mod example_tests {
    use std::path::Path;

    #[test]
    fn shipped_example_parses() {
        let text = include_str!("../slo-example.toml");
        let objectives =
            super::parse(Path::new("slo-example.toml"), text).expect("example is valid");
        assert_eq!(objectives.len(), 5);
        assert_eq!(objectives[1].spec.iodepth, 16);
    }
}
