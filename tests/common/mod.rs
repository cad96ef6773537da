//! Helpers shared by the end-to-end tests: the real `dfp` binary, run from the repository root.

use std::process::{Command, Output};

/// `dfp` with the repository root as working directory and no inherited log filter.
pub fn dfp() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dfp"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd.env_remove("DFP_LOG");
    cmd
}

/// Everything a run printed, stdout then stderr.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}
