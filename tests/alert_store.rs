//! The alert store under a killed writer: a pipeline writing into the SQLite file is killed with SIGKILL
//! mid-run; the file must pass SQLite's integrity check, and running the pipeline again must leave exactly
//! what one uninterrupted run leaves (batches are transactions, events are upserted by time and id).

mod common;
use common::{dfp, finish_within, text};

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rusqlite::Connection;

fn pipeline(dir: &Path, input: &Path, store: &Path) -> std::path::PathBuf {
    let yaml = format!(
        r#"version: 1
family: azure
runtime: {{ workers: 2, max_in_flight: 2 }}
stages:
  logs:     {{ type: file-source, path: "{input}", raw: true }}
  events:   {{ type: normalize-azure, inputs: [logs] }}
  features: {{ type: features, inputs: [events] }}
  store:    {{ type: alert-store, inputs: [features], path: "{store}", field: logcount, threshold: 3,
              commit_rows: 500 }}
"#,
        input = input.display(),
        store = store.display()
    );
    let path = dir.join(format!("{}.yaml", store.file_stem().unwrap().to_string_lossy()));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// (events, alerts, a digest of every stored event) of a store.
fn contents(store: &Path) -> (i64, i64, String) {
    let db = Connection::open(store).unwrap();
    let count = |sql: &str| db.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    let digest: String = db
        .query_row(
            "SELECT group_concat(id || ':' || score || ':' || alert || ':' || length(coalesce(detail, '')), ',')
             FROM (SELECT * FROM events ORDER BY id)",
            [],
            |r| r.get::<_, Option<String>>(0),
        )
        .unwrap()
        .unwrap_or_default();
    (count("SELECT COUNT(*) FROM events"), count("SELECT COUNT(*) FROM events WHERE alert = 1"), digest)
}

#[test]
fn a_writer_killed_mid_run_leaves_a_sound_store_and_a_rerun_completes_it_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = dfp()
        .args(["generate", "azure", "--out", data.to_str().unwrap(), "--users", "60", "--days", "30", "--seed", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let input = data.join("infer");

    // One uninterrupted run: the reference.
    let whole = dir.path().join("whole.db");
    let out = dfp().args(["run", "-q"]).arg(pipeline(dir.path(), &input, &whole)).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let expected = contents(&whole);
    assert!(expected.0 > 1000 && expected.1 > 0, "events and alerts stored: {:?}", (expected.0, expected.1));

    // A run killed as soon as rows are in the file.
    let killed = dir.path().join("killed.db");
    let yaml = pipeline(dir.path(), &input, &killed);
    let mut child = dfp().args(["run", "-q"]).arg(&yaml).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    let stored = loop {
        let n = Connection::open(&killed)
            .ok()
            .and_then(|db| db.query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0)).ok())
            .unwrap_or(0);
        if n > 0 {
            child.kill().unwrap();
            child.wait().unwrap();
            break n;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before a row could be seen in the store");
        assert!(started.elapsed() < Duration::from_secs(120), "no row reached the store in 120 s");
        std::thread::sleep(Duration::from_millis(10));
    };
    let db = Connection::open(&killed).unwrap();
    let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok", "the killed writer's file is sound");
    let after_kill = contents(&killed).0;
    drop(db);
    assert!(after_kill >= stored && after_kill < expected.0, "killed mid-run: {after_kill} of {}", expected.0);

    // Running again completes it: nothing lost, nothing twice, alerts' rows whole.
    let out = finish_within(
        dfp().args(["run", "-q"]).arg(&yaml).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap(),
        300,
        "the rerun",
    );
    assert!(out.status.success(), "{}", text(&out));
    let again = contents(&killed);
    assert_eq!((again.0, again.1), (expected.0, expected.1), "events and alerts after the rerun");
    assert!(again.2 == expected.2, "every stored event equals the uninterrupted run's");
}
