//! The CPU mirror of the row-sparse kernel (`shaders/sparse.wgsl`): duplicates summed in
//! lookup order, then each touched row updated by its optimizer's mirror, from the very bytes
//! of the uniform the GPU receives.

use super::common::{denominator, effective_grad, pairwise_halving};
use super::sparse_adam;
use crate::error::{Error, Result};
use crate::optim::{AdagradScalars, Block, MAX_STATE, Mirror, SparseAdamScalars, SparseOptimizer};

/// An embedding table `[rows, dim]` and its optimizer state, stepped on the CPU as
/// [`crate::gpu::SparseGpuOptimizer`] steps it on the GPU (bit for bit).
#[derive(Clone, Debug)]
pub struct CpuSparse {
    config: SparseOptimizer,
    rows: usize,
    dim: usize,
    table: Vec<f32>,
    state: Vec<(&'static str, Vec<f32>)>,
    step: u64,
}

impl CpuSparse {
    /// The optimizer for `table` (row-major, `rows × dim`), with fresh state.
    pub fn new(config: impl Into<SparseOptimizer>, table: Vec<f32>, dim: usize) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        if dim == 0 || table.is_empty() || !table.len().is_multiple_of(dim) {
            return Err(Error::InvalidSetting {
                what: "embedding table".into(),
                message: format!(
                    "a table of {} elements is no whole number of rows of dim {dim}",
                    table.len()
                ),
            });
        }
        let rows = table.len() / dim;
        let per_tensor = if config.row_state() {
            rows
        } else {
            table.len()
        };
        let state = config
            .state_init()
            .into_iter()
            .map(|(name, init)| (name, vec![init; per_tensor]))
            .collect();
        Ok(Self {
            config,
            rows,
            dim,
            table,
            state,
            step: 0,
        })
    }

    /// The table.
    pub fn table(&self) -> &[f32] {
        &self.table
    }

    /// The state tensors by PyTorch's name.
    pub fn state(&self) -> &[(&'static str, Vec<f32>)] {
        &self.state
    }

    /// Steps taken.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// One step at the configured learning rate; see [`Self::step_with_lr`].
    pub fn step<I: Copy + Into<i64>>(&mut self, indices: &[I], values: &[f32]) -> Result<()> {
        self.step_with_lr(indices, values, self.config.lr())
    }

    /// One step of the lookups `indices` (any order, duplicates allowed) with one gradient
    /// row of `values` each, at learning rate `lr`. An index outside the table, or values
    /// of another length, is an error, and nothing changes.
    pub fn step_with_lr<I: Copy + Into<i64>>(
        &mut self,
        indices: &[I],
        values: &[f32],
        lr: f64,
    ) -> Result<()> {
        crate::optim::non_negative(self.config.name(), "lr", lr)?;
        let dim = self.dim;
        if Some(values.len()) != indices.len().checked_mul(dim) {
            return Err(Error::LengthMismatch {
                what: format!("gradient values ({} lookups of dim {dim})", indices.len()),
                expected: indices.len().saturating_mul(dim),
                got: values.len(),
            });
        }
        let mut order = Vec::with_capacity(indices.len());
        for (position, &index) in indices.iter().enumerate() {
            let index: i64 = index.into();
            match usize::try_from(index) {
                Ok(row) if row < self.rows => order.push((row, position)),
                _ => {
                    return Err(Error::InvalidSetting {
                        what: "sparse gradient".into(),
                        message: format!(
                            "lookup {position} is row {index} of a table of {} rows",
                            self.rows
                        ),
                    });
                }
            }
        }
        // Rows in order, each row's lookups in lookup order: the GPU's sorted keys.
        order.sort_unstable();
        self.step = crate::optim::next_step(self.config.name(), self.step)?;
        let uniform = self.config.uniform(self.step, lr);
        let mut grad = vec![0.0f32; dim];
        let mut spare = vec![0.0f32; (MAX_STATE - 1) * dim];
        let mut run = 0;
        while run < order.len() {
            let row = order[run].0;
            let end = run + order[run..].iter().take_while(|(r, _)| *r == row).count();
            let value = |position: usize| &values[position * dim..(position + 1) * dim];
            grad.copy_from_slice(value(order[run].1));
            for &(_, position) in &order[run + 1..end] {
                for (g, v) in grad.iter_mut().zip(value(position)) {
                    *g += v;
                }
            }
            let param = &mut self.table[row * dim..(row + 1) * dim];
            let rows = row * dim..(row + 1) * dim;
            match &self.config {
                SparseOptimizer::Adagrad(config) => {
                    let hp: AdagradScalars = bytemuck::pod_read_unaligned(uniform.as_bytes());
                    let (one, two) = spare.split_at_mut(dim);
                    let block = Block {
                        param,
                        grad: &grad,
                        state: [&mut self.state[0].1[rows], one, two],
                    };
                    config.update(&hp, block);
                }
                SparseOptimizer::RowWiseAdagrad(config) => {
                    let hp: AdagradScalars = bytemuck::pod_read_unaligned(uniform.as_bytes());
                    let sum = &mut self.state[0].1[row];
                    *sum += sum_of_squares(&grad) / dim as f32;
                    for (p, &g_raw) in param.iter_mut().zip(&grad) {
                        let g = effective_grad(config.maximize, false, g_raw, *p, 0.0);
                        *p += -hp.clr * (g / denominator(config.eps_in_sqrt, *sum, hp.eps));
                    }
                }
                SparseOptimizer::Adam(config) => {
                    let hp: SparseAdamScalars = bytemuck::pod_read_unaligned(uniform.as_bytes());
                    let [(_, m), (_, v)] = &mut self.state[..] else {
                        unreachable!("SparseAdam keeps two state tensors")
                    };
                    sparse_adam::update_row(
                        config,
                        &hp,
                        param,
                        &grad,
                        [&mut m[rows.clone()], &mut v[rows]],
                    );
                }
            }
            run = end;
        }
        Ok(())
    }
}

/// Lanes that share one row's sum of squares on the GPU (`ROW_LANES` in `sparse.wgsl`).
pub const ROW_SUM_LANES: usize = 64;

/// `Σ g²` over a row in the GPU's order: lane `l` sums columns `l, l + ROW_SUM_LANES, ...` in
/// order, then the lanes are added pairwise, halving, as the workgroup does.
fn sum_of_squares(row: &[f32]) -> f32 {
    let mut lanes = [0.0f32; ROW_SUM_LANES];
    for (lane, total) in lanes.iter_mut().enumerate() {
        for g in row.iter().skip(lane).step_by(ROW_SUM_LANES) {
            *total += g * g;
        }
    }
    pairwise_halving(&mut lanes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lanes' order is a real reordering: it differs from the sequential sum in the last
    /// bits, and agrees with it exactly where every partial sum is exact.
    #[test]
    fn the_sum_of_squares_follows_the_lanes() {
        let exact: Vec<f32> = (0..200).map(|i| (i % 7) as f32).collect();
        let sequential = |row: &[f32]| row.iter().fold(0.0f32, |t, g| t + g * g);
        assert_eq!(sum_of_squares(&exact), sequential(&exact));
        let row: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.731).sin() * 1e3).collect();
        let wide: f64 = row.iter().map(|&g| f64::from(g) * f64::from(g)).sum();
        assert!((f64::from(sum_of_squares(&row)) / wide - 1.0).abs() < 1e-6);
        assert_ne!(sum_of_squares(&row), sequential(&row));
        assert_eq!(sum_of_squares(&[3.0]), 9.0);
        assert_eq!(sum_of_squares(&[]), 0.0);
    }
}
