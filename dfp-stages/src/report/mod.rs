//! `dfp report`: one self-contained HTML page of scored events for analysts.
//!
//! Reads scored events ([`crate::scored`]: JSON lines or CSV, a file, a folder of part files or a glob, as
//! an inference pipeline writes them), keeps the alerts (rows whose score field is strictly above the
//! threshold), at most `max_alerts` of them (the highest-scoring), and writes one HTML file: the page of
//! `template.html` (inline CSS and vanilla JavaScript, no external resource) with the alerts embedded as
//! JSON in `<script type="application/json" id="dfp-data">`. The script draws alerts over time, the top
//! users, the alerts table with each alert's per-feature z-scores, and the filters that drive all three.
//!
//! With `incidents` (the `correlate` stage's second output: a row each time an incident opens, grows or
//! closes), the page lists each incident once, as its last row says, highest peak risk first; clicking one
//! shows its alerts (the rows whose `incident_id` is the incident's).
//!
//! The page's columns (app, browser, OS, place) are the columns of the rows' log family roles: the family
//! given, else the one whose model prefix the rows' `model_name` carries. Feature columns are every key
//! ending in `_z_loss`; every other scalar field is shown in the alert's details.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashSet};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use dfp_core::{Families, Family};
use serde_json::{json, Map, Number, Value};

use crate::scored::{self, ScoredError};

/// The page; `{{TITLE}}` and `{{DATA}}` are replaced.
const TEMPLATE: &str = include_str!("template.html");

/// Suffix of the per-feature z-score columns the `score` stage writes.
const Z_SUFFIX: &str = "_z_loss";

/// Longest text kept from one field (characters); longer values are cut with `…`.
const MAX_TEXT: usize = 300;

/// Why a report cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The scores could not be read.
    #[error(transparent)]
    Scored(#[from] ScoredError),
    /// An option is out of range.
    #[error("{0}")]
    Invalid(String),
    /// The page could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The page.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// What [`write_report`] does.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Scored events: a file, a folder or a glob.
    pub scores: String,
    /// The HTML file to write.
    pub out: PathBuf,
    /// The score column; alerts are the rows where it is strictly above `threshold`.
    pub field: String,
    /// Alert threshold on `field`.
    pub threshold: f64,
    /// Page title (default: `"dfp alerts: <scores file name>"`).
    pub title: Option<String>,
    /// Keep at most this many alerts in the page, the highest-scoring.
    pub max_alerts: usize,
    /// The rows' log family (default: found from the rows' model names).
    pub family: Option<String>,
    /// Incident rows (a file, a folder or a glob) to list with the alerts.
    pub incidents: Option<String>,
}

/// What [`write_report`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// The page.
    pub out: PathBuf,
    /// Events read.
    pub events: usize,
    /// Alerts among them.
    pub alerts: usize,
    /// Alerts in the page.
    pub kept: usize,
    /// Distinct users with an alert.
    pub alert_users: usize,
    /// The page's size.
    pub bytes: usize,
    /// The score field and threshold.
    pub field: String,
    /// The threshold.
    pub threshold: f64,
    /// Distinct incidents read, when incident rows were given.
    pub incidents: Option<usize>,
}

impl std::fmt::Display for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = if self.kept < self.alerts {
            format!(" (the page keeps the {} highest-scoring)", self.kept)
        } else {
            String::new()
        };
        write!(
            f,
            "{}: {} alerts of {} events ({} > {}), {} users{kept}{}, {} KiB",
            self.out.display(),
            self.alerts,
            self.events,
            self.field,
            self.threshold,
            self.alert_users,
            self.incidents.map(|n| format!(", {n} incidents")).unwrap_or_default(),
            self.bytes.div_ceil(1024)
        )
    }
}

/// Writes the report page; `families` resolves the rows' family.
pub fn write_report(options: &ReportOptions, families: &Families) -> Result<Written, ReportError> {
    if options.max_alerts == 0 {
        return Err(ReportError::Invalid("max_alerts must be at least 1".into()));
    }
    if options.threshold.is_nan() {
        return Err(ReportError::Invalid("the threshold must be a number".into()));
    }
    let scan = scan(&options.scores, &options.field, options.threshold, options.max_alerts)?;
    let incidents = options.incidents.as_deref().map(|spec| read_incidents(spec, options.max_alerts)).transpose()?;
    let family = match &options.family {
        Some(name) => Some(families.require(name).map_err(ReportError::Invalid)?.clone()),
        None => scan.model_prefix.as_deref().and_then(|p| families.by_model_prefix(p)).cloned(),
    };
    let columns = Columns::of(family.as_deref());
    let title = match &options.title {
        Some(t) => t.clone(),
        None => {
            let name = std::path::Path::new(&options.scores)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| options.scores.clone());
            format!("dfp alerts: {name}")
        }
    };
    let generated = rfc3339_utc(SystemTime::now());
    let mut data = page_data(&scan, &columns, &title, &options.scores, &options.field, options.threshold, &generated);
    if let (Some((kept, count)), Value::Object(map)) = (&incidents, &mut data) {
        map.insert("incidents".into(), Value::Array(kept.clone()));
        map.insert("incident_count".into(), json!(count));
    }
    let html = render(&title, &data)?;
    if let Some(dir) = options.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ReportError::Write { path: dir.to_path_buf(), source })?;
    }
    std::fs::write(&options.out, &html).map_err(|source| ReportError::Write { path: options.out.clone(), source })?;
    Ok(Written {
        out: options.out.clone(),
        events: scan.events,
        alerts: scan.alert_count,
        kept: scan.alerts.len(),
        alert_users: scan.alert_users,
        bytes: html.len(),
        field: options.field.clone(),
        threshold: options.threshold,
        incidents: incidents.map(|(_, count)| count),
    })
}

/// Reads incident rows (each incident's last row wins: incidents are written again as they grow and close)
/// and returns at most `max` of them, highest peak risk first, in the page's shape
/// `{id, status, user, first, last, events, peak, reasons, ids}`, with the number of distinct incidents.
fn read_incidents(spec: &str, max: usize) -> Result<(Vec<Value>, usize), ScoredError> {
    let mut last: std::collections::HashMap<String, (usize, Map<String, Value>)> = std::collections::HashMap::new();
    let mut order = 0usize;
    scored::for_each_row(spec, |origin, row| {
        let id = match row.get("incident_id") {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            Some(v) => return Err(origin.error(format!("`incident_id` is not an id: {v}"))),
            None => {
                return Err(
                    origin.error("no `incident_id`: not an incident row (the correlate stage's `incidents` output)")
                )
            }
        };
        let peak = scored::number(origin, &row, "peak_risk")?;
        if !peak.is_finite() {
            return Err(origin.error(format!("`peak_risk` is not a finite number: {peak}")));
        }
        order += 1;
        last.insert(id, (order, row));
        Ok(())
    })?;
    let count = last.len();
    let mut rows: Vec<(usize, Map<String, Value>)> = last.into_values().collect();
    let peak = |row: &Map<String, Value>| row.get("peak_risk").and_then(Value::as_f64).unwrap_or(f64::MIN);
    rows.sort_by(|a, b| peak(&b.1).total_cmp(&peak(&a.1)).then(a.0.cmp(&b.0)));
    rows.truncate(max);
    let text = |row: &Map<String, Value>, key: &str| first_text(row, key).map_or(Value::Null, Value::String);
    let kept = rows
        .iter()
        .map(|(_, row)| {
            json!({
                "id": text(row, "incident_id"),
                "status": text(row, "status"),
                // A source incident (a password spray over users) is named by its address prefix.
                "user": first_text(row, "username")
                    .or_else(|| first_text(row, "source").map(|s| format!("source {s}")))
                    .map_or(Value::Null, Value::String),
                "entity": text(row, "entity"),
                "first": row.get("first_seen").cloned().unwrap_or(Value::Null),
                "last": row.get("last_seen").cloned().unwrap_or(Value::Null),
                "events": row.get("events").cloned().unwrap_or(Value::Null),
                "peak": number(peak(row)),
                "reasons": text(row, "reasons"),
                "ids": text(row, "event_ids"),
            })
        })
        .collect();
    Ok((kept, count))
}

/// The columns the page shows on their own: (page name, row key). The event's id, user and time are in
/// every family; the rest come from the family's roles.
struct Columns(Vec<(&'static str, String)>);

impl Columns {
    fn of(family: Option<&Family>) -> Columns {
        let mut c: Vec<(&'static str, String)> = vec![("id", "id".into()), ("user", "username".into())];
        if let Some(f) = family {
            for (page, role) in [
                ("app", "app"),
                ("browser", "browser"),
                ("os", "os"),
                ("location", "location"),
                ("city", "city"),
                ("country", "country"),
            ] {
                if let Some(column) = f.roles.get(role) {
                    c.push((page, column.to_string()));
                }
            }
        }
        c.extend([("kind", "model_kind".into()), ("model", "model_name".into()), ("version", "model_version".into())]);
        Columns(c)
    }
}

/// What one pass over the scores found.
struct Scan {
    /// The model prefix of the first row with a `DFP-<prefix>-…` model name.
    model_prefix: Option<String>,
    /// Events read (non-blank lines).
    events: usize,
    /// Distinct users among all events.
    users: usize,
    /// Events above the threshold.
    alert_count: usize,
    /// Distinct users among those.
    alert_users: usize,
    /// The kept alerts, highest score first (ties: file order).
    alerts: Vec<Alert>,
}

/// One kept alert: its score, its line in the file (for tie-breaking) and the whole row.
struct Alert {
    score: f64,
    line: usize,
    row: Map<String, Value>,
}

impl Ord for Alert {
    /// Greater = ranks higher: higher score, then the earlier line.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then(other.line.cmp(&self.line))
    }
}

impl PartialOrd for Alert {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Alert {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Alert {}

/// Reads the scores: counts events and users, keeps the `max` highest-scoring alerts.
fn scan(spec: &str, field: &str, threshold: f64, max: usize) -> Result<Scan, ScoredError> {
    let (mut events, mut alert_count, mut line) = (0usize, 0usize, 0usize);
    let (mut users, mut alert_users) = (HashSet::new(), HashSet::new());
    let mut model_prefix = None;
    // A min-heap of the best `max` alerts so far: the weakest is popped when one more arrives.
    let mut heap: BinaryHeap<Reverse<Alert>> = BinaryHeap::new();
    scored::for_each_row(spec, |origin, row| {
        events += 1;
        line += 1;
        let score = scored::number(origin, &row, field).map_err(|_| match row.get(field) {
            None => origin.error(format!("no score field `{field}` (choose one with --field)")),
            Some(v) => origin.error(format!("score field `{field}` is not a number: {v}")),
        })?;
        if model_prefix.is_none() {
            model_prefix = row
                .get("model_name")
                .and_then(Value::as_str)
                .and_then(|m| m.strip_prefix("DFP-"))
                .and_then(|rest| rest.split_once('-'))
                .map(|(prefix, _)| prefix.to_string());
        }
        let user = first_text(&row, "username");
        if let Some(u) = &user {
            if !users.contains(u) {
                users.insert(u.clone());
            }
        }
        if score <= threshold {
            return Ok(());
        }
        alert_count += 1;
        if let Some(u) = user {
            alert_users.insert(u);
        }
        heap.push(Reverse(Alert { score, line, row }));
        if heap.len() > max {
            heap.pop();
        }
        Ok(())
    })?;
    let mut alerts: Vec<Alert> = heap.into_iter().map(|Reverse(a)| a).collect();
    alerts.sort_by(|a, b| b.cmp(a));
    Ok(Scan { model_prefix, events, users: users.len(), alert_count, alert_users: alert_users.len(), alerts })
}

/// Columns `add-user-data` adds start with this.
const USER_PREFIX: &str = "user_";

/// The JSON the page's script reads.
///
/// Each alert is `{id, ts, user, app, browser, os, location, city, country, kind, model, version, score,
/// top, z, x, u}`: `z` holds the z-scores in the order of the top-level `features`, `x` the other fields in
/// the order of `extra`, `u` the user context (`user_*` columns of `add-user-data`) in the order of
/// `context` (`null` where a row lacks one).
fn page_data(
    scan: &Scan,
    columns: &Columns,
    title: &str,
    source: &str,
    field: &str,
    threshold: f64,
    generated: &str,
) -> Value {
    let mut features: Vec<String> = Vec::new();
    let mut extra: Vec<String> = Vec::new();
    let mut context: Vec<String> = Vec::new();
    let (mut seen_features, mut seen_extra) = (HashSet::new(), HashSet::new());
    for alert in &scan.alerts {
        let taken = taken_keys(&alert.row, columns, field);
        for (key, value) in &alert.row {
            if let Some(feature) = key.strip_suffix(Z_SUFFIX) {
                if seen_features.insert(key.as_str()) {
                    features.push(feature.to_string());
                }
            } else if !taken.contains(key.as_str()) && !value.is_null() && seen_extra.insert(key.as_str()) {
                // What `add-user-data` attached goes to the alert's "User" section.
                if key.starts_with(USER_PREFIX) {
                    context.push(key.clone());
                } else {
                    extra.push(key.clone());
                }
            }
        }
    }
    let alerts: Vec<Value> = scan
        .alerts
        .iter()
        .map(|alert| {
            let row = &alert.row;
            let mut out = Map::new();
            for (name, key) in &columns.0 {
                out.insert((*name).to_string(), first_text(row, key).map_or(Value::Null, Value::String));
            }
            out.insert("ts".into(), row.get("timestamp").cloned().unwrap_or(Value::Null));
            out.insert("inc".into(), first_text(row, "incident_id").map_or(Value::Null, Value::String));
            out.insert("score".into(), number(alert.score));
            out.insert("top".into(), Value::Array(top_features(row).into_iter().map(Value::String).collect()));
            let z = features
                .iter()
                .map(|f| row.get(&format!("{f}{Z_SUFFIX}")).and_then(Value::as_f64).map_or(Value::Null, number));
            out.insert("z".into(), Value::Array(z.collect()));
            out.insert(
                "x".into(),
                Value::Array(extra.iter().map(|k| row.get(k).map_or(Value::Null, compact)).collect()),
            );
            out.insert(
                "u".into(),
                Value::Array(context.iter().map(|k| row.get(k).map_or(Value::Null, compact)).collect()),
            );
            Value::Object(out)
        })
        .collect();
    json!({
        "title": title,
        "source": source,
        "generated": generated,
        "field": field,
        "threshold": threshold,
        "events": scan.events,
        "users": scan.users,
        "alert_count": scan.alert_count,
        "alert_users": scan.alert_users,
        "features": features,
        "extra": extra,
        "context": context.iter().map(|k| k.strip_prefix(USER_PREFIX).unwrap_or(k).replace('_', " ")).collect::<Vec<_>>(),
        "alerts": alerts,
    })
}

/// The row keys shown elsewhere than in the alert's extra fields.
fn taken_keys<'a>(row: &Map<String, Value>, columns: &'a Columns, field: &'a str) -> HashSet<&'a str> {
    let mut taken: HashSet<&str> = HashSet::from([field, "top_features", "timestamp"]);
    for (_, key) in &columns.0 {
        if row.get(key).is_some_and(|v| !v.is_null()) {
            taken.insert(key);
        }
    }
    taken
}

/// The row's `key` when it holds a string, number or boolean, as text.
fn first_text(row: &Map<String, Value>, key: &str) -> Option<String> {
    match row.get(key)? {
        Value::String(s) => Some(cut(s)),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `top_features` as a list: comma-separated text (the `score` stage) or an array of names.
fn top_features(row: &Map<String, Value>) -> Vec<String> {
    match row.get("top_features") {
        Some(Value::String(s)) => s.split(',').map(str::trim).filter(|f| !f.is_empty()).map(cut).collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(cut).collect(),
        _ => Vec::new(),
    }
}

/// A field value made small for the page: long text cut, fractions rounded, nested values as JSON text.
fn compact(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(cut(s)),
        Value::Number(n) if n.is_f64() => n.as_f64().map_or(Value::Null, number),
        Value::Array(_) | Value::Object(_) => Value::String(cut(&value.to_string())),
        other => other.clone(),
    }
}

/// `x` rounded to 4 decimals (`null` if not finite).
fn number(x: f64) -> Value {
    let rounded = (x * 1e4).round() / 1e4;
    Number::from_f64(if rounded.is_finite() { rounded } else { x }).map_or(Value::Null, Value::Number)
}

/// At most [`MAX_TEXT`] characters of `s`.
fn cut(s: &str) -> String {
    match s.char_indices().nth(MAX_TEXT) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_string(),
    }
}

/// The page: the template with the title (HTML-escaped) and the data (JSON that cannot end its script
/// element) filled in.
fn render(title: &str, data: &Value) -> Result<String, ReportError> {
    let json = script_json(data)?;
    let (head, tail) = TEMPLATE
        .split_once("{{DATA}}")
        .ok_or_else(|| ReportError::Invalid("report template has no {{DATA}}".into()))?;
    let title = html_escape(title);
    let (head, tail) = (head.replace("{{TITLE}}", &title), tail.replace("{{TITLE}}", &title));
    Ok(format!("{head}{json}{tail}"))
}

/// `value` as JSON safe inside a `<script>` element: every `<` is written `\u003c`, so neither `</script>`
/// nor `<!--` (which would change how the HTML parser looks for the end of the script) can appear. `<` only
/// occurs inside JSON strings, where `\u003c` means the same character.
fn script_json(value: &Value) -> Result<String, ReportError> {
    let text = serde_json::to_string(value)
        .map_err(|e| ReportError::Invalid(format!("cannot encode the report data: {e}")))?;
    Ok(text.replace('<', "\\u003c"))
}

/// Text safe in HTML content and attribute values.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `t` as RFC 3339 in UTC, to the second.
fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // `YYYY-MM-DDTHH:MM:SS.ffffffZ` without the fraction.
    let full = crate::time::format_micros(secs as i64 * 1_000_000);
    format!("{}Z", &full[..19])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_gregorian() {
        let day = |d: u64| rfc3339_utc(UNIX_EPOCH + std::time::Duration::from_secs(d * 86_400));
        assert_eq!(day(0), "1970-01-01T00:00:00Z");
        assert_eq!(day(11_016), "2000-02-29T00:00:00Z");
        assert_eq!(day(20_752), "2026-10-26T00:00:00Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400 + 3_723);
        assert_eq!(rfc3339_utc(t), "2000-02-29T01:02:03Z");
    }

    #[test]
    fn script_data_cannot_close_its_element() {
        let v = json!({"user": "x</script><!--<script>", "n": 1});
        let s = script_json(&v).unwrap();
        assert!(!s.contains('<'), "{s}");
        assert_eq!(serde_json::from_str::<Value>(&s).unwrap(), v);
    }

    #[test]
    fn the_title_is_escaped() {
        let page = render("a<b>&\"", &json!({})).unwrap();
        assert!(page.contains("<title>a&lt;b&gt;&amp;&quot;</title>"));
        assert!(!page.contains("{{"));
    }

    #[test]
    fn long_text_is_cut_on_a_character() {
        let s = "é".repeat(MAX_TEXT + 5);
        assert_eq!(cut(&s).chars().count(), MAX_TEXT + 1);
        assert_eq!(cut("short"), "short");
    }
}
