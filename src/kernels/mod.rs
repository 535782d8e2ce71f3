//! The shader registry and pipeline construction: one WGSL file per optimizer, each compiled
//! after the shared `common.wgsl`, with explicit bind-group layouts.

use std::num::NonZeroU64;

use crate::Result;
use crate::gpu::Gpu;
use crate::optim::{
    AdadeltaScalars, AdagradScalars, AdamScalars, Optimizer, RmspropScalars, SgdScalars,
};

/// WGSL shared by every kernel: bindings 1 and 2, indexing and the common update pieces.
pub const COMMON_WGSL: &str = include_str!("../../shaders/common.wgsl");

/// The copy kernel of the bandwidth roofline, without the common part.
pub const COPY_WGSL: &str = include_str!("../../shaders/copy.wgsl");

/// The complete copy kernel: `common.wgsl` followed by `copy.wgsl`.
pub fn copy_source() -> String {
    format!("{COMMON_WGSL}\n{COPY_WGSL}")
}

/// Name of every kernel's entry point.
pub const ENTRY_POINT: &str = "step";

/// Threads per workgroup, set through the `WORKGROUP_SIZE` override.
pub const WORKGROUP_SIZE: u32 = 256;

/// Binding of the first optimizer-state buffer; 0 is the uniform, 1 the parameters and 2 the
/// gradients.
pub const FIRST_STATE_BINDING: u32 = 3;

/// One optimizer shader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shader {
    /// `shaders/sgd.wgsl`
    Sgd,
    /// `shaders/adagrad.wgsl`
    Adagrad,
    /// `shaders/rmsprop.wgsl`
    Rmsprop,
    /// `shaders/adadelta.wgsl`
    Adadelta,
    /// `shaders/adam.wgsl` (Adam, AdamW, AMSGrad)
    Adam,
}

impl Shader {
    /// Every shader, for tests and tools.
    pub const ALL: [Shader; 5] = [
        Self::Sgd,
        Self::Adagrad,
        Self::Rmsprop,
        Self::Adadelta,
        Self::Adam,
    ];

    /// File stem of the shader.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sgd => "sgd",
            Self::Adagrad => "adagrad",
            Self::Rmsprop => "rmsprop",
            Self::Adadelta => "adadelta",
            Self::Adam => "adam",
        }
    }

    /// The optimizer's own WGSL, without the common part.
    pub fn body(self) -> &'static str {
        match self {
            Self::Sgd => include_str!("../../shaders/sgd.wgsl"),
            Self::Adagrad => include_str!("../../shaders/adagrad.wgsl"),
            Self::Rmsprop => include_str!("../../shaders/rmsprop.wgsl"),
            Self::Adadelta => include_str!("../../shaders/adadelta.wgsl"),
            Self::Adam => include_str!("../../shaders/adam.wgsl"),
        }
    }

    /// The complete module: `common.wgsl` followed by the optimizer's file.
    pub fn source(self) -> String {
        format!("{COMMON_WGSL}\n{}", self.body())
    }

    /// Number of state bindings (3, 4, ...) the shader declares.
    pub fn state_bindings(self) -> usize {
        match self {
            Self::Sgd | Self::Adagrad => 1,
            Self::Adadelta => 2,
            Self::Rmsprop | Self::Adam => 3,
        }
    }

    /// Name of the WGSL uniform struct and the size of its Rust twin, in bytes.
    pub fn uniform_struct(self) -> (&'static str, usize) {
        use std::mem::size_of;
        match self {
            Self::Sgd => ("SgdScalars", size_of::<SgdScalars>()),
            Self::Adagrad => ("AdagradScalars", size_of::<AdagradScalars>()),
            Self::Rmsprop => ("RmspropScalars", size_of::<RmspropScalars>()),
            Self::Adadelta => ("AdadeltaScalars", size_of::<AdadeltaScalars>()),
            Self::Adam => ("AdamScalars", size_of::<AdamScalars>()),
        }
    }
}

/// Names of the override constants the host sets for `config` (besides `WORKGROUP_SIZE`).
pub fn override_names(config: &Optimizer) -> Vec<&'static str> {
    config
        .rule()
        .overrides()
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// A compiled kernel: pipeline and the bind-group layout its bind groups are made against.
#[derive(Debug)]
pub(crate) struct Kernel {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
}

impl Kernel {
    /// Compiles `shader` with the given override constants (plus `WORKGROUP_SIZE`), inside
    /// error scopes so that a failure is an `Err`, not a panic.
    pub(crate) fn build(
        gpu: &Gpu,
        shader: Shader,
        overrides: &[(&'static str, f64)],
    ) -> Result<Self> {
        let mut constants = overrides.to_vec();
        constants.push(("WORKGROUP_SIZE", f64::from(WORKGROUP_SIZE)));
        let entries = layout_entries(shader);
        let source = shader.source();
        Self::compile(
            gpu,
            shader.name(),
            &source,
            ENTRY_POINT,
            &entries,
            &constants,
        )
    }

    /// The copy kernel of the bandwidth roofline: bindings 1 and 2 only.
    pub(crate) fn copy(gpu: &Gpu) -> Result<Self> {
        let entries = [storage_entry(1, false), storage_entry(2, true)];
        let constants = [("WORKGROUP_SIZE", f64::from(WORKGROUP_SIZE))];
        Self::compile(
            gpu,
            "copy",
            &copy_source(),
            ENTRY_POINT,
            &entries,
            &constants,
        )
    }

    /// Compiles any compute shader against an explicit layout of one bind group, inside error
    /// scopes. `constants` must name overrides the shader declares.
    pub(crate) fn compile(
        gpu: &Gpu,
        label: &str,
        source: &str,
        entry_point: &str,
        entries: &[wgpu::BindGroupLayoutEntry],
        constants: &[(&'static str, f64)],
    ) -> Result<Self> {
        let device = gpu.device();
        gpu.scoped(&format!("building the {label} kernel"), || {
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
                entry_point: Some(entry_point),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    // The kernels use no workgroup memory.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
            Self { pipeline, layout }
        })
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

/// A uniform of `bytes` bound with a dynamic offset into a ring of slots.
pub(crate) fn uniform_ring_entry(binding: u32, bytes: u64) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: NonZeroU64::new(bytes),
        },
        count: None,
    }
}

/// Binding 0: the per-step uniform (dynamic offset into a ring of slots); 1: parameters;
/// 2: gradients (read-only); then the state buffers.
fn layout_entries(shader: Shader) -> Vec<wgpu::BindGroupLayoutEntry> {
    let uniform = uniform_ring_entry(0, shader.uniform_struct().1 as u64);
    let mut entries = vec![uniform, storage_entry(1, false), storage_entry(2, true)];
    let states = FIRST_STATE_BINDING..FIRST_STATE_BINDING + shader.state_bindings() as u32;
    entries.extend(states.map(|b| storage_entry(b, false)));
    entries
}

/// Workgroup counts `(x, y)` covering `len` elements with at most `max_per_dimension` groups
/// along x, as `element_index` in common.wgsl expects.
pub(crate) fn workgroups(len: u32, max_per_dimension: u32) -> (u32, u32) {
    let groups = len.div_ceil(WORKGROUP_SIZE);
    let x = groups.min(max_per_dimension).max(1);
    (x, groups.div_ceil(x).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workgroups_cover_every_element_in_two_dimensions() {
        for (len, max) in [
            (1, 65535),
            (256, 65535),
            (257, 65535),
            (300_000_000, 65535),
            (10_000, 7),
        ] {
            let (x, y) = workgroups(len, max);
            assert!(x <= max, "x within the limit for {len}");
            let threads = u64::from(x) * u64::from(y) * u64::from(WORKGROUP_SIZE);
            assert!(
                threads >= u64::from(len),
                "{len} elements covered by {x}x{y} groups"
            );
            assert!(
                threads < u64::from(len) + u64::from(x) * u64::from(WORKGROUP_SIZE),
                "at most one partial row for {len}"
            );
        }
    }
}
