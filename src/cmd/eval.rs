//! `dfp eval`: detection quality of scores against labels.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub(crate) struct EvalArgs {
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

pub(crate) fn eval(args: EvalArgs) -> Result<ExitCode> {
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
