//! `dfp report`: a self-contained HTML page of scored events for analysts (the page itself is built by
//! `dfp_stages::report`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use dfp_stages::report::{write_report, ReportOptions};

use super::registry_with;

/// Arguments of `dfp report`.
#[derive(Args)]
pub(crate) struct ReportArgs {
    /// Scored events: a JSON-lines or CSV file as an inference pipeline writes it, a folder of part files,
    /// or a glob.
    #[arg(long)]
    scores: String,
    /// The HTML file to write.
    #[arg(long)]
    out: PathBuf,
    /// The score column; alerts are the rows where it is strictly above --threshold.
    /// Default: `risk` when the scored events have it, else `mean_abs_z`.
    #[arg(long)]
    field: Option<String>,
    /// Alert threshold on --field.
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true)]
    threshold: f64,
    /// Page title (default: `"dfp alerts: <scores file name>"`).
    #[arg(long)]
    title: Option<String>,
    /// Keep at most this many alerts in the page, the highest-scoring (the page says how many were left out).
    #[arg(long, default_value_t = 5000)]
    max_alerts: usize,
    /// The rows' log family, whose roles name the app, browser, OS and place columns (default: the family
    /// whose model prefix the rows' `model_name` carries).
    #[arg(long)]
    family: Option<String>,
    /// Incident rows as the `correlate` stage writes them (its `incidents` output: a file, a folder of part
    /// files, or a glob): the page lists each incident and shows its alerts on a click.
    #[arg(long)]
    incidents: Option<String>,
    /// A plugin library whose log families the rows may belong to (repeatable).
    #[arg(long = "plugin", value_name = "PATH.so")]
    plugins: Vec<String>,
}

/// Writes the report and prints a one-line summary on stdout.
pub(crate) fn report(args: ReportArgs) -> Result<ExitCode> {
    let registry = registry_with(&args.plugins)?;
    let field = args.field.unwrap_or_else(|| dfp_stages::scored::default_field(&args.scores).to_string());
    let options = ReportOptions {
        scores: args.scores,
        out: args.out,
        field,
        threshold: args.threshold,
        title: args.title,
        max_alerts: args.max_alerts,
        family: args.family,
        incidents: args.incidents,
    };
    let written = write_report(&options, registry.families())?;
    println!("{written}");
    Ok(ExitCode::SUCCESS)
}
