//! Embedding fusedopt in a training loop that owns its buffers and its backward pass.
//!
//! A two-layer network (`h = relu(W1 x + b1)`, `y = W2 h + b2`) learns a smooth function of its
//! inputs from synthetic data. Its forward and backward passes are the example's own WGSL
//! (`train_mlp.wgsl`); its four tensors are segments of one parameter buffer and one gradient
//! buffer laid out by `ModelLayout`, with two parameter groups (AdamW with weight decay for the
//! matrices, without for the biases). The device is the example's own, made with wgpu as any
//! engine makes it; fusedopt only wraps it (`Gpu::from_device`). Each iteration records the
//! backward pass and the optimizer step into one encoder and submits once; the parameters are
//! never copied.
//!
//! With `--precision bf16` (or `f16`, `bf16-master`, `f16-master`, `bf16-sr`) the parameters
//! and gradients fusedopt steps are 16-bit, as in a mixed-precision pipeline: a pass widens the
//! parameters into the f32 copy the forward pass reads, and the backward pass's gradients are
//! multiplied by the loss scale (read on the device from fusedopt's guard) and rounded to
//! 16-bit. fusedopt's guard unscales them, skips the steps that overflow, adjusts the scale
//! and, with `--clip X`, clips the global norm, all without a round trip to the host.
//! (`f16` keeps Adam's state in f16 too, as PyTorch's fused kernels do on f16 parameters: the
//! second moment of gradients this small underflows f16 and the run diverges; `f16-master`
//! is how f16 is trained.)
//!
//! With `--save DIR` the run checkpoints into `DIR/checkpoint.safetensors` at the end (and
//! every `--save-every K` steps): fusedopt's optimizer state with the model's weights and the
//! step reached, in one file replaced atomically; `--resume DIR` continues from it, and
//! `--steps N` says where the run ends. A run resumed halfway prints the same `final loss`,
//! to the last bit, as one that never stopped.
//!
//! ```sh
//! cargo run --release --example train_mlp
//! cargo run --release --example train_mlp -- --precision bf16-master --clip 1.0
//! cargo run --release --example train_mlp -- --steps 300 --save /tmp/mlp
//! cargo run --release --example train_mlp -- --steps 600 --resume /tmp/mlp
//! ```

use std::error::Error;
use std::num::NonZeroU64;

use std::path::PathBuf;

use fusedopt::checkpoint::Tensor;
use fusedopt::model::decay_group;
use fusedopt::{
    Adam, BufferRange, Checkpoint, Gpu, Guard, LossScaler, ModelLayout, ModelOptimizer, Precision,
    TensorSpec,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BATCH: u32 = 256;
const INPUTS: u32 = 8;
const HIDDEN: u32 = 64;
/// Steps of a run unless `--steps` says otherwise.
const STEPS: u64 = 600;
/// The checkpoint's file in the `--save` and `--resume` folders.
const CHECKPOINT: &str = "checkpoint.safetensors";

/// The function the network learns.
fn teacher(x: &[f32]) -> f32 {
    (x[0] + 0.5 * x[1]).sin() + x[2] * x[3] - 0.3 * x[4]
}

/// The uniform of `train_mlp.wgsl`: sizes and the segment offsets of the four tensors.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Dims {
    batch: u32,
    inputs: u32,
    hidden: u32,
    w1: u32,
    b1: u32,
    w2: u32,
    b2: u32,
    _pad: u32,
}

/// The training pipeline's own device and queue: the best adapter of the backends
/// `WGPU_BACKEND` allows (real GPUs before software ones), with wgpu's default limits but for
/// the ten storage buffers its passes bind (every desktop adapter has them).
fn own_device() -> Result<(wgpu::Device, wgpu::Queue), Box<dyn Error>> {
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

/// The command line.
struct Options {
    precision: Precision,
    clip: Option<f64>,
    /// The step the run ends at.
    steps: u64,
    save: Option<PathBuf>,
    save_every: Option<u64>,
    resume: Option<PathBuf>,
}

fn options() -> Result<Options, Box<dyn Error>> {
    let mut o = Options {
        precision: Precision::F32,
        clip: None,
        steps: STEPS,
        save: None,
        save_every: None,
        resume: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--precision" => o.precision = value()?.parse()?,
            "--clip" => o.clip = Some(value()?.parse()?),
            "--steps" => o.steps = value()?.parse()?,
            "--save" => o.save = Some(value()?.into()),
            "--save-every" => {
                let k: u64 = value()?.parse()?;
                if k == 0 {
                    return Err("--save-every needs at least 1 step".into());
                }
                o.save_every = Some(k);
            }
            "--resume" => o.resume = Some(value()?.into()),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if o.save_every.is_some() && o.save.is_none() {
        return Err("--save-every needs --save DIR".into());
    }
    Ok(o)
}

fn main() -> Result<(), Box<dyn Error>> {
    let Options {
        precision,
        clip,
        steps,
        save,
        save_every,
        resume,
    } = options()?;
    let half = precision.half_format();
    let (device, queue) = own_device()?;
    // fusedopt works on the pipeline's device; it creates no device of its own.
    let gpu = Gpu::from_device(device.clone(), queue.clone());
    let device = &device;
    println!(
        "adapter: {}",
        fusedopt::gpu::describe_adapter(gpu.adapter_info())
    );

    // The model's tensors in one flat buffer, matrices and biases in two groups.
    let tensors = [
        TensorSpec::new("w1", &[HIDDEN as usize, INPUTS as usize]),
        TensorSpec::new("b1", &[HIDDEN as usize]),
        TensorSpec::new("w2", &[1, HIDDEN as usize]),
        TensorSpec::new("b2", &[1]),
    ];
    // 16-bit groups start at the same byte alignment, twice as many elements apart.
    let align = ModelLayout::device_alignment(&gpu) * if half.is_some() { 2 } else { 1 };
    let layout = ModelLayout::new(&tensors, 2, decay_group, align)?;
    let offset = |name: &str| layout.segment(name).map(|s| s.offset as u32).unwrap_or(0);
    let dims = Dims {
        batch: BATCH,
        inputs: INPUTS,
        hidden: HIDDEN,
        w1: offset("w1"),
        b1: offset("b1"),
        w2: offset("w2"),
        b2: offset("b2"),
        _pad: 0,
    };

    // He-initialized weights, zero biases; a fixed batch of synthetic data.
    let mut rng = StdRng::seed_from_u64(1);
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
    let t: Vec<f32> = x.chunks(INPUTS as usize).map(teacher).collect();

    // The caller's buffers: fusedopt steps `params` in place, reading `grads`; in a 16-bit
    // precision those are `params16` and `grads16`, and `params` and `grads` the f32 copies the
    // forward and backward passes use.
    let params = gpu.upload("mlp/params", &flat)?;
    let grads = gpu.zeros("mlp/grads", layout.len())?;
    let (params16, grads16) = match half {
        Some(format) => {
            let bits: Vec<u16> = flat.iter().map(|&x| format.round(x)).collect();
            (
                gpu.upload_half("mlp/params16", &bits)?,
                gpu.zeros("mlp/grads16", layout.len() / 2)?,
            )
        }
        None => (gpu.zeros("mlp/unused", 1)?, gpu.zeros("mlp/unused", 1)?),
    };
    let x_buf = gpu.upload("mlp/x", &x)?;
    let t_buf = gpu.upload("mlp/target", &t)?;
    let h_buf = gpu.zeros("mlp/hidden", (BATCH * HIDDEN) as usize)?;
    let dy_buf = gpu.zeros("mlp/dy", BATCH as usize)?;
    let loss_buf = gpu.zeros("mlp/loss", BATCH as usize)?;
    let dims_buf = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("mlp/dims"),
        size: size_of::<Dims>() as u64,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&dims_buf, 0, bytemuck::bytes_of(&dims));

    // fusedopt steps the caller's buffers in place: AdamW, no decay on biases; in 16-bit, a
    // loss scaler (and the clip asked for) guards each step.
    let configs = [
        Adam {
            lr: 1e-2,
            weight_decay: 1e-4,
            ..Adam::adamw()
        }
        .into(),
        Adam {
            lr: 1e-2,
            weight_decay: 0.0,
            ..Adam::adamw()
        }
        .into(),
    ];
    let guard = Guard {
        scaler: half.map(|_| LossScaler::default()),
        max_norm: clip,
        caller_scale: false,
    };
    let (stepped, stepped_grads) = match half {
        Some(_) => (
            BufferRange::half(&params16, layout.len()),
            BufferRange::half(&grads16, layout.len()),
        ),
        None => (BufferRange::whole(&params), BufferRange::whole(&grads)),
    };
    let mut optimizer = ModelOptimizer::with_precision(
        &gpu,
        layout.clone(),
        stepped,
        stepped_grads,
        &configs,
        precision,
        guard.is_active().then_some(guard),
    )?;
    // The scale the backward pass multiplies by, read on the device (1 without a scaler).
    let one = gpu.upload("mlp/no scale", &[1.0])?;
    let scale_buf = match optimizer.guard() {
        Some(guard) if guard.config().scaler.is_some() => guard.scale_buffer(),
        _ => &one,
    };

    // The example's own pipelines, with an explicit layout; its 16-bit conversions are
    // fusedopt's (`half.wgsl`), exact and the same on every device.
    let source = format!(
        "{}\n{}",
        fusedopt::kernels::HALF_WGSL,
        include_str!("train_mlp.wgsl")
    );
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("mlp"),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let storage = |binding, read_only| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: NonZeroU64::new(4),
        },
        count: None,
    };
    let mut entries = vec![wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: NonZeroU64::new(size_of::<Dims>() as u64),
        },
        count: None,
    }];
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
    let bind_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("mlp"),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("mlp"),
        bind_group_layouts: &[Some(&bind_layout)],
        immediate_size: 0,
    });
    let pipeline = |entry: &str| {
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[(
                    "BF16",
                    f64::from(u8::from(half != Some(fusedopt::HalfFormat::F16))),
                )],
                ..Default::default()
            },
            cache: None,
        })
    };
    let len = layout.len() as u32;
    let mut passes = Vec::new();
    if half.is_some() {
        passes.push((pipeline("widen_params"), len));
    }
    passes.extend([
        (pipeline("hidden"), BATCH * HIDDEN),
        (pipeline("output"), BATCH),
        (pipeline("grad_layer1"), HIDDEN * INPUTS),
        (pipeline("grad_layer2"), HIDDEN + 1),
    ]);
    if half.is_some() {
        passes.push((pipeline("narrow_grads"), len / 2));
    }
    let buffers = [
        &dims_buf, &params, &grads, &x_buf, &t_buf, &h_buf, &dy_buf, &loss_buf, &params16,
        &grads16, scale_buf,
    ];
    let bind_entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: b.as_entire_binding(),
        })
        .collect();
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("mlp"),
        layout: &bind_layout,
        entries: &bind_entries,
    });

    // The model's weights as the optimizer steps them: f32, or the 16-bit buffer; saved per
    // tensor by name (`model.w1`...), so that a device of another alignment reads them too.
    let stored = if half.is_some() { &params16 } else { &params };
    let mut step = 0;
    if let Some(dir) = &resume {
        let checkpoint = Checkpoint::load(dir.join(CHECKPOINT))?;
        // The weights first: a restore that finds no master takes the parameters.
        for segment in layout.segments() {
            let name = format!("model.{}", segment.tensor.name);
            let saved = checkpoint
                .tensor(&name)
                .filter(|t| t.shape() == segment.tensor.shape && t.format() == half)
                .ok_or(format!(
                    "the checkpoint holds no {name} of this shape and precision"
                ))?;
            let at = segment.offset as u64;
            match saved.bits() {
                Some(bits) => gpu.write_half(stored, at, &bits)?,
                None => gpu.write(stored, at, &saved.to_f32())?,
            }
        }
        optimizer.restore(&gpu, &checkpoint)?;
        step = checkpoint
            .note("step")
            .ok_or("the checkpoint holds no `step`")?
            .parse()?;
        println!("resumed at step {step} from {}", dir.display());
    }
    let save_to = |dir: &PathBuf, optimizer: &mut ModelOptimizer, step: u64| {
        let mut checkpoint = optimizer.checkpoint(&gpu)?;
        for segment in layout.segments() {
            let (at, len, shape) = (segment.offset as u64, segment.len, &segment.tensor.shape);
            let weights = match half {
                Some(format) => Tensor::half(format, shape, &gpu.download_half(stored, at, len)?)?,
                None => Tensor::f32(shape, &gpu.download(stored, at, len)?)?,
            };
            checkpoint.insert(format!("model.{}", segment.tensor.name), weights)?;
        }
        checkpoint.set_note("step", step.to_string());
        std::fs::create_dir_all(dir)?;
        checkpoint.save(dir.join(CHECKPOINT))?;
        Ok::<_, Box<dyn Error>>(())
    };

    // One forward and backward pass, then (with `with_step`) the optimizer step, in one
    // encoder and one submit; the returned loss is the forward pass's, before the step.
    let run = |optimizer: &mut ModelOptimizer, with_step: bool| {
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_bind_group(0, &bind_group, &[]);
            for (pipeline, invocations) in &passes {
                pass.set_pipeline(pipeline);
                pass.dispatch_workgroups(invocations.div_ceil(64), 1, 1);
            }
        }
        if with_step {
            optimizer.record_step(&gpu, &mut encoder)?;
        }
        queue.submit([encoder.finish()]);
        Ok::<_, fusedopt::Error>(())
    };
    let loss = || -> Result<f32, fusedopt::Error> {
        Ok(gpu.download(&loss_buf, 0, BATCH as usize)?.iter().sum())
    };
    let mut first = None;
    let start = step;
    while step < steps {
        run(&mut optimizer, true)?;
        if step % 100 == 0 {
            let loss = loss()?;
            println!("step {step:>4}  loss {loss:.6}");
            first.get_or_insert(loss);
        }
        step += 1;
        if let (Some(dir), Some(k)) = (&save, save_every)
            && step % k == 0
            && step < steps
        {
            save_to(dir, &mut optimizer, step)?;
        }
    }
    // The loss of the final weights: a forward pass without a step.
    run(&mut optimizer, false)?;
    let final_loss = loss()?;
    if let Some(dir) = &save {
        save_to(dir, &mut optimizer, step)?;
        println!("saved step {step} to {}", dir.join(CHECKPOINT).display());
    }
    let first = first.unwrap_or(f32::NAN);
    if let Some(guard) = optimizer.guard() {
        let report = guard.read(&gpu)?;
        let taken = optimizer.read_step_counts(&gpu)?[0];
        println!(
            "{precision}: {taken} of {step} steps taken ({} skipped on overflow), loss scale \
             {}, last gradient norm {:.3e}",
            step - taken,
            report.scale,
            report.norm
        );
    }
    println!(
        "loss {first:.3e} -> {final_loss:.3e} ({:.0}x lower) in steps {start}..{step}, {} \
         dispatches per step",
        first / final_loss,
        passes.len() + optimizer.dispatches_per_step()
    );
    // Every digit, so that two runs compare to the last bit.
    println!("final loss {final_loss:.9e}");
    // A run from step 0 must learn; NaN fails too. (A resumed one starts low already.)
    let fell_tenfold = final_loss.is_finite() && final_loss < first / 10.0;
    if start == 0 && !fell_tenfold {
        return Err(format!("the loss did not fall tenfold: {first} -> {final_loss}").into());
    }
    Ok(())
}
