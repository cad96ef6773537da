//! `type: file-sink` — writes rows to one file as JSON lines or CSV.
//!
//! ```yaml
//! out: { type: file-sink, inputs: [alerts], path: ./alerts.jsonl }
//! ```
//!
//! All rows are routed to worker 0, which writes the file (so a run with several workers still produces
//! one file). The parent directory is created if needed; an existing file is replaced. The file is
//! written through a buffer and flushed when the input ends. With `csv`, the first batch fixes the
//! columns (see [`crate::encode`]).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use dfp_core::{
    register_stage, Batch, ConfigError, Partitioning, Sink, StageConfig, StageContext, StageError, StageInstance,
    StageKind,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::encode::{Encoder, OutputFormat};

/// Configuration of `file-sink`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The output file.
    pub path: String,
    /// `auto` (by extension: `.csv` → CSV, else JSON lines), `jsonl` or `csv`.
    #[serde(default)]
    pub format: OutputFormat,
}

impl StageConfig for FileSinkConfig {
    const TYPE: &'static str = "file-sink";
    const KIND: StageKind = StageKind::Sink;
    const DESCRIPTION: &'static str = "writes rows to one JSON-lines or CSV file";

    fn validate(&self) -> Result<(), ConfigError> {
        if self.path.trim().is_empty() {
            return Err(ConfigError::field("path", "must not be empty"));
        }
        Ok(())
    }

    fn build(&self, _ctx: &StageContext) -> Result<StageInstance, StageError> {
        Ok(StageInstance::Sink(Box::new(FileSink {
            path: PathBuf::from(&self.path),
            encoder: Encoder::new(self.format.resolve(&self.path)),
            out: None,
        })))
    }
}
register_stage!(FileSinkConfig);

struct FileSink {
    path: PathBuf,
    encoder: Encoder,
    out: Option<BufWriter<File>>,
}

impl Sink for FileSink {
    fn input_partitioning(&self) -> Partitioning {
        Partitioning::Single
    }

    fn open(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        if ctx.worker_index != 0 {
            return Ok(());
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StageError::io(dir, e))?;
        }
        let file = File::create(&self.path).map_err(|e| StageError::io(&self.path, e))?;
        self.out = Some(BufWriter::with_capacity(1 << 20, file));
        Ok(())
    }

    fn write(&mut self, batch: Batch) -> Result<(), StageError> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| StageError::Other("file-sink received rows on a worker other than 0".into()))?;
        self.encoder.write(out, &batch.data)
    }

    fn finish(&mut self) -> Result<(), StageError> {
        if let Some(mut out) = self.out.take() {
            out.flush().map_err(|e| StageError::io(&self.path, e))?;
        }
        Ok(())
    }
}
