// Shared by every kernel: the one entry point and its launch shape, and the pieces of the
// optimizers' updates. A kernel is compiled as this file followed by the files that define
// `fn units() -> u32` (how many units of work the bound chunk holds) and `fn visit(u: u32)`
// (the work on unit `u`): `precision.wgsl` (dense) or `sparse.wgsl` (row-sparse) and an
// optimizer's file for the optimizers (`src/kernels/` composes them), `copy.wgsl` for the copy
// roofline.

/// Threads per workgroup (the host's `LaunchShape`).
override WORKGROUP_SIZE: u32 = 256u;
/// Units each invocation visits per round, `WORKGROUP_SIZE` apart, so that a workgroup covers
/// `WORKGROUP_SIZE * ELEMENTS_PER_INVOCATION` consecutive units and each of an invocation's
/// loads is coalesced with its neighbours' and independent of its other loads. A unit is one
/// element in f32 and one word of two elements in 16-bit precisions.
override ELEMENTS_PER_INVOCATION: u32 = 1u;
/// PyTorch's `maximize`: ascend instead of descend by negating the gradient first.
override MAXIMIZE: bool = false;
/// Put eps inside the square root (`g / sqrt(s + eps)`, optax) instead of PyTorch's
/// `g / (sqrt(s) + eps)`. Only the kernels with such a denominator read it.
override EPS_IN_SQRT: bool = false;

/// The entry point of every kernel. Workgroups are numbered row by row over a 2-D grid (one
/// dimension holds at most 65535); workgroup `w` starts at unit `w * width` and, when the
/// grid covers less than the chunk, strides on by the whole grid's width (a grid-stride loop).
/// The host keeps the grid's units per round (`stride`) below 2^32, and every bound is tested
/// as a distance from an index already below `n`, so no index wraps, whatever `n`.
@compute @workgroup_size(WORKGROUP_SIZE)
fn step(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let n = units();
    let width = WORKGROUP_SIZE * ELEMENTS_PER_INVOCATION;
    let stride = nwg.x * nwg.y * width;
    var first = (wid.x + wid.y * nwg.x) * width + lid;
    loop {
        if first >= n {
            break;
        }
        for (var k = 0u; k < ELEMENTS_PER_INVOCATION; k++) {
            // Compared as a distance from `first` (< n), so no sum can wrap.
            let offset = k * WORKGROUP_SIZE;
            if offset < n - first {
                visit(first + offset);
            }
        }
        if stride >= n - first {
            break;
        }
        first += stride;
    }
}

/// One element as an optimizer's `update` sees it, in f32: parameter, gradient and up to three
/// state values (`s0`.. in the KernelSpec's order; zero where unbound). `precision.wgsl` and
/// `sparse.wgsl` load and store it.
struct Element {
    param: f32,
    grad: f32,
    s0: f32,
    s1: f32,
    s2: f32,
}

/// The gradient the update sees: negated under `maximize`, plus coupled (L2) weight decay
/// `g + wd * p`, skipped when wd is zero as PyTorch skips it (0 * inf would be NaN).
fn effective_grad(g_raw: f32, p: f32, weight_decay: f32) -> f32 {
    var g = g_raw;
    if MAXIMIZE {
        g = -g;
    }
    if weight_decay != 0.0 {
        g = g + weight_decay * p;
    }
    return g;
}

/// `torch.lerp(start, end, weight)` as ATen evaluates it: two forms, picked by |weight| < 0.5,
/// with `one_minus_weight` rounded to f32 on the host like ATen's opmath.
fn torch_lerp(start: f32, end: f32, weight: f32, one_minus_weight: f32) -> f32 {
    if abs(weight) < 0.5 {
        return start + weight * (end - start);
    }
    return end - (end - start) * one_minus_weight;
}

/// `sqrt(s) + eps`, or `sqrt(s + eps)` under EPS_IN_SQRT.
fn denominator(s: f32, eps: f32) -> f32 {
    if EPS_IN_SQRT {
        return sqrt(s + eps);
    }
    return sqrt(s) + eps;
}
