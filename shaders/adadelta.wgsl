// Adadelta (torch.optim.Adadelta): eps sits inside both square roots. Needs `common.wgsl`.

/// Keep in sync with `AdadeltaScalars` in src/optim/adadelta.rs (a test compares the layouts).
struct AdadeltaScalars {
    lr: f32,
    rho: f32,
    one_minus_rho: f32,
    eps: f32,
    weight_decay: f32,
    _pad0: f32,
    _pad1: f32,
    _pad2: f32,
}

@group(0) @binding(0) var<uniform> hp: AdadeltaScalars;
@group(0) @binding(3) var<storage, read_write> square_avg: array<f32>;
@group(0) @binding(4) var<storage, read_write> acc_delta: array<f32>;

/// One element's update; `step` in common.wgsl calls it for every index of the binding.
fn update(i: u32) {
    let p = param[i];
    let g = effective_grad(grad[i], p, hp.weight_decay);
    let v = square_avg[i] * hp.rho + hp.one_minus_rho * g * g;
    square_avg[i] = v;
    let rms_grad = sqrt(v + hp.eps);
    let delta = sqrt(acc_delta[i] + hp.eps) / rms_grad * g;
    acc_delta[i] = acc_delta[i] * hp.rho + hp.one_minus_rho * delta * delta;
    param[i] = p + -hp.lr * delta;
}
