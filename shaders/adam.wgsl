// Adam, AdamW and AMSGrad (torch.optim.Adam / AdamW). Needs `common.wgsl` before it.

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
@group(0) @binding(3) var<storage, read_write> exp_avg: array<f32>;
@group(0) @binding(4) var<storage, read_write> exp_avg_sq: array<f32>;
@group(0) @binding(5) var<storage, read_write> max_exp_avg_sq: array<f32>;

/// One element's update; `step` in common.wgsl calls it for every index of the binding.
fn update(i: u32) {
    let p = param[i] * hp.decay_factor;
    let g = effective_grad(grad[i], p, hp.weight_decay);
    let m = torch_lerp(exp_avg[i], g, hp.one_minus_beta1, hp.lerp_complement);
    exp_avg[i] = m;
    var v = exp_avg_sq[i] * hp.beta2 + hp.one_minus_beta2 * g * g;
    exp_avg_sq[i] = v;
    if AMSGRAD {
        v = max(max_exp_avg_sq[i], v);
        max_exp_avg_sq[i] = v;
    }
    var denom: f32;
    if EPS_IN_SQRT {
        denom = sqrt(v / hp.bias_correction2 + hp.eps);
    } else {
        denom = sqrt(v) / hp.bias_correction2_sqrt + hp.eps;
    }
    param[i] = p + -hp.step_size * (m / denom);
}
