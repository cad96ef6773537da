//! Users with little history: on a small generated set where most users never reach `min_history`, the
//! Azure pipelines with per-user calibration (`--var calibrate_min_history=20`) rank attacks on those users
//! above their ordinary events better than the plain generic model, without flagging more; fine-tuned and peer-group models are
//! trained, recorded in the registry and the report, and named in the scores.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use common::{dfp, text};
use serde_json::Value;

fn ok(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("dfp runs");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    t
}

fn rows(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Trains (with `vars`) and scores every inference event; returns the training report and the scores.
fn train_and_score(data: &Path, out: &Path, vars: &[&str]) -> (Vec<Value>, Vec<Value>) {
    std::fs::create_dir_all(out).unwrap();
    let v = |name: &str, path: &Path| format!("{name}={}", path.display());
    let (models, report, scored) = (out.join("models"), out.join("report.jsonl"), out.join("scored.jsonl"));
    let mut train = dfp();
    train.args(["run", "pipelines/azure-training.yaml", "-q", "--var", "epochs=20"]);
    train.args(["--var", &v("input", &data.join("train")), "--var", &v("models", &models)]);
    train.args(["--var", &v("report", &report), "--dead-letter", out.join("dead.jsonl").to_str().unwrap()]);
    for var in vars {
        train.args(["--var", var]);
    }
    ok(&mut train);
    ok(dfp()
        .args(["run", "pipelines/azure-inference.yaml", "-q", "--var", "threshold=-1"])
        .args(["--var", &v("input", &data.join("infer")), "--var", &v("models", &models)])
        .args(["--var", &v("output", &scored), "--dead-letter", out.join("dead-infer.jsonl").to_str().unwrap()]));
    (rows(&report), rows(&scored))
}

/// ROC-AUC of `mean_abs_z` (attacks against the rest), and the share of non-attacks and of attacks above
/// 2.0, over the events of users outside `own`.
fn quality(scored: &[Value], labels: &HashMap<String, bool>, own: &BTreeSet<String>) -> (f64, f64, f64) {
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    for r in scored {
        let Some(&attack) = labels.get(r["id"].as_str().unwrap()) else { continue };
        if own.contains(r["username"].as_str().unwrap()) {
            continue;
        }
        let z = r["mean_abs_z"].as_f64().unwrap();
        if attack {
            pos.push(z)
        } else {
            neg.push(z)
        }
    }
    assert!(pos.len() > 20 && neg.len() > 200, "{} attack and {} other events", pos.len(), neg.len());
    let mut wins = 0.0;
    for p in &pos {
        for n in &neg {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    let above = |v: &[f64]| v.iter().filter(|z| **z > 2.0).count() as f64 / v.len() as f64;
    (wins / (pos.len() * neg.len()) as f64, above(&neg), above(&pos))
}

#[test]
fn users_with_little_history_are_scored_better_and_every_model_kind_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok(dfp().args(["generate", "azure", "--users", "40", "--days", "21", "--train-days", "14"]).args([
        "--light-users",
        "0.6",
        "--joiners",
        "0.3",
        "--seed",
        "23",
        "--out",
        data.to_str().unwrap(),
    ]));
    let labels: HashMap<String, bool> = std::fs::read_to_string(data.join("labels.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), f[1] == "1")
        })
        .collect();

    // The plain generic model for everyone below min_history (the Azure default), then with calibration.
    let (plain_report, plain) = train_and_score(&data, &dir.path().join("plain"), &[]);
    let (cal_report, calibrated) =
        train_and_score(&data, &dir.path().join("calibrated"), &["calibrate_min_history=20"]);
    let own_models = |report: &[Value]| -> BTreeSet<String> {
        report
            .iter()
            .filter(|r| r["kind"] == "user" && r["status"] == "trained")
            .map(|r| r["model"].as_str().unwrap().trim_start_matches("DFP-azure-").to_string())
            .collect()
    };
    let own = own_models(&plain_report);
    assert_eq!(own, own_models(&cal_report), "the same users get their own model either way");
    assert!(own.len() < 10, "most of the 40 users have little history: {own:?}");
    let (auc_plain, fp_plain, recall_plain) = quality(&plain, &labels, &own);
    let (auc_cal, fp_cal, recall_cal) = quality(&calibrated, &labels, &own);
    let figures = format!(
        "plain: AUC {auc_plain:.3}, {:.1} % of other events and {:.1} % of attacks flagged; calibrated: AUC \
         {auc_cal:.3}, {:.1} % and {:.1} %",
        fp_plain * 100.0,
        recall_plain * 100.0,
        fp_cal * 100.0,
        recall_cal * 100.0
    );
    assert!(auc_cal > auc_plain + 0.01, "calibration ranks attacks better: {figures}");
    assert!(fp_cal <= fp_plain && recall_cal >= recall_plain, "no more false alarms, no fewer attacks: {figures}");
    let calibrated_rows = calibrated.iter().filter(|r| r["calibrated"] == true).count();
    assert!(calibrated_rows > calibrated.len() / 3, "{calibrated_rows} of {} rows calibrated", calibrated.len());
    assert!(calibrated.iter().filter(|r| r["calibrated"] == true).all(|r| r["model_kind"] == "generic"));

    // Every option: fine-tuned models, peer groups by the directory's department, calibration.
    let directory = format!("directory={}", data.join("directory.csv").display());
    let (report, scored) =
        train_and_score(&data, &dir.path().join("all"), &["finetune_min_history=40", "groups=department", &directory]);
    let status: BTreeMap<(String, String), usize> = report.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry((r["kind"].as_str().unwrap().into(), r["status"].as_str().unwrap().into())).or_default() += 1;
        m
    });
    for kind in ["user", "finetuned", "group", "generic"] {
        assert!(status.contains_key(&(kind.into(), "trained".into())), "a {kind} model is trained: {status:?}");
    }
    let finetuned = report.iter().find(|r| r["kind"] == "finetuned").unwrap();
    let why = finetuned["reason"].as_str().unwrap();
    assert!(
        why.contains("fine-tuned from DFP-azure-=group-") || why.contains("fine-tuned from DFP-azure-=generic"),
        "{why}"
    );
    let shared = report.iter().find(|r| r["status"] == "shared").expect("users scored by a shared model are reported");
    assert!(shared["reason"].as_str().unwrap().contains("scored by DFP-azure-="), "{shared}");
    let kinds: BTreeSet<&str> = scored.iter().map(|r| r["model_kind"].as_str().unwrap()).collect();
    assert!(kinds.contains("finetuned") && kinds.contains("group") && kinds.contains("user"), "{kinds:?}");
    for r in scored.iter().filter(|r| r["model_kind"] == "group") {
        assert!(r["model_name"].as_str().unwrap().starts_with("DFP-azure-=group-"), "{r}");
    }

    // The registry tells which kind each model is, and why.
    let models = dir.path().join("all/models");
    let listing = ok(dfp().args(["models", "list", "--registry", models.to_str().unwrap(), "--json"]));
    let listed: Vec<Value> = listing.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let group = listed.iter().find(|m| m["kind"] == "group").expect("group models are listed");
    assert!(group["group"].is_string() && group["reason"].as_str().unwrap().contains("by department"), "{group}");
    let generic = listed.iter().find(|m| m["kind"] == "generic").unwrap();
    assert!(generic["reason"].as_str().unwrap().contains("fine-tuned"), "{generic}");
    let table = ok(dfp().args(["models", "list", "--registry", models.to_str().unwrap()]));
    assert!(table.lines().next().unwrap().contains("WHY") && table.contains(" finetuned "), "{table}");
}
