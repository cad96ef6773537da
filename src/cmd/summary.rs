//! `dfp summary`: alerts per user and the features behind them.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

/// Arguments of `dfp summary`.
#[derive(Args)]
pub(crate) struct SummaryArgs {
    /// Scored events: a JSON-lines or CSV file as an inference pipeline writes it, a folder of part files,
    /// or a glob.
    scores: String,
    /// The score column.
    /// Default: `risk` when the scored events have it, else `mean_abs_z`.
    #[arg(long)]
    field: Option<String>,
    /// Alerts are rows with the field strictly above this.
    #[arg(long, default_value_t = 2.0)]
    threshold: f64,
    /// How many users and features to list.
    #[arg(long, default_value_t = 10)]
    top: usize,
}

/// Prints the summary.
pub(crate) fn summary(args: SummaryArgs) -> Result<ExitCode> {
    let field = args.field.unwrap_or_else(|| dfp_stages::scored::default_field(&args.scores).to_string());
    let s = dfp_stages::summary::summarize(&args.scores, &field, args.threshold)?;
    print!("{}", s.display(args.top));
    Ok(ExitCode::SUCCESS)
}
