//! The layering ARCHITECTURE.md describes, held to the source: each layer of the library names
//! only the layers below it, and the library's dependencies are none of the tool's.

use std::path::{Path, PathBuf};

/// The library's modules, each with the modules it must never name, lowest layer first.
const FORBIDDEN: [(&str, &[&str]); 6] = [
    (
        "error.rs",
        &[
            "optim",
            "reference",
            "kernels",
            "gpu",
            "model",
            "golden",
            "testing",
        ],
    ),
    (
        "compare.rs",
        &[
            "optim",
            "reference",
            "kernels",
            "gpu",
            "model",
            "golden",
            "testing",
        ],
    ),
    (
        "optim",
        &["reference", "kernels", "gpu", "model", "golden", "testing"],
    ),
    (
        "reference",
        &["kernels", "gpu", "model", "golden", "testing"],
    ),
    (
        "kernels",
        &["reference", "gpu", "model", "golden", "testing"],
    ),
    ("gpu", &["reference", "model", "golden", "testing"]),
];

fn rust_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).unwrap() {
        files.extend(rust_files(&entry.unwrap().path()));
    }
    files
}

#[test]
fn each_layer_names_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for (module, forbidden) in FORBIDDEN {
        let files = rust_files(&src.join(module));
        assert!(!files.is_empty(), "{module} exists");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            // Code only: comments may point upward ("implemented in crate::reference").
            let code = text
                .lines()
                .enumerate()
                .filter(|(_, line)| !line.trim_start().starts_with("//"));
            for (n, line) in code {
                for other in forbidden {
                    assert!(
                        !line.contains(&format!("crate::{other}")),
                        "{}:{}: {module} names {other}, a layer above it: {line}",
                        file.display(),
                        n + 1
                    );
                }
            }
        }
    }
}

#[test]
fn the_library_depends_on_none_of_the_tools_crates() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let dependencies: String = manifest
        .split("\n[")
        .filter(|section| {
            section.starts_with("dependencies]")
                || (section.starts_with("target.") && section.contains(".dependencies]"))
        })
        .collect();
    assert!(
        dependencies.contains("wgpu"),
        "the dependencies section is read"
    );
    for tool in [
        "clap",
        "plotters",
        "indicatif",
        "sysinfo",
        "criterion",
        "serde =",
    ] {
        assert!(
            !dependencies.contains(tool),
            "the library depends on {tool}, which only the tool needs"
        );
    }
}
