//! GPU measurements: optimizer steps through [`GpuOptimizer`], the copy-kernel roofline, and
//! the clock that times them (timestamp queries or the wall clock).

use std::time::Instant;

use fusedopt::{
    BufferRange, Gpu, GpuCopy, GpuOptimizer, ModelLayout, ModelOptimizer, Optimizer, Piece,
    Precision,
};

use super::{Case, Clock, Sampling, Summary, pattern};
use crate::{Error, Result};

/// Steps timed per submission (and pairs of timestamps per query set).
const BATCH: u32 = 64;

/// Times batches of compute passes: each pass with its own pair of timestamps where the device
/// has `TIMESTAMP_QUERY`, otherwise the whole batch with the wall clock around submit-and-wait.
#[derive(Debug)]
pub struct GpuTimer {
    queries: Option<Queries>,
}

#[derive(Debug)]
struct Queries {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    /// Nanoseconds per timestamp tick.
    period_ns: f64,
}

impl GpuTimer {
    /// A timer for `gpu`; `force_wall_clock` ignores timestamps even where they exist.
    pub fn new(gpu: &Gpu, force_wall_clock: bool) -> Result<Self> {
        if force_wall_clock || !gpu.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Ok(Self { queries: None });
        }
        let count = 2 * BATCH;
        let queries = gpu.scoped("creating timestamp queries", || {
            let device = gpu.device();
            Queries {
                set: device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("fusedopt/bench timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count,
                }),
                resolve: device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("fusedopt/bench timestamps resolved"),
                    size: u64::from(count) * 8,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                }),
                period_ns: f64::from(gpu.queue().get_timestamp_period()),
            }
        })?;
        Ok(Self {
            queries: Some(queries),
        })
    }

    /// Which clock the times come from.
    pub fn clock(&self) -> Clock {
        if self.queries.is_some() {
            Clock::Timestamp
        } else {
            Clock::Wall
        }
    }

    /// Records `count` (at most 64) passes with `record`, submits them and returns their times
    /// in seconds: one per pass with timestamps, one mean per batch with the wall clock.
    pub fn time_batch(
        &self,
        gpu: &Gpu,
        count: u32,
        mut record: impl FnMut(
            &mut wgpu::CommandEncoder,
            Option<wgpu::ComputePassTimestampWrites<'_>>,
        ) -> Result<()>,
    ) -> Result<Vec<f64>> {
        let count = count.clamp(1, BATCH);
        let mut encoder = gpu
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fusedopt/bench batch"),
            });
        match &self.queries {
            Some(q) => {
                for k in 0..count {
                    record(
                        &mut encoder,
                        Some(wgpu::ComputePassTimestampWrites {
                            query_set: &q.set,
                            beginning_of_pass_write_index: Some(2 * k),
                            end_of_pass_write_index: Some(2 * k + 1),
                        }),
                    )?;
                }
                encoder.resolve_query_set(&q.set, 0..2 * count, &q.resolve, 0);
                gpu.submit_and_wait("running timed steps", encoder)?;
                // Each timestamp is a u64, read as two f32 words.
                let words = gpu.download(&q.resolve, 0, 4 * count as usize)?;
                let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&words);
                Ok(ticks
                    .chunks_exact(2)
                    .map(|t| t[1].saturating_sub(t[0]) as f64 * q.period_ns * 1e-9)
                    .collect())
            }
            None => {
                for _ in 0..count {
                    record(&mut encoder, None)?;
                }
                let start = Instant::now();
                gpu.submit_and_wait("running timed steps", encoder)?;
                Ok(vec![start.elapsed().as_secs_f64() / f64::from(count)])
            }
        }
    }

    /// Runs `warmup` untimed passes (at least one), then collects per-pass times until
    /// `sampling` is satisfied.
    pub(crate) fn measure(
        &self,
        gpu: &Gpu,
        sampling: &Sampling,
        warmup: usize,
        mut record: impl FnMut(
            &mut wgpu::CommandEncoder,
            Option<wgpu::ComputePassTimestampWrites<'_>>,
        ) -> Result<()>,
    ) -> Result<Summary> {
        let mut left = warmup.max(1);
        let mut estimate = f64::INFINITY;
        while left > 0 {
            let count = left.min(BATCH as usize);
            let times = self.time_batch(gpu, count as u32, &mut record)?;
            // The last batch is the warmest: estimate from it.
            estimate = times.iter().copied().fold(f64::INFINITY, f64::min);
            left -= count;
        }
        let wanted = sampling.samples_for(estimate);
        let mut times = Vec::with_capacity(wanted);
        while times.len() < wanted {
            let count = match self.queries {
                // One sample per pass: record as many as still wanted.
                Some(_) => (wanted - times.len()) as u32,
                // One sample per batch: batches long enough to hide the submission, but at
                // least `min_samples` of them.
                None => ((1e-3 / estimate.max(1e-9)).ceil() as u32).clamp(1, BATCH),
            };
            times.extend(self.time_batch(gpu, count, &mut record)?);
        }
        Ok(Summary::of(&times).expect("at least one sample"))
    }
}

/// What one set steps: a flat tensor, or a model's tensors laid out with parameter groups.
#[derive(Debug)]
enum Stepper {
    Flat(GpuOptimizer),
    Model(ModelOptimizer),
}

/// One optimizer on the GPU over `sets` independent parameter sets, stepped in turn.
#[derive(Debug)]
pub struct GpuSteps {
    sets: Vec<(Stepper, wgpu::Buffer, wgpu::Buffer)>,
    next: usize,
}

impl GpuSteps {
    /// Uploads `sets` sets of `size` parameters and gradients and creates their optimizers.
    pub fn new(gpu: &Gpu, config: &Optimizer, size: usize, sets: usize) -> Result<Self> {
        let case = Case {
            optimizer: config.name(),
            variant: "default",
            config: config.clone(),
            precision: Precision::F32,
            guard: None,
        };
        Self::new_in(gpu, &case, size, sets)
    }

    /// [`Self::new`] for `case`: its configuration, with the tensors stored in its precision
    /// and its guard run before each step.
    pub fn new_in(gpu: &Gpu, case: &Case, size: usize, sets: usize) -> Result<Self> {
        let format = case.precision.half_format();
        let store = |label: &str, values: Vec<f32>| match format {
            Some(format) => {
                let bits: Vec<u16> = values.into_iter().map(|x| format.round(x)).collect();
                gpu.upload_half(label, &bits)
            }
            None => gpu.upload(label, &values),
        };
        fn range(buffer: &wgpu::Buffer, half: bool, size: usize) -> BufferRange<'_> {
            match half {
                true => BufferRange::half(buffer, size),
                false => BufferRange::whole(buffer),
            }
        }
        let params = pattern(size, 1);
        let grads: Vec<f32> = pattern(size, 2).into_iter().map(|g| 0.1 * g).collect();
        let sets = (0..sets.max(1))
            .map(|_| {
                let p = store("bench/params", params.clone())?;
                let g = store("bench/grads", grads.clone())?;
                let pieces = [Piece {
                    params: range(&p, format.is_some(), size),
                    grads: range(&g, format.is_some(), size),
                }];
                let (config, precision) = (case.config.clone(), case.precision);
                let opt = match case.guard {
                    Some(guard) => GpuOptimizer::with_guard(gpu, config, precision, &pieces, guard),
                    None => GpuOptimizer::with_pieces_in(gpu, config, precision, &pieces),
                }?;
                Ok((Stepper::Flat(opt), p, g))
            })
            .collect::<Result<_>>()?;
        Ok(Self { sets, next: 0 })
    }

    /// Like [`Self::new`] for a model laid out by `layout`, with `configs` per group.
    pub fn model(
        gpu: &Gpu,
        layout: &ModelLayout,
        configs: &[Optimizer],
        sets: usize,
    ) -> Result<Self> {
        Self::build(gpu, layout.len(), sets, |p, g| {
            let (p, g) = (BufferRange::whole(p), BufferRange::whole(g));
            Ok(ModelOptimizer::new(gpu, layout.clone(), p, g, configs).map(Stepper::Model)?)
        })
    }

    fn build(
        gpu: &Gpu,
        size: usize,
        sets: usize,
        make: impl Fn(&wgpu::Buffer, &wgpu::Buffer) -> Result<Stepper>,
    ) -> Result<Self> {
        let params = pattern(size, 1);
        let grads: Vec<f32> = pattern(size, 2).into_iter().map(|g| 0.1 * g).collect();
        let sets = (0..sets.max(1))
            .map(|_| {
                let p = gpu.upload("bench/params", &params)?;
                let g = gpu.upload("bench/grads", &grads)?;
                Ok((make(&p, &g)?, p, g))
            })
            .collect::<Result<_>>()?;
        Ok(Self { sets, next: 0 })
    }

    /// Records one step of the next set into `encoder`.
    pub fn record_step(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        timestamps: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<()> {
        let index = self.next;
        self.next = (index + 1) % self.sets.len();
        let recorded = match (&mut self.sets[index].0, timestamps) {
            (Stepper::Flat(o), Some(t)) => {
                let lr = o.config().lr();
                o.record_step_timed(gpu, encoder, lr, t)
            }
            (Stepper::Flat(o), None) => o.record_step(gpu, encoder),
            (Stepper::Model(m), Some(t)) => m.record_step_timed(gpu, encoder, t),
            (Stepper::Model(m), None) => m.record_step(gpu, encoder),
        };
        Ok(recorded?)
    }

    /// The host's part of a step: the median time to record one step of the next set into an
    /// encoder (staging its scalars, recording its passes), over `samples` steps after 16 of
    /// warm-up, and the dispatches per step. The encoders are dropped, never submitted: the
    /// steps do not run, so only the host is measured, and the step counts they advanced do
    /// not matter to a benchmark.
    pub fn host_record_time(&mut self, gpu: &Gpu, samples: usize) -> Result<(Summary, usize)> {
        const WARMUP: usize = 16;
        let mut times = Vec::with_capacity(samples);
        let mut recorded = 0;
        while times.len() < samples {
            let mut encoder =
                gpu.device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("fusedopt/bench host recording"),
                    });
            for _ in 0..BATCH {
                let start = Instant::now();
                self.record_step(gpu, &mut encoder, None)?;
                let elapsed = start.elapsed().as_secs_f64();
                recorded += 1;
                if recorded > WARMUP && times.len() < samples {
                    times.push(elapsed);
                }
            }
        }
        let dispatches = match &self.sets[0].0 {
            Stepper::Flat(o) => o.dispatches_per_step(),
            Stepper::Model(m) => m.dispatches_per_step(),
        };
        let summary = Summary::of(&times)
            .ok_or_else(|| Error::InvalidArgument("no samples of host recording".into()))?;
        Ok((summary, dispatches))
    }

    /// Warms up (every set once, so that no timed step is a set's first, then
    /// `sampling.warmup_steps` more), then times steps.
    pub fn measure(&mut self, gpu: &Gpu, timer: &GpuTimer, sampling: &Sampling) -> Result<Summary> {
        let warmup = self.sets.len() + sampling.warmup_steps;
        timer.measure(gpu, sampling, warmup, |encoder, t| {
            self.record_step(gpu, encoder, t)
        })
    }
}

/// The GPU's copy bandwidth: the library's copy kernel ([`GpuCopy`]: the optimizers' bindings,
/// indexing and chunking) copying `size` f32 between two buffers, counted as bytes read plus
/// bytes written (8 per element).
pub fn gpu_copy_bandwidth(
    gpu: &Gpu,
    timer: &GpuTimer,
    size: usize,
    sampling: &Sampling,
) -> Result<Summary> {
    if size == 0 {
        return Err(Error::InvalidArgument("copy of zero elements".into()));
    }
    let source = gpu.upload("bench/copy source", &pattern(size, 3))?;
    let target = gpu.zeros("bench/copy target", size)?;
    let copy = GpuCopy::new(
        gpu,
        BufferRange::whole(&source),
        BufferRange::whole(&target),
    )?;
    timer.measure(
        gpu,
        sampling,
        sampling.warmup_steps,
        |encoder, timestamp_writes| Ok(copy.record(gpu, encoder, timestamp_writes)?),
    )
}
