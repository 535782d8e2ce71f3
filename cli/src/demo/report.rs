//! The demo's tables, as plain text for stdout and as Markdown for `demo.md`.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::{DemoReport, Experiment, Iterations, RunReport};
use fusedopt::Optimizer;

const HEADER: [&str; 5] = [
    "optimizer",
    "hyperparameters",
    "iterations to tolerance",
    "final loss",
    "GPU run",
];

/// The experiment as text: notes, table, and the lines that compare runs.
pub(super) fn text(experiment: &Experiment) -> String {
    let mut out = format!("{}\n", experiment.title);
    for note in &experiment.notes {
        let _ = writeln!(out, "  {note}");
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = experiment.runs.iter().map(|r| row(r).to_vec()).collect();
    out.push_str(&table(&HEADER, &rows, false));
    let findings = findings(experiment);
    if !findings.is_empty() {
        out.push('\n');
        for finding in findings {
            let _ = writeln!(out, "  {finding}");
        }
    }
    out
}

/// `demo.md`: every experiment's notes, table, findings and charts (`charts[i]` belongs to
/// experiment `i`, paths relative to the Markdown file's folder).
pub(super) fn markdown(report: &DemoReport, charts: &[Vec<PathBuf>]) -> String {
    let mut out = String::from("# fusedopt demo\n\n");
    let _ = writeln!(
        out,
        "Run on {} in {:.1} s. Every update is a fusedopt GPU kernel; gradients come from \
         `shaders/quadratic_grad.wgsl`, up to 64 iterations per submission; losses are \
         evaluated in f64 on the CPU from the GPU's f32 iterates.\n",
        report.adapter,
        report.elapsed.as_secs_f64()
    );
    for (experiment, files) in report.experiments.iter().zip(charts) {
        let _ = writeln!(out, "## {}\n", experiment.title);
        for note in &experiment.notes {
            let _ = writeln!(out, "- {note}");
        }
        out.push('\n');
        let rows: Vec<Vec<String>> = experiment.runs.iter().map(|r| row(r).to_vec()).collect();
        out.push_str(&table(&HEADER, &rows, true));
        out.push('\n');
        for finding in findings(experiment) {
            let _ = writeln!(out, "{finding}\n");
        }
        for file in files {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let _ = writeln!(out, "![{name}]({name})\n");
        }
    }
    out
}

fn row(run: &RunReport) -> [String; 5] {
    let reached = match run.iterations {
        Iterations::Measured(k) => format!("{} measured", thousands(k)),
        Iterations::Computed(k) => format!("{} computed", thousands(k)),
        Iterations::NotReached(k) if run.diverged => format!("diverged at {}", thousands(k)),
        Iterations::NotReached(k) => format!("not reached in {}", thousands(k)),
    };
    [
        run.label.clone(),
        hyperparameters(&run.config),
        reached,
        format!(
            "{} at {}",
            sci(run.final_loss),
            thousands(run.iterations_run)
        ),
        format!("{:.2} s", run.elapsed.as_secs_f64()),
    ]
}

/// Lines under a table: how gradient descent compares with exact arithmetic, and the speed-up
/// the notes predict.
fn findings(experiment: &Experiment) -> Vec<String> {
    let mut lines = Vec::new();
    for run in &experiment.runs {
        let Some(exact) = &run.exact else { continue };
        let check = &exact.check;
        let verdict = if check.passed() { "within" } else { "OUTSIDE" };
        lines.push(format!(
            "{} on the GPU against exact f64 arithmetic: {} iterations compared, max ‖x̃ − x‖ = {}, \
             {verdict} its f32 rounding-error bound (worst ratio {:.2}); exact arithmetic {}",
            run.label,
            thousands(check.iterations),
            sci(check.max_deviation),
            check.max_ratio,
            match exact.iterations {
                Some(k) => format!("reaches the tolerance at {}", thousands(k)),
                None => "never reaches the tolerance".into(),
            }
        ));
        if exact.stalls_in_f32 && exact.iterations.is_some_and(|k| k > run.iterations_run) {
            lines.push(format!(
                "  (1 − αλ_min rounds to 1 in f32: an f32 run of {} stalls in the slowest \
                 direction, so only the computed count for exact arithmetic is meaningful)",
                run.label
            ));
        }
    }
    if let Some(predicted) = experiment.predicted_speedup {
        let how = |label: &str| {
            experiment
                .run(label)
                .map(|r| match r.iterations {
                    Iterations::Computed(_) => "computed",
                    _ => "measured",
                })
                .unwrap_or("missing")
        };
        let measured = match experiment.speedup("Adagrad", "GD") {
            Some(s) => format!(
                "{}× (GD {}, Adagrad {})",
                thousands(s.round() as u64),
                how("GD"),
                how("Adagrad")
            ),
            None => match (experiment.run("GD"), experiment.run("Adagrad")) {
                (Some(gd), Some(adagrad)) => match (gd.iterations.count(), adagrad.iterations) {
                    (Some(g), Iterations::NotReached(k)) => format!(
                        "below {}× (Adagrad did not reach the tolerance in {} iterations)",
                        thousands((g as f64 / k.max(1) as f64).round() as u64),
                        thousands(k)
                    ),
                    _ => "not measurable (GD did not reach the tolerance)".into(),
                },
                _ => "not measurable".into(),
            },
        };
        lines.push(format!(
            "Adagrad speed-up over GD in iterations: {measured}; the notes predict (1/β)^(n−1) = {}×",
            thousands(predicted.round() as u64)
        ));
        if let Some(line) = adagrad_preconditioning(experiment) {
            lines.push(line);
        }
    }
    lines
}

/// Why Adagrad's speed-up is what it is: its per-coordinate steps `α_i` act as a diagonal
/// preconditioner, and the rate follows `κ(diag(α)^½ A diag(α)^½)`. The notes' estimate takes
/// `α_i ∝ 1/√A_ii`, which leaves `κ ≈ (1/β)^(n−1)`.
fn adagrad_preconditioning(experiment: &Experiment) -> Option<String> {
    let run = experiment.run("Adagrad")?;
    let steps = run.effective_steps.as_ref()?;
    if steps.iter().any(|s| !s.is_finite()) {
        return None;
    }
    let n = experiment.problem.dim();
    let a = experiment.problem.matrix();
    let scaled: Vec<f64> = (0..n * n)
        .map(|k| (steps[k / n] * steps[k % n]).sqrt() * a[k])
        .collect();
    let kappa = super::quadratic::symmetric_eigen(&scaled, n).condition_number();
    let per_coordinate: Vec<String> = (0..n).map(|i| sig(steps[i] * a[i * n + i])).collect();
    let overshoot = run.samples.iter().any(|s| s.loss > experiment.initial_loss);
    let mut line = format!(
        "Adagrad as a diagonal preconditioner: its steps α_i = lr/(√s_i + eps) where it stopped \
         give α_i·A_ii = ({}) and κ(diag(α)^½·A·diag(α)^½) = {}, against κ(A) = {}; the \
         prediction assumes α_i ∝ 1/√A_ii, which leaves κ ≈ (1/β)^(n−1)",
        per_coordinate.join(", "),
        sig(kappa),
        sci(experiment.eigen.condition_number())
    );
    if overshoot {
        line.push_str(
            " (here the first steps overshoot, L rises above L(x0), and the accumulators of the \
             stiff coordinates grow accordingly)",
        );
    }
    Some(line)
}

/// One experiment's part of the report past (a) and (b): what is printed as it completes and
/// what `demo.md` holds, from the same pieces.
pub(crate) struct Section<'a> {
    /// The heading.
    pub title: String,
    /// What was run and why.
    pub notes: &'a [String],
    /// The table: Markdown with `true`, text with `false`.
    pub table: Box<dyn Fn(bool) -> String + 'a>,
    /// The lines under the table.
    pub findings: Vec<String>,
    /// The charts, as (alt text, file name in the output folder).
    pub charts: Vec<(&'static str, &'static str)>,
}

impl Section<'_> {
    /// For stdout: the title, the notes and findings indented, the table.
    pub fn text(&self) -> String {
        let mut out = format!("\n{}\n", self.title);
        for note in self.notes {
            let _ = writeln!(out, "  {note}");
        }
        out.push_str(&(self.table)(false));
        for finding in &self.findings {
            let _ = writeln!(out, "  {finding}");
        }
        out
    }

    /// For `demo.md`: a second-level heading, the notes as a list, the table, the findings as
    /// paragraphs and the charts as images.
    pub fn markdown(&self) -> String {
        let mut out = format!("\n## {}\n\n", self.title);
        for note in self.notes {
            let _ = writeln!(out, "- {note}");
        }
        out.push('\n');
        out.push_str(&(self.table)(true));
        out.push('\n');
        for finding in &self.findings {
            let _ = writeln!(out, "{finding}\n");
        }
        for (alt, file) in &self.charts {
            let _ = writeln!(out, "![{alt}]({file})\n");
        }
        out
    }
}

/// A table as Markdown, or as text in columns padded to their widest cell and indented by two
/// spaces (stdout).
pub(super) fn table(header: &[&str], rows: &[Vec<String>], markdown: bool) -> String {
    debug_assert!(
        rows.iter().all(|r| r.len() == header.len()),
        "a cell per column"
    );
    let mut out = String::new();
    if markdown {
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
        for row in rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        return out;
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        format!("  {}", padded.join("  ").trim_end())
    };
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    let _ = writeln!(out, "{}", line(&mut header.iter().copied()));
    let _ = writeln!(out, "{}", line(&mut rule.iter().map(String::as_str)));
    for row in rows {
        let _ = writeln!(out, "{}", line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// The hyperparameters that matter, by PyTorch name.
pub(super) fn hyperparameters(config: &Optimizer) -> String {
    match config {
        Optimizer::Sgd(c) => {
            let mut s = format!("lr={}", sig(c.lr));
            if c.momentum != 0.0 {
                let _ = write!(s, ", momentum={}", sig(c.momentum));
            }
            if c.nesterov {
                s.push_str(", nesterov");
            }
            s
        }
        Optimizer::Adagrad(c) => format!("lr={}, eps={}", sig(c.lr), sci(c.eps)),
        Optimizer::Rmsprop(c) => format!(
            "lr={}, alpha={}, eps={}",
            sig(c.lr),
            sig(c.alpha),
            sci(c.eps)
        ),
        Optimizer::Adadelta(c) => {
            format!("lr={}, rho={}, eps={}", sig(c.lr), sig(c.rho), sci(c.eps))
        }
        Optimizer::Adam(c) => format!(
            "lr={}, betas=({}, {}), eps={}",
            sig(c.lr),
            sig(c.betas.0),
            sig(c.betas.1),
            sci(c.eps)
        ),
        other => format!("lr={}, {}", sig(other.lr()), other.describe()),
    }
}

/// Five significant digits, without trailing zeros; scientific outside [1e-3, 1e6).
pub(super) fn sig(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let magnitude = v.abs().log10().floor() as i32;
    if !(-3..6).contains(&magnitude) {
        return sci(v);
    }
    let decimals = (4 - magnitude).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Scientific with three significant digits (`1.23e-8`).
pub(super) fn sci(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let s = format!("{v:.2e}");
    // 1.00e10 → 1e10
    match s.split_once('e') {
        Some((mantissa, exponent)) => {
            let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
            format!("{mantissa}e{exponent}")
        }
        None => s,
    }
}

/// An integer with thousands separators (`8,512,345`).
pub(super) fn thousands(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(8_512_345), "8,512,345");
        assert_eq!(sig(0.999_911_3), "0.99991");
        assert_eq!(sig(707.106_78), "707.11");
        assert_eq!(sig(0.4), "0.4");
        assert_eq!(sig(1000.0), "1000");
        assert_eq!(sig(70_710.7), "70711");
        assert_eq!(sig(1e6), "1e6");
        assert_eq!(sci(1e-8), "1e-8");
        assert_eq!(sci(2.345e-8), "2.35e-8");
    }
}
