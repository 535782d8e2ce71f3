//! The API contract, probe by probe: each test is a misuse or an edge a caller can reach, and
//! what the library owes them then (a typed error, or the right numbers; never a wrong one).

mod common;

use std::time::Duration;

use fusedopt::testing::{RandomProblem, schedule};
use fusedopt::{
    Adam, BufferRange, CpuOptimizer, Error, GpuOptimizer, ModelLayout, ModelOptimizer, Optimizer,
    Piece, Sgd, TensorSpec,
};
use ndarray::{ArrayView1, ArrayViewMut1};

/// Steps `config` `steps` times on the CPU reference from `problem`'s start with the given
/// gradients and the validation schedule; returns the parameters.
fn cpu_run(config: &Optimizer, start: &[f32], grads: &[Vec<f32>]) -> Vec<f32> {
    let mut opt = CpuOptimizer::new(config.clone(), start.len()).unwrap();
    let mut p = start.to_vec();
    for (t, g) in grads.iter().enumerate() {
        let lr = schedule(config.lr(), t as u64 + 1);
        opt.step_with_lr(
            ArrayViewMut1::from(&mut p[..]),
            ArrayView1::from(&g[..]),
            lr,
        )
        .unwrap();
    }
    p
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    let stats = common::compare(got, want);
    assert!(stats.passed(), "{what}: {stats:?}");
}

/// Many steps recorded into one encoder before a single submit each see their own scalars
/// (step count, bias corrections, learning rate): the result is the CPU's after as many steps.
#[test]
fn any_number_of_steps_recorded_before_one_submit_are_exact() {
    let Some(gpu) = common::gpu() else { return };
    let config: Optimizer = Adam {
        lr: 1e-2,
        ..Adam::adamw()
    }
    .into();
    let n = 1000;
    let steps = 200;
    let mut problem = RandomProblem::new(n, 31);
    let grads: Vec<Vec<f32>> = (0..steps).map(|_| problem.next_grad()).collect();
    let params = gpu.upload("params", &problem.params).unwrap();
    let grad_buffers: Vec<wgpu::Buffer> = grads
        .iter()
        .map(|g| gpu.upload("grads", g).unwrap())
        .collect();
    // One optimizer per gradient buffer would split the state; instead copy each step's
    // gradient into the bound buffer inside the same encoder, as a backward pass would write it.
    let bound = gpu.zeros("bound grads", n).unwrap();
    let mut opt = GpuOptimizer::new(gpu, config.clone(), &params, &bound).unwrap();
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    for (t, g) in grad_buffers.iter().enumerate() {
        encoder.copy_buffer_to_buffer(g, 0, &bound, 0, (n * 4) as u64);
        let lr = schedule(config.lr(), t as u64 + 1);
        opt.record_step_with_lr(gpu, &mut encoder, lr).unwrap();
    }
    gpu.queue().submit([encoder.finish()]);
    assert_eq!(opt.step_count(), steps as u64);
    let want = cpu_run(&config, &problem.params, &grads);
    assert_close(
        &opt.read_params(gpu).unwrap(),
        &want,
        "200 steps in one submission",
    );
}

/// A buffer made on another device is refused when the optimizer is built, naming the
/// tensor; nothing is stepped and nothing panics.
#[test]
fn buffers_of_another_device_are_refused() {
    let (Some(here), Some(there)) = (common::own_gpu(), common::own_gpu()) else {
        return;
    };
    // Two buffers on each device, so that ids on one device are also valid on the other.
    let local_params = here.upload("local params", &[1.0; 64]).unwrap();
    let local_grads = here.upload("local grads", &[0.5; 64]).unwrap();
    let foreign_params = there.upload("foreign params", &[2.0; 64]).unwrap();
    let foreign_grads = there.upload("foreign grads", &[0.25; 64]).unwrap();
    for (params, grads, what) in [
        (&foreign_params, &local_grads, "params"),
        (&local_params, &foreign_grads, "grads"),
        (&foreign_params, &foreign_grads, "params"),
    ] {
        let err = GpuOptimizer::new(&here, Sgd::default(), params, grads).unwrap_err();
        assert!(
            matches!(&err, Error::ForeignBuffer { what: w, .. } if w == what),
            "{what}: {err:?}"
        );
    }
    assert_eq!(here.download(&local_params, 0, 64).unwrap(), [1.0; 64]);
    assert_eq!(there.download(&foreign_params, 0, 64).unwrap(), [2.0; 64]);
    // A device made for another set of backends than the environment's is still one of
    // fusedopt's, from the same instance.
    let environment = fusedopt::GpuOptions::from_env().backends;
    let backends = if environment == wgpu::Backends::all() {
        wgpu::Backends::from(here.adapter_info().backend)
    } else {
        wgpu::Backends::all()
    };
    let options = fusedopt::GpuOptions {
        backends,
        adapter_name: None,
    };
    let alone = fusedopt::Gpu::new_with(&options).unwrap();
    let err = GpuOptimizer::new(&alone, Sgd::default(), &local_params, &local_grads).unwrap_err();
    assert!(matches!(&err, Error::ForeignBuffer { .. }), "{err:?}");
    // An optimizer is stepped on the device it was made on, not through another's context.
    let mut opt = GpuOptimizer::new(&here, Sgd::default(), &local_params, &local_grads).unwrap();
    let err = opt.step(&there).unwrap_err();
    assert!(matches!(&err, Error::InvalidSetting { .. }), "{err:?}");
    assert_eq!(opt.step_count(), 0, "nothing counted");
    // A buffer of this device that is unusable for another reason is not called foreign.
    let destroyed = here.upload("destroyed grads", &[0.5; 64]).unwrap();
    destroyed.destroy();
    let err = GpuOptimizer::new(&here, Sgd::default(), &local_params, &destroyed).unwrap_err();
    assert!(matches!(err, Error::Wgpu { .. }), "{err:?}");
}

/// Parameters and gradients in one buffer, or pieces that overlap, are refused at
/// construction with a reason; the caller's encoder is not spoiled.
#[test]
fn aliased_and_overlapping_ranges_are_refused() {
    let Some(gpu) = common::gpu() else { return };
    let align = (gpu.limits().storage_offset_alignment / 4) as u64;
    let n = 4 * align as usize;
    let shared = gpu.upload("shared", &vec![1.0; 2 * n]).unwrap();
    let other = gpu.upload("other", &vec![0.5; 2 * n]).unwrap();
    let range = |buffer, offset: u64, len| BufferRange {
        buffer,
        offset,
        len,
    };
    let refused = |result: fusedopt::Result<GpuOptimizer>, words: &[&str], case: &str| {
        let err = result.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, Error::InvalidBuffer { .. }),
            "{case}: {err:?}"
        );
        for w in words {
            assert!(text.contains(w), "{case}: {text:?} should say {w:?}");
        }
    };
    refused(
        GpuOptimizer::new(gpu, Adam::default(), &shared, &shared),
        &["same buffer"],
        "aliased",
    );
    refused(
        GpuOptimizer::new(
            gpu,
            Adam::default(),
            range(&shared, 0, n),
            range(&shared, n as u64, n),
        ),
        &["same buffer"],
        "disjoint halves",
    );
    let piece = |p, g| Piece {
        params: p,
        grads: g,
    };
    refused(
        GpuOptimizer::with_pieces(
            gpu,
            Adam::default(),
            &[
                piece(range(&shared, 0, n), range(&other, 0, n)),
                piece(range(&shared, align, n), range(&other, n as u64, n)),
            ],
        ),
        &["overlap"],
        "overlapping params",
    );
    refused(
        GpuOptimizer::with_pieces(
            gpu,
            Adam::default(),
            &[
                piece(range(&shared, 0, n), range(&other, 0, n)),
                piece(range(&other, 0, n), range(&shared, n as u64, n)),
            ],
        ),
        &["overlap"],
        "params of one piece are the grads of another",
    );
    // Disjoint pieces of one buffer are fine, and the encoder used around the refusals works.
    let mut opt = GpuOptimizer::with_pieces(
        gpu,
        Sgd {
            lr: 1.0,
            ..Sgd::default()
        },
        &[
            piece(range(&shared, 0, n), range(&other, 0, n)),
            piece(range(&shared, n as u64, n), range(&other, n as u64, n)),
        ],
    )
    .unwrap();
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    opt.record_step(gpu, &mut encoder).unwrap();
    gpu.queue().submit([encoder.finish()]);
    assert_eq!(opt.read_params(gpu).unwrap(), vec![0.5; 2 * n]);
}

/// A wait that times out leaves the step counted (the GPU runs it anyway): the next step is
/// the second, as on the CPU.
#[test]
fn a_timed_out_step_keeps_its_count() {
    let Some(mut gpu) = common::own_gpu() else {
        return;
    };
    let config: Optimizer = Adam::default().into();
    let n = 1 << 22;
    let mut problem = RandomProblem::new(n, 5);
    let grads = [problem.next_grad(), problem.next_grad()];
    let params = gpu.upload("params", &problem.params).unwrap();
    let grad_buffer = gpu.upload("grads", &grads[0]).unwrap();
    let mut opt = GpuOptimizer::new(&gpu, config.clone(), &params, &grad_buffer).unwrap();
    gpu.set_timeout(Duration::ZERO);
    let first = opt.step_with_lr(&gpu, schedule(config.lr(), 1));
    gpu.set_timeout(Duration::from_secs(300));
    // wgpu's GL backend has finished the work by the time submission returns, so only the
    // other backends can time out here; on them, a zero timeout must expire.
    if gpu.adapter_info().backend != wgpu::Backend::Gl {
        assert!(
            matches!(first, Err(Error::Timeout(_))),
            "a zero timeout expires before {n} elements are stepped: {first:?}"
        );
    } else {
        assert!(
            matches!(first, Ok(()) | Err(Error::Timeout(_))),
            "{first:?}"
        );
    }
    assert_eq!(opt.step_count(), 1, "the submitted step is counted");
    gpu.write(&grad_buffer, 0, &grads[1]).unwrap();
    opt.step_with_lr(&gpu, schedule(config.lr(), 2)).unwrap();
    let want = cpu_run(&config, &problem.params, &grads);
    assert_close(
        &opt.read_params(&gpu).unwrap(),
        &want,
        "second step after a timeout",
    );
}

/// A model step that fails before it runs changes no group's step count and no parameter.
#[test]
fn a_failed_model_step_changes_nothing() {
    let Some(gpu) = common::gpu() else { return };
    let tensors = [TensorSpec::new("w", &[32, 8]), TensorSpec::new("b", &[32])];
    let layout = ModelLayout::new(
        &tensors,
        2,
        |t| usize::from(t.shape.len() < 2),
        ModelLayout::device_alignment(gpu),
    )
    .unwrap();
    let start: Vec<f32> = (0..layout.len()).map(|i| i as f32 * 0.01).collect();
    let params = gpu.upload("params", &start).unwrap();
    let grads = gpu.upload("grads", &vec![0.1; layout.len()]).unwrap();
    let configs: Vec<Optimizer> = vec![Adam::adamw().into(), Adam::default().into()];
    let mut opt = ModelOptimizer::new(
        gpu,
        layout,
        BufferRange::whole(&params),
        BufferRange::whole(&grads),
        &configs,
    )
    .unwrap();
    // One group's learning rate is refused: nothing is recorded for any group.
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    let err = opt
        .record_step_with_lrs(gpu, &mut encoder, &[1e-2, -1.0])
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidHyperparameter { .. }),
        "{err:?}"
    );
    gpu.queue().submit([encoder.finish()]);
    assert_eq!(
        opt.read_params(gpu).unwrap(),
        start,
        "no group was recorded"
    );
    // The submission is refused: no group counts the step.
    grads.destroy();
    assert!(
        opt.step(gpu).is_err(),
        "a destroyed gradient buffer fails the step"
    );
    let counts: Vec<u64> = opt.groups().iter().map(GpuOptimizer::step_count).collect();
    assert_eq!(counts, [0, 0], "no group counts a step that did not run");
    assert_eq!(opt.read_params(gpu).unwrap(), start, "params untouched");
}

/// Layout arithmetic that would overflow is an error, never a wrapped offset or a panic.
#[test]
fn layout_arithmetic_is_checked() {
    let huge = [TensorSpec::new("a", &[usize::MAX - 3])];
    assert!(
        ModelLayout::new(&huge, 1, |_| 0, 64).is_err(),
        "past usize after padding"
    );
    let wraps = [TensorSpec::new("a", &[1 << 33, (1 << 31) + 1])];
    assert!(
        ModelLayout::new(&wraps, 1, |_| 0, 64).is_err(),
        "numel wraps"
    );
    let two = [
        TensorSpec::new("a", &[usize::MAX / 2]),
        TensorSpec::new("b", &[usize::MAX / 2]),
    ];
    assert!(
        ModelLayout::new(&two, 1, |_| 0, 1).is_err(),
        "the sum overflows"
    );
    let small = [TensorSpec::new("a", &[3])];
    assert!(
        ModelLayout::new(&small, usize::MAX, |_| 0, 4).is_err(),
        "absurd group count"
    );
    assert!(
        ModelLayout::new(&small, 1, |_| 0, usize::MAX).is_err(),
        "absurd alignment"
    );
}

/// After the device is lost (here destroyed), every call says so, not what broke inside wgpu
/// as a consequence.
#[test]
fn a_lost_device_is_named_in_every_later_error() {
    let Some(gpu) = common::own_gpu() else { return };
    let params = gpu.upload("p2", &[1.0; 256]).unwrap();
    let grads = gpu.upload("g2", &[0.5; 256]).unwrap();
    let mut opt = GpuOptimizer::new(&gpu, Adam::default(), &params, &grads).unwrap();
    opt.step(&gpu).unwrap();
    gpu.device().destroy();
    for attempt in 0..3 {
        let err = match attempt {
            0 => opt.step(&gpu).unwrap_err(),
            1 => opt.read_params(&gpu).unwrap_err(),
            _ => gpu.upload("after", &[1.0; 4]).unwrap_err(),
        };
        assert!(
            matches!(err, Error::DeviceLost(_)),
            "attempt {attempt}: {err:?}"
        );
        assert!(err.to_string().contains("every later call"), "{err}");
    }
}

/// A large new buffer holds zeros from end to end, on every backend: on GL, where an
/// allocation the driver cannot back is not reported, `zeros` proves the buffer keeps writes
/// to its ends first, and must leave them zero again.
#[test]
fn a_large_buffer_is_zero_at_both_ends_after_its_check() {
    let Some(gpu) = common::gpu() else { return };
    let len = (24 << 20) / 4 + 3;
    let buffer = gpu.zeros("large", len).unwrap();
    for at in [0, 1, len as u64 / 2, len as u64 - 2, len as u64 - 1] {
        assert_eq!(gpu.download(&buffer, at, 1).unwrap(), [0.0], "element {at}");
    }
}

/// A count set to `u64::MAX` has no next step: wrapping to 0 would divide by `1 − β^0 = 0` in
/// Adam's bias corrections. Both paths refuse it and change nothing.
#[test]
fn a_step_past_the_last_count_is_refused_not_wrapped() {
    let config: Optimizer = Adam::default().into();
    let start = [0.5f32, -0.25, 2.0];
    let grads = [0.1f32, 0.2, -0.3];
    let mut cpu = CpuOptimizer::new(config.clone(), start.len()).unwrap();
    cpu.set_step_count(u64::MAX);
    let mut p = start;
    let err = cpu
        .step(
            ArrayViewMut1::from(&mut p[..]),
            ArrayView1::from(&grads[..]),
        )
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSetting { .. }), "{err}");
    assert_eq!(p, start);
    assert_eq!(cpu.step_count(), u64::MAX);

    let Some(gpu) = common::gpu() else { return };
    let params = gpu.upload("test/params", &start).unwrap();
    let g = gpu.upload("test/grads", &grads).unwrap();
    let mut opt = GpuOptimizer::new(gpu, config, &params, &g).unwrap();
    opt.set_step_count(u64::MAX);
    assert!(matches!(opt.step(gpu), Err(Error::InvalidSetting { .. })));
    assert_eq!(opt.step_count(), u64::MAX);
    assert_eq!(opt.read_params(gpu).unwrap(), start);
}

/// An optimizer rebound to other buffers between steps (a framework that hands out a new
/// gradient buffer every step, or moves a parameter) keeps its state and count: the result is
/// the same, bit for bit, as one that stayed on one pair of buffers. A rebind that cannot be
/// taken is an error and leaves the old buffers bound.
#[test]
fn a_rebound_optimizer_keeps_its_state() {
    let Some(gpu) = common::gpu() else { return };
    let n = 1000;
    let start: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
    let grads: Vec<Vec<f32>> = (0..4)
        .map(|t| (0..n).map(|i| ((i * 7 + t) as f32 * 0.11).cos()).collect())
        .collect();
    let config: Optimizer = Adam {
        weight_decay: 0.01,
        ..Adam::adamw()
    }
    .into();

    // One pair of buffers throughout.
    let params = gpu.upload("test/params", &start).unwrap();
    let g = gpu.zeros("test/grads", n).unwrap();
    let mut still = GpuOptimizer::new(gpu, config.clone(), &params, &g).unwrap();
    for grad in &grads {
        gpu.write(&g, 0, grad).unwrap();
        still.step(gpu).unwrap();
    }
    let want = gpu.download(&params, 0, n).unwrap();

    // New gradient buffers every step, and the parameters moved after two steps (to an
    // offset inside a larger buffer).
    let params_a = gpu.upload("test/params a", &start).unwrap();
    let first_grads = gpu.zeros("test/grads 0", n).unwrap();
    let mut moving = GpuOptimizer::new(gpu, config, &params_a, &first_grads).unwrap();
    let align = (gpu.limits().storage_offset_alignment / 4) as usize;
    let params_b = gpu.zeros("test/params b", align + n).unwrap();
    let mut current: (&wgpu::Buffer, u64) = (&params_a, 0);
    let mut last: Option<wgpu::Buffer> = None;
    for (t, grad) in grads.iter().enumerate() {
        if t == 2 {
            let moved = gpu.download(&params_a, 0, n).unwrap();
            gpu.write(&params_b, align as u64, &moved).unwrap();
            current = (&params_b, align as u64);
        }
        // The last step on the buffers of the one before: a rebind to where it is bound.
        let fresh = match last.take() {
            Some(same) if t == 3 => {
                gpu.write(&same, 0, grad).unwrap();
                same
            }
            _ => gpu.upload("test/grads t", grad).unwrap(),
        };
        let piece = Piece {
            params: BufferRange {
                buffer: current.0,
                offset: current.1,
                len: n,
            },
            grads: BufferRange::whole(&fresh),
        };
        moving.rebind(gpu, &[piece]).unwrap();
        moving.step(gpu).unwrap();
        last = Some(fresh);
    }
    assert_eq!(moving.step_count(), 4);
    assert_eq!(gpu.download(&params_b, align as u64, n).unwrap(), want);

    // Refused, and the old binding stays: a piece of another length, parameters and
    // gradients in one buffer.
    let short = gpu.zeros("test/short", n - 1).unwrap();
    let bad = Piece {
        params: BufferRange::whole(&short),
        grads: BufferRange::whole(&first_grads),
    };
    assert!(matches!(
        moving.rebind(gpu, &[bad]),
        Err(Error::InvalidSetting { .. })
    ));
    let aliased = Piece {
        params: BufferRange::whole(&params_a),
        grads: BufferRange::whole(&params_a),
    };
    assert!(moving.rebind(gpu, &[aliased]).is_err());
    let before = gpu.download(&params_b, align as u64, n).unwrap();
    moving.step(gpu).unwrap();
    assert_ne!(gpu.download(&params_b, align as u64, n).unwrap(), before);
}
