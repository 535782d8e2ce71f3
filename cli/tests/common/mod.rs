//! What the command-line tests share.

use std::process::Command;

/// Runs `fusedopt args`: its exit code (`None` if a signal ended it) and everything it printed.
pub fn fusedopt(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fusedopt"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}
