//! Bad input gets a clear error, never a panic, and leaves what the caller had intact.

mod common;

use fusedopt::{
    Adadelta, Adagrad, Adam, BufferRange, CpuOptimizer, Error, GpuOptimizer, Optimizer, Rmsprop,
    Sgd,
};
use ndarray::{Array1, ArrayView1};

fn message(config: impl Into<Optimizer>) -> String {
    config.into().validate().unwrap_err().to_string()
}

#[test]
fn invalid_hyperparameters_are_rejected_naming_parameter_and_value() {
    let cases: Vec<(Optimizer, &str)> = vec![
        (
            Sgd {
                lr: -0.1,
                ..Sgd::default()
            }
            .into(),
            "invalid lr: -0.1",
        ),
        (
            Sgd {
                momentum: -1.0,
                ..Sgd::default()
            }
            .into(),
            "invalid momentum: -1",
        ),
        (
            Sgd {
                weight_decay: -1.0,
                ..Sgd::default()
            }
            .into(),
            "invalid weight_decay: -1",
        ),
        (
            Adagrad {
                lr_decay: -1.0,
                ..Adagrad::default()
            }
            .into(),
            "invalid lr_decay: -1",
        ),
        (
            Adagrad {
                eps: -1e-10,
                ..Adagrad::default()
            }
            .into(),
            "invalid eps: -0.0000000001",
        ),
        (
            Adagrad {
                initial_accumulator_value: -0.1,
                ..Adagrad::default()
            }
            .into(),
            "invalid initial_accumulator_value: -0.1",
        ),
        (
            Rmsprop {
                alpha: -0.5,
                ..Rmsprop::default()
            }
            .into(),
            "invalid alpha: -0.5",
        ),
        (
            Rmsprop {
                momentum: -0.5,
                ..Rmsprop::default()
            }
            .into(),
            "invalid momentum: -0.5",
        ),
        (
            Adadelta {
                rho: 1.5,
                ..Adadelta::default()
            }
            .into(),
            "invalid rho: 1.5",
        ),
        (
            Adam {
                betas: (1.0, 0.999),
                ..Adam::default()
            }
            .into(),
            "invalid betas[0]: 1",
        ),
        (
            Adam {
                betas: (0.9, -0.1),
                ..Adam::default()
            }
            .into(),
            "invalid betas[1]: -0.1",
        ),
        (
            Adam {
                eps: -1.0,
                ..Adam::adamw()
            }
            .into(),
            "adamw: invalid eps: -1",
        ),
        (
            Adam {
                lr: f64::NAN,
                ..Adam::default()
            }
            .into(),
            "invalid lr: NaN",
        ),
    ];
    for (config, expected) in cases {
        let text = message(config.clone());
        assert!(
            text.contains(expected),
            "{config:?}: {text:?} should contain {expected:?}"
        );
    }
}

#[test]
fn nesterov_needs_momentum_and_no_dampening() {
    let text = message(Sgd {
        nesterov: true,
        ..Sgd::default()
    });
    assert!(
        text.contains("nesterov") && text.contains("momentum=0"),
        "{text}"
    );
    let text = message(Sgd {
        nesterov: true,
        momentum: 0.9,
        dampening: 0.1,
        ..Sgd::default()
    });
    assert!(text.contains("dampening=0.1"), "{text}");
    assert!(
        Sgd {
            nesterov: true,
            momentum: 0.9,
            ..Sgd::default()
        }
        .validate()
        .is_ok(),
        "valid"
    );
}

#[test]
fn torch_keyword_arguments_are_read_strictly() {
    let ok = Optimizer::from_torch(
        "AdamW",
        &serde_json::json!({"lr": 0.01, "betas": [0.8, 0.9], "amsgrad": true, "foreach": false}),
    )
    .unwrap();
    assert_eq!(
        ok,
        Optimizer::Adam(Adam {
            lr: 0.01,
            betas: (0.8, 0.9),
            amsgrad: true,
            ..Adam::adamw()
        })
    );
    let err = Optimizer::from_torch("adam", &serde_json::json!({"nesterov": true}))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unsupported hyperparameters: nesterov"),
        "{err}"
    );
    let err = Optimizer::from_torch("adam", &serde_json::json!({"betas": 0.9}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("betas must be a pair"), "{err}");
    let err = Optimizer::from_torch("lion", &serde_json::json!({}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown optimizer \"lion\""), "{err}");
    let err = Optimizer::from_torch("sgd", &serde_json::json!({"lr": -1}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid lr: -1"), "{err}");
}

#[test]
fn cpu_step_rejects_wrong_lengths_and_keeps_the_params() {
    let mut opt = CpuOptimizer::new(Adam::default(), 4).unwrap();
    let mut p = Array1::from(vec![1.0f32, 2.0, 3.0, 4.0]);
    let g = Array1::from(vec![0.1f32; 3]);
    let err = opt.step(p.view_mut(), g.view()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::LengthMismatch {
                expected: 4,
                got: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(p.to_vec(), [1.0, 2.0, 3.0, 4.0], "params untouched");
    assert_eq!(opt.step_count(), 0, "no step counted");
    let err = opt
        .step_with_lr(p.view_mut(), ArrayView1::from(&[0.1f32; 4]), -1.0)
        .unwrap_err();
    assert!(err.to_string().contains("invalid lr: -1"), "{err}");
}

#[test]
fn gpu_optimizer_rejects_unusable_buffers_with_a_reason() {
    let Some(gpu) = common::gpu() else { return };
    let params = gpu.upload("params", &[1.0; 128]).unwrap();
    let grads = gpu.upload("grads", &[1.0; 100]).unwrap();
    let err = GpuOptimizer::new(gpu, Adam::default(), &params, &grads).unwrap_err();
    assert!(
        matches!(
            err,
            Error::LengthMismatch {
                expected: 128,
                got: 100,
                ..
            }
        ),
        "{err}"
    );

    let uniform_only = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("not storage"),
        size: 512,
        usage: wgpu::BufferUsages::UNIFORM,
        mapped_at_creation: false,
    });
    let err = GpuOptimizer::new(gpu, Adam::default(), &uniform_only, &uniform_only)
        .unwrap_err()
        .to_string();
    assert!(err.contains("lacks") && err.contains("STORAGE"), "{err}");

    let misaligned = BufferRange {
        buffer: &params,
        offset: 1,
        len: 10,
    };
    let err = GpuOptimizer::new(gpu, Adam::default(), misaligned, misaligned)
        .unwrap_err()
        .to_string();
    assert!(err.contains("alignment"), "{err}");

    let outside = BufferRange {
        buffer: &params,
        offset: 0,
        len: 129,
    };
    let err = GpuOptimizer::new(gpu, Adam::default(), outside, outside)
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside"), "{err}");

    let empty = BufferRange {
        buffer: &params,
        offset: 0,
        len: 0,
    };
    let err = GpuOptimizer::new(gpu, Adam::default(), empty, empty)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least one element"), "{err}");

    let err = GpuOptimizer::new(
        gpu,
        Sgd {
            nesterov: true,
            ..Sgd::default()
        },
        &params,
        &params,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                optimizer: "sgd",
                ..
            }
        ),
        "{err}"
    );

    assert!(
        gpu.upload("empty", &[]).is_err(),
        "an empty upload is refused"
    );
    let err = gpu.download(&params, 100, 29).unwrap_err();
    assert!(matches!(err, Error::LengthMismatch { .. }), "{err}");
    let err = gpu.write(&params, 120, &[0.0; 9]).unwrap_err();
    assert!(matches!(err, Error::LengthMismatch { .. }), "{err}");
}

#[test]
fn buffers_beyond_the_device_limit_are_refused_before_allocation() {
    let Some(gpu) = common::gpu() else { return };
    let too_many = (gpu.limits().max_buffer_bytes / 4 + 1) as usize;
    let err = gpu.zeros("huge", too_many).unwrap_err();
    assert!(
        matches!(
            err,
            Error::LimitExceeded {
                limit_name: "max_buffer_size",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_rejected_step_changes_nothing() {
    let Some(gpu) = common::gpu() else { return };
    let start = [0.5f32, -1.0, 2.0];
    let params = gpu.upload("params", &start).unwrap();
    let grads = gpu.upload("grads", &[0.1, 0.2, 0.3]).unwrap();
    let mut opt = GpuOptimizer::new(gpu, Adam::default(), &params, &grads).unwrap();
    for lr in [-1.0, f64::NAN] {
        let err = opt.step_with_lr(gpu, lr).unwrap_err();
        assert!(err.to_string().contains("invalid lr"), "{err}");
    }
    assert_eq!(opt.step_count(), 0, "no step counted");
    assert_eq!(opt.read_params(gpu).unwrap(), start, "params untouched");
    assert!(
        opt.read_state(gpu)
            .unwrap()
            .iter()
            .all(|(_, s)| s.iter().all(|&x| x == 0.0)),
        "state untouched"
    );
    opt.step(gpu).unwrap();
    assert_eq!(opt.step_count(), 1, "a valid step still works afterwards");
    assert_ne!(opt.read_params(gpu).unwrap(), start, "and moves the params");
}

#[test]
fn bad_pieces_and_buffer_sets_are_errors() {
    let Some(mut gpu) = common::own_gpu() else {
        return;
    };
    let adam = Adam::default();
    assert!(matches!(
        GpuOptimizer::with_pieces(&gpu, adam.clone(), &[]),
        Err(Error::InvalidBuffer { .. })
    ));
    let a = gpu.zeros("a", 100).unwrap();
    let b = gpu.zeros("b", 99).unwrap();
    let piece = fusedopt::Piece {
        params: (&a).into(),
        grads: (&b).into(),
    };
    assert!(matches!(
        GpuOptimizer::with_pieces(&gpu, adam.clone(), &[piece]),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(fusedopt::BufferSet::zeros(&gpu, "empty", 0).is_err());
    let align = u64::from(gpu.limits().storage_offset_alignment);
    assert!(gpu.set_max_buffer_bytes(0).is_err());
    assert!(gpu.set_max_buffer_bytes(align + 4).is_err(), "unaligned");
    assert!(
        gpu.set_max_buffer_bytes(u64::MAX).is_err(),
        "past the device"
    );
    gpu.set_max_buffer_bytes(4 * align).unwrap();
    let set = fusedopt::BufferSet::zeros(&gpu, "small buffers", 1000).unwrap();
    assert!(set.buffers().len() > 1);
    let other = fusedopt::BufferSet::zeros(&gpu, "other", 999).unwrap();
    assert!(matches!(
        set.pieces(&other),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(set.write(&gpu, &[1.0; 3]).is_err(), "wrong length");
    assert!(
        gpu.upload("too big for one buffer", &[0.0; 1000]).is_err(),
        "a single buffer past the lowered limit is refused"
    );
}

#[test]
fn null_hyperparameters_and_a_nan_dampening_are_refused() {
    // JSON writers turn a NaN into null: a lost setting must not become the default.
    for (name, hyper) in [
        ("adam", serde_json::json!({"lr": null})),
        (
            "sgd",
            serde_json::json!({"momentum": 0.9, "dampening": null}),
        ),
        ("rmsprop", serde_json::json!({"alpha": null})),
    ] {
        let err = fusedopt::Optimizer::from_torch(name, &hyper).unwrap_err();
        assert!(err.to_string().contains("null"), "{name}: {err}");
    }
    let sgd = fusedopt::Sgd {
        momentum: 0.9,
        dampening: f64::NAN,
        ..fusedopt::Sgd::default()
    };
    assert!(matches!(
        fusedopt::Optimizer::from(sgd).validate(),
        Err(fusedopt::Error::InvalidHyperparameter {
            name: "dampening",
            ..
        })
    ));
}
