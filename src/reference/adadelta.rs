//! Mirror of `shaders/adadelta.wgsl`.

use super::common::{effective_grad, with_constant_flags};
use crate::optim::{Adadelta, AdadeltaScalars, Block, Mirror};

impl Mirror for Adadelta {
    type Scalars = AdadeltaScalars;

    #[inline(always)]
    fn update(&self, hp: &AdadeltaScalars, block: Block<'_>) {
        let (param, grad, [square_avg, acc_delta, ..]) = block.parts();
        // The kernel's override constants (and whether weight decay applies), as compile-time
        // constants of one copy of the loop each.
        let maximize = self.maximize;
        let decays = hp.weight_decay != 0.0;
        let hp = *hp;
        with_constant_flags!([maximize, decays], {
            for i in 0..param.len() {
                let p = param[i];
                let g = effective_grad(maximize, decays, grad[i], p, hp.weight_decay);
                let v = square_avg[i] * hp.rho + hp.one_minus_rho * g * g;
                square_avg[i] = v;
                let rms_grad = (v + hp.eps).sqrt();
                let delta = (acc_delta[i] + hp.eps).sqrt() / rms_grad * g;
                acc_delta[i] = acc_delta[i] * hp.rho + hp.one_minus_rho * delta * delta;
                param[i] = p + -hp.lr * delta;
            }
        });
    }
}
