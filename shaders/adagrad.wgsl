// Adagrad (torch.optim.Adagrad; optax.adagrad with EPS_IN_SQRT). Compiled after `precision.wgsl`
// (dense) or `sparse.wgsl` (row-sparse, and row-wise with ACCUMULATED).

/// Keep in sync with `AdagradScalars` in src/optim/adagrad.rs (a test compares the layouts).
struct AdagradScalars {
    /// lr / (1 + (t - 1) * lr_decay), computed on the host in f64.
    clr: f32,
    eps: f32,
    weight_decay: f32,
    _pad0: f32,
}

@group(0) @binding(0) var<uniform> hp: AdagradScalars;

/// The sum already holds this step's square (row-wise Adagrad in `sparse.wgsl` adds each
/// row's mean square before the update), so `update` only reads it.
override ACCUMULATED: bool = false;

/// One element's update (`visit` in precision.wgsl calls it). State: s0 `sum`.
fn update(x: Element) -> Element {
    var e = x;
    let g = effective_grad(e.grad, e.param, hp.weight_decay);
    var s = e.s0;
    if !ACCUMULATED {
        s = s + g * g;
    }
    e.s0 = s;
    e.param = e.param + -hp.clr * (g / denominator(s, hp.eps));
    return e;
}
