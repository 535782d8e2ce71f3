// How an optimizer kernel's tensors are stored, for every precision: it loads one element's
// parameter, gradient and state into an `Element`, hands it to the optimizer's
// `fn update(e: Element) -> Element` (the optimizer's file, compiled after this one), and
// stores what comes back. Compiled after `common.wgsl` and `half.wgsl`.
//
// Binding layout (src/kernels/mod.rs makes it from the optimizer's KernelSpec):
//   0: the optimizer's uniform of per-step scalars (declared by its file)
//   1: parameters (read-write)      2: gradients (read-only)
//   3, 4, 5: optimizer state in the KernelSpec's order (placeholders where unused)
//   6: this chunk (`Chunk`)         7: this step's random key (`StepBits`)
//   8: the f32 master copy of the parameters (a placeholder without one)
// Every tensor is declared as u32 words: one f32 per word in f32, two 16-bit values per word
// (the first in the low half) in 16-bit storage. An invocation owns whole words: it updates
// both elements of a word and writes it once, so no two invocations write one word.

/// Parameters and gradients are 16-bit (two per word); f32 otherwise.
override HALF: bool = false;
/// The 16-bit format is bf16; f16 otherwise.
override BF16: bool = true;
/// The optimizer state is in the 16-bit format too (PyTorch's fused kernels on a 16-bit
/// parameter); f32 otherwise.
override HALF_STATE: bool = false;
/// An f32 master copy at binding 8 is stepped, and the parameters are its rounding.
override MASTER: bool = false;
/// The stepped parameter is rounded to bf16 stochastically.
override STOCHASTIC: bool = false;
/// A guard ran before the step (`guard.wgsl`): skip it or unscale and clip the gradient as
/// `step_bits` says.
override GUARDED: bool = false;
/// Bit k set: state tensor k is bound (else its binding is a placeholder, never touched).
override STATE_USED: u32 = 0u;

/// Where the bound chunk lies in the whole range.
struct Chunk {
    /// Elements in the chunk (the last word of a 16-bit chunk may hold only one).
    len: u32,
    /// Index of the chunk's first element in the whole parameter set (low and high words):
    /// the counter of stochastic rounding, so the bits do not depend on how it is cut.
    base_lo: u32,
    base_hi: u32,
    _pad: u32,
}

/// Per-step values every kernel may need besides its optimizer's scalars. The host writes
/// them with the scalars; under a guard, `choose` in `guard.wgsl` does.
struct StepBits {
    /// Key of this step's stochastic rounding (`fusedopt::optim::step_key`).
    key: vec2<u32>,
    /// GUARDED: the step is skipped (a gradient overflowed under the loss scaler).
    skip: u32,
    /// GUARDED: the gradient the update sees is `(g * unscale) * clip`.
    unscale: f32,
    clip: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(1) var<storage, read_write> param: array<u32>;
@group(0) @binding(2) var<storage, read> grad: array<u32>;
@group(0) @binding(3) var<storage, read_write> state0: array<u32>;
@group(0) @binding(4) var<storage, read_write> state1: array<u32>;
@group(0) @binding(5) var<storage, read_write> state2: array<u32>;
@group(0) @binding(6) var<uniform> chunk: Chunk;
@group(0) @binding(7) var<uniform> step_bits: StepBits;
@group(0) @binding(8) var<storage, read_write> master: array<u32>;

fn units() -> u32 {
    if HALF {
        // Words; a chunk holds at most 2^31 elements, so this cannot wrap.
        return (chunk.len + 1u) / 2u;
    }
    return chunk.len;
}

fn visit(w: u32) {
    if GUARDED && step_bits.skip != 0u {
        return;
    }
    if HALF {
        visit_word(w);
    } else {
        visit_f32(w);
    }
}

/// Element `i` with everything in f32.
fn visit_f32(i: u32) {
    let e = Element(
        bitcast<f32>(param[i]),
        guarded(bitcast<f32>(grad[i])),
        bitcast<f32>(load_state(0u, i)),
        bitcast<f32>(load_state(1u, i)),
        bitcast<f32>(load_state(2u, i)),
    );
    let out = update(e);
    param[i] = bitcast<u32>(out.param);
    store_state(0u, i, bitcast<u32>(out.s0));
    store_state(1u, i, bitcast<u32>(out.s1));
    store_state(2u, i, bitcast<u32>(out.s2));
}

/// Word `w` of 16-bit parameters and gradients: its one or two elements.
fn visit_word(w: u32) {
    let first = 2u * w;
    let count = min(2u, chunk.len - first);
    let g_word = grad[w];
    // With a master the parameters are only written, but a word whose upper half lies past
    // the chunk keeps that half as it was.
    var p_word = 0u;
    if !MASTER || count < 2u {
        p_word = param[w];
    }
    var s_words = vec3<u32>(0u);
    if HALF_STATE {
        s_words = vec3(load_state(0u, w), load_state(1u, w), load_state(2u, w));
    }
    for (var j = 0u; j < count; j++) {
        let i = first + j;
        var e: Element;
        e.grad = guarded(widen(half_of(g_word, j)));
        if MASTER {
            e.param = bitcast<f32>(master[i]);
        } else {
            e.param = widen(half_of(p_word, j));
        }
        if HALF_STATE {
            e.s0 = widen(half_of(s_words.x, j));
            e.s1 = widen(half_of(s_words.y, j));
            e.s2 = widen(half_of(s_words.z, j));
        } else {
            e.s0 = bitcast<f32>(load_state(0u, i));
            e.s1 = bitcast<f32>(load_state(1u, i));
            e.s2 = bitcast<f32>(load_state(2u, i));
        }
        let out = update(e);
        if MASTER {
            master[i] = bitcast<u32>(out.param);
        }
        var bits: u32;
        if STOCHASTIC {
            let lo = chunk.base_lo + i;
            let hi = chunk.base_hi + select(0u, 1u, lo < i);
            bits = f32_to_bf16_stochastic(out.param, random_bits(step_bits.key, lo, hi));
        } else {
            bits = narrow(out.param);
        }
        p_word = with_half(p_word, j, bits);
        if HALF_STATE {
            s_words = vec3(
                with_half(s_words.x, j, narrow(out.s0)),
                with_half(s_words.y, j, narrow(out.s1)),
                with_half(s_words.z, j, narrow(out.s2)),
            );
        } else {
            store_state(0u, i, bitcast<u32>(out.s0));
            store_state(1u, i, bitcast<u32>(out.s1));
            store_state(2u, i, bitcast<u32>(out.s2));
        }
    }
    param[w] = p_word;
    if HALF_STATE {
        store_state(0u, w, s_words.x);
        store_state(1u, w, s_words.y);
        store_state(2u, w, s_words.z);
    }
}

/// The gradient the update sees: unscaled, then clipped, under a guard.
fn guarded(g: f32) -> f32 {
    if GUARDED {
        return (g * step_bits.unscale) * step_bits.clip;
    }
    return g;
}

/// Word `w` of state tensor `k`, or 0 where it is not bound.
fn load_state(k: u32, w: u32) -> u32 {
    if (STATE_USED & (1u << k)) == 0u {
        return 0u;
    }
    switch k {
        case 0u: {
            return state0[w];
        }
        case 1u: {
            return state1[w];
        }
        default: {
            return state2[w];
        }
    }
}

/// Writes word `w` of state tensor `k` where it is bound.
fn store_state(k: u32, w: u32, value: u32) {
    if (STATE_USED & (1u << k)) == 0u {
        return;
    }
    switch k {
        case 0u: {
            state0[w] = value;
        }
        case 1u: {
            state1[w] = value;
        }
        default: {
            state2[w] = value;
        }
    }
}

/// The 16-bit value in half `j` (0 low, 1 high) of `word`.
fn half_of(word: u32, j: u32) -> u32 {
    return (word >> (16u * j)) & 0xffffu;
}

/// `word` with half `j` replaced by `bits`.
fn with_half(word: u32, j: u32, bits: u32) -> u32 {
    let shift = 16u * j;
    return (word & ~(0xffffu << shift)) | (bits << shift);
}

/// A 16-bit value of the kernel's format, widened.
fn widen(bits: u32) -> f32 {
    if BF16 {
        return bf16_to_f32(bits);
    }
    return f16_to_f32(bits);
}

/// `x` rounded to nearest even in the kernel's 16-bit format.
fn narrow(x: f32) -> u32 {
    if BF16 {
        return f32_to_bf16(x);
    }
    return f32_to_f16(x);
}
