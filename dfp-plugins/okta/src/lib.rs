//! The Okta plugin: everything dfp needs for Okta System Log sign-in events, outside dfp. Built as a
//! `cdylib` and loaded with `plugins: [libdfp_plugin_okta.so]`, it exports
//! - the `okta` log family (`family.yaml`: columns, roles, model features, model names `DFP-okta-…`), so
//!   that pipelines say `family: okta` and the `features`, `train` and `score` stages work unchanged;
//! - `normalize-okta`: raw events → the family's columns (those of dfp's Azure family);
//! - `write-okta` (`writer.rs`): the family's sample writer, which `dfp generate okta` uses to render
//!   generated sign-ins as Okta events.
//!
//! Mapping: `uuid` → `id`, `published` → `timestamp`, `actor.alternateId` → `username`, the first
//! `target` of type `AppInstance` → `appDisplayName`, `eventType` → `clientAppUsed` and `category`,
//! `client.userAgent.browser` / `.os` → `deviceDetailbrowser` / `deviceDetailoperatingSystem`,
//! `client.device` → `deviceDetaildisplayName`, `outcome.reason` → `statusfailureReason`,
//! `outcome.result` → `errorCode`, `client.ipAddress`, `client.geographicalContext.{city,state,country}`
//! and `.geolocation.{lat,lon}` → `ipAddress`, `city`, `state`, `country`, `latitude`, `longitude`,
//! `location` = "city, country". A record that is not JSON, has no user or no readable time goes to the
//! dead letters with the reason and its line.

mod writer;

use std::sync::Arc;

use chrono::DateTime;
use dfp_plugin_sdk::arrow::array::{ArrayRef, Float64Builder, StringBuilder, TimestampMicrosecondBuilder, UInt32Array};
use dfp_plugin_sdk::prelude::*;
use serde_json::Value;

/// Normalizes Okta System Log events read with `raw: true` (columns `raw`, `line`).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct NormalizeOkta {
    /// Event types to keep (others are skipped and counted); empty keeps every event.
    #[serde(default = "default_event_types")]
    event_types: Vec<String>,
}

fn default_event_types() -> Vec<String> {
    vec!["user.session.start".into(), "user.authentication.sso".into()]
}

impl Stage for NormalizeOkta {
    const TYPE: &'static str = "normalize-okta";
    const KIND: Kind = Kind::Transform;
    const DESCRIPTION: &'static str = "Okta System Log sign-in events → the Azure normalizer's columns (plugin)";
    fn build(&self, ctx: &Context) -> Result<Instance, Error> {
        Ok(Instance::transform(Normalizer { event_types: self.event_types.clone(), ctx: ctx.clone() }))
    }
}
stage!(NormalizeOkta);
stage!(writer::WriteOkta);
export_plugin!(name: "okta", version: env!("CARGO_PKG_VERSION"), families: include_str!("family.yaml"));

struct Normalizer {
    event_types: Vec<String>,
    ctx: Context,
}

const TEXT_COLUMNS: [&str; 15] = [
    "id",
    "username",
    "appDisplayName",
    "clientAppUsed",
    "deviceDetailbrowser",
    "deviceDetaildisplayName",
    "deviceDetailoperatingSystem",
    "statusfailureReason",
    "location",
    "ipAddress",
    "city",
    "state",
    "country",
    "category",
    "errorCode",
];

fn schema() -> Arc<Schema> {
    let text = |n: &str| Field::new(n, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        text("id"),
        Field::new(
            "timestamp",
            DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("+00:00".into())),
            false,
        ),
        text("username"),
        text("appDisplayName"),
        text("clientAppUsed"),
        text("deviceDetailbrowser"),
        text("deviceDetaildisplayName"),
        text("deviceDetailoperatingSystem"),
        text("statusfailureReason"),
        text("location"),
        text("ipAddress"),
        text("city"),
        text("state"),
        text("country"),
        Field::new("latitude", DataType::Float64, true),
        Field::new("longitude", DataType::Float64, true),
        text("category"),
        text("errorCode"),
    ]))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().map(str::trim).filter(|s| !s.is_empty() && *s != "null")
}

fn num_at(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64().or_else(|| cur.as_str().and_then(|s| s.trim().parse().ok()))
}

fn excerpt(s: &str) -> &str {
    let mut end = s.len().min(2048);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Transform for Normalizer {
    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), Error> {
        let raw = batch
            .column_by_name("raw")
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or("normalize-okta reads raw records: set `raw: true` on the source stage")?;
        let lines = batch.column_by_name("line").and_then(|c| c.as_any().downcast_ref::<UInt32Array>());
        let n = raw.len();
        let mut text: Vec<StringBuilder> =
            TEXT_COLUMNS.iter().map(|_| StringBuilder::with_capacity(n, n * 16)).collect();
        let mut ts = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("+00:00");
        let mut lat = Float64Builder::with_capacity(n);
        let mut lon = Float64Builder::with_capacity(n);
        let mut skipped = 0u64;
        for i in 0..n {
            let record = if raw.is_null(i) { "" } else { raw.value(i) };
            let line = lines.map_or(i as u32 + 1, |l| l.value(i));
            let reject =
                |why: String, out: &mut Emitter| out.dead_letter(&format!("line {line}: {why}"), excerpt(record));
            let v: Value = match serde_json::from_str(record) {
                Ok(v @ Value::Object(_)) => v,
                Ok(_) => {
                    reject("an Okta event is a JSON object".into(), out);
                    continue;
                }
                Err(e) => {
                    reject(format!("invalid JSON: {e}"), out);
                    continue;
                }
            };
            let event_type = str_at(&v, &["eventType"]);
            if !self.event_types.is_empty() && !event_type.is_some_and(|t| self.event_types.iter().any(|k| k == t)) {
                skipped += 1;
                continue;
            }
            let Some(user) = str_at(&v, &["actor", "alternateId"]) else {
                reject("no user: actor.alternateId is missing or empty".into(), out);
                continue;
            };
            // The family compares user ids case-insensitively (`user_ids: lower` in family.yaml): a plugin's
            // normalizer writes them in that form, as dfp's own normalizers do.
            let user = user.to_lowercase();
            let Some(published) = str_at(&v, &["published"]) else {
                reject("no time: published is missing".into(), out);
                continue;
            };
            let Ok(time) = DateTime::parse_from_rfc3339(published) else {
                reject(format!("unreadable time \"{}\"", excerpt(published)), out);
                continue;
            };
            let app = v.get("target").and_then(Value::as_array).and_then(|targets| {
                targets
                    .iter()
                    .find(|t| t.get("type").and_then(Value::as_str) == Some("AppInstance"))
                    .and_then(|t| str_at(t, &["displayName"]).or_else(|| str_at(t, &["alternateId"])))
            });
            let geo = ["client", "geographicalContext"];
            let city = str_at(&v, &[geo[0], geo[1], "city"]);
            let country = str_at(&v, &[geo[0], geo[1], "country"]);
            let location = match (city, country) {
                (None, None) => "missing".to_string(),
                (c, k) => format!("{}, {}", c.unwrap_or("missing"), k.unwrap_or("missing")),
            };
            let uuid = str_at(&v, &["uuid"]).map(str::to_string).unwrap_or_else(|| format!("okta-{line}-{i}"));
            let values: [Option<&str>; 15] = [
                Some(&uuid),
                Some(&user),
                app,
                event_type,
                str_at(&v, &["client", "userAgent", "browser"]),
                str_at(&v, &["client", "device"]),
                str_at(&v, &["client", "userAgent", "os"]),
                str_at(&v, &["outcome", "reason"]),
                Some(&location),
                str_at(&v, &["client", "ipAddress"]),
                city,
                str_at(&v, &[geo[0], geo[1], "state"]),
                country,
                event_type,
                str_at(&v, &["outcome", "result"]),
            ];
            for (b, value) in text.iter_mut().zip(values) {
                b.append_option(value);
            }
            ts.append_value(time.timestamp_micros());
            lat.append_option(num_at(&v, &[geo[0], geo[1], "geolocation", "lat"]));
            lon.append_option(num_at(&v, &[geo[0], geo[1], "geolocation", "lon"]));
        }
        if skipped > 0 {
            self.ctx.counter_add("skipped_event_types", skipped);
        }
        let mut text: Vec<ArrayRef> = text.into_iter().map(|mut b| Arc::new(b.finish()) as ArrayRef).collect();
        let mut take = |name: &str| {
            let at = TEXT_COLUMNS.iter().position(|c| *c == name).unwrap_or(0);
            std::mem::replace(&mut text[at], Arc::new(StringBuilder::new().finish()))
        };
        let columns: Vec<ArrayRef> = vec![
            take("id"),
            Arc::new(ts.finish()),
            take("username"),
            take("appDisplayName"),
            take("clientAppUsed"),
            take("deviceDetailbrowser"),
            take("deviceDetaildisplayName"),
            take("deviceDetailoperatingSystem"),
            take("statusfailureReason"),
            take("location"),
            take("ipAddress"),
            take("city"),
            take("state"),
            take("country"),
            Arc::new(lat.finish()),
            Arc::new(lon.finish()),
            take("category"),
            take("errorCode"),
        ];
        out.emit(RecordBatch::try_new(schema(), columns)?);
        Ok(())
    }
}
