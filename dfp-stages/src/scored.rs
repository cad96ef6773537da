//! Reading what an inference pipeline wrote: scored events (or alerts) as rows, for `dfp eval`,
//! `dfp summary` and `dfp report`.
//!
//! A location is a file, every non-hidden file of a directory (the part files of a cluster run), or a glob;
//! files are read in name order. `.csv` files are CSV with a header (cells are text, empty cells null;
//! [`number`] reads numbers from either form); other files are JSON lines, or one JSON array, of objects.
//! Every problem names the file and line.

use std::fs;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Why scored rows cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ScoredError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A line is not what was expected.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// The location as a whole is unusable (no files, a bad glob).
    #[error("{0}")]
    Input(String),
}

/// Where a row came from.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The file.
    pub path: &'a Path,
    /// 1-based line.
    pub line: u64,
}

impl Origin<'_> {
    /// A parse error at this row.
    pub fn error(&self, message: impl Into<String>) -> ScoredError {
        ScoredError::Parse { path: self.path.to_path_buf(), line: self.line, message: message.into() }
    }
}

/// The score field the tools use unless told: `risk` when the scored events have it (the `score` stage
/// writes it), else `mean_abs_z` (scores written before `risk`, or by Morpheus). Only the first row is read.
pub fn default_field(spec: &str) -> &'static str {
    const STOP: &str = "\u{0}first row seen";
    let mut has_risk = false;
    let _ = for_each_row(spec, |_, row| {
        has_risk = row.contains_key("risk");
        Err(ScoredError::Input(STOP.into()))
    });
    if has_risk {
        "risk"
    } else {
        "mean_abs_z"
    }
}

/// The files named by `spec`: a file, every non-hidden file of a directory, or a glob (sorted).
pub fn files(spec: &str) -> Result<Vec<PathBuf>, ScoredError> {
    let path = Path::new(spec);
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let io = |source| ScoredError::Io { path: path.to_path_buf(), source };
    let mut files = Vec::new();
    if path.is_dir() {
        for entry in fs::read_dir(path).map_err(io)? {
            let entry = entry.map_err(io)?;
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if !hidden && entry.path().is_file() {
                files.push(entry.path());
            }
        }
    } else if spec.contains(['*', '?', '[']) {
        let paths = glob::glob(spec).map_err(|e| ScoredError::Input(format!("bad glob {spec:?}: {e}")))?;
        for p in paths {
            let p = p.map_err(|e| ScoredError::Input(format!("{spec}: {e}")))?;
            if p.is_file() {
                files.push(p);
            }
        }
    } else {
        return Err(io(io::Error::from(io::ErrorKind::NotFound)));
    }
    files.sort();
    if files.is_empty() {
        return Err(ScoredError::Input(format!("no files in {spec}")));
    }
    Ok(files)
}

/// Calls `visit` with every row of every file of `spec`, in order; an error from `visit` stops the read.
/// Returns the files read.
pub fn for_each_row<F>(spec: &str, mut visit: F) -> Result<Vec<PathBuf>, ScoredError>
where
    F: FnMut(Origin<'_>, Map<String, Value>) -> Result<(), ScoredError>,
{
    let files = files(spec)?;
    for path in &files {
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
            read_csv(path, &mut visit)?;
        } else {
            read_json(path, &mut visit)?;
        }
    }
    Ok(files)
}

fn read_json<F>(path: &Path, visit: &mut F) -> Result<(), ScoredError>
where
    F: FnMut(Origin<'_>, Map<String, Value>) -> Result<(), ScoredError>,
{
    let io = |source| ScoredError::Io { path: path.to_path_buf(), source };
    let mut reader = BufReader::new(fs::File::open(path).map_err(io)?);
    // One JSON array (read whole), or JSON lines (streamed).
    let starts_with_array = reader.fill_buf().map_err(io)?.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let object = |origin: Origin<'_>, value: Value| match value {
        Value::Object(m) => Ok(m),
        other => Err(origin.error(format!("expected a JSON object, found {}", dfp_core::json::kind_of(&other)))),
    };
    if starts_with_array {
        let values: Vec<Value> = serde_json::from_reader(reader).map_err(|e| ScoredError::Parse {
            path: path.to_path_buf(),
            line: e.line() as u64,
            message: e.to_string(),
        })?;
        for value in values {
            let origin = Origin { path, line: 1 };
            visit(origin, object(origin, value)?)?;
        }
        return Ok(());
    }
    let mut line = String::new();
    let mut number = 0u64;
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(io)? == 0 {
            return Ok(());
        }
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let origin = Origin { path, line: number };
        let value: Value = serde_json::from_str(&line).map_err(|e| origin.error(format!("not JSON: {e}")))?;
        visit(origin, object(origin, value)?)?;
    }
}

fn read_csv<F>(path: &Path, visit: &mut F) -> Result<(), ScoredError>
where
    F: FnMut(Origin<'_>, Map<String, Value>) -> Result<(), ScoredError>,
{
    let file = fs::File::open(path).map_err(|source| ScoredError::Io { path: path.to_path_buf(), source })?;
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(BufReader::new(file));
    let at = |line: u64| Origin { path, line };
    let headers = reader.headers().map_err(|e| at(1).error(e.to_string()))?.clone();
    for record in reader.records() {
        let record = record.map_err(|e| at(e.position().map_or(0, |p| p.line())).error(e.to_string()))?;
        let origin = at(record.position().map_or(0, |p| p.line()));
        let row: Map<String, Value> =
            headers.iter().zip(record.iter()).map(|(h, cell)| (h.trim().to_string(), cell_value(cell))).collect();
        visit(origin, row)?;
    }
    Ok(())
}

/// A CSV cell: text, or null when empty (ids such as `00123` stay as written).
fn cell_value(cell: &str) -> Value {
    if cell.trim().is_empty() {
        Value::Null
    } else {
        Value::String(cell.to_string())
    }
}

/// A row's numeric `field`, or an error naming it.
pub fn number(origin: Origin<'_>, row: &Map<String, Value>, field: &str) -> Result<f64, ScoredError> {
    let value = row.get(field).ok_or_else(|| origin.error(format!("no field `{field}`")))?;
    let n = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    n.ok_or_else(|| origin.error(format!("field `{field}` is not a number: {value}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Rows = Vec<(u64, Map<String, Value>)>;

    #[test]
    fn the_default_field_is_risk_when_the_scores_have_it() {
        let dir = tempfile::tempdir().unwrap();
        let with = dir.path().join("with.jsonl");
        std::fs::write(&with, "{\"id\":\"a\",\"mean_abs_z\":3.0,\"risk\":2.5}\nnot json\n").unwrap();
        let without = dir.path().join("without.csv");
        std::fs::write(&without, "id,mean_abs_z\na,3.0\n").unwrap();
        assert_eq!(default_field(with.to_str().unwrap()), "risk", "only the first row is read");
        assert_eq!(default_field(without.to_str().unwrap()), "mean_abs_z");
        assert_eq!(default_field(dir.path().join("missing").to_str().unwrap()), "mean_abs_z");
    }

    fn rows(spec: &str) -> Result<Rows, ScoredError> {
        let mut out = Vec::new();
        for_each_row(spec, |o, r| {
            out.push((o.line, r));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn json_lines_arrays_csv_directories_and_globs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jsonl"), "{\"id\":\"1\",\"s\":0.5}\n\n{\"id\":2,\"s\":3}\n").unwrap();
        std::fs::write(dir.path().join("b.json"), "  [{\"id\":\"3\",\"s\":1}]").unwrap();
        std::fs::write(dir.path().join("c.csv"), "id,s,who\n4,2.5,bob\n5,,\n").unwrap();
        std::fs::write(dir.path().join(".hidden"), "garbage").unwrap();
        let all = rows(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(all[1].0, 3, "line numbers count blank lines");
        assert_eq!(number(Origin { path: Path::new("c.csv"), line: 2 }, &all[3].1, "s").unwrap(), 2.5);
        assert_eq!(all[3].1["who"], Value::from("bob"));
        assert_eq!(all[4].1["s"], Value::Null);
        let glob = format!("{}/*.jsonl", dir.path().display());
        assert_eq!(rows(&glob).unwrap().len(), 2);
    }

    #[test]
    fn problems_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl");
        std::fs::write(&p, "{\"a\":1}\nnot json\n").unwrap();
        let e = rows(p.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("x.jsonl:2: not JSON"), "{e}");
        std::fs::write(&p, "[1]\n").unwrap();
        assert!(rows(p.to_str().unwrap()).unwrap_err().to_string().contains("expected a JSON object"));
        assert!(rows(&format!("{}/none", dir.path().display())).is_err());
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(rows(empty.to_str().unwrap()).unwrap_err().to_string().contains("no files"));
    }
}
