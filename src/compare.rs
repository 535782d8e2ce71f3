//! Comparing results with named tolerances, and recording where the worst error occurred.

/// `|x − ref| <= abs + rel·|ref|`, the check `fusedopt check` and `validate` apply per element.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// Absolute part.
    pub abs: f64,
    /// Relative part, scaled by the reference value.
    pub rel: f64,
}

impl Tolerance {
    /// Bit for bit (up to the sign of zero): any difference fails.
    pub const EXACT: Tolerance = Tolerance { abs: 0.0, rel: 0.0 };

    /// The default for f32 trajectories: `1e-6 + 1e-5·|ref|`.
    pub const F32: Tolerance = Tolerance {
        abs: 1e-6,
        rel: 1e-5,
    };

    /// How far `x` is from `reference` as a fraction of the allowed error: at most 1 passes.
    /// Equal values (infinities included) and two NaNs give 0; a NaN against a number gives
    /// infinity, so it always fails.
    pub fn ratio(&self, x: f32, reference: f32) -> f64 {
        ratio_within(
            x,
            reference,
            self.abs + self.rel * f64::from(reference).abs(),
        )
    }
}

/// `|x − reference| / allowed`, 0 for equal values (infinities included) and two NaNs,
/// infinite for a NaN against a number.
fn ratio_within(x: f32, reference: f32, allowed: f64) -> f64 {
    if x == reference || (x.is_nan() && reference.is_nan()) {
        return 0.0;
    }
    let err = (f64::from(x) - f64::from(reference)).abs();
    if err.is_nan() {
        return f64::INFINITY;
    }
    err / allowed
}

/// The worst disagreement found across many comparisons, with where it happened.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ErrorStats {
    /// Largest `|x − ref|`.
    pub max_abs: f64,
    /// Step (1-based) of the largest absolute error.
    pub max_abs_step: u64,
    /// Largest `|x − ref| / |ref|` over elements with a non-zero reference.
    pub max_rel: f64,
    /// Step of the largest relative error.
    pub max_rel_step: u64,
    /// Largest ratio to the tolerance (see [`Tolerance::ratio`]).
    pub worst_ratio: f64,
    /// Step of the worst ratio.
    pub worst_step: u64,
    /// Element index of the worst ratio.
    pub worst_index: usize,
    /// Elements outside the tolerance.
    pub failures: u64,
    /// Elements compared.
    pub compared: u64,
}

impl ErrorStats {
    /// Folds the comparison of `x` with `reference` at `step` into the statistics.
    pub fn add(&mut self, tol: &Tolerance, step: u64, x: &[f32], reference: &[f32]) {
        self.add_within(step, x, reference, |r| {
            tol.abs + tol.rel * f64::from(r).abs()
        });
    }

    /// [`ErrorStats::add`] with the allowed error at each reference value given by `allowed`
    /// (one unit in the last place of a 16-bit format, for instance).
    pub fn add_within(
        &mut self,
        step: u64,
        x: &[f32],
        reference: &[f32],
        allowed: impl Fn(f32) -> f64,
    ) {
        for (i, (&a, &r)) in x.iter().zip(reference).enumerate() {
            let ratio = ratio_within(a, r, allowed(r));
            self.compared += 1;
            if ratio > 1.0 {
                self.failures += 1;
            }
            if ratio > self.worst_ratio {
                self.worst_ratio = ratio;
                self.worst_step = step;
                self.worst_index = i;
            }
            if ratio == 0.0 {
                continue;
            }
            let abs = (f64::from(a) - f64::from(r)).abs();
            let abs = if abs.is_nan() { f64::INFINITY } else { abs };
            if abs > self.max_abs {
                self.max_abs = abs;
                self.max_abs_step = step;
            }
            if r != 0.0 {
                let rel = abs / f64::from(r).abs();
                if rel > self.max_rel {
                    self.max_rel = rel;
                    self.max_rel_step = step;
                }
            }
        }
        if x.len() != reference.len() {
            self.failures += 1;
            self.worst_ratio = f64::INFINITY;
            self.worst_step = step;
        }
    }

    /// Merges another set of statistics into this one.
    pub fn merge(&mut self, other: &ErrorStats) {
        if other.max_abs > self.max_abs {
            self.max_abs = other.max_abs;
            self.max_abs_step = other.max_abs_step;
        }
        if other.max_rel > self.max_rel {
            self.max_rel = other.max_rel;
            self.max_rel_step = other.max_rel_step;
        }
        if other.worst_ratio > self.worst_ratio {
            self.worst_ratio = other.worst_ratio;
            self.worst_step = other.worst_step;
            self.worst_index = other.worst_index;
        }
        self.failures += other.failures;
        self.compared += other.compared;
    }

    /// No element outside the tolerance.
    pub fn passed(&self) -> bool {
        self.failures == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_follows_the_documented_formula() {
        let t = Tolerance::F32;
        assert_eq!(t.ratio(1.0, 1.0), 0.0, "equal");
        assert!(t.ratio(1.0 + 1e-5, 1.0) <= 1.0, "within 1e-6 + 1e-5");
        assert!(t.ratio(1.0 + 2e-5, 1.0) > 1.0, "outside");
        assert!(t.ratio(5e-7, 0.0) <= 1.0, "absolute part near zero");
        assert!(t.ratio(2e-6, 0.0) > 1.0, "absolute part exceeded");
        assert_eq!(t.ratio(f32::INFINITY, f32::INFINITY), 0.0, "same infinity");
        assert_eq!(t.ratio(f32::NAN, f32::NAN), 0.0, "both NaN");
        assert!(
            t.ratio(f32::NAN, 1.0).is_infinite(),
            "NaN against a number fails"
        );
        assert!(
            t.ratio(1.0, f32::NAN).is_infinite(),
            "number against NaN fails"
        );
    }

    #[test]
    fn stats_record_the_worst_step_and_index() {
        let mut s = ErrorStats::default();
        s.add(&Tolerance::F32, 1, &[1.0, 2.0], &[1.0, 2.0]);
        s.add(&Tolerance::F32, 2, &[1.0, 2.1], &[1.0, 2.0]);
        assert!(!s.passed(), "one element is off");
        assert_eq!(
            (s.worst_step, s.worst_index, s.failures),
            (2, 1, 1),
            "where"
        );
        assert!((s.max_abs - 0.1).abs() < 1e-6, "max abs {}", s.max_abs);
    }
}
