//! Format 3: an embedding table stepped by PyTorch with row-sparse gradients, checked through
//! the row-sparse GPU kernel and its CPU reference, every row after every step.

use safetensors::{Dtype, SafeTensors};

use crate::compare::{ErrorStats, Tolerance};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, SparseGpuOptimizer};
use crate::optim::SparseOptimizer;
use crate::reference::CpuSparse;

/// One recorded run of a sparse optimizer on an embedding table.
#[derive(Clone, Debug)]
pub struct SparseTrajectory {
    /// Where it was read from.
    pub path: String,
    /// The optimizer and hyperparameters it was recorded with.
    pub optimizer: SparseOptimizer,
    /// `description` metadata (may be empty).
    pub description: String,
    /// `framework` metadata (may be empty).
    pub framework: String,
    /// Rows of the table.
    pub rows: usize,
    /// Elements per row.
    pub dim: usize,
    /// Lookups per step.
    pub k: usize,
    /// Number of steps.
    pub steps: usize,
    /// The table before the first step, `rows × dim`.
    pub params0: Vec<f32>,
    /// The rows looked up, `steps × k`, each inside the table.
    pub indices: Vec<u32>,
    /// The gradient row of each lookup, `steps × k × dim`.
    pub values: Vec<f32>,
    /// The table after each step, `steps × rows × dim`.
    pub params: Vec<f32>,
    /// Learning rate of each step.
    pub lr: Vec<f32>,
}

impl SparseTrajectory {
    /// Parses a format-3 trajectory from the bytes of a safetensors file; `path` names it in
    /// errors. Shapes, dtypes, metadata and every index are checked.
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
        let name = meta
            .get("optimizer")
            .ok_or_else(|| bad("metadata lacks `optimizer`".into()))?;
        let hyper: serde_json::Value =
            serde_json::from_str(meta.get("hyper").map_or("{}", String::as_str))
                .map_err(|e| bad(format!("metadata `hyper` is not JSON: {e}")))?;
        let optimizer =
            SparseOptimizer::from_torch(name, &hyper).map_err(|e| bad(e.to_string()))?;
        let tensor = |key: &str, dtype: Dtype, width: usize| {
            let view = tensors
                .tensor(key)
                .map_err(|_| bad(format!("missing tensor `{key}`")))?;
            if view.dtype() != dtype {
                return Err(bad(format!(
                    "tensor `{key}` is {:?}, expected {dtype:?}",
                    view.dtype()
                )));
            }
            let words: Vec<&[u8]> = view.data().chunks_exact(width).collect();
            Ok((view.shape().to_vec(), words))
        };
        let floats = |key: &str| -> Result<(Vec<usize>, Vec<f32>)> {
            let (shape, words) = tensor(key, Dtype::F32, 4)?;
            let values = words
                .iter()
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok((shape, values))
        };
        let (s_params0, params0) = floats("params0")?;
        let (s_values, values) = floats("values")?;
        let (s_params, params) = floats("params")?;
        let (s_lr, lr) = floats("lr")?;
        let (s_indices, raw) = tensor("indices", Dtype::I64, 8)?;
        let (&[rows, dim], &[steps, k]) = (&s_params0[..], &s_indices[..]) else {
            return Err(bad(format!(
                "params0 {s_params0:?} and indices {s_indices:?}: expected [rows, dim] and \
                 [steps, k]"
            )));
        };
        for (key, shape, expected) in [
            ("values", &s_values, vec![steps, k, dim]),
            ("params", &s_params, vec![steps, rows, dim]),
            ("lr", &s_lr, vec![steps]),
        ] {
            if *shape != expected {
                return Err(bad(format!(
                    "{key} has shape {shape:?}, expected {expected:?}"
                )));
            }
        }
        for (key, value) in [("rows", rows), ("dim", dim), ("k", k), ("steps", steps)] {
            if let Some(text) = meta.get(key)
                && text.trim().parse::<usize>().ok() != Some(value)
            {
                return Err(bad(format!(
                    "metadata {key}={text} disagrees with the tensors ({value})"
                )));
            }
        }
        if rows == 0 || dim == 0 || steps == 0 {
            return Err(bad("the trajectory has no table or no steps".into()));
        }
        let mut indices = Vec::with_capacity(raw.len());
        for (i, b) in raw.iter().enumerate() {
            let index = i64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
            match u32::try_from(index) {
                Ok(row) if (row as usize) < rows => indices.push(row),
                _ => {
                    return Err(bad(format!(
                        "index {index} (step {}, lookup {}) lies outside {rows} rows",
                        i / k.max(1),
                        i % k.max(1)
                    )));
                }
            }
        }
        Ok(Self {
            path: path.to_string(),
            optimizer,
            description: meta.get("description").cloned().unwrap_or_default(),
            framework: meta.get("framework").cloned().unwrap_or_default(),
            rows,
            dim,
            k,
            steps,
            params0,
            indices,
            values,
            params,
            lr,
        })
    }

    /// The lookups of step `t` (0-based).
    pub fn indices(&self, t: usize) -> &[u32] {
        &self.indices[t * self.k..(t + 1) * self.k]
    }

    /// The gradient rows of step `t` (0-based).
    pub fn values(&self, t: usize) -> &[f32] {
        let n = self.k * self.dim;
        &self.values[t * n..(t + 1) * n]
    }

    /// The recorded table after step `t` (0-based).
    pub fn expected(&self, t: usize) -> &[f32] {
        let n = self.rows * self.dim;
        &self.params[t * n..(t + 1) * n]
    }

    /// The learning rate of step `t`: the configured f64 value where the file's f32 is its
    /// rounding, as PyTorch used it.
    pub fn lr(&self, t: usize) -> f64 {
        let configured = self.optimizer.lr();
        if self.lr[t] == configured as f32 {
            configured
        } else {
            f64::from(self.lr[t])
        }
    }

    /// Runs the trajectory through the CPU reference, comparing the whole table after every
    /// step.
    pub fn check_cpu(&self, tol: &Tolerance) -> Result<ErrorStats> {
        let mut opt = CpuSparse::new(self.optimizer.clone(), self.params0.clone(), self.dim)?;
        let mut stats = ErrorStats::default();
        for t in 0..self.steps {
            opt.step_with_lr(self.indices(t), self.values(t), self.lr(t))?;
            stats.add(tol, t as u64 + 1, opt.table(), self.expected(t));
        }
        Ok(stats)
    }

    /// Runs the trajectory through the GPU's row-sparse kernel, comparing the whole table after
    /// every step.
    pub fn check_gpu(&self, gpu: &Gpu, tol: &Tolerance) -> Result<ErrorStats> {
        let table = gpu.upload("golden/table", &self.params0)?;
        let capacity = self.k.max(1);
        let indices = gpu.zeros("golden/indices", capacity)?;
        let values = gpu.zeros("golden/values", capacity * self.dim)?;
        let mut opt = SparseGpuOptimizer::new(
            gpu,
            self.optimizer.clone(),
            &table,
            self.dim,
            &indices,
            &values,
        )?;
        let mut stats = ErrorStats::default();
        for t in 0..self.steps {
            if self.k > 0 {
                gpu.write(&indices, 0, bytemuck::cast_slice(self.indices(t)))?;
                gpu.write(&values, 0, self.values(t))?;
            }
            opt.step_with_lr(gpu, self.k, self.lr(t))?;
            stats.add(tol, t as u64 + 1, &opt.read_table(gpu)?, self.expected(t));
        }
        Ok(stats)
    }
}
