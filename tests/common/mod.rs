//! Shared test helpers: one device per test binary, and the GPU-test policy (fail loudly
//! without an adapter unless explicitly skipped).

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::sync::OnceLock;

use fusedopt::{Adagrad, Adam, Gpu, Optimizer, Rmsprop, Sgd};

/// Environment variable that turns a missing adapter from a failure into a skip.
pub const SKIP_VAR: &str = "FUSEDOPT_SKIP_GPU_TESTS";

/// The shared device, or `None` (with a SKIPPED line) when there is no adapter and the user
/// opted out of GPU tests. Without the opt-out a missing adapter fails the test.
pub fn gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    match GPU.get_or_init(|| Gpu::new().map_err(|e| e.to_string())) {
        Ok(gpu) => Some(gpu),
        Err(e) => no_adapter(e),
    }
}

/// A fresh device, for tests that change its settings (chunk size).
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
