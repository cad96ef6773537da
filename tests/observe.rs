//! Observability through the real binary: a real Prometheus scrapes running pipelines and every query of
//! the shipped Grafana dashboard returns data; `/healthz`, `/readyz`, `dfp tap` and `dfp top` against a
//! running pipeline.

mod common;
use common::{dfp, free_port, http_get, text, wait_http_ok};

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Kills the child when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Prometheus (Debian package; `DFP_PROMETHEUS` overrides the binary) scraping `target` every second,
/// with the shipped scrape configuration.
fn start_prometheus(dir: &Path, target: u16) -> (Killed, u16) {
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/prometheus.yml"))
            .unwrap();
    assert!(shipped.contains("127.0.0.1:9464"), "the shipped config scrapes the default address");
    let config = shipped.replace("127.0.0.1:9464", &format!("127.0.0.1:{target}")).replace("5s", "1s");
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let port = free_port();
    let bin = std::env::var("DFP_PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new(&bin)
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {bin} ({e}): install Debian's prometheus (`apt-get install prometheus`; ./dev test does)"
            )
        });
    let prom = Killed(child);
    wait_http_ok(port, "/-/ready", "prometheus", 60);
    // Prometheus applies discovered targets every few seconds: wait until it has tried the target once, so
    // that short runs are not missed.
    let started = Instant::now();
    loop {
        let body = http_get(port, "/api/v1/targets").map(|r| r.1).unwrap_or_default();
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let scraped = v["data"]["activeTargets"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["lastScrape"].as_str().is_some_and(|s| !s.starts_with("0001"))));
        if scraped {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "prometheus did not try its target within 60 s: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    (prom, port)
}

/// Series of a range query over [start, now].
fn query_range(port: u16, query: &str, start: f64) -> Vec<Value> {
    let end = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let path = format!("/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step=1", encode(query));
    let (code, body) = http_get(port, &path).unwrap();
    assert_eq!(code, 200, "query {query}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success", "{query}: {body}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// The largest value of any series of the query over the range.
fn max_value(series: &[Value]) -> f64 {
    series
        .iter()
        .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p[1].as_str().and_then(|v| v.parse::<f64>().ok()))
        .filter(|v| v.is_finite())
        .fold(f64::NEG_INFINITY, f64::max)
}

#[test]
fn prometheus_scrapes_pipelines_and_every_dashboard_query_returns_data() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (_prom, prom_port) = start_prometheus(dir.path(), port);
    let start = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() - 1.0;
    let addr = format!("127.0.0.1:{port}");
    let models = dir.path().join("models");
    let report = dir.path().join("report.jsonl");
    let out = dfp()
        .args(["run", "pipelines/azure-training.yaml", "--var", &format!("models={}", models.display())])
        .args(["--var", &format!("report={}", report.display()), "--var", "epochs=2", "--var", "min_history=100"])
        .args(["--metrics-addr", &addr, "--metrics-linger", "3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("metrics on http://{addr}/metrics")), "{}", text(&out));
    let trained = std::fs::read_to_string(&report).unwrap().lines().filter(|l| l.contains("\"trained\"")).count();

    let alerts = dir.path().join("alerts.jsonl");
    let mut run = Killed(
        dfp()
            .args(["run", "pipelines/azure-inference.yaml", "--var", &format!("models={}", models.display())])
            .args(["--var", &format!("output={}", alerts.display()), "--var", "threshold=1"])
            .args(["--metrics-addr", &addr, "--metrics-linger", "4"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(wait_http_ok(port, "/healthz", "dfp", 60), "ok\n");
    let status = run.0.wait().unwrap();
    assert!(status.success(), "inference failed");
    let alert_rows = std::fs::read_to_string(&alerts).unwrap().lines().count();
    assert!(alert_rows > 0);

    // Series read back through Prometheus match what the runs did.
    let sent = query_range(prom_port, r#"dfp_stage_events_sent_total{stage="alerts"}"#, start);
    assert_eq!(max_value(&sent), alert_rows as f64, "{sent:?}");
    assert_eq!(sent[0]["metric"]["pipeline"], "pipelines/azure-inference.yaml");
    let counted = query_range(prom_port, "sum(dfp_alerts_total)", start);
    assert_eq!(max_value(&counted), alert_rows as f64);
    let models_trained = query_range(prom_port, "sum(dfp_models_trained_total)", start);
    assert_eq!(max_value(&models_trained), trained as f64);
    let scored = query_range(prom_port, r#"dfp_stage_events_received_total{stage="scored"}"#, start);
    let events = query_range(
        prom_port,
        r#"dfp_stage_events_sent_total{stage="events",pipeline="pipelines/azure-inference.yaml"}"#,
        start,
    );
    assert_eq!(max_value(&scored), max_value(&events));
    let lag = query_range(prom_port, r#"dfp_stage_input_lag_seconds{stage="events"}"#, start);
    assert!(max_value(&lag) > 3600.0, "the sample logs are weeks old: {lag:?}");
    for name in ["dfp_model_cache_misses_total", "dfp_model_load_seconds_count", "dfp_worker_busy_seconds_total"] {
        assert!(max_value(&query_range(prom_port, name, start)) > 0.0, "{name}");
    }

    // Every query of the shipped dashboard returns data.
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string("deploy/grafana/dfp-dashboard.json").unwrap()).unwrap();
    let mut failures = Vec::new();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let query = expr.replace("$__rate_interval", "5s").replace("$pipeline", ".*");
            queries += 1;
            if query_range(prom_port, &query, start).is_empty() {
                failures.push(format!("{}: {expr}", panel["title"]));
            }
        }
    }
    assert!(queries >= 15, "{queries}");
    assert!(failures.is_empty(), "dashboard queries without data:\n{}", failures.join("\n"));
}

const ENDLESS: &str = "version: 1
runtime: { workers: 2 }
stages:
  gen: { type: generator, rows: 100000000000, users: 7, batch_size: 1024 }
  sel: { type: passthrough, inputs: [gen] }
  out: { type: blackhole, inputs: [sel] }
";

#[test]
fn health_readiness_tap_and_top_on_a_running_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("endless.yaml");
    std::fs::write(&pipeline, ENDLESS).unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut run = Killed(
        dfp()
            .args(["run", pipeline.to_str().unwrap(), "--metrics-addr", &addr])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(wait_http_ok(port, "/healthz", "dfp", 60), "ok\n");
    assert_eq!(wait_http_ok(port, "/readyz", "dfp readiness", 30), "ready\n");

    // A tap with a filter and a limit: exactly that many matching rows, then the pipeline goes on.
    let tap =
        dfp().args(["tap", "--addr", &addr, "sel", "--limit", "5", "--filter", "username=user-3"]).output().unwrap();
    assert!(tap.status.success(), "{}", text(&tap));
    let rows: Vec<Value> =
        String::from_utf8_lossy(&tap.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 5, "{}", text(&tap));
    assert!(rows.iter().all(|r| r["username"] == "user-3" && r["id"].as_str().unwrap().starts_with("evt-")));
    let stderr = String::from_utf8_lossy(&tap.stderr);
    assert!(stderr.contains("tapping stage \"sel\"") && stderr.contains("limit reached"), "{stderr}");

    // A stage that does not exist: the message lists the stages.
    let bad = dfp().args(["tap", "--addr", &addr, "nope"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(text(&bad).contains("no stage \"nope\"") && text(&bad).contains("gen, sel, out"), "{}", text(&bad));

    // A reader that does not read: the pipeline does not wait for it; drops are counted and reported.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(slow, "GET /tap?stage=gen HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let before = serde_json::from_str::<Value>(&http_get(port, "/stats").unwrap().1).unwrap()["stages"][0]["rows_out"]
        .as_u64()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let after = serde_json::from_str::<Value>(&http_get(port, "/stats").unwrap().1).unwrap()["stages"][0]["rows_out"]
        .as_u64()
        .unwrap();
    assert!(after > before + 100_000, "the source keeps going while the tap is not read: {before} → {after}");
    slow.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut reader = BufReader::new(slow);
    let started = Instant::now();
    let mut dropped = 0u64;
    let mut line = String::new();
    while dropped == 0 && started.elapsed() < Duration::from_secs(20) {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if line.starts_with("{\"$tap\"") {
            let note: Value = serde_json::from_str(&line).unwrap();
            if note["$tap"]["event"] == "dropped" {
                dropped = note["$tap"]["dropped_rows"].as_u64().unwrap();
            }
        }
    }
    assert!(dropped > 0, "a slow tap reports dropped rows");
    drop(reader);
    let metrics = http_get(port, "/metrics").unwrap().1;
    assert!(metrics.contains("dfp_tap_rows_dropped_total{pipeline="), "{metrics}");
    assert!(metrics.contains("dfp_pipeline_ready{pipeline="), "{metrics}");
    assert!(metrics.contains("dfp_stage_processing_seconds_bucket{"), "{metrics}");

    // dfp top: two frames, the second with rates.
    let top = dfp().args(["top", "--addr", &addr, "--iterations", "2", "--interval", "0.5"]).output().unwrap();
    assert!(top.status.success(), "{}", text(&top));
    let frames = String::from_utf8_lossy(&top.stdout).to_string();
    assert!(frames.contains("workers 2") && frames.contains("ready"), "{frames}");
    let last = frames.rsplit("stage ").next().unwrap();
    let sel = last.lines().find(|l| l.starts_with("sel ")).unwrap_or_else(|| panic!("{frames}"));
    let cols: Vec<&str> = sel.split_whitespace().collect();
    assert_eq!(cols[1], "passthrough", "{sel}");
    assert_ne!(cols[3], "-", "out/s is measured in the second frame: {sel}");

    // SIGTERM stops it gracefully (the endless generator is cut short: status 3).
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(run.0.id() as i32, libc::SIGTERM) };
    let status = run.0.wait().unwrap();
    assert_eq!(status.code(), Some(3), "{status:?}");
    assert!(http_get(port, "/healthz").is_err(), "the endpoint closes with the run");
}

#[test]
fn a_bad_metrics_address_is_refused() {
    let out = dfp().args(["run", "pipelines/azure-inference.yaml", "--metrics-addr", "nowhere"]).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("--metrics-addr") && text(&out).contains("nowhere"), "{}", text(&out));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(&p, "version: 1\nruntime:\n  metrics: \"9464\"\nstages:\n  g: { type: generator, rows: 1 }\n  o: { type: blackhole, inputs: [g] }\n").unwrap();
    let out = dfp().args(["validate", p.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("p.yaml:3") && text(&out).contains("runtime.metrics"), "{}", text(&out));
}

#[test]
fn every_metric_is_documented() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/observability.md")).unwrap();
    let missing: Vec<&str> =
        dfp_core::observe::names::ALL.iter().copied().filter(|n| !doc.contains(&format!("`{n}`"))).collect();
    assert!(missing.is_empty(), "not in docs/observability.md: {missing:?}");
}

#[test]
fn an_unreachable_registry_makes_the_pipeline_not_ready_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let registry = format!("mlflow://127.0.0.1:{}", free_port());
    let run = dfp()
        .args(["run", "pipelines/azure-inference.yaml", "--var", &format!("models={registry}")])
        .args(["--var", &format!("output={}", dir.path().join("alerts.jsonl").display())])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}"), "--metrics-linger", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let (mut readiness, mut metrics) = (String::new(), String::new());
    let counted = r#"dfp_registry_errors_total{operation="load",stage="scored"}"#;
    while started.elapsed() < Duration::from_secs(60) && !(readiness.contains(&registry) && metrics.contains(counted)) {
        if let Ok((503, body)) = http_get(port, "/readyz") {
            if body.contains(&registry) && body.contains("stage \"scored\"") {
                readiness = body;
            }
        }
        metrics = http_get(port, "/metrics").map(|r| r.1).unwrap_or_default();
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = run.wait_with_output().unwrap();
    // Every stage that reads the registry says so: the profile readers and the scorer.
    assert!(
        readiness.starts_with("not ready\n"),
        "no not-ready answer naming {registry} in {:?}; last /metrics had the error counter: {}; the run printed:\n{}",
        started.elapsed(),
        metrics.contains(counted),
        text(&out)
    );
    assert!(readiness.contains("\nstage \"scored\": model registry"), "{readiness}");
    assert!(readiness.contains("\nstage \"features\": profile store"), "{readiness}");
    assert!(metrics.contains(counted), "{metrics}");
    assert!(!out.status.success());
    assert!(text(&out).contains("not cached while the registry fails"), "{}", text(&out));
}

/// `dfp run PIPELINE -q` with the admin endpoint on `addr`, output discarded; killed when dropped.
fn quiet_run(pipeline: &Path, addr: &str) -> Killed {
    Killed(
        dfp()
            .args(["run", pipeline.to_str().unwrap(), "--metrics-addr", addr, "-q"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// `GET url` with an optional bearer token, trusting `ca` for https: (status, body), or the error text.
fn fetch(url: &str, token: Option<&str>, ca: Option<&Path>) -> Result<(u16, String), String> {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
    if let Some(ca) = ca {
        let certs = reqwest::Certificate::from_pem_bundle(&std::fs::read(ca).unwrap()).unwrap();
        builder = builder.tls_certs_only(certs);
    }
    let client = builder.build().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut req = client.get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| format!("{e:?}"))?;
        let code = resp.status().as_u16();
        Ok((code, resp.text().await.map_err(|e| e.to_string())?))
    })
}

#[test]
fn the_admin_endpoint_takes_a_token_serves_https_and_reloads_a_renewed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let c = common::certificates(dir.path());
    // The endpoint's own copies of the certificate and key, replaced below by a renewal.
    let (cert, key) = (dir.path().join("admin.pem"), dir.path().join("admin.key"));
    std::fs::copy(&c.cert, &cert).unwrap();
    std::fs::copy(&c.key, &key).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t0ken-Qx81\n").unwrap();
    let pipeline = dir.path().join("endless.yaml");
    std::fs::write(
        &pipeline,
        ENDLESS.replace(
            "runtime: { workers: 2 }",
            &format!(
                "runtime:\n  workers: 2\n  admin: {{ token_file: {}, tls_cert: {}, tls_key: {} }}",
                token_file.display(),
                cert.display(),
                key.display()
            ),
        ),
    )
    .unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let url = format!("https://{addr}");
    let mut run = quiet_run(&pipeline, &addr);
    let started = Instant::now();
    while fetch(&format!("{url}/healthz"), None, Some(&c.ca)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "the endpoint did not come up");
        assert!(run.0.try_wait().unwrap().is_none(), "the run ended");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Probes stay open; everything else needs the token.
    assert_eq!(fetch(&format!("{url}/healthz"), None, Some(&c.ca)).unwrap(), (200, "ok\n".to_string()));
    assert_eq!(fetch(&format!("{url}/readyz"), None, Some(&c.ca)).unwrap().0, 200);
    for path in ["/stats", "/metrics", "/tap?stage=sel", "/"] {
        assert_eq!(fetch(&format!("{url}{path}"), None, Some(&c.ca)).unwrap().0, 401, "{path} without the token");
        assert_eq!(
            fetch(&format!("{url}{path}"), Some("t0ken-Qx8"), Some(&c.ca)).unwrap().0,
            401,
            "{path}, wrong token"
        );
    }
    let (code, stats) = fetch(&format!("{url}/stats"), Some("t0ken-Qx81"), Some(&c.ca)).unwrap();
    assert_eq!(code, 200);
    assert!(stats.contains("\"stages\""), "{stats}");
    // A client that does not trust the CA is refused by TLS itself.
    assert!(fetch(&format!("{url}/healthz"), None, Some(&c.other_ca)).is_err());
    // Plain HTTP on the TLS port gets nothing useful.
    assert!(http_get(port, "/healthz").map(|(code, _)| code != 200).unwrap_or(true));

    // dfp top and dfp tap over https with the token file.
    let top = dfp()
        .args(["top", "--addr", &url, "--iterations", "1", "--token-file", token_file.to_str().unwrap()])
        .args(["--ca-file", c.ca.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(top.status.success(), "{}", text(&top));
    assert!(String::from_utf8_lossy(&top.stdout).contains("workers 2"), "{}", text(&top));
    let tap = dfp()
        .args(["tap", "--addr", &url, "sel", "--limit", "3", "--token-file", token_file.to_str().unwrap()])
        .args(["--ca-file", c.ca.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(tap.status.success(), "{}", text(&tap));
    assert_eq!(String::from_utf8_lossy(&tap.stdout).lines().count(), 3, "{}", text(&tap));
    let no_token =
        dfp().args(["top", "--addr", &url, "--iterations", "1", "--ca-file", c.ca.to_str().unwrap()]).output().unwrap();
    assert!(!no_token.status.success());
    assert!(text(&no_token).contains("--token-file"), "{}", text(&no_token));

    // A renewed certificate (here from another CA) is served without a restart.
    std::fs::copy(&c.other_key, &key).unwrap();
    std::fs::copy(&c.other_cert, &cert).unwrap();
    let started = Instant::now();
    while fetch(&format!("{url}/healthz"), None, Some(&c.other_ca)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "the renewed certificate is not served");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(fetch(&format!("{url}/healthz"), None, Some(&c.ca)).is_err(), "the old one is gone");
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(run.0.id() as i32, libc::SIGTERM) };
    let _ = run.0.wait();
}

/// Threads of process `pid`.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn idle_connections_and_huge_requests_do_not_take_the_admin_endpoint_down() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("endless.yaml");
    std::fs::write(&pipeline, ENDLESS).unwrap();
    let port = free_port();
    let mut run = quiet_run(&pipeline, &format!("127.0.0.1:{port}"));
    wait_http_ok(port, "/healthz", "dfp", 60);
    let before = threads(run.0.id());
    // 2,000 connections that send nothing.
    let idle: Vec<TcpStream> = (0..2000).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let (code, body) = http_get(port, "/healthz").unwrap();
    let took = started.elapsed();
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    assert!(took < Duration::from_secs(1), "/healthz answered in {took:?} with 2,000 idle connections open");
    let during = threads(run.0.id());
    assert!(during <= before + 4, "threads stay bounded: {before} before, {during} with 2,000 connections");
    drop(idle);

    // A 100 MB request line: refused long before its end.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let mut sent = 0usize;
    let _ = s.write_all(b"GET /");
    while sent < 100 << 20 {
        if s.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    assert!(sent < 100 << 20, "the server stopped reading a 100 MB request line (sent {sent} bytes)");
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 4"), "{answer}");
    assert_eq!(http_get(port, "/healthz").unwrap().0, 200, "and it still serves");
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(run.0.id() as i32, libc::SIGTERM) };
    let _ = run.0.wait();
}
