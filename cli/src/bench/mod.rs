//! Throughput of one optimizer step: the CPU reference, the fast CPU path and the GPU kernel,
//! each against the copy bandwidth of its own device measured in the same run (the roofline).
//!
//! Every point is a median over several steps after warm-up. Small sizes rotate over several
//! independent parameter sets whose total exceeds the caches, so that no step finds its data
//! where the previous step left it. GPU steps are timed with timestamp queries where the device
//! has them, otherwise with the wall clock around submit-and-wait; every row says which.

mod cpu;
mod gpu;
/// Tables, JSON and the report folder.
pub mod report;
pub mod sparse;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};
use fusedopt::ModelLayout;
use fusedopt::kernels::LaunchShape;
use fusedopt::model::decay_group;
use fusedopt::testing::transformer_near;
use fusedopt::{Adam, Gpu, Guard, LossScaler, Optimizer, Precision};

pub use cpu::{CpuSteps, cpu_copy_bandwidth};
pub use gpu::{GpuSteps, GpuTimer, gpu_copy_bandwidth};

/// Which implementation a measurement is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Implementation {
    /// [`fusedopt::reference::Execution::Reference`]: one thread, portable code.
    CpuReference,
    /// [`fusedopt::reference::Execution::Fast`]: all rayon threads, widest vector unit.
    CpuFast,
    /// The fused WGSL kernel through [`fusedopt::GpuOptimizer`].
    Gpu,
}

impl Implementation {
    /// All three, in report order.
    pub const ALL: [Implementation; 3] = [Self::CpuReference, Self::CpuFast, Self::Gpu];

    /// The name used in tables, JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::CpuReference => "cpu-reference",
            Self::CpuFast => "cpu-fast",
            Self::Gpu => "gpu",
        }
    }

    /// Whether it runs on the CPU (and is held to the CPU's roofline).
    pub fn is_cpu(self) -> bool {
        self != Self::Gpu
    }
}

/// How a time was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Clock {
    /// GPU timestamps at the start and end of the step's compute pass.
    Timestamp,
    /// The host's monotonic clock around the work (for the GPU: around submit-and-wait, so it
    /// includes submission and synchronization).
    Wall,
}

/// One benchmarked configuration: an optimizer and the variant of it that changes the bytes a
/// step moves.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    /// Optimizer name as on the command line (`adamw` is its own).
    pub optimizer: &'static str,
    /// `default`, `momentum`, `centered`, `centered+momentum` or `amsgrad`.
    pub variant: &'static str,
    /// The configuration measured.
    pub config: Optimizer,
    /// How its tensors are stored.
    pub precision: Precision,
    /// The loss scaler and clip run before each step, for the guarded rows.
    pub guard: Option<Guard>,
}

/// The guard of the guarded rows: PyTorch's GradScaler defaults and a clip to norm 1. The
/// benchmark's gradients never overflow, so every step runs whole.
pub fn bench_guard() -> Guard {
    Guard {
        scaler: Some(LossScaler::default()),
        max_norm: Some(1.0),
        caller_scale: false,
    }
}

/// `cases`, each followed by itself under [`bench_guard`].
pub fn with_guarded(cases: Vec<Case>) -> Vec<Case> {
    cases
        .into_iter()
        .flat_map(|case| {
            let guarded = Case {
                guard: Some(bench_guard()),
                ..case.clone()
            };
            [case, guarded]
        })
        .collect()
}

impl Case {
    /// Bytes one step reads and writes per parameter in the case's precision.
    pub fn bytes_per_element(&self) -> usize {
        let state = self.config.state_names().len();
        let step = self.precision.bytes_per_element(state) as usize;
        // The guard's pre-pass reads the gradient once more.
        let prepass = if self.guard.is_some() {
            self.precision.param_bytes() as usize
        } else {
            0
        };
        step + prepass
    }

    /// Bytes of parameters, gradients, state and master for `size` parameters.
    pub fn footprint(&self, size: usize) -> u64 {
        let state = self.config.state_names().len();
        size as u64 * (2 * self.precision.param_bytes() + self.precision.kept_bytes(state))
    }

    /// `optimizer` or `optimizer/variant`, then the precision where it is not f32, for tables
    /// and labels.
    pub fn label(&self) -> String {
        let case = if self.variant == "default" {
            self.optimizer.to_string()
        } else {
            format!("{}/{}", self.optimizer, self.variant)
        };
        let case = if self.precision == Precision::F32 {
            case
        } else {
            format!("{case} {}", self.precision)
        };
        if self.guard.is_some() {
            format!("{case} guarded")
        } else {
            case
        }
    }
}

/// The cases for the named optimizers (all of [`Optimizer::NAMES`] when empty): each
/// optimizer's defaults, plus every option that changes the state it keeps (as each optimizer
/// names them: SGD momentum; RMSprop centered and momentum; Adam and AdamW amsgrad). Options
/// that only change arithmetic (nesterov, maximize, weight decay) move the same bytes and are
/// left out.
pub fn cases(names: &[String]) -> Result<Vec<Case>> {
    cases_in(names, &[Precision::F32])
}

/// [`cases`] in each of `precisions`, precision by precision.
pub fn cases_in(names: &[String], precisions: &[Precision]) -> Result<Vec<Case>> {
    let mut out = Vec::new();
    for &precision in precisions {
        out.extend(
            f32_cases(names)?
                .into_iter()
                .map(|case| Case { precision, ..case }),
        );
    }
    Ok(out)
}

fn f32_cases(names: &[String]) -> Result<Vec<Case>> {
    let names: Vec<&str> = if names.is_empty() {
        Optimizer::NAMES.to_vec()
    } else {
        names.iter().map(String::as_str).collect()
    };
    let mut out = Vec::new();
    for name in names {
        let base = Optimizer::default_for(name)?;
        let optimizer = base.name();
        let variants = base.state_variants();
        out.push(Case {
            optimizer,
            variant: "default",
            config: base,
            precision: Precision::F32,
            guard: None,
        });
        out.extend(variants.into_iter().map(|(variant, config)| Case {
            optimizer,
            variant,
            config,
            precision: Precision::F32,
            guard: None,
        }));
    }
    Ok(out)
}

/// Median, minimum and maximum of a set of per-step times, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Median.
    pub median_s: f64,
    /// Fastest step.
    pub min_s: f64,
    /// Slowest step.
    pub max_s: f64,
    /// Steps timed (after warm-up).
    pub samples: usize,
}

impl Summary {
    /// Summarizes `times` (seconds); `None` when empty.
    pub fn of(times: &[f64]) -> Option<Self> {
        if times.is_empty() {
            return None;
        }
        let mut sorted = times.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median_s = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
        };
        Some(Self {
            median_s,
            min_s: sorted[0],
            max_s: sorted[n - 1],
            samples: n,
        })
    }
}

/// How long to measure each point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Untimed steps first (caches, page faults, pipeline creation, clocks).
    pub warmup_steps: usize,
    /// At least this many timed steps.
    pub min_samples: usize,
    /// At most this many timed steps.
    pub max_samples: usize,
    /// Take more samples, up to `max_samples`, until this much time is spent.
    pub target_time: Duration,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            warmup_steps: 2,
            min_samples: 7,
            max_samples: 50,
            target_time: Duration::from_millis(300),
        }
    }
}

impl Sampling {
    /// Samples to take when one step takes about `estimate` seconds.
    pub fn samples_for(&self, estimate: f64) -> usize {
        let wanted = (self.target_time.as_secs_f64() / estimate.max(1e-9)).ceil() as usize;
        wanted.clamp(self.min_samples, self.max_samples.max(self.min_samples))
    }
}

/// What `fusedopt bench` measures.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// The cases (see [`cases`]).
    pub cases: Vec<Case>,
    /// Parameters per step.
    pub sizes: Vec<usize>,
    /// Implementations to measure (the GPU one only with a device).
    pub implementations: Vec<Implementation>,
    /// Time GPU steps with the wall clock even where timestamps exist.
    pub force_wall_clock: bool,
    /// Samples per point.
    pub sampling: Sampling,
    /// Bytes the rotated parameter sets of one point should add up to at least (see
    /// [`rotation_bytes`]); 0 steps a single set.
    pub rotation_bytes: u64,
    /// Elements per buffer of the roofline copies: enough that source and target together
    /// exceed the caches.
    pub roofline_size: usize,
    /// Also measure, on the GPU at each size from 2^20, AdamW on a transformer-shaped layout
    /// (148 tensors in two parameter groups) against one flat tensor of the same size.
    pub model_layouts: bool,
}

/// Variant name of the rows stepping a transformer-shaped layout (148 tensors, 2 groups).
pub const MODEL_VARIANT: &str = "transformer-layout";

/// Variant name of the rows stepping one flat tensor of the transformer layout's size.
pub const FLAT_VARIANT: &str = "flat-same-size";

/// Whole-model steps recorded to time the host's part of a step.
pub const HOST_RECORD_SAMPLES: usize = 200;

/// Smallest size at which the transformer-layout rows are measured.
pub const MODEL_LAYOUT_MIN_SIZE: usize = 1 << 20;

/// One measured point: the JSON schema of `fusedopt bench --json` (README, "bench").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Optimizer name (`copy` for the roofline rows).
    pub optimizer: String,
    /// Variant (see [`cases`]); `roofline` for the copy rows.
    pub variant: String,
    /// Storage precision (`f32`, `bf16`, `bf16-master`...; see `fusedopt::Precision`).
    #[serde(default = "f32_name")]
    pub precision: String,
    /// Whether the step ran after the guard's pre-pass (loss scaler and norm clip; its
    /// gradient read is in `bytes_per_element`).
    #[serde(default)]
    pub guarded: bool,
    /// Parameters per step.
    pub size: usize,
    /// Which implementation.
    pub implementation: Implementation,
    /// Median step time, seconds.
    pub median_s: f64,
    /// Fastest step, seconds.
    pub min_s: f64,
    /// Slowest step, seconds.
    pub max_s: f64,
    /// Steps timed.
    pub samples: usize,
    /// `size / median_s`.
    pub elements_per_s: f64,
    /// `size * bytes_per_element / median_s`.
    pub bytes_per_s: f64,
    /// Bytes a step must read and write per parameter.
    pub bytes_per_element: usize,
    /// `bytes_per_s` over the copy bandwidth of the same device in the same run.
    pub roofline_fraction: f64,
    /// The GPU adapter, or the CPU's name and thread count.
    pub adapter: String,
    /// How the time was taken.
    pub clock: Clock,
    /// Parameter sets stepped in turn so the data is not in cache.
    pub rotation_sets: usize,
}

/// The precision of rows written before rows had one.
fn f32_name() -> String {
    Precision::F32.name().to_string()
}

/// Bytes per element the GPU copy kernel moves: it reads 4 and writes 4.
pub const GPU_COPY_BYTES: usize = 8;

/// Bytes per element a CPU copy moves through memory: it reads 4, writes 4, and, since caches
/// allocate on write, first reads the 4 it overwrites (a copy in pieces of 1 MiB uses ordinary
/// stores). An optimizer step reads every line it writes, so counting its bytes as read plus
/// written is the same accounting.
pub const CPU_COPY_BYTES: usize = 12;

/// Copy bandwidth of each device, measured in the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Roofline {
    /// CPU: parallel `memcpy`, counted as [`CPU_COPY_BYTES`] per element.
    pub cpu_bytes_per_s: f64,
    /// GPU: our copy kernel (`shaders/copy.wgsl`), [`GPU_COPY_BYTES`] per element; `None`
    /// without a device.
    pub gpu_bytes_per_s: Option<f64>,
    /// Elements per buffer of the copies.
    pub size: usize,
}

/// The GPU kernels' launch shape in a run ([`LaunchShape`], as results.json writes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    /// Threads per workgroup.
    pub workgroup_size: u32,
    /// Elements per invocation per round.
    pub elements_per_invocation: u32,
    /// Cap on workgroups per dispatch (grid-stride loop); `None` covers the range in one round.
    pub max_workgroups: Option<u32>,
}

impl From<LaunchShape> for Launch {
    fn from(s: LaunchShape) -> Self {
        Self {
            workgroup_size: s.workgroup_size,
            elements_per_invocation: s.elements_per_invocation,
            max_workgroups: s.max_workgroups,
        }
    }
}

/// One tensor of a transformer-shaped layout, so that another framework can step the same list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayoutTensor {
    /// Name, such as `h.0.attn.qkv.weight`.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Parameter group: 0 with weight decay (matrices), 1 without (biases, norms).
    pub group: usize,
}

/// A transformer-shaped layout of the run: its tensors and the host's cost of one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayoutReport {
    /// The size asked for; the layout's width is the one that brings it nearest.
    pub requested: usize,
    /// Elements of the flat buffer (the tensors and their alignment padding): the `size` of
    /// its rows.
    pub size: usize,
    /// The tensors, in layout order.
    pub tensors: Vec<LayoutTensor>,
    /// Compute dispatches per step (one per chunk of each group).
    pub dispatches: usize,
    /// Host time to record one whole-model step into an encoder (staging the scalars of every
    /// group and recording their passes), not counting submission.
    pub host_record: Summary,
}

/// Everything one run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// The measurements, the roofline rows first.
    pub rows: Vec<Row>,
    /// The copy bandwidths the fractions are taken against.
    pub roofline: Roofline,
    /// The CPU: name and the threads the fast path used.
    pub cpu: String,
    /// The GPU adapter (name, type, backend), if one was used.
    pub gpu: Option<String>,
    /// Rows that could not be measured (for example out of memory), with the reason.
    pub skipped: Vec<String>,
    /// The GPU kernels' launch shape, if a GPU was used.
    pub launch: Option<Launch>,
    /// The transformer-shaped layouts measured (see [`BenchOptions::model_layouts`]).
    pub layouts: Vec<LayoutReport>,
}

/// The CPU, as rows name it: brand string and the thread count of the fast path.
pub fn cpu_description() -> String {
    let brand = sysinfo::System::new()
        .ok()
        .and_then(|mut system| {
            system.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
            system.cpus().first().map(|c| c.brand().trim().to_string())
        })
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!("{brand} ({} threads)", rayon::current_num_threads())
}

/// Fails, before anything is allocated, when `size` elements of `bytes_per_element` host
/// bytes do not fit the memory the host has available (where it can tell), or overflow.
pub fn check_host_memory(what: &str, size: usize, bytes_per_element: u64) -> Result<()> {
    let need = (size as u64).checked_mul(bytes_per_element);
    let available = available_memory();
    match need {
        Some(need) if available == 0 || need <= available => Ok(()),
        _ => Err(Error::InvalidArgument(format!(
            "{what} needs about {} of host memory; {} is available",
            need.map_or("more than 2^64 bytes".into(), gib),
            gib(available)
        ))),
    }
}

/// Bytes in GiB, for messages.
fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// Host memory available now, in bytes (0 where the system does not say): the system's, or
/// less where the process's address space is capped (`ulimit -v`), whose room is what an
/// allocation can get.
pub fn available_memory() -> u64 {
    let system = system_available_memory();
    match address_space_room() {
        Some(room) if system == 0 || room < system => room,
        _ => system,
    }
}

/// Room left under the process's address-space limit (Linux; `None` without a limit).
fn address_space_room() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    let soft: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let used_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmSize:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(soft.saturating_sub(used_kib * 1024))
}

fn system_available_memory() -> u64 {
    sysinfo::System::new().map_or(0, |mut system| {
        system.refresh_memory();
        system.available_memory()
    })
}

/// Size of the CPU's largest cache, from Linux's sysfs; 64 MiB where it cannot be read.
pub fn cpu_cache_bytes() -> u64 {
    const FALLBACK: u64 = 64 << 20;
    let Ok(entries) = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache") else {
        return FALLBACK;
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("size")).ok())
        .filter_map(|s| parse_cache_size(s.trim()))
        .max()
        .unwrap_or(FALLBACK)
}

/// `"480M"`, `"2048K"` or bytes, as sysfs writes cache sizes.
fn parse_cache_size(s: &str) -> Option<u64> {
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: u64 = digits.parse().ok()?;
    let scale = match unit.trim() {
        "" => 1,
        "K" | "KB" | "KiB" => 1 << 10,
        "M" | "MB" | "MiB" => 1 << 20,
        "G" | "GB" | "GiB" => 1 << 30,
        _ => return None,
    };
    Some(n * scale)
}

/// Bytes the rotated sets of one point add up to at least: one and a half times the largest
/// cache the data could sit in (the CPU's last level; for a GPU 256 MiB, more than any GPU's L2
/// or Infinity Cache in 2026, since wgpu does not report it), at most 1 GiB. Sets are stepped
/// in a cycle, so a footprint past the cache's size evicts each set before its next turn.
pub fn rotation_bytes(gpu: Option<&Gpu>) -> u64 {
    let cpu = cpu_cache_bytes();
    let gpu_cache = match gpu.map(|g| g.adapter_info().device_type) {
        Some(wgpu::DeviceType::Cpu) => cpu,
        Some(_) => 256 << 20,
        None => 0,
    };
    (cpu.max(gpu_cache) * 3 / 2).min(1 << 30)
}

/// Parameter sets of `bytes` each needed to cover `rotation_bytes`, at most 1024.
pub fn rotation_sets(bytes: u64, rotation_bytes: u64) -> usize {
    rotation_bytes.div_ceil(bytes.max(1)).clamp(1, 1024) as usize
}

/// Sizes measured when none are given: powers of four from 2^16 to 2^24, and on a real GPU
/// 2^26 and 2^28 where the largest case (AMSGrad: five tensors, on the CPU and on the GPU in
/// turn) fits the host's memory and the device's buffer limit.
pub fn default_sizes(gpu: Option<&Gpu>) -> Vec<usize> {
    let mut sizes: Vec<usize> = (8..=12).map(|k| 1usize << (2 * k)).collect();
    let Some(gpu) = gpu else { return sizes };
    if gpu.adapter_info().device_type == wgpu::DeviceType::Cpu {
        return sizes;
    }
    let memory = available_memory();
    for size in [1usize << 26, 1 << 28] {
        let tensor = size as u64 * 4;
        let fits_host = 5 * tensor * 2 <= memory;
        let fits_device = tensor <= gpu.limits().max_buffer_bytes;
        if fits_host && fits_device {
            sizes.push(size);
        }
    }
    sizes
}

impl BenchOptions {
    /// All cases of the named optimizers, default sizes, every implementation that can run.
    pub fn defaults(names: &[String], gpu: Option<&Gpu>) -> Result<Self> {
        let mut implementations = vec![Implementation::CpuReference, Implementation::CpuFast];
        if gpu.is_some() {
            implementations.push(Implementation::Gpu);
        }
        let rotation_bytes = rotation_bytes(gpu);
        Ok(Self {
            cases: cases(names)?,
            sizes: default_sizes(gpu),
            implementations,
            force_wall_clock: false,
            sampling: Sampling::default(),
            rotation_bytes,
            roofline_size: ((rotation_bytes / 8) as usize).clamp(1 << 22, 1 << 28),
            model_layouts: gpu.is_some(),
        })
    }

    /// Number of points [`run`] measures (for progress bars).
    pub fn points(&self) -> u64 {
        (self.cases.len() * self.sizes.len() * self.implementations.len()
            + 2 * self.model_layout_sizes().len()) as u64
    }

    /// The sizes at which the transformer-layout rows are measured.
    pub fn model_layout_sizes(&self) -> Vec<usize> {
        let gpu = self.implementations.contains(&Implementation::Gpu);
        self.sizes
            .iter()
            .copied()
            .filter(|&s| self.model_layouts && gpu && s >= MODEL_LAYOUT_MIN_SIZE)
            .collect()
    }

    fn check(&self, gpu: Option<&Gpu>) -> Result<()> {
        if self.roofline_size == 0 {
            return Err(Error::InvalidArgument("roofline size 0".into()));
        }
        if let Some(&size) = self.sizes.iter().find(|&&s| s == 0) {
            return Err(Error::InvalidArgument(format!(
                "size {size}: a step needs at least one parameter"
            )));
        }
        if self.implementations.contains(&Implementation::Gpu) && gpu.is_none() {
            return Err(Error::InvalidArgument(
                "the gpu implementation needs an adapter".into(),
            ));
        }
        if self.cases.is_empty() || self.sizes.is_empty() || self.implementations.is_empty() {
            return Err(Error::InvalidArgument(
                "nothing to measure: no optimizer, size or implementation".into(),
            ));
        }
        for &size in &self.sizes {
            // The host's patterns of parameters and gradients and a CPU optimizer's
            // parameters and state: at most 8 f32 per element.
            check_host_memory(&format!("bench at {size} elements"), size, 32)?;
        }
        Ok(())
    }
}

/// Runs the benchmark: the rooflines first, then every case at every size with every
/// implementation. `progress` is told after each point. A point that fails for lack of memory
/// is recorded in [`BenchReport::skipped`] and the run goes on; other errors end it.
pub fn run(
    gpu: Option<&Gpu>,
    options: &BenchOptions,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport> {
    options.check(gpu)?;
    let cpu = cpu_description();
    let gpu_name = gpu.map(|g| fusedopt::gpu::describe_adapter(g.adapter_info()));
    let sampling = &options.sampling;

    let roof_size = options.roofline_size;
    progress("roofline: CPU memcpy");
    let cpu_copy = cpu_copy_bandwidth(roof_size, sampling);
    let mut rows = vec![roofline_row(
        roof_size,
        CPU_COPY_BYTES,
        Implementation::CpuFast,
        &cpu_copy,
        cpu.clone(),
        Clock::Wall,
    )];
    let mut gpu_roof = None;
    if let (Some(gpu), true) = (gpu, options.implementations.contains(&Implementation::Gpu)) {
        progress("roofline: GPU copy kernel");
        let timer = GpuTimer::new(gpu, options.force_wall_clock)?;
        let copy = gpu_copy_bandwidth(gpu, &timer, roof_size, sampling)?;
        gpu_roof = Some(copy.bytes_per_s(roof_size, GPU_COPY_BYTES));
        rows.push(roofline_row(
            roof_size,
            GPU_COPY_BYTES,
            Implementation::Gpu,
            &copy,
            gpu_name.clone().unwrap_or_default(),
            timer.clock(),
        ));
    }
    let roofline = Roofline {
        cpu_bytes_per_s: cpu_copy.bytes_per_s(roof_size, CPU_COPY_BYTES),
        gpu_bytes_per_s: gpu_roof,
        size: roof_size,
    };

    let mut skipped = Vec::new();
    let timer = match gpu {
        Some(gpu) => Some(GpuTimer::new(gpu, options.force_wall_clock)?),
        None => None,
    };
    for &size in &options.sizes {
        for case in &options.cases {
            for &implementation in &options.implementations {
                let bytes = case.bytes_per_element();
                let sets = rotation_sets(case.footprint(size), options.rotation_bytes);
                progress(&format!(
                    "{} {} {size}",
                    case.label(),
                    implementation.name()
                ));
                let measured = match (implementation, gpu, &timer) {
                    (Implementation::Gpu, Some(gpu), Some(timer)) => {
                        GpuSteps::new_in(gpu, case, size, sets)
                            .and_then(|mut s| s.measure(gpu, timer, sampling))
                            .map(|summary| (summary, timer.clock(), gpu_name.clone()))
                    }
                    (Implementation::Gpu, ..) => unreachable!("checked in BenchOptions::check"),
                    // The CPU benchmarks time the f32 paths; the 16-bit precisions are
                    // measured on the GPU.
                    (..) if case.precision != Precision::F32 || case.guard.is_some() => continue,
                    (cpu_impl, ..) => CpuSteps::new(&case.config, size, sets, cpu_impl)
                        .and_then(|mut s| s.measure(sampling))
                        .map(|summary| (summary, Clock::Wall, Some(cpu.clone()))),
                };
                let Some((summary, clock, adapter)) =
                    unless_skipped(measured, &mut skipped, || {
                        format!("{} {} at {size}", case.label(), implementation.name())
                    })?
                else {
                    continue;
                };
                let roof = if implementation.is_cpu() {
                    roofline.cpu_bytes_per_s
                } else {
                    roofline.gpu_bytes_per_s.unwrap_or(f64::NAN)
                };
                let mut row = Row::new(
                    case.optimizer,
                    case.variant,
                    case.precision,
                    size,
                    implementation,
                    &summary,
                    bytes,
                    roof,
                    adapter.unwrap_or_default(),
                    clock,
                    sets,
                );
                row.guarded = case.guard.is_some();
                rows.push(row);
            }
        }
    }
    let mut layouts = Vec::new();
    if let (Some(gpu), Some(timer)) = (gpu, &timer) {
        for size in options.model_layout_sizes() {
            let layout = ModelLayout::new(
                &transformer_near(size),
                2,
                decay_group,
                ModelLayout::device_alignment(gpu),
            )?;
            let adamw = Optimizer::from(Adam::adamw());
            let groups = [
                adamw.clone(),
                Adam {
                    weight_decay: 0.0,
                    ..Adam::adamw()
                }
                .into(),
            ];
            let n = layout.len();
            let sets = rotation_sets(n as u64 * 16, options.rotation_bytes);
            let adapter = gpu_name.clone().unwrap_or_default();
            progress(&format!("adamw/{MODEL_VARIANT} host recording {n}"));
            let recorded = GpuSteps::model(gpu, &layout, &groups, 1)
                .and_then(|mut s| s.host_record_time(gpu, HOST_RECORD_SAMPLES));
            if let Some((host_record, dispatches)) = unless_skipped(recorded, &mut skipped, || {
                format!("adamw/{MODEL_VARIANT} host recording at {n}")
            })? {
                layouts.push(LayoutReport {
                    requested: size,
                    size: n,
                    tensors: layout
                        .segments()
                        .iter()
                        .map(|s| LayoutTensor {
                            name: s.tensor.name.clone(),
                            shape: s.tensor.shape.clone(),
                            group: s.group,
                        })
                        .collect(),
                    dispatches,
                    host_record,
                });
            }
            for variant in [MODEL_VARIANT, FLAT_VARIANT] {
                progress(&format!("adamw/{variant} gpu {n}"));
                let steps = if variant == MODEL_VARIANT {
                    GpuSteps::model(gpu, &layout, &groups, sets)
                } else {
                    GpuSteps::new(gpu, &adamw, n, sets)
                };
                let measured = steps.and_then(|mut s| s.measure(gpu, timer, sampling));
                let Some(summary) = unless_skipped(measured, &mut skipped, || {
                    format!("adamw/{variant} gpu at {n}")
                })?
                else {
                    continue;
                };
                rows.push(Row::new(
                    "adamw",
                    variant,
                    Precision::F32,
                    n,
                    Implementation::Gpu,
                    &summary,
                    adamw.bytes_per_element(),
                    roofline.gpu_bytes_per_s.unwrap_or(f64::NAN),
                    adapter.clone(),
                    timer.clock(),
                    sets,
                ));
            }
        }
    }
    Ok(BenchReport {
        rows,
        roofline,
        cpu,
        gpu: gpu_name,
        skipped,
        launch: gpu.map(|g| g.launch_shape().into()),
        layouts,
    })
}

/// A measurement's result, with a failure for lack of memory or past a device limit recorded
/// in `skipped` (as `what: error`) and turned into `None`; other errors end the run.
fn unless_skipped<T>(
    result: Result<T>,
    skipped: &mut Vec<String>,
    what: impl FnOnce() -> String,
) -> Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(Error::Fusedopt(
            e @ (fusedopt::Error::OutOfMemory { .. } | fusedopt::Error::LimitExceeded { .. }),
        )) => {
            skipped.push(format!("{}: {e}", what()));
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

impl Summary {
    /// Throughput of `size` elements of `bytes_per_element` at the median time.
    pub fn bytes_per_s(&self, size: usize, bytes_per_element: usize) -> f64 {
        (size * bytes_per_element) as f64 / self.median_s
    }
}

fn roofline_row(
    size: usize,
    bytes_per_element: usize,
    implementation: Implementation,
    summary: &Summary,
    adapter: String,
    clock: Clock,
) -> Row {
    let bandwidth = summary.bytes_per_s(size, bytes_per_element);
    Row::new(
        "copy",
        "roofline",
        Precision::F32,
        size,
        implementation,
        summary,
        bytes_per_element,
        bandwidth,
        adapter,
        clock,
        1,
    )
}

impl Row {
    /// A row from a measurement of `size` elements moving `bytes_per_element` each, against a
    /// roofline of `roofline_bytes_per_s`.
    #[allow(clippy::too_many_arguments)]
    fn new(
        optimizer: &str,
        variant: &str,
        precision: Precision,
        size: usize,
        implementation: Implementation,
        summary: &Summary,
        bytes_per_element: usize,
        roofline_bytes_per_s: f64,
        adapter: String,
        clock: Clock,
        rotation_sets: usize,
    ) -> Self {
        let bytes_per_s = summary.bytes_per_s(size, bytes_per_element);
        Self {
            optimizer: optimizer.to_string(),
            variant: variant.to_string(),
            precision: precision.name().to_string(),
            guarded: false,
            size,
            implementation,
            median_s: summary.median_s,
            min_s: summary.min_s,
            max_s: summary.max_s,
            samples: summary.samples,
            elements_per_s: size as f64 / summary.median_s,
            bytes_per_s,
            bytes_per_element,
            roofline_fraction: bytes_per_s / roofline_bytes_per_s,
            adapter,
            clock,
            rotation_sets,
        }
    }
}

/// A deterministic pattern in [-1, 1] without denormals, cheap enough for gigabytes: the
/// values do not matter to the timing, only that they are ordinary numbers.
pub(crate) fn pattern(len: usize, salt: u32) -> Vec<f32> {
    use rayon::prelude::*;
    (0..len)
        .into_par_iter()
        .map(|i| {
            let h = (i as u32 ^ salt).wrapping_mul(0x9E37_79B1).rotate_left(13);
            (h % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_that_changes_the_bytes_moved_is_a_case() {
        let all = cases(&[]).unwrap();
        let defaults: Vec<&str> = all
            .iter()
            .filter(|c| c.variant == "default")
            .map(|c| c.optimizer)
            .collect();
        assert_eq!(
            defaults,
            Optimizer::NAMES,
            "each registered optimizer's defaults"
        );
        for case in &all {
            let state = case.config.state_names().len();
            assert_eq!(case.bytes_per_element(), 12 + 8 * state, "{}", case.label());
        }
        // The cases of today's optimizers, as the README lists them.
        let documented = [
            ("sgd", 12),
            ("sgd/momentum", 20),
            ("adagrad", 20),
            ("rmsprop", 20),
            ("rmsprop/centered", 28),
            ("rmsprop/momentum", 28),
            ("rmsprop/centered+momentum", 36),
            ("adadelta", 28),
            ("adam", 28),
            ("adam/amsgrad", 36),
            ("adamw", 28),
            ("adamw/amsgrad", 36),
        ];
        for (label, bytes) in documented {
            let case = all.iter().find(|c| c.label() == label);
            assert_eq!(case.map(Case::bytes_per_element), Some(bytes), "{label}");
        }
        assert!(cases(&["lion".into()]).is_err());
    }

    #[test]
    fn summary_takes_the_median_of_unsorted_times() {
        let s = Summary::of(&[3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!(
            (s.median_s, s.min_s, s.max_s, s.samples),
            (2.5, 1.0, 10.0, 4)
        );
        assert_eq!(Summary::of(&[5.0, 1.0, 3.0]).unwrap().median_s, 3.0);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn cache_sizes_parse_as_sysfs_writes_them() {
        assert_eq!(parse_cache_size("480M"), Some(480 << 20));
        assert_eq!(parse_cache_size("2048K"), Some(2 << 20));
        assert_eq!(parse_cache_size("32768"), Some(32768));
        assert_eq!(parse_cache_size("lots"), None);
    }

    #[test]
    fn rotation_covers_the_target_and_stops_at_one_set() {
        assert_eq!(rotation_sets(1 << 20, 1 << 30), 1024);
        assert_eq!(rotation_sets(3 << 20, 10 << 20), 4);
        assert_eq!(rotation_sets(1 << 30, 1 << 28), 1);
    }

    #[test]
    fn the_pattern_is_bounded_and_not_constant() {
        let p = pattern(100_000, 1);
        assert!(p.iter().all(|x| (-1.0..=1.0).contains(x)));
        assert!(p.iter().any(|&x| x != p[0]));
        assert_ne!(pattern(100, 1), pattern(100, 2));
    }
}
