//! The demo, reduced to a few hundred iterations per run: the effects the lecture notes predict
//! show, gradient descent on the GPU follows exact arithmetic, and the files written are real
//! charts.

use std::path::PathBuf;

use fusedopt_cli::demo::{self, DemoOptions, Experiment, Iterations, RunReport};

/// Enough for gradient descent on the valley (about 100 iterations) and Adagrad on the n = 4
/// quadratic (about 50), and far too few for gradient descent on the latter (millions), so its
/// count has to be computed.
const MAX_ITERATIONS: u64 = 300;

/// A fresh folder under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run<'a>(experiment: &'a Experiment, label: &str) -> &'a RunReport {
    experiment
        .run(label)
        .unwrap_or_else(|| panic!("{}: no run {label}", experiment.key))
}

/// Unit roundoff of f32.
const U: f64 = 1.0 / (1u64 << 24) as f64;

/// Gradient descent's sampled GPU iterates against the exact f64 iteration `x ← x − α·A·x`,
/// computed here independently of the library: each coordinate within `8·k·u` times the largest
/// magnitude so far (k f32 steps, each rounding at most a few ulps of the iterate).
fn assert_follows_exact_gd(experiment: &Experiment, label: &str) {
    let gd = run(experiment, label);
    let problem = &experiment.problem;
    let alpha = gd.config.lr();
    let largest = |x: &[f64]| x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let mut x = problem.start().to_vec();
    let mut scale = largest(&x);
    let mut k = 0;
    for sample in &gd.samples {
        while k < sample.iteration {
            let g = problem.gradient(&x);
            for (xi, gi) in x.iter_mut().zip(g) {
                *xi -= alpha * gi;
            }
            scale = scale.max(largest(&x));
            k += 1;
        }
        let tolerance = 1e-6 + 8.0 * (k + 1) as f64 * U * scale;
        for (i, (gpu, exact)) in sample.x.iter().zip(&x).enumerate() {
            let error = (gpu - exact).abs();
            assert!(
                error <= tolerance,
                "{} {label}: x_{k}[{i}] = {gpu} on the GPU, {exact} exact \
                 (error {error:e} > {tolerance:e})",
                experiment.key,
            );
        }
    }
    assert_eq!(k, gd.iterations_run, "samples reach the last iterate");
    let exact = gd.exact.as_ref().expect("gradient descent is checked");
    assert_eq!(exact.check.iterations, gd.iterations_run);
    assert!(
        exact.check.passed(),
        "{label}: the library's own check fails: {:?}",
        exact.check
    );
}

#[test]
fn reduced_demo_shows_the_predicted_effects_and_writes_charts() {
    let Some(gpu) = fusedopt::testing::gpu() else {
        return;
    };
    let dir = TempDir::new("fusedopt-demo-test");
    let options = DemoOptions {
        out: Some(dir.0.clone()),
        max_iterations: MAX_ITERATIONS,
        ..DemoOptions::default()
    };
    let report = demo::run(gpu, &options).expect("demo runs");
    let keys: Vec<&str> = report.experiments.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["imbalanced-n4", "imbalanced-n6", "valley"]);

    // (b): η = 0.4 converges, η = 0.6 diverges.
    let valley = report.experiment("valley").expect("valley");
    let slow = run(valley, "GD η=0.4");
    assert!(
        matches!(slow.iterations, Iterations::Measured(k) if k <= MAX_ITERATIONS),
        "{:?}",
        slow.iterations
    );
    assert!(!slow.diverged && slow.final_loss <= valley.tolerance);
    let fast = run(valley, "GD η=0.6");
    assert!(fast.diverged, "η = 0.6 diverges: {:?}", fast.iterations);
    assert!(fast.iterations.count().is_none());
    assert!(fast.final_loss > 1e9 * valley.initial_loss);
    assert_follows_exact_gd(valley, "GD η=0.4");
    assert_follows_exact_gd(valley, "GD η=0.6");

    // (a), n = 4: Adagrad measured, gradient descent computed, far apart.
    let a4 = report.experiment("imbalanced-n4").expect("n = 4");
    let gd = run(a4, "GD");
    assert!(gd.iterations.is_computed(), "{:?}", gd.iterations);
    assert!(gd.iterations.count().is_some_and(|k| k > 1_000_000));
    let adagrad = run(a4, "Adagrad");
    assert!(
        matches!(adagrad.iterations, Iterations::Measured(_)),
        "{:?}",
        adagrad.iterations
    );
    let speedup = a4.speedup("Adagrad", "GD").expect("both reached");
    assert!(speedup > 100.0, "Adagrad speed-up {speedup}");
    assert_follows_exact_gd(a4, "GD");
    // Nothing that stopped at the cap is claimed to have reached the tolerance.
    for experiment in &report.experiments {
        for r in &experiment.runs {
            if let Iterations::Measured(k) = r.iterations {
                assert!(r.final_loss <= experiment.tolerance && k == r.iterations_run);
            }
            if !r.iterations.is_computed() && r.iterations.count().is_none() {
                assert!(r.final_loss > experiment.tolerance, "{}", r.label);
            }
        }
    }

    // (c) Sparse features: every optimizer learns (held-out loss below the start), the two
    // with a sparse kernel go through it, and each error is measured on both feature sets.
    let sparse = &report.sparse;
    assert_eq!(sparse.runs.len(), 6);
    for r in &sparse.runs {
        let last = r.losses.last().expect("losses").1;
        assert!(last < sparse.start && last > 0.0, "{}: {last}", r.label);
        assert!(r.frequent_error.is_finite() && r.rare_error.is_finite());
    }
    let sparse_kernels: Vec<&str> = sparse
        .runs
        .iter()
        .filter(|r| r.kernel == "sparse kernel")
        .map(|r| r.label.as_str())
        .collect();
    assert_eq!(
        sparse_kernels.len(),
        2,
        "Adagrad and SparseAdam: {sparse_kernels:?}"
    );

    // Files: one loss chart per experiment (the sparse one too), the valley's paths, and
    // demo.md linking them.
    let svgs: Vec<&PathBuf> = report
        .files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "svg"))
        .collect();
    assert_eq!(svgs.len(), 5, "{:?}", report.files);
    for svg in &svgs {
        let text = std::fs::read_to_string(svg).expect("readable");
        assert!(text.starts_with("<svg"), "{}", svg.display());
        assert!(text.trim_end().ends_with("</svg>"), "{}", svg.display());
        assert!(
            text.matches("<polyline").count() >= 8,
            "{}: data lines",
            svg.display()
        );
        assert!(text.contains("<text"), "{}: labels", svg.display());
    }
    let paths = std::fs::read_to_string(dir.0.join("paths-valley.svg")).expect("paths chart");
    assert!(paths.contains("GD η=0.6: diverged"), "panel titles");
    let markdown = std::fs::read_to_string(dir.0.join("demo.md")).expect("demo.md");
    for svg in &svgs {
        let name = svg.file_name().unwrap().to_string_lossy();
        assert!(
            markdown.contains(&format!("]({name})")),
            "demo.md links {name}"
        );
    }
    assert!(markdown.contains("| GD η=0.6 |"), "demo.md has the tables");
    assert!(
        markdown.contains("## (c) Sparse features"),
        "and the sparse one"
    );
}

#[test]
fn invalid_options_are_errors() {
    let Some(gpu) = fusedopt::testing::gpu() else {
        return;
    };
    for options in [
        DemoOptions {
            large_n: 1,
            ..DemoOptions::default()
        },
        DemoOptions {
            max_iterations: 0,
            ..DemoOptions::default()
        },
        DemoOptions {
            relative_tolerance: f64::NAN,
            ..DemoOptions::default()
        },
        DemoOptions {
            beta: 0.0,
            ..DemoOptions::default()
        },
    ] {
        let error = demo::run(gpu, &options).expect_err("rejected");
        assert!(error.to_string().starts_with("demo: "), "{error}");
    }
}
