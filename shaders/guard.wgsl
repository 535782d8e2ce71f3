// The guard of a step: the pre-pass over every gradient of a model before its optimizers
// run (loss scaling, overflow test, global norm for clipping), and the choice of each
// optimizer's scalars by the step count the device keeps. Compiled after `half.wgsl`.
// The CPU mirror is src/reference/guard.rs and src/optim/guard.rs (`finish_guard`).
//
// `check` runs once per chunk of gradient: one workgroup per block of BLOCK elements. It
// tests every element's bits for inf/NaN (an integer test, OR-ed into `guard.found`) and
// writes the block's sum of squares of the unscaled gradient, summed in a fixed order
// (lane by lane, then a tree), into its slot of `partials`: the same bits run to run.
// `finish` (one workgroup) sums the partials in a fixed order and decides the step: norm,
// clip factor, skip, and the scaler's update for the next step. `choose` (one invocation
// per optimizer) counts the step on the device unless it is skipped, and copies the
// scalars the host prepared for that step count into the optimizer's uniform, with the
// skip flag and the gradient's factors, which `precision.wgsl` applies. Under the caller's
// own scaler, `adopt` takes its scale and found-inf flag first, and `finish` updates nothing.

const LANES: u32 = 256u;
const PER_LANE: u32 = 16u;
const BLOCK: u32 = 4096u;
/// Word of the uniform where `StepBits` begins (`STEP_BITS_OFFSET` / 4).
const STEP_BITS_WORD: u32 = 64u;

/// The gradients are 16-bit (two per word, the first in the low half); f32 otherwise.
override HALF: bool = false;
/// The 16-bit format is bf16; f16 otherwise.
override BF16: bool = true;

/// What the device keeps between steps. Keep in sync with `GuardWords` in src/gpu/guard.rs.
struct GuardState {
    /// The scale the next gradients carry.
    scale: f32,
    /// Clean steps in a row.
    growth_tracker: u32,
    /// Set by `check` when a gradient is inf or NaN; cleared by `finish`.
    found: atomic<u32>,
    /// The last step was skipped.
    skip: u32,
    /// The last step's unscale factor, clip factor and norm, and the scale it carried.
    unscale: f32,
    clip: f32,
    norm: f32,
    last_scale: f32,
    /// Steps `finish` has run.
    finished: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

/// Set once when the guard is made.
struct Settings {
    scaling: u32,
    clipping: u32,
    growth_factor: f32,
    backoff_factor: f32,
    growth_interval: u32,
    max_norm: f32,
    /// Blocks over all ranges: the length of `partials`.
    blocks: u32,
    /// The scale is the guard's own and `finish` updates it (it is the caller's otherwise).
    updating: u32,
}

/// The chunk of gradient a `check` dispatch covers.
struct Range {
    /// Elements (not words) in the chunk.
    len: u32,
    /// Slot in `partials` of the chunk's first block.
    first_block: u32,
    _pad0: u32,
    _pad1: u32,
}

/// An optimizer's step counts on the device. Keep in sync with src/gpu/optimizer.rs.
struct Counter {
    /// Steps taken (PyTorch's `state['step']`): skipped steps are not counted.
    step: u32,
    /// Steps recorded and run, skipped or not.
    executed: u32,
    /// Steps whose scalars the host had not prepared (never, unless the host is wrong): they
    /// are skipped rather than run with other scalars.
    lost: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read_write> guard: GuardState;
@group(0) @binding(1) var<uniform> settings: Settings;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;
@group(0) @binding(3) var<storage, read> grads: array<u32>;
@group(0) @binding(4) var<uniform> range: Range;
@group(0) @binding(5) var<storage, read_write> counter: Counter;
/// Words 0-3: the step count the first candidate is for, minus one; candidates; words of
/// scalars per candidate. Then each candidate: its scalars, then its two words of random key.
@group(0) @binding(6) var<storage, read> candidates: array<u32>;
/// The optimizer's uniform buffer, written as words.
@group(0) @binding(7) var<storage, read_write> scalars: array<u32>;
/// The caller's scale and found-inf flag (PyTorch's `grad_scale` and `found_inf`: one f32
/// each, the flag nonzero when the caller found an inf or NaN).
@group(0) @binding(8) var<storage, read> caller_scale: array<f32>;
@group(0) @binding(9) var<storage, read> caller_found: array<f32>;

var<workgroup> sums: array<f32, LANES>;

/// Element `i` of the chunk, widened to f32.
fn gradient(i: u32) -> f32 {
    if HALF {
        let bits = (grads[i / 2u] >> (16u * (i % 2u))) & 0xffffu;
        if BF16 {
            return bf16_to_f32(bits);
        }
        return f16_to_f32(bits);
    }
    return bitcast<f32>(grads[i]);
}

/// The factor that unscales the gradients carrying `scale` (`unscale_of` in Rust).
fn unscale_of(scale: f32) -> f32 {
    if settings.scaling != 0u {
        return 1.0 / scale;
    }
    return 1.0;
}

/// Sums `sums` into `sums[0]` by halving; every lane of the workgroup calls it.
fn sum_lanes(lane: u32) {
    for (var half = LANES / 2u; half > 0u; half /= 2u) {
        workgroupBarrier();
        if lane < half {
            sums[lane] = sums[lane] + sums[lane + half];
        }
    }
}

/// Before `check`, under the caller's scale: takes its scale and its found-inf flag.
@compute @workgroup_size(1)
fn adopt() {
    guard.scale = caller_scale[0];
    if caller_found[0] != 0.0 {
        atomicOr(&guard.found, 1u);
    }
}

@compute @workgroup_size(LANES)
fn check(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let block = wid.x + wid.y * nwg.x;
    // A chunk holds at most 2^31 elements, so neither sum wraps.
    if block >= (range.len + BLOCK - 1u) / BLOCK {
        return;
    }
    let unscale = unscale_of(guard.scale);
    let first = block * BLOCK + lane;
    var acc = 0.0;
    var found = false;
    for (var k = 0u; k < PER_LANE; k++) {
        let i = first + k * LANES;
        if i < range.len {
            let g = gradient(i);
            if (bitcast<u32>(g) & 0x7f800000u) == 0x7f800000u {
                found = true;
            }
            let x = g * unscale;
            acc = acc + x * x;
        }
    }
    if found {
        atomicOr(&guard.found, 1u);
    }
    sums[lane] = acc;
    sum_lanes(lane);
    if lane == 0u {
        partials[range.first_block + block] = sums[0];
    }
}

@compute @workgroup_size(LANES)
fn finish(@builtin(local_invocation_index) lane: u32) {
    var acc = 0.0;
    for (var b = lane; b < settings.blocks; b += LANES) {
        acc = acc + partials[b];
    }
    sums[lane] = acc;
    sum_lanes(lane);
    if lane != 0u {
        return;
    }
    let found = atomicExchange(&guard.found, 0u) != 0u;
    let scale = guard.scale;
    let norm = sqrt(sums[0]);
    var clip = 1.0;
    if settings.clipping != 0u {
        // PyTorch's float over tensor: the reciprocal, then the product.
        let coef = (1.0 / (norm + 1e-6)) * settings.max_norm;
        // NaN stays NaN, as torch.clamp(max=1) keeps it: told by its bits, since not every
        // backend compares a NaN as IEEE says (GL may not).
        let nan = (bitcast<u32>(coef) & 0x7fffffffu) > 0x7f800000u;
        clip = select(select(coef, 1.0, coef > 1.0), coef, nan);
    }
    guard.unscale = unscale_of(scale);
    guard.clip = clip;
    guard.norm = norm;
    guard.last_scale = scale;
    guard.skip = select(0u, 1u, settings.scaling != 0u && found);
    if settings.scaling != 0u && settings.updating != 0u {
        if found {
            guard.scale = scale * settings.backoff_factor;
            guard.growth_tracker = 0u;
        } else if guard.growth_tracker + 1u == settings.growth_interval {
            let grown = scale * settings.growth_factor;
            if (bitcast<u32>(grown) & 0x7f800000u) != 0x7f800000u {
                guard.scale = grown;
            }
            guard.growth_tracker = 0u;
        } else {
            guard.growth_tracker += 1u;
        }
    }
    guard.finished += 1u;
}

@compute @workgroup_size(1)
fn choose() {
    counter.executed += 1u;
    var skip = guard.skip;
    if skip == 0u {
        // Candidate i is for step count base + 1 + i; the host prepared every count the
        // device can have reached.
        let i = counter.step - candidates[0];
        let words = candidates[2];
        if i < candidates[1] {
            counter.step += 1u;
            let at = 4u + i * (words + 2u);
            for (var w = 0u; w < words; w++) {
                scalars[w] = candidates[at + w];
            }
            scalars[STEP_BITS_WORD] = candidates[at + words];
            scalars[STEP_BITS_WORD + 1u] = candidates[at + words + 1u];
        } else {
            skip = 1u;
            counter.lost += 1u;
        }
    }
    scalars[STEP_BITS_WORD + 2u] = skip;
    scalars[STEP_BITS_WORD + 3u] = bitcast<u32>(guard.unscale);
    scalars[STEP_BITS_WORD + 4u] = bitcast<u32>(guard.clip);
}
