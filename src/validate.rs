//! GPU against CPU: every optimizer under every option combination, on seeded random data,
//! comparing the parameters and all of the optimizer state after every step.

use ndarray::{ArrayView1, ArrayViewMut1};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use crate::Result;
use crate::compare::{ErrorStats, Tolerance};
use crate::gpu::{BufferSet, Gpu, GpuOptimizer};
use crate::optim::{Adadelta, Adagrad, Adam, Optimizer, Rmsprop, Sgd};
use crate::reference::{CpuOptimizer, Execution};

/// Every option combination that changes the arithmetic, for the optimizer called `name`,
/// with hyperparameters away from zero so that every term contributes.
pub fn variants(name: &str) -> Result<Vec<Optimizer>> {
    let bools = [false, true];
    let mut out: Vec<Optimizer> = Vec::new();
    match Optimizer::default_for(name)? {
        Optimizer::Sgd(_) => {
            for (momentum, dampening, nesterov) in [
                (0.0, 0.0, false),
                (0.9, 0.0, false),
                (0.9, 0.1, false),
                (0.9, 0.0, true),
            ] {
                for (weight_decay, maximize) in pairs([0.0, 1e-2], bools) {
                    let c = Sgd {
                        lr: 1e-2,
                        momentum,
                        dampening,
                        nesterov,
                        weight_decay,
                        maximize,
                    };
                    out.push(c.into());
                }
            }
        }
        Optimizer::Adagrad(_) => {
            for (lr_decay, initial_accumulator_value) in pairs([0.0, 1e-2], [0.0, 0.1]) {
                for (eps_in_sqrt, (weight_decay, maximize)) in
                    pairs(bools, pairs([0.0, 1e-2], bools))
                {
                    let c = Adagrad {
                        lr: 1e-1,
                        lr_decay,
                        initial_accumulator_value,
                        eps_in_sqrt,
                        weight_decay,
                        maximize,
                        ..Adagrad::default()
                    };
                    out.push(c.into());
                }
            }
        }
        Optimizer::Rmsprop(_) => {
            for (centered, momentum) in pairs(bools, [0.0, 0.9]) {
                for (eps_in_sqrt, (weight_decay, maximize)) in
                    pairs(bools, pairs([0.0, 1e-2], bools))
                {
                    let c = Rmsprop {
                        alpha: 0.9,
                        centered,
                        momentum,
                        eps_in_sqrt,
                        weight_decay,
                        maximize,
                        ..Rmsprop::default()
                    };
                    out.push(c.into());
                }
            }
        }
        Optimizer::Adadelta(_) => {
            for (weight_decay, maximize) in pairs([0.0, 1e-2], bools) {
                out.push(
                    Adadelta {
                        weight_decay,
                        maximize,
                        ..Adadelta::default()
                    }
                    .into(),
                );
            }
        }
        Optimizer::Adam(base) => {
            for (amsgrad, eps_in_sqrt) in pairs(bools, bools) {
                for (weight_decay, maximize) in pairs([0.0, 1e-2], bools) {
                    let c = Adam {
                        lr: 1e-2,
                        betas: (0.8, 0.99),
                        amsgrad,
                        eps_in_sqrt,
                        weight_decay,
                        maximize,
                        ..base.clone()
                    };
                    out.push(c.into());
                }
            }
        }
    }
    Ok(out)
}

fn pairs<A: Copy, B: Copy>(
    a: impl IntoIterator<Item = A>,
    b: impl IntoIterator<Item = B> + Clone,
) -> Vec<(A, B)> {
    a.into_iter()
        .flat_map(|x| b.clone().into_iter().map(move |y| (x, y)))
        .collect()
}

/// Seeded test data: parameters ~ N(0, 1); gradients N(0, 1) scaled per coordinate over four
/// decades, with about one in ten exactly zero.
#[derive(Debug)]
pub struct RandomProblem {
    rng: StdRng,
    scales: Vec<f32>,
    /// Initial parameters.
    pub params: Vec<f32>,
}

impl RandomProblem {
    /// A problem of `len` parameters from `seed`.
    pub fn new(len: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let params = (0..len).map(|_| rng.sample(StandardNormal)).collect();
        let scales = (0..len)
            .map(|_| 10f32.powf(rng.random_range(-3.0..1.0)))
            .collect();
        Self {
            rng,
            scales,
            params,
        }
    }

    /// The next gradient.
    pub fn next_grad(&mut self) -> Vec<f32> {
        let rng = &mut self.rng;
        self.scales
            .iter()
            .map(|s| {
                if rng.random_bool(0.1) {
                    0.0
                } else {
                    s * rng.sample::<f32, _>(StandardNormal)
                }
            })
            .collect()
    }
}

/// The learning rate of step `t` (1-based) in validation runs: a decaying schedule, so that
/// per-step learning rates are exercised.
pub fn schedule(base: f64, t: u64) -> f64 {
    base / (t as f64).sqrt()
}

/// Result of one GPU-against-CPU run.
#[derive(Clone, Debug)]
pub struct CaseReport {
    /// The configuration run.
    pub optimizer: Optimizer,
    /// Elements.
    pub size: usize,
    /// Worst errors per tensor: `param`, then each state tensor.
    pub tensors: Vec<(&'static str, ErrorStats)>,
}

impl CaseReport {
    /// All tensors merged.
    pub fn overall(&self) -> ErrorStats {
        let mut all = ErrorStats::default();
        for (_, s) in &self.tensors {
            all.merge(s);
        }
        all
    }
}

/// Runs `config` for `steps` steps on the GPU and on the CPU reference from the same seeded
/// data, comparing parameters and every state tensor after each step. The parameters live in a
/// [`BufferSet`], so sizes past `max_buffer_size` work; the CPU side runs the reference's code
/// on all threads ([`Execution::Fast`], bit-identical to [`Execution::Reference`]).
pub fn gpu_against_cpu(
    gpu: &Gpu,
    config: &Optimizer,
    size: usize,
    steps: u64,
    seed: u64,
    tol: &Tolerance,
) -> Result<CaseReport> {
    let mut problem = RandomProblem::new(size, seed);
    let mut cpu_params = problem.params.clone();
    let params = BufferSet::upload(gpu, "validate/params", &problem.params)?;
    let grads = BufferSet::zeros(gpu, "validate/grads", size)?;
    let mut gpu_opt = GpuOptimizer::with_pieces(gpu, config.clone(), &params.pieces(&grads)?)?;
    let mut cpu_opt = CpuOptimizer::new(config.clone(), size)?.with_execution(Execution::Fast);
    let mut tensors: Vec<(&'static str, ErrorStats)> = vec![("param", ErrorStats::default())];
    tensors.extend(
        config
            .state_names()
            .into_iter()
            .map(|n| (n, ErrorStats::default())),
    );
    for t in 1..=steps {
        let g = problem.next_grad();
        let lr = schedule(config.lr(), t);
        grads.write(gpu, &g)?;
        gpu_opt.step_with_lr(gpu, lr)?;
        cpu_opt.step_with_lr(
            ArrayViewMut1::from(&mut cpu_params[..]),
            ArrayView1::from(&g[..]),
            lr,
        )?;
        tensors[0]
            .1
            .add(tol, t, &gpu_opt.read_params(gpu)?, &cpu_params);
        let gpu_state = gpu_opt.read_state(gpu)?;
        for ((_, stats), ((_, got), (_, want))) in tensors[1..]
            .iter_mut()
            .zip(gpu_state.iter().zip(cpu_opt.state()))
        {
            stats.add(tol, t, got, want.as_slice().expect("contiguous state"));
        }
    }
    Ok(CaseReport {
        optimizer: config.clone(),
        size,
        tensors,
    })
}
