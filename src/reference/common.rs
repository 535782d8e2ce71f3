//! Mirrors of the helpers in `shaders/common.wgsl`, and the macro that makes the kernels'
//! option flags compile-time constants as WGSL overrides are.

/// Expands `$body` once per combination of the boolean `flags`, each copy seeing every flag as a
/// constant (`let flag = true;` or `false`). The kernels' loops then hold no test of an option:
/// the compiler drops the dead branches of each copy, as a WGSL pipeline drops those of its
/// `override`s, and vectorizes what is left. The arithmetic of each copy is unchanged.
macro_rules! with_constant_flags {
    ([], $body:block) => { $body };
    ([$flag:ident $(, $rest:ident)*], $body:block) => {
        if $flag {
            let $flag = true;
            with_constant_flags!([$($rest),*], $body)
        } else {
            let $flag = false;
            with_constant_flags!([$($rest),*], $body)
        }
    };
}
pub(super) use with_constant_flags;

/// `effective_grad` in common.wgsl: negate under maximize, add coupled weight decay when
/// `decays` (`weight_decay != 0`, decided once per step rather than per element).
#[inline(always)]
pub(super) fn effective_grad(
    maximize: bool,
    decays: bool,
    g_raw: f32,
    p: f32,
    weight_decay: f32,
) -> f32 {
    let mut g = g_raw;
    if maximize {
        g = -g;
    }
    if decays {
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

/// A workgroup's sum of its lanes (a power of two of them), as the kernels take it: at each
/// level lane `l` adds lane `l + half`, then `half` halves.
pub(super) fn pairwise_halving(lanes: &mut [f32]) -> f32 {
    let mut half = lanes.len() / 2;
    while half > 0 {
        for l in 0..half {
            lanes[l] += lanes[l + half];
        }
        half /= 2;
    }
    lanes.first().copied().unwrap_or(0.0)
}
