//! Tests of the generator: determinism, file layout, labels, record shapes, and that each injected
//! behaviour looks like what it claims to be.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::format::TICKS_PER_SEC;
use super::scenario::{self, Dataset, Timeline};
use super::tables::{distance_km, APPS, APP_ROLLOUT, CITIES, PLATFORMS};
use super::*;

const HOUR: i64 = 3600 * TICKS_PER_SEC;

fn tiny(format: &str, out: &Path, seed: u64) -> GenerateOptions {
    let mut o = GenerateOptions::new(format, out);
    o.users = 8;
    o.days = 4;
    o.train_days = Some(2);
    o.seed = seed;
    o
}

fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    for sub in ["train", "infer"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            files.insert(path.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&path).unwrap());
        }
    }
    files.insert("labels.csv".into(), std::fs::read(dir.join("labels.csv")).unwrap());
    files
}

#[test]
fn same_seed_writes_the_same_bytes_and_another_seed_does_not() {
    for format in FAMILIES {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
        generate(&tiny(format, &a, 7)).unwrap();
        generate(&tiny(format, &b, 7)).unwrap();
        generate(&tiny(format, &c, 8)).unwrap();
        let (ta, tb, tc) = (tree(&a), tree(&b), tree(&c));
        assert!(ta.len() > 3, "{format}: files written");
        assert!(ta == tb, "{format}: same seed, same bytes");
        assert!(ta.values().collect::<Vec<_>>() != tc.values().collect::<Vec<_>>(), "{format}: seeds differ");
    }
}

#[test]
fn refuses_to_mix_with_an_earlier_run_unless_forced() {
    for format in FAMILIES {
        let dir = tempfile::tempdir().unwrap();
        let mut o = tiny(format, dir.path(), 1);
        generate(&o).unwrap();
        let err = generate(&o).unwrap_err();
        assert!(matches!(err, GenerateError::NotEmpty(_)), "{format}: {err}");
        o.force = true;
        o.seed = 2;
        generate(&o).unwrap();
        let mut fresh = tiny(format, &dir.path().join("fresh"), 2);
        fresh.force = false;
        generate(&fresh).unwrap();
        let (forced, fresh) = (tree(dir.path()), tree(&dir.path().join("fresh")));
        assert!(forced.values().eq(fresh.values()), "{format}: --force leaves no file of the earlier run");
    }
}

#[test]
fn options_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = tiny("azure", dir.path(), 1);
    o.train_days = Some(4);
    assert!(generate(&o).unwrap_err().to_string().contains("train-days"));
    o.train_days = None;
    o.days = 1;
    assert!(generate(&o).unwrap_err().to_string().contains("days"));
    o.days = 4;
    o.users = 0;
    assert!(generate(&o).unwrap_err().to_string().contains("users"));
    o.users = 2;
    o.joiners = 1.5;
    assert!(generate(&o).unwrap_err().to_string().contains("joiners must be a share between 0 and 1"));
    o.joiners = 0.0;
    o.light_users = f64::NAN;
    assert!(generate(&o).unwrap_err().to_string().contains("light-users"));
    assert_eq!(default_train_days(30), 23);
    assert_eq!(default_train_days(4), 2);
    assert_eq!(parse_start("2026-10-01").unwrap(), DEFAULT_START);
    assert_eq!(parse_start("2026-10-01T02:00:00+02:00").unwrap(), DEFAULT_START);
    assert!(parse_start("2026-10-01T00:00:00.5Z").is_err());
    assert!(parse_start("yesterday").is_err());
}

/// Ticks of a record's time.
fn ticks(format: &str, v: &Value) -> i64 {
    let text = match format {
        "azure" => v["time"].as_str().unwrap(),
        _ => v["isotimestamp"].as_str().unwrap(),
    };
    let t = chrono::DateTime::parse_from_rfc3339(text).unwrap();
    t.timestamp() * TICKS_PER_SEC + i64::from(t.timestamp_subsec_nanos()) / 100
}

fn record_id(format: &str, v: &Value) -> String {
    match format {
        "azure" => v["properties"]["id"].as_str().unwrap().to_string(),
        _ => v["txid"].as_str().unwrap().to_string(),
    }
}

/// The built-in families, with the file-name prefix of each.
const FAMILIES: [&str; 2] = ["azure", "duo"];

fn prefix(format: &str) -> &'static str {
    if format == "azure" {
        "AZUREAD"
    } else {
        "DUO"
    }
}

/// Every record of a period: (file name, window start, records).
fn read_period(dir: &Path, format: &str) -> Vec<(String, i64, Vec<Value>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let stamp = name
            .strip_prefix(&format!("{}_", prefix(format)))
            .and_then(|s| s.strip_suffix(".json"))
            .unwrap_or_else(|| panic!("file name {name}"));
        let (date, time) = stamp.split_once('T').unwrap();
        let named = chrono::DateTime::parse_from_rfc3339(&format!("{date}T{}", time.replace('_', ":"))).unwrap();
        let named = named.timestamp() * TICKS_PER_SEC + i64::from(named.timestamp_subsec_nanos()) / 100;
        let records: Vec<Value> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        files.push((name, named, records));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files
}

#[test]
fn files_are_sorted_json_arrays_inside_their_window() {
    for format in FAMILIES {
        let dir = tempfile::tempdir().unwrap();
        let report = generate(&tiny(format, dir.path(), 3)).unwrap();
        let start = DEFAULT_START * TICKS_PER_SEC;
        let infer_start = start + 2 * 24 * HOUR;
        let mut total = 0;
        for (period, files) in [
            ("train", read_period(&dir.path().join("train"), format)),
            ("infer", read_period(&dir.path().join("infer"), format)),
        ] {
            assert!(!files.is_empty());
            for (name, named, records) in files {
                let window = start + (named - start).div_euclid(3 * HOUR) * 3 * HOUR;
                let offset = named - window;
                assert!(
                    (TICKS_PER_SEC..=10 * TICKS_PER_SEC).contains(&offset),
                    "{name}: a few seconds after the window"
                );
                assert!(!records.is_empty(), "{name}: empty windows have no file");
                assert_eq!((period == "infer"), window >= infer_start, "{name} in {period}");
                let times: Vec<i64> = records.iter().map(|r| ticks(format, r)).collect();
                assert!(times.windows(2).all(|w| w[0] <= w[1]), "{name}: sorted");
                assert!(times.iter().all(|&t| (window..window + 3 * HOUR).contains(&t)), "{name}: inside the window");
                total += records.len() as u64;
            }
        }
        assert_eq!(total, report.events());
    }
}

fn read_labels(path: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("id,label,kind"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 3, "{l}");
            (f[0].to_string(), f[1].to_string(), f[2].to_string())
        })
        .collect()
}

#[test]
fn labels_cover_every_inference_event_once_and_every_kind() {
    for format in FAMILIES {
        let dir = tempfile::tempdir().unwrap();
        let report = generate(&tiny(format, dir.path(), 5)).unwrap();
        let labels = read_labels(&dir.path().join("labels.csv"));
        let authentication = |v: &Value| format != "duo" || v["event_type"] == "authentication";
        let ids = |sub: &str| -> Vec<String> {
            read_period(&dir.path().join(sub), format)
                .into_iter()
                .flat_map(|(_, _, r)| r)
                .filter(|v| authentication(v))
                .map(|v| record_id(format, &v))
                .collect()
        };
        let (train, infer) = (ids("train"), ids("infer"));
        let labelled: HashMap<&str, usize> = labels.iter().fold(HashMap::new(), |mut m, (id, _, _)| {
            *m.entry(id.as_str()).or_default() += 1;
            m
        });
        assert_eq!(labels.len(), infer.len(), "{format}: one row per inference event");
        assert_eq!(report.label_rows, labels.len() as u64);
        for id in &infer {
            assert_eq!(labelled.get(id.as_str()), Some(&1), "{format}: {id} labelled once");
        }
        assert!(train.iter().all(|id| !labelled.contains_key(id.as_str())), "{format}: no training id labelled");
        let kinds: HashSet<&str> = labels.iter().map(|(_, _, k)| k.as_str()).collect();
        for kind in Kind::ALL {
            assert!(kinds.contains(kind.as_str()), "{format}: {kind} present");
        }
        for (id, label, kind) in &labels {
            let attack = Kind::ALL.iter().find(|k| k.as_str() == kind).unwrap().is_attack();
            assert_eq!(label, if attack { "1" } else { "0" }, "{id} {kind}");
        }
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_hexdigit() })
}

fn all_records(dir: &Path, format: &str) -> Vec<Value> {
    ["train", "infer"].iter().flat_map(|p| read_period(&dir.join(p), format)).flat_map(|(_, _, r)| r).collect()
}

#[test]
fn azure_records_have_the_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    generate(&tiny("azure", dir.path(), 11)).unwrap();
    let records = all_records(dir.path(), "azure");
    let mut categories = HashSet::new();
    let mut failures = 0;
    for r in &records {
        let time = r["time"].as_str().unwrap();
        assert!(time.len() == 28 && time.ends_with('Z') && time.as_bytes()[19] == b'.', "{time}");
        let p = &r["properties"];
        assert_eq!(p["createdDateTime"].as_str().unwrap(), time.replace('Z', "+00:00"));
        for key in ["resourceId", "operationName", "operationVersion", "tenantId", "resultSignature", "identity"] {
            assert!(r[key].is_string(), "{key}");
        }
        assert!(r["resourceId"].as_str().unwrap().ends_with("/providers/Microsoft.aadiam"));
        assert!(r["durationMs"].is_u64() && r["Level"].is_u64());
        assert_eq!(r["callerIpAddress"], p["ipAddress"]);
        assert!(r["callerIpAddress"].as_str().unwrap().parse::<std::net::IpAddr>().is_ok());
        assert!(is_uuid(p["id"].as_str().unwrap()) && is_uuid(r["correlationId"].as_str().unwrap()));
        assert!(is_uuid(p["userId"].as_str().unwrap()) && is_uuid(p["appId"].as_str().unwrap()));
        let category = r["category"].as_str().unwrap();
        assert_eq!(category == "SignInLogs", p["isInteractive"].as_bool().unwrap());
        categories.insert(category.to_string());
        let code = p["status"]["errorCode"].as_u64().unwrap();
        assert_eq!(r["resultType"].as_str().unwrap(), code.to_string());
        if code == 50126 {
            failures += 1;
            assert_eq!(
                p["status"]["failureReason"],
                "Invalid username or password or Invalid on-premise username or password."
            );
        }
        if code == 0 {
            assert_eq!(p["status"]["failureReason"], "Other.");
            assert_eq!(r["resultDescription"], "");
        }
        assert!(["Browser", "Mobile Apps and Desktop clients", "Exchange ActiveSync"]
            .contains(&p["clientAppUsed"].as_str().unwrap()));
        let upn = p["userPrincipalName"].as_str().unwrap();
        assert!(upn.ends_with("@contoso.com") && upn.contains('.'), "{upn}");
        assert_eq!(r["identity"], p["userDisplayName"]);
        assert_eq!(p["appDisplayName"], p["resourceDisplayName"]);
        let d = &p["deviceDetail"];
        for key in ["deviceId", "displayName", "operatingSystem", "browser", "trustType"] {
            assert!(d[key].is_string(), "deviceDetail.{key}");
        }
        assert!(d["isCompliant"].is_boolean() && d["isManaged"].is_boolean());
        let l = &p["location"];
        assert!(l["city"].is_string() && l["state"].is_string());
        assert_eq!(l["countryOrRegion"], r["location"]);
        assert!(l["geoCoordinates"]["altitude"].is_null());
        assert!(l["geoCoordinates"]["latitude"].is_f64() && l["geoCoordinates"]["longitude"].is_f64());
        for key in ["conditionalAccessStatus", "riskLevelAggregated", "riskState", "tokenIssuerType", "userAgent"] {
            assert!(p[key].is_string(), "{key}");
        }
    }
    assert!(failures > 0, "some wrong passwords");
    assert_eq!(categories.len(), 2, "interactive and non-interactive sign-ins");
}

#[test]
fn duo_records_have_the_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = tiny("duo", dir.path(), 11);
    o.users = 30;
    o.days = 8;
    o.train_days = None;
    let report = generate(&o).unwrap();
    let records = all_records(dir.path(), "duo");
    let (mut enrollments, mut sparse, mut denied) = (0, 0, 0);
    for r in &records {
        let iso = r["isotimestamp"].as_str().unwrap();
        assert!(iso.len() == 32 && iso.ends_with("+00:00"), "{iso}");
        let t = chrono::DateTime::parse_from_rfc3339(iso).unwrap();
        assert_eq!(r["timestamp"].as_i64(), Some(t.timestamp()));
        assert!(is_uuid(r["txid"].as_str().unwrap()));
        let a = &r["access_device"];
        assert!(a["ip"].as_str().unwrap().parse::<std::net::IpAddr>().is_ok());
        assert!(a["hostname"].is_null());
        for key in ["flash_version", "java_version", "is_encryption_enabled", "is_firewall_enabled", "is_password_set"]
        {
            assert!(a[key].is_string(), "{key}");
        }
        if a["browser"].is_null() {
            sparse += 1;
            assert!(a["os"].is_null() && a["location"]["city"].is_null() && a["location"]["country"].is_null());
        } else {
            assert!(a["browser_version"].is_string() && a["os"].is_string());
            assert!(a["location"]["city"].is_string() && a["location"]["country"].is_string());
        }
        let app = &r["application"];
        assert!(app["name"].is_string());
        let key = app["key"].as_str().unwrap();
        assert!(key.len() == 20 && key.starts_with("DI"), "{key}");
        assert!(r["auth_device"]["name"].as_str().unwrap().contains("(555-01"));
        let email = r["email"].as_str().unwrap();
        assert_eq!(Some(r["user"]["name"].as_str().unwrap()), email.strip_suffix("@contoso.com"));
        assert!(r["user"]["key"].as_str().unwrap().starts_with("DU"));
        assert!(r["user"]["groups"].as_array().is_some_and(|g| g.len() == 1 && g[0].is_string()));
        assert!(r["ood_software"].is_null() && r["alias"] == "");
        let result = r["result"].as_str().unwrap();
        assert!(["success", "denied", "fraud", "error", "failure"].contains(&result), "{result}");
        let factor = r["factor"].as_str().unwrap();
        assert!(
            ["duo_push", "phone_call", "passcode", "sms_passcode", "remembered_device", "not_available"]
                .contains(&factor),
            "{factor}"
        );
        assert!(r["reason"].is_string());
        match r["event_type"].as_str().unwrap() {
            "enrollment" => enrollments += 1,
            "authentication" => {}
            other => panic!("event_type {other}"),
        }
        if result == "denied" {
            denied += 1;
            assert!(["invalid_passcode", "deny_unenrolled_user", "no_response", "locked_out"]
                .contains(&r["reason"].as_str().unwrap()));
        }
    }
    assert!(enrollments > 0 && sparse > 0 && denied > 0, "{enrollments} {sparse} {denied}");
    assert_eq!(report.enrollments, enrollments);
}

/// A sample writer for the test family below: each generated sign-in as `{"who", "at", "uid", "fail"}`.
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
struct TestWriterConfig {}

struct TestWriter;

impl dfp_core::Transform for TestWriter {
    fn process(&mut self, batch: dfp_core::Batch, out: &mut dfp_core::Emitter) -> Result<(), dfp_core::StageError> {
        use arrow::array::{Array, AsArray, StringBuilder};
        use arrow::datatypes::TimestampMicrosecondType;
        let d = &batch.data;
        let text = |n: &str| d.column_by_name(n).unwrap().as_string::<i32>().clone();
        let (user, id, failure) = (text("username"), text("id"), text("failure"));
        let time = d.column_by_name("timestamp").unwrap().as_primitive::<TimestampMicrosecondType>().clone();
        let mut raw = StringBuilder::new();
        for i in 0..d.num_rows() {
            let fail = (!failure.is_null(i)).then(|| failure.value(i));
            raw.append_value(
                serde_json::json!({"who": user.value(i), "at": time.value(i), "uid": id.value(i), "fail": fail})
                    .to_string(),
            );
        }
        let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
            "raw",
            arrow::datatypes::DataType::Utf8,
            false,
        )]));
        let data = arrow::array::RecordBatch::try_new(schema, vec![std::sync::Arc::new(raw.finish())])?;
        out.emit(batch.with_data(data));
        Ok(())
    }
}

impl dfp_core::StageConfig for TestWriterConfig {
    const TYPE: &'static str = "test-sample-writer";
    const KIND: dfp_core::StageKind = dfp_core::StageKind::Transform;
    const DESCRIPTION: &'static str = "test: renders generated sign-ins as small JSON records";
    fn build(&self, _ctx: &dfp_core::StageContext) -> Result<dfp_core::StageInstance, dfp_core::StageError> {
        Ok(dfp_core::StageInstance::Transform(Box::new(TestWriter)))
    }
}
dfp_core::register_stage!(TestWriterConfig);

fn with_test_family(writer: &str) -> dfp_core::Registry {
    let yaml = format!(
        "tiny-log:\n  sample_writer: {writer}\n  columns: {{ id: text, timestamp: time, username: text }}\n  features: {{ numeric: [logcount] }}\n"
    );
    let mut registry = dfp_core::Registry::global().clone();
    let families = dfp_core::Family::parse_yaml(&yaml).unwrap();
    registry.extend_families(families, dfp_core::family::FamilyOrigin::BuiltIn).unwrap();
    registry
}

#[test]
fn a_family_with_a_sample_writer_is_generated_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let registry = with_test_family("test-sample-writer");
    let report = generate_with(&tiny("tiny-log", dir.path(), 4), &registry).unwrap();
    let mut names = Vec::new();
    let mut records = Vec::new();
    for sub in ["train", "infer"] {
        for entry in std::fs::read_dir(dir.path().join(sub)).unwrap() {
            let path = entry.unwrap().path();
            names.push(path.file_name().unwrap().to_string_lossy().into_owned());
            let file: Vec<Value> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            records.extend(file);
        }
    }
    assert!(names.iter().all(|n| n.starts_with("TINY_LOG_2026-")), "{names:?}");
    assert_eq!(records.len() as u64, report.events(), "one record per generated sign-in");
    let labels = read_labels(&dir.path().join("labels.csv"));
    let ids: HashSet<&str> = records.iter().map(|r| r["uid"].as_str().unwrap()).collect();
    assert!(labels.iter().all(|(id, _, _)| ids.contains(id.as_str())), "labels name the written ids");
    assert_eq!(labels.len() as u64, report.infer.events, "enrollments are sign-ins for this family");
    assert!(records.iter().any(|r| r["fail"].is_string()) && records.iter().all(|r| r["who"].is_string()));

    // The same seed through the writer gives the same bytes.
    let again = tempfile::tempdir().unwrap();
    generate_with(&tiny("tiny-log", again.path(), 4), &registry).unwrap();
    assert!(tree(dir.path()) == tree(again.path()));
}

#[test]
fn a_family_that_cannot_be_generated_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let e = generate(&tiny("gws", dir.path(), 1)).unwrap_err().to_string();
    assert!(e.contains("unknown log family \"gws\""), "{e}");
    let registry = with_test_family("no-such-writer");
    let e = generate_with(&tiny("tiny-log", dir.path(), 1), &registry).unwrap_err().to_string();
    assert!(e.contains("sample writer \"no-such-writer\"") && e.contains("no such stage type"), "{e}");
    let mut registry = dfp_core::Registry::global().clone();
    let plain =
        "plain:\n  columns: { id: text, timestamp: time, username: text }\n  features: { numeric: [logcount] }\n";
    let family = dfp_core::Family::parse_yaml(plain).unwrap();
    registry.extend_families(family, dfp_core::family::FamilyOrigin::BuiltIn).unwrap();
    let e = generate_with(&tiny("plain", &dir.path().join("p"), 1), &registry).unwrap_err().to_string();
    assert!(e.contains("has no sample writer"), "{e}");
}

fn default_dataset(seed: u64) -> Dataset {
    let timeline = Timeline { start: DEFAULT_START * TICKS_PER_SEC, days: 30, train_days: 23 };
    scenario::build(seed, 60, timeline, scenario::Spread::default())
}

#[test]
fn default_volume_and_habits_are_realistic() {
    let d = default_dataset(1);
    let n = d.events.len();
    // Users sign in 5 to 80 times a working day and much less at weekends: roughly 30k–60k events.
    assert!((25_000..=65_000).contains(&n), "{n} events for 60 users over 30 days");
    let infer_start = d.timeline.infer_start();
    let normal: Vec<_> = d.events.iter().filter(|e| e.kind == Kind::Normal).collect();
    assert!(d.events.iter().filter(|e| e.ticks < infer_start).all(|e| e.kind == Kind::Normal), "train is clean");
    let failures = normal.iter().filter(|e| e.failure.is_some()).count() as f64 / normal.len() as f64;
    assert!((0.015..0.06).contains(&failures), "failure rate {failures}");
    // Most ordinary sign-ins happen in the user's local working hours, from home.
    let mut in_hours = 0;
    for e in &normal {
        let u = &d.population.users[e.user as usize];
        assert_eq!(usize::from(e.city), u.home);
        assert!(u.apps.contains(&usize::from(e.app)));
        let local = (e.ticks / TICKS_PER_SEC + i64::from(CITIES[u.home].utc_offset_min) * 60).rem_euclid(86_400);
        in_hours += usize::from((i64::from(u.work_start)..=i64::from(u.work_end) + 600).contains(&local));
    }
    assert!(in_hours as f64 > 0.7 * normal.len() as f64, "{in_hours} of {}", normal.len());
    let mut per_user = vec![0usize; d.population.users.len()];
    for e in &d.events {
        per_user[e.user as usize] += 1;
    }
    let (min, max) = (per_user.iter().min().unwrap(), per_user.iter().max().unwrap());
    assert!(*min >= 30 && *max > 5 * *min, "light and heavy users: {min}..{max}");
}

fn local_hour(e: &scenario::Event, offset_min: i32) -> i64 {
    (e.ticks / TICKS_PER_SEC + i64::from(offset_min) * 60).rem_euclid(86_400) / 3600
}

#[test]
fn injected_events_look_like_their_kind() {
    let d = default_dataset(4);
    let users = &d.population.users;
    let by_kind = |k: Kind| d.events.iter().filter(move |e| e.kind == k);
    let country = |c: u16| CITIES[usize::from(c)].country_code;
    let home_country = |e: &scenario::Event| CITIES[users[e.user as usize].home].country_code;
    let owned = |e: &scenario::Event| users[e.user as usize].devices.contains(&(e.device as usize));
    let browser = |e: &scenario::Event| PLATFORMS[d.population.devices[e.device as usize].platform].azure_browser;
    assert!(d.events.iter().filter(|e| e.kind.is_attack()).all(|e| e.ticks >= d.timeline.infer_start()));

    // Account takeover: foreign, unknown device, many apps the user never uses, in under an hour.
    let mut victims: HashMap<u32, Vec<&scenario::Event>> = HashMap::new();
    for e in by_kind(Kind::AccountTakeover) {
        assert_ne!(country(e.city), home_country(e));
        assert!(!owned(e) && !users[e.user as usize].apps.contains(&usize::from(e.app)));
        victims.entry(e.user).or_default().push(e);
    }
    assert!(victims.len() >= 3);
    for events in victims.values() {
        let apps: HashSet<u16> = events.iter().map(|e| e.app).collect();
        let span = events.iter().map(|e| e.ticks).max().unwrap() - events.iter().map(|e| e.ticks).min().unwrap();
        assert!(events.len() >= 20 && apps.len() >= 10 && span < HOUR, "{} events, {} apps", events.len(), apps.len());
    }

    // Quiet takeover: foreign with a browser the user never had, but only usual apps.
    for e in by_kind(Kind::QuietTakeover) {
        assert_ne!(country(e.city), home_country(e));
        assert!(users[e.user as usize].apps.contains(&usize::from(e.app)));
        let usual: HashSet<&str> = users[e.user as usize]
            .devices
            .iter()
            .map(|&dev| PLATFORMS[d.population.devices[dev].platform].azure_browser)
            .collect();
        assert!(!usual.contains(browser(e)));
    }

    // Password spray: failures, then the last event is a success from an address not used to fail.
    let mut sprays: HashMap<u32, Vec<&scenario::Event>> = HashMap::new();
    for e in by_kind(Kind::PasswordSpray) {
        sprays.entry(e.user).or_default().push(e);
    }
    assert!(sprays.len() >= 3);
    for events in sprays.values() {
        let failures: Vec<_> = events.iter().filter(|e| e.failure.is_some()).collect();
        let last = events.last().unwrap();
        assert!(failures.len() >= 6 && last.failure.is_none());
        assert!(failures.iter().all(|f| f.ip != last.ip && f.ticks < last.ticks));
    }

    // Token theft: unknown device, admin portals, at night in the user's own country.
    let theft: Vec<_> = by_kind(Kind::TokenTheft).collect();
    assert!(!theft.is_empty());
    let admin = theft.iter().filter(|e| APPS[usize::from(e.app)].admin).count();
    assert!(admin * 10 >= theft.len() * 6, "{admin} of {} on admin portals", theft.len());
    for e in &theft {
        assert!(!owned(e));
        assert_eq!(country(e.city), home_country(e));
        let hour = local_hour(e, CITIES[users[e.user as usize].home].utc_offset_min);
        assert!(hour < 6, "local hour {hour}");
    }

    // Impossible travel: far from, and within the hour of, one of the user's own sign-ins.
    let travel: Vec<_> = by_kind(Kind::ImpossibleTravel).collect();
    assert!(!travel.is_empty());
    for e in travel {
        let near = d.events.iter().any(|o| {
            o.user == e.user
                && !o.kind.is_attack()
                && (o.ticks - e.ticks).abs() <= HOUR
                && distance_km(&CITIES[usize::from(o.city)], &CITIES[usize::from(e.city)]) > 5000.0
        });
        assert!(near, "an ordinary sign-in far away within the hour");
    }

    // Benign changes: a trip moves the user, not their apps or devices; a new laptop keeps the place; the
    // rollout app appears only in the inference period, for most users.
    for e in by_kind(Kind::BusinessTrip) {
        let u = &users[e.user as usize];
        assert_ne!(usize::from(e.city), u.home);
        assert!(u.apps.contains(&usize::from(e.app)) || usize::from(e.app) == APP_ROLLOUT);
    }
    for e in by_kind(Kind::ReplacedLaptop) {
        assert_eq!(usize::from(e.city), users[e.user as usize].home);
        assert!(!owned(e) && !d.population.devices[e.device as usize].name.is_empty());
    }
    let rollout: Vec<_> = d.events.iter().filter(|e| usize::from(e.app) == APP_ROLLOUT).collect();
    assert!(rollout.iter().all(|e| e.ticks >= d.timeline.infer_start()));
    let adopters: HashSet<u32> = rollout.iter().map(|e| e.user).collect();
    assert!(adopters.len() * 10 >= users.len() * 9, "{} of {} users", adopters.len(), users.len());
    for kind in Kind::ALL {
        assert!(d.instances[kind.index()] > 0 && d.events.iter().any(|e| e.kind == kind), "{kind}");
    }
}

#[test]
fn light_users_and_joiners_have_less_history_and_change_nothing_else() {
    let timeline = Timeline { start: DEFAULT_START * TICKS_PER_SEC, days: 30, train_days: 23 };
    let plain = default_dataset(1);
    let spread = scenario::build(1, 60, timeline, scenario::Spread { light: 0.5, joiners: 0.3 });
    let training = |d: &Dataset| {
        let mut per_user = vec![0usize; d.population.users.len()];
        for e in d.events.iter().filter(|e| e.ticks < d.timeline.infer_start()) {
            per_user[e.user as usize] += 1;
        }
        per_user
    };
    let (before, after) = (training(&plain), training(&spread));
    let enough = |v: &[usize]| v.iter().filter(|n| **n >= 300).count();
    assert!(enough(&after) * 2 < enough(&before), "{} of 60 reach 300, before {}", enough(&after), enough(&before));
    // The same people, homes and apps; joiners have nothing before they joined.
    for (a, b) in plain.population.users.iter().zip(&spread.population.users) {
        assert_eq!((&a.upn, a.home, &a.apps), (&b.upn, b.home, &b.apps));
        assert!(b.volume == a.volume || (b.volume - a.volume / 10.0).abs() < 1e-9);
    }
    let joiners: Vec<usize> = (0..60).filter(|&u| spread.population.users[u].joined > 0).collect();
    assert!((8..=30).contains(&joiners.len()), "{} joiners", joiners.len());
    for e in &spread.events {
        let joined = spread.population.users[e.user as usize].joined;
        assert!(e.ticks >= spread.timeline.start + i64::from(joined) * 86_400 * TICKS_PER_SEC);
    }
}
