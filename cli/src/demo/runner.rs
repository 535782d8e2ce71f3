//! Running one optimizer on one quadratic, entirely on the GPU: the demo's gradient kernel
//! (`quadratic_grad.wgsl`) and the optimizer's fused kernel are recorded alternately,
//! [`STEPS_PER_SUBMISSION`] iterations per submission, and the iterates come back in bulk from a
//! trajectory buffer at the end of each batch.

use std::num::NonZeroU64;

use fusedopt::{Gpu, GpuOptimizer, Optimizer, Schedule, Scheduler};

use super::quadratic::Quadratic;
use crate::Result;

/// WGSL of the gradient kernel.
const SHADER: &str = include_str!("quadratic_grad.wgsl");

/// Iterations recorded into one submission.
const STEPS_PER_SUBMISSION: u64 = 64;

/// Rows of the trajectory buffer: the most iterations run between two readbacks. Batches start
/// at one submission and double up to this, so that runs that stop early waste little and long
/// runs read back rarely.
const MAX_BATCH_ROWS: u64 = 16 * STEPS_PER_SUBMISSION;

/// Bytes of the `Row` uniform.
const ROW_UNIFORM_BYTES: u64 = 16;

/// The compiled gradient kernel, built once per demo.
#[derive(Debug)]
pub(crate) struct GradientKernel {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

impl GradientKernel {
    /// Compiles the kernel inside the library's error scopes, so a failure is an `Err`.
    /// Bindings: 0 the row uniform (dynamic offset), 1 A and 2 x (read-only), 3 the gradient
    /// and 4 the trajectory.
    pub(crate) fn build(gpu: &Gpu) -> Result<Self> {
        let buffer = |binding, ty, dynamic, min| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: dynamic,
                min_binding_size: NonZeroU64::new(min),
            },
            count: None,
        };
        let storage = |binding, read_only| {
            let ty = wgpu::BufferBindingType::Storage { read_only };
            buffer(binding, ty, false, 4)
        };
        let entries = [
            buffer(0, wgpu::BufferBindingType::Uniform, true, ROW_UNIFORM_BYTES),
            storage(1, true),
            storage(2, true),
            storage(3, false),
            storage(4, false),
        ];
        let device = gpu.device();
        let kernel = gpu.scoped("building the demo's gradient kernel", || {
            let label = Some("demo/quadratic_grad");
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label,
                source: wgpu::ShaderSource::Wgsl(SHADER.into()),
            });
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label,
                entries: &entries,
            });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label,
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label,
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some("gradient"),
                compilation_options: Default::default(),
                cache: None,
            });
            Self { pipeline, layout }
        })?;
        Ok(kernel)
    }
}

/// When a run stops.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Most optimizer steps.
    pub max_iterations: u64,
    /// Stop once `L(x_k) <= tolerance`.
    pub tolerance: f64,
    /// Call the run diverged once `L(x_k)` exceeds this or is not finite.
    pub divergence: f64,
}

/// Why a run stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The last iterate is the first within the tolerance.
    Reached,
    /// The last iterate is the first past the divergence threshold.
    Diverged,
    /// `max_iterations` steps ran.
    Cap,
}

/// The iterates of one run as the GPU computed them.
#[derive(Clone, Debug)]
pub(crate) struct Trajectory {
    /// `x_0 … x_k` as f32, `n` values each; `k` is the number of steps counted.
    pub rows: Vec<f32>,
    /// `L(x_0) … L(x_k)` in f64.
    pub losses: Vec<f64>,
    /// Why the run ended at `x_k`.
    pub stop: Stop,
}

impl Trajectory {
    /// Steps counted: up to the first iterate within the tolerance or past divergence, or all.
    pub fn iterations(&self) -> u64 {
        self.losses.len() as u64 - 1
    }
}

/// Runs `config` on `problem` from its start until the loss reaches the tolerance, diverges, or
/// `max_iterations` steps have run, each step at the rate `schedule` gives (the configured one
/// without). Every gradient and every update is computed on the GPU.
pub(crate) fn run(
    gpu: &Gpu,
    kernel: &GradientKernel,
    problem: &Quadratic,
    config: &Optimizer,
    schedule: Option<&Schedule>,
    limits: &Limits,
) -> Result<Trajectory> {
    let mut scheduler = schedule
        .map(|s| Scheduler::new(s.clone(), config.lr()))
        .transpose()?;
    let n = problem.dim();
    let to_f32 = |v: &[f64]| -> Vec<f32> { v.iter().map(|&x| x as f32).collect() };
    let matrix = gpu.upload("demo/matrix", &to_f32(problem.matrix()))?;
    let params = gpu.upload("demo/x", &to_f32(problem.start()))?;
    let grads = gpu.zeros("demo/grad", n)?;
    let trajectory = gpu.zeros("demo/trajectory", MAX_BATCH_ROWS as usize * n)?;
    let stride =
        ROW_UNIFORM_BYTES.next_multiple_of(u64::from(gpu.limits().uniform_offset_alignment));
    let row_slots: Vec<u8> = (0..MAX_BATCH_ROWS as u32)
        .flat_map(|row| {
            let mut slot = vec![0u8; stride as usize];
            slot[..4].copy_from_slice(&row.to_le_bytes());
            slot
        })
        .collect();
    let rows_uniform = gpu.scoped("allocating the demo's row slots", || {
        let buffer = gpu.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("demo/rows"),
            size: row_slots.len() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        gpu.queue().write_buffer(&buffer, 0, &row_slots);
        buffer
    })?;
    let bind_group = gpu.scoped("creating the demo's bind group", || {
        gpu.device().create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("demo/quadratic_grad"),
            layout: &kernel.layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &rows_uniform,
                        offset: 0,
                        size: NonZeroU64::new(ROW_UNIFORM_BYTES),
                    }),
                },
                whole(1, &matrix),
                whole(2, &params),
                whole(3, &grads),
                whole(4, &trajectory),
            ],
        })
    })?;
    let mut optimizer = GpuOptimizer::new(gpu, config.clone(), &params, &grads)?;

    let mut run = Trajectory {
        rows: Vec::new(),
        losses: Vec::new(),
        stop: Stop::Cap,
    };
    let mut done = 0u64;
    let mut batch = STEPS_PER_SUBMISSION;
    while done < limits.max_iterations {
        let rows = batch.min(limits.max_iterations - done);
        let mut first = 0;
        while first < rows {
            let count = (rows - first).min(STEPS_PER_SUBMISSION);
            let mut encoder =
                gpu.device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("demo/iterations"),
                    });
            for row in first..first + count {
                gpu.scoped("recording the demo's gradient pass", || {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("demo/gradient"),
                        timestamp_writes: None,
                    });
                    pass.set_pipeline(&kernel.pipeline);
                    pass.set_bind_group(0, &bind_group, &[(row * stride) as u32]);
                    pass.dispatch_workgroups(1, 1, 1);
                })?;
                match &mut scheduler {
                    Some(scheduler) => {
                        optimizer.record_step_with_lr(gpu, &mut encoder, scheduler.lr())?;
                        scheduler.step()?;
                    }
                    None => optimizer.record_step(gpu, &mut encoder)?,
                }
            }
            gpu.scoped("submitting demo iterations", || {
                gpu.queue().submit([encoder.finish()])
            })?;
            first += count;
        }
        // The readback is ordered after the submissions above, so it waits for them.
        let xs = gpu.download(&trajectory, 0, rows as usize * n)?;
        if run.extend(problem, &xs, limits) {
            return Ok(run);
        }
        done += rows;
        batch = (batch * 2).min(MAX_BATCH_ROWS);
    }
    // x_k after the last step is still only in the parameters.
    let last = optimizer.read_params(gpu)?;
    run.extend(problem, &last, limits);
    Ok(run)
}

fn whole(binding: u32, buffer: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: buffer.as_entire_binding(),
    }
}

impl Trajectory {
    /// Appends iterates (`n` values each) with their losses, stopping at the first one within
    /// the tolerance or past divergence; returns whether the run is over.
    fn extend(&mut self, problem: &Quadratic, xs: &[f32], limits: &Limits) -> bool {
        for x in xs.chunks_exact(problem.dim()) {
            let loss = problem.loss_f32(x);
            self.rows.extend_from_slice(x);
            self.losses.push(loss);
            if loss <= limits.tolerance {
                self.stop = Stop::Reached;
                return true;
            }
            if loss.is_nan() || loss > limits.divergence {
                self.stop = Stop::Diverged;
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wgpu::naga;

    /// The shader parses and validates without a GPU, and declares what the host binds.
    #[test]
    fn gradient_shader_validates_and_matches_the_layout() {
        let module = naga::front::wgsl::parse_str(SHADER)
            .unwrap_or_else(|e| panic!("{}", e.emit_to_string(SHADER)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}", e.emit_to_string(SHADER)));
        assert!(module.entry_points.iter().any(|e| e.name == "gradient"));
        let mut bindings: Vec<(u32, String)> = module
            .global_variables
            .iter()
            .filter_map(|(_, v)| Some((v.binding.as_ref()?.binding, v.name.clone()?)))
            .collect();
        bindings.sort();
        let names: Vec<(u32, &str)> = bindings.iter().map(|(b, n)| (*b, n.as_str())).collect();
        assert_eq!(
            names,
            [
                (0, "row"),
                (1, "matrix"),
                (2, "x"),
                (3, "grad"),
                (4, "trajectory")
            ]
        );
        let row = module
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some("Row"))
            .map(|(_, t)| t.inner.size(module.to_ctx()));
        assert_eq!(row, Some(ROW_UNIFORM_BYTES as u32));
    }
}
