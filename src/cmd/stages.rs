//! `dfp stages`, `dfp schema`, `dfp plugin inspect` and `dfp families`: what this dfp (and its plugins)
//! offers.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use dfp_core::spec::schema::pipeline_schema;
use serde_json::json;

use super::registry_with;

#[derive(Args)]
pub(crate) struct StagesArgs {
    /// Print JSON (type, kind, description, config schema) instead of a table.
    #[arg(long)]
    json: bool,
    /// Also list the stages of this plugin library (repeatable).
    #[arg(long = "plugin", value_name = "PATH.so")]
    plugins: Vec<String>,
}

#[derive(Args)]
pub(crate) struct SchemaArgs {
    /// Include the stages of this plugin library (repeatable).
    #[arg(long = "plugin", value_name = "PATH.so")]
    plugins: Vec<String>,
}

#[derive(Args)]
pub(crate) struct PluginArgs {
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Subcommand)]
pub(crate) enum PluginCommand {
    /// Print a plugin's descriptor table (ABI and SDK versions, stages, their config schemas) without
    /// running anything.
    Inspect {
        /// The plugin library.
        path: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn stages(args: StagesArgs) -> Result<ExitCode> {
    let registry = registry_with(&args.plugins)?;
    if args.json {
        let list: Vec<_> = registry
            .iter()
            .map(|r| {
                json!({"type": r.type_name, "kind": r.kind, "description": r.description, "config": (r.schema)(),
                       "origin": r.origin()})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        println!("{:<18} {:<10} DESCRIPTION", "TYPE", "KIND");
        for r in registry.iter() {
            let from = r.plugin.as_ref().map(|p| format!(" (plugin {})", p.display())).unwrap_or_default();
            println!("{:<18} {:<10} {}{from}", r.type_name, r.kind.to_string(), r.description);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `dfp schema`.
pub(crate) fn schema(args: SchemaArgs) -> Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(&pipeline_schema(&registry_with(&args.plugins)?))?);
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn plugin(args: PluginArgs) -> Result<ExitCode> {
    let PluginCommand::Inspect { path, json } = args.command;
    let p = dfp_core::plugin::load_entry(&path)?;
    let stages: Vec<_> = p
        .stages
        .iter()
        .map(|s| {
            let partitioning = match &s.partitioning {
                dfp_core::Partitioning::By(c) => json!({"by": c}),
                other => json!(format!("{other:?}").to_lowercase()),
            };
            json!({"type": s.type_name, "kind": s.kind, "description": s.description, "partitioning": partitioning,
                   "config": s.schema})
        })
        .collect();
    if json {
        let families: Vec<&str> = p.families.iter().map(|f| f.name.as_str()).collect();
        let doc = json!({"path": p.path, "name": p.name, "version": p.version, "abi_version": p.abi_version,
                         "sdk_version": p.sdk_version, "stages": stages, "families": families});
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("plugin       {} {}", p.name, p.version);
    println!("file         {}", p.path.display());
    println!("ABI version  {} (this dfp: {})", p.abi_version, dfp_plugin_sdk::ABI_VERSION);
    println!("SDK version  {} (this dfp: {})", p.sdk_version, dfp_plugin_sdk::SDK_VERSION);
    for f in &p.families {
        println!("family       {} (models DFP-{}-…): {}", f.name, f.model_prefix, f.description);
    }
    for s in &stages {
        println!();
        println!(
            "stage {} ({}): {}",
            s["type"].as_str().unwrap_or(""),
            s["kind"].as_str().unwrap_or(""),
            s["description"].as_str().unwrap_or("")
        );
        println!("  partitioning: {}", s["partitioning"]);
        println!("  config schema: {}", serde_json::to_string_pretty(&s["config"])?.replace('\n', "\n  "));
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `dfp families`.
#[derive(Args)]
pub(crate) struct FamiliesArgs {
    /// Show one family's whole declaration (as JSON, which pipeline YAML accepts too).
    #[arg(long, value_name = "NAME")]
    show: Option<String>,
    /// Also list the families of this plugin library (repeatable).
    #[arg(long = "plugin", value_name = "PATH.so")]
    plugins: Vec<String>,
}

/// `dfp families`: the log families this dfp knows (built in and from the plugins given).
pub(crate) fn families(args: FamiliesArgs) -> Result<ExitCode> {
    let registry = registry_with(&args.plugins)?;
    let families = registry.families();
    if let Some(name) = &args.show {
        let family = families.require(name).map_err(anyhow::Error::msg)?;
        let mut doc = serde_json::Map::new();
        doc.insert(family.name.clone(), serde_json::to_value(family.as_ref())?);
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<12} {:<14} {:<18} {:<10} DESCRIPTION", "FAMILY", "MODEL PREFIX", "NORMALIZER", "FEATURES");
    for f in families.iter() {
        let features = f.features.categorical.len() + f.features.binary.len() + f.features.numeric.len();
        let origin = match families.origin(&f.name) {
            Some(dfp_core::family::FamilyOrigin::BuiltIn) | None => String::new(),
            Some(o) => format!(" ({o})"),
        };
        println!(
            "{:<12} {:<14} {:<18} {:<10} {}{origin}",
            f.name,
            f.model_prefix,
            f.normalizer.as_deref().unwrap_or("normalize"),
            features,
            f.description
        );
    }
    Ok(ExitCode::SUCCESS)
}
