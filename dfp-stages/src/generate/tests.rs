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

fn tiny(format: LogFormat, out: &Path, seed: u64) -> GenerateOptions {
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
    for format in LogFormat::ALL {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
        generate(&tiny(format, &a, 7)).unwrap();
        generate(&tiny(format, &b, 7)).unwrap();
        generate(&tiny(format, &c, 8)).unwrap();
        let (ta, tb, tc) = (tree(&a), tree(&b), tree(&c));
        assert!(ta.len() > 3, "{format:?}: files written");
        assert!(ta == tb, "{format:?}: same seed, same bytes");
        assert!(ta.values().collect::<Vec<_>>() != tc.values().collect::<Vec<_>>(), "{format:?}: seeds differ");
    }
}

#[test]
fn refuses_to_mix_with_an_earlier_run_unless_forced() {
    for format in [LogFormat::Duo, LogFormat::Okta] {
        let dir = tempfile::tempdir().unwrap();
        let mut o = tiny(format, dir.path(), 1);
        generate(&o).unwrap();
        let err = generate(&o).unwrap_err();
        assert!(matches!(err, GenerateError::NotEmpty(_)), "{format:?}: {err}");
        o.force = true;
        o.seed = 2;
        generate(&o).unwrap();
        let mut fresh = tiny(format, &dir.path().join("fresh"), 2);
        fresh.force = false;
        generate(&fresh).unwrap();
        let (forced, fresh) = (tree(dir.path()), tree(&dir.path().join("fresh")));
        assert!(forced.values().eq(fresh.values()), "{format:?}: --force leaves no file of the earlier run");
    }
}

#[test]
fn options_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = tiny(LogFormat::Azure, dir.path(), 1);
    o.train_days = Some(4);
    assert!(generate(&o).unwrap_err().to_string().contains("train-days"));
    o.train_days = None;
    o.days = 1;
    assert!(generate(&o).unwrap_err().to_string().contains("days"));
    o.days = 4;
    o.users = 0;
    assert!(generate(&o).unwrap_err().to_string().contains("users"));
    assert_eq!(default_train_days(30), 23);
    assert_eq!(default_train_days(4), 2);
    assert_eq!(parse_start("2026-10-01").unwrap(), DEFAULT_START);
    assert_eq!(parse_start("2026-10-01T02:00:00+02:00").unwrap(), DEFAULT_START);
    assert!(parse_start("2026-10-01T00:00:00.5Z").is_err());
    assert!(parse_start("yesterday").is_err());
}

/// Ticks of a record's time.
fn ticks(format: LogFormat, v: &Value) -> i64 {
    let text = match format {
        LogFormat::Azure => v["time"].as_str().unwrap(),
        LogFormat::Duo => v["isotimestamp"].as_str().unwrap(),
        LogFormat::Okta => v["published"].as_str().unwrap(),
    };
    let t = chrono::DateTime::parse_from_rfc3339(text).unwrap();
    t.timestamp() * TICKS_PER_SEC + i64::from(t.timestamp_subsec_nanos()) / 100
}

fn record_id(format: LogFormat, v: &Value) -> String {
    match format {
        LogFormat::Azure => v["properties"]["id"].as_str().unwrap().to_string(),
        LogFormat::Duo => v["txid"].as_str().unwrap().to_string(),
        LogFormat::Okta => v["uuid"].as_str().unwrap().to_string(),
    }
}

/// Every record of a period: (file name, window start, records).
fn read_period(dir: &Path, format: LogFormat) -> Vec<(String, i64, Vec<Value>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let stamp = name
            .strip_prefix(&format!("{}_", format.prefix()))
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
    for format in LogFormat::ALL {
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
    for format in LogFormat::ALL {
        let dir = tempfile::tempdir().unwrap();
        let report = generate(&tiny(format, dir.path(), 5)).unwrap();
        let labels = read_labels(&dir.path().join("labels.csv"));
        let authentication = |v: &Value| format != LogFormat::Duo || v["event_type"] == "authentication";
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
        assert_eq!(labels.len(), infer.len(), "{format:?}: one row per inference event");
        assert_eq!(report.label_rows, labels.len() as u64);
        for id in &infer {
            assert_eq!(labelled.get(id.as_str()), Some(&1), "{format:?}: {id} labelled once");
        }
        assert!(train.iter().all(|id| !labelled.contains_key(id.as_str())), "{format:?}: no training id labelled");
        let kinds: HashSet<&str> = labels.iter().map(|(_, _, k)| k.as_str()).collect();
        for kind in Kind::ALL {
            assert!(kinds.contains(kind.as_str()), "{format:?}: {kind} present");
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

fn all_records(dir: &Path, format: LogFormat) -> Vec<Value> {
    ["train", "infer"].iter().flat_map(|p| read_period(&dir.join(p), format)).flat_map(|(_, _, r)| r).collect()
}

#[test]
fn azure_records_have_the_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    generate(&tiny(LogFormat::Azure, dir.path(), 11)).unwrap();
    let records = all_records(dir.path(), LogFormat::Azure);
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
    let mut o = tiny(LogFormat::Duo, dir.path(), 11);
    o.users = 30;
    o.days = 8;
    o.train_days = None;
    let report = generate(&o).unwrap();
    let records = all_records(dir.path(), LogFormat::Duo);
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

#[test]
fn okta_records_have_the_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = tiny(LogFormat::Okta, dir.path(), 11);
    o.users = 30;
    o.days = 8;
    o.train_days = None;
    generate(&o).unwrap();
    let records = all_records(dir.path(), LogFormat::Okta);
    let mut event_types = HashSet::new();
    let (mut invalid_credentials, mut attack_browsers) = (0, 0);
    let mut actor_ids: HashMap<String, String> = HashMap::new();
    let app_names: HashSet<&str> = APPS.iter().map(|a| a.name).collect();
    for r in &records {
        let keys: HashSet<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        let expected = [
            "uuid",
            "published",
            "eventType",
            "version",
            "severity",
            "displayMessage",
            "actor",
            "client",
            "outcome",
            "target",
            "authenticationContext",
            "securityContext",
            "transaction",
            "debugContext",
        ];
        assert_eq!(keys, expected.into_iter().collect::<HashSet<_>>());
        assert!(is_uuid(r["uuid"].as_str().unwrap()));
        let published = r["published"].as_str().unwrap();
        assert!(published.len() == 24 && published.ends_with('Z') && published.as_bytes()[19] == b'.', "{published}");
        assert!(chrono::DateTime::parse_from_rfc3339(published).is_ok());
        let event_type = r["eventType"].as_str().unwrap();
        let message = r["displayMessage"].as_str().unwrap();
        match event_type {
            "user.session.start" => assert_eq!(message, "User login to Okta"),
            "user.authentication.sso" => assert_eq!(message, "User single sign on to app"),
            other => panic!("eventType {other}"),
        }
        event_types.insert(event_type.to_string());
        assert_eq!(r["version"], "0");

        let actor = &r["actor"];
        let id = actor["id"].as_str().unwrap();
        assert!(id.len() == 20 && id.starts_with("00u") && id.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
        assert_eq!(actor["type"], "User");
        let email = actor["alternateId"].as_str().unwrap();
        assert!(email.ends_with("@contoso.com") && email.contains('.'), "{email}");
        assert!(actor["displayName"].as_str().unwrap().contains(' '));
        let previous = actor_ids.entry(email.to_string()).or_insert_with(|| id.to_string());
        assert_eq!(previous, id, "one actor id per user");

        let c = &r["client"];
        let ua = &c["userAgent"];
        assert!(ua["rawUserAgent"].as_str().unwrap().len() > 10);
        let os = ua["os"].as_str().unwrap();
        assert!(["Windows 10", "Windows 11", "Mac OS X", "iOS", "Android", "Linux"].contains(&os), "{os}");
        let browser = ua["browser"].as_str().unwrap();
        assert!(["CHROME", "EDGE", "FIREFOX", "SAFARI", "UNKNOWN"].contains(&browser), "{browser}");
        attack_browsers += usize::from(browser == "FIREFOX" || browser == "UNKNOWN");
        assert_eq!(c["zone"], "null");
        assert!(["Computer", "Mobile", "Unknown"].contains(&c["device"].as_str().unwrap()));
        assert!(c["id"].is_null());
        assert!(c["ipAddress"].as_str().unwrap().parse::<std::net::IpAddr>().is_ok());
        let g = &c["geographicalContext"];
        let city = CITIES.iter().find(|x| g["city"] == x.name).unwrap();
        assert_eq!(g["state"], city.state);
        assert_eq!(g["country"], city.country);
        assert!(g["postalCode"].is_string() || g["postalCode"].is_null());
        assert_eq!(g["geolocation"]["lat"].as_f64(), Some(city.latitude));
        assert_eq!(g["geolocation"]["lon"].as_f64(), Some(city.longitude));

        let outcome = &r["outcome"];
        match outcome["result"].as_str().unwrap() {
            "SUCCESS" => {
                assert!(outcome["reason"].is_null());
                assert_eq!(r["severity"], "INFO");
            }
            "FAILURE" => {
                let reason = outcome["reason"].as_str().unwrap();
                assert!(
                    ["INVALID_CREDENTIALS", "VERIFICATION_ERROR", "GENERAL_NONSUCCESS", "LOCKED_OUT"].contains(&reason),
                    "{reason}"
                );
                invalid_credentials += usize::from(reason == "INVALID_CREDENTIALS");
                assert_eq!(r["severity"], "WARN");
            }
            other => panic!("outcome.result {other}"),
        }

        let targets = r["target"].as_array().unwrap();
        assert_eq!(targets.len(), 1);
        let t = &targets[0];
        let tid = t["id"].as_str().unwrap();
        assert!(tid.len() == 20 && tid.starts_with("0oa"), "{tid}");
        assert_eq!(t["type"], "AppInstance");
        assert!(app_names.contains(t["displayName"].as_str().unwrap()));
        assert_eq!(t["alternateId"], t["displayName"]);

        let a = &r["authenticationContext"];
        assert_eq!(a["authenticationStep"].as_u64(), Some(0));
        assert!(a["externalSessionId"].as_str().unwrap().starts_with("102"));
        let s = &r["securityContext"];
        for key in ["asNumber", "asOrg", "isp", "domain"] {
            assert!(s[key].is_null(), "securityContext.{key}");
        }
        assert_eq!(s["isProxy"], false);
        let tx = &r["transaction"];
        assert_eq!(tx["type"], "WEB");
        assert!(!tx["id"].as_str().unwrap().is_empty());
        assert!(tx["detail"].as_object().unwrap().is_empty());
        assert_eq!(r["debugContext"]["debugData"]["requestUri"], "/api/v1/authn");
    }
    assert!(invalid_credentials > 0, "some wrong passwords");
    assert!(attack_browsers > 0, "attackers' browsers");
    assert_eq!(event_types.len(), 2, "sign-ins and single sign-ons");
    let ids: HashSet<&String> = actor_ids.values().collect();
    assert_eq!(ids.len(), actor_ids.len(), "actor ids differ between users");
}

#[test]
fn okta_user_agents_name_every_platform() {
    for p in &PLATFORMS {
        let (os, browser, device) = okta::user_agent(p);
        assert!(!os.is_empty() && !os.contains("MacOs"), "{}", p.azure_os);
        assert_eq!(browser == "UNKNOWN", p.azure_browser.starts_with("Python"), "{}", p.azure_browser);
        assert_eq!(device == "Mobile", p.mobile);
    }
}

fn default_dataset(seed: u64) -> Dataset {
    let timeline = Timeline { start: DEFAULT_START * TICKS_PER_SEC, days: 30, train_days: 23 };
    scenario::build(seed, 60, timeline)
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
