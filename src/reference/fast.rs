//! The fast CPU driver: the reference's per-element code, split across rayon's threads and
//! compiled once more for AVX-512 and for AVX2, picked at run time. Enabling wider vectors does
//! not change results: Rust never contracts `a * b + c` into an FMA, and the vector square root
//! and division are exactly rounded like the scalar ones.

use rayon::prelude::*;

use super::{BLOCK, Step, Tensors};
use crate::optim::Mirror;

/// Elements per rayon task: large enough that scheduling and the start of each task's memory
/// streams are noise (measured: 2^18 was ~5 % slower than 2^20 for Adam at 2^24 on two
/// threads), small enough that threads share the tail evenly.
pub const TASK: usize = 256 * BLOCK;

/// Fewest elements per task, so that a small step is not split into tasks costing more to
/// schedule than to run.
const MIN_TASK: usize = 4 * BLOCK;

/// The instruction sets the loops are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Isa {
    /// AVX-512F: sixteen f32 per vector.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX2: eight f32 per vector.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// Whatever the target guarantees.
    Portable,
}

impl Isa {
    /// The widest this CPU runs.
    fn widest() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Self::Avx2;
            }
        }
        Self::Portable
    }

    /// Every one this CPU runs, widest first.
    #[cfg(test)]
    pub(super) fn runnable() -> Vec<Self> {
        let mut all = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                all.push(Self::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                all.push(Self::Avx2);
            }
        }
        all.push(Self::Portable);
        all
    }
}

/// One step over all of `tensors`, in tasks of at most [`TASK`] elements and at least one per
/// thread where there is enough work, with `isa` (the widest the CPU runs when `None`).
pub(super) fn step<R: Mirror>(isa: Option<Isa>, step: &Step<'_, R>, tensors: Tensors<'_>) {
    let isa = isa.unwrap_or_else(Isa::widest);
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
    tasks.into_par_iter().for_each(|t| match isa {
        // SAFETY: `Isa::widest` and `Isa::runnable` name an instruction set only when the CPU
        // has it.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512(step, t) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2(step, t) },
        Isa::Portable => blocks(step, t),
    });
}

/// Shared body of every variant; inlined so each variant compiles it with its own features.
#[inline(always)]
fn blocks<R: Mirror>(step: &Step<'_, R>, tensors: Tensors<'_>) {
    tensors.step_blocks(step);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2<R: Mirror>(step: &Step<'_, R>, tensors: Tensors<'_>) {
    blocks(step, tensors);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn avx512<R: Mirror>(step: &Step<'_, R>, tensors: Tensors<'_>) {
    blocks(step, tensors);
}
