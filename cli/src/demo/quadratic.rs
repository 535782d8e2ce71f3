//! The demo's test problems, quadratics `L(x) = ½ xᵀAx`, and the f64 mathematics around them:
//! their spectrum, the exact gradient-descent iteration, and a bound on how far an f32 run of it
//! may drift from the exact one.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{Error, Result};

/// A quadratic `L(x) = ½ xᵀAx` with `A` symmetric, and a starting point. The problems of (a)
/// and (b) are positive definite, with the minimum 0 at `x = 0`; the saddle of (d) is not.
///
/// Every entry of `A` and of the start is an f32 value (rounded once when the problem is made),
/// so the GPU, which stores them as f32, and the f64 computations here solve the same problem:
/// differences between them come from arithmetic alone.
#[derive(Clone, Debug, PartialEq)]
pub struct Quadratic {
    n: usize,
    /// Row-major `n × n`.
    matrix: Vec<f64>,
    start: Vec<f64>,
}

impl Quadratic {
    /// The problem with matrix `matrix` (row-major, symmetric) and start `start`, both rounded
    /// to f32.
    pub fn new(matrix: &[f64], start: &[f64]) -> Result<Self> {
        let n = start.len();
        let invalid = Error::Demo;
        if n == 0 || matrix.len() != n * n {
            return Err(invalid(format!(
                "a quadratic in {n} variables needs {} matrix entries, got {}",
                n * n,
                matrix.len()
            )));
        }
        let round = |v: &f64| f64::from(*v as f32);
        let matrix: Vec<f64> = matrix.iter().map(round).collect();
        let start: Vec<f64> = start.iter().map(round).collect();
        if matrix.iter().chain(&start).any(|v| !v.is_finite()) {
            return Err(invalid("matrix and start must be finite in f32".into()));
        }
        for i in 0..n {
            for j in 0..i {
                if matrix[i * n + j] != matrix[j * n + i] {
                    return Err(invalid(format!(
                        "the matrix is not symmetric at ({i}, {j})"
                    )));
                }
            }
        }
        Ok(Self { n, matrix, start })
    }

    /// The imbalanced quadratic of the lecture notes: `A = H_β = D_β H D_β` with
    /// `[D_β]_ii = β^(i-1)` and `H = I + E`, where `E` is symmetric with zero diagonal and
    /// off-diagonal entries drawn uniformly from `[-0.1/(n-1), 0.1/(n-1)]` by a `StdRng` seeded
    /// with `seed`. By Gershgorin every eigenvalue of `H` lies in `[0.9, 1.1]`, so `κ(H) ≤ 11/9`
    /// and all of the ill-conditioning of `A` (about `β^(-2(n-1))`) comes from the scaling.
    ///
    /// The start is `x0 = D_β⁻¹·1`: then `½ A_ii x0_i² = ½`, every coordinate starts with the
    /// same share of the loss, and the slowest direction carries as much of it as the fastest,
    /// so reaching a small relative loss measures the asymptotic rate, not a lucky start.
    pub fn imbalanced(n: usize, beta: f64, seed: u64) -> Result<Self> {
        if n < 2 {
            return Err(Error::Demo(format!(
                "the imbalanced quadratic needs n >= 2, got {n}"
            )));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let spread = 0.1 / (n - 1) as f64;
        let mut h = vec![0.0; n * n];
        for i in 0..n {
            h[i * n + i] = 1.0;
            for j in i + 1..n {
                let e = rng.random_range(-spread..=spread);
                h[i * n + j] = e;
                h[j * n + i] = e;
            }
        }
        let d: Vec<f64> = (0..n).map(|i| beta.powi(i as i32)).collect();
        let matrix: Vec<f64> = (0..n * n).map(|k| d[k / n] * h[k] * d[k % n]).collect();
        let start: Vec<f64> = d.iter().map(|di| 1.0 / di).collect();
        Self::new(&matrix, &start)
    }

    /// The valley `f(x) = 0.1 x₁² + 2 x₂²` (`A = diag(0.2, 4)`, condition number 20) from
    /// `(-5, -2)`, the example of Dive into Deep Learning's optimization chapter that the lecture
    /// notes follow: gradient descent with η = 0.4 crawls along x₁ (factor 0.92 per step) and
    /// with η = 0.6 overshoots in x₂ (factor -1.4 per step).
    pub fn valley() -> Self {
        Self {
            n: 2,
            matrix: vec![0.2, 0.0, 0.0, 4.0],
            start: vec![-5.0, -2.0],
        }
    }

    /// Number of variables.
    pub fn dim(&self) -> usize {
        self.n
    }

    /// The matrix `A`, row-major.
    pub fn matrix(&self) -> &[f64] {
        &self.matrix
    }

    /// The starting point.
    pub fn start(&self) -> &[f64] {
        &self.start
    }

    /// `½ xᵀAx` in f64.
    pub fn loss(&self, x: &[f64]) -> f64 {
        0.5 * dot(x, &self.gradient(x))
    }

    /// `½ xᵀAx` in f64 of an f32 point (a row of a GPU trajectory).
    pub fn loss_f32(&self, x: &[f32]) -> f64 {
        let x: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        self.loss(&x)
    }

    /// `A·x` in f64.
    pub fn gradient(&self, x: &[f64]) -> Vec<f64> {
        self.matrix
            .chunks_exact(self.n)
            .map(|row| dot(row, x))
            .collect()
    }

    /// Eigenvalues of `A` in ascending order, and the matching orthonormal eigenvectors.
    pub fn eigen(&self) -> Eigen {
        symmetric_eigen(&self.matrix, self.n)
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Spectrum of a symmetric matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Eigen {
    /// Eigenvalues, ascending.
    pub values: Vec<f64>,
    /// `vectors[k]` is the unit eigenvector of `values[k]`.
    pub vectors: Vec<Vec<f64>>,
}

impl Eigen {
    /// `λ_max / λ_min` (NaN for an empty spectrum).
    pub fn condition_number(&self) -> f64 {
        match (self.values.first(), self.values.last()) {
            (Some(min), Some(max)) => max / min,
            _ => f64::NAN,
        }
    }
}

/// Eigen-decomposition of a symmetric `n × n` matrix by cyclic Jacobi rotations.
///
/// Jacobi is chosen over power iteration or QR because, stopped only once every off-diagonal
/// entry is negligible *relative to its diagonal entries* (`|a_pq| ≤ ε·√(a_pp·a_qq)`), it finds
/// the small eigenvalues of a graded matrix such as `D H D` to high relative accuracy
/// (Demmel and Veselić, 1992); the exact iteration counts depend on `λ_min` to that accuracy.
pub(crate) fn symmetric_eigen(matrix: &[f64], n: usize) -> Eigen {
    let mut a = matrix.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..64 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                let (app, aqq) = (a[p * n + p], a[q * n + q]);
                if apq == 0.0 || apq.abs() <= f64::EPSILON * (app * aqq).abs().sqrt() {
                    a[p * n + q] = 0.0;
                    a[q * n + p] = 0.0;
                    continue;
                }
                rotated = true;
                // The rotation that zeroes a_pq (Golub and Van Loan, Algorithm 8.5.1), with the
                // smaller of the two angles for stability.
                let tau = (aqq - app) / (2.0 * apq);
                let t = tau.signum() / (tau.abs() + (1.0 + tau * tau).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = t * c;
                a[p * n + p] = app - t * apq;
                a[q * n + q] = aqq + t * apq;
                a[p * n + q] = 0.0;
                a[q * n + p] = 0.0;
                for k in (0..n).filter(|&k| k != p && k != q) {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[p * n + k] = a[k * n + p];
                    a[k * n + q] = s * akp + c * akq;
                    a[q * n + k] = a[k * n + q];
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[i * n + i].total_cmp(&a[j * n + j]));
    Eigen {
        values: order.iter().map(|&i| a[i * n + i]).collect(),
        vectors: order
            .iter()
            .map(|&i| (0..n).map(|k| v[k * n + i]).collect())
            .collect(),
    }
}

/// Gradient descent `x ← x − α·A·x` on a quadratic, in exact (f64) arithmetic: the iteration
/// itself, its closed form, and the first iteration at which the loss reaches a tolerance.
#[derive(Clone, Debug)]
pub struct ExactGd {
    problem: Quadratic,
    alpha: f64,
    eigen: Eigen,
    /// `λ_k·c_k²` with `c = Vᵀx0`: mode k's share of `2·L(x0)`.
    weights: Vec<f64>,
    /// `ln|1 − α·λ_k|`, the per-step log-factor of mode k, computed with `ln_1p` where it is
    /// close to 1 so that rates near 1 keep their relative accuracy.
    log_factors: Vec<f64>,
}

impl ExactGd {
    /// Gradient descent with step `alpha` on `problem`.
    pub fn new(problem: &Quadratic, alpha: f64) -> Self {
        let eigen = problem.eigen();
        let weights = eigen
            .values
            .iter()
            .zip(&eigen.vectors)
            .map(|(lambda, v)| lambda * dot(v, problem.start()).powi(2))
            .collect();
        let log_factors = eigen
            .values
            .iter()
            .map(|lambda| {
                let step = alpha * lambda;
                if step.abs() < 0.5 {
                    (-step).ln_1p()
                } else {
                    (1.0 - step).abs().ln()
                }
            })
            .collect();
        Self {
            problem: problem.clone(),
            alpha,
            eigen,
            weights,
            log_factors,
        }
    }

    /// The step size.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// The spectrum of the problem's matrix.
    pub fn eigen(&self) -> &Eigen {
        &self.eigen
    }

    /// The largest factor `max_k |1 − αλ_k|` by which one step can stretch an error: the
    /// iteration matrix `I − αA` is symmetric, so this is its 2-norm.
    pub fn contraction(&self) -> f64 {
        self.log_factors
            .iter()
            .fold(f64::NEG_INFINITY, |m, &l| m.max(l))
            .exp()
    }

    /// One step of the iteration, in f64.
    pub fn step(&self, x: &[f64]) -> Vec<f64> {
        let g = self.problem.gradient(x);
        x.iter()
            .zip(&g)
            .map(|(xi, gi)| xi - self.alpha * gi)
            .collect()
    }

    /// `L(x_k)` from the closed form `½ Σ λ_i c_i² (1 − αλ_i)^(2k)`, without iterating, so that
    /// `k` may be in the billions.
    pub fn loss_at(&self, k: u64) -> f64 {
        0.5 * self
            .weights
            .iter()
            .zip(&self.log_factors)
            // A mode with factor exactly 0 (ln = -∞) is gone after one step, not NaN at k = 0.
            .map(|(w, l)| {
                if k == 0 {
                    *w
                } else {
                    w * (2.0 * k as f64 * l).exp()
                }
            })
            .sum::<f64>()
    }

    /// The first `k` with `L(x_k) <= tolerance`, or `None` if the loss never gets there (a
    /// mode with `|1 − αλ| >= 1` that carries loss above the tolerance).
    ///
    /// Each mode's term shrinks monotonically with `k` (all factors have modulus below 1 when
    /// it converges), so the loss does too, and bisection finds the exact first iteration.
    pub fn first_reaching(&self, tolerance: f64) -> Option<u64> {
        if self.loss_at(0) <= tolerance {
            return Some(0);
        }
        let mut hi = 1u64;
        while self.loss_at(hi) > tolerance {
            hi = hi.checked_mul(2)?;
        }
        let mut lo = hi / 2;
        // Invariant: L(lo) > tolerance >= L(hi).
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.loss_at(mid) > tolerance {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(hi)
    }
}

/// How an f32 GPU run of gradient descent compares with the exact f64 iteration from the same
/// start, over the iterations it ran.
#[derive(Clone, Debug, PartialEq)]
pub struct ExactCheck {
    /// Iterations compared (the run's `x_1 … x_k`; `x_0` is the same f32 start in both).
    pub iterations: u64,
    /// Largest `‖x̃_k − x_k‖₂` between a GPU iterate and the exact one.
    pub max_deviation: f64,
    /// Largest ratio of a deviation (per eigen-direction) to its f32 error bound; at most 1
    /// when the whole run is within the bound.
    pub max_ratio: f64,
}

impl ExactCheck {
    /// Whether every iterate lies within its f32 error bound.
    pub fn passed(&self) -> bool {
        self.max_ratio <= 1.0
    }
}

/// Unit roundoff of f32 (round to nearest).
const F32_UNIT_ROUNDOFF: f64 = 1.0 / (1u64 << 24) as f64;

/// Compares an f32 trajectory of gradient descent (`rows`: the GPU's `x̃_0, x̃_1, …`, `n` values
/// each) with the exact iteration, against an a-posteriori forward error bound built from the
/// trajectory itself.
///
/// One f32 step computes `g̃ = fl(A·x̃)` (in any summation order `|g̃ − A·x̃| ≤ γ_n·|A|·|x̃|`) and
/// `x̃' = fl(x̃ − fl(α·g̃))`, so it departs from the exact step `x̃ − αAx̃` by at most
/// `δ = α(γ_n + u(1 + γ_n))·|A||x̃| + u(1 + 2u)·|x̃'|` per coordinate. In the eigenbasis of `A`
/// the error `e_k = x̃_k − x_k` then obeys `|v_mᵀe_{k+1}| ≤ |1 − αλ_m|·|v_mᵀe_k| + |v_m|ᵀδ_k`,
/// which keeps the bound tight in fast directions (a wrong step size shows at once) while the
/// slow ones honestly accumulate rounding. Deviations are held to twice that recursion, to cover
/// second-order terms and the f64 reference's own rounding.
pub fn check_against_exact(exact: &ExactGd, rows: &[f32]) -> ExactCheck {
    let problem = &exact.problem;
    let n = problem.dim();
    let u = F32_UNIT_ROUNDOFF;
    let gamma = n as f64 * u / (1.0 - n as f64 * u);
    let factors: Vec<f64> = exact
        .log_factors
        .iter()
        .map(|l| l.exp() * (1.0 + 1e-12))
        .collect();
    let abs_vectors: Vec<Vec<f64>> = exact
        .eigen
        .vectors
        .iter()
        .map(|v| v.iter().map(|c| c.abs()).collect())
        .collect();
    let abs_a: Vec<f64> = problem.matrix().iter().map(|v| v.abs()).collect();
    let mut x = problem.start().to_vec();
    let mut bounds = vec![0.0f64; n];
    let mut check = ExactCheck {
        iterations: 0,
        max_deviation: 0.0,
        max_ratio: 0.0,
    };
    let iterates: Vec<&[f32]> = rows.chunks_exact(n).collect();
    for pair in iterates.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        let local: Vec<f64> = abs_a
            .chunks_exact(n)
            .zip(after)
            .map(|(row, &next)| {
                let ax: f64 = row
                    .iter()
                    .zip(before)
                    .map(|(a, &b)| a * f64::from(b).abs())
                    .sum();
                exact.alpha * (gamma + u * (1.0 + gamma)) * ax
                    + u * (1.0 + 2.0 * u) * f64::from(next).abs()
            })
            .collect();
        x = exact.step(&x);
        let error: Vec<f64> = after
            .iter()
            .zip(&x)
            .map(|(&g, e)| f64::from(g) - e)
            .collect();
        check.iterations += 1;
        check.max_deviation = check.max_deviation.max(dot(&error, &error).sqrt());
        for m in 0..n {
            bounds[m] = factors[m] * bounds[m] + dot(&abs_vectors[m], &local);
            let deviation = dot(&exact.eigen.vectors[m], &error).abs();
            let ratio = match deviation {
                0.0 => 0.0,
                // A non-finite iterate fails.
                d if !d.is_finite() => f64::INFINITY,
                d => d / (2.0 * bounds[m]),
            };
            check.max_ratio = check.max_ratio.max(ratio);
        }
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reconstruct(e: &Eigen, n: usize) -> Vec<f64> {
        let mut a = vec![0.0; n * n];
        for (lambda, v) in e.values.iter().zip(&e.vectors) {
            for i in 0..n {
                for j in 0..n {
                    a[i * n + j] += lambda * v[i] * v[j];
                }
            }
        }
        a
    }

    /// Determinant by Gaussian elimination with partial pivoting.
    fn det(mut m: Vec<f64>, n: usize) -> f64 {
        let mut det = 1.0;
        for c in 0..n {
            let p = (c..n)
                .max_by(|&i, &j| m[i * n + c].abs().total_cmp(&m[j * n + c].abs()))
                .unwrap();
            if p != c {
                for k in 0..n {
                    m.swap(p * n + k, c * n + k);
                }
                det = -det;
            }
            det *= m[c * n + c];
            for r in c + 1..n {
                let f = m[r * n + c] / m[c * n + c];
                for k in c..n {
                    m[r * n + k] -= f * m[c * n + k];
                }
            }
        }
        det
    }

    #[test]
    fn jacobi_reconstructs_and_is_orthonormal() {
        let q = Quadratic::imbalanced(5, 0.3, 11).unwrap();
        let e = q.eigen();
        let a = reconstruct(&e, 5);
        for (x, y) in a.iter().zip(q.matrix()) {
            assert!((x - y).abs() <= 1e-14, "{x} vs {y}");
        }
        for (i, vi) in e.vectors.iter().enumerate() {
            for (j, vj) in e.vectors.iter().enumerate() {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot(vi, vj) - want).abs() < 1e-13);
            }
        }
        assert!(e.values.windows(2).all(|w| w[0] <= w[1]), "ascending");
    }

    /// The product of the eigenvalues is `det(A) = det(H)·β^(n(n-1))`, where `det(H)` is
    /// well conditioned: agreement to 1e-12 shows that the smallest eigenvalues (1e-10 and
    /// below) carry high relative accuracy, which the iteration counts rely on.
    #[test]
    fn small_eigenvalues_of_the_graded_matrix_are_relatively_accurate() {
        let (n, beta) = (6, 0.1);
        let q = Quadratic::imbalanced(n, beta, 1).unwrap();
        let scale: Vec<f64> = (0..n).map(|i| beta.powi(i as i32)).collect();
        let h: Vec<f64> = (0..n * n)
            .map(|k| q.matrix()[k] / (scale[k / n] * scale[k % n]))
            .collect();
        let expected = det(h, n) * scale.iter().map(|s| s * s).product::<f64>();
        let product: f64 = q.eigen().values.iter().product();
        assert!(
            ((product - expected) / expected).abs() < 1e-12,
            "{product} vs {expected}"
        );
        assert!(q.eigen().values[0] < 2e-10, "κ about 1e10");
    }

    #[test]
    fn imbalanced_start_gives_every_coordinate_half_a_unit_of_loss() {
        let q = Quadratic::imbalanced(4, 0.1, 3).unwrap();
        for i in 0..4 {
            let share = 0.5 * q.matrix()[i * 4 + i] * q.start()[i] * q.start()[i];
            assert!((share - 0.5).abs() < 1e-6, "coordinate {i}: {share}");
        }
        assert_eq!(
            q,
            Quadratic::imbalanced(4, 0.1, 3).unwrap(),
            "deterministic"
        );
    }

    #[test]
    fn closed_form_matches_the_iteration() {
        let q = Quadratic::imbalanced(4, 0.1, 5).unwrap();
        let e = q.eigen();
        let gd = ExactGd::new(&q, 1.0 / e.values[3]);
        let mut x = q.start().to_vec();
        for k in 0..=20_000u64 {
            if k % 1000 == 0 {
                let (a, b) = (q.loss(&x), gd.loss_at(k));
                assert!(((a - b) / b).abs() < 1e-9, "k={k}: {a} vs {b}");
            }
            x = gd.step(&x);
        }
    }

    #[test]
    fn first_reaching_is_the_first_iteration_below_the_tolerance() {
        let q = Quadratic::valley();
        let gd = ExactGd::new(&q, 0.4);
        let tol = 1e-8 * q.loss(q.start());
        let k = gd.first_reaching(tol).unwrap();
        assert!(gd.loss_at(k) <= tol && gd.loss_at(k - 1) > tol);
        // Against plain iteration.
        let mut x = q.start().to_vec();
        let mut first = 0;
        while q.loss(&x) > tol {
            x = gd.step(&x);
            first += 1;
        }
        assert_eq!(k, first);
        assert_eq!(ExactGd::new(&q, 0.6).first_reaching(tol), None, "diverges");
    }

    #[test]
    fn the_check_accepts_f32_rounding_and_rejects_a_wrong_step() {
        let q = Quadratic::imbalanced(4, 0.1, 2).unwrap();
        let alpha = f64::from((1.0 / q.eigen().values[3]) as f32);
        let gd = ExactGd::new(&q, alpha);
        let a: Vec<f32> = q.matrix().iter().map(|&v| v as f32).collect();
        let run = |alpha: f32| {
            let mut x: Vec<f32> = q.start().iter().map(|&v| v as f32).collect();
            let mut rows = x.clone();
            for _ in 0..2000 {
                let g: Vec<f32> = a
                    .chunks_exact(4)
                    .map(|row| row.iter().zip(&x).map(|(a, b)| a * b).sum())
                    .collect();
                x = x.iter().zip(&g).map(|(x, g)| x - alpha * g).collect();
                rows.extend_from_slice(&x);
            }
            rows
        };
        let good = check_against_exact(&gd, &run(alpha as f32));
        assert_eq!(good.iterations, 2000);
        assert!(good.passed(), "{good:?}");
        let bad = check_against_exact(&gd, &run(alpha as f32 * 1.0001));
        assert!(!bad.passed(), "{bad:?}");
    }
}
