//! `type: file-sink` — writes rows to one file as JSON lines, CSV or Parquet, locally or to `s3://`.
//!
//! ```yaml
//! out:     { type: file-sink, inputs: [alerts], path: ./alerts.jsonl }
//! archive: { type: file-sink, inputs: [scored], path: "s3://dfp/scored/day.parquet", s3: { from_env: true } }
//! ```
//!
//! All rows are routed to worker 0, which writes the file (so a run with several workers still produces
//! one file). With `parts: true` — the default when the run spans several processes of a cluster — every
//! worker writes its own rows to its own part file instead, `NAME.part-WWWW.EXT` (`alerts.jsonl` →
//! `alerts.part-0003.jsonl` for worker 3), on the host it runs on. A local file's directory is created if needed and an existing file is replaced. An `s3://`
//! object is written to a local temporary file first and uploaded when the input ends, so readers never see
//! half a file. With `csv` and `parquet` the first batch fixes the columns (later batches are projected
//! onto them by name).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

use dfp_core::{
    register_stage, Batch, ConfigError, Partitioning, Sink, StageConfig, StageContext, StageError, StageInstance,
    StageKind,
};
use object_store::ObjectStoreExt;
use parquet::arrow::ArrowWriter;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::encode::{Encoder, OutputFormat};
use crate::store::S3Options;

/// Configuration of `file-sink`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The output file, or an `s3://bucket/key` URL.
    pub path: String,
    /// `auto` (by extension: `.csv` → CSV, `.parquet` → Parquet, else JSON lines), `jsonl`, `csv`, `parquet`.
    #[serde(default)]
    pub format: OutputFormat,
    /// S3 settings for an `s3://` path.
    #[serde(default)]
    pub s3: S3Options,
    /// Add to the file instead of replacing it (local JSON lines only): a streaming pipeline that restarts
    /// keeps what it wrote before.
    #[serde(default)]
    pub append: bool,
    /// One part file per worker (`NAME.part-WWWW.EXT`) instead of one file written by worker 0. Default:
    /// per worker when the run spans several processes, else one file.
    #[serde(default)]
    pub parts: Option<bool>,
}

/// `alerts.jsonl`, worker 3 → `alerts.part-0003.jsonl` (the extension kept last so formats still resolve).
pub fn part_path(path: &str, worker: usize) -> String {
    let (dir, name) = match path.rfind('/') {
        Some(i) => path.split_at(i + 1),
        None => ("", path),
    };
    match name.find('.').filter(|i| *i > 0) {
        Some(i) => format!("{dir}{}.part-{worker:04}{}", &name[..i], &name[i..]),
        None => format!("{dir}{name}.part-{worker:04}"),
    }
}

impl StageConfig for FileSinkConfig {
    const TYPE: &'static str = "file-sink";
    const KIND: StageKind = StageKind::Sink;
    const DESCRIPTION: &'static str = "writes rows to one JSON-lines, CSV or Parquet file (local or s3://)";

    fn validate(&self) -> Result<(), ConfigError> {
        if self.path.trim().is_empty() {
            return Err(ConfigError::field("path", "must not be empty"));
        }
        if let Some(rest) = self.path.strip_prefix("s3://") {
            if !rest.split_once('/').is_some_and(|(b, k)| !b.is_empty() && !k.is_empty()) {
                return Err(ConfigError::field("path", "an s3:// path needs a bucket and a key: s3://bucket/key"));
            }
        }
        if self.append && (self.path.starts_with("s3://") || self.format.resolve(&self.path) != OutputFormat::Jsonl) {
            return Err(ConfigError::field("append", "works only for a local JSON-lines file"));
        }
        Ok(())
    }

    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        let per_worker = self.parts.unwrap_or(ctx.processes > 1);
        let mut config = self.clone();
        if per_worker {
            config.path = part_path(&self.path, ctx.worker_index);
        }
        Ok(StageInstance::Sink(Box::new(FileSink {
            per_worker,
            config,
            encoder: Encoder::new(self.format.resolve(&self.path)),
            out: None,
            local: PathBuf::new(),
            temp: None,
        })))
    }
}
register_stage!(FileSinkConfig);

enum Writer {
    Text(BufWriter<File>),
    /// The writer is created with the first batch's schema; until then the file waits.
    Parquet(Option<Box<ArrowWriter<BufWriter<File>>>>, Option<File>),
}

struct FileSink {
    /// Every worker writes its own part file (`config.path` is already the part's path).
    per_worker: bool,
    config: FileSinkConfig,
    encoder: Encoder,
    out: Option<Writer>,
    /// Where the bytes go on this machine (the target, or the temporary file of an upload).
    local: PathBuf,
    temp: Option<tempfile::NamedTempFile>,
}

impl FileSink {
    fn upload(&self) -> Result<(), StageError> {
        let Some(rest) = self.config.path.strip_prefix("s3://") else { return Ok(()) };
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        let store =
            self.config.s3.build(bucket).map_err(|e| StageError::Other(format!("{}: {e}", self.config.path)))?;
        let bytes = std::fs::read(&self.local).map_err(|e| StageError::io(&self.local, e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StageError::Other(format!("cannot start the I/O runtime: {e}")))?;
        let store = Arc::new(store);
        runtime
            .block_on(store.put(&object_store::path::Path::from(key), bytes.into()))
            .map_err(|e| StageError::Other(format!("uploading {}: {e}", self.config.path)))?;
        Ok(())
    }
}

/// A process killed while writing can leave half a line at the end of the file. That line's batch never
/// counted as written (a Kafka source reads it again), so it is cut off before appending.
fn drop_partial_last_line(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::OpenOptions::new().read(true).write(true).open(path) else { return Ok(()) };
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    // Look back in steps for the last newline.
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        if end == len && buf[n - 1] == b'\n' {
            return Ok(());
        }
        if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
            let keep = start + i as u64 + 1;
            tracing::warn!(path = %path.display(), bytes = len - keep, "dropping an incomplete last line before appending");
            return f.set_len(keep);
        }
        end = start;
    }
    tracing::warn!(path = %path.display(), bytes = len, "dropping an incomplete line before appending");
    f.set_len(0)
}

impl Sink for FileSink {
    fn input_partitioning(&self) -> Partitioning {
        if self.per_worker {
            Partitioning::Any
        } else {
            Partitioning::Single
        }
    }

    fn open(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        if ctx.worker_index != 0 && !self.per_worker {
            return Ok(());
        }
        if self.config.path.starts_with("s3://") {
            let temp = tempfile::NamedTempFile::new().map_err(|e| StageError::io(std::env::temp_dir(), e))?;
            self.local = temp.path().to_path_buf();
            self.temp = Some(temp);
        } else {
            self.local = PathBuf::from(&self.config.path);
            if let Some(dir) = self.local.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| StageError::io(dir, e))?;
            }
        }
        let file = if self.config.append {
            drop_partial_last_line(&self.local).map_err(|e| StageError::io(&self.local, e))?;
            std::fs::OpenOptions::new().create(true).append(true).open(&self.local)
        } else {
            File::create(&self.local)
        }
        .map_err(|e| StageError::io(&self.local, e))?;
        self.out = Some(match self.encoder.format() {
            OutputFormat::Parquet => Writer::Parquet(None, Some(file)),
            _ => Writer::Text(BufWriter::with_capacity(1 << 20, file)),
        });
        Ok(())
    }

    fn write(&mut self, batch: Batch) -> Result<(), StageError> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| StageError::Other("file-sink received rows on a worker other than 0".into()))?;
        match out {
            // Handed to the OS per batch: once a batch counts as written (and a Kafka source commits its
            // offsets), a crash of dfp does not lose it.
            Writer::Text(w) => {
                self.encoder.write(w, &batch.data)?;
                w.flush().map_err(|e| StageError::io(&self.local, e))
            }
            Writer::Parquet(writer, file) => {
                let projected = self.encoder.project(&batch.data)?;
                if let Some(target) = file.take() {
                    let w = ArrowWriter::try_new(BufWriter::with_capacity(1 << 20, target), projected.schema(), None)
                        .map_err(|e| StageError::Other(format!("{}: {e}", self.config.path)))?;
                    *writer = Some(Box::new(w));
                }
                if let Some(w) = writer.as_mut() {
                    w.write(&projected).map_err(|e| StageError::Other(format!("{}: {e}", self.config.path)))?;
                }
                Ok(())
            }
        }
    }

    fn finish(&mut self) -> Result<(), StageError> {
        match self.out.take() {
            Some(Writer::Text(mut w)) => w.flush().map_err(|e| StageError::io(&self.local, e))?,
            Some(Writer::Parquet(writer, _)) => {
                if let Some(w) = writer {
                    w.close().map_err(|e| StageError::Other(format!("{}: {e}", self.config.path)))?;
                }
            }
            None => return Ok(()),
        }
        self.upload()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfp_core::json::records_to_batch;

    #[test]
    fn parquet_output_reads_back_with_the_first_batchs_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.parquet");
        let config: FileSinkConfig =
            serde_json::from_value(serde_json::json!({"path": path.to_str().unwrap()})).unwrap();
        let ctx = StageContext::standalone("out", 0, 1);
        let StageInstance::Sink(mut sink) = StageConfig::build(&config, &ctx).unwrap() else { panic!() };
        sink.open(&ctx).unwrap();
        let a = records_to_batch(&[serde_json::json!({"id": "1", "n": 1}), serde_json::json!({"id": "2", "n": 2})])
            .unwrap();
        let b = records_to_batch(&[serde_json::json!({"id": "3", "extra": true})]).unwrap();
        sink.write(Batch::new(a.batch, "t")).unwrap();
        sink.write(Batch::new(b.batch, "t")).unwrap();
        sink.finish().unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
        let batches: Vec<_> = reader.map(Result::unwrap).collect();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 3);
        let names: Vec<String> = batches[0].schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["id", "n"]);
    }

    #[test]
    fn appending_cuts_an_incomplete_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        std::fs::write(&p, "{\"id\":1}\n{\"id\":2}\n{\"id\":").unwrap();
        drop_partial_last_line(&p).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"id\":1}\n{\"id\":2}\n");
        drop_partial_last_line(&p).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"id\":1}\n{\"id\":2}\n", "complete files stay");
        std::fs::write(&p, "{\"id\":").unwrap();
        drop_partial_last_line(&p).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "");
        drop_partial_last_line(&dir.path().join("missing.jsonl")).unwrap();
    }
}

#[cfg(test)]
mod part_tests {
    use super::part_path;

    #[test]
    fn part_files_keep_the_extension_last() {
        assert_eq!(part_path("out/alerts.jsonl", 3), "out/alerts.part-0003.jsonl");
        assert_eq!(part_path("s3://b/day/scored.csv.gz", 12), "s3://b/day/scored.part-0012.csv.gz");
        assert_eq!(part_path("alerts", 0), "alerts.part-0000");
        assert_eq!(part_path("./x/.hidden", 1), "./x/.hidden.part-0001");
    }
}
