//! `fusedopt check` as a user runs it: it passes on the repository's trajectories on the GPU
//! and the CPU, fails on a tampered copy, accepts it under a looser tolerance, and names an
//! unknown hyperparameter.

mod common;

use std::path::{Path, PathBuf};

use fusedopt::testing::{golden_files, sparse_golden_files};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// Runs `fusedopt args`: whether it passed, and what it printed.
fn fusedopt(args: &[&str]) -> (bool, String) {
    let (code, text) = common::fusedopt(args);
    (code == Some(0), text)
}

/// A copy of `source` whose recorded parameters are scaled by `1 + shift`, with the `hyper`
/// metadata replaced where given.
fn tampered_copy(source: &Path, shift: f32, name: &str, hyper: Option<&str>) -> PathBuf {
    let bytes = std::fs::read(source).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = header.metadata().clone().unwrap();
    if let Some(h) = hyper {
        metadata.insert("hyper".into(), h.into());
    }
    let params = file.tensor("params").unwrap();
    let scaled: Vec<u8> = params
        .data()
        .chunks_exact(4)
        .flat_map(|b| (f32::from_le_bytes(b.try_into().unwrap()) * (1.0 + shift)).to_le_bytes())
        .collect();
    let views: Vec<(String, TensorView<'_>)> = file
        .tensors()
        .into_iter()
        .map(|(key, view)| match key.as_str() {
            "params" => {
                let shape = view.shape().to_vec();
                (key, TensorView::new(Dtype::F32, shape, &scaled).unwrap())
            }
            _ => (key, view),
        })
        .collect();
    let out = std::env::temp_dir().join(format!(
        "fusedopt-cli-test-{}-{name}.safetensors",
        std::process::id()
    ));
    safetensors::serialize_to_file(views, Some(metadata), &out).unwrap();
    out
}

#[test]
fn check_command_passes_on_the_repository_copy() {
    if fusedopt::testing::gpu().is_none() {
        return;
    }
    let files: Vec<String> = golden_files()
        .iter()
        .chain(&sparse_golden_files())
        .map(|p| p.display().to_string())
        .collect();
    let mut args = vec!["check"];
    args.extend(files.iter().map(String::as_str));
    let (ok, text) = fusedopt(&args);
    assert!(ok, "fusedopt check failed:\n{text}");
    assert!(text.contains("all files pass"), "{text}");
    assert_eq!(
        text.matches("  gpu  ").count(),
        files.len(),
        "one GPU line per file:\n{text}"
    );
    assert_eq!(
        text.matches("on sparse gradients").count(),
        sparse_golden_files().len(),
        "format 3 read as such:\n{text}"
    );
}

#[test]
fn check_command_fails_on_a_wrong_trajectory() {
    let adam = golden_files()
        .into_iter()
        .find(|p| p.ends_with("adam.safetensors"))
        .unwrap();
    let exact = tampered_copy(&adam, 0.0, "exact", None);
    let (ok, text) = fusedopt(&["check", "--cpu-only", exact.to_str().unwrap()]);
    assert!(ok, "an unmodified copy passes:\n{text}");
    let wrong = tampered_copy(&adam, 1e-4, "shifted", None);
    let (ok, text) = fusedopt(&["check", "--cpu-only", wrong.to_str().unwrap()]);
    assert!(!ok, "parameters off by 1e-4 relative must fail:\n{text}");
    assert!(text.contains("FAILED"), "{text}");
    let (ok, text) = fusedopt(&[
        "check",
        "--cpu-only",
        "--rtol",
        "1e-3",
        wrong.to_str().unwrap(),
    ]);
    assert!(ok, "a looser tolerance accepts it:\n{text}");
    let unknown = tampered_copy(
        &adam,
        0.0,
        "unknown",
        Some(r#"{"lr": 0.001, "momentum_decay": 0.004}"#),
    );
    let (ok, text) = fusedopt(&["check", "--cpu-only", unknown.to_str().unwrap()]);
    assert!(
        !ok && text.contains("momentum_decay"),
        "an unknown hyperparameter is named:\n{text}"
    );
    for p in [exact, wrong, unknown] {
        let _ = std::fs::remove_file(p);
    }
}
