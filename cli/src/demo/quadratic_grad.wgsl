// Gradient of the demo's quadratic L(x) = ½ xᵀAx, that is g = A·x for a dense n×n matrix, run
// before every optimizer step (src/demo/runner.rs). It also copies x into one row of a trajectory
// buffer, so that many iterations (gradient pass, then the optimizer's step) can be recorded into
// one submission and the whole path read back at once, with no readback in between.
//
// The problems have a handful of variables, so one workgroup does everything; n is the length of
// the bound x (the optimizer's parameter range).

/// Which trajectory row this iteration writes: one slot per row, chosen by dynamic offset, and
/// written once when the run starts (a queue write would land before the whole submission, not
/// between its passes).
struct Row {
    index: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WORKGROUP_SIZE: u32 = 64u;

@group(0) @binding(0) var<uniform> row: Row;
/// A, row-major.
@group(0) @binding(1) var<storage, read> matrix: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad: array<f32>;
/// Rows of n values, one per iteration of the current batch.
@group(0) @binding(4) var<storage, read_write> trajectory: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn gradient(@builtin(local_invocation_index) lane: u32) {
    let n = arrayLength(&x);
    for (var i = lane; i < n; i += WORKGROUP_SIZE) {
        var sum = 0.0;
        for (var j = 0u; j < n; j++) {
            sum += matrix[i * n + j] * x[j];
        }
        grad[i] = sum;
        trajectory[row.index * n + i] = x[i];
    }
}
