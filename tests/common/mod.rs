//! Shared test helpers: the library's GPU-test policy (one device per test binary; fail
//! loudly without an adapter unless explicitly skipped), sizes, comparison, configurations.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use fusedopt::{Adagrad, Adam, Optimizer, Rmsprop, Sgd};

#[allow(unused_imports, reason = "each test binary uses a different subset")]
pub use fusedopt::testing::{gpu, own_gpu};

/// The sizes every kernel is checked at: single elements, around a workgroup (256), and a
/// large prime.
pub const AWKWARD_SIZES: [usize; 6] = [1, 3, 255, 256, 257, 100_003];

/// Element-wise comparison of `got` with `want` under the default f32 tolerance.
pub fn compare(got: &[f32], want: &[f32]) -> fusedopt::ErrorStats {
    let mut stats = fusedopt::ErrorStats::default();
    stats.add(&fusedopt::Tolerance::F32, 1, got, want);
    stats
}

/// The configurations with the most state per optimizer.
pub fn fullest_configs() -> Vec<Optimizer> {
    vec![
        Sgd {
            momentum: 0.9,
            weight_decay: 1e-2,
            ..Sgd::default()
        }
        .into(),
        Adagrad {
            initial_accumulator_value: 0.1,
            lr_decay: 0.01,
            ..Adagrad::default()
        }
        .into(),
        Rmsprop {
            centered: true,
            momentum: 0.5,
            ..Rmsprop::default()
        }
        .into(),
        Optimizer::default_for("adadelta").unwrap(),
        Adam {
            amsgrad: true,
            ..Adam::adamw()
        }
        .into(),
    ]
}

/// Runs a one-off compute kernel (`source`, entry `entry`, 64 threads per workgroup over a
/// 2-D grid of at most 65535 columns) reading `inputs` at binding 0 and the uniform `key` at
/// binding 2, and returns binding 1: `outputs` values of `T`, poisoned with 0xff bytes first
/// so that an unwritten one shows.
pub fn run_kernel<T: bytemuck::Pod>(
    gpu: &fusedopt::Gpu,
    source: &str,
    entry: &str,
    inputs: &[u32],
    outputs: usize,
    key: [u32; 2],
) -> Vec<T> {
    use wgpu::util::DeviceExt;
    let device = gpu.device();
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("test kernel"),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("test kernel"),
        layout: None,
        module: &module,
        entry_point: Some(entry),
        compilation_options: Default::default(),
        cache: None,
    });
    let storage = |contents: &[u8], usage| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents,
            usage: wgpu::BufferUsages::STORAGE | usage,
        })
    };
    let input = storage(bytemuck::cast_slice(inputs), wgpu::BufferUsages::empty());
    let out_bytes = outputs * std::mem::size_of::<T>();
    let output = storage(&vec![0xff; out_bytes], wgpu::BufferUsages::COPY_SRC);
    let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(&[key[0], key[1], 0, 0]),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: input.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: output.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 2,
                resource: uniform.as_entire_binding(),
            },
        ],
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        let groups = inputs.len().div_ceil(64) as u32;
        pass.dispatch_workgroups(groups.min(65535), groups.div_ceil(65535), 1);
    }
    gpu.submit_and_wait("test kernel", encoder).unwrap();
    let words = gpu.download(&output, 0, out_bytes / 4).unwrap();
    bytemuck::cast_slice(&words).to_vec()
}
