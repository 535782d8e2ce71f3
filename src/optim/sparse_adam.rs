//! SparseAdam: Adam on the rows a sparse gradient touches ("lazy Adam").

use super::{
    KernelSpec, describe_fields, flag, hyper::HyperFields, in_unit_interval, require,
    uniform_layout,
};
use crate::error::Result;

/// `torch.optim.SparseAdam` (PyTorch defaults). Per touched row, after duplicate lookups are
/// summed:
///
/// ```text
/// m ← m + (g − m)·(1 − β1)        v ← v + (g² − v)·(1 − β2)
/// p ← p − lr·√(1 − β2^t)/(1 − β1^t) · m / (√v + eps)
/// ```
/// Rows not looked up keep their moments; `t` counts every step of the table, so a rare
/// row's first update gets the correction of the table's step, not its own (PyTorch's choice).
/// State: `exp_avg`, `exp_avg_sq`.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseAdam {
    /// Learning rate (PyTorch default 1e-3); must be positive.
    pub lr: f64,
    /// Decay rates of the two moments.
    pub betas: (f64, f64),
    /// Term added to the denominator; must be positive.
    pub eps: f64,
    /// Maximize the objective instead of minimizing it.
    pub maximize: bool,
}

impl Default for SparseAdam {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            maximize: false,
        }
    }
}

/// The uniform of `shaders/sparse_adam.wgsl` (same layout as the WGSL struct).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SparseAdamScalars {
    /// `−lr·√(1 − β2^t)/(1 − β1^t)`, computed in f64 and rounded once, as PyTorch multiplies
    /// by the negated Python float.
    pub neg_step_size: f32,
    /// `1 − β1`, rounded from f64.
    pub one_minus_beta1: f32,
    /// `1 − β2`, rounded from f64.
    pub one_minus_beta2: f32,
    /// Denominator term.
    pub eps: f32,
}

pub(super) const NAME: &str = "sparse_adam";

impl SparseAdam {
    /// Rejects what `torch.optim.SparseAdam.__init__` rejects.
    pub fn validate(&self) -> Result<()> {
        require(NAME, "lr", self.lr, self.lr > 0.0, "must be > 0")?;
        require(NAME, "eps", self.eps, self.eps > 0.0, "must be > 0")?;
        in_unit_interval(NAME, "betas[0]", self.betas.0)?;
        in_unit_interval(NAME, "betas[1]", self.betas.1)
    }

    /// The scalars of step `step` (1-based, the table's count) at learning rate `lr`.
    pub fn scalars(&self, step: u64, lr: f64) -> SparseAdamScalars {
        let (beta1, beta2) = self.betas;
        let t = step as f64;
        let step_size = lr * (1.0 - beta2.powf(t)).sqrt() / (1.0 - beta1.powf(t));
        SparseAdamScalars {
            neg_step_size: -step_size as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            eps: self.eps as f32,
        }
    }

    pub(super) fn torch_fields(&mut self, h: &mut dyn HyperFields) -> Result<()> {
        h.number("lr", &mut self.lr)?;
        h.pair("betas", &mut self.betas)?;
        h.number("eps", &mut self.eps)?;
        h.boolean("maximize", &mut self.maximize)
    }

    pub(super) fn describe(&self) -> String {
        let d = Self::default();
        describe_fields(
            &[
                ("beta1", self.betas.0, d.betas.0),
                ("beta2", self.betas.1, d.betas.1),
                ("eps", self.eps, d.eps),
            ],
            &[("maximize", self.maximize)],
        )
    }

    pub(super) fn overrides(&self) -> Vec<(&'static str, f64)> {
        vec![("MAXIMIZE", flag(self.maximize))]
    }
}

pub(super) static KERNEL: KernelSpec = KernelSpec {
    name: "sparse_adam",
    source: include_str!("../../shaders/sparse_adam.wgsl"),
    uniform: uniform_layout!(SparseAdamScalars {
        neg_step_size,
        one_minus_beta1,
        one_minus_beta2,
        eps
    }),
    state: &["exp_avg", "exp_avg_sq"],
};
