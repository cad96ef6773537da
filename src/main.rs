//! The `dfp` command line: the verbs and their dispatch. Each verb lives in its own module under `cmd/`.

mod cmd;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Rust allocations (records, Arrow buffers, strings) go through mimalloc: on the ingest of many small
/// records glibc's malloc and free took about 15 % of the CPU. libtorch keeps its own allocator, and
/// plugins free what they allocate (dfp-plugins/sdk/src/abi.rs), so nothing crosses allocators.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// dfp: digital fingerprinting for sign-in logs. Runs declarative YAML pipelines of stages.
#[derive(Parser)]
#[command(name = "dfp", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log filter for diagnostics on stderr (error, warn, info, debug, trace, or a tracing filter such as
    /// `dfp_core=debug`). Also read from DFP_LOG.
    #[arg(long, global = true, env = "DFP_LOG", default_value = "warn,dfp_stages::transforms::train=info")]
    log: String,
    /// How log lines look: `text` (for people) or `json` (one JSON object per line — timestamp, level,
    /// target, message and the event's fields such as `stage` — for log shippers). Also read from
    /// DFP_LOG_FORMAT.
    #[arg(long, global = true, env = "DFP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The format of log lines on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline until its sources are exhausted (Ctrl-C stops it gracefully).
    Run(cmd::run::RunArgs),
    /// Retrain the models on the recent window (warm start) and promote each only when it is not worse than
    /// the version in service on held-out recent events; --dry-run shows what would change.
    Retrain(cmd::retrain::RetrainArgs),
    /// Check pipeline files without running them; prints every problem found with file:line.
    Validate(cmd::validate::ValidateArgs),
    /// List the stage types this dfp knows.
    Stages(cmd::stages::StagesArgs),
    /// Print the JSON Schema of the pipeline YAML format (for editors and CI checks).
    Schema(cmd::stages::SchemaArgs),
    /// List the log families this dfp knows (columns, roles, model features), or show one.
    Families(cmd::stages::FamiliesArgs),
    /// Work with dynamic stage plugins (.so libraries built with dfp-plugin-sdk).
    Plugin(cmd::stages::PluginArgs),
    /// Replay sign-in log files (a `dfp generate` folder, exports) into a Kafka topic, one record per
    /// message, in time order.
    Produce(cmd::produce::ProduceArgs),
    /// Measure the runtime: rows/s through generator → filter → blackhole.
    Bench(cmd::bench::BenchArgs),
    /// Write labelled synthetic sign-in logs (train/, infer/, labels.csv) with injected attacks.
    Generate(cmd::generate::GenerateArgs),
    /// Measure detection quality of scores against labels: ROC-AUC, average precision, precision/recall/F1.
    Eval(cmd::eval::EvalArgs),
    /// Inspect a model registry.
    Models(cmd::models::ModelsArgs),
    /// Summarise scored events: alerts per user and the features behind them.
    Summary(cmd::summary::SummaryArgs),
    /// Print the rows leaving a stage of a running pipeline (started with --metrics-addr or
    /// runtime.metrics), as JSON lines, without stopping it.
    Tap(cmd::admin::TapArgs),
    /// Show per-stage rates, lag and readiness of a running pipeline, refreshed.
    Top(cmd::admin::TopArgs),
    /// Write a self-contained HTML report of scored events for analysts (alerts over time, top users,
    /// per-alert feature z-scores, filters).
    Report(cmd::report::ReportArgs),
    /// The analyst console: a web application over an alert store (overview, heat map, alerts, incidents,
    /// one event in depth, triage marks, suppressions, labels for `dfp eval`).
    Serve(cmd::serve::ServeArgs),
    /// Elasticsearch / OpenSearch: install the index templates `elasticsearch-sink` writes into.
    Es(cmd::es::EsArgs),
}

fn main() -> ExitCode {
    // Like other Unix tools: `dfp models list | head` ends quietly when the reader goes away, instead of
    // panicking on a broken pipe.
    // SAFETY: setting a signal disposition at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_format);
    dfp_stages::link();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    use std::io::IsTerminal;
    match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
        // {"timestamp":…,"level":"WARN","target":"dfp_stages::…","message":…,"stage":…}: the event's fields
        // at the top level, as log shippers (Filebeat, Fluent Bit, Vector) index them.
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_target(true)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
}

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run(args) => cmd::run::run(args),
        Command::Retrain(args) => cmd::retrain::retrain(args),
        Command::Validate(args) => Ok(cmd::validate::validate(args)),
        Command::Stages(args) => cmd::stages::stages(args),
        Command::Schema(args) => cmd::stages::schema(args),
        Command::Families(args) => cmd::stages::families(args),
        Command::Plugin(args) => cmd::stages::plugin(args),
        Command::Produce(args) => cmd::produce::run(args),
        Command::Bench(args) => cmd::bench::bench(args),
        Command::Generate(args) => cmd::generate::generate(args),
        Command::Eval(args) => cmd::eval::eval(args),
        Command::Models(args) => cmd::models::models(args),
        Command::Summary(args) => cmd::summary::summary(args),
        Command::Report(args) => cmd::report::report(args),
        Command::Tap(args) => cmd::admin::tap(args),
        Command::Top(args) => cmd::admin::top(args),
        Command::Serve(args) => cmd::serve::serve(args),
        Command::Es(args) => cmd::es::es(args),
    }
}
