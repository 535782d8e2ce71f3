//! Mirror of `shaders/sgd.wgsl`.

use ndarray::{ArrayView1, ArrayViewMut1};

use super::common::effective_grad;
use crate::optim::{Sgd, SgdScalars};

pub(super) fn step(
    c: &Sgd,
    hp: &SgdScalars,
    param: &mut ArrayViewMut1<'_, f32>,
    grad: ArrayView1<'_, f32>,
    state: &mut [Option<&mut [f32]>],
) {
    for i in 0..param.len() {
        let p = param[i];
        let mut d = effective_grad(c.maximize, grad[i], p, hp.weight_decay);
        if c.has_momentum() {
            let momentum_buffer = super::slot(state, 0);
            let mut b = d;
            if hp.first_step == 0 {
                b = momentum_buffer[i] * hp.momentum + hp.one_minus_dampening * d;
            }
            momentum_buffer[i] = b;
            if c.nesterov {
                d += hp.momentum * b;
            } else {
                d = b;
            }
        }
        param[i] = p + -hp.lr * d;
    }
}
