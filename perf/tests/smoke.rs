//! Smoke runs of every workload on a temporary directory: a few hundred ops
//! each, checking that the report is sane. Not a benchmark.

use std::path::Path;
use std::process::Command;

use datenlord_perf::buffer::AlignedBuffer;
use datenlord_perf::compare::{self, Target};
use datenlord_perf::report::Report;
use datenlord_perf::ring;
use datenlord_perf::runner::{self, Silent};
use datenlord_perf::spec::{OpKind, RunLimits, Stop, WorkloadKind, WorkloadSpec};

fn small_spec(kind: WorkloadKind) -> WorkloadSpec {
    let mut spec = WorkloadSpec::new(kind);
    spec.threads = 2;
    spec.file_size_bytes = 4 << 20;
    spec.dir_entries = 200;
    spec.dataset_files = 20;
    spec.sample_bytes_max = 256 << 10;
    spec
}

fn check(report: &Report, kind: WorkloadKind, expected_ops: u64) {
    let t = &report.targets[0];
    assert_eq!(t.ops, expected_ops, "{kind}");
    assert!(t.elapsed_s > 0.0 && t.ops_per_s > 0.0, "{kind}: {t:?}");
    let main = &t.latency[kind.main_op().name()];
    assert!(main.count > 0, "{kind}");
    assert!(
        0.0 < main.p50_us
            && main.p50_us <= main.p90_us
            && main.p90_us <= main.p99_us
            && main.p99_us <= main.max_us,
        "{kind}: {main:?}"
    );
    let moves_data = !matches!(kind, WorkloadKind::ListDir);
    assert_eq!(t.bytes_per_s > 0.0, moves_data, "{kind}");
    let json = report.to_json().expect("serializable");
    let back: Report = serde_json::from_str(&json).expect("round trip");
    // Floats may differ in the last digit after a JSON round trip.
    assert_eq!(
        (back.targets[0].ops, &back.workload),
        (t.ops, &report.workload)
    );
    assert!(report
        .to_markdown()
        .contains(&format!("| {} | {} |", t.name, kind.main_op())));
}

#[test]
fn every_workload_runs_on_a_temp_dir() {
    let dir = tempfile::tempdir().expect("temp dir");
    for kind in WorkloadKind::ALL {
        let spec = small_spec(kind);
        let ops = 300;
        let limits = RunLimits {
            warmup_ms: 20,
            stop: Stop::Ops(ops),
        };
        let prepared = runner::prepare(dir.path(), &spec, &Silent).expect("prepare");
        let m = runner::measure(&prepared, &spec, limits, Some(std::process::id()), &Silent)
            .expect("measure");
        runner::cleanup(&prepared).expect("cleanup");
        assert!(m.cpu_usage().is_some());
        let target = Target {
            name: "tmp".to_owned(),
            dir: dir.path().to_owned(),
            pid: None,
            iodepth: None,
        };
        let report = Report::new(&spec, limits, 1, &[target], &[m], None).expect("report");
        check(&report, kind, ops);
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("list").count(),
        0,
        "cleanup left files"
    );
}

#[test]
fn duration_runs_stop_on_time_and_small_files_balance() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = small_spec(WorkloadKind::SmallFiles);
    let limits = RunLimits {
        warmup_ms: 0,
        stop: Stop::DurationMs(200),
    };
    let prepared = runner::prepare(dir.path(), &spec, &Silent).expect("prepare");
    let m = runner::measure(&prepared, &spec, limits, None, &Silent).expect("measure");
    assert!((0.15..2.0).contains(&m.elapsed_s()), "{}", m.elapsed_s());
    assert!(
        !m.timeline.is_empty() && m.timeline.iter().all(|&(t, rate)| t > 0.0 && rate >= 0.0),
        "{:?}",
        m.timeline
    );
    let creates = m.latency.count(OpKind::Create);
    assert!(creates > 0 && m.latency.count(OpKind::Unlink) + 2 >= creates);
}

#[test]
fn compare_interleaves_two_targets() {
    let a = tempfile::tempdir().expect("temp dir");
    let b = tempfile::tempdir().expect("temp dir");
    let targets = vec![
        Target {
            name: "a".to_owned(),
            dir: a.path().to_owned(),
            pid: None,
            iodepth: None,
        },
        Target {
            name: "b".to_owned(),
            dir: b.path().to_owned(),
            pid: None,
            iodepth: None,
        },
    ];
    let spec = small_spec(WorkloadKind::RandRead);
    let limits = RunLimits {
        warmup_ms: 0,
        stop: Stop::Ops(400),
    };
    let results = compare::compare(&targets, &spec, limits, 4, false, &Silent).expect("compare");
    assert!(results.iter().all(|m| m.latency.count(OpKind::Read) == 400));
    let report = Report::new(&spec, limits, 4, &targets, &results, Some("a")).expect("report");
    let base = report.targets[0].vs_baseline.expect("ratios");
    assert!(base.ops_per_s.is_some_and(|r| (r - 1.0).abs() < 1e-9));
    assert!(report.targets[1]
        .vs_baseline
        .is_some_and(|r| r.ops_per_s.is_some_and(|x| x > 0.0)));
    let spread = report.targets[1].rounds.as_ref().expect("4 rounds");
    assert_eq!(spread.ops_per_s.len(), 4);
    assert!(spread.ops_per_s_min <= spread.ops_per_s_max);
    assert!(report.to_markdown().contains("Spread across rounds"));
}

/// Prepares `spec` in `dir`, with O_DIRECT if the file system takes it.
fn prepare_direct_if_possible(dir: &Path, spec: &mut WorkloadSpec) -> runner::Prepared {
    spec.direct = true;
    match runner::prepare(dir, spec, &Silent) {
        Err(datenlord_perf::Error::DirectUnsupported { .. }) => {
            spec.direct = false;
            runner::prepare(dir, spec, &Silent).expect("prepare buffered")
        }
        other => other.expect("prepare"),
    }
}

#[test]
fn iodepth_8_counts_every_op_and_byte() {
    let dir = tempfile::tempdir().expect("temp dir");
    for kind in [
        WorkloadKind::RandRead,
        WorkloadKind::RandWrite,
        WorkloadKind::Mixed,
    ] {
        let mut spec = small_spec(kind);
        spec.iodepth = 8;
        let ops = 1000;
        let limits = RunLimits {
            warmup_ms: 10,
            stop: Stop::Ops(ops),
        };
        let prepared = prepare_direct_if_possible(dir.path(), &mut spec);
        let m = runner::measure(&prepared, &spec, limits, None, &Silent).expect("measure");
        let reads = m.latency.count(OpKind::Read);
        let writes = m.latency.count(OpKind::Write);
        assert_eq!(reads + writes, ops, "{kind}: every requested op, once");
        assert_eq!(m.latency.total_count(), ops, "{kind}");
        assert_eq!(m.bytes_read, reads * spec.block_size_bytes, "{kind}");
        assert_eq!(m.bytes_written, writes * spec.block_size_bytes, "{kind}");
        match kind {
            WorkloadKind::RandRead => assert_eq!(writes, 0),
            WorkloadKind::RandWrite => {
                assert_eq!(reads, 0);
                check_written_blocks(&prepared, &spec);
            }
            _ => assert!(
                reads > 0 && writes > 0,
                "{kind}: {reads} reads, {writes} writes"
            ),
        }
        let target = Target {
            name: "tmp".to_owned(),
            dir: dir.path().to_owned(),
            pid: None,
            iodepth: None,
        };
        let report = Report::new(&spec, limits, 1, &[target], &[m], None).expect("report");
        check(&report, kind, ops);
        assert!(
            report.io_model.contains("io_uring (queue depth 8"),
            "{}",
            report.io_model
        );
        assert!(report.to_markdown().contains("iodepth 8"));
        runner::cleanup(&prepared).expect("cleanup");
    }
}

#[test]
fn iodepth_8_reports_a_file_that_ends_early_as_a_read_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut spec = small_spec(WorkloadKind::RandRead);
    spec.iodepth = 8;
    let prepared = runner::prepare(dir.path(), &spec, &Silent).expect("prepare");
    let data = prepared.work_dir.join(&prepared.layout.files[1].rel_path);
    std::fs::File::options()
        .write(true)
        .open(&data)
        .and_then(|f| f.set_len(spec.file_size_bytes / 2))
        .expect("truncate");
    let limits = RunLimits {
        warmup_ms: 0,
        stop: Stop::Ops(1000),
    };
    let error = runner::measure(&prepared, &spec, limits, None, &Silent).expect_err("short file");
    let text = error.to_string();
    assert!(
        text.starts_with("read ") && text.contains("data.1") && text.contains("end of file"),
        "{text}"
    );
    runner::cleanup(&prepared).expect("cleanup");
}

/// Every block of every data file holds either what `prepare` wrote or
/// the whole buffer of one of its thread's slots (no torn or misplaced
/// queued write), and some blocks were written.
fn check_written_blocks(prepared: &runner::Prepared, spec: &WorkloadSpec) {
    let block = spec.block_size_bytes as usize;
    let fill = AlignedBuffer::new(runner::PREPARE_CHUNK_BYTES, spec.seed);
    let mut written_blocks = 0;
    for thread in 0..spec.threads {
        let seed = runner::worker_seed(spec, thread);
        let slots: Vec<AlignedBuffer> = (0..u64::from(spec.iodepth))
            .map(|slot| AlignedBuffer::new(spec.block_size_bytes, ring::slot_seed(seed, slot)))
            .collect();
        let path = prepared
            .work_dir
            .join(&prepared.layout.files[thread as usize].rel_path);
        let data = std::fs::read(&path).expect("read data file");
        assert_eq!(data.len() as u64, spec.file_size_bytes);
        for (index, chunk) in data.chunks(block).enumerate() {
            let at = index * block % fill.len();
            if chunk == &fill.as_slice()[at..at + block] {
                continue;
            }
            assert!(
                slots.iter().any(|s| chunk == &s.as_slice()[..block]),
                "thread {thread} block {index}: neither prepared nor a slot's buffer"
            );
            written_blocks += 1;
        }
    }
    assert!(written_blocks > 0);
}

#[test]
fn compare_two_queue_depths_on_one_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = |name: &str, iodepth: Option<u32>| Target {
        name: name.to_owned(),
        dir: dir.path().to_owned(),
        pid: None,
        iodepth,
    };
    let targets = vec![target("qd1", None), target("qd8", Some(8))];
    let spec = small_spec(WorkloadKind::RandRead);
    let limits = RunLimits {
        warmup_ms: 0,
        stop: Stop::Ops(600),
    };
    let results = compare::compare(&targets, &spec, limits, 3, false, &Silent).expect("compare");
    assert!(results.iter().all(|m| m.latency.count(OpKind::Read) == 600
        && m.bytes_read == 600 * spec.block_size_bytes
        && m.round_ops_per_s.len() == 3));
    let report = Report::new(&spec, limits, 3, &targets, &results, Some("qd1")).expect("report");
    assert_eq!(
        report.targets.iter().map(|t| t.iodepth).collect::<Vec<_>>(),
        [1, 8]
    );
    assert!(
        report
            .io_model
            .contains("qd8: threads x io_uring (queue depth 8"),
        "{}",
        report.io_model
    );
    // Shared files are prepared once and removed once.
    assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);

    let mut bad = targets.clone();
    bad[1].iodepth = Some(0);
    let error = compare::compare(&bad, &spec, limits, 1, false, &Silent).expect_err("depth 0");
    assert!(error.to_string().contains("qd8"), "{error}");
}

fn run_slo(dir: &Path, toml: &str) -> (Option<i32>, String, String) {
    let file = dir.join("slo.toml");
    std::fs::write(&file, toml).expect("write slo");
    let out = Command::new(env!("CARGO_BIN_EXE_datenlord-perf"))
        .args(["slo", "--objectives"])
        .arg(&file)
        .arg("--dir")
        .arg(dir)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn slo_command_exit_status() {
    let dir = tempfile::tempdir().expect("temp dir");
    let objectives = r#"
[defaults]
ops = 200
warmup = "0s"

[[objective]]
name = "generous"
workload = "randread"
file_size = "1MiB"
max_latency_us = 10000000

[[objective]]
name = "impossible"
workload = "randread"
file_size = "1MiB"
min_ops_per_s = 1e15
"#;
    let (code, stdout, _) = run_slo(dir.path(), objectives);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("| generous |") && stdout.contains("pass"),
        "{stdout}"
    );
    assert!(
        stdout.contains("**FAIL**") && stdout.contains("1 of 2 objectives passed"),
        "{stdout}"
    );

    let (code, _, stderr) = run_slo(dir.path(), "[[objective]]\nname = \"x\"\nworkload = 3\n");
    assert_eq!(code, Some(1));
    assert!(stderr.contains("slo.toml:3:"), "{stderr}");
}

#[test]
fn run_with_plots_writes_linked_svgs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&data).expect("data dir");
    let status = Command::new(env!("CARGO_BIN_EXE_datenlord-perf"))
        .args([
            "run",
            "--workload",
            "randread",
            "--threads",
            "2",
            "--ops",
            "400",
        ])
        .args(["--warmup", "0s", "--file-size", "1MiB", "--dir"])
        .arg(&data)
        .arg("--plots")
        .arg(&out)
        .arg("--markdown")
        .arg(out.join("report.md"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run binary");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    for name in [
        "latency-cdf-read.svg",
        "throughput.svg",
        "throughput-time.svg",
    ] {
        let text = std::fs::read_to_string(out.join(name)).expect(name);
        assert!(
            text.starts_with("<svg") || text.starts_with("<?xml"),
            "{name}"
        );
        // `run` names the target after the directory.
        assert!(text.contains("data"), "{name}");
    }
    let markdown = std::fs::read_to_string(out.join("report.md")).expect("markdown");
    assert!(
        markdown.contains("](<latency-cdf-read.svg>)") && markdown.contains("](<throughput.svg>)"),
        "{markdown}"
    );
}
