//! `type: suppress` — marks the events that match a known-benign pattern an analyst recorded (a user and a
//! value, until a date), so that they are shown as suppressed rather than raised as alerts, or dropped.
//!
//! ```yaml
//! muted:
//!   type: suppress
//!   inputs: [correlate]
//!   store: out/azure-alerts.db     # the alert store `dfp serve` keeps its suppressions in (or `path:` a CSV)
//!   reload: 30s                    # how often a running pipeline reads them again
//! ```
//!
//! A suppression is "bob in PT until 2026-12-20": a user, a field (`country`, `city`, `app`, `browser`,
//! `device` or `ip`: the family's columns of those roles; any other name is a column name), a value, an
//! optional end (event time, inclusive) and a note. An event of that user whose field has that value
//! (both compared without regard to case) and whose event time is not after the end gets the text column
//! `suppressed` (`#3 country=PT until 2026-12-20: business trip (ann)`); every other event gets null. The
//! rows pass unchanged otherwise: `risk` and the z-scores stay, the alert store keeps the row but does not
//! count it as an alert, and the console lists it under "suppressed".
//!
//! Suppressions come from the alert store (`store:`, the `suppressions` table `dfp serve` writes; a file
//! that does not exist yet means none) or from a CSV file (`path:`, with the header
//! `username,field,value,until,note`, as `dfp serve` exports at `/api/suppressions.csv`; `until` is a date
//! or an RFC 3339 time, empty for none). They are read when the stage starts and every `reload` after it;
//! a file that cannot be read later keeps the suppressions read before (with a warning), so that a console
//! restart does not turn alerts back on mid-stream.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch, StringArray, StringBuilder};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit, TimestampMicrosecondType};
use dfp_core::{
    register_stage, Batch, ConfigContext, ConfigError, Emitter, Family, StageConfig, StageContext, StageError,
    StageInstance, StageKind, Transform,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// Configuration of `suppress`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SuppressConfig {
    /// The alert store (SQLite) whose `suppressions` table to read (what `dfp serve` writes).
    #[serde(default)]
    pub store: Option<String>,
    /// A CSV file of suppressions instead (`username,field,value,until,note`).
    #[serde(default)]
    pub path: Option<String>,
    /// How often the suppressions are read again while the pipeline runs (`30s`, `5m`).
    #[serde(default = "d_reload")]
    pub reload: String,
    /// The log family whose roles name the country, city, app, browser, device and IP columns (default: the
    /// pipeline's `family`).
    pub family: String,
}

fn d_reload() -> String {
    "30s".into()
}

impl SuppressConfig {
    fn reload_every(&self) -> Result<Duration, String> {
        crate::correlate::parse_duration(&self.reload).map(Duration::from_secs)
    }
}

impl StageConfig for SuppressConfig {
    const TYPE: &'static str = "suppress";
    const KIND: StageKind = StageKind::Transform;
    const DESCRIPTION: &'static str =
        "marks events that match an analyst's suppression (user + value until a date) as suppressed";

    fn validate(&self) -> Result<(), ConfigError> {
        match (&self.store, &self.path) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::field(
                    "path",
                    "give either `store` (the alert store) or `path` (a CSV), not both",
                ))
            }
            (None, None) => {
                return Err(ConfigError::field(
                    "store",
                    "name where the suppressions are: `store: out/alerts.db` (the alert store) or `path: file.csv`",
                ))
            }
            (Some(p), None) | (None, Some(p)) if p.trim().is_empty() => {
                let field = if self.store.is_some() { "store" } else { "path" };
                return Err(ConfigError::field(field, "must not be empty"));
            }
            _ => {}
        }
        match self.reload_every() {
            Ok(d) if d.is_zero() => Err(ConfigError::field("reload", "must be longer than 0")),
            Ok(_) => Ok(()),
            Err(m) => Err(ConfigError::field("reload", m)),
        }
    }

    fn check(&self, ctx: &ConfigContext<'_>) -> Result<(), ConfigError> {
        ctx.family(&self.family).map(|_| ())
    }

    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        let family = ctx.family(&self.family)?;
        let source = match (&self.store, &self.path) {
            (Some(store), _) => Source::Store(PathBuf::from(store)),
            (None, Some(path)) => Source::Csv(PathBuf::from(path)),
            (None, None) => return Err(StageError::Other("suppress: neither `store` nor `path`".into())),
        };
        let every = self.reload_every().map_err(StageError::Other)?;
        let mut stage = Suppress { source, every, family, rules: HashMap::new(), loaded: None };
        // A CSV that is missing or malformed at the start is an error; later, the last good list stays.
        stage.rules = stage.read()?;
        stage.loaded = Some(Instant::now());
        Ok(StageInstance::Transform(Box::new(stage)))
    }
}
register_stage!(SuppressConfig);

/// Where the suppressions are read from.
#[derive(Debug, Clone)]
enum Source {
    Store(PathBuf),
    Csv(PathBuf),
}

/// One suppression, as matched.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The user, lower case.
    pub username: String,
    /// The field as written (`country`, …).
    pub field: String,
    /// The value, lower case.
    pub value: String,
    /// The last event time it covers (µs), if any.
    pub until_us: Option<i64>,
    /// What the `suppressed` column says.
    pub text: String,
}

struct Suppress {
    source: Source,
    every: Duration,
    family: Arc<Family>,
    /// By user (lower case).
    rules: HashMap<String, Vec<Rule>>,
    loaded: Option<Instant>,
}

/// The text an event suppressed by a rule carries.
pub fn describe(id: Option<i64>, field: &str, value: &str, until_us: Option<i64>, note: &str, who: &str) -> String {
    let mut text = match id {
        Some(id) => format!("#{id} {field}={value}"),
        None => format!("{field}={value}"),
    };
    if let Some(t) = until_us.and_then(chrono::DateTime::from_timestamp_micros) {
        text.push_str(&format!(" until {}", t.format("%Y-%m-%d")));
    }
    if !note.is_empty() {
        text.push_str(&format!(": {note}"));
    }
    if !who.is_empty() {
        text.push_str(&format!(" ({who})"));
    }
    text
}

/// The active suppressions of an alert store (none when the file does not exist).
pub fn read_store(path: &Path) -> Result<Vec<Rule>, StageError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let fail = |e: rusqlite::Error| StageError::Other(format!("{}: reading suppressions: {e}", path.display()));
    let db = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(fail)?;
    db.busy_timeout(Duration::from_secs(5)).map_err(fail)?;
    let version: i64 = db.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(fail)?;
    if version < 2 {
        // A store written before suppressions existed has none.
        return Ok(Vec::new());
    }
    let mut stmt = db
        .prepare(
            "SELECT id, username, field, value, until_us, note, who FROM suppressions WHERE removed_us IS NULL
             ORDER BY id",
        )
        .map_err(fail)?;
    let rows = stmt
        .query_map([], |r| {
            let (id, user, field, value): (i64, String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            let (until, note, who): (Option<i64>, String, String) = (r.get(4)?, r.get(5)?, r.get(6)?);
            Ok(Rule {
                username: user.trim().to_lowercase(),
                text: describe(Some(id), &field, &value, until, &note, &who),
                field,
                value: value.trim().to_lowercase(),
                until_us: until,
            })
        })
        .map_err(fail)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(fail)
}

/// The suppressions of a CSV file (`username,field,value,until,note`), each error with its line.
pub fn read_csv(path: &Path) -> Result<Vec<Rule>, StageError> {
    let file = std::fs::File::open(path).map_err(|e| StageError::io(path, e))?;
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(std::io::BufReader::new(file));
    let at = |line: u64, m: String| StageError::Data(format!("{}:{line}: {m}", path.display()));
    let headers = reader.headers().map_err(|e| at(1, e.to_string()))?.clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let (Some(u), Some(f), Some(v)) = (col("username"), col("field"), col("value")) else {
        return Err(at(1, "the header must name the columns username, field and value (and until, note)".into()));
    };
    let (until_col, note_col) = (col("until"), col("note"));
    let mut rules = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| at(e.position().map_or(0, |p| p.line()), e.to_string()))?;
        let line = record.position().map_or(0, |p| p.line());
        let get = |c: Option<usize>| c.and_then(|c| record.get(c)).unwrap_or("").trim();
        let (user, field, value) = (get(Some(u)), get(Some(f)), get(Some(v)));
        if user.is_empty() || field.is_empty() || value.is_empty() {
            return Err(at(line, "username, field and value must not be empty".into()));
        }
        let until = match get(until_col) {
            "" => None,
            t => Some(crate::time::parse_bound(t, true).map_err(|m| at(line, format!("until: {m}")))?),
        };
        let note = get(note_col);
        rules.push(Rule {
            username: user.to_lowercase(),
            field: field.to_string(),
            value: value.to_lowercase(),
            until_us: until,
            text: describe(None, field, value, until, note, ""),
        });
    }
    Ok(rules)
}

impl Suppress {
    fn read(&self) -> Result<HashMap<String, Vec<Rule>>, StageError> {
        let rules = match &self.source {
            Source::Store(p) => read_store(p)?,
            Source::Csv(p) => read_csv(p)?,
        };
        let mut by_user: HashMap<String, Vec<Rule>> = HashMap::new();
        for r in rules {
            by_user.entry(r.username.clone()).or_default().push(r);
        }
        Ok(by_user)
    }

    /// The column a rule's field names: the family's column of that role, else the name itself.
    fn column(&self, field: &str) -> String {
        let roles = &self.family.roles;
        let role = match field {
            "country" => roles.country.clone(),
            "city" => roles.city.clone(),
            "app" => roles.app.clone(),
            "browser" => roles.browser.clone(),
            "device" => roles.device.clone(),
            "ip" => roles.ip.clone(),
            _ => None,
        };
        role.unwrap_or_else(|| field.to_string())
    }

    fn mark(&self, data: &RecordBatch) -> Result<RecordBatch, StageError> {
        let n = data.num_rows();
        let mut out = StringBuilder::with_capacity(n, 0);
        if self.rules.is_empty() {
            out.append_nulls(n);
        } else {
            let users = crate::correlate::text_column(data, "username");
            let times = data
                .column_by_name("timestamp")
                .and_then(|c| cast(c, &DataType::Timestamp(TimeUnit::Microsecond, None)).ok());
            let times = times.as_ref().map(|c| c.as_primitive::<TimestampMicrosecondType>());
            // Each field's column, read once per batch.
            let mut columns: HashMap<&str, Option<StringArray>> = HashMap::new();
            for rule in self.rules.values().flatten() {
                columns
                    .entry(rule.field.as_str())
                    .or_insert_with(|| crate::correlate::text_column(data, &self.column(&rule.field)));
            }
            // The rules' users and values are lower case (`to_lowercase`): a row's are folded the same way,
            // into one buffer (the user) or compared character by character (the value).
            let mut user = String::new();
            for i in 0..n {
                let hit = users.as_ref().filter(|u| u.is_valid(i)).and_then(|u| {
                    user.clear();
                    user.extend(u.value(i).trim().chars().flat_map(char::to_lowercase));
                    let rules = self.rules.get(user.as_str())?;
                    let t = times.filter(|t| t.is_valid(i)).map(|t| t.value(i));
                    rules.iter().find(|r| {
                        let in_time = match (r.until_us, t) {
                            (Some(until), Some(t)) => t <= until,
                            (Some(_), None) => false,
                            (None, _) => true,
                        };
                        in_time
                            && columns
                                .get(r.field.as_str())
                                .and_then(|c| c.as_ref())
                                .filter(|c| c.is_valid(i))
                                .is_some_and(|c| {
                                    c.value(i).trim().chars().flat_map(char::to_lowercase).eq(r.value.chars())
                                })
                    })
                });
                match hit {
                    Some(rule) => out.append_value(&rule.text),
                    None => out.append_null(),
                }
            }
        }
        let mut fields: Vec<Field> = Vec::with_capacity(data.num_columns() + 1);
        let mut cols = Vec::with_capacity(data.num_columns() + 1);
        for (f, c) in data.schema().fields().iter().zip(data.columns()) {
            if f.name() != "suppressed" {
                fields.push(f.as_ref().clone());
                cols.push(Arc::clone(c));
            }
        }
        fields.push(Field::new("suppressed", DataType::Utf8, true));
        cols.push(Arc::new(out.finish()));
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
    }
}

impl Transform for Suppress {
    fn process(&mut self, batch: Batch, out: &mut Emitter) -> Result<(), StageError> {
        if self.loaded.is_none_or(|at| at.elapsed() >= self.every) {
            match self.read() {
                Ok(rules) => self.rules = rules,
                Err(e) => tracing::warn!(error = %e, "suppress: keeping the suppressions read before"),
            }
            self.loaded = Some(Instant::now());
        }
        let data = self.mark(&batch.data)?;
        out.emit(batch.with_data(data));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfp_core::json::records_to_batch;
    use serde_json::json;

    fn stage(extra: serde_json::Value) -> Result<Box<dyn Transform>, String> {
        let mut v = json!({ "family": "azure" });
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let config: SuppressConfig = serde_json::from_value(v).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| format!("{}: {}", e.field.unwrap_or_default(), e.message))?;
        let ctx = StageContext::standalone("muted", 0, 1);
        match StageConfig::build(&config, &ctx).map_err(|e| e.to_string())? {
            StageInstance::Transform(t) => Ok(t),
            _ => Err("not a transform".into()),
        }
    }

    fn run(t: &mut Box<dyn Transform>, rows: &[serde_json::Value]) -> Vec<Option<String>> {
        let mut batch = records_to_batch(rows).unwrap().batch;
        let i = batch.schema().index_of("timestamp").unwrap();
        let mut cols = batch.columns().to_vec();
        cols[i] = cast(&cols[i], &crate::normalize::timestamp_type()).unwrap();
        let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        fields[i] = fields[i].clone().with_data_type(crate::normalize::timestamp_type());
        batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
        let mut out = Emitter::new();
        t.process(Batch::new(batch, "test"), &mut out).unwrap();
        let (batches, _) = out.take();
        let data = &batches[0].data;
        let col = data.column_by_name("suppressed").unwrap().as_string::<i32>();
        (0..col.len()).map(|i| col.is_valid(i).then(|| col.value(i).to_string())).collect()
    }

    fn event(user: &str, country: &str, day: u32) -> serde_json::Value {
        json!({ "id": format!("{user}-{day}"), "username": user, "country": country, "risk": 4.0,
                "timestamp": format!("2026-12-{day:02}T10:00:00Z") })
    }

    #[test]
    fn a_user_and_value_until_a_date_are_marked_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.csv");
        std::fs::write(&path, "username,field,value,until,note\nBob@corp.example,country,pt,2026-12-20,trip\n")
            .unwrap();
        let mut t = stage(json!({ "path": path.to_str().unwrap() })).unwrap();
        let marks = run(
            &mut t,
            &[
                event("bob@corp.example", "PT", 20),
                event("bob@corp.example", "PT", 21),
                event("bob@corp.example", "ES", 10),
                event("ann@corp.example", "PT", 10),
            ],
        );
        assert_eq!(marks[0].as_deref(), Some("country=pt until 2026-12-20: trip"), "case-insensitive, end inclusive");
        assert_eq!(&marks[1..], &[None, None, None], "after the end, another value, another user");
    }

    #[test]
    fn the_store_is_read_again_while_running_and_a_missing_store_means_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.db");
        let mut t = stage(json!({ "store": path.to_str().unwrap(), "reload": "1s" })).unwrap();
        assert_eq!(run(&mut t, &[event("bob", "PT", 1)]), [None], "no store yet: nothing is suppressed");
        let db = crate::sinks::alert_store::open_store(&path).unwrap();
        db.execute(
            "INSERT INTO suppressions (username, field, value, until_us, note, who, created_us)
             VALUES ('bob', 'country', 'PT', NULL, 'lives there', 'ann', 0)",
            [],
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(run(&mut t, &[event("bob", "PT", 1)]), [Some("#1 country=PT: lives there (ann)".to_string())]);
        db.execute("UPDATE suppressions SET removed_us = 1", []).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(run(&mut t, &[event("bob", "PT", 1)]), [None], "a removed suppression stops applying");
    }

    #[test]
    fn bad_configuration_and_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(stage(json!({})).err().unwrap().starts_with("store:"));
        assert!(stage(json!({ "store": "a.db", "path": "b.csv" })).err().unwrap().starts_with("path:"));
        assert!(stage(json!({ "store": "a.db", "reload": "soon" })).err().unwrap().starts_with("reload:"));
        let path = dir.path().join("s.csv");
        std::fs::write(&path, "username,field,value,until\nbob,country,PT,next week\n").unwrap();
        let err = stage(json!({ "path": path.to_str().unwrap() })).err().unwrap();
        assert!(err.contains("s.csv:2: until:") && err.contains("next week"), "{err}");
        std::fs::write(&path, "user,value\nbob,PT\n").unwrap();
        let err = stage(json!({ "path": path.to_str().unwrap() })).err().unwrap();
        assert!(err.contains("s.csv:1: the header must name"), "{err}");
    }
}
