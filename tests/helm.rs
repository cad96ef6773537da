//! The Helm chart (deploy/helm/dfp), checked without a Kubernetes cluster: tests/helm/check.py renders it
//! with every tests/helm/values/*.yaml through Helm's own SDK (helm-python-sdk), validates each object
//! strictly against the Kubernetes API schemas (kubernetes-validate), compares the render with
//! tests/helm/snapshots/, checks the invariants (hostfile, probes, credentials only from Secrets, no shell,
//! non-root) and that wrong values are refused. `./dev test` installs the Python modules into
//! ~/.cache/dfp/helm-venv and sets DFP_HELM_PYTHON to its interpreter.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python that has helm-python-sdk and kubernetes-validate: `$DFP_HELM_PYTHON`, else the virtualenv
/// `./dev test` makes.
fn helm_python() -> PathBuf {
    if let Some(python) = std::env::var_os("DFP_HELM_PYTHON") {
        let python = PathBuf::from(python);
        assert!(
            python.exists(),
            "DFP_HELM_PYTHON is {}, which does not exist: run ./dev test, which installs helm-python-sdk and \
             kubernetes-validate into ~/.cache/dfp/helm-venv and sets DFP_HELM_PYTHON",
            python.display()
        );
        return python;
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_default();
    let python = cache.join("dfp/helm-venv/bin/python");
    assert!(
        python.exists(),
        "DFP_HELM_PYTHON is not set and {} is missing: the Helm chart test needs a Python with helm-python-sdk \
         and kubernetes-validate; run ./dev test (it installs them and sets DFP_HELM_PYTHON)",
        python.display()
    );
    python
}

#[test]
fn the_helm_chart_renders_validates_and_matches_its_snapshots() {
    let python = helm_python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helm/check.py");
    let out = Command::new(&python)
        .arg(&script)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} {}: {e}", python.display(), script.display()));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "tests/helm/check.py failed ({}):\n{text}", out.status);
}
