//! Optimizer configurations: PyTorch's names, defaults and argument checks, the per-step
//! scalars each kernel reads, and the description of each kernel. One file per optimizer; the
//! update rules themselves live in `shaders/*.wgsl` and, mirrored line for line, in
//! `crate::reference`. No GPU code here.
//!
//! Adding an optimizer: its file here (configuration, scalars, [`KernelSpec`], the `Rule`
//! implementation), its shader, its CPU mirror, and one line in the registry below.

mod adadelta;
mod adagrad;
mod adam;
mod adamw;
mod guard;
mod hyper;
mod precision;
mod rmsprop;
mod rule;
mod schedule;
mod sgd;
mod sparse;
mod sparse_adam;

pub use adadelta::{Adadelta, AdadeltaScalars};
pub use adagrad::{Adagrad, AdagradScalars};
pub use adam::{Adam, AdamScalars};
pub use guard::{
    GUARD_BLOCK, GUARD_LANES, GUARD_PER_LANE, Guard, GuardOutcome, LossScaler, ScalerState,
    finish_guard, initial_scaler_state, non_finite_bits, unscale_of,
};
pub use precision::{HalfFormat, Precision, hash32, random_bits, round_bf16_stochastic, step_key};
pub use rmsprop::{Rmsprop, RmspropScalars};
pub use rule::{KernelSpec, UniformLayout};
pub use schedule::{Schedule, Scheduler};
pub use sgd::{Sgd, SgdScalars};
pub use sparse::SparseOptimizer;
pub use sparse_adam::{SparseAdam, SparseAdamScalars};

pub use rule::MAX_STATE;
pub(crate) use rule::{Block, Mirror, UniformBlock, Visit};
use rule::{Rule, pairs, uniform_layout};

use crate::error::{Error, Result};

/// Declares the optimizers: one line each, with the PyTorch names it answers to and the
/// defaults of each. It makes [`Optimizer`] and its conversions, and the only two places that
/// match on it: `rule` (what every optimizer offers) and `visit` (code generic over the type).
macro_rules! registry {
    ($($(#[$doc:meta])* $kind:ident: $($name:literal => $preset:expr),+;)+) => {
        /// One optimizer with its hyperparameters. AdamW is [`Adam`] with decoupled weight
        /// decay (see [`Adam::adamw`]), as in PyTorch. More optimizers will come: a `match`
        /// outside this crate needs an arm for the others.
        #[derive(Clone, Debug, PartialEq)]
        #[non_exhaustive]
        pub enum Optimizer {
            $($(#[$doc])* $kind($kind),)+
        }

        $(impl From<$kind> for Optimizer {
            fn from(config: $kind) -> Self {
                Self::$kind(config)
            }
        })+

        impl Optimizer {
            /// Every name [`Optimizer::default_for`], [`Optimizer::from_torch`] and the command
            /// line accept, in registry order.
            pub const NAMES: [&'static str; [$($($name),+),+].len()] = [$($($name),+),+];

            /// PyTorch's defaults of the optimizer called `name` (lower case).
            fn preset(name: &str) -> Option<Self> {
                match name {
                    $($($name => Some(Self::$kind($preset)),)+)+
                    _ => None,
                }
            }

            fn rule(&self) -> &dyn Rule {
                match self {
                    $(Self::$kind(config) => config,)+
                }
            }

            fn rule_mut(&mut self) -> &mut dyn Rule {
                match self {
                    $(Self::$kind(config) => config,)+
                }
            }

            /// Runs `visitor` on the configuration inside, as its own type.
            pub(crate) fn visit<V: Visit>(&self, visitor: V) -> V::Output {
                match self {
                    $(Self::$kind(config) => visitor.visit(config),)+
                }
            }
        }
    };
}

registry! {
    /// `torch.optim.SGD`
    Sgd: "sgd" => Sgd::default();
    /// `torch.optim.Adagrad`
    Adagrad: "adagrad" => Adagrad::default();
    /// `torch.optim.RMSprop`
    Rmsprop: "rmsprop" => Rmsprop::default();
    /// `torch.optim.Adadelta`
    Adadelta: "adadelta" => Adadelta::default();
    /// `torch.optim.Adam`, `torch.optim.AdamW`
    Adam: "adam" => Adam::default(), "adamw" => Adam::adamw();
}

/// One state tensor of an optimizer: PyTorch's state name (also the WGSL binding's name) and
/// the value it starts at.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StateSlot {
    /// The name in PyTorch's `optimizer.state[p]` and in the shader.
    pub name: &'static str,
    /// Initial value of every element.
    pub init: f32,
}

impl Optimizer {
    /// PyTorch's defaults for the optimizer called `name` (`adamw` gives decoupled Adam).
    pub fn default_for(name: &str) -> Result<Self> {
        Self::preset(&name.to_ascii_lowercase()).ok_or_else(|| Error::Unsupported {
            optimizer: "fusedopt",
            message: format!(
                "unknown optimizer {name:?}; known: {}",
                Self::NAMES.join(", ")
            ),
        })
    }

    /// Builds an optimizer from PyTorch's class name and a JSON object of its keyword arguments
    /// (the `hyper` metadata of a reference trajectory). Absent keys keep PyTorch's defaults;
    /// unknown keys are an error, so nothing is silently ignored. The result is validated.
    pub fn from_torch(name: &str, hyper: &serde_json::Value) -> Result<Self> {
        let mut opt = Self::default_for(name)?;
        let mut reader = hyper::HyperReader::new(opt.name(), hyper)?;
        opt.rule_mut().torch_fields(&mut reader)?;
        reader.finish()?;
        opt.validate()?;
        Ok(opt)
    }

    /// PyTorch's keyword arguments of this configuration, as a JSON object that
    /// [`Optimizer::from_torch`] reads back to the same configuration (fusedopt's own options,
    /// such as `eps_in_sqrt`, included).
    pub fn to_torch(&self) -> serde_json::Value {
        let mut writer = hyper::HyperWriter::default();
        self.clone()
            .rule_mut()
            .torch_fields(&mut writer)
            .expect("writing a field cannot fail");
        serde_json::Value::Object(writer.map)
    }

    /// PyTorch's lower-case class name (`adamw` for decoupled Adam).
    pub fn name(&self) -> &'static str {
        self.rule().name()
    }

    /// The configured learning rate (the one used when a step is given none).
    pub fn lr(&self) -> f64 {
        self.rule().lr()
    }

    /// Rejects the values PyTorch rejects, naming the parameter and the value.
    pub fn validate(&self) -> Result<()> {
        self.rule().validate()
    }

    /// A short description of the options that matter, for tables (`momentum=0.9,nesterov`).
    pub fn describe(&self) -> String {
        self.rule().describe()
    }

    /// The kernel that runs this optimizer.
    pub fn kernel(&self) -> &'static KernelSpec {
        self.rule().kernel()
    }

    /// Values of the kernel's `override` constants for this configuration.
    pub fn overrides(&self) -> Vec<(&'static str, f64)> {
        self.rule().overrides()
    }

    /// Names of the state tensors this configuration keeps, in binding order.
    pub fn state_names(&self) -> Vec<&'static str> {
        self.state_slots()
            .into_iter()
            .flatten()
            .map(|s| s.name)
            .collect()
    }

    /// Bytes one step moves per element in f32: parameter read and write, gradient read, and
    /// each state tensor read and written.
    pub fn bytes_per_element(&self) -> usize {
        12 + 8 * self.state_names().len()
    }

    /// Each option that changes the state this configuration keeps (and so the bytes a step
    /// moves), applied to it, with a short name (`momentum`, `centered`, `amsgrad`...).
    pub fn state_variants(&self) -> Vec<(&'static str, Optimizer)> {
        self.rule().state_variants()
    }

    /// One entry per state binding of the kernel, in binding order; `None` where this
    /// configuration does not use the binding (nothing is allocated for it).
    pub(crate) fn state_slots(&self) -> Vec<Option<StateSlot>> {
        let names = self.kernel().state;
        let init = self.rule().state_init();
        debug_assert_eq!(
            init.len(),
            names.len(),
            "one initial value per state binding"
        );
        names
            .iter()
            .zip(init)
            .map(|(&name, init)| init.map(|init| StateSlot { name, init }))
            .collect()
    }

    /// The uniform block of step `step` (1-based) at learning rate `lr`.
    pub(crate) fn uniform(&self, step: u64, lr: f64) -> UniformBlock {
        self.rule().uniform(step, lr)
    }

    /// Option sets around this configuration that change the arithmetic (see
    /// `crate::testing::variants`).
    #[cfg_attr(
        not(feature = "testing"),
        expect(dead_code, reason = "used by tests and tools")
    )]
    pub(crate) fn variants(&self) -> Vec<Optimizer> {
        self.rule().variants()
    }
}

/// `value` must satisfy `ok`; the check is written so that NaN fails, as in PyTorch.
pub(crate) fn require(
    optimizer: &'static str,
    name: &'static str,
    value: f64,
    ok: bool,
    requirement: &'static str,
) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidHyperparameter {
            optimizer,
            name,
            value,
            requirement,
        })
    }
}

/// PyTorch's `if not 0.0 <= value: raise ValueError(...)`.
pub(crate) fn non_negative(optimizer: &'static str, name: &'static str, value: f64) -> Result<()> {
    require(optimizer, name, value, value >= 0.0, "must be >= 0")
}

/// The number of the step after `step`; an error past `u64::MAX` (a count set by hand), where
/// a wrapped count of 0 would divide by `1 − β^0 = 0` in the bias corrections.
pub(crate) fn next_step(optimizer: &'static str, step: u64) -> Result<u64> {
    step.checked_add(1).ok_or_else(|| Error::InvalidSetting {
        what: "step count".into(),
        message: format!("the {optimizer} optimizer has taken u64::MAX steps; there is no next"),
    })
}

/// PyTorch's `if not 0.0 <= beta < 1.0` for betas.
pub(crate) fn in_unit_interval(
    optimizer: &'static str,
    name: &'static str,
    value: f64,
) -> Result<()> {
    require(
        optimizer,
        name,
        value,
        (0.0..1.0).contains(&value),
        "must be in [0, 1)",
    )
}

/// Override constant value of a boolean.
pub(crate) fn flag(on: bool) -> f64 {
    if on { 1.0 } else { 0.0 }
}

/// `name=value` when the value differs from the default, for [`Optimizer::describe`].
pub(crate) fn describe_fields(fields: &[(&str, f64, f64)], flags: &[(&str, bool)]) -> String {
    let mut parts: Vec<String> = fields
        .iter()
        .filter(|(_, value, default)| value != default)
        .map(|(name, value, _)| format!("{name}={value}"))
        .collect();
    parts.extend(
        flags
            .iter()
            .filter(|(_, on)| *on)
            .map(|(name, _)| name.to_string()),
    );
    if parts.is_empty() {
        "defaults".to_string()
    } else {
        parts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel's description agrees with its configurations: one initial value per state
    /// binding for every option set, a uniform that fits the block, names unique.
    #[test]
    fn every_kernel_description_is_consistent() {
        let mut kernels = Vec::new();
        for name in Optimizer::NAMES {
            let preset = Optimizer::default_for(name).unwrap();
            assert_eq!(preset.name(), name, "a preset answers to its own name");
            for config in preset.variants() {
                let spec = config.kernel();
                assert_eq!(config.rule().state_init().len(), spec.state.len(), "{name}");
                assert!(spec.state.len() <= MAX_STATE, "{name}: at most {MAX_STATE}");
                assert!(spec.uniform.size <= UniformBlock::CAPACITY, "{name}");
                assert_eq!(config.uniform(1, 0.1).as_bytes().len(), spec.uniform.size);
                config.validate().unwrap();
                if !kernels.iter().any(|k: &&KernelSpec| std::ptr::eq(*k, spec)) {
                    kernels.push(spec);
                }
            }
        }
        let mut names: Vec<&str> = kernels.iter().map(|k| k.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), kernels.len(), "kernel names are unique");
    }

    /// Every option set survives the trip through PyTorch's keyword arguments and JSON text
    /// exactly (a checkpoint's hyperparameters), including values with no short decimal form.
    #[test]
    fn keyword_arguments_read_back_to_the_same_configuration() {
        for name in Optimizer::NAMES {
            let preset = Optimizer::default_for(name).unwrap();
            let mut configs = preset.variants();
            configs.push(preset.clone());
            for config in configs {
                let text = config.to_torch().to_string();
                let json: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(
                    Optimizer::from_torch(name, &json).unwrap(),
                    config,
                    "{text}"
                );
            }
        }
        let odd = Adam {
            lr: 0.1 + 0.2,
            betas: (1.0 - f64::EPSILON, 0.999_999_999_999_9),
            ..Adam::adamw()
        };
        let text = Optimizer::from(odd.clone()).to_torch().to_string();
        let back = Optimizer::from_torch("adamw", &serde_json::from_str(&text).unwrap());
        assert_eq!(back.unwrap(), odd.into());
        // AdamW's param_groups in PyTorch carry `decoupled_weight_decay: True`; False is not
        // AdamW.
        let torch_group = serde_json::json!({"lr": 1e-3, "decoupled_weight_decay": true});
        assert!(Optimizer::from_torch("adamw", &torch_group).is_ok());
        let coupled = serde_json::json!({"decoupled_weight_decay": false});
        assert!(Optimizer::from_torch("adamw", &coupled).is_err());
    }
}
