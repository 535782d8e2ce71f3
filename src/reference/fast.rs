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

/// The instruction sets the fast path's loops are compiled for. Every one gives the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstructionSet {
    /// AVX-512F: sixteen f32 per vector.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX2: eight f32 per vector.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// Whatever the target guarantees.
    Portable,
}

impl InstructionSet {
    /// Every one this CPU runs, widest first.
    pub fn available() -> Vec<Self> {
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

    /// The widest this CPU runs.
    pub fn widest() -> Self {
        Self::available()[0]
    }
}

/// One step over all of `tensors`, in tasks of at most [`TASK`] elements and at least one per
/// thread where there is enough work, with `isa` (which the CPU must run).
pub(super) fn step<R: Mirror>(isa: InstructionSet, step: &Step<'_, R>, tensors: Tensors<'_>) {
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
        // SAFETY: a `CpuOptimizer` holds only an instruction set from
        // `InstructionSet::available`, which names those the CPU has.
        #[cfg(target_arch = "x86_64")]
        InstructionSet::Avx512 => unsafe { avx512(step, t) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        InstructionSet::Avx2 => unsafe { avx2(step, t) },
        InstructionSet::Portable => blocks(step, t),
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
