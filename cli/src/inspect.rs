//! `fusedopt inspect`: what a checkpoint holds, after the same checks a restore makes.

use std::path::Path;

use fusedopt::Checkpoint;

use crate::error::chain;

/// Prints each checkpoint's optimizer, hyperparameters, step, scaler and tensors. A file that
/// fails the checks is reported and the others still inspected; `false` if any failed.
pub fn inspect(files: &[impl AsRef<Path>]) -> bool {
    let mut all_ok = true;
    for file in files {
        let file = file.as_ref();
        match Checkpoint::load(file) {
            Ok(checkpoint) => print!("{}", describe(&file.display().to_string(), &checkpoint)),
            Err(e) => {
                println!("{}: FAILED the checks: {}", file.display(), chain(&e));
                all_ok = false;
            }
        }
    }
    all_ok
}

/// The report of one checkpoint.
pub fn describe(name: &str, checkpoint: &Checkpoint) -> String {
    let mut out = format!(
        "{name}: fusedopt checkpoint (format {}, written by fusedopt {}), precision {}\n",
        fusedopt::checkpoint::FORMAT_VERSION,
        checkpoint.fusedopt_version(),
        checkpoint.precision().describe(),
    );
    for (g, group) in checkpoint.groups().iter().enumerate() {
        let tensors = checkpoint.layout().iter().filter(|e| e.group == g).count();
        out += &format!(
            "group {g}: {} at step {}, {tensors} tensors, {}\n",
            group.optimizer.name(),
            group.step,
            group.optimizer.to_torch()
        );
    }
    match checkpoint.guard() {
        Some((guard, state)) => {
            out += &format!(
                "guard: {}; scale {}, {} clean steps in a row\n",
                guard.describe(),
                state.scale,
                state.growth_tracker
            )
        }
        None => out += "guard: none\n",
    }
    for (key, value) in checkpoint.notes() {
        out += &format!("note {key}: {value}\n");
    }
    out += &format!("{} tensors:\n", checkpoint.tensors().len());
    for (name, tensor) in checkpoint.tensors() {
        let dtype = tensor.format().map_or("float32", |f| f.torch_name());
        out += &format!("  {name:<40} {dtype:<9} {:?}\n", tensor.shape());
    }
    out
}
