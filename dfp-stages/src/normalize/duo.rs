//! `type: normalize-duo` — Duo Admin API v2 authentication logs → Morpheus's Duo columns.
//!
//! ```yaml
//! logs:   { type: file-source, path: "${input}", raw: true }
//! events: { type: normalize-duo, inputs: [logs] }
//! ```
//!
//! Output: the columns of the `duo` log family (`families/duo.yaml`): `id` (`txid`, else a hash of the record), `timestamp` (UTC, from `isotimestamp`, else
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
    register_stage, Batch, ConfigError, Emitter, StageConfig, StageContext, StageError, StageInstance, StageKind,
    Transform,
};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{
    clean, clean_ip, default_max_field_bytes, excerpt, hash_id, json_problem, location, normalize_batch, Layout,
    LooseNum, LooseStr, Outcome, Val, MISSING,
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
    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        let layout = Layout::of(ctx.family(FAMILY)?.as_ref());
        Ok(StageInstance::Transform(Box::new(NormalizeDuo { max_field_bytes: self.max_field_bytes, layout })))
    }
}
register_stage!(NormalizeDuoConfig);

/// The log family this normalizer writes (`families/duo.yaml` lists its columns, in the order of the rows
/// below).
const FAMILY: &str = "duo";

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
    layout: Layout,
}

impl Transform for NormalizeDuo {
    fn process(&mut self, batch: Batch, out: &mut Emitter) -> Result<(), StageError> {
        normalize_batch(batch, "normalize-duo", &self.layout, self.max_field_bytes, out, parse)
    }
}

/// One record → one row in the `duo` family's column order (or a skip for non-authentication events).
fn parse(raw: &str, row_out: &mut dyn FnMut(&[Val<'_>])) -> Result<Outcome, String> {
    let rec: Record<'_> = serde_json::from_str(raw).map_err(|e| json_problem(&e))?;
    let event_type = clean(rec.event_type);
    if event_type.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("authentication")) {
        return Ok(Outcome::Skip);
    }
    let user = clean(rec.user.and_then(|u| u.name)).ok_or("no user: user.name is missing or empty")?;
    let ts = match (clean(rec.isotimestamp), rec.timestamp) {
        (Some(iso), _) => {
            parse_timestamp(&iso).ok_or_else(|| format!("unreadable isotimestamp \"{}\"", excerpt(&iso)))?
        }
        (None, Some(n)) => match n.value().filter(|v| v.is_finite() && *v > 0.0) {
            Some(secs) => (secs * 1e6).round() as i64,
            None => return Err(format!("unreadable timestamp {n:?}")),
        },
        (None, None) => return Err("no time: neither isotimestamp nor timestamp".into()),
    };
    let result_text = clean(rec.result).ok_or("no result")?;
    let success = result_success(&result_text).ok_or_else(|| {
        format!("unknown result \"{}\" (expected success, denied, fraud, error or failure)", excerpt(&result_text))
    })?;
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
    row_out(&[
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
    ]);
    Ok(Outcome::Row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_follow_the_family_column_order() {
        let family = dfp_core::Registry::global().families().get(FAMILY).cloned().expect("duo is built in");
        let raw = r#"{"txid":"t1","isotimestamp":"2026-10-01T08:00:00+00:00","user":{"name":"bob"},
            "access_device":{"browser":"Chrome","os":"Mac OS X","ip":"[2001:db8::1]:443",
                             "location":{"city":"Oslo","state":"Oslo","country":"Norway"}},
            "auth_device":{"name":"phone"},"application":{"name":"VPN"},"result":"denied","reason":"user_cancelled",
            "factor":"duo_push","event_type":"authentication"}"#;
        let mut row: Vec<String> = Vec::new();
        parse(raw, &mut |r: &[Val<'_>]| row = r.iter().map(Val::shown).collect()).unwrap();
        assert_eq!(row.len(), family.columns.len());
        let by_name: std::collections::HashMap<&str, &str> =
            family.columns.iter().map(|c| c.name.as_str()).zip(row.iter().map(String::as_str)).collect();
        assert_eq!(by_name["id"], "t1");
        assert_eq!(by_name["username"], "bob");
        assert_eq!(by_name["accessdevicebrowser"], "Chrome");
        assert_eq!(by_name["authdevicename"], "phone");
        assert_eq!(by_name["reason"], "user_cancelled");
        assert_eq!(by_name["location"], "Oslo, Norway");
        assert_eq!(by_name["result"], "false");
        assert_eq!(by_name["ipAddress"], "2001:db8::1");
        assert_eq!(by_name["application"], "VPN");
        assert_eq!(by_name["resulttext"], "denied");
        assert_eq!(by_name["eventtype"], "authentication");
        assert!(matches!(parse(r#"{"event_type":"enrollment"}"#, &mut |_| {}), Ok(Outcome::Skip)));
    }
}
