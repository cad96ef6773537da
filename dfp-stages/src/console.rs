//! The analyst console's questions to an alert store (the SQLite file the `alert-store` sink writes):
//! overview, heat map, alert, event and incident lists, one event or incident in depth, triage marks,
//! suppressions, and the labels file `dfp eval` reads. `dfp serve` puts these behind HTTP; a Rust program
//! can ask them directly.
//!
//! Every parameter arrives as text (a query string) and is checked here: a bad value is a
//! [`ConsoleError::BadRequest`] that names the parameter and says what it takes, an unknown parameter is one
//! too, and nothing a client sends reaches SQL other than as a bound value. Each call opens its own
//! connection (read-only unless it writes), so a pipeline may keep writing the file meanwhile.
//!
//! Paging is by `page` and `per_page` (at most 500), newest first (or highest score first with
//! `sort=score`); counts are exact. Free text (`q`) matches user, app and IP anywhere in the text,
//! without regard to case.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::Value as Sql;
use rusqlite::{params_from_iter, Connection, OpenFlags, OptionalExtension};
use serde_json::{json, Map, Value};

use crate::sinks::alert_store::{event_key, open_store, recount_event_hours, HOUR_US};
use crate::time::{format_micros, now_micros, parse_bound};

/// Why a console request failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The request is wrong (a parameter's value, a missing field): HTTP 400.
    #[error("{0}")]
    BadRequest(String),
    /// What it names is not in the store: HTTP 404.
    #[error("{0}")]
    NotFound(String),
    /// The store could not answer: HTTP 500.
    #[error("{0}")]
    Store(String),
}

/// Shorthand for results of the console.
pub type Result<T> = std::result::Result<T, ConsoleError>;

fn bad(m: impl Into<String>) -> ConsoleError {
    ConsoleError::BadRequest(m.into())
}

/// The labels a mark can have.
pub const LABELS: &[&str] = &["malicious", "benign", "needs_review"];
/// The fields a suppression can name (the family's columns of these roles).
pub const SUPPRESSION_FIELDS: &[&str] = &["country", "city", "app", "browser", "device", "ip"];

/// Counts stored events in a time range: whole hours from `event_hours` (kept by the `alert-store` sink),
/// the parts of hours at the range's ends on the time index — a count that does not grow with the range.
struct EventCounter<'c> {
    hours: rusqlite::Statement<'c>,
    index: rusqlite::Statement<'c>,
}

impl<'c> EventCounter<'c> {
    fn new(db: &'c Connection) -> rusqlite::Result<Self> {
        Ok(EventCounter {
            hours: db.prepare("SELECT COALESCE(SUM(events), 0) FROM event_hours WHERE hour >= ?1 AND hour < ?2")?,
            index: db.prepare("SELECT COUNT(*) FROM events WHERE time_us >= ?1 AND time_us < ?2")?,
        })
    }

    /// Events with `start <= time_us < end`.
    fn count(&mut self, start: i64, end: i64) -> rusqlite::Result<i64> {
        if end <= start {
            return Ok(0);
        }
        // Whole hours [first, last) inside the range. Hours are `time_us / HOUR_US` rounded toward zero, so
        // hour 0 spans both sides of the epoch: ranges that reach below one hour are counted on the index.
        let first = start.div_euclid(HOUR_US) + i64::from(start.rem_euclid(HOUR_US) != 0);
        let last = end.div_euclid(HOUR_US);
        if start < HOUR_US || first >= last {
            return self.index.query_row([start, end], |r| r.get(0));
        }
        let whole: i64 = self.hours.query_row([first, last], |r| r.get(0))?;
        let head: i64 =
            if start < first * HOUR_US { self.index.query_row([start, first * HOUR_US], |r| r.get(0))? } else { 0 };
        let tail: i64 =
            if last * HOUR_US < end { self.index.query_row([last * HOUR_US, end], |r| r.get(0))? } else { 0 };
        Ok(whole + head + tail)
    }
}

/// One alert store, as the console reads and marks it.
#[derive(Debug, Clone)]
pub struct Console {
    path: PathBuf,
}

/// Query parameters, checked one by one against what the route accepts.
struct Params<'a> {
    values: HashMap<&'a str, &'a str>,
}

impl<'a> Params<'a> {
    fn new(pairs: &'a [(String, String)], known: &[&str]) -> Result<Self> {
        let mut values = HashMap::new();
        for (k, v) in pairs {
            if !known.contains(&k.as_str()) {
                return Err(bad(format!("unknown parameter \"{k}\"; this page takes: {}", known.join(", "))));
            }
            if values.insert(k.as_str(), v.as_str()).is_some() {
                return Err(bad(format!("parameter \"{k}\" is given twice")));
            }
        }
        Ok(Params { values })
    }

    fn text(&self, name: &str) -> Option<&'a str> {
        self.values.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    fn number(&self, name: &str) -> Result<Option<f64>> {
        self.text(name)
            .map(|v| {
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| bad(format!("parameter \"{name}\" must be a number, not \"{v}\"")))
            })
            .transpose()
    }

    fn count(&self, name: &str, default: u64, min: u64, max: u64) -> Result<u64> {
        match self.text(name) {
            None => Ok(default),
            Some(v) => v.parse::<u64>().ok().filter(|n| (min..=max).contains(n)).ok_or_else(|| {
                bad(format!("parameter \"{name}\" must be a whole number from {min} to {max}, not \"{v}\""))
            }),
        }
    }

    /// A time: RFC 3339, a date (its start, or its end with `end_of_day`), or microseconds since the epoch.
    fn time(&self, name: &str, end_of_day: bool) -> Result<Option<i64>> {
        self.text(name)
            .map(|v| parse_bound(v, end_of_day).map_err(|m| bad(format!("parameter \"{name}\": {m}"))))
            .transpose()
    }

    fn choice(&self, name: &str, allowed: &[&str]) -> Result<Option<&'a str>> {
        match self.text(name) {
            None => Ok(None),
            Some(v) if allowed.contains(&v) => Ok(Some(v)),
            Some(v) => Err(bad(format!("parameter \"{name}\" must be one of {}, not \"{v}\"", allowed.join(", ")))),
        }
    }
}

fn iso(us: Option<i64>) -> Value {
    us.and_then(chrono::DateTime::from_timestamp_micros)
        .map_or(Value::Null, |t| Value::String(t.format("%Y-%m-%dT%H:%M:%SZ").to_string()))
}

/// A `WHERE` clause under construction, with its bound values.
#[derive(Default)]
struct Where {
    clauses: Vec<String>,
    values: Vec<Sql>,
}

impl Where {
    fn add(&mut self, clause: &str, values: impl IntoIterator<Item = Sql>) {
        self.clauses.push(clause.to_string());
        self.values.extend(values);
    }
    /// Free text: any of `columns` holds `q` (ASCII case ignored, `%` and `_` literal).
    fn search(&mut self, columns: &[&str], q: &str) {
        let clause: Vec<String> = columns.iter().map(|c| format!("{c} LIKE ? ESCAPE '\\'")).collect();
        self.add(&format!("({})", clause.join(" OR ")), columns.iter().map(|_| like(q)));
    }

    /// A triage status of `target`s whose id is `id_column`: `unmarked`, or the latest mark's label. An
    /// `IN (subquery)`: SQLite builds the marked ids once, instead of a lookup per row.
    fn marked(&mut self, target: &str, id_column: &str, status: &str) {
        if status == "unmarked" {
            self.add(&format!("{id_column} NOT IN (SELECT target_id FROM marks WHERE target = ?)"), [text(target)]);
        } else {
            self.add(
                &format!("{id_column} IN (SELECT target_id FROM marks WHERE target = ? AND label = ?)"),
                [text(target), text(status)],
            );
        }
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.clauses.join(" AND "))
        }
    }
}

fn text(v: &str) -> Sql {
    Sql::Text(v.to_string())
}

/// `%…%` for LIKE, with the pattern characters of the text escaped (`ESCAPE '\'`).
fn like(v: &str) -> Sql {
    let mut s = String::from("%");
    for c in v.chars() {
        if matches!(c, '%' | '_' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('%');
    Sql::Text(s)
}

/// A user's alerts in the overview: the highest score, how many, their incidents.
type UserAlerts = (f64, i64, std::collections::HashSet<String>);
/// The overview's alert figures: total, per bin, by country/browser/app/model kind, per user.
type AlertScan = (i64, Vec<i64>, [HashMap<String, i64>; 4], HashMap<String, UserAlerts>);

/// The columns of an event in lists.
const EVENT_COLUMNS: &str = "id, time_us, username, score, mean_abs_z, alert, app, country, city, browser, device, ip,
    model_kind, incident_id, suppressed, (SELECT label FROM marks m WHERE m.target = 'event' AND m.target_id = e.id)";

fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Value> {
    let s =
        |i: usize| -> rusqlite::Result<Value> { Ok(r.get::<_, Option<String>>(i)?.map_or(Value::Null, Value::String)) };
    let f = |i: usize| -> rusqlite::Result<Value> { Ok(r.get::<_, Option<f64>>(i)?.map_or(Value::Null, Value::from)) };
    Ok(json!({
        "id": s(0)?, "time": iso(r.get(1)?), "username": s(2)?, "score": f(3)?, "mean_abs_z": f(4)?,
        "alert": r.get::<_, bool>(5)?, "app": s(6)?, "country": s(7)?, "city": s(8)?, "browser": s(9)?,
        "device": s(10)?, "ip": s(11)?, "model_kind": s(12)?, "incident_id": s(13)?, "suppressed": s(14)?,
        "mark": s(15)?,
    }))
}

impl Console {
    /// The console of the store at `path`; an error when there is no such file or it is not an alert store
    /// (an older one is migrated, as the sink would).
    pub fn open(path: &Path) -> Result<Console> {
        if !path.is_file() {
            return Err(ConsoleError::Store(format!(
                "{}: no such alert store (a pipeline with an `alert-store` sink writes it)",
                path.display()
            )));
        }
        open_store(path).map_err(|e| ConsoleError::Store(e.to_string()))?;
        Ok(Console { path: path.to_path_buf() })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<Connection> {
        let db =
            Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(|e| self.fail(e))?;
        db.busy_timeout(Duration::from_secs(5)).map_err(|e| self.fail(e))?;
        Ok(db)
    }

    fn write(&self) -> Result<Connection> {
        open_store(&self.path).map_err(|e| ConsoleError::Store(e.to_string()))
    }

    fn fail(&self, e: rusqlite::Error) -> ConsoleError {
        ConsoleError::Store(format!("{}: {e}", self.path.display()))
    }

    /// The rows `sql` selects, each made a JSON object by `row` (events unless said otherwise).
    fn rows_as(
        &self,
        db: &Connection,
        sql: &str,
        values: &[Sql],
        row: fn(&rusqlite::Row<'_>) -> rusqlite::Result<Value>,
    ) -> Result<Vec<Value>> {
        let mut stmt = db.prepare(sql).map_err(|e| self.fail(e))?;
        let rows = stmt.query_map(params_from_iter(values.iter()), row).map_err(|e| self.fail(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|e| self.fail(e))
    }

    fn rows(&self, db: &Connection, sql: &str, values: &[Sql]) -> Result<Vec<Value>> {
        self.rows_as(db, sql, values, event_row)
    }

    /// A token that changes whenever the store does (new events, incidents, marks, suppressions): the
    /// console polls it to refresh what it shows.
    pub fn version(&self) -> Result<String> {
        let db = self.read()?;
        db.query_row(
            "SELECT COALESCE((SELECT MAX(rowid) FROM events), 0) || '-' ||
                    COALESCE((SELECT COUNT(*) || '.' || MAX(rowid) || '.' || SUM(events) FROM incidents), '') || '-' ||
                    COALESCE((SELECT MAX(seq) FROM mark_log), 0) || '-' ||
                    COALESCE((SELECT MAX(id) || '.' || COUNT(removed_us) FROM suppressions), '')",
            [],
            |r| r.get(0),
        )
        .map_err(|e| self.fail(e))
    }

    /// The stored events' first and last times, and the range asked for (`from`, `to`; default: all).
    fn range(&self, db: &Connection, p: &Params<'_>) -> Result<(Option<i64>, Option<i64>, i64, i64)> {
        let (first, last): (Option<i64>, Option<i64>) = db
            .query_row("SELECT MIN(time_us), MAX(time_us) FROM events", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.fail(e))?;
        let from = p.time("from", false)?.or(first).unwrap_or(0);
        let to = p.time("to", true)?.or(last).unwrap_or(0);
        if to < from {
            return Err(bad("parameter \"to\" is before \"from\""));
        }
        Ok((first, last, from, to))
    }

    /// Events and alerts over time, alerts by country, browser, app and model kind, users ranked by risk.
    /// Parameters: `from`, `to` (default: everything stored), `bins` (default 48).
    pub fn overview(&self, params: &[(String, String)]) -> Result<Value> {
        let p = Params::new(params, &["from", "to", "bins"])?;
        let db = self.read()?;
        let (first, last, from, to) = self.range(&db, &p)?;
        let bins = p.count("bins", 48, 1, 500)? as i64;
        let width = ((to - from) / bins + 1).max(1);
        // Events per bin, on a second connection while this one reads the alerts: the whole hours of a bin
        // from `event_hours`, the parts of hours at its edges counted on the time index.
        let (events_per_bin, scanned) = std::thread::scope(|scope| {
            let counting = scope.spawn(|| -> Result<Vec<i64>> {
                let db = self.read()?;
                let mut counter = EventCounter::new(&db).map_err(|e| self.fail(e))?;
                (0..bins)
                    .map(|b| {
                        let start = from + b * width;
                        counter.count(start, (start + width).min(to.saturating_add(1))).map_err(|e| self.fail(e))
                    })
                    .collect()
            });
            let scanned = self.scan_alerts(&db, from, to, width, bins);
            let counted = counting.join().unwrap_or_else(|_| Err(ConsoleError::Store("counting events failed".into())));
            (counted, scanned)
        });
        let (events_per_bin, (alerts, alerts_per_bin, by, users)) = (events_per_bin?, scanned?);
        let series: Vec<Value> = (0..bins as usize)
            .map(|b| {
                json!({ "start": iso(Some(from + b as i64 * width)), "events": events_per_bin[b],
                        "alerts": alerts_per_bin[b] })
            })
            .collect();
        let mut out = Map::new();
        for (name, map) in ["country", "browser", "app", "model_kind"].iter().zip(by) {
            let mut counts: Vec<(String, i64)> = map.into_iter().collect();
            counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let rows: Vec<Value> =
                counts.into_iter().take(12).map(|(value, n)| json!({ "value": value, "alerts": n })).collect();
            out.insert(format!("by_{name}"), Value::Array(rows));
        }
        let mut users: Vec<(String, UserAlerts)> = users.into_iter().collect();
        users.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
        let top: Vec<Value> = users
            .into_iter()
            .take(20)
            .map(|(u, (max, n, inc))| json!({ "username": u, "max_score": max, "alerts": n, "incidents": inc.len() }))
            .collect();
        let (incidents, marks): (i64, i64) = db
            .query_row(
                "SELECT (SELECT COUNT(*) FROM incidents WHERE last_us >= ?1 AND first_us <= ?2),
                        (SELECT COUNT(*) FROM marks)",
                [from, to],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.fail(e))?;
        out.insert("from".into(), iso(Some(from)));
        out.insert("to".into(), iso(Some(to)));
        out.insert("stored_from".into(), iso(first));
        out.insert("stored_to".into(), iso(last));
        out.insert("events".into(), json!(events_per_bin.iter().sum::<i64>()));
        out.insert("alerts".into(), json!(alerts));
        out.insert("incidents".into(), json!(incidents));
        out.insert("marks".into(), json!(marks));
        out.insert("series".into(), Value::Array(series));
        out.insert("top_users".into(), Value::Array(top));
        Ok(Value::Object(out))
    }

    /// Everything the overview shows about alerts, from one scan of the alerts' covering index: how many,
    /// per bin, by country, browser, app and model kind, and per user.
    fn scan_alerts(&self, db: &Connection, from: i64, to: i64, width: i64, bins: i64) -> Result<AlertScan> {
        let mut alerts_per_bin = vec![0i64; bins as usize];
        let mut by: [HashMap<String, i64>; 4] = Default::default();
        // Per user: highest score, alerts, incidents.
        let mut users: HashMap<String, UserAlerts> = HashMap::new();
        let mut scan = db
            .prepare(
                "SELECT time_us, country, browser, app, model_kind, username, score, incident_id FROM events
                 WHERE alert = 1 AND time_us BETWEEN ?1 AND ?2",
            )
            .map_err(|e| self.fail(e))?;
        let mut rows = scan.query([from, to]).map_err(|e| self.fail(e))?;
        let mut alerts = 0i64;
        while let Some(r) = rows.next().map_err(|e| self.fail(e))? {
            alerts += 1;
            let t: i64 = r.get(0).map_err(|e| self.fail(e))?;
            alerts_per_bin[((t - from) / width).clamp(0, bins - 1) as usize] += 1;
            // Text read in place; a key is allocated once, when first seen.
            let text = |i: usize| -> Result<Option<&str>> {
                match r.get_ref(i).map_err(|e| self.fail(e))? {
                    rusqlite::types::ValueRef::Text(t) => Ok(std::str::from_utf8(t).ok()),
                    _ => Ok(None),
                }
            };
            for (i, map) in by.iter_mut().enumerate() {
                let v = text(1 + i)?.unwrap_or("(none)");
                match map.get_mut(v) {
                    Some(n) => *n += 1,
                    None => {
                        map.insert(v.to_string(), 1);
                    }
                }
            }
            if let Some(user) = text(5)? {
                let score: f64 = r.get::<_, Option<f64>>(6).map_err(|e| self.fail(e))?.unwrap_or(f64::NEG_INFINITY);
                if !users.contains_key(user) {
                    users.insert(user.to_string(), (f64::NEG_INFINITY, 0, Default::default()));
                }
                let Some(entry) = users.get_mut(user) else { continue };
                entry.0 = entry.0.max(score);
                entry.1 += 1;
                if let Some(inc) = text(7)? {
                    if !entry.2.contains(inc) {
                        entry.2.insert(inc.to_string());
                    }
                }
            }
        }
        Ok((alerts, alerts_per_bin, by, users))
    }

    /// Users × time bins, each cell the worst score of the user's events in it, for the users with the
    /// highest alert scores in the range. Parameters: `from`, `to`, `bins` (default 48), `users` (default 30).
    pub fn heatmap(&self, params: &[(String, String)]) -> Result<Value> {
        let p = Params::new(params, &["from", "to", "bins", "users"])?;
        let db = self.read()?;
        let (_, _, from, to) = self.range(&db, &p)?;
        let bins = p.count("bins", 48, 1, 200)? as i64;
        let limit = p.count("users", 30, 1, 200)? as i64;
        let width = ((to - from) / bins + 1).max(1);
        let mut stmt = db
            .prepare(
                "SELECT username FROM events WHERE alert = 1 AND time_us BETWEEN ?1 AND ?2 AND username IS NOT NULL
                 GROUP BY username ORDER BY MAX(score) DESC LIMIT ?3",
            )
            .map_err(|e| self.fail(e))?;
        let users: Vec<String> = stmt
            .query_map([from, to, limit], |r| r.get(0))
            .map_err(|e| self.fail(e))?
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| self.fail(e))?;
        let mut rows = Vec::with_capacity(users.len());
        let mut cells_stmt = db
            .prepare(
                "SELECT (time_us - ?2) / ?4, MAX(score), COUNT(*) FROM events
                 WHERE username = ?1 AND time_us BETWEEN ?2 AND ?3 GROUP BY 1",
            )
            .map_err(|e| self.fail(e))?;
        for user in &users {
            let mut cells = vec![Value::Null; bins as usize];
            let mut counts = vec![0i64; bins as usize];
            let found = cells_stmt
                .query_map(rusqlite::params![user, from, to, width], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Option<f64>>(1)?, r.get::<_, i64>(2)?))
                })
                .map_err(|e| self.fail(e))?;
            for f in found {
                let (bin, worst, n) = f.map_err(|e| self.fail(e))?;
                let b = bin.clamp(0, bins - 1) as usize;
                cells[b] = worst.map_or(Value::Null, Value::from);
                counts[b] = n;
            }
            rows.push(json!({ "username": user, "cells": cells, "events": counts }));
        }
        let starts: Vec<Value> = (0..bins).map(|b| iso(Some(from + b * width))).collect();
        Ok(json!({ "from": iso(Some(from)), "to": iso(Some(to)), "bin_us": width, "bins": starts, "users": rows }))
    }

    /// Events (`alerts=1`, the default: alerts only; `alerts=0`: every event; `status=suppressed`: the
    /// suppressed ones), filtered and paged. Parameters: `user`, `from`, `to`, `country`, `app`, `browser`,
    /// `min_score`, `status` (`unmarked`, `malicious`, `benign`, `needs_review`, `suppressed`), `q`,
    /// `alerts`, `sort` (`time` or `score`), `page`, `per_page`.
    pub fn events(&self, params: &[(String, String)]) -> Result<Value> {
        let p = Params::new(
            params,
            &[
                "user",
                "from",
                "to",
                "country",
                "app",
                "browser",
                "min_score",
                "status",
                "q",
                "alerts",
                "sort",
                "page",
                "per_page",
            ],
        )?;
        let mut w = Where::default();
        let status = p.choice("status", &["unmarked", "malicious", "benign", "needs_review", "suppressed"])?;
        let alerts_only = p.choice("alerts", &["0", "1"])?.is_none_or(|a| a == "1");
        match status {
            Some("suppressed") => w.add("e.suppressed IS NOT NULL", []),
            _ if alerts_only => w.add("e.alert = 1", []),
            _ => {}
        }
        if let Some(u) = p.text("user") {
            w.add("e.username = ?", [text(u)]);
        }
        if let Some(from) = p.time("from", false)? {
            w.add("e.time_us >= ?", [Sql::Integer(from)]);
        }
        if let Some(to) = p.time("to", true)? {
            w.add("e.time_us <= ?", [Sql::Integer(to)]);
        }
        for column in ["country", "app", "browser"] {
            if let Some(v) = p.text(column) {
                w.add(&format!("e.{column} = ?"), [text(v)]);
            }
        }
        if let Some(min) = p.number("min_score")? {
            w.add("e.score >= ?", [Sql::Real(min)]);
        }
        if let Some(status) = status.filter(|s| *s != "suppressed") {
            w.marked("event", "e.id", status);
        }
        if let Some(q) = p.text("q") {
            w.search(&["e.username", "e.app", "e.ip"], q);
        }
        let order = match p.choice("sort", &["time", "score"])? {
            Some("score") => "e.score DESC, e.time_us DESC",
            _ => "e.time_us DESC, e.key",
        };
        self.paged(&p, "events e", EVENT_COLUMNS, &w, order, event_row)
    }

    /// Incidents, filtered and paged. Parameters: `user` (the user, or for a source incident one of its
    /// addresses), `from`, `to`, `min_score` (peak risk), `status` (`open`, `updated`, `closed`,
    /// `unmarked`, `malicious`, `benign`, `needs_review`), `q`, `sort`, `page`, `per_page`.
    pub fn incidents(&self, params: &[(String, String)]) -> Result<Value> {
        let p = Params::new(params, &["user", "from", "to", "min_score", "status", "q", "sort", "page", "per_page"])?;
        let mut w = Where::default();
        if let Some(u) = p.text("user") {
            w.add("(i.username = ? OR i.source = ?)", [text(u), text(u)]);
        }
        if let Some(from) = p.time("from", false)? {
            w.add("i.last_us >= ?", [Sql::Integer(from)]);
        }
        if let Some(to) = p.time("to", true)? {
            w.add("i.first_us <= ?", [Sql::Integer(to)]);
        }
        if let Some(min) = p.number("min_score")? {
            w.add("i.peak_risk >= ?", [Sql::Real(min)]);
        }
        match p.choice("status", &["open", "updated", "closed", "unmarked", "malicious", "benign", "needs_review"])? {
            Some(s @ ("open" | "updated" | "closed")) => w.add("i.status = ?", [text(s)]),
            Some(status) => w.marked("incident", "i.incident_id", status),
            None => {}
        }
        if let Some(q) = p.text("q") {
            w.search(&["i.username", "i.source", "i.reasons"], q);
        }
        let order = match p.choice("sort", &["time", "score"])? {
            Some("score") => "i.peak_risk DESC, i.last_us DESC",
            _ => "i.last_us DESC, i.incident_id",
        };
        self.paged(&p, "incidents i", INCIDENT_COLUMNS, &w, order, incident_row)
    }

    /// One page of `from` (a table and its alias) under `w`, in `order`, with the exact count of all rows.
    fn paged(
        &self,
        p: &Params<'_>,
        from: &str,
        columns: &str,
        w: &Where,
        order: &str,
        row: fn(&rusqlite::Row<'_>) -> rusqlite::Result<Value>,
    ) -> Result<Value> {
        let (page, per_page) = (p.count("page", 1, 1, 1_000_000)?, p.count("per_page", 50, 1, 500)?);
        let db = self.read()?;
        let total: i64 = db
            .query_row(&format!("SELECT COUNT(*) FROM {from} {}", w.sql()), params_from_iter(w.values.iter()), |r| {
                r.get(0)
            })
            .map_err(|e| self.fail(e))?;
        let mut values = w.values.clone();
        values.push(Sql::Integer(per_page as i64));
        values.push(Sql::Integer(((page - 1) * per_page) as i64));
        let sql = format!("SELECT {columns} FROM {from} {} ORDER BY {order} LIMIT ? OFFSET ?", w.sql());
        let rows = self.rows_as(&db, &sql, &values, row)?;
        Ok(json!({ "total": total, "page": page, "per_page": per_page, "rows": rows }))
    }

    fn mark_of(&self, db: &Connection, target: &str, id: &str) -> Result<Value> {
        let mut stmt = db
            .prepare(
                "SELECT label, note, who, at_us FROM mark_log WHERE target = ?1 AND target_id = ?2 ORDER BY seq DESC",
            )
            .map_err(|e| self.fail(e))?;
        let history = stmt
            .query_map([target, id], |r| {
                Ok(json!({ "label": r.get::<_, String>(0)?, "note": r.get::<_, String>(1)?,
                           "who": r.get::<_, String>(2)?, "at": iso(r.get(3)?) }))
            })
            .map_err(|e| self.fail(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.fail(e))?;
        Ok(json!({ "current": history.first().cloned().unwrap_or(Value::Null), "history": history }))
    }

    /// The rowid of the stored event `id`. With its `time` (any time within the event's second, as the
    /// lists show it) it is found through the time index; without one, or at another time, an alert or a
    /// suppressed event (a kept row) through the index of kept rows' ids, and any other event by reading
    /// every stored event (slow on a large store: the console's own links carry the time).
    fn find_event(&self, db: &Connection, id: &str, time: Option<i64>) -> Result<Option<i64>> {
        let key = event_key(id);
        let find = |sql: &str, values: &[Sql]| {
            db.query_row(sql, rusqlite::params_from_iter(values), |r| r.get::<_, i64>(0))
                .optional()
                .map_err(|e| self.fail(e))
        };
        let id = || Sql::Text(id.to_string());
        if let Some(t) = time {
            let second = t.div_euclid(1_000_000) * 1_000_000;
            let sql = "SELECT rowid FROM events WHERE time_us >= ?1 AND time_us < ?2 AND key = ?3 AND id = ?4";
            let values = [Sql::Integer(second), Sql::Integer(second + 1_000_000), Sql::Integer(key), id()];
            if let Some(rowid) = find(sql, &values)? {
                return Ok(Some(rowid));
            }
        }
        let kept = find(
            "SELECT rowid FROM events WHERE key = ?1 AND detail IS NOT NULL AND id = ?2",
            &[Sql::Integer(key), id()],
        )?;
        match kept {
            Some(rowid) => Ok(Some(rowid)),
            None => find("SELECT rowid FROM events WHERE key = ?1 AND id = ?2", &[Sql::Integer(key), id()]),
        }
    }

    /// One event in depth: its row, every feature's z-score (largest first) with the value the model saw,
    /// the signals that raised its risk, the user's profile from the stored events (usual countries, apps,
    /// browsers, devices), the user's neighbouring events, its incident and its marks. `time`: the event's
    /// time, to find it quickly (see `Console::find_event`).
    pub fn event(&self, id: &str, query: &[(String, String)]) -> Result<Value> {
        let p = Params::new(query, &["time"])?;
        let time = p.time("time", false)?;
        let db = self.read()?;
        let not_found = || ConsoleError::NotFound(format!("no event with id \"{id}\" in the store"));
        let rowid = self.find_event(&db, id, time)?.ok_or_else(not_found)?;
        let mut stmt = db
            .prepare(&format!("SELECT {EVENT_COLUMNS}, detail, time_us FROM events e WHERE rowid = ?1"))
            .map_err(|e| self.fail(e))?;
        let found = stmt
            .query_row([rowid], |r| Ok((event_row(r)?, r.get::<_, Option<String>>(16)?, r.get::<_, Option<i64>>(17)?)))
            .optional()
            .map_err(|e| self.fail(e))?;
        let (row, detail, t) = found.ok_or_else(not_found)?;
        let detail: Option<Map<String, Value>> =
            detail.and_then(|d| serde_json::from_str::<Map<String, Value>>(&d).ok());
        let mut features = Vec::new();
        if let Some(d) = &detail {
            for (k, v) in d {
                if let (Some(name), Some(z)) = (k.strip_suffix("_z_loss"), v.as_f64()) {
                    features
                        .push(json!({ "feature": name, "z": z, "value": d.get(name).cloned().unwrap_or(Value::Null) }));
                }
            }
        }
        features.sort_by(|a, b| {
            let z = |v: &Value| v["z"].as_f64().unwrap_or(0.0).abs();
            z(b).total_cmp(&z(a))
        });
        let user = row["username"].as_str().map(str::to_string);
        let mut profile = Map::new();
        let mut neighbours = Vec::new();
        if let Some(user) = &user {
            for column in ["country", "app", "browser", "device", "city"] {
                let sql = format!(
                    "SELECT {column}, COUNT(*) FROM events WHERE username = ?1 AND {column} IS NOT NULL
                     GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 8"
                );
                let mut stmt = db.prepare(&sql).map_err(|e| self.fail(e))?;
                let values = stmt
                    .query_map([user], |r| {
                        Ok(json!({ "value": r.get::<_, String>(0)?, "events": r.get::<_, i64>(1)? }))
                    })
                    .map_err(|e| self.fail(e))?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(|e| self.fail(e))?;
                profile.insert(column.to_string(), Value::Array(values));
            }
            let total: i64 = db
                .query_row("SELECT COUNT(*) FROM events WHERE username = ?1", [user], |r| r.get(0))
                .map_err(|e| self.fail(e))?;
            profile.insert("events".into(), json!(total));
            let t = t.unwrap_or(0);
            let before = self.rows(
                &db,
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events e WHERE username = ?1 AND time_us <= ?2 AND rowid != ?3
                     ORDER BY time_us DESC LIMIT 8"
                ),
                &[text(user), Sql::Integer(t), Sql::Integer(rowid)],
            )?;
            let after = self.rows(
                &db,
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events e WHERE username = ?1 AND time_us > ?2 ORDER BY time_us LIMIT 8"
                ),
                &[text(user), Sql::Integer(t)],
            )?;
            neighbours.extend(before.into_iter().rev());
            neighbours.push(json!({ "this": true, "event": row.clone() }));
            neighbours.extend(after);
        }
        let keep = |k: &str| detail.as_ref().and_then(|d| d.get(k)).cloned().unwrap_or(Value::Null);
        let windows: Map<String, Value> = detail
            .as_ref()
            .map(|d| d.iter().filter(|(k, _)| k.starts_with("win_")).map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let marks = self.mark_of(&db, "event", id)?;
        Ok(json!({
            "event": row, "kept": detail.is_some(), "features": features, "top_features": keep("top_features"),
            "risk_model": keep("risk_model"), "risk_signals": keep("risk_signals"), "model_name": keep("model_name"),
            "model_version": keep("model_version"), "windows": windows, "profile": profile,
            "neighbours": neighbours, "marks": marks,
        }))
    }

    /// One incident: its row, member events in time order (the stored ones), reasons, peak risk, marks.
    pub fn incident(&self, id: &str) -> Result<Value> {
        let db = self.read()?;
        let mut stmt = db
            .prepare(&format!(
                "SELECT {INCIDENT_COLUMNS}, event_ids, first_us, last_us FROM incidents i WHERE incident_id = ?1"
            ))
            .map_err(|e| self.fail(e))?;
        let found = stmt
            .query_row([id], |r| {
                let span = (r.get::<_, Option<i64>>(14)?, r.get::<_, Option<i64>>(15)?);
                Ok((incident_row(r)?, r.get::<_, Option<String>>(13)?, span))
            })
            .optional()
            .map_err(|e| self.fail(e))?;
        let Some((row, ids, span)) = found else {
            return Err(ConsoleError::NotFound(format!("no incident with id \"{id}\" in the store")));
        };
        let ids: Vec<String> = ids.as_deref().map(event_ids).unwrap_or_default();
        let mut events = Vec::new();
        // A user's incident: its events are the user's with its id (all of them, not only the listed ones).
        if let (Some("user"), Some(user)) = (row["entity"].as_str(), row["username"].as_str()) {
            events = self.rows(
                &db,
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events e WHERE username = ?1 AND incident_id = ?2 ORDER BY time_us"
                ),
                &[text(user), text(id)],
            )?;
        }
        // And the listed ids (a source's incident has only those).
        let known: std::collections::HashSet<String> =
            events.iter().filter_map(|e| e["id"].as_str().map(str::to_string)).collect();
        let listed: Vec<&String> = ids.iter().filter(|i| !known.contains(*i)).collect();
        // They happened between the incident's first and last event: found through the time index.
        let span = match span {
            (Some(first), Some(last)) => format!("time_us >= {first} AND time_us <= {last} AND"),
            _ => String::new(),
        };
        for chunk in listed.chunks(200) {
            let keys: Vec<Sql> = chunk.iter().map(|i| Sql::Integer(event_key(i))).collect();
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM events e WHERE {span} key IN ({}) ORDER BY time_us",
                vec!["?"; keys.len()].join(",")
            );
            events.extend(self.rows(&db, &sql, &keys)?);
        }
        events.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
        let marks = self.mark_of(&db, "incident", id)?;
        Ok(json!({ "incident": row, "event_ids": ids, "events": events, "marks": marks }))
    }

    /// Marks an event or incident (`target`: `event` or `incident`) `malicious`, `benign` or `needs_review`,
    /// with a note, by `who`; the latest mark is the target's status, every mark stays in the history.
    /// `time`: an event's time, to find it quickly (see [`Console::event`]; empty: none).
    pub fn mark(&self, target: &str, id: &str, time: &str, label: &str, note: &str, who: &str) -> Result<Value> {
        if !["event", "incident"].contains(&target) {
            return Err(bad(format!("\"target\" must be event or incident, not \"{target}\"")));
        }
        if !LABELS.contains(&label) {
            return Err(bad(format!("\"label\" must be one of {}, not \"{label}\"", LABELS.join(", "))));
        }
        check_text("note", note, 0, 2000)?;
        check_text("who", who, 1, 100)?;
        check_text("id", id, 1, 1000)?;
        let time = match time.trim() {
            "" => None,
            t => Some(parse_bound(t, false).map_err(|m| bad(format!("\"time\": {m}")))?),
        };
        let db = self.write()?;
        let exists = if target == "event" {
            self.find_event(&db, id, time)?.is_some()
        } else {
            db.query_row("SELECT 1 FROM incidents WHERE incident_id = ?1", [id], |_| Ok(()))
                .optional()
                .map_err(|e| self.fail(e))?
                .is_some()
        };
        if !exists {
            return Err(ConsoleError::NotFound(format!("no {target} with id \"{id}\" in the store")));
        }
        let now = now_micros();
        let (note, who) = (note.trim(), who.trim());
        db.execute_batch("BEGIN IMMEDIATE").map_err(|e| self.fail(e))?;
        let done = (|| {
            db.execute(
                "INSERT INTO marks (target, target_id, label, note, who, at_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(target, target_id) DO UPDATE SET label = excluded.label, note = excluded.note,
                 who = excluded.who, at_us = excluded.at_us",
                rusqlite::params![target, id, label, note, who, now],
            )?;
            db.execute(
                "INSERT INTO mark_log (target, target_id, label, note, who, at_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params![target, id, label, note, who, now],
            )?;
            db.execute_batch("COMMIT")
        })();
        if let Err(e) = done {
            let _ = db.execute_batch("ROLLBACK");
            return Err(self.fail(e));
        }
        Ok(json!({ "target": target, "id": id, "label": label, "note": note, "who": who, "at": iso(Some(now)) }))
    }

    /// The triage marks as a labels file for `dfp eval` (`id,label,kind`): `malicious` is 1, `benign` 0,
    /// `needs_review` is left out; an incident's mark applies to each of its events that has no mark of its
    /// own. `kind` says where the label came from (`triage-event`, `triage-incident`).
    pub fn labels_csv(&self) -> Result<String> {
        let db = self.read()?;
        let mut labels: Vec<(String, bool, &str)> = Vec::new();
        let mut own = std::collections::HashSet::new();
        let mut stmt = db
            .prepare("SELECT target_id, label FROM marks WHERE target = 'event' ORDER BY target_id")
            .map_err(|e| self.fail(e))?;
        for r in
            stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(|e| self.fail(e))?
        {
            let (id, label) = r.map_err(|e| self.fail(e))?;
            own.insert(id.clone());
            if label != "needs_review" {
                labels.push((id, label == "malicious", "triage-event"));
            }
        }
        let mut stmt = db
            .prepare(
                "SELECT i.event_ids, m.label FROM marks m JOIN incidents i ON i.incident_id = m.target_id
                 WHERE m.target = 'incident' AND m.label != 'needs_review' ORDER BY m.target_id",
            )
            .map_err(|e| self.fail(e))?;
        for r in stmt
            .query_map([], |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.fail(e))?
        {
            let (ids, label) = r.map_err(|e| self.fail(e))?;
            let ids: Vec<String> = ids.as_deref().map(event_ids).unwrap_or_default();
            for id in ids {
                if own.insert(id.clone()) {
                    labels.push((id, label == "malicious", "triage-incident"));
                }
            }
        }
        csv_text(
            ["id", "label", "kind"],
            labels.into_iter().map(|(id, label, kind)| [id, (if label { "1" } else { "0" }).into(), kind.into()]),
        )
    }

    /// The suppressions (active first, then removed), newest first.
    pub fn suppressions(&self) -> Result<Value> {
        let db = self.read()?;
        let mut stmt = db
            .prepare(
                "SELECT id, username, field, value, until_us, note, who, created_us, removed_us FROM suppressions
                 ORDER BY removed_us IS NOT NULL, id DESC",
            )
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(json!({ "id": r.get::<_, i64>(0)?, "username": r.get::<_, String>(1)?, "field": r.get::<_, String>(2)?,
                           "value": r.get::<_, String>(3)?, "until": iso(r.get(4)?), "note": r.get::<_, String>(5)?,
                           "who": r.get::<_, String>(6)?, "created": iso(r.get(7)?), "removed": iso(r.get(8)?) }))
            })
            .map_err(|e| self.fail(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.fail(e))?;
        Ok(json!({ "rows": rows }))
    }

    /// Adds a suppression: `username`'s events whose `field` (one of [`SUPPRESSION_FIELDS`]) is `value`,
    /// up to `until` (a date, inclusive, or an RFC 3339 time; empty: no end).
    pub fn suppress(
        &self,
        username: &str,
        field: &str,
        value: &str,
        until: &str,
        note: &str,
        who: &str,
    ) -> Result<Value> {
        check_text("username", username, 1, 500)?;
        check_text("value", value, 1, 500)?;
        check_text("note", note, 0, 2000)?;
        check_text("who", who, 1, 100)?;
        if !SUPPRESSION_FIELDS.contains(&field) {
            return Err(bad(format!("\"field\" must be one of {}, not \"{field}\"", SUPPRESSION_FIELDS.join(", "))));
        }
        let until_us = match until.trim() {
            "" => None,
            t => Some(parse_bound(t, true).map_err(|m| bad(format!("\"until\": {m}")))?),
        };
        let db = self.write()?;
        let now = now_micros();
        db.execute(
            "INSERT INTO suppressions (username, field, value, until_us, note, who, created_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params![username.trim(), field, value.trim(), until_us, note.trim(), who.trim(), now],
        )
        .map_err(|e| self.fail(e))?;
        let id = db.last_insert_rowid();
        Ok(json!({ "id": id, "username": username.trim(), "field": field, "value": value.trim(),
                   "until": iso(until_us), "note": note.trim(), "who": who.trim() }))
    }

    /// Removes suppression `id` (it stays listed, as removed).
    pub fn unsuppress(&self, id: i64) -> Result<Value> {
        let db = self.write()?;
        let now = now_micros();
        let n = db
            .execute("UPDATE suppressions SET removed_us = ?2 WHERE id = ?1 AND removed_us IS NULL", [id, now])
            .map_err(|e| self.fail(e))?;
        if n == 0 {
            return Err(ConsoleError::NotFound(format!("no active suppression #{id}")));
        }
        Ok(json!({ "id": id, "removed": iso(Some(now)) }))
    }

    /// The active suppressions as the CSV the `suppress` stage reads (`path:`).
    pub fn suppressions_csv(&self) -> Result<String> {
        let db = self.read()?;
        let mut stmt = db
            .prepare(
                "SELECT username, field, value, until_us, note FROM suppressions WHERE removed_us IS NULL ORDER BY id",
            )
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(|e| self.fail(e))?;
        let mut records = Vec::new();
        for r in rows {
            let (user, field, value, until, note) = r.map_err(|e| self.fail(e))?;
            records.push([user, field, value, until.map(format_micros).unwrap_or_default(), note]);
        }
        csv_text(["username", "field", "value", "until", "note"], records)
    }
}

/// Fills a new alert store at `path` with `events` synthetic events (for benchmarks of the console's
/// queries): `users` users over 30 days, every 20th event an alert with a detail row, one incident per 50
/// alerts. Returns how many alerts it wrote.
pub fn fill_synthetic(path: &Path, events: u64, users: u64) -> Result<u64> {
    let db = open_store(path).map_err(|e| ConsoleError::Store(e.to_string()))?;
    let fail = |e: rusqlite::Error| ConsoleError::Store(format!("{}: {e}", path.display()));
    db.execute_batch("BEGIN").map_err(fail)?;
    let start = parse_bound("2026-10-01", false).map_err(bad)?;
    let span = 30 * 86_400_000_000i64;
    let (countries, apps, browsers) = (
        ["US", "GB", "DE", "PT", "FR", "IN"],
        ["Office 365", "Teams", "Outlook", "SharePoint"],
        ["Chrome", "Edge", "Firefox", "Safari"],
    );
    let mut alerts = 0u64;
    {
        let mut insert = db
            .prepare(
                "INSERT INTO events (key, id, time_us, username, score, mean_abs_z, alert, app, country, browser, ip,
                 model_kind, incident_id, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8, ?9, ?10, 'user', ?11, ?12)",
            )
            .map_err(fail)?;
        let mut incident = db
            .prepare(
                "INSERT OR REPLACE INTO incidents (incident_id, status, entity, username, users, first_us, last_us, events,
                 event_ids, reasons, peak_risk) VALUES (?1, 'closed', 'user', ?2, 1, ?3, ?3, 1, ?4, 'new device', ?5)",
            )
            .map_err(fail)?;
        for i in 0..events {
            let id = format!("bench-{i:09}");
            let user = format!("user{:04}@corp.example", (i * 7919) % users.max(1));
            let t = start + ((i as i64).wrapping_mul(2_654_435_761) % span).abs();
            let alert = i % 20 == 0;
            let score = if alert { 2.1 + (i % 97) as f64 / 10.0 } else { (i % 19) as f64 / 10.0 };
            let pick = |n: usize, salt: u64| ((i.wrapping_mul(31).wrapping_add(salt)) % n as u64) as usize;
            let incident_id = (alert && (i / 20) % 50 == 0).then(|| format!("inc-{i}"));
            let detail = alert.then(|| {
                json!({ "id": id, "appDisplayName_z_loss": score, "logcount_z_loss": 0.5, "top_features": "appDisplayName" })
                    .to_string()
            });
            insert
                .execute(rusqlite::params![
                    event_key(&id),
                    id,
                    t,
                    user,
                    score,
                    alert,
                    apps[pick(apps.len(), 1)],
                    countries[pick(countries.len(), 2)],
                    browsers[pick(browsers.len(), 3)],
                    format!("198.51.{}.{}", pick(256, 4), pick(256, 5)),
                    incident_id,
                    detail,
                ])
                .map_err(fail)?;
            if let Some(inc) = incident_id {
                incident.execute(rusqlite::params![inc, user, t, id, score]).map_err(fail)?;
            }
            alerts += u64::from(alert);
        }
    }
    recount_event_hours(&db).map_err(fail)?;
    db.execute_batch("COMMIT; ANALYZE").map_err(fail)?;
    Ok(alerts)
}

/// The columns of an incident in lists.
const INCIDENT_COLUMNS: &str = "incident_id, status, entity, username, source, users, first_us, last_us, events,
    reasons, peak_risk, (SELECT label FROM marks m WHERE m.target = 'incident' AND m.target_id = i.incident_id),
    (SELECT note FROM marks m WHERE m.target = 'incident' AND m.target_id = i.incident_id)";

fn incident_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Value> {
    let s =
        |i: usize| -> rusqlite::Result<Value> { Ok(r.get::<_, Option<String>>(i)?.map_or(Value::Null, Value::String)) };
    Ok(json!({
        "incident_id": s(0)?, "status": s(1)?, "entity": s(2)?, "username": s(3)?, "source": s(4)?,
        "users": r.get::<_, Option<i64>>(5)?, "first_seen": iso(r.get(6)?), "last_seen": iso(r.get(7)?),
        "events": r.get::<_, Option<i64>>(8)?, "reasons": s(9)?, "peak_risk": r.get::<_, Option<f64>>(10)?,
        "mark": s(11)?,
    }))
}

/// An incident's `event_ids` as `correlate` writes them (comma-separated), or as a JSON array.
fn event_ids(text: &str) -> Vec<String> {
    let text = text.trim();
    if text.starts_with('[') {
        if let Ok(ids) = serde_json::from_str::<Vec<String>>(text) {
            return ids;
        }
    }
    text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

fn check_text(name: &str, v: &str, min: usize, max: usize) -> Result<()> {
    let n = v.trim().chars().count();
    if n < min {
        return Err(bad(format!("\"{name}\" must not be empty")));
    }
    if n > max {
        return Err(bad(format!("\"{name}\" is longer than {max} characters")));
    }
    if v.chars().any(|c| c.is_control() && c != '\n') {
        return Err(bad(format!("\"{name}\" holds control characters")));
    }
    Ok(())
}

/// A CSV file's text: the header, then the records (quoted where they need it).
fn csv_text<const N: usize>(header: [&str; N], records: impl IntoIterator<Item = [String; N]>) -> Result<String> {
    let fail = |e: csv::Error| ConsoleError::Store(format!("writing CSV: {e}"));
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header).map_err(fail)?;
    for r in records {
        w.write_record(&r).map_err(fail)?;
    }
    let bytes = w.into_inner().map_err(|e| ConsoleError::Store(format!("writing CSV: {e}")))?;
    String::from_utf8(bytes).map_err(|e| ConsoleError::Store(format!("writing CSV: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Console) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.db");
        let db = open_store(&path).unwrap();
        let mut insert = db
            .prepare(
                "INSERT INTO events (key, id, time_us, username, score, mean_abs_z, alert, app, country, ip, incident_id, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .unwrap();
        let base = parse_bound("2026-11-01", false).unwrap();
        for i in 0..200i64 {
            let id = format!("ev-{i}");
            let user = if i % 2 == 0 { "ann@corp.example" } else { "<b>bob</b>" };
            let score = (i % 10) as f64 * 0.5;
            let alert = score > 2.0;
            let detail = alert
                .then(|| json!({ "id": id, "app_z_loss": score, "app": "Office", "hour_z_loss": -0.5 }).to_string());
            insert
                .execute(rusqlite::params![
                    event_key(&id),
                    id,
                    base + i * 3_600_000_000,
                    user,
                    score,
                    alert,
                    if i % 3 == 0 { "Office" } else { "Teams" },
                    if i % 4 == 0 { "PT" } else { "US" },
                    format!("198.51.100.{}", i % 7),
                    (i == 9).then_some("inc-1"),
                    detail,
                ])
                .unwrap();
        }
        db.execute(
            "INSERT INTO incidents (incident_id, status, entity, username, first_us, last_us, events, event_ids, reasons, peak_risk)
             VALUES ('inc-1', 'closed', 'user', '<b>bob</b>', ?1, ?2, 2, '[\"ev-9\",\"ev-19\"]', 'new device', 4.5)",
            [base + 9 * 3_600_000_000, base + 19 * 3_600_000_000],
        )
        .unwrap();
        recount_event_hours(&db).unwrap();
        let console = Console::open(&path).unwrap();
        (dir, console)
    }

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn lists_filter_page_and_count_exactly() {
        let (_d, c) = store();
        let all = c.events(&q(&[])).unwrap();
        assert_eq!(all["total"], 100, "scores 2.5 to 4.5: 5 of every 10 events");
        let page = c.events(&q(&[("per_page", "30"), ("page", "3")])).unwrap();
        assert_eq!(page["rows"].as_array().unwrap().len(), 30);
        let bob = c.events(&q(&[("user", "<b>bob</b>"), ("country", "US"), ("min_score", "4")])).unwrap();
        for r in bob["rows"].as_array().unwrap() {
            assert_eq!(r["username"], "<b>bob</b>");
            assert!(r["score"].as_f64().unwrap() >= 4.0);
        }
        assert_eq!(bob["total"], 20);
        let text = c.events(&q(&[("q", "100.3"), ("alerts", "0")])).unwrap();
        assert!(text["total"].as_i64().unwrap() > 0);
        assert!(text["rows"].as_array().unwrap().iter().all(|r| r["ip"].as_str().unwrap().contains("100.3")));
        let none = c.events(&q(&[("q", "%")])).unwrap();
        assert_eq!(none["total"], 0, "a % in the text is a character, not a pattern");
        let ranged = c.events(&q(&[("from", "2026-11-02"), ("to", "2026-11-02"), ("alerts", "0")])).unwrap();
        assert_eq!(ranged["total"], 24);
    }

    #[test]
    fn bad_parameters_are_named() {
        let (_d, c) = store();
        let err = |r: Result<Value>| match r {
            Err(ConsoleError::BadRequest(m)) => m,
            other => panic!("expected a bad request, got {other:?}"),
        };
        assert!(err(c.events(&q(&[("page", "0")]))).contains("\"page\" must be a whole number from 1"));
        assert!(err(c.events(&q(&[("min_score", "high")]))).contains("\"min_score\" must be a number"));
        assert!(err(c.events(&q(&[("from", "yesterday")]))).contains("\"from\""));
        assert!(err(c.events(&q(&[("colour", "red")]))).contains("unknown parameter \"colour\""));
        assert!(err(c.events(&q(&[("status", "evil")]))).contains("must be one of unmarked"));
        assert!(err(c.overview(&q(&[("from", "2026-12-01"), ("to", "2026-11-01")]))).contains("before"));
        assert!(err(c.heatmap(&q(&[("bins", "100000")]))).contains("\"bins\""));
        assert!(err(c.mark("event", "ev-1", "", "evil", "", "ann")).contains("\"label\""));
        assert!(err(c.mark("event", "ev-1", "", "benign", "", "")).contains("\"who\" must not be empty"));
        assert!(err(c.suppress("bob", "colour", "red", "", "", "ann")).contains("\"field\""));
        assert!(err(c.suppress("bob", "country", "PT", "soon", "", "ann")).contains("\"until\""));
        assert!(matches!(c.event("nope", &[]), Err(ConsoleError::NotFound(_))));
        assert!(err(c.event("ev-3", &q(&[("time", "yesterday")]))).contains("\"time\""));
        assert!(err(c.event("ev-3", &q(&[("colour", "red")]))).contains("unknown parameter \"colour\""));
        assert!(err(c.mark("event", "ev-3", "soon", "benign", "", "ann")).contains("\"time\""));
        assert!(matches!(c.mark("incident", "nope", "", "benign", "", "ann"), Err(ConsoleError::NotFound(_))));
        assert!(matches!(c.unsuppress(99), Err(ConsoleError::NotFound(_))));
    }

    #[test]
    fn an_event_is_found_by_its_time_and_id_and_an_alert_by_its_id_alone() {
        let (_d, c) = store();
        // ev-3 (not an alert) at 03:00:00, ev-8 (an alert) at 08:00:00.
        for (id, time) in [("ev-3", "2026-11-01T03:00:00Z"), ("ev-3", "2026-11-01T03:00:00.999Z"), ("ev-8", "")] {
            let query = if time.is_empty() { vec![] } else { q(&[("time", time)]) };
            let event = c.event(id, &query).unwrap();
            assert_eq!(event["event"]["id"], id);
        }
        // Without its time, or at another one, a plain event is still found (by reading every event).
        assert_eq!(c.event("ev-3", &[]).unwrap()["event"]["time"], "2026-11-01T03:00:00Z");
        assert_eq!(c.event("ev-3", &q(&[("time", "2026-11-02")])).unwrap()["event"]["id"], "ev-3");
        assert!(matches!(c.event("ev-300", &q(&[("time", "2026-11-01T03:00:00Z")])), Err(ConsoleError::NotFound(_))));
        c.mark("event", "ev-3", "2026-11-01T03:00:00Z", "benign", "", "ann").unwrap();
        assert_eq!(c.event("ev-3", &[]).unwrap()["marks"]["current"]["label"], "benign");
        // The lookups use the indexes meant for them.
        let db = c.read().unwrap();
        let plan = |sql: &str, params: i64| -> String {
            let mut stmt = db.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = stmt.query_map(rusqlite::params_from_iter(1..=params), |r| r.get::<_, String>(3)).unwrap();
            rows.map(|r| r.unwrap()).collect::<Vec<String>>().join("; ")
        };
        let timed = plan("SELECT rowid FROM events WHERE time_us >= ?1 AND time_us < ?2 AND key = ?3 AND id = ?4", 4);
        assert!(timed.contains("events_time_key (time_us>? AND time_us<?)"), "{timed}");
        let kept = plan("SELECT rowid FROM events WHERE key = ?1 AND detail IS NOT NULL AND id = ?2", 2);
        assert!(kept.contains("USING INDEX events_kept_key (key=?)"), "{kept}");
    }

    #[test]
    fn marks_become_labels_and_statuses() {
        let (_d, c) = store();
        c.mark("event", "ev-8", "", "malicious", "phished", "ann").unwrap();
        c.mark("event", "ev-9", "", "needs_review", "", "ann").unwrap();
        c.mark("event", "ev-9", "", "benign", "travel", "bob").unwrap();
        c.mark("incident", "inc-1", "", "malicious", "", "ann").unwrap();
        let labels = c.labels_csv().unwrap();
        assert_eq!(labels, "id,label,kind\nev-8,1,triage-event\nev-9,0,triage-event\nev-19,1,triage-incident\n");
        let benign = c.events(&q(&[("status", "benign")])).unwrap();
        assert_eq!(benign["total"], 1);
        assert_eq!(benign["rows"][0]["mark"], "benign");
        let unmarked = c.events(&q(&[("status", "unmarked")])).unwrap();
        assert_eq!(unmarked["total"], 98);
        let event = c.event("ev-9", &[]).unwrap();
        assert_eq!(event["marks"]["history"].as_array().unwrap().len(), 2);
        assert_eq!(event["marks"]["current"]["who"], "bob");
        assert_eq!(event["features"][0]["feature"], "app", "largest |z| first");
        assert_eq!(event["features"][0]["value"], "Office");
        assert!(event["profile"]["country"].as_array().unwrap().iter().any(|v| v["value"] == "US"));
        let incident = c.incident("inc-1").unwrap();
        assert_eq!(incident["events"].as_array().unwrap().len(), 2);
        assert_eq!(incident["incident"]["mark"], "malicious");
    }

    #[test]
    fn suppressions_are_added_listed_exported_and_removed() {
        let (_d, c) = store();
        let v0 = c.version().unwrap();
        let s = c.suppress("bob", "country", "PT", "2026-12-20", "trip, Lisbon", "ann").unwrap();
        assert_ne!(c.version().unwrap(), v0, "the console refreshes after a change");
        let csv = c.suppressions_csv().unwrap();
        assert_eq!(
            csv,
            "username,field,value,until,note\nbob,country,PT,2026-12-20T23:59:59.999999Z,\"trip, Lisbon\"\n"
        );
        c.unsuppress(s["id"].as_i64().unwrap()).unwrap();
        assert_eq!(c.suppressions_csv().unwrap(), "username,field,value,until,note\n");
        assert!(c.suppressions().unwrap()["rows"][0]["removed"].is_string());
    }

    #[test]
    fn event_counts_from_whole_hours_and_edges_match_a_count_of_every_event() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_store(&dir.path().join("alerts.db")).unwrap();
        let base = parse_bound("2026-11-01", false).unwrap();
        // Events on, just before and just after hour boundaries, around the epoch, and one without a time.
        let mut times: Vec<Option<i64>> = vec![None, Some(-5), Some(0), Some(HOUR_US - 1), Some(HOUR_US)];
        for i in 0..300i64 {
            times.push(Some(base + (i * 7_919 % 97) * HOUR_US / 4 + [0, 1, -1][i as usize % 3]));
        }
        for (i, t) in times.iter().enumerate() {
            let id = format!("e{i}");
            db.execute(
                "INSERT INTO events (key, id, time_us, alert) VALUES (?1, ?2, ?3, 0)",
                rusqlite::params![event_key(&id), id, t],
            )
            .unwrap();
        }
        recount_event_hours(&db).unwrap();
        let mut counter = EventCounter::new(&db).unwrap();
        let mut exact = db.prepare("SELECT COUNT(*) FROM events WHERE time_us >= ?1 AND time_us < ?2").unwrap();
        let edges = [-HOUR_US, -5, 0, 1, HOUR_US - 1, HOUR_US, 2 * HOUR_US, base - 1, base, base + 1];
        let mut ranges: Vec<(i64, i64)> = edges.iter().flat_map(|&s| edges.iter().map(move |&e| (s, e))).collect();
        for i in 0..200i64 {
            let s = base - HOUR_US + i * 1_234_567_891 % (30 * HOUR_US);
            ranges.push((s, s + i * 987_654_321 % (20 * HOUR_US)));
            ranges.push((s - s % HOUR_US, s - s % HOUR_US + (i % 9) * HOUR_US));
        }
        for (s, e) in ranges {
            let want: i64 = exact.query_row([s, e], |r| r.get(0)).unwrap();
            assert_eq!(counter.count(s, e).unwrap(), want, "events in [{s}, {e})");
        }
    }

    #[test]
    fn overview_and_heatmap_cover_the_stored_range() {
        let (_d, c) = store();
        let o = c.overview(&q(&[("bins", "10")])).unwrap();
        assert_eq!(o["events"], 200);
        assert_eq!(o["alerts"], 100);
        let series = o["series"].as_array().unwrap();
        assert_eq!(series.iter().map(|b| b["events"].as_i64().unwrap()).sum::<i64>(), 200);
        assert_eq!(series.iter().map(|b| b["alerts"].as_i64().unwrap()).sum::<i64>(), 100);
        assert_eq!(o["by_country"][0]["value"], "US");
        let h = c.heatmap(&q(&[("bins", "5")])).unwrap();
        let users = h["users"].as_array().unwrap();
        assert_eq!(users.len(), 2);
        let events: i64 =
            users.iter().flat_map(|u| u["events"].as_array().unwrap().iter()).map(|v| v.as_i64().unwrap()).sum();
        assert_eq!(events, 200);
        assert_eq!(users[0]["cells"].as_array().unwrap().len(), 5);
    }
}
