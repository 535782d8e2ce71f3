//! Adam, with AMSGrad and with coupled (L2) or decoupled (AdamW) weight decay.

use super::{
    KernelSpec, Optimizer, Rule, UniformBlock, describe_fields, flag, hyper::HyperFields,
    in_unit_interval, non_negative, pairs, uniform_layout,
};
use crate::error::{Error, Result};

/// `torch.optim.Adam` (PyTorch defaults), [Kingma & Ba 2015](https://arxiv.org/abs/1412.6980);
/// with `decoupled_weight_decay` it is `torch.optim.AdamW` ([`Adam::adamw`]). At step t:
///
/// ```text
/// decoupled:  p ← p·(1 − lr·weight_decay)      else  g ← g + weight_decay·p
/// m ← lerp(m, g, 1 − β1)
/// v ← β2·v + (1 − β2)·g²
/// amsgrad:    v_max ← max(v_max, v), and v_max replaces v below
/// d = √v / √(1 − β2^t) + eps     or √(v / (1 − β2^t) + eps) with eps_in_sqrt
/// p ← p − lr / (1 − β1^t) · m / d
/// ```
/// State: `exp_avg` (m), `exp_avg_sq` (v), plus `max_exp_avg_sq` with AMSGrad.
#[derive(Clone, Debug, PartialEq)]
pub struct Adam {
    /// Learning rate (PyTorch default 1e-3).
    pub lr: f64,
    /// (β1, β2): decay of the first and second moment estimates, each in [0, 1).
    pub betas: (f64, f64),
    /// Term added to the denominator.
    pub eps: f64,
    /// Weight decay: L2 for Adam, decoupled for AdamW.
    pub weight_decay: f64,
    /// AdamW: decay the parameters by `1 − lr·weight_decay` before the step instead of adding
    /// `weight_decay·p` to the gradient.
    pub decoupled_weight_decay: bool,
    /// Use the maximum of all second moment estimates so far (AMSGrad, Reddi et al. 2018).
    pub amsgrad: bool,
    /// Put eps inside the square root of the bias-corrected second moment (optax's `eps_root`
    /// with `eps = 0`).
    pub eps_in_sqrt: bool,
    /// Maximize the objective instead of minimizing it.
    pub maximize: bool,
}

impl Default for Adam {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            amsgrad: false,
            eps_in_sqrt: false,
            maximize: false,
        }
    }
}

/// The uniform of `shaders/adam.wgsl` (same layout as the WGSL struct).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AdamScalars {
    /// 1 − lr·weight_decay when decoupled, exactly 1 otherwise.
    pub decay_factor: f32,
    /// L2 weight decay (0 when decoupled).
    pub weight_decay: f32,
    /// 1 − β1, the lerp weight.
    pub one_minus_beta1: f32,
    /// 1 − (1 − β1) in f32, as ATen's lerp computes it.
    pub lerp_complement: f32,
    /// β2.
    pub beta2: f32,
    /// 1 − β2.
    pub one_minus_beta2: f32,
    /// lr / (1 − β1^t).
    pub step_size: f32,
    /// √(1 − β2^t).
    pub bias_correction2_sqrt: f32,
    /// 1 − β2^t.
    pub bias_correction2: f32,
    /// Denominator term.
    pub eps: f32,
    _pad: [f32; 2],
}

impl Adam {
    /// Rejects what `torch.optim.Adam.__init__` rejects.
    pub fn validate(&self) -> Result<()> {
        let name = self.name();
        non_negative(name, "lr", self.lr)?;
        non_negative(name, "eps", self.eps)?;
        in_unit_interval(name, "betas[0]", self.betas.0)?;
        in_unit_interval(name, "betas[1]", self.betas.1)?;
        non_negative(name, "weight_decay", self.weight_decay)
    }

    /// `adamw` when the weight decay is decoupled, `adam` otherwise.
    pub fn name(&self) -> &'static str {
        if self.decoupled_weight_decay {
            "adamw"
        } else {
            "adam"
        }
    }

    /// The scalars of step `step` (1-based) at learning rate `lr`. The bias corrections are
    /// computed in f64 like PyTorch's Python floats, then rounded once.
    pub fn scalars(&self, step: u64, lr: f64) -> AdamScalars {
        let (beta1, beta2) = self.betas;
        let t = step as f64;
        let bias_correction1 = 1.0 - beta1.powf(t);
        let bias_correction2 = 1.0 - beta2.powf(t);
        let (decay_factor, l2) = match (self.decoupled_weight_decay, self.weight_decay) {
            (_, 0.0) => (1.0, 0.0),
            (true, wd) => (1.0 - lr * wd, 0.0),
            (false, wd) => (1.0, wd),
        };
        let one_minus_beta1 = (1.0 - beta1) as f32;
        AdamScalars {
            decay_factor: decay_factor as f32,
            weight_decay: l2 as f32,
            one_minus_beta1,
            lerp_complement: 1.0 - one_minus_beta1,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            step_size: (lr / bias_correction1) as f32,
            bias_correction2_sqrt: bias_correction2.sqrt() as f32,
            bias_correction2: bias_correction2 as f32,
            eps: self.eps as f32,
            _pad: [0.0; 2],
        }
    }
}

static KERNEL: KernelSpec = KernelSpec {
    name: "adam",
    source: include_str!("../../shaders/adam.wgsl"),
    uniform: uniform_layout!(AdamScalars {
        decay_factor,
        weight_decay,
        one_minus_beta1,
        lerp_complement,
        beta2,
        one_minus_beta2,
        step_size,
        bias_correction2_sqrt,
        bias_correction2,
        eps
    }),
    state: &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
};

impl Rule for Adam {
    fn name(&self) -> &'static str {
        Adam::name(self)
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn validate(&self) -> Result<()> {
        Adam::validate(self)
    }

    fn torch_fields(&mut self, h: &mut dyn HyperFields) -> Result<()> {
        h.number("lr", &mut self.lr)?;
        h.pair("betas", &mut self.betas)?;
        h.number("eps", &mut self.eps)?;
        h.number("weight_decay", &mut self.weight_decay)?;
        // torch.optim.Adam takes it; AdamW is decoupled by definition, and its param_groups
        // say so (`decoupled_weight_decay: True` since AdamW became a subclass of Adam).
        let adamw = self.decoupled_weight_decay;
        h.boolean("decoupled_weight_decay", &mut self.decoupled_weight_decay)?;
        if adamw && !self.decoupled_weight_decay {
            return Err(Error::Unsupported {
                optimizer: "adamw",
                message: "decoupled_weight_decay=false: AdamW's weight decay is decoupled; \
                          use adam for coupled decay"
                    .into(),
            });
        }
        h.boolean("amsgrad", &mut self.amsgrad)?;
        h.boolean("eps_in_sqrt", &mut self.eps_in_sqrt)?;
        h.boolean("maximize", &mut self.maximize)
    }

    fn describe(&self) -> String {
        let d = if self.decoupled_weight_decay {
            Self::adamw()
        } else {
            Self::default()
        };
        describe_fields(
            &[
                ("beta1", self.betas.0, d.betas.0),
                ("beta2", self.betas.1, d.betas.1),
                ("weight_decay", self.weight_decay, d.weight_decay),
            ],
            &[
                ("amsgrad", self.amsgrad),
                ("eps_in_sqrt", self.eps_in_sqrt),
                ("maximize", self.maximize),
            ],
        )
    }

    fn kernel(&self) -> &'static KernelSpec {
        &KERNEL
    }

    fn state_init(&self) -> Vec<Option<f32>> {
        vec![Some(0.0), Some(0.0), self.amsgrad.then_some(0.0)]
    }

    fn overrides(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("MAXIMIZE", flag(self.maximize)),
            ("EPS_IN_SQRT", flag(self.eps_in_sqrt)),
            ("AMSGRAD", flag(self.amsgrad)),
        ]
    }

    fn uniform(&self, step: u64, lr: f64) -> UniformBlock {
        UniformBlock::of(&self.scalars(step, lr))
    }

    fn variants(&self) -> Vec<Optimizer> {
        let bools = [false, true];
        let mut out = Vec::new();
        for (amsgrad, eps_in_sqrt) in pairs(bools, bools) {
            for (weight_decay, maximize) in pairs([0.0, 1e-2], bools) {
                let c = Adam {
                    lr: 1e-2,
                    betas: (0.8, 0.99),
                    amsgrad,
                    eps_in_sqrt,
                    weight_decay,
                    maximize,
                    ..self.clone()
                };
                out.push(c.into());
            }
        }
        out
    }

    fn state_variants(&self) -> Vec<(&'static str, Optimizer)> {
        let amsgrad = Adam {
            amsgrad: true,
            ..self.clone()
        };
        vec![("amsgrad", amsgrad.into())]
    }
}
