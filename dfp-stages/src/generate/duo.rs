//! Renders events as Duo Admin API v2 authentication-log records.

use std::io::{self, Write};

use serde::Serialize;

use super::format::{Ts, TsStyle, Uuid, TICKS_PER_SEC};
use super::population::{Factor, Population};
use super::scenario::{Event, Failure};
use super::tables::{APPS, CITIES, DEPARTMENTS, PLATFORMS};

#[derive(Serialize)]
struct Record<'a> {
    access_device: AccessDevice<'a>,
    alias: &'static str,
    application: Application<'a>,
    auth_device: AuthDevice<'a>,
    email: &'a str,
    event_type: &'static str,
    factor: &'static str,
    isotimestamp: Ts,
    ood_software: Option<&'static str>,
    reason: &'static str,
    result: &'static str,
    timestamp: i64,
    trusted_endpoint_status: &'static str,
    txid: Uuid,
    user: DuoUser<'a>,
}

#[derive(Serialize)]
struct AccessDevice<'a> {
    browser: Option<&'static str>,
    browser_version: Option<&'static str>,
    flash_version: &'static str,
    hostname: Option<&'static str>,
    ip: &'a str,
    is_encryption_enabled: &'static str,
    is_firewall_enabled: &'static str,
    is_password_set: &'static str,
    java_version: &'static str,
    location: DuoLocation,
    os: Option<&'static str>,
    os_version: Option<&'static str>,
}

#[derive(Serialize)]
struct DuoLocation {
    city: Option<&'static str>,
    country: Option<&'static str>,
    state: Option<&'static str>,
}

#[derive(Serialize)]
struct Application<'a> {
    key: &'a str,
    name: &'static str,
}

#[derive(Serialize)]
struct AuthDevice<'a> {
    ip: &'a str,
    location: DuoLocation,
    name: &'a str,
}

#[derive(Serialize)]
struct DuoUser<'a> {
    groups: [&'static str; 1],
    key: &'a str,
    name: &'a str,
}

/// Duo result and reason of a failure.
fn failure_result(failure: Failure) -> (&'static str, &'static str) {
    match failure {
        Failure::InvalidCredentials => ("denied", "invalid_passcode"),
        Failure::UserCancelled => ("failure", "user_cancelled"),
        Failure::NoResponse => ("denied", "no_response"),
        Failure::Unenrolled => ("denied", "deny_unenrolled_user"),
        Failure::Locked => ("denied", "locked_out"),
    }
}

fn location(city: usize, known: bool) -> DuoLocation {
    if known {
        let c = &CITIES[city];
        DuoLocation { city: Some(c.name), country: Some(c.country), state: Some(c.state) }
    } else {
        DuoLocation { city: None, country: None, state: None }
    }
}

fn some_if(known: bool, value: &'static str) -> Option<&'static str> {
    (known && !value.is_empty()).then_some(value)
}

/// Writes one event as a Duo authentication-log record (compact JSON, no trailing newline).
pub(crate) fn write_event<W: Write>(out: &mut W, population: &Population, e: &Event) -> io::Result<()> {
    let user = &population.users[e.user as usize];
    let device = &population.devices[e.device as usize];
    let platform = &PLATFORMS[device.platform];
    let ip = e.ip.to_string();
    let auth_ip = e.auth_ip.to_string();
    let known = !e.sparse;
    let (event_type, factor, result, reason) = if e.enrollment {
        ("enrollment", Factor::NotAvailable.as_str(), "success", "allow_unenrolled_user")
    } else {
        let (result, reason) = match e.failure {
            Some(f) => failure_result(f),
            None => match e.factor {
                Factor::RememberedDevice => ("success", "remembered_device"),
                Factor::Passcode | Factor::SmsPasscode => ("success", "valid_passcode"),
                _ => ("success", "user_approved"),
            },
        };
        ("authentication", e.factor.as_str(), result, reason)
    };
    let record = Record {
        access_device: AccessDevice {
            browser: some_if(known, platform.duo_browser),
            browser_version: some_if(known, platform.duo_browser_version),
            flash_version: "uninstalled",
            hostname: None,
            ip: &ip,
            is_encryption_enabled: "unknown",
            is_firewall_enabled: "unknown",
            is_password_set: "unknown",
            java_version: "uninstalled",
            location: location(usize::from(e.city), known),
            os: some_if(known, platform.duo_os),
            os_version: some_if(known, platform.duo_os_version),
        },
        alias: "",
        application: Application { key: &population.app_keys[usize::from(e.app)], name: APPS[usize::from(e.app)].name },
        auth_device: AuthDevice {
            ip: &auth_ip,
            location: location(usize::from(e.auth_city), known),
            name: &user.phone_name,
        },
        email: &user.upn,
        event_type,
        factor,
        isotimestamp: Ts(e.ticks, TsStyle::Micros6Offset),
        ood_software: None,
        reason,
        result,
        timestamp: e.ticks.div_euclid(TICKS_PER_SEC),
        trusted_endpoint_status: if device.managed { "trusted" } else { "not trusted" },
        txid: e.id,
        user: DuoUser { groups: [DEPARTMENTS[user.department].0], key: &user.duo_key, name: user.local_part() },
    };
    serde_json::to_writer(out, &record).map_err(io::Error::from)
}
