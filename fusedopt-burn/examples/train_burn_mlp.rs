//! A Burn model trained with fusedopt's AdamW: a two-layer network learns a smooth function of
//! eight inputs from synthetic data the example makes. Burn runs the forward and backward
//! passes; fusedopt steps every parameter in place on the same device (weight decay on the
//! weights, none on the biases, as two parameter groups). Then the same model, from the same
//! start, is trained with Burn's own AdamW, and the two optimizer steps are timed apart from the
//! backward pass (each until the device is idle).
//!
//! ```sh
//! cargo run --release -p fusedopt-burn --example train_burn_mlp
//! ```

use std::error::Error;
use std::time::{Duration, Instant};

use burn::module::{Module, ParamGroup};
use burn::nn::loss::{MseLoss, Reduction};
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use fusedopt::Adam;
use fusedopt_burn::FusedOptimizer;

const BATCH: usize = 256;
const INPUTS: usize = 8;
const HIDDEN: usize = 64;
const STEPS: usize = 300;
const LR: f64 = 1e-2;

#[derive(Module, Debug)]
struct Mlp {
    l1: Linear,
    l2: Linear,
    act: Relu,
}

impl Mlp {
    fn new(device: &Device) -> Self {
        Self {
            l1: LinearConfig::new(INPUTS, HIDDEN).init(device),
            l2: LinearConfig::new(HIDDEN, 1).init(device),
            act: Relu::new(),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.l2.forward(self.act.forward(self.l1.forward(x)))
    }
}

/// A fixed batch: inputs uniform in [-1, 1) from a small generator, and the function to learn.
fn batch(device: &Device) -> (Tensor<2>, Tensor<2>) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    let x: Vec<f32> = (0..BATCH * INPUTS).map(|_| uniform()).collect();
    let t: Vec<f32> = x
        .chunks(INPUTS)
        .map(|r| (r[0] + 0.5 * r[1]).sin() + r[2] * r[3] - 0.3 * r[4])
        .collect();
    (
        Tensor::from_data(TensorData::new(x, [BATCH, INPUTS]), device),
        Tensor::from_data(TensorData::new(t, [BATCH, 1]), device),
    )
}

fn loss(model: &Mlp, x: &Tensor<2>, t: &Tensor<2>) -> Tensor<1> {
    MseLoss::new().forward(model.forward(x.clone()), t.clone(), Reduction::Mean)
}

fn scalar(t: Tensor<1>) -> Result<f32, Box<dyn Error>> {
    let data = t.into_data();
    Ok(data.as_slice::<f32>().map_err(|e| format!("{e:?}"))?[0])
}

/// Median of the times, in milliseconds.
fn median_ms(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times[times.len() / 2].as_secs_f64() * 1e3
}

/// The backward passes and optimizer steps of one run, each timed until the device is idle.
#[derive(Default)]
struct Times {
    backward: Vec<Duration>,
    step: Vec<Duration>,
    /// The optimizer call alone, before the wait: the host's share of the step.
    host: Vec<Duration>,
}

impl Times {
    /// One training step of `model` from `loss`, with `optimize` as the optimizer step.
    fn step<M: Module>(
        &mut self,
        device: &Device,
        model: M,
        loss: Tensor<1>,
        optimize: impl FnOnce(M, GradientsParams) -> Result<M, Box<dyn Error>>,
    ) -> Result<M, Box<dyn Error>> {
        device.sync()?;
        let began = Instant::now();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        device.sync()?;
        let stepping = Instant::now();
        let model = optimize(model, grads)?;
        self.host.push(stepping.elapsed());
        device.sync()?;
        self.backward.push(stepping - began);
        self.step.push(stepping.elapsed());
        Ok(model)
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let (device, setup) = fusedopt_burn::init()?;
    let gpu = fusedopt_burn::wrap(&setup);
    println!(
        "adapter: {}",
        fusedopt::gpu::describe_adapter(gpu.adapter_info())
    );
    let device = device.autodiff();
    device.seed(1);
    let start = Mlp::new(&device);
    let (x, t) = batch(&device);

    // fusedopt: AdamW with weight decay on the weights, none on the biases.
    let adamw = |weight_decay| Adam {
        lr: LR,
        weight_decay,
        ..Adam::adamw()
    };
    let mut fused = FusedOptimizer::new(gpu, adamw(1e-4))?
        .with_group(ParamGroup::from_predicate("bias"), adamw(0.0))?;
    let mut model = start.clone();
    let mut first = None;
    let mut fused_times = Times::default();
    for step in 0..STEPS {
        let loss = loss(&model, &x, &t);
        if step % 50 == 0 {
            let value = scalar(loss.clone().inner())?;
            first.get_or_insert(value);
            println!("step {step:>4}  loss {value:.6}");
        }
        model = fused_times.step(&device, model, loss, |m, g| Ok(fused.step(m, g)?))?;
    }
    let fused_loss = scalar(loss(&model, &x, &t).inner())?;
    let first = first.unwrap_or(f32::NAN);
    println!(
        "fusedopt AdamW: loss {first:.3e} -> {fused_loss:.3e} in {STEPS} steps; {} gradients \
         stepped from a copy (they shared their parameter's wgpu buffer), {} parameters copied \
         (their storage was shared with the start, kept for Burn's run), the rest in place",
        fused.gradients_copied(),
        fused.parameters_copied()
    );

    // Burn's own AdamW from the same start (eps as PyTorch's; one weight decay for all).
    let mut burn_optim = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(1e-4)
        .init();
    let mut model = start;
    let mut burn_times = Times::default();
    for _ in 0..STEPS {
        let loss = loss(&model, &x, &t);
        model = burn_times.step(&device, model, loss, |m, g| Ok(burn_optim.step(LR, m, g)))?;
    }
    let burn_loss = scalar(loss(&model, &x, &t).inner())?;
    println!("Burn AdamW:     loss {first:.3e} -> {burn_loss:.3e} in {STEPS} steps");
    let (fused_step, burn_step) = (median_ms(fused_times.step), median_ms(burn_times.step));
    println!(
        "medians of {STEPS}: optimizer step fusedopt {fused_step:.3} ms, Burn {burn_step:.3} ms \
         ({:.2}x); backward pass {:.3} ms and {:.3} ms; host time of the optimizer call \
         {:.3} ms and {:.3} ms",
        burn_step / fused_step,
        median_ms(fused_times.backward),
        median_ms(burn_times.backward),
        median_ms(fused_times.host),
        median_ms(burn_times.host),
    );
    if !fused_loss.is_finite() || fused_loss >= first / 10.0 {
        return Err(format!("the loss did not fall tenfold: {first} -> {fused_loss}").into());
    }
    Ok(())
}
