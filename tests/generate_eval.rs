//! End-to-end: `dfp generate` writes a small labelled data set, `dfp eval` scores a hand-made score file
//! against its labels, and the printed figures match what the score file implies.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn dfp(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dfp"));
    cmd.env_remove("DFP_LOG");
    cmd.args(args).output().expect("dfp runs")
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "dfp failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn close(v: &Value, expected: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - expected).abs() < 1e-9)
}

/// (id, label, kind) rows of a labels file.
fn labels(path: &Path) -> Vec<(String, bool, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), f[1] == "1", f[2].to_string())
        })
        .collect()
}

#[test]
fn generate_then_eval_reports_the_figures_the_scores_imply() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("azure");
    let out_s = out.to_str().unwrap();
    let text = stdout(&dfp(&[
        "generate",
        "azure",
        "--out",
        out_s,
        "--users",
        "8",
        "--days",
        "4",
        "--train-days",
        "2",
        "--seed",
        "3",
    ]));
    assert!(text.contains("generated azure sign-in logs: 8 users, 4 days from 2026-10-01T00:00:00Z, seed 3"), "{text}");
    assert!(text.contains("events/s"), "{text}");
    let rows = labels(&out.join("labels.csv"));
    assert!(text.contains(&format!("labels {} rows", rows.len())), "{text}");
    assert!(std::fs::read_dir(out.join("train")).unwrap().count() > 0);

    // Again into the same directory: refused without --force.
    let again = dfp(&["generate", "azure", "--out", out_s, "--users", "8", "--days", "4", "--train-days", "2"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    // Scores: every attack but one at 5.0, the last attack at 1.0; one ordinary event at 3.0, ten at 0.5,
    // the rest unscored; two ids the labels do not know; one attack scored twice (lower second score).
    let positives: Vec<_> = rows.iter().filter(|r| r.1).collect();
    let negatives: Vec<_> = rows.iter().filter(|r| !r.1).collect();
    let (p, n) = (positives.len() as f64, negatives.len() as f64);
    assert!(positives.len() >= 5 && negatives.len() > 11);
    let mut lines = Vec::new();
    for (i, r) in positives.iter().enumerate() {
        let score = if i + 1 == positives.len() { 1.0 } else { 5.0 };
        lines.push(format!("{{\"id\":\"{}\",\"mean_abs_z\":{score},\"user\":\"x\"}}", r.0));
    }
    lines.push(format!("{{\"id\":\"{}\",\"mean_abs_z\":0.1}}", positives[0].0));
    lines.push(format!("{{\"id\":\"{}\",\"mean_abs_z\":3.0}}", negatives[0].0));
    for r in &negatives[1..11] {
        lines.push(format!("{{\"id\":\"{}\",\"mean_abs_z\":0.5}}", r.0));
    }
    lines.push("{\"id\":\"not-a-label\",\"mean_abs_z\":9.0}".into());
    lines.push("{\"id\":\"another\",\"mean_abs_z\":0.0}".into());
    let scores = dir.path().join("scores.jsonl");
    std::fs::write(&scores, lines.join("\n")).unwrap();
    let labels_path = out.join("labels.csv");
    let args = ["eval", "--scores", scores.to_str().unwrap(), "--labels", labels_path.to_str().unwrap()];

    let json: Value = serde_json::from_str(&stdout(&dfp(&[&args[..], &["--json"]].concat()))).unwrap();
    assert_eq!(json["labelled"], rows.len());
    assert_eq!(json["positives"], positives.len());
    assert_eq!(json["scored"], positives.len() + 11);
    assert_eq!(json["unscored"], negatives.len() - 11);
    assert_eq!((json["unknown_ids"].as_u64(), json["duplicate_ids"].as_u64()), (Some(2), Some(1)));
    // Only the pair (last attack at 1.0, ordinary event at 3.0) is out of order.
    let auc = (p * n - 1.0) / (p * n);
    assert!(close(&json["roc_auc"], auc), "{}", json["roc_auc"]);
    // Thresholds 5.0 (precision 1, recall (p-1)/p), 3.0 (no recall), 1.0 (precision p/(p+1), recall 1).
    let ap = (p - 1.0) / p + 1.0 / (p + 1.0);
    assert!(close(&json["average_precision"], ap), "{}", json["average_precision"]);
    let share = (p - 1.0) / p;
    assert!(close(&json["precision"], share) && close(&json["recall"], share) && close(&json["f1"], share));
    assert_eq!((json["flagged"].as_u64(), json["false_positives"].as_u64()), (Some(positives.len() as u64), Some(1)));
    let last_kind = &positives[positives.len() - 1].2;
    let kinds = json["kinds"].as_array().unwrap();
    let row = kinds.iter().find(|k| k["kind"] == last_kind.as_str()).unwrap();
    let total = positives.iter().filter(|r| &r.2 == last_kind).count() as u64;
    assert_eq!((row["flagged"].as_u64(), row["total"].as_u64()), (Some(total - 1), Some(total)));
    assert_eq!(kinds.iter().map(|k| k["total"].as_u64().unwrap()).sum::<u64>(), rows.len() as u64);

    // The text report prints the same figures.
    let text = stdout(&dfp(&args));
    for expected in [
        format!("labelled events    {} ({} positives, {} negatives)", rows.len(), positives.len(), negatives.len()),
        format!("ROC-AUC            {auc:.4}"),
        format!("average precision  {ap:.4}"),
        format!("precision          {share:.4}"),
        format!("F1                 {share:.4}"),
        "2 ids not in the labels, 1 duplicate ids".to_string(),
    ] {
        assert!(text.contains(&expected), "{expected:?} not in\n{text}");
    }

    // The same scores as CSV give the same report; a higher threshold flags fewer.
    let csv = dir.path().join("scores.csv");
    let mut csv_text = String::from("id,mean_abs_z\n");
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap();
        csv_text.push_str(&format!("{},{}\n", v["id"].as_str().unwrap(), v["mean_abs_z"]));
    }
    std::fs::write(&csv, csv_text).unwrap();
    let csv_args = ["eval", "--scores", csv.to_str().unwrap(), "--labels", labels_path.to_str().unwrap(), "--json"];
    let from_csv: Value = serde_json::from_str(&stdout(&dfp(&csv_args))).unwrap();
    assert_eq!(from_csv, json);
    let strict: Value = serde_json::from_str(&stdout(&dfp(&[&csv_args[..], &["--threshold", "4"]].concat()))).unwrap();
    assert_eq!(strict["false_positives"], 0);
    assert!(close(&strict["precision"], 1.0));
}

#[test]
fn duo_generation_prints_a_summary_with_enrollments() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("duo");
    let text = stdout(&dfp(&["generate", "duo", "--out", out.to_str().unwrap(), "--users", "20", "--days", "6"]));
    assert!(text.contains("generated duo sign-in logs: 20 users, 6 days"), "{text}");
    assert!(text.contains("enrollment records (not labelled)"), "{text}");
    for kind in ["account_takeover", "quiet_takeover", "password_spray", "token_theft", "impossible_travel"] {
        assert!(text.lines().any(|l| l.trim_start().starts_with(kind)), "{kind} in\n{text}");
    }
    let names: Vec<String> = std::fs::read_dir(out.join("infer"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| n.starts_with("DUO_2026-10-0") && n.ends_with("Z.json")), "{names:?}");
}
