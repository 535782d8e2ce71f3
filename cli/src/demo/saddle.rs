//! (d) The saddle `f(x, y) = x² − y²` (`A = diag(2, −2)` in `½ xᵀAx`): seven optimizers
//! started close to the ridge `y = 0`, where the gradient along the escape direction `y` is
//! `−2y`, almost nothing. Gradient descent multiplies `y` by `1 + 2η` per step, so the closer
//! the start, the longer it stays; Adagrad, RMSprop and Adam divide each coordinate's gradient
//! by the root of its own accumulated square, so their first steps along `y` are as long as
//! along `x` however small `y` is (the notes' case for RMSprop near saddle points). Each
//! optimizer runs from three starts `(1, y0)`, and the table counts the iterations until
//! `f ≤ −1`.

use std::path::Path;

use plotters::prelude::*;

use fusedopt::{Adadelta, Adagrad, Adam, Gpu, Optimizer, Rmsprop, Sgd};

use super::plot::{DrawResult, FONT, Rect, color, legend, path_panel, plot_error};
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
pub const FIRST_STEP: f64 = 0.1;

/// Momentum of the heavy-ball and Nesterov runs.
const MOMENTUM: f64 = 0.9;

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
/// [`FIRST_STEP`]; Adadelta at PyTorch's defaults.
fn entries() -> Vec<(&'static str, Optimizer)> {
    let sgd = |lr: f64, momentum: f64, nesterov: bool| Sgd {
        lr,
        momentum,
        nesterov,
        ..Sgd::default()
    };
    // Gradient descent's and heavy-ball momentum's first step is η·g (the buffer starts as g);
    // Nesterov's is η·(g + μ·g).
    let eta = FIRST_STEP / 2.0;
    vec![
        ("GD", sgd(eta, 0.0, false).into()),
        ("momentum", sgd(eta, MOMENTUM, false).into()),
        (
            "Nesterov",
            sgd(eta / (1.0 + MOMENTUM), MOMENTUM, true).into(),
        ),
        (
            // lr·g/√(g²)
            "Adagrad",
            Adagrad {
                lr: FIRST_STEP,
                ..Adagrad::default()
            }
            .into(),
        ),
        ("Adadelta", Adadelta::default().into()),
        (
            // lr·g/√((1 − α)g²) = lr/√(1 − α)
            "RMSprop",
            Rmsprop {
                lr: FIRST_STEP * (1.0 - Rmsprop::default().alpha).sqrt(),
                ..Rmsprop::default()
            }
            .into(),
        ),
        (
            // lr·m̂/√v̂ = lr
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
            "every first step along x has length {FIRST_STEP}: GD and momentum (μ = \
             {MOMENTUM}) η = {}, Nesterov η = {} (its first step is η·(1 + μ)·g), Adagrad \
             and Adam lr = {FIRST_STEP}, RMSprop lr = {} (its first step is lr/√(1 − α)); \
             Adadelta at PyTorch's defaults (its first step, √eps·g/√((1 − ρ)g² + eps), is \
             3.2e-3 along x)",
            sig(FIRST_STEP / 2.0),
            sig(FIRST_STEP / 2.0 / (1.0 + MOMENTUM)),
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

/// The paths chart's file name in the output folder.
pub const PATHS_CHART: &str = "paths-saddle.svg";
/// The escape chart's file name in the output folder.
pub const ESCAPE_CHART: &str = "escape-saddle.svg";

/// The experiment's part of the report.
pub(crate) fn section(experiment: &SaddleExperiment) -> report::Section<'_> {
    report::Section {
        title: "(d) Saddle f(x, y) = x² − y²: iterations to escape (f ≤ −1)".into(),
        notes: &experiment.notes,
        table: Box::new(move |markdown| escape_table(experiment, markdown)),
        findings: findings(experiment),
        charts: vec![("Saddle paths", PATHS_CHART), ("Escape", ESCAPE_CHART)],
    }
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

/// What the table shows: how each optimizer's escape time changes as the start nears the
/// ridge, with gradient descent's and Adadelta's against their arithmetic.
pub fn findings(experiment: &SaddleExperiment) -> Vec<String> {
    let (near, far) = (STARTS[STARTS.len() - 1], STARTS[0]);
    // Factors of 10 between the farthest and the nearest start.
    let decades = (far / near).log10();
    let mut lines = Vec::new();
    let mut flat = Vec::new();
    for label in experiment.labels() {
        let counts: Option<Vec<u64>> = STARTS
            .iter()
            .map(|y0| experiment.run(label, *y0).and_then(|r| r.escape))
            .collect();
        let Some(counts) = counts else {
            lines.push(format!(
                "{label} did not escape from every start within the cap."
            ));
            continue;
        };
        let listed = counts
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let (least, most) = (counts.iter().min(), counts.iter().max());
        let growing = counts.windows(2).all(|w| w[1] > w[0]);
        if let (Some(least), Some(most)) = (least, most)
            && most - least <= 1
        {
            flat.push(format!("{label} ({listed})"));
        } else if growing && let (Some(a), Some(b)) = (counts.first(), counts.last()) {
            lines.push(format!(
                "{label}: {listed} iterations: {} more per factor 10 closer to the ridge.",
                sig((*b as f64 - *a as f64) / decades)
            ));
        } else {
            lines.push(format!(
                "{label}: {listed} iterations: neither the same from every start nor growing \
                 with the closeness."
            ));
        }
    }
    if !flat.is_empty() {
        lines.push(format!(
            "The same from every start, to one iteration: {}. They divide g_y by the root of its \
             accumulated square (a sum for Adagrad, a running mean for RMSprop and Adam), so a \
             tiny gradient still gives a full-sized step.",
            flat.join(", ")
        ));
    }
    let config = |label: &str| experiment.runs.iter().find(|r| r.label == label);
    if let Some(Optimizer::Sgd(gd)) = config("GD").map(|r| &r.config) {
        lines.push(format!(
            "GD multiplies y by 1 + 2η = {} per step, so each factor 10 closer costs ln 10 / \
             ln(1 + 2η) = {} iterations.",
            sig(1.0 + 2.0 * gd.lr),
            sig(10f64.ln() / (1.0 + 2.0 * gd.lr).ln())
        ));
    }
    if let Some(Optimizer::Adadelta(c)) = config("Adadelta").map(|r| &r.config) {
        lines.push(format!(
            "Adadelta: while (1 − ρ)·g_y² is below eps (|y| < √(eps/(4(1 − ρ))) = {}), its step \
             along y is about lr·g_y, so y grows by 1 + 2·lr = {}× per step, as in GD with \
             η = lr: a factor 10 closer costs it about {} iterations.",
            sci((c.eps / (4.0 * (1.0 - c.rho))).sqrt()),
            sig(1.0 + 2.0 * c.lr),
            sig(10f64.ln() / (1.0 + 2.0 * c.lr).ln())
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
    let levels: Vec<Vec<(f64, f64)>> = [1.0, 0.5, 0.0, -0.5]
        .iter()
        .flat_map(|c| level_set(*c, &bounds))
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
    levels: &[Vec<(f64, f64)>],
    escape: &[Vec<(f64, f64)>],
) -> DrawResult<()> {
    let counts: Vec<String> = runs.iter().map(|r| outcome(r)).collect();
    let caption = format!("{label}: escapes in {}", counts.join(" / "));
    let mut chart = path_panel(panel, caption, bounds, levels)?;
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
    legend(&mut chart, SeriesLabelPosition::UpperLeft, 11)
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
    // The axis spans the data: every |y| is positive (y starts above the ridge and every
    // step pushes it further away), the largest is an escaped iterate.
    let ys = runs.iter().flat_map(|r| r.path.iter().map(|p| p.1.abs()));
    let (low, high) = ys
        .filter(|y| y.is_finite() && *y > 0.0)
        .fold((near, 1.0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (low, high) = (low / 2.0, high * 2.0);
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
        let points = run
            .path
            .iter()
            .enumerate()
            .map(|(i, p)| (i as f64, p.1.abs()))
            .filter(|(_, y)| (low..=high).contains(y));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(plot_error(path))?
            .label(format!("{} ({})", run.label, outcome(run)))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        if let Some(k) = run.escape
            && let Some(p) = run.path.get(k as usize)
        {
            let end = (k as f64, p.1.abs());
            chart
                .draw_series([Circle::new(end, 4, color.filled())])
                .map_err(plot_error(path))?;
        }
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight, 13).map_err(plot_error(path))?;
    root.present().map_err(plot_error(path))
}
