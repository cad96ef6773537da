//! `type: normalize-azure` — Azure AD (Entra ID) sign-in logs → Morpheus's Azure columns.
//!
//! ```yaml
//! logs:   { type: file-source, path: "${input}", raw: true }
//! events: { type: normalize-azure, inputs: [logs] }
//! ```
//!
//! Accepts both shapes found in the wild: the Azure Monitor diagnostic export (top-level `time`, `category`,
//! `correlationId`, the sign-in under `properties`) and the Microsoft Graph `signIn` resource (the same
//! fields at top level, `createdDateTime` for the time; Graph pages are unwrapped by the file source).
//!
//! Output: the columns of the `azure` log family (`families/azure.yaml`): `id` (`properties.id`, else a hash
//! of the record), `timestamp` (UTC), `username`
//! (`userPrincipalName`), `appDisplayName`, `clientAppUsed`, `deviceDetailbrowser`, `deviceDetaildisplayName`,
//! `deviceDetailoperatingSystem`, `statusfailureReason`, `location` ("city, country") — all categorical model
//! inputs, with `missing` for a missing value — and, for analysts, `ipAddress`, `city`, `state`, `country`,
//! `latitude`, `longitude`, `category`, `errorCode`.
//!
//! Dead letters: invalid JSON, a field of the wrong type, no `userPrincipalName`, no usable time (ISO 8601
//! with 0–9 fraction digits and `Z`, an offset or no zone; or `M/D/YYYY h:mm:ss [AM|PM] [offset]`), or an
//! output text over `max_field_bytes`.

use std::borrow::Cow;

use dfp_core::{
    register_stage, Batch, ConfigError, Emitter, StageConfig, StageContext, StageError, StageInstance, StageKind,
    Transform,
};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{
    clean, default_max_field_bytes, excerpt, hash_id, json_problem, location, normalize_batch, Layout, LooseNum,
    LooseStr, Outcome, Val, MISSING,
};
use crate::time::parse_timestamp;

/// Configuration of `normalize-azure`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NormalizeAzureConfig {
    /// Output text fields longer than this many bytes make the record a dead letter.
    #[serde(default = "default_max_field_bytes")]
    pub max_field_bytes: usize,
}

impl StageConfig for NormalizeAzureConfig {
    const TYPE: &'static str = "normalize-azure";
    const KIND: StageKind = StageKind::Transform;
    const DESCRIPTION: &'static str = "Azure AD sign-in logs (Monitor export or Graph) → typed DFP columns";
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_field_bytes < 16 {
            return Err(ConfigError::field("max_field_bytes", "must be at least 16"));
        }
        Ok(())
    }
    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        let layout = Layout::of(ctx.family(FAMILY)?.as_ref());
        Ok(StageInstance::Transform(Box::new(NormalizeAzure { max_field_bytes: self.max_field_bytes, layout })))
    }
}
register_stage!(NormalizeAzureConfig);

/// The log family this normalizer writes (`families/azure.yaml` lists its columns, in the order of the
/// rows below).
const FAMILY: &str = "azure";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceDetail<'a> {
    #[serde(borrow, default)]
    browser: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    display_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    operating_system: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct Geo<'a> {
    #[serde(borrow, default)]
    latitude: Option<LooseNum<'a>>,
    #[serde(borrow, default)]
    longitude: Option<LooseNum<'a>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Location<'a> {
    #[serde(borrow, default)]
    city: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    state: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    country_or_region: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    geo_coordinates: Option<Geo<'a>>,
}

/// `location` is an object in a sign-in, a plain country string at the top of a Monitor record.
#[derive(Debug)]
enum LocationField<'a> {
    Object(Location<'a>),
    Text,
}

impl<'de: 'a, 'a> Deserialize<'de> for LocationField<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = LocationField<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a location object or a country string")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(LocationField::Text)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                Location::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(LocationField::Object)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status<'a> {
    #[serde(borrow, default)]
    error_code: Option<LooseStr<'a>>,
    #[serde(borrow, default)]
    failure_reason: Option<Cow<'a, str>>,
}

/// The sign-in fields (under `properties`, or at the top level for Graph).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignIn<'a> {
    #[serde(borrow, default)]
    id: Option<LooseStr<'a>>,
    #[serde(borrow, default)]
    created_date_time: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user_principal_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    app_display_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    client_app_used: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    ip_address: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    device_detail: Option<DeviceDetail<'a>>,
    #[serde(borrow, default)]
    location: Option<LocationField<'a>>,
    #[serde(borrow, default)]
    status: Option<Status<'a>>,
}

/// A record of either shape. The sign-in fields are repeated here rather than flattened: serde's
/// `flatten` buffers every unknown key, which costs a third of the parsing time.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record<'a> {
    #[serde(borrow, default)]
    time: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    category: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    properties: Option<SignIn<'a>>,
    #[serde(borrow, default)]
    id: Option<LooseStr<'a>>,
    #[serde(borrow, default)]
    created_date_time: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user_principal_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    app_display_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    client_app_used: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    ip_address: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    device_detail: Option<DeviceDetail<'a>>,
    #[serde(borrow, default)]
    location: Option<LocationField<'a>>,
    #[serde(borrow, default)]
    status: Option<Status<'a>>,
}

impl<'a> Record<'a> {
    /// (time, category, the sign-in, whether it was the Graph shape).
    fn split(self) -> (Option<Cow<'a, str>>, Option<Cow<'a, str>>, SignIn<'a>, bool) {
        match self.properties {
            Some(p) => (self.time, self.category, p, false),
            None => (
                self.time,
                self.category,
                SignIn {
                    id: self.id,
                    created_date_time: self.created_date_time,
                    user_principal_name: self.user_principal_name,
                    app_display_name: self.app_display_name,
                    client_app_used: self.client_app_used,
                    ip_address: self.ip_address,
                    device_detail: self.device_detail,
                    location: self.location,
                    status: self.status,
                },
                true,
            ),
        }
    }
}

struct NormalizeAzure {
    max_field_bytes: usize,
    layout: Layout,
}

fn text<'a>(v: &'a Option<Cow<'_, str>>) -> Option<&'a str> {
    v.as_deref()
}

impl Transform for NormalizeAzure {
    fn process(&mut self, batch: Batch, out: &mut Emitter) -> Result<(), StageError> {
        normalize_batch(batch, "normalize-azure", &self.layout, self.max_field_bytes, out, parse)
    }
}

/// One record → one row in the `azure` family's column order.
fn parse(raw: &str, row_out: &mut dyn FnMut(&[Val<'_>])) -> Result<Outcome, String> {
    let rec: Record<'_> = serde_json::from_str(raw).map_err(|e| json_problem(&e))?;
    let (time, category, s, graph) = rec.split();
    let user = clean(s.user_principal_name).ok_or("no user: userPrincipalName is missing or empty")?;
    let time_text = clean(time)
        .or(clean(s.created_date_time))
        .ok_or_else(|| format!("no time: {} is missing", if graph { "createdDateTime" } else { "time" }))?;
    let ts = parse_timestamp(&time_text).ok_or_else(|| format!("unreadable time \"{}\"", excerpt(&time_text)))?;
    let id = match s.id.map(LooseStr::into_string).filter(|v| !v.is_empty()) {
        Some(id) => id,
        None => hash_id(raw),
    };
    let (browser, device, os) = match s.device_detail {
        Some(d) => (clean(d.browser), clean(d.display_name), clean(d.operating_system)),
        None => (None, None, None),
    };
    let (city, state, country, lat, lon) = match s.location {
        Some(LocationField::Object(l)) => {
            let (lat, lon) = l
                .geo_coordinates
                .map(|g| (g.latitude.and_then(|v| v.value()), g.longitude.and_then(|v| v.value())))
                .unwrap_or((None, None));
            (clean(l.city), clean(l.state), clean(l.country_or_region), lat, lon)
        }
        _ => (None, None, None, None, None),
    };
    let (error_code, failure) = match s.status {
        Some(st) => (st.error_code.map(LooseStr::into_string), clean(st.failure_reason)),
        None => (None, None),
    };
    let app = clean(s.app_display_name);
    let client = clean(s.client_app_used);
    let ip = clean(s.ip_address);
    let loc = location(text(&city), text(&country));
    let category = clean(category);
    row_out(&[
        Val::Text(Some(&id)),
        Val::Time(ts),
        Val::Text(Some(&user)),
        Val::Text(Some(text(&app).unwrap_or(MISSING))),
        Val::Text(Some(text(&client).unwrap_or(MISSING))),
        Val::Text(Some(text(&browser).unwrap_or(MISSING))),
        Val::Text(Some(text(&device).unwrap_or(MISSING))),
        Val::Text(Some(text(&os).unwrap_or(MISSING))),
        Val::Text(Some(text(&failure).unwrap_or(MISSING))),
        Val::Text(Some(&loc)),
        Val::Text(ip.as_deref().map(super::clean_ip)),
        Val::Text(text(&city)),
        Val::Text(text(&state)),
        Val::Text(text(&country)),
        Val::Float(lat),
        Val::Float(lon),
        Val::Text(Some(text(&category).unwrap_or(if graph { "SignInLogs" } else { MISSING }))),
        Val::Text(error_code.as_deref()),
    ]);
    Ok(Outcome::Row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_follow_the_family_column_order() {
        let family = dfp_core::Registry::global().families().get(FAMILY).cloned().expect("azure is built in");
        let raw = r#"{"time":"2026-10-01T08:00:00Z","properties":{"id":"x1","userPrincipalName":"a@b.c",
            "appDisplayName":"Teams","clientAppUsed":"Browser","ipAddress":"203.0.113.9:443",
            "deviceDetail":{"browser":"Edge 1","displayName":"PC","operatingSystem":"Windows10"},
            "location":{"city":"Oslo","state":"Oslo","countryOrRegion":"NO","geoCoordinates":{"latitude":59.9,"longitude":10.7}},
            "status":{"errorCode":0,"failureReason":"Other."}}}"#;
        let mut row: Vec<String> = Vec::new();
        parse(raw, &mut |r: &[Val<'_>]| row = r.iter().map(Val::shown).collect()).unwrap();
        let by_name: std::collections::HashMap<&str, &str> =
            family.columns.iter().map(|c| c.name.as_str()).zip(row.iter().map(String::as_str)).collect();
        assert_eq!(row.len(), family.columns.len());
        assert_eq!(by_name["id"], "x1");
        assert_eq!(by_name["username"], "a@b.c");
        assert_eq!(by_name["appDisplayName"], "Teams");
        assert_eq!(by_name["deviceDetailbrowser"], "Edge 1");
        assert_eq!(by_name["deviceDetaildisplayName"], "PC");
        assert_eq!(by_name["deviceDetailoperatingSystem"], "Windows10");
        assert_eq!(by_name["statusfailureReason"], "Other.");
        assert_eq!(by_name["location"], "Oslo, NO");
        assert_eq!(by_name["ipAddress"], "203.0.113.9");
        assert_eq!(by_name["latitude"], "59.9");
        assert_eq!(by_name["category"], "missing");
        assert_eq!(by_name["errorCode"], "0");
    }
}
