//! Mirror of `shaders/sgd.wgsl`.

use super::common::{effective_grad, with_constant_flags};
use crate::optim::{Block, Mirror, Sgd, SgdScalars};

impl Mirror for Sgd {
    type Scalars = SgdScalars;

    #[inline(always)]
    fn update(&self, hp: &SgdScalars, block: Block<'_>) {
        let (param, grad, [momentum_buffer, ..]) = block.parts();
        // The kernel's override constants (and whether weight decay applies), as compile-time
        // constants of one copy of the loop each.
        let maximize = self.maximize;
        let (has_momentum, nesterov) = (self.has_momentum(), self.nesterov);
        let decays = hp.weight_decay != 0.0;
        let hp = *hp;
        with_constant_flags!([maximize, decays, has_momentum, nesterov], {
            for i in 0..param.len() {
                let p = param[i];
                let mut d = effective_grad(maximize, decays, grad[i], p, hp.weight_decay);
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
        });
    }
}
