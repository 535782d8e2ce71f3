//! What tests and tools share, behind the `testing` feature: the policy for GPU tests, the
//! option sets every kernel is validated under, seeded random problems, the GPU-against-CPU
//! run behind `fusedopt validate`, the repository's trajectories, and model shapes. Not part of
//! the API a training pipeline uses; the library's tests and the `fusedopt` tool turn it on.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::{ArrayView1, ArrayViewMut1};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use crate::compare::{ErrorStats, Tolerance};
use crate::error::{Error, Result};
use crate::gpu::{BufferRange, BufferSet, Gpu, GpuOptimizer, Piece, SparseGpuOptimizer};
use crate::model::TensorSpec;
use crate::optim::{Guard, LossScaler, Optimizer, Precision, SparseOptimizer};
use crate::reference::{CpuGuard, CpuOptimizer, CpuSparse, Execution};

/// Environment variable that turns a missing adapter from a failure into a skip.
pub const SKIP_VAR: &str = "FUSEDOPT_SKIP_GPU_TESTS";

/// The device shared by a test binary, or `None` (with a `TEST SKIPPED` line) when there is
/// no adapter and [`SKIP_VAR`] is set. Without it a missing adapter fails the test: a GPU test
/// never passes without a GPU.
pub fn gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<std::result::Result<Gpu, String>> = OnceLock::new();
    match GPU.get_or_init(|| Gpu::new().map_err(|e| e.to_string())) {
        Ok(gpu) => Some(gpu),
        Err(e) => no_adapter(e),
    }
}

/// A fresh device, for tests that change its settings, under the same policy as [`gpu`].
pub fn own_gpu() -> Option<Gpu> {
    match Gpu::new() {
        Ok(gpu) => Some(gpu),
        Err(e) => no_adapter(&e.to_string()),
    }
}

fn no_adapter<T>(error: &str) -> Option<T> {
    if std::env::var_os(SKIP_VAR).is_some() {
        eprintln!("TEST SKIPPED: no GPU adapter ({error}); {SKIP_VAR} is set");
        return None;
    }
    panic!(
        "no GPU adapter: {error}\n\
         GPU tests need an adapter. Without a GPU install Mesa's software Vulkan driver \
         (`apt-get install mesa-vulkan-drivers`) or run with WGPU_BACKEND=gl (llvmpipe). \
         To skip GPU tests instead, set {SKIP_VAR}=1."
    );
}

/// The reference trajectories in the repository's `tests/golden`, sorted.
pub fn golden_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let list = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect()
    };
    // Format 1 at the top, format 2 (16-bit precisions) in `mixed/`.
    let mut files = list(&dir);
    files.extend(list(&dir.join("mixed")));
    files.sort();
    assert!(
        files.len() >= 10,
        "the golden trajectories are in {}",
        dir.display()
    );
    files
}

/// The row-sparse trajectories (format 3) in the repository's `tests/golden/sparse`, sorted.
pub fn sparse_golden_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/sparse");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "the sparse trajectories are in {}",
        dir.display()
    );
    files
}

/// Every option combination that changes the arithmetic, for the optimizer called `name`,
/// with hyperparameters away from zero so that every term contributes.
pub fn variants(name: &str) -> Result<Vec<Optimizer>> {
    Ok(Optimizer::default_for(name)?.variants())
}

/// Seeded test data: parameters ~ N(0, 1); gradients N(0, 1) scaled per coordinate over four
/// decades, with about one in ten exactly zero.
#[derive(Debug)]
pub struct RandomProblem {
    rng: StdRng,
    scales: Vec<f32>,
    /// Initial parameters.
    pub params: Vec<f32>,
}

impl RandomProblem {
    /// A problem of `len` parameters from `seed`.
    pub fn new(len: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let params = (0..len).map(|_| rng.sample(StandardNormal)).collect();
        let scales = (0..len)
            .map(|_| 10f32.powf(rng.random_range(-3.0..1.0)))
            .collect();
        Self {
            rng,
            scales,
            params,
        }
    }

    /// The next gradient.
    pub fn next_grad(&mut self) -> Vec<f32> {
        let rng = &mut self.rng;
        self.scales
            .iter()
            .map(|s| {
                if rng.random_bool(0.1) {
                    0.0
                } else {
                    s * rng.sample::<f32, _>(StandardNormal)
                }
            })
            .collect()
    }
}

/// The learning rate of step `t` (1-based) in validation runs: a decaying schedule, so that
/// per-step learning rates are exercised.
pub fn schedule(base: f64, t: u64) -> f64 {
    base / (t as f64).sqrt()
}

/// Result of one GPU-against-CPU run.
#[derive(Clone, Debug)]
pub struct CaseReport {
    /// The configuration run.
    pub optimizer: Optimizer,
    /// Its storage precision.
    pub precision: Precision,
    /// Elements.
    pub size: usize,
    /// Worst errors per tensor: `param`, then each state tensor.
    pub tensors: Vec<(&'static str, ErrorStats)>,
}

impl CaseReport {
    /// All tensors merged.
    pub fn overall(&self) -> ErrorStats {
        let mut all = ErrorStats::default();
        for (_, s) in &self.tensors {
            all.merge(s);
        }
        all
    }
}

/// Runs `config` for `steps` steps on the GPU and on the CPU reference from the same seeded
/// data, comparing parameters and every state tensor after each step. The parameters live in a
/// [`BufferSet`], so sizes past `max_buffer_size` work; the CPU side runs the reference's code
/// on all threads ([`Execution::Fast`], bit-identical to [`Execution::Reference`]).
pub fn gpu_against_cpu(
    gpu: &Gpu,
    config: &Optimizer,
    size: usize,
    steps: u64,
    seed: u64,
    tol: &Tolerance,
) -> Result<CaseReport> {
    let mut problem = RandomProblem::new(size, seed);
    let mut cpu_params = problem.params.clone();
    let params = BufferSet::upload(gpu, "validate/params", &problem.params)?;
    let grads = BufferSet::zeros(gpu, "validate/grads", size)?;
    let mut gpu_opt = GpuOptimizer::with_pieces(gpu, config.clone(), &params.pieces(&grads)?)?;
    let mut cpu_opt = CpuOptimizer::new(config.clone(), size)?.with_execution(Execution::Fast);
    let mut tensors = tensor_stats(config);
    for t in 1..=steps {
        let g = problem.next_grad();
        let lr = schedule(config.lr(), t);
        grads.write(gpu, &g)?;
        gpu_opt.step_with_lr(gpu, lr)?;
        cpu_opt.step_with_lr(
            ArrayViewMut1::from(&mut cpu_params[..]),
            ArrayView1::from(&g[..]),
            lr,
        )?;
        tensors[0]
            .1
            .add(tol, t, &gpu_opt.read_params(gpu)?, &cpu_params);
        let gpu_state = gpu_opt.read_state(gpu)?;
        for ((_, stats), ((_, got), (_, want))) in tensors[1..]
            .iter_mut()
            .zip(gpu_state.iter().zip(cpu_opt.state()))
        {
            stats.add(tol, t, got, want.as_slice().expect("contiguous state"));
        }
    }
    Ok(CaseReport {
        optimizer: config.clone(),
        precision: Precision::F32,
        size,
        tensors,
    })
}

/// [`gpu_against_cpu`] in `precision`. In a 16-bit precision the seeded parameters and each
/// gradient are rounded to the format, the tensors live in one buffer each (so up to
/// `max_buffer_size`), and the master, where there is one, is compared too.
pub fn gpu_against_cpu_in(
    gpu: &Gpu,
    config: &Optimizer,
    precision: Precision,
    size: usize,
    steps: u64,
    seed: u64,
    tol: &Tolerance,
) -> Result<CaseReport> {
    let Some(format) = precision.half_format() else {
        return gpu_against_cpu(gpu, config, size, steps, seed, tol);
    };
    let round = |values: &[f32]| {
        values
            .iter()
            .map(|&x| format.round(x))
            .collect::<Vec<u16>>()
    };
    let widen = |bits: &[u16]| bits.iter().map(|&b| format.widen(b)).collect::<Vec<f32>>();
    let mut problem = RandomProblem::new(size, seed);
    let mut cpu_params = round(&problem.params);
    let params = gpu.upload_half("validate/params", &cpu_params)?;
    let grads = gpu.upload_half("validate/grads", &vec![0; size])?;
    let mut gpu_opt = GpuOptimizer::with_precision(
        gpu,
        config.clone(),
        precision,
        BufferRange::half(&params, size),
        BufferRange::half(&grads, size),
    )?;
    let mut cpu_opt = CpuOptimizer::with_precision(config.clone(), precision, size)?
        .with_execution(Execution::Fast);
    let mut tensors = tensor_stats(config);
    if precision.has_master() {
        tensors.push(("master", ErrorStats::default()));
    }
    for t in 1..=steps {
        let g = round(&problem.next_grad());
        let lr = schedule(config.lr(), t);
        gpu.write_half(&grads, 0, &g)?;
        gpu_opt.step_with_lr(gpu, lr)?;
        cpu_opt.step_half(&mut cpu_params, &g, lr)?;
        let (params_stats, rest) = tensors.split_first_mut().expect("the parameters");
        params_stats
            .1
            .add(tol, t, &gpu_opt.read_params(gpu)?, &widen(&cpu_params));
        let gpu_state = gpu_opt.read_state(gpu)?;
        for ((_, stats), ((_, got), (_, want))) in
            rest.iter_mut().zip(gpu_state.iter().zip(cpu_opt.state()))
        {
            stats.add(tol, t, got, want.as_slice().expect("contiguous state"));
        }
        if let Some(master) = cpu_opt.master() {
            let stats = &mut tensors.last_mut().expect("the master").1;
            stats.add(tol, t, &gpu_opt.read_master(gpu)?, master);
        }
    }
    Ok(CaseReport {
        optimizer: config.clone(),
        precision,
        size,
        tensors,
    })
}

/// The guard validation runs: a scaler that grows after 2 clean steps, and a clip of the
/// global norm to 1 (the seeded gradients' norm is far larger, so every step clips). With the
/// overflows planted at steps 2 and 5, five steps skip, back off, grow and skip again.
pub fn validation_guard() -> Guard {
    Guard {
        scaler: Some(LossScaler {
            init_scale: 1024.0,
            growth_interval: 2,
            ..LossScaler::default()
        }),
        max_norm: Some(1.0),
        caller_scale: false,
    }
}

/// Steps of a guarded run whose gradient gets an inf (step 2) or a NaN (step 5) planted, so
/// that skipped steps are exercised in every precision (f16 also overflows on its own).
fn planted_overflow(t: u64, g: &mut [f32]) {
    let last = g.len() - 1;
    match t {
        2 => g[last] = f32::INFINITY,
        5 => g[last / 2] = f32::NAN,
        _ => {}
    }
}

/// [`gpu_against_cpu_in`] under `guard`: each step's gradient is multiplied by the scale in
/// force (as the caller's backward pass would), some steps overflow, and besides the tensors
/// the report compares the guard's outcome (`guard`: scale and skip exactly, norm and clip
/// factor within `tol`).
/// The gradients are stored in two pieces, so the pre-pass covers several ranges.
#[allow(clippy::too_many_arguments)]
pub fn guarded_against_cpu(
    gpu: &Gpu,
    config: &Optimizer,
    precision: Precision,
    guard: Guard,
    size: usize,
    steps: u64,
    seed: u64,
    tol: &Tolerance,
) -> Result<CaseReport> {
    let format = precision.half_format();
    let store = |values: &[f32]| -> Vec<u16> {
        let format = format.expect("16-bit");
        values.iter().map(|&x| format.round(x)).collect()
    };
    let widen = |bits: &[u16]| -> Vec<f32> {
        let format = format.expect("16-bit");
        bits.iter().map(|&b| format.widen(b)).collect()
    };
    let mut problem = RandomProblem::new(size, seed);
    // Two pieces of one buffer each, split at an even element (whole 16-bit words).
    let split = (size / 2) & !1;
    let split = if split == 0 { size } else { split };
    let (mut cpu_params, mut cpu_half) = (problem.params.clone(), Vec::new());
    let mut buffers = Vec::new();
    for (what, range) in [("params", 0..split), ("grads", 0..split)]
        .into_iter()
        .chain(
            (split < size)
                .then_some([("params", split..size), ("grads", split..size)])
                .into_iter()
                .flatten(),
        )
    {
        let values = if what == "params" {
            problem.params[range].to_vec()
        } else {
            vec![0.0; range.len()]
        };
        let buffer = match format {
            Some(_) => gpu.upload_half(&format!("guarded/{what}"), &store(&values))?,
            None => gpu.upload(&format!("guarded/{what}"), &values)?,
        };
        buffers.push((buffer, values.len()));
    }
    fn range((buffer, len): &(wgpu::Buffer, usize), half: bool) -> BufferRange<'_> {
        match half {
            true => BufferRange::half(buffer, *len),
            false => BufferRange {
                buffer,
                offset: 0,
                len: *len,
            },
        }
    }
    let pieces: Vec<Piece<'_>> = buffers
        .chunks(2)
        .map(|pair| Piece {
            params: range(&pair[0], format.is_some()),
            grads: range(&pair[1], format.is_some()),
        })
        .collect();
    let mut gpu_opt = GpuOptimizer::with_guard(gpu, config.clone(), precision, &pieces, guard)?;
    let mut cpu_opt = CpuOptimizer::with_precision(config.clone(), precision, size)?
        .with_execution(Execution::Fast);
    let mut cpu_guard = CpuGuard::new(guard)?;
    if format.is_some() {
        cpu_half = store(&cpu_params);
        cpu_params = widen(&cpu_half);
    }
    let mut tensors = tensor_stats(config);
    if precision.has_master() {
        tensors.push(("master", ErrorStats::default()));
    }
    tensors.push(("guard", ErrorStats::default()));
    for t in 1..=steps {
        let scale = cpu_guard.state().scale;
        let mut g: Vec<f32> = problem.next_grad().iter().map(|g| g * scale).collect();
        planted_overflow(t, &mut g);
        let lr = schedule(config.lr(), t);
        let stored: Vec<f32> = match format {
            Some(_) => {
                let bits = store(&g);
                for (pair, (lo, hi)) in pieces.iter().zip([(0, split), (split, size)]) {
                    gpu.write_half(pair.grads.buffer, 0, &bits[lo..hi])?;
                }
                widen(&bits)
            }
            None => {
                for (pair, (lo, hi)) in pieces.iter().zip([(0, split), (split, size)]) {
                    gpu.write(pair.grads.buffer, 0, &g[lo..hi])?;
                }
                g
            }
        };
        gpu_opt.step_with_lr(gpu, lr)?;
        let outcome = cpu_guard.prepare(&[&stored[..split], &stored[split..]]);
        match format {
            Some(_) => {
                let bits = store(&stored);
                cpu_opt.step_half_guarded(&mut cpu_half, &bits, lr, &outcome)?;
                cpu_params = widen(&cpu_half);
            }
            None => cpu_opt.step_guarded(
                ArrayViewMut1::from(&mut cpu_params[..]),
                ArrayView1::from(&stored[..]),
                lr,
                &outcome,
            )?,
        }
        let report = gpu_opt.guard().expect("guarded").read(gpu)?;
        let [params_stats, rest @ ..] = &mut tensors[..] else {
            unreachable!("the parameters come first")
        };
        params_stats
            .1
            .add(tol, t, &gpu_opt.read_params(gpu)?, &cpu_params);
        let gpu_state = gpu_opt.read_state(gpu)?;
        for ((_, stats), ((_, got), (_, want))) in
            rest.iter_mut().zip(gpu_state.iter().zip(cpu_opt.state()))
        {
            stats.add(tol, t, got, want.as_slice().expect("contiguous state"));
        }
        if let Some(master) = cpu_opt.master() {
            let at = tensors.len() - 2;
            let stats = &mut tensors[at].1;
            stats.add(tol, t, &gpu_opt.read_master(gpu)?, master);
        }
        // The scale and the skip exactly; the norm and the clip factor, sums and a division
        // a GPU may round otherwise, within `tol`.
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let stats = &mut tensors.last_mut().expect("the guard").1;
        stats.add(
            &Tolerance::EXACT,
            t,
            &[report.last_scale, flag(report.last_skipped), report.scale],
            &[outcome.scale, flag(outcome.skip), cpu_guard.state().scale],
        );
        stats.add(
            tol,
            t,
            &[report.norm, report.clip],
            &[outcome.norm, outcome.clip],
        );
    }
    if gpu_opt.read_step_count(gpu)? != cpu_opt.step_count() {
        return Err(Error::InvalidSetting {
            what: "guarded step count".into(),
            message: format!(
                "the device counted {} steps, the CPU {}",
                gpu_opt.read_step_count(gpu)?,
                cpu_opt.step_count()
            ),
        });
    }
    Ok(CaseReport {
        optimizer: config.clone(),
        precision,
        size,
        tensors,
    })
}

/// Empty statistics for the parameters and each state tensor of `config`, in report order.
fn tensor_stats(config: &Optimizer) -> Vec<(&'static str, ErrorStats)> {
    let state = config.state_names().into_iter();
    std::iter::once("param")
        .chain(state)
        .map(|name| (name, ErrorStats::default()))
        .collect()
}

/// The tensors of a GPT-2-style transformer: token and position embeddings, `layers` blocks of
/// layer norms, attention (fused QKV and projection) and MLP (4× width) weights and biases, and
/// a final layer norm; 12 layers give 148 tensors. GPT-2 small is `(768, 12, 50257, 1024)`.
pub fn transformer_tensors(
    d_model: usize,
    layers: usize,
    vocab: usize,
    context: usize,
) -> Vec<TensorSpec> {
    let d = d_model;
    let mut t = vec![
        TensorSpec::new("wte.weight", &[vocab, d]),
        TensorSpec::new("wpe.weight", &[context, d]),
    ];
    for l in 0..layers {
        let p = |s: &str| format!("h.{l}.{s}");
        t.extend([
            TensorSpec::new(p("ln_1.weight"), &[d]),
            TensorSpec::new(p("ln_1.bias"), &[d]),
            TensorSpec::new(p("attn.qkv.weight"), &[3 * d, d]),
            TensorSpec::new(p("attn.qkv.bias"), &[3 * d]),
            TensorSpec::new(p("attn.proj.weight"), &[d, d]),
            TensorSpec::new(p("attn.proj.bias"), &[d]),
            TensorSpec::new(p("ln_2.weight"), &[d]),
            TensorSpec::new(p("ln_2.bias"), &[d]),
            TensorSpec::new(p("mlp.fc.weight"), &[4 * d, d]),
            TensorSpec::new(p("mlp.fc.bias"), &[4 * d]),
            TensorSpec::new(p("mlp.proj.weight"), &[d, 4 * d]),
            TensorSpec::new(p("mlp.proj.bias"), &[d]),
        ]);
    }
    t.extend([
        TensorSpec::new("ln_f.weight", &[d]),
        TensorSpec::new("ln_f.bias", &[d]),
    ]);
    t
}

/// The transformer of [`transformer_tensors`] (12 layers, 8192-token vocabulary, 1024
/// positions) whose width, a multiple of 64, brings its parameter count closest to `params`.
pub fn transformer_near(params: usize) -> Vec<TensorSpec> {
    let count = |d: usize| {
        transformer_tensors(d, 12, 8192, 1024)
            .iter()
            .map(TensorSpec::numel)
            .sum::<usize>()
    };
    let d = (1..=256)
        .map(|k| 64 * k)
        .min_by_key(|&d| count(d).abs_diff(params))
        .expect("a non-empty range");
    transformer_tensors(d, 12, 8192, 1024)
}

/// How a sparse validation case looks rows up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookups {
    /// Uniformly random rows, a few of them repeated.
    Random,
    /// Few distinct rows, each looked up many times.
    HeavyDuplicates,
    /// Only the first and the last row, interleaved.
    FirstAndLast,
    /// No lookup at all (the step still counts).
    Empty,
}

/// One sparse validation case: a table, and the lookups of each step.
#[derive(Clone, Debug)]
pub struct SparseCase {
    /// Short name for tables.
    pub name: &'static str,
    /// Rows of the table.
    pub rows: usize,
    /// Elements per row.
    pub dim: usize,
    /// Lookups per step.
    pub k: usize,
    /// How rows are chosen.
    pub lookups: Lookups,
}

/// The cases `fusedopt validate` and the tests run for every sparse optimizer: random rows,
/// heavy duplicates, the first and last rows, no lookup, far more lookups than rows, and rows
/// wider than a workgroup's lanes (odd dims and counts, so no power of two hides a bound).
pub fn sparse_cases() -> Vec<SparseCase> {
    let case = |name, rows, dim, k, lookups| SparseCase {
        name,
        rows,
        dim,
        k,
        lookups,
    };
    vec![
        case("random", 1000, 16, 300, Lookups::Random),
        case("duplicates", 500, 7, 257, Lookups::HeavyDuplicates),
        case("first+last", 64, 33, 19, Lookups::FirstAndLast),
        case("k=0", 100, 8, 0, Lookups::Empty),
        case("k>>rows", 5, 3, 2500, Lookups::Random),
        case("one row", 1, 5, 9, Lookups::Random),
        // Rows wider than the row sums' 64 lanes and no multiple of them, looked up over
        // and over: every lane and the pairwise halving carry a share.
        case("wide rows", 50, 203, 600, Lookups::HeavyDuplicates),
    ]
}

/// Seeded lookups of `case` for one step: row indices and one gradient row each (values
/// spread over decades, some exactly zero).
pub fn sparse_lookups(case: &SparseCase, rng: &mut StdRng) -> (Vec<u32>, Vec<f32>) {
    let rows = case.rows as u32;
    let indices: Vec<u32> = (0..case.k)
        .map(|i| match case.lookups {
            Lookups::Random | Lookups::Empty => rng.random_range(0..rows),
            Lookups::HeavyDuplicates => rng.random_range(0..rows.min(6)) * (rows / 6).max(1),
            Lookups::FirstAndLast => {
                if i % 2 == 0 {
                    0
                } else {
                    rows - 1
                }
            }
        })
        .collect();
    let values = (0..case.k * case.dim)
        .map(|_| {
            if rng.random_bool(0.05) {
                0.0
            } else {
                10f32.powf(rng.random_range(-3.0..1.0)) * rng.sample::<f32, _>(StandardNormal)
            }
        })
        .collect();
    (indices, values)
}

/// Runs the sparse `config` for `steps` steps of `case` on the GPU and on the CPU reference
/// from the same seeded data, comparing the whole table and every state tensor after each
/// step. The table sits between poisoned guard words in its buffer, and a report of any
/// write outside it is an error.
pub fn sparse_against_cpu(
    gpu: &Gpu,
    config: &SparseOptimizer,
    case: &SparseCase,
    steps: u64,
    seed: u64,
    tol: &Tolerance,
) -> Result<Vec<(&'static str, ErrorStats)>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let table: Vec<f32> = (0..case.rows * case.dim)
        .map(|_| rng.sample(StandardNormal))
        .collect();
    let guard = (gpu.limits().storage_offset_alignment / 4) as usize;
    let mut poisoned = vec![f32::NAN; guard];
    poisoned.extend(&table);
    poisoned.extend(vec![f32::NAN; guard]);
    let table_buffer = gpu.upload("validate/sparse table", &poisoned)?;
    let capacity = case.k.max(1);
    let indices = gpu.zeros("validate/sparse indices", capacity)?;
    let values = gpu.zeros("validate/sparse values", capacity * case.dim)?;
    let range = BufferRange {
        buffer: &table_buffer,
        offset: guard as u64,
        len: table.len(),
    };
    let mut on_gpu =
        SparseGpuOptimizer::new(gpu, config.clone(), range, case.dim, &indices, &values)?;
    let mut on_cpu = CpuSparse::new(config.clone(), table, case.dim)?;
    let mut tensors = vec![("param", ErrorStats::default())];
    tensors.extend(
        config
            .state_init()
            .into_iter()
            .map(|(name, _)| (name, ErrorStats::default())),
    );
    for t in 1..=steps {
        let (idx, vals) = sparse_lookups(case, &mut rng);
        let lr = schedule(config.lr(), t);
        if !idx.is_empty() {
            gpu.queue()
                .write_buffer(&indices, 0, bytemuck::cast_slice(&idx));
            gpu.write(&values, 0, &vals)?;
        }
        on_gpu.step_with_lr(gpu, idx.len(), lr)?;
        on_cpu.step_with_lr(&idx, &vals, lr)?;
        tensors[0]
            .1
            .add(tol, t, &on_gpu.read_table(gpu)?, on_cpu.table());
        for ((_, stats), ((_, got), (_, want))) in tensors[1..]
            .iter_mut()
            .zip(on_gpu.read_state(gpu)?.iter().zip(on_cpu.state()))
        {
            stats.add(tol, t, got, want);
        }
    }
    let whole = gpu.download(&table_buffer, 0, poisoned.len())?;
    let outside = whole[..guard].iter().chain(&whole[whole.len() - guard..]);
    if let Some(x) = outside.copied().find(|x| !x.is_nan()) {
        return Err(Error::InvalidSetting {
            what: "sparse step".into(),
            message: format!("wrote {x} outside the table"),
        });
    }
    Ok(tensors)
}
