//! Multi-process clusters on loopback, through the real binary: the same results as one process, the same
//! models, a mismatched process refused, a lost process named, a stop on one process stopping all, and a
//! missing peer timing out with a readable message.

mod common;
use common::{dfp, free_port, http_get, text, wait_http_ok};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

/// A hostfile of `n` free loopback ports.
fn hostfile(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("hosts.txt");
    let lines: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    std::fs::write(&path, format!("# test cluster\n{}\n", lines.join("\n"))).unwrap();
    path
}

/// Starts process `i` of the cluster with `args` after `dfp run`.
fn start(args: &[String], hosts: &Path, n: usize, i: usize) -> Child {
    start_with(args, hosts, n, i, &[])
}

/// [`start`], with these environment variables set for the process.
fn start_with(args: &[String], hosts: &Path, n: usize, i: usize, env: &[(&str, &str)]) -> Child {
    dfp()
        .envs(env.iter().copied())
        .arg("run")
        .args(args)
        .args(["--processes", &n.to_string(), "--process", &i.to_string(), "--hostfile"])
        .arg(hosts)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs a whole cluster of `n` processes to the end.
fn run_cluster(args: &[String], hosts: &Path, n: usize) -> Vec<Output> {
    run_cluster_with(args, hosts, n, &[])
}

/// [`run_cluster`], with these environment variables set for every process.
fn run_cluster_with(args: &[String], hosts: &Path, n: usize, env: &[(&str, &str)]) -> Vec<Output> {
    let children: Vec<Child> = (0..n).map(|i| start_with(args, hosts, n, i, env)).collect();
    children.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Every line of every file matching `stem*` in `dir`, sorted.
fn lines_of(dir: &Path, stem: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with(stem) {
            out.extend(std::fs::read_to_string(e.path()).unwrap().lines().map(str::to_string));
        }
    }
    out.sort();
    out
}

/// Model names and training rows of a local registry (for the profile set: its number of users).
fn models(registry: &Path) -> BTreeSet<(String, u64)> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(registry).unwrap().flatten() {
        let manifest = e.path().join("v000001/manifest.json");
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
        let rows = m["training"]["rows"].as_u64().or(m["users"].as_u64()).unwrap();
        out.insert((e.file_name().to_string_lossy().to_string(), rows));
    }
    out
}

#[test]
fn two_processes_train_the_same_models_and_score_the_same_rows_as_one_worker() {
    let _serial = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let train = |models: &Path, report: &str| {
        strings(&["pipelines/azure-training.yaml", "--var", "epochs=2", "--var", "min_history=100", "--var"])
            .into_iter()
            .chain([
                format!("models={}", models.display()),
                "--var".into(),
                format!("report={}", dir.path().join(report).display()),
            ])
            .collect::<Vec<String>>()
    };
    // Training: one process, one worker; then two processes of one worker each.
    let single = dir.path().join("models-1x1");
    let out = dfp().arg("run").args(train(&single, "r1.jsonl")).args(["--workers", "1"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let clustered = dir.path().join("models-2x1");
    let hosts = hostfile(dir.path(), 2);
    let mut args = train(&clustered, "r2.jsonl");
    args.extend(strings(&["--workers", "1"]));
    for (i, out) in run_cluster(&args, &hosts, 2).iter().enumerate() {
        assert!(out.status.success(), "process {i}: {}", text(out));
    }
    let expected = models(&single);
    assert!(expected.len() >= 3, "{expected:?}");
    assert_eq!(models(&clustered), expected, "the same models, trained on the same rows");
    // Each process trained its own users: the report parts of the two processes split the models.
    let reports = lines_of(dir.path(), "r2");
    assert_eq!(reports.len(), lines_of(dir.path(), "r1").len());

    // Inference: 1 process × 1 worker against 2 processes × 2 workers, every event kept; with f32 layers
    // through MKL and through oneDNN (whichever this CPU's `auto` picks), as each must round a row alike
    // whatever rows it is scored with.
    let infer = |output: &Path| {
        strings(&["pipelines/azure-inference.yaml", "--var", "threshold=-1", "--var"])
            .into_iter()
            .chain([format!("models={}", single.display()), "--var".into(), format!("output={}", output.display())])
            .collect::<Vec<String>>()
    };
    for onednn in ["off", "on"] {
        let one = dir.path().join(format!("one-{onednn}"));
        std::fs::create_dir_all(&one).unwrap();
        let out = dfp()
            .env("DFP_ONEDNN", onednn)
            .arg("run")
            .args(infer(&one.join("scored.jsonl")))
            .args(["--workers", "1"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let four = dir.path().join(format!("four-{onednn}"));
        std::fs::create_dir_all(&four).unwrap();
        let mut args = infer(&four.join("scored.jsonl"));
        args.extend(strings(&["--workers", "2"]));
        for (i, out) in run_cluster_with(&args, &hosts, 2, &[("DFP_ONEDNN", onednn)]).iter().enumerate() {
            assert!(out.status.success(), "DFP_ONEDNN={onednn}, process {i}: {}", text(out));
        }
        let parts: Vec<String> = (0..4).map(|w| format!("scored.part-{w:04}.jsonl")).collect();
        for p in &parts {
            assert!(four.join(p).exists(), "every worker writes its part file: {p}");
        }
        let expected = lines_of(&one, "scored");
        assert!(expected.len() > 500, "{}", expected.len());
        // Every row's views (`win_*`, `risk`, incidents) included: each event sees its windows as of its own
        // time and file, whichever process and worker read what first (docs/correlate.md).
        let got = lines_of(&four, "scored");
        assert_eq!(got.len(), expected.len(), "2 processes × 2 workers write as many rows as 1 × 1");
        let first = got.iter().zip(&expected).find(|(a, b)| a != b);
        assert!(
            first.is_none(),
            "DFP_ONEDNN={onednn}: 2 processes × 2 workers score exactly the rows of 1 × 1; the first that differs: {first:?}"
        );
    }
}

#[test]
fn a_process_running_another_pipeline_file_is_refused_at_start_up() {
    let _serial = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let hosts = hostfile(dir.path(), 2);
    let other = dir.path().join("other.yaml");
    let text_of = std::fs::read_to_string("pipelines/failed-signins.yaml").unwrap();
    std::fs::write(&other, text_of.replace("workers: 2", "workers: 2 # edited")).unwrap();
    let out_dir = dir.path().display().to_string();
    let a = strings(&["pipelines/failed-signins.yaml", "--var", &format!("output={out_dir}/a.jsonl")]);
    let b = vec![other.display().to_string(), "--var".into(), format!("output={out_dir}/b.jsonl")];
    let first = start(&a, &hosts, 2, 0);
    let second = start(&b, &hosts, 2, 1);
    let (first, second) = (first.wait_with_output().unwrap(), second.wait_with_output().unwrap());
    for (i, out) in [&first, &second].iter().enumerate() {
        assert!(!out.status.success(), "process {i} must refuse: {}", text(out));
    }
    let msg = text(&first);
    assert!(msg.contains("process 0 (127.0.0.1:") && msg.contains("refuses to start"), "{msg}");
    assert!(msg.contains("process 1 (127.0.0.1:") && msg.contains("another pipeline text"), "{msg}");
    assert!(msg.contains("other.yaml"), "{msg}");
    assert!(text(&second).contains("process 0 (127.0.0.1:") && text(&second).contains("runs something else"));
    assert!(!msg.contains("panicked"), "{msg}");
}

#[test]
fn processes_prove_the_cluster_secret_and_one_without_it_is_refused() {
    let _serial = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let hosts = hostfile(dir.path(), 2);
    let (good, wrong) = (dir.path().join("secret"), dir.path().join("wrong"));
    std::fs::write(&good, "correct horse battery staple\n").unwrap();
    std::fs::write(&wrong, "a different secret of the right length\n").unwrap();
    let out_dir = dir.path().display().to_string();
    let args = |name: &str, secret: Option<&Path>| {
        let mut a = strings(&["pipelines/failed-signins.yaml", "--var", &format!("output={out_dir}/{name}.jsonl")]);
        if let Some(s) = secret {
            a.extend(["--cluster-secret-file".to_string(), s.display().to_string()]);
        }
        a
    };
    // Both know it: the run goes through.
    let a = start(&args("a", Some(&good)), &hosts, 2, 0);
    let b = start(&args("b", Some(&good)), &hosts, 2, 1);
    for out in [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()] {
        assert!(out.status.success(), "{}", text(&out));
    }
    // Another secret: both refuse, naming the other process; the secret is never printed.
    let a = start(&args("c", Some(&good)), &hosts, 2, 0);
    let b = start(&args("d", Some(&wrong)), &hosts, 2, 1);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(!a.status.success() && !b.status.success());
    assert!(
        text(&a).contains("process 1 (127.0.0.1:") && text(&a).contains("does not know the cluster secret"),
        "{}",
        text(&a)
    );
    assert!(
        text(&b).contains("process 0 (127.0.0.1:") && text(&b).contains("does not know the cluster secret"),
        "{}",
        text(&b)
    );
    for out in [&a, &b] {
        assert!(!text(out).contains("horse") && !text(out).contains("different secret"), "{}", text(out));
    }
    // None at all on one side: refused with what is missing.
    let a = start(&args("e", Some(&good)), &hosts, 2, 0);
    let b = start(&args("f", None), &hosts, 2, 1);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(!a.status.success() && !b.status.success());
    assert!(text(&a).contains("it has no cluster secret and this process has one"), "{}", text(&a));
    assert!(text(&b).contains("it has a cluster secret and this process none"), "{}", text(&b));
}

const ENDLESS: &str = "version: 1
runtime: { workers: 1 }
stages:
  gen: { type: generator, rows: 100000000000, users: 7, batch_size: 1024 }
  sel: { type: passthrough, inputs: [gen] }
  out: { type: blackhole, inputs: [sel] }
";

/// Starts an endless 2-process cluster and waits until both process rows.
fn endless(dir: &Path) -> (Child, Child, u16, u16) {
    let pipeline = dir.join("endless.yaml");
    std::fs::write(&pipeline, ENDLESS).unwrap();
    let hosts = hostfile(dir, 2);
    let (m0, m1) = (free_port(), free_port());
    let args = |m: u16| vec![pipeline.display().to_string(), "--metrics-addr".into(), format!("127.0.0.1:{m}")];
    let a = start(&args(m0), &hosts, 2, 0);
    let b = start(&args(m1), &hosts, 2, 1);
    for port in [m0, m1] {
        assert_eq!(wait_http_ok(port, "/readyz", "the cluster's readiness", 60), "ready\n");
    }
    (a, b, m0, m1)
}

#[test]
fn a_lost_process_ends_the_others_with_its_name_and_a_stop_on_one_stops_all() {
    let _serial = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // kill -9 process 1: process 0 ends non-zero naming it.
    let (a, mut b, m0, _) = endless(dir.path());
    let metrics = http_get(m0, "/metrics").unwrap().1;
    assert!(
        metrics.contains(r#"dfp_stage_events_sent_total{pipeline="#) && metrics.contains(r#"process="0""#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"dfp_worker_busy_seconds_total{pipeline="#) && metrics.contains(r#"worker="0""#));
    b.kill().unwrap();
    b.wait().unwrap();
    let out = a.wait_with_output().unwrap();
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(msg.contains("lost the connection to process 1 (127.0.0.1:") && msg.contains("fail-stop"), "{msg}");
    assert!(!msg.contains("panicked"), "{msg}");

    // SIGTERM on process 1 only: both drain and stop, saying that the (bounded) generator was cut short.
    let (a, b, _, _) = endless(dir.path());
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(b.id() as i32, libc::SIGTERM) };
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(a.status.code(), Some(3), "process 0 stops too: {}", text(&a));
    assert_eq!(b.status.code(), Some(3), "{}", text(&b));
    assert!(text(&a).contains("stopped early in"), "{}", text(&a));
}

#[test]
fn a_missing_peer_times_out_with_a_readable_message() {
    let _serial = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let hosts = hostfile(dir.path(), 2);
    let pipeline = dir.path().join("endless.yaml");
    std::fs::write(&pipeline, ENDLESS).unwrap();
    let m = free_port();
    let args = vec![
        pipeline.display().to_string(),
        "--connect-timeout".into(),
        "4".into(),
        "--metrics-addr".into(),
        format!("127.0.0.1:{m}"),
    ];
    let alone = start(&args, &hosts, 2, 1);
    let started = Instant::now();
    let mut readiness = String::new();
    while !readiness.contains("cluster: connecting") && started.elapsed() < Duration::from_secs(30) {
        readiness = http_get(m, "/readyz").map(|r| r.1).unwrap_or_default();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(readiness.starts_with("not ready\ncluster: connecting process 1 to its 1 peers"), "{readiness}");
    let out = alone.wait_with_output().unwrap();
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(msg.contains("process 1 (127.0.0.1:") && msg.contains("waited 4 s"), "{msg}");
    assert!(msg.contains("not all of them connected: process 0 (127.0.0.1:"), "{msg}");

    // Hostfile problems are named with their line.
    std::fs::write(&hosts, "127.0.0.1:2101\nnot-an-address\n").unwrap();
    let out = dfp().arg("run").arg(&pipeline).args(["--process", "0", "--hostfile"]).arg(&hosts).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("hosts.txt:2: \"not-an-address\" is not host:port"), "{}", text(&out));
    let out = dfp().arg("run").arg(&pipeline).args(["--processes", "2", "--process", "0"]).output().unwrap();
    assert!(text(&out).contains("need a hostfile"), "{}", text(&out));
}

#[test]
fn the_shipped_hostfile_example_and_unit_match_the_cli() {
    let text = std::fs::read_to_string("deploy/cluster/hostfile.example").unwrap();
    let hosts = dfp_core::cluster::parse_hostfile(&text, "hostfile.example").unwrap();
    assert_eq!(hosts.len(), 2);
    let unit = std::fs::read_to_string("deploy/cluster/dfp@.service").unwrap();
    assert!(unit.contains("--processes 2 --process %i --hostfile"), "{unit}");
    // Every flag the unit passes is one `dfp run` knows.
    let help = dfp().args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    let flags: Vec<&str> = unit
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(str::split_whitespace)
        .filter(|w| w.starts_with("--"))
        .collect();
    assert!(flags.len() >= 6, "{flags:?}");
    for flag in flags {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}=")),
            "{flag} is not a dfp run flag"
        );
    }
}

#[test]
fn a_process_with_other_plugins_is_refused_at_start_up() {
    let _serial = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let hosts = hostfile(dir.path(), 2);
    let lib = |name: &str| common::plugin_dir().join(format!("lib{name}.so")).display().to_string();
    // The same text and stages; only the plugin named by a variable differs.
    let pipeline = dir.path().join("p.yaml");
    std::fs::write(
        &pipeline,
        "version: 1\nvars: { plugin: x }\nplugins: [\"${plugin}\"]\nstages:\n  g: { type: generator, rows: 1000 }\n  o: { type: blackhole, inputs: [g] }\n",
    )
    .unwrap();
    let args = |plugin: String| vec![pipeline.display().to_string(), "--var".into(), format!("plugin={plugin}")];
    let a = start(&args(lib("dfp_plugin_testkit")), &hosts, 2, 0);
    let b = start(&args(lib("dfp_plugin_okta")), &hosts, 2, 1);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(!a.status.success() && !b.status.success());
    let msg = text(&a);
    assert!(msg.contains("process 1 (127.0.0.1:") && msg.contains("plugins [\"okta "), "{msg}");
    assert!(msg.contains("there, [\"testkit "), "{msg}");
}

#[test]
fn a_stage_failing_on_one_process_stops_the_whole_cluster() {
    let _serial = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let hosts = hostfile(dir.path(), 2);
    // Same text and graph; process 1's threshold reads a column that does not exist (a variable), so only
    // its stage fails, while process 0's endless source would run forever on its own.
    let pipeline = dir.path().join("p.yaml");
    std::fs::write(
        &pipeline,
        "version: 1\nvars: { field: value }\nruntime: { workers: 1 }\nstages:\n  gen: { type: generator, rows: 100000000000, users: 7, batch_size: 1024 }\n  t: { type: threshold, inputs: [gen], field: \"${field}\", above: 5, alert_metrics: false }\n  out: { type: blackhole, inputs: [t] }\n",
    )
    .unwrap();
    let a = start(&[pipeline.display().to_string()], &hosts, 2, 0);
    let b = start(&[pipeline.display().to_string(), "--var".into(), "field=nope".into()], &hosts, 2, 1);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(!b.status.success());
    assert!(text(&b).contains("stage \"t\" failed: threshold: no column \"nope\""), "{}", text(&b));
    assert!(!a.status.success(), "process 0 stops too: {}", text(&a));
    assert!(text(&a).contains("process 1 failed: stage \"t\" failed: threshold: no column \"nope\""), "{}", text(&a));
}
