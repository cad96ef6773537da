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
    /// List the models of a registry: name, latest version, kind (user, finetuned, group, generic), rows,
    /// trained window, and why the model is what it is.
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
    /// Show a user's profile (what the training pipeline's `profiles` stage stored: usual values,
    /// first/last seen, hours), or the population profile with `--population`.
    Profile {
        /// The registry: a directory, an s3:// prefix or mlflow://HOST:PORT.
        #[arg(long, value_name = "LOCATION")]
        registry: String,
        /// The log family (`dfp families` lists them).
        #[arg(long, default_value = "azure")]
        family: String,
        /// The user (as the logs name it).
        #[arg(value_name = "USER", required_unless_present = "population")]
        user: Option<String>,
        /// Show the population profile (what users without a profile start from).
        #[arg(long)]
        population: bool,
    },
}

/// Lists the models; a model that cannot be read is shown with the reason, and the listing goes on (the exit
/// status is 1 when there was one).
pub(crate) fn models(args: ModelsArgs) -> Result<ExitCode> {
    use dfp_stages::model::Manifest;
    let (registry, json, check) = match args.command {
        ModelsCommand::List { registry, json, check } => (registry, json, check),
        ModelsCommand::Profile { registry, family, user, population } => {
            return profile(&registry, &family, user.as_deref(), population)
        }
    };
    let s3 = dfp_stages::store::S3Options { from_env: true, ..Default::default() };
    let reg = dfp_stages::registry::open(&registry, &s3, &dfp_stages::registry::MlflowOptions::default())?;
    let list = reg.list()?;
    if !json {
        println!(
            "{:<48} {:>7} {:>9} {:>8}  {:<19} {:<19}  WHY",
            "MODEL", "VERSION", "KIND", "ROWS", "TRAINED FROM", "TO"
        );
    }
    let mut bad = 0usize;
    for m in &list {
        if m.name.ends_with(dfp_stages::profile::SET_SUFFIX) {
            // A profile set, not a model.
            let listed = m.latest.clone().and_then(|version| {
                let bytes = reg.fetch(&m.name, version, "manifest.json").map_err(|e| e.message)?;
                let set: dfp_stages::profile::store::SetManifest =
                    serde_json::from_slice(&bytes).map_err(|e| format!("unreadable profile set manifest: {e}"))?;
                Ok((version, set))
            });
            match listed {
                Ok((version, set)) if json => println!(
                    "{}",
                    json!({"model": m.name, "version": version, "kind": "profiles", "users": set.users,
                           "family": set.family, "written_at": set.written_at})
                ),
                Ok((version, set)) => {
                    let span = |t: Option<i64>| t.map(dfp_stages::time::format_micros).unwrap_or_default();
                    let (from, to) = (span(set.population.first), span(set.population.last));
                    println!(
                        "{:<48} {:>7} {:>9} {:>8}  {:<19} {:<19}  every user's history (ROWS: users)",
                        m.name,
                        version,
                        "profiles",
                        set.users,
                        from.get(..19).unwrap_or(&from),
                        to.get(..19).unwrap_or(&to)
                    );
                }
                Err(problem) => {
                    bad += 1;
                    if json {
                        println!("{}", json!({"model": m.name, "kind": "profiles", "problem": problem}));
                    } else {
                        println!("{:<48} {:>7} {:>9}  cannot be used: {problem}", m.name, "-", "profiles");
                    }
                }
            }
            continue;
        }
        // Told by the name until the manifest is read (it says `finetuned` for fine-tuned user models).
        let kind = dfp_stages::model::ModelKind::of_name(&m.name).as_str();
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
                    println!("{:<48} {:>7} {:>9}  cannot be used: {problem}", m.name, "-", kind);
                }
                continue;
            }
        };
        let t = &manifest.training;
        let kind = manifest.kind().as_str();
        let from = dfp_stages::time::format_micros(t.start_micros);
        let to = dfp_stages::time::format_micros(t.end_micros);
        if json {
            println!(
                "{}",
                json!({"model": m.name, "version": version, "kind": kind, "rows": t.rows, "start": from, "end": to,
                       "epochs_run": t.epochs_run, "dfp_version": manifest.dfp_version, "family": manifest.family,
                       "group": manifest.group, "reason": manifest.reason})
            );
        } else {
            println!(
                "{:<48} {:>7} {:>9} {:>8}  {:<19} {:<19}  {}",
                m.name,
                version,
                kind,
                t.rows,
                from.get(..19).unwrap_or(&from),
                to.get(..19).unwrap_or(&to),
                manifest.reason.as_deref().unwrap_or("")
            );
        }
    }
    if !json {
        eprintln!("{} model(s) in {registry} (profile sets included)", list.len());
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

/// Prints one profile of the latest set as JSON (times also as dates).
fn profile(registry: &str, family: &str, user: Option<&str>, population: bool) -> Result<ExitCode> {
    use dfp_stages::profile::store::{decode_manifest, decode_shard, shard_file, ProfileStore, RegistryProfiles};
    let families = dfp_core::Registry::global().families().clone();
    let family = families.require(family).map_err(|e| anyhow::anyhow!(e))?;
    let s3 = dfp_stages::store::S3Options { from_env: true, ..Default::default() };
    let reg = dfp_stages::registry::open(registry, &s3, &dfp_stages::registry::MlflowOptions::default())?;
    let store = RegistryProfiles::new(reg);
    let Some(version) = store.latest(family)? else {
        anyhow::bail!(
            "{registry} holds no profile set of family {} (a training pipeline with a `profiles` stage writes one)",
            family.name
        );
    };
    let manifest = decode_manifest(&store.fetch(family, version, "manifest.json")?, family)?;
    let found = if population {
        Some(manifest.population.clone())
    } else {
        let wanted = family.user_ids.normalize(user.unwrap_or_default()).into_owned();
        let shard = dfp_stages::profile::shard_of(&wanted);
        let (profiles, bad) = decode_shard(&store.fetch(family, version, &shard_file(shard))?);
        if let Some((line, why)) = bad.first() {
            eprintln!("warning: {} line {line}: {why}", shard_file(shard));
        }
        profiles.into_iter().find(|p| p.user == wanted)
    };
    let Some(p) = found else {
        eprintln!(
            "{} has no profile in version {version} of {registry}: the user starts from the population profile",
            user.unwrap_or_default()
        );
        return Ok(ExitCode::from(1));
    };
    let mut value = serde_json::to_value(&p)?;
    let date = |t: Option<i64>| t.map(dfp_stages::time::format_micros);
    value["first_date"] = json!(date(p.first));
    value["last_date"] = json!(date(p.last));
    value["set_version"] = json!(version);
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(ExitCode::SUCCESS)
}
