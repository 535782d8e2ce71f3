//! The fast CPU driver: the reference's per-element code, split across rayon's threads and
//! compiled once more for AVX-512 and for AVX2, picked at run time. Enabling wider vectors does
//! not change results: Rust never contracts `a * b + c` into an FMA, and the vector square root
//! and division are exactly rounded like the scalar ones.

use rayon::prelude::*;

use super::{BLOCK, Step, Tensors};

/// Elements per rayon task: large enough that scheduling and the start of each task's memory
/// streams are noise (measured: 2^18 was ~5 % slower than 2^20 for Adam at 2^24 on two
/// threads), small enough that threads share the tail evenly.
pub const TASK: usize = 256 * BLOCK;

/// Fewest elements per task, so that a small step is not split into tasks costing more to
/// schedule than to run.
const MIN_TASK: usize = 4 * BLOCK;

/// One step over all of `tensors`, in tasks of at most [`TASK`] elements and at least one per
/// thread where there is enough work.
pub(super) fn step(step: &Step<'_>, tensors: Tensors<'_>) {
    step_with(kernel(), step, tensors);
}

/// [`step`] with a given variant (the tests run each one).
pub(super) fn step_with(kernel: Kernel, step: &Step<'_>, tensors: Tensors<'_>) {
    let per_thread = tensors.len().div_ceil(rayon::current_num_threads());
    let task = per_thread.next_multiple_of(BLOCK).clamp(MIN_TASK, TASK);
    let mut tasks = Vec::with_capacity(tensors.len().div_ceil(task));
    let mut rest = tensors;
    while rest.len() > task {
        let (head, tail) = rest.split_at(task);
        tasks.push(head);
        rest = tail;
    }
    tasks.push(rest);
    tasks.into_par_iter().for_each(|t| kernel(step, t));
}

pub(super) type Kernel = fn(&Step<'_>, Tensors<'_>);

/// Every variant this CPU can run, widest first, with its name.
#[cfg(test)]
pub(super) fn runnable_kernels() -> Vec<(&'static str, Kernel)> {
    let mut all: Vec<(&'static str, Kernel)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: as in `kernel`.
            all.push(("avx512", |step, tensors| unsafe { avx512(step, tensors) }));
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as in `kernel`.
            all.push(("avx2", |step, tensors| unsafe { avx2(step, tensors) }));
        }
    }
    all.push(("portable", portable));
    all
}

/// The widest variant this CPU runs.
fn kernel() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, the only feature `avx512` is compiled for.
            return |step, tensors| unsafe { avx512(step, tensors) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, the only feature `avx2` is compiled for.
            return |step, tensors| unsafe { avx2(step, tensors) };
        }
    }
    portable
}

/// Shared body of every variant; inlined so each variant compiles it with its own features.
#[inline(always)]
fn blocks(step: &Step<'_>, tensors: Tensors<'_>) {
    tensors.step_blocks(step);
}

fn portable(step: &Step<'_>, tensors: Tensors<'_>) {
    blocks(step, tensors);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2(step: &Step<'_>, tensors: Tensors<'_>) {
    blocks(step, tensors);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn avx512(step: &Step<'_>, tensors: Tensors<'_>) {
    blocks(step, tensors);
}
