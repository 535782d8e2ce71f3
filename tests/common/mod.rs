//! Shared test helpers: the library's GPU-test policy (one device per test binary; fail
//! loudly without an adapter unless explicitly skipped), sizes, comparison, configurations.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use fusedopt::{Adagrad, Adam, Optimizer, Rmsprop, Sgd};

#[allow(unused_imports, reason = "each test binary uses a different subset")]
pub use fusedopt::testing::{gpu, own_gpu};

/// The sizes every kernel is checked at: single elements, around a workgroup (256), and a
/// large prime.
pub const AWKWARD_SIZES: [usize; 6] = [1, 3, 255, 256, 257, 100_003];

/// Element-wise comparison of `got` with `want` under the default f32 tolerance.
pub fn compare(got: &[f32], want: &[f32]) -> fusedopt::ErrorStats {
    let mut stats = fusedopt::ErrorStats::default();
    stats.add(&fusedopt::Tolerance::F32, 1, got, want);
    stats
}

/// The configurations with the most state per optimizer.
pub fn fullest_configs() -> Vec<Optimizer> {
    vec![
        Sgd {
            momentum: 0.9,
            weight_decay: 1e-2,
            ..Sgd::default()
        }
        .into(),
        Adagrad {
            initial_accumulator_value: 0.1,
            lr_decay: 0.01,
            ..Adagrad::default()
        }
        .into(),
        Rmsprop {
            centered: true,
            momentum: 0.5,
            ..Rmsprop::default()
        }
        .into(),
        Optimizer::default_for("adadelta").unwrap(),
        Adam {
            amsgrad: true,
            ..Adam::adamw()
        }
        .into(),
    ]
}
