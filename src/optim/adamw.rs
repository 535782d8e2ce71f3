//! AdamW: Adam with decoupled weight decay. It runs Adam's kernel; only its defaults differ.

use super::Adam;

impl Adam {
    /// `torch.optim.AdamW`'s defaults, [Loshchilov & Hutter 2019](https://arxiv.org/abs/1711.05101):
    /// Adam with `decoupled_weight_decay` and `weight_decay = 1e-2`. The decay
    /// `p ← p·(1 − lr·weight_decay)` happens before the Adam step and follows the learning-rate
    /// schedule, as in PyTorch (optax's default decay is 1e-4).
    pub fn adamw() -> Self {
        Self {
            weight_decay: 1e-2,
            decoupled_weight_decay: true,
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Adam;

    #[test]
    fn adamw_defaults_are_pytorchs() {
        let c = Adam::adamw();
        assert_eq!(c.lr, 1e-3, "lr");
        assert_eq!(c.weight_decay, 1e-2, "weight_decay");
        assert!(c.decoupled_weight_decay, "decoupled");
        assert_eq!(c.name(), "adamw", "name");
    }

    #[test]
    fn adamw_decays_before_the_step_with_the_scheduled_lr() {
        let s = Adam::adamw().scalars(1, 0.5);
        assert_eq!(
            s.decay_factor,
            (1.0 - 0.5 * 1e-2) as f32,
            "decay factor uses the step's lr"
        );
        assert_eq!(s.weight_decay, 0.0, "no L2 term for AdamW");
    }
}
