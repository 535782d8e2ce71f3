//! Mirror of `shaders/rmsprop.wgsl`.

use ndarray::{ArrayView1, ArrayViewMut1};

use super::common::{denominator, effective_grad, torch_lerp};
use crate::optim::{Rmsprop, RmspropScalars};

pub(super) fn step(
    c: &Rmsprop,
    hp: &RmspropScalars,
    param: &mut ArrayViewMut1<'_, f32>,
    grad: ArrayView1<'_, f32>,
    state: &mut [Option<&mut [f32]>],
) {
    for i in 0..param.len() {
        let p = param[i];
        let g = effective_grad(c.maximize, grad[i], p, hp.weight_decay);
        let square_avg = super::slot(state, 0);
        let v = square_avg[i] * hp.alpha + hp.one_minus_alpha * g * g;
        square_avg[i] = v;
        let mut s = v;
        if c.centered {
            let grad_avg = super::slot(state, 1);
            let ga = torch_lerp(grad_avg[i], g, hp.one_minus_alpha, hp.lerp_complement);
            grad_avg[i] = ga;
            s = v + -ga * ga;
        }
        let avg = denominator(c.eps_in_sqrt, s, hp.eps);
        if c.has_momentum() {
            let momentum_buffer = super::slot(state, 2);
            let b = momentum_buffer[i] * hp.momentum + g / avg;
            momentum_buffer[i] = b;
            param[i] = p + -hp.lr * b;
        } else {
            param[i] = p + -hp.lr * (g / avg);
        }
    }
}
