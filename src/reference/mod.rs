//! The CPU reference: each kernel's update in f32, in the kernel's operation order, on
//! `ndarray`. It checks the GPU kernels and works on its own as a CPU optimizer with the same
//! configuration types. The per-step scalars come from the same functions that fill the GPU's
//! uniforms, so both sides see identical f32 inputs.

mod adadelta;
mod adagrad;
mod adam;
mod common;
mod rmsprop;
mod sgd;

use ndarray::{Array1, ArrayView1, ArrayViewMut1};

use crate::optim::{Optimizer, StateSlot};
use crate::{Error, Result};

/// An optimizer on the CPU: configuration, step count and state, as [`crate::GpuOptimizer`]
/// keeps them on the GPU.
#[derive(Clone, Debug)]
pub struct CpuOptimizer {
    config: Optimizer,
    len: usize,
    step: u64,
    /// One entry per state binding of the kernel; `None` where the configuration needs none.
    state: Vec<Option<(StateSlot, Array1<f32>)>>,
}

impl CpuOptimizer {
    /// Creates the optimizer for `len` parameters, with PyTorch's initial state.
    pub fn new(config: impl Into<Optimizer>, len: usize) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        let state = config
            .rule()
            .state_slots()
            .into_iter()
            .map(|slot| slot.map(|s| (s, Array1::from_elem(len, s.init))))
            .collect();
        Ok(Self {
            config,
            len,
            step: 0,
            state,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Optimizer {
        &self.config
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The state tensors by PyTorch's state name, in binding order.
    pub fn state(&self) -> Vec<(&'static str, ArrayView1<'_, f32>)> {
        self.state
            .iter()
            .flatten()
            .map(|(slot, a)| (slot.name, a.view()))
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

    /// One step at learning rate `lr` (a schedule's value).
    pub fn step_with_lr(
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
        self.step += 1;
        let t = self.step;
        let mut state: Vec<Option<&mut [f32]>> = self
            .state
            .iter_mut()
            .map(|s| {
                s.as_mut()
                    .map(|(_, a)| a.as_slice_mut().expect("state is contiguous"))
            })
            .collect();
        let p = &mut params;
        match &self.config {
            Optimizer::Sgd(c) => sgd::step(c, &c.scalars(t, lr), p, grads, &mut state),
            Optimizer::Adagrad(c) => adagrad::step(c, &c.scalars(t, lr), p, grads, &mut state),
            Optimizer::Rmsprop(c) => rmsprop::step(c, &c.scalars(t, lr), p, grads, &mut state),
            Optimizer::Adadelta(c) => adadelta::step(c, &c.scalars(t, lr), p, grads, &mut state),
            Optimizer::Adam(c) => adam::step(c, &c.scalars(t, lr), p, grads, &mut state),
        }
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

/// The state slice in binding slot `k`; the configuration guarantees it exists whenever the
/// code path that reads it is on.
fn slot<'s>(state: &'s mut [Option<&mut [f32]>], k: usize) -> &'s mut [f32] {
    state[k]
        .as_deref_mut()
        .expect("state allocated for the enabled code path")
}
