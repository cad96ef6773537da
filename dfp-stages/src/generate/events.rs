//! Generated sign-ins as Arrow rows: what a log family's **sample writer** receives.
//!
//! `dfp generate` renders Azure and Duo records itself. Any other family (a plugin's, or one of yours) can
//! be generated too when it names a `sample_writer:` — a transform stage type that takes batches of the
//! columns below (one row per generated sign-in, in time order) and emits, for each input batch, a batch
//! with one text column `raw`: one JSON record per input row, in the same order. The generator writes those
//! records into the usual `train/` and `infer/` files and labels them by `id`. The example plugin in
//! `dfp-plugins/` that exports a log family has a complete sample writer.
//!
//! | column | type | meaning |
//! | --- | --- | --- |
//! | `id` | text | the event id (a UUID): the writer must put it where the family's `id` column is read from, as labels use it |
//! | `correlation_id` | text | a UUID shared by the events of one sign-in flow |
//! | `timestamp` | timestamp µs, UTC | when |
//! | `username` | text | the user's principal name (an e-mail address) |
//! | `user_display_name` | text | "First Last" |
//! | `user_id` | text | the user's directory object id (a UUID, stable per user) |
//! | `app` | text | the application's display name |
//! | `app_id` | text | the application's id (a UUID, stable per app) |
//! | `ip` | text | the client address (IPv4 or IPv6) |
//! | `city`, `state`, `country` | text | where the client is (country as a name: "United States") |
//! | `country_code` | text | ISO 3166 alpha-2 code of the country |
//! | `latitude`, `longitude` | float | of the city |
//! | `os`, `browser` | text | the client's operating system ("Windows 10") and browser ("Chrome 119.0.0") |
//! | `user_agent` | text | the raw user agent |
//! | `mobile` | bool | a phone or tablet |
//! | `device_name` | text | the device's name |
//! | `device_id` | text, null | the device id (a UUID) of a registered device |
//! | `interactive` | bool | the user signed in (false: an app reached through an existing session) |
//! | `failure` | text, null | why it failed: `invalid_credentials`, `user_cancelled`, `no_response`, `unenrolled`, `locked`; null for a success |
//! | `enrollment` | bool | (Duo) an enrollment rather than an authentication; other writers treat it as a sign-in |

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanBuilder, Float64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::format::TICKS_PER_SEC;
use super::population::Population;
use super::scenario::{Event, Failure};
use super::tables::{APPS, CITIES, PLATFORMS};

/// The schema of the batches a sample writer receives.
pub fn schema() -> SchemaRef {
    let text = |n: &str, nullable: bool| Field::new(n, DataType::Utf8, nullable);
    let flag = |n: &str| Field::new(n, DataType::Boolean, false);
    let float = |n: &str| Field::new(n, DataType::Float64, false);
    Arc::new(Schema::new(vec![
        text("id", false),
        text("correlation_id", false),
        Field::new("timestamp", DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())), false),
        text("username", false),
        text("user_display_name", false),
        text("user_id", false),
        text("app", false),
        text("app_id", false),
        text("ip", false),
        text("city", false),
        text("state", false),
        text("country", false),
        text("country_code", false),
        float("latitude"),
        float("longitude"),
        text("os", false),
        text("browser", false),
        text("user_agent", false),
        flag("mobile"),
        text("device_name", false),
        text("device_id", true),
        flag("interactive"),
        text("failure", true),
        flag("enrollment"),
    ]))
}

/// The name of a failure in the `failure` column.
fn failure_name(f: Failure) -> &'static str {
    match f {
        Failure::InvalidCredentials => "invalid_credentials",
        Failure::UserCancelled => "user_cancelled",
        Failure::NoResponse => "no_response",
        Failure::Unenrolled => "unenrolled",
        Failure::Locked => "locked",
    }
}

/// The rows of `events`.
pub(crate) fn batch(population: &Population, events: &[Event]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let n = events.len();
    let text = || StringBuilder::with_capacity(n, n * 24);
    let (mut id, mut correlation, mut user, mut display, mut user_id, mut app, mut app_id, mut ip) =
        (text(), text(), text(), text(), text(), text(), text(), text());
    let (mut city, mut state, mut country, mut code, mut os, mut browser, mut agent, mut device, mut device_id) =
        (text(), text(), text(), text(), text(), text(), text(), text(), text());
    let mut failure = text();
    let mut time = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("+00:00");
    let (mut lat, mut lon) = (Float64Builder::with_capacity(n), Float64Builder::with_capacity(n));
    let (mut mobile, mut interactive, mut enrollment) =
        (BooleanBuilder::with_capacity(n), BooleanBuilder::with_capacity(n), BooleanBuilder::with_capacity(n));
    for e in events {
        let u = &population.users[e.user as usize];
        let d = &population.devices[e.device as usize];
        let platform = &PLATFORMS[d.platform];
        let place = &CITIES[usize::from(e.city)];
        id.append_value(e.id.to_string());
        correlation.append_value(e.correlation.to_string());
        time.append_value(e.ticks.div_euclid(TICKS_PER_SEC / 1_000_000));
        user.append_value(&u.upn);
        display.append_value(&u.display_name);
        user_id.append_value(u.object_id.to_string());
        app.append_value(APPS[usize::from(e.app)].name);
        app_id.append_value(population.app_ids[usize::from(e.app)].to_string());
        ip.append_value(e.ip.to_string());
        city.append_value(place.name);
        state.append_value(place.state);
        country.append_value(place.country);
        code.append_value(place.country_code);
        lat.append_value(place.latitude);
        lon.append_value(place.longitude);
        os.append_value(platform.azure_os);
        browser.append_value(platform.azure_browser);
        agent.append_value(platform.user_agent);
        mobile.append_value(platform.mobile);
        device.append_value(&d.name);
        device_id.append_option(d.device_id.map(|u| u.to_string()));
        interactive.append_value(e.interactive);
        failure.append_option(e.failure.map(failure_name));
        enrollment.append_value(e.enrollment);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(correlation.finish()),
        Arc::new(time.finish()),
        Arc::new(user.finish()),
        Arc::new(display.finish()),
        Arc::new(user_id.finish()),
        Arc::new(app.finish()),
        Arc::new(app_id.finish()),
        Arc::new(ip.finish()),
        Arc::new(city.finish()),
        Arc::new(state.finish()),
        Arc::new(country.finish()),
        Arc::new(code.finish()),
        Arc::new(lat.finish()),
        Arc::new(lon.finish()),
        Arc::new(os.finish()),
        Arc::new(browser.finish()),
        Arc::new(agent.finish()),
        Arc::new(mobile.finish()),
        Arc::new(device.finish()),
        Arc::new(device_id.finish()),
        Arc::new(interactive.finish()),
        Arc::new(failure.finish()),
        Arc::new(enrollment.finish()),
    ];
    RecordBatch::try_new(schema(), columns)
}
