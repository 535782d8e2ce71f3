//! Reference trajectories recorded from PyTorch and optax (format: `tests/golden/FORMAT.md`,
//! format 1 in f32 and format 2 in the 16-bit precisions), and checking the GPU kernels and the
//! CPU reference against them step by step.

mod sparse;

use std::path::Path;

use ndarray::{ArrayView1, ArrayViewMut1};
use safetensors::{Dtype, SafeTensors};

use crate::compare::{ErrorStats, Tolerance};
use crate::error::{Error, Result};
use crate::files::read_safetensors;
use crate::gpu::{BufferRange, Gpu, GpuOptimizer, Piece};
use crate::optim::{Guard, GuardOutcome, HalfFormat, LossScaler, Optimizer, Precision};
use crate::reference::{CpuGuard, CpuOptimizer};

pub use sparse::SparseTrajectory;

/// A reference file of any format: dense (formats 1 and 2) or row-sparse (format 3).
#[derive(Clone, Debug)]
pub enum Recording {
    /// Format 1 or 2: a flat parameter tensor.
    Dense(Trajectory),
    /// Format 3: an embedding table with sparse gradients.
    Sparse(SparseTrajectory),
}

impl Recording {
    /// Reads a reference file, header first in bounded memory, and parses it by its
    /// `format` metadata.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path_str = path.as_ref().display().to_string();
        let bytes = read_safetensors(path.as_ref(), |message| Error::Golden {
            path: path_str.clone(),
            message,
        })?;
        Self::parse(&path_str, &bytes)
    }

    /// Parses a reference file by its `format` metadata; `path` names it in errors.
    pub fn parse(path: &str, bytes: &[u8]) -> Result<Self> {
        let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| Error::Golden {
            path: path.to_string(),
            message: format!("not a safetensors file: {e}"),
        })?;
        let format = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get("format").cloned());
        match format.as_deref().map(str::trim) {
            Some("3") => Ok(Self::Sparse(SparseTrajectory::parse(path, bytes)?)),
            _ => Ok(Self::Dense(Trajectory::parse(path, bytes)?)),
        }
    }

    /// Runs the recording through the CPU reference, comparing every step.
    pub fn check_cpu(&self, tol: &Tolerance) -> Result<ErrorStats> {
        match self {
            Self::Dense(t) => t.check_cpu(tol),
            Self::Sparse(t) => t.check_cpu(tol),
        }
    }

    /// Runs the recording through the GPU kernel, comparing every step.
    pub fn check_gpu(&self, gpu: &Gpu, tol: &Tolerance) -> Result<ErrorStats> {
        match self {
            Self::Dense(t) => t.check_gpu(gpu, tol),
            Self::Sparse(t) => t.check_gpu(gpu, tol),
        }
    }
}

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
    /// How parameters, gradients and state are stored (format 2's `param_dtype`,
    /// `state_dtype` and `master`); 16-bit values above are widened to f32, exactly.
    pub precision: Precision,
    /// The f32 master before the first step, where the precision keeps one.
    pub master0: Option<Vec<f32>>,
    /// The f32 master after each step, `steps × n`, where the precision keeps one.
    pub master: Option<Vec<f32>>,
    /// Loss scaling (`grad_scaler`) and clipping (`max_grad_norm`) of format 2; inactive in
    /// format 1.
    pub guard: Guard,
    /// Under a scaler: the scale each step's gradients carry, and whether it was skipped, as
    /// recorded (a checker reproduces both from the settings).
    pub scale: Option<(Vec<f32>, Vec<bool>)>,
}

impl Trajectory {
    /// Reads and checks a trajectory file. The header is read and checked first, in bounded
    /// memory: a file whose size is not the one its header describes is refused before the
    /// rest of it is read.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path_str = path.as_ref().display().to_string();
        let bytes = read_safetensors(path.as_ref(), |message| Error::Golden {
            path: path_str.clone(),
            message,
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

        let precision = precision(&|key| get_meta(key)).map_err(bad)?;
        let storage = precision.half_format();
        // Each tensor in the dtype the format gives it, widened to f32.
        let tensor = |key: &str, format: Option<HalfFormat>| -> Result<(Vec<usize>, Vec<f32>)> {
            let view = tensors
                .tensor(key)
                .map_err(|_| bad(format!("missing tensor `{key}`")))?;
            let expected = match format {
                None => Dtype::F32,
                Some(HalfFormat::Bf16) => Dtype::BF16,
                Some(HalfFormat::F16) => Dtype::F16,
            };
            if view.dtype() != expected {
                return Err(bad(format!(
                    "tensor `{key}` is {:?}, expected {expected:?}",
                    view.dtype()
                )));
            }
            let data = match format {
                None => view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                Some(format) => view
                    .data()
                    .chunks_exact(2)
                    .map(|b| format.widen(u16::from_le_bytes([b[0], b[1]])))
                    .collect(),
            };
            Ok((view.shape().to_vec(), data))
        };
        let guard = read_guard(&|key| get_meta(key)).map_err(bad)?;
        let (s_params0, params0) = tensor("params0", storage)?;
        let (s_grads, grads) = tensor("grads", storage)?;
        let (s_params, params) = tensor("params", storage)?;
        let (s_lr, lr) = tensor("lr", None)?;
        let (master0, master) = if precision.has_master() {
            let (s_master0, master0) = tensor("master0", None)?;
            let (s_master, master) = tensor("master", None)?;
            if s_master0 != s_params0 || s_master != s_params {
                return Err(bad(format!(
                    "master0 {s_master0:?} and master {s_master:?} differ in shape from \
                     params0 {s_params0:?} and params {s_params:?}"
                )));
            }
            (Some(master0), Some(master))
        } else {
            (None, None)
        };
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
        if steps == 0 {
            return Err(bad("the trajectory has no steps: nothing to check".into()));
        }
        let scale = match guard.scaler {
            Some(_) => {
                let (s_scale, scale) = tensor("scale", None)?;
                let found = tensors
                    .tensor("found_inf")
                    .map_err(|_| bad("missing tensor `found_inf`".into()))?;
                if s_scale != [steps] || found.shape() != [steps] || found.dtype() != Dtype::U8 {
                    return Err(bad(format!(
                        "scale {s_scale:?} and found_inf {:?} {:?} must be [steps] (F32, U8)",
                        found.shape(),
                        found.dtype()
                    )));
                }
                let skipped = found.data().iter().map(|&b| b != 0).collect();
                Some((scale, skipped))
            }
            None => None,
        };
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
            precision,
            master0,
            master,
            guard,
            scale,
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

    /// The recorded master after step `t` (0-based), where the precision keeps one.
    pub fn expected_master(&self, t: usize) -> Option<&[f32]> {
        Some(&self.master.as_ref()?[t * self.n..(t + 1) * self.n])
    }

    /// Folds step `t`'s parameters (and master) into `stats`: f32 values within `tol`, 16-bit
    /// ones within one unit in the last place of their format at the recorded value.
    fn compare(
        &self,
        stats: &mut ErrorStats,
        tol: &Tolerance,
        t: usize,
        params: &[f32],
        master: Option<&[f32]>,
    ) {
        let step = t as u64 + 1;
        match self.precision.half_format() {
            Some(format) => {
                stats.add_within(step, params, self.expected(t), |r| f64::from(format.ulp(r)))
            }
            None => stats.add(tol, step, params, self.expected(t)),
        }
        if let (Some(got), Some(want)) = (master, self.expected_master(t)) {
            stats.add(tol, step, got, want);
        }
    }

    /// Folds step `t`'s scale and skip into `stats`, exactly, where a scaler ran.
    fn compare_scaler(&self, stats: &mut ErrorStats, t: usize, scale: f32, skipped: bool) {
        if let Some((scales, skips)) = &self.scale {
            let flag = |b: bool| if b { 1.0 } else { 0.0 };
            stats.add(
                &Tolerance::EXACT,
                t as u64 + 1,
                &[scale, flag(skipped)],
                &[scales[t], flag(skips[t])],
            );
        }
    }

    /// 16-bit values of the trajectory's format (exact: they were widened from it).
    fn bits(&self, values: &[f32]) -> Vec<u16> {
        let format = self.precision.half_format().unwrap_or(HalfFormat::Bf16);
        values.iter().map(|&x| format.round(x)).collect()
    }

    /// Runs the trajectory through the CPU reference and compares every step (and the master
    /// where there is one, and the scale and skipped steps under a scaler).
    pub fn check_cpu(&self, tol: &Tolerance) -> Result<ErrorStats> {
        let mut opt = CpuOptimizer::with_precision(self.optimizer.clone(), self.precision, self.n)?;
        let mut guard = CpuGuard::new(self.guard)?;
        let mut stats = ErrorStats::default();
        // Each step's outcome of the guard (a no-op one without a guard).
        let mut prepare = |grad: &[f32]| -> GuardOutcome { guard.prepare(&[grad]) };
        if self.precision.half_format().is_none() {
            let mut p = self.params0.clone();
            for t in 0..self.steps {
                let outcome = prepare(self.grad(t));
                opt.step_guarded(
                    ArrayViewMut1::from(&mut p[..]),
                    ArrayView1::from(self.grad(t)),
                    self.lr(t),
                    &outcome,
                )?;
                self.compare(&mut stats, tol, t, &p, None);
                self.compare_scaler(&mut stats, t, outcome.scale, outcome.skip);
            }
            return Ok(stats);
        }
        if let Some(master0) = &self.master0 {
            opt.set_master(master0)?;
        }
        let format = self.precision.half_format().expect("16-bit");
        let mut p = self.bits(&self.params0);
        for t in 0..self.steps {
            let outcome = prepare(self.grad(t));
            opt.step_half_guarded(&mut p, &self.bits(self.grad(t)), self.lr(t), &outcome)?;
            let widened: Vec<f32> = p.iter().map(|&b| format.widen(b)).collect();
            self.compare(&mut stats, tol, t, &widened, opt.master());
            self.compare_scaler(&mut stats, t, outcome.scale, outcome.skip);
        }
        Ok(stats)
    }

    /// Runs the trajectory through the GPU kernel (after the guard's pre-pass where the file
    /// has a scaler or a clip) and compares every step (and the master where there is one,
    /// and the scale and skipped steps under a scaler).
    pub fn check_gpu(&self, gpu: &Gpu, tol: &Tolerance) -> Result<ErrorStats> {
        let mut stats = ErrorStats::default();
        let half = self.precision.half_format().is_some();
        let upload = |label: &str, values: &[f32]| match half {
            true => gpu.upload_half(label, &self.bits(values)),
            false => gpu.upload(label, values),
        };
        let params = upload("golden/params", &self.params0)?;
        let grads = upload("golden/grads", self.grad(0))?;
        let range = |buffer| match half {
            true => BufferRange::half(buffer, self.n),
            false => BufferRange::whole(buffer),
        };
        let pieces = [Piece {
            params: range(&params),
            grads: range(&grads),
        }];
        let (config, precision) = (self.optimizer.clone(), self.precision);
        let mut opt = match self.guard.is_active() {
            true => GpuOptimizer::with_guard(gpu, config, precision, &pieces, self.guard)?,
            false => GpuOptimizer::with_pieces_in(gpu, config, precision, &pieces)?,
        };
        if let Some(master0) = &self.master0 {
            opt.write_master(gpu, master0)?;
        }
        for t in 0..self.steps {
            match half {
                true => gpu.write_half(&grads, 0, &self.bits(self.grad(t)))?,
                false => gpu.write(&grads, 0, self.grad(t))?,
            }
            opt.step_with_lr(gpu, self.lr(t))?;
            let master = match self.master {
                Some(_) => Some(opt.read_master(gpu)?),
                None => None,
            };
            self.compare(
                &mut stats,
                tol,
                t,
                &opt.read_params(gpu)?,
                master.as_deref(),
            );
            if let Some(guard) = opt.guard() {
                let report = guard.read(gpu)?;
                self.compare_scaler(&mut stats, t, report.last_scale, report.last_skipped);
            }
        }
        Ok(stats)
    }
}

/// Format 2's loss scaler (`grad_scaler`, JSON) and clip (`max_grad_norm`).
fn read_guard(meta: &dyn Fn(&str) -> Option<String>) -> std::result::Result<Guard, String> {
    let scaler = match meta("grad_scaler") {
        Some(text) => {
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| format!("metadata `grad_scaler` is not JSON: {e}"))?;
            Some(LossScaler::from_json(&json).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let max_norm = match meta("max_grad_norm") {
        Some(text) => Some(
            text.trim()
                .parse::<f64>()
                .map_err(|_| format!("metadata `max_grad_norm` `{text}` is not a number"))?,
        ),
        None => None,
    };
    let guard = Guard {
        scaler,
        max_norm,
        caller_scale: false,
    };
    guard.validate().map_err(|e| e.to_string())?;
    Ok(guard)
}

/// The precision format 2's metadata describes (`param_dtype`, `grad_dtype`, `state_dtype`,
/// `master`; absent keys give format 1's f32).
fn precision(meta: &dyn Fn(&str) -> Option<String>) -> std::result::Result<Precision, String> {
    let dtype = |key: &str| -> std::result::Result<Option<HalfFormat>, String> {
        match meta(key).as_deref() {
            None | Some("float32") => Ok(None),
            Some("bfloat16") => Ok(Some(HalfFormat::Bf16)),
            Some("float16") => Ok(Some(HalfFormat::F16)),
            Some(other) => Err(format!(
                "{key} `{other}` is none of float32, bfloat16, float16"
            )),
        }
    };
    let (param, grad, state) = (
        dtype("param_dtype")?,
        dtype("grad_dtype")?,
        dtype("state_dtype")?,
    );
    let master = meta("master").unwrap_or_else(|| "none".into());
    if grad != param {
        return Err(format!(
            "gradients in {} and parameters in {}: fusedopt takes them in one dtype",
            grad.map_or("float32", HalfFormat::torch_name),
            param.map_or("float32", HalfFormat::torch_name)
        ));
    }
    match (param, state, master.as_str()) {
        (None, None, "none") => Ok(Precision::F32),
        (Some(p), Some(s), "none") if p == s => Ok(Precision::Half(p)),
        (Some(p), None, "float32") => Ok(Precision::Master(p)),
        (p, s, m) => Err(format!(
            "parameters in {}, state in {}, master `{m}`: no fusedopt precision stores that",
            p.map_or("float32", HalfFormat::torch_name),
            s.map_or("float32", HalfFormat::torch_name)
        )),
    }
}
