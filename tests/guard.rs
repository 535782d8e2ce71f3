//! Loss scaling and global-norm clipping on the device against the CPU mirror: every
//! optimizer in every precision, bit for bit, with steps that overflow and are skipped, the
//! scale's sequence, the norm and the clip factor; over several pieces and chunks, and over a
//! whole model's groups.

mod common;

use fusedopt::testing::{RandomProblem, guarded_against_cpu, validation_guard, variants};
use fusedopt::{
    BufferRange, CpuGuard, CpuOptimizer, Guard, LossScaler, ModelLayout, ModelOptimizer, Optimizer,
    Precision, TensorSpec, Tolerance,
};
use ndarray::{ArrayView1, ArrayViewMut1};

/// An f32 optimizer under a guard on the GPU and its CPU mirror, stepped side by side on
/// seeded gradients.
struct Twin {
    gpu_opt: fusedopt::GpuOptimizer,
    cpu: CpuOptimizer,
    cpu_guard: CpuGuard,
    problem: RandomProblem,
    cpu_params: Vec<f32>,
    grads: wgpu::Buffer,
}

impl Twin {
    /// `n` parameters from `seed`; under the caller's scale when `caller` is given.
    fn new(
        gpu: &fusedopt::Gpu,
        config: &Optimizer,
        guard: Guard,
        (n, seed): (usize, u64),
        caller: Option<fusedopt::CallerScale<'_>>,
    ) -> Self {
        let problem = RandomProblem::new(n, seed);
        let params = gpu.upload("twin/params", &problem.params).unwrap();
        let grads = gpu.zeros("twin/grads", n).unwrap();
        let piece = [fusedopt::Piece {
            params: BufferRange::whole(&params),
            grads: BufferRange::whole(&grads),
        }];
        let (c, f32) = (config.clone(), Precision::F32);
        let gpu_opt = match caller {
            Some(caller) => {
                fusedopt::GpuOptimizer::with_caller_scale(gpu, c, f32, &piece, guard, caller)
            }
            None => fusedopt::GpuOptimizer::with_guard(gpu, c, f32, &piece, guard),
        }
        .unwrap();
        Self {
            gpu_opt,
            cpu: CpuOptimizer::new(config.clone(), n).unwrap(),
            cpu_guard: CpuGuard::new(guard).unwrap(),
            cpu_params: problem.params.clone(),
            problem,
            grads,
        }
    }

    /// The next seeded gradient, times `scale`.
    fn next_grad(&mut self, scale: f32) -> Vec<f32> {
        self.problem.next_grad().iter().map(|g| g * scale).collect()
    }

    /// One step on both sides with gradient `g` (under the caller's `(scale, found_inf)`
    /// where given); fails unless the parameters agree bit for bit.
    fn step(&mut self, gpu: &fusedopt::Gpu, g: &[f32], caller: Option<(f32, f32)>) {
        gpu.write(&self.grads, 0, g).unwrap();
        self.gpu_opt.step(gpu).unwrap();
        let outcome = match caller {
            Some((scale, found)) => self.cpu_guard.prepare_from(&[g], scale, found),
            None => self.cpu_guard.prepare(&[g]),
        };
        let lr = self.cpu.config().lr();
        self.cpu
            .step_guarded(
                ArrayViewMut1::from(&mut self.cpu_params[..]),
                ArrayView1::from(g),
                lr,
                &outcome,
            )
            .unwrap();
        assert_eq!(self.gpu_opt.read_params(gpu).unwrap(), self.cpu_params);
    }
}

/// The CPU mirror of a model's groups: an optimizer per group in `precision`, with the range
/// of the flat tensors it steps.
fn cpu_groups(
    layout: &ModelLayout,
    configs: &[Optimizer],
    precision: Precision,
) -> Vec<(CpuOptimizer, std::ops::Range<usize>)> {
    layout
        .group_ranges()
        .iter()
        .zip(configs)
        .map(|(&(s, n), c)| {
            let opt = CpuOptimizer::with_precision(c.clone(), precision, n).unwrap();
            (opt, s..s + n)
        })
        .collect()
}

/// Every optimizer with PyTorch's defaults, plus momentum for SGD.
fn optimizers() -> Vec<Optimizer> {
    Optimizer::NAMES
        .iter()
        .map(|name| variants(name).expect("known name").swap_remove(0))
        .chain([Optimizer::from_torch(
            "sgd",
            &serde_json::json!({"lr": 0.01, "momentum": 0.9, "nesterov": true}),
        )
        .expect("valid")])
        .collect()
}

fn assert_exact(report: &fusedopt::testing::CaseReport) {
    for (name, stats) in &report.tensors {
        assert!(
            stats.passed(),
            "{} {} {name}: {stats:?}",
            report.optimizer.describe(),
            report.precision
        );
    }
}

#[test]
fn every_optimizer_in_every_precision_matches_the_cpu_under_a_guard() {
    let Some(gpu) = common::gpu() else { return };
    for precision in Precision::ALL {
        for config in optimizers() {
            let report = guarded_against_cpu(
                gpu,
                &config,
                precision,
                validation_guard(),
                9_001,
                10,
                7,
                &Tolerance::EXACT,
            )
            .unwrap();
            assert_exact(&report);
        }
    }
}

#[test]
fn chunk_borders_and_a_guard_without_scaler_or_clip() {
    let Some(mut gpu) = common::own_gpu() else {
        return;
    };
    // 16 KiB chunks: every range spans several chunks of whole blocks.
    gpu.set_max_chunk_bytes(16 << 10).unwrap();
    let adam = Optimizer::from_torch("adamw", &serde_json::json!({})).unwrap();
    for guard in [
        validation_guard(),
        Guard {
            scaler: None,
            max_norm: Some(0.5),
            caller_scale: false,
        },
        Guard {
            scaler: Some(LossScaler::default()),
            max_norm: None,
            caller_scale: false,
        },
    ] {
        for precision in [Precision::F32, Precision::Half(fusedopt::HalfFormat::Bf16)] {
            let report = guarded_against_cpu(
                &gpu,
                &adam,
                precision,
                guard,
                40_001,
                8,
                3,
                &Tolerance::EXACT,
            )
            .unwrap();
            assert_exact(&report);
        }
    }
}

#[test]
fn a_model_steps_every_group_or_skips_every_group() {
    let Some(gpu) = common::gpu() else { return };
    let tensors = [
        TensorSpec::new("w", &[70, 90]),
        TensorSpec::new("b", &[90]),
        TensorSpec::new("w2", &[90, 33]),
    ];
    let align = ModelLayout::device_alignment(gpu);
    let layout = ModelLayout::new(&tensors, 2, fusedopt::model::decay_group, align).unwrap();
    let configs = [
        Optimizer::from_torch("adamw", &serde_json::json!({"weight_decay": 0.1})).unwrap(),
        Optimizer::from_torch("adamw", &serde_json::json!({"weight_decay": 0.0})).unwrap(),
    ];
    let guard = validation_guard();
    let mut problem = RandomProblem::new(layout.len(), 11);
    // Padding holds zeros in parameters and gradients.
    let pad = |values: &[f32]| -> Vec<f32> {
        let mut out = vec![0.0; layout.len()];
        for s in layout.segments() {
            out[s.offset..s.offset + s.len].copy_from_slice(&values[s.offset..s.offset + s.len]);
        }
        out
    };
    let start = pad(&problem.params);
    let params = gpu.upload("model/params", &start).unwrap();
    let grads = gpu.zeros("model/grads", layout.len()).unwrap();
    let mut model = ModelOptimizer::with_precision(
        gpu,
        layout.clone(),
        BufferRange::whole(&params),
        BufferRange::whole(&grads),
        &configs,
        Precision::F32,
        Some(guard),
    )
    .unwrap();
    let mut cpu_guard = CpuGuard::new(guard).unwrap();
    let mut cpu = cpu_groups(&layout, &configs, Precision::F32);
    let mut cpu_params = start.clone();
    for t in 1..=12u64 {
        let scale = cpu_guard.state().scale;
        let mut g: Vec<f32> = pad(&problem.next_grad())
            .iter()
            .map(|g| g * scale)
            .collect();
        if t == 4 {
            g[layout.segments()[2].offset] = f32::NEG_INFINITY;
        }
        gpu.write(&grads, 0, &g).unwrap();
        model.step(gpu).unwrap();
        let outcome = cpu_guard.prepare(&[&g]);
        for (opt, range) in &mut cpu {
            let lr = opt.config().lr();
            opt.step_guarded(
                ArrayViewMut1::from(&mut cpu_params[range.clone()]),
                ArrayView1::from(&g[range.clone()]),
                lr,
                &outcome,
            )
            .unwrap();
        }
        let got = model.read_params(gpu).unwrap();
        assert_eq!(
            got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            cpu_params.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "step {t}"
        );
        let report = model.guard().unwrap().read(gpu).unwrap();
        assert_eq!(report.last_skipped, t == 4, "step {t}");
        assert_eq!(report.scale, cpu_guard.state().scale, "step {t}");
        assert_eq!(report.norm.to_bits(), outcome.norm.to_bits(), "step {t}");
    }
    assert_eq!(
        model.read_step_counts(gpu).unwrap(),
        [11, 11],
        "one step skipped in every group"
    );
}

#[test]
fn bad_guard_settings_are_typed_errors() {
    let Some(gpu) = common::gpu() else { return };
    let params = gpu.upload("bad/params", &[1.0; 8]).unwrap();
    let grads = gpu.upload("bad/grads", &[1.0; 8]).unwrap();
    let piece = fusedopt::Piece {
        params: BufferRange::whole(&params),
        grads: BufferRange::whole(&grads),
    };
    for guard in [
        Guard {
            scaler: None,
            max_norm: Some(0.0),
            caller_scale: false,
        },
        Guard {
            scaler: Some(LossScaler {
                growth_factor: 0.5,
                ..LossScaler::default()
            }),
            max_norm: None,
            caller_scale: false,
        },
    ] {
        let made = fusedopt::GpuOptimizer::with_guard(
            gpu,
            fusedopt::Adam::default(),
            Precision::F32,
            &[piece],
            guard,
        );
        assert!(
            matches!(made, Err(fusedopt::Error::InvalidHyperparameter { .. })),
            "{guard:?}"
        );
    }
}

#[test]
fn a_model_in_bf16_with_a_master_matches_the_cpu_group_by_group() {
    let Some(gpu) = common::gpu() else { return };
    let format = fusedopt::HalfFormat::Bf16;
    let precision = Precision::Master(format);
    let tensors = [TensorSpec::new("w", &[40, 30]), TensorSpec::new("b", &[30])];
    // 16-bit groups start at the storage offset alignment: twice the f32 alignment.
    let align = 2 * ModelLayout::device_alignment(gpu);
    let layout = ModelLayout::new(&tensors, 2, fusedopt::model::decay_group, align).unwrap();
    let configs = [
        Optimizer::from_torch("adamw", &serde_json::json!({"weight_decay": 0.1})).unwrap(),
        Optimizer::from_torch("sgd", &serde_json::json!({"lr": 0.1, "momentum": 0.9})).unwrap(),
    ];
    let guard = validation_guard();
    let mut problem = RandomProblem::new(layout.len(), 5);
    let round = |values: &[f32]| -> Vec<u16> { values.iter().map(|&x| format.round(x)).collect() };
    let mut cpu_params = round(&problem.params);
    let params = gpu.upload_half("model16/params", &cpu_params).unwrap();
    let grads = gpu
        .upload_half("model16/grads", &vec![0; layout.len()])
        .unwrap();
    let mut model = ModelOptimizer::with_precision(
        gpu,
        layout.clone(),
        BufferRange::half(&params, layout.len()),
        BufferRange::half(&grads, layout.len()),
        &configs,
        precision,
        Some(guard),
    )
    .unwrap();
    let mut cpu_guard = CpuGuard::new(guard).unwrap();
    let mut cpu = cpu_groups(&layout, &configs, precision);
    for t in 1..=6u64 {
        let scale = cpu_guard.state().scale;
        let mut g: Vec<f32> = problem.next_grad().iter().map(|g| g * scale).collect();
        if t == 3 {
            g[7] = f32::INFINITY;
        }
        let bits = round(&g);
        gpu.write_half(&grads, 0, &bits).unwrap();
        model.step(gpu).unwrap();
        let widened: Vec<f32> = bits.iter().map(|&b| format.widen(b)).collect();
        let outcome = cpu_guard.prepare(&[&widened]);
        for (opt, range) in &mut cpu {
            let lr = opt.config().lr();
            opt.step_half_guarded(
                &mut cpu_params[range.clone()],
                &bits[range.clone()],
                lr,
                &outcome,
            )
            .unwrap();
        }
        let got = gpu.download_half(&params, 0, layout.len()).unwrap();
        assert_eq!(got, cpu_params, "step {t}");
        assert_eq!(
            model.guard().unwrap().read(gpu).unwrap().last_skipped,
            t == 3
        );
    }
}

#[test]
fn a_restored_step_count_and_scale_continue_like_the_cpu() {
    let Some(gpu) = common::gpu() else { return };
    let config = Optimizer::from_torch("adam", &serde_json::json!({"lr": 0.01})).unwrap();
    let mut twin = Twin::new(gpu, &config, validation_guard(), (5_000, 21), None);
    // As a run resumed at step 40 with the scale at 8 and one clean step behind it.
    let scaler = fusedopt::optim::ScalerState {
        scale: 8.0,
        growth_tracker: 1,
    };
    twin.gpu_opt.restore_step_count(gpu, 40).unwrap();
    twin.gpu_opt.guard().unwrap().restore(gpu, scaler).unwrap();
    twin.cpu.set_step_count(40);
    twin.cpu_guard.restore(scaler).unwrap();
    for t in 0..4 {
        let mut g = twin.next_grad(twin.cpu_guard.state().scale);
        if t == 1 {
            g[0] = f32::NAN;
        }
        twin.step(gpu, &g, None);
        let report = twin.gpu_opt.guard().unwrap().read(gpu).unwrap();
        assert_eq!(report.scale, twin.cpu_guard.state().scale);
    }
    assert_eq!(
        twin.gpu_opt.read_step_count(gpu).unwrap(),
        43,
        "40 + 4, one skipped"
    );
    assert_eq!(twin.cpu.step_count(), 43);
    let bad = fusedopt::optim::ScalerState {
        scale: f32::INFINITY,
        growth_tracker: 0,
    };
    assert!(twin.gpu_opt.guard().unwrap().restore(gpu, bad).is_err());
    assert!(twin.gpu_opt.restore_step_count(gpu, 1 << 40).is_err());
    assert_eq!(
        twin.gpu_opt.read_step_count(gpu).unwrap(),
        43,
        "a failed restore changes nothing"
    );
}

#[test]
fn steps_taken_back_after_a_refused_submission_and_too_many_unsubmitted_steps() {
    let Some(gpu) = common::gpu() else { return };
    let config = Optimizer::from_torch("adamw", &serde_json::json!({})).unwrap();
    let mut twin = Twin::new(gpu, &config, validation_guard(), (3_000, 4), None);
    let opt = &mut twin.gpu_opt;
    // Two steps recorded into an encoder that is never submitted, then taken back.
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    opt.record_step(gpu, &mut encoder).unwrap();
    opt.record_step(gpu, &mut encoder).unwrap();
    drop(encoder);
    opt.set_step_count(0);
    for _ in 0..3 {
        let g = twin.next_grad(twin.cpu_guard.state().scale);
        twin.step(gpu, &g, None);
    }
    let opt = &mut twin.gpu_opt;
    assert_eq!(opt.read_step_count(gpu).unwrap(), 3);
    // One encoder holds at most MAX_UNCONFIRMED_STEPS guarded steps before a submission.
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    for _ in 0..fusedopt::gpu::MAX_UNCONFIRMED_STEPS {
        opt.record_step(gpu, &mut encoder).unwrap();
    }
    let before = opt.step_count();
    assert!(matches!(
        opt.record_step(gpu, &mut encoder),
        Err(fusedopt::Error::InvalidSetting { .. })
    ));
    assert_eq!(opt.step_count(), before, "the refused step is not counted");
    gpu.submit_and_wait("the recorded steps", encoder).unwrap();
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    opt.record_step(gpu, &mut encoder).unwrap();
}

#[test]
fn the_callers_own_scale_and_found_inf_buffers() {
    let Some(gpu) = common::gpu() else { return };
    let guard = Guard {
        scaler: None,
        max_norm: Some(2.0),
        caller_scale: true,
    };
    let config = Optimizer::from_torch("adamw", &serde_json::json!({"lr": 0.01})).unwrap();
    let scale = gpu.upload("caller/grad_scale", &[256.0]).unwrap();
    let found = gpu.upload("caller/found_inf", &[0.0]).unwrap();
    let caller = fusedopt::CallerScale {
        scale: &scale,
        found_inf: Some(&found),
    };
    let mut twin = Twin::new(gpu, &config, guard, (6_000, 8), Some(caller));
    // The caller's scaler: 256, a found inf at step 2, then 128.
    for (t, (s, f)) in [(256.0, 0.0), (256.0, 1.0), (128.0, 0.0), (128.0, 0.0)]
        .into_iter()
        .enumerate()
    {
        gpu.write(&scale, 0, &[s]).unwrap();
        gpu.write(&found, 0, &[f]).unwrap();
        let g = twin.next_grad(s);
        twin.step(gpu, &g, Some((s, f)));
        let report = twin.gpu_opt.guard().unwrap().read(gpu).unwrap();
        assert_eq!(report.last_skipped, f != 0.0, "step {t}");
        assert_eq!(report.last_scale, s, "the caller's scale, not updated");
    }
    assert_eq!(twin.gpu_opt.read_step_count(gpu).unwrap(), 3);
    let params = gpu.zeros("caller/params", 8).unwrap();
    let grads = gpu.zeros("caller/grads", 8).unwrap();
    let piece = fusedopt::Piece {
        params: BufferRange::whole(&params),
        grads: BufferRange::whole(&grads),
    };
    // Mismatched settings and unusable buffers are typed errors.
    let with_own = Guard {
        scaler: Some(LossScaler::default()),
        ..guard
    };
    let adamw = Optimizer::from_torch("adamw", &serde_json::json!({})).unwrap();
    let made = fusedopt::GpuOptimizer::with_caller_scale(
        gpu,
        adamw.clone(),
        Precision::F32,
        &[piece],
        with_own,
        caller,
    );
    assert!(matches!(made, Err(fusedopt::Error::Unsupported { .. })));
    let made =
        fusedopt::GpuOptimizer::with_guard(gpu, adamw.clone(), Precision::F32, &[piece], guard);
    assert!(matches!(made, Err(fusedopt::Error::InvalidSetting { .. })));
    let uniform = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("not storage"),
        size: 16,
        usage: wgpu::BufferUsages::UNIFORM,
        mapped_at_creation: false,
    });
    let made = fusedopt::GpuOptimizer::with_caller_scale(
        gpu,
        adamw,
        Precision::F32,
        &[piece],
        guard,
        fusedopt::CallerScale {
            scale: &uniform,
            found_inf: None,
        },
    );
    assert!(matches!(made, Err(fusedopt::Error::InvalidBuffer { .. })));
}
