// RMSprop, plain, centered and with momentum (torch.optim.RMSprop; optax.rmsprop with
// EPS_IN_SQRT). Compiled after `precision.wgsl`.

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

/// One element's update (`visit` in precision.wgsl calls it). State: s0 `square_avg`,
/// s1 `grad_avg`, s2 `momentum_buffer`.
fn update(x: Element) -> Element {
    var e = x;
    let g = effective_grad(e.grad, e.param, hp.weight_decay);
    let v = e.s0 * hp.alpha + hp.one_minus_alpha * g * g;
    e.s0 = v;
    var s = v;
    if CENTERED {
        let ga = torch_lerp(e.s1, g, hp.one_minus_alpha, hp.lerp_complement);
        e.s1 = ga;
        s = v + -ga * ga;
    }
    let avg = denominator(s, hp.eps);
    if HAS_MOMENTUM {
        let b = e.s2 * hp.momentum + g / avg;
        e.s2 = b;
        e.param = e.param + -hp.lr * b;
    } else {
        e.param = e.param + -hp.lr * (g / avg);
    }
    return e;
}
