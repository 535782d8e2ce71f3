//! The CPU reference: each kernel's update in f32, in the kernel's operation order, on
//! `ndarray`. It checks the GPU kernels and works on its own as a CPU optimizer with the same
//! configuration types. The per-step scalars come from the same functions that fill the GPU's
//! uniforms, so both sides see identical f32 inputs.
//!
//! Two drivers run the same per-element code: [`Execution::Reference`] walks the tensors on one
//! thread in portable code; [`Execution::Fast`] splits them across rayon's threads and compiles
//! the loops for the widest vector unit the CPU has. Both evaluate the same IEEE operations in the
//! same order (Rust never fuses a multiply and an add on its own), so they agree bit for bit.

mod adadelta;
mod adagrad;
mod adam;
mod common;
mod fast;
mod guard;
mod precision;
mod rmsprop;
mod sgd;
mod sparse;
mod sparse_adam;

pub use fast::{InstructionSet, TASK as FAST_TASK_ELEMENTS};
pub use guard::CpuGuard;
pub use sparse::{CpuSparse, ROW_SUM_LANES};

use ndarray::{ArrayView1, ArrayViewMut1};

use crate::error::{Error, Result};
use crate::optim::{Block, MAX_STATE, Mirror, Optimizer, Precision, StateSlot, Visit};

/// Elements per inner loop. Unused state slots are bound to a spare block of this size, as the
/// GPU binds placeholders, so that every loop runs over slices of one length and needs no
/// bounds checks.
pub const BLOCK: usize = 4096;

/// How a [`CpuOptimizer`] runs its steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Execution {
    /// One thread, portable code: the reference the GPU kernels are checked against.
    #[default]
    Reference,
    /// All of rayon's threads (`RAYON_NUM_THREADS`), loops compiled for AVX-512 or AVX2 when the
    /// CPU has them. Same numbers as the reference, bit for bit.
    Fast,
}

/// An optimizer on the CPU: configuration, step count and state, as [`crate::GpuOptimizer`]
/// keeps them on the GPU.
#[derive(Clone, Debug)]
pub struct CpuOptimizer {
    config: Optimizer,
    len: usize,
    step: u64,
    execution: Execution,
    /// The fast path's instruction set.
    isa: InstructionSet,
    /// One entry per state binding of the kernel; `None` where the configuration needs none.
    /// Held in f32 in every precision: 16-bit state holds values of its format only.
    state: Vec<Option<(StateSlot, AlignedVec)>>,
    precision: Precision,
    /// The f32 master copy, from the first step (or [`CpuOptimizer::set_master`]) on.
    master: Option<Vec<f32>>,
}

/// 64 bytes of f32, aligned to 64: the cache line, and the width of an AVX-512 register.
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct CacheLine([f32; 16]);

/// An f32 tensor that starts on a cache line, as PyTorch's CPU allocator aligns tensors, so that
/// the fast path's vector loads and stores never straddle two lines.
#[derive(Clone, Debug)]
pub struct AlignedVec {
    lines: Vec<CacheLine>,
    len: usize,
}

impl AlignedVec {
    /// `len` copies of `value`.
    pub fn from_elem(len: usize, value: f32) -> Self {
        Self {
            lines: vec![CacheLine([value; 16]); len.div_ceil(16)],
            len,
        }
    }

    /// A copy of `values`.
    pub fn from_slice(values: &[f32]) -> Self {
        let mut v = Self::from_elem(values.len(), 0.0);
        v.as_mut_slice().copy_from_slice(values);
        v
    }

    /// The elements.
    pub fn as_slice(&self) -> &[f32] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }

    /// The elements, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.len]
    }
}

impl CpuOptimizer {
    /// Creates the optimizer for `len` parameters, with PyTorch's initial state, running the
    /// reference ([`Execution::Reference`]).
    pub fn new(config: impl Into<Optimizer>, len: usize) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        let state = config
            .state_slots()
            .into_iter()
            .map(|slot| slot.map(|s| (s, AlignedVec::from_elem(len, s.init))))
            .collect();
        Ok(Self {
            config,
            len,
            step: 0,
            execution: Execution::Reference,
            isa: InstructionSet::widest(),
            state,
            precision: Precision::F32,
            master: None,
        })
    }

    /// The same optimizer, running its steps with `execution`.
    pub fn with_execution(mut self, execution: Execution) -> Self {
        self.execution = execution;
        self
    }

    /// The same optimizer, its fast path ([`Execution::Fast`]) compiled for `isa` instead of
    /// the widest instruction set the CPU runs (to compare them; the numbers are the same).
    /// An instruction set the CPU lacks is an error.
    pub fn with_instruction_set(mut self, isa: InstructionSet) -> Result<Self> {
        if !InstructionSet::available().contains(&isa) {
            return Err(Error::InvalidSetting {
                what: "instruction set".into(),
                message: format!("this CPU does not run {isa:?}"),
            });
        }
        self.isa = isa;
        Ok(self)
    }

    /// How the steps run.
    pub fn execution(&self) -> Execution {
        self.execution
    }

    /// The configuration.
    pub fn config(&self) -> &Optimizer {
        &self.config
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Sets the count of steps taken (restoring a run): the next step is `step + 1`.
    pub fn set_step_count(&mut self, step: u64) {
        self.step = step;
    }

    /// The state tensors by PyTorch's state name, in binding order.
    pub fn state(&self) -> Vec<(&'static str, ArrayView1<'_, f32>)> {
        self.state
            .iter()
            .flatten()
            .map(|(slot, a)| (slot.name, ArrayView1::from(a.as_slice())))
            .collect()
    }

    /// The state tensors, mutable, by PyTorch's state name (a checkpoint restores them).
    pub(crate) fn state_mut(&mut self) -> Vec<(&'static str, &mut [f32])> {
        self.state
            .iter_mut()
            .flatten()
            .map(|(slot, a)| (slot.name, a.as_mut_slice()))
            .collect()
    }

    /// One step at the configured learning rate.
    pub fn step(
        &mut self,
        params: ArrayViewMut1<'_, f32>,
        grads: ArrayView1<'_, f32>,
    ) -> Result<()> {
        self.step_with_lr(params, grads, self.config.lr())
    }

    /// One step at learning rate `lr` (a schedule's value). The optimizer's precision must be
    /// f32 ([`CpuOptimizer::step_half`] steps the 16-bit ones).
    pub fn step_with_lr(
        &mut self,
        params: ArrayViewMut1<'_, f32>,
        grads: ArrayView1<'_, f32>,
        lr: f64,
    ) -> Result<()> {
        self.require_precision(false)?;
        self.step_f32(params, grads, lr)
    }

    /// One step of the f32 arithmetic on f32 tensors, whatever the storage precision.
    fn step_f32(
        &mut self,
        mut params: ArrayViewMut1<'_, f32>,
        grads: ArrayView1<'_, f32>,
        lr: f64,
    ) -> Result<()> {
        let len = self.len();
        for (what, got) in [("params", params.len()), ("grads", grads.len())] {
            if got != len {
                return Err(Error::LengthMismatch {
                    what: what.into(),
                    expected: len,
                    got,
                });
            }
        }
        crate::optim::non_negative(self.config.name(), "lr", lr)?;
        let grads = grads.as_standard_layout();
        let grads = grads.as_slice().expect("standard layout is contiguous");
        let mut state: Vec<Option<&mut [f32]>> = self
            .state
            .iter_mut()
            .map(|s| s.as_mut().map(|(_, a)| a.as_mut_slice()))
            .collect();
        state.resize_with(MAX_STATE, || None);
        let state: [Option<&mut [f32]>; MAX_STATE] = state.try_into().expect("MAX_STATE slots");
        let step = crate::optim::next_step(self.config.name(), self.step)?;
        let (execution, isa) = (self.execution, self.isa);
        let run = |param: &mut [f32]| {
            let tensors = Tensors {
                param,
                grad: grads,
                state,
            };
            self.config.visit(Run {
                step,
                lr,
                execution,
                isa,
                tensors,
            });
        };
        match params.as_slice_mut() {
            Some(params) => run(params),
            // A strided view: step a contiguous copy and write it back.
            None => {
                let mut copy = params.to_vec();
                run(&mut copy);
                params.assign(&ArrayView1::from(&copy));
            }
        }
        self.step = step;
        Ok(())
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the optimizer has no parameters.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One step over whole tensors, handed to the configuration's own type by
/// [`Optimizer::visit`], so that the drivers are compiled for each optimizer.
struct Run<'a> {
    step: u64,
    lr: f64,
    execution: Execution,
    isa: InstructionSet,
    tensors: Tensors<'a>,
}

impl Visit for Run<'_> {
    type Output = ();

    fn visit<R: Mirror>(self, config: &R) {
        // The bytes the GPU's uniform receives, read as the kernel's struct.
        let uniform = config.uniform(self.step, self.lr);
        let step = Step {
            config,
            scalars: bytemuck::pod_read_unaligned(uniform.as_bytes()),
        };
        match self.execution {
            Execution::Reference => self.tensors.step_blocks(&step),
            Execution::Fast => fast::step(self.isa, &step, self.tensors),
        }
    }
}

/// One step of one optimizer: its configuration and the scalars of this step.
struct Step<'c, R: Mirror> {
    config: &'c R,
    scalars: R::Scalars,
}

impl<R: Mirror> Step<'_, R> {
    /// Updates one block. Inlined into each driver, so that the fast driver's copy is compiled
    /// with its target features.
    #[inline(always)]
    fn apply(&self, block: Block<'_>) {
        self.config.update(&self.scalars, block);
    }
}

/// Parameters, gradients and state of (a range of) one optimizer, all of one length; `None`
/// for state the configuration does not use.
struct Tensors<'a> {
    param: &'a mut [f32],
    grad: &'a [f32],
    state: [Option<&'a mut [f32]>; MAX_STATE],
}

impl<'a> Tensors<'a> {
    fn len(&self) -> usize {
        self.param.len()
    }

    /// Splits off the first `n` elements of every tensor.
    fn split_at(self, n: usize) -> (Tensors<'a>, Tensors<'a>) {
        let (p0, p1) = self.param.split_at_mut(n);
        let (g0, g1) = self.grad.split_at(n);
        let mut head: [Option<&'a mut [f32]>; MAX_STATE] = Default::default();
        let mut tail: [Option<&'a mut [f32]>; MAX_STATE] = Default::default();
        for (k, slot) in self.state.into_iter().enumerate() {
            if let Some(s) = slot {
                let (s0, s1) = s.split_at_mut(n);
                (head[k], tail[k]) = (Some(s0), Some(s1));
            }
        }
        (
            Tensors {
                param: p0,
                grad: g0,
                state: head,
            },
            Tensors {
                param: p1,
                grad: g1,
                state: tail,
            },
        )
    }

    /// Applies `step` to consecutive blocks of at most [`BLOCK`] elements, unused state bound
    /// to spare zeros. Inlined all the way down (no closures), so that the fast driver's
    /// target-feature copies contain the loops themselves.
    #[inline(always)]
    fn step_blocks<R: Mirror>(self, step: &Step<'_, R>) {
        let mut spare = [[0.0f32; BLOCK]; MAX_STATE];
        let mut rest = self;
        while rest.len() > 0 {
            let n = rest.len().min(BLOCK);
            let (head, tail) = rest.split_at(n);
            let mut state = head.state;
            for (own, spare) in state.iter_mut().zip(&mut spare) {
                own.get_or_insert(&mut spare[..n]);
            }
            step.apply(Block {
                param: head.param,
                grad: head.grad,
                state: state.map(Option::unwrap_or_default),
            });
            rest = tail;
        }
    }
}
