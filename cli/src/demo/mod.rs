//! `fusedopt demo`: the lecture notes' optimizer experiments, run through fusedopt's own GPU
//! kernels, with tables on stdout and, on request, SVG charts and a `demo.md` summary.
//!
//! - **(a) Imbalanced quadratic** `L(x) = ½ xᵀ H_β x`, `H_β = D_β H D_β`, `[D_β]_ii = β^(i-1)`,
//!   `H ≈ I` ([`Quadratic::imbalanced`]), for `n = 4` and a larger `n`. Gradient descent with
//!   `α = 1/λ₁` needs about `κ(H_β) ≈ β^(-2(n-1))` iterations; the notes predict that Adagrad,
//!   whose per-coordinate step undoes part of the scaling, is faster by about `(1/β)^(n-1)`.
//! - **(b) The valley** `f(x) = 0.1 x₁² + 2 x₂²` ([`Quadratic::valley`]): gradient descent with
//!   η = 0.4 crawls along x₁, with η = 0.6 it diverges along x₂; momentum, Nesterov and the
//!   adaptive methods for comparison.
//! - **(c) Sparse features** ([`sparse`]): logistic regression on Zipf-distributed features
//!   through the row-sparse kernels.
//! - **(d) The saddle** `f(x, y) = x² − y²` ([`saddle`]): seven optimizers from starts close to
//!   the ridge, and the iterations each needs to escape.
//! - **(e) Adam's bias correction** ([`bias`]): a constant gradient, and the moments the GPU
//!   keeps against `m_k = (1 − β1^k)·G`.
//!
//! Every update is a fusedopt kernel ([`GpuOptimizer`](fusedopt::GpuOptimizer)); gradients come
//! from the demo's own small WGSL kernel (`quadratic_grad.wgsl`) recorded before each step, 64
//! iterations per submission, and the iterates are read back in bulk; losses are evaluated on
//! the CPU in f64.
//!
//! Gradient descent on a quadratic is linear, `x_k = (I − αA)^k x0`. Where it needs more than
//! [`DemoOptions::max_iterations`], its GPU run is checked against the exact f64 iteration
//! ([`ExactGd`], [`ExactCheck`]) and the iteration that reaches the tolerance is then computed
//! from the closed form, and reported as computed ([`Iterations::Computed`]). The other
//! optimizers are nonlinear (or, for momentum, not monotone): what they do not reach within the
//! cap is reported as not reached, never extrapolated.

pub mod bias;
mod plot;
mod quadratic;
mod report;
mod runner;
pub mod saddle;
pub mod sparse;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use quadratic::{Eigen, ExactCheck, ExactGd, Quadratic, check_against_exact};

use crate::{Error, Result};
use fusedopt::Gpu;
use fusedopt::{Adadelta, Adagrad, Adam, Optimizer, Rmsprop, Schedule, Sgd};
use runner::{GradientKernel, Limits, Stop};

/// What [`run`] does. The [`Default`] is the full demo (about half a minute in a release build
/// on Mesa's lavapipe with two CPU cores).
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Where to write the SVG charts and `demo.md`; nothing is written without it.
    pub out: Option<PathBuf>,
    /// Most iterations any optimizer runs on the GPU (at most [`MAX_ITERATIONS_LIMIT`]). The
    /// default, 20,000, takes about 3 s per run that goes the distance on lavapipe; beyond it
    /// nothing changes in the conclusions: the runs still going would need ~10⁶ or never end.
    pub max_iterations: u64,
    /// The larger dimension of experiment (a), besides n = 4.
    pub large_n: usize,
    /// The scaling β of experiment (a).
    pub beta: f64,
    /// An optimizer has converged once `L(x_k) <= relative_tolerance · L(x_0)`.
    pub relative_tolerance: f64,
    /// Seed of the perturbation `H − I` in experiment (a) (the default, 1, gives κ(H) = 1.10
    /// for n = 4).
    pub seed: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            out: None,
            max_iterations: 20_000,
            large_n: 6,
            beta: 0.1,
            relative_tolerance: 1e-8,
            seed: 1,
        }
    }
}

/// How many iterations an optimizer needed to reach the tolerance, and how that is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Iterations {
    /// Observed in the GPU run: the first iterate within the tolerance.
    Measured(u64),
    /// Computed in exact arithmetic from gradient descent's closed form, after the GPU run
    /// agreed with the exact iteration over the iterations it ran.
    Computed(u64),
    /// Not within the tolerance after this many iterations (the cap, or where it diverged).
    NotReached(u64),
}

impl Iterations {
    /// The number of iterations, if the tolerance was reached (measured or computed).
    pub fn count(self) -> Option<u64> {
        match self {
            Self::Measured(k) | Self::Computed(k) => Some(k),
            Self::NotReached(_) => None,
        }
    }

    /// Whether the number is computed rather than measured.
    pub fn is_computed(self) -> bool {
        matches!(self, Self::Computed(_))
    }
}

/// One point of a run, kept for the report and the charts.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Iterations done.
    pub iteration: u64,
    /// `L(x_k)`, in f64 from the GPU's f32 iterate.
    pub loss: f64,
    /// The iterate `x_k` as the GPU computed it.
    pub x: Vec<f64>,
}

/// The exact-arithmetic view of a gradient-descent run.
#[derive(Clone, Debug, PartialEq)]
pub struct ExactSummary {
    /// The GPU run against the exact f64 iteration.
    pub check: ExactCheck,
    /// The first iteration within the tolerance in exact arithmetic (`None`: never).
    pub iterations: Option<u64>,
    /// Whether the slowest direction's factor `1 − αλ_min` rounds to 1 in f32, so that an f32
    /// run stalls there and only exact arithmetic gets to the tolerance.
    pub stalls_in_f32: bool,
    /// `L(x_k)` from the closed form, from the end of the GPU run to `iterations` (log-spaced).
    pub continuation: Vec<(u64, f64)>,
}

/// One optimizer on one problem.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// Name in the tables (`GD`, `Adagrad`, `GD η=0.6`, ...).
    pub label: String,
    /// The configuration the GPU ran.
    pub config: Optimizer,
    /// Iterations to the tolerance.
    pub iterations: Iterations,
    /// Iterations the GPU ran (up to the tolerance, the divergence, or the cap).
    pub iterations_run: u64,
    /// `L(x_k)` at the last iterate run.
    pub final_loss: f64,
    /// Whether the loss blew up (past `1e10·L(x_0)`, or not finite).
    pub diverged: bool,
    /// For gradient descent: the comparison with exact arithmetic.
    pub exact: Option<ExactSummary>,
    /// For Adagrad: its per-coordinate step `lr / (√s_i + eps)` at the last iterate counted,
    /// with the accumulator `s` rebuilt in f64 from the trajectory. It shows how much of the
    /// scaling Adagrad undid, which decides its speed-up.
    pub effective_steps: Option<Vec<f64>>,
    /// The run, subsampled: every early iterate, then log- and evenly spaced ones, and the last.
    pub samples: Vec<Sample>,
    /// Wall time of the GPU run.
    pub elapsed: Duration,
}

/// One experiment: a problem, a tolerance, and the optimizers run on it.
#[derive(Clone, Debug)]
pub struct Experiment {
    /// Short name, also the stem of its chart files (`imbalanced-n4`, `valley`).
    pub key: String,
    /// Title for tables and charts.
    pub title: String,
    /// The quadratic.
    pub problem: Quadratic,
    /// Its spectrum.
    pub eigen: Eigen,
    /// `L(x_0)`.
    pub initial_loss: f64,
    /// The loss to reach: `relative_tolerance · L(x_0)`.
    pub tolerance: f64,
    /// The iteration cap of the GPU runs.
    pub max_iterations: u64,
    /// For (a): the notes' predicted Adagrad speed-up over gradient descent, `(1/β)^(n-1)`.
    pub predicted_speedup: Option<f64>,
    /// Why the problem, start, tolerance and hyperparameters are what they are.
    pub notes: Vec<String>,
    /// One per optimizer, in table order.
    pub runs: Vec<RunReport>,
}

impl Experiment {
    /// The run labelled `label`.
    pub fn run(&self, label: &str) -> Option<&RunReport> {
        self.runs.iter().find(|r| r.label == label)
    }

    /// How many times fewer iterations `fast` needed than `slow`, when both reached the
    /// tolerance.
    pub fn speedup(&self, fast: &str, slow: &str) -> Option<f64> {
        let fast = self.run(fast)?.iterations.count()?;
        let slow = self.run(slow)?.iterations.count()?;
        Some(slow as f64 / fast.max(1) as f64)
    }
}

/// Everything [`run`] found.
#[derive(Clone, Debug)]
pub struct DemoReport {
    /// The adapter the kernels ran on.
    pub adapter: String,
    /// (a) for n = 4 and `large_n`, then (b).
    pub experiments: Vec<Experiment>,
    /// (c) sparse features through the row-sparse kernels.
    pub sparse: sparse::SparseExperiment,
    /// (d) the saddle.
    pub saddle: saddle::SaddleExperiment,
    /// (e) Adam's bias correction.
    pub bias: bias::BiasExperiment,
    /// Files written under [`DemoOptions::out`].
    pub files: Vec<PathBuf>,
    /// Wall time of the experiments (without writing the files).
    pub elapsed: Duration,
}

impl DemoReport {
    /// The experiment called `key`.
    pub fn experiment(&self, key: &str) -> Option<&Experiment> {
        self.experiments.iter().find(|e| e.key == key)
    }
}

/// Runs the experiments on `gpu`, prints a table per experiment to stdout as it completes, and
/// writes the charts and `demo.md` when [`DemoOptions::out`] is set.
pub fn run(gpu: &Gpu, options: &DemoOptions) -> Result<DemoReport> {
    let started = Instant::now();
    validate(options)?;
    let kernel = GradientKernel::build(gpu)?;
    let adapter = fusedopt::gpu::describe_adapter(gpu.adapter_info());
    println!("fusedopt demo on {adapter}");
    println!(
        "every update is a fusedopt GPU kernel; gradients come from shaders/quadratic_grad.wgsl; \
         losses are evaluated in f64 on the CPU"
    );
    let mut dims = vec![4];
    if options.large_n != 4 {
        dims.push(options.large_n);
    }
    let mut experiments = Vec::new();
    for n in dims {
        let experiment = imbalanced(gpu, &kernel, options, n)?;
        println!("\n{}", report::text(&experiment));
        experiments.push(experiment);
    }
    let experiment = valley(gpu, &kernel, options)?;
    println!("\n{}", report::text(&experiment));
    experiments.push(experiment);

    let sparse = sparse::run(gpu, options.seed)?;
    print!("{}", sparse::section(&sparse).text());
    let saddle = saddle::run(gpu, &kernel, options.max_iterations)?;
    print!("{}", saddle::section(&saddle).text());
    let bias = bias::run(gpu)?;
    print!("{}", bias::section(&bias).text());

    let mut report = DemoReport {
        adapter,
        experiments,
        sparse,
        saddle,
        bias,
        files: Vec::new(),
        elapsed: started.elapsed(),
    };
    if let Some(dir) = &options.out {
        report.files = write_files(dir, &report)?;
        println!();
        for file in &report.files {
            println!("wrote {}", file.display());
        }
    }
    println!("\ndemo took {:.1} s", started.elapsed().as_secs_f64());
    Ok(report)
}

fn validate(options: &DemoOptions) -> Result<()> {
    let fail = |message: String| Err(Error::Demo(message));
    // The entries of A go down to β^(2(n-1)) and x0 up to β^(1-n): both must stay normal f32
    // values, with room for the tolerance.
    if !(2..=12).contains(&options.large_n) {
        return fail(format!(
            "large_n must be in 2..=12, got {}",
            options.large_n
        ));
    }
    if !(options.beta >= 0.05 && options.beta <= 1.0) {
        return fail(format!("beta must be in [0.05, 1], got {}", options.beta));
    }
    if !(options.relative_tolerance > 0.0 && options.relative_tolerance < 1.0) {
        return fail(format!(
            "relative_tolerance must be in (0, 1), got {}",
            options.relative_tolerance
        ));
    }
    // Every iterate of a run is kept for the exact check and the charts.
    if !(1..=MAX_ITERATIONS_LIMIT).contains(&options.max_iterations) {
        return fail(format!(
            "max_iterations must be in 1..={MAX_ITERATIONS_LIMIT}, got {}",
            options.max_iterations
        ));
    }
    Ok(())
}

/// Most iterations a run may take: its iterates are kept in memory (`4·n` bytes each).
pub const MAX_ITERATIONS_LIMIT: u64 = 10_000_000;

/// A run is called diverged once its loss exceeds this multiple of `L(x_0)`, well before f32
/// overflows.
const DIVERGENCE_FACTOR: f64 = 1e10;

/// One entry of an experiment's table.
struct Entry {
    label: String,
    config: Optimizer,
    /// The learning rate's schedule, from the configured rate; constant without one.
    schedule: Option<Schedule>,
}

impl Entry {
    fn new(label: impl Into<String>, config: impl Into<Optimizer>) -> Self {
        Self {
            label: label.into(),
            config: config.into(),
            schedule: None,
        }
    }

    /// The same entry with its rate annealed by `schedule`.
    fn annealed(
        label: impl Into<String>,
        config: impl Into<Optimizer>,
        schedule: Schedule,
    ) -> Self {
        Self {
            schedule: Some(schedule),
            ..Self::new(label, config)
        }
    }
}

/// Whether `config` is plain gradient descent, whose iteration is linear and monotone.
fn is_plain_gd(config: &Optimizer) -> bool {
    matches!(config, Optimizer::Sgd(c) if c.momentum == 0.0 && c.weight_decay == 0.0 && !c.maximize)
}

/// Experiment (a) for dimension `n`.
fn imbalanced(
    gpu: &Gpu,
    kernel: &GradientKernel,
    options: &DemoOptions,
    n: usize,
) -> Result<Experiment> {
    let beta = options.beta;
    let problem = Quadratic::imbalanced(n, beta, options.seed)?;
    let eigen = problem.eigen();
    let lambda_max = eigen.values[n - 1];
    // The step is rounded to f32 once, as the kernel receives it, and the exact computations
    // use the rounded value, so both run the same iteration.
    let alpha = f64::from((1.0 / lambda_max) as f32);
    let reach = problem.start().iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let adagrad_lr = f64::from((reach / 2f64.sqrt()) as f32);
    let adam_lr = f64::from((reach * 1e-3) as f32);
    let entries = vec![
        Entry::new(
            "GD",
            Sgd {
                lr: alpha,
                ..Sgd::default()
            },
        ),
        Entry::new(
            "momentum",
            Sgd {
                lr: alpha,
                momentum: 0.9,
                ..Sgd::default()
            },
        ),
        Entry::new(
            "Nesterov",
            Sgd {
                lr: alpha,
                momentum: 0.9,
                nesterov: true,
                ..Sgd::default()
            },
        ),
        Entry::new(
            "Adagrad",
            Adagrad {
                lr: adagrad_lr,
                ..Adagrad::default()
            },
        ),
        Entry::new("RMSprop", Rmsprop::default()),
        Entry::new("Adadelta", Adadelta::default()),
        Entry::new(
            "Adam",
            Adam {
                lr: adam_lr,
                ..Adam::default()
            },
        ),
    ];
    let h_spread = 0.1 / (n - 1) as f64;
    let d: Vec<f64> = (0..n).map(|i| beta.powi(i as i32)).collect();
    let h: Vec<f64> = (0..n * n)
        .map(|k| problem.matrix()[k] / (d[k / n] * d[k % n]))
        .collect();
    let kappa_h = quadratic::symmetric_eigen(&h, n).condition_number();
    let start: Vec<String> = problem.start().iter().map(|v| report::sig(*v)).collect();
    let notes = vec![
        format!(
            "H = I + E, E symmetric with zero diagonal and entries uniform in ±{} (StdRng seed {}): \
             κ(H) = {} (≤ 11/9 by Gershgorin); A = D H D with D = diag(1, β, …, β^{}), β = {beta}",
            report::sig(h_spread),
            options.seed,
            report::sig(kappa_h),
            n - 1
        ),
        format!(
            "λ(A) from {} to {}, κ(A) = {}",
            report::sci(eigen.values[0]),
            report::sci(lambda_max),
            report::sci(eigen.condition_number())
        ),
        format!(
            "start x0 = D⁻¹·1 = ({}): each coordinate holds ½ of L(x0), the slowest direction as \
             much as the fastest, so reaching a small relative loss measures asymptotic rates",
            start.join(", ")
        ),
        format!(
            "GD, momentum, Nesterov: lr = 1/λ₁ = {} (rounded to f32); momentum 0.9",
            report::sig(alpha)
        ),
        format!(
            "Adagrad: lr = D∞/√2 = {} with D∞ = ‖x0 − x*‖∞ = {} (Duchi et al. 2011's choice); \
             Adam: lr = 1e-3·D∞ (steps are about lr per coordinate); RMSprop and Adadelta: \
             PyTorch defaults (a constant-lr RMSprop ends oscillating at a loss set by its lr)",
            report::sig(adagrad_lr),
            report::sig(reach)
        ),
    ];
    run_experiment(
        gpu,
        kernel,
        options,
        Experiment {
            key: format!("imbalanced-n{n}"),
            title: format!("(a) imbalanced quadratic, n = {n}, β = {beta}"),
            initial_loss: problem.loss(problem.start()),
            tolerance: 0.0,
            max_iterations: options.max_iterations,
            predicted_speedup: Some((1.0 / beta).powi(n as i32 - 1)),
            notes,
            runs: Vec::new(),
            eigen,
            problem,
        },
        entries,
    )
}

/// Experiment (b).
fn valley(gpu: &Gpu, kernel: &GradientKernel, options: &DemoOptions) -> Result<Experiment> {
    let problem = Quadratic::valley();
    let sgd = |lr: f64, momentum: f64, nesterov: bool| Sgd {
        lr,
        momentum,
        nesterov,
        ..Sgd::default()
    };
    let reach = 5.0f64;
    let adagrad_lr = f64::from((reach / 2f64.sqrt()) as f32);
    let entries = vec![
        Entry::new("GD η=0.4", sgd(0.4, 0.0, false)),
        Entry::new("GD η=0.6", sgd(0.6, 0.0, false)),
        Entry::new("momentum", sgd(0.6, 0.5, false)),
        Entry::new("Nesterov", sgd(0.3, 0.5, true)),
        Entry::new(
            "Adagrad",
            Adagrad {
                lr: adagrad_lr,
                ..Adagrad::default()
            },
        ),
        Entry::new(
            "RMSprop",
            Rmsprop {
                lr: 0.4,
                alpha: 0.9,
                ..Rmsprop::default()
            },
        ),
        Entry::new(
            "Adadelta",
            Adadelta {
                rho: 0.9,
                ..Adadelta::default()
            },
        ),
        Entry::new(
            "Adam",
            Adam {
                lr: 0.5,
                ..Adam::default()
            },
        ),
        // The notes' advice where the loss stops falling: anneal the rate.
        Entry::annealed(
            "Adam γ=0.98",
            Adam {
                lr: 0.5,
                ..Adam::default()
            },
            Schedule::Exponential { gamma: 0.98 },
        ),
    ];
    let notes = vec![
        "f(x) = 0.1 x₁² + 2 x₂² (A = diag(0.2, 4), κ = 20) from x0 = (-5, -2), as in Dive into \
         Deep Learning's optimization chapter"
            .to_string(),
        "GD: η = 0.4 contracts x₁ by 0.92 per step (slow), η = 0.6 multiplies x₂ by -1.4 \
         (diverges)"
            .to_string(),
        "momentum 0.5 with η = 0.6 is stable (ηλ < 2(1 + μ)); PyTorch's Nesterov form needs \
         ηλ < 2(1 + μ)/(1 + 2μ) = 1.5, so it runs at η = 0.3"
            .to_string(),
        format!(
            "Adagrad: lr = D∞/√2 = {} (D∞ = 5); RMSprop: η = 0.4, α = 0.9; Adadelta: ρ = 0.9; \
             Adam: lr = 0.5",
            report::sig(adagrad_lr)
        ),
        "Adam γ=0.98: the same Adam with its rate annealed, ExponentialLR(γ = 0.98) through \
         fusedopt's Scheduler (0.5·0.98^k at step k): the constant rate circles the minimum at a \
         distance its size sets, the annealed one settles"
            .to_string(),
    ];
    run_experiment(
        gpu,
        kernel,
        options,
        Experiment {
            key: "valley".into(),
            title: "(b) valley f(x) = 0.1 x₁² + 2 x₂²".into(),
            initial_loss: problem.loss(problem.start()),
            tolerance: 0.0,
            max_iterations: options.max_iterations,
            predicted_speedup: None,
            notes,
            runs: Vec::new(),
            eigen: problem.eigen(),
            problem,
        },
        entries,
    )
}

/// Runs every entry on the experiment's problem and fills in its runs.
fn run_experiment(
    gpu: &Gpu,
    kernel: &GradientKernel,
    options: &DemoOptions,
    mut experiment: Experiment,
    entries: Vec<Entry>,
) -> Result<Experiment> {
    experiment.tolerance = options.relative_tolerance * experiment.initial_loss;
    experiment.notes.push(format!(
        "tolerance: L ≤ {}·L(x0) = {}; a run is diverged past {}·L(x0)",
        report::sci(options.relative_tolerance),
        report::sci(experiment.tolerance),
        report::sci(DIVERGENCE_FACTOR)
    ));
    let limits = Limits {
        max_iterations: options.max_iterations,
        tolerance: experiment.tolerance,
        divergence: DIVERGENCE_FACTOR * experiment.initial_loss,
    };
    for entry in entries {
        let started = Instant::now();
        let trajectory = runner::run(
            gpu,
            kernel,
            &experiment.problem,
            &entry.config,
            entry.schedule.as_ref(),
            &limits,
        )?;
        let elapsed = started.elapsed();
        let k = trajectory.iterations();
        let exact = is_plain_gd(&entry.config)
            .then(|| exact_summary(&experiment, &entry.config, &trajectory, &limits));
        let iterations = match (trajectory.stop, &exact) {
            (Stop::Reached, _) => Iterations::Measured(k),
            (Stop::Cap, Some(exact)) if exact.check.passed() => match exact.iterations {
                Some(j) => Iterations::Computed(j),
                None => Iterations::NotReached(k),
            },
            _ => Iterations::NotReached(k),
        };
        let effective_steps = match &entry.config {
            Optimizer::Adagrad(c) => Some(adagrad_steps(&experiment.problem, c, &trajectory)),
            _ => None,
        };
        experiment.runs.push(RunReport {
            label: entry.label,
            config: entry.config,
            iterations,
            iterations_run: k,
            final_loss: trajectory.losses[k as usize],
            diverged: trajectory.stop == Stop::Diverged,
            exact,
            effective_steps,
            samples: samples(&trajectory, experiment.problem.dim()),
            elapsed,
        });
    }
    Ok(experiment)
}

/// Adagrad's per-coordinate step `clr / (√s_i + eps)` after the counted iterations, replaying
/// its accumulator `s_i = initial + Σ g_i²` in f64 over the GPU's iterates (plain Adagrad:
/// options that change the gradient or the rate are not replayed, and give `NaN`).
fn adagrad_steps(
    problem: &Quadratic,
    config: &Adagrad,
    trajectory: &runner::Trajectory,
) -> Vec<f64> {
    let n = problem.dim();
    let plain = config.lr_decay == 0.0 && config.weight_decay == 0.0 && !config.maximize;
    if !plain {
        return vec![f64::NAN; n];
    }
    let mut sums = vec![config.initial_accumulator_value; n];
    for x in trajectory
        .rows
        .chunks_exact(n)
        .take(trajectory.iterations() as usize)
    {
        let x: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        for (s, g) in sums.iter_mut().zip(problem.gradient(&x)) {
            *s += g * g;
        }
    }
    sums.iter()
        .map(|s| {
            let denominator = if config.eps_in_sqrt {
                (s + config.eps).sqrt()
            } else {
                s.sqrt() + config.eps
            };
            config.lr / denominator
        })
        .collect()
}

/// Checks a gradient-descent run against exact arithmetic and computes where exact arithmetic
/// reaches the tolerance.
fn exact_summary(
    experiment: &Experiment,
    config: &Optimizer,
    trajectory: &runner::Trajectory,
    limits: &Limits,
) -> ExactSummary {
    let exact = ExactGd::new(&experiment.problem, config.lr());
    let check = check_against_exact(&exact, &trajectory.rows);
    let iterations = exact.first_reaching(limits.tolerance);
    let ran = trajectory.iterations();
    let continuation = match iterations {
        Some(end) if end > ran => log_spaced(ran.max(1), end, 120)
            .into_iter()
            .map(|k| (k, exact.loss_at(k)))
            .collect(),
        _ => Vec::new(),
    };
    let slowest = exact.eigen().values[0] * exact.alpha();
    ExactSummary {
        check,
        iterations,
        stalls_in_f32: 1.0f32 - slowest as f32 == 1.0f32,
        continuation,
    }
}

/// About `count` integers from `from` to `to` (both included), evenly spaced in log scale.
fn log_spaced(from: u64, to: u64, count: usize) -> Vec<u64> {
    let (a, b) = ((from as f64).ln(), (to as f64).ln());
    let mut out: Vec<u64> = (0..=count)
        .map(|i| (a + (b - a) * i as f64 / count as f64).exp().round() as u64)
        .map(|k| k.clamp(from, to))
        .collect();
    out.dedup();
    out
}

/// Iterates kept in the report: all of the first [`SAMPLES_DENSE`], then log-spaced and
/// evenly spaced ones (so that both log- and linear-axis charts look right), and the last.
fn samples(trajectory: &runner::Trajectory, n: usize) -> Vec<Sample> {
    let last = trajectory.iterations();
    let mut keep: Vec<u64> = (0..=last.min(SAMPLES_DENSE)).collect();
    if last > SAMPLES_DENSE {
        keep.extend(log_spaced(SAMPLES_DENSE, last, 200));
        keep.extend((1..=200).map(|i| last * i / 200));
    }
    keep.sort_unstable();
    keep.dedup();
    keep.into_iter()
        .map(|k| Sample {
            iteration: k,
            loss: trajectory.losses[k as usize],
            x: trajectory.rows[k as usize * n..(k as usize + 1) * n]
                .iter()
                .map(|&v| f64::from(v))
                .collect(),
        })
        .collect()
}

/// Iterates kept one by one at the start of a run, where paths turn fastest.
const SAMPLES_DENSE: u64 = 200;

/// Writes the charts and `demo.md` into `dir`; returns the paths written.
fn write_files(dir: &std::path::Path, report: &DemoReport) -> Result<Vec<PathBuf>> {
    let io = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| Error::from(fusedopt::Error::Io { path, source })
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut files = Vec::new();
    let mut charts = Vec::new();
    for experiment in &report.experiments {
        let mut mine = Vec::new();
        let path = dir.join(format!("loss-{}.svg", experiment.key));
        plot::loss_chart(&path, experiment)?;
        mine.push(path);
        if experiment.problem.dim() == 2 {
            let path = dir.join(format!("paths-{}.svg", experiment.key));
            plot::path_chart(&path, experiment)?;
            mine.push(path);
        }
        files.extend(mine.iter().cloned());
        charts.push(mine);
    }
    sparse::chart(&dir.join(sparse::CHART), &report.sparse)?;
    saddle::path_chart(&dir.join(saddle::PATHS_CHART), &report.saddle)?;
    saddle::escape_chart(&dir.join(saddle::ESCAPE_CHART), &report.saddle)?;
    bias::chart(&dir.join(bias::CHART), &report.bias)?;
    let sections = [
        sparse::section(&report.sparse),
        saddle::section(&report.saddle),
        bias::section(&report.bias),
    ];
    let path = dir.join("demo.md");
    let mut text = report::markdown(report, &charts);
    for section in &sections {
        text.push_str(&section.markdown());
        files.extend(section.charts.iter().map(|(_, file)| dir.join(file)));
    }
    std::fs::write(&path, text).map_err(io(&path))?;
    files.push(path);
    Ok(files)
}
