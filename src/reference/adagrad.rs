//! Mirror of `shaders/adagrad.wgsl`.

use super::Block;
use super::common::{denominator, effective_grad};
use crate::optim::{Adagrad, AdagradScalars};

#[inline(always)]
pub(super) fn step(c: &Adagrad, hp: &AdagradScalars, block: Block<'_>) {
    let (param, grad, [state_sum, _, _]) = block.parts();
    // The kernel's override constants and uniform, read once: loop-invariant values the
    // compiler can branch on outside the loop.
    let maximize = c.maximize;
    let eps_in_sqrt = c.eps_in_sqrt;
    let hp = *hp;
    for i in 0..param.len() {
        let p = param[i];
        let g = effective_grad(maximize, grad[i], p, hp.weight_decay);
        let s = state_sum[i] + g * g;
        state_sum[i] = s;
        param[i] = p + -hp.clr * (g / denominator(eps_in_sqrt, s, hp.eps));
    }
}
