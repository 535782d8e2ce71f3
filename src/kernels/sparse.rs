//! The row-sparse kernel (`shaders/sparse.wgsl` + an optimizer's file): four entry points
//! compiled against one bind-group layout, so one bind group serves a whole step.

use std::num::NonZeroU64;

use super::{COMMON_WGSL, ENTRY_POINT, sized_storage_entry, storage_entry, uniform_entry};
use crate::optim::KernelSpec;

/// The row-sparse passes: keys, sort, row sums and the entry point of `common.wgsl`.
pub const SPARSE_WGSL: &str = include_str!("../../shaders/sparse.wgsl");

/// Binding of the embedding table (read-write).
pub const SPARSE_TABLE_BINDING: u32 = 1;
/// Binding of the lookups' gradient rows (read-only).
pub const SPARSE_VALUES_BINDING: u32 = 2;
/// Binding of the first state tensor; the second follows.
pub const SPARSE_STATE_BINDING: u32 = 3;
/// Binding of the lookups' row indices (`u32`, read-only).
pub const SPARSE_INDICES_BINDING: u32 = 5;
/// Binding of the sort's keys (`vec2<u32>` per lookup, read-write).
pub const SPARSE_KEYS_BINDING: u32 = 6;
/// Binding of the step's `Lookups` (uniform).
pub const SPARSE_LOOKUPS_BINDING: u32 = 7;
/// Binding of the sort's `Stage` (uniform, bound at a dynamic offset per stage).
pub const SPARSE_STAGE_BINDING: u32 = 8;
/// Binding of the count of lookups outside the table (`atomic<u32>`).
pub const SPARSE_SKIPPED_BINDING: u32 = 9;

/// Bytes of `Lookups` and of `Stage`.
pub const SPARSE_RECORD_SIZE: u64 = 16;

/// The complete module of a row-sparse optimizer: `common.wgsl`, `sparse.wgsl` and the
/// optimizer's file.
pub fn sparse_source(spec: &KernelSpec) -> String {
    format!("{COMMON_WGSL}\n{SPARSE_WGSL}\n{}", spec.source)
}

/// A compiled row-sparse kernel: one pipeline per pass, one layout for all.
#[derive(Debug)]
pub(crate) struct SparseKernel {
    pub(crate) layout: wgpu::BindGroupLayout,
    pub(crate) make_keys: wgpu::ComputePipeline,
    pub(crate) sort: wgpu::ComputePipeline,
    pub(crate) row_sums: wgpu::ComputePipeline,
    pub(crate) update: wgpu::ComputePipeline,
}

impl SparseKernel {
    /// The kernel of the optimizer `spec` describes, with `constants` (the optimizer's,
    /// `sparse.wgsl`'s and the launch shape's).
    pub(crate) fn new(
        device: &wgpu::Device,
        spec: &KernelSpec,
        constants: &[(&'static str, f64)],
    ) -> Self {
        let label = format!("sparse {}", spec.name);
        let entries = [
            uniform_entry(0, spec.uniform.size as u64),
            storage_entry(SPARSE_TABLE_BINDING, false),
            storage_entry(SPARSE_VALUES_BINDING, true),
            storage_entry(SPARSE_STATE_BINDING, false),
            storage_entry(SPARSE_STATE_BINDING + 1, false),
            storage_entry(SPARSE_INDICES_BINDING, true),
            sized_storage_entry(SPARSE_KEYS_BINDING, false, 8),
            uniform_entry(SPARSE_LOOKUPS_BINDING, SPARSE_RECORD_SIZE),
            wgpu::BindGroupLayoutEntry {
                binding: SPARSE_STAGE_BINDING,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: NonZeroU64::new(SPARSE_RECORD_SIZE),
                },
                count: None,
            },
            storage_entry(SPARSE_SKIPPED_BINDING, false),
        ];
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&label),
            source: wgpu::ShaderSource::Wgsl(sparse_source(spec).into()),
        });
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(&label),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(&label),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = |entry: &str| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&label),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            })
        };
        Self {
            make_keys: pipeline("make_keys"),
            sort: pipeline("sort"),
            row_sums: pipeline("row_sums"),
            update: pipeline(ENTRY_POINT),
            layout,
        }
    }
}

/// The stages of a bitonic sort of `2^p` keys for every `p` up to `log2(len)`, as
/// `(size, stride)`: the stages of `2^p` keys are the first `p(p + 1)/2` of them.
pub(crate) fn sort_stages(len: u64) -> Vec<[u32; 2]> {
    let mut out = Vec::new();
    let mut size = 2u64;
    while size <= len {
        let mut stride = size / 2;
        while stride >= 1 {
            out.push([size as u32, stride as u32]);
            stride /= 2;
        }
        size *= 2;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stages_of_a_smaller_sort_are_a_prefix() {
        let all = sort_stages(1 << 10);
        assert_eq!(all.len(), 10 * 11 / 2);
        for p in 0..10u64 {
            let part = sort_stages(1 << p);
            assert_eq!(part.len() as u64, p * (p + 1) / 2);
            assert_eq!(&all[..part.len()], &part[..]);
        }
        assert_eq!(&all[..3], &[[2, 1], [4, 2], [4, 1]]);
    }
}
