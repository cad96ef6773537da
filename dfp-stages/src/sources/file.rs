//! `type: file-source` — reads log files from local paths, directories and globs.
//!
//! ```yaml
//! logs:
//!   type: file-source
//!   path: ./data/azure/*.json      # a file, a directory (its files), or a glob
//!   format: auto                   # auto | json | jsonl | csv
//!   batch_size: 4096
//! ```
//!
//! Formats: `json` reads a JSON array file (Azure exports are one array per file) or JSON lines, told apart
//! by the first character; `jsonl` reads JSON lines; `csv` reads CSV with a header line (column types are
//! inferred per file: integer, float, boolean, else string; empty fields are null). `auto` picks `csv` for
//! `.csv` files and `json` otherwise.
//!
//! Files are listed in sorted order and split across workers by a stable hash of their path; each file is
//! read by one worker, and its rows are emitted in file order (batches of at most `batch_size` rows).
//! A record that cannot be read (bad JSON on one line, a CSV row with the wrong number of fields, a value
//! that is not an object) goes to the dead-letter output as `file:line` with the reason; the rest of the file
//! is still read. A file that is not JSON at all (a broken array) is one dead letter.

use std::path::{Path, PathBuf};

use dfp_core::json::records_to_batch;
use dfp_core::{
    register_stage, Batch, ConfigError, DeadLetter, Emitter, Source, SourceStatus, StageConfig, StageContext,
    StageError, StageInstance, StageKind,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Configuration of `file-source`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// A file, a directory (every non-hidden file in it) or a glob such as `logs/**/*.jsonl`.
    pub path: String,
    /// How to read the files.
    #[serde(default)]
    pub format: InputFormat,
    /// Most rows per batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// CSV field delimiter.
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
}

fn default_batch_size() -> usize {
    4096
}
fn default_delimiter() -> char {
    ','
}

/// Input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// `csv` for `.csv` files, `json` otherwise.
    #[default]
    Auto,
    /// A JSON array file, or JSON lines (told apart by the first character).
    Json,
    /// One JSON object per line.
    Jsonl,
    /// CSV with a header line.
    Csv,
}

impl StageConfig for FileSourceConfig {
    const TYPE: &'static str = "file-source";
    const KIND: StageKind = StageKind::Source;
    const DESCRIPTION: &'static str = "reads JSON, JSON-lines and CSV files from paths, directories and globs";

    fn validate(&self) -> Result<(), ConfigError> {
        if self.path.trim().is_empty() {
            return Err(ConfigError::field("path", "must not be empty"));
        }
        if self.batch_size == 0 {
            return Err(ConfigError::field("batch_size", "must be at least 1"));
        }
        if !self.delimiter.is_ascii() {
            return Err(ConfigError::field("delimiter", "must be one ASCII character"));
        }
        if let Err(e) = glob::Pattern::new(&self.path) {
            return Err(ConfigError::field("path", format!("not a valid glob: {e}")));
        }
        Ok(())
    }

    fn build(&self, _ctx: &StageContext) -> Result<StageInstance, StageError> {
        Ok(StageInstance::Source(Box::new(FileSource {
            config: self.clone(),
            files: Vec::new(),
            next: 0,
            current: None,
        })))
    }
}
register_stage!(FileSourceConfig);

/// Lists the files a path names, sorted.
pub fn list_files(path: &str) -> Result<Vec<PathBuf>, StageError> {
    let is_glob = path.contains(['*', '?', '[']);
    let mut files = Vec::new();
    if is_glob {
        let entries = glob::glob(path).map_err(|e| StageError::Other(format!("bad glob \"{path}\": {e}")))?;
        for entry in entries {
            let p = entry.map_err(|e| {
                let path = e.path().to_path_buf();
                StageError::io(path, e.into())
            })?;
            if p.is_file() {
                files.push(p);
            }
        }
        if files.is_empty() {
            tracing::warn!(path, "no files match");
        }
    } else {
        let p = Path::new(path);
        let meta = std::fs::metadata(p).map_err(|e| StageError::io(p, e))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(p).map_err(|e| StageError::io(p, e))? {
                let entry = entry.map_err(|e| StageError::io(p, e))?;
                let hidden = entry.file_name().to_string_lossy().starts_with('.');
                if !hidden && entry.path().is_file() {
                    files.push(entry.path());
                }
            }
        } else {
            files.push(p.to_path_buf());
        }
    }
    files.sort();
    Ok(files)
}

struct Loaded {
    path: String,
    records: Vec<Value>,
    lines: Vec<usize>,
    pos: usize,
}

struct FileSource {
    config: FileSourceConfig,
    files: Vec<PathBuf>,
    next: usize,
    current: Option<Loaded>,
}

impl Source for FileSource {
    fn open(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        let all = list_files(&self.config.path)?;
        let total = all.len();
        self.files = all
            .into_iter()
            .filter(|p| dfp_core::hash::worker_for(p.to_string_lossy().as_bytes(), ctx.workers) == ctx.worker_index)
            .collect();
        tracing::debug!(stage = %ctx.stage_id, worker = ctx.worker_index, files = self.files.len(), total, "files assigned");
        Ok(())
    }

    fn poll(&mut self, ctx: &StageContext, out: &mut Emitter) -> Result<SourceStatus, StageError> {
        if ctx.stop_requested() {
            return Ok(SourceStatus::Exhausted);
        }
        if self.current.as_ref().is_none_or(|c| c.pos >= c.records.len()) {
            self.current = None;
            let Some(path) = self.files.get(self.next).cloned() else {
                return Ok(SourceStatus::Exhausted);
            };
            self.next += 1;
            self.current = Some(load(&path, &self.config, out)?);
        }
        let Some(cur) = self.current.as_mut() else { return Ok(SourceStatus::Ready) };
        let end = (cur.pos + self.config.batch_size).min(cur.records.len());
        let chunk = &cur.records[cur.pos..end];
        let converted = records_to_batch(chunk)?;
        for (i, reason) in converted.rejected {
            let line = cur.lines[cur.pos + i];
            let record = chunk[i].to_string();
            out.dead_letter(DeadLetter::new(format!("line {line}: {reason}"), record, format!("{}:{line}", cur.path)));
        }
        let mut batch = Batch::new(converted.batch, ctx.stage_id.clone());
        batch.envelope.origin = cur.path.clone();
        out.emit(batch);
        cur.pos = end;
        Ok(SourceStatus::Ready)
    }
}

/// Reads a whole file into records with their line numbers; unreadable records become dead letters.
fn load(path: &Path, config: &FileSourceConfig, out: &mut Emitter) -> Result<Loaded, StageError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| StageError::io(path, e))?;
    let text = String::from_utf8_lossy(&bytes);
    let format = match config.format {
        InputFormat::Auto if name.to_ascii_lowercase().ends_with(".csv") => InputFormat::Csv,
        InputFormat::Auto => InputFormat::Json,
        f => f,
    };
    let mut loaded = Loaded { path: name.clone(), records: Vec::new(), lines: Vec::new(), pos: 0 };
    match format {
        InputFormat::Csv => read_csv(&text, config.delimiter as u8, &mut loaded, out),
        InputFormat::Json if text.trim_start().starts_with('[') => read_json_array(&text, &mut loaded, out),
        _ => read_json_lines(&text, &mut loaded, out),
    }
    tracing::debug!(file = %name, records = loaded.records.len(), "file read");
    Ok(loaded)
}

fn read_json_lines(text: &str, loaded: &mut Loaded, out: &mut Emitter) {
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(trimmed) {
            Ok(v) => {
                loaded.records.push(v);
                loaded.lines.push(n);
            }
            Err(e) => out.dead_letter(DeadLetter::new(
                format!("line {n}: invalid JSON: {e}"),
                line,
                format!("{}:{n}", loaded.path),
            )),
        }
    }
}

fn read_json_array(text: &str, loaded: &mut Loaded, out: &mut Emitter) {
    let items: Vec<&serde_json::value::RawValue> = match serde_json::from_str(text) {
        Ok(items) => items,
        Err(e) => {
            let mut record: String = text.chars().take(4096).collect();
            if record.len() < text.len() {
                record.push('…');
            }
            out.dead_letter(DeadLetter::new(
                format!("not a valid JSON array: {e}"),
                record,
                format!("{}:{}", loaded.path, e.line()),
            ));
            return;
        }
    };
    let base = text.as_ptr() as usize;
    let mut line = 1;
    let mut scanned = 0;
    for raw in items {
        let offset = raw.get().as_ptr() as usize - base;
        line += text.as_bytes()[scanned..offset].iter().filter(|b| **b == b'\n').count();
        scanned = offset;
        match serde_json::from_str::<Value>(raw.get()) {
            Ok(v) => {
                loaded.records.push(v);
                loaded.lines.push(line);
            }
            Err(e) => out.dead_letter(DeadLetter::new(
                format!("line {line}: {e}"),
                raw.get(),
                format!("{}:{line}", loaded.path),
            )),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum ColType {
    Int,
    Float,
    Bool,
    Text,
}

fn read_csv(text: &str, delimiter: u8, loaded: &mut Loaded, out: &mut Emitter) {
    let mut reader =
        csv::ReaderBuilder::new().delimiter(delimiter).has_headers(true).flexible(true).from_reader(text.as_bytes());
    let headers: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(str::to_string).collect(),
        Err(e) => {
            out.dead_letter(DeadLetter::new(
                format!("cannot read the CSV header: {e}"),
                "",
                format!("{}:1", loaded.path),
            ));
            return;
        }
    };
    let mut rows: Vec<(usize, csv::StringRecord)> = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record.position().map(|p| p.line() as usize).unwrap_or(0);
                if record.len() != headers.len() {
                    let text: Vec<&str> = record.iter().collect();
                    out.dead_letter(DeadLetter::new(
                        format!("line {line}: expected {} fields, found {}", headers.len(), record.len()),
                        text.join(&(delimiter as char).to_string()),
                        format!("{}:{line}", loaded.path),
                    ));
                    continue;
                }
                rows.push((line, record.clone()));
            }
            Err(e) => {
                let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
                out.dead_letter(DeadLetter::new(format!("line {line}: {e}"), "", format!("{}:{line}", loaded.path)));
            }
        }
    }
    // One type per column for the whole file, so every batch agrees.
    let types: Vec<ColType> =
        (0..headers.len()).map(|c| column_type(rows.iter().map(|(_, r)| r.get(c).unwrap_or("")))).collect();
    for (line, r) in rows {
        let mut obj = Map::with_capacity(headers.len());
        for (c, name) in headers.iter().enumerate() {
            let v = r.get(c).unwrap_or("");
            let value = if v.is_empty() {
                Value::Null
            } else {
                match types[c] {
                    ColType::Int => v.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::from(v)),
                    ColType::Float => v.parse::<f64>().map(Value::from).unwrap_or_else(|_| Value::from(v)),
                    ColType::Bool => Value::Bool(v == "true"),
                    ColType::Text => Value::from(v),
                }
            };
            obj.insert(name.clone(), value);
        }
        loaded.records.push(Value::Object(obj));
        loaded.lines.push(line);
    }
}

/// The narrowest type that holds every non-empty value of a column (all-empty columns are text).
fn column_type<'a>(values: impl Iterator<Item = &'a str>) -> ColType {
    let (mut any, mut int, mut float, mut boolean) = (false, true, true, true);
    for v in values.filter(|v| !v.is_empty()) {
        any = true;
        int &= v.parse::<i64>().is_ok();
        float &= v.parse::<f64>().is_ok();
        boolean &= v == "true" || v == "false";
        if !int && !float && !boolean {
            return ColType::Text;
        }
    }
    match (any, int, float, boolean) {
        (false, ..) => ColType::Text,
        (_, true, ..) => ColType::Int,
        (_, _, true, _) => ColType::Float,
        (_, _, _, true) => ColType::Bool,
        _ => ColType::Text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(path: &str, workers: usize) -> (Vec<(usize, Vec<Batch>)>, Vec<DeadLetter>) {
        let config: FileSourceConfig =
            serde_json::from_value(serde_json::json!({"path": path, "batch_size": 2})).unwrap();
        config.validate().unwrap();
        let mut per_worker = Vec::new();
        let mut dead = Vec::new();
        for w in 0..workers {
            let ctx = StageContext::standalone("logs", w, workers);
            let StageInstance::Source(mut src) = StageConfig::build(&config, &ctx).unwrap() else { panic!() };
            src.open(&ctx).unwrap();
            let mut em = Emitter::new();
            while src.poll(&ctx, &mut em).unwrap() != SourceStatus::Exhausted {}
            let (b, d) = em.take();
            per_worker.push((w, b));
            dead.extend(d);
        }
        (per_worker, dead)
    }

    #[test]
    fn json_arrays_keep_order_and_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("AZUREAD_2022-08-01T00_03_56.207Z.json");
        std::fs::write(&p, "[\n  {\"n\": 1},\n  {\"n\": 2},\n  7,\n  {\"n\": 3}\n]\n").unwrap();
        let (workers, dead) = read_all(p.to_str().unwrap(), 1);
        let batches = &workers[0].1;
        assert_eq!(batches.iter().map(Batch::num_rows).collect::<Vec<_>>(), vec![2, 1]);
        assert!(batches.iter().all(|b| b.envelope.origin == p.display().to_string()));
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].origin, format!("{}:4", p.display()));
        assert!(dead[0].reason.contains("line 4: expected a JSON object"), "{}", dead[0].reason);
    }

    #[test]
    fn a_broken_array_file_is_one_dead_letter_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        std::fs::write(&p, "[\n {\"n\": 1},\n {\"n\": \n").unwrap();
        let (workers, dead) = read_all(p.to_str().unwrap(), 1);
        assert!(workers[0].1.is_empty());
        assert_eq!(dead.len(), 1);
        assert!(dead[0].reason.starts_with("not a valid JSON array"), "{}", dead[0].reason);
    }

    #[test]
    fn files_of_a_directory_are_split_across_workers_without_overlap() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..10 {
            std::fs::write(dir.path().join(format!("f{i}.jsonl")), format!("{{\"f\": {i}}}\n")).unwrap();
        }
        std::fs::write(dir.path().join(".hidden"), "junk").unwrap();
        let (workers, dead) = read_all(dir.path().to_str().unwrap(), 3);
        assert!(dead.is_empty());
        let mut origins: Vec<String> =
            workers.iter().flat_map(|(_, b)| b.iter().map(|b| b.envelope.origin.clone())).collect();
        assert_eq!(origins.len(), 10);
        origins.sort();
        origins.dedup();
        assert_eq!(origins.len(), 10, "each file read by exactly one worker");
        assert!(workers.iter().filter(|(_, b)| !b.is_empty()).count() >= 2, "work is spread");
    }

    #[test]
    fn a_missing_path_is_an_error_naming_it() {
        let config: FileSourceConfig =
            serde_json::from_value(serde_json::json!({"path": "/nonexistent/dfp/x.json"})).unwrap();
        let ctx = StageContext::standalone("logs", 0, 1);
        let StageInstance::Source(mut src) = StageConfig::build(&config, &ctx).unwrap() else { panic!() };
        let e = src.open(&ctx).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/dfp/x.json"), "{e}");
    }

    #[test]
    fn csv_column_types_are_inferred_per_file() {
        assert!(column_type(["1", "2", ""].into_iter()) == ColType::Int);
        assert!(column_type(["1", "2.5"].into_iter()) == ColType::Float);
        assert!(column_type(["true", "false"].into_iter()) == ColType::Bool);
        assert!(column_type(["1", "x"].into_iter()) == ColType::Text);
        assert!(column_type(["", ""].into_iter()) == ColType::Text);
    }
}
