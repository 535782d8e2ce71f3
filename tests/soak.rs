//! A soak: every optimizer stepped many times on the GPU and the CPU reference side by side,
//! bit for bit, with the process's memory not growing. `FUSEDOPT_SOAK_STEPS` sets the steps
//! (default 2,000 for CI, a few seconds; the full soak is `FUSEDOPT_SOAK_STEPS=10000 cargo test
//! --test soak`, 15 s on two cores).

mod common;

use fusedopt::testing::RandomProblem;
use fusedopt::{CpuOptimizer, GpuOptimizer, Optimizer};
use ndarray::{ArrayView1, ArrayViewMut1};

fn steps() -> u64 {
    std::env::var("FUSEDOPT_SOAK_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
        .max(100)
}

/// Resident memory of this process in bytes (Linux), or `None`.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[test]
fn every_optimizer_stays_bit_identical_over_many_steps_without_memory_growth() {
    let Some(gpu) = common::gpu() else { return };
    let (n, steps) = (1_000, steps());
    let mut optimizers: Vec<_> = Optimizer::NAMES
        .iter()
        .map(|name| {
            let config = Optimizer::default_for(name).unwrap();
            let problem = RandomProblem::new(n, 9);
            let params = gpu.upload("soak/params", &problem.params).unwrap();
            let grads = gpu.zeros("soak/grads", n).unwrap();
            let gpu_opt = GpuOptimizer::new(gpu, config.clone(), &params, &grads).unwrap();
            let cpu = CpuOptimizer::new(config, n).unwrap();
            let cpu_params = problem.params.clone();
            (gpu_opt, cpu, problem, grads, cpu_params)
        })
        .collect();
    let mut baseline = None;
    for t in 1..=steps {
        for (gpu_opt, cpu, problem, grads, cpu_params) in &mut optimizers {
            let g = problem.next_grad();
            gpu.write(grads, 0, &g).unwrap();
            gpu_opt.step(gpu).unwrap();
            cpu.step(
                ArrayViewMut1::from(&mut cpu_params[..]),
                ArrayView1::from(&g[..]),
            )
            .unwrap();
            if t % 100 == 0 || t == steps {
                let name = cpu.config().name();
                assert_eq!(
                    &gpu_opt.read_params(gpu).unwrap(),
                    cpu_params,
                    "{name} step {t}"
                );
                for ((_, got), (_, want)) in
                    gpu_opt.read_state(gpu).unwrap().iter().zip(cpu.state())
                {
                    assert_eq!(
                        got.as_slice(),
                        want.as_slice().unwrap(),
                        "{name} state, step {t}"
                    );
                }
            }
        }
        // Memory after a tenth of the run (allocators and caches warm), against the end.
        if t == steps.div_ceil(10) {
            baseline = resident_bytes();
        }
    }
    if let (Some(start), Some(end)) = (baseline, resident_bytes()) {
        let grown = end.saturating_sub(start);
        assert!(
            grown < 64 << 20,
            "resident memory grew by {} MiB over {steps} steps",
            grown >> 20
        );
        println!(
            "resident memory {} MiB -> {} MiB over {steps} steps",
            start >> 20,
            end >> 20
        );
    }
}
