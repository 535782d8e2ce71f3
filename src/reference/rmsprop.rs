//! Mirror of `shaders/rmsprop.wgsl`.

use super::common::{denominator, effective_grad, torch_lerp, with_constant_flags};
use crate::optim::{Block, Mirror, Rmsprop, RmspropScalars};

impl Mirror for Rmsprop {
    type Scalars = RmspropScalars;

    #[inline(always)]
    fn update(&self, hp: &RmspropScalars, block: Block<'_>) {
        let (param, grad, [square_avg, grad_avg, momentum_buffer, ..]) = block.parts();
        // The kernel's override constants (and whether weight decay applies), as compile-time
        // constants of one copy of the loop each.
        let maximize = self.maximize;
        let (centered, has_momentum, eps_in_sqrt) =
            (self.centered, self.has_momentum(), self.eps_in_sqrt);
        let decays = hp.weight_decay != 0.0;
        let hp = *hp;
        with_constant_flags!([maximize, decays, has_momentum, centered, eps_in_sqrt], {
            for i in 0..param.len() {
                let p = param[i];
                let g = effective_grad(maximize, decays, grad[i], p, hp.weight_decay);
                let v = square_avg[i] * hp.alpha + hp.one_minus_alpha * g * g;
                square_avg[i] = v;
                let mut s = v;
                if centered {
                    let ga = torch_lerp(grad_avg[i], g, hp.one_minus_alpha, hp.lerp_complement);
                    grad_avg[i] = ga;
                    s = v + -ga * ga;
                }
                let avg = denominator(eps_in_sqrt, s, hp.eps);
                if has_momentum {
                    let b = momentum_buffer[i] * hp.momentum + g / avg;
                    momentum_buffer[i] = b;
                    param[i] = p + -hp.lr * b;
                } else {
                    param[i] = p + -hp.lr * (g / avg);
                }
            }
        });
    }
}
