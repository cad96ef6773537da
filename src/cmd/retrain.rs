//! `dfp retrain`: scheduled retraining with a promotion check.
//!
//! Runs a training pipeline on the recent window (`--window-days` before `--end`) with warm start, holding
//! out the last `--holdout-days`: each retrained model (the challenger) is scored on the held-out events
//! next to the version in service (the champion) and published — which is what promotes it, moving the
//! registry's `LATEST` or the MLflow alias that scoring follows — only when it is not worse (the `train`
//! stage's `promotion:`; criteria in docs/deploy.md, "Retraining"). Running inference picks promoted models
//! up after its model cache's TTL, without a restart.
//!
//! The pipeline declares the variables this command sets: `models`, `start`, `end`, `warm_start`,
//! `holdout_from`, `dry_run` and `report` (pipelines/azure-training.yaml does).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use dfp_core::{Pipeline, RunOptions, StopHandle};
use dfp_stages::time::{format_micros, now_micros, parse_bound, DAY_MICROS};

use super::VarArgs;

/// The variables `dfp retrain` sets on the training pipeline.
const SET_VARS: &[&str] = &["models", "start", "end", "warm_start", "holdout_from", "dry_run", "report"];

#[derive(Args)]
pub(crate) struct RetrainArgs {
    /// The training pipeline YAML file (it must declare the variables models, start, end, warm_start,
    /// holdout_from, dry_run and report, as pipelines/azure-training.yaml does).
    pipeline: PathBuf,
    /// The model registry in service: a directory, an s3:// prefix or mlflow://HOST:PORT.
    #[arg(long, value_name = "LOCATION")]
    registry: String,
    #[command(flatten)]
    vars: VarArgs,
    /// The end of the data to use (RFC 3339 or a date, which counts to its end); default: now.
    #[arg(long, value_name = "TIME")]
    end: Option<String>,
    /// Days of logs before --end that train (and, the last --holdout-days of them, judge) the models.
    #[arg(long, value_name = "DAYS", default_value_t = 30.0)]
    window_days: f64,
    /// The most recent days of the window, held out of training: the challengers and the champions are
    /// scored on them.
    #[arg(long, value_name = "DAYS", default_value_t = 1.0)]
    holdout_days: f64,
    /// Decide and report, but publish nothing.
    #[arg(long)]
    dry_run: bool,
    /// Where the training report goes (one JSON line per model, with the decision); default: the
    /// pipeline's `report` variable.
    #[arg(long, value_name = "FILE")]
    report: Option<String>,
    /// Worker threads (overrides runtime.workers).
    #[arg(long, short = 'w', value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
    /// Serve /metrics (with dfp_model_promotions_total), /healthz and /readyz on HOST:PORT while it runs.
    #[arg(long, value_name = "HOST:PORT", env = "DFP_METRICS_ADDR")]
    metrics_addr: Option<String>,
    /// Keep the metrics endpoint up this many seconds after the run (for a last scrape of a CronJob).
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    metrics_linger: f64,
    /// A file holding the bearer token the admin endpoint requires.
    #[arg(long, value_name = "FILE", env = "DFP_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<String>,
}

/// The retraining window: `(start, holdout_from, end)` in microseconds.
fn window(end: i64, window_days: f64, holdout_days: f64) -> Result<(i64, i64, i64)> {
    if !(window_days.is_finite() && window_days > 0.0) {
        bail!("--window-days must be a positive number of days");
    }
    if !(holdout_days.is_finite() && holdout_days > 0.0 && holdout_days < window_days) {
        bail!("--holdout-days must be positive and shorter than --window-days ({window_days})");
    }
    let days = |d: f64| (d * DAY_MICROS as f64) as i64;
    Ok((end - days(window_days), end - days(holdout_days), end))
}

pub(crate) fn retrain(args: RetrainArgs) -> Result<ExitCode> {
    // The pipeline must take what this command sets (and the caller must not set it too). Read with its
    // own defaults: some overrides (labels) are valid only with what this command adds.
    let declared = match Pipeline::from_file(&args.pipeline, &[]) {
        Ok(p) => p.plan().vars.clone(),
        Err(e) => {
            eprintln!("{e}");
            eprintln!("error: {} is not a valid pipeline", args.pipeline.display());
            return Ok(ExitCode::from(2));
        }
    };
    let missing: Vec<&str> = SET_VARS.iter().copied().filter(|v| !declared.contains_key(*v)).collect();
    if !missing.is_empty() {
        bail!(
            "{} does not declare the variable(s) {} under vars: dfp retrain sets {} (see pipelines/azure-training.yaml)",
            args.pipeline.display(),
            missing.join(", "),
            SET_VARS.join(", ")
        );
    }
    for v in &args.vars.vars {
        let name = v.split('=').next().unwrap_or_default();
        if SET_VARS.contains(&name) {
            bail!("--var {name}=…: dfp retrain sets {name} itself (use --registry, --end, --window-days, --holdout-days, --dry-run, --report)");
        }
    }
    let end = match &args.end {
        Some(text) => parse_bound(text, true).map_err(|e| anyhow::anyhow!("--end: {e}"))?,
        None => now_micros(),
    };
    let (start, holdout, end) = window(end, args.window_days, args.holdout_days)?;
    let report = match &args.report {
        Some(r) => r.clone(),
        None => declared.get("report").and_then(|v| v.as_str()).map(str::to_string).unwrap_or_default(),
    };
    if report.is_empty() {
        bail!("--report: name the file for the training report");
    }
    let mut vars = args.vars.vars.clone();
    vars.extend([
        format!("models={}", args.registry),
        format!("start={}", format_micros(start)),
        format!("end={}", format_micros(end)),
        "warm_start=true".to_string(),
        format!("holdout_from={}", format_micros(holdout)),
        format!("dry_run={}", args.dry_run),
        format!("report={report}"),
    ]);
    let pipeline = Pipeline::from_file(&args.pipeline, &vars)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("{} with the retraining variables", args.pipeline.display()))?;
    eprintln!(
        "retraining {} on {} .. {} (held out from {}){}",
        args.registry,
        format_micros(start),
        format_micros(end),
        format_micros(holdout),
        if args.dry_run { "; dry run: nothing is published" } else { "" }
    );
    // A report from an earlier run must not be read as this one's.
    if !report.starts_with("s3://") {
        let _ = std::fs::remove_file(&report);
    }
    let stop = StopHandle::new();
    super::run::install_ctrl_c(stop.clone())?;
    let mut options = RunOptions::default();
    options.workers = args.workers.map(usize::from);
    options.stop = Some(stop);
    if let Some(addr) = &args.metrics_addr {
        dfp_core::observe::check_addr(addr).map_err(|e| anyhow::anyhow!("--metrics-addr: {e}"))?;
    }
    if !(args.metrics_linger.is_finite() && args.metrics_linger >= 0.0) {
        bail!("--metrics-linger must be zero or more seconds");
    }
    options.metrics = args.metrics_addr.clone();
    options.metrics_linger = Some(std::time::Duration::from_secs_f64(args.metrics_linger));
    options.admin_token_file = args.admin_token_file.clone();
    let run = pipeline.run(options).with_context(|| format!("pipeline {} failed", args.pipeline.display()))?;
    if run.stopped_early {
        eprintln!("stopped early: nothing more is published");
        return Ok(ExitCode::from(super::run::STOPPED_EARLY));
    }
    if report.starts_with("s3://") {
        eprintln!("done; the decisions are in {report}");
        return Ok(ExitCode::SUCCESS);
    }
    summarize(&report, args.dry_run)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints the decisions of the report: counts, then each model kept or replaced, with the reason.
fn summarize(report: &str, dry_run: bool) -> Result<()> {
    let text = std::fs::read_to_string(report).with_context(|| format!("reading the training report {report}"))?;
    let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let row: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{report}:{}: not a JSON line", i + 1))?;
        let Some(decision) = row["decision"].as_str() else { continue };
        *counts.entry(decision.to_string()).or_default() += 1;
        let model = row["model"].as_str().unwrap_or("?");
        let version = row["version"].as_u64().map(|v| format!("v{v}")).unwrap_or_else(|| "-".into());
        let reason = row["reason"].as_str().unwrap_or("");
        let reason = reason.strip_prefix(decision).and_then(|r| r.strip_prefix(": ")).unwrap_or(reason);
        lines.push(format!("{decision:<8} {model:<48} {version:>7}  {reason}"));
    }
    if counts.is_empty() {
        eprintln!("no model was retrained (see {report})");
        return Ok(());
    }
    println!("{:<8} {:<48} {:>7}  REASON", "DECISION", "MODEL", "VERSION");
    for line in &lines {
        println!("{line}");
    }
    let summary: Vec<String> = counts.iter().map(|(d, n)| format!("{n} {d}")).collect();
    eprintln!(
        "{}: {} (report: {report})",
        if dry_run { "dry run, nothing published" } else { "retrained" },
        summary.join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_ends_with_the_holdout() {
        let end = 100 * DAY_MICROS;
        assert_eq!(window(end, 30.0, 1.0).unwrap(), (70 * DAY_MICROS, 99 * DAY_MICROS, end));
        assert!(window(end, 2.0, 2.0).unwrap_err().to_string().contains("--holdout-days"));
        assert!(window(end, 0.0, 1.0).unwrap_err().to_string().contains("--window-days"));
    }
}
