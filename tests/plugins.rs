//! Dynamic plugins end to end: the example plugins are built as `.so` files, loaded by the real `dfp`
//! binary, and used in pipelines; wrong ABI versions, missing files and panicking stages are handled.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::{dfp, plugin_dir, text};
use serde_json::Value;

fn lib(name: &str) -> String {
    let path = plugin_dir().join(format!("lib{name}.so"));
    assert!(path.exists(), "{} was not built", path.display());
    path.display().to_string()
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn plugin_stages_are_listed_inspected_and_run_like_built_ins() {
    let testkit = lib("dfp_plugin_testkit");
    // inspect: the descriptor table, without running anything.
    let out = dfp().args(["plugin", "inspect", &testkit, "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["name"], "testkit");
    assert_eq!(doc["abi_version"], 2);
    assert_eq!(doc["families"], serde_json::json!([]), "testkit exports no log family");
    let types: Vec<&str> = doc["stages"].as_array().unwrap().iter().map(|s| s["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["plugin-count-sink", "plugin-fail", "plugin-passthrough", "plugin-rows"]);
    let rows = doc["stages"].as_array().unwrap().iter().find(|s| s["type"] == "plugin-rows").unwrap();
    assert_eq!(rows["kind"], "source");
    assert!(rows["config"]["properties"]["rows"]["description"].as_str().unwrap().contains("Rows in all"));
    // stages: listed with their origin.
    let out = dfp().args(["stages", "--plugin", &testkit]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("plugin-passthrough") && listing.contains("libdfp_plugin_testkit.so"), "{listing}");
    assert!(listing.contains("file-source"), "built-ins are still listed");
    // schema: plugin stage types are part of the pipeline schema.
    let out = dfp().args(["schema", "--plugin", &testkit]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("plugin-rows"));

    // run: plugin source → plugin transform (dead-lettering one user) → built-in → plugin sink, 3 workers.
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("count.txt");
    let dead = dir.path().join("dead.jsonl");
    let yaml = format!(
        "version: 1\nplugins: [{testkit:?}]\nruntime: {{ workers: 3, dead_letter: {dead:?} }}\nstages:\n  rows: {{ type: plugin-rows, rows: 50000, users: 50, batch_size: 1000 }}\n  pass: {{ type: plugin-passthrough, inputs: [rows], reject_user: user7 }}\n  cols: {{ type: select, inputs: [pass], columns: [id, username] }}\n  out:  {{ type: plugin-count-sink, inputs: [cols], path: {count:?} }}\n"
    );
    let pipeline = write(dir.path(), "p.yaml", &yaml);
    let out = dfp().args(["validate"]).arg(&pipeline).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // With metrics on, the plugin's own counters are published (read during the linger after the run).
    let port = common::free_port();
    let run = dfp()
        .arg("run")
        .arg(&pipeline)
        .args(["--metrics-addr", &format!("127.0.0.1:{port}"), "--metrics-linger", "3"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let wanted = r#"dfp_plugin_counter_total{counter="rows",stage="rows"} 50000"#;
    let started = std::time::Instant::now();
    let mut metrics = String::new();
    while !metrics.contains(wanted) && started.elapsed() < std::time::Duration::from_secs(60) {
        metrics = common::http_get(port, "/metrics").map(|r| r.1).unwrap_or_default();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(metrics.contains(wanted), "{metrics}");
    let counted: u64 = std::fs::read_to_string(&count)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(counted, 49_000, "every row but user7's reaches the sink");
    let dead_rows = std::fs::read_to_string(&dead).unwrap();
    assert_eq!(dead_rows.lines().count(), 1000);
    let first: Value = serde_json::from_str(dead_rows.lines().next().unwrap()).unwrap();
    assert_eq!((first["stage"].as_str(), first["reason"].as_str()), (Some("pass"), Some("rejected user")));
}

#[test]
fn a_plugin_of_another_abi_version_is_refused_with_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = lib("dfp_plugin_wrong_abi");
    let yaml = format!(
        "version: 1\nplugins: [{wrong:?}]\nstages:\n  rows: {{ type: generator, rows: 10 }}\n  out: {{ type: blackhole, inputs: [rows] }}\n"
    );
    let pipeline = write(dir.path(), "p.yaml", &yaml);
    let out = dfp().arg("validate").arg(&pipeline).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("p.yaml:2"), "names the YAML line: {msg}");
    assert!(msg.contains("ABI version 999") && msg.contains("ABI version 2"), "{msg}");
    assert!(msg.contains("libdfp_plugin_wrong_abi.so"), "{msg}");
    let out = dfp().args(["plugin", "inspect", &wrong]).output().unwrap();
    assert!(!out.status.success() && text(&out).contains("ABI version 999"), "{}", text(&out));
}

#[test]
fn a_missing_plugin_is_a_validation_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "version: 1\nstages:\n  rows: { type: generator, rows: 10 }\n  out: { type: blackhole, inputs: [rows] }\nplugins:\n  - ./nowhere/libmissing.so\n";
    let pipeline = write(dir.path(), "p.yaml", yaml);
    let out = dfp().arg("validate").arg(&pipeline).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("p.yaml:6") && msg.contains("libmissing.so") && msg.contains("no such file"), "{msg}");
    // A bare name is looked up in $DFP_PLUGIN_PATH and next to the binary: the message lists where.
    let yaml = "version: 1\nplugins: [libnot_there.so]\nstages:\n  rows: { type: generator, rows: 10 }\n  out: { type: blackhole, inputs: [rows] }\n";
    let pipeline = write(dir.path(), "q.yaml", yaml);
    let out = dfp().arg("validate").arg(&pipeline).env("DFP_PLUGIN_PATH", "/opt/dfp-plugins").output().unwrap();
    let msg = text(&out);
    assert!(msg.contains("q.yaml:2") && msg.contains("/opt/dfp-plugins/libnot_there.so"), "{msg}");
}

#[test]
fn a_failing_or_panicking_plugin_stage_fails_its_stage_cleanly() {
    let testkit = lib("dfp_plugin_testkit");
    let dir = tempfile::tempdir().unwrap();
    for (panic, expected) in
        [(true, "panicked: testkit panics on purpose after 2000 rows"), (false, "testkit fails on purpose")]
    {
        let yaml = format!(
            "version: 1\nplugins: [{testkit:?}]\nruntime: {{ workers: 2 }}\nstages:\n  rows: {{ type: plugin-rows, rows: 20000, batch_size: 500 }}\n  boom: {{ type: plugin-fail, inputs: [rows], after_rows: 2000, panic: {panic} }}\n  out:  {{ type: blackhole, inputs: [boom] }}\n"
        );
        let pipeline = write(dir.path(), "p.yaml", &yaml);
        let out = dfp().arg("run").arg(&pipeline).output().unwrap();
        // Exit code 1 (a reported failure), not a signal or an abort.
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let msg = text(&out);
        assert!(msg.contains("stage \"boom\" failed") && msg.contains(expected), "{msg}");
        assert!(msg.contains("plugin testkit"), "{msg}");
    }
    // A bad configuration is reported at validation, with the field.
    let yaml = format!(
        "version: 1\nplugins: [{testkit:?}]\nstages:\n  rows: {{ type: plugin-rows, rows: 10, batch_size: 0 }}\n  out: {{ type: blackhole, inputs: [rows] }}\n"
    );
    let pipeline = write(dir.path(), "c.yaml", &yaml);
    let out = dfp().arg("validate").arg(&pipeline).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("batch_size and users must be at least 1"), "{}", text(&out));
}

/// id → (label, kind) from a generated labels.csv.
fn labels(path: &Path) -> BTreeMap<String, (bool, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), (f[1] == "1", f[2].to_string()))
        })
        .collect()
}

/// The records `write-okta` rendered have the System Log `LogEvent` shape `normalize-okta` reads.
fn check_okta_records(data: &std::path::Path) {
    let mut records: Vec<Value> = Vec::new();
    for sub in ["train", "infer"] {
        for entry in std::fs::read_dir(data.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            assert!(path.file_name().unwrap().to_string_lossy().starts_with("OKTA_"), "{}", path.display());
            let file: Vec<Value> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            records.extend(file);
        }
    }
    let is_uuid = |s: &str| s.len() == 36 && s.split('-').map(str::len).collect::<Vec<_>>() == [8, 4, 4, 4, 12];
    let mut actor_ids: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let (mut sessions, mut sso, mut failures) = (0, 0, 0);
    for r in &records {
        let keys: BTreeSet<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        let expected: BTreeSet<&str> = [
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
        ]
        .into_iter()
        .collect();
        assert_eq!(keys, expected);
        assert!(is_uuid(r["uuid"].as_str().unwrap()));
        let published = r["published"].as_str().unwrap();
        assert!(published.len() == 24 && published.ends_with('Z') && published.as_bytes()[19] == b'.', "{published}");
        match r["eventType"].as_str().unwrap() {
            "user.session.start" => sessions += 1,
            "user.authentication.sso" => sso += 1,
            other => panic!("eventType {other}"),
        }
        let id = r["actor"]["id"].as_str().unwrap();
        assert!(id.len() == 20 && id.starts_with("00u") && id.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
        let email = r["actor"]["alternateId"].as_str().unwrap().to_string();
        assert_eq!(actor_ids.entry(email).or_insert_with(|| id.to_string()), id, "one actor id per user");
        let browser = r["client"]["userAgent"]["browser"].as_str().unwrap();
        assert!(["CHROME", "EDGE", "FIREFOX", "SAFARI", "UNKNOWN"].contains(&browser), "{browser}");
        assert!(r["client"]["ipAddress"].as_str().unwrap().parse::<std::net::IpAddr>().is_ok());
        assert_eq!(r["target"][0]["type"], "AppInstance");
        assert!(r["target"][0]["id"].as_str().unwrap().starts_with("0oa"));
        match r["outcome"]["result"].as_str().unwrap() {
            "SUCCESS" => assert!(r["outcome"]["reason"].is_null() && r["severity"] == "INFO"),
            "FAILURE" => {
                failures += 1;
                assert!(r["outcome"]["reason"].is_string() && r["severity"] == "WARN");
            }
            other => panic!("outcome {other}"),
        }
    }
    assert!(sessions > 0 && sso > 0 && failures > 0, "{sessions} {sso} {failures}");
}

#[test]
fn dfp_itself_holds_no_okta_code() {
    fn walk(dir: &std::path::Path, hits: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, hits);
            } else if std::fs::read_to_string(&path).unwrap_or_default().to_lowercase().contains("okta") {
                hits.push(path.display().to_string());
            }
        }
    }
    let mut hits = Vec::new();
    for dir in ["dfp-core/src", "dfp-stages/src"] {
        walk(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).as_path(), &mut hits);
    }
    assert!(hits.is_empty(), "the okta family belongs to its plugin, yet these files name it: {hits:?}");
}

#[test]
fn okta_logs_train_and_score_through_the_okta_and_geo_velocity_plugins() {
    plugin_dir();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("okta");
    let models = dir.path().join("models");
    let scored = dir.path().join("scored.jsonl");
    let env_dir = plugin_dir().display().to_string();
    // The okta family and its sample writer come from the plugin: dfp itself knows nothing of Okta.
    let out = dfp()
        .args(["generate", "okta", "--users", "12", "--days", "16", "--seed", "5", "--out"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success() && text(&out).contains("unknown log family \"okta\""), "{}", text(&out));
    let out = dfp()
        .args(["generate", "okta", "--plugin", "libdfp_plugin_okta.so", "--users", "12", "--days", "16", "--seed", "5"])
        .arg("--out")
        .arg(&data)
        .env("DFP_PLUGIN_PATH", &env_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    check_okta_records(&data);
    // The plugin's family is listed like a built-in, with where it comes from.
    let out = dfp()
        .args(["families", "--plugin", "libdfp_plugin_okta.so"])
        .env("DFP_PLUGIN_PATH", &env_dir)
        .output()
        .unwrap();
    let listing = text(&out);
    assert!(
        out.status.success() && listing.contains("okta ") && listing.contains("libdfp_plugin_okta.so"),
        "{listing}"
    );
    assert!(listing.contains("azure ") && listing.contains("duo "), "{listing}");
    let out = dfp()
        .args(["plugin", "inspect", "libdfp_plugin_okta.so", "--json"])
        .env("DFP_PLUGIN_PATH", &env_dir)
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["families"], serde_json::json!(["okta"]));
    let out = dfp()
        .args(["run", "pipelines/okta-training.yaml", "--var", "epochs=3", "--var", "min_history=100"])
        .args(["--var", &format!("input={}", data.join("train").display())])
        .args(["--var", &format!("models={}", models.display())])
        .args(["--var", &format!("report={}", dir.path().join("report.jsonl").display())])
        .env("DFP_PLUGIN_PATH", &env_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = dfp().args(["models", "list", "--registry"]).arg(&models).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("DFP-okta-=generic") && listing.contains("DFP-okta-"), "{listing}");
    let manifest = std::fs::read_dir(&models)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("DFP-okta-"))
        .map(|e| std::fs::read_to_string(e.path().join("v000001/manifest.json")).unwrap())
        .unwrap();
    assert!(manifest.contains("\"geo_velocity_kmh\""), "the plugin's column is a model input");

    let out = dfp()
        .args(["run", "pipelines/okta-inference.yaml", "--var", "threshold=-1"])
        .args(["--var", &format!("input={}", data.join("infer").display())])
        .args(["--var", &format!("models={}", models.display())])
        .args(["--var", &format!("output={}", scored.display())])
        .env("DFP_PLUGIN_PATH", &env_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let labels = labels(&data.join("labels.csv"));
    let rows: Vec<Value> =
        std::fs::read_to_string(&scored).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an event was scored twice");
    assert_eq!(unique, labels.keys().map(String::as_str).collect(), "every Okta event is scored");
    assert!(rows.iter().all(|r| r["model_name"].as_str().unwrap().starts_with("DFP-okta-")));
    assert!(rows.iter().all(|r| r["geo_velocity_kmh_z_loss"].is_number()));
    // Impossible travel shows in the plugin's speed: far above any plane, unlike normal sign-ins.
    let speed = |kind: &str| -> f64 {
        rows.iter()
            .filter(|r| labels[r["id"].as_str().unwrap()].1 == kind)
            .filter_map(|r| r["geo_velocity_kmh"].as_f64())
            .fold(0.0, f64::max)
    };
    assert!(speed("impossible_travel") > 1500.0, "impossible travel at {} km/h", speed("impossible_travel"));
    let normal: Vec<f64> = rows
        .iter()
        .filter(|r| labels[r["id"].as_str().unwrap()].1 == "normal")
        .filter_map(|r| r["geo_velocity_kmh"].as_f64())
        .collect();
    let median = {
        let mut v = normal.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    assert!(median < 100.0, "normal sign-ins mostly stay put (median {median} km/h)");
    // And `dfp eval` reads the result.
    let out =
        dfp().args(["eval", "--scores"]).arg(&scored).arg("--labels").arg(data.join("labels.csv")).output().unwrap();
    assert!(out.status.success() && text(&out).contains("ROC-AUC"), "{}", text(&out));
}
