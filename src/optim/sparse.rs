//! Optimizers of row-sparse gradients: an embedding table `[rows, dim]` whose gradient is `k`
//! looked-up row indices (duplicates allowed) and one gradient row per lookup. Duplicates are
//! summed first, as PyTorch coalesces a sparse gradient; then only the touched rows and their
//! state move. Kept apart from [`super::Optimizer`]: a sparse step takes other inputs, and
//! PyTorch's dense optimizers on a dense gradient are not these.

use super::adagrad::KERNEL as ADAGRAD_KERNEL;
use super::hyper::{HyperFields, HyperReader, HyperWriter};
use super::rule::Rule;
use super::sparse_adam::{self, KERNEL as SPARSE_ADAM_KERNEL};
use super::{Adagrad, KernelSpec, SparseAdam, UniformBlock, flag, require};
use crate::error::{Error, Result};

/// A row-sparse optimizer and its hyperparameters.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum SparseOptimizer {
    /// `torch.optim.Adagrad` on a sparse gradient: `lr`, `lr_decay`,
    /// `initial_accumulator_value`, `eps` (and `eps_in_sqrt`), `maximize`. PyTorch refuses
    /// weight decay with sparse gradients, and so does this.
    Adagrad(Adagrad),
    /// Row-wise Adagrad, as recommender systems step their embedding tables: one accumulator
    /// per row, `s ← s + mean(g²)` over the row's coalesced gradient, then
    /// `p ← p − clr·g / (√s + eps)`; `dim` times less state than Adagrad. Same options.
    RowWiseAdagrad(Adagrad),
    /// `torch.optim.SparseAdam`.
    Adam(SparseAdam),
}

impl SparseOptimizer {
    /// Every name [`SparseOptimizer::from_torch`] accepts.
    pub const NAMES: [&'static str; 3] = ["adagrad", "rowwise_adagrad", "sparse_adam"];

    /// The optimizer called `name` (one of [`Self::NAMES`]) with the keyword arguments of a
    /// JSON object (PyTorch's names; absent keys keep the defaults, unknown keys are an
    /// error), validated.
    pub fn from_torch(name: &str, hyper: &serde_json::Value) -> Result<Self> {
        let mut config = match name.to_ascii_lowercase().as_str() {
            "adagrad" => Self::Adagrad(Adagrad::default()),
            "rowwise_adagrad" | "row_wise_adagrad" => Self::RowWiseAdagrad(Adagrad::default()),
            "sparse_adam" | "sparseadam" => Self::Adam(SparseAdam::default()),
            _ => {
                return Err(Error::Unsupported {
                    optimizer: "fusedopt",
                    message: format!(
                        "unknown sparse optimizer {name:?}; known: {}",
                        Self::NAMES.join(", ")
                    ),
                });
            }
        };
        let mut reader = HyperReader::new(config.name(), hyper)?;
        config.torch_fields(&mut reader)?;
        reader.finish()?;
        config.validate()?;
        Ok(config)
    }

    /// The keyword arguments [`Self::from_torch`] reads back to this configuration.
    pub fn to_torch(&self) -> serde_json::Value {
        let mut writer = HyperWriter::default();
        self.clone()
            .torch_fields(&mut writer)
            .expect("writing a field cannot fail");
        serde_json::Value::Object(writer.map)
    }

    fn torch_fields(&mut self, h: &mut dyn HyperFields) -> Result<()> {
        match self {
            Self::Adagrad(c) | Self::RowWiseAdagrad(c) => Rule::torch_fields(c, h),
            Self::Adam(c) => c.torch_fields(h),
        }
    }

    /// The optimizer's name (PyTorch's, lower case, for the two it has).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Adagrad(_) => "adagrad",
            Self::RowWiseAdagrad(_) => "rowwise_adagrad",
            Self::Adam(_) => sparse_adam::NAME,
        }
    }

    /// The configured learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            Self::Adagrad(c) | Self::RowWiseAdagrad(c) => c.lr,
            Self::Adam(c) => c.lr,
        }
    }

    /// Rejects what PyTorch rejects: Adagrad's checks and, on a sparse gradient, any weight
    /// decay; SparseAdam's checks.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Adagrad(c) | Self::RowWiseAdagrad(c) => {
                c.validate()?;
                require(
                    self.name(),
                    "weight_decay",
                    c.weight_decay,
                    c.weight_decay == 0.0,
                    "must be 0 with sparse gradients (PyTorch refuses it too)",
                )
            }
            Self::Adam(c) => c.validate(),
        }
    }

    /// The options that differ from the defaults, for tables.
    pub fn describe(&self) -> String {
        match self {
            Self::Adagrad(c) | Self::RowWiseAdagrad(c) => Rule::describe(c),
            Self::Adam(c) => c.describe(),
        }
    }

    /// The optimizer's file of `update` (Adagrad's dense one serves both Adagrads).
    pub fn kernel(&self) -> &'static KernelSpec {
        match self {
            Self::Adagrad(_) | Self::RowWiseAdagrad(_) => &ADAGRAD_KERNEL,
            Self::Adam(_) => &SPARSE_ADAM_KERNEL,
        }
    }

    /// Whether the state holds one value per row (row-wise Adagrad) instead of one per
    /// element.
    pub fn row_state(&self) -> bool {
        matches!(self, Self::RowWiseAdagrad(_))
    }

    /// The state tensors (PyTorch's names) and the value each starts at.
    pub fn state_init(&self) -> Vec<(&'static str, f32)> {
        match self {
            Self::Adagrad(c) | Self::RowWiseAdagrad(c) => {
                vec![("sum", c.initial_accumulator_value as f32)]
            }
            Self::Adam(_) => vec![("exp_avg", 0.0), ("exp_avg_sq", 0.0)],
        }
    }

    /// Values of the kernel's `override` constants, `sparse.wgsl`'s included.
    pub fn overrides(&self) -> Vec<(&'static str, f64)> {
        let mut out = match self {
            Self::Adagrad(c) | Self::RowWiseAdagrad(c) => vec![
                ("MAXIMIZE", flag(c.maximize)),
                ("EPS_IN_SQRT", flag(c.eps_in_sqrt)),
                // Row-wise: the sum holds this step's mean square before `update` runs.
                ("ACCUMULATED", flag(self.row_state())),
            ],
            Self::Adam(c) => c.overrides(),
        };
        out.push(("ROW_STATE", flag(self.row_state())));
        out.push(("STATE_COUNT", self.state_init().len() as f64));
        out
    }

    /// The scalars of step `step` (1-based; every step of the table counts, those that
    /// touched no row included) at learning rate `lr`.
    pub(crate) fn uniform(&self, step: u64, lr: f64) -> UniformBlock {
        match self {
            Self::Adagrad(c) | Self::RowWiseAdagrad(c) => UniformBlock::of(&c.scalars(step, lr)),
            Self::Adam(c) => UniformBlock::of(&c.scalars(step, lr)),
        }
    }

    /// Option sets that change the arithmetic, every term away from zero: what validation
    /// runs against the CPU reference.
    pub fn variants() -> Vec<SparseOptimizer> {
        let mut out = Vec::new();
        for row_wise in [false, true] {
            for (lr_decay, init, eps_in_sqrt, maximize) in [
                (0.0, 0.0, false, false),
                (1e-2, 0.1, false, true),
                (0.0, 0.1, true, false),
            ] {
                let c = Adagrad {
                    lr: 0.1,
                    lr_decay,
                    initial_accumulator_value: init,
                    eps_in_sqrt,
                    maximize,
                    ..Adagrad::default()
                };
                out.push(if row_wise {
                    Self::RowWiseAdagrad(c)
                } else {
                    Self::Adagrad(c)
                });
            }
        }
        for maximize in [false, true] {
            out.push(Self::Adam(SparseAdam {
                lr: 1e-2,
                betas: (0.8, 0.99),
                eps: 1e-6,
                maximize,
            }));
        }
        out
    }
}

impl From<SparseAdam> for SparseOptimizer {
    fn from(config: SparseAdam) -> Self {
        Self::Adam(config)
    }
}
