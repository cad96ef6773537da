//! Renders events as Okta System Log sign-in events (the System Log API `LogEvent` shape): interactive
//! sign-ins as `user.session.start`, non-interactive ones (an app reached through an existing session) as
//! `user.authentication.sso`.
//!
//! Every value a normalizer needs comes from the same place as in the Azure records: the user's e-mail
//! (`actor.alternateId`), the app (`target[0].displayName`), the address and place
//! (`client.ipAddress`, `client.geographicalContext`), the operating system and browser
//! (`client.userAgent`), and the failure (`outcome.reason`).

use std::io::{self, Write};

use serde::Serialize;

use super::format::{okta_id, Ts, TsStyle, Uuid};
use super::population::Population;
use super::scenario::{Event, Failure};
use super::tables::{Platform, APPS, CITIES, PLATFORMS};

/// A plausible central postal code per entry of [`CITIES`] (`None` where the geolocation database would have
/// none).
const POSTAL_CODES: [Option<&str>; CITIES.len()] = [
    Some("98101"),
    Some("94103"),
    Some("10001"),
    Some("78701"),
    Some("60601"),
    Some("02108"),
    Some("M5H"),
    Some("EC1A"),
    Some("D02"),
    Some("10115"),
    Some("1012"),
    Some("560001"),
    Some("048616"),
    Some("2000"),
    Some("100-0005"),
    Some("90012"),
    Some("80202"),
    Some("30303"),
    Some("V6B"),
    Some("M1"),
    Some("80331"),
    Some("75001"),
    Some("28013"),
    Some("500001"),
    Some("3000"),
    Some("01000"),
    None,
    Some("101000"),
    Some("010011"),
    Some("700000"),
    Some("2001"),
    None,
];

/// What is fixed for a whole data set: the Okta ids of users and apps.
pub(crate) struct OktaContext {
    /// `00u…` per user, derived from the user's directory id (so from the seed).
    user_ids: Vec<String>,
    /// `0oa…` per entry of [`APPS`], derived from the app's name (the same in every data set).
    app_ids: Vec<String>,
}

impl OktaContext {
    pub(crate) fn new(population: &Population) -> OktaContext {
        OktaContext {
            user_ids: population.users.iter().map(|u| okta_id("00u", u.object_id.0, 17)).collect(),
            app_ids: population.app_ids.iter().map(|a| okta_id("0oa", a.0, 17)).collect(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Record<'a> {
    uuid: Uuid,
    published: Ts,
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
    user_agent: UserAgent,
    zone: &'static str,
    device: &'static str,
    id: Option<&'static str>,
    ip_address: &'a str,
    geographical_context: GeographicalContext,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserAgent {
    raw_user_agent: &'static str,
    os: &'static str,
    browser: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GeographicalContext {
    city: &'static str,
    state: &'static str,
    country: &'static str,
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
    alternate_id: &'static str,
    display_name: &'static str,
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

/// Okta `outcome.reason` of a failure.
fn failure_reason(failure: Failure) -> &'static str {
    match failure {
        Failure::InvalidCredentials => "INVALID_CREDENTIALS",
        Failure::UserCancelled | Failure::NoResponse => "VERIFICATION_ERROR",
        Failure::Unenrolled => "GENERAL_NONSUCCESS",
        Failure::Locked => "LOCKED_OUT",
    }
}

/// Okta's `client.userAgent.os`, `client.userAgent.browser` and `client.device` of a platform: the Azure
/// operating system in Okta's words (Windows builds kept apart, as Azure does), the browser family upper-cased
/// (`UNKNOWN` for a script).
pub(crate) fn user_agent(platform: &Platform) -> (&'static str, &'static str, &'static str) {
    let os = match platform.azure_os {
        "MacOs" => "Mac OS X",
        os if os.starts_with("iOS") => "iOS",
        os if os.starts_with("Android") => "Android",
        os => os,
    };
    let b = platform.azure_browser;
    let browser = if b.starts_with("Edge") {
        "EDGE"
    } else if b.starts_with("Chrome") {
        "CHROME"
    } else if b.starts_with("Firefox") {
        "FIREFOX"
    } else if b.starts_with("Safari") || b.starts_with("Mobile Safari") {
        "SAFARI"
    } else {
        "UNKNOWN"
    };
    let device = if platform.mobile {
        "Mobile"
    } else if browser == "UNKNOWN" {
        "Unknown"
    } else {
        "Computer"
    };
    (os, browser, device)
}

/// Writes one event as an Okta System Log event (compact JSON, no trailing newline).
pub(crate) fn write_event<W: Write>(
    out: &mut W,
    ctx: &OktaContext,
    population: &Population,
    e: &Event,
) -> io::Result<()> {
    let user = &population.users[e.user as usize];
    let app = usize::from(e.app);
    let device = &population.devices[e.device as usize];
    let platform = &PLATFORMS[device.platform];
    let city = usize::from(e.city);
    let place = &CITIES[city];
    let ip = e.ip.to_string();
    let (os, browser, device_kind) = user_agent(platform);
    let (event_type, display_message) = if e.interactive {
        ("user.session.start", "User login to Okta")
    } else {
        ("user.authentication.sso", "User single sign on to app")
    };
    let record = Record {
        uuid: e.id,
        published: Ts(e.ticks, TsStyle::Millis3Z),
        event_type,
        version: "0",
        severity: if e.failure.is_some() { "WARN" } else { "INFO" },
        display_message,
        actor: Actor {
            id: &ctx.user_ids[e.user as usize],
            kind: "User",
            alternate_id: &user.upn,
            display_name: &user.display_name,
        },
        client: Client {
            user_agent: UserAgent { raw_user_agent: platform.user_agent, os, browser },
            zone: "null",
            device: device_kind,
            id: None,
            ip_address: &ip,
            geographical_context: GeographicalContext {
                city: place.name,
                state: place.state,
                country: place.country,
                postal_code: POSTAL_CODES[city],
                geolocation: Geolocation { lat: place.latitude, lon: place.longitude },
            },
        },
        outcome: match e.failure {
            Some(f) => Outcome { result: "FAILURE", reason: Some(failure_reason(f)) },
            None => Outcome { result: "SUCCESS", reason: None },
        },
        target: [Target {
            id: &ctx.app_ids[app],
            kind: "AppInstance",
            alternate_id: APPS[app].name,
            display_name: APPS[app].name,
        }],
        authentication_context: AuthenticationContext {
            authentication_step: 0,
            external_session_id: okta_id("102", e.correlation.0, 22),
        },
        security_context: SecurityContext { as_number: None, as_org: None, isp: None, domain: None, is_proxy: false },
        transaction: Transaction { kind: "WEB", id: okta_id("", e.id.0 ^ e.correlation.0, 27), detail: Empty {} },
        debug_context: DebugContext { debug_data: DebugData { request_uri: "/api/v1/authn" } },
    };
    serde_json::to_writer(out, &record).map_err(io::Error::from)
}
