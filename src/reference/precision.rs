//! The 16-bit precisions on the CPU: the tensors widened to f32, the optimizer's own f32 step,
//! and each stored value rounded as `shaders/precision.wgsl` rounds it, so that the CPU
//! reproduces the GPU bit for bit in every precision.

use ndarray::{ArrayView1, ArrayViewMut1};

use super::{AlignedVec, CpuOptimizer};
use crate::error::{Error, Result};
use crate::optim::{Optimizer, Precision, random_bits, round_bf16_stochastic};

impl CpuOptimizer {
    /// Creates the optimizer for `len` parameters stored in `precision`.
    pub fn with_precision(
        config: impl Into<Optimizer>,
        precision: Precision,
        len: usize,
    ) -> Result<Self> {
        let mut opt = Self::new(config, len)?;
        opt.precision = precision;
        if let Precision::Half(format) = precision {
            for (slot, values) in opt.state.iter_mut().flatten() {
                let init = format.widen(format.round(slot.init));
                *values = AlignedVec::from_elem(len, init);
            }
        }
        Ok(opt)
    }

    /// The storage precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The f32 master copy, once the first step has made it (or [`Self::set_master`] set it).
    pub fn master(&self) -> Option<&[f32]> {
        self.master.as_deref()
    }

    /// Sets the f32 master copy; an error unless the precision keeps one and `values` has one
    /// value per parameter.
    pub fn set_master(&mut self, values: &[f32]) -> Result<()> {
        if !self.precision.has_master() {
            return Err(Error::InvalidSetting {
                what: "master".into(),
                message: format!("the {} precision keeps no master copy", self.precision),
            });
        }
        self.check_len("master", values.len())?;
        self.master = Some(values.to_vec());
        Ok(())
    }

    /// Drops the master copy: the next step starts it from the parameters, as a fresh
    /// optimizer does (a checkpoint taken before the first step has none).
    pub(crate) fn clear_master(&mut self) {
        self.master = None;
    }

    /// One step at learning rate `lr` on 16-bit parameters and gradients (the bits of the
    /// precision's format). A master copy starts as the parameters widened.
    pub fn step_half(&mut self, params: &mut [u16], grads: &[u16], lr: f64) -> Result<()> {
        self.step_half_with(params, grads, lr, |g| g.collect())
    }

    /// [`Self::step_half`] with the widened gradient passed through `grad` first.
    pub(super) fn step_half_with(
        &mut self,
        params: &mut [u16],
        grads: &[u16],
        lr: f64,
        grad: impl FnOnce(&mut dyn Iterator<Item = f32>) -> Vec<f32>,
    ) -> Result<()> {
        self.require_precision(true)?;
        self.check_lens(params.len(), grads.len(), lr)?;
        let format = self.precision.half_format().expect("checked: 16-bit");
        let widen = |bits: &[u16]| bits.iter().map(|&b| format.widen(b)).collect::<Vec<f32>>();
        let g = grad(&mut grads.iter().map(|&b| format.widen(b)));
        let mut p = match self.master.take() {
            Some(master) => master,
            None => widen(params),
        };
        self.step_f32(
            ArrayViewMut1::from(&mut p[..]),
            ArrayView1::from(&g[..]),
            lr,
        )?;
        match self.precision {
            Precision::Stochastic { .. } => {
                let key = self.precision.step_key(self.step);
                for (i, (out, x)) in params.iter_mut().zip(&p).enumerate() {
                    *out = round_bf16_stochastic(*x, random_bits(key, i as u64));
                }
            }
            _ => {
                for (out, x) in params.iter_mut().zip(&p) {
                    *out = format.round(*x);
                }
            }
        }
        if let Precision::Half(_) = self.precision {
            for (_, values) in self.state.iter_mut().flatten() {
                for x in values.as_mut_slice() {
                    *x = format.widen(format.round(*x));
                }
            }
        }
        if self.precision.has_master() {
            self.master = Some(p);
        }
        Ok(())
    }

    /// Fails unless the precision is 16-bit (`half`) or f32.
    pub(super) fn require_precision(&self, half: bool) -> Result<()> {
        if self.precision.half_format().is_some() == half {
            return Ok(());
        }
        let wanted = if half { "step_half" } else { "step_with_lr" };
        Err(Error::InvalidSetting {
            what: "precision".into(),
            message: format!(
                "a {} optimizer is stepped with {}, not {wanted}",
                self.precision,
                if half { "step_with_lr" } else { "step_half" }
            ),
        })
    }

    /// Fails unless parameters and gradients have one element per parameter and `lr` is
    /// valid.
    pub(super) fn check_lens(&self, params: usize, grads: usize, lr: f64) -> Result<()> {
        self.check_len("params", params)?;
        self.check_len("grads", grads)?;
        crate::optim::non_negative(self.config.name(), "lr", lr)
    }

    fn check_len(&self, what: &str, got: usize) -> Result<()> {
        if got == self.len {
            return Ok(());
        }
        Err(Error::LengthMismatch {
            what: what.into(),
            expected: self.len,
            got,
        })
    }
}
