// The bandwidth roofline: copies one f32 binding into another through the optimizers' entry
// point and launch shape (it is compiled after `common.wgsl`). Reading 4 bytes and writing 4
// per element is the least any elementwise kernel can move, so its throughput is what the
// optimizers are held to.

@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;

fn units() -> u32 {
    return arrayLength(&dst);
}

fn visit(i: u32) {
    dst[i] = src[i];
}
