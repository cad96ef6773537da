//! Training and inference pipelines through the real binary on the shipped sample data.

mod common;
use common::{dfp, text};

use std::collections::BTreeSet;

fn ids(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn train_then_score_every_event_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let report = dir.path().join("report.jsonl");
    let out = dfp()
        .args(["run", "pipelines/azure-training.yaml", "--var", &format!("models={}", models.display())])
        .args(["--var", &format!("report={}", report.display()), "--var", "epochs=2", "--var", "min_history=100"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let rows: Vec<serde_json::Value> =
        std::fs::read_to_string(&report).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let trained: Vec<&serde_json::Value> = rows.iter().filter(|r| r["status"] == "trained").collect();
    let skipped: Vec<&serde_json::Value> = rows.iter().filter(|r| r["status"] == "skipped").collect();
    assert!(trained.iter().any(|r| r["kind"] == "generic"));
    assert!(trained.iter().filter(|r| r["kind"] == "user").count() >= 2, "{rows:?}");
    assert!(!skipped.is_empty() && skipped.iter().all(|r| r["reason"].as_str().unwrap().contains("min_history 100")));

    // The registry lists the models under their escaped names.
    let list = dfp().args(["models", "list", "--registry", models.to_str().unwrap()]).output().unwrap();
    assert!(list.status.success(), "{}", text(&list));
    let listing = text(&list);
    assert!(
        listing.contains("DFP-azure-kenji.lopez@contoso.com") && listing.contains("DFP-azure-=generic"),
        "{listing}"
    );

    // `dfp bench --model` times a user model: not the profile set the registry also holds (listed first), nor
    // the generic model.
    let bench = dfp()
        .env_remove("DFP_ONEDNN")
        .args(["bench", "--model", models.to_str().unwrap(), "--model-batches", "16", "--stack", "8"])
        .output()
        .unwrap();
    assert!(bench.status.success(), "{}", text(&bench));
    let timed = text(&bench);
    let first = timed.lines().find(|l| l.starts_with("dfp model benchmark:")).unwrap_or_default();
    assert!(first.contains("DFP-azure-") && !first.contains("-=profiles") && !first.contains("-=generic"), "{timed}");
    // It names where f32 layers run on this CPU, and why (`auto`, as DFP_ONEDNN is unset).
    assert!(timed.contains("f32 hidden layers on the CPU: scoring through "), "{timed}");
    assert!(timed.contains("(auto: "), "{timed}");
    // --stack: the user models (3 here, fewer than asked) one by one and stacked, in f32 and bf16.
    assert!(timed.contains("3 user models scored together"), "{timed}");
    let stacked: Vec<&str> = timed.lines().skip_while(|l| !l.contains("scored together")).skip(2).collect();
    assert_eq!(stacked.len(), 2, "{timed}");
    for line in stacked {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert!(cols[2].parse::<f64>().unwrap() > 0.0 && cols[3].parse::<f64>().unwrap() > 0.0, "{line}");
    }

    // A second run with warm_start fine-tunes version 1 into version 2 (with Adam this time).
    let out = dfp()
        .args(["run", "pipelines/azure-training.yaml", "--var", &format!("models={}", models.display())])
        .args(["--var", &format!("report={}", report.display()), "--var", "epochs=1", "--var", "min_history=100"])
        .args(["--var", "warm_start=true", "--var", "optimizer=adam"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(models.join("DFP-azure-kenji.lopez@contoso.com/v000002/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["training"]["warm_start_from"], 1);
    let generic: serde_json::Value =
        serde_json::from_slice(&std::fs::read(models.join("DFP-azure-=generic/v000002/manifest.json")).unwrap())
            .unwrap();
    for m in [&manifest, &generic] {
        assert_eq!(m["hyper_parameters"]["optimizer"], "adam", "--var optimizer reaches every train stage");
    }

    // Threshold -1 keeps every scored event: each input id comes out exactly once.
    let scored = dir.path().join("scored.jsonl");
    let out = dfp()
        .args(["run", "pipelines/azure-inference.yaml", "--var", &format!("models={}", models.display())])
        .args(["--var", &format!("output={}", scored.display()), "--var", "threshold=-1", "--workers", "3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let features = dir.path().join("features.jsonl");
    let out = dfp()
        .args(["run", "pipelines/azure-features.yaml", "--var", "input=examples/data/azure/infer"])
        .args(["--var", &format!("output={}", features.display())])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut got = ids(&scored);
    let expected: BTreeSet<String> = ids(&features).into_iter().collect();
    let n = got.len();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), n, "an event was scored twice");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), expected);
    // Users without a model are scored by the generic one; every row names its model and top features.
    let rows: Vec<serde_json::Value> =
        std::fs::read_to_string(&scored).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(rows.iter().any(|r| r["model_kind"] == "generic") && rows.iter().any(|r| r["model_kind"] == "user"));
    for r in &rows {
        assert!(
            r["mean_abs_z"].as_f64().unwrap() >= 0.0
                && r["max_abs_z"].as_f64().unwrap() >= r["mean_abs_z"].as_f64().unwrap()
        );
        assert_eq!(r["top_features"].as_str().unwrap().split(',').count(), 3);
        assert!(r["appDisplayName_z_loss"].is_number() && r["username"].is_string() && r["timestamp"].is_string());
        // risk: mean |z| with each feature counting at most 50 (z_cap).
        let z: Vec<f64> = r
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.ends_with("_z_loss"))
            .map(|(_, v)| v.as_f64().unwrap().abs().min(50.0))
            .collect();
        // `correlate` keeps the model's risk in `risk_model` and may only raise `risk`.
        let own = r["risk_model"].as_f64().unwrap();
        assert!((own - z.iter().sum::<f64>() / z.len() as f64).abs() < 1e-4, "{r}");
        assert!(own <= r["mean_abs_z"].as_f64().unwrap() + 1e-9);
        let risk = r["risk"].as_f64().unwrap();
        assert!(risk >= own && (risk == own) == r["risk_signals"].is_null(), "{r}");
    }
    // Users' models stacked into batched passes (what `auto` does on CUDA) score every event alike, to rounding.
    let stacked = dir.path().join("stacked.jsonl");
    let out = dfp()
        .args(["run", "pipelines/azure-inference.yaml", "--var", &format!("models={}", models.display())])
        .args(["--var", &format!("output={}", stacked.display()), "--var", "threshold=-1", "--workers", "1"])
        .args(["--var", "stack_models=always"])
        .env("DFP_LOG", "warn,dfp_stages::transforms::score=debug")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // The three user models and the generic one went through stacked passes.
    assert!(text(&out).lines().any(|l| l.contains("stacked passes") && l.contains("models=4")), "{}", text(&out));
    let by_id: std::collections::HashMap<String, &serde_json::Value> =
        rows.iter().map(|r| (r["id"].as_str().unwrap().to_string(), r)).collect();
    let again: Vec<serde_json::Value> =
        std::fs::read_to_string(&stacked).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(again.len(), rows.len());
    let mut users = BTreeSet::new();
    for r in &again {
        let own = by_id[r["id"].as_str().unwrap()];
        assert_eq!(r["model_name"], own["model_name"]);
        let (a, b) = (r["mean_abs_z"].as_f64().unwrap(), own["mean_abs_z"].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{} stacked {a}, alone {b}", r["id"]);
        if r["model_kind"] == "user" {
            users.insert(r["model_name"].as_str().unwrap().to_string());
        }
    }
    assert!(users.len() >= 2, "several user models stacked: {users:?}");
    // A higher threshold keeps a subset (the shipped pipeline thresholds on risk).
    let alerts = dir.path().join("alerts.jsonl");
    let out = dfp()
        .args(["run", "pipelines/azure-inference.yaml", "--var", &format!("models={}", models.display())])
        .args(["--var", &format!("output={}", alerts.display()), "--var", "threshold=1.5"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let kept = ids(&alerts).len();
    let above = rows.iter().filter(|r| r["risk"].as_f64().unwrap() > 1.5).count();
    assert_eq!(kept, above);
    assert!(kept < rows.len());
}

#[test]
fn scoring_without_models_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = dfp()
        .args([
            "run",
            "pipelines/azure-inference.yaml",
            "--var",
            &format!("models={}", dir.path().join("empty").display()),
        ])
        .args(["--var", &format!("output={}", dir.path().join("x.jsonl").display())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(t.contains("stage \"scored\" failed") && t.contains("run the training pipeline first"), "{t}");
}

#[test]
fn models_do_not_depend_on_the_number_of_workers() {
    let dir = tempfile::tempdir().unwrap();
    let mut weights = Vec::new();
    for workers in ["1", "2"] {
        let models = dir.path().join(format!("models-{workers}"));
        let out = dfp()
            .args(["run", "pipelines/azure-training.yaml", "--workers", workers])
            .args(["--var", &format!("models={}", models.display()), "--var", "epochs=2", "--var", "min_history=100"])
            .args(["--var", &format!("report={}/report-{workers}.jsonl", dir.path().display())])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let read = |name: &str| std::fs::read(models.join(name).join("v000001/model.safetensors")).unwrap();
        weights.push((read("DFP-azure-kenji.lopez@contoso.com"), read("DFP-azure-=generic")));
    }
    assert!(weights[0].0 == weights[1].0, "the user model differs between 1 and 2 workers");
    assert!(weights[0].1 == weights[1].1, "the generic model differs between 1 and 2 workers");
}
