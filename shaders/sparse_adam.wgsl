// SparseAdam (torch.optim.SparseAdam, "lazy Adam"). Compiled after `sparse.wgsl`, which hands
// `update` each touched element with its row's duplicates summed.

/// Keep in sync with `SparseAdamScalars` in src/optim/sparse_adam.rs (a test compares the
/// layouts).
struct SparseAdamScalars {
    /// −lr·√(1 − β2^t)/(1 − β1^t), computed on the host in f64.
    neg_step_size: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> hp: SparseAdamScalars;

/// One touched element, in PyTorch's order of operations: each moment moves by its update
/// `(new − old)·(1 − β)`, and the step divides the new first moment by the root of the new
/// second. State: s0 `exp_avg`, s1 `exp_avg_sq`.
fn update(x: Element) -> Element {
    var e = x;
    let g = effective_grad(e.grad, e.param, 0.0);
    let m = e.s0 + (g - e.s0) * hp.one_minus_beta1;
    let v = e.s1 + (g * g - e.s1) * hp.one_minus_beta2;
    e.s0 = m;
    e.s1 = v;
    e.param = e.param + hp.neg_step_size * (m / denominator(v, hp.eps));
    return e;
}
