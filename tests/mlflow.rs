//! The MLflow model registry against a real `mlflow server` (installed by `./dev setup` into
//! ~/.cache/dfp/mlflow-venv) started on a free loopback port with a SQLite or PostgreSQL backend store and
//! the artifact proxy.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use common::{dfp, free_port, http_put, start_moto, text};
use dfp_core::{Pipeline, RunOptions};
use serde_json::Value;

fn mlflow_bin() -> PathBuf {
    let bin = std::env::var_os("DFP_MLFLOW").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/dfp/mlflow-venv/bin/mlflow")
    });
    assert!(bin.exists(), "mlflow is not installed at {} (run ./dev setup, or set DFP_MLFLOW)", bin.display());
    bin
}

/// A running `mlflow server`; stopped (its whole process group) when dropped.
struct Mlflow {
    child: Child,
    port: u16,
    dir: PathBuf,
    backend: String,
    artifacts: Option<String>,
}

impl Mlflow {
    /// `artifacts`: `None` serves artifacts through the proxy from a local folder; `Some(s3://…)` makes that
    /// the artifact root, written and read by the clients themselves.
    fn spawn(dir: &Path, backend: &str, port: u16, artifacts: Option<&str>) -> Child {
        std::fs::create_dir_all(dir.join("artifacts")).unwrap();
        let log = std::fs::File::create(dir.join(format!("mlflow-{port}.log"))).unwrap();
        let mut cmd = Command::new(mlflow_bin());
        cmd.args(["server", "--host", "127.0.0.1", "--port", &port.to_string(), "--workers", "1"])
            .args(["--backend-store-uri", backend]);
        match artifacts {
            None => cmd.args(["--serve-artifacts", "--artifacts-destination"]).arg(dir.join("artifacts")),
            Some(root) => cmd.args(["--no-serve-artifacts", "--default-artifact-root", root]),
        };
        let child = cmd
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .process_group(0)
            .spawn()
            .expect("mlflow server starts");
        let started = Instant::now();
        while get(port, "/health").is_none() {
            if started.elapsed() > Duration::from_secs(120) {
                let log = std::fs::read_to_string(dir.join(format!("mlflow-{port}.log"))).unwrap_or_default();
                panic!("mlflow server did not come up on 127.0.0.1:{port} in 120 s:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        child
    }

    fn start(dir: &Path, backend: &str, port: u16) -> Mlflow {
        Mlflow::start_with(dir, backend, port, None)
    }

    /// A server with a SQLite store in `dir` on a free port (artifacts: see [`Mlflow::spawn`]).
    fn sqlite(dir: &Path, artifacts: Option<&str>) -> Mlflow {
        let backend = format!("sqlite:///{}/mlflow.db", dir.display());
        Mlflow::start_with(&dir.join("mlflow"), &backend, free_port(), artifacts)
    }

    fn start_with(dir: &Path, backend: &str, port: u16, artifacts: Option<&str>) -> Mlflow {
        let child = Mlflow::spawn(dir, backend, port, artifacts);
        Mlflow {
            child,
            port,
            dir: dir.to_path_buf(),
            backend: backend.to_string(),
            artifacts: artifacts.map(str::to_string),
        }
    }

    fn url(&self) -> String {
        format!("mlflow://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        // SAFETY: signalling the process group the server leads.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port, stores and artifacts.
    fn restart(&mut self) {
        self.stop();
        self.child = Mlflow::spawn(&self.dir, &self.backend, self.port, self.artifacts.as_deref());
    }
}

impl Drop for Mlflow {
    fn drop(&mut self) {
        self.stop();
    }
}

/// GET on the server; the body when the answer is 2xx.
fn get(port: u16, path: &str) -> Option<Value> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let resp = reqwest::Client::new().get(format!("http://127.0.0.1:{port}{path}")).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let bytes = resp.bytes().await.ok()?;
        Some(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    })
}

fn train(models: &str, dir: &Path, input: &str) {
    train_env(models, dir, input, &[]);
}

fn train_env(models: &str, dir: &Path, input: &str, env: &[(&str, String)]) {
    let out = dfp()
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(["run", "pipelines/azure-training.yaml", "--var", &format!("models={models}")])
        .args(["--var", "epochs=3", "--var", "min_history=100", "--var", &format!("input={input}")])
        .args(["--var", &format!("report={}", dir.join("report.jsonl").display())])
        .output()
        .unwrap();
    assert!(out.status.success(), "training into {models}: {}", text(&out));
}

/// id → (mean_abs_z, model) of every inference event.
fn score(models: &str, out_file: &Path) -> BTreeMap<String, (f64, String)> {
    score_env(models, out_file, &[])
}

/// (The disk cache of MLflow downloads goes to a `cache` folder beside `out_file`.)
fn score_env(models: &str, out_file: &Path, env: &[(&str, String)]) -> BTreeMap<String, (f64, String)> {
    let out = dfp()
        .env("XDG_CACHE_HOME", out_file.parent().unwrap().join("cache"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(["run", "pipelines/azure-inference.yaml", "--var", &format!("models={models}"), "--var", "threshold=-1"])
        .args(["--var", &format!("output={}", out_file.display())])
        .output()
        .unwrap();
    assert!(out.status.success(), "scoring with {models}: {}", text(&out));
    std::fs::read_to_string(out_file)
        .unwrap()
        .lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            (
                r["id"].as_str().unwrap().to_string(),
                (r["mean_abs_z"].as_f64().unwrap(), r["model_name"].as_str().unwrap().to_string()),
            )
        })
        .collect()
}

/// Checks, through MLflow's own REST API, the registered models, versions, alias, params and metrics.
fn check_registered(port: u16) -> Vec<String> {
    let found = get(port, "/api/2.0/mlflow/registered-models/search?max_results=1000").expect("search answers");
    let names: Vec<String> = found["registered_models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.contains(&"DFP-azure-=generic".to_string()), "{names:?}");
    assert!(names.contains(&"DFP-azure-=profiles".to_string()), "the profile set is registered too: {names:?}");
    let users: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("DFP-azure-") && !n.ends_with("=generic") && !n.ends_with("=profiles"))
        .collect();
    assert!(users.len() >= 3, "per-user models: {names:?}");
    for name in names.iter().filter(|n| !n.ends_with("=profiles")) {
        let q = name.replace('@', "%40");
        let alias = get(port, &format!("/api/2.0/mlflow/registered-models/alias?name={q}&alias=production"))
            .unwrap_or_else(|| panic!("{name} has the production alias"));
        let mv = &alias["model_version"];
        assert_eq!(mv["version"], "1", "{name}");
        let tags: BTreeMap<&str, &str> = mv["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["key"].as_str().unwrap(), t["value"].as_str().unwrap()))
            .collect();
        assert!(
            tags.contains_key("start") && tags.contains_key("end") && tags.contains_key("rows"),
            "{name}: {tags:?}"
        );
        let run = get(port, &format!("/api/2.0/mlflow/runs/get?run_id={}", mv["run_id"].as_str().unwrap())).unwrap();
        assert_eq!(run["run"]["info"]["status"], "FINISHED");
        let params: BTreeMap<&str, &str> = run["run"]["data"]["params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["key"].as_str().unwrap(), p["value"].as_str().unwrap()))
            .collect();
        for key in ["epochs_run", "learning_rate", "batch_size", "train_start", "train_end", "rows", "features"] {
            assert!(params.contains_key(key), "{name}: param {key} missing from {params:?}");
        }
        assert_eq!(params["rows"], tags["rows"]);
        assert!(params["features"].contains("appDisplayName"));
        let metrics: Vec<&str> =
            run["run"]["data"]["metrics"].as_array().unwrap().iter().map(|m| m["key"].as_str().unwrap()).collect();
        assert!(metrics.contains(&"train_loss") && metrics.contains(&"validation_loss"), "{name}: {metrics:?}");
        assert!(metrics.iter().any(|m| m.starts_with("loss_center.")), "{name}: loss statistics");
    }
    names
}

#[test]
fn training_and_scoring_through_mlflow_match_the_local_registry() {
    let _serial = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Mlflow::sqlite(dir.path(), None);
    train(&server.url(), dir.path(), "examples/data/azure/train");
    let names = check_registered(server.port);
    // `dfp models list` reads the same registry.
    let out = dfp().args(["models", "list", "--registry", &server.url()]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    for n in &names {
        assert!(String::from_utf8_lossy(&out.stdout).contains(n.as_str()), "{n} listed");
    }
    // The same training into a local registry gives the same scores.
    let local = dir.path().join("local");
    train(local.to_str().unwrap(), dir.path(), "examples/data/azure/train");
    let via_mlflow = score(&server.url(), &dir.path().join("mlflow-scored.jsonl"));
    let via_local = score(local.to_str().unwrap(), &dir.path().join("local-scored.jsonl"));
    assert!(via_mlflow.len() > 500);
    assert_eq!(via_mlflow, via_local, "MLflow and local registries serve the same models");
    // A new scoring process while MLflow is down serves the versions it downloaded before (disk cache).
    server.stop();
    let offline = score(&server.url(), &dir.path().join("offline-scored.jsonl"));
    // The same models and profiles; rows may be batched differently (registry retries change the timing),
    // which moves a float in the last digits.
    assert_eq!(offline.len(), via_local.len());
    for (id, (z, model)) in &via_local {
        let (got, got_model) = &offline[id];
        assert_eq!(got_model, model, "{id}: scored from the disk cache with MLflow down");
        assert!((got - z).abs() <= 1e-5 * z.abs().max(1.0), "{id}: {got} offline, {z} from the local registry");
    }
    server.restart();
    // A second training moves the alias to version 2.
    train(&server.url(), dir.path(), "examples/data/azure/train");
    let alias =
        get(server.port, "/api/2.0/mlflow/registered-models/alias?name=DFP-azure-%3Dgeneric&alias=production").unwrap();
    assert_eq!(alias["model_version"]["version"], "2");
}

/// Featured rows of the shipped Azure inference sample.
fn inference_features() -> Vec<RecordBatch> {
    dfp_stages::link();
    let yaml = format!(
        r#"
version: 1
stages:
  logs:     {{ type: file-source, path: "{}/examples/data/azure/infer", raw: true }}
  events:   {{ type: normalize-azure, inputs: [logs] }}
  features: {{ type: features, inputs: [events], family: azure }}
  out:      {{ type: embedded-output, inputs: [features] }}
"#,
        env!("CARGO_MANIFEST_DIR")
    );
    let running = Pipeline::from_yaml_str(&yaml, "features.yaml", &[]).unwrap().spawn(RunOptions::default()).unwrap();
    let out = running.output().clone();
    running.finish().unwrap();
    out.try_iter().map(|b| b.data).collect()
}

#[test]
fn scoring_goes_on_with_cached_models_while_mlflow_is_down() {
    let _serial = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Mlflow::sqlite(dir.path(), None);
    train(&server.url(), dir.path(), "examples/data/azure/train");
    let batches = inference_features();
    let all = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let n = all.num_rows();
    let parts = [all.slice(0, n / 3), all.slice(n / 3, n / 3), all.slice(2 * (n / 3), n - 2 * (n / 3))];
    // cache_ttl_secs 0: every batch asks MLflow again, so an outage is noticed at once.
    let yaml = format!(
        r#"
version: 1
stages:
  in:     {{ type: embedded-input }}
  scored: {{ type: score, inputs: [in], registry: "{}", family: azure, features: {{ novelty: true, log_counters: true }}, cache_ttl_secs: 0, gather_ms: 10, mlflow: {{ attempts: 1, timeout_secs: 2, cache_dir: "{}" }} }}
  out:    {{ type: embedded-output, inputs: [scored] }}
"#,
        server.url(),
        dir.path().join("cache").display()
    );
    let running = Pipeline::from_yaml_str(&yaml, "score.yaml", &[]).unwrap().spawn(RunOptions::default()).unwrap();
    // Rows scored, and the model versions they were scored with.
    let collect = |want: usize| -> (usize, std::collections::BTreeSet<u64>) {
        let mut got = 0;
        let mut versions = std::collections::BTreeSet::new();
        while got < want {
            let b = running.output().recv_timeout(Duration::from_secs(60)).expect("scored rows keep coming");
            let kinds = b.data.column_by_name("model_kind").unwrap().as_string::<i32>();
            assert!(kinds.iter().all(|k| matches!(k, Some("user") | Some("generic"))));
            let v = b.data.column_by_name("model_version").unwrap().as_primitive::<arrow::datatypes::UInt64Type>();
            versions.extend(v.iter().flatten());
            got += b.data.num_rows();
        }
        (got, versions)
    };
    running.input().push_batch(parts[0].clone()).unwrap();
    assert_eq!(collect(parts[0].num_rows()), (parts[0].num_rows(), [1].into()));
    server.stop();
    running.input().push_batch(parts[1].clone()).unwrap();
    assert_eq!(
        collect(parts[1].num_rows()),
        (parts[1].num_rows(), [1].into()),
        "scored from the cache while MLflow is down"
    );
    // MLflow comes back and a retraining publishes version 2: the running pipeline picks it up.
    server.restart();
    train(&server.url(), dir.path(), "examples/data/azure/train");
    running.input().push_batch(parts[2].clone()).unwrap();
    assert_eq!(collect(parts[2].num_rows()), (parts[2].num_rows(), [2].into()), "MLflow picked up again");
    running.finish().unwrap();
}

#[test]
fn mlflow_with_a_postgresql_backend_store() {
    let _serial = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(dir.path());
    let server = Mlflow::start(&dir.path().join("mlflow"), &pg.uri(), free_port());
    train(&server.url(), dir.path(), "examples/data/azure/train");
    check_registered(server.port);
}

/// A throw-away PostgreSQL cluster on a free loopback port (Debian's PostgreSQL binaries).
struct Postgres {
    data: PathBuf,
    port: u16,
    bin: PathBuf,
}

impl Postgres {
    fn start(dir: &Path) -> Postgres {
        let bin = ["17", "16", "15"]
            .iter()
            .map(|v| PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")))
            .find(|d| d.join("initdb").exists() && d.join("createdb").exists())
            .expect("PostgreSQL is not installed (run ./dev setup: it installs Debian's postgresql)");
        let data = dir.join("pg");
        let port = free_port();
        let run = |cmd: &mut Command| {
            let out = cmd.output().expect("PostgreSQL tool runs");
            assert!(out.status.success(), "{cmd:?}: {}", text(&out));
        };
        // SAFETY: geteuid has no preconditions.
        let as_postgres_user = unsafe { libc::geteuid() } == 0;
        let wrap = |tool: &str| -> Command {
            if as_postgres_user {
                // initdb and postgres refuse to run as root: run them as the `postgres` user.
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
                c
            } else {
                Command::new(bin.join(tool))
            }
        };
        std::fs::create_dir_all(&data).unwrap();
        if as_postgres_user {
            run(Command::new("chown").args(["-R", "postgres"]).arg(dir));
        }
        run(wrap("initdb").args(["-A", "trust", "-U", "dfp", "-D"]).arg(&data));
        run(wrap("pg_ctl").arg("-D").arg(&data).args(["-l"]).arg(data.join("log")).args([
            "-o",
            &format!("-p {port} -k {} -c listen_addresses=127.0.0.1", data.display()),
            "-w",
            "start",
        ]));
        run(wrap("createdb").args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "dfp", "mlflow"]));
        Postgres { data, port, bin }
    }

    fn uri(&self) -> String {
        format!("postgresql+psycopg2://dfp@127.0.0.1:{}/mlflow", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SAFETY: geteuid has no preconditions.
        let mut c = if unsafe { libc::geteuid() } == 0 {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = c.arg("-D").arg(&self.data).args(["-m", "immediate", "stop"]).output();
    }
}

#[test]
fn training_data_from_s3_and_an_mlflow_artifact_store_on_s3() {
    let _serial = common::one_at_a_time();
    use object_store::{ObjectStore, ObjectStoreExt};
    let (_moto, port) = start_moto();
    http_put(port, "/dfp");
    let endpoint = format!("http://127.0.0.1:{port}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = common::moto_store(port, "dfp");
    let train_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/azure/train");
    for entry in std::fs::read_dir(&train_dir).unwrap() {
        let path = entry.unwrap().path();
        let key = format!("logs/train/{}", path.file_name().unwrap().to_str().unwrap());
        rt.block_on(store.put(&object_store::path::Path::from(key), std::fs::read(&path).unwrap().into())).unwrap();
    }
    let env = [
        ("AWS_ENDPOINT_URL", endpoint.clone()),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("AWS_ACCESS_KEY_ID", "test".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let server = Mlflow::sqlite(dir.path(), Some("s3://dfp/mlflow"));
    train_env(&server.url(), dir.path(), "s3://dfp/logs/train", &env);
    check_registered(server.port);
    // The artifacts are in the bucket, written by dfp itself.
    let listed: Vec<String> = rt.block_on(async {
        use futures_util::TryStreamExt;
        store
            .list(Some(&object_store::path::Path::from("mlflow")))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap()
    });
    assert!(listed.iter().any(|p| p.ends_with("/model/model.safetensors")), "{listed:?}");
    assert!(listed.iter().any(|p| p.ends_with("/model/manifest.json")), "{listed:?}");
    // Scores equal those of a local registry trained on the local copy of the files.
    let local = dir.path().join("local");
    train(local.to_str().unwrap(), dir.path(), train_dir.to_str().unwrap());
    let via_mlflow = score_env(&server.url(), &dir.path().join("mlflow-scored.jsonl"), &env);
    let via_local = score(local.to_str().unwrap(), &dir.path().join("local-scored.jsonl"));
    assert_eq!(via_mlflow, via_local);
}

#[test]
fn training_fails_clearly_when_mlflow_cannot_be_reached() {
    let _serial = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = dfp()
        .args(["run", "pipelines/azure-training.yaml", "--var", &format!("models=mlflow://127.0.0.1:{port}")])
        .args(["--var", "epochs=1", "--var", "min_history=100"])
        .args(["--var", &format!("report={}", dir.path().join("report.jsonl").display())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains(&format!("mlflow://127.0.0.1:{port}")) && msg.contains("failed after 4 attempt(s)"), "{msg}");
}
