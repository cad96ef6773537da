//! One module per `dfp` verb: its arguments and what it does. Product features that a Rust program
//! embedding dfp may want too (generate, eval, report, summary) live in `dfp_stages`; these modules only
//! read arguments and print.

pub(crate) mod admin;
pub(crate) mod bench;
pub(crate) mod es;
pub(crate) mod eval;
pub(crate) mod generate;
pub(crate) mod models;
pub(crate) mod produce;
pub(crate) mod report;
pub(crate) mod retrain;
pub(crate) mod run;
pub(crate) mod serve;
pub(crate) mod stages;
pub(crate) mod summary;
pub(crate) mod validate;

use anyhow::Result;
use clap::Args;
use dfp_core::Registry;

/// `--var NAME=VALUE` overrides.
#[derive(Args)]
pub(crate) struct VarArgs {
    /// Override a variable declared under `vars:` (repeatable): --var input=./logs --var threshold=2.5
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub(crate) vars: Vec<String>,
}

/// The built-in stages plus those of the given plugin libraries.
pub(crate) fn registry_with(plugins: &[String]) -> Result<Registry> {
    let mut registry = Registry::global().clone();
    for entry in plugins {
        let plugin = dfp_core::plugin::load_entry(entry)?;
        dfp_core::plugin::add_to(&mut registry, &plugin).map_err(|e| anyhow::anyhow!(e))?;
    }
    Ok(registry)
}

/// The process's peak resident memory (VmHWM), in MiB.
pub(crate) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
