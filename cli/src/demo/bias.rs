//! (e) Adam's bias correction under a constant gradient `G`: the moments start at zero, so
//! `m_k = (1 − β1^k)·G` and `v_k = (1 − β2^k)·G²` (the notes' derivation), both biased towards
//! zero early on; dividing by `1 − β^k` gives `m̂ = G` and `v̂ = G²`, and every step has length
//! `lr`. fusedopt's Adam kernel runs on a gradient buffer written once, and its state is read
//! back at sampled steps and compared with the formulas.

use std::path::Path;

use plotters::prelude::*;

use fusedopt::{Adam, CpuOptimizer, Gpu, GpuOptimizer, Optimizer};
use ndarray::{ArrayView1, ArrayViewMut1};

use super::plot::{FONT, color, legend, plot_error};
use super::report::{sci, sig, table};
use crate::{Error, Result};

/// The constant gradients, one per coordinate, of sizes almost five decades apart and of both
/// signs: in exact arithmetic every coordinate gives the same `m_k/G` and `v_k/G²`, and the
/// same step but for `eps` (a relative 1e-5 at `G = 1e-3`).
pub const GRADIENTS: [f64; 3] = [1.0, 1e-3, -50.0];

/// Steps run.
pub const STEPS: u64 = 5000;

/// Steps where the state is read: every one of the first 20, then spread to the end.
const SAMPLED: [u64; 16] = [
    25, 30, 40, 50, 70, 100, 150, 200, 300, 500, 700, 1000, 1500, 2000, 3000, STEPS,
];

/// Steps shown in the table.
const TABLE: [u64; 11] = [1, 2, 3, 5, 10, 20, 50, 100, 300, 1000, STEPS];

/// The state at one sampled step, for the first coordinate (`G = 1`).
#[derive(Clone, Debug, PartialEq)]
pub struct BiasSample {
    /// The step.
    pub k: u64,
    /// `m_k / G` from the GPU's `exp_avg`.
    pub first: f64,
    /// `v_k / G²` from the GPU's `exp_avg_sq`.
    pub second: f64,
    /// The mean step length over the steps since the previous sample, over `lr`, from the
    /// GPU's parameters: Adam's steps, with the correction.
    pub step: f64,
    /// `m_k / (√v_k + eps)`, the step over `lr` Adam would take at `k` without the correction,
    /// from the GPU's state.
    pub uncorrected: f64,
}

/// The experiment.
#[derive(Clone, Debug)]
pub struct BiasExperiment {
    /// What was run.
    pub notes: Vec<String>,
    /// The Adam configuration.
    pub config: Adam,
    /// The sampled steps.
    pub samples: Vec<BiasSample>,
    /// Largest `|m_k/G − (1 − β1^k)| / (1 − β1^k)` over the samples and every coordinate.
    pub first_error: f64,
    /// The same for `v_k/G²` against `1 − β2^k`.
    pub second_error: f64,
    /// Whether the GPU's moments and parameters equal fusedopt's CPU reference, run beside it,
    /// bit for bit at every sample: then the formulas' deviations are f32 arithmetic's.
    pub matches_cpu: bool,
    /// Largest `|step/lr − 1|` over the samples and every coordinate.
    pub step_error: f64,
}

impl BiasExperiment {
    /// `1 − β1^k` and `1 − β2^k` in f64.
    pub fn predicted(&self, k: u64) -> (f64, f64) {
        let (b1, b2) = self.config.betas;
        let k = k as i32;
        (1.0 - b1.powi(k), 1.0 - b2.powi(k))
    }

    /// `(1 − β1^k)/√(1 − β2^k)`: the uncorrected step over `lr`, in exact arithmetic.
    pub fn predicted_uncorrected(&self, k: u64) -> f64 {
        let (first, second) = self.predicted(k);
        first / second.sqrt()
    }
}

/// Runs Adam (PyTorch's defaults) on the constant gradients for [`STEPS`] steps, reading the
/// state back at the sampled steps.
pub(super) fn run(gpu: &Gpu) -> Result<BiasExperiment> {
    let config = Adam::default();
    let start = vec![0.0f32; GRADIENTS.len()];
    let gradients: Vec<f32> = GRADIENTS.iter().map(|&g| g as f32).collect();
    let params = gpu.upload("demo/bias/x", &start)?;
    let grads = gpu.upload("demo/bias/g", &gradients)?;
    let mut optimizer = GpuOptimizer::new(gpu, Optimizer::Adam(config.clone()), &params, &grads)?;
    let mut cpu = CpuOptimizer::new(Optimizer::Adam(config.clone()), start.len())?;
    let mut cpu_params = start.clone();
    let lr = config.lr;
    let mut experiment = BiasExperiment {
        notes: Vec::new(),
        config,
        samples: Vec::new(),
        first_error: 0.0,
        second_error: 0.0,
        matches_cpu: true,
        step_error: 0.0,
    };
    let mut previous = (
        0u64,
        start.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
    );
    for k in (1..=20).chain(SAMPLED) {
        let mut encoder = gpu
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("demo/bias"),
            });
        for _ in previous.0..k {
            optimizer.record_step(gpu, &mut encoder)?;
            cpu.step(
                ArrayViewMut1::from(&mut cpu_params[..]),
                ArrayView1::from(&gradients[..]),
            )?;
        }
        gpu.submit("running the bias-correction steps", encoder)?;
        let state = optimizer.read_state(gpu)?;
        let tensor = |name: &str| -> Result<Vec<f64>> {
            let (_, values) = state.iter().find(|(n, _)| *n == name).ok_or_else(|| {
                Error::Demo(format!("Adam's state has no {name} tensor on the GPU"))
            })?;
            Ok(values.iter().map(|&v| f64::from(v)).collect())
        };
        let (m, v) = (tensor("exp_avg")?, tensor("exp_avg_sq")?);
        let x: Vec<f64> = optimizer
            .read_params(gpu)?
            .into_iter()
            .map(f64::from)
            .collect();
        let cpu_state: Vec<Vec<f64>> = cpu
            .state()
            .iter()
            .map(|(_, values)| values.iter().map(|&v| f64::from(v)).collect())
            .collect();
        let cpu_x: Vec<f64> = cpu_params.iter().map(|&v| f64::from(v)).collect();
        experiment.matches_cpu &= cpu_state == [m.clone(), v.clone()] && cpu_x == x;
        let (first, second) = experiment.predicted(k);
        for (i, g) in gradients.iter().map(|&g| f64::from(g)).enumerate() {
            let relative = |got: f64, want: f64| (got / want - 1.0).abs();
            let e = &mut experiment;
            e.first_error = e.first_error.max(relative(m[i] / g, first));
            e.second_error = e.second_error.max(relative(v[i] / (g * g), second));
            let step = (x[i] - previous.1[i]).abs() / (k - previous.0) as f64 / lr;
            experiment.step_error = experiment.step_error.max((step - 1.0).abs());
        }
        let g = f64::from(gradients[0]);
        experiment.samples.push(BiasSample {
            k,
            first: m[0] / g,
            second: v[0] / (g * g),
            step: (x[0] - previous.1[0]).abs() / (k - previous.0) as f64 / lr,
            uncorrected: m[0] / (v[0].sqrt() + experiment.config.eps) / g.abs(),
        });
        previous = (k, x);
    }
    let (b1, b2) = experiment.config.betas;
    experiment.notes = vec![
        format!(
            "Adam with lr = {}, betas = ({}, {}), eps = {} on a gradient buffer written once, \
             G = ({}) per coordinate; parameters from 0, {} steps",
            sig(lr),
            sig(b1),
            sig(b2),
            sci(experiment.config.eps),
            GRADIENTS.map(sig).join(", "),
            STEPS
        ),
        "exp_avg and exp_avg_sq read back from the GPU at every step up to 20, then at 16 \
         steps to the end; the table shows the first coordinate (G = 1)"
            .to_string(),
        "uncorrected: m_k/(√v_k + eps), the step over lr Adam would take without dividing by \
         1 − β^k, computed from the GPU's m_k and v_k"
            .to_string(),
    ];
    Ok(experiment)
}

/// The chart's file name in the output folder.
pub const CHART: &str = "bias-correction.svg";

/// The experiment's part of the report.
pub(crate) fn section(experiment: &BiasExperiment) -> super::report::Section<'_> {
    super::report::Section {
        title: "(e) Adam's bias correction under a constant gradient".into(),
        notes: &experiment.notes,
        table: Box::new(move |markdown| table_of(experiment, markdown)),
        findings: findings(experiment),
        charts: vec![("Bias correction", CHART)],
    }
}

/// Eleven of the sampled steps, from 1 to [`STEPS`], as text or Markdown.
pub fn table_of(experiment: &BiasExperiment, markdown: bool) -> String {
    let header = [
        "k",
        "m_k/G (GPU)",
        "1 − β1^k",
        "v_k/G² (GPU)",
        "1 − β2^k",
        "step/lr (GPU)",
        "uncorrected step/lr",
    ];
    let rows: Vec<Vec<String>> = experiment
        .samples
        .iter()
        .filter(|s| TABLE.contains(&s.k))
        .map(|s| {
            let (first, second) = experiment.predicted(s.k);
            vec![
                s.k.to_string(),
                format!("{:.6}", s.first),
                format!("{first:.6}"),
                format!("{:.6}", s.second),
                format!("{second:.6}"),
                format!("{:.6}", s.step),
                format!("{:.3}", s.uncorrected),
            ]
        })
        .collect();
    table(&header, &rows, markdown)
}

/// What the run shows: the formulas hold on the GPU, and what the correction is worth.
pub fn findings(experiment: &BiasExperiment) -> Vec<String> {
    let peak = experiment
        .samples
        .iter()
        .max_by(|a, b| a.uncorrected.total_cmp(&b.uncorrected));
    // The parameters grow to lr·STEPS; one f32 rounding of x there, per step, bounds how far a
    // step measured from them can be from lr.
    let reach = experiment.config.lr * STEPS as f64;
    let ulp = f64::from((reach as f32).next_up() - reach as f32);
    let mut lines = vec![
        format!(
            "On the GPU, over every sampled step and all {} gradients: m_k = (1 − β1^k)·G \
             within {} relative and v_k = (1 − β2^k)·G² within {}. {}",
            GRADIENTS.len(),
            sci(experiment.first_error),
            sci(experiment.second_error),
            if experiment.matches_cpu {
                "The moments and parameters equal fusedopt's CPU reference bit for bit at every \
                 sample: the deviations are f32 arithmetic's (β and 1 − β each rounded to f32, \
                 then a rounding every step, over about 1/(1 − β) steps)."
            } else {
                "The GPU DIFFERS from fusedopt's CPU reference run beside it."
            }
        ),
        format!(
            "The corrected step is lr within {} (eps/|G| is 1e-5 at G = 1e-3; the parameters \
             reach {}, where half an f32 ulp is {}·lr, and every step rounds there).",
            sci(experiment.step_error),
            sig(reach),
            sci(ulp / 2.0 / experiment.config.lr)
        ),
    ];
    if let (Some(first), Some(peak)) = (experiment.samples.first(), peak) {
        let settled = experiment
            .samples
            .iter()
            .rev()
            .find(|s| s.uncorrected > 1.1)
            .map_or(0, |s| s.k);
        lines.push(format!(
            "Without the correction the step would be {}·lr at k = 1 ((1 − β1)/√(1 − β2)), {}·lr \
             at k = {}, and still above 1.1·lr at k = {}: with β2 = {} the second moment's bias \
             outweighs the first's, so the uncorrected steps are too long, not too short.",
            sig(first.uncorrected),
            sig(peak.uncorrected),
            peak.k,
            settled,
            sig(experiment.config.betas.1)
        ));
    }
    lines
}

/// Left: `m_k/G` and `v_k/G²` from the GPU against `1 − β^k`; right: the step over `lr`, with
/// the correction (the GPU's) and without (from the GPU's state), against the formula.
pub fn chart(path: &Path, experiment: &BiasExperiment) -> Result<()> {
    let root = SVGBackend::new(path, (1280, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error(path))?;
    let root = root
        .titled(
            "(e) Adam under a constant gradient G: moments (left) and step length (right); \
             dots: the GPU, lines: formulas",
            (FONT, 18),
        )
        .map_err(plot_error(path))?;
    let (left, right) = root.split_horizontally(640);
    let ks = super::log_spaced(1, STEPS, 200);
    let x_range = (1f64..STEPS as f64).log_scale();
    let formula = |f: &dyn Fn(u64) -> f64| -> Vec<(f64, f64)> {
        ks.iter().map(|&k| (k as f64, f(k))).collect()
    };
    let panels: [(
        &DrawingArea<_, _>,
        &str,
        f64,
        SeriesLabelPosition,
        Vec<Curve>,
    ); 2] = [
        (
            &left,
            "fraction of G, G²",
            1.05,
            SeriesLabelPosition::LowerRight,
            vec![
                Curve {
                    label: "m_k/G",
                    formula: formula(&|k| experiment.predicted(k).0),
                    formula_label: "1 − β1^k",
                    points: experiment.samples.iter().map(|s| (s.k, s.first)).collect(),
                },
                Curve {
                    label: "v_k/G²",
                    formula: formula(&|k| experiment.predicted(k).1),
                    formula_label: "1 − β2^k",
                    points: experiment.samples.iter().map(|s| (s.k, s.second)).collect(),
                },
            ],
        ),
        (
            &right,
            "step / lr",
            experiment
                .samples
                .iter()
                .map(|s| s.uncorrected)
                .fold(1.0, f64::max)
                * 1.1,
            SeriesLabelPosition::UpperRight,
            vec![
                Curve {
                    label: "Adam's step",
                    formula: formula(&|_| 1.0),
                    formula_label: "lr",
                    points: experiment.samples.iter().map(|s| (s.k, s.step)).collect(),
                },
                Curve {
                    label: "without correction",
                    formula: formula(&|k| experiment.predicted_uncorrected(k)),
                    formula_label: "(1 − β1^k)/√(1 − β2^k)",
                    points: experiment
                        .samples
                        .iter()
                        .map(|s| (s.k, s.uncorrected))
                        .collect(),
                },
            ],
        ),
    ];
    for (area, y_desc, top, position, curves) in panels {
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(x_range.clone(), 0f64..top)
            .map_err(plot_error(path))?;
        chart
            .configure_mesh()
            .x_desc("step k")
            .y_desc(y_desc)
            .label_style((FONT, 13))
            .draw()
            .map_err(plot_error(path))?;
        for (i, curve) in curves.iter().enumerate() {
            let color = color(i);
            chart
                .draw_series(LineSeries::new(
                    curve.formula.iter().copied(),
                    color.stroke_width(1),
                ))
                .map_err(plot_error(path))?
                .label(curve.formula_label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color));
            chart
                .draw_series(
                    curve
                        .points
                        .iter()
                        .map(|&(k, v)| Circle::new((k as f64, v), 3, color.filled())),
                )
                .map_err(plot_error(path))?
                .label(curve.label)
                .legend(move |(x, y)| Circle::new((x + 9, y), 3, color.filled()));
        }
        legend(&mut chart, position, 13).map_err(plot_error(path))?;
    }
    root.present().map_err(plot_error(path))
}

/// One quantity in a panel: its GPU samples and its formula.
struct Curve {
    label: &'static str,
    formula: Vec<(f64, f64)>,
    formula_label: &'static str,
    points: Vec<(u64, f64)>,
}
