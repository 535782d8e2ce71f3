// RMSprop, plain, centered and with momentum (torch.optim.RMSprop; optax.rmsprop with
// EPS_IN_SQRT). Needs `common.wgsl` before it.

/// Keep in sync with `RmspropScalars` in src/optim/rmsprop.rs (a test compares the layouts).
struct RmspropScalars {
    lr: f32,
    alpha: f32,
    /// 1 - alpha: the weight of g² in square_avg and the lerp weight of grad_avg.
    one_minus_alpha: f32,
    /// 1 - (1 - alpha) in f32, the other lerp form's factor.
    lerp_complement: f32,
    eps: f32,
    weight_decay: f32,
    momentum: f32,
    _pad0: f32,
}

override CENTERED: bool = false;
/// momentum > 0; otherwise `momentum_buffer` is a placeholder.
override HAS_MOMENTUM: bool = false;

@group(0) @binding(0) var<uniform> hp: RmspropScalars;
@group(0) @binding(3) var<storage, read_write> square_avg: array<f32>;
@group(0) @binding(4) var<storage, read_write> grad_avg: array<f32>;
@group(0) @binding(5) var<storage, read_write> momentum_buffer: array<f32>;

/// One element's update; `step` in common.wgsl calls it for every index of the binding.
fn update(i: u32) {
    let p = param[i];
    let g = effective_grad(grad[i], p, hp.weight_decay);
    let v = square_avg[i] * hp.alpha + hp.one_minus_alpha * g * g;
    square_avg[i] = v;
    var s = v;
    if CENTERED {
        let ga = torch_lerp(grad_avg[i], g, hp.one_minus_alpha, hp.lerp_complement);
        grad_avg[i] = ga;
        s = v + -ga * ga;
    }
    let avg = denominator(s, hp.eps);
    if HAS_MOMENTUM {
        let b = momentum_buffer[i] * hp.momentum + g / avg;
        momentum_buffer[i] = b;
        param[i] = p + -hp.lr * b;
    } else {
        param[i] = p + -hp.lr * (g / avg);
    }
}
