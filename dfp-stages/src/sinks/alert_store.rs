//! `type: alert-store` — keeps scored events, alerts and incidents in one local SQLite file, for analysts'
//! queries (`sqlite3 out/azure-alerts.db`) and the console.
//!
//! ```yaml
//! store:
//!   type: alert-store
//!   inputs: [correlate, correlate.incidents]   # scored events (all of them) and incidents
//!   path: out/azure-alerts.db
//!   threshold: 2.0        # an event whose `field` (risk) is above this is an alert
//!   keep_days: 30         # events and incidents older than this (event time) are deleted; 0 keeps all
//!   commit_secs: 1.0      # the longest a row waits to be committed (readers see it then)
//!   commit_rows: 50000    # …or commit once this many rows wait
//! ```
//!
//! **Events.** Every input row with an `id` column is an event. Its time, user, score (`field`, default
//! `risk`), `mean_abs_z`, model kind, incident and the family's role columns (app, country, city, browser,
//! device, IP) are stored as columns of `events`, indexed by time and by user and time; an **alert** (score
//! above `threshold`) also keeps the whole row as JSON in `detail` (every z-score, the top features, the
//! signals that raised it, the user's profile columns). Events are upserted by time and id (the unique
//! index is on the event time and the id's 63-bit hash): rows that a restarted stream reads again are
//! stored once, the last row of an event replacing the stored one; the same id at another time is another
//! event. A row without an id, or without a time, is stored as a new event. `event_hours` counts the stored events
//! per hour of event time, kept exact through inserts, replacements and retention, for the console. A
//! row that the `suppress` stage marked (`suppressed`: the suppression it met) is stored with that text
//! and is not an alert, though it keeps its whole row as an alert does.
//!
//! **Incidents.** Rows with `incident_id` and `status` but no `id` (the `correlate.incidents` output) upsert
//! `incidents` by `incident_id`: the last row of an incident wins, as it does for any upserting sink.
//!
//! **Nothing half-written, nothing lost.** Rows are written in transactions on a write-ahead log, each
//! holding whole epochs (a file, a Kafka poll) until it has `commit_rows` rows or has been open for
//! `commit_secs`; then it is committed, and the sink tells the runtime that everything below the last
//! frontier it had reached is durable. Sources commit their read positions no further (the sink gates
//! commits, as a checkpointing stage does), so a process killed while writing loses only what was not
//! committed, which a Kafka source reads again, and never leaves a damaged file. All rows go to worker 0
//! (SQLite has one writer), which hands them to a thread of the sink's own that owns the connection and
//! runs at a lower priority: SQLite's work runs beside the workers, in the time they leave. Readers (the
//! console, `sqlite3`) may read while a pipeline writes, and see each group once it is committed.
//!
//! **Retention.** When the newest stored event time enters a new day, events and incidents whose (last)
//! event time is more than `keep_days` before it are deleted, so the file stays the size of the window.
//!
//! **Triage.** `dfp serve` keeps analysts' marks on events and incidents (`marks`, the latest per target;
//! `mark_log`, every mark) and suppressions (`suppressions`) in the same file; the sink never touches them,
//! and retention does not delete them.
//!
//! **Schema.** Versioned with SQLite's `user_version`: a file of an older version is migrated when it is
//! opened, a file written by a newer dfp is refused (naming both versions). `docs/stages.md` lists the
//! tables and columns.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, TimeUnit, TimestampMicrosecondType, UInt64Type};
use dfp_core::{
    register_stage, Batch, ConfigContext, ConfigError, Partitioning, Sink, StageConfig, StageContext, StageError,
    StageInstance, StageKind,
};
use rusqlite::{params, Connection, OptionalExtension};
use schemars::JsonSchema;
use serde::Deserialize;

/// Configuration of `alert-store`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertStoreConfig {
    /// The SQLite file (created with its directory when missing).
    pub path: String,
    /// The log family whose roles name the app, country, city, browser, device and IP columns (default: the
    /// pipeline's `family`).
    pub family: String,
    /// The score stored and compared with `threshold`.
    #[serde(default = "d_field")]
    pub field: String,
    /// An event whose score is above this is an alert (its whole row is kept).
    #[serde(default = "d_threshold")]
    pub threshold: f64,
    /// Days of event time kept (0: everything).
    #[serde(default = "d_keep_days")]
    pub keep_days: u32,
    /// The longest a written row waits for its transaction to be committed, in seconds: readers (the
    /// console) see it then, and a Kafka source commits its offset after that. The console's writes
    /// (marks, suppressions) wait for the open transaction, at most 5 s.
    #[serde(default = "d_commit_secs")]
    pub commit_secs: f64,
    /// A transaction is committed once this many rows wait, however young it is.
    #[serde(default = "d_commit_rows")]
    pub commit_rows: usize,
}

fn d_field() -> String {
    "risk".into()
}
fn d_threshold() -> f64 {
    2.0
}
fn d_keep_days() -> u32 {
    30
}
fn d_commit_secs() -> f64 {
    1.0
}
fn d_commit_rows() -> usize {
    50_000
}

impl StageConfig for AlertStoreConfig {
    const TYPE: &'static str = "alert-store";
    const KIND: StageKind = StageKind::Sink;
    const DESCRIPTION: &'static str =
        "keeps scored events, alerts (whole rows) and incidents in one local SQLite file, upserted by id";

    fn validate(&self) -> Result<(), ConfigError> {
        if self.path.trim().is_empty() {
            return Err(ConfigError::field("path", "must not be empty"));
        }
        if self.path.starts_with("s3://") {
            return Err(ConfigError::field("path", "the alert store is a local file (SQLite), not an s3:// object"));
        }
        if !self.threshold.is_finite() {
            return Err(ConfigError::field("threshold", "must be a number"));
        }
        if self.field.trim().is_empty() {
            return Err(ConfigError::field("field", "must name the score column (risk, mean_abs_z)"));
        }
        if !(self.commit_secs > 0.0 && self.commit_secs <= 3600.0) {
            return Err(ConfigError::field("commit_secs", "must be more than 0 and at most 3600 (seconds)"));
        }
        if self.commit_rows == 0 {
            return Err(ConfigError::field("commit_rows", "must be at least 1"));
        }
        Ok(())
    }

    fn check(&self, ctx: &ConfigContext<'_>) -> Result<(), ConfigError> {
        ctx.family(&self.family).map(|_| ())
    }

    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        let roles = ctx.family(&self.family)?.roles.clone();
        let columns = RoleColumns {
            app: roles.app,
            country: roles.country,
            city: roles.city,
            browser: roles.browser,
            device: roles.device,
            ip: roles.ip,
        };
        Ok(StageInstance::Sink(Box::new(AlertStore { config: self.clone(), columns, writer: None, ctx: None })))
    }
}
register_stage!(AlertStoreConfig);

/// The schema, one migration per version: a file at version `v` runs `MIGRATIONS[v..]`.
const MIGRATIONS: &[&str] = &[
    // 1: events, alerts' rows, incidents.
    "CREATE TABLE events (
        key INTEGER NOT NULL,
        id TEXT,
        time_us INTEGER,
        username TEXT,
        score REAL,
        mean_abs_z REAL,
        alert INTEGER NOT NULL,
        app TEXT, country TEXT, city TEXT, browser TEXT, device TEXT, ip TEXT,
        model_kind TEXT,
        incident_id TEXT,
        detail TEXT
    );
    CREATE UNIQUE INDEX events_key ON events(key);
    CREATE INDEX events_time ON events(time_us);
    CREATE INDEX events_user_time ON events(username, time_us);
    CREATE INDEX alerts_time ON events(time_us) WHERE alert = 1;
    CREATE TABLE incidents (
        incident_id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        entity TEXT NOT NULL,
        username TEXT,
        source TEXT,
        users INTEGER,
        first_us INTEGER,
        last_us INTEGER,
        events INTEGER,
        event_ids TEXT,
        reasons TEXT,
        peak_risk REAL
    );
    CREATE INDEX incidents_last ON incidents(last_us);",
    // 2: triage (the console's marks, with their history) and suppressions; the suppression an event met.
    "ALTER TABLE events ADD COLUMN suppressed TEXT;
    CREATE INDEX suppressed_time ON events(time_us) WHERE suppressed IS NOT NULL;
    CREATE TABLE marks (
        target TEXT NOT NULL,
        target_id TEXT NOT NULL,
        label TEXT NOT NULL,
        note TEXT NOT NULL,
        who TEXT NOT NULL,
        at_us INTEGER NOT NULL,
        PRIMARY KEY (target, target_id)
    );
    CREATE TABLE mark_log (
        seq INTEGER PRIMARY KEY,
        target TEXT NOT NULL,
        target_id TEXT NOT NULL,
        label TEXT NOT NULL,
        note TEXT NOT NULL,
        who TEXT NOT NULL,
        at_us INTEGER NOT NULL
    );
    CREATE TABLE suppressions (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL,
        field TEXT NOT NULL,
        value TEXT NOT NULL,
        until_us INTEGER,
        note TEXT NOT NULL,
        who TEXT NOT NULL,
        created_us INTEGER NOT NULL,
        removed_us INTEGER
    );",
    // 3: covering indexes for the console: alerts with the columns its lists and counts read (one index
    // scan instead of a table lookup per alert), and each user's events with their scores (the heat map).
    "DROP INDEX alerts_time;
    CREATE INDEX alerts_cover ON events(time_us, score, username, country, browser, app, model_kind, incident_id, ip)
        WHERE alert = 1;
    DROP INDEX events_user_time;
    CREATE INDEX events_user_time ON events(username, time_us, score);",
    // 4: events per hour of event time, kept by the sink (the overview counts a long range from it instead of
    // walking the time index event by event). An hour is `time_us / 3,600,000,000` (SQLite's and Rust's
    // integer division: toward zero).
    "CREATE TABLE event_hours (hour INTEGER PRIMARY KEY, events INTEGER NOT NULL);
    INSERT INTO event_hours (hour, events)
        SELECT time_us / 3600000000, COUNT(*) FROM events WHERE time_us IS NOT NULL GROUP BY 1;",
    // 5: an event is unique by its time and id hash, in one index that also serves every range of time:
    // events arrive about in time order, so each insert lands near the last one, where the unique index on
    // the hash alone took them all over the file (a third of the sink's SQLite time per row). Kept rows
    // (alerts, suppressed events) are still found by their id alone, for ids that come from elsewhere.
    "DROP INDEX events_key;
    DROP INDEX events_time;
    CREATE UNIQUE INDEX events_time_key ON events(time_us, key);
    CREATE INDEX events_kept_key ON events(key) WHERE detail IS NOT NULL;",
];

/// Microseconds in one `event_hours` hour.
pub const HOUR_US: i64 = 3_600_000_000;

/// The schema version this dfp writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Opens (creating or migrating) an alert store: write-ahead log, and a wait of up to 5 s for a lock held
/// by another connection (a reader) rather than an error.
pub fn open_store(path: &Path) -> Result<Connection, StageError> {
    let fail = |e: rusqlite::Error| StageError::Other(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| StageError::io(dir, e))?;
    }
    let mut db = Connection::open(path).map_err(fail)?;
    db.busy_timeout(std::time::Duration::from_secs(5)).map_err(fail)?;
    // WAL with `synchronous = NORMAL`: a committed batch survives a killed process; only a power loss can
    // take back the last commits (never corrupting the file).
    db.pragma_update(None, "journal_mode", "WAL").map_err(fail)?;
    db.pragma_update(None, "synchronous", "NORMAL").map_err(fail)?;
    // Events arrive in id order of nobody: their id index takes inserts all over the file. A page cache
    // of 64 MiB (SQLite's default is 2) keeps those pages in memory instead of going to the OS for them.
    db.pragma_update(None, "cache_size", -65_536).map_err(fail)?;
    // Fold the log into the file every 64 MiB rather than every 4: a page changed by many batches is
    // copied once per checkpoint.
    db.pragma_update(None, "wal_autocheckpoint", 16_384).map_err(fail)?;
    let version: i64 = db.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(fail)?;
    if version > SCHEMA_VERSION {
        return Err(StageError::Other(format!(
            "{}: the alert store has schema version {version}, written by a newer dfp (this one knows up to \
             {SCHEMA_VERSION}); use that dfp or another file",
            path.display()
        )));
    }
    if version < SCHEMA_VERSION {
        let tx = db.transaction().map_err(fail)?;
        for sql in &MIGRATIONS[version as usize..] {
            tx.execute_batch(sql).map_err(fail)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(fail)?;
        tx.commit().map_err(fail)?;
    }
    Ok(db)
}

/// The key of an event id in `events` (unique with the event's time): the id's 63-bit hash (8 bytes in the
/// index instead of the id text; the bench's run with every event stored: 55.8 s → 51.5 s).
pub fn event_key(id: &str) -> i64 {
    (dfp_core::hash::stable_hash(id.as_bytes()) >> 1) as i64
}

/// The family's role columns stored with each event.
#[derive(Debug, Clone)]
struct RoleColumns {
    app: Option<String>,
    country: Option<String>,
    city: Option<String>,
    browser: Option<String>,
    device: Option<String>,
    ip: Option<String>,
}

/// The sink: on worker 0, hands batches to the [`StoreDb`] on its own thread.
struct AlertStore {
    config: AlertStoreConfig,
    columns: RoleColumns,
    /// On worker 0 only.
    writer: Option<Writer>,
    /// Set by `open`.
    ctx: Option<StageContext>,
}

/// The SQLite side of the sink, run on a thread of its own ([`Writer`]).
struct StoreDb {
    config: AlertStoreConfig,
    columns: RoleColumns,
    db: Option<Connection>,
    /// The newest event time stored (µs), and the day (in event time) retention last ran for.
    newest_us: Option<i64>,
    swept_day: Option<i64>,
    /// Rows without an id stored so far (their keys count down from -1, below the smallest stored key).
    anonymous: i64,
    /// Rows written in the open transaction (0: none open), and when it was opened.
    uncommitted: usize,
    opened_at: Option<Instant>,
    /// The highest rowid of `events` in the open transaction (rows inserted later have higher ones).
    max_rowid: i64,
}

impl StoreDb {
    /// Commits the open transaction, if any.
    fn commit(&mut self, db: &Connection) -> Result<(), StageError> {
        if self.uncommitted > 0 {
            db.execute_batch("COMMIT").map_err(|e| self.fail(e))?;
            self.uncommitted = 0;
            self.opened_at = None;
        }
        Ok(())
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(&self.config.path)
    }

    fn fail(&self, e: rusqlite::Error) -> StageError {
        StageError::Other(format!("{}: {e}", self.config.path))
    }

    /// Deletes what is older than `keep_days` before the newest event, once per day of event time.
    fn sweep(&mut self, tx: &Connection) -> Result<(), StageError> {
        const DAY_US: i64 = 86_400_000_000;
        let (Some(newest), true) = (self.newest_us, self.config.keep_days > 0) else { return Ok(()) };
        let day = newest.div_euclid(DAY_US);
        if self.swept_day == Some(day) {
            return Ok(());
        }
        let cutoff = newest - i64::from(self.config.keep_days) * DAY_US;
        let events = tx.execute("DELETE FROM events WHERE time_us < ?1", [cutoff]).map_err(|e| self.fail(e))?;
        if events > 0 {
            // The hours up to the cutoff's are counted again from what is left (at most that one hour's
            // events; an hour is `time_us / HOUR_US`, toward zero, hence the two bounds).
            let last = hour_of(cutoff);
            let below = if last >= 0 { (last + 1) * HOUR_US } else { last * HOUR_US + 1 };
            tx.execute("DELETE FROM event_hours WHERE hour <= ?1", [last]).map_err(|e| self.fail(e))?;
            tx.execute(
                "INSERT INTO event_hours (hour, events) SELECT time_us / 3600000000, COUNT(*) FROM events
                 WHERE time_us < ?1 GROUP BY 1",
                [below],
            )
            .map_err(|e| self.fail(e))?;
        }
        let incidents = tx.execute("DELETE FROM incidents WHERE last_us < ?1", [cutoff]).map_err(|e| self.fail(e))?;
        if events + incidents > 0 {
            tracing::info!(events, incidents, keep_days = self.config.keep_days, "alert store: deleted old rows");
        }
        self.swept_day = Some(day);
        Ok(())
    }
}

/// A column as text (any string or dictionary column, or anything Arrow casts to text), when named and
/// present.
fn text(data: &RecordBatch, name: Option<&str>) -> Option<arrow::array::StringArray> {
    name.and_then(|n| crate::correlate::text_column(data, n))
}

/// A column as `f64`s, when present; an error naming it when it is not numeric.
fn number(data: &RecordBatch, name: &str) -> Result<Option<arrow::array::Float64Array>, StageError> {
    let Some(col) = data.column_by_name(name) else { return Ok(None) };
    if !col.data_type().is_numeric() {
        return Err(StageError::Data(format!(
            "alert-store: the column \"{name}\" is {}, not a number",
            col.data_type()
        )));
    }
    Ok(Some(cast(col, &DataType::Float64)?.as_primitive::<Float64Type>().clone()))
}

/// A time column in microseconds since the epoch, when present and castable.
fn micros(data: &RecordBatch, name: &str) -> Option<arrow::array::TimestampMicrosecondArray> {
    let col = data.column_by_name(name)?;
    let c = cast(col, &DataType::Timestamp(TimeUnit::Microsecond, None)).ok()?;
    Some(c.as_primitive::<TimestampMicrosecondType>().clone())
}

fn at(col: &Option<arrow::array::StringArray>, i: usize) -> Option<&str> {
    col.as_ref().filter(|c| !c.is_null(i)).map(|c| c.value(i))
}

/// Rows per `INSERT` statement.
const ROWS_PER_INSERT: usize = 64;
const _: () = assert!(ROWS_PER_INSERT.is_power_of_two());

/// The columns `insert_sql` writes, in order.
const EVENT_COLUMNS: [&str; 17] = [
    "key",
    "id",
    "username",
    "app",
    "country",
    "city",
    "browser",
    "device",
    "ip",
    "model_kind",
    "incident_id",
    "suppressed",
    "time_us",
    "score",
    "mean_abs_z",
    "alert",
    "detail",
];

/// An insert of `rows` events (a power of two up to [`ROWS_PER_INSERT`]) that leaves a stored event as it is
/// (the sink then replaces those rows itself: see `StoreDb::replace_stored`). In a SQLite-only test here,
/// an upsert, and `INSERT OR REPLACE` with triggers keeping `event_hours`, each cost about 6 µs more per row.
fn insert_sql(rows: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        let one = format!("({})", ["?"; EVENT_COLUMNS.len()].join(", "));
        (0..=ROWS_PER_INSERT.ilog2())
            .map(|k| {
                format!(
                    "INSERT OR IGNORE INTO events ({}) VALUES {}",
                    EVENT_COLUMNS.join(", "),
                    vec![one.as_str(); 1 << k].join(", ")
                )
            })
            .collect()
    });
    &all[rows.ilog2() as usize]
}

/// Replaces a stored event's columns (parameters in [`EVENT_COLUMNS`] order, then the stored row's rowid).
fn update_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let set: Vec<String> = EVENT_COLUMNS.iter().enumerate().map(|(i, c)| format!("{c} = ?{}", i + 1)).collect();
        format!("UPDATE events SET {} WHERE rowid = ?{}", set.join(", "), EVENT_COLUMNS.len() + 1)
    })
}

/// The `event_hours` hour of an event time.
fn hour_of(time_us: i64) -> i64 {
    time_us / HOUR_US
}

/// Rebuilds `event_hours` from the stored events (for writers other than the sink: tests, benchmarks).
pub fn recount_event_hours(db: &Connection) -> rusqlite::Result<()> {
    db.execute_batch(
        "DELETE FROM event_hours;
         INSERT INTO event_hours (hour, events)
             SELECT time_us / 3600000000, COUNT(*) FROM events WHERE time_us IS NOT NULL GROUP BY 1;",
    )
}

/// One event's values, in `insert_sql`'s column order.
struct EventRow<'a> {
    key: i64,
    /// id, username, app, country, city, browser, device, ip, model_kind, incident_id, suppressed.
    text: [Option<&'a str>; 11],
    time: Option<i64>,
    score: Option<f64>,
    mean: Option<f64>,
    alert: bool,
    detail: Option<String>,
}

impl EventRow<'_> {
    fn values(&self) -> impl Iterator<Item = &dyn rusqlite::ToSql> {
        std::iter::once(&self.key as &dyn rusqlite::ToSql)
            .chain(self.text.iter().map(|t| t as &dyn rusqlite::ToSql))
            .chain([&self.time as &dyn rusqlite::ToSql, &self.score, &self.mean, &self.alert, &self.detail])
    }
}

impl StoreDb {
    fn write_events(&mut self, tx: &Connection, data: &RecordBatch) -> Result<(), StageError> {
        let n = data.num_rows();
        let score = number(data, &self.config.field)?.ok_or_else(|| {
            StageError::Data(format!(
                "alert-store: the rows have no \"{}\" column to store as the score (field: …; columns: {})",
                self.config.field,
                data.schema().fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
            ))
        })?;
        let mean = number(data, "mean_abs_z")?;
        let times = micros(data, "timestamp");
        let c = &self.columns;
        let [ids, users, kinds, incidents, suppressed, app, country, city, browser, device, ip] = [
            Some("id"),
            Some("username"),
            Some("model_kind"),
            Some("incident_id"),
            Some("suppressed"),
            c.app.as_deref(),
            c.country.as_deref(),
            c.city.as_deref(),
            c.browser.as_deref(),
            c.device.as_deref(),
            c.ip.as_deref(),
        ]
        .map(|name| text(data, name));
        // Alerts keep their whole row: encoded as JSON lines in one go, then one line per alert.
        // A suppressed event (the `suppress` stage matched it) is not an alert, but keeps its row like one.
        let above: Vec<bool> = (0..n).map(|i| !score.is_null(i) && score.value(i) > self.config.threshold).collect();
        let alert: Vec<bool> = above.iter().enumerate().map(|(i, a)| *a && at(&suppressed, i).is_none()).collect();
        let mut details: Vec<String> = Vec::new();
        if above.iter().any(|a| *a) {
            let mask = arrow::array::BooleanArray::from(above.clone());
            let rows = arrow::compute::filter_record_batch(data, &mask)?;
            let mut buf = Vec::with_capacity(rows.num_rows() * 2048);
            let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
            w.write(&rows)?;
            w.finish()?;
            details = String::from_utf8_lossy(&buf).lines().map(str::to_string).collect();
        }
        let mut details = details.into_iter();
        let value =
            |a: &arrow::array::Float64Array, i: usize| (!a.is_null(i)).then(|| a.value(i)).filter(|v| v.is_finite());
        let mut rows: Vec<EventRow<'_>> = Vec::with_capacity(n);
        for (i, (&is_alert, &kept)) in alert.iter().zip(&above).enumerate() {
            let time = times.as_ref().filter(|t| !t.is_null(i)).map(|t| t.value(i));
            if let Some(t) = time {
                self.newest_us = Some(self.newest_us.map_or(t, |m| m.max(t)));
            }
            // A row without an id gets a key of its own.
            let key = match at(&ids, i) {
                Some(id) => event_key(id),
                None => {
                    self.anonymous += 1;
                    -self.anonymous
                }
            };
            rows.push(EventRow {
                key,
                time,
                score: value(&score, i),
                mean: mean.as_ref().and_then(|m| value(m, i)),
                alert: is_alert,
                text: [&ids, &users, &app, &country, &city, &browser, &device, &ip, &kinds, &incidents, &suppressed]
                    .map(|c| at(c, i)),
                detail: if kept { details.next() } else { None },
            });
        }
        // Many rows per statement: fewer statement runs per batch. The statements are parsed once per
        // connection (SQLite's statement cache): 64 rows each, the rest of a batch in pieces of 32, 16, …, 1.
        let mut hours: BTreeMap<i64, i64> = BTreeMap::new();
        let mut rest = rows.as_slice();
        while !rest.is_empty() {
            let size = if rest.len() >= ROWS_PER_INSERT { ROWS_PER_INSERT } else { 1 << rest.len().ilog2() };
            let (chunk, after) = rest.split_at(size);
            rest = after;
            let values: Vec<&dyn rusqlite::ToSql> = chunk.iter().flat_map(EventRow::values).collect();
            let before = self.max_rowid;
            let inserted = tx
                .prepare_cached(insert_sql(size))
                .and_then(|mut stmt| stmt.execute(rusqlite::params_from_iter(values)))
                .map_err(|e| self.storing(chunk, e))?;
            if inserted > 0 {
                self.max_rowid = self.max_rowid.max(tx.last_insert_rowid());
            }
            if inserted == chunk.len() {
                for t in chunk.iter().filter_map(|r| r.time) {
                    *hours.entry(hour_of(t)).or_default() += 1;
                }
            } else {
                self.replace_stored(tx, chunk, before, &mut hours)?;
            }
        }
        let mut count = tx
            .prepare_cached(
                "INSERT INTO event_hours (hour, events) VALUES (?1, ?2)
                 ON CONFLICT(hour) DO UPDATE SET events = events + excluded.events",
            )
            .map_err(|e| self.fail(e))?;
        for (hour, n) in hours.into_iter().filter(|(_, n)| *n != 0) {
            count.execute([hour, n]).map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    /// A chunk some of whose events were stored before (a stream read again, or an event twice in the
    /// input): the insert left those rows as they were; each now replaces the stored row (the last row of an
    /// event wins). A replaced row keeps its hour, so `hours` counts only the rows this chunk added.
    /// `before`: the highest rowid before the chunk's insert.
    fn replace_stored(
        &self,
        tx: &Connection,
        chunk: &[EventRow<'_>],
        before: i64,
        hours: &mut BTreeMap<i64, i64>,
    ) -> Result<(), StageError> {
        let mut find =
            tx.prepare_cached("SELECT rowid FROM events WHERE time_us = ?1 AND key = ?2").map_err(|e| self.fail(e))?;
        let mut update = tx.prepare_cached(update_sql()).map_err(|e| self.fail(e))?;
        // The events of this chunk met so far.
        let mut met: HashSet<(i64, i64)> = HashSet::new();
        for row in chunk {
            // Without a time an event is never the same as a stored one: it was inserted.
            let Some(t) = row.time else { continue };
            let rowid: i64 = find.query_row([t, row.key], |r| r.get(0)).map_err(|e| self.fail(e))?;
            // The first row of an event in the chunk was inserted by this very row unless the event was
            // stored before; a later one replaces it.
            if met.insert((t, row.key)) && rowid > before {
                *hours.entry(hour_of(t)).or_default() += 1;
            } else {
                let values = row.values().chain(std::iter::once(&rowid as &dyn rusqlite::ToSql));
                update.execute(rusqlite::params_from_iter(values)).map_err(|e| self.storing(chunk, e))?;
            }
        }
        Ok(())
    }

    fn storing(&self, chunk: &[EventRow<'_>], e: rusqlite::Error) -> StageError {
        StageError::Other(format!(
            "{}: storing events {:?}…: {e}",
            self.config.path,
            chunk.first().and_then(|r| r.text[0])
        ))
    }

    fn write_incidents(&self, tx: &Connection, data: &RecordBatch) -> Result<(), StageError> {
        let col = |name: &str| text(data, Some(name));
        let [ids, status, entity, users, source, event_ids, reasons] =
            ["incident_id", "status", "entity", "username", "source", "event_ids", "reasons"].map(col);
        let count = |name: &str| data.column_by_name(name).and_then(|c| cast(c, &DataType::UInt64).ok());
        let (user_count, events) = (count("users"), count("events"));
        let (first, last) = (micros(data, "first_seen"), micros(data, "last_seen"));
        let peak = number(data, "peak_risk")?;
        let mut upsert = tx
            .prepare(
                "INSERT INTO incidents (incident_id, status, entity, username, source, users, first_us, last_us,
                 events, event_ids, reasons, peak_risk)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT(incident_id) DO UPDATE SET status = excluded.status, entity = excluded.entity,
                 username = excluded.username, source = excluded.source, users = excluded.users,
                 first_us = excluded.first_us, last_us = excluded.last_us, events = excluded.events,
                 event_ids = excluded.event_ids, reasons = excluded.reasons, peak_risk = excluded.peak_risk",
            )
            .map_err(|e| self.fail(e))?;
        let int = |c: &Option<arrow::array::ArrayRef>, i: usize| {
            c.as_ref()
                .map(|c| c.as_primitive::<UInt64Type>())
                .filter(|c| !c.is_null(i))
                .map(|c| i64::try_from(c.value(i)).unwrap_or(i64::MAX))
        };
        let time = |c: &Option<arrow::array::TimestampMicrosecondArray>, i: usize| {
            c.as_ref().filter(|c| !c.is_null(i)).map(|c| c.value(i))
        };
        for i in 0..data.num_rows() {
            let Some(id) = at(&ids, i) else {
                return Err(StageError::Data(format!("alert-store: incident row {i} has no incident_id")));
            };
            upsert
                .execute(params![
                    id,
                    at(&status, i).unwrap_or("open"),
                    at(&entity, i).unwrap_or("user"),
                    at(&users, i),
                    at(&source, i),
                    int(&user_count, i),
                    time(&first, i),
                    time(&last, i),
                    int(&events, i),
                    at(&event_ids, i),
                    at(&reasons, i),
                    peak.as_ref().filter(|p| !p.is_null(i)).map(|p| p.value(i)),
                ])
                .map_err(|e| StageError::Other(format!("{}: storing incident {id}: {e}", self.config.path)))?;
        }
        Ok(())
    }
}

impl StoreDb {
    /// Opens (creating or migrating) the file and reads where the stored events stand.
    fn open(config: AlertStoreConfig, columns: RoleColumns) -> Result<StoreDb, StageError> {
        let mut store = StoreDb {
            config,
            columns,
            db: None,
            newest_us: None,
            swept_day: None,
            anonymous: 0,
            uncommitted: 0,
            opened_at: None,
            max_rowid: 0,
        };
        let db = open_store(&store.path())?;
        store.newest_us = db
            .query_row("SELECT MAX(time_us) FROM events", [], |r| r.get::<_, Option<i64>>(0))
            .optional()
            .map_err(|e| store.fail(e))?
            .flatten();
        let lowest = db
            .query_row("SELECT COALESCE(MIN(key), 0) FROM events", [], |r| r.get::<_, i64>(0))
            .map_err(|e| store.fail(e))?;
        store.anonymous = -lowest.min(0);
        store.db = Some(db);
        Ok(store)
    }

    /// Writes a batch (checked by [`check_batch`]) into the open transaction, opening one if needed.
    fn write(&mut self, data: &RecordBatch) -> Result<(), StageError> {
        let Some(db) = self.db.take() else { return Ok(()) };
        let result = (|| {
            if self.uncommitted == 0 {
                // The write lock from the start: the highest rowid read next stays the highest.
                db.execute_batch("BEGIN IMMEDIATE").map_err(|e| self.fail(e))?;
                self.max_rowid = db
                    .query_row("SELECT COALESCE(MAX(rowid), 0) FROM events", [], |r| r.get(0))
                    .map_err(|e| self.fail(e))?;
                self.opened_at = Some(Instant::now());
            }
            self.uncommitted += data.num_rows().max(1);
            let tx = &db;
            if data.schema().column_with_name("id").is_some() {
                self.write_events(tx, data)?;
            } else {
                self.write_incidents(tx, data)?;
            }
            self.sweep(tx)?;
            Ok(())
        })();
        self.db = Some(db);
        result
    }

    /// How long the open transaction may still wait for more rows before it is committed: zero when it is
    /// due (`commit_rows`, `commit_secs`), `None` when none is open. Many epochs (a file, a Kafka poll: often
    /// a thousand rows) go into one transaction: each commit writes every page it changed to the log, and the
    /// user index changes pages all over the file, so committing each epoch took about half the writer's time.
    fn commit_due_in(&self) -> Option<Duration> {
        let opened = self.opened_at.filter(|_| self.uncommitted > 0)?;
        if self.uncommitted >= self.config.commit_rows {
            return Some(Duration::ZERO);
        }
        Some(Duration::from_secs_f64(self.config.commit_secs).saturating_sub(opened.elapsed()))
    }

    /// Commits what was written.
    fn commit_written(&mut self) -> Result<(), StageError> {
        match self.db.take() {
            Some(db) => {
                let r = self.commit(&db);
                self.db = Some(db);
                r
            }
            None => Ok(()),
        }
    }

    /// Commits, folds the write-ahead log into the file (one file at rest) and closes it.
    fn close(&mut self) -> Result<(), StageError> {
        if let Some(db) = self.db.take() {
            self.commit(&db)?;
            db.pragma_update(None, "wal_checkpoint", "TRUNCATE").map_err(|e| self.fail(e))?;
            db.close().map_err(|(_, e)| self.fail(e))?;
        }
        Ok(())
    }
}

/// What a batch must have, checked on the worker so that a wrong input is refused by the call that
/// brought it: an `id` column (events: then a numeric score column) or `incident_id` and `status`.
fn check_batch(config: &AlertStoreConfig, data: &RecordBatch) -> Result<(), StageError> {
    let schema = data.schema();
    let has = |name: &str| schema.column_with_name(name).is_some();
    let columns = || schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ");
    if has("id") {
        if number(data, &config.field)?.is_none() {
            return Err(StageError::Data(format!(
                "alert-store: the rows have no \"{}\" column to store as the score (field: …; columns: {})",
                config.field,
                columns()
            )));
        }
        number(data, "mean_abs_z")?;
        Ok(())
    } else if has("incident_id") && has("status") {
        number(data, "peak_risk").map(drop)
    } else {
        Err(StageError::Data(format!(
            "alert-store: rows with neither an id column (events) nor incident_id and status (incidents); \
             columns: {}",
            columns()
        )))
    }
}

/// What the sink asks of its writer thread.
enum Job {
    Write(RecordBatch),
    /// Everything below this logical time has been handed over; `now`: commit at once (a source waits for
    /// it to finish, or a stop was asked for) rather than when the group is due.
    Advance {
        frontier: u64,
        now: bool,
    },
    /// Commit, close the file, answer and stop.
    Close(std::sync::mpsc::SyncSender<Result<(), StageError>>),
}

/// Lowers the calling thread's scheduling priority (Linux: a nice value of 10, for this thread only). The
/// writer then runs in the time the pipeline's workers leave: with group commits nothing waits for it but
/// the end of the run and a full queue, and on a machine whose cores the workers fill (the bench's 2
/// cores) the workers no longer give up their time to it.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: `gettid` and `setpriority` take and return plain integers; a failure leaves the priority as
    // it was, which is harmless.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

/// Batches handed to the writer and not yet written, at most (then `write` waits).
const QUEUED_BATCHES: usize = 64;

/// The thread that owns the SQLite connection. SQLite's work (most of the sink's time: B-tree inserts)
/// runs beside the worker, which goes on with the next batches. It commits a group of epochs at a time
/// (`commit_rows`, `commit_secs`) and then reports the last frontier handed over before the commit as
/// durable ([`StageContext::durable`]): sources commit their read positions no further, so a batch counts
/// as delivered only once it is committed.
struct Writer {
    /// `None` once dropped (the thread then ends).
    jobs: Option<std::sync::mpsc::SyncSender<Job>>,
    /// Set when the sink is dropped without `finish`: batches still queued are not written.
    abandoned: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The first error the writer met (then it writes nothing more; the next call reports it).
    failed: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(mut store: StoreDb, ctx: StageContext) -> Result<Writer, StageError> {
        use std::sync::mpsc::RecvTimeoutError;
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(QUEUED_BATCHES);
        let failed = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let seen = std::sync::Arc::clone(&failed);
        let abandoned = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let given_up = std::sync::Arc::clone(&abandoned);
        let thread = std::thread::Builder::new()
            .name("dfp-alert-store".into())
            .spawn(move || {
                lower_priority();
                // After the first error nothing more is written, committed or reported durable; the close
                // reports it. Once the sink is abandoned, the open transaction is left to roll back.
                let first_error = || seen.lock().ok().and_then(|e| e.clone());
                let stopped = || first_error().is_some() || given_up.load(std::sync::atomic::Ordering::Relaxed);
                let remember = |e: StageError| {
                    if let Ok(mut slot) = seen.lock() {
                        slot.get_or_insert(e.to_string());
                    }
                };
                // The latest frontier handed over and not yet reported durable.
                let mut pending: Option<u64> = None;
                loop {
                    // An open transaction waits for more rows until it is due, then is committed.
                    let due_in = if stopped() { None } else { store.commit_due_in() };
                    let job = match due_in {
                        Some(wait) => match queue.recv_timeout(wait) {
                            Ok(job) => Some(job),
                            Err(RecvTimeoutError::Timeout) => None,
                            Err(RecvTimeoutError::Disconnected) => return,
                        },
                        None => match queue.recv() {
                            Ok(job) => Some(job),
                            Err(_) => return,
                        },
                    };
                    let mut now = false;
                    match job {
                        Some(Job::Write(data)) if !stopped() => {
                            if let Err(e) = store.write(&data) {
                                remember(e);
                            }
                        }
                        Some(Job::Write(_)) => {}
                        Some(Job::Advance { frontier, now: asked }) => {
                            pending = Some(pending.map_or(frontier, |p| p.max(frontier)));
                            now = asked;
                        }
                        Some(Job::Close(reply)) => {
                            let done = match first_error() {
                                Some(e) => Err(StageError::Other(e)),
                                None => store.close(),
                            };
                            if let (Ok(()), Some(f)) = (&done, pending) {
                                ctx.durable(f);
                            }
                            let _ = reply.send(done);
                            return;
                        }
                        None => {}
                    }
                    if stopped() {
                        continue;
                    }
                    if now || store.commit_due_in() == Some(Duration::ZERO) {
                        if let Err(e) = store.commit_written() {
                            remember(e);
                            continue;
                        }
                    }
                    // Nothing uncommitted: everything below the pending frontier is in the file.
                    if store.uncommitted == 0 {
                        if let Some(f) = pending.take() {
                            ctx.durable(f);
                        }
                    }
                }
            })
            .map_err(|e| StageError::Other(format!("alert-store: cannot start the writer thread: {e}")))?;
        Ok(Writer { jobs: Some(jobs), abandoned, failed, thread: Some(thread) })
    }

    /// The writer's error, if it met one.
    fn failed(&self) -> Result<(), StageError> {
        match self.failed.lock().ok().and_then(|f| f.clone()) {
            Some(e) => Err(StageError::Other(e)),
            None => Ok(()),
        }
    }

    /// Why the writer thread is gone: its error, else that it stopped.
    fn stopped(&self) -> StageError {
        self.failed().err().unwrap_or_else(|| StageError::Other("alert-store: the writer thread stopped".into()))
    }

    fn send(&self, job: Job) -> Result<(), StageError> {
        let sent = self.jobs.as_ref().map_or(Err(()), |jobs| jobs.send(job).map_err(drop));
        sent.map_err(|_| self.stopped())
    }

    /// Sends `job` (built around a reply channel) and waits for the answer.
    fn ask(
        &self,
        job: impl FnOnce(std::sync::mpsc::SyncSender<Result<(), StageError>>) -> Job,
    ) -> Result<(), StageError> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.send(job(reply))?;
        answer.recv().unwrap_or_else(|_| Err(self.stopped()))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // A sink dropped without `finish` (the pipeline failed): queued batches are skipped, the thread
        // ends when the queue closes, and the open transaction is rolled back as its connection closes.
        self.abandoned.store(true, std::sync::atomic::Ordering::Relaxed);
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Sink for AlertStore {
    fn input_partitioning(&self) -> Partitioning {
        Partitioning::Single
    }

    fn holds_commits(&self) -> bool {
        true
    }

    fn open(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        if ctx.worker_index == 0 {
            let store = StoreDb::open(self.config.clone(), self.columns.clone())?;
            self.writer = Some(Writer::start(store, ctx.clone())?);
        }
        self.ctx = Some(ctx.clone());
        Ok(())
    }

    fn write(&mut self, batch: Batch) -> Result<(), StageError> {
        let Some(writer) = &self.writer else { return Ok(()) };
        writer.failed()?;
        check_batch(&self.config, &batch.data)?;
        writer.send(Job::Write(batch.data))
    }

    fn advance(&mut self, frontier: u64) -> Result<(), StageError> {
        let Some(ctx) = &self.ctx else { return Ok(()) };
        match &self.writer {
            Some(writer) => {
                writer.failed()?;
                writer.send(Job::Advance { frontier, now: ctx.checkpoint_wanted() })
            }
            // The other workers receive nothing: what they took in is durable.
            None => {
                ctx.durable(frontier);
                Ok(())
            }
        }
    }

    fn finish(&mut self) -> Result<(), StageError> {
        match self.writer.take() {
            Some(writer) => writer.ask(Job::Close),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfp_core::json::records_to_batch;
    use serde_json::json;

    fn sink(path: &Path, extra: serde_json::Value) -> Box<dyn Sink> {
        let mut v = json!({ "path": path.to_str().unwrap(), "family": "azure" });
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let config: AlertStoreConfig = serde_json::from_value(v).unwrap();
        config.validate().unwrap();
        let ctx = StageContext::standalone("store", 0, 1);
        let StageInstance::Sink(mut sink) = StageConfig::build(&config, &ctx).unwrap() else { panic!("a sink") };
        sink.open(&ctx).unwrap();
        sink
    }

    fn rows(values: &[serde_json::Value]) -> Batch {
        let mut batch = records_to_batch(values).unwrap().batch;
        // Event times as the normalizers write them.
        if let Ok(i) = batch.schema().index_of("timestamp") {
            let mut cols = batch.columns().to_vec();
            cols[i] = cast(&cols[i], &crate::normalize::timestamp_type()).unwrap();
            let mut fields: Vec<arrow::datatypes::Field> =
                batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
            fields[i] = fields[i].clone().with_data_type(crate::normalize::timestamp_type());
            batch = RecordBatch::try_new(std::sync::Arc::new(arrow::datatypes::Schema::new(fields)), cols).unwrap();
        }
        Batch::new(batch, "test")
    }

    fn event(id: &str, day: u32, user: &str, risk: f64) -> serde_json::Value {
        json!({ "id": id, "timestamp": format!("2026-11-{day:02}T10:00:00Z"), "username": user, "risk": risk,
                "mean_abs_z": risk, "appDisplayName": "Office 365", "country": "PT", "ipAddress": "198.51.100.7",
                "model_kind": "user", "top_features": "new_app +3.1" })
    }

    /// `event_hours` agrees with the stored events, hour by hour.
    fn assert_hours_match(db: &Connection) {
        let per_hour = |sql: &str| -> Vec<(i64, i64)> {
            db.prepare(sql)
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let counted = per_hour(
            "SELECT time_us / 3600000000, COUNT(*) FROM events WHERE time_us IS NOT NULL GROUP BY 1 ORDER BY 1",
        );
        assert!(!counted.is_empty());
        assert_eq!(per_hour("SELECT hour, events FROM event_hours WHERE events != 0 ORDER BY hour"), counted);
    }

    #[test]
    fn events_alerts_and_incidents_are_stored_and_upserted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/alerts.db");
        let mut s = sink(&path, json!({}));
        s.write(rows(&[event("a", 1, "ann", 0.5), event("b", 1, "ann", 3.5), event("c", 2, "<b>bob</b>", 2.0)]))
            .unwrap();
        // A stream read again after a restart: the same events are stored once (and counted once per hour),
        // the last row winning; an id at another time is another event.
        let mut again = event("b", 1, "ann", 3.5);
        again["top_features"] = json!("new_app +3.2");
        s.write(rows(&[again, event("c", 3, "<b>bob</b>", 2.0)])).unwrap();
        // An event twice in one batch (and once in the batch before): the last row wins.
        let mut last = event("d", 4, "ann", 4.0);
        last["username"] = json!("dan");
        s.write(rows(&[event("d", 4, "ann", 0.5), event("e", 4, "ann", 0.5), event("d", 4, "ann", 0.6), last]))
            .unwrap();
        s.write(rows(&[event("c", 3, "<b>bob</b>", 2.5), event("f", 4, "ann", 0.5)])).unwrap();
        // Without a time, a row is never taken for a stored event.
        s.write(rows(&[json!({ "id": "z", "risk": 0.1 }), json!({ "id": "z", "risk": 0.2 })])).unwrap();
        let incident = |status: &str, events: u64| {
            json!({ "incident_id": "inc-1", "status": status, "entity": "user", "username": "ann", "users": 1,
                    "first_seen": "2026-11-01T10:00:00Z", "last_seen": "2026-11-01T11:00:00Z", "events": events,
                    "event_ids": "[\"b\"]", "reasons": "unusual", "peak_risk": 3.5 })
        };
        s.write(rows(&[incident("open", 1)])).unwrap();
        s.write(rows(&[incident("closed", 2)])).unwrap();
        s.finish().unwrap();

        let db = open_store(&path).unwrap();
        let count = |sql: &str| db.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(count("SELECT COUNT(*) FROM events"), 9, "a, b, c on days 2 and 3, d, e, f, z twice");
        assert_eq!(count("SELECT COUNT(*) FROM events WHERE id = 'c'"), 2, "c at another time is another event");
        assert_eq!(count("SELECT COUNT(*) FROM events WHERE alert = 1"), 3, "b, d, and c of day 3 (2.5)");
        assert_eq!(count("SELECT COUNT(*) FROM events WHERE detail IS NOT NULL"), 3, "only alerts keep the row");
        let detail: String = db.query_row("SELECT detail FROM events WHERE id = 'b'", [], |r| r.get(0)).unwrap();
        let detail: serde_json::Value = serde_json::from_str(&detail).unwrap();
        assert_eq!(detail["top_features"], "new_app +3.2", "the row read again replaced the stored one");
        let d: (String, f64) = db
            .query_row("SELECT username, score FROM events WHERE id = 'd'", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!(d, ("dan".to_string(), 4.0), "the last row of d wins");
        let (user, app, ip): (String, String, String) = db
            .query_row("SELECT username, app, ip FROM events WHERE id = 'c'", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!((user.as_str(), app.as_str(), ip.as_str()), ("<b>bob</b>", "Office 365", "198.51.100.7"));
        let (status, events): (String, i64) =
            db.query_row("SELECT status, events FROM incidents", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert_eq!((status.as_str(), events), ("closed", 2), "the last row of an incident wins");
        assert_eq!(count("SELECT COUNT(*) FROM incidents"), 1);
        assert_hours_match(&db);
        assert_eq!(count("SELECT SUM(events) FROM event_hours"), 7);
        let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
    }

    #[test]
    fn a_store_of_version_1_is_migrated_and_suppressed_rows_are_kept_but_not_alerts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        // A file as the first alert-store wrote it, with one event.
        let db = Connection::open(&path).unwrap();
        db.execute_batch(MIGRATIONS[0]).unwrap();
        db.execute(
            "INSERT INTO events (key, id, time_us, username, score, alert) VALUES (1, 'old', 0, 'ann', 3.0, 1)",
            [],
        )
        .unwrap();
        db.pragma_update(None, "user_version", 1).unwrap();
        drop(db);
        let mut s = sink(&path, json!({ "keep_days": 0 }));
        let mut muted = event("muted", 2, "bob", 4.0);
        muted["suppressed"] = json!("#1 country=PT: trip (ann)");
        s.write(rows(&[muted, event("loud", 2, "bob", 4.0)])).unwrap();
        s.finish().unwrap();
        let db = open_store(&path).unwrap();
        let version: i64 = db.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let row = |id: &str| {
            db.query_row("SELECT alert, suppressed, detail IS NOT NULL FROM events WHERE id = ?1", [id], |r| {
                Ok((r.get::<_, bool>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, bool>(2)?))
            })
            .unwrap()
        };
        assert_eq!(row("old"), (true, None, false), "the old row survives the migration");
        assert_eq!(row("muted"), (false, Some("#1 country=PT: trip (ann)".into()), true), "kept, not an alert");
        assert_eq!(row("loud"), (true, None, true));
        assert_hours_match(&db);
        let n: i64 = db.query_row("SELECT COUNT(*) FROM marks", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 0, "the triage tables exist");
    }

    #[test]
    fn rows_older_than_keep_days_are_deleted_as_event_time_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.db");
        let mut s = sink(&path, json!({ "keep_days": 7 }));
        s.write(rows(&[event("old", 1, "ann", 0.5), event("kept", 5, "ann", 0.5)])).unwrap();
        s.write(rows(&[event("new", 10, "ann", 0.5)])).unwrap();
        s.finish().unwrap();
        let db = open_store(&path).unwrap();
        let ids: Vec<String> = db
            .prepare("SELECT id FROM events ORDER BY time_us")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(ids, ["kept", "new"], "day 1 is more than 7 days before day 10");
        // A later run continues from the newest stored time.
        let mut s = sink(&path, json!({ "keep_days": 7 }));
        s.write(rows(&[event("late", 2, "ann", 0.5)])).unwrap();
        s.finish().unwrap();
        let n: i64 = open_store(&path).unwrap().query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 2, "an event older than the window is deleted at once");
        assert_hours_match(&open_store(&path).unwrap());
    }

    #[test]
    fn a_store_from_a_newer_dfp_is_refused_and_bad_rows_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.db");
        let db = Connection::open(&path).unwrap();
        db.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        drop(db);
        let err = open_store(&path).unwrap_err().to_string();
        let newer = format!("schema version {}, written by a newer dfp", SCHEMA_VERSION + 1);
        assert!(err.contains(&newer), "{err}");

        let path = dir.path().join("ok.db");
        let mut s = sink(&path, json!({}));
        let err = s.write(rows(&[json!({ "id": "x", "mean_abs_z": 1.0 })])).unwrap_err().to_string();
        assert!(err.contains("no \"risk\" column") && err.contains("mean_abs_z"), "{err}");
        let err = s.write(rows(&[json!({ "what": 1 })])).unwrap_err().to_string();
        assert!(err.contains("neither an id column"), "{err}");
        let err = s.write(rows(&[json!({ "id": "x", "risk": "high" })])).unwrap_err().to_string();
        assert!(err.contains("\"risk\" is Utf8, not a number"), "{err}");
        // An error met on the writer thread comes back from a later call (at the latest `finish`), and
        // nothing of its group, or after it, is written.
        let late = dir.path().join("late.db");
        let mut s = sink(&late, json!({}));
        s.write(rows(&[event("a", 1, "ann", 0.5)])).unwrap();
        s.write(rows(&[json!({ "incident_id": null, "status": "open" })])).unwrap();
        let mut reported = None;
        for _ in 0..100 {
            if let Err(e) = s.write(rows(&[event("b", 1, "ann", 0.5)])).and_then(|()| s.advance(1)) {
                reported = Some(e.to_string());
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let err = reported.unwrap_or_else(|| s.finish().unwrap_err().to_string());
        assert!(err.contains("incident row 0 has no incident_id"), "{err}");
        drop(s);
        let n: i64 = open_store(&late).unwrap().query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 0, "the failed group is rolled back");
        let bad = |v: serde_json::Value| {
            let mut c = json!({ "path": "a.db", "family": "azure" });
            c.as_object_mut().unwrap().extend(v.as_object().unwrap().clone());
            serde_json::from_value::<AlertStoreConfig>(c).unwrap().validate().unwrap_err().field.unwrap_or_default()
        };
        assert_eq!(bad(json!({ "path": "s3://b/k.db" })), "path");
        assert_eq!(bad(json!({ "field": " " })), "field");
        assert_eq!(bad(json!({ "commit_secs": 0.0 })), "commit_secs");
        assert_eq!(bad(json!({ "commit_rows": 0 })), "commit_rows");
    }
}
