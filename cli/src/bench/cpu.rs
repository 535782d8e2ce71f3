//! CPU measurements: optimizer steps with [`CpuOptimizer`] and the memory-copy roofline.

use std::time::Instant;

use ndarray::{ArrayView1, ArrayViewMut1};
use rayon::prelude::*;

use super::{Implementation, Sampling, Summary, pattern};
use crate::{Error, Result};
use fusedopt::CpuOptimizer;
use fusedopt::Optimizer;
use fusedopt::reference::{AlignedVec, Execution};

/// One optimizer on the CPU over `sets` independent parameter sets, stepped in turn.
/// Parameters and gradients start on cache lines, as the state does and as PyTorch's CPU
/// tensors do.
#[derive(Debug)]
pub struct CpuSteps {
    sets: Vec<(CpuOptimizer, AlignedVec, AlignedVec)>,
    next: usize,
}

impl CpuSteps {
    /// Allocates `sets` sets of `size` parameters and gradients (filled with ordinary numbers)
    /// and the optimizer state of each.
    pub fn new(
        config: &Optimizer,
        size: usize,
        sets: usize,
        implementation: Implementation,
    ) -> Result<Self> {
        let execution = match implementation {
            Implementation::CpuReference => Execution::Reference,
            Implementation::CpuFast => Execution::Fast,
            Implementation::Gpu => {
                return Err(Error::InvalidArgument(
                    "CpuSteps runs the CPU implementations only".into(),
                ));
            }
        };
        let params = AlignedVec::from_slice(&pattern(size, 1));
        let grads: Vec<f32> = pattern(size, 2).into_iter().map(|g| 0.1 * g).collect();
        let grads = AlignedVec::from_slice(&grads);
        let sets = (0..sets.max(1))
            .map(|_| {
                let optimizer = CpuOptimizer::new(config.clone(), size)?.with_execution(execution);
                Ok((optimizer, params.clone(), grads.clone()))
            })
            .collect::<Result<_>>()?;
        Ok(Self { sets, next: 0 })
    }

    /// One step of the next set.
    pub fn step(&mut self) -> Result<()> {
        let index = self.next;
        self.next = (index + 1) % self.sets.len();
        let (optimizer, params, grads) = &mut self.sets[index];

        Ok(optimizer.step(
            ArrayViewMut1::from(params.as_mut_slice()),
            ArrayView1::from(grads.as_slice()),
        )?)
    }

    /// Warms up, then times steps one by one. The warm-up steps every set once (their state
    /// starts as untouched zero pages, and a first step would time the page faults), then
    /// `sampling.warmup_steps` more.
    pub fn measure(&mut self, sampling: &Sampling) -> Result<Summary> {
        for _ in 0..self.sets.len() {
            self.step()?;
        }
        let mut estimate = f64::INFINITY;
        for _ in 0..sampling.warmup_steps.max(1) {
            estimate = estimate.min(self.timed_step()?);
        }
        let samples = sampling.samples_for(estimate);
        let times = (0..samples)
            .map(|_| self.timed_step())
            .collect::<Result<Vec<f64>>>()?;
        Ok(Summary::of(&times).expect("at least one sample"))
    }

    fn timed_step(&mut self) -> Result<f64> {
        let start = Instant::now();
        self.step()?;
        Ok(start.elapsed().as_secs_f64())
    }
}

/// The CPU's copy bandwidth: a parallel `memcpy` of `size` f32 on all rayon threads, in pieces
/// of 1 MiB (see [`super::CPU_COPY_BYTES`] for how its bytes are counted).
pub fn cpu_copy_bandwidth(size: usize, sampling: &Sampling) -> Summary {
    const PIECE: usize = 1 << 18;
    let source = pattern(size, 3);
    let mut target = vec![0.0f32; size];
    let mut copy = || {
        let start = Instant::now();
        target
            .par_chunks_mut(PIECE)
            .zip(source.par_chunks(PIECE))
            .for_each(|(t, s)| t.copy_from_slice(s));
        start.elapsed().as_secs_f64()
    };
    let mut estimate = f64::INFINITY;
    for _ in 0..sampling.warmup_steps.max(1) {
        estimate = estimate.min(copy());
    }
    let times: Vec<f64> = (0..sampling.samples_for(estimate))
        .map(|_| copy())
        .collect();
    Summary::of(&times).expect("at least one sample")
}
