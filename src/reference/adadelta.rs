//! Mirror of `shaders/adadelta.wgsl`.

use super::Block;
use super::common::effective_grad;
use crate::optim::{Adadelta, AdadeltaScalars};

#[inline(always)]
pub(super) fn step(c: &Adadelta, hp: &AdadeltaScalars, block: Block<'_>) {
    let (param, grad, [square_avg, acc_delta, _]) = block.parts();
    // The kernel's override constants and uniform, read once: loop-invariant values the
    // compiler can branch on outside the loop.
    let maximize = c.maximize;
    let hp = *hp;
    for i in 0..param.len() {
        let p = param[i];
        let g = effective_grad(maximize, grad[i], p, hp.weight_decay);
        let v = square_avg[i] * hp.rho + hp.one_minus_rho * g * g;
        square_avg[i] = v;
        let rms_grad = (v + hp.eps).sqrt();
        let delta = (acc_delta[i] + hp.eps).sqrt() / rms_grad * g;
        acc_delta[i] = acc_delta[i] * hp.rho + hp.one_minus_rho * delta * delta;
        param[i] = p + -hp.lr * delta;
    }
}
