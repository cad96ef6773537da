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
//! `alerts.part-0003.jsonl` for worker 3), on the host it runs on. A local file's directory is created if
//! needed. An existing file is replaced only when the input ends: rows go to a temporary file beside it,
//! renamed over it at the end, so a run that fails leaves the earlier file untouched (with `append: true`
//! rows are added to the file as they come). An `s3://` object is written to a local temporary file first and
//! uploaded when the input ends, so readers never see half a file. With `csv` and `parquet` the first batch fixes the columns (later batches are projected
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
use crate::store::{io_runtime, parse_s3, S3Options, S3Url};

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
        if let Some(url) = parse_s3(&self.path) {
            if url.bucket.is_empty() || url.key.is_empty() {
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
            target: None,
            ctx: None,
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
    /// Where the bytes go on this machine (the target, or a temporary file renamed over it or uploaded).
    local: PathBuf,
    temp: Option<tempfile::NamedTempFile>,
    /// A local file replaced when the input ends (the temporary file is renamed over it).
    target: Option<PathBuf>,
    /// Where the sink runs (to know, at the end, whether the run failed).
    ctx: Option<StageContext>,
}

impl FileSink {
    fn upload(&self) -> Result<(), StageError> {
        let Some(S3Url { bucket, key }) = parse_s3(&self.config.path) else { return Ok(()) };
        let store =
            self.config.s3.build(bucket).map_err(|e| StageError::Other(format!("{}: {e}", self.config.path)))?;
        let bytes = std::fs::read(&self.local).map_err(|e| StageError::io(&self.local, e))?;
        let runtime = io_runtime().map_err(|e| StageError::Other(format!("cannot start the I/O runtime: {e}")))?;
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
        self.ctx = Some(ctx.clone());
        if ctx.worker_index != 0 && !self.per_worker {
            return Ok(());
        }
        if self.config.path.starts_with("s3://") {
            let temp = tempfile::NamedTempFile::new().map_err(|e| StageError::io(std::env::temp_dir(), e))?;
            self.local = temp.path().to_path_buf();
            self.temp = Some(temp);
        } else {
            let target = PathBuf::from(&self.config.path);
            let dir = target.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
            std::fs::create_dir_all(dir).map_err(|e| StageError::io(dir, e))?;
            if self.config.append {
                self.local = target;
            } else {
                // A replaced file is written beside the target and renamed over it when the input ends: a run
                // that fails leaves the earlier file as it was, and readers never see half a file.
                let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let temp = tempfile::Builder::new()
                    .prefix(&format!(".{name}."))
                    .tempfile_in(dir)
                    .map_err(|e| StageError::io(dir, e))?;
                self.local = temp.path().to_path_buf();
                self.temp = Some(temp);
                self.target = Some(target);
            }
        }
        let file = if self.config.append {
            drop_partial_last_line(&self.local).map_err(|e| StageError::io(&self.local, e))?;
            std::fs::OpenOptions::new().create(true).append(true).open(&self.local)
        } else {
            self.temp.as_ref().map_or_else(|| File::create(&self.local), |t| t.reopen())
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
        if self.ctx.as_ref().is_some_and(StageContext::run_failed) {
            // A failed run publishes nothing: the temporary file goes, the earlier output stays.
            self.temp = None;
            self.target = None;
            return Ok(());
        }
        if let Some(target) = self.target.take() {
            let temp = self.temp.take().ok_or_else(|| StageError::Other("file-sink: no temporary file".into()))?;
            // Temporary files are private (0600): the output gets the replaced file's permissions, or the
            // usual 0644.
            let mode = std::fs::metadata(&target).map(|m| m.permissions()).unwrap_or_else(|_| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::Permissions::from_mode(0o644)
            });
            std::fs::set_permissions(temp.path(), mode).map_err(|e| StageError::io(temp.path(), e))?;
            temp.persist(&target).map_err(|e| StageError::io(&target, e.error))?;
            return Ok(());
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
