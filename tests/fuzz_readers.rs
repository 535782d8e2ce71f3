//! The trajectory reader against many mutated files (a fixed seed, so a failure repeats):
//! flipped bytes, truncations, header lengths and JSON edits, shapes and dtypes changed. No
//! input may panic; each is read or refused with an error. `FUSEDOPT_FUZZ_CASES` raises the
//! count (default 3,000 per file, a few seconds).

use std::panic::{AssertUnwindSafe, catch_unwind};

use fusedopt::golden::Trajectory;
use fusedopt::testing::golden_files;
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

#[test]
fn mutated_trajectories_are_read_or_refused_never_a_panic() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut refused = 0;
    let mut total = 0;
    let scratch =
        std::env::temp_dir().join(format!("fusedopt-fuzz-{}.safetensors", std::process::id()));
    for file in golden_files() {
        let bytes = std::fs::read(&file).unwrap();
        for case in 0..cases() {
            let mutated = mutate(&bytes, &mut rng);
            // Every 16th through the file reader, which checks the header before the rest.
            let read = catch_unwind(AssertUnwindSafe(|| match case % 16 {
                0 => {
                    std::fs::write(&scratch, &mutated).unwrap();
                    Trajectory::load(&scratch)
                }
                _ => Trajectory::parse("fuzz", &mutated),
            }));
            match read {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => refused += 1,
                Err(_) => {
                    let kept = std::env::temp_dir().join("fusedopt-fuzz-panic.safetensors");
                    std::fs::write(&kept, &mutated).unwrap();
                    panic!(
                        "a mutation of {} panicked the reader (kept in {})",
                        file.display(),
                        kept.display()
                    );
                }
            }
            total += 1;
        }
    }
    std::fs::remove_file(scratch).ok();
    // The mutations do reach the checks: most are refused.
    assert!(refused > total / 2, "{refused} of {total} refused");
}
