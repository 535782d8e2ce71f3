//! Mirror of `shaders/sparse_adam.wgsl`.

use super::common::{denominator, effective_grad};
use crate::optim::{SparseAdam, SparseAdamScalars};

/// One touched row of SparseAdam: `param`, its coalesced `grad` and its two moments.
pub(super) fn update_row(
    config: &SparseAdam,
    hp: &SparseAdamScalars,
    param: &mut [f32],
    grad: &[f32],
    [exp_avg, exp_avg_sq]: [&mut [f32]; 2],
) {
    for (i, p) in param.iter_mut().enumerate() {
        let g = effective_grad(config.maximize, false, grad[i], *p, 0.0);
        let m = exp_avg[i] + (g - exp_avg[i]) * hp.one_minus_beta1;
        let v = exp_avg_sq[i] + (g * g - exp_avg_sq[i]) * hp.one_minus_beta2;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        *p += hp.neg_step_size * (m / denominator(false, v, hp.eps));
    }
}
