//! Kernels from their descriptions: WGSL composed of `common.wgsl` and an optimizer's own file,
//! bind-group layouts derived from a [`KernelSpec`], a cache of compiled pipelines, and
//! dispatch over ranges larger than one binding. This layer knows no concrete optimizer, and it
//! pushes no error scopes: its callers in `crate::gpu` run every call inside theirs, so that a
//! wgpu error becomes an `Err` there.

mod cache;
mod dispatch;

use std::num::NonZeroU64;

pub(crate) use cache::PipelineCache;
pub(crate) use dispatch::{Chunked, Grid};
pub use dispatch::{LaunchShape, workgroups};

use crate::optim::KernelSpec;

/// WGSL shared by every kernel: bindings 1 and 2, indexing and the common update pieces.
pub const COMMON_WGSL: &str = include_str!("../../shaders/common.wgsl");

/// The copy kernel of the bandwidth roofline, without the common part.
pub const COPY_WGSL: &str = include_str!("../../shaders/copy.wgsl");

/// Name of every kernel's entry point.
pub const ENTRY_POINT: &str = "step";

/// Binding of the uniform of per-step scalars.
pub const UNIFORM_BINDING: u32 = 0;

/// Binding of the parameters (read-write).
pub const PARAM_BINDING: u32 = 1;

/// Binding of the gradients (read-only).
pub const GRAD_BINDING: u32 = 2;

/// Binding of the first optimizer-state buffer; the others follow in [`KernelSpec::state`]
/// order.
pub const FIRST_STATE_BINDING: u32 = 3;

/// The complete module of an optimizer's kernel: `common.wgsl` followed by its own file.
pub fn source(spec: &KernelSpec) -> String {
    format!("{COMMON_WGSL}\n{}", spec.source)
}

/// The complete copy kernel: `common.wgsl` followed by `copy.wgsl`.
pub fn copy_source() -> String {
    format!("{COMMON_WGSL}\n{COPY_WGSL}")
}

/// A compiled kernel: pipeline and the bind-group layout its bind groups are made against.
#[derive(Debug)]
pub(crate) struct Kernel {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
}

impl Kernel {
    /// The kernel `spec` describes, with the given override constants (the optimizer's and
    /// the [`LaunchShape`]'s).
    pub(crate) fn for_optimizer(
        device: &wgpu::Device,
        spec: &KernelSpec,
        constants: &[(&'static str, f64)],
    ) -> Self {
        let uniform = wgpu::BindGroupLayoutEntry {
            binding: UNIFORM_BINDING,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: NonZeroU64::new(spec.uniform.size as u64),
            },
            count: None,
        };
        let mut entries = vec![
            uniform,
            storage_entry(PARAM_BINDING, false),
            storage_entry(GRAD_BINDING, true),
        ];
        entries.extend(
            (FIRST_STATE_BINDING..)
                .take(spec.state.len())
                .map(|binding| storage_entry(binding, false)),
        );
        Self::compile(device, spec.name, &source(spec), &entries, constants)
    }

    /// The copy kernel of the bandwidth roofline: bindings 1 and 2 only, with the
    /// [`LaunchShape`]'s override constants.
    pub(crate) fn copy(device: &wgpu::Device, constants: &[(&'static str, f64)]) -> Self {
        let entries = [
            storage_entry(PARAM_BINDING, false),
            storage_entry(GRAD_BINDING, true),
        ];
        Self::compile(device, "copy", &copy_source(), &entries, constants)
    }

    /// Compiles `source` against an explicit layout of one bind group.
    fn compile(
        device: &wgpu::Device,
        label: &str,
        source: &str,
        entries: &[wgpu::BindGroupLayoutEntry],
        constants: &[(&'static str, f64)],
    ) -> Self {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(label),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(label),
            entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(label),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(label),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(ENTRY_POINT),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                // The kernels use no workgroup memory.
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        Self { pipeline, layout }
    }
}

/// A storage buffer of f32 (at least one element) seen by compute shaders.
pub(crate) fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: NonZeroU64::new(4),
        },
        count: None,
    }
}

/// `len` f32 of `buffer` from element `offset`, as a binding resource.
pub(crate) fn elements(buffer: &wgpu::Buffer, offset: u64, len: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset: offset * 4,
        size: NonZeroU64::new(len * 4),
    })
}
