//! Mirror of `shaders/adagrad.wgsl`.

use super::Block;
use super::common::{denominator, effective_grad, with_constant_flags};
use crate::optim::{Adagrad, AdagradScalars};

#[inline(always)]
pub(super) fn step(c: &Adagrad, hp: &AdagradScalars, block: Block<'_>) {
    let (param, grad, [state_sum, _, _]) = block.parts();
    // The kernel's override constants (and whether weight decay applies), as compile-time
    // constants of one copy of the loop each.
    let maximize = c.maximize;
    let eps_in_sqrt = c.eps_in_sqrt;
    let decays = hp.weight_decay != 0.0;
    let hp = *hp;
    with_constant_flags!([maximize, decays, eps_in_sqrt], {
        for i in 0..param.len() {
            let p = param[i];
            let g = effective_grad(maximize, decays, grad[i], p, hp.weight_decay);
            let s = state_sum[i] + g * g;
            state_sum[i] = s;
            param[i] = p + -hp.clr * (g / denominator(eps_in_sqrt, s, hp.eps));
        }
    });
}
