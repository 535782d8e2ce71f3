//! Adadelta: step sizes from running averages of squared gradients and squared updates.

use super::{
    KernelSpec, Optimizer, Rule, UniformBlock, describe_fields, flag, hyper::HyperFields,
    non_negative, require, uniform_layout,
};
use crate::error::{Error, Result};

/// `torch.optim.Adadelta` (PyTorch defaults), [Zeiler 2012](https://arxiv.org/abs/1212.5701).
/// eps sits inside both square roots, in PyTorch as in optax:
///
/// ```text
/// g ← g + weight_decay·p
/// v ← rho·v + (1 − rho)·g²
/// δ = √(u + eps) / √(v + eps) · g
/// u ← rho·u + (1 − rho)·δ²
/// p ← p − lr·δ
/// ```
/// State: `square_avg` (v) and `acc_delta` (u).
#[derive(Clone, Debug, PartialEq)]
pub struct Adadelta {
    /// Learning rate that scales δ (PyTorch default 1.0).
    pub lr: f64,
    /// Decay of both running averages, in [0, 1].
    pub rho: f64,
    /// Term added inside both square roots.
    pub eps: f64,
    /// Coupled (L2) weight decay.
    pub weight_decay: f64,
    /// Maximize the objective instead of minimizing it.
    pub maximize: bool,
}

impl Default for Adadelta {
    fn default() -> Self {
        Self {
            lr: 1.0,
            rho: 0.9,
            eps: 1e-6,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

/// The uniform of `shaders/adadelta.wgsl` (same layout as the WGSL struct).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AdadeltaScalars {
    /// Learning rate of this step.
    pub lr: f32,
    /// Decay of the running averages.
    pub rho: f32,
    /// 1 − rho.
    pub one_minus_rho: f32,
    /// Term inside the square roots.
    pub eps: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    _pad: [f32; 3],
}

const NAME: &str = "adadelta";

impl Adadelta {
    /// Rejects what `torch.optim.Adadelta.__init__` rejects.
    pub fn validate(&self) -> Result<()> {
        non_negative(NAME, "lr", self.lr)?;
        require(
            NAME,
            "rho",
            self.rho,
            (0.0..=1.0).contains(&self.rho),
            "must be in [0, 1]",
        )?;
        non_negative(NAME, "eps", self.eps)?;
        non_negative(NAME, "weight_decay", self.weight_decay)
    }

    /// The scalars of a step at learning rate `lr` (Adadelta has no step-dependent terms).
    pub fn scalars(&self, _step: u64, lr: f64) -> AdadeltaScalars {
        AdadeltaScalars {
            lr: lr as f32,
            rho: self.rho as f32,
            one_minus_rho: (1.0 - self.rho) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            _pad: [0.0; 3],
        }
    }
}

static KERNEL: KernelSpec = KernelSpec {
    name: "adadelta",
    source: include_str!("../../shaders/adadelta.wgsl"),
    uniform: uniform_layout!(AdadeltaScalars {
        lr,
        rho,
        one_minus_rho,
        eps,
        weight_decay
    }),
    state: &["square_avg", "acc_delta"],
};

impl Rule for Adadelta {
    fn name(&self) -> &'static str {
        NAME
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn validate(&self) -> Result<()> {
        Adadelta::validate(self)
    }

    fn torch_fields(&mut self, h: &mut dyn HyperFields) -> Result<()> {
        h.number("lr", &mut self.lr)?;
        h.number("rho", &mut self.rho)?;
        h.number("eps", &mut self.eps)?;
        h.number("weight_decay", &mut self.weight_decay)?;
        h.boolean("maximize", &mut self.maximize)?;
        // Adadelta's eps is already inside the square roots: `eps_in_sqrt: true` (optax's
        // convention) describes the same update, `false` asks for one nobody defines.
        let mut eps_in_sqrt = true;
        h.boolean("eps_in_sqrt", &mut eps_in_sqrt)?;
        if !eps_in_sqrt {
            return Err(Error::Unsupported {
                optimizer: NAME,
                message: "eps_in_sqrt=false: Adadelta's eps is always inside the square roots"
                    .to_string(),
            });
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let d = Self::default();
        describe_fields(
            &[
                ("rho", self.rho, d.rho),
                ("weight_decay", self.weight_decay, d.weight_decay),
            ],
            &[("maximize", self.maximize)],
        )
    }

    fn kernel(&self) -> &'static KernelSpec {
        &KERNEL
    }

    fn state_init(&self) -> Vec<Option<f32>> {
        vec![Some(0.0), Some(0.0)]
    }

    fn overrides(&self) -> Vec<(&'static str, f64)> {
        vec![("MAXIMIZE", flag(self.maximize))]
    }

    fn uniform(&self, step: u64, lr: f64) -> UniformBlock {
        UniformBlock::of(&self.scalars(step, lr))
    }

    fn variants(&self) -> Vec<Optimizer> {
        [0.0, 1e-2]
            .into_iter()
            .flat_map(|weight_decay| {
                [false, true].map(|maximize| {
                    Adadelta {
                        weight_decay,
                        maximize,
                        ..Adadelta::default()
                    }
                    .into()
                })
            })
            .collect()
    }

    fn state_variants(&self) -> Vec<(&'static str, Optimizer)> {
        Vec::new()
    }
}
