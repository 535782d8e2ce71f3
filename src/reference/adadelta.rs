//! Mirror of `shaders/adadelta.wgsl`.

use ndarray::{ArrayView1, ArrayViewMut1};

use super::common::effective_grad;
use crate::optim::{Adadelta, AdadeltaScalars};

pub(super) fn step(
    c: &Adadelta,
    hp: &AdadeltaScalars,
    param: &mut ArrayViewMut1<'_, f32>,
    grad: ArrayView1<'_, f32>,
    state: &mut [Option<&mut [f32]>],
) {
    for i in 0..param.len() {
        let p = param[i];
        let g = effective_grad(c.maximize, grad[i], p, hp.weight_decay);
        let square_avg = super::slot(state, 0);
        let v = square_avg[i] * hp.rho + hp.one_minus_rho * g * g;
        square_avg[i] = v;
        let rms_grad = (v + hp.eps).sqrt();
        let acc_delta = super::slot(state, 1);
        let delta = (acc_delta[i] + hp.eps).sqrt() / rms_grad * g;
        acc_delta[i] = acc_delta[i] * hp.rho + hp.one_minus_rho * delta * delta;
        param[i] = p + -hp.lr * delta;
    }
}
