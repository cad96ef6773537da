//! `dfp models`: what a model registry holds.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;

/// Arguments of `dfp models`.
#[derive(Args)]
pub(crate) struct ModelsArgs {
    #[command(subcommand)]
    command: ModelsCommand,
}

/// What `dfp models` does.
#[derive(Subcommand)]
pub(crate) enum ModelsCommand {
    /// List the models of a registry: name, latest version, kind, rows, trained window.
    List {
        /// The registry: a directory or an s3:// prefix (S3 settings from the AWS_* variables).
        #[arg(long, value_name = "LOCATION")]
        registry: String,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
        /// Also load every model's weights (slower), to find damaged or inconsistent ones.
        #[arg(long)]
        check: bool,
    },
}

/// Lists the models; a model that cannot be read is shown with the reason, and the listing goes on (the exit
/// status is 1 when there was one).
pub(crate) fn models(args: ModelsArgs) -> Result<ExitCode> {
    use dfp_stages::model::Manifest;
    let ModelsCommand::List { registry, json, check } = args.command;
    let s3 = dfp_stages::store::S3Options { from_env: true, ..Default::default() };
    let reg = dfp_stages::registry::open(&registry, &s3, &dfp_stages::registry::MlflowOptions::default())?;
    let list = reg.list()?;
    if !json {
        println!("{:<48} {:>7} {:>8} {:>8}  {:<24} {:<24}", "MODEL", "VERSION", "KIND", "ROWS", "TRAINED FROM", "TO");
    }
    let mut bad = 0usize;
    for m in &list {
        let kind = if m.name.ends_with(dfp_stages::model::GENERIC) { "generic" } else { "user" };
        let manifest = m.latest.clone().and_then(|version| {
            let bytes = reg.fetch(&m.name, version, "manifest.json").map_err(|e| e.message)?;
            let manifest: Manifest =
                serde_json::from_slice(&bytes).map_err(|e| format!("unreadable manifest of version {version}: {e}"))?;
            manifest.check_loss_stats().map_err(|e| e.to_string())?;
            if check {
                let weights = reg.fetch(&m.name, version, "model.safetensors").map_err(|e| e.message)?;
                let cpu = dfp_stages::model::DeviceChoice::Cpu.device()?;
                dfp_stages::model::Model::from_files(&m.name, &bytes, &weights, cpu).map_err(|e| e.to_string())?;
            }
            Ok((version, manifest))
        });
        let (version, manifest) = match manifest {
            Ok(v) => v,
            Err(problem) => {
                bad += 1;
                if json {
                    println!("{}", json!({"model": m.name, "kind": kind, "problem": problem}));
                } else {
                    println!("{:<48} {:>7} {:>8}  cannot be used: {problem}", m.name, "-", kind);
                }
                continue;
            }
        };
        let t = &manifest.training;
        let from = dfp_stages::time::format_micros(t.start_micros);
        let to = dfp_stages::time::format_micros(t.end_micros);
        if json {
            println!(
                "{}",
                json!({"model": m.name, "version": version, "kind": kind, "rows": t.rows, "start": from, "end": to,
                       "epochs_run": t.epochs_run, "dfp_version": manifest.dfp_version, "family": manifest.family})
            );
        } else {
            println!(
                "{:<48} {:>7} {:>8} {:>8}  {:<24} {:<24}",
                m.name,
                version,
                kind,
                t.rows,
                from.get(..19).unwrap_or(&from),
                to.get(..19).unwrap_or(&to)
            );
        }
    }
    if !json {
        eprintln!("{} model(s) in {registry}", list.len());
    }
    if bad > 0 {
        eprintln!(
            "error: {bad} of {} model(s) cannot be used (see above); scoring falls back to the generic model for them",
            list.len()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
