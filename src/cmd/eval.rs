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
    /// Default: `risk` when the scored events have it, else `mean_abs_z`.
    #[arg(long)]
    field: Option<String>,
    /// Events scoring strictly above this are flagged.
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true)]
    threshold: f64,
    /// Instead of --threshold, flag from the highest threshold that catches at least this share of the
    /// labelled attacks (0–1): compares configurations at the same recall.
    #[arg(long, value_name = "R", conflicts_with = "threshold")]
    at_recall: Option<f64>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

pub(crate) fn eval(args: EvalArgs) -> Result<ExitCode> {
    use dfp_stages::eval::{evaluate, read_labels, read_scores, threshold_for_recall};
    let labels = read_labels(&args.labels)?;
    let field = args.field.unwrap_or_else(|| dfp_stages::scored::default_field(&args.scores).to_string());
    let scores = read_scores(&args.scores, &field)?;
    let threshold = match args.at_recall {
        None => args.threshold,
        Some(r) if !(0.0..=1.0).contains(&r) => anyhow::bail!("--at-recall must be between 0 and 1, not {r}"),
        Some(r) => threshold_for_recall(&labels, &scores, r)
            .ok_or_else(|| anyhow::anyhow!("no threshold reaches recall {r}: too few labelled attacks have a score"))?,
    };
    let report = evaluate(&labels, &scores, &field, threshold);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}
