//! Mirror of `shaders/adagrad.wgsl`.

use ndarray::{ArrayView1, ArrayViewMut1};

use super::common::{denominator, effective_grad};
use crate::optim::{Adagrad, AdagradScalars};

pub(super) fn step(
    c: &Adagrad,
    hp: &AdagradScalars,
    param: &mut ArrayViewMut1<'_, f32>,
    grad: ArrayView1<'_, f32>,
    state: &mut [Option<&mut [f32]>],
) {
    let state_sum = super::slot(state, 0);
    for i in 0..param.len() {
        let p = param[i];
        let g = effective_grad(c.maximize, grad[i], p, hp.weight_decay);
        let s = state_sum[i] + g * g;
        state_sum[i] = s;
        param[i] = p + -hp.clr * (g / denominator(c.eps_in_sqrt, s, hp.eps));
    }
}
