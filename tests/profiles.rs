//! User profiles end to end, through the shipped pipelines: training writes every user's profile next to
//! the models, inference starts each user from it (and the population profile for users it does not
//! know), `add-user-data` puts the user's context on alerts; damaged or foreign profile sets and an
//! unreachable store are reported and never stop scoring.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{dfp, free_port, http_get, text};
use serde_json::{Map, Value};

/// Generated Azure logs (20 users, 12 days) and models and profiles trained on them, once per test binary:
/// (folder, registry).
fn trained() -> &'static (PathBuf, PathBuf) {
    static ONCE: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    ONCE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("profiles-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out = dfp()
            .args(["generate", "azure", "--users", "20", "--days", "12", "--seed", "21", "--out"])
            .arg(dir.join("data"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let models = dir.join("models");
        let out = dfp()
            .args(["run", "pipelines/azure-training.yaml", "--var", "epochs=2", "--var", "min_history=250"])
            .args(["--var", &format!("input={}", dir.join("data/train").display())])
            .args(["--var", &format!("models={}", models.display())])
            .args(["--var", &format!("report={}", dir.join("report.jsonl").display())])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        (dir, models)
    })
}

fn rows(path: &Path) -> Vec<Map<String, Value>> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap().as_object().unwrap().clone())
        .collect()
}

/// A copy of the shipped Azure inference pipeline with `edit` applied to its text.
fn pipeline_copy(dir: &Path, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/azure-inference.yaml")).unwrap();
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit changed the pipeline");
    let path = dir.join(name);
    std::fs::write(&path, edited).unwrap();
    path
}

fn infer(pipeline: &Path, models: &Path, input: &Path, output: &Path, extra: &[&str]) -> std::process::Output {
    let out = dfp()
        .arg("run")
        .arg(pipeline)
        .args(["--var", &format!("input={}", input.display()), "--var", &format!("models={}", models.display())])
        .args(["--var", &format!("output={}", output.display()), "--var", "threshold=-1"])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    out
}

#[test]
fn training_writes_every_users_profile_and_inference_starts_from_it() {
    let (dir, models) = trained();
    // The report: one profile set with every user, also those below min_history (no model).
    let report = rows(&dir.join("report.jsonl"));
    let users: BTreeSet<&str> =
        report.iter().filter(|r| r["kind"] == "user").map(|r| r["model"].as_str().unwrap()).collect();
    let skipped: Vec<&Map<String, Value>> =
        report.iter().filter(|r| r["kind"] == "user" && r["status"] == "skipped").collect();
    assert!(!skipped.is_empty(), "min_history 250 leaves some users without a model: {report:?}");
    let set: Vec<&Map<String, Value>> = report.iter().filter(|r| r["kind"] == "profiles").collect();
    assert_eq!(set.len(), 1, "{report:?}");
    assert_eq!(set[0]["model"], "DFP-azure-=profiles");
    assert_eq!(set[0]["status"], "published");
    assert!(
        set[0]["reason"].as_str().unwrap().starts_with(&format!("{} users", users.len())),
        "a profile for each of the {} users: {:?}",
        users.len(),
        set[0]
    );

    // A user without a model has a profile all the same.
    let user = skipped[0]["model"].as_str().unwrap().strip_prefix("DFP-azure-").unwrap().to_string();
    let out = dfp().args(["models", "profile", "--registry", models.to_str().unwrap(), &user]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let profile: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(profile["user"], user.as_str());
    assert!(profile["events"].as_u64().unwrap() > 0);
    assert!(!profile["seen"]["country"].as_array().unwrap().is_empty(), "{profile}");
    let out =
        dfp().args(["models", "profile", "--registry", models.to_str().unwrap(), "nobody@nowhere"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("starts from the population profile"), "{}", text(&out));
    let out = dfp().args(["models", "list", "--registry", models.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "the profile set is listed, not taken for a broken model: {}", text(&out));
    assert!(text(&out).contains("DFP-azure-=profiles") && text(&out).contains("profiles"), "{}", text(&out));

    // Inference with profiles (the shipped pipeline) and without them.
    let input = dir.join("data/infer");
    let with = dir.join("with.jsonl");
    infer(Path::new("pipelines/azure-inference.yaml"), models, &input, &with, &[]);
    let plain = pipeline_copy(dir, "no-profiles.yaml", |t| {
        t.replace(
            "    profiles: \"${models}\"          # each user starts from the history training saw (the profile set)\n",
            "",
        )
    });
    let without = dir.join("without.jsonl");
    infer(&plain, models, &input, &without, &[]);
    let (with, without) = (rows(&with), rows(&without));
    assert_eq!(with.len(), without.len(), "every event is scored either way");
    // Each user's first inference event: new everywhere without history, mostly familiar with it.
    let firsts = |rows: &[Map<String, Value>]| -> BTreeMap<String, Map<String, Value>> {
        let mut by_user: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        for r in rows {
            let user = r["username"].as_str().unwrap().to_string();
            let older = by_user.get(&user).is_some_and(|f| f["timestamp"].as_str() <= r["timestamp"].as_str());
            if !older {
                by_user.insert(user, r.clone());
            }
        }
        by_user
    };
    let new_apps =
        |firsts: &BTreeMap<String, Map<String, Value>>| firsts.values().filter(|r| r["new_app"] == true).count();
    let (fw, fo) = (firsts(&with), firsts(&without));
    assert_eq!(new_apps(&fo), fo.len(), "without profiles every user's first app is new");
    assert!(new_apps(&fw) * 4 < fw.len(), "with profiles few first apps are new: {} of {}", new_apps(&fw), fw.len());
    let all_new = |rows: &[Map<String, Value>]| rows.iter().filter(|r| r["new_country"] == true).count();
    assert!(all_new(&with) < all_new(&without), "{} < {}", all_new(&with), all_new(&without));
    // The user context on every row of a known user.
    for r in &with {
        assert!(r["user_events"].as_i64().unwrap() > 0, "{r:?}");
        assert!(r["user_usual_country"].as_str().is_some_and(|c| c.contains('(')), "{r:?}");
    }
    let flagged: Vec<&Map<String, Value>> = with.iter().filter(|r| r["new_country"] == true).collect();
    for r in &flagged {
        let notes = r["user_new_values"].as_str().unwrap_or_default();
        assert!(notes.contains("country"), "a new country is explained: {r:?}");
    }
}

#[test]
fn a_directory_export_is_joined_and_missing_rows_never_drop_an_alert() {
    let (dir, models) = trained();
    let input = dir.join("data/infer");
    let scored = dir.join("plain.jsonl");
    infer(Path::new("pipelines/azure-inference.yaml"), models, &input, &scored, &[]);
    let users: BTreeSet<String> = rows(&scored).iter().map(|r| r["username"].as_str().unwrap().to_string()).collect();
    assert!(users.len() > 2);
    // A directory with the first user in upper case (matched case-insensitively, like the logs), the second
    // listed twice (the first row counts), and nobody else.
    let mut it = users.iter();
    let (a, b) = (it.next().unwrap(), it.next().unwrap());
    let csv = dir.join("directory.csv");
    std::fs::write(
        &csv,
        format!(
            "username,department,title,manager\n{},Finance,Analyst,carol@contoso.com\n{b},Sales,Rep,\n{b},Other,Other,\n",
            a.to_uppercase()
        ),
    )
    .unwrap();
    let out_path = dir.join("with-directory.jsonl");
    let out = infer(
        Path::new("pipelines/azure-inference.yaml"),
        models,
        &input,
        &out_path,
        &["--var", &format!("directory={}", csv.display())],
    );
    assert!(text(&out).contains("listed more than once"), "{}", text(&out));
    let got = rows(&out_path);
    assert_eq!(got.len(), rows(&scored).len(), "no alert dropped for a missing directory row");
    for r in &got {
        let user = r["username"].as_str().unwrap();
        // The JSON sink leaves null fields out.
        let field = |name: &str| r.get(name).unwrap_or(&Value::Null);
        let (department, manager) = (field("user_department"), field("user_manager"));
        match user {
            u if u == a => {
                assert_eq!((department.as_str(), manager.as_str()), (Some("Finance"), Some("carol@contoso.com")))
            }
            u if u == b => assert_eq!((department.as_str(), manager), (Some("Sales"), &Value::Null)),
            _ => assert_eq!((department, manager), (&Value::Null, &Value::Null), "{r:?}"),
        }
    }
    // `dfp summary` shows the context next to the user.
    let out = dfp().args(["summary", out_path.to_str().unwrap(), "--threshold=-1"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("context") && text(&out).contains("usually"), "{}", text(&out));

    // A directory that cannot be read stops the run at start-up, naming the file and line.
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"username\": \"x\", \"title\": \"A\"}\n{\"title\": \"no user\"}\n").unwrap();
    let out = dfp()
        .args(["run", "pipelines/azure-inference.yaml", "--var", &format!("input={}", input.display())])
        .args(["--var", &format!("models={}", models.display()), "--var", &format!("directory={}", bad.display())])
        .args(["--var", &format!("output={}", dir.join("never.jsonl").display())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains(&format!("{}:2", bad.display())) && text(&out).contains("username"), "{}", text(&out));
}

/// A copy of the registry (models and profile set) to damage.
fn copy_registry(from: &Path, to: &Path) {
    for entry in walk(from) {
        let rel = entry.strip_prefix(from).unwrap();
        let target = to.join(rel);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &target).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn damaged_and_foreign_profile_sets_fall_back_and_scoring_goes_on() {
    let (dir, models) = trained();
    let input = dir.join("data/infer");
    let damaged = dir.join("damaged-models");
    copy_registry(models, &damaged);
    let set = damaged.join("DFP-azure-=profiles/v000001");
    // The biggest shard becomes garbage: its users start from the population profile.
    let biggest = std::fs::read_dir(&set)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".jsonl.gz"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    std::fs::write(&biggest, b"this is not gzip").unwrap();
    let out = infer(Path::new("pipelines/azure-inference.yaml"), &damaged, &input, &dir.join("damaged.jsonl"), &[]);
    let shard = biggest.file_name().unwrap().to_string_lossy().to_string();
    assert!(text(&out).contains(&shard) && text(&out).contains("population profile"), "{}", text(&out));
    assert!(text(&out).contains("features: 1 profile errors"), "counted in the run summary: {}", text(&out));
    let scored = rows(&dir.join("damaged.jsonl"));
    assert!(!scored.is_empty() && scored.iter().all(|r| r["model_name"].is_string()), "every event scored");

    // A set of another format: not used, said once, users start from no history.
    let manifest = set.join("manifest.json");
    let text_m = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text_m.replace("\"format\": 1", "\"format\": 99")).unwrap();
    let out = infer(Path::new("pipelines/azure-inference.yaml"), &damaged, &input, &dir.join("foreign.jsonl"), &[]);
    assert!(text(&out).contains("format 99") && text(&out).contains("no history"), "{}", text(&out));
    assert_eq!(rows(&dir.join("foreign.jsonl")).len(), scored.len());
}

#[test]
fn an_unreachable_profile_store_keeps_the_pipeline_unready_and_scoring() {
    let (dir, _) = trained();
    let port = free_port();
    let store = format!("mlflow://127.0.0.1:{}", free_port());
    let p = dir.join("unreachable.yaml");
    std::fs::write(
        &p,
        format!(
            "version: 1\nfamily: azure\nruntime:\n  workers: 1\nstages:\n  logs: {{ type: file-source, path: \"{}\", raw: true, watch: true, poll_interval_secs: 0.2 }}\n  events: {{ type: normalize-azure, inputs: [logs] }}\n  features: {{ type: features, inputs: [events], profiles: \"{store}\" }}\n  out: {{ type: file-sink, inputs: [features], path: \"{}\" }}\n",
            dir.join("data/infer").display(),
            dir.join("unreachable.jsonl").display()
        ),
    )
    .unwrap();
    let run = dfp()
        .args(["run", p.to_str().unwrap(), "--metrics-addr", &format!("127.0.0.1:{port}"), "--metrics-linger", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The source watches its directory, so the run stays up until told to stop: readiness is read while it
    // runs, whatever the machine's speed.
    let started = Instant::now();
    let mut readiness = String::new();
    while started.elapsed() < Duration::from_secs(90) && !readiness.contains("profile store") {
        if let Ok((503, body)) = http_get(port, "/readyz") {
            readiness = body;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Scoring goes on meanwhile: the sink receives every event of the directory.
    let sunk = || -> u64 {
        let Ok((200, body)) = http_get(port, "/stats") else { return 0 };
        let stats: Value = serde_json::from_str(&body).unwrap_or_default();
        let stages = stats["stages"].as_array().cloned().unwrap_or_default();
        stages.iter().find(|s| s["id"] == "out").and_then(|s| s["rows_in"].as_u64()).unwrap_or(0)
    };
    while started.elapsed() < Duration::from_secs(90) && sunk() == 0 {
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(run.id() as i32, libc::SIGTERM) };
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "scoring goes on without profiles: {}", text(&out));
    // While the stages open, readiness may also list "0 of 1 instances open": the profile store's line is
    // what must be there.
    assert!(readiness.starts_with("not ready\n"), "{readiness}");
    assert!(
        readiness.lines().any(|l| l.starts_with("stage \"features\": profile store mlflow://127.0.0.1:")),
        "{readiness}"
    );
    assert!(!rows(&dir.join("unreachable.jsonl")).is_empty());
}
