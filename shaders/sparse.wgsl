// Row-sparse steps of an embedding table `[rows, dim]`: the gradient is `k` looked-up row
// indices (duplicates allowed, any order) and one gradient row per lookup. Compiled after
// `common.wgsl` and before an optimizer's file (its `update` and its uniform at binding 0).
//
// A step is four passes in one compute pass (src/gpu/sparse.rs records them):
//   keys      each lookup becomes the key (row, position); a row outside the table is
//             counted in `skipped` and keyed past every row, so nothing reads or writes it
//   sort      one stage of a bitonic sort of the keys (many dispatches), so the lookups of one
//             row lie together in lookup order: duplicates are then summed in that order,
//             the same sum on every run, with no float atomics
//   row_sums  row-wise state only: each touched row's mean square into its one accumulator,
//             one workgroup per row
//   step      (common.wgsl) one unit per (sorted lookup, column): the first lookup of a row
//             sums its duplicates' column and hands the element to `update`
// Every pass costs in proportion to k (or k·dim); the table is only touched where looked up.

/// The state is one value per row (row-wise Adagrad), not one per element.
override ROW_STATE: bool = false;
/// State tensors the optimizer keeps (bindings 3 and 4); the rest are placeholders.
override STATE_COUNT: u32 = 1u;

/// A key past every row: lookups outside the table and the sort's padding.
const NO_ROW: u32 = 0xffffffffu;
/// Rounds of an inner loop: Mesa's software drivers leave a loop after 65,535 rounds, so a
/// long run is walked as loops of at most this many rounds inside another.
const ROUNDS: u32 = 4096u;

/// This step's lookups (the host copies it in with the optimizer's scalars).
struct Lookups {
    /// Lookups this step.
    k: u32,
    /// `k` rounded up to a power of two: the keys the sort orders.
    k_pad: u32,
    rows: u32,
    dim: u32,
}

/// One stage of the bitonic sort, bound at its own offset.
struct Stage {
    /// Length of the sequences being merged.
    size: u32,
    /// Distance between the keys compared.
    stride: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(1) var<storage, read_write> table: array<f32>;
@group(0) @binding(2) var<storage, read> values: array<f32>;
@group(0) @binding(3) var<storage, read_write> state0: array<f32>;
@group(0) @binding(4) var<storage, read_write> state1: array<f32>;
@group(0) @binding(5) var<storage, read> indices: array<u32>;
@group(0) @binding(6) var<storage, read_write> keys: array<vec2<u32>>;
@group(0) @binding(7) var<uniform> lookups: Lookups;
@group(0) @binding(8) var<uniform> stage: Stage;
@group(0) @binding(9) var<storage, read_write> skipped: array<atomic<u32>>;

/// The invocation's index in a grid that covers the pass (no grid-stride: the host launches
/// enough workgroups, fewer than 2^32 invocations).
fn invocation(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * WORKGROUP_SIZE + lid;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn make_keys(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = invocation(lid, wid, nwg);
    if i >= lookups.k_pad {
        return;
    }
    var key = vec2<u32>(NO_ROW, NO_ROW);
    if i < lookups.k {
        key = vec2<u32>(indices[i], i);
        if key.x >= lookups.rows {
            atomicAdd(&skipped[0], 1u);
            key.x = NO_ROW;
        }
    }
    keys[i] = key;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn sort(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let t = invocation(lid, wid, nwg);
    if t >= lookups.k_pad / 2u {
        return;
    }
    let i = (t / stage.stride) * 2u * stage.stride + t % stage.stride;
    let j = i + stage.stride;
    let a = keys[i];
    let b = keys[j];
    let ascending = (i & stage.size) == 0u;
    let a_after_b = a.x > b.x || (a.x == b.x && a.y > b.y);
    if a_after_b == ascending {
        keys[i] = b;
        keys[j] = a;
    }
}

/// Whether sorted lookup `j` (< k) is the first of a row inside the table.
fn first_of_row(j: u32) -> bool {
    let row = keys[j].x;
    return row < lookups.rows && (j == 0u || keys[j - 1u].x != row);
}

/// Whether sorted lookup `i` exists and belongs to `row`.
fn in_run(i: u32, row: u32) -> bool {
    return i < lookups.k && keys[i].x == row;
}

/// Column `c` of the gradient of the row whose first sorted lookup is `j`: its lookups'
/// values summed in lookup order. A row's run of lookups may be as long as `k` (below 2^31),
/// so it is walked in loops of `ROUNDS` inside loops of `ROUNDS` inside one more (at most 128
/// rounds): no loop reaches Mesa's cut.
fn coalesced(j: u32, c: u32) -> f32 {
    let row = keys[j].x;
    var g = values[keys[j].y * lookups.dim + c];
    var i = j + 1u;
    loop {
        if !in_run(i, row) {
            break;
        }
        for (var outer = 0u; outer < ROUNDS && in_run(i, row); outer++) {
            for (var n = 0u; n < ROUNDS && in_run(i, row); n++) {
                g = g + values[keys[i].y * lookups.dim + c];
                i++;
            }
        }
    }
    return g;
}

/// Lanes that share one row's sum of squares. A constant rather than the launch shape's
/// `WORKGROUP_SIZE`, so the order of the sum (which the CPU mirror repeats) is the same on
/// every device: lane `l` sums columns `l, l + ROW_LANES, ...` in order, then the lanes are
/// added pairwise, halving.
const ROW_LANES: u32 = 64u;
var<workgroup> lane_sums: array<f32, ROW_LANES>;
var<workgroup> row_starts: u32;

/// One workgroup per sorted lookup; those that start a row add its mean square to the row's
/// accumulator. The columns are spread over the lanes, so a long row is no one thread's work.
@compute @workgroup_size(ROW_LANES)
fn row_sums(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let j = wid.x + wid.y * nwg.x;
    if lane == 0u {
        row_starts = u32(j < lookups.k && first_of_row(j));
    }
    // Read through a barrier, so the whole workgroup leaves (or stays) together.
    if workgroupUniformLoad(&row_starts) == 0u {
        return;
    }
    var total = 0.0;
    var c = lane;
    loop {
        if c >= lookups.dim {
            break;
        }
        for (var n = 0u; n < ROUNDS && c < lookups.dim; n++) {
            let g = coalesced(j, c);
            total = total + g * g;
            c += ROW_LANES;
        }
    }
    lane_sums[lane] = total;
    for (var half = ROW_LANES / 2u; half > 0u; half /= 2u) {
        workgroupBarrier();
        if lane < half {
            lane_sums[lane] = lane_sums[lane] + lane_sums[lane + half];
        }
    }
    if lane == 0u {
        let row = keys[j].x;
        state0[row] = state0[row] + lane_sums[0] / f32(lookups.dim);
    }
}

fn units() -> u32 {
    return lookups.k * lookups.dim;
}

fn visit(u: u32) {
    let j = u / lookups.dim;
    if !first_of_row(j) {
        return;
    }
    let c = u - j * lookups.dim;
    let row = keys[j].x;
    let at = row * lookups.dim + c;
    let state_at = select(at, row, ROW_STATE);
    var e = Element(table[at], coalesced(j, c), 0.0, 0.0, 0.0);
    if STATE_COUNT > 0u {
        e.s0 = state0[state_at];
    }
    if STATE_COUNT > 1u {
        e.s1 = state1[at];
    }
    let out = update(e);
    table[at] = out.param;
    if STATE_COUNT > 0u && !ROW_STATE {
        state0[at] = out.s0;
    }
    if STATE_COUNT > 1u {
        state1[at] = out.s1;
    }
}
