//! Mirrors of the helpers in `shaders/common.wgsl`.

/// `effective_grad` in common.wgsl: negate under maximize, add coupled weight decay.
#[inline(always)]
pub(super) fn effective_grad(maximize: bool, g_raw: f32, p: f32, weight_decay: f32) -> f32 {
    let mut g = g_raw;
    if maximize {
        g = -g;
    }
    if weight_decay != 0.0 {
        g += weight_decay * p;
    }
    g
}

/// `torch_lerp` in common.wgsl (ATen's two-form lerp).
#[inline(always)]
pub(super) fn torch_lerp(start: f32, end: f32, weight: f32, one_minus_weight: f32) -> f32 {
    if weight.abs() < 0.5 {
        start + weight * (end - start)
    } else {
        end - (end - start) * one_minus_weight
    }
}

/// `denominator` in common.wgsl.
#[inline(always)]
pub(super) fn denominator(eps_in_sqrt: bool, s: f32, eps: f32) -> f32 {
    if eps_in_sqrt {
        (s + eps).sqrt()
    } else {
        s.sqrt() + eps
    }
}
