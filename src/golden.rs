//! Reference trajectories recorded from PyTorch and optax (format: `tests/golden/FORMAT.md`),
//! and checking the GPU kernels and the CPU reference against them step by step.

use std::path::Path;

use ndarray::{ArrayView1, ArrayViewMut1};
use safetensors::{Dtype, SafeTensors};

use crate::compare::{ErrorStats, Tolerance};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuOptimizer};
use crate::optim::Optimizer;
use crate::reference::CpuOptimizer;

/// One recorded optimizer run.
#[derive(Clone, Debug)]
pub struct Trajectory {
    /// Where it was read from.
    pub path: String,
    /// The optimizer and hyperparameters it was recorded with.
    pub optimizer: Optimizer,
    /// `description` metadata (may be empty).
    pub description: String,
    /// `framework` metadata (may be empty).
    pub framework: String,
    /// Parameters per step.
    pub n: usize,
    /// Number of steps.
    pub steps: usize,
    /// Parameters before the first step.
    pub params0: Vec<f32>,
    /// Gradients, `steps × n`, row-major.
    pub grads: Vec<f32>,
    /// Parameters after each step, `steps × n`.
    pub params: Vec<f32>,
    /// Learning rate of each step.
    pub lr: Vec<f32>,
}

impl Trajectory {
    /// Reads and checks a trajectory file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path_str = path.as_ref().display().to_string();
        let bytes = std::fs::read(path.as_ref()).map_err(|source| Error::Io {
            path: path_str.clone(),
            source,
        })?;
        Self::parse(&path_str, &bytes)
    }

    /// Parses a trajectory from the bytes of a safetensors file; `path` names it in errors.
    pub fn parse(path: &str, bytes: &[u8]) -> Result<Self> {
        let bad = |message: String| Error::Golden {
            path: path.to_string(),
            message,
        };
        let (_, metadata) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let tensors = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let meta = metadata.metadata().clone().unwrap_or_default();
        let get_meta = |key: &str| meta.get(key).cloned();
        let name = get_meta("optimizer").ok_or_else(|| bad("metadata lacks `optimizer`".into()))?;
        let hyper_text = get_meta("hyper").unwrap_or_else(|| "{}".into());
        let hyper: serde_json::Value = serde_json::from_str(&hyper_text)
            .map_err(|e| bad(format!("metadata `hyper` is not JSON: {e}")))?;
        let optimizer = Optimizer::from_torch(&name, &hyper).map_err(|e| bad(e.to_string()))?;

        let tensor = |key: &str| -> Result<(Vec<usize>, Vec<f32>)> {
            let view = tensors
                .tensor(key)
                .map_err(|_| bad(format!("missing tensor `{key}`")))?;
            if view.dtype() != Dtype::F32 {
                return Err(bad(format!(
                    "tensor `{key}` is {:?}, expected F32",
                    view.dtype()
                )));
            }
            let data = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok((view.shape().to_vec(), data))
        };
        let (s_params0, params0) = tensor("params0")?;
        let (s_grads, grads) = tensor("grads")?;
        let (s_params, params) = tensor("params")?;
        let (s_lr, lr) = tensor("lr")?;
        let [n] = s_params0[..] else {
            return Err(bad(format!(
                "params0 has shape {s_params0:?}, expected [n]"
            )));
        };
        let [steps, _] = s_grads[..] else {
            return Err(bad(format!(
                "grads has shape {s_grads:?}, expected [steps, n]"
            )));
        };
        for (key, shape, expected) in [
            ("grads", &s_grads, vec![steps, n]),
            ("params", &s_params, vec![steps, n]),
            ("lr", &s_lr, vec![steps]),
        ] {
            if *shape != expected {
                return Err(bad(format!(
                    "{key} has shape {shape:?}, expected {expected:?}"
                )));
            }
        }
        for (key, value) in [("n", n), ("steps", steps)] {
            if let Some(text) = get_meta(key)
                && text.trim().parse::<usize>().ok() != Some(value)
            {
                {
                    return Err(bad(format!(
                        "metadata {key}={text} disagrees with the tensors ({value})"
                    )));
                }
            }
        }
        if n == 0 {
            return Err(bad("the trajectory has no parameters".into()));
        }
        Ok(Self {
            path: path.to_string(),
            optimizer,
            description: get_meta("description").unwrap_or_default(),
            framework: get_meta("framework").unwrap_or_default(),
            n,
            steps,
            params0,
            grads,
            params,
            lr,
        })
    }

    /// The gradient handed to step `t` (0-based).
    pub fn grad(&self, t: usize) -> &[f32] {
        &self.grads[t * self.n..(t + 1) * self.n]
    }

    /// The recorded parameters after step `t` (0-based).
    pub fn expected(&self, t: usize) -> &[f32] {
        &self.params[t * self.n..(t + 1) * self.n]
    }

    /// The learning rate of step `t` (0-based). The file stores it in f32; where it equals the
    /// configured lr rounded to f32, the configured f64 value is used, as PyTorch used it.
    pub fn lr(&self, t: usize) -> f64 {
        let configured = self.optimizer.lr();
        if self.lr[t] == configured as f32 {
            configured
        } else {
            f64::from(self.lr[t])
        }
    }

    /// Runs the trajectory through the CPU reference and compares every step.
    pub fn check_cpu(&self, tol: &Tolerance) -> Result<ErrorStats> {
        let mut opt = CpuOptimizer::new(self.optimizer.clone(), self.n)?;
        let mut p = self.params0.clone();
        let mut stats = ErrorStats::default();
        for t in 0..self.steps {
            opt.step_with_lr(
                ArrayViewMut1::from(&mut p[..]),
                ArrayView1::from(self.grad(t)),
                self.lr(t),
            )?;
            stats.add(tol, t as u64 + 1, &p, self.expected(t));
        }
        Ok(stats)
    }

    /// Runs the trajectory through the GPU kernel and compares every step.
    pub fn check_gpu(&self, gpu: &Gpu, tol: &Tolerance) -> Result<ErrorStats> {
        let params = gpu.upload("golden/params", &self.params0)?;
        let grads = gpu.upload("golden/grads", self.grad(0))?;
        let mut opt = GpuOptimizer::new(gpu, self.optimizer.clone(), &params, &grads)?;
        let mut stats = ErrorStats::default();
        for t in 0..self.steps {
            gpu.write(&grads, 0, self.grad(t))?;
            opt.step_with_lr(gpu, self.lr(t))?;
            stats.add(tol, t as u64 + 1, &opt.read_params(gpu)?, self.expected(t));
        }
        Ok(stats)
    }
}
