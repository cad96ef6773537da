//! Embedding dfp in a Rust service: build a pipeline from YAML, spawn it, push sign-in events in as
//! JSON, and receive the processed rows back — no files, no servers.
//!
//! Run it with `cargo run --example embed`.

use dfp_core::arrow::json::ArrayWriter;
use dfp_core::{Pipeline, RunOptions};
use serde_json::{json, Value};

/// The pipeline: events pushed from this program → keep failures → back to this program.
const PIPELINE: &str = r#"
version: 1
vars:
  result: FAILURE
runtime:
  workers: 2
stages:
  events:   { type: embedded-input }
  failures: { type: filter, inputs: [events], field: result, equals: "${result}" }
  out:      { type: embedded-output, inputs: [failures] }
"#;

/// What one run of the example produced.
pub struct EmbedOutcome {
    /// Rows that came back out of the pipeline.
    pub rows: Vec<Value>,
    /// Records refused at push time (index, reason).
    pub rejected: Vec<(usize, String)>,
    /// Rows the filter received.
    pub filtered_in: u64,
}

/// Runs the example pipeline over a few events.
pub fn run_example() -> anyhow::Result<EmbedOutcome> {
    dfp_stages::link();
    let pipeline = Pipeline::from_yaml_str(PIPELINE, "embed.yaml", &[])?;
    let running = pipeline.spawn(RunOptions::default())?;

    // In a real service these would arrive over HTTP or a queue.
    let events = vec![
        json!({"id": "1", "username": "alice@contoso.com", "result": "SUCCESS", "country": "US"}),
        json!({"id": "2", "username": "bob@contoso.com", "result": "FAILURE", "country": "DE"}),
        json!({"id": "3", "username": "alice@contoso.com", "result": "FAILURE", "country": "KP"}),
        json!("not an event"),
    ];
    let rejected = running.input().push_json(&events)?;

    let output = running.output().clone();
    let report = running.finish()?;
    let mut rows = Vec::new();
    for batch in output.try_iter() {
        let mut writer = ArrayWriter::new(Vec::new());
        writer.write(&batch.data)?;
        writer.finish()?;
        rows.extend(serde_json::from_slice::<Vec<Value>>(&writer.into_inner())?);
    }
    rows.sort_by_key(|r| r["id"].as_str().map(str::to_string));
    let filtered_in = report.stage("failures").map_or(0, |s| s.rows_in);
    Ok(EmbedOutcome { rows, rejected, filtered_in })
}

#[allow(dead_code)]
fn main() -> anyhow::Result<()> {
    let outcome = run_example()?;
    for (index, reason) in &outcome.rejected {
        println!("rejected event #{index}: {reason}");
    }
    println!("{} of {} events were failures:", outcome.rows.len(), outcome.filtered_in);
    for row in &outcome.rows {
        println!("  {row}");
    }
    Ok(())
}
