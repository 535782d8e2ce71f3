// Adagrad (torch.optim.Adagrad; optax.adagrad with EPS_IN_SQRT). Needs `common.wgsl` before it.

/// Keep in sync with `AdagradScalars` in src/optim/adagrad.rs (a test compares the layouts).
struct AdagradScalars {
    /// lr / (1 + (t - 1) * lr_decay), computed on the host in f64.
    clr: f32,
    eps: f32,
    weight_decay: f32,
    _pad0: f32,
}

@group(0) @binding(0) var<uniform> hp: AdagradScalars;
@group(0) @binding(3) var<storage, read_write> state_sum: array<f32>;

/// One element's update; `step` in common.wgsl calls it for every index of the binding.
fn update(i: u32) {
    let p = param[i];
    let g = effective_grad(grad[i], p, hp.weight_decay);
    let s = state_sum[i] + g * g;
    state_sum[i] = s;
    param[i] = p + -hp.clr * (g / denominator(s, hp.eps));
}
