//! Criterion benchmarks of one optimizer step: a group per optimizer variant, a `BenchmarkId`
//! per implementation and size, throughput in the bytes the step must move.
//!
//! `cargo bench` measures sizes 2^16 to 2^22; `cargo test --benches` (no `--bench` argument)
//! is a smoke run at 4096 elements that only checks every benchmark runs. GPU steps are timed
//! with timestamp queries where the adapter has them (else the wall clock); without an adapter
//! the GPU benchmarks are left out with a note on stderr.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fusedopt::Gpu;
use fusedopt::bench::{
    CpuSteps, GpuSteps, GpuTimer, Implementation, cases, rotation_bytes, rotation_sets,
};

fn smoke() -> bool {
    !std::env::args().any(|a| a == "--bench")
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
    let timer = gpu
        .as_ref()
        .map(|gpu| GpuTimer::new(gpu, false).expect("timestamp queries"));
    let rotation = if smoke {
        0
    } else {
        rotation_bytes(gpu.as_ref())
    };
    for case in cases(&[]).expect("the default cases") {
        let mut group = c.benchmark_group(case.label());
        for &size in sizes {
            let sets = rotation_sets(case.footprint(size), rotation);
            group.throughput(Throughput::Bytes((size * case.bytes_per_element()) as u64));
            for implementation in [Implementation::CpuReference, Implementation::CpuFast] {
                let mut steps = CpuSteps::new(&case.config, size, sets, implementation)
                    .expect("CPU benchmark set-up");
                group.bench_function(BenchmarkId::new(implementation.name(), size), |b| {
                    b.iter(|| steps.step().expect("a CPU step"))
                });
            }
            if let (Some(gpu), Some(timer)) = (&gpu, &timer) {
                let mut steps =
                    GpuSteps::new(gpu, &case.config, size, sets).expect("GPU benchmark set-up");
                group.bench_function(BenchmarkId::new("gpu", size), |b| {
                    b.iter_custom(|iters| {
                        let mut total = 0.0;
                        let mut left = iters;
                        while left > 0 {
                            let count = left.min(64) as u32;
                            let times = timer
                                .time_batch(gpu, count, |encoder, t| {
                                    steps.record_step(gpu, encoder, t)
                                })
                                .expect("a batch of GPU steps");
                            // Timestamps give one time per step; the wall clock one mean.
                            total += if times.len() == count as usize {
                                times.iter().sum::<f64>()
                            } else {
                                times[0] * f64::from(count)
                            };
                            left -= u64::from(count);
                        }
                        Duration::from_secs_f64(total)
                    })
                });
            }
        }
        group.finish();
    }
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
    targets = steps
}
criterion_main!(benches);
