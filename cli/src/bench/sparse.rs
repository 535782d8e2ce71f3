//! The row-sparse step of an embedding table against the dense step of the same table, at
//! a few fractions of rows touched: what the sparse kernels save, measured on one adapter in
//! one run (ratios, medians).

use std::path::Path;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use fusedopt::{
    Adagrad, Adam, CpuSparse, Gpu, GpuOptimizer, Optimizer, SparseAdam, SparseGpuOptimizer,
    SparseOptimizer,
};

use super::{GpuTimer, Sampling, Summary, pattern};
use crate::{Error, Result};

/// Fractions of the table's rows looked up per step.
pub const FRACTIONS: [f64; 3] = [1e-2, 1e-3, 1e-4];

/// One measured point.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SparseRow {
    /// The sparse optimizer.
    pub optimizer: String,
    /// The dense optimizer stepped over the whole table for comparison.
    pub dense: String,
    /// Rows and elements per row of the table.
    pub rows: usize,
    /// Elements per row.
    pub dim: usize,
    /// Lookups per step (uniformly random rows, duplicates possible).
    pub lookups: usize,
    /// `lookups / rows`.
    pub fraction: f64,
    /// The sparse step on the GPU.
    pub sparse: Summary,
    /// The dense step of the whole table on the GPU.
    pub dense_step: Summary,
    /// `dense / sparse` (medians).
    pub speedup: f64,
    /// The CPU reference's sparse step (one thread), where measured.
    pub cpu: Option<Summary>,
}

/// Measures each sparse optimizer against its dense twin on a `rows × dim` table, at each of
/// [`FRACTIONS`]. `cpu` also times the CPU reference's sparse step.
pub fn run(
    gpu: &Gpu,
    rows: usize,
    dim: usize,
    sampling: &Sampling,
    timer: &GpuTimer,
    cpu: bool,
    mut progress: impl FnMut(&str),
) -> Result<Vec<SparseRow>> {
    let pairs: [(SparseOptimizer, Optimizer); 3] = [
        (
            SparseOptimizer::Adagrad(Adagrad::default()),
            Adagrad::default().into(),
        ),
        (
            SparseOptimizer::RowWiseAdagrad(Adagrad::default()),
            Adagrad::default().into(),
        ),
        (SparseAdam::default().into(), Adam::default().into()),
    ];
    let len = rows * dim;
    let table = gpu.upload("bench/table", &pattern(len, 1))?;
    let grads = gpu.upload("bench/dense grads", &pattern(len, 2))?;
    let mut out = Vec::new();
    for (sparse, dense) in pairs {
        progress(&format!(
            "sparse: dense {} over {rows} x {dim}",
            dense.name()
        ));
        let mut dense_opt = GpuOptimizer::new(gpu, dense.clone(), &table, &grads)?;
        let lr = dense.lr();
        let dense_step = timer.measure(gpu, sampling, sampling.warmup_steps, |enc, ts| {
            match ts {
                Some(ts) => dense_opt.record_step_timed(gpu, enc, lr, ts)?,
                None => dense_opt.record_step_with_lr(gpu, enc, lr)?,
            }
            Ok(())
        })?;
        for fraction in FRACTIONS {
            let lookups = ((rows as f64 * fraction).round() as usize).max(1);
            progress(&format!("sparse: {} with {lookups} lookups", sparse.name()));
            let mut rng = StdRng::seed_from_u64(lookups as u64);
            let indices: Vec<u32> = (0..lookups)
                .map(|_| rng.random_range(0..rows as u32))
                .collect();
            let values = pattern(lookups * dim, 3);
            let index_buffer = gpu.zeros("bench/indices", lookups)?;
            gpu.queue()
                .write_buffer(&index_buffer, 0, bytemuck::cast_slice(&indices));
            let value_buffer = gpu.upload("bench/values", &values)?;
            let mut opt = SparseGpuOptimizer::new(
                gpu,
                sparse.clone(),
                &table,
                dim,
                &index_buffer,
                &value_buffer,
            )?;
            let lr = sparse.lr();
            let sparse_step = timer.measure(gpu, sampling, sampling.warmup_steps, |enc, ts| {
                match ts {
                    Some(ts) => opt.record_step_timed(gpu, enc, lookups, lr, ts)?,
                    None => opt.record_step_with_lr(gpu, enc, lookups, lr)?,
                }
                Ok(())
            })?;
            let cpu_step = cpu
                .then(|| cpu_sparse(&sparse, rows, dim, &indices, &values, sampling))
                .transpose()?;
            out.push(SparseRow {
                optimizer: sparse.name().into(),
                dense: dense.name().into(),
                rows,
                dim,
                lookups,
                fraction,
                speedup: dense_step.median_s / sparse_step.median_s,
                sparse: sparse_step,
                dense_step,
                cpu: cpu_step,
            });
        }
    }
    Ok(out)
}

/// The CPU reference's step of the same lookups, with the wall clock.
fn cpu_sparse(
    config: &SparseOptimizer,
    rows: usize,
    dim: usize,
    indices: &[u32],
    values: &[f32],
    sampling: &Sampling,
) -> Result<Summary> {
    let mut opt = CpuSparse::new(config.clone(), pattern(rows * dim, 1), dim)?;
    let mut times = Vec::new();
    for k in 0..sampling.warmup_steps + sampling.min_samples.max(7) {
        let start = Instant::now();
        opt.step(indices, values)?;
        if k >= sampling.warmup_steps {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(Summary::of(&times).expect("samples"))
}

/// The rows as a Markdown table.
pub fn table(rows: &[SparseRow]) -> String {
    let mut out = String::from(
        "| sparse optimizer | table | lookups | rows touched | sparse step | dense step | dense / sparse | CPU reference |\n\
         |---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} × {} | {} | {}% | {:.1} µs | {:.1} µs ({}) | {:.1}× | {} |\n",
            r.optimizer,
            r.rows,
            r.dim,
            r.lookups,
            r.fraction * 100.0,
            r.sparse.median_s * 1e6,
            r.dense_step.median_s * 1e6,
            r.dense,
            r.speedup,
            r.cpu
                .map_or("-".into(), |c| format!("{:.1} µs", c.median_s * 1e6)),
        ));
    }
    out
}

/// Writes `sparse.md` (the table, the adapter, the command) and `sparse.json` into `dir`.
pub fn write(rows: &[SparseRow], dir: &Path, gpu: &str, command: &str) -> Result<()> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| Error::from(fusedopt::Error::Io { path, source })
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let md = dir.join("sparse.md");
    let text = format!(
        "# Row-sparse against dense steps\n\nGPU: {gpu}\n\nCommand: `{command}`\n\n{}",
        table(rows)
    );
    std::fs::write(&md, text).map_err(io(&md))?;
    let json = dir.join("sparse.json");
    std::fs::write(&json, serde_json::to_string_pretty(rows)?).map_err(io(&json))
}
