//! End-to-end tests of the `dfp` binary: validation diagnostics on broken copies of a shipped pipeline,
//! variables, determinism across worker counts, dead letters, failures, and the listing commands.

mod common;
use common::{dfp, text};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    dfp().args(args).output().expect("dfp runs")
}

const SHIPPED: &str = "pipelines/failed-signins.yaml";

fn shipped() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(SHIPPED)).unwrap()
}

/// 1-based line of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle:?} not in pipeline")) + 1
}

/// Writes `yaml` to a temp file, validates it (with extra args), and returns (dir, path, exit ok, output).
fn validate_text(yaml: &str, extra: &[&str]) -> (tempfile::TempDir, PathBuf, bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut args = vec!["validate", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = run(&args);
    (dir, path, out.status.success(), text(&out))
}

fn expect_error(yaml: &str, extra: &[&str], line: Option<usize>, stage: Option<&str>, message: &str) {
    let (_dir, path, ok, out) = validate_text(yaml, extra);
    assert!(!ok, "validation should fail for:\n{yaml}\noutput:\n{out}");
    let mut expected = path.display().to_string();
    if let Some(l) = line {
        expected.push_str(&format!(":{l}"));
    }
    expected.push_str(": ");
    if let Some(s) = stage {
        expected.push_str(&format!("stage \"{s}\": "));
    }
    expected.push_str(message);
    assert!(out.contains(&expected), "expected\n  {expected}\nin\n{out}");
}

#[test]
fn shipped_pipelines_validate() {
    // The Okta pipelines load the example plugins (found next to the binary).
    common::plugin_dir();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let out = run(&["validate", path.to_str().unwrap()]);
        assert!(out.status.success(), "{}: {}", path.display(), text(&out));
        assert!(text(&out).contains(": ok ("));
    }
}

#[test]
fn unknown_stage_type_suggests_the_nearest() {
    let yaml = shipped().replace("type: filter", "type: fliter");
    let line = line_of(&yaml, "type: fliter");
    expect_error(&yaml, &[], Some(line), Some("failures"), "unknown type \"fliter\"; did you mean \"filter\"?");
}

#[test]
fn unknown_and_missing_fields_are_reported_at_their_lines() {
    let yaml = shipped().replace("    equals: FAILURE", "    equal: FAILURE");
    let line = line_of(&yaml, "equal: FAILURE");
    expect_error(&yaml, &[], Some(line), Some("failures"), "unknown field `equal`; did you mean `equals`?");

    let yaml = shipped().replace("    path: \"${output}\"\n", "");
    let line = line_of(&yaml, "  out:");
    expect_error(&yaml, &[], Some(line), Some("out"), "missing field `path`");
}

#[test]
fn inputs_must_name_existing_stages() {
    let yaml = shipped().replace("inputs: [failures]", "inputs: [failure]");
    let line = line_of(&yaml, "inputs: [failure]");
    expect_error(
        &yaml,
        &[],
        Some(line),
        Some("slim"),
        "input \"failure\" is not a stage in this pipeline; did you mean \"failures\"?",
    );
}

#[test]
fn an_input_listed_twice_is_an_error() {
    let yaml = shipped().replace("inputs: [failures]", "inputs: [failures, failures]");
    let line = line_of(&yaml, "inputs: [failures, failures]");
    expect_error(&yaml, &[], Some(line), Some("slim"), "input \"failures\" is listed twice");
}

#[test]
fn cycles_are_reported() {
    let yaml = shipped().replace("inputs: [logs]", "inputs: [slim]");
    let (_dir, _, ok, out) = validate_text(&yaml, &[]);
    assert!(!ok);
    let line = line_of(&yaml, "  failures:");
    assert!(
        out.contains(&format!(":{line}: stage \"failures\": the inputs form a cycle: failures → slim → failures")),
        "{out}"
    );
}

#[test]
fn enabled_false_leaves_a_stage_out_and_its_readers_must_follow() {
    // A second sink, optional by variable: off, the pipeline is valid without it; on, with it.
    let optional =
        "  copy:\n    type: file-sink\n    enabled: ${copy}\n    inputs: [failures]\n    path: out/copy.jsonl\n";
    let yaml = format!("{}{optional}", shipped()).replace("vars:\n", "vars:\n  copy: false\n");
    for flag in ["copy=false", "copy=true"] {
        let (_dir, _, ok, out) = validate_text(&yaml, &["--var", flag]);
        assert!(ok, "{flag}: {out}");
        let stages = if flag.ends_with("true") { "5 stages" } else { "4 stages" };
        assert!(out.contains(stages), "{flag}: {out}");
    }
    // A stage that reads a disabled one is an error naming the line that disabled it.
    let yaml = shipped().replace("    type: filter\n", "    type: filter\n    enabled: false\n");
    let off = line_of(&yaml, "enabled: false");
    let line = line_of(&yaml, "inputs: [failures]");
    expect_error(
        &yaml,
        &[],
        Some(line),
        Some("slim"),
        &format!("input \"failures\" is disabled (`enabled: false` at line {off}): enable it, or disable \"slim\" too"),
    );
    let yaml = shipped().replace("    type: filter\n", "    type: filter\n    enabled: maybe\n");
    let line = line_of(&yaml, "enabled: maybe");
    expect_error(&yaml, &[], Some(line), Some("failures"), "`enabled` must be true or false, found a string");
}

#[test]
fn a_source_with_inputs_and_a_sink_as_input_are_errors() {
    let yaml = shipped().replace("    path: \"${input}\"", "    path: \"${input}\"\n    inputs: [slim]");
    let line = line_of(&yaml, "inputs: [slim]");
    expect_error(&yaml, &[], Some(line), Some("logs"), "a source (\"file-source\") takes no inputs; remove `inputs`");

    let yaml = format!("{}  again:\n    type: select\n    inputs: [out]\n    drop: [x]\n", shipped());
    let line = line_of(&yaml, "inputs: [out]");
    expect_error(&yaml, &[], Some(line), Some("again"), "input \"out\" is a sink; a sink's output cannot be read");
}

#[test]
fn undefined_variables_and_bad_var_flags() {
    let yaml = shipped().replace("path: \"${output}\"", "path: \"${outptu}\"");
    let line = line_of(&yaml, "${outptu}");
    expect_error(
        &yaml,
        &[],
        Some(line),
        Some("out"),
        "field `path`: undefined variable ${outptu}; did you mean ${output}?",
    );

    expect_error(&shipped(), &["--var", "output"], None, None, "bad --var \"output\": expected NAME=VALUE");
    expect_error(
        &shipped(),
        &["--var", "ouput=x"],
        None,
        None,
        "--var ouput: the pipeline declares no variable \"ouput\"; did you mean \"output\"?",
    );
}

#[test]
fn every_error_is_reported_in_one_run() {
    let yaml = shipped()
        .replace("type: filter", "type: fliter")
        .replace("inputs: [failures]", "inputs: [nope]")
        .replace("${output}", "${nada}");
    let (_dir, _, ok, out) = validate_text(&yaml, &[]);
    assert!(!ok);
    for needle in ["unknown type \"fliter\"", "input \"nope\"", "undefined variable ${nada}"] {
        assert!(out.contains(needle), "missing {needle} in\n{out}");
    }
}

#[test]
fn yaml_syntax_errors_have_a_line() {
    let yaml = shipped().replace("    inputs: [logs]", "    inputs: [logs");
    let (_dir, path, ok, out) = validate_text(&yaml, &[]);
    assert!(!ok);
    assert!(out.contains(&format!("{}:", path.display())), "{out}");
    assert!(out.lines().next().unwrap_or("").split(':').nth(1).is_some_and(|l| l.parse::<usize>().is_ok()), "{out}");
}

/// Writes `files` JSON-lines files of `rows` rows each (plus `bad` malformed lines in the first file).
fn write_logs(dir: &Path, files: usize, rows: usize, bad: usize) -> usize {
    std::fs::create_dir_all(dir).unwrap();
    let mut n = 0;
    for f in 0..files {
        let mut text = String::new();
        for r in 0..rows {
            n += 1;
            let result = if n % 4 == 0 { "FAILURE" } else { "SUCCESS" };
            text.push_str(&format!(
                "{{\"id\":\"e{n}\",\"username\":\"user{}\",\"result\":\"{result}\",\"n\":{r}}}\n",
                n % 13
            ));
            if f == 0 && r < bad {
                text.push_str("{\"id\": broken\n");
            }
        }
        std::fs::write(dir.join(format!("part-{f:02}.jsonl")), text).unwrap();
    }
    n
}

fn sorted_lines(path: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path).unwrap().lines().map(str::to_string).collect();
    lines.sort();
    lines
}

#[test]
fn var_overrides_pick_input_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let total = write_logs(&dir.path().join("in"), 2, 40, 0);
    let output = dir.path().join("out/failed.jsonl");
    let out = run(&[
        "run",
        SHIPPED,
        "--var",
        &format!("input={}/in/*.jsonl", dir.path().display()),
        "--var",
        &format!("output={}", output.display()),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let lines = sorted_lines(&output);
    assert_eq!(lines.len(), total / 4);
    assert!(lines.iter().all(|l| l.contains("\"username\":\"user")));
}

#[test]
fn the_same_rows_come_out_with_1_2_and_4_workers() {
    let dir = tempfile::tempdir().unwrap();
    write_logs(&dir.path().join("in"), 9, 300, 0);
    let mut results = Vec::new();
    for workers in ["1", "2", "4"] {
        let output = dir.path().join(format!("out-{workers}.jsonl"));
        let out = run(&[
            "run",
            SHIPPED,
            "--workers",
            workers,
            "--var",
            &format!("input={}/in", dir.path().display()),
            "--var",
            &format!("output={}", output.display()),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains(&format!("on {workers} worker(s)")), "{}", text(&out));
        results.push(sorted_lines(&output));
    }
    assert_eq!(results[0].len(), 9 * 300 / 4);
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0], results[2]);
}

#[test]
fn malformed_records_go_to_dead_letters_and_good_ones_reach_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let total = write_logs(&dir.path().join("in"), 2, 20, 3);
    let output = dir.path().join("failed.jsonl");
    let dead = dir.path().join("dl/dead.jsonl");
    let out = run(&[
        "run",
        SHIPPED,
        "--var",
        &format!("input={}/in", dir.path().display()),
        "--var",
        &format!("output={}", output.display()),
        "--dead-letter",
        dead.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("3 record(s) rejected"), "{}", text(&out));
    assert_eq!(sorted_lines(&output).len(), total / 4);
    let letters: Vec<serde_json::Value> =
        std::fs::read_to_string(&dead).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(letters.len(), 3);
    // the broken lines follow rows 1..3 of part-00: file lines 2, 4, 6
    let origins: BTreeSet<String> = letters.iter().map(|l| l["origin"].as_str().unwrap().to_string()).collect();
    for line in [2, 4, 6] {
        assert!(origins.iter().any(|o| o.ends_with(&format!("part-00.jsonl:{line}"))), "{origins:?}");
    }
    for l in &letters {
        assert_eq!(l["stage"], "logs");
        assert_eq!(l["record"], "{\"id\": broken");
        assert!(l["reason"].as_str().unwrap().contains("invalid JSON"), "{l}");
    }
}

#[test]
fn a_failing_stage_exits_non_zero_naming_the_stage() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let out = run(&["run", SHIPPED, "--var", &format!("output={}/out.jsonl", blocker.display())]);
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(t.contains("stage \"out\" failed"), "{t}");
    assert!(t.contains("a-file"), "{t}");
}

#[test]
fn run_refuses_an_invalid_pipeline_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, shipped().replace("type: filter", "type: nope")).unwrap();
    let out = run(&["run", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("unknown type \"nope\""));
}

#[test]
fn csv_in_csv_out() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    std::fs::write(
        &input,
        "id,username,score,result\n1,alice,0.5,FAILURE\n2,bob,1.5,SUCCESS\n3,carol\n4,dave,,FAILURE\n",
    )
    .unwrap();
    let pipeline = dir.path().join("p.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "version: 1\nstages:\n  logs: {{ type: file-source, path: {} }}\n  f: {{ type: filter, inputs: [logs], field: result, equals: FAILURE }}\n  out: {{ type: file-sink, inputs: [f], path: {} }}\n",
            input.display(),
            dir.path().join("out.csv").display()
        ),
    )
    .unwrap();
    let out = dfp().current_dir(dir.path()).args(["run", pipeline.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let csv = std::fs::read_to_string(dir.path().join("out.csv")).unwrap();
    assert_eq!(csv, "id,username,score,result\n1,alice,0.5,FAILURE\n4,dave,,FAILURE\n");
    let dl = std::fs::read_to_string(dir.path().join("dead-letter.jsonl")).unwrap();
    assert!(dl.contains("line 4: expected 4 fields, found 2"), "{dl}");
}

#[test]
fn stages_and_schema_list_every_registered_type() {
    let out = run(&["stages"]);
    assert!(out.status.success());
    let listing = text(&out);
    let schema_out = run(&["schema"]);
    assert!(schema_out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&schema_out.stdout).unwrap();
    let variants = schema["properties"]["stages"]["additionalProperties"]["oneOf"].as_array().unwrap();
    let names: BTreeSet<&str> = variants.iter().map(|v| v["properties"]["type"]["const"].as_str().unwrap()).collect();
    for t in ["file-source", "file-sink", "stdout-sink", "filter", "select", "generator", "blackhole", "embedded-input"]
    {
        assert!(listing.contains(t), "dfp stages lacks {t}");
        assert!(names.contains(t), "dfp schema lacks {t}");
    }
    let filter = variants.iter().find(|v| v["title"] == "filter").unwrap();
    assert_eq!(filter["additionalProperties"], false);
    assert!(filter["properties"]["field"]["description"].as_str().is_some());
}

#[test]
fn help_is_useful_for_each_verb() {
    for verb in ["run", "validate", "stages", "schema", "bench"] {
        let out = run(&[verb, "--help"]);
        assert!(out.status.success(), "{verb}");
        assert!(text(&out).contains("Usage: dfp"), "{verb}");
    }
    assert!(text(&run(&["run", "--help"])).contains("--var <NAME=VALUE>"));
}

#[test]
fn the_stage_reference_documents_every_stage_and_field() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/stages.md")).unwrap();
    let out = run(&["stages", "--json"]);
    assert!(out.status.success());
    let stages: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    for stage in &stages {
        let name = stage["type"].as_str().unwrap();
        let header = format!("## `{name}`");
        let start = doc.find(&header).unwrap_or_else(|| panic!("docs/stages.md has no section {header}"));
        let section = &doc[start + header.len()..];
        let section = &section[..section.find("\n## ").unwrap_or(section.len())];
        if let Some(props) = stage["config"]["properties"].as_object() {
            for field in props.keys() {
                assert!(section.contains(&format!("`{field}`")), "docs/stages.md: {name} lacks field `{field}`");
            }
        }
    }
}

#[test]
fn ctrl_c_stops_gracefully_and_everything_read_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let child = endless_run_writing(dir.path(), "out");
    let out_file = dir.path().join("out.jsonl");
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let t = text(&out);
    // Stopped before the input was read to the end: a distinct status, and the summary says so.
    assert_eq!(out.status.code(), Some(3), "a run cut short exits 3: {t}");
    assert!(t.contains("stopping: sources stop reading"), "{t}");
    assert!(t.contains("stopped early in ") && t.contains("stopped early: the run was asked to stop"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
    // The summary's figures: what the source emitted is exactly what reached the file.
    let row = |id: &str| -> Vec<u64> {
        let line = t.lines().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("no {id} row in {t}"));
        // rows in, rows out, dead, skipped (then the busy seconds and share)
        line.split_whitespace().skip(2).take(4).map(|x| x.parse().unwrap()).collect()
    };
    let emitted = row("rows")[1];
    let written = row("out ")[0];
    assert!(emitted > 0 && emitted < 100_000_000_000);
    assert_eq!(emitted, written);
    let lines = std::fs::read_to_string(&out_file).unwrap().lines().count() as u64;
    assert_eq!(lines, written, "every row counted as written is in the file (flushed on stop)");
}

#[test]
fn values_from_the_environment_never_appear_in_errors() {
    // A secret that lands in a typed field: the error names the variable, not the value.
    let yaml = "version: 1\nvars:\n  size: ${env:DFP_TEST_SECRET}\nstages:\n  logs: { type: file-source, path: x, batch_size: \"${size}\" }\n  out: { type: blackhole, inputs: [logs] }\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out =
        dfp().args(["validate", path.to_str().unwrap()]).env("DFP_TEST_SECRET", "hunter2-s3cr3t").output().unwrap();
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(!t.contains("hunter2-s3cr3t"), "the secret leaked: {t}");
    assert!(t.contains("<value of ${env:DFP_TEST_SECRET}>"), "{t}");
    assert!(t.contains(":5: stage \"logs\": field `batch_size`"), "{t}");
}

#[test]
fn a_pipeline_with_very_many_variables_validates() {
    // Validation is linear in the number of keys (it used to compare every variable with every other).
    let mut yaml = String::from("version: 1\nvars:\n");
    for i in 0..120_000 {
        yaml.push_str(&format!("  v{i}: {i}\n"));
    }
    yaml.push_str("stages:\n  logs: { type: file-source, path: x }\n  out: { type: blackhole, inputs: [logs] }\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = run(&["validate", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_second_ctrl_c_aborts_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let child = endless_run_writing(dir.path(), "slow");
    for _ in 0..2 {
        assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(130), "{t}");
    assert!(t.contains("aborted") && !t.contains("panicked") && !t.contains("backtrace"), "{t}");
}

/// `dfp run` of an endless generator into `dir/out.jsonl` through a sink named `sink`, in `dir`, returned
/// once its output passed 100 kB (rows are flowing).
fn endless_run_writing(dir: &Path, sink: &str) -> std::process::Child {
    let pipeline = dir.join("long.yaml");
    std::fs::write(
        &pipeline,
        format!("version: 1\nruntime: {{ workers: 2 }}\nstages:\n  rows: {{ type: generator, rows: 100000000000, batch_size: 1024 }}\n  {sink}: {{ type: file-sink, inputs: [rows], path: out.jsonl }}\n"),
    )
    .unwrap();
    let child = dfp()
        .current_dir(dir)
        .args(["run", pipeline.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Rows go to a temporary file, renamed to out.jsonl at the end.
    let started = std::time::Instant::now();
    while largest_file(dir) < 100_000 {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "no output after 60 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
}

/// The size of the largest file in `dir`.
fn largest_file(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}

#[test]
fn json_logs_are_one_object_per_line_with_level_target_message_and_fields() {
    let dir = tempfile::tempdir().unwrap();
    let out = dfp()
        .args(["generate", "azure", "--out", dir.path().join("data").to_str().unwrap(), "--users", "3", "--days", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let empty = dir.path().join("no-profiles");
    std::fs::create_dir_all(&empty).unwrap();
    let pipeline = dir.path().join("p.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "version: 1\nfamily: azure\nstages:\n  logs: {{ type: file-source, path: \"{}/data/*/*.json\", raw: true }}\n  events: {{ type: normalize-azure, inputs: [logs] }}\n  features: {{ type: features, inputs: [events], profiles: \"{}\" }}\n  out: {{ type: blackhole, inputs: [features] }}\n",
            dir.path().display(),
            empty.display()
        ),
    )
    .unwrap();
    let out = dfp().args(["--log-format", "json", "run", pipeline.to_str().unwrap(), "-q"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON object ({e}): {l}")))
        .collect();
    // The features stage warns that the registry holds no profile set yet: level, target, message and its
    // fields (the stage, the registry) at the top level.
    let warning = lines
        .iter()
        .find(|l| l["message"].as_str().is_some_and(|m| m.contains("no profile set")))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["stage"], "features");
    assert!(warning["target"].as_str().unwrap().starts_with("dfp_stages"), "{warning}");
    assert!(warning["registry"].as_str().unwrap().contains("no-profiles"), "{warning}");
    assert!(warning["timestamp"].is_string());
    // DFP_LOG_FORMAT does the same.
    let out = dfp().args(["run", pipeline.to_str().unwrap(), "-q"]).env("DFP_LOG_FORMAT", "json").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).lines().all(|l| l.starts_with('{')), "{}", text(&out));
}
