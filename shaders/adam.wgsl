// Adam, AdamW and AMSGrad (torch.optim.Adam / AdamW). Compiled after `precision.wgsl`.

/// Keep in sync with `AdamScalars` in src/optim/adam.rs (a test compares the layouts).
struct AdamScalars {
    /// 1 - lr * wd for decoupled (AdamW) weight decay, exactly 1 otherwise.
    decay_factor: f32,
    /// Coupled (L2) weight decay; 0 for AdamW.
    weight_decay: f32,
    /// 1 - beta1: the lerp weight of exp_avg.
    one_minus_beta1: f32,
    /// 1 - (1 - beta1) in f32, the other lerp form's factor.
    lerp_complement: f32,
    beta2: f32,
    one_minus_beta2: f32,
    /// lr / (1 - beta1^t)
    step_size: f32,
    /// sqrt(1 - beta2^t), PyTorch's divisor of sqrt(v)
    bias_correction2_sqrt: f32,
    /// 1 - beta2^t, the divisor of v under EPS_IN_SQRT
    bias_correction2: f32,
    eps: f32,
    _pad0: f32,
    _pad1: f32,
}

/// Keep the running maximum of v (AMSGrad); otherwise `max_exp_avg_sq` is a placeholder.
override AMSGRAD: bool = false;

@group(0) @binding(0) var<uniform> hp: AdamScalars;

/// One element's update (`visit` in precision.wgsl calls it). State: s0 `exp_avg`,
/// s1 `exp_avg_sq`, s2 `max_exp_avg_sq`.
fn update(x: Element) -> Element {
    var e = x;
    let p = e.param * hp.decay_factor;
    let g = effective_grad(e.grad, p, hp.weight_decay);
    let m = torch_lerp(e.s0, g, hp.one_minus_beta1, hp.lerp_complement);
    e.s0 = m;
    var v = e.s1 * hp.beta2 + hp.one_minus_beta2 * g * g;
    e.s1 = v;
    if AMSGRAD {
        v = max(e.s2, v);
        e.s2 = v;
    }
    var denom: f32;
    if EPS_IN_SQRT {
        denom = sqrt(v / hp.bias_correction2 + hp.eps);
    } else {
        denom = sqrt(v) / hp.bias_correction2_sqrt + hp.eps;
    }
    e.param = p + -hp.step_size * (m / denom);
    return e;
}
