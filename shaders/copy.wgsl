// The bandwidth roofline: copies the gradient binding into the parameter binding through the
// optimizers' own bindings 1 and 2, entry point and launch shape (it is compiled after
// `common.wgsl`). Reading 4 bytes and writing 4 per element is the least any elementwise kernel
// can move, so its throughput is what the optimizers are held to.

/// One element's update; `step` in common.wgsl calls it for every index of the binding.
fn update(i: u32) {
    param[i] = grad[i];
}
