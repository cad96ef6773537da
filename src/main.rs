//! The `dfp` command line.

mod admin;
mod produce;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use dfp_core::spec::schema::pipeline_schema;
use dfp_core::{Pipeline, Registry, RunOptions, RunReport, StopHandle};
use serde_json::json;

/// dfp: digital fingerprinting for sign-in logs. Runs declarative YAML pipelines of stages.
#[derive(Parser)]
#[command(name = "dfp", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log filter for diagnostics on stderr (error, warn, info, debug, trace, or a tracing filter such as
    /// `dfp_core=debug`). Also read from DFP_LOG.
    #[arg(long, global = true, env = "DFP_LOG", default_value = "warn,dfp_stages::transforms::train=info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline until its sources are exhausted (Ctrl-C stops it gracefully).
    Run(RunArgs),
    /// Check pipeline files without running them; prints every problem found with file:line.
    Validate(ValidateArgs),
    /// List the stage types this dfp knows.
    Stages(StagesArgs),
    /// Print the JSON Schema of the pipeline YAML format (for editors and CI checks).
    Schema(SchemaArgs),
    /// Work with dynamic stage plugins (.so libraries built with dfp-plugin-sdk).
    Plugin(PluginArgs),
    /// Replay sign-in log files (Azure, Duo, Okta; a `dfp generate` folder) into a Kafka topic, one record
    /// per message, in time order.
    Produce(ProduceArgs),
    /// Measure the runtime: rows/s through generator → filter → blackhole.
    Bench(BenchArgs),
    /// Write labelled synthetic sign-in logs (train/, infer/, labels.csv) with injected attacks.
    Generate(GenerateArgs),
    /// Measure detection quality of scores against labels: ROC-AUC, average precision, precision/recall/F1.
    Eval(EvalArgs),
    /// Inspect a model registry.
    Models(ModelsArgs),
    /// Summarise scored events: alerts per user and the features behind them.
    Summary(SummaryArgs),
    /// Print the rows leaving a stage of a running pipeline (started with --metrics-addr or
    /// runtime.metrics), as JSON lines, without stopping it.
    Tap(admin::TapArgs),
    /// Show per-stage rates, lag and readiness of a running pipeline, refreshed.
    Top(admin::TopArgs),
    /// Write a self-contained HTML report of scored events for analysts (alerts over time, top users,
    /// per-alert feature z-scores, filters).
    Report(report::ReportArgs),
}

#[derive(Args)]
struct VarArgs {
    /// Override a variable declared under `vars:` (repeatable): --var input=./logs --var threshold=2.5
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<String>,
}

#[derive(Args)]
struct RunArgs {
    /// The pipeline YAML file.
    pipeline: PathBuf,
    #[command(flatten)]
    vars: VarArgs,
    /// Worker threads (overrides runtime.workers).
    #[arg(long, short = 'w', value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
    /// Where unrouted dead letters go (overrides runtime.dead_letter).
    #[arg(long, value_name = "PATH")]
    dead_letter: Option<String>,
    /// Do not print the per-stage summary.
    #[arg(long, short)]
    quiet: bool,
    /// Serve Prometheus /metrics, /healthz, /readyz and the `dfp tap` / `dfp top` endpoint on HOST:PORT
    /// (overrides runtime.metrics; 127.0.0.1:9464 is the usual choice).
    #[arg(long, value_name = "HOST:PORT", env = "DFP_METRICS_ADDR")]
    metrics_addr: Option<String>,
    /// Keep the metrics endpoint up for this many seconds after the run ends (so that a last scrape sees
    /// the final figures of a batch job).
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    metrics_linger: f64,
    /// Run as one of N processes of a cluster (overrides runtime.processes; see docs/operations.md).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    processes: Option<u16>,
    /// This process's index in the cluster, 0..N (overrides runtime.process).
    #[arg(long, value_name = "I")]
    process: Option<u16>,
    /// The cluster's hostfile: host:port per process, in process order (overrides runtime.hostfile).
    #[arg(long, value_name = "FILE")]
    hostfile: Option<String>,
    /// Seconds to wait for every process of the cluster to connect (overrides runtime.connect_timeout_secs).
    #[arg(long, value_name = "SECONDS")]
    connect_timeout: Option<f64>,
}

#[derive(Args)]
struct ValidateArgs {
    /// Pipeline YAML files.
    #[arg(required = true)]
    pipelines: Vec<PathBuf>,
    #[command(flatten)]
    vars: VarArgs,
}

#[derive(Args)]
struct SummaryArgs {
    /// Scored events (JSON lines, as written by an inference pipeline).
    scores: PathBuf,
    /// The score column.
    #[arg(long, default_value = "mean_abs_z")]
    field: String,
    /// Alerts are rows with the field strictly above this.
    #[arg(long, default_value_t = 2.0)]
    threshold: f64,
    /// How many users and features to list.
    #[arg(long, default_value_t = 10)]
    top: usize,
}

#[derive(Args)]
struct ModelsArgs {
    #[command(subcommand)]
    command: ModelsCommand,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// List the models of a registry: name, latest version, kind, rows, trained window.
    List {
        /// The registry: a directory or an s3:// prefix (S3 settings from the AWS_* variables).
        #[arg(long, value_name = "LOCATION")]
        registry: String,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct StagesArgs {
    /// Print JSON (type, kind, description, config schema) instead of a table.
    #[arg(long)]
    json: bool,
    /// Also list the stages of this plugin library (repeatable).
    #[arg(long = "plugin", value_name = "PATH.so")]
    plugins: Vec<String>,
}

#[derive(Args)]
struct SchemaArgs {
    /// Include the stages of this plugin library (repeatable).
    #[arg(long = "plugin", value_name = "PATH.so")]
    plugins: Vec<String>,
}

#[derive(Args)]
struct ProduceArgs {
    /// Kafka bootstrap servers, host:port[,host:port…].
    #[arg(long)]
    brokers: String,
    /// Topic to write to (it must exist).
    #[arg(long)]
    topic: String,
    /// At most this many records per second.
    #[arg(long, value_name = "N")]
    rate: Option<f64>,
    /// JSON pointer of the message key (default: the user id of Azure, Duo and Okta records).
    #[arg(long, value_name = "POINTER")]
    key: Option<String>,
    /// A librdkafka property (repeatable): -X security.protocol=SASL_SSL
    #[arg(short = 'X', value_name = "NAME=VALUE")]
    property: Vec<String>,
    /// Log files or folders (searched recursively; files in name order, which is time order for exports
    /// and generated data).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

#[derive(Args)]
struct PluginArgs {
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Subcommand)]
enum PluginCommand {
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

#[derive(Args)]
struct BenchArgs {
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
    /// With --model: where the model runs (auto, cpu, cuda).
    #[arg(long, default_value = "cpu", requires = "model")]
    device: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    /// Azure AD sign-in logs (Azure Monitor export shape).
    Azure,
    /// Duo authentication logs (Admin API v2).
    Duo,
    /// Okta System Log sign-in events (System Log API LogEvent shape).
    Okta,
}

#[derive(Args)]
struct GenerateArgs {
    /// Log format to write.
    #[arg(value_enum)]
    format: FormatArg,
    /// Output directory: gets train/, infer/ and labels.csv.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Number of users.
    #[arg(long, default_value_t = 60)]
    users: usize,
    /// Days in all.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Days of the training period [default: days - 7, at least half of the days].
    #[arg(long)]
    train_days: Option<u32>,
    /// Seed: the same seed and options write the same bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// First instant (UTC): a date or an RFC 3339 time.
    #[arg(long, default_value = "2026-10-01T00:00:00Z")]
    start: String,
    /// Replace log files an earlier run left in the output directory.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// Scored events: a JSON-lines or CSV (.csv) file, a directory of them, or a glob.
    #[arg(long, value_name = "PATH")]
    scores: String,
    /// The labels.csv written by `dfp generate` (columns id, label, and optionally kind).
    #[arg(long, value_name = "FILE")]
    labels: PathBuf,
    /// The score field in the scored events.
    #[arg(long, default_value = "mean_abs_z")]
    field: String,
    /// Events scoring strictly above this are flagged.
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true)]
    threshold: f64,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    // Like other Unix tools: `dfp models list | head` ends quietly when the reader goes away, instead of
    // panicking on a broken pipe.
    // SAFETY: setting a signal disposition at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    init_logging(&cli.log);
    dfp_stages::link();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(filter: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run(args) => run(args),
        Command::Validate(args) => Ok(validate(args)),
        Command::Stages(args) => stages(args),
        Command::Schema(args) => {
            println!("{}", serde_json::to_string_pretty(&pipeline_schema(&registry_with(&args.plugins)?))?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(args) => plugin(args),
        Command::Produce(args) => {
            let mut properties = Vec::new();
            for p in &args.property {
                let (k, v) = p.split_once('=').with_context(|| format!("-X {p}: expected NAME=VALUE"))?;
                properties.push((k.to_string(), v.to_string()));
            }
            let options = produce::ProduceOptions {
                brokers: args.brokers,
                topic: args.topic,
                rate: args.rate,
                key: args.key,
                properties,
            };
            produce::produce(&args.inputs, &options)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => bench(args),
        Command::Generate(args) => generate(args),
        Command::Eval(args) => eval(args),
        Command::Models(args) => models(args),
        Command::Summary(args) => summary(args),
        Command::Report(args) => report::run(args),
        Command::Tap(args) => admin::tap(args),
        Command::Top(args) => admin::top(args),
    }
}

fn run(args: RunArgs) -> Result<ExitCode> {
    let pipeline = match Pipeline::from_file(&args.pipeline, &args.vars.vars) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            eprintln!(
                "error: {} is not a valid pipeline ({} problem(s))",
                args.pipeline.display(),
                e.diagnostics.len()
            );
            return Ok(ExitCode::from(2));
        }
    };
    let stop = StopHandle::new();
    install_ctrl_c(stop.clone())?;
    let mut options = RunOptions::default();
    options.workers = args.workers.map(usize::from);
    options.dead_letter = args.dead_letter;
    options.stop = Some(stop);
    if !(args.metrics_linger.is_finite() && args.metrics_linger >= 0.0) {
        anyhow::bail!("--metrics-linger must be zero or more seconds");
    }
    options.metrics_linger = Some(std::time::Duration::from_secs_f64(args.metrics_linger));
    if let Some(addr) = &args.metrics_addr {
        dfp_core::observe::check_addr(addr).map_err(|e| anyhow::anyhow!("--metrics-addr: {e}"))?;
    }
    options.metrics = args.metrics_addr.clone();
    options.processes = args.processes.map(usize::from);
    options.process = args.process.map(usize::from);
    options.hostfile = args.hostfile.clone();
    if let Some(t) = args.connect_timeout {
        if !(t.is_finite() && t > 0.0) {
            anyhow::bail!("--connect-timeout must be a positive number of seconds");
        }
        options.connect_timeout = Some(std::time::Duration::from_secs_f64(t));
    }
    if let Some(addr) = args.metrics_addr.as_ref().or(pipeline.plan().runtime.metrics.as_ref()) {
        if !args.quiet {
            eprintln!("metrics on http://{addr}/metrics (also /healthz /readyz; dfp tap --addr {addr} STAGE; dfp top --addr {addr})");
        }
    }
    let report = pipeline.run(options).with_context(|| format!("pipeline {} failed", args.pipeline.display()))?;
    if !args.quiet {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn install_ctrl_c(stop: StopHandle) -> Result<()> {
    static PRESSES: AtomicUsize = AtomicUsize::new(0);
    ctrlc::set_handler(move || {
        if PRESSES.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!("\nstopping: sources stop reading, in-flight data drains to the sinks (Ctrl-C again to abort)");
            stop.stop();
        } else {
            eprintln!("aborted");
            std::process::exit(130);
        }
    })
    .context("cannot install the Ctrl-C handler")
}

fn print_report(report: &RunReport) {
    let secs = report.elapsed.as_secs_f64();
    eprintln!("{:<20} {:<18} {:>12} {:>12} {:>8} {:>8}", "stage", "type", "rows in", "rows out", "dead", "skipped");
    for s in &report.stages {
        eprintln!(
            "{:<20} {:<18} {:>12} {:>12} {:>8} {:>8}",
            s.id, s.type_name, s.rows_in, s.rows_out, s.dead_letters, s.skipped
        );
    }
    let read: u64 = report
        .stages
        .iter()
        .filter(|s| s.kind == dfp_core::StageKind::Source)
        .map(|s| s.rows_out + s.dead_letters)
        .sum();
    let rate = if secs > 0.0 { read as f64 / secs } else { 0.0 };
    let peak = peak_rss_mib().map(|m| format!(", peak RSS {m:.0} MiB")).unwrap_or_default();
    let cluster = if report.processes > 1 {
        format!(" (process {} of {}; figures of this process)", report.process, report.processes)
    } else {
        String::new()
    };
    eprintln!(
        "finished in {secs:.2}s on {} worker(s){cluster}: {read} records read, {rate:.0} records/s{peak}",
        report.workers
    );
    if let Some(path) = &report.dead_letter_file {
        eprintln!("{} record(s) rejected: see {path}", report.dead_letters);
    }
}

fn validate(args: ValidateArgs) -> ExitCode {
    let mut failed = 0;
    for path in &args.pipelines {
        match Pipeline::from_file(path, &args.vars.vars) {
            Ok(p) => println!("{}: ok ({} stages)", path.display(), p.plan().stages.len()),
            Err(e) => {
                failed += 1;
                eprintln!("{e}");
            }
        }
    }
    if failed > 0 {
        eprintln!("error: {failed} of {} pipeline(s) invalid", args.pipelines.len());
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// The built-in stages plus those of the given plugin libraries.
fn registry_with(plugins: &[String]) -> Result<Registry> {
    let mut registry = Registry::global().clone();
    for entry in plugins {
        let plugin = dfp_core::plugin::load_entry(entry)?;
        dfp_core::plugin::add_to(&mut registry, &plugin).map_err(|e| anyhow::anyhow!(e))?;
    }
    Ok(registry)
}

fn stages(args: StagesArgs) -> Result<ExitCode> {
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

fn plugin(args: PluginArgs) -> Result<ExitCode> {
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
        let doc = json!({"path": p.path, "name": p.name, "version": p.version, "abi_version": p.abi_version,
                         "sdk_version": p.sdk_version, "stages": stages});
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("plugin       {} {}", p.name, p.version);
    println!("file         {}", p.path.display());
    println!("ABI version  {} (this dfp: {})", p.abi_version, dfp_plugin_sdk::ABI_VERSION);
    println!("SDK version  {} (this dfp: {})", p.sdk_version, dfp_plugin_sdk::SDK_VERSION);
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

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn bench(args: BenchArgs) -> Result<ExitCode> {
    if let Some(registry) = &args.model {
        return bench_model(registry, &args);
    }
    if let Some(plugin) = &args.plugin {
        return bench_plugin(plugin, &args);
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

/// `dfp bench --model`: forward pass + losses rows/s of one model, f32 and bf16, per batch size.
fn bench_model(registry: &str, args: &BenchArgs) -> Result<ExitCode> {
    use dfp_stages::model::{DeviceChoice, Model};
    let s3 = dfp_stages::store::S3Options { from_env: true, ..Default::default() };
    let reg = dfp_stages::registry::open(registry, &s3, &dfp_stages::registry::MlflowOptions::default())?;
    let name = match &args.model_name {
        Some(n) => n.clone(),
        None => reg
            .list()?
            .into_iter()
            .map(|m| m.name)
            .find(|n| !n.ends_with(dfp_stages::model::GENERIC))
            .with_context(|| format!("no user model in {registry}"))?,
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
    Ok(ExitCode::SUCCESS)
}

fn generate(args: GenerateArgs) -> Result<ExitCode> {
    use dfp_stages::generate::{parse_start, GenerateOptions, LogFormat};
    let format = match args.format {
        FormatArg::Azure => LogFormat::Azure,
        FormatArg::Duo => LogFormat::Duo,
        FormatArg::Okta => LogFormat::Okta,
    };
    let mut options = GenerateOptions::new(format, args.out);
    options.users = args.users;
    options.days = args.days;
    options.train_days = args.train_days;
    options.seed = args.seed;
    options.start = parse_start(&args.start)?;
    options.force = args.force;
    let report = dfp_stages::generate::generate(&options)?;
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}

fn eval(args: EvalArgs) -> Result<ExitCode> {
    use dfp_stages::eval::{evaluate, read_labels, read_scores};
    let labels = read_labels(&args.labels)?;
    let scores = read_scores(&args.scores, &args.field)?;
    let report = evaluate(&labels, &scores, &args.field, args.threshold);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}

fn models(args: ModelsArgs) -> Result<ExitCode> {
    use dfp_stages::model::Manifest;
    let ModelsCommand::List { registry, json } = args.command;
    let s3 = dfp_stages::store::S3Options { from_env: true, ..Default::default() };
    let reg = dfp_stages::registry::open(&registry, &s3, &dfp_stages::registry::MlflowOptions::default())?;
    let list = reg.list()?;
    if !json {
        println!("{:<48} {:>7} {:>8} {:>8}  {:<24} {:<24}", "MODEL", "VERSION", "KIND", "ROWS", "TRAINED FROM", "TO");
    }
    for m in &list {
        let manifest: Manifest = serde_json::from_slice(&reg.fetch(&m.name, m.version, "manifest.json")?)
            .with_context(|| format!("{}: unreadable manifest", m.name))?;
        let kind = if m.name.ends_with(dfp_stages::model::GENERIC) { "generic" } else { "user" };
        let t = &manifest.training;
        let from = dfp_stages::time::format_micros(t.start_micros);
        let to = dfp_stages::time::format_micros(t.end_micros);
        if json {
            println!(
                "{}",
                json!({"model": m.name, "version": m.version, "kind": kind, "rows": t.rows, "start": from, "end": to,
                       "epochs_run": t.epochs_run, "dfp_version": manifest.dfp_version})
            );
        } else {
            println!(
                "{:<48} {:>7} {:>8} {:>8}  {:<24} {:<24}",
                m.name,
                m.version,
                kind,
                t.rows,
                &from[..19],
                &to[..19]
            );
        }
    }
    if !json {
        eprintln!("{} model(s) in {registry}", list.len());
    }
    Ok(ExitCode::SUCCESS)
}

fn summary(args: SummaryArgs) -> Result<ExitCode> {
    use std::collections::HashMap;
    use std::io::BufRead;
    let file = std::fs::File::open(&args.scores).with_context(|| format!("cannot open {}", args.scores.display()))?;
    let (mut total, mut alerts) = (0usize, 0usize);
    let mut per_user: HashMap<String, (usize, f64)> = HashMap::new();
    let mut features: HashMap<String, usize> = HashMap::new();
    let mut kinds: HashMap<String, usize> = HashMap::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {}", args.scores.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("{}: line {}", args.scores.display(), i + 1))?;
        total += 1;
        let score = row[&args.field]
            .as_f64()
            .with_context(|| format!("{}: line {}: no numeric `{}`", args.scores.display(), i + 1, args.field))?;
        if score <= args.threshold {
            continue;
        }
        alerts += 1;
        let user = row["username"].as_str().unwrap_or("?").to_string();
        let entry = per_user.entry(user).or_insert((0, 0.0));
        entry.0 += 1;
        entry.1 = entry.1.max(score);
        if let Some(top) = row["top_features"].as_str().and_then(|t| t.split(',').next()) {
            *features.entry(top.to_string()).or_default() += 1;
        }
        *kinds.entry(row["model_kind"].as_str().unwrap_or("?").to_string()).or_default() += 1;
    }
    println!("{alerts} alert(s) ({} > {}) among {total} scored events", args.field, args.threshold);
    let mut users: Vec<(String, (usize, f64))> = per_user.into_iter().collect();
    users.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(&b.0)));
    println!("\n{:<40} {:>7} {:>10}", "user", "alerts", "max score");
    for (u, (n, max)) in users.iter().take(args.top) {
        println!("{u:<40} {n:>7} {max:>10.2}");
    }
    if users.len() > args.top {
        println!("… and {} more user(s)", users.len() - args.top);
    }
    let mut features: Vec<(String, usize)> = features.into_iter().collect();
    features.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    println!("\n{:<40} {:>7}", "strongest feature of the alert", "alerts");
    for (f, n) in features.iter().take(args.top) {
        println!("{f:<40} {n:>7}");
    }
    let mut kinds: Vec<(String, usize)> = kinds.into_iter().collect();
    kinds.sort();
    println!("\nscored by: {}", kinds.iter().map(|(k, n)| format!("{k} model {n}")).collect::<Vec<_>>().join(", "));
    Ok(ExitCode::SUCCESS)
}
