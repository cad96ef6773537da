//! `dfp bench`: the runtime's rows/s, one model's forward pass, or the plugin boundary's cost.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use dfp_core::{Pipeline, RunOptions};
use serde_json::json;

use super::peak_rss_mib;

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Rows to push through each configuration.
    #[arg(long, default_value_t = 2_000_000)]
    rows: u64,
    /// Worker counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1u16, 2])]
    workers: Vec<u16>,
    /// Rows per batch from the generator.
    #[arg(long, default_value_t = 4096)]
    batch_size: usize,
    /// Distinct users (keys of the keyed variant).
    #[arg(long, default_value_t = 1000)]
    users: u64,
    /// Instead of the runtime: time a model's forward pass + losses (one libtorch thread) from this registry.
    #[arg(long, value_name = "REGISTRY")]
    model: Option<String>,
    /// With --model: the model to load (default: the first user model in the registry).
    #[arg(long, value_name = "NAME", requires = "model")]
    model_name: Option<String>,
    /// With --model: rows per forward pass, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![64usize, 256, 1024, 4096], requires = "model")]
    model_batches: Vec<usize>,
    /// Instead of the runtime: compare a no-op transform across the plugin boundary (`plugin-passthrough` of
    /// this library, e.g. libdfp_plugin_testkit.so) with the built-in `passthrough`.
    #[arg(long, value_name = "PATH.so", conflicts_with = "model")]
    plugin: Option<String>,
    /// Instead of the runtime: a profile set of this many users, then 3× as many events (two per known
    /// user, one per unknown user) through `features` with profiles on; prints events/s and peak memory.
    #[arg(long, value_name = "USERS", conflicts_with_all = ["model", "plugin"])]
    profiles: Option<u64>,
    /// Instead of the runtime: an alert store of this many synthetic events (5 % alerts), then each of the
    /// console's page queries, timed (median of 5).
    #[arg(long, value_name = "EVENTS", conflicts_with_all = ["model", "plugin", "profiles"])]
    console: Option<u64>,
    /// With --model: also time this many of the registry's user models scored together, one by one and
    /// stacked into batched passes (`score`'s `stack_models`), each model on every --model-batches rows.
    #[arg(long, value_name = "MODELS", requires = "model")]
    stack: Option<usize>,
    /// With --model: where the model runs (auto, cpu, cuda).
    #[arg(long, default_value = "cpu", requires = "model")]
    device: String,
}

pub(crate) fn bench(args: BenchArgs) -> Result<ExitCode> {
    if let Some(registry) = &args.model {
        return bench_model(registry, &args);
    }
    if let Some(plugin) = &args.plugin {
        return bench_plugin(plugin, &args);
    }
    if let Some(users) = args.profiles {
        return bench_profiles(users, &args);
    }
    if let Some(events) = args.console {
        return bench_console(events);
    }
    println!("dfp runtime benchmark: generator → filter → blackhole, {} rows, batch {}", args.rows, args.batch_size);
    println!("{:<8} {:<22} {:>10} {:>14}", "workers", "sink partitioning", "seconds", "rows/s");
    for &workers in &args.workers {
        for keyed in [false, true] {
            let sink = if keyed { json!({"partition_by": "username"}) } else { json!({}) };
            let pipeline = Pipeline::builder("bench")
                .workers(usize::from(workers))
                .stage(
                    "rows",
                    "generator",
                    &[],
                    json!({"rows": args.rows, "users": args.users, "batch_size": args.batch_size}),
                )
                .stage("kept", "filter", &["rows"], json!({"field": "value", "above": -1}))
                .stage("sink", "blackhole", &["kept"], sink)
                .build()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let started = Instant::now();
            let report = pipeline.run(RunOptions::default())?;
            let secs = started.elapsed().as_secs_f64();
            let rows = report.stage("sink").map(|s| s.rows_in).unwrap_or(0);
            anyhow::ensure!(rows == args.rows, "benchmark lost rows: {rows} of {}", args.rows);
            let label = if keyed { "by username (exchange)" } else { "any" };
            println!("{:<8} {:<22} {:>10.3} {:>14.0}", workers, label, secs, rows as f64 / secs);
        }
    }
    if let Some(mib) = peak_rss_mib() {
        println!("peak RSS: {mib:.1} MiB");
    }
    Ok(ExitCode::SUCCESS)
}

/// `dfp bench --plugin`: generator → (built-in passthrough | plugin-passthrough) → blackhole; the median
/// of three runs each.
fn bench_plugin(plugin: &str, args: &BenchArgs) -> Result<ExitCode> {
    // Loaded here for the message on a bad path; the pipelines below load it again from the cache.
    let plugin_path = dfp_core::plugin::load_entry(plugin)?.path.clone();
    println!(
        "dfp plugin-boundary benchmark: generator → no-op transform → blackhole, {} rows, batch {}",
        args.rows, args.batch_size
    );
    println!("{:<8} {:<20} {:>10} {:>14} {:>10}", "workers", "transform", "seconds", "rows/s", "overhead");
    for &workers in &args.workers {
        let mut base = 0.0;
        for (label, stage) in [("built-in passthrough", "passthrough"), ("plugin-passthrough", "plugin-passthrough")] {
            let yaml = format!(
                "version: 1\nplugins: [{:?}]\nruntime: {{ workers: {workers} }}\nstages:\n  rows: {{ type: generator, rows: {}, \
                 users: {}, batch_size: {} }}\n  pass: {{ type: {stage}, inputs: [rows] }}\n  sink: {{ type: blackhole, inputs: [pass] }}\n",
                plugin_path.display().to_string(),
                args.rows,
                args.users,
                args.batch_size
            );
            let mut times = Vec::new();
            for _ in 0..3 {
                let pipeline = Pipeline::from_yaml_str(&yaml, "bench.yaml", &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
                let started = Instant::now();
                let report = pipeline.run(RunOptions::default())?;
                times.push(started.elapsed().as_secs_f64());
                let rows = report.stage("sink").map(|s| s.rows_in).unwrap_or(0);
                anyhow::ensure!(rows == args.rows, "benchmark lost rows: {rows} of {}", args.rows);
            }
            times.sort_by(f64::total_cmp);
            let secs = times[1];
            let overhead = if base > 0.0 { format!("{:+.1} %", (secs / base - 1.0) * 100.0) } else { String::new() };
            if base == 0.0 {
                base = secs;
            }
            println!("{:<8} {:<20} {:>10.3} {:>14.0} {:>10}", workers, label, secs, args.rows as f64 / secs, overhead);
        }
    }
    if let Some(mib) = peak_rss_mib() {
        println!("peak RSS: {mib:.1} MiB");
    }
    Ok(ExitCode::SUCCESS)
}

/// The user models a registry lists, in its order (not the profile set, the generic or group models).
fn user_models(reg: &dyn dfp_core::models::ModelRegistry) -> Result<Vec<String>> {
    let user = |n: &String| {
        dfp_stages::model::ModelKind::of_name(n) == dfp_stages::model::ModelKind::User
            && !n.ends_with(dfp_stages::profile::SET_SUFFIX)
    };
    Ok(reg.list()?.into_iter().map(|m| m.name).filter(user).collect())
}

/// `dfp bench --model`: forward pass + losses rows/s of one model, f32 and bf16, per batch size.
fn bench_model(registry: &str, args: &BenchArgs) -> Result<ExitCode> {
    use dfp_stages::model::{DeviceChoice, Model};
    let s3 = dfp_stages::store::S3Options { from_env: true, ..Default::default() };
    let reg = dfp_stages::registry::open(registry, &s3, &dfp_stages::registry::MlflowOptions::default())?;
    let name = match &args.model_name {
        Some(n) => n.clone(),
        None => {
            user_models(reg.as_ref())?.into_iter().next().with_context(|| format!("no user model in {registry}"))?
        }
    };
    let version = reg.latest(&name)?.with_context(|| format!("no model {name} in {registry}"))?;
    let device: DeviceChoice = serde_json::from_value(json!(args.device))
        .map_err(|_| anyhow::anyhow!("--device must be auto, cpu or cuda, not {:?}", args.device))?;
    let device = device.device().map_err(|e| anyhow::anyhow!(e))?;
    let manifest = reg.fetch(&name, version, dfp_stages::model::artifact::MANIFEST)?;
    let weights = reg.fetch(&name, version, dfp_stages::model::artifact::WEIGHTS)?;
    dfp_stages::model::set_torch_threads(1);
    let a = serde_json::from_slice::<dfp_stages::model::Manifest>(&manifest)?.architecture;
    println!(
        "dfp model benchmark: {name} v{version} on {device:?}, one thread; inputs {} numeric + {} binary + categories {:?}, layers {:?}-{:?}",
        a.numeric, a.binary, a.cardinalities, a.encoder, a.decoder
    );
    println!("f32 hidden layers on the CPU: {}", dfp_stages::model::f32_policy());
    println!("{:<8} {:<10} {:>14}", "batch", "precision", "rows/s");
    for bf16 in [false, true] {
        let mut model = Model::from_files(&name, &manifest, &weights, device)?;
        if bf16 {
            model.to_bf16();
        }
        for &batch in &args.model_batches {
            let rate = model.forward_rate(batch.max(1), std::time::Duration::from_millis(1500));
            println!("{:<8} {:<10} {:>14.0}", batch, if bf16 { "bf16" } else { "f32" }, rate);
        }
    }
    if let Some(count) = args.stack {
        let names: Vec<String> = user_models(reg.as_ref())?.into_iter().take(count.max(1)).collect();
        let mut files = Vec::new();
        for name in &names {
            let version = reg.latest(name)?.with_context(|| format!("no model {name} in {registry}"))?;
            let manifest = reg.fetch(name, version, dfp_stages::model::artifact::MANIFEST)?;
            let weights = reg.fetch(name, version, dfp_stages::model::artifact::WEIGHTS)?;
            files.push((name, manifest, weights));
        }
        println!("{} user models scored together, rows/s over all of them (rows per model: the batch):", names.len());
        println!("{:<8} {:<10} {:>14} {:>14} {:>6}", "batch", "precision", "one by one", "stacked", "keys");
        for bf16 in [false, true] {
            let load = |stack: bool| -> Result<Vec<Model>> {
                let mut models = Vec::new();
                for (name, manifest, weights) in &files {
                    let mut model = Model::from_files(name, manifest, weights, device)?;
                    if bf16 {
                        model.to_bf16();
                    }
                    if stack {
                        model.prepare_stacking();
                    }
                    models.push(model);
                }
                Ok(models)
            };
            let (alone, stacked) = (load(false)?, load(true)?);
            let keys: std::collections::HashSet<_> = stacked.iter().filter_map(Model::stack_key).collect();
            let alone: Vec<&Model> = alone.iter().collect();
            let stacked: Vec<&Model> = stacked.iter().collect();
            for &batch in &args.model_batches {
                let wait = std::time::Duration::from_millis(1500);
                let one = Model::many_rate(&alone, batch.max(1), wait);
                let all = Model::many_rate(&stacked, batch.max(1), wait);
                let precision = if bf16 { "bf16" } else { "f32" };
                println!("{:<8} {:<10} {:>14.0} {:>14.0} {:>6}", batch, precision, one, all, keys.len());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `dfp bench --profiles N`: features with profiles on, N known users.
fn bench_profiles(users: u64, args: &BenchArgs) -> Result<ExitCode> {
    let workers = args.workers.first().copied().map_or(2, usize::from);
    let dir = tempfile_dir("dfp-bench-profiles")?;
    println!("profiles benchmark: {users} users in the set, {} events through features ({workers} workers)", 3 * users);
    let result = dfp_stages::profile::bench::run(users, workers, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let b = result.map_err(|e| anyhow::anyhow!(e))?;
    println!(
        "profile set: {} users, {:.1} MiB ({:.0} bytes per user), built and published in {:.1} s",
        b.users,
        b.set_bytes as f64 / 1048576.0,
        b.set_bytes as f64 / b.users.max(1) as f64,
        b.publish_secs
    );
    println!(
        "features with profiles: {} events in {:.1} s, {:.0} events/s, peak RSS {}",
        b.events,
        b.run_secs,
        b.events as f64 / b.run_secs,
        b.peak_rss_mib.map_or("n/a".to_string(), |m| format!("{m:.0} MiB"))
    );
    println!(
        "checkpoint of {} users' live history: {:.1} MiB written in {:.1} s",
        b.users,
        b.checkpoint_bytes as f64 / 1048576.0,
        b.checkpoint_secs
    );
    Ok(ExitCode::SUCCESS)
}

fn bench_console(events: u64) -> Result<ExitCode> {
    use dfp_stages::console::{fill_synthetic, Console};
    let dir = tempfile_dir("dfp-bench-console")?;
    let path = dir.join("alerts.db");
    let started = std::time::Instant::now();
    let alerts = fill_synthetic(&path, events, 400).map_err(|e| anyhow::anyhow!(e))?;
    println!(
        "console benchmark: a store of {events} events and {alerts} alerts (400 users, 30 days), written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let console = Console::open(&path).map_err(|e| anyhow::anyhow!(e))?;
    let q = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
    // An event that is not an alert, with its time, as a list shows it (and links to it).
    let listed = console
        .events(&q(&[("alerts", "0"), ("from", "2026-10-10"), ("to", "2026-10-10")]))
        .map_err(|e| anyhow::anyhow!(e))?;
    let rows = listed["rows"].as_array().map_or(&[][..], Vec::as_slice);
    let row = rows.iter().find(|r| r["alert"] == false).context("no event that is not an alert on 2026-10-10")?;
    let (plain, plain_time) = (row["id"].as_str().unwrap_or("").to_string(), row["time"].as_str().unwrap_or(""));
    type Query<'a> = Box<dyn Fn(&Console) -> Result<(), dfp_stages::console::ConsoleError> + 'a>;
    let pages: Vec<(&str, Query<'_>)> = vec![
        ("overview, everything stored", Box::new(|c| c.overview(&q(&[])).map(drop))),
        ("overview, one week", Box::new(|c| c.overview(&q(&[("from", "2026-10-08"), ("to", "2026-10-14")])).map(drop))),
        ("heat map, 30 users × 48 bins", Box::new(|c| c.heatmap(&q(&[])).map(drop))),
        ("alerts, first page", Box::new(|c| c.events(&q(&[])).map(drop))),
        ("alerts, page 500", Box::new(|c| c.events(&q(&[("page", "500")])).map(drop))),
        ("alerts of one user", Box::new(|c| c.events(&q(&[("user", "user0042@corp.example")])).map(drop))),
        (
            "alerts by country, min risk, by risk",
            Box::new(|c| c.events(&q(&[("country", "PT"), ("min_score", "5"), ("sort", "score")])).map(drop)),
        ),
        ("alerts, free text", Box::new(|c| c.events(&q(&[("q", "0042")])).map(drop))),
        ("alerts, unmarked", Box::new(|c| c.events(&q(&[("status", "unmarked")])).map(drop))),
        (
            "events of one user in a day",
            Box::new(|c| {
                c.events(&q(&[
                    ("user", "user0042@corp.example"),
                    ("from", "2026-10-10"),
                    ("to", "2026-10-10"),
                    ("alerts", "0"),
                ]))
                .map(drop)
            }),
        ),
        ("incidents, first page", Box::new(|c| c.incidents(&q(&[])).map(drop))),
        ("one alert in depth, by its id", Box::new(|c| c.event("bench-000000020", &[]).map(drop))),
        ("one event in depth, by id and time", Box::new(|c| c.event(&plain, &q(&[("time", plain_time)])).map(drop))),
        ("one incident", Box::new(|c| c.incident("inc-0").map(drop))),
        ("labels export", Box::new(|c| c.labels_csv().map(drop))),
        ("version (live poll)", Box::new(|c| c.version().map(drop))),
    ];
    println!("{:<40} {:>10}", "page query", "ms (median of 5)");
    let mut worst = 0f64;
    for (name, run) in &pages {
        let mut times = Vec::with_capacity(5);
        for _ in 0..5 {
            let t = std::time::Instant::now();
            run(&console).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        worst = worst.max(times[2]);
        println!("{name:<40} {:>10.1}", times[2]);
    }
    println!("slowest page query: {worst:.1} ms");
    // What the console's own links never ask: an event that is not an alert, by its id alone.
    let t = std::time::Instant::now();
    console.event(&plain, &[]).map_err(|e| anyhow::anyhow!(e))?;
    println!(
        "an event that is not an alert, by its id alone (reads every event; links carry the time): {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}

/// A new folder under the temporary directory, named for the process.
fn tempfile_dir(prefix: &str) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
