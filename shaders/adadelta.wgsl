// Adadelta (torch.optim.Adadelta): eps sits inside both square roots. Compiled after `precision.wgsl`.

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

/// One element's update (`visit` in precision.wgsl calls it). State: s0 `square_avg`,
/// s1 `acc_delta`.
fn update(x: Element) -> Element {
    var e = x;
    let g = effective_grad(e.grad, e.param, hp.weight_decay);
    let v = e.s0 * hp.rho + hp.one_minus_rho * g * g;
    e.s0 = v;
    let rms_grad = sqrt(v + hp.eps);
    let delta = sqrt(e.s1 + hp.eps) / rms_grad * g;
    e.s1 = e.s1 * hp.rho + hp.one_minus_rho * delta * delta;
    e.param = e.param + -hp.lr * delta;
    return e;
}
