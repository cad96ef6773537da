//! `type: normalize` — raw JSON records of any log family → the family's columns, as its declaration says.
//!
//! ```yaml
//! family: gws                 # declared under `families:` (docs/add-a-log-source.md)
//! stages:
//!   logs:   { type: file-source, path: "${input}", raw: true }
//!   events: { type: normalize, inputs: [logs] }
//! ```
//!
//! Each column of the family (the pipeline's `family:`) is read from its `path`: a dotted path
//! (`actor.email`; a number indexes an array: `events.0.name`) or a JSON pointer (`/actor/email`), with
//! alternatives separated by `|` (the first present wins). By type:
//! - `text`: a string (trimmed; empty counts as absent), or a number or boolean written as text; absent →
//!   the column's `missing` value, else null;
//! - `ip`: text without a port or IPv6 brackets;
//! - `time`: ISO 8601 text, or a number of seconds since the epoch (milliseconds when above 10^11);
//! - `float`: a number, or text that reads as one;
//! - `bool`: a JSON boolean, or text found in the column's `true`/`false` lists (case-insensitive);
//! - `join: [a, b]`: the other columns' values as `"a, b"`, `missing` standing for an absent part.
//!
//! `id` without a path (or absent) is a hash of the record. Dead letters: invalid JSON, a record that is not
//! an object, no `username` or `timestamp`, a time, number or boolean that cannot be read, an output text
//! over `max_field_bytes`.

use std::borrow::Cow;
use std::sync::Arc;

use dfp_core::family::{Column, ColumnType};
use dfp_core::{
    register_stage, Batch, ConfigContext, ConfigError, Emitter, Family, StageConfig, StageContext, StageError,
    StageInstance, StageKind, Transform,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::{clean_ip, default_max_field_bytes, excerpt, hash_id, json_problem, normalize_batch, Layout, Outcome, Val};
use crate::time::parse_timestamp;

/// Configuration of `normalize`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NormalizeConfig {
    /// The log family whose columns to write; default: the pipeline's `family`.
    pub family: String,
    /// Output text fields longer than this many bytes make the record a dead letter.
    #[serde(default = "default_max_field_bytes")]
    pub max_field_bytes: usize,
}

impl StageConfig for NormalizeConfig {
    const TYPE: &'static str = "normalize";
    const KIND: StageKind = StageKind::Transform;
    const DESCRIPTION: &'static str =
        "raw JSON records → a log family's columns, read from the paths its declaration gives";
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_field_bytes < 16 {
            return Err(ConfigError::field("max_field_bytes", "must be at least 16"));
        }
        Ok(())
    }
    fn check(&self, ctx: &ConfigContext<'_>) -> Result<(), ConfigError> {
        let family = ctx.family(&self.family)?;
        family.generic_normalizer_ready().map_err(|why| {
            let hint = match &family.normalizer {
                Some(n) => format!("; family \"{}\" is normalized by `{n}`", family.name),
                None => String::new(),
            };
            ConfigError::field(
                "family",
                format!("the family \"{}\" cannot be read generically: {why}{hint}", family.name),
            )
        })
    }
    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        let family = ctx.family(&self.family)?;
        let plan = Plan::of(&family).map_err(StageError::Other)?;
        Ok(StageInstance::Transform(Box::new(Normalize {
            layout: Layout::of(&family),
            plan,
            max_field_bytes: self.max_field_bytes,
            family,
        })))
    }
}
register_stage!(NormalizeConfig);

/// One way to find a value in a record.
#[derive(Debug, Clone)]
enum Path {
    /// Object keys and array indexes, from the root.
    Steps(Vec<String>),
    /// A JSON pointer.
    Pointer(String),
}

impl Path {
    fn parse(text: &str) -> Vec<Path> {
        text.split('|')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                if p.starts_with('/') {
                    Path::Pointer(p.to_string())
                } else {
                    Path::Steps(p.split('.').map(str::to_string).collect())
                }
            })
            .collect()
    }

    fn find<'v>(&self, root: &'v Value) -> Option<&'v Value> {
        match self {
            Path::Pointer(p) => root.pointer(p),
            Path::Steps(steps) => steps.iter().try_fold(root, |v, step| match v {
                Value::Object(m) => m.get(step),
                Value::Array(a) => step.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            }),
        }
    }
}

/// How each column is read, in the family's column order.
struct Plan {
    columns: Vec<(Column, Vec<Path>, Vec<usize>)>,
}

impl Plan {
    fn of(family: &Family) -> Result<Plan, String> {
        let index = |name: &str| family.columns.iter().position(|c| c.name == name);
        let mut columns = Vec::new();
        for c in &family.columns {
            let paths = c.path.as_deref().map(Path::parse).unwrap_or_default();
            let join = c
                .join
                .iter()
                .map(|p| index(p).ok_or_else(|| format!("column {} joins unknown column {p}", c.name)))
                .collect::<Result<Vec<_>, _>>()?;
            columns.push((c.clone(), paths, join));
        }
        Ok(Plan { columns })
    }
}

struct Normalize {
    family: Arc<Family>,
    layout: Layout,
    plan: Plan,
    max_field_bytes: usize,
}

impl Transform for Normalize {
    fn process(&mut self, batch: Batch, out: &mut Emitter) -> Result<(), StageError> {
        let plan = &self.plan;
        let family = &self.family;
        normalize_batch(batch, "normalize", &self.layout, self.max_field_bytes, out, |raw, row_out| {
            parse(plan, family, raw, row_out)
        })
    }
}

/// A value read for one column.
enum Cell {
    Text(Option<String>),
    Time(i64),
    Float(Option<f64>),
    Bool(bool),
}

/// A scalar as text (`None` for null, empty text, objects and arrays).
fn as_text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => {
            let t = s.trim();
            (!t.is_empty()).then_some(Cow::Borrowed(t))
        }
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Owned(b.to_string())),
        _ => None,
    }
}

fn parse(plan: &Plan, family: &Family, raw: &str, row_out: &mut dyn FnMut(&[Val<'_>])) -> Result<Outcome, String> {
    let record: Value = serde_json::from_str(raw).map_err(|e| json_problem(&e))?;
    if !record.is_object() {
        return Err(format!("expected a JSON object, found {}", dfp_core::json::kind_of(&record)));
    }
    let mut cells: Vec<Cell> = Vec::with_capacity(plan.columns.len());
    for (column, paths, _) in &plan.columns {
        let found = paths.iter().find_map(|p| p.find(&record).filter(|v| !v.is_null()));
        let shown = || column.path.as_deref().unwrap_or(&column.name).to_string();
        let cell = match column.kind {
            ColumnType::Text | ColumnType::Ip => {
                let text = found.and_then(as_text).map(|t| match column.kind {
                    ColumnType::Ip => clean_ip(&t).to_string(),
                    _ => t.into_owned(),
                });
                let text = match (column.name.as_str(), text) {
                    ("id", None) => Some(hash_id(raw)),
                    ("username", None) => return Err(format!("no user: {} is missing or empty", shown())),
                    ("username", Some(u)) => Some(family.user_ids.normalize(&u).into_owned()),
                    (_, None) => column.missing.clone(),
                    (_, t) => t,
                };
                Cell::Text(text)
            }
            ColumnType::Time => {
                let micros = match found {
                    None => return Err(format!("no time: {} is missing", shown())),
                    Some(Value::Number(n)) => n.as_f64().filter(|s| s.is_finite() && *s > 0.0).map(|s| {
                        let secs = if s > 1e11 { s / 1000.0 } else { s };
                        (secs * 1e6).round() as i64
                    }),
                    Some(v) => as_text(v).and_then(|t| parse_timestamp(&t)),
                };
                match micros {
                    Some(t) => Cell::Time(t),
                    None => {
                        return Err(format!(
                            "unreadable time {} in {}",
                            excerpt(&found.map(Value::to_string).unwrap_or_default()),
                            shown()
                        ))
                    }
                }
            }
            ColumnType::Float => match found {
                None => Cell::Float(None),
                Some(v) => {
                    let n = match v {
                        Value::Number(n) => n.as_f64(),
                        other => as_text(other).and_then(|t| t.parse::<f64>().ok()),
                    };
                    match n {
                        Some(n) => Cell::Float(Some(n)),
                        None => return Err(format!("{} is not a number: {}", shown(), excerpt(&v.to_string()))),
                    }
                }
            },
            ColumnType::Bool => {
                let text = found.and_then(as_text);
                let b = match (found, &text) {
                    (Some(Value::Bool(b)), _) => Some(*b),
                    (_, Some(t)) if column.true_values.iter().any(|v| v.eq_ignore_ascii_case(t)) => Some(true),
                    (_, Some(t)) if column.false_values.iter().any(|v| v.eq_ignore_ascii_case(t)) => Some(false),
                    (_, Some(t)) if column.true_values.is_empty() && column.false_values.is_empty() => {
                        match t.to_ascii_lowercase().as_str() {
                            "true" => Some(true),
                            "false" => Some(false),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                match b {
                    Some(b) => Cell::Bool(b),
                    None => {
                        let seen = text.map_or_else(|| "nothing".to_string(), |t| format!("\"{}\"", excerpt(&t)));
                        let mut expected: Vec<&str> =
                            column.true_values.iter().chain(&column.false_values).map(String::as_str).collect();
                        if expected.is_empty() {
                            expected = vec!["true", "false"];
                        }
                        return Err(format!("{} holds {seen}, expected one of {}", shown(), expected.join(", ")));
                    }
                }
            }
        };
        cells.push(cell);
    }
    // Joined columns, from the others' values.
    for (i, (column, _, join)) in plan.columns.iter().enumerate() {
        if join.is_empty() {
            continue;
        }
        let missing = column.missing.as_deref().unwrap_or(super::MISSING);
        let parts: Vec<Option<&str>> = join
            .iter()
            .map(|&j| match &cells[j] {
                Cell::Text(t) => t.as_deref().filter(|t| *t != missing),
                _ => None,
            })
            .collect();
        let text = if parts.iter().all(Option::is_none) {
            missing.to_string()
        } else {
            parts.iter().map(|p| p.unwrap_or(missing)).collect::<Vec<_>>().join(", ")
        };
        cells[i] = Cell::Text(Some(text));
    }
    let row: Vec<Val<'_>> = cells
        .iter()
        .map(|c| match c {
            Cell::Text(t) => Val::Text(t.as_deref()),
            Cell::Time(t) => Val::Time(*t),
            Cell::Float(f) => Val::Float(*f),
            Cell::Bool(b) => Val::Bool(*b),
        })
        .collect();
    row_out(&row);
    Ok(Outcome::Row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn family() -> Family {
        Family::from_value(
            "mine",
            json!({
                "user_ids": { "case": "lower" },
                "columns": {
                    "id": { "type": "text", "path": "event.id" },
                    "timestamp": { "type": "time", "path": "ts | /meta/time" },
                    "username": { "type": "text", "path": "actor.email" },
                    "app": { "type": "text", "path": "events.0.app", "missing": "missing" },
                    "ip": { "type": "ip", "path": "client.ip" },
                    "city": { "type": "text", "path": "geo.city" },
                    "country": { "type": "text", "path": "geo.country" },
                    "place": { "type": "text", "join": ["city", "country"] },
                    "lat": { "type": "float", "path": "geo.lat" },
                    "ok": { "type": "bool", "path": "outcome", "true": ["SUCCESS"], "false": ["FAILURE", "DENIED"] },
                },
                "roles": { "app": "app", "location": "place", "result": { "column": "ok" } },
                "features": { "categorical": ["app"], "binary": ["ok"], "numeric": ["logcount"] },
            }),
        )
        .unwrap()
    }

    fn row(raw: &str) -> Result<Vec<String>, String> {
        let f = family();
        let plan = Plan::of(&f).unwrap();
        let mut out = Vec::new();
        parse(&plan, &f, raw, &mut |r: &[Val<'_>]| out = r.iter().map(Val::shown).collect())?;
        Ok(out)
    }

    #[test]
    fn columns_come_from_their_paths() {
        let r = row(r#"{"event":{"id":7},"ts":"2026-10-01T08:00:00Z","actor":{"email":" Bob@X.com "},
            "events":[{"app":"payroll"}],"client":{"ip":"203.0.113.9:443"},"geo":{"city":"Oslo","country":"NO","lat":"59.9"},
            "outcome":"success"}"#)
        .unwrap();
        assert_eq!(
            r,
            ["7", "1790841600000000", "bob@x.com", "payroll", "203.0.113.9", "Oslo", "NO", "Oslo, NO", "59.9", "true"]
        );
    }

    #[test]
    fn absent_values_take_their_defaults() {
        let r = row(r#"{"meta":{"time":1790841600},"actor":{"email":"a@x"},"outcome":"DENIED"}"#).unwrap();
        assert!(r[0].starts_with('h'), "a record without an id gets a hash: {}", r[0]);
        assert_eq!(&r[1..], ["1790841600000000", "a@x", "missing", "∅", "∅", "∅", "missing", "∅", "false"]);
        let r =
            row(r#"{"ts":1790841600123,"actor":{"email":"a@x"},"geo":{"country":"NO"},"outcome":"success"}"#).unwrap();
        assert_eq!(r[1], "1790841600123000", "milliseconds");
        assert_eq!(r[7], "missing, NO");
    }

    #[test]
    fn unreadable_records_say_why() {
        let e = row(r#"{"ts":"2026-10-01T08:00:00Z","outcome":"success"}"#).unwrap_err();
        assert_eq!(e, "no user: actor.email is missing or empty");
        let e = row(r#"{"actor":{"email":"a"},"outcome":"success"}"#).unwrap_err();
        assert!(e.starts_with("no time: ts | /meta/time"), "{e}");
        let e = row(r#"{"ts":"yesterday","actor":{"email":"a"},"outcome":"success"}"#).unwrap_err();
        assert!(e.contains("unreadable time"), "{e}");
        let e = row(r#"{"ts":1,"actor":{"email":"a"},"outcome":"maybe"}"#).unwrap_err();
        assert_eq!(e, "outcome holds \"maybe\", expected one of SUCCESS, FAILURE, DENIED");
        let e = row(r#"{"ts":1,"actor":{"email":"a"},"outcome":"success","geo":{"lat":"north"}}"#).unwrap_err();
        assert!(e.starts_with("geo.lat is not a number"), "{e}");
        assert!(row("[1]").unwrap_err().contains("expected a JSON object"));
        assert!(row("{").unwrap_err().starts_with("invalid JSON"));
    }
}
