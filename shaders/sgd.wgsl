// SGD with momentum, dampening and Nesterov (torch.optim.SGD). Compiled after `precision.wgsl`.

/// Keep in sync with `SgdScalars` in src/optim/sgd.rs (a test compares the layouts).
struct SgdScalars {
    lr: f32,
    weight_decay: f32,
    momentum: f32,
    one_minus_dampening: f32,
    /// 1 on the first step: PyTorch then sets the buffer to the gradient, without dampening.
    first_step: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

/// Momentum is on (PyTorch: momentum != 0); otherwise `momentum_buffer` is a placeholder.
override HAS_MOMENTUM: bool = false;
override NESTEROV: bool = false;

@group(0) @binding(0) var<uniform> hp: SgdScalars;

/// One element's update (`visit` in precision.wgsl calls it). State: s0 `momentum_buffer`.
fn update(x: Element) -> Element {
    var e = x;
    var d = effective_grad(e.grad, e.param, hp.weight_decay);
    if HAS_MOMENTUM {
        var b = d;
        if hp.first_step == 0u {
            b = e.s0 * hp.momentum + hp.one_minus_dampening * d;
        }
        e.s0 = b;
        if NESTEROV {
            d = d + hp.momentum * b;
        } else {
            d = b;
        }
    }
    e.param = e.param + -hp.lr * d;
    return e;
}
