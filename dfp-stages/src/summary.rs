//! `dfp summary`: alerts per user and the features behind them, from scored events (a file, a folder of
//! part files or a glob; see [`crate::scored`]).
//!
//! ```no_run
//! let s = dfp_stages::summary::summarize("out/scored.jsonl", "mean_abs_z", 2.0)?;
//! print!("{}", s.display(10));
//! # Ok::<(), dfp_stages::scored::ScoredError>(())
//! ```

use std::collections::HashMap;
use std::fmt;

use serde_json::Value;

use crate::scored::{self, ScoredError};

/// What the scored events hold.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The score field.
    pub field: String,
    /// Alerts are rows with the field strictly above this.
    pub threshold: f64,
    /// Events read.
    pub events: usize,
    /// Alerts.
    pub alerts: usize,
    /// Per user with alerts: (alerts, highest score), most alerts first.
    pub users: Vec<(String, usize, f64)>,
    /// The strongest feature of each alert (the first of `top_features`): (feature, alerts), most first.
    pub features: Vec<(String, usize)>,
    /// Alerts by the kind of model that scored them (`user`, `generic`, …).
    pub model_kinds: Vec<(String, usize)>,
    /// What the alerts say about each user (from `add-user-data`): directory fields and usual country.
    pub context: HashMap<String, String>,
    /// Incidents (`correlate`'s `incident_id`): (id, user, events, highest score), highest score first.
    pub incidents: Vec<(String, String, usize, f64)>,
    /// Alerts raised by `correlate`'s signals (rows with `risk_signals`).
    pub raised: usize,
}

/// Profile columns of `add-user-data` (the other `user_*` columns come from the directory).
const PROFILE_COLUMNS: [&str; 3] = ["user_events", "user_since", "user_new_values"];

/// The user context of an alert row: its directory fields, then where the user usually signs in from.
fn context_of(row: &serde_json::Map<String, Value>) -> Option<String> {
    let mut parts: Vec<String> = row
        .iter()
        .filter(|(k, _)| {
            k.starts_with("user_") && !k.starts_with("user_usual_") && !PROFILE_COLUMNS.contains(&k.as_str())
        })
        .filter_map(|(_, v)| v.as_str().filter(|t| !t.trim().is_empty()).map(str::to_string))
        .collect();
    if let Some(c) = row.get("user_usual_country").and_then(Value::as_str) {
        parts.push(format!("usually {c}"));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Reads the scored events at `spec` and counts the alerts (`field` > `threshold`).
pub fn summarize(spec: &str, field: &str, threshold: f64) -> Result<Summary, ScoredError> {
    let mut s = Summary { field: field.to_string(), threshold, ..Summary::default() };
    let mut per_user: HashMap<String, (usize, f64)> = HashMap::new();
    let mut features: HashMap<String, usize> = HashMap::new();
    let mut kinds: HashMap<String, usize> = HashMap::new();
    let mut incidents: HashMap<String, (String, usize, f64)> = HashMap::new();
    scored::for_each_row(spec, |origin, row| {
        s.events += 1;
        let score = scored::number(origin, &row, field)?;
        if let Some(id) = row.get("incident_id").and_then(Value::as_str) {
            let user = row.get("username").and_then(Value::as_str).unwrap_or("?");
            let entry = incidents.entry(id.to_string()).or_insert((user.to_string(), 0, f64::NEG_INFINITY));
            entry.1 += 1;
            entry.2 = entry.2.max(score);
        }
        if score <= threshold {
            return Ok(());
        }
        s.alerts += 1;
        if row.get("risk_signals").is_some_and(|v| !v.is_null()) {
            s.raised += 1;
        }
        let user = row.get("username").and_then(Value::as_str).unwrap_or("?").to_string();
        if !s.context.contains_key(&user) {
            if let Some(c) = context_of(&row) {
                s.context.insert(user.clone(), c);
            }
        }
        let entry = per_user.entry(user).or_insert((0, f64::NEG_INFINITY));
        entry.0 += 1;
        entry.1 = entry.1.max(score);
        if let Some(top) = row.get("top_features").and_then(Value::as_str).and_then(|t| t.split(',').next()) {
            *features.entry(top.to_string()).or_default() += 1;
        }
        *kinds.entry(row.get("model_kind").and_then(Value::as_str).unwrap_or("?").to_string()).or_default() += 1;
        Ok(())
    })?;
    s.users = per_user.into_iter().map(|(u, (n, max))| (u, n, max)).collect();
    s.users.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    s.features = features.into_iter().collect();
    s.features.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    s.model_kinds = kinds.into_iter().collect();
    s.model_kinds.sort();
    s.incidents = incidents.into_iter().map(|(id, (u, n, max))| (id, u, n, max)).collect();
    s.incidents.sort_by(|a, b| b.3.total_cmp(&a.3).then(a.0.cmp(&b.0)));
    Ok(s)
}

impl Summary {
    /// A table of the `top` users and features.
    pub fn display(&self, top: usize) -> impl fmt::Display + '_ {
        Shown { summary: self, top }
    }
}

struct Shown<'a> {
    summary: &'a Summary,
    top: usize,
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.summary;
        writeln!(f, "{} alert(s) ({} > {}) among {} scored events", s.alerts, s.field, s.threshold, s.events)?;
        let with_context = !s.context.is_empty();
        write!(f, "\n{:<40} {:>7} {:>10}", "user", "alerts", "max score")?;
        writeln!(f, "{}", if with_context { "  context" } else { "" })?;
        for (u, n, max) in s.users.iter().take(self.top) {
            write!(f, "{u:<40} {n:>7} {max:>10.2}")?;
            match s.context.get(u) {
                Some(c) => {
                    let cut: String = c.chars().take(70).collect();
                    writeln!(f, "  {cut}{}", if cut.len() < c.len() { "…" } else { "" })?
                }
                None => writeln!(f)?,
            }
        }
        if s.users.len() > self.top {
            writeln!(f, "… and {} more user(s)", s.users.len() - self.top)?;
        }
        writeln!(f, "\n{:<40} {:>7}", "strongest feature of the alert", "alerts")?;
        for (feature, n) in s.features.iter().take(self.top) {
            writeln!(f, "{feature:<40} {n:>7}")?;
        }
        if !s.incidents.is_empty() {
            writeln!(
                f,
                "\n{} incident(s); {} alert(s) raised by correlation signals (risk_signals)",
                s.incidents.len(),
                s.raised
            )?;
            writeln!(f, "{:<22} {:<40} {:>7} {:>10}", "incident", "user", "events", "max score")?;
            for (id, u, n, max) in s.incidents.iter().take(self.top) {
                writeln!(f, "{id:<22} {u:<40} {n:>7} {max:>10.2}")?;
            }
        }
        let kinds: Vec<String> = s.model_kinds.iter().map(|(k, n)| format!("{k} model {n}")).collect();
        writeln!(f, "\nscored by: {}", kinds.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_incidents_by_their_highest_score() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.jsonl");
        let rows = [
            r#"{"username":"a","risk":3.0,"incident_id":"inc-1","risk_signals":null}"#,
            r#"{"username":"a","risk":2.5,"incident_id":"inc-1","risk_signals":"device first seen …"}"#,
            r#"{"username":"b","risk":6.0,"incident_id":"inc-2","risk_signals":null}"#,
            r#"{"username":"c","risk":1.0,"incident_id":null}"#,
        ];
        std::fs::write(&p, rows.join("\n")).unwrap();
        let s = summarize(p.to_str().unwrap(), "risk", 2.0).unwrap();
        assert_eq!(s.incidents, [("inc-2".into(), "b".into(), 1, 6.0), ("inc-1".into(), "a".into(), 2, 3.0)]);
        assert_eq!(s.raised, 1);
        let text = s.display(5).to_string();
        assert!(text.contains("2 incident(s); 1 alert(s) raised by correlation signals"), "{text}");
    }

    #[test]
    fn counts_alerts_per_user_feature_and_model_kind() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.jsonl");
        let rows = [
            r#"{"username":"a","mean_abs_z":3.0,"top_features":"x,y","model_kind":"user","user_department":"Finance","user_usual_country":"NO (12)","user_events":40}"#,
            r#"{"username":"a","mean_abs_z":5.0,"top_features":"y","model_kind":"user"}"#,
            r#"{"username":"b","mean_abs_z":2.5,"top_features":"x","model_kind":"generic"}"#,
            r#"{"username":"c","mean_abs_z":2.0,"top_features":"x","model_kind":"generic"}"#,
        ];
        std::fs::write(&p, rows.join("\n")).unwrap();
        let s = summarize(p.to_str().unwrap(), "mean_abs_z", 2.0).unwrap();
        assert_eq!((s.events, s.alerts), (4, 3));
        assert_eq!(s.users[0], ("a".to_string(), 2, 5.0));
        assert_eq!(s.features, [("x".to_string(), 2), ("y".to_string(), 1)]);
        assert_eq!(s.context.get("a").map(String::as_str), Some("Finance; usually NO (12)"));
        assert!(s.display(5).to_string().contains("Finance; usually NO (12)"));
        assert_eq!(s.model_kinds, [("generic".to_string(), 1), ("user".to_string(), 2)]);
        let text = s.display(1).to_string();
        assert!(text.starts_with("3 alert(s) (mean_abs_z > 2) among 4 scored events"), "{text}");
        assert!(text.contains("… and 1 more user(s)"), "{text}");
    }
}
