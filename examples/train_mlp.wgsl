// The example's own forward and backward pass: a two-layer network
//   h = relu(W1 x + b1),   y = W2 h + b2,   loss = mean over the batch of (y - t)^2
// (`dims.mean_over` is the batch the mean is taken over: all of it on one device, the global
// batch when `dims.batch` is one process's shard of it)
// with the parameters and their gradients as segments of two flat buffers laid out by
// fusedopt's ModelLayout (offsets in `dims`). One invocation per output element; the backward
// entry points loop over the batch, which is small.

struct Dims {
    batch: u32,
    inputs: u32,
    hidden: u32,
    w1: u32,
    b1: u32,
    w2: u32,
    b2: u32,
    mean_over: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> params: array<f32>;
@group(0) @binding(2) var<storage, read_write> grads: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read> y_true: array<f32>;
@group(0) @binding(5) var<storage, read_write> h: array<f32>;
@group(0) @binding(6) var<storage, read_write> dy: array<f32>;
@group(0) @binding(7) var<storage, read_write> loss: array<f32>;
// In a 16-bit precision: the parameters and gradients fusedopt steps (two to a word, the first
// in the low half), and the loss scale its guard keeps on the device (the first word).
@group(0) @binding(8) var<storage, read> params16: array<u32>;
@group(0) @binding(9) var<storage, read_write> grads16: array<u32>;
@group(0) @binding(10) var<storage, read> scale: array<f32>;

/// The 16-bit format is bf16 (f16 otherwise).
override BF16: bool = true;

/// The f32 copy of the 16-bit parameters the forward pass reads.
@compute @workgroup_size(64)
fn widen_params(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if i >= arrayLength(&params) {
        return;
    }
    let bits = (params16[i / 2u] >> (16u * (i % 2u))) & 0xffffu;
    if BF16 {
        params[i] = bf16_to_f32(bits);
    } else {
        params[i] = f16_to_f32(bits);
    }
}

/// The gradient times the loss scale, rounded to the 16-bit format: one word (two elements)
/// per invocation, so no two invocations write one word.
@compute @workgroup_size(64)
fn narrow_grads(@builtin(global_invocation_id) id: vec3<u32>) {
    let w = id.x;
    if w >= arrayLength(&grads16) {
        return;
    }
    let s = scale[0];
    grads16[w] = narrow(grads[2u * w] * s) | (narrow(grads[2u * w + 1u] * s) << 16u);
}

fn narrow(x: f32) -> u32 {
    if BF16 {
        return f32_to_bf16(x);
    }
    return f32_to_f16(x);
}

/// h[b, j] = relu(W1[j, :] . x[b, :] + b1[j])
@compute @workgroup_size(64)
fn hidden(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if i >= dims.batch * dims.hidden {
        return;
    }
    let b = i / dims.hidden;
    let j = i % dims.hidden;
    var z = params[dims.b1 + j];
    for (var k = 0u; k < dims.inputs; k++) {
        z += params[dims.w1 + j * dims.inputs + k] * x[b * dims.inputs + k];
    }
    h[i] = max(z, 0.0);
}

/// y[b] = W2 . h[b, :] + b2; dy[b] = dloss/dy[b]; loss[b] = (y - t)^2 / mean_over
@compute @workgroup_size(64)
fn output(@builtin(global_invocation_id) id: vec3<u32>) {
    let b = id.x;
    if b >= dims.batch {
        return;
    }
    var y = params[dims.b2];
    for (var j = 0u; j < dims.hidden; j++) {
        y += params[dims.w2 + j] * h[b * dims.hidden + j];
    }
    let r = y - y_true[b];
    // The mean is over the global batch: a data-parallel shard's gradients add up to its.
    let n = f32(dims.mean_over);
    dy[b] = 2.0 * r / n;
    loss[b] = r * r / n;
}

/// dloss/dh[b, j] through the relu.
fn dh(b: u32, j: u32) -> f32 {
    if h[b * dims.hidden + j] <= 0.0 {
        return 0.0;
    }
    return dy[b] * params[dims.w2 + j];
}

/// Gradients of W1 (one invocation per element) and of b1 (by each row's first invocation).
@compute @workgroup_size(64)
fn grad_layer1(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if i >= dims.hidden * dims.inputs {
        return;
    }
    let j = i / dims.inputs;
    let k = i % dims.inputs;
    var gw = 0.0;
    var gb = 0.0;
    for (var b = 0u; b < dims.batch; b++) {
        let d = dh(b, j);
        gw += d * x[b * dims.inputs + k];
        gb += d;
    }
    grads[dims.w1 + i] = gw;
    if k == 0u {
        grads[dims.b1 + j] = gb;
    }
}

/// Gradients of W2 (hidden) and b2 (one): invocation `hidden` does b2.
@compute @workgroup_size(64)
fn grad_layer2(@builtin(global_invocation_id) id: vec3<u32>) {
    let j = id.x;
    if j > dims.hidden {
        return;
    }
    var g = 0.0;
    for (var b = 0u; b < dims.batch; b++) {
        if j == dims.hidden {
            g += dy[b];
        } else {
            g += dy[b] * h[b * dims.hidden + j];
        }
    }
    if j == dims.hidden {
        grads[dims.b2] = g;
    } else {
        grads[dims.w2 + j] = g;
    }
}
