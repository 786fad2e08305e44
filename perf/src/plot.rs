//! SVG plots of a run or a comparison: latency CDF per op type (one curve
//! per target), throughput bars, and throughput over time. SVG keeps text
//! as `<text>` elements, so no fonts or system libraries are needed.

use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::SegmentValue;
use plotters::coord::types::RangedSlice;
use plotters::prelude::*;

use crate::compare::MAX_TARGETS;
use crate::error::{Error, Result};
use crate::runner::Measurement;
use crate::spec::OpKind;

const SIZE: (u32, u32) = (900, 560);
const THROUGHPUT_FILE: &str = "throughput.svg";
const TIMELINE_FILE: &str = "throughput-time.svg";
/// Bar slots of the throughput plot: 0, 1, ... (one per target).
const SLOTS: [usize; MAX_TARGETS] = {
    let mut slots = [0; MAX_TARGETS];
    let mut i = 0;
    while i < MAX_TARGETS {
        slots[i] = i;
        i += 1;
    }
    slots
};

/// One target's data for the plots.
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    pub name: &'a str,
    pub measurement: &'a Measurement,
}

/// File name of the latency CDF of `op`.
pub fn cdf_file_name(op: OpKind) -> String {
    format!("latency-cdf-{}.svg", op.name())
}

/// Writes every plot into `dir` (created if missing); returns the files
/// written, latency CDFs first (in `OpKind::ALL` order), then throughput,
/// then throughput over time (left out when no target has a timeline).
pub fn write_all(dir: &Path, series: &[Series<'_>]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let mut written = Vec::new();
    for op in OpKind::ALL {
        let curves: Vec<(&str, Vec<(f64, f64)>)> = series
            .iter()
            .map(|s| (s.name, s.measurement.latency.cdf_points(op)))
            .filter(|(_, points)| !points.is_empty())
            .collect();
        if curves.is_empty() {
            continue;
        }
        let path = dir.join(cdf_file_name(op));
        latency_cdf(&path, op, &curves)?;
        written.push(path);
    }
    let bars: Vec<(&str, f64)> = series
        .iter()
        .map(|s| (s.name, s.measurement.ops_per_s()))
        .collect();
    let path = dir.join(THROUGHPUT_FILE);
    throughput_bars(&path, &bars)?;
    written.push(path);
    let lines: Vec<(&str, &[(f64, f64)])> = series
        .iter()
        .map(|s| (s.name, s.measurement.timeline.as_slice()))
        .filter(|(_, points)| !points.is_empty())
        .collect();
    if !lines.is_empty() {
        let path = dir.join(TIMELINE_FILE);
        throughput_over_time(&path, &lines)?;
        written.push(path);
    }
    Ok(written)
}

fn plot_error(path: &Path, error: impl std::fmt::Display) -> Error {
    Error::Plot(format!("{}: {error}", path.display()))
}

fn color(index: usize) -> RGBColor {
    let (r, g, b) = Palette99::pick(index).to_rgba().rgb();
    RGBColor(r, g, b)
}

/// Latency CDF of `op`: latency (µs, log scale) on x, percentile on y,
/// one curve per `(target name, cdf points)` (see `LatencyBook::cdf_points`).
pub fn latency_cdf(path: &Path, op: OpKind, curves: &[(&str, Vec<(f64, f64)>)]) -> Result<()> {
    let all = curves.iter().flat_map(|(_, points)| points.iter());
    let (lo, hi) = all.fold((f64::INFINITY, 0.0f64), |(lo, hi), &(us, _)| {
        (lo.min(us), hi.max(us))
    });
    let lo = if lo.is_finite() && lo > 0.0 { lo } else { 1.0 };
    let (lo, hi) = (lo / 1.5, hi.max(lo) * 1.5);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{op} latency CDF"), ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..100.0)
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("latency (µs, log scale)")
        .y_desc("percentile")
        .x_label_formatter(&|us| format_number(*us))
        .draw()
        .map_err(|e| plot_error(path, e))?;
    for (index, (name, points)) in curves.iter().enumerate() {
        let style = color(index).stroke_width(2);
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|&(us, fraction)| (us, fraction * 100.0)),
                style,
            ))
            .map_err(|e| plot_error(path, e))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_error(path, e))?;
    root.present().map_err(|e| plot_error(path, e))
}

/// One bar of ops/s per `(target name, ops/s)`.
pub fn throughput_bars(path: &Path, bars: &[(&str, f64)]) -> Result<()> {
    let top = bars.iter().map(|&(_, v)| v).fold(0.0f64, f64::max);
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    // One slot per bar: a slice coordinate has exactly `len` slots (an
    // integer range would include its end and leave an empty slot). The
    // chart wants the slice for 'static, hence the constant.
    let slots = SLOTS
        .get(..bars.len())
        .ok_or_else(|| plot_error(path, format!("more than {MAX_TARGETS} bars")))?;
    let edge = |i: usize| slots.get(i).map_or(SegmentValue::Last, SegmentValue::Exact);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("throughput", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(RangedSlice::from(slots).into_segmented(), 0.0..top)
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len().max(1))
        .x_label_formatter(&|segment| match segment {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => bars
                .get(**i)
                .map_or_else(String::new, |(name, _)| (*name).to_owned()),
            SegmentValue::Last => String::new(),
        })
        .y_desc("ops/s")
        .y_label_formatter(&|v| format_number(*v))
        .draw()
        .map_err(|e| plot_error(path, e))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, &(_, value))| {
            let mut bar = Rectangle::new([(edge(i), 0.0), (edge(i + 1), value)], color(i).filled());
            bar.set_margin(0, 0, 12, 12);
            bar
        }))
        .map_err(|e| plot_error(path, e))?;
    chart
        .draw_series(slots.iter().zip(bars).map(|(slot, &(_, value))| {
            Text::new(
                format_number(value),
                (SegmentValue::CenterOf(slot), value),
                ("sans-serif", 14).into_font().color(&BLACK),
            )
        }))
        .map_err(|e| plot_error(path, e))?;
    root.present().map_err(|e| plot_error(path, e))
}

/// Ops/s over measured time, one line per `(target name, timeline)` (see
/// `Measurement::timeline`).
pub fn throughput_over_time(path: &Path, lines: &[(&str, &[(f64, f64)])]) -> Result<()> {
    let (right, top) = lines
        .iter()
        .flat_map(|(_, points)| points.iter())
        .fold((0.0f64, 0.0f64), |(t_max, r_max), &(t, r)| {
            (t_max.max(t), r_max.max(r))
        });
    let right = if right > 0.0 { right } else { 1.0 };
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("throughput over time", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..right, 0.0..top)
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("measured time (s)")
        .y_desc("ops/s")
        .y_label_formatter(&|v| format_number(*v))
        .draw()
        .map_err(|e| plot_error(path, e))?;
    for (index, (name, points)) in lines.iter().enumerate() {
        let style = color(index).stroke_width(2);
        chart
            .draw_series(LineSeries::new(points.iter().copied(), style))
            .map_err(|e| plot_error(path, e))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_error(path, e))?;
    root.present().map_err(|e| plot_error(path, e))
}

/// 12, 1.5k, 2.3M: short axis labels.
fn format_number(value: f64) -> String {
    let abs = value.abs();
    if abs >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if abs >= 1e4 {
        format!("{:.0}k", value / 1e3)
    } else if abs >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else if abs >= 10.0 || abs == 0.0 {
        format!("{value:.0}")
    } else if abs >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::{write_all, Series};
    use crate::runner::Measurement;
    use crate::spec::OpKind;

    fn measurement(base_ns: u64, ops: u64) -> Measurement {
        let mut m = Measurement::empty().expect("histogram bounds");
        for i in 0..ops {
            m.latency.record(OpKind::Read, base_ns + (i % 100) * 1_000);
            if i % 4 == 0 {
                m.latency.record(OpKind::Write, 2 * base_ns + i * 10);
            }
        }
        m.elapsed_ns = 3_000_000_000;
        m.timeline = vec![
            (1.0, ops as f64 / 3.2),
            (2.0, ops as f64 / 3.0),
            (3.0, ops as f64 / 2.8),
        ];
        m
    }

    fn svg(path: &std::path::Path) -> String {
        let text = std::fs::read_to_string(path).expect("plot written");
        assert!(
            text.starts_with("<svg") || text.starts_with("<?xml"),
            "{}: {}",
            path.display(),
            &text[..text.len().min(80)]
        );
        assert!(text.trim_end().ends_with("</svg>"), "{}", path.display());
        text
    }

    #[test]
    fn renders_every_plot_with_target_names() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (a, b) = (measurement(20_000, 3_000), measurement(90_000, 1_200));
        let series = [
            Series {
                name: "local-disk",
                measurement: &a,
            },
            Series {
                name: "datenlord-fuse",
                measurement: &b,
            },
        ];
        let out = dir.path().join("plots");
        let written = write_all(&out, &series).expect("plots");
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().expect("file").to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "latency-cdf-read.svg",
                "latency-cdf-write.svg",
                "throughput.svg",
                "throughput-time.svg"
            ]
        );
        for path in &written {
            let text = svg(path);
            assert!(
                text.contains("local-disk") && text.contains("datenlord-fuse"),
                "{}",
                path.display()
            );
        }
    }

    #[test]
    fn single_target_without_timeline() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut m = measurement(5_000, 10);
        m.timeline.clear();
        let written = write_all(
            dir.path(),
            &[Series {
                name: "only",
                measurement: &m,
            }],
        )
        .expect("plots");
        assert_eq!(written.len(), 3, "{written:?}");
        assert!(!dir.path().join("throughput-time.svg").exists());
        assert!(svg(&dir.path().join("throughput.svg")).contains("only"));
    }
}
