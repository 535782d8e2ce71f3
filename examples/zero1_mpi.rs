//! Data-parallel training with ZeRO-1 over MPI: `train_mlp`'s network on `R` processes, each
//! with its own device, each holding the optimizer state of only its `1/R` of the parameters.
//!
//! Every step, on every rank:
//! 1. the forward and backward passes over the rank's shard of the global batch (`BATCH/R`
//!    examples, the loss averaged over all `BATCH`), on the rank's full copy of the weights;
//! 2. the gradients are reduce-scattered: an all-to-all hands each rank every rank's gradient
//!    of its slice of the flat parameter buffer, and the rank adds them in rank order (so the
//!    sum is the same, to the bit, as a single process adding the shards' gradients in that
//!    order, which MPI's reductions do not promise);
//! 3. the rank steps its slice with fusedopt (`GpuOptimizer`, one per parameter group the
//!    slice touches, on buffers of the slice's size: the state of `1/R` of the model);
//! 4. the stepped slices are all-gathered into every rank's weights.
//!
//! At the end rank 0 replays the run in one process on its device (every shard's gradients
//! added in rank order, one optimizer over the whole model) and fails unless the weights agree
//! bit for bit; it also reports the distance to plain full-batch training, whose sums run in
//! another order. The ranks' state sizes must add up to the model's, each `1/R` of it.
//!
//! ```sh
//! cargo build --release --features mpi --example zero1_mpi
//! mpirun -n 2 target/release/examples/zero1_mpi [--steps N]
//! ```
//! (as root add `--allow-run-as-root`; with more ranks than cores, `--oversubscribe`.)

mod mlp;

use std::error::Error;

use fusedopt::{Gpu, GpuOptimizer, ModelLayout, ModelOptimizer, Optimizer};
use mlp::{BATCH, Buffers, Dims, HIDDEN, INPUTS, Passes};
use mpi::traits::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Steps of a run unless `--steps` says otherwise.
const STEPS: u64 = 300;

fn main() -> Result<(), Box<dyn Error>> {
    let universe = mpi::initialize().ok_or("MPI was initialized already")?;
    let world = universe.world();
    let (rank, ranks) = (world.rank() as usize, world.size() as usize);
    let steps = steps()?;
    if !(BATCH as usize).is_multiple_of(ranks) {
        return Err(format!("{ranks} ranks do not divide the batch of {BATCH}").into());
    }
    let (device, queue) = mlp::own_device()?;
    let gpu = Gpu::from_device(device.clone(), queue.clone());
    let layout = mlp::layout(ModelLayout::device_alignment(&gpu))?;
    // Every rank draws the same weights and global batch, and keeps its shard of the batch.
    let start = mlp::start(&layout, &mut StdRng::seed_from_u64(1))?;
    let weights = &start.weights;
    let shard = Shard::of(rank, ranks, &start);
    let len = layout.len();
    // The flat buffer in R equal slices (the last one padded): this rank owns `owned`.
    let slice = len.div_ceil(ranks);
    let owned = (rank * slice).min(len)..((rank + 1) * slice).min(len);
    if rank == 0 {
        println!(
            "{ranks} ranks on {}; {len} parameters in slices of {slice}; {} examples per rank",
            fusedopt::gpu::describe_adapter(gpu.adapter_info()),
            shard.batch
        );
    }

    let model = Model::new(&gpu, &layout, weights, &shard)?;
    let mut slices = SliceOptimizers::new(&gpu, &layout, weights, owned.clone())?;
    if rank == 0 {
        println!(
            "per step and rank: {} dispatches forward and backward, {} for the slice's step",
            model.passes.dispatches(),
            slices.dispatches()
        );
    }
    let mut first_loss = None;
    let mut final_loss = 0.0;
    for step in 0..steps {
        let mut grads = model.gradients(&gpu)?;
        grads.resize(slice * ranks, 0.0);
        // Reduce-scatter: block r of what a rank sends is its gradient of rank r's slice.
        let mut received = vec![0.0f32; slice * ranks];
        world.all_to_all_into(&grads[..], &mut received[..]);
        let summed = sum_in_rank_order(&received, slice);
        let stepped = slices.step(&gpu, &summed[..owned.len()])?;
        let mut mine = stepped;
        mine.resize(slice, 0.0);
        let mut gathered = vec![0.0f32; slice * ranks];
        world.all_gather_into(&mine[..], &mut gathered[..]);
        gpu.write(&model.params, 0, &gathered[..len])?;

        let mut loss = 0.0f32;
        world.all_reduce_into(
            &model.loss(&gpu)?,
            &mut loss,
            mpi::collective::SystemOperation::sum(),
        );
        first_loss.get_or_insert(loss);
        final_loss = loss;
        if rank == 0 && step % 100 == 0 {
            println!("step {step:>4}  loss {loss:.6}");
        }
    }
    let weights_after = gpu.download(&model.params, 0, len)?;

    // Each rank holds the state of its slice only.
    let mut held = vec![0u64; ranks];
    world.all_gather_into(&slices.state_elements(), &mut held[..]);
    if rank != 0 {
        return Ok(());
    }
    let first = first_loss.unwrap_or(f32::NAN);
    println!("loss {first:.3e} -> {final_loss:.3e} over {steps} steps (before each step)");
    let whole = replay(&gpu, &layout, &start, ranks, steps, Order::Shards)?;
    let mismatches = weights_after
        .iter()
        .zip(&whole)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    let plain = replay(&gpu, &layout, &start, ranks, steps, Order::FullBatch)?;
    let distance = weights_after
        .iter()
        .zip(&plain)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let state_total = 2 * len as u64;
    println!(
        "optimizer state per rank (elements): {held:?} of {state_total} in one process; \
         bytes per rank and step: {} sent and {} received in the all-to-all, {} \
         received in the all-gather",
        (ranks - 1) * slice * 4,
        (ranks - 1) * slice * 4,
        (ranks - 1) * slice * 4
    );
    println!(
        "against one process adding the {ranks} shards' gradients in rank order: \
         {mismatches} of {len} weights differ in any bit"
    );
    println!(
        "against plain full-batch training (sums in another order): largest weight \
         difference {distance:.3e}"
    );
    let per_rank = 2 * slice as u64;
    let balanced = held.iter().all(|&h| h <= per_rank) && held.iter().sum::<u64>() == state_total;
    if !final_loss.is_finite() || final_loss >= first / 10.0 {
        return Err(format!("the loss did not fall tenfold: {first} -> {final_loss}").into());
    }
    if mismatches != 0 {
        return Err("the data-parallel weights differ from the single-process run".into());
    }
    if !balanced {
        return Err(format!("the state is not split 1/{ranks} per rank: {held:?}").into());
    }
    Ok(())
}

fn steps() -> Result<u64, Box<dyn Error>> {
    let mut steps = STEPS;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--steps" => steps = args.next().ok_or("--steps needs a value")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(steps)
}

/// One rank's part of the global batch.
struct Shard {
    batch: u32,
    x: Vec<f32>,
    t: Vec<f32>,
}

impl Shard {
    /// Rank `rank`'s consecutive `BATCH / ranks` examples of `start`'s batch.
    fn of(rank: usize, ranks: usize, start: &mlp::Start) -> Self {
        let batch = BATCH as usize / ranks;
        let rows = rank * batch..(rank + 1) * batch;
        let inputs = INPUTS as usize;
        Self {
            batch: batch as u32,
            x: start.x[rows.start * inputs..rows.end * inputs].to_vec(),
            t: start.targets[rows].to_vec(),
        }
    }
}

/// The network on one device over one shard: its buffers, bind group and passes.
struct Model {
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    loss: wgpu::Buffer,
    batch: usize,
    passes: Passes,
    bind_group: wgpu::BindGroup,
    _buffers: Vec<wgpu::Buffer>,
}

impl Model {
    fn new(
        gpu: &Gpu,
        layout: &ModelLayout,
        weights: &[f32],
        shard: &Shard,
    ) -> Result<Self, Box<dyn Error>> {
        let device = gpu.device();
        let dims = Dims::new(layout, shard.batch, BATCH);
        let uniform = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("mlp/dims"),
            size: size_of::<Dims>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        gpu.queue()
            .write_buffer(&uniform, 0, bytemuck::bytes_of(&dims));
        let params = gpu.upload("mlp/params", weights)?;
        let grads = gpu.zeros("mlp/grads", layout.len())?;
        let x = gpu.upload("mlp/x", &shard.x)?;
        let t = gpu.upload("mlp/target", &shard.t)?;
        let batch = shard.batch as usize;
        let hidden = gpu.zeros("mlp/hidden", batch * HIDDEN as usize)?;
        let dy = gpu.zeros("mlp/dy", batch)?;
        let loss = gpu.zeros("mlp/loss", batch)?;
        // The 16-bit bindings, unused in f32: one read-only, one written (wgpu refuses one
        // buffer bound both ways).
        let unused = gpu.zeros("mlp/unused", 1)?;
        let unused_written = gpu.zeros("mlp/unused", 1)?;
        let passes = Passes::new(device, None, shard.batch, layout.len() as u32);
        let bind_group = passes.bind(
            device,
            &Buffers {
                dims: &uniform,
                params: &params,
                grads: &grads,
                x: &x,
                targets: &t,
                hidden: &hidden,
                dy: &dy,
                loss: &loss,
                params16: &unused,
                grads16: &unused_written,
                scale: &unused,
            },
        );
        Ok(Self {
            params,
            grads,
            loss,
            batch,
            passes,
            bind_group,
            _buffers: vec![uniform, x, t, hidden, dy, unused, unused_written],
        })
    }

    /// Runs the forward and backward passes; returns the gradients (the whole flat buffer).
    fn gradients(&self, gpu: &Gpu) -> Result<Vec<f32>, Box<dyn Error>> {
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        self.passes.record(&mut encoder, &self.bind_group);
        gpu.queue().submit([encoder.finish()]);
        Ok(gpu.download(&self.grads, 0, (self.grads.size() / 4) as usize)?)
    }

    /// This shard's part of the loss of the last forward pass.
    fn loss(&self, gpu: &Gpu) -> Result<f32, Box<dyn Error>> {
        Ok(gpu.download(&self.loss, 0, self.batch)?.iter().sum())
    }
}

/// Blocks of `slice` values, one per rank, added in rank order.
fn sum_in_rank_order(blocks: &[f32], slice: usize) -> Vec<f32> {
    let mut chunks = blocks.chunks_exact(slice);
    let mut sum = chunks.next().map(<[f32]>::to_vec).unwrap_or_default();
    for block in chunks {
        for (s, b) in sum.iter_mut().zip(block) {
            *s += b;
        }
    }
    sum
}

/// The optimizers of one rank's slice: for each parameter group the slice touches, a
/// `GpuOptimizer` on buffers of that piece only (so the state is the slice's).
struct SliceOptimizers {
    pieces: Vec<Piece>,
}

struct Piece {
    /// Where the piece lies in the slice.
    at: std::ops::Range<usize>,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    optimizer: GpuOptimizer,
}

impl SliceOptimizers {
    /// The pieces of `owned` in each group of `layout`, starting from `weights` (the whole
    /// flat buffer's).
    fn new(
        gpu: &Gpu,
        layout: &ModelLayout,
        weights: &[f32],
        owned: std::ops::Range<usize>,
    ) -> Result<Self, Box<dyn Error>> {
        let configs: [Optimizer; 2] = mlp::configs();
        let mut pieces = Vec::new();
        // Groups cover the flat buffer in order; the padding after a group is stepped with it
        // (zero gradients leave it zero).
        let ranges = layout.group_ranges();
        for (k, &(start, _)) in ranges.iter().enumerate() {
            let end = ranges.get(k + 1).map_or(layout.len(), |r| r.0);
            let (lo, hi) = (start.max(owned.start), end.min(owned.end));
            if lo >= hi {
                continue;
            }
            let params = gpu.upload("zero1/params", &weights[lo..hi])?;
            let grads = gpu.zeros("zero1/grads", hi - lo)?;
            let optimizer = GpuOptimizer::new(gpu, configs[k].clone(), &params, &grads)?;
            pieces.push(Piece {
                at: lo - owned.start..hi - owned.start,
                params,
                grads,
                optimizer,
            });
        }
        Ok(Self { pieces })
    }

    /// Steps the slice with its summed gradients; returns the stepped weights of the slice.
    fn step(&mut self, gpu: &Gpu, grads: &[f32]) -> Result<Vec<f32>, Box<dyn Error>> {
        let mut out = Vec::with_capacity(grads.len());
        for piece in &mut self.pieces {
            gpu.write(&piece.grads, 0, &grads[piece.at.clone()])?;
            piece.optimizer.step(gpu)?;
            out.extend(gpu.download(&piece.params, 0, piece.at.len())?);
        }
        Ok(out)
    }

    /// Dispatches of one step of the slice.
    fn dispatches(&self) -> usize {
        self.pieces
            .iter()
            .map(|p| p.optimizer.dispatches_per_step())
            .sum()
    }

    /// Elements of optimizer state this rank holds.
    fn state_elements(&self) -> u64 {
        self.pieces
            .iter()
            .map(|p| (p.optimizer.len() * p.optimizer.config().state_names().len()) as u64)
            .sum()
    }
}

/// How [`replay`] computes each step's gradient.
#[derive(Clone, Copy)]
enum Order {
    /// Each rank's shard on its own, the shards' gradients added in rank order: the sums the
    /// data-parallel run takes.
    Shards,
    /// The whole batch in one pass, as plain training takes it.
    FullBatch,
}

/// The run in one process on one device: the gradient of the whole batch in `order`, one
/// optimizer (per group) over the whole model. Returns the final weights.
fn replay(
    gpu: &Gpu,
    layout: &ModelLayout,
    start: &mlp::Start,
    ranks: usize,
    steps: u64,
    order: Order,
) -> Result<Vec<f32>, Box<dyn Error>> {
    let shards = match order {
        Order::Shards => (0..ranks).map(|r| Shard::of(r, ranks, start)).collect(),
        Order::FullBatch => vec![Shard::of(0, 1, start)],
    };
    let models: Vec<Model> = shards
        .iter()
        .map(|shard| Model::new(gpu, layout, &start.weights, shard))
        .collect::<Result<_, _>>()?;
    let len = layout.len();
    let params = gpu.upload("replay/params", &start.weights)?;
    let grads = gpu.zeros("replay/grads", len)?;
    let mut optimizer = ModelOptimizer::new(
        gpu,
        layout.clone(),
        (&params).into(),
        (&grads).into(),
        &mlp::configs(),
    )?;
    for _ in 0..steps {
        let mut all = Vec::with_capacity(len * models.len());
        for model in &models {
            all.extend(model.gradients(gpu)?);
        }
        gpu.write(&grads, 0, &sum_in_rank_order(&all, len))?;
        optimizer.step(gpu)?;
        let stepped = gpu.download(&params, 0, len)?;
        for model in &models {
            gpu.write(&model.params, 0, &stepped)?;
        }
    }
    Ok(gpu.download(&params, 0, len)?)
}
