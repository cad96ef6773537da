//! `write-okta`: the okta family's sample writer. `dfp generate okta` hands it generated sign-ins as rows
//! (the columns documented in dfp's `generate::events`) and it renders each as an Okta System Log event
//! (the System Log API `LogEvent` shape): interactive sign-ins as `user.session.start`, non-interactive ones
//! (an app reached through an existing session) as `user.authentication.sso`.
//!
//! Every value `normalize-okta` reads comes from the generated row: the user's e-mail
//! (`actor.alternateId`), the app (`target[0].displayName`), the address and place (`client.ipAddress`,
//! `client.geographicalContext`), the operating system and browser (`client.userAgent`) and the failure
//! (`outcome.reason`). Okta's own ids (`00u…` users, `0oa…` apps) are derived from the generated UUIDs, so
//! the same seed gives the same records.

use std::sync::Arc;

use dfp_plugin_sdk::arrow::array::{BooleanArray, Float64Array, StringArray, StringBuilder, TimestampMicrosecondArray};
use dfp_plugin_sdk::prelude::*;
use serde::Serialize;

/// Renders generated sign-ins as Okta events (used by `dfp generate okta`).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WriteOkta {}

impl Stage for WriteOkta {
    const TYPE: &'static str = "write-okta";
    const KIND: Kind = Kind::Transform;
    const DESCRIPTION: &'static str = "generated sign-ins → Okta System Log events (the okta family's sample writer)";
    fn build(&self, _ctx: &Context) -> Result<Instance, Error> {
        Ok(Instance::transform(Writer))
    }
}

struct Writer;

/// A central postal code per generated city (`None` where a geolocation database would have none).
const POSTAL_CODES: [(&str, Option<&str>); 32] = [
    ("Seattle", Some("98101")),
    ("San Francisco", Some("94103")),
    ("New York", Some("10001")),
    ("Austin", Some("78701")),
    ("Chicago", Some("60601")),
    ("Boston", Some("02108")),
    ("Toronto", Some("M5H")),
    ("London", Some("EC1A")),
    ("Dublin", Some("D02")),
    ("Berlin", Some("10115")),
    ("Amsterdam", Some("1012")),
    ("Bengaluru", Some("560001")),
    ("Singapore", Some("048616")),
    ("Sydney", Some("2000")),
    ("Tokyo", Some("100-0005")),
    ("Los Angeles", Some("90012")),
    ("Denver", Some("80202")),
    ("Atlanta", Some("30303")),
    ("Vancouver", Some("V6B")),
    ("Manchester", Some("M1")),
    ("Munich", Some("80331")),
    ("Paris", Some("75001")),
    ("Madrid", Some("28013")),
    ("Hyderabad", Some("500001")),
    ("Melbourne", Some("3000")),
    ("Sao Paulo", Some("01000")),
    ("Lagos", None),
    ("Moscow", Some("101000")),
    ("Bucharest", Some("010011")),
    ("Ho Chi Minh City", Some("700000")),
    ("Johannesburg", Some("2001")),
    ("Dubai", None),
];

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Record<'a> {
    uuid: &'a str,
    published: String,
    event_type: &'static str,
    version: &'static str,
    severity: &'static str,
    display_message: &'static str,
    actor: Actor<'a>,
    client: Client<'a>,
    outcome: Outcome,
    target: [Target<'a>; 1],
    authentication_context: AuthenticationContext,
    security_context: SecurityContext,
    transaction: Transaction,
    debug_context: DebugContext,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Actor<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    alternate_id: &'a str,
    display_name: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Client<'a> {
    user_agent: UserAgent<'a>,
    zone: &'static str,
    device: &'static str,
    id: Option<&'static str>,
    ip_address: &'a str,
    geographical_context: GeographicalContext<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserAgent<'a> {
    raw_user_agent: &'a str,
    os: &'a str,
    browser: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GeographicalContext<'a> {
    city: &'a str,
    state: &'a str,
    country: &'a str,
    postal_code: Option<&'static str>,
    geolocation: Geolocation,
}

#[derive(Serialize)]
struct Geolocation {
    lat: f64,
    lon: f64,
}

#[derive(Serialize)]
struct Outcome {
    result: &'static str,
    reason: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Target<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    alternate_id: &'a str,
    display_name: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AuthenticationContext {
    authentication_step: u32,
    external_session_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SecurityContext {
    as_number: Option<u32>,
    as_org: Option<&'static str>,
    isp: Option<&'static str>,
    domain: Option<&'static str>,
    is_proxy: bool,
}

/// Serializes as `{}`.
#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Transaction {
    #[serde(rename = "type")]
    kind: &'static str,
    id: String,
    detail: Empty,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DebugContext {
    debug_data: DebugData,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DebugData {
    request_uri: &'static str,
}

/// Okta's `outcome.reason` of a generated failure.
fn failure_reason(failure: &str) -> &'static str {
    match failure {
        "invalid_credentials" => "INVALID_CREDENTIALS",
        "user_cancelled" | "no_response" => "VERIFICATION_ERROR",
        "locked" => "LOCKED_OUT",
        _ => "GENERAL_NONSUCCESS",
    }
}

/// Okta's `client.userAgent.os`, `client.userAgent.browser` and `client.device` of a generated client: the
/// operating system in Okta's words (Windows builds kept apart), the browser family upper-cased (`UNKNOWN`
/// for a script).
fn user_agent<'a>(os: &'a str, browser: &str, mobile: bool) -> (&'a str, &'static str, &'static str) {
    let os = match os {
        "MacOs" => "Mac OS X",
        os if os.starts_with("iOS") => "iOS",
        os if os.starts_with("Android") => "Android",
        os => os,
    };
    let browser = if browser.starts_with("Edge") {
        "EDGE"
    } else if browser.starts_with("Chrome") {
        "CHROME"
    } else if browser.starts_with("Firefox") {
        "FIREFOX"
    } else if browser.starts_with("Safari") || browser.starts_with("Mobile Safari") {
        "SAFARI"
    } else {
        "UNKNOWN"
    };
    let device = if mobile {
        "Mobile"
    } else if browser == "UNKNOWN" {
        "Unknown"
    } else {
        "Computer"
    };
    (os, browser, device)
}

/// The 128 bits of a UUID written `8-4-4-4-12`.
fn uuid_bits(text: &str) -> Result<u128, Error> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    u128::from_str_radix(&hex, 16).map_err(|_| Error(format!("\"{text}\" is not a UUID")))
}

/// An Okta-style id: `prefix` followed by `len` letters (both cases) and digits drawn deterministically from
/// `bits` (user ids `00u…` and app ids `0oa…` have 17 after the prefix).
fn okta_id(prefix: &str, bits: u128, len: usize) -> String {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut state = (bits as u64) ^ ((bits >> 64) as u64).rotate_left(29);
    let mut id = String::with_capacity(prefix.len() + len);
    id.push_str(prefix);
    for _ in 0..len {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        id.push(char::from(ALPHABET[(z % 62) as usize]));
    }
    id
}

/// `2026-10-01T08:15:02.123Z` from microseconds since the epoch.
fn published(micros: i64) -> Result<String, Error> {
    let t =
        chrono::DateTime::from_timestamp_micros(micros).ok_or_else(|| Error(format!("time {micros} out of range")))?;
    Ok(t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
}

fn text<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray, Error> {
    batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<StringArray>()).ok_or_else(|| {
        Error(format!("write-okta: input has no text column \"{name}\" (is this dfp generate's output?)"))
    })
}

fn flag<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a BooleanArray, Error> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
        .ok_or_else(|| Error(format!("write-okta: input has no boolean column \"{name}\"")))
}

fn float<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a Float64Array, Error> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<Float64Array>())
        .ok_or_else(|| Error(format!("write-okta: input has no float column \"{name}\"")))
}

fn opt(a: &StringArray, i: usize) -> Option<&str> {
    (!a.is_null(i)).then(|| a.value(i))
}

impl Transform for Writer {
    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), Error> {
        let time = batch
            .column_by_name("timestamp")
            .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
            .ok_or("write-okta: input has no microsecond `timestamp` column")?;
        let (id, correlation, user, display, user_id) = (
            text(&batch, "id")?,
            text(&batch, "correlation_id")?,
            text(&batch, "username")?,
            text(&batch, "user_display_name")?,
            text(&batch, "user_id")?,
        );
        let (app, app_id, ip, city, state, country) = (
            text(&batch, "app")?,
            text(&batch, "app_id")?,
            text(&batch, "ip")?,
            text(&batch, "city")?,
            text(&batch, "state")?,
            text(&batch, "country")?,
        );
        let (os, browser, agent, failure) =
            (text(&batch, "os")?, text(&batch, "browser")?, text(&batch, "user_agent")?, text(&batch, "failure")?);
        let (mobile, interactive) = (flag(&batch, "mobile")?, flag(&batch, "interactive")?);
        let (lat, lon) = (float(&batch, "latitude")?, float(&batch, "longitude")?);
        let mut raw = StringBuilder::with_capacity(batch.num_rows(), batch.num_rows() * 1200);
        for i in 0..batch.num_rows() {
            let event_id = uuid_bits(id.value(i))?;
            let correlation_bits = uuid_bits(correlation.value(i))?;
            let (os, browser, device_kind) = user_agent(os.value(i), browser.value(i), mobile.value(i));
            let (event_type, display_message) = if interactive.value(i) {
                ("user.session.start", "User login to Okta")
            } else {
                ("user.authentication.sso", "User single sign on to app")
            };
            let failed = opt(failure, i);
            let actor_id = okta_id("00u", uuid_bits(user_id.value(i))?, 17);
            let target_id = okta_id("0oa", uuid_bits(app_id.value(i))?, 17);
            let record = Record {
                uuid: id.value(i),
                published: published(time.value(i))?,
                event_type,
                version: "0",
                severity: if failed.is_some() { "WARN" } else { "INFO" },
                display_message,
                actor: Actor {
                    id: &actor_id,
                    kind: "User",
                    alternate_id: user.value(i),
                    display_name: display.value(i),
                },
                client: Client {
                    user_agent: UserAgent { raw_user_agent: agent.value(i), os, browser },
                    zone: "null",
                    device: device_kind,
                    id: None,
                    ip_address: ip.value(i),
                    geographical_context: GeographicalContext {
                        city: city.value(i),
                        state: state.value(i),
                        country: country.value(i),
                        postal_code: POSTAL_CODES.iter().find(|(c, _)| *c == city.value(i)).and_then(|(_, p)| *p),
                        geolocation: Geolocation { lat: lat.value(i), lon: lon.value(i) },
                    },
                },
                outcome: match failed {
                    Some(f) => Outcome { result: "FAILURE", reason: Some(failure_reason(f)) },
                    None => Outcome { result: "SUCCESS", reason: None },
                },
                target: [Target {
                    id: &target_id,
                    kind: "AppInstance",
                    alternate_id: app.value(i),
                    display_name: app.value(i),
                }],
                authentication_context: AuthenticationContext {
                    authentication_step: 0,
                    external_session_id: okta_id("102", correlation_bits, 22),
                },
                security_context: SecurityContext {
                    as_number: None,
                    as_org: None,
                    isp: None,
                    domain: None,
                    is_proxy: false,
                },
                transaction: Transaction {
                    kind: "WEB",
                    id: okta_id("", event_id ^ correlation_bits, 27),
                    detail: Empty {},
                },
                debug_context: DebugContext { debug_data: DebugData { request_uri: "/api/v1/authn" } },
            };
            raw.append_value(serde_json::to_string(&record).map_err(|e| Error(e.to_string()))?);
        }
        let schema = Arc::new(Schema::new(vec![Field::new("raw", DataType::Utf8, false)]));
        out.emit(RecordBatch::try_new(schema, vec![Arc::new(raw.finish())])?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn okta_ids_are_stable_and_alphanumeric() {
        let a = okta_id("00u", 42, 17);
        assert_eq!(a.len(), 20);
        assert!(a.starts_with("00u") && a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(a, okta_id("00u", 42, 17));
        assert_ne!(a, okta_id("00u", 43, 17));
        assert_ne!(a, okta_id("00u", 42 << 64, 17));
    }

    #[test]
    fn uuids_and_times_read_back() {
        assert_eq!(uuid_bits("00000000-0000-4000-8000-00000000002a").unwrap(), (0x4000_8000u128 << 48) | 42);
        assert!(uuid_bits("not-a-uuid").is_err());
        assert_eq!(published(1_790_812_800_123_456).unwrap(), "2026-10-01T00:00:00.123Z");
    }

    #[test]
    fn clients_read_like_okta() {
        assert_eq!(user_agent("MacOs", "Safari 17.1", false), ("Mac OS X", "SAFARI", "Computer"));
        assert_eq!(user_agent("iOS 17", "Mobile Safari 17", true), ("iOS", "SAFARI", "Mobile"));
        assert_eq!(user_agent("Linux", "python-requests", false), ("Linux", "UNKNOWN", "Unknown"));
        assert_eq!(failure_reason("locked"), "LOCKED_OUT");
    }
}
