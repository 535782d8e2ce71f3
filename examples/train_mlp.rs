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

mod mlp;

use std::error::Error;
use std::path::PathBuf;

use fusedopt::checkpoint::Tensor;
use fusedopt::{
    BufferRange, Checkpoint, Gpu, Guard, LossScaler, ModelLayout, ModelOptimizer, Precision,
};
use mlp::{BATCH, Buffers, Dims, HIDDEN, Passes};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Steps of a run unless `--steps` says otherwise.
const STEPS: u64 = 600;
/// The checkpoint's file in the `--save` and `--resume` folders.
const CHECKPOINT: &str = "checkpoint.safetensors";

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
    let (device, queue) = mlp::own_device()?;
    // fusedopt works on the pipeline's device; it creates no device of its own.
    let gpu = Gpu::from_device(device.clone(), queue.clone());
    let device = &device;
    println!(
        "adapter: {}",
        fusedopt::gpu::describe_adapter(gpu.adapter_info())
    );

    // The model's tensors in one flat buffer, matrices and biases in two groups; 16-bit groups
    // start at the same byte alignment, twice as many elements apart.
    let align = ModelLayout::device_alignment(&gpu) * if half.is_some() { 2 } else { 1 };
    let layout = mlp::layout(align)?;
    let dims = Dims::new(&layout, BATCH, BATCH);

    // He-initialized weights, zero biases; a fixed batch of synthetic data.
    let mlp::Start {
        weights: flat,
        x,
        targets: t,
    } = mlp::start(&layout, &mut StdRng::seed_from_u64(1))?;

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
    let configs = mlp::configs();
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

    // The example's own passes; its 16-bit conversions are fusedopt's.
    let passes = Passes::new(device, half, BATCH, layout.len() as u32);
    let bind_group = passes.bind(
        device,
        &Buffers {
            dims: &dims_buf,
            params: &params,
            grads: &grads,
            x: &x_buf,
            targets: &t_buf,
            hidden: &h_buf,
            dy: &dy_buf,
            loss: &loss_buf,
            params16: &params16,
            grads16: &grads16,
            scale: scale_buf,
        },
    );

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
        passes.record(&mut encoder, &bind_group);
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
        passes.dispatches() + optimizer.dispatches_per_step()
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
