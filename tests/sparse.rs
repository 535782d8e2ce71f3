//! Row-sparse steps of an embedding table: every sparse optimizer under every option set,
//! on the GPU against the CPU reference bit for bit over random lookups, heavy duplicates, the
//! first and last rows, no lookup and far more lookups than rows; lookups outside the table
//! skipped and counted on the GPU, refused on the CPU; bad settings refused.

mod common;

use fusedopt::golden::Recording;
use fusedopt::testing::{sparse_against_cpu, sparse_cases, sparse_golden_files};
use fusedopt::{
    Adagrad, BufferRange, CpuSparse, Error, ErrorStats, Gpu, SparseAdam, SparseGpuOptimizer,
    SparseOptimizer, Tolerance,
};

#[test]
fn every_sparse_optimizer_matches_the_cpu_reference_bit_for_bit() {
    let Some(gpu) = common::gpu() else { return };
    for config in SparseOptimizer::variants() {
        for (k, case) in sparse_cases().iter().enumerate() {
            let report =
                sparse_against_cpu(gpu, &config, case, 4, 40 + k as u64, &Tolerance::EXACT)
                    .unwrap_or_else(|e| panic!("{} {}: {e}", config.name(), case.name));
            assert_eq!(report.len(), 1 + config.state_init().len());
            for (tensor, stats) in &report {
                assert!(stats.compared > 0, "{tensor} compared");
                assert!(
                    stats.passed(),
                    "{} [{}] {}: {tensor} differs: {stats:?}",
                    config.name(),
                    config.describe(),
                    case.name
                );
            }
        }
    }
}

#[test]
fn the_pytorch_recordings_agree_on_every_row_after_every_step() {
    for file in sparse_golden_files() {
        let Recording::Sparse(traj) = Recording::load(&file).unwrap() else {
            panic!("{} is format 3", file.display())
        };
        let per_run = (traj.steps * traj.rows * traj.dim) as u64;
        let cpu = traj.check_cpu(&Tolerance::F32).unwrap();
        assert_eq!(cpu.compared, per_run, "every row of every step");
        assert!(cpu.passed(), "{}: cpu {cpu:?}", file.display());
        let Some(gpu) = common::gpu() else { continue };
        let on_gpu = traj.check_gpu(gpu, &Tolerance::F32).unwrap();
        assert_eq!(on_gpu.compared, per_run);
        assert!(on_gpu.passed(), "{}: gpu {on_gpu:?}", file.display());
        // The recording moves rows: a kernel that left the table alone would fail.
        let unchanged = ErrorStats::default();
        let mut still = unchanged;
        still.add(
            &Tolerance::F32,
            1,
            &traj.params0,
            traj.expected(traj.steps - 1),
        );
        assert!(!still.passed(), "{} moves the table", file.display());
    }
}

/// A table at an aligned offset between NaN guards, with its lookups' buffers.
struct Fixture {
    table: wgpu::Buffer,
    indices: wgpu::Buffer,
    values: wgpu::Buffer,
    guard: usize,
    rows: usize,
    dim: usize,
}

impl Fixture {
    fn new(gpu: &Gpu, rows: usize, dim: usize, capacity: usize) -> (Self, Vec<f32>) {
        let guard = (gpu.limits().storage_offset_alignment / 4) as usize;
        let start: Vec<f32> = (0..rows * dim).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut poisoned = vec![f32::NAN; guard];
        poisoned.extend(&start);
        poisoned.extend(vec![f32::NAN; guard]);
        let fixture = Self {
            table: gpu.upload("test/table", &poisoned).unwrap(),
            indices: gpu.zeros("test/indices", capacity).unwrap(),
            values: gpu.zeros("test/values", capacity * dim).unwrap(),
            guard,
            rows,
            dim,
        };
        (fixture, start)
    }

    fn range(&self) -> BufferRange<'_> {
        BufferRange {
            buffer: &self.table,
            offset: self.guard as u64,
            len: self.rows * self.dim,
        }
    }

    fn optimizer(
        &self,
        gpu: &Gpu,
        config: SparseOptimizer,
    ) -> fusedopt::Result<SparseGpuOptimizer> {
        SparseGpuOptimizer::new(
            gpu,
            config,
            self.range(),
            self.dim,
            &self.indices,
            &self.values,
        )
    }

    fn lookups(&self, gpu: &Gpu, indices: &[u32], values: &[f32]) {
        gpu.queue()
            .write_buffer(&self.indices, 0, bytemuck::cast_slice(indices));
        gpu.write(&self.values, 0, values).unwrap();
    }

    fn guards_intact(&self, gpu: &Gpu) -> bool {
        let all = gpu
            .download(&self.table, 0, self.rows * self.dim + 2 * self.guard)
            .unwrap();
        all[..self.guard].iter().all(|x| x.is_nan())
            && all[all.len() - self.guard..].iter().all(|x| x.is_nan())
    }
}

#[test]
fn lookups_outside_the_table_are_skipped_and_counted_on_the_gpu_and_refused_on_the_cpu() {
    let Some(gpu) = common::gpu() else { return };
    let (rows, dim) = (10, 4);
    let (fixture, start) = Fixture::new(gpu, rows, dim, 6);
    let config = SparseOptimizer::Adagrad(Adagrad {
        lr: 0.5,
        ..Adagrad::default()
    });
    let mut opt = fixture.optimizer(gpu, config.clone()).unwrap();
    // Rows 10 and u32::MAX lie outside; -1 as i32 reads as u32::MAX.
    let indices = [3, 10, 9, u32::MAX, 3, (-1i32) as u32];
    let values: Vec<f32> = (0..6 * dim).map(|i| 0.25 + i as f32 * 0.5).collect();
    fixture.lookups(gpu, &indices, &values);
    opt.step(gpu, indices.len()).unwrap();
    assert_eq!(opt.read_skipped(gpu).unwrap(), 3);
    assert!(
        fixture.guards_intact(gpu),
        "nothing written outside the table"
    );

    // The valid lookups alone, on the CPU, give the same table bit for bit.
    let keep: Vec<usize> = (0..6).filter(|&i| (indices[i] as usize) < rows).collect();
    let kept_indices: Vec<u32> = keep.iter().map(|&i| indices[i]).collect();
    let kept_values: Vec<f32> = keep
        .iter()
        .flat_map(|&i| values[i * dim..(i + 1) * dim].iter().copied())
        .collect();
    let mut cpu = CpuSparse::new(config.clone(), start.clone(), dim).unwrap();
    cpu.step(&kept_indices, &kept_values).unwrap();
    assert_eq!(opt.read_table(gpu).unwrap(), cpu.table());
    assert_ne!(cpu.table(), &start[..], "rows 3 and 9 moved");

    // The CPU refuses the same lookups and changes nothing.
    let before = cpu.clone();
    for bad in [vec![3i64, 10], vec![-1], vec![i64::MAX]] {
        let err = cpu.step(&bad, &values[..bad.len() * dim]).unwrap_err();
        assert!(
            err.to_string().contains("outside") || err.to_string().contains("row"),
            "{err}"
        );
        assert_eq!(cpu.table(), before.table());
        assert_eq!(cpu.step_count(), before.step_count());
    }
    // Values of the wrong length: an error, nothing changed.
    assert!(cpu.step(&[1u32], &values[..dim - 1]).is_err());
    assert_eq!(cpu.table(), before.table());
}

#[test]
fn bad_settings_are_typed_errors_and_change_nothing() {
    let Some(gpu) = common::gpu() else { return };
    let (fixture, _) = Fixture::new(gpu, 10, 4, 6);
    let adagrad = |weight_decay| {
        SparseOptimizer::Adagrad(Adagrad {
            weight_decay,
            ..Adagrad::default()
        })
    };
    // PyTorch refuses weight decay on sparse gradients, and SparseAdam's lr of 0.
    assert!(matches!(
        fixture.optimizer(gpu, adagrad(0.1)),
        Err(Error::InvalidHyperparameter {
            name: "weight_decay",
            ..
        })
    ));
    assert!(matches!(
        fixture.optimizer(
            gpu,
            SparseAdam {
                lr: 0.0,
                ..SparseAdam::default()
            }
            .into()
        ),
        Err(Error::InvalidHyperparameter { name: "lr", .. })
    ));
    // A dim that does not divide the table, values too short for the indices.
    let config = adagrad(0.0);
    assert!(
        SparseGpuOptimizer::new(
            gpu,
            config.clone(),
            fixture.range(),
            3,
            &fixture.indices,
            &fixture.values
        )
        .is_err()
    );
    assert!(
        SparseGpuOptimizer::new(
            gpu,
            config.clone(),
            fixture.range(),
            0,
            &fixture.indices,
            &fixture.values
        )
        .is_err()
    );
    let short = BufferRange {
        buffer: &fixture.values,
        offset: 0,
        len: 5,
    };
    assert!(matches!(
        SparseGpuOptimizer::new(
            gpu,
            config.clone(),
            fixture.range(),
            4,
            &fixture.indices,
            short
        ),
        Err(Error::LengthMismatch { .. })
    ));
    // The table's buffer handed in as the indices.
    assert!(matches!(
        SparseGpuOptimizer::new(
            gpu,
            config.clone(),
            fixture.range(),
            4,
            &fixture.table,
            &fixture.values
        ),
        Err(Error::InvalidBuffer { .. }) | Err(Error::LengthMismatch { .. })
    ));
    // More lookups than the buffers hold, and a negative lr: refused, not counted.
    let mut opt = fixture.optimizer(gpu, config).unwrap();
    let before = opt.read_table(gpu).unwrap();
    assert!(matches!(
        opt.step(gpu, 7),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(opt.step_with_lr(gpu, 1, -1.0).is_err());
    assert_eq!(opt.step_count(), 0);
    assert_eq!(opt.read_table(gpu).unwrap(), before);
    // Names PyTorch does not have, and unknown keys, are refused.
    assert!(SparseOptimizer::from_torch("sparse_sgd", &serde_json::json!({})).is_err());
    assert!(SparseOptimizer::from_torch("adagrad", &serde_json::json!({"momentum": 0.9})).is_err());
}

#[test]
fn duplicates_are_summed_the_same_run_to_run_and_untouched_rows_stay() {
    let Some(gpu) = common::gpu() else { return };
    let dim = 3;
    let (fixture, start) = Fixture::new(gpu, 4, dim, 64);
    let config: SparseOptimizer = SparseAdam {
        lr: 0.1,
        ..SparseAdam::default()
    }
    .into();
    // 64 lookups of rows 1 and 2 with values that do not sum exactly in every order.
    let indices: Vec<u32> = (0..64).map(|i| 1 + (i * 7 % 3 == 0) as u32).collect();
    let values: Vec<f32> = (0..64 * dim).map(|i| 1.0 / (1.0 + i as f32)).collect();
    let mut tables = Vec::new();
    for run in 0..3 {
        gpu.write(&fixture.table, fixture.guard as u64, &start)
            .unwrap();
        let mut opt = fixture.optimizer(gpu, config.clone()).unwrap();
        fixture.lookups(gpu, &indices, &values);
        for _ in 0..=run {
            opt.step(gpu, indices.len()).unwrap();
        }
        tables.push((run, opt.read_table(gpu).unwrap()));
    }
    let mut again = Vec::new();
    for run in 0..3 {
        gpu.write(&fixture.table, fixture.guard as u64, &start)
            .unwrap();
        let mut opt = fixture.optimizer(gpu, config.clone()).unwrap();
        fixture.lookups(gpu, &indices, &values);
        for _ in 0..=run {
            opt.step(gpu, indices.len()).unwrap();
        }
        again.push((run, opt.read_table(gpu).unwrap()));
    }
    assert_eq!(tables, again, "the same bits run to run");
    // Rows 0 and 3 never looked up: untouched.
    let last = &tables[2].1;
    assert_eq!(&last[..dim], &start[..dim]);
    assert_eq!(&last[3 * dim..], &start[3 * dim..]);
    assert_ne!(&last[dim..3 * dim], &start[dim..3 * dim]);
}

#[test]
fn every_sparse_optimizer_reads_back_its_pytorch_arguments() {
    for config in SparseOptimizer::variants() {
        let back = SparseOptimizer::from_torch(config.name(), &config.to_torch()).unwrap();
        assert_eq!(back, config);
    }
}

#[test]
fn a_run_resumes_from_its_state_bit_for_bit() {
    let Some(gpu) = common::gpu() else { return };
    let (rows, dim, k) = (12, 5, 9);
    let indices: Vec<u32> = (0..k).map(|i| (i * 5 % rows) as u32).collect();
    let values: Vec<f32> = (0..k * dim).map(|i| (i as f32 * 0.61).cos()).collect();
    for config in SparseOptimizer::variants() {
        let (first, start) = Fixture::new(gpu, rows, dim, k);
        first.lookups(gpu, &indices, &values);
        let mut opt = first.optimizer(gpu, config.clone()).unwrap();
        for _ in 0..3 {
            opt.step(gpu, k).unwrap();
        }
        let table = opt.read_table(gpu).unwrap();
        let state = opt.read_state(gpu).unwrap();
        assert_ne!(
            table,
            start,
            "{}: three steps move the table",
            config.name()
        );

        // A second table resumed from the saved one, state and count.
        let (second, _) = Fixture::new(gpu, rows, dim, k);
        second.lookups(gpu, &indices, &values);
        gpu.write(&second.table, second.guard as u64, &table)
            .unwrap();
        let mut resumed = second.optimizer(gpu, config.clone()).unwrap();
        let saved: Vec<(&str, &[f32])> = state.iter().map(|(n, v)| (*n, &v[..])).collect();
        resumed.write_state(gpu, &saved).unwrap();
        resumed.set_step_count(opt.step_count());
        for _ in 0..2 {
            opt.step(gpu, k).unwrap();
            resumed.step(gpu, k).unwrap();
        }
        assert_eq!(
            resumed.read_table(gpu).unwrap(),
            opt.read_table(gpu).unwrap()
        );
        assert_eq!(
            resumed.read_state(gpu).unwrap(),
            opt.read_state(gpu).unwrap()
        );

        // Missing, doubled, unknown or short tensors: an error, nothing written.
        let before = resumed.read_state(gpu).unwrap();
        let (name, values) = saved[0];
        let mut doubled = saved.clone();
        doubled.push(saved[0]);
        let mut unknown = saved.clone();
        unknown.push(("momentum_buffer", values));
        let mut short = saved.clone();
        short[saved.len() - 1].1 = &values[1..];
        for bad in [&saved[1..], &doubled[..], &unknown[..], &short[..]] {
            let err = resumed.write_state(gpu, bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidSetting { .. } | Error::LengthMismatch { .. }
                ),
                "{name}: {err}"
            );
            assert_eq!(resumed.read_state(gpu).unwrap(), before);
        }
    }
}

#[test]
fn a_step_past_the_last_count_is_refused_not_wrapped() {
    let Some(gpu) = common::gpu() else { return };
    let (fixture, start) = Fixture::new(gpu, 4, 2, 2);
    fixture.lookups(gpu, &[1, 2], &[0.5, -0.5, 1.0, 2.0]);
    let mut opt = fixture
        .optimizer(gpu, SparseAdam::default().into())
        .unwrap();
    opt.set_step_count(u64::MAX);
    assert!(matches!(
        opt.step(gpu, 2),
        Err(Error::InvalidSetting { .. })
    ));
    assert_eq!(opt.step_count(), u64::MAX);
    assert_eq!(opt.read_table(gpu).unwrap(), start);
}
