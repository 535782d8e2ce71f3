//! The demo, reduced to a few hundred iterations per run: the effects the lecture notes predict
//! show, gradient descent on the GPU follows exact arithmetic, and the files written are real
//! charts.

use std::path::PathBuf;

use fusedopt_cli::demo::{self, DemoOptions, Experiment, Iterations, RunReport, saddle};

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

/// Gradient descent on `x² − y²` is `x_k = (1 − 2η)^k x_0`, `y_k = (1 + 2η)^k y_0`: the GPU's
/// iterates within `8·(k + 1)·u` relative of the closed form, from the f32 start.
fn assert_follows_saddle_gd(run: &saddle::SaddleRun) {
    let eta = run.config.lr();
    let (x0, y0) = run.path[0];
    assert_eq!(y0, f64::from(run.y0 as f32));
    for (k, &(x, y)) in run.path.iter().enumerate() {
        let tolerance = 8.0 * (k + 1) as f64 * U;
        let exact = (
            x0 * (1.0 - 2.0 * eta).powi(k as i32),
            y0 * (1.0 + 2.0 * eta).powi(k as i32),
        );
        for (got, want) in [(x, exact.0), (y, exact.1)] {
            assert!(
                (got - want).abs() <= tolerance * want.abs(),
                "GD from y0 = {}: {got} at {k}, exactly {want}",
                run.y0
            );
        }
    }
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

    // (d) The saddle: every run escapes; gradient descent follows its closed form and slows by
    // ln 10 / ln(1 + 2η) iterations per factor 10 closer to the ridge; Adagrad, RMSprop and
    // Adam escape in as many iterations from every start.
    let saddle = &report.saddle;
    assert_eq!(saddle.runs.len(), 7 * saddle::STARTS.len());
    for r in &saddle.runs {
        let k = r
            .escape
            .unwrap_or_else(|| panic!("{} from {} escapes", r.label, r.y0));
        assert_eq!(r.path.len() as u64, k + 1);
        let (x, y) = r.path[k as usize];
        assert!(
            x * x - y * y <= saddle::ESCAPE,
            "{}: f = {}",
            r.label,
            x * x - y * y
        );
        let (x, y) = r.path[(k as usize).saturating_sub(1)];
        assert!(
            x * x - y * y > saddle::ESCAPE,
            "{}: the first escaped iterate",
            r.label
        );
        // Every first step along x is as long as the experiment says, but Adadelta's.
        if r.label != "Adadelta" {
            let first = (r.path[1].0 - r.path[0].0).abs();
            assert!(
                (first / saddle::FIRST_STEP - 1.0).abs() < 1e-4,
                "{}: first step {first}",
                r.label
            );
        }
    }
    for y0 in saddle::STARTS {
        assert_follows_saddle_gd(saddle.run("GD", y0).expect("GD"));
    }
    let escape = |label: &str, y0: f64| saddle.run(label, y0).and_then(|r| r.escape).unwrap();
    let (far, near) = (saddle::STARTS[0], saddle::STARTS[2]);
    let per_decade = (escape("GD", near) as f64 - escape("GD", far) as f64) / (far / near).log10();
    assert!(
        (per_decade - 10f64.ln() / 1.1f64.ln()).abs() < 0.5,
        "GD: {per_decade} iterations per factor 10"
    );
    for label in ["Adagrad", "RMSprop", "Adam"] {
        assert_eq!(escape(label, far), escape(label, near), "{label}");
        assert!(
            escape(label, near) * 5 < escape("GD", near),
            "{label} escapes faster"
        );
    }

    // (e) Bias correction: the GPU's moments and parameters are the CPU reference's bit for
    // bit, (1 − β^k)·G and (1 − β^k)·G² to what f32 arithmetic over ~1/(1 − β) steps allows,
    // the corrected step is lr, and the uncorrected one starts at (1 − β1)/√(1 − β2).
    let bias = &report.bias;
    assert!(bias.matches_cpu, "the GPU's Adam is the CPU reference's");
    assert!(bias.first_error < 1e-6, "m_k: {}", bias.first_error);
    assert!(bias.second_error < 3e-5, "v_k: {}", bias.second_error);
    assert!(bias.step_error < 3e-4, "step: {}", bias.step_error);
    let first = &bias.samples[0];
    assert_eq!(first.k, 1);
    assert!((first.uncorrected - 0.1 / 0.001f64.sqrt()).abs() < 1e-5);
    assert_eq!(bias.samples.last().map(|s| s.k), Some(demo::bias::STEPS));

    // Files: one loss chart per experiment (the sparse one too), the valley's and the saddle's
    // paths, the escape and bias-correction charts, and demo.md linking them.
    let svgs: Vec<&PathBuf> = report
        .files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "svg"))
        .collect();
    assert_eq!(svgs.len(), 8, "{:?}", report.files);
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
    for section in [
        "## (c) Sparse features",
        "## (d) Saddle",
        "## (e) Adam's bias",
    ] {
        assert!(markdown.contains(section), "demo.md has {section}");
    }
    assert!(
        markdown.contains("| Adam | lr=0.1"),
        "demo.md has the escape table"
    );
    let saddle_paths = std::fs::read_to_string(dir.0.join("paths-saddle.svg")).expect("paths");
    assert!(
        saddle_paths.contains("GD: escapes in"),
        "saddle panel titles"
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
