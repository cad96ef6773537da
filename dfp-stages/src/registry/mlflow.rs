//! The MLflow model registry, over MLflow's REST API (no Python at run time).
//!
//! `registry: mlflow://HOST:PORT` (or `mlflow+https://HOST[:PORT][/PATH]`). Publishing a model version:
//! experiment (per model, name from a template) → run with params and per-epoch metrics → artifact files
//! (`model/model.safetensors`, `model/manifest.json`) through the artifact proxy (`mlflow-artifacts:`), or
//! straight to the artifact store when it is `s3://` → run FINISHED → registered model (created if absent)
//! → model version from the run's artifact folder, tagged `start`, `end`, `rows` → the alias (default
//! `production`) moved to it. Readers follow the alias, so a version is visible only once complete; a
//! version whose publication fails half-way is deleted again and its run marked FAILED.
//!
//! Authentication: a bearer token (`token`, else `$MLFLOW_TRACKING_TOKEN`) or basic auth (`username` /
//! `password`, else `$MLFLOW_TRACKING_USERNAME` / `$MLFLOW_TRACKING_PASSWORD`). Credentials are never logged.
//! Connection failures, 5xx and 429 answers are retried with exponential backoff.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dfp_core::models::{ListedModel, ModelRegistry, RegistryError};
use object_store::ObjectStoreExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::model::Manifest;
use crate::store::{io_runtime, parse_s3, S3Options, S3Url};

/// MLflow settings of the `train` and `score` stages (used when `registry` is an `mlflow://` URL). `Debug`
/// shows `***` for the token and the password.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MlflowOptions {
    /// The alias that marks the version to serve (moved by training, followed by scoring).
    #[serde(default = "default_alias")]
    pub alias: String,
    /// Experiment name per model; `{source}` and `{model}` are replaced.
    #[serde(default = "default_experiment")]
    pub experiment: String,
    /// Bearer token (default: `$MLFLOW_TRACKING_TOKEN`).
    #[serde(default)]
    pub token: Option<String>,
    /// Basic-auth user (default: `$MLFLOW_TRACKING_USERNAME`).
    #[serde(default)]
    pub username: Option<String>,
    /// Basic-auth password (default: `$MLFLOW_TRACKING_PASSWORD`).
    #[serde(default)]
    pub password: Option<String>,
    /// Attempts per request when MLflow is unreachable or answers 5xx/429 (backoff 0.25 s, 0.5 s, …).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Timeout of one request, seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
    /// Folder where downloaded model files are kept (versions never change, so a file is downloaded once),
    /// and served from when MLflow cannot be reached at start-up. Default:
    /// `$XDG_CACHE_HOME/dfp/mlflow/HOST_PORT` (`~/.cache/…`); `""` turns the disk cache off.
    #[serde(default)]
    pub cache_dir: Option<String>,
}

impl std::fmt::Debug for MlflowOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "***");
        f.debug_struct("MlflowOptions")
            .field("alias", &self.alias)
            .field("experiment", &self.experiment)
            .field("token", &hidden(&self.token))
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("attempts", &self.attempts)
            .field("timeout_secs", &self.timeout_secs)
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

fn default_alias() -> String {
    "production".into()
}
fn default_experiment() -> String {
    "dfp/{source}/training/{model}".into()
}
fn default_attempts() -> u32 {
    4
}
fn default_timeout() -> f64 {
    30.0
}

impl Default for MlflowOptions {
    fn default() -> Self {
        MlflowOptions {
            alias: default_alias(),
            experiment: default_experiment(),
            token: None,
            username: None,
            password: None,
            attempts: default_attempts(),
            timeout_secs: default_timeout(),
            cache_dir: None,
        }
    }
}

/// A registry on an MLflow tracking server.
pub struct MlflowRegistry {
    location: String,
    base: String,
    options: MlflowOptions,
    auth: Option<String>,
    client: reqwest::Client,
    s3: S3Options,
    runtime: tokio::runtime::Runtime,
    cache: Option<std::path::PathBuf>,
    /// Set while MLflow cannot be reached and cached versions are served (logged once per outage).
    degraded: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for MlflowRegistry {
    // Credentials are left out on purpose.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlflowRegistry").field("location", &self.location).finish_non_exhaustive()
    }
}

/// An MLflow answer that is not a success.
struct Failure {
    status: u16,
    code: String,
    message: String,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// An exclusive lock on `dir` (a cached version's folder), held until the returned file is dropped: a lock
/// file beside the folder, so that clearing the folder leaves the lock in place.
fn lock_beside(dir: &std::path::Path) -> std::io::Result<std::fs::File> {
    let parent = dir.parent().ok_or_else(|| std::io::Error::other("a cache folder without a parent"))?;
    std::fs::create_dir_all(parent)?;
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(parent.join(name))?;
    file.lock()?;
    Ok(file)
}

/// Writes `dir/file` through a temporary file and a rename: a reader sees the old file, none, or all of the new.
fn write_atomically(dir: &std::path::Path, file: &str, bytes: &[u8]) -> std::io::Result<()> {
    // Temporary names differ per process and call: concurrent writers never share one.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{file}.{}.{n}.tmp", std::process::id()));
    std::fs::create_dir_all(dir)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(file)).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// True for the `mlflow://` and `mlflow+https://` registry URLs.
pub fn is_mlflow(location: &str) -> bool {
    location.starts_with("mlflow://")
        || location.starts_with("mlflow+https://")
        || location.starts_with("mlflow+http://")
}

pub(crate) fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Percent-encodes a query value.
fn q(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl MlflowRegistry {
    /// Connects to the server named by `location` (nothing is sent until the first call).
    pub fn open(location: &str, options: &MlflowOptions, s3: &S3Options) -> Result<Self, RegistryError> {
        let err = |m: String| RegistryError { location: location.to_string(), message: m };
        let base = if let Some(rest) = location.strip_prefix("mlflow://") {
            format!("http://{}", rest.trim_end_matches('/'))
        } else if let Some(rest) = location.strip_prefix("mlflow+https://") {
            format!("https://{}", rest.trim_end_matches('/'))
        } else if let Some(rest) = location.strip_prefix("mlflow+http://") {
            format!("http://{}", rest.trim_end_matches('/'))
        } else {
            return Err(err("not an mlflow:// URL".into()));
        };
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let token = options.token.clone().or_else(|| env("MLFLOW_TRACKING_TOKEN"));
        let user = options.username.clone().or_else(|| env("MLFLOW_TRACKING_USERNAME"));
        let password = options.password.clone().or_else(|| env("MLFLOW_TRACKING_PASSWORD"));
        let auth = match (token, user) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            (None, Some(u)) => {
                Some(format!("Basic {}", base64(format!("{u}:{}", password.unwrap_or_default()).as_bytes())))
            }
            (None, None) => None,
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(options.timeout_secs.max(0.1)))
            .build()
            .map_err(|e| err(format!("cannot build the HTTP client: {e}")))?;
        let runtime = io_runtime().map_err(|e| err(format!("cannot start the I/O runtime: {e}")))?;
        let cache = match options.cache_dir.as_deref() {
            Some("") => None,
            Some(dir) => Some(std::path::PathBuf::from(dir)),
            None => {
                let root = std::env::var_os("XDG_CACHE_HOME")
                    .map(std::path::PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")));
                let server: String = base
                    .split("://")
                    .nth(1)
                    .unwrap_or(&base)
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
                    .collect();
                root.map(|r| r.join("dfp").join("mlflow").join(server))
            }
        };
        Ok(MlflowRegistry {
            location: location.to_string(),
            base,
            options: options.clone(),
            auth,
            client,
            s3: s3.clone(),
            runtime,
            cache,
            degraded: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn err(&self, message: impl Into<String>) -> RegistryError {
        RegistryError { location: self.location.clone(), message: message.into() }
    }

    /// One HTTP exchange with retries on connection errors, 5xx and 429.
    fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Vec<u8>>,
        json: bool,
    ) -> Result<(u16, Vec<u8>), RegistryError> {
        let attempts = self.options.attempts.max(1);
        let mut last = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(250 << (attempt - 1).min(6)));
            }
            let mut req = self.client.request(method.clone(), url);
            if let Some(a) = &self.auth {
                req = req.header("Authorization", a);
            }
            if let Some(b) = &body {
                let kind = if json { "application/json" } else { "application/octet-stream" };
                req = req.header("Content-Type", kind).body(b.clone());
            }
            let result = self.runtime.block_on(async {
                let resp = req.send().await?;
                let status = resp.status().as_u16();
                let bytes = resp.bytes().await?;
                Ok::<_, reqwest::Error>((status, bytes.to_vec()))
            });
            match result {
                Ok((status, bytes)) if status >= 500 || status == 429 => {
                    last = format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&bytes).chars().take(300).collect::<String>()
                    );
                }
                Ok(ok) => return Ok(ok),
                Err(e) => last = format!("{e}"),
            }
            tracing::debug!(registry = %self.location, attempt, "MLflow request failed, retrying: {last}");
        }
        Err(self.err(format!(
            "{} {} failed after {attempts} attempt(s): {last}",
            method,
            url.split('?').next().unwrap_or(url)
        )))
    }

    /// Calls `api/2.0/mlflow/<path>`; an MLflow error answer is `Ok(Err(..))`.
    fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Result<Value, Failure>, RegistryError> {
        let url = format!("{}/api/2.0/mlflow/{path}", self.base);
        let (status, bytes) = self.send(method, &url, body.map(|b| b.to_string().into_bytes()), true)?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(Ok(value));
        }
        Ok(Err(Failure {
            status,
            code: value["error_code"].as_str().unwrap_or_default().to_string(),
            message: value["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(300).collect()),
        }))
    }

    fn must(&self, what: &str, r: Result<Value, Failure>) -> Result<Value, RegistryError> {
        r.map_err(|f| self.err(format!("{what}: HTTP {} {} {}", f.status, f.code, f.message)))
    }

    fn get(&self, path: &str) -> Result<Result<Value, Failure>, RegistryError> {
        self.api(reqwest::Method::GET, path, None)
    }

    fn post(&self, path: &str, body: Value) -> Result<Result<Value, Failure>, RegistryError> {
        self.api(reqwest::Method::POST, path, Some(body))
    }

    fn experiment_id(&self, name: &str) -> Result<String, RegistryError> {
        let source = name.strip_prefix("DFP-").and_then(|r| r.split('-').next()).unwrap_or("dfp");
        let experiment = self.options.experiment.replace("{source}", source).replace("{model}", name);
        for _ in 0..2 {
            match self.get(&format!("experiments/get-by-name?experiment_name={}", q(&experiment)))? {
                Ok(v) => {
                    if let Some(id) = v["experiment"]["experiment_id"].as_str() {
                        return Ok(id.to_string());
                    }
                }
                Err(f) if f.code == "RESOURCE_DOES_NOT_EXIST" => {}
                Err(f) => return Err(self.err(format!("experiment {experiment}: HTTP {} {}", f.status, f.message))),
            }
            match self.post(
                "experiments/create",
                json!({ "name": experiment, "tags": [{"key": "dfp.source", "value": source}] }),
            )? {
                Ok(v) => return Ok(v["experiment_id"].as_str().unwrap_or_default().to_string()),
                // Created by another worker meanwhile: read it again.
                Err(f) if f.code == "RESOURCE_ALREADY_EXISTS" => continue,
                Err(f) => {
                    return Err(self.err(format!("creating experiment {experiment}: HTTP {} {}", f.status, f.message)))
                }
            }
        }
        Err(self.err(format!("experiment {experiment} could not be created or found")))
    }

    /// Where the artifacts of a run live (`mlflow-artifacts:/…`, `s3://…`, a path) → writes one file.
    fn put_artifact(&self, artifact_uri: &str, file: &str, bytes: &[u8]) -> Result<(), RegistryError> {
        if let Some(path) = artifact_uri.strip_prefix("mlflow-artifacts:") {
            let path = path.trim_start_matches('/');
            let url = format!("{}/api/2.0/mlflow-artifacts/artifacts/{path}/{file}", self.base);
            let (status, body) = self.send(reqwest::Method::PUT, &url, Some(bytes.to_vec()), false)?;
            if !(200..300).contains(&status) {
                return Err(self.err(format!("uploading {file}: HTTP {status} {}", String::from_utf8_lossy(&body))));
            }
            Ok(())
        } else if let Some(S3Url { bucket, key }) = parse_s3(artifact_uri) {
            let store = self.s3.build(bucket).map_err(|e| self.err(e.to_string()))?;
            let path = object_store::path::Path::from(format!("{}/{file}", key.trim_end_matches('/')));
            self.runtime
                .block_on(store.put(&path, object_store::PutPayload::from(bytes.to_vec())))
                .map_err(|e| self.err(format!("writing s3://{bucket}/{path}: {e}")))?;
            Ok(())
        } else {
            let dir = std::path::PathBuf::from(artifact_uri.strip_prefix("file://").unwrap_or(artifact_uri));
            std::fs::create_dir_all(&dir).map_err(|e| self.err(format!("{}: {e}", dir.display())))?;
            std::fs::write(dir.join(file), bytes).map_err(|e| self.err(format!("{}: {e}", dir.join(file).display())))
        }
    }

    fn get_artifact(&self, artifact_uri: &str, file: &str) -> Result<Vec<u8>, RegistryError> {
        if let Some(path) = artifact_uri.strip_prefix("mlflow-artifacts:") {
            let path = path.trim_start_matches('/');
            let url = format!("{}/api/2.0/mlflow-artifacts/artifacts/{path}/{file}", self.base);
            let (status, body) = self.send(reqwest::Method::GET, &url, None, false)?;
            if !(200..300).contains(&status) {
                return Err(self.err(format!("downloading {path}/{file}: HTTP {status}")));
            }
            Ok(body)
        } else if let Some(S3Url { bucket, key }) = parse_s3(artifact_uri) {
            let store = self.s3.build(bucket).map_err(|e| self.err(e.to_string()))?;
            let path = object_store::path::Path::from(format!("{}/{file}", key.trim_end_matches('/')));
            self.runtime
                .block_on(async { store.get(&path).await?.bytes().await })
                .map(|b| b.to_vec())
                .map_err(|e| self.err(format!("reading s3://{bucket}/{path}: {e}")))
        } else {
            let dir = std::path::PathBuf::from(artifact_uri.strip_prefix("file://").unwrap_or(artifact_uri));
            std::fs::read(dir.join(file)).map_err(|e| self.err(format!("{}: {e}", dir.join(file).display())))
        }
    }

    fn cached_path(&self, name: &str, version: u64, file: &str) -> Option<std::path::PathBuf> {
        self.cache.as_ref().map(|c| c.join(name).join(format!("v{version:06}")).join(file))
    }

    /// The newest version of `name` in the disk cache that can be used: both model files, or the manifest
    /// of a profile set (whose shards are cached as they are read).
    fn newest_cached(&self, name: &str) -> Option<u64> {
        let dir = self.cache.as_ref()?.join(name);
        let usable = |p: &std::path::Path| {
            let manifest = p.join(crate::model::artifact::MANIFEST);
            let model = manifest.exists() && p.join(crate::model::artifact::WEIGHTS).exists();
            model
                || std::fs::read(&manifest)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .is_some_and(|m| m["kind"] == crate::profile::SET_KIND)
        };
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .filter(|e| usable(&e.path()))
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix('v')).and_then(|v| v.parse().ok()))
            .max()
    }

    /// Params and metrics of a run, from the model's manifest.
    fn log_training(&self, run_id: &str, manifest: &Manifest) -> Result<(), RegistryError> {
        let t = &manifest.training;
        let h = &manifest.hyper_parameters;
        let features: Vec<&str> = manifest.features.iter().map(|f| f.def.name.as_str()).collect();
        let mut features = features.join(",");
        features.truncate(6000);
        let params = [
            ("epochs_run", t.epochs_run.to_string()),
            ("epochs", h.epochs.to_string()),
            ("learning_rate", h.lr.to_string()),
            ("batch_size", h.batch_size.to_string()),
            ("train_start", crate::time::format_micros(t.start_micros)),
            ("train_end", crate::time::format_micros(t.end_micros)),
            ("rows", t.rows.to_string()),
            ("validation_rows", t.validation_rows.to_string()),
            ("features", features),
            ("dfp_version", manifest.dfp_version.clone()),
        ];
        let now = now_ms();
        let mut metrics = Vec::new();
        for (epoch, (train, validation)) in t.loss_history.iter().enumerate() {
            metrics.push(json!({"key": "train_loss", "value": train, "timestamp": now, "step": epoch + 1}));
            metrics.push(json!({"key": "validation_loss", "value": validation, "timestamp": now, "step": epoch + 1}));
        }
        for (f, (c, s)) in
            manifest.features.iter().zip(manifest.loss_stats.center.iter().zip(&manifest.loss_stats.scale))
        {
            metrics
                .push(json!({"key": format!("loss_center.{}", f.def.name), "value": c, "timestamp": now, "step": 0}));
            metrics.push(json!({"key": format!("loss_scale.{}", f.def.name), "value": s, "timestamp": now, "step": 0}));
        }
        metrics.push(json!({"key": "training_seconds", "value": t.seconds, "timestamp": now, "step": 0}));
        let params: Vec<Value> = params.iter().map(|(k, v)| json!({"key": k, "value": v})).collect();
        for (i, chunk) in metrics.chunks(900).enumerate() {
            let body = if i == 0 {
                json!({"run_id": run_id, "params": params, "metrics": chunk})
            } else {
                json!({"run_id": run_id, "metrics": chunk})
            };
            let r = self.post("runs/log-batch", body)?;
            self.must("logging params and metrics", r)?;
        }
        Ok(())
    }

    fn publish_in_run(
        &self,
        name: &str,
        files: &[(&str, Vec<u8>)],
        run_id: &str,
        artifact_uri: &str,
    ) -> Result<u64, RegistryError> {
        let manifest = files
            .iter()
            .find(|(f, _)| *f == crate::model::artifact::MANIFEST)
            .and_then(|(_, b)| serde_json::from_slice::<Manifest>(b).ok());
        if let Some(m) = &manifest {
            self.log_training(run_id, m)?;
        }
        let model_dir = format!("{}/model", artifact_uri.trim_end_matches('/'));
        for (file, bytes) in files {
            self.put_artifact(&model_dir, file, bytes)?;
        }
        let r = self.post("runs/update", json!({"run_id": run_id, "status": "FINISHED", "end_time": now_ms()}))?;
        self.must("finishing the run", r)?;
        match self.post("registered-models/create", json!({"name": name}))? {
            Ok(_) => {}
            Err(f) if f.code == "RESOURCE_ALREADY_EXISTS" => {}
            Err(f) => return Err(self.err(format!("registering {name}: HTTP {} {}", f.status, f.message))),
        }
        let mut tags = Vec::new();
        if let Some(m) = &manifest {
            tags.push(json!({"key": "start", "value": crate::time::format_micros(m.training.start_micros)}));
            tags.push(json!({"key": "end", "value": crate::time::format_micros(m.training.end_micros)}));
            tags.push(json!({"key": "rows", "value": m.training.rows.to_string()}));
        }
        let r = self.post(
            "model-versions/create",
            json!({"name": name, "source": model_dir, "run_id": run_id, "tags": tags}),
        )?;
        let created = self.must("creating the model version", r)?;
        let version: u64 = created["model_version"]["version"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| self.err(format!("{name}: the new model version has no number")))?;
        // Until the alias moves, readers keep the previous version: undo the version if that fails.
        let alias = self.post(
            "registered-models/alias",
            json!({"name": name, "alias": self.options.alias, "version": version.to_string()}),
        );
        match alias {
            Ok(Ok(_)) => Ok(version),
            other => {
                let _ = self.api(
                    reqwest::Method::DELETE,
                    "model-versions/delete",
                    Some(json!({"name": name, "version": version.to_string()})),
                );
                Err(match other {
                    Ok(Err(f)) => self
                        .err(format!("moving alias {} of {name}: HTTP {} {}", self.options.alias, f.status, f.message)),
                    Err(e) => e,
                    Ok(Ok(_)) => self.err("unreachable"),
                })
            }
        }
    }
}

impl ModelRegistry for MlflowRegistry {
    fn location(&self) -> &str {
        &self.location
    }

    fn publish(&self, name: &str, files: &[(&str, Vec<u8>)]) -> Result<u64, RegistryError> {
        let experiment_id = self.experiment_id(name)?;
        let r = self.post(
            "runs/create",
            json!({"experiment_id": experiment_id, "run_name": name, "start_time": now_ms(),
                   "tags": [{"key": "dfp.model", "value": name}]}),
        )?;
        let run = self.must("creating a run", r)?;
        let run_id = run["run"]["info"]["run_id"].as_str().unwrap_or_default().to_string();
        let artifact_uri = run["run"]["info"]["artifact_uri"].as_str().unwrap_or_default().to_string();
        if run_id.is_empty() || artifact_uri.is_empty() {
            return Err(self.err("MLflow created a run without an id or artifact location"));
        }
        match self.publish_in_run(name, files, &run_id, &artifact_uri) {
            Ok(v) => Ok(v),
            Err(e) => {
                let _ = self.post("runs/update", json!({"run_id": run_id, "status": "FAILED", "end_time": now_ms()}));
                Err(e)
            }
        }
    }

    fn latest(&self, name: &str) -> Result<Option<u64>, RegistryError> {
        use std::sync::atomic::Ordering;
        match self.latest_online(name) {
            Ok(found) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!(registry = %self.location, "MLflow reachable again");
                }
                Ok(found)
            }
            Err(e) => match self.newest_cached(name) {
                Some(v) => {
                    if !self.degraded.swap(true, Ordering::Relaxed) {
                        tracing::warn!(registry = %self.location, "MLflow unreachable; serving cached model versions: {e}");
                    }
                    Ok(Some(v))
                }
                None => Err(e),
            },
        }
    }

    fn fetch(&self, name: &str, version: u64, file: &str) -> Result<Vec<u8>, RegistryError> {
        let cached = self.cached_path(name, version, file);
        let r = match self.get(&format!("model-versions/get-download-uri?name={}&version={version}", q(name))) {
            Ok(r) => r,
            // Offline: the cached copy, if there is one.
            Err(e) => return cached.and_then(|p| std::fs::read(p).ok()).ok_or(e),
        };
        let v = self.must(&format!("{name} v{version}"), r)?;
        let uri =
            v["artifact_uri"].as_str().ok_or_else(|| self.err(format!("{name} v{version}: no artifact location")))?;
        let Some(path) = cached else { return self.get_artifact(uri, file) };
        let Some(dir) = path.parent() else { return self.get_artifact(uri, file) };
        // Workers of one process, and processes sharing the cache, fetch the same version at once (every worker
        // loads the generic model and the profile set): checking `.source`, clearing another location's files
        // and keeping the download happen under a lock on the version, so that no fetcher removes what another
        // has just kept. The others wait for the download and read the kept copy.
        let _lock = match lock_beside(dir) {
            Ok(lock) => lock,
            Err(e) => {
                tracing::debug!(registry = %self.location, "cannot lock {}: {e}; not caching", dir.display());
                return self.get_artifact(uri, file);
            }
        };
        // The cached copy counts only if it came from the same artifact location (a server rebuilt at the
        // same address numbers its versions anew).
        let source = dir.join(".source");
        let recorded = std::fs::read_to_string(&source).ok();
        let same_source = recorded.as_deref() == Some(uri);
        if same_source {
            if let Ok(bytes) = std::fs::read(&path) {
                return Ok(bytes);
            }
        }
        let bytes = self.get_artifact(uri, file)?;
        if !same_source {
            if recorded.is_some() {
                let _ = std::fs::remove_dir_all(dir);
            }
            if let Err(e) = write_atomically(dir, ".source", uri.as_bytes()) {
                tracing::debug!(registry = %self.location, "cannot cache {}: {e}", source.display());
                return Ok(bytes);
            }
        }
        if let Err(e) = write_atomically(dir, file, &bytes) {
            tracing::debug!(registry = %self.location, "cannot cache {}: {e}", path.display());
        }
        Ok(bytes)
    }

    fn list(&self) -> Result<Vec<ListedModel>, RegistryError> {
        self.list_online()
    }
}

impl MlflowRegistry {
    fn latest_online(&self, name: &str) -> Result<Option<u64>, RegistryError> {
        let path = format!("registered-models/alias?name={}&alias={}", q(name), q(&self.options.alias));
        match self.get(&path)? {
            Ok(v) => Ok(v["model_version"]["version"].as_str().and_then(|v| v.parse().ok())),
            // No such model, or a model without the alias (registered by hand, say): its newest version.
            Err(f) if f.code == "RESOURCE_DOES_NOT_EXIST" || f.code == "INVALID_PARAMETER_VALUE" || f.status == 404 => {
                match self.get(&format!("registered-models/get?name={}", q(name)))? {
                    Ok(v) => Ok(v["registered_model"]["latest_versions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|m| m["version"].as_str().and_then(|v| v.parse::<u64>().ok()))
                        .max()),
                    Err(f) if f.code == "RESOURCE_DOES_NOT_EXIST" || f.status == 404 => Ok(None),
                    Err(f) => Err(self.err(format!("{name}: HTTP {} {} {}", f.status, f.code, f.message))),
                }
            }
            Err(f) => Err(self.err(format!("{name}: HTTP {} {} {}", f.status, f.code, f.message))),
        }
    }

    fn list_online(&self) -> Result<Vec<ListedModel>, RegistryError> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let mut path = format!("registered-models/search?max_results=1000&filter={}", q("name LIKE 'DFP-%'"));
            if !token.is_empty() {
                path.push_str(&format!("&page_token={}", q(&token)));
            }
            let r = self.get(&path)?;
            let page = self.must("listing registered models", r)?;
            for m in page["registered_models"].as_array().into_iter().flatten() {
                let Some(name) = m["name"].as_str() else { continue };
                let aliased =
                    m["aliases"].as_array().into_iter().flatten().find(|a| a["alias"] == self.options.alias.as_str());
                let latest = match aliased.and_then(|a| a["version"].as_str()).and_then(|v| v.parse().ok()) {
                    Some(v) => Ok(v),
                    None => match self.latest_online(name) {
                        Ok(Some(v)) => Ok(v),
                        Ok(None) => Err("no version".to_string()),
                        Err(e) => Err(e.message),
                    },
                };
                out.push(ListedModel { name: name.to_string(), latest });
            }
            match page["next_page_token"].as_str() {
                Some(t) if !t.is_empty() => token = t.to_string(),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::artifact::{MANIFEST, WEIGHTS};

    #[test]
    fn debug_hides_the_token_and_the_password() {
        let mut o: MlflowOptions = serde_json::from_str("{}").unwrap();
        o.token = Some("tok-s3cret".into());
        o.password = Some("pw-s3cret".into());
        o.username = Some("alice".into());
        let text = format!("{o:?}");
        assert!(!text.contains("s3cret") && text.contains("alice") && text.contains("***"), "{text}");
    }

    #[test]
    fn basic_auth_is_base64_and_queries_are_escaped() {
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(q("DFP-azure-alice@contoso.com"), "DFP-azure-alice%40contoso.com");
        assert_eq!(q("name LIKE 'DFP-%'"), "name%20LIKE%20%27DFP-%25%27");
    }

    #[test]
    fn urls_pick_the_scheme_and_credentials_stay_out_of_debug() {
        let opts = MlflowOptions { token: Some("s3cr3t".into()), ..Default::default() };
        let r = MlflowRegistry::open("mlflow://127.0.0.1:5000/", &opts, &S3Options::default()).unwrap();
        assert_eq!(r.base, "http://127.0.0.1:5000");
        assert!(!format!("{r:?}").contains("s3cr3t"));
        let r = MlflowRegistry::open("mlflow+https://mlflow.example.com/prefix", &opts, &S3Options::default()).unwrap();
        assert_eq!(r.base, "https://mlflow.example.com/prefix");
        assert!(is_mlflow("mlflow://h:1") && !is_mlflow("./models") && !is_mlflow("s3://b/p"));
    }

    /// Answers one HTTP request with `status` and `body`; returns the request's head.
    fn one_answer(status: &'static str, body: &'static str) -> (u16, std::thread::JoinHandle<String>) {
        answers(vec![(status, body)])
    }

    /// Answers one request per `(status, body)`, in order; returns the request heads, joined.
    fn answers(replies: Vec<(&'static str, &'static str)>) -> (u16, std::thread::JoinHandle<String>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let mut heads = String::new();
            for (status, body) in replies {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 8192];
                let n = s.read(&mut buf).unwrap();
                heads.push_str(&String::from_utf8_lossy(&buf[..n]));
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(reply.as_bytes()).unwrap();
            }
            heads
        });
        (port, handle)
    }

    /// Answers every request with `body` until the test ends; returns the port.
    fn always(body: String) -> u16 {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let mut buf = [0u8; 8192];
                let _ = s.read(&mut buf);
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes());
            }
        });
        port
    }

    #[test]
    fn workers_fetching_one_version_at_once_leave_it_whole_in_the_cache() {
        let artifacts = tempfile::tempdir().unwrap();
        let files = [(MANIFEST, vec![b'm'; 40_000]), (WEIGHTS, vec![b'w'; 300_000])];
        for (file, bytes) in &files {
            std::fs::write(artifacts.path().join(file), bytes).unwrap();
        }
        let port = always(format!(r#"{{"artifact_uri":"{}"}}"#, artifacts.path().display()));
        let cache = tempfile::tempdir().unwrap();
        let opts = MlflowOptions {
            attempts: 1,
            cache_dir: Some(cache.path().to_string_lossy().into_owned()),
            ..Default::default()
        };
        let r = MlflowRegistry::open(&format!("mlflow://127.0.0.1:{port}"), &opts, &S3Options::default()).unwrap();
        // Like the workers of a scoring process loading the generic model: each fetches the manifest, then the
        // weights, of the same version at the same moment.
        for version in 1..=12 {
            std::thread::scope(|scope| {
                for _ in 0..6 {
                    scope.spawn(|| {
                        for (file, bytes) in &files {
                            assert_eq!(&r.fetch("m", version, file).unwrap(), bytes, "{file} v{version}");
                        }
                    });
                }
            });
            let dir = cache.path().join("m").join(format!("v{version:06}"));
            for (file, bytes) in &files {
                let kept = std::fs::read(dir.join(file)).unwrap_or_default();
                assert!(&kept == bytes, "v{version}: {file} is kept whole ({} bytes)", kept.len());
            }
        }
        // Offline (nobody listening), the kept versions are served.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let offline =
            MlflowRegistry::open(&format!("mlflow://127.0.0.1:{dead}"), &opts, &S3Options::default()).unwrap();
        assert_eq!(offline.latest("m").unwrap(), Some(12));
        assert_eq!(offline.fetch("m", 12, WEIGHTS).unwrap(), files[1].1);
        // A server rebuilt at the same address numbers its versions anew: its version 1 replaces the kept one.
        let rebuilt = tempfile::tempdir().unwrap();
        std::fs::write(rebuilt.path().join(MANIFEST), b"new manifest").unwrap();
        let port = always(format!(r#"{{"artifact_uri":"{}"}}"#, rebuilt.path().display()));
        let r = MlflowRegistry::open(&format!("mlflow://127.0.0.1:{port}"), &opts, &S3Options::default()).unwrap();
        assert_eq!(r.fetch("m", 1, MANIFEST).unwrap(), b"new manifest");
        let dir = cache.path().join("m").join("v000001");
        assert_eq!(std::fs::read(dir.join(MANIFEST)).unwrap(), b"new manifest");
        assert!(!dir.join(WEIGHTS).exists(), "the old location's weights are gone");
    }

    #[test]
    fn without_the_alias_the_newest_version_is_served() {
        let (port, heads) = answers(vec![
            (
                "400 Bad Request",
                r#"{"error_code":"INVALID_PARAMETER_VALUE","message":"Registered model alias production not found."}"#,
            ),
            ("200 OK", r#"{"registered_model":{"name":"m","latest_versions":[{"version":"3"},{"version":"5"}]}}"#),
        ]);
        let opts = MlflowOptions { attempts: 1, ..Default::default() };
        let r = MlflowRegistry::open(&format!("mlflow://127.0.0.1:{port}"), &opts, &S3Options::default()).unwrap();
        assert_eq!(r.latest("m").unwrap(), Some(5));
        assert!(heads.join().unwrap().contains("registered-models/get?name=m"));
    }

    #[test]
    fn credentials_are_sent_and_a_missing_model_is_none() {
        let (port, head) = answers(vec![
            ("404 Not Found", r#"{"error_code":"RESOURCE_DOES_NOT_EXIST","message":"no"}"#),
            ("404 Not Found", r#"{"error_code":"RESOURCE_DOES_NOT_EXIST","message":"no"}"#),
        ]);
        let opts = MlflowOptions { token: Some("t0k3n".into()), attempts: 1, ..Default::default() };
        let r = MlflowRegistry::open(&format!("mlflow://127.0.0.1:{port}"), &opts, &S3Options::default()).unwrap();
        assert_eq!(r.latest("DFP-azure-a@b.c").unwrap(), None);
        let head = head.join().unwrap().to_lowercase();
        assert!(head.contains("authorization: bearer t0k3n"), "{head}");
        assert!(head.contains("name=dfp-azure-a%40b.c&alias=production"), "{head}");

        let (port, head) = one_answer("200 OK", r#"{"model_version":{"version":"7"}}"#);
        let opts =
            MlflowOptions { username: Some("u".into()), password: Some("p".into()), attempts: 1, ..Default::default() };
        let r = MlflowRegistry::open(&format!("mlflow://127.0.0.1:{port}"), &opts, &S3Options::default()).unwrap();
        assert_eq!(r.latest("DFP-azure-x").unwrap(), Some(7));
        assert!(head.join().unwrap().contains("Basic dTpw"), "basic auth of u:p");
    }

    #[test]
    fn server_errors_are_retried_then_reported() {
        let (port, head) = one_answer("500 Internal Server Error", r#"{"message":"db down"}"#);
        let opts = MlflowOptions { attempts: 2, ..Default::default() };
        let r = MlflowRegistry::open(&format!("mlflow://127.0.0.1:{port}"), &opts, &S3Options::default()).unwrap();
        let err = r.latest("DFP-azure-x").unwrap_err().to_string();
        head.join().unwrap();
        // The second attempt finds nobody listening any more: both failures count.
        assert!(
            err.contains("failed after 2 attempt(s)") && err.contains(&format!("mlflow://127.0.0.1:{port}")),
            "{err}"
        );
    }
}
