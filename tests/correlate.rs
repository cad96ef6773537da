//! Detection across events: the shipped Azure pipelines on a small generated data set, with `correlate`
//! raising `risk`. Attacks that only show across events (password spray, token theft, quiet takeover) must
//! be caught, and ordinary events must not be flagged more often than by the model alone.

mod common;
use common::{dfp, text};

use serde_json::Value;

fn eval(scores: &std::path::Path, labels: &std::path::Path, field: &str) -> Value {
    let out = dfp()
        .args(["eval", "--scores", scores.to_str().unwrap(), "--labels", labels.to_str().unwrap()])
        .args(["--field", field, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn kind(v: &Value, kind: &str) -> (u64, u64) {
    let k =
        v["kinds"].as_array().unwrap().iter().find(|k| k["kind"] == kind).unwrap_or_else(|| panic!("no {kind}: {v}"));
    (k["flagged"].as_u64().unwrap(), k["total"].as_u64().unwrap())
}

#[test]
fn correlate_catches_spray_token_theft_and_quiet_takeover_without_more_false_alarms() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p);
    let data = d("data");
    let out = dfp()
        .args(["generate", "azure", "--out", data.to_str().unwrap(), "--users", "30", "--days", "21", "--seed", "11"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = dfp()
        .args(["run", "pipelines/azure-training.yaml", "-q"])
        .args(["--var", &format!("input={}", data.join("train").display())])
        .args(["--var", &format!("models={}", d("models").display())])
        .args(["--var", &format!("report={}", d("report.jsonl").display())])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // The shipped pipeline (2 workers), then the same on 1 worker: correlation must not depend on which
    // worker read which file first.
    for (workers, scored, incidents) in
        [("2", "scored.jsonl", "incidents.jsonl"), ("1", "scored-1.jsonl", "incidents-1.jsonl")]
    {
        let out = dfp()
            .args(["run", "pipelines/azure-inference.yaml", "-q", "--var", "threshold=-1", "--workers", workers])
            .args(["--var", &format!("input={}", data.join("infer").display())])
            .args(["--var", &format!("models={}", d("models").display())])
            .args(["--var", &format!("output={}", d(scored).display())])
            .args(["--var", &format!("incidents={}", d(incidents).display())])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let labels = data.join("labels.csv");
    let raised = eval(&d("scored.jsonl"), &labels, "risk");
    let model = eval(&d("scored.jsonl"), &labels, "risk_model");
    assert_eq!(raised["threshold"], 2.0);
    let mut report = String::new();
    for k in ["password_spray", "token_theft", "quiet_takeover", "normal"] {
        let (f, t) = kind(&raised, k);
        let (fm, _) = kind(&model, k);
        report.push_str(&format!("{k}: risk {f}/{t}, model alone {fm}/{t}\n"));
    }
    for k in ["password_spray", "token_theft", "quiet_takeover"] {
        let (f, t) = kind(&raised, k);
        assert!(t > 0 && f as f64 >= 0.9 * t as f64, "{k} recall below 90 %:\n{report}");
    }
    let (normal, _) = kind(&raised, "normal");
    let (normal_model, _) = kind(&model, "normal");
    assert!(normal <= normal_model, "more ordinary events flagged than by the model alone:\n{report}");
    assert!(
        kind(&raised, "token_theft").0 > kind(&model, "token_theft").0,
        "correlation adds what the model alone misses:\n{report}"
    );

    // Every anomalous event names its user's incident, and every incident ends closed with its events
    // listed; a password spray's source incidents list events that a spray signal raised.
    let read = |name: &str| -> Vec<Value> {
        std::fs::read_to_string(d(name)).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let (rows, incidents) = (read("scored.jsonl"), read("incidents.jsonl"));
    let mut last: std::collections::HashMap<String, &Value> = std::collections::HashMap::new();
    for i in &incidents {
        last.insert(i["incident_id"].as_str().unwrap().to_string(), i);
    }
    let by_id: std::collections::HashMap<&str, &Value> = rows.iter().map(|r| (r["id"].as_str().unwrap(), r)).collect();
    let mut members = 0;
    for r in &rows {
        let risk = r["risk"].as_f64().unwrap();
        match r["incident_id"].as_str() {
            Some(id) => {
                members += 1;
                assert!(risk >= 2.0, "{r}");
                let inc = last.get(id).unwrap_or_else(|| panic!("incident {id} not written"));
                assert_eq!(inc["entity"], "user", "{inc}");
                assert_eq!(inc["username"], r["username"]);
                assert!(inc["event_ids"].as_str().unwrap().split(',').any(|e| e == r["id"].as_str().unwrap()), "{inc}");
            }
            None => assert!(risk < 2.0, "an anomalous event without an incident: {r}"),
        }
        assert!(r["risk"].as_f64().unwrap() >= r["risk_model"].as_f64().unwrap(), "risk is only ever raised: {r}");
    }
    let of = |entity: &'static str| last.values().filter(move |i| i["entity"] == entity);
    assert_eq!(members as u64, of("user").map(|i| i["events"].as_u64().unwrap()).sum::<u64>());
    for inc in of("source") {
        for id in inc["event_ids"].as_str().unwrap().split(',') {
            let r = by_id.get(id).unwrap_or_else(|| panic!("{inc}: event {id} not written"));
            assert!(r["risk_signals"].as_str().is_some_and(|s| s.contains("failing from this")), "{inc}\n{r}");
        }
    }
    assert!(last.values().all(|i| i["status"] == "closed"), "every incident closes when the input ends");

    // One worker and two see the same views: the same risk, signals, windows and incidents for every event.
    let one: std::collections::HashMap<String, Value> =
        read("scored-1.jsonl").into_iter().map(|r| (r["id"].as_str().unwrap().to_string(), r)).collect();
    assert_eq!(one.len(), rows.len());
    for r in &rows {
        let o = &one[r["id"].as_str().unwrap()];
        for (k, v) in r.as_object().unwrap() {
            if k == "risk" || k.starts_with("risk_") || k.starts_with("win_") || k == "incident_id" {
                assert_eq!(&o[k], v, "{k} differs between 1 and 2 workers for {}", r["id"]);
            }
        }
    }
    let closed = |name: &str| -> std::collections::BTreeSet<String> {
        read(name).iter().filter(|i| i["status"] == "closed").map(|i| i.to_string()).collect()
    };
    assert_eq!(closed("incidents.jsonl"), closed("incidents-1.jsonl"), "the same incidents on 1 and 2 workers");
}

#[test]
fn bad_windows_and_unknown_outputs_are_refused_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(
        &p,
        "version: 1\nfamily: azure\nstages:\n  logs: { type: file-source, path: examples/data/azure/infer }\n  \
         events: { type: normalize-azure, inputs: [logs] }\n  corr:\n    type: correlate\n    inputs: [events]\n    \
         place: { window: 8x }\n  out: { type: file-sink, inputs: [corr.alerts], path: /tmp/x.jsonl }\n",
    )
    .unwrap();
    let out = dfp().args(["validate", p.to_str().unwrap()]).output().unwrap();
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("p.yaml:9") && t.contains("place.window") && t.contains("unknown unit \"x\""), "{t}");
    assert!(
        t.contains("p.yaml:10")
            && t.contains("stage \"corr\" has no output \"alerts\"")
            && t.contains("\"corr.incidents\""),
        "{t}"
    );
}
