//! Stochastic gradient descent with momentum, dampening and Nesterov momentum.

use super::{
    KernelSpec, Optimizer, Rule, UniformBlock, describe_fields, flag, hyper::HyperFields,
    non_negative, pairs, uniform_layout,
};
use crate::error::{Error, Result};

/// `torch.optim.SGD` (PyTorch defaults). With `g` the gradient (negated under `maximize`):
///
/// ```text
/// g ← g + weight_decay·p
/// b ← g on the first step, else momentum·b + (1 − dampening)·g     (if momentum ≠ 0)
/// g ← g + momentum·b if nesterov, else b                            (if momentum ≠ 0)
/// p ← p − lr·g
/// ```
/// State: `momentum_buffer` when momentum ≠ 0, nothing otherwise.
#[derive(Clone, Debug, PartialEq)]
pub struct Sgd {
    /// Learning rate (PyTorch default 1e-3).
    pub lr: f64,
    /// Momentum factor; 0 turns momentum (and its buffer) off.
    pub momentum: f64,
    /// Dampening of the gradient in the momentum buffer (not applied on the first step).
    pub dampening: f64,
    /// Coupled (L2) weight decay.
    pub weight_decay: f64,
    /// Nesterov momentum; needs momentum > 0 and zero dampening.
    pub nesterov: bool,
    /// Maximize the objective instead of minimizing it.
    pub maximize: bool,
}

impl Default for Sgd {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            maximize: false,
        }
    }
}

/// The uniform of `shaders/sgd.wgsl` (same layout as the WGSL struct).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SgdScalars {
    /// Learning rate of this step.
    pub lr: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// Momentum factor.
    pub momentum: f32,
    /// 1 − dampening.
    pub one_minus_dampening: f32,
    /// 1 on the first step, 0 after.
    pub first_step: u32,
    _pad: [u32; 3],
}

const NAME: &str = "sgd";

impl Sgd {
    /// Rejects what `torch.optim.SGD.__init__` rejects.
    pub fn validate(&self) -> Result<()> {
        non_negative(NAME, "lr", self.lr)?;
        non_negative(NAME, "momentum", self.momentum)?;
        non_negative(NAME, "weight_decay", self.weight_decay)?;
        // PyTorch takes any dampening; a NaN would turn every momentum buffer into NaN.
        crate::optim::require(
            NAME,
            "dampening",
            self.dampening,
            self.dampening.is_finite(),
            "must be a finite number",
        )?;
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(Error::Unsupported {
                optimizer: NAME,
                message: format!(
                    "nesterov momentum requires a momentum and zero dampening \
                     (momentum={}, dampening={})",
                    self.momentum, self.dampening
                ),
            });
        }
        Ok(())
    }

    /// The scalars of step `step` (1-based) at learning rate `lr`, computed in f64.
    pub fn scalars(&self, step: u64, lr: f64) -> SgdScalars {
        SgdScalars {
            lr: lr as f32,
            weight_decay: self.weight_decay as f32,
            momentum: self.momentum as f32,
            one_minus_dampening: (1.0 - self.dampening) as f32,
            first_step: u32::from(step == 1),
            _pad: [0; 3],
        }
    }

    /// Whether momentum (and so the momentum buffer) is on.
    pub fn has_momentum(&self) -> bool {
        self.momentum != 0.0
    }
}

static KERNEL: KernelSpec = KernelSpec {
    name: "sgd",
    source: include_str!("../../shaders/sgd.wgsl"),
    uniform: uniform_layout!(SgdScalars {
        lr,
        weight_decay,
        momentum,
        one_minus_dampening,
        first_step
    }),
    state: &["momentum_buffer"],
};

impl Rule for Sgd {
    fn name(&self) -> &'static str {
        NAME
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn validate(&self) -> Result<()> {
        Sgd::validate(self)
    }

    fn torch_fields(&mut self, h: &mut dyn HyperFields) -> Result<()> {
        h.number("lr", &mut self.lr)?;
        h.number("momentum", &mut self.momentum)?;
        h.number("dampening", &mut self.dampening)?;
        h.number("weight_decay", &mut self.weight_decay)?;
        h.boolean("nesterov", &mut self.nesterov)?;
        h.boolean("maximize", &mut self.maximize)
    }

    fn describe(&self) -> String {
        let d = Self::default();
        describe_fields(
            &[
                ("momentum", self.momentum, d.momentum),
                ("dampening", self.dampening, d.dampening),
                ("weight_decay", self.weight_decay, d.weight_decay),
            ],
            &[("nesterov", self.nesterov), ("maximize", self.maximize)],
        )
    }

    fn kernel(&self) -> &'static KernelSpec {
        &KERNEL
    }

    fn state_init(&self) -> Vec<Option<f32>> {
        vec![self.has_momentum().then_some(0.0)]
    }

    fn overrides(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("MAXIMIZE", flag(self.maximize)),
            ("HAS_MOMENTUM", flag(self.has_momentum())),
            ("NESTEROV", flag(self.nesterov)),
        ]
    }

    fn uniform(&self, step: u64, lr: f64) -> UniformBlock {
        UniformBlock::of(&self.scalars(step, lr))
    }

    fn variants(&self) -> Vec<Optimizer> {
        let mut out = Vec::new();
        for (momentum, dampening, nesterov) in [
            (0.0, 0.0, false),
            (0.9, 0.0, false),
            (0.9, 0.1, false),
            (0.9, 0.0, true),
        ] {
            for (weight_decay, maximize) in pairs([0.0, 1e-2], [false, true]) {
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
        out
    }

    fn state_variants(&self) -> Vec<(&'static str, Optimizer)> {
        let momentum = Sgd {
            momentum: 0.9,
            ..self.clone()
        };
        vec![("momentum", momentum.into())]
    }
}
