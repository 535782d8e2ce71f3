//! The trajectory and checkpoint readers against many mutated files (a fixed seed, so a
//! failure repeats): flipped bytes, truncations, header lengths and JSON edits, shapes and
//! dtypes changed. No input may panic; each is read or refused with an error, and a checkpoint
//! that is read is restored into a live optimizer without a panic either.
//! `FUSEDOPT_FUZZ_CASES` raises the count (default 3,000 per file, a few seconds).

use std::panic::{AssertUnwindSafe, catch_unwind};

use fusedopt::checkpoint::Tensor;
use fusedopt::golden::Recording;
use fusedopt::testing::{golden_files, sparse_golden_files};
use fusedopt::{
    Adam, Checkpoint, CpuGuard, CpuOptimizer, Guard, HalfFormat, LossScaler, Optimizer, Precision,
    Rmsprop, Sgd,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn cases() -> usize {
    std::env::var("FUSEDOPT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000)
}

/// One mutation of `bytes`: what a damaged or hostile file looks like.
fn mutate(bytes: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header_end = 8 + header_len;
    match rng.random_range(0..7) {
        // A few random bytes anywhere.
        0 => {
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..out.len());
                out[i] = rng.random();
            }
        }
        // A byte of the header: its JSON, names, shapes and offsets.
        1 => {
            let i = rng.random_range(8..header_end);
            out[i] = rng.random();
        }
        // Cut anywhere.
        2 => out.truncate(rng.random_range(0..out.len())),
        // Another header length.
        3 => {
            let len: u64 = match rng.random_range(0..3) {
                0 => rng.random(),
                1 => header_len as u64 + rng.random_range(0..64),
                _ => header_len.saturating_sub(rng.random_range(1..64)) as u64,
            };
            out[..8].copy_from_slice(&len.to_le_bytes());
        }
        // A digit of the header replaced by a large number (shapes, offsets, metadata).
        4 => {
            let digits: Vec<usize> = (8..header_end)
                .filter(|&i| out[i].is_ascii_digit())
                .collect();
            if let Some(&i) = digits.get(rng.random_range(0..digits.len().max(1))) {
                let big = rng.random::<u64>().to_string();
                out.splice(i..=i, big.bytes());
                let new_len = (header_len + big.len() - 1) as u64;
                out[..8].copy_from_slice(&new_len.to_le_bytes());
            }
        }
        // A dtype swapped for another.
        5 => {
            let text = String::from_utf8_lossy(&out[8..header_end]).to_string();
            let swapped = [
                "\"F32\"", "\"BF16\"", "\"F16\"", "\"U8\"", "\"F64\"", "\"I64\"",
            ];
            let from = swapped[rng.random_range(0..swapped.len())];
            let to = swapped[rng.random_range(0..swapped.len())];
            if let Some(at) = text.find(from) {
                let mut header = text.clone();
                header.replace_range(at..at + from.len(), to);
                let mut rebuilt = (header.len() as u64).to_le_bytes().to_vec();
                rebuilt.extend_from_slice(header.as_bytes());
                rebuilt.extend_from_slice(&out[header_end..]);
                out = rebuilt;
            }
        }
        // Data bytes: NaN, inf and huge values where the numbers are.
        _ => {
            if out.len() > header_end + 4 {
                let i = rng.random_range(header_end..out.len() - 4);
                let value: f32 = [f32::NAN, f32::INFINITY, f32::MAX, -0.0][rng.random_range(0..4)];
                out[i..i + 4].copy_from_slice(&value.to_le_bytes());
            }
        }
    }
    out
}

/// Every mutation of every file through `read` (`case` picks the path through the reader):
/// `Ok(true)` read, `Ok(false)` refused; a panic fails, keeping the input. Most mutations
/// must be refused, so that they do reach the checks.
fn fuzz(files: &[(String, Vec<u8>)], read: impl Fn(usize, &[u8]) -> bool) {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut refused = 0;
    let mut total = 0;
    for (name, bytes) in files {
        for case in 0..cases() {
            let mutated = mutate(bytes, &mut rng);
            match catch_unwind(AssertUnwindSafe(|| read(case, &mutated))) {
                Ok(true) => {}
                Ok(false) => refused += 1,
                Err(_) => {
                    let kept = std::env::temp_dir().join("fusedopt-fuzz-panic.safetensors");
                    std::fs::write(&kept, &mutated).unwrap();
                    panic!(
                        "a mutation of {name} panicked the reader (kept in {})",
                        kept.display()
                    );
                }
            }
            total += 1;
        }
    }
    assert!(refused > total / 2, "{refused} of {total} refused");
}

/// Where a case goes through a file reader (every 16th), which checks the header before the
/// rest.
fn scratch(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "fusedopt-fuzz-{name}-{}.safetensors",
        std::process::id()
    ))
}

#[test]
fn mutated_trajectories_are_read_or_refused_never_a_panic() {
    let files: Vec<(String, Vec<u8>)> = golden_files()
        .into_iter()
        .chain(sparse_golden_files())
        .map(|f| (f.display().to_string(), std::fs::read(&f).unwrap()))
        .collect();
    let path = scratch("trajectory");
    fuzz(&files, |case, bytes| {
        match case % 16 {
            0 => {
                std::fs::write(&path, bytes).unwrap();
                Recording::load(&path)
            }
            _ => Recording::parse("fuzz", bytes),
        }
        .is_ok()
    });
    std::fs::remove_file(path).ok();
}

/// Checkpoints of every kind the CPU takes: each optimizer's fullest state, f32 and 16-bit
/// state, a master, a guard, the caller's tensors and notes.
fn checkpoints() -> Vec<(String, CpuOptimizer, Option<CpuGuard>, Vec<u8>)> {
    let guard = Guard {
        scaler: Some(LossScaler::default()),
        max_norm: Some(1.0),
        caller_scale: false,
    };
    let cases: Vec<(Optimizer, Precision, Option<Guard>)> = vec![
        (
            Adam {
                amsgrad: true,
                ..Adam::adamw()
            }
            .into(),
            Precision::Master(HalfFormat::Bf16),
            Some(guard),
        ),
        (
            Sgd {
                momentum: 0.9,
                ..Sgd::default()
            }
            .into(),
            Precision::F32,
            None,
        ),
        (
            Rmsprop {
                centered: true,
                momentum: 0.5,
                ..Rmsprop::default()
            }
            .into(),
            Precision::Half(HalfFormat::F16),
            Some(guard),
        ),
        (
            Optimizer::default_for("adadelta").unwrap(),
            Precision::Stochastic { seed: 3 },
            None,
        ),
        (
            Optimizer::default_for("adagrad").unwrap(),
            Precision::F32,
            None,
        ),
    ];
    cases
        .into_iter()
        .map(|(config, precision, guard)| {
            let name = format!("{} {precision}", config.describe());
            let mut opt = CpuOptimizer::with_precision(config, precision, 33).unwrap();
            // Two steps, so that the state, the master and the step count are not initial.
            let format = precision.half_format().unwrap_or(HalfFormat::Bf16);
            let mut params: Vec<u16> = (0..33).map(|i| format.round(i as f32 * 0.1)).collect();
            let grads: Vec<u16> = (0..33)
                .map(|i| format.round(0.5 - i as f32 * 0.03))
                .collect();
            for _ in 0..2 {
                if precision.half_format().is_some() {
                    opt.step_half(&mut params, &grads, 0.01).unwrap();
                } else {
                    let widened: Vec<f32> = grads.iter().map(|&b| format.widen(b)).collect();
                    let mut p: Vec<f32> = params.iter().map(|&b| format.widen(b)).collect();
                    opt.step_with_lr(
                        ndarray::ArrayViewMut1::from(&mut p[..]),
                        ndarray::ArrayView1::from(&widened[..]),
                        0.01,
                    )
                    .unwrap();
                }
            }
            let guard = guard.map(|g| CpuGuard::new(g).unwrap());
            let mut checkpoint = opt.checkpoint(guard.as_ref()).unwrap();
            checkpoint
                .insert("model", Tensor::f32(&[3, 11], &[0.5; 33]).unwrap())
                .unwrap();
            checkpoint.set_note("step", "12");
            let bytes = checkpoint.to_bytes().unwrap();
            (name, opt, guard, bytes)
        })
        .collect()
}

/// A CPU optimizer's state, master, step count and scaler, as bits.
type Snapshot = (Vec<Vec<u32>>, Option<Vec<u32>>, u64, Option<(u32, u32)>);

/// What a restore may change, to hold a refused one to having changed nothing.
fn snapshot(opt: &CpuOptimizer, guard: &Option<CpuGuard>) -> Snapshot {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    (
        opt.state()
            .iter()
            .map(|(_, v)| bits(v.as_slice().unwrap()))
            .collect(),
        opt.master().map(bits),
        opt.step_count(),
        guard
            .as_ref()
            .map(|g| (g.state().scale.to_bits(), g.state().growth_tracker)),
    )
}

#[test]
fn mutated_checkpoints_are_read_or_refused_and_restored_never_a_panic() {
    let made = checkpoints();
    let files: Vec<(String, Vec<u8>)> = made
        .iter()
        .map(|(name, _, _, bytes)| (name.clone(), bytes.clone()))
        .collect();
    let path = scratch("checkpoint");
    fuzz(&files, |case, bytes| {
        let read = match case % 16 {
            0 => {
                std::fs::write(&path, bytes).unwrap();
                Checkpoint::load(&path)
            }
            _ => Checkpoint::parse("fuzz", bytes),
        };
        let Ok(checkpoint) = read else { return false };
        // What is read restores into each kind of optimizer, or is refused by it, changing
        // nothing.
        for (_, opt, guard, _) in &made {
            let (mut opt, mut guard) = (opt.clone(), guard.clone());
            let before = snapshot(&opt, &guard);
            if opt.restore(guard.as_mut(), &checkpoint).is_err() {
                assert_eq!(
                    snapshot(&opt, &guard),
                    before,
                    "a refused restore changed the optimizer"
                );
            }
        }
        true
    });
    std::fs::remove_file(path).ok();
}
