//! `dfp retrain`: retrained models replace the ones in service only when they are not worse on held-out
//! recent events, and a running inference pipeline picks the promoted ones up without a restart.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{dfp, text};
use serde_json::Value;

/// Generated logs: `all/` (30 days from 2026-10-01, as exported), `shuffled/` (the same, but before
/// 2026-10-26 every event's user is swapped with a random other event's: models trained on it learn the
/// population, not the user), and the labels.
struct Data {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

/// Where the held-out days start in `shuffled/`: the slice that judges stays real.
const SHUFFLED_UNTIL: &str = "2026-10-26";

fn data() -> &'static Data {
    static DATA: OnceLock<Data> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let gen = root.join("gen");
        let out = dfp()
            .args(["generate", "azure", "--out", gen.to_str().unwrap(), "--users", "12", "--days", "30"])
            .args(["--seed", "3", "--force"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let (all, shuffled) = (root.join("all"), root.join("shuffled"));
        std::fs::create_dir_all(&all).unwrap();
        std::fs::create_dir_all(&shuffled).unwrap();
        let mut early: Vec<(String, Vec<Value>)> = Vec::new();
        for part in ["train", "infer"] {
            for entry in std::fs::read_dir(gen.join(part)).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_str().unwrap().to_string();
                std::fs::copy(&path, all.join(&name)).unwrap();
                // AZUREAD_2026-10-01T00_00_08.057Z.json
                if name[8..18] >= *SHUFFLED_UNTIL {
                    std::fs::copy(&path, shuffled.join(&name)).unwrap();
                } else {
                    let records: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                    early.push((name, records));
                }
            }
        }
        // A fixed permutation of the users (a linear congruential sequence: no randomness in the test).
        let mut users: Vec<Value> = early
            .iter()
            .flat_map(|(_, records)| records.iter().map(|r| r["properties"]["userPrincipalName"].clone()))
            .collect();
        let mut state: u64 = 12345;
        for i in (1..users.len()).rev() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            users.swap(i, (state >> 33) as usize % (i + 1));
        }
        let mut next = users.into_iter();
        for (name, mut records) in early {
            for r in &mut records {
                r["properties"]["userPrincipalName"] = next.next().unwrap();
            }
            std::fs::write(shuffled.join(name), serde_json::to_string(&records).unwrap()).unwrap();
        }
        Data { _dir: dir, root }
    })
}

/// The training settings both the champion and the retraining use (Adam: the models learn their users
/// within a few seconds of training).
const TRAINING: &[&str] = &["--var", "epochs=30", "--var", "optimizer=adam", "--var", "min_history=100"];

/// Trains the champions on `input` up to 2026-10-21 into a fresh registry.
fn champions(input: &str, registry: &Path) {
    let out = dfp()
        .args(["run", "pipelines/azure-training.yaml", "-q"])
        .args(["--var", &format!("input={}", data().root.join(input).display())])
        .args(["--var", &format!("models={}", registry.display())])
        .args(["--var", "end=2026-10-21T00:00:00Z"])
        .args(["--var", &format!("report={}", registry.with_extension("champions.jsonl").display())])
        .args(TRAINING)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// `dfp retrain` on `input` up to the end of 2026-10-27, the last two days held out; the report's rows
/// with a decision, by model.
fn retrain(input: &str, registry: &Path, extra: &[&str]) -> (String, BTreeMap<String, Value>) {
    let report = registry.with_extension("retrain.jsonl");
    let out = dfp()
        .args(["retrain", "pipelines/azure-training.yaml", "--registry", registry.to_str().unwrap()])
        .args(["--var", &format!("input={}", data().root.join(input).display())])
        .args(["--end", "2026-10-27", "--window-days", "26", "--holdout-days", "2"])
        .args(["--report", report.to_str().unwrap()])
        .args(TRAINING)
        .args(extra)
        .output()
        .unwrap();
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    let rows = std::fs::read_to_string(&report)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["decision"].is_string())
        .map(|r| (r["model"].as_str().unwrap().to_string(), r))
        .collect();
    (printed, rows)
}

/// The version a local registry serves for `model`.
fn latest(registry: &Path, model: &str) -> u64 {
    std::fs::read_to_string(registry.join(model).join("LATEST")).unwrap().trim().parse().unwrap()
}

fn decision(row: &Value) -> &str {
    row["decision"].as_str().unwrap()
}

#[test]
fn a_challenger_trained_on_shuffled_users_is_not_promoted() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("models");
    champions("all", &registry);
    let (printed, rows) = retrain("shuffled", &registry, &[]);
    assert!(rows.len() >= 10, "{printed}");
    let mut judged = 0;
    for (model, row) in &rows {
        match decision(row) {
            // A user without a champion (too little history before 2026-10-21) gets a first model.
            "new" => assert_eq!(latest(&registry, model), 1, "{printed}"),
            "keep" => {
                assert_eq!(row["status"], "evaluated", "{row}");
                assert_eq!(latest(&registry, model), 1, "{model} still serves its champion: {printed}");
                if row["champion_loss"].is_number() {
                    judged += 1;
                    let (champion, challenger) =
                        (row["champion_loss"].as_f64().unwrap(), row["challenger_loss"].as_f64().unwrap());
                    assert!(challenger > champion * 1.05, "{row}");
                    assert!(row["reason"].as_str().unwrap().contains("worse than the champion"), "{row}");
                }
            }
            other => {
                panic!("{model}: {other}, but a model of shuffled users must not replace its champion:\n{printed}")
            }
        }
    }
    assert!(judged >= 8, "most models were judged on held-out events: {printed}");
    assert!(rows.contains_key("DFP-azure-=generic"), "{printed}");
    assert!(printed.contains("keep     DFP-azure-=generic"), "the decisions are printed: {printed}");
}

#[test]
fn a_better_challenger_is_promoted_and_inference_picks_it_up_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("models");
    // Champions that learned the population instead of their users.
    champions("shuffled", &registry);

    // Inference runs on a watched folder, re-checking its models every half second.
    let watched = dir.path().join("incoming");
    std::fs::create_dir_all(&watched).unwrap();
    let scored = dir.path().join("scored.jsonl");
    let pipeline = dir.path().join("inference.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "version: 1\nfamily: azure\nruntime:\n  workers: 1\nstages:\n  logs: {{ type: file-source, path: \"{watched}\", raw: true, watch: true, poll_interval_secs: 0.2 }}\n  events: {{ type: normalize-azure, inputs: [logs] }}\n  features: {{ type: features, inputs: [events], profiles: \"{registry}\" }}\n  scored: {{ type: score, inputs: [features], registry: \"{registry}\", cache_ttl_secs: 0.5, gather_ms: 10, features: {{ novelty: true, log_counters: true }} }}\n  out: {{ type: file-sink, inputs: [scored], path: \"{scored}\", append: true }}\n",
            watched = watched.display(),
            registry = registry.display(),
            scored = scored.display()
        ),
    )
    .unwrap();
    let inference = dfp()
        .args(["run", pipeline.to_str().unwrap(), "-q"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Exports of 2026-10-28, after the retraining window, dropped in one at a time.
    let mut exports: Vec<PathBuf> = std::fs::read_dir(data().root.join("all"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().contains("2026-10-28"))
        .collect();
    exports.sort();
    assert!(exports.len() >= 4, "{exports:?}");
    let scored_rows = || -> Vec<Value> {
        std::fs::read_to_string(&scored)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    // Events are released in time order: those of the newest file wait for a later one, so a drop is done
    // once the events of every file but its last are scored.
    let drop_in = |files: &[PathBuf]| {
        let before = scored_rows().len();
        let events: usize = files[..files.len() - 1]
            .iter()
            .map(|f| serde_json::from_str::<Vec<Value>>(&std::fs::read_to_string(f).unwrap()).unwrap().len())
            .sum();
        for f in files {
            std::fs::copy(f, watched.join(f.file_name().unwrap())).unwrap();
        }
        let started = Instant::now();
        while scored_rows().len() < before + events {
            assert!(started.elapsed() < Duration::from_secs(120), "inference did not score the new files");
            std::thread::sleep(Duration::from_millis(100));
        }
        scored_rows().split_off(before)
    };
    let first = drop_in(&exports[..exports.len() / 2]);
    assert!(first.iter().all(|r| r["model_version"] == 1), "champions score first");

    // A dry run decides but publishes nothing.
    let (printed, dry) = retrain("all", &registry, &["--dry-run"]);
    assert!(printed.contains("dry run, nothing published"), "{printed}");
    assert!(dry.values().any(|r| decision(r) == "promote"), "{printed}");
    for model in dry.keys().filter(|m| registry.join(m).exists()) {
        assert_eq!(latest(&registry, model), 1, "{model}: a dry run publishes nothing");
    }

    let (printed, rows) = retrain("all", &registry, &[]);
    let promoted: Vec<&String> = rows.iter().filter(|(_, r)| decision(r) == "promote").map(|(m, _)| m).collect();
    assert!(promoted.len() * 2 >= rows.len(), "most challengers beat champions of shuffled users: {printed}");
    assert!(promoted.iter().any(|m| *m == "DFP-azure-=generic"), "{printed}");
    for (model, row) in &rows {
        let served = latest(&registry, model);
        match decision(row) {
            "promote" => {
                assert_eq!(served, 2, "{model}: {printed}");
                assert_eq!(row["version"], 2, "{row}");
                assert!(row["challenger_loss"].as_f64().unwrap() <= row["champion_loss"].as_f64().unwrap() * 1.05);
            }
            "keep" => assert_eq!(served, 1, "{model}: {printed}"),
            "new" => assert_eq!(served, 1, "{model}: {printed}"),
            other => panic!("{other}"),
        }
    }

    // The running pipeline scores the next exports with the promoted versions.
    let second = drop_in(&exports[exports.len() / 2..]);
    let mut by_model: BTreeMap<&str, u64> = BTreeMap::new();
    for r in &second {
        by_model.insert(r["model_name"].as_str().unwrap(), r["model_version"].as_u64().unwrap());
    }
    let upgraded: Vec<&&str> = by_model.iter().filter(|(_, v)| **v == 2).map(|(m, _)| m).collect();
    assert!(!upgraded.is_empty(), "{by_model:?}");
    for (model, version) in &by_model {
        assert_eq!(*version, latest(&registry, model), "{model} is scored by the version in service");
    }
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(inference.id() as i32, libc::SIGTERM) };
    let out = inference.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn with_triage_labels_a_challenger_that_misses_labelled_attacks_is_not_promoted() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("models");
    // Champions of shuffled users alert on much of the held-out days; label every held-out event an attack
    // (as if analysts had marked them all malicious): a challenger that alerts on fewer misses more.
    champions("shuffled", &registry);
    let labels = dir.path().join("labels.csv");
    let mut csv = String::from("id,label,kind\n");
    for entry in std::fs::read_dir(data().root.join("all")).unwrap() {
        let path = entry.unwrap().path();
        for r in serde_json::from_str::<Vec<Value>>(&std::fs::read_to_string(&path).unwrap()).unwrap() {
            let time = r["time"].as_str().unwrap();
            if ("2026-10-26".."2026-10-28").contains(&&time[..10]) {
                csv.push_str(&format!("{},1,triage-event\n", r["properties"]["id"].as_str().unwrap()));
            }
        }
    }
    std::fs::write(&labels, csv).unwrap();
    let (printed, rows) = retrain("all", &registry, &["--dry-run", "--var", &format!("labels={}", labels.display())]);
    let mut missed = 0;
    for (model, row) in &rows {
        let (champion, challenger) = (row["champion_alerts"].as_u64(), row["challenger_alerts"].as_u64());
        match decision(row) {
            // Promoted: it caught at least as many of the labelled attacks as the champion.
            "promote" => assert!(challenger >= champion, "{model}: {row}"),
            "keep" if row["reason"].as_str().unwrap().contains("labelled attacks") => {
                assert!(challenger < champion, "{row}");
                missed += 1;
            }
            _ => {}
        }
    }
    assert!(missed >= 3, "challengers that alert less miss labelled attacks: {printed}");
    // Nothing published in a dry run.
    for model in rows.keys().filter(|m| registry.join(m).exists()) {
        assert_eq!(latest(&registry, model), 1, "{model}");
    }
}

#[test]
fn retrain_names_what_the_pipeline_lacks_and_what_it_sets_itself() {
    let dir = tempfile::tempdir().unwrap();
    let out = dfp()
        .args(["retrain", "pipelines/azure-features.yaml", "--registry", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let printed = text(&out);
    assert!(!out.status.success());
    assert!(printed.contains("does not declare the variable(s) models, warm_start, holdout_from"), "{printed}");
    let out = dfp()
        .args(["retrain", "pipelines/azure-training.yaml", "--registry", dir.path().to_str().unwrap()])
        .args(["--var", "models=/elsewhere"])
        .output()
        .unwrap();
    assert!(text(&out).contains("dfp retrain sets models itself"), "{}", text(&out));
    let out = dfp()
        .args(["retrain", "pipelines/azure-training.yaml", "--registry", dir.path().to_str().unwrap()])
        .args(["--holdout-days", "40"])
        .output()
        .unwrap();
    assert!(text(&out).contains("--holdout-days must be positive and shorter than --window-days"), "{}", text(&out));
    // The stage checks its promotion settings at validation time, with the field named.
    let bad = dir.path().join("bad.yaml");
    let yaml =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/azure-training.yaml")).unwrap();
    std::fs::write(
        &bad,
        yaml.replace("      dry_run: ${dry_run}\n", "      dry_run: ${dry_run}\n      loss_tolerance: -1\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dfp")).args(["validate", bad.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("promotion.loss_tolerance"), "{}", text(&out));
}
