//! `type: normalize-duo` — Duo Admin API v2 authentication logs → Morpheus's Duo columns.
//!
//! ```yaml
//! logs:   { type: file-source, path: "${input}", raw: true }
//! events: { type: normalize-duo, inputs: [logs] }
//! ```
//!
//! Output columns: `id` (`txid`, else a hash of the record), `timestamp` (UTC, from `isotimestamp`, else
//! `timestamp` in epoch seconds), `username` (`user.name`), `accessdevicebrowser`, `accessdeviceos`,
//! `authdevicename`, `reason`, `location` ("city, country") — categorical model inputs with `missing` for a
//! missing value — `result` (boolean), and for analysts `ipAddress` (`access_device.ip` without a port or
//! brackets), `city`, `state`, `country`, `application`, `factor`, `resulttext` (the original result).
//!
//! `result` maps `success` → true and `denied`, `fraud`, `error`, `failure` → false (case-insensitive); any
//! other value is a dead letter, never a silent false. Records whose `event_type` is present and is not
//! `authentication` (enrollments, …) are skipped and counted. Dead letters also for invalid JSON, wrong types,
//! no `user.name`, no usable time, and output texts over `max_field_bytes`.

use std::borrow::Cow;

use dfp_core::{
    register_stage, Batch, ConfigError, DeadLetter, Emitter, StageConfig, StageContext, StageError, StageInstance,
    StageKind, Transform,
};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{
    clean, clean_ip, default_max_field_bytes, excerpt, hash_id, location, oversized, Columns, Kind, LooseNum, LooseStr,
    RawRows, Val, MISSING,
};
use crate::time::parse_timestamp;

/// Configuration of `normalize-duo`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NormalizeDuoConfig {
    /// Output text fields longer than this many bytes make the record a dead letter.
    #[serde(default = "default_max_field_bytes")]
    pub max_field_bytes: usize,
}

impl StageConfig for NormalizeDuoConfig {
    const TYPE: &'static str = "normalize-duo";
    const KIND: StageKind = StageKind::Transform;
    const DESCRIPTION: &'static str = "Duo authentication logs (Admin API v2) → typed DFP columns";
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_field_bytes < 16 {
            return Err(ConfigError::field("max_field_bytes", "must be at least 16"));
        }
        Ok(())
    }
    fn build(&self, _ctx: &StageContext) -> Result<StageInstance, StageError> {
        Ok(StageInstance::Transform(Box::new(NormalizeDuo { max_field_bytes: self.max_field_bytes })))
    }
}
register_stage!(NormalizeDuoConfig);

/// The output columns, in order.
pub(crate) const COLUMNS: [(&str, Kind); 17] = [
    ("id", Kind::Text),
    ("timestamp", Kind::Time),
    ("username", Kind::Text),
    ("accessdevicebrowser", Kind::Text),
    ("accessdeviceos", Kind::Text),
    ("authdevicename", Kind::Text),
    ("reason", Kind::Text),
    ("location", Kind::Text),
    ("result", Kind::Bool),
    ("ipAddress", Kind::Text),
    ("city", Kind::Text),
    ("state", Kind::Text),
    ("country", Kind::Text),
    ("application", Kind::Text),
    ("factor", Kind::Text),
    ("resulttext", Kind::Text),
    ("eventtype", Kind::Text),
];

#[derive(Debug, Deserialize)]
struct DuoLocation<'a> {
    #[serde(borrow, default)]
    city: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    state: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    country: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct AccessDevice<'a> {
    #[serde(borrow, default)]
    browser: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    os: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    ip: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    location: Option<DuoLocation<'a>>,
}

#[derive(Debug, Deserialize)]
struct Named<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct Record<'a> {
    #[serde(borrow, default)]
    txid: Option<LooseStr<'a>>,
    #[serde(borrow, default)]
    timestamp: Option<LooseNum<'a>>,
    #[serde(borrow, default)]
    isotimestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user: Option<Named<'a>>,
    #[serde(borrow, default)]
    access_device: Option<AccessDevice<'a>>,
    #[serde(borrow, default)]
    auth_device: Option<Named<'a>>,
    #[serde(borrow, default)]
    application: Option<Named<'a>>,
    #[serde(borrow, default)]
    result: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    factor: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    event_type: Option<Cow<'a, str>>,
}

/// Duo's `result` as a boolean; `None` for a value Duo does not document.
pub fn result_success(result: &str) -> Option<bool> {
    match result.trim().to_ascii_lowercase().as_str() {
        "success" => Some(true),
        "denied" | "fraud" | "error" | "failure" => Some(false),
        _ => None,
    }
}

struct NormalizeDuo {
    max_field_bytes: usize,
}

impl Transform for NormalizeDuo {
    fn process(&mut self, batch: Batch, out: &mut Emitter) -> Result<(), StageError> {
        let rows = RawRows::of(&batch, "normalize-duo")?;
        let mut cols = Columns::new(&COLUMNS, rows.len());
        let names: Vec<&str> = COLUMNS.iter().map(|(n, _)| *n).collect();
        for i in 0..rows.len() {
            let raw = rows.text(i);
            let reject = |reason: String, out: &mut Emitter| {
                out.dead_letter(DeadLetter::new(reason, excerpt(raw), rows.origin(&batch, i)));
            };
            let rec: Record<'_> = match serde_json::from_str(raw) {
                Ok(r) => r,
                Err(e) => {
                    let what = if e.is_syntax() || e.is_eof() { "invalid JSON" } else { "unexpected shape" };
                    reject(format!("{what}: {e}"), out);
                    continue;
                }
            };
            let event_type = clean(rec.event_type);
            if event_type.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("authentication")) {
                out.skip(1);
                continue;
            }
            let Some(user) = clean(rec.user.and_then(|u| u.name)) else {
                reject("no user: user.name is missing or empty".into(), out);
                continue;
            };
            let ts = match (clean(rec.isotimestamp), rec.timestamp) {
                (Some(iso), _) => match parse_timestamp(&iso) {
                    Some(t) => t,
                    None => {
                        reject(format!("unreadable isotimestamp \"{}\"", excerpt(&iso)), out);
                        continue;
                    }
                },
                (None, Some(n)) => match n.value().filter(|v| v.is_finite() && *v > 0.0) {
                    Some(secs) => (secs * 1e6).round() as i64,
                    None => {
                        reject(format!("unreadable timestamp {n:?}"), out);
                        continue;
                    }
                },
                (None, None) => {
                    reject("no time: neither isotimestamp nor timestamp".into(), out);
                    continue;
                }
            };
            let Some(result_text) = clean(rec.result) else {
                reject("no result".into(), out);
                continue;
            };
            let Some(success) = result_success(&result_text) else {
                reject(
                    format!(
                        "unknown result \"{}\" (expected success, denied, fraud, error or failure)",
                        excerpt(&result_text)
                    ),
                    out,
                );
                continue;
            };
            let id = match rec.txid.map(LooseStr::into_string).filter(|v| !v.is_empty()) {
                Some(id) => id,
                None => hash_id(raw),
            };
            let (browser, os, ip, city, state, country) = match rec.access_device {
                Some(d) => {
                    let (city, state, country) = match d.location {
                        Some(l) => (clean(l.city), clean(l.state), clean(l.country)),
                        None => (None, None, None),
                    };
                    (clean(d.browser), clean(d.os), clean(d.ip), city, state, country)
                }
                None => (None, None, None, None, None, None),
            };
            let auth_device = clean(rec.auth_device.and_then(|d| d.name));
            let application = clean(rec.application.and_then(|a| a.name));
            let reason = clean(rec.reason);
            let factor = clean(rec.factor);
            let loc = location(city.as_deref(), country.as_deref());
            let row = [
                Val::Text(Some(&id)),
                Val::Time(ts),
                Val::Text(Some(&user)),
                Val::Text(Some(browser.as_deref().unwrap_or(MISSING))),
                Val::Text(Some(os.as_deref().unwrap_or(MISSING))),
                Val::Text(Some(auth_device.as_deref().unwrap_or(MISSING))),
                Val::Text(Some(reason.as_deref().unwrap_or(MISSING))),
                Val::Text(Some(&loc)),
                Val::Bool(success),
                Val::Text(ip.as_deref().map(clean_ip)),
                Val::Text(city.as_deref()),
                Val::Text(state.as_deref()),
                Val::Text(country.as_deref()),
                Val::Text(application.as_deref()),
                Val::Text(factor.as_deref()),
                Val::Text(Some(&result_text)),
                Val::Text(Some(event_type.as_deref().unwrap_or("authentication"))),
            ];
            if let Some((field, len)) = oversized(&names, &row, self.max_field_bytes) {
                reject(format!("field {field} is {len} bytes, over max_field_bytes ({})", self.max_field_bytes), out);
                continue;
            }
            cols.push(&row);
        }
        let data = cols.finish()?;
        super::observe_event_time(&data, out);
        out.emit(batch.with_data(data));
        Ok(())
    }
}
