//! Parameter sets of any size: several buffers past `max_buffer_size`, several bindings past
//! `max_storage_buffer_binding_size`, two-dimensional dispatches past 65,535 workgroups, and
//! sub-ranges stepped on their own (sharding) giving the numbers of the whole.

mod common;

use fusedopt::reference::Execution;
use fusedopt::testing::{RandomProblem, gpu_against_cpu, schedule};
use fusedopt::{BufferRange, BufferSet, CpuOptimizer, GpuOptimizer, Optimizer, Tolerance};
use ndarray::{ArrayView1, ArrayViewMut1};

/// With 1 MiB buffers and 64 KiB chunks a set spans four buffers of sixteen chunks each; every
/// element, including both sides of every buffer and chunk border and the last partial chunk,
/// must match the reference after every step.
#[test]
fn sets_past_max_buffer_size_span_several_buffers() {
    let Some(mut gpu) = common::own_gpu() else {
        return;
    };
    gpu.set_max_chunk_bytes(64 << 10).unwrap();
    gpu.set_max_buffer_bytes(1 << 20).unwrap();
    let per_buffer = (1 << 20) / 4;
    let chunk = (64 << 10) / 4;
    let size = 3 * per_buffer + 5 * chunk + 1001;
    for config in common::fullest_configs() {
        let report = gpu_against_cpu(&gpu, &config, size, 2, 5, &Tolerance::F32).unwrap();
        assert!(
            report.overall().passed(),
            "{}: {:?}",
            config.name(),
            report.tensors
        );
        assert_eq!(report.tensors[0].1.compared, 2 * size as u64);
    }

    // The borders, explicitly, with poisoned parameters: a border element left unwritten
    // keeps a value no step produces.
    let config = Optimizer::default_for("adam").unwrap();
    let mut problem = RandomProblem::new(size, 9);
    let params = BufferSet::upload(&gpu, "params", &problem.params).unwrap();
    assert_eq!(
        params.buffers().len(),
        4,
        "three full buffers and a partial one"
    );
    let g = problem.next_grad();
    let grads = BufferSet::upload(&gpu, "grads", &g).unwrap();
    let mut opt =
        GpuOptimizer::with_pieces(&gpu, config.clone(), &params.pieces(&grads).unwrap()).unwrap();
    assert_eq!(
        opt.dispatches_per_step(),
        3 * 16 + 6,
        "sixteen chunks per full buffer"
    );
    opt.step(&gpu).unwrap();
    let mut expected = problem.params.clone();
    CpuOptimizer::new(config, size)
        .unwrap()
        .step(
            ArrayViewMut1::from(&mut expected[..]),
            ArrayView1::from(&g[..]),
        )
        .unwrap();
    let got = opt.read_params(&gpu).unwrap();
    assert_eq!(
        got,
        params.download(&gpu).unwrap(),
        "read_params reads every piece"
    );
    let borders = (1..size / chunk).map(|k| k * chunk).chain([size - 1]);
    for border in borders {
        for i in [border - 1, border] {
            assert!(
                Tolerance::F32.ratio(got[i], expected[i]) <= 1.0,
                "element {i}: {} against {}",
                got[i],
                expected[i]
            );
            if g[i] != 0.0 {
                assert_ne!(got[i], problem.params[i], "element {i} was stepped");
            }
        }
    }
}

/// A genuine buffer larger than 128 MiB on whatever adapter runs the tests: 40 M parameters
/// (160 MB) need more than one binding on the software adapters (128 MiB) and more than 65,535
/// workgroups in a dispatch.
#[test]
fn a_buffer_past_128_mib_is_stepped_whole() {
    let Some(gpu) = common::gpu() else { return };
    let size = 40_000_000;
    let config = Optimizer::default_for("adam").unwrap();
    let mut problem = RandomProblem::new(size, 3);
    let params = gpu.upload("params", &problem.params).unwrap();
    assert!(params.size() > 128 << 20);
    let g = problem.next_grad();
    let grads = gpu.upload("grads", &g).unwrap();
    let mut opt = GpuOptimizer::new(gpu, config.clone(), &params, &grads).unwrap();
    if gpu.limits().chunk_bytes < params.size() {
        assert!(opt.dispatches_per_step() >= 2, "split into bindings");
    }
    assert!(
        size / 256 > 65_535,
        "more workgroups than one dimension holds"
    );
    opt.step(gpu).unwrap();
    let mut expected = problem.params.clone();
    CpuOptimizer::new(config, size)
        .unwrap()
        .with_execution(Execution::Fast)
        .step(
            ArrayViewMut1::from(&mut expected[..]),
            ArrayView1::from(&g[..]),
        )
        .unwrap();
    let stats = common::compare(&opt.read_params(gpu).unwrap(), &expected);
    assert_eq!(stats.compared, size as u64);
    assert!(stats.passed(), "{stats:?}");
}

/// A data-parallel rank that owns a slice of the set (ZeRO-1 style) steps just that slice with
/// its own optimizer and state: the two halves stepped apart equal the whole stepped at once,
/// bit for bit, parameters and state.
#[test]
fn stepping_shards_apart_equals_stepping_the_whole() {
    let Some(gpu) = common::gpu() else { return };
    let align = gpu.limits().storage_offset_alignment as usize / 4;
    let size: usize = 100_003;
    let split = (size / 2).next_multiple_of(align);
    for config in common::fullest_configs() {
        let mut problem = RandomProblem::new(size, 21);
        let whole_params = gpu.upload("whole", &problem.params).unwrap();
        let shard_params = gpu.upload("shards", &problem.params).unwrap();
        let grads = gpu.zeros("grads", size).unwrap();
        let mut whole = GpuOptimizer::new(gpu, config.clone(), &whole_params, &grads).unwrap();
        let range = |buffer, offset: usize, len| BufferRange {
            buffer,
            offset: offset as u64,
            len,
        };
        let mut shards = [(0, split), (split, size - split)].map(|(offset, len)| {
            GpuOptimizer::new(
                gpu,
                config.clone(),
                range(&shard_params, offset, len),
                range(&grads, offset, len),
            )
            .unwrap()
        });
        for t in 1..=3 {
            gpu.write(&grads, 0, &problem.next_grad()).unwrap();
            let lr = schedule(config.lr(), t);
            whole.step_with_lr(gpu, lr).unwrap();
            for shard in &mut shards {
                shard.step_with_lr(gpu, lr).unwrap();
            }
        }
        let joined: Vec<f32> = shards
            .iter()
            .flat_map(|s| s.read_params(gpu).unwrap())
            .collect();
        assert_eq!(joined, whole.read_params(gpu).unwrap(), "{}", config.name());
        let whole_state = whole.read_state(gpu).unwrap();
        for (k, (name, values)) in whole_state.iter().enumerate() {
            let joined: Vec<f32> = shards
                .iter()
                .flat_map(|s| s.read_state(gpu).unwrap()[k].1.clone())
                .collect();
            assert_eq!(&joined, values, "{} {name}", config.name());
        }
    }
}
