//! (c) Sparse features: logistic regression whose features follow a Zipf law (a few in most
//! examples, most in few), the lecture notes' case for Adagrad. The weights are an embedding
//! table `[features, 1]`; each step's gradient is one row per looked-up feature, stepped by
//! the row-sparse kernels (Adagrad, SparseAdam) or, for the optimizers without a sparse kernel
//! (SGD, momentum, RMSprop, Adam), scattered into a dense gradient for the dense kernel. The
//! result is reported as measured, whichever optimizer it favours.

use std::path::Path;

use plotters::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use fusedopt::{
    Adagrad, Adam, Gpu, GpuOptimizer, Optimizer, Rmsprop, Sgd, SparseAdam, SparseGpuOptimizer,
    SparseOptimizer,
};

use super::report;
use crate::{Error, Result};

/// Features (rows of the table).
const FEATURES: usize = 1000;
/// Active features per example.
const ACTIVE: usize = 10;
/// Examples per step.
const BATCH: usize = 32;
/// Steps per optimizer.
const STEPS: usize = 600;
/// Held-out examples the loss is measured on.
const HELD_OUT: usize = 4000;
/// Zipf exponent of the feature frequencies.
const ZIPF: f64 = 1.1;
/// The most frequent features, by rank, counted as frequent.
const FREQUENT: usize = 50;
/// Features of rank past this, seen in training, counted as rare.
const RARE_FROM: usize = 200;

/// One example: its active features and its label.
struct Example {
    features: [u32; ACTIVE],
    label: f64,
}

/// How one optimizer is stepped.
enum Stepper {
    Sparse(SparseOptimizer),
    Dense(Optimizer),
}

/// One optimizer's run.
#[derive(Clone, Debug)]
pub struct SparseRun {
    /// Name and options.
    pub label: String,
    /// `sparse kernel` or `dense kernel`.
    pub kernel: &'static str,
    /// Held-out loss every 10 steps (step, loss).
    pub losses: Vec<(usize, f64)>,
    /// RMS of `w − w*` over the frequent features.
    pub frequent_error: f64,
    /// RMS of `w − w*` over the rare features seen in training.
    pub rare_error: f64,
}

/// The experiment.
#[derive(Clone, Debug)]
pub struct SparseExperiment {
    /// What was run, for the report.
    pub notes: Vec<String>,
    /// One per optimizer.
    pub runs: Vec<SparseRun>,
    /// Held-out loss of the true weights (the floor) and of zero weights (the start).
    pub floor: f64,
    /// Held-out loss at the start.
    pub start: f64,
}

/// Runs every optimizer on the same seeded data.
pub fn run(gpu: &Gpu, seed: u64) -> Result<SparseExperiment> {
    let mut rng = StdRng::seed_from_u64(seed);
    let truth: Vec<f64> = (0..FEATURES)
        .map(|_| 0.5 * rng.sample::<f64, _>(StandardNormal))
        .collect();
    let cdf = zipf_cdf();
    let example = |rng: &mut StdRng| {
        let mut features = [0u32; ACTIVE];
        for f in &mut features {
            let u: f64 = rng.random();
            *f = cdf.partition_point(|&c| c < u).min(FEATURES - 1) as u32;
        }
        let z: f64 = features.iter().map(|&f| truth[f as usize]).sum();
        let label = if rng.random::<f64>() < sigmoid(z) {
            1.0
        } else {
            0.0
        };
        Example { features, label }
    };
    let held_out: Vec<Example> = (0..HELD_OUT).map(|_| example(&mut rng)).collect();
    let batches: Vec<Vec<Example>> = (0..STEPS)
        .map(|_| (0..BATCH).map(|_| example(&mut rng)).collect())
        .collect();
    let mut seen = vec![false; FEATURES];
    for e in batches.iter().flatten() {
        for &f in &e.features {
            seen[f as usize] = true;
        }
    }
    let rare: Vec<usize> = (RARE_FROM..FEATURES).filter(|&f| seen[f]).collect();
    let truth_f32: Vec<f32> = truth.iter().map(|&w| w as f32).collect();
    let floor = loss(&held_out, &truth_f32);
    let start = loss(&held_out, &vec![0.0; FEATURES]);

    let steppers: Vec<(String, Stepper)> = vec![
        (
            "SGD lr=1".into(),
            Stepper::Dense(
                Sgd {
                    lr: 1.0,
                    ..Sgd::default()
                }
                .into(),
            ),
        ),
        (
            "momentum 0.9, lr=0.1".into(),
            Stepper::Dense(
                Sgd {
                    lr: 0.1,
                    momentum: 0.9,
                    ..Sgd::default()
                }
                .into(),
            ),
        ),
        (
            "Adagrad lr=0.5".into(),
            Stepper::Sparse(SparseOptimizer::Adagrad(Adagrad {
                lr: 0.5,
                ..Adagrad::default()
            })),
        ),
        (
            "RMSprop lr=0.01".into(),
            Stepper::Dense(
                Rmsprop {
                    lr: 0.01,
                    ..Rmsprop::default()
                }
                .into(),
            ),
        ),
        (
            "Adam lr=0.05".into(),
            Stepper::Dense(
                Adam {
                    lr: 0.05,
                    ..Adam::default()
                }
                .into(),
            ),
        ),
        (
            "SparseAdam lr=0.05".into(),
            Stepper::Sparse(
                SparseAdam {
                    lr: 0.05,
                    ..SparseAdam::default()
                }
                .into(),
            ),
        ),
    ];
    let mut runs = Vec::new();
    for (label, stepper) in steppers {
        let (kernel, losses, w) = train(gpu, &stepper, &batches, &held_out)?;
        let rms = |set: &mut dyn Iterator<Item = usize>| {
            let (sum, n) = set.fold((0.0, 0usize), |(s, n), f| {
                (s + (f64::from(w[f]) - truth[f]).powi(2), n + 1)
            });
            (sum / n.max(1) as f64).sqrt()
        };
        runs.push(SparseRun {
            label,
            kernel,
            losses,
            frequent_error: rms(&mut (0..FREQUENT)),
            rare_error: rms(&mut rare.iter().copied()),
        });
    }
    let notes = vec![
        format!(
            "logistic regression on {FEATURES} binary features, {ACTIVE} active per example, \
             drawn by a Zipf law of exponent {ZIPF} (feature 0 in {:.0}% of examples, {} of \
             the features in none of the {} training examples); true weights w* from \
             N(0, 0.25), labels drawn from σ(x·w*)",
            100.0 * (1.0 - (1.0 - cdf[0]).powi(ACTIVE as i32)),
            seen.iter().filter(|s| !**s).count(),
            STEPS * BATCH
        ),
        format!(
            "{STEPS} steps of {BATCH} examples ({} lookups per step, duplicates summed); loss \
             on {HELD_OUT} held-out examples, from {} (zero weights) to the true weights' {}",
            BATCH * ACTIVE,
            report::sig(start),
            report::sig(floor)
        ),
        format!(
            "weight error: RMS of w − w* over the {FREQUENT} most frequent features and over \
             the {} features of rank {RARE_FROM} or more seen in training",
            rare.len()
        ),
    ];
    Ok(SparseExperiment {
        notes,
        runs,
        floor,
        start,
    })
}

/// The kernel a run used, its held-out losses (step, loss) and its final weights.
type Trained = (&'static str, Vec<(usize, f64)>, Vec<f32>);

/// Trains from zero weights.
fn train(
    gpu: &Gpu,
    stepper: &Stepper,
    batches: &[Vec<Example>],
    held_out: &[Example],
) -> Result<Trained> {
    let lookups = BATCH * ACTIVE;
    let table = gpu.zeros("demo/sparse weights", FEATURES)?;
    let indices = gpu.zeros("demo/sparse indices", lookups)?;
    let values = gpu.zeros("demo/sparse values", lookups)?;
    let dense_grad = gpu.zeros("demo/sparse dense gradient", FEATURES)?;
    enum Running {
        Sparse(SparseGpuOptimizer),
        Dense(GpuOptimizer),
    }
    let (kernel, mut running) = match stepper {
        Stepper::Sparse(config) => (
            "sparse kernel",
            Running::Sparse(SparseGpuOptimizer::new(
                gpu,
                config.clone(),
                &table,
                1,
                &indices,
                &values,
            )?),
        ),
        Stepper::Dense(config) => (
            "dense kernel",
            Running::Dense(GpuOptimizer::new(gpu, config.clone(), &table, &dense_grad)?),
        ),
    };
    let mut w = vec![0.0f32; FEATURES];
    let mut losses = vec![(0, loss(held_out, &w))];
    for (t, batch) in batches.iter().enumerate() {
        let mut idx = Vec::with_capacity(lookups);
        let mut vals = Vec::with_capacity(lookups);
        for e in batch {
            let z: f64 = e.features.iter().map(|&f| f64::from(w[f as usize])).sum();
            let g = ((sigmoid(z) - e.label) / BATCH as f64) as f32;
            for &f in &e.features {
                idx.push(f);
                vals.push(g);
            }
        }
        match &mut running {
            Running::Sparse(opt) => {
                gpu.queue()
                    .write_buffer(&indices, 0, bytemuck::cast_slice(&idx));
                gpu.write(&values, 0, &vals)?;
                opt.step(gpu, lookups)?;
                w = opt.read_table(gpu)?;
            }
            Running::Dense(opt) => {
                let mut dense = vec![0.0f32; FEATURES];
                for (&f, &g) in idx.iter().zip(&vals) {
                    dense[f as usize] += g;
                }
                gpu.write(&dense_grad, 0, &dense)?;
                opt.step(gpu)?;
                w = opt.read_params(gpu)?;
            }
        }
        if (t + 1) % 10 == 0 {
            losses.push((t + 1, loss(held_out, &w)));
        }
    }
    Ok((kernel, losses, w))
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Mean logistic loss of `w` on `examples`, in f64.
fn loss(examples: &[Example], w: &[f32]) -> f64 {
    let total: f64 = examples
        .iter()
        .map(|e| {
            let z: f64 = e.features.iter().map(|&f| f64::from(w[f as usize])).sum();
            // log(1 + e^-z) for label 1, log(1 + e^z) for label 0, stably.
            let s = if e.label > 0.5 { -z } else { z };
            s.max(0.0) + (-s.abs()).exp().ln_1p()
        })
        .sum();
    total / examples.len() as f64
}

/// The cumulative distribution of feature ranks under the Zipf law.
fn zipf_cdf() -> Vec<f64> {
    let weights: Vec<f64> = (1..=FEATURES).map(|r| (r as f64).powf(-ZIPF)).collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect()
}

/// The experiment as a text table (stdout) or Markdown.
pub fn table(experiment: &SparseExperiment, markdown: bool) -> String {
    let header = [
        "optimizer",
        "kernel",
        "held-out loss",
        "error, frequent",
        "error, rare",
        "rare / frequent",
    ];
    let rows: Vec<Vec<String>> = experiment
        .runs
        .iter()
        .map(|run| {
            let last = run.losses.last().map_or(f64::NAN, |l| l.1);
            vec![
                run.label.clone(),
                run.kernel.to_string(),
                format!("{last:.4}"),
                format!("{:.3}", run.frequent_error),
                format!("{:.3}", run.rare_error),
                format!("{:.1}", run.rare_error / run.frequent_error),
            ]
        })
        .collect();
    report::table(&header, &rows, markdown)
}

/// What the table shows, measured: which optimizer got the rare features closest, and the
/// lowest held-out loss.
pub fn findings(experiment: &SparseExperiment) -> Vec<String> {
    let best = |key: &dyn Fn(&SparseRun) -> f64| {
        experiment
            .runs
            .iter()
            .min_by(|a, b| key(a).total_cmp(&key(b)))
            .map(|r| r.label.clone())
            .unwrap_or_default()
    };
    let final_loss = |r: &SparseRun| r.losses.last().map_or(f64::INFINITY, |l| l.1);
    let sgd_rare = experiment.runs.first().map_or(f64::NAN, |r| r.rare_error);
    let adagrad_rare = experiment
        .runs
        .iter()
        .find(|r| r.label.starts_with("Adagrad"))
        .map_or(f64::NAN, |r| r.rare_error);
    vec![
        format!(
            "Lowest held-out loss: {}; closest on the rare features: {}; closest on the \
             frequent ones: {}.",
            best(&final_loss),
            best(&|r| r.rare_error),
            best(&|r| r.frequent_error)
        ),
        format!(
            "On the rare features Adagrad's error is {:.2}× SGD's ({} against {}): {}",
            adagrad_rare / sgd_rare,
            report::sig(adagrad_rare),
            report::sig(sgd_rare),
            if adagrad_rare < sgd_rare {
                "the notes' claim holds here, since a rare feature's accumulator stays small and \
                 its steps large."
            } else {
                "the notes' claim does not hold in this run."
            }
        ),
    ]
}

/// The chart's file name in the output folder.
pub const CHART: &str = "loss-sparse-features.svg";

/// The experiment's part of the report.
pub(crate) fn section(experiment: &SparseExperiment) -> report::Section<'_> {
    report::Section {
        title: "(c) Sparse features: Zipf-distributed features, row-sparse kernels".into(),
        notes: &experiment.notes,
        table: Box::new(move |markdown| table(experiment, markdown)),
        findings: findings(experiment),
        charts: vec![("Sparse features", CHART)],
    }
}

/// The held-out loss of every run against the step, with the true weights' floor.
pub fn chart(path: &Path, experiment: &SparseExperiment) -> Result<()> {
    let fail = |e: &dyn std::fmt::Display| Error::Chart {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let top = experiment.start * 1.05;
    let bottom = experiment.floor * 0.95;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Sparse features: held-out logistic loss against step",
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..STEPS as f64, bottom..top)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("held-out loss")
        .draw()
        .map_err(|e| fail(&e))?;
    for (k, run) in experiment.runs.iter().enumerate() {
        let color = crate::chart::PALETTE[k % crate::chart::PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                run.losses.iter().map(|&(t, l)| (t as f64, l)),
                color.stroke_width(2),
            ))
            .map_err(|e| fail(&e))?
            .label(format!("{} ({})", run.label, run.kernel))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, experiment.floor), (STEPS as f64, experiment.floor)],
            3,
            4,
            BLACK.stroke_width(1),
        ))
        .map_err(|e| fail(&e))?
        .label("true weights")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK));
    super::plot::legend(&mut chart, SeriesLabelPosition::UpperRight, 13).map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))
}
