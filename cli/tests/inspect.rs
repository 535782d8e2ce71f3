//! `fusedopt inspect`: a checkpoint's contents printed, and every file that fails the checks
//! (truncated, foreign) reported with a non-zero exit, the others still inspected.

mod common;

use common::fusedopt;
use fusedopt::{Adam, CpuGuard, CpuOptimizer, Guard, HalfFormat, LossScaler, Precision};

/// A checkpoint of a guarded AMSGrad optimizer in bf16 with a master, and its path.
fn checkpoint_file(name: &str) -> (String, Vec<u8>) {
    let config = Adam {
        amsgrad: true,
        ..Adam::adamw()
    };
    let opt =
        CpuOptimizer::with_precision(config, Precision::Master(HalfFormat::Bf16), 10).unwrap();
    let guard = CpuGuard::new(Guard {
        scaler: Some(LossScaler::default()),
        max_norm: Some(2.0),
        caller_scale: false,
    })
    .unwrap();
    let bytes = opt.checkpoint(Some(&guard)).unwrap().to_bytes().unwrap();
    let path = std::env::temp_dir().join(format!(
        "fusedopt-cli-inspect-{}-{name}.safetensors",
        std::process::id()
    ));
    std::fs::write(&path, &bytes).unwrap();
    (path.display().to_string(), bytes)
}

#[test]
fn a_checkpoint_is_described() {
    let (path, _) = checkpoint_file("whole");
    let (code, text) = fusedopt(&["inspect", &path]);
    assert_eq!(code, Some(0), "{text}");
    for expected in [
        "precision bf16-master",
        "group 0: adamw at step 0",
        "\"amsgrad\":true",
        "scale 65536",
        "clip(2)",
        "state.0.max_exp_avg_sq",
    ] {
        assert!(text.contains(expected), "{expected:?} in {text}");
    }
    std::fs::remove_file(path).unwrap();
}

#[test]
fn a_truncated_or_foreign_file_fails_and_the_others_are_still_inspected() {
    let (good, bytes) = checkpoint_file("good");
    let (cut, _) = checkpoint_file("cut");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let foreign = format!(
        "{}/../tests/golden/adam.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    let (code, text) = fusedopt(&["inspect", &cut, &foreign, &good]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(&format!("{cut}: FAILED")), "{text}");
    assert!(text.contains("not a fusedopt checkpoint"), "{text}");
    assert!(
        text.contains("group 0: adamw"),
        "the good file is still inspected: {text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    for path in [good, cut] {
        std::fs::remove_file(path).unwrap();
    }
}
