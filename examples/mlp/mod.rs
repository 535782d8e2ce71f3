//! The two-layer network the examples train (`h = relu(W1 x + b1)`, `y = W2 h + b2`, mean
//! squared error against a smooth function of the inputs): its device, tensors, optimizer
//! groups, synthetic data, and its forward and backward passes (`train_mlp.wgsl`) over the
//! caller's buffers. `train_mlp` trains it on one device, `zero1_mpi` on several processes.

use std::error::Error;
use std::num::NonZeroU64;

use fusedopt::model::decay_group;
use fusedopt::{Adam, HalfFormat, ModelLayout, Optimizer, TensorSpec};
use rand::Rng;
use rand::rngs::StdRng;

/// Examples in the global batch.
pub const BATCH: u32 = 256;
pub const INPUTS: u32 = 8;
pub const HIDDEN: u32 = 64;

/// The function the network learns.
fn teacher(x: &[f32]) -> f32 {
    (x[0] + 0.5 * x[1]).sin() + x[2] * x[3] - 0.3 * x[4]
}

/// The training pipeline's own device and queue: the best adapter of the backends
/// `WGPU_BACKEND` allows (real GPUs before software ones), with wgpu's default limits but for
/// the ten storage buffers its passes bind (every desktop adapter has them).
pub fn own_device() -> Result<(wgpu::Device, wgpu::Queue), Box<dyn Error>> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))?;
    let descriptor = wgpu::DeviceDescriptor {
        label: Some("mlp"),
        required_limits: wgpu::Limits {
            max_storage_buffers_per_shader_stage: 10,
            ..Default::default()
        },
        ..Default::default()
    };
    Ok(pollster::block_on(adapter.request_device(&descriptor))?)
}

/// The model's tensors, to be laid out in one flat buffer.
pub fn tensors() -> [TensorSpec; 4] {
    [
        TensorSpec::new("w1", &[HIDDEN as usize, INPUTS as usize]),
        TensorSpec::new("b1", &[HIDDEN as usize]),
        TensorSpec::new("w2", &[1, HIDDEN as usize]),
        TensorSpec::new("b2", &[1]),
    ]
}

/// The layout of [`tensors`]: matrices and biases in two groups, each starting at `align`.
pub fn layout(align: usize) -> Result<ModelLayout, Box<dyn Error>> {
    Ok(ModelLayout::new(&tensors(), 2, decay_group, align)?)
}

/// The optimizer of each group: AdamW, with weight decay on the matrices, none on the biases.
pub fn configs() -> [Optimizer; 2] {
    let adamw = |weight_decay| {
        Adam {
            lr: 1e-2,
            weight_decay,
            ..Adam::adamw()
        }
        .into()
    };
    [adamw(1e-4), adamw(0.0)]
}

/// Where training starts: the weights and the global batch.
pub struct Start {
    /// The flat parameter buffer's contents.
    pub weights: Vec<f32>,
    /// [`BATCH`] rows of [`INPUTS`] inputs.
    pub x: Vec<f32>,
    /// One target per row.
    pub targets: Vec<f32>,
}

/// He-initialized weights and zero biases, flattened into `layout`; then a batch of
/// [`BATCH`] inputs and their targets, all from `rng`.
pub fn start(layout: &ModelLayout, rng: &mut StdRng) -> Result<Start, Box<dyn Error>> {
    let mut init = |fan_in: u32, n: usize| -> Vec<f32> {
        let scale = (2.0 / fan_in as f32).sqrt();
        (0..n)
            .map(|_| rng.random_range(-1.0..1.0) * scale)
            .collect()
    };
    let (w1, w2) = (
        init(INPUTS, (HIDDEN * INPUTS) as usize),
        init(HIDDEN, HIDDEN as usize),
    );
    let (b1, b2) = (vec![0.0; HIDDEN as usize], vec![0.0]);
    let flat = layout.flatten(|s| match s.tensor.name.as_str() {
        "w1" => &w1[..],
        "b1" => &b1[..],
        "w2" => &w2[..],
        _ => &b2[..],
    })?;
    let x: Vec<f32> = (0..BATCH * INPUTS)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let targets: Vec<f32> = x.chunks(INPUTS as usize).map(teacher).collect();
    Ok(Start {
        weights: flat,
        x,
        targets,
    })
}

/// The uniform of `train_mlp.wgsl`: sizes and the segment offsets of the four tensors.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Dims {
    batch: u32,
    inputs: u32,
    hidden: u32,
    w1: u32,
    b1: u32,
    w2: u32,
    b2: u32,
    mean_over: u32,
}

impl Dims {
    /// A pass over `batch` examples whose loss is averaged over `mean_over` (the global
    /// batch: a data-parallel shard's gradients then add up to the whole batch's).
    pub fn new(layout: &ModelLayout, batch: u32, mean_over: u32) -> Self {
        let offset = |name: &str| layout.segment(name).map(|s| s.offset as u32).unwrap_or(0);
        Self {
            batch,
            inputs: INPUTS,
            hidden: HIDDEN,
            w1: offset("w1"),
            b1: offset("b1"),
            w2: offset("w2"),
            b2: offset("b2"),
            mean_over,
        }
    }
}

/// The buffers the passes bind, in binding order.
pub struct Buffers<'a> {
    pub dims: &'a wgpu::Buffer,
    pub params: &'a wgpu::Buffer,
    pub grads: &'a wgpu::Buffer,
    pub x: &'a wgpu::Buffer,
    pub targets: &'a wgpu::Buffer,
    pub hidden: &'a wgpu::Buffer,
    pub dy: &'a wgpu::Buffer,
    pub loss: &'a wgpu::Buffer,
    /// The 16-bit parameters and gradients, and the loss scale (placeholders in f32).
    pub params16: &'a wgpu::Buffer,
    pub grads16: &'a wgpu::Buffer,
    pub scale: &'a wgpu::Buffer,
}

/// The compiled forward and backward passes over a batch of `batch` examples.
pub struct Passes {
    layout: wgpu::BindGroupLayout,
    passes: Vec<(wgpu::ComputePipeline, u32)>,
}

impl Passes {
    /// The passes for a batch of `batch` examples over parameters of `len` elements; in a
    /// 16-bit `half` format they widen the parameters first and narrow the gradients last
    /// (fusedopt's own conversions, `half.wgsl`, exact and the same on every device).
    pub fn new(device: &wgpu::Device, half: Option<HalfFormat>, batch: u32, len: u32) -> Self {
        let source = format!(
            "{}\n{}",
            fusedopt::kernels::HALF_WGSL,
            include_str!("../train_mlp.wgsl")
        );
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("mlp"),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let entry = |binding, ty, min: u64| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: false,
                min_binding_size: NonZeroU64::new(min),
            },
            count: None,
        };
        let storage =
            |binding, read_only| entry(binding, wgpu::BufferBindingType::Storage { read_only }, 4);
        let mut entries = vec![entry(
            0,
            wgpu::BufferBindingType::Uniform,
            size_of::<Dims>() as u64,
        )];
        entries.extend([
            storage(1, false),
            storage(2, false),
            storage(3, true),
            storage(4, true),
            storage(5, false),
            storage(6, false),
            storage(7, false),
            storage(8, true),
            storage(9, false),
            storage(10, true),
        ]);
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("mlp"),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("mlp"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let bf16 = f64::from(u8::from(half != Some(HalfFormat::F16)));
        let pipeline = |entry: &str| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[("BF16", bf16)],
                    ..Default::default()
                },
                cache: None,
            })
        };
        let mut passes = Vec::new();
        if half.is_some() {
            passes.push((pipeline("widen_params"), len));
        }
        passes.extend([
            (pipeline("hidden"), batch * HIDDEN),
            (pipeline("output"), batch),
            (pipeline("grad_layer1"), HIDDEN * INPUTS),
            (pipeline("grad_layer2"), HIDDEN + 1),
        ]);
        if half.is_some() {
            passes.push((pipeline("narrow_grads"), len / 2));
        }
        Self { layout, passes }
    }

    /// The bind group of `buffers`.
    pub fn bind(&self, device: &wgpu::Device, buffers: &Buffers<'_>) -> wgpu::BindGroup {
        let b = buffers;
        let all = [
            b.dims, b.params, b.grads, b.x, b.targets, b.hidden, b.dy, b.loss, b.params16,
            b.grads16, b.scale,
        ];
        let entries: Vec<wgpu::BindGroupEntry<'_>> = all
            .iter()
            .enumerate()
            .map(|(i, buffer)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: buffer.as_entire_binding(),
            })
            .collect();
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("mlp"),
            layout: &self.layout,
            entries: &entries,
        })
    }

    /// Records the forward and backward passes: the loss per example and the gradients.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder, bind_group: &wgpu::BindGroup) {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_bind_group(0, bind_group, &[]);
        for (pipeline, invocations) in &self.passes {
            pass.set_pipeline(pipeline);
            pass.dispatch_workgroups(invocations.div_ceil(64), 1, 1);
        }
    }

    /// Dispatches per forward and backward pass.
    pub fn dispatches(&self) -> usize {
        self.passes.len()
    }
}
