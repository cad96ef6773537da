//! `elasticsearch-sink` and `dfp es setup` against a stand-in Elasticsearch on 127.0.0.1
//! (tests/common/es.rs), which the official Python client checks first: every event of a run is in the
//! index exactly once after a clean run, a re-run, injected 429s/503s and dropped connections; documents
//! refused for their content land in the dead letters with the server's reason; data streams count 409s
//! as delivered; the templates and the Kibana objects have the documented shapes. The Kafka crash test
//! (kill -9, restart, every event once) is in tests/kafka.rs.

mod common;
#[path = "common/es.rs"]
mod es;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{dfp, text};
use es::{EsStandIn, Faults};
use serde_json::Value;

/// Generated Azure logs (train and inference periods) in `dir/data`.
fn generate(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    let out = dfp()
        .args(["generate", "azure", "--out", data.to_str().unwrap(), "--users", "8", "--days", "4"])
        .args(["--train-days", "2", "--seed", "3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    data
}

/// A pipeline: the generated logs → normalize → the sink (with `sink` as extra settings) and a file of
/// the same rows.
fn pipeline(dir: &Path, url: &str, sink: &str) -> PathBuf {
    let yaml = format!(
        r#"version: 1
family: azure
runtime:
  workers: 2
  dead_letter: {dir}/dead.jsonl
stages:
  logs:
    type: file-source
    path: "{dir}/data/*/*.json"
    raw: true
    batch_size: 64
  events:
    type: normalize-azure
    inputs: [logs]
  es:
    type: elasticsearch-sink
    inputs: [events]
    url: "{url}"
    batch_rows: 40
    retry_initial_secs: 0.01
    retry_max_secs: 0.05
{sink}
  file:
    type: file-sink
    inputs: [events]
    path: {dir}/events.jsonl
"#,
        dir = dir.display()
    );
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn run(pipeline: &Path) -> Output {
    dfp().args(["run", pipeline.to_str().unwrap(), "-q"]).output().unwrap()
}

/// (id, timestamp, whether it has coordinates) of every row of a JSON-lines file.
fn rows(path: &Path) -> BTreeMap<String, (String, bool)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|r| {
            let geo = r["latitude"].is_number() && r["longitude"].is_number();
            (r["id"].as_str().unwrap().to_string(), (r["timestamp"].as_str().unwrap().to_string(), geo))
        })
        .collect()
}

/// The ids in the stand-in's indices matching `pattern`, each once (a second copy would need a second id).
fn stored_ids(es: &EsStandIn, pattern: &str) -> BTreeSet<String> {
    es.docs(pattern).into_iter().map(|(_, id, _, _)| id).collect()
}

#[test]
fn the_stand_in_answers_as_elasticsearch_does_for_the_official_python_client() {
    let python = std::env::var("DFP_ES_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/dfp/es-venv/bin/python")
    });
    assert!(
        Path::new(&python).exists(),
        "the official Elasticsearch Python client is needed ({python} is missing): run ./dev test, which installs it"
    );
    let es = EsStandIn::start();
    es.set_faults(Faults {
        item_429: [("retry-me".to_string(), 2)].into_iter().collect(),
        item_400: ["bad".to_string()].into_iter().collect(),
        ..Default::default()
    });
    let out = std::process::Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/es_client_check.py"))
        .arg(es.url())
        .output()
        .unwrap();
    assert!(out.status.success(), "the Python client check failed:\n{}", text(&out));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    // What Elasticsearch answers to the same calls.
    let expected = serde_json::json!({
        "info_version": "9.1.0",
        "first": { "ok": 5, "errors": 0 },
        "again": { "ok": 5, "errors": 0 },
        "count_after_index": 5,
        "get": { "found": true, "version": 2, "n": 3 },
        "create": { "ok": 1, "errors": [[409, "version_conflict_engine_exception"], [409, "version_conflict_engine_exception"]] },
        "retried": [[true, 201], [true, 201]],
        "rejected": { "ok": 1, "errors": [["bad", 400, "mapper_parsing_exception"]] },
        "count": 9,
        "missing": "NotFoundError",
        "search": { "total": 2, "ids": ["d1", "d9"] },
    });
    assert_eq!(got, expected, "the stand-in must answer as Elasticsearch does");
}

#[test]
fn every_event_lands_once_under_its_own_id_and_a_rerun_overwrites_instead_of_copying() {
    let es = EsStandIn::start();
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    let p = pipeline(dir.path(), &es.url(), "    index: \"dfp-events-%Y.%m.%d\"\n    geo: {}");
    let out = run(&p);
    assert!(out.status.success(), "{}", text(&out));
    let expected = rows(&dir.path().join("events.jsonl"));
    assert!(expected.len() > 300, "the generated set has events: {}", expected.len());
    assert_eq!(es.count("dfp-events-*"), expected.len(), "one document per event");
    assert_eq!(stored_ids(&es, "dfp-events-*"), expected.keys().cloned().collect());
    for (index, id, version, source) in es.docs("dfp-events-*") {
        let (time, geo) = &expected[&id];
        let day = format!("dfp-events-{}.{}.{}", &time[0..4], &time[5..7], &time[8..10]);
        assert_eq!(index, day, "{id} is in the index of its event's day");
        assert_eq!(version, 1);
        assert_eq!(source["id"], Value::String(id.clone()));
        let ts = source["@timestamp"].as_str().unwrap();
        assert_eq!(
            chrono::DateTime::parse_from_rfc3339(ts).unwrap(),
            chrono::DateTime::parse_from_rfc3339(time).unwrap(),
            "@timestamp is the event time"
        );
        assert_eq!(source.get("geo").is_some(), *geo, "{id}: a geo_point where the row has coordinates");
        if *geo {
            assert_eq!(source["geo"]["lat"], source["latitude"]);
        }
    }
    let requests = es.state().bulk_requests;
    assert!(requests >= expected.len() / 40, "batches of at most 40 rows: {requests} requests");

    // The same rows again: overwritten in place (version 2), not copied.
    let out = run(&p);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(es.count("dfp-events-*"), expected.len(), "a re-run adds no copy");
    assert!(es.docs("dfp-events-*").iter().all(|d| d.2 == 2), "every document was overwritten once");
}

#[test]
fn injected_503s_429s_and_dropped_connections_lose_nothing_and_copy_nothing() {
    let es = EsStandIn::start();
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    // Ids known before the run: the first run without the sink tells them.
    let p = pipeline(dir.path(), &es.url(), "    index: dfp-events\n    gzip: true");
    let out = run(&p);
    assert!(out.status.success(), "{}", text(&out));
    let expected: BTreeSet<String> = rows(&dir.path().join("events.jsonl")).into_keys().collect();
    let some: Vec<String> = expected.iter().step_by(37).cloned().collect();
    let clean_requests = es.state().bulk_requests;
    assert!(es.state().gzip_requests > 0, "gzip: true compresses the bulk bodies");

    let es = EsStandIn::start();
    es.set_faults(Faults {
        fail_requests: 3,
        drop_requests: 2,
        item_429: some.iter().map(|id| (id.clone(), 2)).collect(),
        ..Default::default()
    });
    let p = pipeline(dir.path(), &es.url(), "    index: dfp-events\n    gzip: true");
    let out = run(&p);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stored_ids(&es, "dfp-events"), expected, "every event delivered despite the faults");
    assert_eq!(es.count("dfp-events"), expected.len(), "and none twice");
    let st = es.state();
    assert_eq!(st.faults.fail_requests + st.faults.drop_requests, 0, "every injected request fault was hit");
    assert!(st.faults.item_429.values().all(|n| *n == 0), "every injected 429 was hit");
    assert!(st.bulk_requests >= clean_requests + 5, "the failed requests were sent again");
    // Documents of a dropped answer were applied and sent again: overwritten, not copied.
    assert!(st.indices["dfp-events"].values().any(|d| d.version > 1));
}

#[test]
fn documents_refused_for_their_content_go_to_the_dead_letters_with_the_server_reason() {
    let es = EsStandIn::start();
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    let p = pipeline(dir.path(), &es.url(), "    index: dfp-events");
    assert!(run(&p).status.success());
    let expected: BTreeSet<String> = rows(&dir.path().join("events.jsonl")).into_keys().collect();
    let refused: BTreeSet<String> = expected.iter().step_by(50).cloned().collect();

    let es = EsStandIn::start();
    es.set_faults(Faults { item_400: refused.iter().cloned().collect(), ..Default::default() });
    let p = pipeline(dir.path(), &es.url(), "    index: dfp-events");
    let out = run(&p);
    assert!(out.status.success(), "a refused document does not stop the pipeline: {}", text(&out));
    let stored = stored_ids(&es, "dfp-events");
    assert_eq!(stored, expected.difference(&refused).cloned().collect(), "all the others are stored");
    let dead: Vec<Value> = std::fs::read_to_string(dir.path().join("dead.jsonl"))
        .expect("a dead-letter file")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), refused.len(), "one dead letter per refused document: {dead:?}");
    for d in &dead {
        assert_eq!(d["stage"], "es");
        let reason = d["reason"].as_str().unwrap();
        assert!(reason.contains("HTTP 400") && reason.contains("mapper_parsing_exception"), "{reason}");
        let record: Value = serde_json::from_str(d["record"].as_str().unwrap()).unwrap();
        let id = record["id"].as_str().unwrap();
        assert!(refused.contains(id) && reason.contains(id), "{reason}");
    }
}

#[test]
fn a_data_stream_takes_creates_and_a_replay_counts_its_conflicts_as_delivered() {
    let es = EsStandIn::start();
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    // With an API key from the environment (sent as `ApiKey …`, never printed).
    let key = "ZGZwOnMzY3IzdC1rM3k=";
    let out = dfp()
        .args(["es", "setup", "--url", &es.url(), "--alerts-index", "dfp-stream*", "--data-stream"])
        .args(["--api-key-env", "DFP_TEST_ES_KEY"])
        .env("DFP_TEST_ES_KEY", key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("9.1.0"), "{}", text(&out));
    let p = pipeline(
        dir.path(),
        &es.url(),
        "    index: dfp-stream\n    data_stream: true\n    auth: { api_key_env: DFP_TEST_ES_KEY }",
    );
    let out = dfp().args(["run", p.to_str().unwrap(), "--log", "debug"]).env("DFP_TEST_ES_KEY", key).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains(key), "the key is never logged");
    assert_eq!(es.state().auth, [format!("ApiKey {key}")].into_iter().collect(), "every request carried the key");
    // Without the variable: a clear error naming it, before anything is sent.
    let out = dfp().args(["run", p.to_str().unwrap()]).env_remove("DFP_TEST_ES_KEY").output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("the API key variable DFP_TEST_ES_KEY is not set"), "{}", text(&out));
    let expected: BTreeSet<String> = rows(&dir.path().join("events.jsonl")).into_keys().collect();
    assert_eq!(stored_ids(&es, "dfp-stream"), expected);
    // The replay: every create refused with 409 (already there), which counts as delivered.
    let out = dfp().args(["run", p.to_str().unwrap(), "-q"]).env("DFP_TEST_ES_KEY", key).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(es.count("dfp-stream"), expected.len());
    assert!(es.docs("dfp-stream").iter().all(|d| d.2 == 1), "create never overwrites");
    assert!(!dir.path().join("dead.jsonl").exists(), "409s are not dead letters");
    // `index` into a data stream is what Elasticsearch refuses: validation says so first.
    let bad = pipeline(dir.path(), &es.url(), "    index: dfp-stream\n    data_stream: true\n    action: index");
    let out = dfp().args(["validate", bad.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(msg.contains("pipeline.yaml:") && msg.contains("action") && msg.contains("create"), "{msg}");
}

#[test]
fn es_setup_installs_the_templates_and_an_unreachable_cluster_fails_the_run_clearly() {
    let es = EsStandIn::start();
    let out = dfp().args(["es", "setup", "--url", &es.url()]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let st = es.state();
    let alerts = &st.templates["dfp-alerts"];
    assert_eq!(alerts["index_patterns"], serde_json::json!(["dfp-alerts-*"]));
    let props = &alerts["template"]["mappings"]["properties"];
    for (field, ty) in [
        ("ipAddress", "ip"),
        ("timestamp", "date"),
        ("@timestamp", "date"),
        ("username", "keyword"),
        ("appDisplayName", "keyword"),
        ("country", "keyword"),
        ("deviceDetailbrowser", "keyword"),
        ("geo", "geo_point"),
        ("mean_abs_z", "float"),
        ("risk", "float"),
    ] {
        assert_eq!(props[field]["type"], ty, "{field}");
    }
    let dynamic = alerts["template"]["mappings"]["dynamic_templates"].to_string();
    assert!(dynamic.contains("*_z_loss") && dynamic.contains("float"), "z-scores map to floats: {dynamic}");
    assert!(alerts.get("data_stream").is_none());
    let incidents = &st.templates["dfp-incidents"];
    assert_eq!(incidents["template"]["mappings"]["properties"]["incident_id"]["type"], "keyword");
    assert_eq!(incidents["template"]["mappings"]["properties"]["first_seen"]["type"], "date");
    drop(st);

    // Nothing listens there: the run stops after its attempts, naming the cluster and what was not sent.
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    let url = format!("http://127.0.0.1:{}", common::free_port());
    let p = pipeline(dir.path(), &url, "    index: dfp-events\n    retry_attempts: 2");
    let out = run(&p);
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(msg.contains(&url) && msg.contains("not delivered after 2 attempt(s)"), "{msg}");
}

#[test]
fn https_trusts_the_ca_file_and_refuses_a_certificate_nobody_vouches_for() {
    let dir = tempfile::tempdir().unwrap();
    let c = common::certificates(dir.path());
    let (ca, cert, key) = (c.ca, c.cert, c.key);
    let es = EsStandIn::start_tls(&cert, &key);
    assert!(es.url().starts_with("https://127.0.0.1:"));
    generate(dir.path());
    let out = dfp().args(["es", "setup", "--url", &es.url(), "--ca-file", ca.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let p = pipeline(dir.path(), &es.url(), &format!("    index: dfp-events\n    ca_file: {}", ca.display()));
    let out = run(&p);
    assert!(out.status.success(), "{}", text(&out));
    let expected: BTreeSet<String> = rows(&dir.path().join("events.jsonl")).into_keys().collect();
    assert_eq!(stored_ids(&es, "dfp-events"), expected, "every event over TLS");

    // Without the CA file the server's certificate is not trusted: the run fails and says why.
    let p = pipeline(dir.path(), &es.url(), "    index: dfp-events\n    retry_attempts: 1");
    let out = run(&p);
    assert!(!out.status.success());
    let msg = text(&out).to_lowercase();
    assert!(msg.contains("certificate") && msg.contains("not delivered after 1 attempt(s)"), "{msg}");
    // A CA file that is not one is an error naming it.
    let p = pipeline(dir.path(), &es.url(), &format!("    index: dfp-events\n    ca_file: {}", key.display()));
    let msg = text(&run(&p));
    assert!(msg.contains(key.to_str().unwrap()) && msg.contains("CA file"), "{msg}");
}

#[test]
fn the_kibana_objects_are_valid_ndjson_whose_references_resolve() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kibana/dfp-objects.ndjson");
    let text = std::fs::read_to_string(path).unwrap();
    let objects: Vec<Value> = text
        .lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("{path}:{}: {e}", i + 1)))
        .collect();
    let ids: BTreeMap<(String, String), &Value> = objects
        .iter()
        .map(|o| ((o["type"].as_str().unwrap().to_string(), o["id"].as_str().unwrap().to_string()), o))
        .collect();
    assert_eq!(ids.len(), objects.len(), "ids are unique");
    let kinds: BTreeSet<&str> = objects.iter().map(|o| o["type"].as_str().unwrap()).collect();
    for kind in ["index-pattern", "search", "visualization", "dashboard"] {
        assert!(kinds.contains(kind), "a {kind} object");
    }
    for o in &objects {
        let title = o["attributes"]["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "every object has a title: {o}");
        for r in o["references"].as_array().into_iter().flatten() {
            let key = (r["type"].as_str().unwrap().to_string(), r["id"].as_str().unwrap().to_string());
            assert!(ids.contains_key(&key), "{title}: the reference {key:?} resolves");
        }
        // Embedded JSON strings are JSON.
        for field in ["panelsJSON", "visState", "fieldFormatMap"] {
            if let Some(s) = o["attributes"][field].as_str() {
                serde_json::from_str::<Value>(s).unwrap_or_else(|e| panic!("{title}: {field}: {e}"));
            }
        }
        if let Some(s) = o["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"].as_str() {
            serde_json::from_str::<Value>(s).unwrap_or_else(|e| panic!("{title}: searchSourceJSON: {e}"));
        }
    }
    let patterns: Vec<&str> = objects
        .iter()
        .filter(|o| o["type"] == "index-pattern")
        .map(|o| o["attributes"]["title"].as_str().unwrap())
        .collect();
    assert!(patterns.contains(&"dfp-alerts-*") && patterns.contains(&"dfp-incidents*"), "{patterns:?}");
    let dashboard = objects.iter().find(|o| o["type"] == "dashboard").unwrap();
    let panels: Value = serde_json::from_str(dashboard["attributes"]["panelsJSON"].as_str().unwrap()).unwrap();
    let refs = dashboard["references"].as_array().unwrap();
    for p in panels.as_array().unwrap() {
        let name = p["panelRefName"].as_str().unwrap();
        assert!(refs.iter().any(|r| r["name"] == name), "panel {name} has a reference");
    }
}
