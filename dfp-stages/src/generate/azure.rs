//! Renders events as Azure AD sign-in logs in the Azure Monitor diagnostic-settings export shape
//! (`category` `SignInLogs` or `NonInteractiveUserSignInLogs`, the sign-in under `properties`).

use std::io::{self, Write};

use serde::Serialize;

use super::format::{Ts, TsStyle, Uuid};
use super::population::Population;
use super::scenario::{Event, Failure};
use super::tables::{APPS, CITIES, PLATFORMS};
use super::Kind;

/// What is fixed for a whole data set.
pub(crate) struct AzureContext {
    resource_id: String,
    tenant: String,
}

impl AzureContext {
    pub(crate) fn new(population: &Population) -> AzureContext {
        let tenant = population.tenant.to_string();
        AzureContext { resource_id: format!("/tenants/{tenant}/providers/Microsoft.aadiam"), tenant }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Record<'a> {
    time: Ts,
    resource_id: &'a str,
    operation_name: &'static str,
    operation_version: &'static str,
    category: &'static str,
    tenant_id: &'a str,
    result_type: &'a str,
    result_signature: &'static str,
    result_description: &'static str,
    duration_ms: u32,
    caller_ip_address: &'a str,
    correlation_id: Uuid,
    identity: &'a str,
    #[serde(rename = "Level")]
    level: u8,
    location: &'static str,
    properties: Properties<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Properties<'a> {
    id: Uuid,
    created_date_time: Ts,
    user_display_name: &'a str,
    user_principal_name: &'a str,
    user_id: Uuid,
    app_id: Uuid,
    app_display_name: &'static str,
    ip_address: &'a str,
    status: Status,
    client_app_used: &'static str,
    user_agent: &'static str,
    device_detail: DeviceDetail<'a>,
    location: Location,
    conditional_access_status: &'static str,
    is_interactive: bool,
    risk_level_aggregated: &'static str,
    risk_state: &'static str,
    token_issuer_type: &'static str,
    resource_display_name: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    error_code: u32,
    failure_reason: &'static str,
    additional_details: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeviceDetail<'a> {
    device_id: &'a str,
    display_name: &'a str,
    operating_system: &'static str,
    browser: &'static str,
    is_compliant: bool,
    is_managed: bool,
    trust_type: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Location {
    city: &'static str,
    state: &'static str,
    country_or_region: &'static str,
    geo_coordinates: Geo,
}

#[derive(Serialize)]
struct Geo {
    altitude: Option<f64>,
    latitude: f64,
    longitude: f64,
}

/// Azure error code, failure reason and details of a failure.
fn failure_status(failure: Failure) -> (u32, &'static str, &'static str, &'static str) {
    match failure {
        Failure::InvalidCredentials => (
            50126,
            "50126",
            "Invalid username or password or Invalid on-premise username or password.",
            "The user didn't enter the right credentials. It's expected to see some number of these errors in your logs due to users making mistakes.",
        ),
        Failure::UserCancelled | Failure::NoResponse => (
            500121,
            "500121",
            "Authentication failed during strong authentication request.",
            "The user didn't complete the MFA prompt. They may have decided not to authenticate, timed out while doing work elsewhere, or has an issue with their authentication setup.",
        ),
        Failure::Unenrolled => (
            50079,
            "50079",
            "Due to a configuration change made by your administrator, or because you moved to a new location, the user must enroll in multi-factor authentication.",
            "MFA registration required",
        ),
        Failure::Locked => (
            50053,
            "50053",
            "Account is locked because user tried to sign in too many times with an incorrect user ID or password.",
            "The account is locked after too many failed sign-in attempts.",
        ),
    }
}

/// Writes one event as an Azure sign-in record (compact JSON, no trailing newline).
pub(crate) fn write_event<W: Write>(
    out: &mut W,
    ctx: &AzureContext,
    population: &Population,
    e: &Event,
) -> io::Result<()> {
    let user = &population.users[e.user as usize];
    let app = &APPS[usize::from(e.app)];
    let device = &population.devices[e.device as usize];
    let platform = &PLATFORMS[device.platform];
    let city = &CITIES[usize::from(e.city)];
    let ip = e.ip.to_string();
    let device_id = device.device_id.map(|d| d.to_string()).unwrap_or_default();
    let (error_code, result_type, failure_reason, additional_details) = match e.failure {
        Some(f) => failure_status(f),
        None => (
            0,
            "0",
            "Other.",
            if e.kind == Kind::TokenTheft || !e.interactive {
                "MFA requirement satisfied by claim in the token"
            } else {
                "MFA completed in Azure AD"
            },
        ),
    };
    let record = Record {
        time: Ts(e.ticks, TsStyle::Ticks7Z),
        resource_id: &ctx.resource_id,
        operation_name: "Sign-in activity",
        operation_version: "1.0",
        category: if e.interactive { "SignInLogs" } else { "NonInteractiveUserSignInLogs" },
        tenant_id: &ctx.tenant,
        result_type,
        result_signature: "None",
        result_description: if e.failure.is_some() { failure_reason } else { "" },
        duration_ms: 0,
        caller_ip_address: &ip,
        correlation_id: e.correlation,
        identity: &user.display_name,
        level: 4,
        location: city.country_code,
        properties: Properties {
            id: e.id,
            created_date_time: Ts(e.ticks, TsStyle::Ticks7Offset),
            user_display_name: &user.display_name,
            user_principal_name: &user.upn,
            user_id: user.object_id,
            app_id: population.app_ids[usize::from(e.app)],
            app_display_name: app.name,
            ip_address: &ip,
            status: Status { error_code, failure_reason, additional_details },
            client_app_used: e.client.as_str(),
            user_agent: platform.user_agent,
            device_detail: DeviceDetail {
                device_id: &device_id,
                display_name: &device.name,
                operating_system: platform.azure_os,
                browser: platform.azure_browser,
                is_compliant: device.compliant,
                is_managed: device.managed,
                trust_type: device.trust_type,
            },
            location: Location {
                city: city.name,
                state: city.state,
                country_or_region: city.country_code,
                geo_coordinates: Geo { altitude: None, latitude: city.latitude, longitude: city.longitude },
            },
            conditional_access_status: if device.managed { "success" } else { "notApplied" },
            is_interactive: e.interactive,
            risk_level_aggregated: "none",
            risk_state: "none",
            token_issuer_type: "AzureAD",
            resource_display_name: app.name,
        },
    };
    serde_json::to_writer(out, &record).map_err(io::Error::from)
}
