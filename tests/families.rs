//! Log families end to end: the walk-through of docs/add-a-log-source.md (a family declared in YAML only,
//! trained and scored), and what validation says about families, the old `preset`/`source` keys and models
//! of another family.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{dfp, text};
use serde_json::Value;

fn run(args: &[&str]) -> Output {
    dfp().args(args).output().expect("dfp runs")
}

fn ok(out: &Output) -> String {
    let t = text(out);
    assert!(out.status.success(), "{t}");
    t
}

fn var(name: &str, value: &Path) -> String {
    format!("{name}={}", value.display())
}

fn rows(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// docs/add-a-log-source.md, step 4, with the outputs in a temporary folder.
#[test]
fn the_add_a_log_source_walk_through_trains_and_scores_a_yaml_family() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/add-a-log-source.md")).unwrap();
    let family_file =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gws/gws-family.yaml")).unwrap();
    let declared = family_file.lines().skip_while(|l| !l.starts_with("gws:")).collect::<Vec<_>>().join("\n");
    assert!(doc.contains(declared.trim()), "the how-to shows examples/gws/gws-family.yaml as it is");
    for command in [
        "dfp validate examples/gws/gws-training.yaml examples/gws/gws-inference.yaml",
        "dfp run examples/gws/gws-training.yaml",
        "dfp run examples/gws/gws-inference.yaml --var threshold=-1",
        "dfp eval --scores out/gws/scored.jsonl --labels examples/data/gws/labels.csv",
    ] {
        assert!(doc.contains(command), "the how-to runs `{command}`");
    }

    let dir = tempfile::tempdir().unwrap();
    let (models, report, scored) =
        (dir.path().join("models"), dir.path().join("report.jsonl"), dir.path().join("scored.jsonl"));
    let out = ok(&run(&["validate", "examples/gws/gws-training.yaml", "examples/gws/gws-inference.yaml"]));
    assert_eq!(out.matches(": ok (").count(), 2, "{out}");
    let dead = dir.path().join("dead.jsonl");
    ok(&dfp()
        .args(["run", "examples/gws/gws-training.yaml", "--var", &var("models", &models)])
        .args(["--var", &var("report", &report), "--dead-letter", dead.to_str().unwrap()])
        .output()
        .unwrap());
    assert!(!dead.exists(), "every sample record normalizes");
    let trained = rows(&report);
    let names: BTreeSet<&str> = trained.iter().map(|r| r["model"].as_str().unwrap()).collect();
    assert!(names.contains("DFP-gws-=generic"), "{names:?}");
    assert!(
        names.contains("DFP-gws-amara.okafor@example.com"),
        "user ids are lower-cased as the family says: {names:?}"
    );
    assert!(names.contains("DFP-gws-=profiles"), "every user's history is saved: {names:?}");
    assert_eq!(names.len(), 8, "six users, the generic model and the profile set: {names:?}");
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(models.join("DFP-gws-chloe.martin@example.com/v000001/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["family"], "gws");
    let inputs: Vec<&str> =
        manifest["features"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(inputs, ["logcount", "locincrement", "success", "login_type", "country"]);
    let listing = ok(&run(&["models", "list", "--registry", models.to_str().unwrap()]));
    assert!(listing.contains("8 model(s)"), "{listing}");

    ok(&dfp()
        .args(["run", "examples/gws/gws-inference.yaml", "--var", "threshold=-1"])
        .args(["--var", &var("models", &models), "--var", &var("output", &scored)])
        .output()
        .unwrap());
    let mut scored_rows = rows(&scored);
    let labels = std::fs::read_to_string("examples/data/gws/labels.csv").unwrap();
    let attacks: BTreeSet<&str> =
        labels.lines().filter(|l| l.contains(",1,")).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(scored_rows.len(), labels.lines().count() - 1, "every inference event is scored");
    assert!(scored_rows.iter().all(|r| r["model_kind"] == "user"), "every sample user has a model");
    scored_rows.sort_by(|a, b| b["mean_abs_z"].as_f64().unwrap().total_cmp(&a["mean_abs_z"].as_f64().unwrap()));
    let top: BTreeSet<&str> = scored_rows.iter().take(attacks.len()).map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(top, attacks, "the takeover's events rank first");
    let out = ok(&run(&["eval", "--scores", scored.to_str().unwrap(), "--labels", "examples/data/gws/labels.csv"]));
    assert!(out.contains("ROC-AUC            1.0000"), "{out}");
    let out = ok(&run(&["summary", scored.to_str().unwrap()]));
    assert!(out.contains("chloe.martin@example.com"), "{out}");
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn validate(path: &Path) -> (bool, String) {
    let out = run(&["validate", path.to_str().unwrap()]);
    (out.status.success(), text(&out))
}

#[test]
fn the_old_family_keys_say_what_to_write_instead() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "old.yaml",
        "version: 1\nstages:\n  logs: { type: file-source, path: x, raw: true }\n  events: { type: normalize-azure, inputs: [logs] }\n  features:\n    type: features\n    inputs: [events]\n    preset: azure\n  scored:\n    type: score\n    inputs: [features]\n    registry: ./models\n    source: azure\n  out: { type: blackhole, inputs: [scored] }\n",
    );
    let (valid, out) = validate(&p);
    assert!(!valid);
    let at = p.display().to_string();
    assert!(out.contains(&format!("{at}:8: stage \"features\": `preset` is no longer accepted: name the log family once at the top of the pipeline (`family: azure`)")), "{out}");
    assert!(out.contains(&format!("{at}:13: stage \"scored\": `source` is no longer accepted")), "{out}");
}

#[test]
fn families_are_named_once_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let stages = "stages:\n  logs: { type: file-source, path: x, raw: true }\n  events: { type: normalize-azure, inputs: [logs] }\n  features: { type: features, inputs: [events] }\n  out: { type: blackhole, inputs: [features] }\n";
    // No family at all: the stage that needs one says how to name it.
    let p = write(dir.path(), "none.yaml", &format!("version: 1\n{stages}"));
    let (valid, out) = validate(&p);
    assert!(!valid && out.contains(&format!("{}:5: stage \"features\": needs a log family", p.display())), "{out}");
    assert!(out.contains("known families: azure, duo"), "{out}");
    // A typo in the pipeline's family.
    let p = write(dir.path(), "typo.yaml", &format!("version: 1\nfamily: azur\n{stages}"));
    let (valid, out) = validate(&p);
    assert!(
        !valid
            && out
                .contains(&format!("{}:2: family: unknown log family \"azur\"; did you mean \"azure\"?", p.display())),
        "{out}"
    );
    // Named once, it reaches every stage.
    let p = write(dir.path(), "good.yaml", &format!("version: 1\nfamily: azure\n{stages}"));
    assert!(validate(&p).0);
}

#[test]
fn a_declared_family_with_a_mistake_names_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "fams.yaml",
        "mine:\n  columns: { id: text, timestamp: time, username: text, app: text }\n  roles:\n    app: aap\n  features: { categorical: [app] }\n",
    );
    let p = write(
        dir.path(),
        "p.yaml",
        "version: 1\nfamily: mine\nfamilies: fams.yaml\nstages:\n  logs: { type: file-source, path: x, raw: true }\n  events: { type: normalize, inputs: [logs] }\n  out: { type: blackhole, inputs: [events] }\n",
    );
    let (valid, out) = validate(&p);
    assert!(!valid);
    let fams = dir.path().join("fams.yaml").display().to_string();
    assert!(
        out.contains(&format!("{fams}:3: family \"mine\": roles.app: names column \"aap\", which the family does not declare; did you mean \"app\"?")),
        "{out}"
    );
    // Inline, clashing with a built-in one.
    let p = write(
        dir.path(),
        "clash.yaml",
        "version: 1\nfamilies:\n  azure:\n    columns: { id: text, timestamp: time, username: text }\n    features: { numeric: [logcount] }\nstages:\n  logs: { type: file-source, path: x }\n  out: { type: blackhole, inputs: [logs] }\n",
    );
    let (valid, out) = validate(&p);
    assert!(
        !valid && out.contains(":3: family \"azure\" of pipeline") && out.contains("clashes with the one of built-in"),
        "{out}"
    );
    // A family whose columns have no paths cannot feed the generic normalizer.
    let p = write(
        dir.path(),
        "generic.yaml",
        "version: 1\nfamily: azure\nstages:\n  logs: { type: file-source, path: x, raw: true }\n  events: { type: normalize, inputs: [logs] }\n  out: { type: blackhole, inputs: [events] }\n",
    );
    let (valid, out) = validate(&p);
    assert!(
        !valid && out.contains("cannot be read generically") && out.contains("normalized by `normalize-azure`"),
        "{out}"
    );
}

#[test]
fn a_model_of_another_family_is_refused_with_both_names() {
    // Train models for the `gws` sample, then score its events as another family whose models have the same
    // prefix: the models say which family they were trained for.
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    ok(&dfp()
        .args(["run", "examples/gws/gws-training.yaml", "--var", "epochs=1", "--var", "min_history=100000"])
        .args(["--var", &var("models", &models), "--var", &var("report", &dir.path().join("r.jsonl"))])
        .output()
        .unwrap());
    // The same declaration under another name, with the same model prefix.
    let declared = std::fs::read_to_string("examples/gws/gws-family.yaml").unwrap();
    assert!(declared.contains("\ngws:\n"));
    write(dir.path(), "other.yaml", &declared.replacen("\ngws:\n", "\nother:\n  model_prefix: gws\n", 1));
    let p = write(
        dir.path(),
        "p.yaml",
        &format!(
            "version: 1\nfamily: other\nfamilies: other.yaml\nstages:\n  logs: {{ type: file-source, path: {}, raw: true }}\n  events: {{ type: normalize, inputs: [logs] }}\n  features: {{ type: features, inputs: [events] }}\n  scored: {{ type: score, inputs: [features], registry: {} }}\n  out: {{ type: blackhole, inputs: [scored] }}\n",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/gws/infer").display(),
            models.display()
        ),
    );
    let out = run(&["run", p.to_str().unwrap()]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("trained for the log family \"gws\", but this pipeline reads the family \"other\""), "{t}");
}
