//! The layering ARCHITECTURE.md describes, held to the source: each layer of the library names
//! only the layers below it, and the library's dependencies are none of the tool's.

use std::path::{Path, PathBuf};

/// The library's layers, lowest first (ARCHITECTURE.md): a module names only the modules of
/// the layers below its own.
const LAYERS: [&[&str]; 8] = [
    &["error", "compare"],
    &["files"],
    &["optim"],
    &["reference", "kernels"],
    &["gpu"],
    &["model", "golden"],
    &["checkpoint"],
    &["testing"],
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

/// The first segment of every path a file's code takes from the crate root: `crate::gpu::X`
/// and each item of `use crate::{gpu::X, optim}` (comments left out: they may point upward).
fn crate_paths(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let first_segment = |path: &str| {
        path.trim()
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .next()
            .unwrap_or("")
            .to_string()
    };
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(list) => {
                // Items up to the matching brace, split at the commas of the outer level.
                let (mut depth, mut item) = (0, String::new());
                for c in list.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => out.push(first_segment(&std::mem::take(&mut item))),
                        _ => {}
                    }
                    if !(c == ',' && depth == 0) {
                        item.push(c);
                    }
                }
                out.push(first_segment(&item));
            }
            None => out.push(first_segment(rest)),
        }
    }
    out.retain(|name| !name.is_empty());
    out
}

#[test]
fn crate_paths_are_read_from_lists_and_across_lines() {
    let text = "use crate::{\n    error::{Error, Result},\n    gpu::Gpu, // crate::model\n};\nlet x = crate::optim::f();";
    assert_eq!(crate_paths(text), ["error", "gpu", "optim"]);
}

#[test]
fn each_layer_names_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for (level, layer) in LAYERS.iter().enumerate() {
        for &module in *layer {
            // The modules of this layer and those above, but the module itself.
            let above: Vec<&str> = LAYERS[level..]
                .iter()
                .flat_map(|l| l.iter().copied())
                .filter(|&m| m != module)
                .collect();
            let path = match src.join(module) {
                dir if dir.is_dir() => dir,
                _ => src.join(format!("{module}.rs")),
            };
            let files = rust_files(&path);
            assert!(!files.is_empty(), "{module} exists");
            for file in files {
                let text = std::fs::read_to_string(&file).unwrap();
                let shown = file.display();
                assert!(
                    !text.contains("super::super"),
                    "{shown}: a path past its parent"
                );
                for name in crate_paths(&text) {
                    assert!(
                        !above.contains(&name.as_str()),
                        "{shown}: {module} names {name}, which is not below it"
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
