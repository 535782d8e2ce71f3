//! Mirror of `shaders/adagrad.wgsl`.

use super::common::{denominator, effective_grad, with_constant_flags};
use crate::optim::{Adagrad, AdagradScalars, Block, Mirror};

impl Mirror for Adagrad {
    type Scalars = AdagradScalars;

    #[inline(always)]
    fn update(&self, hp: &AdagradScalars, block: Block<'_>) {
        let (param, grad, [state_sum, ..]) = block.parts();
        // The kernel's override constants (and whether weight decay applies), as compile-time
        // constants of one copy of the loop each.
        let maximize = self.maximize;
        let eps_in_sqrt = self.eps_in_sqrt;
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
}
