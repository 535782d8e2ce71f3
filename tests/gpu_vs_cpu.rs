//! Every kernel under every option combination against the CPU reference, on seeded random
//! data of awkward sizes, comparing the parameters and all of the state after every step.

mod common;

use fusedopt::kernels::LaunchShape;
use fusedopt::testing::{RandomProblem, gpu_against_cpu, schedule, variants};
use fusedopt::{
    Adagrad, Adam, BufferRange, CpuOptimizer, Gpu, GpuOptimizer, Optimizer, Rmsprop, Sgd, Tolerance,
};
use ndarray::{ArrayView1, ArrayViewMut1};

fn check_all_variants(name: &str) {
    let Some(gpu) = common::gpu() else { return };
    let configs = variants(name).expect("known optimizer");
    assert!(!configs.is_empty(), "{name} has variants");
    for config in &configs {
        for (k, &size) in common::AWKWARD_SIZES.iter().enumerate() {
            let report = gpu_against_cpu(gpu, config, size, 3, 100 + k as u64, &Tolerance::F32)
                .unwrap_or_else(|e| panic!("{} {}: {e}", config.name(), config.describe()));
            assert_eq!(
                report.tensors.len(),
                1 + config.state_names().len(),
                "params and every state tensor compared"
            );
            for (tensor, stats) in &report.tensors {
                assert_eq!(
                    stats.compared,
                    3 * size as u64,
                    "{tensor}: every element of every step"
                );
                assert!(
                    stats.passed(),
                    "{} [{}] size {size}: {tensor} differs: {stats:?}",
                    config.name(),
                    config.describe()
                );
            }
        }
    }
}

/// Every registered optimizer, so that a new one is checked without a line here.
#[test]
fn every_optimizer_variant_matches_the_reference() {
    for name in Optimizer::NAMES {
        check_all_variants(name);
    }
}

/// Poison value around the stepped range: any write outside it shows.
const POISON: f32 = -7.777e33;

/// Steps a range in the middle of larger, poisoned buffers: the elements outside the range
/// must keep their poison and the range must match the CPU reference.
#[test]
fn nothing_outside_the_range_is_touched() {
    let Some(gpu) = common::gpu() else { return };
    let margin = u64::from(gpu.limits().storage_offset_alignment) / 4;
    for config in common::fullest_configs() {
        for size in [1usize, 255, 257, 1000] {
            let mut problem = RandomProblem::new(size, 7);
            let total = margin as usize * 2 + size;
            let mut host = vec![POISON; total];
            host[margin as usize..margin as usize + size].copy_from_slice(&problem.params);
            let params = gpu.upload("params", &host).unwrap();
            let grads = gpu.upload("grads", &vec![POISON; total]).unwrap();
            let range = |buffer| BufferRange {
                buffer,
                offset: margin,
                len: size,
            };
            let mut opt =
                GpuOptimizer::new(gpu, config.clone(), range(&params), range(&grads)).unwrap();
            let mut cpu = CpuOptimizer::new(config.clone(), size).unwrap();
            let mut expected = problem.params.clone();
            for t in 1..=3 {
                let g = problem.next_grad();
                gpu.write(&grads, margin, &g).unwrap();
                opt.step_with_lr(gpu, schedule(config.lr(), t)).unwrap();
                cpu.step_with_lr(
                    ArrayViewMut1::from(&mut expected[..]),
                    ArrayView1::from(&g[..]),
                    schedule(config.lr(), t),
                )
                .unwrap();
            }
            let all = gpu.download(&params, 0, total).unwrap();
            let (before, rest) = all.split_at(margin as usize);
            let (inside, after) = rest.split_at(size);
            assert!(
                before.iter().chain(after).all(|&x| x == POISON),
                "{}: margin written",
                config.name()
            );
            let stats = common::compare(inside, &expected);
            assert!(stats.passed(), "{} size {size}: {stats:?}", config.name());
            assert_eq!(
                opt.read_params(gpu).unwrap(),
                inside,
                "read_params reads the range"
            );
        }
    }
}

/// With 64 KiB chunks a tensor spans several bindings; elements on both sides of every chunk
/// border and in the last partial chunk must match the reference.
#[test]
fn multi_chunk_steps_match_the_reference_at_every_border() {
    let Some(mut gpu) = common::own_gpu() else {
        return;
    };
    let chunk_bytes = 64 << 10;
    gpu.set_max_chunk_bytes(chunk_bytes).unwrap();
    let chunk = (chunk_bytes / 4) as usize;
    let size = 3 * chunk + 1001;
    for config in common::fullest_configs() {
        let report = gpu_against_cpu(&gpu, &config, size, 2, 11, &Tolerance::F32).unwrap();
        assert!(
            report.overall().passed(),
            "{}: {:?}",
            config.name(),
            report.tensors
        );
        // The same run once more, looking at the borders explicitly.
        let mut problem = RandomProblem::new(size, 11);
        let params = gpu.upload("params", &problem.params).unwrap();
        let g = problem.next_grad();
        let grads = gpu.upload("grads", &g).unwrap();
        let mut opt = GpuOptimizer::new(&gpu, config.clone(), &params, &grads).unwrap();
        assert_eq!(
            opt.dispatches_per_step(),
            4,
            "three full chunks and a partial one"
        );
        opt.step(&gpu).unwrap();
        let mut cpu = CpuOptimizer::new(config.clone(), size).unwrap();
        let mut expected = problem.params.clone();
        cpu.step(
            ArrayViewMut1::from(&mut expected[..]),
            ArrayView1::from(&g[..]),
        )
        .unwrap();
        let got = opt.read_params(&gpu).unwrap();
        for border in [chunk, 2 * chunk, 3 * chunk] {
            for i in [border - 1, border] {
                assert!(
                    Tolerance::F32.ratio(got[i], expected[i]) <= 1.0 && got[i] != problem.params[i]
                        || g[i] == 0.0,
                    "{} element {i} at a chunk border: {} vs {}",
                    config.name(),
                    got[i],
                    expected[i]
                );
            }
        }
        assert!(
            Tolerance::F32.ratio(got[size - 1], expected[size - 1]) <= 1.0,
            "last element"
        );
    }
}

/// Several steps recorded into one encoder and submitted once use one uniform slot each, so
/// they equal the same steps taken one by one, learning-rate schedule included.
#[test]
fn steps_recorded_into_one_encoder_equal_separate_steps() {
    let Some(gpu) = common::gpu() else { return };
    let config: Optimizer = Adam {
        amsgrad: true,
        weight_decay: 0.1,
        ..Adam::adamw()
    }
    .into();
    let size = 4099;
    let problem = RandomProblem::new(size, 3);
    let g: Vec<f32> = (0..size).map(|i| ((i % 17) as f32 - 8.0) * 0.01).collect();
    let params = gpu.upload("params", &problem.params).unwrap();
    let grads = gpu.upload("grads", &g).unwrap();
    let mut opt = GpuOptimizer::new(gpu, config.clone(), &params, &grads).unwrap();
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    for t in 1..=5 {
        opt.record_step_with_lr(gpu, &mut encoder, schedule(0.1, t))
            .unwrap();
    }
    gpu.queue().submit([encoder.finish()]);
    assert_eq!(opt.step_count(), 5, "five steps recorded");

    let mut cpu = CpuOptimizer::new(config, size).unwrap();
    let mut expected = problem.params.clone();
    for t in 1..=5 {
        cpu.step_with_lr(
            ArrayViewMut1::from(&mut expected[..]),
            ArrayView1::from(&g[..]),
            schedule(0.1, t),
        )
        .unwrap();
    }
    let stats = common::compare(&opt.read_params(gpu).unwrap(), &expected);
    assert!(stats.passed(), "{stats:?}");
    for ((name, got), (_, want)) in opt.read_state(gpu).unwrap().iter().zip(cpu.state()) {
        let s = common::compare(got, want.as_slice().unwrap());
        assert!(s.passed(), "{name}: {s:?}");
    }
}

/// State starts where PyTorch starts it, and only the state the options need is allocated.
#[test]
fn state_is_initialized_and_sized_like_pytorch() {
    let Some(gpu) = common::gpu() else { return };
    let params = gpu.upload("params", &[1.0; 300]).unwrap();
    let grads = gpu.upload("grads", &[0.5; 300]).unwrap();
    let adagrad = Adagrad {
        initial_accumulator_value: 0.25,
        ..Adagrad::default()
    };
    let opt = GpuOptimizer::new(gpu, adagrad, &params, &grads).unwrap();
    let state = opt.read_state(gpu).unwrap();
    assert_eq!(state.len(), 1, "adagrad keeps sum only");
    assert_eq!(state[0].0, "sum", "PyTorch's name");
    assert!(
        state[0].1.iter().all(|&x| x == 0.25),
        "initial_accumulator_value"
    );

    let plain_sgd = GpuOptimizer::new(gpu, Sgd::default(), &params, &grads).unwrap();
    assert!(
        plain_sgd.read_state(gpu).unwrap().is_empty(),
        "SGD without momentum keeps no state"
    );
    let names = |c: Optimizer| {
        GpuOptimizer::new(gpu, c, &params, &grads)
            .unwrap()
            .read_state(gpu)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(
            Rmsprop {
                momentum: 0.9,
                ..Rmsprop::default()
            }
            .into()
        ),
        ["square_avg", "momentum_buffer"],
        "rmsprop momentum"
    );
    assert_eq!(
        names(Adam::default().into()),
        ["exp_avg", "exp_avg_sq"],
        "adam"
    );
    assert_eq!(
        names(
            Adam {
                amsgrad: true,
                ..Adam::default()
            }
            .into()
        ),
        ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
        "amsgrad"
    );
}

/// A caller's own device and queue work the same as one fusedopt creates.
#[test]
fn a_borrowed_device_steps_like_an_owned_one() {
    let Some(owned) = common::gpu() else { return };
    let borrowed = Gpu::from_device(owned.device().clone(), owned.queue().clone());
    let config: Optimizer = Rmsprop {
        centered: true,
        ..Rmsprop::default()
    }
    .into();
    let report = gpu_against_cpu(&borrowed, &config, 1000, 3, 5, &Tolerance::F32).unwrap();
    assert!(report.overall().passed(), "{:?}", report.tensors);
}

/// The comparison can fail: a GPU run of one configuration against the reference of another
/// is caught.
#[test]
fn a_different_update_is_detected() {
    let Some(gpu) = common::gpu() else { return };
    let size = 1000;
    let mut problem = RandomProblem::new(size, 1);
    let g = problem.next_grad();
    let params = gpu.upload("params", &problem.params).unwrap();
    let grads = gpu.upload("grads", &g).unwrap();
    let mut opt = GpuOptimizer::new(gpu, Adam::default(), &params, &grads).unwrap();
    opt.step(gpu).unwrap();
    let mut cpu = CpuOptimizer::new(
        Adam {
            eps_in_sqrt: true,
            ..Adam::default()
        },
        size,
    )
    .unwrap();
    let mut expected = problem.params.clone();
    cpu.step(
        ArrayViewMut1::from(&mut expected[..]),
        ArrayView1::from(&g[..]),
    )
    .unwrap();
    let stats = common::compare(&opt.read_params(gpu).unwrap(), &expected);
    assert!(!stats.passed(), "eps placement must be visible: {stats:?}");
}

/// Launch shapes are a tuning knob only: wider workgroups, several elements per invocation, a
/// capped grid that strides over the range (down to one invocation, whose cap is raised where
/// the range would take more rounds than Mesa's software drivers run a loop), a
/// two-dimensional grid with a partial last row (one thread per workgroup past 65,535
/// workgroups), and chunked ranges under each, all give bit for bit what the default shape
/// gives, and that matches the CPU reference. Parameters start random and state is compared
/// too, so an element no invocation updated shows.
#[test]
fn every_launch_shape_gives_the_same_numbers() {
    let Some(gpu) = common::own_gpu() else {
        return;
    };
    let shape = |workgroup_size, elements_per_invocation, max_workgroups| LaunchShape {
        workgroup_size,
        elements_per_invocation,
        max_workgroups,
    };
    let shapes = [
        shape(64, 4, None),
        shape(32, 3, Some(5)),
        shape(256, 16, None),
        shape(128, 2, Some(1)),
        shape(1, 1, None),
        shape(1, 1, Some(1)),
    ];
    const STEPS: u64 = 2;
    const SEED: u64 = 21;
    let gpu_run = |gpu: &Gpu, config: &Optimizer, size: usize| -> Vec<Vec<f32>> {
        let mut problem = RandomProblem::new(size, SEED);
        let params = gpu.upload("params", &problem.params).unwrap();
        let grads = gpu.zeros("grads", size).unwrap();
        let mut opt = GpuOptimizer::new(gpu, config.clone(), &params, &grads).unwrap();
        for t in 1..=STEPS {
            gpu.write(&grads, 0, &problem.next_grad()).unwrap();
            opt.step_with_lr(gpu, schedule(config.lr(), t)).unwrap();
        }
        let mut out = vec![opt.read_params(gpu).unwrap()];
        out.extend(opt.read_state(gpu).unwrap().into_iter().map(|(_, s)| s));
        out
    };
    let cpu_run = |config: &Optimizer, size: usize| -> Vec<Vec<f32>> {
        let mut problem = RandomProblem::new(size, SEED);
        let mut params = problem.params.clone();
        let mut cpu = CpuOptimizer::new(config.clone(), size).unwrap();
        for t in 1..=STEPS {
            let g = problem.next_grad();
            cpu.step_with_lr(
                ArrayViewMut1::from(&mut params[..]),
                ArrayView1::from(&g[..]),
                schedule(config.lr(), t),
            )
            .unwrap();
        }
        let mut out = vec![params];
        out.extend(cpu.state().into_iter().map(|(_, s)| s.to_vec()));
        out
    };
    let bits = |tensors: &[Vec<f32>]| -> Vec<u32> {
        tensors.iter().flatten().map(|x| x.to_bits()).collect()
    };
    // 70,001 elements at one thread per workgroup need a 65,535 x 2 grid.
    let sizes = [1usize, 257, 5000, 3 * 16384 + 777, 70_001];
    assert_eq!(gpu.launch_shape(), LaunchShape::default());
    for config in common::fullest_configs() {
        let mut expected = Vec::new();
        for &n in &sizes {
            let got = gpu_run(&gpu, &config, n);
            let want = cpu_run(&config, n);
            assert_eq!(got.len(), 1 + config.state_names().len());
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                let stats = common::compare(g, w);
                assert!(
                    stats.passed(),
                    "{} size {n} tensor {k}: {stats:?}",
                    config.name()
                );
            }
            expected.push(bits(&got));
        }
        for shape in shapes {
            for chunk_bytes in [None, Some(64 << 10)] {
                let mut tuned = Gpu::from_device(gpu.device().clone(), gpu.queue().clone());
                tuned.set_launch_shape(shape).unwrap();
                if let Some(bytes) = chunk_bytes {
                    tuned.set_max_chunk_bytes(bytes).unwrap();
                }
                for (&n, want) in sizes.iter().zip(&expected) {
                    assert!(
                        bits(&gpu_run(&tuned, &config, n)) == *want,
                        "{} size {n}, {shape:?}, chunks {chunk_bytes:?}: differs from the default shape",
                        config.name()
                    );
                }
            }
        }
    }
}

#[test]
fn a_launch_shape_the_device_cannot_run_is_refused_and_changes_nothing() {
    let Some(mut gpu) = common::own_gpu() else {
        return;
    };
    let most = gpu.device().limits().max_compute_invocations_per_workgroup;
    let bad = LaunchShape {
        workgroup_size: most + 1,
        ..LaunchShape::default()
    };
    assert!(matches!(
        gpu.set_launch_shape(bad),
        Err(fusedopt::Error::InvalidSetting { .. })
    ));
    assert_eq!(gpu.launch_shape(), LaunchShape::default());
}
