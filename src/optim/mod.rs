//! Optimizer configurations: PyTorch's names, defaults and argument checks, and the per-step
//! scalars each kernel reads. One file per optimizer; the update rules themselves live in
//! `shaders/*.wgsl` and, mirrored line for line, in [`crate::reference`].

mod adadelta;
mod adagrad;
mod adam;
mod adamw;
mod hyper;
mod rmsprop;
mod sgd;

pub use adadelta::{Adadelta, AdadeltaScalars};
pub use adagrad::{Adagrad, AdagradScalars};
pub use adam::{Adam, AdamScalars};
pub use rmsprop::{Rmsprop, RmspropScalars};
pub use sgd::{Sgd, SgdScalars};

use crate::kernels::Shader;
use crate::{Error, Result};

/// One optimizer with its hyperparameters. AdamW is [`Adam`] with decoupled weight decay
/// (see [`Adam::adamw`]), as in PyTorch.
#[derive(Clone, Debug, PartialEq)]
pub enum Optimizer {
    /// `torch.optim.SGD`
    Sgd(Sgd),
    /// `torch.optim.Adagrad`
    Adagrad(Adagrad),
    /// `torch.optim.RMSprop`
    Rmsprop(Rmsprop),
    /// `torch.optim.Adadelta`
    Adadelta(Adadelta),
    /// `torch.optim.Adam`, `torch.optim.AdamW`
    Adam(Adam),
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

/// What the GPU host layer needs from each optimizer configuration.
pub(crate) trait UpdateRule {
    /// The shader that runs this optimizer.
    fn shader(&self) -> Shader;
    /// One entry per state binding of the shader, in binding order; `None` where this
    /// configuration does not use the binding (nothing is allocated for it).
    fn state_slots(&self) -> Vec<Option<StateSlot>>;
    /// Values of the shader's `override` constants, fixed when the pipeline is built.
    fn overrides(&self) -> Vec<(&'static str, f64)>;
    /// The uniform block for step `step` (1-based) at learning rate `lr`.
    fn uniform(&self, step: u64, lr: f64) -> UniformBlock;
}

/// The bytes of one step's uniform struct, without a heap allocation on the step path.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UniformBlock {
    bytes: [u8; Self::CAPACITY],
    len: usize,
}

impl UniformBlock {
    /// Largest uniform struct of any kernel, in bytes.
    pub(crate) const CAPACITY: usize = 64;

    pub(crate) fn of<T: bytemuck::Pod>(value: &T) -> Self {
        let src = bytemuck::bytes_of(value);
        let mut bytes = [0; Self::CAPACITY];
        bytes[..src.len()].copy_from_slice(src);
        Self {
            bytes,
            len: src.len(),
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Optimizer {
    /// All optimizer names accepted by [`Optimizer::from_torch`] and the CLI.
    pub const NAMES: [&'static str; 6] = ["sgd", "adagrad", "rmsprop", "adadelta", "adam", "adamw"];

    /// PyTorch's defaults for the optimizer called `name` (`adamw` gives decoupled Adam).
    pub fn default_for(name: &str) -> Result<Self> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "sgd" => Self::Sgd(Sgd::default()),
            "adagrad" => Self::Adagrad(Adagrad::default()),
            "rmsprop" => Self::Rmsprop(Rmsprop::default()),
            "adadelta" => Self::Adadelta(Adadelta::default()),
            "adam" => Self::Adam(Adam::default()),
            "adamw" => Self::Adam(Adam::adamw()),
            _ => {
                return Err(Error::Unsupported {
                    optimizer: "fusedopt",
                    message: format!(
                        "unknown optimizer {name:?}; known: {}",
                        Self::NAMES.join(", ")
                    ),
                });
            }
        })
    }

    /// Builds an optimizer from PyTorch's class name and a JSON object of its keyword arguments
    /// (the `hyper` metadata of a reference trajectory). Absent keys keep PyTorch's defaults;
    /// unknown keys are an error, so nothing is silently ignored. The result is validated.
    pub fn from_torch(name: &str, hyper: &serde_json::Value) -> Result<Self> {
        let mut opt = Self::default_for(name)?;
        let mut reader = hyper::HyperReader::new(opt.name(), hyper)?;
        match &mut opt {
            Self::Sgd(c) => c.read(&mut reader)?,
            Self::Adagrad(c) => c.read(&mut reader)?,
            Self::Rmsprop(c) => c.read(&mut reader)?,
            Self::Adadelta(c) => c.read(&mut reader)?,
            Self::Adam(c) => c.read(&mut reader)?,
        }
        reader.finish()?;
        opt.validate()?;
        Ok(opt)
    }

    /// PyTorch's lower-case class name (`adamw` for decoupled Adam).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sgd(_) => "sgd",
            Self::Adagrad(_) => "adagrad",
            Self::Rmsprop(_) => "rmsprop",
            Self::Adadelta(_) => "adadelta",
            Self::Adam(c) if c.decoupled_weight_decay => "adamw",
            Self::Adam(_) => "adam",
        }
    }

    /// The configured learning rate (the one used when a step is given none).
    pub fn lr(&self) -> f64 {
        match self {
            Self::Sgd(c) => c.lr,
            Self::Adagrad(c) => c.lr,
            Self::Rmsprop(c) => c.lr,
            Self::Adadelta(c) => c.lr,
            Self::Adam(c) => c.lr,
        }
    }

    /// Rejects the values PyTorch rejects, naming the parameter and the value.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Sgd(c) => c.validate(),
            Self::Adagrad(c) => c.validate(),
            Self::Rmsprop(c) => c.validate(),
            Self::Adadelta(c) => c.validate(),
            Self::Adam(c) => c.validate(),
        }
    }

    /// Names of the state tensors this configuration keeps, in binding order.
    pub fn state_names(&self) -> Vec<&'static str> {
        self.rule()
            .state_slots()
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

    /// A short description of the options that matter, for tables (`momentum=0.9,nesterov`).
    pub fn describe(&self) -> String {
        match self {
            Self::Sgd(c) => c.describe(),
            Self::Adagrad(c) => c.describe(),
            Self::Rmsprop(c) => c.describe(),
            Self::Adadelta(c) => c.describe(),
            Self::Adam(c) => c.describe(),
        }
    }

    /// The shader that runs this optimizer.
    pub fn shader(&self) -> Shader {
        self.rule().shader()
    }

    pub(crate) fn rule(&self) -> &dyn UpdateRule {
        match self {
            Self::Sgd(c) => c,
            Self::Adagrad(c) => c,
            Self::Rmsprop(c) => c,
            Self::Adadelta(c) => c,
            Self::Adam(c) => c,
        }
    }
}

macro_rules! impl_from_config {
    ($($config:ident => $variant:ident),*) => {
        $(impl From<$config> for Optimizer {
            fn from(c: $config) -> Self {
                Self::$variant(c)
            }
        })*
    };
}
impl_from_config!(Sgd => Sgd, Adagrad => Adagrad, Rmsprop => Rmsprop, Adadelta => Adadelta, Adam => Adam);

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
