//! The `fusedopt` command: adapter information, GPU-against-CPU validation and checks against
//! recorded PyTorch / optax trajectories.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fusedopt::kernels::LaunchShape;
use fusedopt::testing::{
    gpu_against_cpu_in, guarded_against_cpu, sparse_against_cpu, sparse_cases, validation_guard,
    variants,
};
use fusedopt::{
    ErrorStats, Gpu, Optimizer, Precision, SparseOptimizer, Tolerance, golden::Recording,
    gpu::describe_adapter,
};
use fusedopt_cli::bench::{self, BenchOptions, BenchReport, Implementation};
use fusedopt_cli::error::chain;
use fusedopt_cli::{Result, demo};

/// Fused optimizer kernels on wgpu, checked against a CPU reference and PyTorch.
///
/// Without a command it runs the main job on the best adapter: a quick `validate` of every
/// kernel, then `bench` with its defaults, writing the report into `fusedopt-report/`.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the adapter, backend, driver, the limits that matter and the features.
    Info,
    /// Run every optimizer under every option combination on the GPU and on the CPU reference
    /// from the same seeded random data, and compare parameters and state after every step.
    Validate {
        /// Only this optimizer (repeatable); the row-sparse ones too (`adagrad` runs both).
        #[arg(long = "optimizer", value_name = "NAME", value_parser = all_optimizer_names())]
        optimizers: Vec<String>,
        /// Elements per tensor (1048576, 2^20 or 1M).
        #[arg(long, default_value_t = 100_003, value_parser = parse_size)]
        size: usize,
        /// Steps per run (at least 1).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        steps: u64,
        /// Seed of the random data.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Only this storage precision (repeatable; default every one): f32, bf16, f16,
        /// bf16-master, f16-master, bf16-sr.
        #[arg(long = "precision", value_name = "P", value_parser = parse_precision)]
        precisions: Vec<Precision>,
        #[command(flatten)]
        tolerance: ToleranceArgs,
        #[command(flatten)]
        launch: LaunchArgs,
    },
    /// Measure step throughput of the CPU reference, the fast CPU path and the GPU kernel,
    /// against the copy bandwidth of each device (the roofline).
    Bench {
        /// Only this optimizer (repeatable); every variant that changes the bytes moved is
        /// measured (momentum, centered, amsgrad).
        #[arg(long = "optimizer", value_name = "NAME", value_parser = optimizer_names())]
        optimizers: Vec<String>,
        /// Parameters per step (repeatable); `2^20` and `1048576` both work. Default: 2^16 to
        /// 2^24, and up to 2^28 on a GPU with the memory.
        #[arg(long = "size", value_name = "N", value_parser = parse_size)]
        sizes: Vec<usize>,
        /// Only this implementation (repeatable).
        #[arg(long = "implementation", value_name = "IMPL", value_parser = parse_implementation)]
        implementations: Vec<Implementation>,
        /// Print the rows as one JSON array on stdout, and nothing else there.
        #[arg(long)]
        json: bool,
        /// Write the report (report.md, results.json, SVG charts) into this folder.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Time GPU steps with the wall clock around submit-and-wait even where the adapter
        /// has timestamp queries.
        #[arg(long)]
        wall_clock: bool,
        /// Measure the CPU only (no adapter needed).
        #[arg(long)]
        cpu_only: bool,
        /// Milliseconds of timed steps per point (more samples for fast steps, at least 7).
        #[arg(long, default_value_t = 300, value_name = "MS")]
        time_per_point: u64,
        /// Step one parameter set over and over, even where it fits in a cache (as most
        /// framework benchmarks do); by default small sizes rotate over several sets.
        #[arg(long)]
        no_rotation: bool,
        /// Storage precision of the optimizer cases (repeatable; default f32): f32, bf16, f16,
        /// bf16-master, f16-master, bf16-sr. The 16-bit ones are measured on the GPU.
        #[arg(long = "precision", value_name = "P", value_parser = parse_precision)]
        precisions: Vec<Precision>,
        /// Also measure each case guarded: after the pre-pass of a loss scaler (PyTorch's
        /// GradScaler defaults) and a clip of the global norm, as rows of their own (GPU).
        #[arg(long)]
        guard: bool,
        /// Measure the row-sparse steps of an embedding table instead: each sparse optimizer
        /// against the dense step of the same table at 1 %, 0.1 % and 0.01 % of rows looked up
        /// (and the CPU reference's sparse step), into sparse.md and sparse.json with --out.
        #[arg(long)]
        sparse: bool,
        /// Rows of the --sparse table.
        #[arg(long, default_value_t = 1 << 20, value_parser = parse_size)]
        sparse_rows: usize,
        /// Elements per row of the --sparse table.
        #[arg(long, default_value_t = 64)]
        sparse_dim: usize,
        #[command(flatten)]
        launch: LaunchArgs,
    },
    /// The lecture notes' experiments through the GPU kernels: the imbalanced quadratic (gradient
    /// descent against Adagrad and the others, measured speed-up beside the predicted one) and
    /// the valley 0.1 x1² + 2 x2². Prints iterations to a stated tolerance per optimizer.
    Demo {
        /// Write the charts (losses, valley and saddle paths, escape, bias correction) and demo.md here.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Most iterations any optimizer runs on the GPU.
        #[arg(long, default_value_t = demo::DemoOptions::default().max_iterations)]
        max_iterations: u64,
        /// The larger dimension of the imbalanced quadratic, besides n = 4.
        #[arg(long, default_value_t = demo::DemoOptions::default().large_n)]
        large_n: usize,
    },
    /// Run reference trajectories (safetensors, see tests/golden/FORMAT.md) through the GPU
    /// kernel and the CPU reference, step by step, and report the worst errors.
    Check {
        /// Trajectory files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Check only the CPU reference (no adapter needed).
        #[arg(long)]
        cpu_only: bool,
        #[command(flatten)]
        tolerance: ToleranceArgs,
        #[command(flatten)]
        launch: LaunchArgs,
    },
    /// Print what checkpoints hold (optimizer, hyperparameters, step, scaler, tensors) after
    /// the checks a restore makes; exits non-zero if any file fails them.
    Inspect {
        /// Checkpoint files (safetensors, as `Checkpoint::save` writes them).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Per-element tolerance `|x - ref| <= atol + rtol * |ref|`.
#[derive(clap::Args, Debug)]
struct ToleranceArgs {
    /// Absolute tolerance (finite, >= 0).
    #[arg(long, default_value_t = Tolerance::F32.abs, value_parser = parse_tolerance)]
    atol: f64,
    /// Relative tolerance (finite, >= 0).
    #[arg(long, default_value_t = Tolerance::F32.rel, value_parser = parse_tolerance)]
    rtol: f64,
    /// Ask for bit-identical results: both tolerances zero (refused otherwise, where a zero
    /// tolerance is more likely a mistake).
    #[arg(long, conflicts_with_all = ["atol", "rtol"])]
    exact: bool,
}

/// A tolerance: a finite number, not negative (a NaN or a negative one passes everything).
fn parse_tolerance(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        Ok(x) => Err(format!("{x} is not a tolerance: give a finite number >= 0")),
        Err(_) => Err(format!("{s:?} is not a number")),
    }
}

/// How the GPU kernels cover their ranges (a tuning knob: the numbers never change).
#[derive(clap::Args, Debug)]
struct LaunchArgs {
    /// Threads per workgroup.
    #[arg(long, default_value_t = LaunchShape::default().workgroup_size, value_name = "N")]
    workgroup_size: u32,
    /// Elements each invocation updates per round, a workgroup apart.
    #[arg(long, default_value_t = LaunchShape::default().elements_per_invocation, value_name = "N")]
    elements_per_invocation: u32,
    /// Cap the workgroups of a dispatch; each invocation then loops over the range
    /// (grid-stride). Default: enough workgroups to cover it in one round.
    #[arg(long, value_name = "N")]
    max_workgroups: Option<u32>,
}

impl LaunchArgs {
    /// A device context on the best adapter with this launch shape.
    fn gpu(&self) -> Result<Gpu> {
        let mut gpu = Gpu::new()?;
        gpu.set_launch_shape(LaunchShape {
            workgroup_size: self.workgroup_size,
            elements_per_invocation: self.elements_per_invocation,
            max_workgroups: self.max_workgroups,
        })?;
        Ok(gpu)
    }
}

impl ToleranceArgs {
    fn tolerance(&self) -> Result<Tolerance> {
        if self.exact {
            return Ok(Tolerance::EXACT);
        }
        if self.atol == 0.0 && self.rtol == 0.0 {
            return Err(fusedopt_cli::Error::InvalidArgument(
                "--atol 0 and --rtol 0 ask for bit-identical results: pass --exact for that".into(),
            ));
        }
        Ok(Tolerance {
            abs: self.atol,
            rel: self.rtol,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => main_job(),
        Some(Command::Bench {
            optimizers,
            sizes,
            implementations,
            json,
            out,
            wall_clock,
            cpu_only,
            time_per_point,
            no_rotation,
            precisions,
            guard,
            sparse,
            sparse_rows,
            sparse_dim,
            launch,
        }) => (|| {
            if let Some(dir) = out.as_deref().filter(|d| d.exists() && !d.is_dir()) {
                return Err(fusedopt_cli::Error::InvalidArgument(format!(
                    "--out {}: a file is there, not a folder",
                    dir.display()
                )));
            }
            let gpu = if cpu_only { None } else { Some(launch.gpu()?) };
            if sparse {
                let gpu = gpu.as_ref().ok_or_else(|| {
                    fusedopt_cli::Error::InvalidArgument("--sparse measures the GPU".into())
                })?;
                return bench_sparse(
                    gpu,
                    (sparse_rows, sparse_dim),
                    wall_clock,
                    time_per_point,
                    out,
                );
            }
            let mut options = BenchOptions::defaults(&optimizers, gpu.as_ref())?;
            if !precisions.is_empty() {
                options.cases = bench::cases_in(&optimizers, &precisions)?;
            }
            if guard {
                options.cases = bench::with_guarded(std::mem::take(&mut options.cases));
            }
            if !sizes.is_empty() {
                options.sizes = sizes;
            }
            if !implementations.is_empty() {
                options.implementations = implementations;
            }
            options.force_wall_clock = wall_clock;
            if no_rotation {
                options.rotation_bytes = 0;
            }
            options.sampling.target_time = std::time::Duration::from_millis(time_per_point);
            let report = run_bench(gpu.as_ref(), &options)?;
            if json {
                println!("{}", bench::report::json(&report)?);
            } else {
                print!("{}", bench::report::table(&report));
            }
            if let Some(dir) = out {
                let command = std::env::args().collect::<Vec<_>>().join(" ");
                write_report(&report, &dir, &command, json)?;
            }
            Ok(true)
        })(),
        Some(Command::Info) => info(),
        Some(Command::Demo {
            out,
            max_iterations,
            large_n,
        }) => (|| {
            let gpu = Gpu::new()?;
            let options = demo::DemoOptions {
                out,
                max_iterations,
                large_n,
                ..Default::default()
            };
            demo::run(&gpu, &options).map(|_| true)
        })(),
        Some(Command::Validate {
            optimizers,
            size,
            steps,
            seed,
            precisions,
            tolerance,
            launch,
        }) => (|| {
            // What can be refused is refused before a device is made.
            let tol = tolerance.tolerance()?;
            // Parameters, gradients, state and master on the CPU side, and what is read back
            // from the GPU: at most 16 f32 per element.
            bench::check_host_memory(&format!("validate at {size} elements"), size, 64)?;
            let gpu = launch.gpu()?;
            let precisions = if precisions.is_empty() {
                Precision::ALL.to_vec()
            } else {
                precisions
            };
            validate(&gpu, &optimizers, &precisions, (size, steps, seed), &tol)
        })(),
        Some(Command::Check {
            files,
            cpu_only,
            tolerance,
            launch,
        }) => (|| {
            let tol = tolerance.tolerance()?;
            let gpu = if cpu_only { None } else { Some(launch.gpu()?) };
            check(gpu.as_ref(), &files, &tol)
        })(),
        Some(Command::Inspect { files }) => Ok(fusedopt_cli::inspect::inspect(&files)),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::from(2)
        }
    }
}

/// Where the main job writes its report.
const DEFAULT_REPORT_DIR: &str = "fusedopt-report";

/// The main job: validation of every kernel, then the benchmark with its defaults, printed and
/// written to [`DEFAULT_REPORT_DIR`]. A validation failure is reported and fails the run, but
/// the benchmark still runs so the numbers can be looked at.
fn main_job() -> Result<bool> {
    let gpu = Gpu::new()?;
    let valid = validate(&gpu, &[], &Precision::ALL, (100_003, 3, 0), &Tolerance::F32)?;
    println!();
    let options = BenchOptions::defaults(&[], Some(&gpu))?;
    println!(
        "bench: {} cases × {} sizes × {} implementations (`fusedopt bench --help` for options)",
        options.cases.len(),
        options.sizes.len(),
        options.implementations.len()
    );
    let report = run_bench(Some(&gpu), &options)?;
    print!("{}", bench::report::table(&report));
    write_report(
        &report,
        std::path::Path::new(DEFAULT_REPORT_DIR),
        "fusedopt",
        false,
    )?;
    if !valid {
        println!(
            "validation FAILED (see above): the numbers are of kernels that do not match the reference"
        );
    }
    Ok(valid)
}

/// Runs the benchmark with a progress bar on stderr (hidden when stderr is not a terminal).
fn run_bench(gpu: Option<&Gpu>, options: &BenchOptions) -> Result<BenchReport> {
    let rooflines = 1 + u64::from(gpu.is_some());
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(options.points() + rooflines),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut started = false;
    let report = bench::run(gpu, options, |what| {
        if started {
            bar.inc(1);
        }
        started = true;
        bar.set_message(what.to_string());
    });
    bar.finish_and_clear();
    report
}

/// Writes the report folder and says where (on stderr when stdout carries JSON).
fn write_report(
    report: &BenchReport,
    dir: &std::path::Path,
    command: &str,
    quiet: bool,
) -> Result<()> {
    let files = bench::report::write(report, dir, command)?;
    let line = format!(
        "report: {} ({} files)",
        dir.join("report.md").display(),
        files.len()
    );
    if quiet {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
    Ok(())
}

/// The optimizers the library registers, as the values `--optimizer` takes.
/// `fusedopt bench --sparse`: the table of sparse against dense steps, and its files.
fn bench_sparse(
    gpu: &Gpu,
    (rows, dim): (usize, usize),
    wall_clock: bool,
    time_per_point: u64,
    out: Option<PathBuf>,
) -> Result<bool> {
    if rows == 0 || dim == 0 {
        return Err(fusedopt_cli::Error::InvalidArgument(
            "--sparse-rows and --sparse-dim must be at least 1".into(),
        ));
    }
    let timer = bench::GpuTimer::new(gpu, wall_clock)?;
    let sampling = bench::Sampling {
        target_time: std::time::Duration::from_millis(time_per_point),
        ..bench::Sampling::default()
    };
    let rows = bench::sparse::run(gpu, rows, dim, &sampling, &timer, true, |m| {
        eprintln!("{m}")
    })?;
    let table = bench::sparse::table(&rows);
    println!(
        "GPU {} ({:?} clock), medians:\n{table}",
        describe_adapter(gpu.adapter_info()),
        timer.clock()
    );
    if let Some(dir) = out {
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        let gpu_name = describe_adapter(gpu.adapter_info());
        bench::sparse::write(&rows, &dir, &gpu_name, &command)?;
    }
    Ok(true)
}

fn optimizer_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(Optimizer::NAMES)
}

/// The dense optimizers' names and the row-sparse ones' (adagrad once).
fn all_optimizer_names() -> clap::builder::PossibleValuesParser {
    let mut names = Optimizer::NAMES.to_vec();
    names.extend(
        SparseOptimizer::NAMES
            .iter()
            .filter(|n| !Optimizer::NAMES.contains(n)),
    );
    clap::builder::PossibleValuesParser::new(names)
}

/// `1048576`, `2^20` or `1M`/`1K` (binary multiples).
fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let parsed = if let Some((base, exp)) = s.split_once('^') {
        let base: usize = base.parse().map_err(|_| format!("bad base in {s:?}"))?;
        let exp: u32 = exp.parse().map_err(|_| format!("bad exponent in {s:?}"))?;
        base.checked_pow(exp)
    } else if let Some(n) = s.strip_suffix(['M', 'm']) {
        n.parse::<usize>().ok().and_then(|n| n.checked_mul(1 << 20))
    } else if let Some(n) = s.strip_suffix(['K', 'k']) {
        n.parse::<usize>().ok().and_then(|n| n.checked_mul(1 << 10))
    } else {
        s.parse().ok()
    };
    match parsed {
        Some(0) => Err("a size must be at least 1".into()),
        Some(n) => Ok(n),
        None => Err(format!("{s:?} is not a size (examples: 1048576, 2^20, 1M)")),
    }
}

fn parse_precision(s: &str) -> Result<Precision, String> {
    s.parse().map_err(|e: fusedopt::Error| e.to_string())
}

fn parse_implementation(s: &str) -> Result<Implementation, String> {
    Implementation::ALL
        .into_iter()
        .find(|i| i.name() == s)
        .ok_or_else(|| {
            let names: Vec<&str> = Implementation::ALL.iter().map(|i| i.name()).collect();
            format!("{s:?} is not one of {}", names.join(", "))
        })
}

fn info() -> Result<bool> {
    let gpu = Gpu::new()?;
    let a = gpu.adapter_info();
    let limits = gpu.device().limits();
    println!("adapter   {}", a.name);
    println!("type      {:?}", a.device_type);
    println!("backend   {}", a.backend);
    println!("driver    {} {}", a.driver, a.driver_info);
    println!("vendor    {:#06x}  device {:#06x}", a.vendor, a.device);
    println!();
    println!("limits");
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    println!(
        "  max_storage_buffer_binding_size       {:>14} B ({:.0} MiB, {} f32)",
        limits.max_storage_buffer_binding_size,
        mib(limits.max_storage_buffer_binding_size),
        limits.max_storage_buffer_binding_size / 4
    );
    println!(
        "  max_buffer_size                       {:>14} B ({:.0} MiB)",
        limits.max_buffer_size,
        mib(limits.max_buffer_size)
    );
    println!(
        "  max_compute_workgroups_per_dimension  {:>14}",
        limits.max_compute_workgroups_per_dimension
    );
    println!(
        "  max_compute_invocations_per_workgroup {:>14}",
        limits.max_compute_invocations_per_workgroup
    );
    println!(
        "  max_storage_buffers_per_shader_stage  {:>14}",
        limits.max_storage_buffers_per_shader_stage
    );
    println!(
        "  min_storage_buffer_offset_alignment   {:>14}",
        limits.min_storage_buffer_offset_alignment
    );
    println!(
        "  min_uniform_buffer_offset_alignment   {:>14}",
        limits.min_uniform_buffer_offset_alignment
    );
    println!(
        "  elements per dispatch chunk           {:>14}",
        gpu.limits().chunk_elements()
    );
    println!();
    // Features that matter to optimizer kernels: timing, half precision, push constants.
    let relevant = [
        ("TIMESTAMP_QUERY", wgpu::Features::TIMESTAMP_QUERY),
        (
            "TIMESTAMP_QUERY_INSIDE_PASSES",
            wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
        ),
        ("SHADER_F16", wgpu::Features::SHADER_F16),
        ("SHADER_F64", wgpu::Features::SHADER_F64),
        ("SUBGROUP", wgpu::Features::SUBGROUP),
        ("IMMEDIATES", wgpu::Features::IMMEDIATES),
        ("PIPELINE_CACHE", wgpu::Features::PIPELINE_CACHE),
    ];
    println!("features (offered by the adapter / enabled on the device)");
    for (name, feature) in relevant {
        let offered = match gpu.adapter_features() {
            Some(f) if f.contains(feature) => "yes",
            Some(_) => "no",
            None => "?",
        };
        let enabled = if gpu.features().contains(feature) {
            "yes"
        } else {
            "no"
        };
        println!("  {name:<38} {offered:>3} / {enabled}");
    }
    println!();
    print_largest_models(&gpu)?;
    let all =
        fusedopt::gpu::list_adapters(wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all()));
    println!();
    println!("adapters found (in order of preference)");
    for info in &all {
        println!("  {}", describe_adapter(info));
    }
    Ok(true)
}

/// Per optimizer variant: the memory one parameter needs (itself, its gradient and exactly the
/// state the variant keeps), and how many parameters fit in the device's memory.
fn print_largest_models(gpu: &Gpu) -> Result<()> {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    // A software adapter's buffers live in the host's memory, whatever its heaps say.
    let memory = match gpu.adapter_info().device_type {
        wgpu::DeviceType::Cpu => Some(bench::available_memory()).filter(|&m| m > 0),
        _ => gpu.device_memory(),
    };
    match memory {
        Some(bytes) if gpu.adapter_info().device_type == wgpu::DeviceType::Cpu => println!(
            "memory: {:.1} GiB (the host's available memory: a software adapter's buffers live there)",
            gib(bytes)
        ),
        Some(bytes) => println!("memory: {:.1} GiB device-local", gib(bytes)),
        None => println!("memory: not reported by this backend (wgpu has no query for it)"),
    }
    println!(
        "largest model per optimizer and precision (parameters, gradients, optimizer state and \
         master, nothing else)"
    );
    println!(
        "  {:<26} {:>7} {:>16}  state",
        "optimizer", "B/param", "largest model"
    );
    for case in bench::cases_in(&[], &Precision::ALL)? {
        let per_param = case.footprint(1);
        let largest = memory.map_or("?".to_string(), |m| {
            let n = m / per_param;
            format!("{:.2} G params", n as f64 / 1e9)
        });
        println!(
            "  {:<26} {:>7} {:>16}  {}",
            case.label(),
            per_param,
            largest,
            case.config.state_names().join(", ")
        );
    }
    Ok(())
}

/// Every variant of each optimizer in each precision, GPU against the CPU reference, on
/// `(size, steps, seed)`.
fn validate(
    gpu: &Gpu,
    optimizers: &[String],
    precisions: &[Precision],
    (size, steps, seed): (usize, u64, u64),
    tol: &Tolerance,
) -> Result<bool> {
    let names: Vec<String> = if optimizers.is_empty() {
        Optimizer::NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        optimizers
            .iter()
            .filter(|n| !SparseOptimizer::NAMES.contains(&n.as_str()) || n.as_str() == "adagrad")
            .cloned()
            .collect()
    };
    let sparse: Vec<SparseOptimizer> = SparseOptimizer::variants()
        .into_iter()
        .filter(|c| optimizers.is_empty() || optimizers.iter().any(|n| n == c.name()))
        .collect();
    if steps == 0 || precisions.is_empty() {
        return Err(fusedopt_cli::Error::InvalidArgument(
            "nothing to validate: no step or no precision".into(),
        ));
    }

    let shape = gpu.launch_shape();
    println!(
        "validate: GPU ({}; {} threads per workgroup, {} elements per invocation{}) against the CPU reference, {size} elements, {steps} steps, seed {seed}, \
         tolerance {} + {}·|ref|",
        describe_adapter(gpu.adapter_info()),
        shape.workgroup_size,
        shape.elements_per_invocation,
        shape
            .max_workgroups
            .map_or(String::new(), |m| format!(", at most {m} workgroups")),
        tol.abs,
        tol.rel
    );
    let guard = validation_guard();
    println!(
        "every configuration runs twice: as is, and guarded by {} with an inf planted at step \
         2 and a NaN at step 5 (skipped steps, scale, norm and clip compared exactly)",
        guard.describe()
    );
    println!(
        "{:<9} {:<11} {:<7} {:>10} {:>10} {:>6} {:>4}  {:<15} options",
        "optimizer", "precision", "guard", "max abs", "max rel", "ratio", "step", "worst tensor"
    );
    let mut all_ok = true;
    let mut cases = 0;
    let runs = names.iter().flat_map(|name| {
        precisions
            .iter()
            .map(move |precision| (name.as_str(), *precision))
    });
    let runs = runs.flat_map(|run| [(run, false), (run, true)]);
    for ((name, precision), guarded) in runs {
        for config in variants(name)? {
            let report = match guarded {
                false => gpu_against_cpu_in(gpu, &config, precision, size, steps, seed, tol)?,
                true => {
                    guarded_against_cpu(gpu, &config, precision, guard, size, steps, seed, tol)?
                }
            };
            let overall = report.overall();
            let worst = report
                .tensors
                .iter()
                .filter(|(_, s)| s.worst_ratio > 0.0)
                .max_by(|a, b| a.1.worst_ratio.total_cmp(&b.1.worst_ratio))
                .map_or("-", |(n, _)| n);
            let verdict = if overall.passed() { "" } else { "  MISMATCH" };
            all_ok &= overall.passed();
            cases += 1;
            println!(
                "{:<9} {:<11} {:<7} {:>10.2e} {:>10.2e} {:>6.3} {:>4}  {:<15} {}{}",
                config.name(),
                precision.name(),
                if guarded { "yes" } else { "-" },
                overall.max_abs,
                overall.max_rel,
                overall.worst_ratio,
                overall.worst_step,
                worst,
                config.describe(),
                verdict
            );
        }
    }
    if !sparse.is_empty() {
        let (ok, n) = validate_sparse(gpu, &sparse, (steps, seed), tol)?;
        all_ok &= ok;
        cases += n;
    }
    println!(
        "{cases} configurations: {}",
        if all_ok {
            "all match"
        } else {
            "MISMATCHES found"
        }
    );
    Ok(all_ok)
}

/// The row-sparse optimizers against the CPU reference on every lookup pattern: the whole
/// table and all state after every step. Returns whether all matched, and the cases run.
fn validate_sparse(
    gpu: &Gpu,
    configs: &[SparseOptimizer],
    (steps, seed): (u64, u64),
    tol: &Tolerance,
) -> Result<(bool, usize)> {
    println!(
        "row-sparse steps of an embedding table (indices with duplicates, one gradient row \
         each), the whole table and all state compared after every step:"
    );
    println!(
        "{:<16} {:<11} {:>5} {:>4} {:>5} {:>10} {:>10} {:>6} {:>4}  {:<11} options",
        "optimizer",
        "lookups",
        "rows",
        "dim",
        "k",
        "max abs",
        "max rel",
        "ratio",
        "step",
        "worst tensor"
    );
    let mut all_ok = true;
    let mut cases = 0;
    for config in configs {
        for case in sparse_cases() {
            let report = sparse_against_cpu(gpu, config, &case, steps, seed, tol)?;
            let mut overall = ErrorStats::default();
            for (_, stats) in &report {
                overall.merge(stats);
            }
            let worst = report
                .iter()
                .filter(|(_, s)| s.worst_ratio > 0.0)
                .max_by(|a, b| a.1.worst_ratio.total_cmp(&b.1.worst_ratio))
                .map_or("-", |(n, _)| n);
            all_ok &= overall.passed();
            cases += 1;
            println!(
                "{:<16} {:<11} {:>5} {:>4} {:>5} {:>10.2e} {:>10.2e} {:>6.3} {:>4}  {:<11} {}{}",
                config.name(),
                case.name,
                case.rows,
                case.dim,
                case.k,
                overall.max_abs,
                overall.max_rel,
                overall.worst_ratio,
                overall.worst_step,
                worst,
                config.describe(),
                if overall.passed() { "" } else { "  MISMATCH" }
            );
        }
    }
    Ok((all_ok, cases))
}

fn check(gpu: Option<&Gpu>, files: &[PathBuf], tol: &Tolerance) -> Result<bool> {
    if let Some(gpu) = gpu {
        println!("check: GPU {}", describe_adapter(gpu.adapter_info()));
    }
    println!(
        "tolerance: |x - ref| <= {} + {}·|ref| on every f32 element of every step (16-bit \
         parameters: one unit in the last place of their format at |ref|)",
        tol.abs, tol.rel
    );
    let mut all_ok = true;
    for file in files {
        let recording = match Recording::load(file) {
            Ok(r) => r,
            Err(e) => {
                println!("{}: FAILED to load: {}", file.display(), chain(&e));
                all_ok = false;
                continue;
            }
        };
        match &recording {
            Recording::Dense(traj) => {
                println!(
                    "{} ({} in {}{}, {} steps × {}; {}; {})",
                    file.display(),
                    traj.optimizer.name(),
                    traj.precision,
                    if traj.guard.is_active() {
                        format!(" with {}", traj.guard.describe())
                    } else {
                        String::new()
                    },
                    traj.steps,
                    traj.n,
                    traj.optimizer.describe(),
                    traj.framework
                );
            }
            Recording::Sparse(traj) => {
                println!(
                    "{} ({} on sparse gradients, {} steps × {} lookups into {} rows × {}; every row; {}; {})",
                    file.display(),
                    traj.optimizer.name(),
                    traj.steps,
                    traj.k,
                    traj.rows,
                    traj.dim,
                    traj.optimizer.describe(),
                    traj.framework
                );
            }
        }
        let mut paths = vec![("cpu", recording.check_cpu(tol))];
        if let Some(gpu) = gpu {
            paths.push(("gpu", recording.check_gpu(gpu, tol)));
        }
        for (path, stats) in paths {
            match stats {
                Ok(s) => {
                    all_ok &= s.passed();
                    println!(
                        "  {path}  max abs {:.3e} (step {:>3})  max rel {:.3e} (step {:>3})  \
                         worst ratio {:.3} (step {}, element {})  {}",
                        s.max_abs,
                        s.max_abs_step,
                        s.max_rel,
                        s.max_rel_step,
                        s.worst_ratio,
                        s.worst_step,
                        s.worst_index,
                        if s.passed() {
                            "ok".to_string()
                        } else {
                            format!("FAILED ({} of {} elements)", s.failures, s.compared)
                        }
                    );
                }
                Err(e) => {
                    all_ok = false;
                    println!("  {path}  FAILED: {}", chain(&e));
                }
            }
        }
    }
    println!(
        "{}",
        if all_ok {
            "all files pass"
        } else {
            "some files FAILED"
        }
    );
    Ok(all_ok)
}
