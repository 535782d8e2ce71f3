//! Mirror of `shaders/sgd.wgsl`.

use super::Block;
use super::common::effective_grad;
use crate::optim::{Sgd, SgdScalars};

#[inline(always)]
pub(super) fn step(c: &Sgd, hp: &SgdScalars, block: Block<'_>) {
    let (param, grad, [momentum_buffer, _, _]) = block.parts();
    // The kernel's override constants and uniform, read once: loop-invariant values the
    // compiler can branch on outside the loop.
    let maximize = c.maximize;
    let (has_momentum, nesterov) = (c.has_momentum(), c.nesterov);
    let hp = *hp;
    for i in 0..param.len() {
        let p = param[i];
        let mut d = effective_grad(maximize, grad[i], p, hp.weight_decay);
        if has_momentum {
            let mut b = d;
            if hp.first_step == 0 {
                b = momentum_buffer[i] * hp.momentum + hp.one_minus_dampening * d;
            }
            momentum_buffer[i] = b;
            if nesterov {
                d += hp.momentum * b;
            } else {
                d = b;
            }
        }
        param[i] = p + -hp.lr * d;
    }
}
