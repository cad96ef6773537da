//! Helpers shared by the end-to-end tests: the real `dfp` binary, run from the repository root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

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

/// The folder holding the example plugins (next to `dfp`), built once per test binary with the same
/// profile: `cargo test` builds a cdylib crate's test harness, not its `.so`.
#[allow(dead_code)]
pub fn plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_BIN_EXE_dfp")).parent().expect("binary folder").to_path_buf();
        let mut cargo = Command::new(env!("CARGO"));
        cargo.current_dir(env!("CARGO_MANIFEST_DIR")).args(["build", "--quiet"]);
        for p in ["dfp-plugin-okta", "dfp-plugin-geo-velocity", "dfp-plugin-testkit", "dfp-plugin-wrong-abi"] {
            cargo.args(["-p", p]);
        }
        if dir.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        let out = cargo.output().expect("cargo runs");
        assert!(out.status.success(), "building the example plugins failed:\n{}", text(&out));
        dir
    })
}
