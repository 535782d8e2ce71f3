//! Criterion benchmarks of one optimizer step through the library's API: a group per optimizer
//! and per option that changes the bytes a step moves, a `BenchmarkId` per implementation and
//! size, throughput in the bytes the step must move.
//!
//! `cargo bench` measures sizes 2^16 to 2^22; `cargo test --benches` (no `--bench` argument)
//! is a smoke run at 4096 elements that only checks every benchmark runs. GPU steps are timed
//! with the wall clock around batches of steps recorded into one encoder, submitted once and
//! waited for; without an adapter the GPU benchmarks are left out with a note on stderr.
//! A second target steps AdamW and SGD with momentum on the GPU in every storage precision,
//! each also guarded (loss scaler and norm clip). `fusedopt bench` measures the same steps with
//! GPU timestamps and the copy roofline.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fusedopt::reference::{AlignedVec, Execution};
use fusedopt::{
    BufferRange, CpuOptimizer, Gpu, GpuOptimizer, Guard, LossScaler, Optimizer, Piece, Precision,
};
use ndarray::{ArrayView1, ArrayViewMut1};

/// Bytes the parameter sets of one point add up to at least, so that steps do not find their
/// data in a cache (more than any CPU's last level or GPU's L2 in 2026).
const ROTATION_BYTES: usize = 256 << 20;

/// Steps recorded per submission of the GPU benchmarks.
const BATCH: u64 = 64;

fn smoke() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// Each optimizer's defaults, and each option that changes the state it keeps.
fn cases() -> Vec<(String, Optimizer)> {
    let mut out = Vec::new();
    for name in Optimizer::NAMES {
        let preset = Optimizer::default_for(name).expect("a registered name");
        let variants = preset.state_variants();
        out.push((name.to_string(), preset));
        out.extend(
            variants
                .into_iter()
                .map(|(v, c)| (format!("{name}/{v}"), c)),
        );
    }
    out
}

/// Ordinary numbers in [-1, 1], deterministic and cheap.
fn pattern(len: usize, salt: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let h = (i as u32 ^ salt).wrapping_mul(0x9E37_79B1).rotate_left(13);
            (h % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn steps(c: &mut Criterion) {
    let smoke = smoke();
    let sizes: &[usize] = if smoke {
        &[4096]
    } else {
        &[1 << 16, 1 << 18, 1 << 20, 1 << 22]
    };
    let gpu = match Gpu::new() {
        Ok(gpu) => Some(gpu),
        Err(e) => {
            eprintln!("GPU benchmarks left out: {e}");
            None
        }
    };
    for (label, config) in cases() {
        let mut group = c.benchmark_group(&label);
        for &size in sizes {
            let bytes = size * config.bytes_per_element();
            let footprint = size * 4 * (2 + config.state_names().len());
            let sets = if smoke {
                1
            } else {
                ROTATION_BYTES.div_ceil(footprint).clamp(1, 1024)
            };
            group.throughput(Throughput::Bytes(bytes as u64));
            let params = AlignedVec::from_slice(&pattern(size, 1));
            let grads: Vec<f32> = pattern(size, 2).iter().map(|g| 0.1 * g).collect();
            let grads = AlignedVec::from_slice(&grads);
            for (name, execution) in [
                ("cpu-reference", Execution::Reference),
                ("cpu-fast", Execution::Fast),
            ] {
                let mut runs: Vec<(CpuOptimizer, AlignedVec)> = (0..sets)
                    .map(|_| {
                        let opt = CpuOptimizer::new(config.clone(), size).expect("a valid config");
                        (opt.with_execution(execution), params.clone())
                    })
                    .collect();
                let mut next = 0;
                group.bench_function(BenchmarkId::new(name, size), |b| {
                    b.iter(|| {
                        let (opt, p) = &mut runs[next];
                        next = (next + 1) % sets;
                        let g = ArrayView1::from(grads.as_slice());
                        opt.step(ArrayViewMut1::from(p.as_mut_slice()), g)
                            .expect("a CPU step")
                    })
                });
            }
            if let Some(gpu) = &gpu {
                let p = pattern(size, 1);
                let g = pattern(size, 2);
                let mut runs: Vec<GpuOptimizer> = (0..sets)
                    .map(|_| {
                        let params = gpu.upload("bench/params", &p).expect("upload");
                        let grads = gpu.upload("bench/grads", &g).expect("upload");
                        GpuOptimizer::new(gpu, config.clone(), &params, &grads).expect("set-up")
                    })
                    .collect();
                group.bench_function(BenchmarkId::new("gpu", size), |b| {
                    time_gpu_steps(gpu, &mut runs, b)
                });
            }
        }
        group.finish();
    }
}

/// Times GPU steps over `runs` in turn, in batches recorded into one encoder and submitted
/// once, with the wall clock around each submit and wait.
fn time_gpu_steps(
    gpu: &Gpu,
    runs: &mut [GpuOptimizer],
    b: &mut criterion::Bencher<'_, criterion::measurement::WallTime>,
) {
    let mut next = 0;
    b.iter_custom(|iters| {
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let count = left.min(BATCH);
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            for _ in 0..count {
                runs[next]
                    .record_step(gpu, &mut encoder)
                    .expect("a GPU step");
                next = (next + 1) % runs.len();
            }
            let start = Instant::now();
            gpu.submit_and_wait("benchmark steps", encoder)
                .expect("a batch of GPU steps");
            total += start.elapsed();
            left -= count;
        }
        total
    })
}

/// AdamW and SGD with momentum on the GPU in every storage precision, each also guarded (a
/// loss scaler and a norm clip before the step), throughput in the bytes each mode moves
/// (the guard's pre-pass reads the gradient once more).
fn precisions(c: &mut Criterion) {
    let Ok(gpu) = Gpu::new() else {
        eprintln!("GPU precision benchmarks left out: no adapter");
        return;
    };
    let smoke = smoke();
    let sizes: &[usize] = if smoke { &[4096] } else { &[1 << 20, 1 << 22] };
    let guard = Guard {
        scaler: Some(LossScaler::default()),
        max_norm: Some(1.0),
        caller_scale: false,
    };
    for name in ["adamw", "sgd"] {
        let config = match name {
            "sgd" => {
                Optimizer::from_torch("sgd", &serde_json::json!({"lr": 0.01, "momentum": 0.9}))
            }
            other => Optimizer::default_for(other),
        }
        .expect("a valid configuration");
        let mut group = c.benchmark_group(format!("{name}/precision"));
        for &size in sizes {
            for precision in Precision::ALL {
                for guarded in [false, true] {
                    let state = config.state_names().len();
                    let prepass = if guarded { precision.param_bytes() } else { 0 };
                    let bytes = size as u64 * (precision.bytes_per_element(state) + prepass);
                    group.throughput(Throughput::Bytes(bytes));
                    let mut runs = vec![gpu_optimizer(
                        &gpu,
                        &config,
                        precision,
                        guarded.then_some(guard),
                        size,
                    )];
                    let label = format!("{precision}{}", if guarded { "+guard" } else { "" });
                    group.bench_function(BenchmarkId::new(label, size), |b| {
                        time_gpu_steps(&gpu, &mut runs, b)
                    });
                }
            }
        }
        group.finish();
    }
}

/// One optimizer over `size` patterned parameters and gradients stored in `precision`.
fn gpu_optimizer(
    gpu: &Gpu,
    config: &Optimizer,
    precision: Precision,
    guard: Option<Guard>,
    size: usize,
) -> GpuOptimizer {
    let store = |values: Vec<f32>| match precision.half_format() {
        Some(format) => {
            let bits: Vec<u16> = values.iter().map(|&x| format.round(x)).collect();
            gpu.upload_half("bench/tensor", &bits).expect("upload")
        }
        None => gpu.upload("bench/tensor", &values).expect("upload"),
    };
    let (params, grads) = (store(pattern(size, 1)), store(pattern(size, 2)));
    let range = |buffer| match precision.half_format() {
        Some(_) => BufferRange::half(buffer, size),
        None => BufferRange::whole(buffer),
    };
    let pieces = [Piece {
        params: range(&params),
        grads: range(&grads),
    }];
    match guard {
        Some(guard) => GpuOptimizer::with_guard(gpu, config.clone(), precision, &pieces, guard),
        None => GpuOptimizer::with_pieces_in(gpu, config.clone(), precision, &pieces),
    }
    .expect("set-up")
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = steps, precisions
}
criterion_main!(benches);
