//! Adagrad: per-coordinate step sizes from the running sum of squared gradients.

use super::{
    KernelSpec, Optimizer, Rule, UniformBlock, describe_fields, flag, hyper::HyperFields,
    non_negative, pairs, uniform_layout,
};
use crate::error::Result;

/// `torch.optim.Adagrad` (PyTorch defaults), [Duchi et al. 2011](https://jmlr.org/papers/v12/duchi11a.html):
///
/// ```text
/// g ← g + weight_decay·p
/// clr = lr / (1 + (t − 1)·lr_decay)
/// s ← s + g²                      (s starts at initial_accumulator_value)
/// p ← p − clr·g / (√s + eps)      or  g / √(s + eps) with eps_in_sqrt (optax)
/// ```
/// State: `sum`.
#[derive(Clone, Debug, PartialEq)]
pub struct Adagrad {
    /// Learning rate (PyTorch default 1e-2).
    pub lr: f64,
    /// Learning-rate decay per step.
    pub lr_decay: f64,
    /// Coupled (L2) weight decay.
    pub weight_decay: f64,
    /// Starting value of the accumulator (optax uses 0.1).
    pub initial_accumulator_value: f64,
    /// Term added to the denominator (PyTorch 1e-10, optax 1e-7).
    pub eps: f64,
    /// Put eps inside the square root, as optax and the lecture notes do.
    pub eps_in_sqrt: bool,
    /// Maximize the objective instead of minimizing it.
    pub maximize: bool,
}

impl Default for Adagrad {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
            eps_in_sqrt: false,
            maximize: false,
        }
    }
}

/// The uniform of `shaders/adagrad.wgsl` (same layout as the WGSL struct).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AdagradScalars {
    /// Decayed learning rate of this step.
    pub clr: f32,
    /// Denominator term.
    pub eps: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    _pad: f32,
}

const NAME: &str = "adagrad";

impl Adagrad {
    /// Rejects what `torch.optim.Adagrad.__init__` rejects.
    pub fn validate(&self) -> Result<()> {
        non_negative(NAME, "lr", self.lr)?;
        non_negative(NAME, "lr_decay", self.lr_decay)?;
        non_negative(NAME, "weight_decay", self.weight_decay)?;
        non_negative(
            NAME,
            "initial_accumulator_value",
            self.initial_accumulator_value,
        )?;
        non_negative(NAME, "eps", self.eps)
    }

    /// The scalars of step `step` (1-based) at learning rate `lr`, computed in f64.
    pub fn scalars(&self, step: u64, lr: f64) -> AdagradScalars {
        let clr = lr / (1.0 + (step as f64 - 1.0) * self.lr_decay);
        AdagradScalars {
            clr: clr as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            _pad: 0.0,
        }
    }
}

pub(super) static KERNEL: KernelSpec = KernelSpec {
    name: "adagrad",
    source: include_str!("../../shaders/adagrad.wgsl"),
    uniform: uniform_layout!(AdagradScalars {
        clr,
        eps,
        weight_decay
    }),
    state: &["sum"],
};

impl Rule for Adagrad {
    fn name(&self) -> &'static str {
        NAME
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn validate(&self) -> Result<()> {
        Adagrad::validate(self)
    }

    fn torch_fields(&mut self, h: &mut dyn HyperFields) -> Result<()> {
        h.number("lr", &mut self.lr)?;
        h.number("lr_decay", &mut self.lr_decay)?;
        h.number("weight_decay", &mut self.weight_decay)?;
        h.number(
            "initial_accumulator_value",
            &mut self.initial_accumulator_value,
        )?;
        h.number("eps", &mut self.eps)?;
        h.boolean("eps_in_sqrt", &mut self.eps_in_sqrt)?;
        h.boolean("maximize", &mut self.maximize)
    }

    fn describe(&self) -> String {
        let d = Self::default();
        describe_fields(
            &[
                ("lr_decay", self.lr_decay, d.lr_decay),
                ("weight_decay", self.weight_decay, d.weight_decay),
                (
                    "initial_accumulator_value",
                    self.initial_accumulator_value,
                    d.initial_accumulator_value,
                ),
            ],
            &[
                ("eps_in_sqrt", self.eps_in_sqrt),
                ("maximize", self.maximize),
            ],
        )
    }

    fn kernel(&self) -> &'static KernelSpec {
        &KERNEL
    }

    fn state_init(&self) -> Vec<Option<f32>> {
        vec![Some(self.initial_accumulator_value as f32)]
    }

    fn overrides(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("MAXIMIZE", flag(self.maximize)),
            ("EPS_IN_SQRT", flag(self.eps_in_sqrt)),
        ]
    }

    fn uniform(&self, step: u64, lr: f64) -> UniformBlock {
        UniformBlock::of(&self.scalars(step, lr))
    }

    fn variants(&self) -> Vec<Optimizer> {
        let bools = [false, true];
        let mut out = Vec::new();
        for (lr_decay, initial_accumulator_value) in pairs([0.0, 1e-2], [0.0, 0.1]) {
            for (eps_in_sqrt, (weight_decay, maximize)) in pairs(bools, pairs([0.0, 1e-2], bools)) {
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
        out
    }

    fn state_variants(&self) -> Vec<(&'static str, Optimizer)> {
        Vec::new()
    }
}
