//! The profile benchmark (`dfp bench --profiles N`): a profile set of `N` synthetic users, then `2·N`
//! events of those users (and as many of users the set does not know) through `features` with profiles
//! on. Reports events/s and the peak memory of the scoring half.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, StringBuilder, TimestampMicrosecondBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use dfp_core::{Family, Pipeline, RunOptions};
use serde_json::json;

use super::store::{encode_set, ProfileStore, RegistryProfiles};
use super::{roles_of, DayEntry, Profile, SeenEntry};
use crate::time::DAY_MICROS;

/// What the benchmark measured.
#[derive(Debug, Clone)]
pub struct ProfileBench {
    /// Users in the profile set.
    pub users: u64,
    /// Seconds to build and publish the set.
    pub publish_secs: f64,
    /// Bytes of the published set.
    pub set_bytes: u64,
    /// Events through `features`.
    pub events: u64,
    /// Seconds of the `features` run.
    pub run_secs: f64,
    /// Peak resident memory during the run (MiB), when the platform says.
    pub peak_rss_mib: Option<f64>,
    /// Seconds to write one worker's checkpoint of every user (the streaming pipeline's periodic cost).
    pub checkpoint_secs: f64,
    /// Bytes of that checkpoint.
    pub checkpoint_bytes: u64,
}

const APPS: [&str; 6] = ["Outlook", "Teams", "SharePoint", "Azure Portal", "VPN", "Workday"];
const COUNTRIES: [&str; 5] = ["US", "NO", "DE", "IN", "BR"];
const BROWSERS: [&str; 4] = ["Edge 120", "Chrome 121", "Firefox 122", "Safari 17"];
const OSES: [&str; 3] = ["Windows 11", "macOS 14", "iOS 17"];

/// A realistic profile: a few apps, one country and city, two browsers, one device and two IP prefixes
/// of its own.
fn synthetic(u: u64, roles: &[&str], now: i64) -> Profile {
    let k = u as usize;
    let mut seen: BTreeMap<String, Vec<SeenEntry>> = BTreeMap::new();
    let first = now - 20 * DAY_MICROS;
    let entry = |v: String, c: u32| SeenEntry(v, first, now - DAY_MICROS, c);
    for role in roles {
        let values: Vec<SeenEntry> = match *role {
            "app" => (0..3).map(|i| entry(APPS[(k + i) % APPS.len()].to_string(), 20)).collect(),
            "country" => vec![entry(COUNTRIES[k % COUNTRIES.len()].to_string(), 60)],
            "city" => vec![entry(format!("City {}", k % 500), 60)],
            "browser" => (0..2).map(|i| entry(BROWSERS[(k + i) % BROWSERS.len()].to_string(), 30)).collect(),
            "os" => vec![entry(OSES[k % OSES.len()].to_string(), 60)],
            "device" => vec![entry(format!("LAPTOP-{u:07}"), 60)],
            "ip" => (0..2).map(|i| entry(format!("10.{}.{}", (u >> 8) & 255, (u + i) & 255), 30)).collect(),
            _ => Vec::new(),
        };
        seen.insert((*role).to_string(), values);
    }
    Profile {
        user: format!("user{u:07}@bench.example"),
        events: 60,
        failures: 2,
        first: Some(first),
        last: Some(now - DAY_MICROS),
        hours: (0..24).map(|h| if (8..18).contains(&h) { 5 } else { 0 }).collect(),
        weekdays: vec![12, 12, 12, 12, 12, 0, 0],
        seen,
        days: vec![DayEntry {
            day: (now - DAY_MICROS).div_euclid(DAY_MICROS),
            count: 3,
            locations: vec![format!("City {}, {}", k % 500, COUNTRIES[k % COUNTRIES.len()])],
            apps: vec![APPS[k % APPS.len()].to_string()],
        }],
        recent: Vec::new(),
        replay: Vec::new(),
        pruned: None,
    }
}

/// Resets the process's peak-RSS mark (Linux: `/proc/self/clear_refs`), so that the next reading covers
/// only what follows.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident memory (VmHWM), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Runs the benchmark with `users` users on `workers` workers, using `dir` for the registry.
pub fn run(users: u64, workers: usize, dir: &std::path::Path) -> Result<ProfileBench, String> {
    let families = dfp_core::Registry::global().families().clone();
    let family: Arc<Family> = families.require("azure")?.clone();
    let roles = roles_of(&family);
    let now = 1_790_812_800_000_000i64;
    let registry_dir = dir.join("registry");
    let location = registry_dir.display().to_string();

    let started = Instant::now();
    let registry =
        crate::registry::open(&location, &Default::default(), &Default::default()).map_err(|e| e.to_string())?;
    let store = RegistryProfiles::new(registry);
    let population = synthetic(0, &roles, now);
    let files = encode_set(
        &family,
        30,
        (0..users).map(|u| synthetic(u, &roles, now)),
        Profile { user: String::new(), ..population },
        crate::time::format_micros(now),
    )
    .map_err(|e| e.0)?;
    let set_bytes = files.iter().map(|(_, b)| b.len() as u64).sum();
    let (names, blobs): (Vec<String>, Vec<Vec<u8>>) = files.into_iter().unzip();
    let refs: Vec<(&str, Vec<u8>)> = names.iter().map(String::as_str).zip(blobs).collect();
    store.publish(&family, &refs).map_err(|e| e.0)?;
    drop(refs);
    let publish_secs = started.elapsed().as_secs_f64();

    let pipeline = Pipeline::builder("profiles-bench")
        .family("azure")
        .workers(workers)
        .stage("events", "embedded-input", &[], json!({}))
        .stage("features", "features", &["events"], json!({"profiles": location}))
        .stage("sink", "blackhole", &["features"], json!({}))
        .build()
        .map_err(|e| e.to_string())?;
    reset_peak_rss();
    let started = Instant::now();
    let mut running = pipeline.spawn(RunOptions::default()).map_err(|e| e.to_string())?;
    let columns: Vec<(&str, String)> = roles
        .iter()
        .filter_map(|r| family.roles.get(r).map(|c| (*r, c.to_string())))
        .chain(family.roles.location.clone().map(|c| ("location", c)))
        .collect();
    let mut fields = vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("username", DataType::Utf8, false),
        Field::new("timestamp", crate::normalize::timestamp_type(), false),
    ];
    fields.extend(columns.iter().map(|(_, c)| Field::new(c, DataType::Utf8, true)));
    let schema = Arc::new(Schema::new(fields));
    // Every known user signs in twice, in their usual way; as many unknown users sign in once each.
    let batch_rows = 8192u64;
    let total = 3 * users;
    let mut sent = 0u64;
    while sent < total {
        let n = batch_rows.min(total - sent);
        let mut id = StringBuilder::new();
        let mut user = StringBuilder::new();
        let mut ts = TimestampMicrosecondBuilder::new().with_timezone("+00:00");
        let mut cols: Vec<StringBuilder> = columns.iter().map(|_| StringBuilder::new()).collect();
        for e in sent..sent + n {
            let (u, known) = if e < 2 * users { (e % users, true) } else { (e, false) };
            let k = u as usize;
            id.append_value(format!("evt-{e}"));
            user.append_value(if known {
                format!("user{u:07}@bench.example")
            } else {
                format!("new{u:08}@bench.example")
            });
            ts.append_value(now + (e as i64) * 1000);
            for ((role, _), b) in columns.iter().zip(cols.iter_mut()) {
                b.append_value(match *role {
                    "app" => APPS[k % APPS.len()].to_string(),
                    "country" => COUNTRIES[k % COUNTRIES.len()].to_string(),
                    "city" => format!("City {}", k % 500),
                    "browser" => BROWSERS[k % BROWSERS.len()].to_string(),
                    "os" => OSES[k % OSES.len()].to_string(),
                    "device" => format!("LAPTOP-{u:07}"),
                    "ip" => format!("10.{}.{}.7", (u >> 8) & 255, u & 255),
                    _ => format!("City {}, {}", k % 500, COUNTRIES[k % COUNTRIES.len()]),
                });
            }
        }
        let mut arrays: Vec<ArrayRef> = vec![Arc::new(id.finish()), Arc::new(user.finish()), Arc::new(ts.finish())];
        arrays.extend(cols.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        let batch = RecordBatch::try_new(Arc::clone(&schema), arrays).map_err(|e| e.to_string())?;
        running.input().push_batch(batch).map_err(|e| e.to_string())?;
        sent += n;
    }
    running.close_input();
    let report = running.finish().map_err(|e| e.to_string())?;
    let run_secs = started.elapsed().as_secs_f64();
    let events = report.stage("sink").map(|s| s.rows_in).unwrap_or(0);
    if events != total {
        return Err(format!("the benchmark lost events: {events} of {total} reached the sink"));
    }
    let peak_rss_mib = peak_rss_mib();

    // A checkpoint of every user's live history, as a streaming `features` writes it.
    let mut interner = super::history::Interner::default();
    let states: Vec<(String, super::history::UserState)> = (0..users)
        .map(|u| {
            let p = synthetic(u, &roles, now);
            let s = p.to_state(&roles, &mut interner).map_err(|e| e.0)?;
            Ok((p.user, s))
        })
        .collect::<Result<_, String>>()?;
    let config =
        super::checkpoint::CheckpointConfig { path: dir.join("checkpoint").display().to_string(), interval_secs: 30.0 };
    let mut cp = super::checkpoint::Checkpointer::new(&config, "features", "azure", 0, 1);
    let started = Instant::now();
    let checkpoint_bytes = cp.write(states.iter().map(|(u, s)| (u, s)), &roles).map_err(|e| e.to_string())?;
    let checkpoint_secs = started.elapsed().as_secs_f64();
    Ok(ProfileBench {
        users,
        publish_secs,
        set_bytes,
        events,
        run_secs,
        peak_rss_mib,
        checkpoint_secs,
        checkpoint_bytes,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_benchmark_runs_small() {
        let dir = tempfile::tempdir().unwrap();
        let b = super::run(300, 2, dir.path()).unwrap();
        assert_eq!(b.events, 900);
        assert!(b.set_bytes > 0);
    }
}
