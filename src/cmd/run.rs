//! `dfp run`: runs a pipeline until its sources are exhausted; Ctrl-C or SIGTERM stops it gracefully.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use clap::Args;
use dfp_core::{Pipeline, RunOptions, RunReport, StopHandle};

use super::{peak_rss_mib, VarArgs};

#[derive(Args)]
pub(crate) struct RunArgs {
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
    /// A file holding the bearer token the admin endpoint requires (overrides runtime.admin.token_file).
    #[arg(long, value_name = "FILE", env = "DFP_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<String>,
    /// Keep the metrics endpoint up for this many seconds after the run ends (so that a last scrape sees
    /// the final figures of a batch job).
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    metrics_linger: f64,
    /// Run as one of N processes of a cluster (overrides runtime.processes; see docs/operations.md).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..), env = "DFP_PROCESSES")]
    processes: Option<u16>,
    /// This process's index in the cluster, 0..N (overrides runtime.process).
    #[arg(long, value_name = "I", env = "DFP_PROCESS")]
    process: Option<u16>,
    /// The cluster's hostfile: host:port per process, in process order (overrides runtime.hostfile).
    #[arg(long, value_name = "FILE", env = "DFP_HOSTFILE")]
    hostfile: Option<String>,
    /// A file holding the cluster's shared secret, the same on every process (overrides
    /// runtime.cluster_secret_file).
    #[arg(long, value_name = "FILE", env = "DFP_CLUSTER_SECRET_FILE")]
    cluster_secret_file: Option<String>,
    /// Seconds to wait for every process of the cluster to connect (overrides runtime.connect_timeout_secs).
    #[arg(long, value_name = "SECONDS")]
    connect_timeout: Option<f64>,
}

pub(crate) fn run(args: RunArgs) -> Result<ExitCode> {
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
    options.admin_token_file = args.admin_token_file.clone();
    options.processes = args.processes.map(usize::from);
    options.process = args.process.map(usize::from);
    options.hostfile = args.hostfile.clone();
    options.cluster_secret_file = args.cluster_secret_file.clone();
    if let Some(t) = args.connect_timeout {
        if !(t.is_finite() && t > 0.0) {
            anyhow::bail!("--connect-timeout must be a positive number of seconds");
        }
        options.connect_timeout = Some(std::time::Duration::from_secs_f64(t));
    }
    if let Some(addr) = args.metrics_addr.as_ref().or(pipeline.plan().runtime.metrics.as_ref()) {
        if !args.quiet {
            let scheme = if pipeline.plan().runtime.admin.tls_cert.is_some() { "https" } else { "http" };
            eprintln!("metrics on {scheme}://{addr}/metrics (also /healthz /readyz; dfp tap --addr {addr} STAGE; dfp top --addr {addr})");
        }
    }
    let report = pipeline.run(options).with_context(|| format!("pipeline {} failed", args.pipeline.display()))?;
    if !args.quiet {
        print_report(&report);
    } else if report.stopped_early {
        eprintln!("stopped early: the input was not read to the end");
    }
    Ok(if report.stopped_early { ExitCode::from(STOPPED_EARLY) } else { ExitCode::SUCCESS })
}

pub(crate) fn install_ctrl_c(stop: StopHandle) -> Result<()> {
    static PRESSES: AtomicUsize = AtomicUsize::new(0);
    ctrlc::set_handler(move || {
        if PRESSES.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!("\nstopping: sources stop reading, in-flight data drains to the sinks (Ctrl-C again to abort)");
            stop.stop();
        } else {
            eprintln!("aborted");
            // Leave at once: no unwinding, no exit handlers, so that no worker thread reports a panic on the
            // way out.
            // SAFETY: `_exit` ends the process immediately; nothing runs after it.
            unsafe { libc::_exit(130) }
        }
    })
    .context("cannot install the Ctrl-C handler")
}

fn print_report(report: &RunReport) {
    let secs = report.elapsed.as_secs_f64();
    // Where the time went: each stage's own calls, summed over workers, and its share of all of them.
    let busy_total: u64 = report.stages.iter().map(|s| s.busy_us).sum();
    eprintln!(
        "{:<20} {:<18} {:>12} {:>12} {:>8} {:>8} {:>9} {:>6}",
        "stage", "type", "rows in", "rows out", "dead", "skipped", "busy s", "share"
    );
    for s in &report.stages {
        let share = if busy_total > 0 { s.busy_us as f64 * 100.0 / busy_total as f64 } else { 0.0 };
        eprintln!(
            "{:<20} {:<18} {:>12} {:>12} {:>8} {:>8} {:>9.2} {:>5.1}%",
            s.id,
            s.type_name,
            s.rows_in,
            s.rows_out,
            s.dead_letters,
            s.skipped,
            s.busy_us as f64 / 1e6,
            share
        );
    }
    let capacity = secs * report.workers as f64;
    if capacity > 0.0 {
        eprintln!(
            "stages busy {:.2}s of {capacity:.2} worker-seconds ({:.0}%); the rest: exchange between workers, \
             dataflow stages (correlate), waiting and idle",
            busy_total as f64 / 1e6,
            busy_total as f64 / 1e6 * 100.0 / capacity
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
        "{} in {secs:.2}s on {} worker(s){cluster}: {read} records read, {rate:.0} records/s{peak}",
        if report.stopped_early { "stopped early" } else { "finished" },
        report.workers
    );
    if let Some(path) = &report.dead_letter_file {
        eprintln!("{} record(s) rejected: see {path}", report.dead_letters);
    }
    for s in &report.stages {
        for (counter, n) in &s.counters {
            eprintln!("{}: {n} {}", s.id, counter.replace('_', " "));
        }
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if report.stopped_early {
        eprintln!(
            "stopped early: the run was asked to stop before its input was read to the end (what was read \
             reached the sinks); exit status {STOPPED_EARLY}"
        );
    }
}

/// The exit status of a run that was stopped (Ctrl-C, SIGTERM) before a bounded source (files) was read to
/// the end; streaming sources (Kafka, watched folders) end that way normally and exit 0.
pub(crate) const STOPPED_EARLY: u8 = 3;
