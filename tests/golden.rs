//! The recorded PyTorch and optax trajectories in tests/golden (copied from the project's
//! shared reference folder; see tests/golden/README.md) through the CPU reference and the GPU
//! kernels, and the format read strictly (`cli/tests/check.rs` runs `fusedopt check`).

mod common;

use std::path::PathBuf;

use std::collections::HashMap;

use fusedopt::golden::Trajectory;
use fusedopt::testing::{RandomProblem, golden_files};
use fusedopt::{CpuOptimizer, Optimizer, Tolerance};
use ndarray::{ArrayView1, ArrayViewMut1};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

/// Values a check compares: every element of every step (parameters, and the master where
/// there is one), and each step's scale and skip under a scaler.
fn compared(traj: &Trajectory) -> u64 {
    let tensors = 1 + usize::from(traj.master.is_some());
    let scaler = if traj.scale.is_some() { 2 } else { 0 };
    (traj.steps * (traj.n * tensors + scaler)) as u64
}

#[test]
fn cpu_reference_follows_every_trajectory() {
    for file in golden_files() {
        let traj = Trajectory::load(&file).unwrap();
        let stats = traj.check_cpu(&Tolerance::F32).unwrap();
        assert_eq!(
            stats.compared,
            compared(&traj),
            "every element of every step, the master, scale and skip too"
        );
        assert!(stats.passed(), "{}: {stats:?}", file.display());
    }
}

#[test]
fn gpu_kernels_follow_every_trajectory() {
    let Some(gpu) = common::gpu() else { return };
    for file in golden_files() {
        let traj = Trajectory::load(&file).unwrap();
        let stats = traj.check_gpu(gpu, &Tolerance::F32).unwrap();
        assert_eq!(
            stats.compared,
            compared(&traj),
            "every element of every step, the master, scale and skip too"
        );
        assert!(stats.passed(), "{}: {stats:?}", file.display());
    }
}

/// Writes a trajectory file in the format of tests/golden/FORMAT.md.
fn write_trajectory(
    name: &str,
    metadata: HashMap<String, String>,
    traj: &Trajectory,
    params: &[f32],
) -> PathBuf {
    let as_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let tensors = [
        ("params0", as_bytes(&traj.params0), vec![traj.n]),
        ("grads", as_bytes(&traj.grads), vec![traj.steps, traj.n]),
        ("params", as_bytes(params), vec![traj.steps, traj.n]),
        ("lr", as_bytes(&traj.lr), vec![traj.steps]),
    ];
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, data, shape)| {
            (
                *k,
                TensorView::new(Dtype::F32, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    let out = std::env::temp_dir().join(format!(
        "fusedopt-test-{}-{name}.safetensors",
        std::process::id()
    ));
    safetensors::serialize_to_file(views, Some(metadata), &out).unwrap();
    out
}

/// Files of options, sizes and schedules that are not among the recorded ones: recorded here
/// with the CPU reference, written in the format, read back, and checked on the GPU.
#[test]
fn trajectories_of_other_options_sizes_and_schedules_are_accepted() {
    let cases = [
        (
            "sgd",
            r#"{"lr": 0.05, "momentum": 0.5, "dampening": 0.25, "weight_decay": 0.001, "maximize": true, "foreach": false}"#,
        ),
        (
            "adagrad",
            r#"{"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.01, "initial_accumulator_value": 0.2}"#,
        ),
        (
            "rmsprop",
            r#"{"lr": 0.01, "alpha": 0.95, "momentum": 0.8, "eps_in_sqrt": true, "maximize": true}"#,
        ),
        (
            "adadelta",
            r#"{"lr": 0.5, "rho": 0.8, "weight_decay": 0.1, "eps_in_sqrt": true}"#,
        ),
        (
            "adam",
            r#"{"lr": 0.003, "betas": [0.5, 0.9], "weight_decay": 0.02, "amsgrad": true, "maximize": true}"#,
        ),
        (
            "adamw",
            r#"{"lr": 0.003, "weight_decay": 0.1, "amsgrad": true, "eps_in_sqrt": true}"#,
        ),
    ];
    let gpu = common::gpu();
    for (k, (name, hyper)) in cases.into_iter().enumerate() {
        let optimizer = Optimizer::from_torch(name, &serde_json::from_str(hyper).unwrap()).unwrap();
        let (n, steps) = (777 + 100 * k, 7);
        let mut problem = RandomProblem::new(n, k as u64);
        let params0 = problem.params.clone();
        let grads: Vec<f32> = (0..steps).flat_map(|_| problem.next_grad()).collect();
        let lr: Vec<f32> = (1..=steps)
            .map(|t| (optimizer.lr() * (1.0 - 0.1 * t as f64)) as f32)
            .collect();
        let mut cpu = CpuOptimizer::new(optimizer.clone(), n).unwrap();
        let mut p = params0.clone();
        let mut recorded = Vec::new();
        for t in 0..steps {
            let g = ArrayView1::from(&grads[t * n..(t + 1) * n]);
            cpu.step_with_lr(ArrayViewMut1::from(&mut p[..]), g, f64::from(lr[t]))
                .unwrap();
            recorded.extend_from_slice(&p);
        }
        let metadata = HashMap::from([
            ("optimizer".to_string(), name.to_string()),
            ("hyper".to_string(), hyper.to_string()),
            ("steps".to_string(), steps.to_string()),
            ("n".to_string(), n.to_string()),
        ]);
        let template = Trajectory {
            optimizer: optimizer.clone(),
            n,
            steps,
            params0,
            grads,
            lr,
            params: vec![],
            ..trajectory_shell()
        };
        let file = write_trajectory(&format!("roundtrip-{name}"), metadata, &template, &recorded);
        let traj = Trajectory::load(&file).unwrap();
        let _ = std::fs::remove_file(&file);
        assert_eq!(
            traj.optimizer, optimizer,
            "{name}: hyperparameters read back"
        );
        assert!(
            traj.check_cpu(&Tolerance::F32).unwrap().passed(),
            "{name}: CPU"
        );
        if let Some(gpu) = gpu {
            let stats = traj.check_gpu(gpu, &Tolerance::F32).unwrap();
            assert!(
                stats.passed(),
                "{name} [{}]: GPU {stats:?}",
                optimizer.describe()
            );
        }
    }
}

fn trajectory_shell() -> Trajectory {
    Trajectory {
        path: String::new(),
        optimizer: Optimizer::default_for("sgd").unwrap(),
        description: String::new(),
        framework: String::new(),
        n: 0,
        steps: 0,
        params0: vec![],
        grads: vec![],
        params: vec![],
        lr: vec![],
        precision: fusedopt::Precision::F32,
        master0: None,
        master: None,
        guard: fusedopt::Guard::default(),
        scale: None,
    }
}

#[test]
fn a_scale_sequence_or_skip_that_differs_from_the_recording_fails() {
    let path = golden_files()
        .into_iter()
        .find(|p| p.ends_with("mp_adam_gradscaler.safetensors"))
        .expect("the GradScaler trajectory is in tests/golden/mixed");
    let good = Trajectory::load(&path).unwrap();
    let tol = Tolerance::F32;
    assert!(good.check_cpu(&tol).unwrap().passed());
    let (scales, skips) = good.scale.clone().unwrap();
    assert!(skips.iter().any(|s| *s), "the recording skips steps");
    let mut wrong_scale = good.clone();
    let mut tampered = scales.clone();
    tampered[5] *= 2.0;
    wrong_scale.scale = Some((tampered, skips.clone()));
    assert!(!wrong_scale.check_cpu(&tol).unwrap().passed());
    let mut wrong_skip = good.clone();
    let mut flipped = skips.clone();
    flipped[3] = !flipped[3];
    wrong_skip.scale = Some((scales, flipped));
    assert!(!wrong_skip.check_cpu(&tol).unwrap().passed());
    // Without the scaler the overflowing gradients reach the parameters.
    let mut unguarded = good.clone();
    unguarded.guard = fusedopt::Guard::default();
    unguarded.scale = None;
    assert!(!unguarded.check_cpu(&tol).unwrap().passed());
}

#[test]
fn malformed_files_are_rejected_with_the_reason() {
    let err = Trajectory::parse("x", b"not a safetensors file")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a safetensors file"), "{err}");
    let bad_scaler = fusedopt::LossScaler::from_json(&serde_json::json!({"growth_factor": 0.9}));
    assert!(bad_scaler.is_err());
    let err = Trajectory::load("/nonexistent/file.safetensors")
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/file.safetensors"), "{err}");
}

#[test]
fn a_huge_file_with_a_bad_header_is_refused_without_reading_it() {
    // A sparse 10 GB file: a header that does not describe it, then nothing.
    let path =
        std::env::temp_dir().join(format!("fusedopt-huge-{}.safetensors", std::process::id()));
    let header = br#"{"params0":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    std::fs::write(&path, &bytes).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(10 << 30)
        .unwrap();
    let start = std::time::Instant::now();
    let err = Trajectory::load(&path).unwrap_err().to_string();
    assert!(err.contains("header describes"), "{err}");
    assert!(
        start.elapsed().as_secs() < 2,
        "refused before reading 10 GB"
    );
    // A header length past the file.
    std::fs::write(&path, u64::MAX.to_le_bytes()).unwrap();
    let err = Trajectory::load(&path).unwrap_err().to_string();
    assert!(err.contains("a header of"), "{err}");
    // Data offsets that would overflow the size sum.
    let header =
        br#"{"params0":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551615]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    std::fs::write(&path, &bytes).unwrap();
    let err = Trajectory::load(&path).unwrap_err().to_string();
    assert!(err.contains("more than 2^64"), "{err}");
    // Shorter than a header's length, and a folder: each its own error, no panic.
    std::fs::write(&path, [1u8, 2, 3]).unwrap();
    let err = Trajectory::load(&path).unwrap_err().to_string();
    assert!(err.contains("3 bytes"), "{err}");
    assert!(Trajectory::load(std::env::temp_dir()).is_err());
    std::fs::remove_file(path).ok();
}
