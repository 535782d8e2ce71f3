//! The command line with bad input, as a user gives it: every case is refused with a message
//! and exit code 2 (or reported per file by `check`), never a panic, an abort or a vacuous pass.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::fusedopt;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

fn repository_file(name: &str) -> String {
    format!("{}/../tests/golden/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A copy of the repository's Adam trajectory cut to its first `steps` steps.
fn cut_copy(steps: usize) -> PathBuf {
    let bytes = std::fs::read(repository_file("adam.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = header.metadata().clone().unwrap();
    metadata.insert("steps".into(), steps.to_string());
    let views: Vec<(String, TensorView<'_>)> = file
        .tensors()
        .into_iter()
        .map(|(key, view)| {
            let mut shape = view.shape().to_vec();
            if key != "params0" {
                let row: usize = shape[1..].iter().product::<usize>() * 4;
                shape[0] = steps;
                let data = &view.data()[..steps * row];
                return (key, TensorView::new(Dtype::F32, shape, data).unwrap());
            }
            (key, view)
        })
        .collect();
    let out = std::env::temp_dir().join(format!(
        "fusedopt-cli-bad-{}-{steps}-steps.safetensors",
        std::process::id()
    ));
    safetensors::serialize_to_file(views, Some(metadata), &out).unwrap();
    out
}

fn assert_refused(args: &[&str], message: &str) {
    let (code, text) = fusedopt(args);
    assert_eq!(code, Some(2), "{args:?} exits with 2:\n{text}");
    assert!(text.contains(message), "{args:?} says {message:?}:\n{text}");
    assert!(!text.contains("panicked"), "{args:?} panicked:\n{text}");
}

#[test]
fn a_trajectory_without_steps_fails_alone_and_the_others_are_checked() {
    let empty = cut_copy(0);
    let good = repository_file("adagrad.safetensors");
    let (code, text) = fusedopt(&["check", "--cpu-only", empty.to_str().unwrap(), &good]);
    assert_eq!(code, Some(1), "a failed file fails the run:\n{text}");
    assert!(text.contains("has no steps"), "{text}");
    assert!(
        text.contains("adagrad.safetensors ("),
        "the next file is checked:\n{text}"
    );
    assert!(text.contains("  cpu  max abs"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    std::fs::remove_file(empty).ok();
}

#[test]
fn tolerances_must_be_finite_non_negative_and_not_both_zero_unless_asked() {
    let file = repository_file("adam.safetensors");
    for flag in ["--atol=nan", "--rtol=-1", "--atol=inf"] {
        assert_refused(&["check", "--cpu-only", flag, &file], "not a tolerance");
    }
    assert_refused(
        &["check", "--cpu-only", "--atol", "0", "--rtol", "0", &file],
        "--exact",
    );
    let (code, text) = fusedopt(&["check", "--cpu-only", "--exact", &file]);
    assert!(
        matches!(code, Some(0 | 1)),
        "--exact runs the check:\n{text}"
    );
    assert!(
        text.contains("<= 0 + 0"),
        "with both tolerances zero:\n{text}"
    );
    let (code, _) = fusedopt(&["check", "--cpu-only", "--exact", "--atol=1", &file]);
    assert_eq!(code, Some(2), "--exact and a tolerance conflict");
}

#[test]
fn validate_refuses_zero_steps_and_sizes_beyond_memory() {
    let (code, text) = fusedopt(&["validate", "--steps", "0"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--steps"), "{text}");
    assert_refused(&["validate", "--size", "2^40"], "host memory");
    assert_refused(
        &["validate", "--size", "18446744073709551615"],
        "host memory",
    );
    assert_refused(&["bench", "--cpu-only", "--size", "2^40"], "host memory");
}

#[test]
fn bench_refuses_an_output_folder_that_is_a_file_before_measuring() {
    let file = std::env::temp_dir().join(format!("fusedopt-cli-out-{}", std::process::id()));
    std::fs::write(&file, "not a folder").unwrap();
    let start = std::time::Instant::now();
    assert_refused(
        &["bench", "--cpu-only", "--out", file.to_str().unwrap()],
        "not a folder",
    );
    assert!(start.elapsed().as_secs() < 30, "refused before measuring");
    std::fs::remove_file(file).ok();
}

#[test]
fn an_unknown_backend_is_named_with_the_valid_ones() {
    let out = Command::new(env!("CARGO_BIN_EXE_fusedopt"))
        .arg("info")
        .env("WGPU_BACKEND", "nonsense")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("\"nonsense\"") && text.contains("vulkan, metal, dx12, gl"),
        "{text}"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn sizes_are_checked_against_a_capped_address_space_too() {
    // Under `ulimit -v` an allocation past the cap aborted the process (exit 134).
    let out = Command::new("prlimit")
        .args(["--as=2000000000", env!("CARGO_BIN_EXE_fusedopt")])
        .args([
            "validate",
            "--size",
            "2^26",
            "--optimizer",
            "sgd",
            "--steps",
            "1",
        ])
        .output()
        .expect("prlimit (util-linux) runs the command under a capped address space");
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("host memory"), "{text}");
}
