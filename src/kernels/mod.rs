//! Kernels from their descriptions: WGSL composed of `common.wgsl`, the storage of every
//! precision (`half.wgsl`, `precision.wgsl`) and an optimizer's own file,
//! bind-group layouts derived from a [`KernelSpec`], a cache of compiled pipelines, and
//! dispatch over ranges larger than one binding. This layer knows no concrete optimizer, and it
//! pushes no error scopes: its callers in `crate::gpu` run every call inside theirs, so that a
//! wgpu error becomes an `Err` there.

mod cache;
mod dispatch;
mod guard;
mod sparse;

use std::num::NonZeroU64;

pub use sparse::{
    SPARSE_INDICES_BINDING, SPARSE_KEYS_BINDING, SPARSE_LOOKUPS_BINDING, SPARSE_RECORD_SIZE,
    SPARSE_SKIPPED_BINDING, SPARSE_STAGE_BINDING, SPARSE_STATE_BINDING, SPARSE_TABLE_BINDING,
    SPARSE_VALUES_BINDING, SPARSE_WGSL, sparse_source,
};
pub(crate) use sparse::{SparseKernel, sort_stages};

pub(crate) use cache::PipelineCache;
pub(crate) use dispatch::{Chunked, Grid};
pub use dispatch::{LaunchShape, workgroups};
pub use guard::{
    GUARD_CALLER_FOUND_BINDING, GUARD_CALLER_SCALE_BINDING, GUARD_CANDIDATES_BINDING,
    GUARD_COUNTER_BINDING, GUARD_GRADS_BINDING, GUARD_PARTIALS_BINDING, GUARD_RANGE_BINDING,
    GUARD_SCALARS_BINDING, GUARD_SETTINGS_BINDING, GUARD_STATE_BINDING, GUARD_STATE_SIZE,
    GUARD_WGSL, GuardStage, guard_source,
};

use crate::optim::{HalfFormat, KernelSpec, MAX_STATE, Precision};

/// WGSL shared by every kernel: the entry point, its launch shape and the common update
/// pieces.
pub const COMMON_WGSL: &str = include_str!("../../shaders/common.wgsl");

/// Exact integer conversions of the 16-bit formats and the random bits of stochastic rounding.
pub const HALF_WGSL: &str = include_str!("../../shaders/half.wgsl");

/// Every optimizer kernel's bindings 1 to 8 and the loads and stores of each precision around
/// the optimizer's `update`.
pub const PRECISION_WGSL: &str = include_str!("../../shaders/precision.wgsl");

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
/// order, [`MAX_STATE`] bindings in all (placeholders past the kernel's own).
pub const FIRST_STATE_BINDING: u32 = 3;

/// Binding of the chunk's length and first element index (a small uniform per chunk).
pub const CHUNK_BINDING: u32 = 6;

/// Binding of the per-step values every kernel may read (the stochastic rounding key), in the
/// same buffer as the optimizer's uniform, at [`STEP_BITS_OFFSET`].
pub const STEP_BITS_BINDING: u32 = 7;

/// Binding of the f32 master copy of the parameters.
pub const MASTER_BINDING: u32 = 8;

/// Byte offset of the per-step values in the uniform buffer: past any optimizer's scalars, at
/// the largest uniform offset alignment wgpu allows a device to ask for.
pub const STEP_BITS_OFFSET: u64 = 256;

/// Bytes of the per-step values (`StepBits` in `precision.wgsl`).
pub const STEP_BITS_SIZE: u64 = 32;

/// Bytes of a chunk's uniform (`Chunk` in `precision.wgsl`).
pub const CHUNK_SIZE: u64 = 16;

/// The complete module of an optimizer's kernel: `common.wgsl`, `half.wgsl`, `precision.wgsl`
/// and its own file.
pub fn source(spec: &KernelSpec) -> String {
    format!(
        "{COMMON_WGSL}\n{HALF_WGSL}\n{PRECISION_WGSL}\n{}",
        spec.source
    )
}

/// The override constants of `precision.wgsl` for `precision`, with the state tensors `used`
/// (one flag per binding, in the spec's order).
/// `guarded`: a guard's `choose` writes the step's skip flag and gradient factors.
pub fn precision_overrides(
    precision: Precision,
    used: &[bool],
    guarded: bool,
) -> Vec<(&'static str, f64)> {
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let mask = used
        .iter()
        .enumerate()
        .filter(|(_, used)| **used)
        .fold(0u32, |mask, (k, _)| mask | 1 << k);
    vec![
        ("HALF", flag(precision.half_format().is_some())),
        (
            "BF16",
            flag(precision.half_format() != Some(HalfFormat::F16)),
        ),
        ("HALF_STATE", flag(matches!(precision, Precision::Half(_)))),
        ("MASTER", flag(precision.has_master())),
        (
            "STOCHASTIC",
            flag(matches!(precision, Precision::Stochastic { .. })),
        ),
        ("GUARDED", flag(guarded)),
        ("STATE_USED", f64::from(mask)),
    ]
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
    /// The kernel `spec` describes, with the given override constants (the optimizer's, the
    /// precision's and the [`LaunchShape`]'s).
    pub(crate) fn for_optimizer(
        device: &wgpu::Device,
        spec: &KernelSpec,
        constants: &[(&'static str, f64)],
    ) -> Self {
        let mut entries = vec![
            uniform_entry(UNIFORM_BINDING, spec.uniform.size as u64),
            storage_entry(PARAM_BINDING, false),
            storage_entry(GRAD_BINDING, true),
        ];
        entries.extend(
            (FIRST_STATE_BINDING..)
                .take(MAX_STATE)
                .map(|binding| storage_entry(binding, false)),
        );
        entries.extend([
            uniform_entry(CHUNK_BINDING, CHUNK_SIZE),
            uniform_entry(STEP_BITS_BINDING, STEP_BITS_SIZE),
            storage_entry(MASTER_BINDING, false),
        ]);
        Self::compile(
            device,
            spec.name,
            &source(spec),
            ENTRY_POINT,
            &entries,
            constants,
        )
    }

    /// The copy kernel of the bandwidth roofline: bindings 1 and 2 only, with the
    /// [`LaunchShape`]'s override constants.
    pub(crate) fn copy(device: &wgpu::Device, constants: &[(&'static str, f64)]) -> Self {
        let entries = [
            storage_entry(PARAM_BINDING, false),
            storage_entry(GRAD_BINDING, true),
        ];
        Self::compile(
            device,
            "copy",
            &copy_source(),
            ENTRY_POINT,
            &entries,
            constants,
        )
    }

    /// Compiles entry point `entry` of `source` against an explicit layout of one bind group.
    fn compile(
        device: &wgpu::Device,
        label: &str,
        source: &str,
        entry: &str,
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
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                // The kernels write their workgroup memory before reading it.
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        Self { pipeline, layout }
    }
}

/// A uniform buffer of `size` bytes seen by compute shaders.
pub(crate) fn uniform_entry(binding: u32, size: u64) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: NonZeroU64::new(size),
        },
        count: None,
    }
}

/// A storage buffer of 4-byte words (at least one) seen by compute shaders.
pub(crate) fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    sized_storage_entry(binding, read_only, 4)
}

/// A storage buffer of at least `size` bytes (a struct's) seen by compute shaders.
pub(crate) fn sized_storage_entry(
    binding: u32,
    read_only: bool,
    size: u64,
) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: NonZeroU64::new(size),
        },
        count: None,
    }
}

/// `len` 4-byte words (f32, or two 16-bit values) of `buffer` from word `offset`, as a binding
/// resource.
pub(crate) fn elements(buffer: &wgpu::Buffer, offset: u64, len: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset: offset * 4,
        size: NonZeroU64::new(len * 4),
    })
}
