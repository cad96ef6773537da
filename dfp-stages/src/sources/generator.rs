//! `type: generator` — synthetic rows for benchmarks and smoke tests.
//!
//! ```yaml
//! rows: { type: generator, rows: 1000000, users: 100, batch_size: 4096 }
//! ```
//!
//! Row `n` (0-based) has `id` = `evt-n`, `username` = `user-(n % users)`, `value` = n, `app` (one of five
//! names) and `ok` (false for every tenth row). Worker `w` of `W` produces the rows with `n % W == w`, so
//! the set of rows does not depend on the number of workers.

use std::sync::Arc;

use arrow::array::{BooleanArray, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use dfp_core::{
    register_stage, Batch, ConfigError, Emitter, Source, SourceStatus, StageConfig, StageContext, StageError,
    StageInstance, StageKind,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// Configuration of `generator`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Total rows over all workers.
    pub rows: u64,
    /// Distinct user names.
    #[serde(default = "default_users")]
    pub users: u64,
    /// Rows per batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
}

fn default_users() -> u64 {
    100
}
fn default_batch_size() -> usize {
    4096
}

const APPS: [&str; 5] = ["Outlook", "Teams", "SharePoint", "Azure Portal", "VPN"];

impl StageConfig for GeneratorConfig {
    const TYPE: &'static str = "generator";
    const KIND: StageKind = StageKind::Source;
    const DESCRIPTION: &'static str = "synthetic rows (id, username, value, app, ok) for benchmarks and tests";

    fn validate(&self) -> Result<(), ConfigError> {
        if self.users == 0 {
            return Err(ConfigError::field("users", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(ConfigError::field("batch_size", "must be at least 1"));
        }
        Ok(())
    }

    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        Ok(StageInstance::Source(Box::new(Generator {
            config: self.clone(),
            next: ctx.worker_index as u64,
            step: ctx.workers.max(1) as u64,
            schema: schema(),
        })))
    }
}
register_stage!(GeneratorConfig);

/// The schema of generated rows.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("username", DataType::Utf8, false),
        Field::new("value", DataType::Int64, false),
        Field::new("app", DataType::Utf8, false),
        Field::new("ok", DataType::Boolean, false),
    ]))
}

struct Generator {
    config: GeneratorConfig,
    next: u64,
    step: u64,
    schema: SchemaRef,
}

impl Source for Generator {
    fn poll(&mut self, ctx: &StageContext, out: &mut Emitter) -> Result<SourceStatus, StageError> {
        if self.next >= self.config.rows || ctx.stop_requested() {
            return Ok(SourceStatus::Exhausted);
        }
        let ns: Vec<u64> = (0..self.config.batch_size)
            .map(|i| self.next + i as u64 * self.step)
            .take_while(|n| *n < self.config.rows)
            .collect();
        self.next += ns.len() as u64 * self.step;
        let users = self.config.users;
        let data = RecordBatch::try_new(
            Arc::clone(&self.schema),
            vec![
                Arc::new(StringArray::from_iter_values(ns.iter().map(|n| format!("evt-{n}")))),
                Arc::new(StringArray::from_iter_values(ns.iter().map(|n| format!("user-{}", n % users)))),
                Arc::new(Int64Array::from_iter_values(ns.iter().map(|n| *n as i64))),
                Arc::new(StringArray::from_iter_values(ns.iter().map(|n| APPS[(*n as usize * 7) % APPS.len()]))),
                Arc::new(BooleanArray::from(ns.iter().map(|n| n % 10 != 0).collect::<Vec<_>>())),
            ],
        )?;
        out.emit(Batch::new(data, ctx.stage_id.clone()));
        Ok(if self.next >= self.config.rows { SourceStatus::Exhausted } else { SourceStatus::Ready })
    }
}
