//! `type: stdout-sink` — prints rows on standard output as JSON lines or CSV (worker 0 prints all).
//!
//! ```yaml
//! show: { type: stdout-sink, inputs: [alerts], format: jsonl }
//! ```

use std::io::Write;

use dfp_core::{
    register_stage, Batch, Partitioning, Sink, StageConfig, StageContext, StageError, StageInstance, StageKind,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::encode::{Encoder, OutputFormat};

/// Configuration of `stdout-sink`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {
    /// `jsonl` (the default) or `csv`.
    #[serde(default)]
    pub format: OutputFormat,
}

impl StageConfig for StdoutSinkConfig {
    const TYPE: &'static str = "stdout-sink";
    const KIND: StageKind = StageKind::Sink;
    const DESCRIPTION: &'static str = "prints rows on standard output as JSON lines or CSV";
    fn build(&self, _ctx: &StageContext) -> Result<StageInstance, StageError> {
        let format = match self.format {
            OutputFormat::Auto => OutputFormat::Jsonl,
            f => f,
        };
        Ok(StageInstance::Sink(Box::new(StdoutSink { encoder: Encoder::new(format) })))
    }
}
register_stage!(StdoutSinkConfig);

struct StdoutSink {
    encoder: Encoder,
}

impl Sink for StdoutSink {
    fn input_partitioning(&self) -> Partitioning {
        Partitioning::Single
    }
    fn write(&mut self, batch: Batch) -> Result<(), StageError> {
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        self.encoder.write(&mut lock, &batch.data)
    }
    fn finish(&mut self) -> Result<(), StageError> {
        std::io::stdout().flush().map_err(|e| StageError::io("<stdout>", e))
    }
}
