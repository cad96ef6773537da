//! `elasticsearch-sink` against the Elasticsearch stand-in (tests/common/es.rs).
//!
//! `cargo bench --bench elasticsearch` (in `./dev bench`, release build): generated Azure logs (200 users,
//! 30 days) → `normalize-azure` → the sink, with and without gzip, next to the same pipeline into a
//! blackhole; prints events/s. Under `cargo test` (no `--bench` argument) it runs the same pipelines on a
//! small set and checks that every event is in the index once.

#[path = "../tests/common/mod.rs"]
#[allow(dead_code)]
mod common;
#[path = "../tests/common/es.rs"]
mod es;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use common::{dfp, text};
use es::EsStandIn;

/// Runs `sink` fed by the generated logs under `data`; with `check`, the rows also go to DIR/events.jsonl.
fn run(dir: &Path, data: &Path, sink: &str, check: bool) -> f64 {
    let file = if check {
        format!("  file: {{ type: file-sink, inputs: [events], path: \"{}/events.jsonl\" }}\n", dir.display())
    } else {
        String::new()
    };
    let yaml = format!(
        "version: 1\nfamily: azure\nruntime: {{ workers: 2 }}\nstages:\n  logs: {{ type: file-source, path: \"{}/*/*.json\", raw: true }}\n  events: {{ type: normalize-azure, inputs: [logs] }}\n  out:\n{sink}\n{file}",
        data.display()
    );
    let p = dir.join("bench.yaml");
    std::fs::write(&p, yaml).unwrap();
    let started = Instant::now();
    let out = dfp().args(["run", p.to_str().unwrap(), "-q"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    started.elapsed().as_secs_f64()
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (users, days) = if bench { ("200", "30") } else { ("4", "2") };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = dfp()
        .args(["generate", "azure", "--out", data.to_str().unwrap(), "--users", users, "--days", days, "--seed", "5"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let base = run(dir.path(), &data, "    type: blackhole\n    inputs: [events]", false);
    for gzip in [false, true] {
        let es = EsStandIn::start();
        let sink = format!(
            "    type: elasticsearch-sink\n    inputs: [events]\n    url: \"{}\"\n    index: \"dfp-bench-%Y.%m.%d\"\n    gzip: {gzip}",
            es.url()
        );
        let secs = run(dir.path(), &data, &sink, !bench);
        let n = es.count("dfp-bench-*");
        if !bench {
            let expected: BTreeSet<String> = std::fs::read_to_string(dir.path().join("events.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string())
                .collect();
            let stored: BTreeSet<String> = es.docs("dfp-bench-*").into_iter().map(|d| d.1).collect();
            assert!(!expected.is_empty());
            assert_eq!((n, stored), (expected.len(), expected), "every event once (gzip {gzip})");
            continue;
        }
        let requests = es.state().bulk_requests;
        println!(
            "elasticsearch-sink (gzip {gzip}): {n} documents in {secs:.2} s = {:.0} events/s ({requests} bulk requests); the same pipeline into a blackhole: {base:.2} s = {:.0} events/s",
            n as f64 / secs,
            n as f64 / base
        );
    }
}
