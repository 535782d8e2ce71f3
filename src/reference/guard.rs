//! The guard of a step on the CPU: the pre-pass of `shaders/guard.wgsl` (overflow test, sum of
//! squares in the same blocks and trees, the scaler's update) and the guarded step, so that
//! the CPU reproduces the GPU's norm, skips and scale sequence bit for bit where the device's
//! arithmetic is IEEE's (the software adapters; a GPU may fuse `acc + x * x`).

use ndarray::{ArrayView1, ArrayViewMut1};

use super::CpuOptimizer;
use super::common::pairwise_halving;
use crate::error::Result;
use crate::optim::{
    GUARD_BLOCK, GUARD_LANES, GUARD_PER_LANE, Guard, GuardOutcome, ScalerState, finish_guard,
    initial_scaler_state, non_finite_bits, unscale_of,
};

/// A loss scaler and norm clip on the CPU, over the gradients of one or more ranges.
#[derive(Clone, Debug)]
pub struct CpuGuard {
    guard: Guard,
    state: ScalerState,
    /// The caller's found-inf flag of the step being prepared.
    caller_found: bool,
}

impl CpuGuard {
    /// A guard in its first step's state; an error for settings PyTorch rejects.
    pub fn new(guard: Guard) -> Result<Self> {
        guard.validate()?;
        Ok(Self {
            guard,
            state: initial_scaler_state(&guard),
            caller_found: false,
        })
    }

    /// The configuration.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// The scale the next gradients carry and the count of clean steps.
    pub fn state(&self) -> ScalerState {
        self.state
    }

    /// Sets the scale and the count of clean steps (`GradScaler.load_state_dict`); an error
    /// for a scale that is not a positive finite number, changing nothing.
    pub fn restore(&mut self, state: ScalerState) -> Result<()> {
        state.validate()?;
        self.state = state;
        Ok(())
    }

    /// [`Self::prepare`] under the caller's own scaler (`caller_scale`): its `scale` and
    /// `found_inf` flag (nonzero: found), as the device's `adopt` takes them.
    pub fn prepare_from(&mut self, ranges: &[&[f32]], scale: f32, found_inf: f32) -> GuardOutcome {
        self.state.scale = scale;
        self.caller_found = found_inf != 0.0;
        self.prepare(ranges)
    }

    /// The pre-pass over the gradients of every range (in f32, widened from 16-bit where
    /// they are stored so), in order: what the step applies, and the scaler moved on.
    pub fn prepare(&mut self, ranges: &[&[f32]]) -> GuardOutcome {
        let unscale = unscale_of(&self.guard, self.state.scale);
        let found = std::mem::take(&mut self.caller_found)
            || ranges
                .iter()
                .any(|r| r.iter().any(|g| non_finite_bits(g.to_bits())));
        let partials: Vec<f32> = ranges
            .iter()
            .flat_map(|r| r.chunks(GUARD_BLOCK).map(|b| block_sum(b, unscale)))
            .collect();
        let total = finish_sum(&partials);
        finish_guard(&self.guard, &mut self.state, found, total)
    }
}

/// One block's sum of squares of `g * unscale`: lane `l` adds elements `l`, `l + 256`, .. in
/// order, then the lanes are summed by halving.
fn block_sum(block: &[f32], unscale: f32) -> f32 {
    let mut lanes = [0.0f32; GUARD_LANES];
    for (l, acc) in lanes.iter_mut().enumerate() {
        for k in 0..GUARD_PER_LANE {
            if let Some(g) = block.get(l + k * GUARD_LANES) {
                let x = g * unscale;
                *acc += x * x;
            }
        }
    }
    pairwise_halving(&mut lanes)
}

/// The partial sums of every block: lane `l` adds partials `l`, `l + 256`, .. in order, then
/// the lanes are summed by halving.
fn finish_sum(partials: &[f32]) -> f32 {
    let mut lanes = [0.0f32; GUARD_LANES];
    for (i, p) in partials.iter().enumerate() {
        lanes[i % GUARD_LANES] += p;
    }
    pairwise_halving(&mut lanes)
}

impl CpuOptimizer {
    /// One step guarded by `outcome` (from [`CpuGuard::prepare`] over this step's gradients):
    /// nothing changes and the step is not counted when it is skipped; otherwise the optimizer
    /// sees `(g * unscale) * clip`.
    pub fn step_guarded(
        &mut self,
        params: ArrayViewMut1<'_, f32>,
        grads: ArrayView1<'_, f32>,
        lr: f64,
        outcome: &GuardOutcome,
    ) -> Result<()> {
        self.require_precision(false)?;
        if outcome.skip {
            return self.check_lens(params.len(), grads.len(), lr);
        }
        let grads = guarded(grads.iter().copied(), outcome);
        self.step_f32(params, ArrayView1::from(&grads[..]), lr)
    }

    /// [`Self::step_guarded`] on 16-bit parameters and gradients ([`Self::step_half`]).
    pub fn step_half_guarded(
        &mut self,
        params: &mut [u16],
        grads: &[u16],
        lr: f64,
        outcome: &GuardOutcome,
    ) -> Result<()> {
        if outcome.skip {
            self.require_precision(true)?;
            return self.check_lens(params.len(), grads.len(), lr);
        }
        self.step_half_with(params, grads, lr, |g| guarded(g, outcome))
    }
}

/// The gradient the optimizer sees under `outcome`, element by element as the kernel forms it.
fn guarded(grads: impl Iterator<Item = f32>, outcome: &GuardOutcome) -> Vec<f32> {
    grads
        .map(|g| (g * outcome.unscale) * outcome.clip)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_norm_of_a_known_gradient() {
        let mut guard = CpuGuard::new(Guard {
            scaler: None,
            max_norm: Some(1.0),
            caller_scale: false,
        })
        .unwrap();
        // 3-4-5 spread over two ranges and several blocks.
        let mut a = vec![0.0f32; GUARD_BLOCK + 7];
        a[GUARD_BLOCK + 3] = 3.0;
        let b = [0.0, 4.0];
        let out = guard.prepare(&[&a, &b]);
        assert_eq!(out.norm, 5.0);
        assert_eq!(out.clip, 1.0 / (5.0 + 1e-6) * 1.0);
        assert!(!out.skip);
    }

    #[test]
    fn a_skipped_step_changes_nothing_and_is_not_counted() {
        let mut opt = CpuOptimizer::new(crate::optim::Adam::default(), 3).unwrap();
        let mut guard = CpuGuard::new(Guard {
            scaler: Some(Default::default()),
            max_norm: None,
            caller_scale: false,
        })
        .unwrap();
        let mut params = [1.0f32, 2.0, 3.0];
        let grads = [1.0, f32::INFINITY, 0.5];
        let out = guard.prepare(&[&grads]);
        assert!(out.skip);
        opt.step_guarded(
            ArrayViewMut1::from(&mut params[..]),
            ArrayView1::from(&grads[..]),
            1e-3,
            &out,
        )
        .unwrap();
        assert_eq!(params, [1.0, 2.0, 3.0]);
        assert_eq!(opt.step_count(), 0);
        assert_eq!(guard.state().scale, 32768.0);
    }
}
