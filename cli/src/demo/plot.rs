//! SVG charts of the demo with plotters' SVG backend. Without system fonts plotters only
//! estimates text extents, but the SVG backend writes labels as `<text>` elements that the
//! viewer renders, so nothing needs a font here.

use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::{Experiment, Iterations, RunReport, report};
use crate::{Error, Result};

/// Distinguishable line colours, one per run.
const COLORS: [RGBColor; 8] = crate::chart::PALETTE;

/// Iteration counts beyond this get a logarithmic axis.
const LOG_X_ABOVE: f64 = 2000.0;

pub(super) const FONT: &str = "sans-serif";

/// The colour of run `k`.
pub(super) fn color(k: usize) -> RGBColor {
    COLORS[k % COLORS.len()]
}

/// Turns a plotters error into the tool's chart error for `path`.
pub(super) fn plot_error<E: std::error::Error + Send + Sync>(
    path: &Path,
) -> impl Fn(DrawingAreaErrorKind<E>) -> Error + '_ {
    move |e| Error::Chart {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// The short outcome of a run, for legends and panel titles.
fn outcome(run: &RunReport) -> String {
    match run.iterations {
        Iterations::Measured(k) => format!("{} it.", report::thousands(k)),
        Iterations::Computed(k) => format!("{} it., computed", report::thousands(k)),
        Iterations::NotReached(k) if run.diverged => {
            format!("diverged at {}", report::thousands(k))
        }
        Iterations::NotReached(k) => format!("not reached in {}", report::thousands(k)),
    }
}

/// One line of the loss chart: the GPU run, and for gradient descent beyond the cap the exact
/// continuation (dashed).
struct Curve {
    label: String,
    color: RGBColor,
    /// Pieces of the polyline inside the chart.
    run: Vec<Vec<(f64, f64)>>,
    continuation: Vec<Vec<(f64, f64)>>,
}

/// Loss against iteration for every run of the experiment, log-scale loss, with the tolerance.
pub(super) fn loss_chart(path: &Path, experiment: &Experiment) -> Result<()> {
    let mut x_max: f64 = 10.0;
    let mut y_min = experiment.tolerance;
    for run in &experiment.runs {
        for s in &run.samples {
            x_max = x_max.max(s.iteration as f64);
            if s.loss > 0.0 {
                y_min = y_min.min(s.loss);
            }
        }
        if let Some(&(k, _)) = run.exact.as_ref().and_then(|e| e.continuation.last()) {
            x_max = x_max.max(k as f64);
        }
    }
    let log_x = x_max > LOG_X_ABOVE;
    let x_min = if log_x { 1.0 } else { 0.0 };
    // Up to the highest loss of a run that did not diverge (Adagrad's first steps may
    // overshoot), within reason; diverging runs leave through the top edge.
    let highest = experiment
        .runs
        .iter()
        .filter(|r| !r.diverged)
        .flat_map(|r| r.samples.iter().map(|s| s.loss))
        .filter(|l| l.is_finite())
        .fold(experiment.initial_loss, f64::max);
    let y_range = (
        y_min / 10.0,
        (highest * 10.0).min(experiment.initial_loss * 1e6),
    );
    // Clipping happens where the axes are linear: in (ln x or x, ln y).
    let to_axes = |(x, y): (f64, f64)| (if log_x { x.ln() } else { x }, y.ln());
    let from_axes = |(x, y): (f64, f64)| (if log_x { x.exp() } else { x }, y.exp());
    let frame = Rect {
        x: (to_axes((x_min, 1.0)).0, to_axes((x_max, 1.0)).0),
        y: (y_range.0.ln(), y_range.1.ln()),
    };
    let pieces = |it: &mut dyn Iterator<Item = (u64, f64)>| -> Vec<Vec<(f64, f64)>> {
        let pts: Vec<(f64, f64)> = it
            .filter(|(i, _)| *i as f64 >= x_min)
            .map(|(i, l)| to_axes((i as f64, l)))
            .collect();
        frame
            .clip(&pts)
            .into_iter()
            .map(|piece| piece.into_iter().map(from_axes).collect())
            .collect()
    };
    let curves: Vec<Curve> = experiment
        .runs
        .iter()
        .enumerate()
        .map(|(k, run)| Curve {
            label: format!("{} ({})", run.label, outcome(run)),
            color: color(k),
            run: pieces(&mut run.samples.iter().map(|s| (s.iteration, s.loss))),
            continuation: pieces(
                &mut run
                    .exact
                    .iter()
                    .flat_map(|e| e.continuation.iter().copied()),
            ),
        })
        .collect();
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error(path))?;
    let caption = format!(
        "{}: loss against iteration (dashed: exact-arithmetic GD)",
        experiment.title
    );
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(caption, (FONT, 18))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(72);
    let y_spec = (y_range.0..y_range.1).log_scale();
    let drawn = if log_x {
        let chart = builder
            .build_cartesian_2d((x_min..x_max).log_scale(), y_spec)
            .map_err(plot_error(path))?;
        draw_losses(chart, &curves, experiment.tolerance, x_min, x_max)
    } else {
        let chart = builder
            .build_cartesian_2d(x_min..x_max, y_spec)
            .map_err(plot_error(path))?;
        draw_losses(chart, &curves, experiment.tolerance, x_min, x_max)
    };
    drawn.map_err(plot_error(path))?;
    root.present().map_err(plot_error(path))
}

/// Draws the loss curves on a chart whose x axis is linear or logarithmic.
fn draw_losses<'a, X, Y>(
    mut chart: ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    curves: &[Curve],
    tolerance: f64,
    x_min: f64,
    x_max: f64,
) -> std::result::Result<(), DrawingAreaErrorKind<std::io::Error>>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc("iteration")
        .y_desc("loss L(x)")
        .y_label_formatter(&|v| report::sci(*v))
        .x_label_formatter(&|v| {
            if v.abs() >= 1e4 {
                report::sci(*v)
            } else {
                report::sig(*v)
            }
        })
        .label_style((FONT, 13))
        .draw()?;
    for curve in curves {
        let color = curve.color;
        for (k, piece) in curve.run.iter().enumerate() {
            let series = chart.draw_series(LineSeries::new(
                piece.iter().copied(),
                color.stroke_width(2),
            ))?;
            if k == 0 {
                series.label(curve.label.as_str()).legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                });
            }
        }
        for piece in &curve.continuation {
            chart.draw_series(DashedLineSeries::new(
                piece.iter().copied(),
                8,
                5,
                color.stroke_width(2),
            ))?;
        }
    }
    chart
        .draw_series(DashedLineSeries::new(
            [(x_min.max(1.0), tolerance), (x_max, tolerance)],
            3,
            4,
            BLACK.stroke_width(1),
        ))?
        .label("tolerance")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK));
    legend(&mut chart, SeriesLabelPosition::UpperRight, 13)
}

/// The 2-D runs as paths over level sets of the loss, one panel per optimizer.
pub(super) fn path_chart(path: &Path, experiment: &Experiment) -> Result<()> {
    let start = experiment.problem.start();
    let (half_x, half_y) = (1.2 * start[0].abs().max(1.0), 1.5 * start[1].abs().max(1.0));
    let bounds = Rect {
        x: (-half_x, half_x),
        y: (-half_y, half_y),
    };
    let levels: Vec<Vec<Vec<(f64, f64)>>> = [1.0, 0.3, 0.1, 0.03, 0.01, 0.001]
        .iter()
        .map(|f| bounds.clip(&level_set(experiment, f * experiment.initial_loss)))
        .collect();
    let columns = 4;
    let rows = experiment.runs.len().div_ceil(columns);
    let root = SVGBackend::new(path, (1280, 40 + 300 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error(path))?;
    let root = root
        .titled(
            &format!(
                "{}: paths from x0 = ({}, {}) over level sets L = L(x0)·{{1, 0.3, 0.1, 0.03, 0.01, 0.001}}",
                experiment.title,
                report::sig(start[0]),
                report::sig(start[1])
            ),
            (FONT, 18),
        )
        .map_err(plot_error(path))?;
    for (k, (panel, run)) in root
        .split_evenly((rows, columns))
        .iter()
        .zip(&experiment.runs)
        .enumerate()
    {
        draw_path_panel(panel, run, color(k), &bounds, &levels).map_err(plot_error(path))?;
    }
    root.present().map_err(plot_error(path))
}

/// A drawing error of plotters' SVG backend.
pub(super) type DrawResult<T> = std::result::Result<T, DrawingAreaErrorKind<std::io::Error>>;

/// One panel of a paths chart: `bounds` with light axes and `levels` (pieces of level sets)
/// in grey, under `caption`.
pub(super) fn path_panel<'a, 'b>(
    panel: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: String,
    bounds: &Rect,
    levels: &[Vec<(f64, f64)>],
) -> DrawResult<ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>> {
    let mut chart = ChartBuilder::on(panel)
        .caption(caption, (FONT, 14))
        .margin(8)
        .x_label_area_size(22)
        .y_label_area_size(28)
        .build_cartesian_2d(bounds.x.0..bounds.x.1, bounds.y.0..bounds.y.1)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .label_style((FONT, 11))
        .draw()?;
    for piece in levels {
        chart.draw_series(LineSeries::new(
            piece.iter().copied(),
            RGBColor(170, 170, 170).stroke_width(1),
        ))?;
    }
    Ok(chart)
}

/// The legend every demo chart draws: labels of `size` on a light box at `position`.
pub(super) fn legend<'a, 'b: 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, CT>,
    position: SeriesLabelPosition,
    size: u32,
) -> DrawResult<()> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT, size))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
}

fn draw_path_panel(
    panel: &DrawingArea<SVGBackend<'_>, Shift>,
    run: &RunReport,
    color: RGBColor,
    bounds: &Rect,
    levels: &[Vec<Vec<(f64, f64)>>],
) -> DrawResult<()> {
    let levels: Vec<Vec<(f64, f64)>> = levels.iter().flatten().cloned().collect();
    let mut chart = path_panel(
        panel,
        format!("{}: {}", run.label, outcome(run)),
        bounds,
        &levels,
    )?;
    // The path until it first leaves the box (a diverging run would otherwise cross it
    // back and forth), ending on the edge.
    let points: Vec<(f64, f64)> = run.samples.iter().map(|s| (s.x[0], s.x[1])).collect();
    let inside = points.iter().take_while(|p| bounds.contains(**p)).count();
    let shown = &points[..(inside + 1).min(points.len())];
    if let Some(piece) = bounds.clip(shown).first() {
        chart.draw_series(LineSeries::new(
            piece.iter().copied(),
            color.stroke_width(1),
        ))?;
    }
    chart.draw_series(
        points[..inside]
            .iter()
            .map(|&p| Circle::new(p, 2, color.filled())),
    )?;
    chart.draw_series([Cross::new((0.0, 0.0), 4, BLACK.stroke_width(1))])?;
    Ok(())
}

/// Points of the level set `L(x) = level` of a 2-D quadratic: an ellipse with semi-axes
/// `√(2·level/λ)` along the eigenvectors.
fn level_set(experiment: &Experiment, level: f64) -> Vec<(f64, f64)> {
    let e = &experiment.eigen;
    let radii: Vec<f64> = e.values.iter().map(|l| (2.0 * level / l).sqrt()).collect();
    (0..=180)
        .map(|i| {
            let t = std::f64::consts::TAU * f64::from(i) / 180.0;
            let (a, b) = (radii[0] * t.cos(), radii[1] * t.sin());
            (
                a * e.vectors[0][0] + b * e.vectors[1][0],
                a * e.vectors[0][1] + b * e.vectors[1][1],
            )
        })
        .collect()
}

/// The rectangle `[x.0, x.1] × [y.0, y.1]` a chart shows.
pub(super) struct Rect {
    pub x: (f64, f64),
    pub y: (f64, f64),
}

impl Rect {
    /// Whether the point lies in the box (edges included).
    pub fn contains(&self, (x, y): (f64, f64)) -> bool {
        (self.x.0..=self.x.1).contains(&x) && (self.y.0..=self.y.1).contains(&y)
    }

    /// The parts of a polyline inside the box (plotters does not clip), segment by segment
    /// with Liang–Barsky.
    pub fn clip(&self, points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
        let mut pieces: Vec<Vec<(f64, f64)>> = Vec::new();
        let mut current: Vec<(f64, f64)> = Vec::new();
        for pair in points.windows(2) {
            match self.clip_segment(pair[0], pair[1]) {
                Some((a, b)) => {
                    if current.last() != Some(&a) {
                        if current.len() > 1 {
                            pieces.push(std::mem::take(&mut current));
                        }
                        current = vec![a];
                    }
                    current.push(b);
                }
                None => {
                    if current.len() > 1 {
                        pieces.push(std::mem::take(&mut current));
                    }
                    current.clear();
                }
            }
        }
        if current.len() > 1 {
            pieces.push(current);
        }
        pieces
    }

    fn clip_segment(&self, a: (f64, f64), b: (f64, f64)) -> Option<((f64, f64), (f64, f64))> {
        if ![a.0, a.1, b.0, b.1].iter().all(|v| v.is_finite()) {
            return None;
        }
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let (mut t0, mut t1) = (0.0f64, 1.0f64);
        for (p, q) in [
            (-dx, a.0 - self.x.0),
            (dx, self.x.1 - a.0),
            (-dy, a.1 - self.y.0),
            (dy, self.y.1 - a.1),
        ] {
            if p == 0.0 {
                if q < 0.0 {
                    return None;
                }
                continue;
            }
            let r = q / p;
            if p < 0.0 {
                t0 = t0.max(r);
            } else {
                t1 = t1.min(r);
            }
            if t0 > t1 {
                return None;
            }
        }
        let at = |t: f64| (a.0 + t * dx, a.1 + t * dy);
        Some((at(t0), at(t1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_keeps_the_inside_and_splits_at_exits() {
        let b = Rect {
            x: (-1.0, 1.0),
            y: (-1.0, 1.0),
        };
        let pieces = b.clip(&[(0.0, 0.0), (2.0, 0.0), (2.0, 0.5), (0.0, 0.5)]);
        assert_eq!(
            pieces,
            vec![vec![(0.0, 0.0), (1.0, 0.0)], vec![(1.0, 0.5), (0.0, 0.5)]]
        );
        assert!(b.clip(&[(2.0, 2.0), (3.0, 3.0)]).is_empty());
        assert_eq!(b.clip(&[(0.0, 0.0), (f64::NAN, 0.0)]), Vec::<Vec<_>>::new());
    }
}
