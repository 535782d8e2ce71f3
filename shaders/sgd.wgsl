// SGD with momentum, dampening and Nesterov (torch.optim.SGD). Needs `common.wgsl` before it.

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
@group(0) @binding(3) var<storage, read_write> momentum_buffer: array<f32>;

/// One element's update; `step` in common.wgsl calls it for every index of the binding.
fn update(i: u32) {
    let p = param[i];
    var d = effective_grad(grad[i], p, hp.weight_decay);
    if HAS_MOMENTUM {
        var b = d;
        if hp.first_step == 0u {
            b = momentum_buffer[i] * hp.momentum + hp.one_minus_dampening * d;
        }
        momentum_buffer[i] = b;
        if NESTEROV {
            d = d + hp.momentum * b;
        } else {
            d = b;
        }
    }
    param[i] = p + -hp.lr * d;
}
