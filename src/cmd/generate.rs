//! `dfp generate`: labelled synthetic sign-in logs of a log family.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::registry_with;

/// Arguments of `dfp generate`.
#[derive(Args)]
pub(crate) struct GenerateArgs {
    /// The log family to write: azure, duo, or a family with a sample writer (from a plugin: --plugin).
    family: String,
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
    /// Share of light users (0–1): they sign in a tenth as often, so most never reach a model's min_history.
    #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
    light_users: f64,
    /// Share of new joiners (0–1): they start signing in during the second half of the training period.
    #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
    joiners: f64,
    /// A plugin library whose log family to write (repeatable): `dfp generate okta --plugin
    /// libdfp_plugin_okta.so`.
    #[arg(long = "plugin", value_name = "PATH.so")]
    plugins: Vec<String>,
}

/// Writes the data set and prints what was written.
pub(crate) fn generate(args: GenerateArgs) -> Result<ExitCode> {
    use dfp_stages::generate::{generate_with, parse_start, GenerateOptions};
    let registry = registry_with(&args.plugins)?;
    let mut options = GenerateOptions::new(args.family, args.out);
    options.users = args.users;
    options.days = args.days;
    options.train_days = args.train_days;
    options.seed = args.seed;
    options.start = parse_start(&args.start)?;
    options.force = args.force;
    options.light_users = args.light_users;
    options.joiners = args.joiners;
    let report = generate_with(&options, &registry)?;
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}
