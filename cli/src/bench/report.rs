//! Presenting a [`BenchReport`]: the terminal table, the JSON rows, and the report folder
//! (Markdown and SVG charts drawn with plotters' SVG backend, which needs no system fonts).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{BenchReport, Implementation, Row};
use crate::{Error, Result};

/// `2^k` for powers of two, the plain number otherwise.
pub fn format_size(size: usize) -> String {
    if size.is_power_of_two() && size >= 1024 {
        format!("2^{}", size.trailing_zeros())
    } else {
        size.to_string()
    }
}

/// A number with an SI prefix and at most three significant digits (`250k`, `1.5G`), for
/// chart axes.
pub fn format_si(v: f64) -> String {
    let (scaled, unit) = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
        .into_iter()
        .find(|(scale, _)| v.abs() >= *scale)
        .map_or((v, ""), |(scale, unit)| (v / scale, unit));
    let digits = if scaled.abs() >= 100.0 {
        0
    } else if scaled.abs() >= 10.0 {
        1
    } else {
        2
    };
    let text = format!("{scaled:.digits$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    format!("{text}{unit}")
}

/// Seconds with a unit that keeps three significant digits readable.
pub fn format_seconds(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

/// The optimizer rows (not the roofline rows), in measurement order.
fn step_rows(report: &BenchReport) -> impl Iterator<Item = &Row> {
    report.rows.iter().filter(|r| r.optimizer != "copy")
}

/// `optimizer` or `optimizer/variant`.
fn case_name(row: &Row) -> String {
    if row.variant == "default" {
        row.optimizer.clone()
    } else {
        format!("{}/{}", row.optimizer, row.variant)
    }
}

/// The case, then its precision where it is not f32 and `guarded` where it is, for charts.
fn label(row: &Row) -> String {
    let case = case_name(row);
    let case = if row.precision == "f32" {
        case
    } else {
        format!("{case} {}", row.precision)
    };
    if row.guarded {
        format!("{case} guarded")
    } else {
        case
    }
}

/// The median time of the same case and size with another implementation.
fn median_of(report: &BenchReport, like: &Row, implementation: Implementation) -> Option<f64> {
    step_rows(report)
        .find(|r| {
            r.implementation == implementation
                && r.optimizer == like.optimizer
                && r.variant == like.variant
                && r.precision == like.precision
                && r.guarded == like.guarded
                && r.size == like.size
        })
        .map(|r| r.median_s)
}

/// One row's cells, as both tables show them: case, size, implementation, median, min, max,
/// G elements/s, GB/s, roofline percentage, GPU speed-up over the fast CPU path, clock.
fn cells(report: &BenchReport, row: &Row) -> [String; 11] {
    let speedup = match row.implementation {
        Implementation::Gpu => median_of(report, row, Implementation::CpuFast)
            .map_or(String::new(), |fast| format!("{:.1}×", fast / row.median_s)),
        _ => String::new(),
    };
    let clock = match row.clock {
        super::Clock::Timestamp => "timestamp",
        super::Clock::Wall => "wall",
    };
    [
        label(row),
        format_size(row.size),
        row.implementation.name().to_string(),
        format_seconds(row.median_s),
        format_seconds(row.min_s),
        format_seconds(row.max_s),
        format!("{:.3}", row.elements_per_s / 1e9),
        format!("{:.1}", row.bytes_per_s / 1e9),
        format!("{:.0}%", row.roofline_fraction * 100.0),
        speedup,
        clock.to_string(),
    ]
}

/// The table printed on the terminal.
pub fn table(report: &BenchReport) -> String {
    let mut out = String::new();
    let r = &report.roofline;
    let _ = writeln!(
        out,
        "roofline (copy of {} f32): CPU {:.1} GB/s ({}){}",
        format_size(r.size),
        r.cpu_bytes_per_s / 1e9,
        report.cpu,
        match (r.gpu_bytes_per_s, &report.gpu) {
            (Some(bw), Some(name)) => format!(
                "; GPU {:.1} GB/s ({name}{})",
                bw / 1e9,
                report.launch.map(launch_text).unwrap_or_default()
            ),
            _ => String::new(),
        }
    );
    let _ = writeln!(
        out,
        "{:<22} {:<11} {:<7} {:>6} {:<13} {:>10} {:>10} {:>10} {:>9} {:>8} {:>6} {:>8} {:<9}",
        "optimizer",
        "precision",
        "guard",
        "size",
        "impl",
        "median",
        "min",
        "max",
        "Gelem/s",
        "GB/s",
        "roof",
        "gpu×fast",
        "clock"
    );
    for row in step_rows(report) {
        let [
            _,
            size,
            implementation,
            median,
            min,
            max,
            gelem,
            gbs,
            roof,
            speedup,
            clock,
        ] = cells(report, row);
        let _ = writeln!(
            out,
            "{:<22} {:<11} {:<7} {size:>6} {implementation:<13} {median:>10} {min:>10} \
             {max:>10} {gelem:>9} {gbs:>8} {roof:>6} {speedup:>8} {clock:<9}",
            case_name(row),
            row.precision,
            if row.guarded { "yes" } else { "-" },
        );
    }
    for line in layout_comparisons(report)
        .into_iter()
        .chain(host_record_lines(report))
    {
        let _ = writeln!(out, "{line}");
    }
    for s in &report.skipped {
        let _ = writeln!(out, "skipped: {s}");
    }
    out
}

/// One line per size at which both the transformer layout and the flat tensor of its size were
/// stepped: how much longer the layout's step takes (the target is within 10 %).
pub fn layout_comparisons(report: &BenchReport) -> Vec<String> {
    let find = |variant: &str, size: usize| {
        step_rows(report).find(|r| {
            r.variant == variant && r.size == size && r.optimizer == "adamw" && r.precision == "f32"
        })
    };
    step_rows(report)
        .filter(|r| r.variant == super::MODEL_VARIANT)
        .filter_map(|model| {
            let flat = find(super::FLAT_VARIANT, model.size)?;
            let change = 100.0 * (model.median_s / flat.median_s - 1.0);
            Some(format!(
                "transformer layout (148 tensors, 2 parameter groups) against one flat tensor at \
                 {} elements: {} against {} per AdamW step ({change:+.1} %)",
                model.size,
                format_seconds(model.median_s),
                format_seconds(flat.median_s)
            ))
        })
        .collect()
}

/// The launch shape as the table's roofline line shows it.
fn launch_text(launch: super::Launch) -> String {
    let stride = launch
        .max_workgroups
        .map_or(String::new(), |m| format!(", at most {m} workgroups"));
    format!(
        "; {} threads per workgroup, {} elements per invocation{stride}",
        launch.workgroup_size, launch.elements_per_invocation
    )
}

/// One line per transformer-shaped layout: the host's time to record one whole-model step
/// (the target is at most 20 µs).
pub fn host_record_lines(report: &BenchReport) -> Vec<String> {
    report
        .layouts
        .iter()
        .map(|l| {
            format!(
                "host time to record one AdamW step of the transformer layout ({} tensors, \
                 {} dispatches) at {} elements: median {} (min {}, max {}, {} steps)",
                l.tensors.len(),
                l.dispatches,
                l.size,
                format_seconds(l.host_record.median_s),
                format_seconds(l.host_record.min_s),
                format_seconds(l.host_record.max_s),
                l.host_record.samples
            )
        })
        .collect()
}

/// The rows as one JSON array (the `--json` output).
pub fn json(report: &BenchReport) -> Result<String> {
    serde_json::to_string_pretty(&report.rows).map_err(Error::from)
}

/// Writes `report.md`, `results.json` and the SVG charts into `dir` (created if missing);
/// returns the files written.
pub fn write(report: &BenchReport, dir: &Path, command: &str) -> Result<Vec<PathBuf>> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| Error::from(fusedopt::Error::Io { path, source })
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut written = Vec::new();
    let mut charts = Vec::new();
    for optimizer in optimizers(report) {
        let file = format!("throughput-{optimizer}.svg");
        throughput_chart(report, &optimizer, &dir.join(&file))?;
        charts.push((format!("Throughput of {optimizer} against size"), file));
    }
    if report.gpu.is_some() {
        let file = "gpu-vs-cpu.svg".to_string();
        speedup_chart(report, &dir.join(&file))?;
        charts.push(("GPU against CPU: speed-up in step time".into(), file));
    }
    let file = "roofline.svg".to_string();
    roofline_chart(report, &dir.join(&file))?;
    charts.push(("Fraction of the copy roofline".into(), file));

    let json_path = dir.join("results.json");
    let full = serde_json::to_string_pretty(report).map_err(Error::from)?;
    std::fs::write(&json_path, full).map_err(io(&json_path))?;
    written.push(json_path);
    let md_path = dir.join("report.md");
    std::fs::write(&md_path, markdown(report, &charts, command)).map_err(io(&md_path))?;
    written.push(md_path);
    written.extend(charts.into_iter().map(|(_, f)| dir.join(f)));
    Ok(written)
}

/// Optimizer names in the order they were measured.
fn optimizers(report: &BenchReport) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for row in step_rows(report) {
        if !names.contains(&row.optimizer) {
            names.push(row.optimizer.clone());
        }
    }
    names
}

/// The Markdown report: what was measured, how to read it, the charts and the table.
pub fn markdown(report: &BenchReport, charts: &[(String, String)], command: &str) -> String {
    let mut md = String::new();
    let r = &report.roofline;
    let _ = writeln!(md, "# fusedopt bench\n");
    let _ = writeln!(md, "- command: `{command}`");
    let _ = writeln!(md, "- CPU: {}", report.cpu);
    let _ = writeln!(
        md,
        "- GPU: {}{}",
        report.gpu.as_deref().unwrap_or("none (CPU rows only)"),
        report.launch.map(launch_text).unwrap_or_default()
    );
    let _ = writeln!(
        md,
        "- roofline: copy of {} f32: CPU {:.1} GB/s (memcpy, 12 B per element: read, read for \
         ownership, write), GPU {}",
        format_size(r.size),
        r.cpu_bytes_per_s / 1e9,
        r.gpu_bytes_per_s
            .map_or("not measured".to_string(), |bw| format!(
                "{:.1} GB/s (copy kernel, 8 B per element)",
                bw / 1e9
            ))
    );
    let clocks: Vec<&str> = step_rows(report)
        .filter(|r| r.implementation == Implementation::Gpu)
        .map(|r| match r.clock {
            super::Clock::Timestamp => "GPU timestamp queries around each step's compute pass",
            super::Clock::Wall => "the wall clock around submit-and-wait (includes submission)",
        })
        .take(1)
        .collect();
    if let Some(clock) = clocks.first() {
        let _ = writeln!(md, "- GPU times from {clock}");
    }
    let _ = writeln!(
        md,
        "\n## How to read it\n\n\
         Each row is the median of several timed steps after warm-up (min and max beside it). \
         `bytes/s` counts what one step must read and write per parameter (SGD 12 B, \
         Adagrad / RMSprop / SGD-momentum 20 B, Adam / AdamW / Adadelta / RMSprop centered or \
         momentum 28 B, AMSGrad and RMSprop centered+momentum 36 B); `roof` is that over the \
         copy bandwidth of the same device measured in the same run, so 100 % means the step \
         moves its bytes as fast as the copy (a CPU step that reads more than it writes can pass \
         100 %: memory serves reads faster than writes). `gpu×fast` is the fast CPU path's median time over \
         the GPU's. Small sizes rotate over several parameter sets (`rotation_sets` in \
         results.json) that together exceed the caches.\n"
    );
    let _ = writeln!(md, "## Charts\n");
    for (title, file) in charts {
        let _ = writeln!(md, "### {title}\n\n![{title}]({file})\n");
    }
    let _ = writeln!(md, "## Results\n");
    let _ = writeln!(
        md,
        "| optimizer | size | implementation | median | min | max | G elem/s | GB/s | roof | gpu×fast |"
    );
    let _ = writeln!(md, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in step_rows(report) {
        let cells = cells(report, row);
        let _ = writeln!(md, "| {} |", cells[..10].join(" | "));
    }
    let comparisons: Vec<String> = layout_comparisons(report)
        .into_iter()
        .chain(host_record_lines(report))
        .collect();
    if !comparisons.is_empty() {
        let _ = writeln!(md, "\n## Whole model against one flat tensor\n");
        for line in comparisons {
            let _ = writeln!(md, "- {line}");
        }
    }
    if !report.skipped.is_empty() {
        let _ = writeln!(md, "\n## Skipped\n");
        for s in &report.skipped {
            let _ = writeln!(md, "- {s}");
        }
    }
    md
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn chart_error(path: &Path) -> impl Fn(String) -> Error + '_ {
    move |message| Error::Chart {
        path: path.display().to_string(),
        message,
    }
}

/// Colour per case label, stable across charts.
fn colour(index: usize) -> RGBColor {
    crate::chart::PALETTE[index % crate::chart::PALETTE.len()]
}

/// Line width per implementation: the GPU boldest, the reference thinnest.
fn width(implementation: Implementation) -> u32 {
    match implementation {
        Implementation::Gpu => 3,
        Implementation::CpuFast => 2,
        Implementation::CpuReference => 1,
    }
}

/// One series: a label and its (size, value) points.
struct Series {
    label: String,
    colour: RGBColor,
    width: u32,
    points: Vec<(f64, f64)>,
}

/// A log-log (or log-linear) line chart of `series` into `area`.
fn line_chart(
    area: &Area<'_>,
    title: &str,
    y_desc: &str,
    series: &[Series],
    log_y: bool,
) -> std::result::Result<(), String> {
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return Ok(());
    }
    let (x0, x1) = (x0 / 1.5, x1 * 1.5);
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    let size_label = |x: &f64| format_si(*x);
    let value_label = |y: &f64| format_si(*y);
    let e = |e: plotters::drawing::DrawingAreaErrorKind<_>| e.to_string();
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc("parameters")
                .y_desc(y_desc)
                .x_label_formatter(&size_label)
                .y_label_formatter(&value_label)
                .draw()
                .map_err(e)?;
            for s in series {
                let style = ShapeStyle::from(&s.colour).stroke_width(s.width);
                chart
                    .draw_series(LineSeries::new(s.points.clone(), style))
                    .map_err(e)?
                    .label(s.label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
                chart
                    .draw_series(
                        s.points
                            .iter()
                            .map(|&p| Circle::new(p, s.width + 1, style.filled())),
                    )
                    .map_err(e)?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 12))
                // Percentages start at 0 and sit high: their empty corner is the lower one.
                .position(if log_y {
                    SeriesLabelPosition::UpperLeft
                } else {
                    SeriesLabelPosition::LowerRight
                })
                .draw()
                .map_err(e)?;
        }};
    }
    if log_y {
        let (y0, y1) = (y0 / 1.5, y1 * 1.5);
        draw!(
            builder
                .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
                .map_err(e)?
        );
    } else {
        draw!(
            builder
                .build_cartesian_2d((x0..x1).log_scale(), 0.0..(y1 * 1.1).max(1.0))
                .map_err(e)?
        );
    }
    Ok(())
}

/// Series of `value(row)` for the rows `keep` selects, one per case and implementation.
fn series_by_case(
    report: &BenchReport,
    keep: impl Fn(&Row) -> bool,
    value: impl Fn(&Row) -> Option<f64>,
) -> Vec<Series> {
    let mut cases: Vec<String> = Vec::new();
    let mut map: BTreeMap<(usize, usize), Series> = BTreeMap::new();
    for row in step_rows(report).filter(|r| keep(r)) {
        let Some(v) = value(row) else { continue };
        let case = label(row);
        let index = cases.iter().position(|c| *c == case).unwrap_or_else(|| {
            cases.push(case.clone());
            cases.len() - 1
        });
        let implementation = Implementation::ALL
            .iter()
            .position(|i| *i == row.implementation)
            .unwrap_or(0);
        map.entry((index, implementation))
            .or_insert_with(|| Series {
                label: format!("{case} {}", row.implementation.name()),
                colour: colour(index),
                width: width(row.implementation),
                points: Vec::new(),
            })
            .points
            .push((row.size as f64, v));
    }
    map.into_values().collect()
}

fn throughput_chart(report: &BenchReport, optimizer: &str, path: &Path) -> Result<()> {
    let series = series_by_case(
        report,
        |r| r.optimizer == optimizer,
        |r| Some(r.elements_per_s),
    );
    let title = format!(
        "{optimizer}: elements per second (thick: GPU, medium: CPU fast, thin: CPU reference)"
    );
    log_log_chart(path, &title, "elements / s", &series)
}

fn speedup_chart(report: &BenchReport, path: &Path) -> Result<()> {
    let series = series_by_case(
        report,
        |r| r.implementation == Implementation::Gpu,
        |r| median_of(report, r, Implementation::CpuFast).map(|fast| fast / r.median_s),
    );
    let title = "GPU speed-up over the fast CPU path (step time ratio)";
    log_log_chart(path, title, "CPU fast time / GPU time", &series)
}

/// One log-log chart of `series` in its own SVG file.
fn log_log_chart(path: &Path, title: &str, y_desc: &str, series: &[Series]) -> Result<()> {
    let area = SVGBackend::new(path, (960, 600)).into_drawing_area();
    area.fill(&WHITE)
        .map_err(|e| e.to_string())
        .and_then(|_| line_chart(&area, title, y_desc, series, true))
        .and_then(|_| area.present().map_err(|e| e.to_string()))
        .map_err(chart_error(path))
}

fn roofline_chart(report: &BenchReport, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (1400, 520)).into_drawing_area();
    let draw = || -> std::result::Result<(), String> {
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let implementations: Vec<Implementation> = Implementation::ALL
            .into_iter()
            .filter(|i| step_rows(report).any(|r| r.implementation == *i))
            .collect();
        let panels = root.split_evenly((1, implementations.len().max(1)));
        for (panel, implementation) in panels.iter().zip(&implementations) {
            let series = series_by_case(
                report,
                |r| r.implementation == *implementation,
                |r| Some(100.0 * r.roofline_fraction),
            );
            line_chart(
                panel,
                &format!("{}: % of copy bandwidth", implementation.name()),
                "% of roofline",
                &series,
                false,
            )?;
        }
        root.present().map_err(|e| e.to_string())
    };
    draw().map_err(chart_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_for_people() {
        assert_eq!(format_si(250_000.0), "250k");
        assert_eq!(format_si(1.5e9), "1.5G");
        assert_eq!(format_si(12.34), "12.3");
        assert_eq!(format_si(0.5), "0.5");
        assert_eq!(format_size(1 << 20), "2^20");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_seconds(0.0025), "2.50 ms");
        assert_eq!(format_seconds(2.5e-5), "25.0 µs");
    }
}
