//! Mirror of `shaders/adam.wgsl`.

use super::common::{effective_grad, torch_lerp, with_constant_flags};
use crate::optim::{Adam, AdamScalars, Block, Mirror};

impl Mirror for Adam {
    type Scalars = AdamScalars;

    #[inline(always)]
    fn update(&self, hp: &AdamScalars, block: Block<'_>) {
        let (param, grad, [exp_avg, exp_avg_sq, max_exp_avg_sq, ..]) = block.parts();
        // The kernel's override constants (and whether weight decay applies), as compile-time
        // constants of one copy of the loop each.
        let maximize = self.maximize;
        let (amsgrad, eps_in_sqrt) = (self.amsgrad, self.eps_in_sqrt);
        let decays = hp.weight_decay != 0.0;
        let hp = *hp;
        with_constant_flags!([maximize, decays, amsgrad, eps_in_sqrt], {
            for i in 0..param.len() {
                let p = param[i] * hp.decay_factor;
                let g = effective_grad(maximize, decays, grad[i], p, hp.weight_decay);
                let m = torch_lerp(exp_avg[i], g, hp.one_minus_beta1, hp.lerp_complement);
                exp_avg[i] = m;
                let mut v = exp_avg_sq[i] * hp.beta2 + hp.one_minus_beta2 * g * g;
                exp_avg_sq[i] = v;
                if amsgrad {
                    v = max_exp_avg_sq[i].max(v);
                    max_exp_avg_sq[i] = v;
                }
                let denom = if eps_in_sqrt {
                    (v / hp.bias_correction2 + hp.eps).sqrt()
                } else {
                    v.sqrt() / hp.bias_correction2_sqrt + hp.eps
                };
                param[i] = p + -hp.step_size * (m / denom);
            }
        });
    }
}
