// The bandwidth roofline: copies the gradient binding into the parameter binding, one f32 per
// invocation, with the same bindings 1 and 2, indexing and workgroup size as the optimizer
// kernels (it is compiled after `common.wgsl`). Reading 4 bytes and writing 4 per element is the
// least any elementwise kernel can move, so its throughput is what the optimizers are held to.

@compute @workgroup_size(WORKGROUP_SIZE)
fn step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(gid, nwg);
    if i >= arrayLength(&param) {
        return;
    }
    param[i] = grad[i];
}
