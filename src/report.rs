//! `dfp report`: one self-contained HTML page of scored events for analysts.
//!
//! Reads scored events (JSON lines, as an inference pipeline writes them), keeps the alerts (rows whose
//! score field is strictly above the threshold), at most `--max-alerts` of them (the highest-scoring), and
//! writes one HTML file: the page of `report/template.html` (inline CSS and vanilla JavaScript, no external
//! resource) with the alerts embedded as JSON in `<script type="application/json" id="dfp-data">`. The
//! script draws alerts over time, the top users, the alerts table with each alert's per-feature z-scores,
//! and the filters that drive all three.
//!
//! The rows of different log sources differ: the feature columns are every key ending in `_z_loss`, the
//! display columns are looked up under the names Azure, Duo and Okta outputs use, missing ones stay empty,
//! and every other scalar field is shown in the alert's details.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use dfp_core::json::kind_of;
use serde_json::{json, Map, Number, Value};

/// The page; `{{TITLE}}` and `{{DATA}}` are replaced.
const TEMPLATE: &str = include_str!("report/template.html");

/// Suffix of the per-feature z-score columns the `score` stage writes.
const Z_SUFFIX: &str = "_z_loss";

/// Longest text kept from one field (characters); longer values are cut with `…`.
const MAX_TEXT: usize = 300;

/// The columns the page shows on their own, each with the row keys that may hold it (first present wins:
/// Azure, then Duo and Okta names).
const COLUMNS: &[(&str, &[&str])] = &[
    ("id", &["id", "txid", "uuid"]),
    ("user", &["username", "user"]),
    ("app", &["appDisplayName", "application", "app"]),
    ("browser", &["deviceDetailbrowser", "accessdevicebrowser", "browser"]),
    ("os", &["deviceDetailoperatingSystem", "accessdeviceos", "os"]),
    ("location", &["location"]),
    ("city", &["city"]),
    ("country", &["country"]),
    ("kind", &["model_kind"]),
    ("model", &["model_name"]),
    ("version", &["model_version"]),
];

/// Row keys that may hold the event time (kept as written: RFC 3339 text or epoch number).
const TIME_KEYS: &[&str] = &["timestamp", "time", "published"];

/// Arguments of `dfp report`.
#[derive(Args)]
pub(crate) struct ReportArgs {
    /// Scored events (JSON lines, as written by an inference pipeline).
    #[arg(long)]
    scores: PathBuf,
    /// The HTML file to write.
    #[arg(long)]
    out: PathBuf,
    /// The score column; alerts are the rows where it is strictly above --threshold.
    #[arg(long, default_value = "mean_abs_z")]
    field: String,
    /// Alert threshold on --field.
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true)]
    threshold: f64,
    /// Page title (default: "dfp alerts: <scores file name>").
    #[arg(long)]
    title: Option<String>,
    /// Keep at most this many alerts in the page, the highest-scoring (the page says how many were left out).
    #[arg(long, default_value_t = 5000)]
    max_alerts: usize,
}

/// Writes the report and prints a one-line summary on stdout.
pub(crate) fn run(args: ReportArgs) -> Result<ExitCode> {
    ensure!(args.max_alerts > 0, "--max-alerts must be at least 1");
    ensure!(!args.threshold.is_nan(), "--threshold must be a number");
    let scan = scan(&args.scores, &args.field, args.threshold, args.max_alerts)?;
    let source = args.scores.display().to_string();
    let title = match &args.title {
        Some(t) => t.clone(),
        None => {
            let name =
                args.scores.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| source.clone());
            format!("dfp alerts: {name}")
        }
    };
    let data = page_data(&scan, &title, &source, &args.field, args.threshold, &rfc3339_utc(SystemTime::now()));
    let html = render(&title, &data)?;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&args.out, &html).with_context(|| format!("cannot write {}", args.out.display()))?;
    let kept = if scan.alerts.len() < scan.alert_count {
        format!(" (the page keeps the {} highest-scoring)", scan.alerts.len())
    } else {
        String::new()
    };
    println!(
        "{}: {} alerts of {} events ({} > {}), {} users{kept}, {} KiB",
        args.out.display(),
        scan.alert_count,
        scan.events,
        args.field,
        args.threshold,
        scan.alert_users,
        html.len().div_ceil(1024)
    );
    Ok(ExitCode::SUCCESS)
}

/// What one pass over the scores file found.
struct Scan {
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

/// Reads the scores file: counts events and users, keeps the `max` highest-scoring alerts.
fn scan(path: &Path, field: &str, threshold: f64, max: usize) -> Result<Scan> {
    let file = File::open(path).with_context(|| format!("cannot open scores file {}", path.display()))?;
    let (mut events, mut alert_count) = (0usize, 0usize);
    let (mut users, mut alert_users) = (HashSet::new(), HashSet::new());
    // A min-heap of the best `max` alerts so far: the weakest is popped when one more arrives.
    let mut heap: BinaryHeap<Reverse<Alert>> = BinaryHeap::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let at = || format!("{}:{}", path.display(), i + 1);
        let line = line.with_context(|| format!("{}: cannot read the line", at()))?;
        if line.trim().is_empty() {
            continue;
        }
        let row = match serde_json::from_str::<Value>(&line).with_context(|| format!("{}: not JSON", at()))? {
            Value::Object(row) => row,
            other => bail!("{}: expected a JSON object, found {}", at(), kind_of(&other)),
        };
        events += 1;
        let score = match row.get(field) {
            None => bail!("{}: no score field `{field}` (choose one with --field)", at()),
            Some(v) => v.as_f64().with_context(|| format!("{}: score field `{field}` is not a number: {v}", at()))?,
        };
        let user = first_text(&row, &["username", "user"]);
        if let Some(u) = &user {
            if !users.contains(u) {
                users.insert(u.clone());
            }
        }
        if score <= threshold {
            continue;
        }
        alert_count += 1;
        if let Some(u) = user {
            alert_users.insert(u);
        }
        heap.push(Reverse(Alert { score, line: i + 1, row }));
        if heap.len() > max {
            heap.pop();
        }
    }
    let mut alerts: Vec<Alert> = heap.into_iter().map(|Reverse(a)| a).collect();
    alerts.sort_by(|a, b| b.cmp(a));
    Ok(Scan { events, users: users.len(), alert_count, alert_users: alert_users.len(), alerts })
}

/// The JSON the page's script reads.
///
/// Each alert is `{id, ts, user, app, browser, os, location, city, country, kind, model, version, score,
/// top, z, x}`: `z` holds the z-scores in the order of the top-level `features`, `x` the other fields in the
/// order of `extra` (`null` where a row lacks one).
fn page_data(scan: &Scan, title: &str, source: &str, field: &str, threshold: f64, generated: &str) -> Value {
    let mut features: Vec<String> = Vec::new();
    let mut extra: Vec<String> = Vec::new();
    let (mut seen_features, mut seen_extra) = (HashSet::new(), HashSet::new());
    for alert in &scan.alerts {
        let taken = taken_keys(&alert.row, field);
        for (key, value) in &alert.row {
            if let Some(feature) = key.strip_suffix(Z_SUFFIX) {
                if seen_features.insert(key.as_str()) {
                    features.push(feature.to_string());
                }
            } else if !taken.contains(key.as_str()) && !value.is_null() && seen_extra.insert(key.as_str()) {
                extra.push(key.clone());
            }
        }
    }
    let alerts: Vec<Value> = scan
        .alerts
        .iter()
        .map(|alert| {
            let row = &alert.row;
            let mut out = Map::new();
            for (name, keys) in COLUMNS {
                out.insert((*name).to_string(), first_text(row, keys).map_or(Value::Null, Value::String));
            }
            out.insert("ts".into(), TIME_KEYS.iter().find_map(|k| row.get(*k)).cloned().unwrap_or(Value::Null));
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
        "alerts": alerts,
    })
}

/// The row keys shown elsewhere than in the alert's extra fields.
fn taken_keys<'a>(row: &Map<String, Value>, field: &'a str) -> HashSet<&'a str> {
    let mut taken: HashSet<&str> = HashSet::from([field, "top_features"]);
    for (_, keys) in COLUMNS {
        if let Some(k) = keys.iter().find(|k| row.get(**k).is_some_and(|v| !v.is_null())) {
            taken.insert(k);
        }
    }
    if let Some(k) = TIME_KEYS.iter().find(|k| row.contains_key(**k)) {
        taken.insert(k);
    }
    taken
}

/// The first of `keys` that holds a string, number or boolean, as text.
fn first_text(row: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| match row.get(*k)? {
        Value::String(s) => Some(cut(s)),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    })
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
fn render(title: &str, data: &Value) -> Result<String> {
    let json = script_json(data)?;
    let (head, tail) = TEMPLATE.split_once("{{DATA}}").context("report template has no {{DATA}}")?;
    let title = html_escape(title);
    let (head, tail) = (head.replace("{{TITLE}}", &title), tail.replace("{{TITLE}}", &title));
    Ok(format!("{head}{json}{tail}"))
}

/// `value` as JSON safe inside a `<script>` element: every `<` is written `\u003c`, so neither `</script>`
/// nor `<!--` (which would change how the HTML parser looks for the end of the script) can appear. `<` only
/// occurs inside JSON strings, where `\u003c` means the same character.
fn script_json(value: &Value) -> Result<String> {
    Ok(serde_json::to_string(value).context("cannot encode the report data")?.replace('<', "\\u003c"))
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
    let full = dfp_stages::time::format_micros(secs as i64 * 1_000_000);
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
