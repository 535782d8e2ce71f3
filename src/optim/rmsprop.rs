//! RMSprop: plain, centered, and with momentum.

use super::{
    KernelSpec, Optimizer, Rule, UniformBlock, describe_fields, flag, hyper::HyperFields,
    non_negative, pairs, uniform_layout,
};
use crate::error::Result;

/// `torch.optim.RMSprop` (PyTorch defaults), Hinton's lecture 6e:
///
/// ```text
/// g ← g + weight_decay·p
/// v ← alpha·v + (1 − alpha)·g²
/// centered:  ḡ ← lerp(ḡ, g, 1 − alpha);  s = v − ḡ²     else s = v
/// d = √s + eps                  or √(s + eps) with eps_in_sqrt (optax)
/// momentum > 0:  b ← momentum·b + g/d;  p ← p − lr·b    (lr outside the buffer, as PyTorch)
/// else:          p ← p − lr·g/d
/// ```
/// State: `square_avg`, plus `grad_avg` if centered and `momentum_buffer` if momentum > 0.
#[derive(Clone, Debug, PartialEq)]
pub struct Rmsprop {
    /// Learning rate (PyTorch default 1e-2).
    pub lr: f64,
    /// Smoothing constant of the running averages (optax calls it decay, default 0.9).
    pub alpha: f64,
    /// Term added to the denominator.
    pub eps: f64,
    /// Coupled (L2) weight decay.
    pub weight_decay: f64,
    /// Momentum factor; 0 turns momentum (and its buffer) off.
    pub momentum: f64,
    /// Normalize by an estimate of the gradient's variance instead of its second moment.
    pub centered: bool,
    /// Put eps inside the square root, as optax does.
    pub eps_in_sqrt: bool,
    /// Maximize the objective instead of minimizing it.
    pub maximize: bool,
}

impl Default for Rmsprop {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
            eps_in_sqrt: false,
            maximize: false,
        }
    }
}

/// The uniform of `shaders/rmsprop.wgsl` (same layout as the WGSL struct).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RmspropScalars {
    /// Learning rate of this step.
    pub lr: f32,
    /// Smoothing constant.
    pub alpha: f32,
    /// 1 − alpha, rounded once to f32.
    pub one_minus_alpha: f32,
    /// 1 − (1 − alpha) computed in f32, as ATen's lerp does.
    pub lerp_complement: f32,
    /// Denominator term.
    pub eps: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// Momentum factor.
    pub momentum: f32,
    _pad: f32,
}

const NAME: &str = "rmsprop";

impl Rmsprop {
    /// Rejects what `torch.optim.RMSprop.__init__` rejects.
    pub fn validate(&self) -> Result<()> {
        non_negative(NAME, "lr", self.lr)?;
        non_negative(NAME, "eps", self.eps)?;
        non_negative(NAME, "momentum", self.momentum)?;
        non_negative(NAME, "weight_decay", self.weight_decay)?;
        non_negative(NAME, "alpha", self.alpha)
    }

    /// The scalars of a step at learning rate `lr` (RMSprop has no step-dependent terms).
    pub fn scalars(&self, _step: u64, lr: f64) -> RmspropScalars {
        let one_minus_alpha = (1.0 - self.alpha) as f32;
        RmspropScalars {
            lr: lr as f32,
            alpha: self.alpha as f32,
            one_minus_alpha,
            lerp_complement: 1.0 - one_minus_alpha,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            momentum: self.momentum as f32,
            _pad: 0.0,
        }
    }

    /// Whether the momentum buffer is used (PyTorch: momentum > 0).
    pub fn has_momentum(&self) -> bool {
        self.momentum > 0.0
    }
}

static KERNEL: KernelSpec = KernelSpec {
    name: "rmsprop",
    source: include_str!("../../shaders/rmsprop.wgsl"),
    uniform: uniform_layout!(RmspropScalars {
        lr,
        alpha,
        one_minus_alpha,
        lerp_complement,
        eps,
        weight_decay,
        momentum
    }),
    state: &["square_avg", "grad_avg", "momentum_buffer"],
};

impl Rule for Rmsprop {
    fn name(&self) -> &'static str {
        NAME
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn validate(&self) -> Result<()> {
        Rmsprop::validate(self)
    }

    fn torch_fields(&mut self, h: &mut dyn HyperFields) -> Result<()> {
        h.number("lr", &mut self.lr)?;
        h.number("alpha", &mut self.alpha)?;
        h.number("eps", &mut self.eps)?;
        h.number("weight_decay", &mut self.weight_decay)?;
        h.number("momentum", &mut self.momentum)?;
        h.boolean("centered", &mut self.centered)?;
        h.boolean("eps_in_sqrt", &mut self.eps_in_sqrt)?;
        h.boolean("maximize", &mut self.maximize)
    }

    fn describe(&self) -> String {
        let d = Self::default();
        describe_fields(
            &[
                ("alpha", self.alpha, d.alpha),
                ("momentum", self.momentum, d.momentum),
                ("weight_decay", self.weight_decay, d.weight_decay),
            ],
            &[
                ("centered", self.centered),
                ("eps_in_sqrt", self.eps_in_sqrt),
                ("maximize", self.maximize),
            ],
        )
    }

    fn kernel(&self) -> &'static KernelSpec {
        &KERNEL
    }

    fn state_init(&self) -> Vec<Option<f32>> {
        vec![
            Some(0.0),
            self.centered.then_some(0.0),
            self.has_momentum().then_some(0.0),
        ]
    }

    fn overrides(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("MAXIMIZE", flag(self.maximize)),
            ("EPS_IN_SQRT", flag(self.eps_in_sqrt)),
            ("CENTERED", flag(self.centered)),
            ("HAS_MOMENTUM", flag(self.has_momentum())),
        ]
    }

    fn uniform(&self, step: u64, lr: f64) -> UniformBlock {
        UniformBlock::of(&self.scalars(step, lr))
    }

    fn variants(&self) -> Vec<Optimizer> {
        let bools = [false, true];
        let mut out = Vec::new();
        for (centered, momentum) in pairs(bools, [0.0, 0.9]) {
            for (eps_in_sqrt, (weight_decay, maximize)) in pairs(bools, pairs([0.0, 1e-2], bools)) {
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
        out
    }

    fn state_variants(&self) -> Vec<(&'static str, Optimizer)> {
        let with = |centered, momentum| {
            Rmsprop {
                centered,
                momentum,
                ..self.clone()
            }
            .into()
        };
        vec![
            ("centered", with(true, self.momentum)),
            ("momentum", with(self.centered, 0.9)),
            ("centered+momentum", with(true, 0.9)),
        ]
    }
}
