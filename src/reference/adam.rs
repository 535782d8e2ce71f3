//! Mirror of `shaders/adam.wgsl`.

use ndarray::{ArrayView1, ArrayViewMut1};

use super::common::{effective_grad, torch_lerp};
use crate::optim::{Adam, AdamScalars};

pub(super) fn step(
    c: &Adam,
    hp: &AdamScalars,
    param: &mut ArrayViewMut1<'_, f32>,
    grad: ArrayView1<'_, f32>,
    state: &mut [Option<&mut [f32]>],
) {
    for i in 0..param.len() {
        let p = param[i] * hp.decay_factor;
        let g = effective_grad(c.maximize, grad[i], p, hp.weight_decay);
        let exp_avg = super::slot(state, 0);
        let m = torch_lerp(exp_avg[i], g, hp.one_minus_beta1, hp.lerp_complement);
        exp_avg[i] = m;
        let exp_avg_sq = super::slot(state, 1);
        let mut v = exp_avg_sq[i] * hp.beta2 + hp.one_minus_beta2 * g * g;
        exp_avg_sq[i] = v;
        if c.amsgrad {
            let max_exp_avg_sq = super::slot(state, 2);
            v = max_exp_avg_sq[i].max(v);
            max_exp_avg_sq[i] = v;
        }
        let denom = if c.eps_in_sqrt {
            (v / hp.bias_correction2 + hp.eps).sqrt()
        } else {
            v.sqrt() / hp.bias_correction2_sqrt + hp.eps
        };
        param[i] = p + -hp.step_size * (m / denom);
    }
}
