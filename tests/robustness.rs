//! Hostile and damaged input end to end: one bad model, file or user never stops a run, nothing is lost
//! silently, and what happened is said (docs/operations.md, "Limits and damaged input").

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{dfp, text};
use serde_json::Value;

fn ok(out: &Output) -> String {
    let t = text(out);
    assert!(out.status.success(), "{t}");
    t
}

fn var(name: &str, value: &Path) -> String {
    format!("{name}={}", value.display())
}

/// Trains user models (min_history 40: 8 of the 10 sample users) and the generic model, 2 epochs.
fn train(models: &Path) {
    ok(&dfp()
        .args(["run", "pipelines/azure-training.yaml", "--var", "input=examples/data/azure/train"])
        .args(["--var", "epochs=2", "--var", "min_history=40", "--var", &var("models", models)])
        .args(["--var", &var("report", &models.join("report.jsonl")), "-q"])
        .output()
        .unwrap());
}

fn version_dir(models: &Path, user: &str) -> PathBuf {
    models.join(format!("DFP-azure-{user}")).join("v000001")
}

fn edit_manifest(models: &Path, user: &str, edit: impl FnOnce(&mut Value)) {
    let path = version_dir(models, user).join("manifest.json");
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut manifest);
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
}

#[test]
fn damaged_models_fall_back_to_the_generic_model_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    train(&models);
    // Six users' models, each damaged differently.
    let damaged: BTreeMap<&str, &str> = [
        ("kenji.lopez@contoso.com", "truncated weights"),
        ("quinn.johnson@contoso.com", "random weights"),
        ("marco.kowalski@contoso.com", "weights of another shape"),
        ("carol.smith@contoso.com", "manifest not JSON"),
        ("grace.fischer@contoso.com", "other features"),
        ("priya.silva@contoso.com", "zero loss spread"),
    ]
    .into_iter()
    .collect();
    let weights = |u: &str| version_dir(&models, u).join("model.safetensors");
    let w = std::fs::read(weights("kenji.lopez@contoso.com")).unwrap();
    std::fs::write(weights("kenji.lopez@contoso.com"), &w[..w.len() / 3]).unwrap();
    std::fs::write(
        weights("quinn.johnson@contoso.com"),
        (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    edit_manifest(&models, "marco.kowalski@contoso.com", |m| m["architecture"]["encoder"][0] = Value::from(77));
    std::fs::write(version_dir(&models, "carol.smith@contoso.com").join("manifest.json"), b"{ not json").unwrap();
    edit_manifest(&models, "grace.fischer@contoso.com", |m| {
        m["features"].as_array_mut().unwrap().pop();
    });
    edit_manifest(&models, "priya.silva@contoso.com", |m| m["loss_stats"]["scale"][0] = Value::from(0.0));

    let scored = dir.path().join("scored.jsonl");
    let out = dfp()
        .args(["run", "pipelines/azure-inference.yaml", "--var", "input=examples/data/azure/infer"])
        .args(["--var", "threshold=-1", "--var", &var("models", &models), "--var", &var("output", &scored)])
        .output()
        .unwrap();
    let t = ok(&out);
    let rows: Vec<Value> =
        std::fs::read_to_string(&scored).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let normalized: u64 = t
        .lines()
        .find(|l| l.starts_with("events "))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no events row in {t}"));
    assert_eq!(rows.len() as u64, normalized, "every event is scored");
    for (user, how) in &damaged {
        let theirs: Vec<&Value> = rows.iter().filter(|r| r["username"] == *user).collect();
        assert!(!theirs.is_empty(), "{user} has events");
        assert!(theirs.iter().all(|r| r["model_kind"] == "generic"), "{user} ({how}) is scored by the generic model");
        assert!(t.contains(&format!("DFP-azure-{user} v1 cannot be used")), "{how}: the run says why:\n{t}");
    }
    assert!(rows.iter().all(|r| r["mean_abs_z"].as_f64().is_some_and(f64::is_finite)), "no NaN score");
    // The two undamaged users with models keep them.
    for user in ["zoe.larsen@contoso.com", "elena.dubois@contoso.com"] {
        assert!(rows.iter().filter(|r| r["username"] == user).all(|r| r["model_kind"] == "user"), "{user}");
    }
    // `dfp models list` shows every model, the bad ones with the reason, and fails at the end.
    let out = dfp().args(["models", "list", "--registry"]).arg(&models).output().unwrap();
    let listing = text(&out);
    assert_eq!(out.status.code(), Some(1), "{listing}");
    assert!(
        listing.contains("DFP-azure-carol.smith@contoso.com") && listing.contains("unreadable manifest"),
        "{listing}"
    );
    assert!(listing.contains("DFP-azure-zoe.larsen@contoso.com"), "{listing}");
    // The manifests alone show three; `--check` loads the weights too and finds all six (the profile set counts as a
    // model).
    assert!(listing.contains("10 model(s)") && listing.contains("3 of 10 model(s) cannot be used"), "{listing}");
    let out = dfp().args(["models", "list", "--check", "--registry"]).arg(&models).output().unwrap();
    let listing = text(&out);
    assert!(listing.contains("6 of 10 model(s) cannot be used"), "{listing}");
    for user in damaged.keys() {
        let line = listing.lines().find(|l| l.contains(user)).unwrap();
        assert!(line.contains("cannot be used"), "{line}");
    }
}

#[test]
fn models_list_goes_on_past_a_bad_latest() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    train(&models);
    std::fs::write(models.join("DFP-azure-kenji.lopez@contoso.com/LATEST"), "not a number").unwrap();
    let marco = models.join("DFP-azure-marco.kowalski@contoso.com/LATEST");
    std::fs::remove_file(&marco).unwrap();
    std::fs::create_dir(&marco).unwrap();
    std::fs::create_dir(models.join("DFP-azure-nobody")).unwrap();
    let out = dfp().args(["models", "list", "--registry"]).arg(&models).output().unwrap();
    let listing = text(&out);
    assert_eq!(out.status.code(), Some(1), "{listing}");
    for bad in ["kenji.lopez", "marco.kowalski", "nobody"] {
        let line = listing.lines().find(|l| l.contains(bad)).unwrap_or_else(|| panic!("{bad} not listed:\n{listing}"));
        assert!(line.contains("cannot be used"), "{line}");
    }
    assert!(listing.contains("DFP-azure-=generic"), "the listing went on:\n{listing}");
    assert!(listing.contains("3 of 11 model(s) cannot be used"), "{listing}");
}

/// Rewrites the inference sample's user names as `rename` says and adds one event of an absurd user.
fn hostile_copy(dir: &Path, rename: impl Fn(&str) -> String) -> PathBuf {
    let out = dir.join("infer");
    std::fs::create_dir_all(&out).unwrap();
    for entry in std::fs::read_dir("examples/data/azure/infer").unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let text = if path.extension().is_some_and(|e| e == "gz") {
            use std::io::Read;
            let mut s = String::new();
            flate2::read::GzDecoder::new(bytes.as_slice()).read_to_string(&mut s).unwrap();
            s
        } else {
            String::from_utf8(bytes).unwrap()
        };
        let mut records: Vec<Value> = serde_json::from_str(&text).unwrap();
        for r in &mut records {
            let upn = r["properties"]["userPrincipalName"].as_str().unwrap().to_string();
            r["properties"]["userPrincipalName"] = Value::from(rename(&upn));
        }
        let name = path.file_name().unwrap().to_string_lossy().trim_end_matches(".gz").to_string();
        std::fs::write(out.join(name), serde_json::to_vec(&records).unwrap()).unwrap();
    }
    out
}

#[test]
fn user_ids_compare_case_insensitively_and_absurd_ones_are_scored() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    train(&models);
    let long_user = format!("{}@contoso.com", "x".repeat(3900));
    let input = hostile_copy(dir.path(), |u| {
        if u.starts_with("zoe") {
            u.to_uppercase()
        } else if u.starts_with("elena") {
            long_user.clone()
        } else {
            u.to_string()
        }
    });
    let scored = dir.path().join("scored.jsonl");
    ok(&dfp()
        .args(["run", "pipelines/azure-inference.yaml", "--var", &var("input", &input)])
        .args(["--var", "threshold=-1", "--var", &var("models", &models), "--var", &var("output", &scored)])
        .output()
        .unwrap());
    let rows: Vec<Value> =
        std::fs::read_to_string(&scored).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let zoe: Vec<&Value> = rows.iter().filter(|r| r["username"] == "zoe.larsen@contoso.com").collect();
    assert!(!zoe.is_empty(), "ZOE.LARSEN@CONTOSO.COM is read as zoe.larsen@contoso.com");
    assert!(zoe.iter().all(|r| r["model_kind"] == "user"), "and scored by her own model");
    let long: Vec<&Value> = rows.iter().filter(|r| r["username"].as_str().is_some_and(|u| u.len() > 3000)).collect();
    assert!(!long.is_empty() && long.iter().all(|r| r["model_kind"] == "generic"), "a 3,913-byte id is scored");
}

#[test]
fn a_failed_run_leaves_an_earlier_output_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("alerts.jsonl");
    std::fs::write(&output, "{\"earlier\": true}\n").unwrap();
    // No models at all: scoring fails on the first user.
    let out = dfp()
        .args(["run", "pipelines/azure-inference.yaml", "--var", "threshold=-1"])
        .args(["--var", &var("models", &dir.path().join("empty")), "--var", &var("output", &output)])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&output).unwrap(), "{\"earlier\": true}\n", "the earlier output is kept");
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".alerts"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary file is left behind: {leftovers:?}");
}

#[test]
fn duplicate_events_are_scored_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    train(&models);
    // The same export twice, under two names (as a re-delivered file would be).
    let input = hostile_copy(dir.path(), str::to_string);
    let first = std::fs::read_dir(&input).unwrap().next().unwrap().unwrap().path();
    let copy = input.join(first.file_name().unwrap().to_string_lossy().replace(".json", ".again.json"));
    std::fs::copy(&first, &copy).unwrap();
    let events = serde_json::from_slice::<Vec<Value>>(&std::fs::read(&first).unwrap()).unwrap().len();
    let scored = dir.path().join("scored.jsonl");
    let t = ok(&dfp()
        .args(["run", "pipelines/azure-inference.yaml", "--var", &var("input", &input)])
        .args(["--var", "threshold=-1", "--var", &var("models", &models), "--var", &var("output", &scored)])
        .output()
        .unwrap());
    assert!(t.contains(&format!("features: {events} duplicate ids")), "the summary counts them:\n{t}");
    let ids: Vec<String> = std::fs::read_to_string(&scored)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].as_str().unwrap().to_string())
        .collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(ids.len() - unique.len(), events, "both copies are scored");
}
