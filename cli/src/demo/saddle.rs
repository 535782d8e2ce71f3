//! (d) The saddle `f(x, y) = x² − y²` (`A = diag(2, −2)` in `½ xᵀAx`): seven optimizers
//! started close to the ridge `y = 0`, where the gradient along the escape direction `y` is
//! `−2y`, almost nothing. Gradient descent multiplies `y` by `1 + 2η` per step, so the closer
//! the start, the longer it stays; the adaptive methods divide each coordinate's gradient by
//! its own running size, so their first steps along `y` are as long as along `x` however small
//! `y` is (the notes' case for RMSprop near saddle points). Each optimizer runs from three
//! starts `(1, y0)`, and the table counts the iterations until `f ≤ −1`.

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use fusedopt::{Adadelta, Adagrad, Adam, Gpu, Optimizer, Rmsprop, Sgd};

use super::plot::{FONT, Rect, color, plot_error};
use super::quadratic::Quadratic;
use super::report::{self, hyperparameters, sci, sig, table};
use super::runner::{self, GradientKernel, Limits, Stop};
use crate::Result;

/// The starts' distances from the ridge: each run starts at `(1, y0)`.
pub const STARTS: [f64; 3] = [1e-2, 1e-4, 1e-6];

/// A run has escaped once `f(x, y) ≤ ESCAPE`, that is `|y| ≥ √(1 + x²)`: as far below the
/// saddle's level as the starts are above it.
pub const ESCAPE: f64 = -1.0;

/// Most iterations per run; gradient descent from `y0 = 1e-6` needs about 150.
const CAP: u64 = 2000;

/// A run is called diverged once `f` exceeds this (the steep direction `x` blowing up).
const DIVERGENCE: f64 = 1e10;

/// The step length all but Adadelta take first along `x` from `x = 1` (where `∂f/∂x = 2`).
const FIRST_STEP: f64 = 0.1;

/// One optimizer from one start.
#[derive(Clone, Debug)]
pub struct SaddleRun {
    /// The optimizer's name in the tables.
    pub label: String,
    /// What the GPU ran.
    pub config: Optimizer,
    /// The start's `y`.
    pub y0: f64,
    /// The first iteration with `f ≤ ESCAPE`, if any within the cap.
    pub escape: Option<u64>,
    /// Iterations run.
    pub iterations_run: u64,
    /// Whether `f` blew up (or became NaN) before escaping.
    pub diverged: bool,
    /// Every iterate `(x_k, y_k)` as the GPU computed it, `x_0` first.
    pub path: Vec<(f64, f64)>,
}

/// The experiment.
#[derive(Clone, Debug)]
pub struct SaddleExperiment {
    /// Why the starts and hyperparameters are what they are.
    pub notes: Vec<String>,
    /// The iteration cap of every run.
    pub max_iterations: u64,
    /// For each optimizer, one run per start of [`STARTS`], in that order.
    pub runs: Vec<SaddleRun>,
}

impl SaddleExperiment {
    /// The optimizers' labels, in table order.
    pub fn labels(&self) -> Vec<&str> {
        let mut labels: Vec<&str> = Vec::new();
        for run in &self.runs {
            if !labels.contains(&run.label.as_str()) {
                labels.push(&run.label);
            }
        }
        labels
    }

    /// The run of `label` from `(1, y0)`.
    pub fn run(&self, label: &str, y0: f64) -> Option<&SaddleRun> {
        self.runs.iter().find(|r| r.label == label && r.y0 == y0)
    }
}

/// The optimizers, each tuned so that its first step along `x` from `x = 1` has length
/// [`FIRST_STEP`] (Adadelta, which has no rate to tune, at PyTorch's defaults).
fn entries() -> Vec<(&'static str, Optimizer)> {
    // Gradient descent's first step is η·2.
    let eta = FIRST_STEP / 2.0;
    let sgd = |momentum: f64, nesterov: bool| Sgd {
        lr: eta,
        momentum,
        nesterov,
        ..Sgd::default()
    };
    vec![
        ("GD", sgd(0.0, false).into()),
        ("momentum", sgd(0.9, false).into()),
        ("Nesterov", sgd(0.9, true).into()),
        (
            "Adagrad",
            Adagrad {
                lr: FIRST_STEP,
                ..Adagrad::default()
            }
            .into(),
        ),
        ("Adadelta", Adadelta::default().into()),
        (
            // The first step is lr·g/√((1 − α)g²) = lr/√(1 − α) = 10·lr for α = 0.99.
            "RMSprop",
            Rmsprop {
                lr: FIRST_STEP * (1.0 - Rmsprop::default().alpha).sqrt(),
                ..Rmsprop::default()
            }
            .into(),
        ),
        (
            "Adam",
            Adam {
                lr: FIRST_STEP,
                ..Adam::default()
            }
            .into(),
        ),
    ]
}

/// Runs every optimizer from every start, at most `max_iterations` (and [`CAP`]) each.
pub(super) fn run(
    gpu: &Gpu,
    kernel: &GradientKernel,
    max_iterations: u64,
) -> Result<SaddleExperiment> {
    let max_iterations = max_iterations.min(CAP);
    let mut runs = Vec::new();
    for (label, config) in entries() {
        for y0 in STARTS {
            let problem = Quadratic::new(&[2.0, 0.0, 0.0, -2.0], &[1.0, y0])?;
            let limits = Limits {
                max_iterations,
                tolerance: ESCAPE,
                divergence: DIVERGENCE,
            };
            let trajectory = runner::run(gpu, kernel, &problem, &config, None, &limits)?;
            let k = trajectory.iterations();
            runs.push(SaddleRun {
                label: label.to_string(),
                config: config.clone(),
                y0,
                escape: (trajectory.stop == Stop::Reached).then_some(k),
                iterations_run: k,
                diverged: trajectory.stop == Stop::Diverged,
                path: trajectory
                    .rows
                    .chunks_exact(2)
                    .map(|p| (f64::from(p[0]), f64::from(p[1])))
                    .collect(),
            });
        }
    }
    let notes = vec![
        "f(x, y) = x² − y², a saddle at the origin; starts (1, y0) with y0 = 1e-2, 1e-4, 1e-6, \
         close to the ridge y = 0, where ∂f/∂y = −2y is almost nothing"
            .to_string(),
        format!(
            "escaped: f ≤ {ESCAPE} (|y| ≥ √(1 + x²)); at most {} iterations per run",
            report::thousands(max_iterations)
        ),
        format!(
            "every first step along x has length {FIRST_STEP}: GD, momentum and Nesterov \
             η = {} (momentum 0.9), Adagrad and Adam lr = {FIRST_STEP}, RMSprop lr = {} (its \
             first step is lr/√(1 − α)); Adadelta at PyTorch's defaults, with no rate to match",
            sig(FIRST_STEP / 2.0),
            sig(FIRST_STEP * (1.0 - Rmsprop::default().alpha).sqrt())
        ),
        "from y0 = 0 exactly no optimizer leaves the ridge: the gradient has no y component"
            .to_string(),
    ];
    Ok(SaddleExperiment {
        notes,
        max_iterations,
        runs,
    })
}

/// Iterations to escape for every optimizer and start, as text or Markdown.
pub fn escape_table(experiment: &SaddleExperiment, markdown: bool) -> String {
    let mut header = vec!["optimizer".to_string(), "hyperparameters".to_string()];
    header.extend(STARTS.iter().map(|y0| format!("y0 = {}", sci(*y0))));
    let rows: Vec<Vec<String>> = experiment
        .labels()
        .into_iter()
        .map(|label| {
            let mut row = vec![label.to_string()];
            let runs: Vec<Option<&SaddleRun>> =
                STARTS.iter().map(|y0| experiment.run(label, *y0)).collect();
            row.push(
                runs.iter()
                    .flatten()
                    .next()
                    .map_or_else(String::new, |r| hyperparameters(&r.config)),
            );
            row.extend(runs.iter().map(|r| match r {
                Some(r) => outcome(r),
                None => "not run".into(),
            }));
            row
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    table(&header, &rows, markdown)
}

/// The short outcome of a run.
fn outcome(run: &SaddleRun) -> String {
    match run.escape {
        Some(k) => k.to_string(),
        None if run.diverged => format!("diverged at {}", run.iterations_run),
        None => format!("not in {}", run.iterations_run),
    }
}

/// What the table shows: how each optimizer's escape time grows as the start nears the ridge,
/// and gradient descent's against its closed form.
pub fn findings(experiment: &SaddleExperiment) -> Vec<String> {
    let (near, far) = (STARTS[STARTS.len() - 1], STARTS[0]);
    // Factors of 10 between the farthest and the nearest start.
    let decades = (far / near).log10();
    let mut lines = Vec::new();
    let mut flat = Vec::new();
    for label in experiment.labels() {
        let (Some(a), Some(b)) = (
            experiment.run(label, far).and_then(|r| r.escape),
            experiment.run(label, near).and_then(|r| r.escape),
        ) else {
            lines.push(format!(
                "{label} did not escape from every start within the cap."
            ));
            continue;
        };
        let per_decade = (b as f64 - a as f64) / decades;
        if per_decade.abs() < 1.0 {
            flat.push(format!("{label} ({a} → {b})"));
        } else {
            lines.push(format!(
                "{label}: {a} iterations from y0 = {}, {b} from {}: {} more per factor 10 closer \
                 to the ridge.",
                sci(far),
                sci(near),
                sig(per_decade)
            ));
        }
    }
    if !flat.is_empty() {
        lines.push(format!(
            "Within one iteration per factor 10, whatever the distance to the ridge: {}. Their \
             steps along y are scaled by 1/√(running mean of g_y²), so a tiny gradient still \
             gives a full-sized step.",
            flat.join(", ")
        ));
    }
    if let Some(Optimizer::Sgd(gd)) = experiment
        .runs
        .iter()
        .find(|r| r.label == "GD")
        .map(|r| &r.config)
    {
        lines.push(format!(
            "GD multiplies y by 1 + 2η = {} per step, so each factor 10 closer costs ln 10 / \
             ln(1 + 2η) = {} iterations.",
            sig(1.0 + 2.0 * gd.lr),
            sig(10f64.ln() / (1.0 + 2.0 * gd.lr).ln())
        ));
    }
    lines
}

/// The box the path panels show.
fn bounds() -> Rect {
    Rect {
        x: (-1.25, 1.25),
        y: (-0.5, 2.0),
    }
}

/// Level sets `x² − y² = c` inside the box: for `c ≥ 0` the branches `x = ±√(c + y²)`, for
/// `c < 0` the branch `y = √(x² − c)` (the starts' side, y > 0) and its mirror.
fn level_set(c: f64, bounds: &Rect) -> Vec<Vec<(f64, f64)>> {
    let steps = 200;
    let along = |(lo, hi): (f64, f64)| -> Vec<f64> {
        (0..=steps)
            .map(|i| lo + (hi - lo) * f64::from(i) / f64::from(steps))
            .collect()
    };
    let branches: Vec<Vec<(f64, f64)>> = if c >= 0.0 {
        [1.0, -1.0]
            .iter()
            .map(|s| {
                along(bounds.y)
                    .into_iter()
                    .map(|y| (s * (c + y * y).sqrt(), y))
                    .collect()
            })
            .collect()
    } else {
        [1.0, -1.0]
            .iter()
            .map(|s| {
                along(bounds.x)
                    .into_iter()
                    .map(|x| (x, s * (x * x - c).sqrt()))
                    .collect()
            })
            .collect()
    };
    branches.iter().flat_map(|b| bounds.clip(b)).collect()
}

/// One panel per optimizer: the paths from every start over level sets of `f`, the escape
/// level dashed.
pub fn path_chart(path: &Path, experiment: &SaddleExperiment) -> Result<()> {
    let bounds = bounds();
    let levels: Vec<Vec<Vec<(f64, f64)>>> = [1.0, 0.5, 0.0, -0.5]
        .iter()
        .map(|c| level_set(*c, &bounds))
        .collect();
    let escape = level_set(ESCAPE, &bounds);
    let labels = experiment.labels();
    let columns = 4;
    let rows = labels.len().div_ceil(columns);
    let root = SVGBackend::new(path, (1280, 40 + 320 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error(path))?;
    let root = root
        .titled(
            "(d) saddle f = x² − y²: paths from (1, y0), level sets f = 1, 0.5, 0, −0.5, \
             escape f = −1 dashed",
            (FONT, 18),
        )
        .map_err(plot_error(path))?;
    for (panel, label) in root.split_evenly((rows, columns)).iter().zip(labels) {
        let runs: Vec<&SaddleRun> = experiment
            .runs
            .iter()
            .filter(|r| r.label == label)
            .collect();
        draw_panel(panel, label, &runs, &bounds, &levels, &escape).map_err(plot_error(path))?;
    }
    root.present().map_err(plot_error(path))
}

fn draw_panel(
    panel: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    label: &str,
    runs: &[&SaddleRun],
    bounds: &Rect,
    levels: &[Vec<Vec<(f64, f64)>>],
    escape: &[Vec<(f64, f64)>],
) -> std::result::Result<(), DrawingAreaErrorKind<std::io::Error>> {
    let counts: Vec<String> = runs.iter().map(|r| outcome(r)).collect();
    let mut chart: ChartContext<'_, _, Cartesian2d<RangedCoordf64, RangedCoordf64>> =
        ChartBuilder::on(panel)
            .caption(
                format!("{label}: escapes in {}", counts.join(" / ")),
                (FONT, 14),
            )
            .margin(8)
            .x_label_area_size(22)
            .y_label_area_size(28)
            .build_cartesian_2d(bounds.x.0..bounds.x.1, bounds.y.0..bounds.y.1)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .label_style((FONT, 11))
        .draw()?;
    for piece in levels.iter().flatten() {
        chart.draw_series(LineSeries::new(
            piece.iter().copied(),
            RGBColor(170, 170, 170).stroke_width(1),
        ))?;
    }
    for piece in escape {
        chart.draw_series(DashedLineSeries::new(
            piece.iter().copied(),
            5,
            4,
            BLACK.stroke_width(1),
        ))?;
    }
    for (k, run) in runs.iter().enumerate() {
        let color = color(k);
        for (i, piece) in bounds.clip(&run.path).into_iter().enumerate() {
            let series = chart.draw_series(LineSeries::new(piece, color.stroke_width(1)))?;
            if i == 0 {
                series
                    .label(format!("y0 = {}", sci(run.y0)))
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], color));
            }
        }
        chart.draw_series(
            run.path
                .iter()
                .filter(|p| bounds.contains(**p))
                .map(|&p| Circle::new(p, 2, color.filled())),
        )?;
    }
    chart.draw_series([Cross::new((0.0, 0.0), 4, BLACK.stroke_width(1))])?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 11))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
}

/// `|y_k|` against the iteration from the nearest start, log scale: gradient descent's
/// straight line (a constant factor per step) against the adaptive methods' jump.
pub fn escape_chart(path: &Path, experiment: &SaddleExperiment) -> Result<()> {
    let near = STARTS[STARTS.len() - 1];
    let runs: Vec<&SaddleRun> = experiment.runs.iter().filter(|r| r.y0 == near).collect();
    let last = runs
        .iter()
        .map(|r| r.iterations_run)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let (low, high) = (near / 10.0, 10.0);
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error(path))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "(d) saddle f = x² − y² from (1, {}): distance |y| from the ridge against \
                 iteration (dot: escaped, f ≤ −1)",
                sci(near)
            ),
            (FONT, 18),
        )
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(0f64..last, (low..high).log_scale())
        .map_err(plot_error(path))?;
    chart
        .configure_mesh()
        .x_desc("iteration")
        .y_desc("|y|")
        .y_label_formatter(&|v| sci(*v))
        .label_style((FONT, 13))
        .draw()
        .map_err(plot_error(path))?;
    for (k, run) in runs.iter().enumerate() {
        let color = color(k);
        // Clamped into the axis: a y that crosses the ridge (0) would leave a log scale.
        let points = run
            .path
            .iter()
            .enumerate()
            .map(|(i, p)| (i as f64, p.1.abs().clamp(low, high)));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(plot_error(path))?
            .label(format!("{} ({})", run.label, outcome(run)))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        if let Some(k) = run.escape
            && let Some(p) = run.path.get(k as usize)
        {
            let end = (k as f64, p.1.abs().clamp(low, high));
            chart
                .draw_series([Circle::new(end, 4, color.filled())])
                .map_err(plot_error(path))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(plot_error(path))?;
    root.present().map_err(plot_error(path))
}
