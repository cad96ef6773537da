//! End-to-end ingest: Azure logs → normalize → features through the real binary, from local files and from
//! an S3-compatible server (moto) started on 127.0.0.1; determinism across workers and batch sizes; bad input
//! accounted for.

mod common;
use common::{dfp, http_put, start_moto, text};

use std::collections::BTreeMap;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A tiny deterministic generator of Azure Monitor exports: `files` 3-hour files for `users` users.
fn write_azure(dir: &Path, files: usize, users: usize) -> usize {
    std::fs::create_dir_all(dir).unwrap();
    let mut seed: u64 = 42;
    let mut next = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) as usize
    };
    let apps = ["Office 365 Exchange Online", "Microsoft Teams", "SharePoint Online", "Azure Portal", "VPN"];
    let cities = [("Seattle", "US"), ("Portland", "US"), ("Berlin", "DE"), ("Paris", "FR")];
    let browsers = ["Edge 120.0.0", "Chrome 119.0.0", "Safari 17.1"];
    let base = 1_659_312_000i64; // 2022-08-01T00:00:00Z
    let mut n = 0;
    for f in 0..files {
        let start = base + f as i64 * 3 * 3600;
        let mut events: Vec<(i64, String)> = Vec::new();
        for _ in 0..(20 + next() % 20) {
            n += 1;
            let t = start + (next() % (3 * 3600)) as i64;
            let user = next() % users;
            let (city, country) = cities[(user + next() % 6 / 5) % cities.len()];
            let secs = t % 60;
            let mins = (t / 60) % 60;
            let hours = (t / 3600) % 24;
            let day = 1 + (t - base) / 86_400;
            let record = format!(
                r#"{{"time":"2022-08-{day:02}T{hours:02}:{mins:02}:{secs:02}.{frac:07}Z","category":"SignInLogs","location":"{country}","properties":{{"id":"evt-{n}","userPrincipalName":"user{user}@contoso.com","appDisplayName":"{app}","clientAppUsed":"Browser","ipAddress":"203.0.{user}.{ip}","status":{{"errorCode":0}},"deviceDetail":{{"displayName":"LAPTOP-{user}","operatingSystem":"Windows 10","browser":"{browser}"}},"location":{{"city":"{city}","state":"","countryOrRegion":"{country}","geoCoordinates":{{"latitude":47.6,"longitude":-122.3}}}}}}}}"#,
                frac = next() % 10_000_000,
                app = apps[(user + next() % 3) % apps.len()],
                ip = next() % 4,
                browser = browsers[(user + next() % 10 / 9) % browsers.len()],
            );
            events.push((t, record));
        }
        events.sort();
        let body: Vec<&str> = events.iter().map(|(_, r)| r.as_str()).collect();
        let hours = (f * 3) % 24;
        let day = 1 + f * 3 / 24;
        let name = format!("AZUREAD_2022-08-{day:02}T{hours:02}_00_03.207Z.json");
        std::fs::write(dir.join(name), format!("[\n{}\n]\n", body.join(",\n"))).unwrap();
    }
    n
}

fn run_features(input: &str, output: &Path, extra: &[&str], env: &[(&str, String)]) -> String {
    let mut cmd = dfp();
    cmd.args(["run", "pipelines/azure-features.yaml", "--var", &format!("input={input}")])
        .args(["--var", &format!("output={}", output.display())])
        .args(["--dead-letter", &format!("{}.dead", output.display())])
        .args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    text(&out)
}

fn sorted_lines(path: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path).unwrap().lines().map(str::to_string).collect();
    lines.sort();
    lines
}

#[test]
fn features_are_identical_with_1_and_3_workers_and_any_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    let total = write_azure(&dir.path().join("logs"), 16, 7);
    let input = dir.path().join("logs").display().to_string();
    let mut results = Vec::new();
    for (workers, batch) in [("1", "4096"), ("3", "4096"), ("3", "5"), ("1", "7")] {
        let output = dir.path().join(format!("out-{workers}-{batch}.jsonl"));
        let summary =
            run_features(&input, &output, &["--workers", workers, "--var", &format!("batch_size={batch}")], &[]);
        assert!(summary.contains(&format!("{total} records read")), "{summary}");
        results.push(sorted_lines(&output));
    }
    assert_eq!(results[0].len(), total);
    for r in &results[1..] {
        assert_eq!(&results[0], r);
    }
    // The features are there and vary.
    let rows: Vec<serde_json::Value> = results[0].iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let max_count = rows.iter().map(|r| r["logcount"].as_i64().unwrap()).max().unwrap();
    assert!(max_count > 3);
    assert!(rows.iter().any(|r| r["new_city"] == true) && rows.iter().any(|r| r["new_city"] == false));
    // Per user and day, logcount runs 0..n in timestamp order.
    // (user, day) → [(timestamp, id, logcount)]
    type Events = Vec<(String, String, i64)>;
    let mut by_user_day: BTreeMap<(String, String), Events> = BTreeMap::new();
    for r in &rows {
        let ts = r["timestamp"].as_str().unwrap().to_string();
        by_user_day.entry((r["username"].as_str().unwrap().to_string(), ts[..10].to_string())).or_default().push((
            ts,
            r["id"].as_str().unwrap().to_string(),
            r["logcount"].as_i64().unwrap(),
        ));
    }
    for (key, mut events) in by_user_day {
        events.sort();
        let counts: Vec<i64> = events.iter().map(|e| e.2).collect();
        assert_eq!(counts, (0..counts.len() as i64).collect::<Vec<_>>(), "{key:?}");
    }
}

#[test]
fn bad_input_is_dead_lettered_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let good = write_azure(&logs, 2, 3);
    let bad = [
        r#"{"time":"2022-08-02T00:00:00Z","properties":{"id":"b1","userPrincipalName":12}}"#,
        r#"{"time":"2022-08-02T00:00:00Z","properties":{"id":"b2"}}"#,
        r#"{"properties":{"id":"b3","userPrincipalName":"x@y.z"}}"#,
        r#"{"time":"2022-08-02T00:00:00Z","properties":{"id":"b4","userPrincipalName":"x@y.z","appDisplayName":"HUGE"}}"#,
    ]
    .map(|r| r.replace("HUGE", &"h".repeat(20_000)));
    std::fs::write(logs.join("AZUREAD_2022-08-02T06_00_00.000Z.json"), format!("[{}]", bad.join(","))).unwrap();
    std::fs::write(logs.join("AZUREAD_2022-08-02T09_00_00.000Z.json"), "[{\"time\": \"2022-08-02T09:00:00Z\", \"prop")
        .unwrap();
    let output = dir.path().join("out.jsonl");
    let summary = run_features(&logs.display().to_string(), &output, &[], &[]);
    let out_rows = sorted_lines(&output).len();
    let dead = std::fs::read_to_string(format!("{}.dead", output.display())).unwrap();
    let dead: Vec<serde_json::Value> = dead.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(out_rows, good);
    // 4 bad records + 1 truncated file
    assert_eq!(dead.len(), 5, "{dead:?}");
    assert_eq!(out_rows + dead.len() - 1, good + bad.len(), "count in = count out + dead letters");
    let reasons: Vec<&str> = dead.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    for needle in [
        "invalid type: integer `12`",
        "no user",
        "no time",
        "field appDisplayName is 20000 bytes",
        "truncated JSON array",
    ] {
        assert!(reasons.iter().any(|r| r.contains(needle)), "{needle} not in {reasons:?}");
    }
    assert!(summary.contains("5 record(s) rejected"), "{summary}");
}

#[test]
fn reads_from_an_s3_compatible_server() {
    let (_moto, port) = start_moto();
    http_put(port, "/logs");
    let dir = tempfile::tempdir().unwrap();
    let total = write_azure(&dir.path().join("logs"), 6, 4);
    let endpoint = format!("http://127.0.0.1:{port}");
    let store = common::moto_store(port, "logs");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for entry in std::fs::read_dir(dir.path().join("logs")).unwrap() {
        let path = entry.unwrap().path();
        let key = format!("azure/2022/{}", path.file_name().unwrap().to_str().unwrap());
        let bytes = std::fs::read(&path).unwrap();
        use object_store::ObjectStoreExt;
        rt.block_on(store.put(&object_store::path::Path::from(key), bytes.into())).unwrap();
    }
    // Local run for reference.
    let local = dir.path().join("local.jsonl");
    run_features(&dir.path().join("logs").display().to_string(), &local, &[], &[]);
    // The same files through S3, credentials from the standard AWS variables.
    let remote = dir.path().join("s3.jsonl");
    let env = [
        ("AWS_ENDPOINT_URL", endpoint.clone()),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("AWS_ACCESS_KEY_ID", "test".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ];
    let summary = run_features("s3://logs/azure/2022/*.json", &remote, &["--workers", "2"], &env);
    assert!(summary.contains(&format!("{total} records read")), "{summary}");
    assert_eq!(sorted_lines(&local), sorted_lines(&remote));
    // Output to S3 as Parquet: uploaded when the run ends, readable with the same rows.
    let out = dfp()
        .args([
            "run",
            "pipelines/azure-features.yaml",
            "--var",
            &format!("input={}", dir.path().join("logs").display()),
        ])
        .args([
            "--var",
            "output=s3://logs/out/features.parquet",
            "--dead-letter",
            &format!("{}/dl", dir.path().display()),
        ])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    use object_store::ObjectStoreExt;
    let bytes = rt
        .block_on(async {
            store.get(&object_store::path::Path::from("out/features.parquet")).await.unwrap().bytes().await
        })
        .unwrap();
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap();
    assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), total);
    // A time window drops the files outside it.
    let windowed = dir.path().join("win.jsonl");
    run_features(
        "s3://logs/azure/2022/",
        &windowed,
        &["--var", "start=2022-08-01T03:00:00Z", "--var", "end=2022-08-01T09:00:00Z"],
        &env,
    );
    let rows = sorted_lines(&windowed);
    assert!(!rows.is_empty() && rows.len() < total);
    for r in rows {
        let v: serde_json::Value = serde_json::from_str(&r).unwrap();
        let ts = v["timestamp"].as_str().unwrap();
        assert!(("2022-08-01T03".."2022-08-01T09").contains(&&ts[..13]), "{ts}");
    }
}

#[test]
fn watch_mode_picks_up_new_files() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let staging = dir.path().join("staging");
    let first = write_azure(&logs, 1, 3);
    let second = write_azure(&staging, 2, 3) - first; // the generator is deterministic: the second file's events
    let pipeline = dir.path().join("watch.yaml");
    let yaml = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/azure-features.yaml"))
        .unwrap()
        .replace("    raw: true\n", "    raw: true\n    watch: true\n    poll_interval_secs: 0.2\n");
    std::fs::write(&pipeline, yaml).unwrap();
    let output = dir.path().join("out.jsonl");
    let child = dfp()
        .args(["run", pipeline.to_str().unwrap(), "--var", &format!("input={}", logs.display())])
        .args(["--var", &format!("output={}", output.display())])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // A new export appears while the pipeline runs.
    let name =
        std::fs::read_dir(&staging).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).max().unwrap();
    std::fs::copy(staging.join(&name), logs.join(&name)).unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sorted_lines(&output).len(), first + second, "{}", text(&out));
}

#[test]
fn features_do_not_depend_on_file_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let total = write_azure(&dir.path().join("a"), 12, 5);
    // The same events, re-cut into 5 files at different points (still in time order).
    let mut records: Vec<(String, String)> = Vec::new();
    for entry in std::fs::read_dir(dir.path().join("a")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for v in serde_json::from_str::<Vec<serde_json::Value>>(&text).unwrap() {
            records.push((v["time"].as_str().unwrap().to_string(), v.to_string()));
        }
    }
    records.sort();
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    for chunk in records.chunks(total.div_ceil(5)) {
        let first = &chunk[0].0; // e.g. 2022-08-01T03:12:45.1234567Z
        let name = format!("AZUREAD_{}.json", first[..19].replace(':', "_"));
        let body: Vec<&str> = chunk.iter().map(|(_, r)| r.as_str()).collect();
        std::fs::write(dir.path().join("b").join(name), format!("[{}]", body.join(","))).unwrap();
    }
    let out_a = dir.path().join("a.jsonl");
    let out_b = dir.path().join("b.jsonl");
    run_features(&dir.path().join("a").display().to_string(), &out_a, &["--workers", "2"], &[]);
    run_features(&dir.path().join("b").display().to_string(), &out_b, &["--workers", "3"], &[]);
    assert_eq!(sorted_lines(&out_a).len(), total);
    assert_eq!(sorted_lines(&out_a), sorted_lines(&out_b));
}
