//! `type: elasticsearch-sink` — rows into Elasticsearch or OpenSearch through the `_bulk` API, each with a
//! deterministic `_id`, acknowledged per document before the batch counts as written.
//!
//! ```yaml
//! alerts_es:
//!   type: elasticsearch-sink
//!   inputs: [alerts]
//!   url: https://es.example.internal:9200
//!   index: "dfp-alerts-%Y.%m.%d"        # from each row's event time (UTC): %Y %m %d %H
//!   auth: { username: dfp-writer, password_env: ES_PASSWORD }
//!   ca_file: /etc/dfp/es-ca.pem
//! incidents_es:
//!   type: elasticsearch-sink
//!   inputs: [risk.incidents]
//!   url: https://es.example.internal:9200
//!   index: dfp-incidents
//!   id_field: incident_id                # a grown or closed incident replaces its earlier version
//!   time_field: first_seen
//! ```
//!
//! **Ids.** Every document gets an `_id`: the value of `id_field` (default `id`, the event id every log
//! family has), or with `id_fields` a SHA-256 of those columns' values. A batch sent twice — a retry after
//! a dropped connection, a replay after a Kafka restart — therefore overwrites the same documents
//! (`action: index`) or is refused as a duplicate (`action: create`, HTTP 409 per document, which counts
//! as delivered): never a second copy.
//!
//! **Delivery.** Rows are gathered into requests of at most `batch_rows` rows and `batch_bytes` bytes
//! (NDJSON, gzip-compressed with `gzip: true`). A request that fails as a whole — connection error,
//! timeout, HTTP 429 or 5xx — is sent again after an exponential backoff (`retry_initial_secs` doubling up
//! to `retry_max_secs`). The bulk response is read document by document: documents refused with 429 or
//! 5xx are sent again the same way; documents refused for their content (a mapping error, HTTP 400) go to
//! the dead letters with the server's reason. Only then does the batch count as written, so a Kafka source
//! upstream commits its offsets after Elasticsearch has the rows: at least once, and with the ids,
//! effectively once. After `retry_attempts` failed attempts the pipeline stops with the last error (the
//! offsets stay uncommitted; a restart sends the rows again).
//!
//! **Documents.** Each row's JSON, plus `@timestamp` (the row's event time, `time_field`; data streams
//! require it, Kibana uses it) and, with `geo`, a `geo_point` object built from two coordinate columns.
//! The index is `index` with `%Y %m %d %H` taken from the event time, or a data stream (`data_stream:
//! true`: `create` actions into the stream named `index`). `dfp es setup` installs the matching index
//! templates; see docs/elasticsearch.md.
//!
//! **Secrets** (`auth`) come from environment variables or files, never from the YAML itself, and never
//! appear in logs or errors.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arrow::array::{Array, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use dfp_core::observe::KeyValue;
use dfp_core::{
    register_stage, Batch, ConfigError, DeadLetter, Sink, StageConfig, StageContext, StageError, StageInstance,
    StageKind,
};
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::Digest;

use super::kafka::json_lines;

// ---------------------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------------------

/// How documents are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BulkAction {
    /// Create or replace the document with this id (a replay overwrites).
    Index,
    /// Create only; a document whose id exists is refused with 409, which counts as delivered.
    Create,
}

/// Credentials, each read from an environment variable or a file (trailing newline ignored). At most one
/// scheme: basic (`username` + a password), an API key (`Authorization: ApiKey …`, the base64 "encoded"
/// value Elasticsearch returns), or a bearer token.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EsAuth {
    /// Basic auth: the user name.
    #[serde(default)]
    pub username: Option<String>,
    /// Basic auth: the variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Basic auth: the file holding the password.
    #[serde(default)]
    pub password_file: Option<String>,
    /// The variable holding an API key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The file holding an API key.
    #[serde(default)]
    pub api_key_file: Option<String>,
    /// The variable holding a bearer token.
    #[serde(default)]
    pub bearer_env: Option<String>,
    /// The file holding a bearer token.
    #[serde(default)]
    pub bearer_file: Option<String>,
}

/// A `geo_point` field built from two coordinate columns.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GeoConfig {
    /// The latitude column.
    #[serde(default = "d_lat")]
    pub lat: String,
    /// The longitude column.
    #[serde(default = "d_lon")]
    pub lon: String,
    /// The document field that gets `{"lat": …, "lon": …}`.
    #[serde(default = "d_geo_field")]
    pub field: String,
}

fn d_lat() -> String {
    "latitude".into()
}
fn d_lon() -> String {
    "longitude".into()
}
fn d_geo_field() -> String {
    "geo".into()
}

/// Configuration of `elasticsearch-sink`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchSinkConfig {
    /// The cluster's URL, `http(s)://host:port` (a path prefix is kept, for a proxy).
    pub url: String,
    /// The index: a name with `%Y`, `%m`, `%d`, `%H` taken from each row's event time (UTC), or the data
    /// stream's name with `data_stream: true`.
    #[serde(default = "d_index")]
    pub index: String,
    /// Write into the data stream `index` (`create` actions; needs a template with `data_stream`).
    #[serde(default)]
    pub data_stream: bool,
    /// `index` (create or replace; the default) or `create` (refuse existing ids; the default and the only
    /// choice for a data stream).
    #[serde(default)]
    pub action: Option<BulkAction>,
    /// The column whose value is the document's `_id`.
    #[serde(default = "d_id_field")]
    pub id_field: String,
    /// Instead of `id_field`: the `_id` is a SHA-256 (hex, 32 characters) of these columns' values.
    #[serde(default)]
    pub id_fields: Vec<String>,
    /// The column with the event time (RFC 3339): the index name and `@timestamp` come from it.
    #[serde(default = "d_time_field")]
    pub time_field: String,
    /// A `geo_point` from two coordinate columns.
    #[serde(default)]
    pub geo: Option<GeoConfig>,
    /// Most documents per bulk request.
    #[serde(default = "d_batch_rows")]
    pub batch_rows: usize,
    /// Most bytes (uncompressed NDJSON) per bulk request.
    #[serde(default = "d_batch_bytes")]
    pub batch_bytes: usize,
    /// Compress request bodies with gzip.
    #[serde(default)]
    pub gzip: bool,
    /// Credentials.
    #[serde(default)]
    pub auth: EsAuth,
    /// A PEM file of CA certificates to trust (in addition to the system's) for `https://`.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Time limit of one request.
    #[serde(default = "d_timeout")]
    pub timeout_secs: f64,
    /// Attempts per batch before the pipeline stops with the error.
    #[serde(default = "d_attempts")]
    pub retry_attempts: u32,
    /// The first backoff; it doubles with each failed attempt.
    #[serde(default = "d_retry_initial")]
    pub retry_initial_secs: f64,
    /// The longest backoff.
    #[serde(default = "d_retry_max")]
    pub retry_max_secs: f64,
}

fn d_index() -> String {
    "dfp-alerts-%Y.%m.%d".into()
}
fn d_id_field() -> String {
    "id".into()
}
fn d_time_field() -> String {
    "timestamp".into()
}
fn d_batch_rows() -> usize {
    1000
}
fn d_batch_bytes() -> usize {
    5 << 20
}
fn d_timeout() -> f64 {
    30.0
}
fn d_attempts() -> u32 {
    10
}
fn d_retry_initial() -> f64 {
    0.2
}
fn d_retry_max() -> f64 {
    30.0
}

// ---------------------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------------------

/// The pieces of an index name: text, or a field of the event time.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IndexPart {
    Text(String),
    Year,
    Month,
    Day,
    Hour,
}

/// Parses `dfp-alerts-%Y.%m.%d`; an index name Elasticsearch would refuse is an error saying why.
fn parse_index(index: &str) -> Result<Vec<IndexPart>, String> {
    if index.is_empty() {
        return Err("must not be empty".into());
    }
    if index.starts_with(['-', '_', '+']) {
        return Err("must not start with '-', '_' or '+'".into());
    }
    if let Some(c) = index.chars().find(|c| r#"\/*?"<>| ,#:"#.contains(*c)) {
        return Err(format!("must not contain {c:?}"));
    }
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut chars = index.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            text.push(c);
            continue;
        }
        let part = match chars.next() {
            Some('Y') => IndexPart::Year,
            Some('m') => IndexPart::Month,
            Some('d') => IndexPart::Day,
            Some('H') => IndexPart::Hour,
            Some('%') => {
                return Err("'%%' is not allowed ('%' cannot be part of an index name)".into());
            }
            Some(other) => return Err(format!("unknown time field %{other}; use %Y, %m, %d or %H")),
            None => return Err("ends with a lone '%'".into()),
        };
        if !text.is_empty() {
            parts.push(IndexPart::Text(std::mem::take(&mut text)));
        }
        parts.push(part);
    }
    if !text.is_empty() {
        parts.push(IndexPart::Text(text));
    }
    if parts.iter().any(|p| matches!(p, IndexPart::Text(t) if t.chars().any(char::is_uppercase))) {
        return Err("must be lowercase".into());
    }
    Ok(parts)
}

impl EsAuth {
    fn check(&self) -> Result<(), ConfigError> {
        let basic = self.username.is_some() || self.password_env.is_some() || self.password_file.is_some();
        let key = self.api_key_env.is_some() || self.api_key_file.is_some();
        let bearer = self.bearer_env.is_some() || self.bearer_file.is_some();
        if [basic, key, bearer].iter().filter(|x| **x).count() > 1 {
            return Err(ConfigError::field("auth", "choose one of basic (username), an API key or a bearer token"));
        }
        if basic && self.username.as_deref().is_none_or(str::is_empty) {
            return Err(ConfigError::field("auth.username", "a password needs a username"));
        }
        for (field, a, b) in [
            ("password", &self.password_env, &self.password_file),
            ("api_key", &self.api_key_env, &self.api_key_file),
            ("bearer", &self.bearer_env, &self.bearer_file),
        ] {
            if a.is_some() && b.is_some() {
                return Err(ConfigError::field(
                    format!("auth.{field}_env"),
                    format!("give {field}_env or {field}_file, not both"),
                ));
            }
        }
        Ok(())
    }

    /// The `Authorization` header value, reading the secret now. Errors name the variable or file, never
    /// the secret.
    pub fn header(&self) -> Result<Option<String>, String> {
        fn secret(env: &Option<String>, file: &Option<String>, what: &str) -> Result<Option<String>, String> {
            if let Some(var) = env {
                return match std::env::var(var) {
                    Ok(v) if !v.is_empty() => Ok(Some(v)),
                    _ => Err(format!("the {what} variable {var} is not set")),
                };
            }
            if let Some(path) = file {
                let text =
                    std::fs::read_to_string(path).map_err(|e| format!("cannot read the {what} file {path}: {e}"))?;
                let text = text.trim_end_matches(['\n', '\r']).to_string();
                if text.is_empty() {
                    return Err(format!("the {what} file {path} is empty"));
                }
                return Ok(Some(text));
            }
            Ok(None)
        }
        if let Some(user) = &self.username {
            let password = secret(&self.password_env, &self.password_file, "password")?.unwrap_or_default();
            return Ok(Some(format!(
                "Basic {}",
                crate::registry::mlflow::base64(format!("{user}:{password}").as_bytes())
            )));
        }
        if let Some(key) = secret(&self.api_key_env, &self.api_key_file, "API key")? {
            return Ok(Some(format!("ApiKey {key}")));
        }
        if let Some(token) = secret(&self.bearer_env, &self.bearer_file, "bearer token")? {
            return Ok(Some(format!("Bearer {token}")));
        }
        Ok(None)
    }
}

fn check_url(url: &str) -> Result<(), ConfigError> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') => {
            if r.split('/').next().is_some_and(|host| host.contains('@')) {
                return Err(ConfigError::field("url", "must not hold credentials; use `auth`"));
            }
            Ok(())
        }
        _ => Err(ConfigError::field("url", format!("{url:?} is not an http:// or https:// URL"))),
    }
}

impl StageConfig for ElasticsearchSinkConfig {
    const TYPE: &'static str = "elasticsearch-sink";
    const KIND: StageKind = StageKind::Sink;
    const DESCRIPTION: &'static str =
        "writes rows to Elasticsearch/OpenSearch with the bulk API: deterministic ids, per-document retries";

    fn validate(&self) -> Result<(), ConfigError> {
        check_url(&self.url)?;
        let parts = parse_index(&self.index).map_err(|m| ConfigError::field("index", m))?;
        if self.data_stream {
            if parts.iter().any(|p| !matches!(p, IndexPart::Text(_))) {
                return Err(ConfigError::field("index", "a data stream's name takes no time fields (%Y …)"));
            }
            if self.action == Some(BulkAction::Index) {
                return Err(ConfigError::field("action", "a data stream takes only `create`"));
            }
        }
        if self.id_fields.is_empty() && self.id_field.trim().is_empty() {
            return Err(ConfigError::field("id_field", "must name a column (or give id_fields)"));
        }
        if self.id_fields.iter().any(|f| f.trim().is_empty()) {
            return Err(ConfigError::field("id_fields", "must name columns"));
        }
        if self.time_field.trim().is_empty() {
            return Err(ConfigError::field("time_field", "must name the event-time column"));
        }
        if self.batch_rows == 0 {
            return Err(ConfigError::field("batch_rows", "must be at least 1"));
        }
        if self.batch_bytes < 1024 {
            return Err(ConfigError::field("batch_bytes", "must be at least 1024"));
        }
        for (field, v) in [
            ("timeout_secs", self.timeout_secs),
            ("retry_initial_secs", self.retry_initial_secs),
            ("retry_max_secs", self.retry_max_secs),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(ConfigError::field(field, "must be a positive number of seconds"));
            }
        }
        if self.retry_max_secs < self.retry_initial_secs {
            return Err(ConfigError::field("retry_max_secs", "must not be below retry_initial_secs"));
        }
        if self.retry_attempts == 0 {
            return Err(ConfigError::field("retry_attempts", "must be at least 1"));
        }
        if let Some(g) = &self.geo {
            if g.lat.is_empty() || g.lon.is_empty() || g.field.is_empty() {
                return Err(ConfigError::field("geo", "lat, lon and field must name columns"));
            }
        }
        self.auth.check()
    }

    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        let parts = parse_index(&self.index).map_err(|m| StageError::Other(format!("index: {m}")))?;
        let action = self.action.unwrap_or(if self.data_stream { BulkAction::Create } else { BulkAction::Index });
        Ok(StageInstance::Sink(Box::new(ElasticsearchSink {
            config: self.clone(),
            index: parts,
            action,
            client: None,
            pending: Vec::new(),
            pending_bytes: 0,
            dead: Vec::new(),
            labels: [KeyValue::new("stage", ctx.stage_id.clone())],
        })))
    }
}
register_stage!(ElasticsearchSinkConfig);

// ---------------------------------------------------------------------------------------------------------
// The client (shared with `dfp es setup`)
// ---------------------------------------------------------------------------------------------------------

/// A failure talking to Elasticsearch. Messages never include credentials.
#[derive(Debug, thiserror::Error)]
pub enum EsError {
    /// The client could not be set up (a CA file, a secret).
    #[error("elasticsearch {url}: {message}")]
    Setup {
        /// The cluster.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The request did not get an answer: connection refused or dropped, timeout.
    #[error("elasticsearch {url}: {message}")]
    Transport {
        /// The cluster.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The server answered with an error.
    #[error("elasticsearch {url}: {what}: HTTP {status}: {body}")]
    Http {
        /// The cluster.
        url: String,
        /// The request.
        what: String,
        /// The status.
        status: u16,
        /// The start of the response body.
        body: String,
    },
}

/// What `GET /` says about the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// `elasticsearch` or `opensearch`.
    pub distribution: String,
    /// The version number, e.g. `9.1.0`.
    pub version: String,
}

/// A small blocking client over reqwest for the calls dfp makes.
pub struct EsClient {
    base: String,
    client: reqwest::Client,
    auth: Option<String>,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for EsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EsClient").field("base", &self.base).field("auth", &self.auth.as_ref().map(|_| "…")).finish()
    }
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text.chars().take(300).collect();
    if text.chars().count() > 300 {
        out.push('…');
    }
    out
}

impl EsClient {
    /// A client for `url` with credentials and an optional CA file (PEM, one or more certificates).
    pub fn new(url: &str, auth: &EsAuth, ca_file: Option<&str>, timeout: Duration) -> Result<Self, EsError> {
        let setup = |message: String| EsError::Setup { url: url.to_string(), message };
        let mut builder =
            reqwest::Client::builder().timeout(timeout).connect_timeout(timeout.min(Duration::from_secs(10)));
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| setup(format!("cannot read the CA file {path}: {e}")))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| setup(format!("the CA file {path} is not PEM certificates: {e}")))?;
            if certs.is_empty() {
                return Err(setup(format!("the CA file {path} holds no certificate")));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder.build().map_err(|e| setup(format!("cannot build the HTTP client: {e}")))?;
        let runtime = crate::store::io_runtime().map_err(|e| setup(format!("cannot start the I/O runtime: {e}")))?;
        let auth = auth.header().map_err(setup)?;
        Ok(EsClient { base: url.trim_end_matches('/').to_string(), client, auth, runtime })
    }

    /// The cluster's URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// One request; `Ok((status, body))` for any answer, `Err` when there was none.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
        gzip: bool,
    ) -> Result<(u16, Vec<u8>), EsError> {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(a) = &self.auth {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        if let Some((bytes, kind)) = body {
            req = req.header(reqwest::header::CONTENT_TYPE, kind);
            if gzip {
                use std::io::Write;
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::with_capacity(bytes.len() / 4), flate2::Compression::fast());
                let gz = enc
                    .write_all(&bytes)
                    .and_then(|_| enc.finish())
                    .map_err(|e| EsError::Transport { url: self.base.clone(), message: format!("gzip: {e}") })?;
                req = req.header(reqwest::header::CONTENT_ENCODING, "gzip").body(gz);
            } else {
                req = req.body(bytes);
            }
        }
        self.runtime
            .block_on(async {
                let resp = req.send().await?;
                let status = resp.status().as_u16();
                let bytes = resp.bytes().await?;
                Ok::<_, reqwest::Error>((status, bytes.to_vec()))
            })
            .map_err(|e| {
                let mut message = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    message.push_str(&format!(": {s}"));
                    source = s.source();
                }
                EsError::Transport { url: self.base.clone(), message }
            })
    }

    /// `GET /`: which server and version (checks that it is Elasticsearch or OpenSearch).
    pub fn info(&self) -> Result<ServerInfo, EsError> {
        let (status, body) = self.request(reqwest::Method::GET, "/", None, false)?;
        if status != 200 {
            return Err(self.http("GET /", status, &body));
        }
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| EsError::Http {
            url: self.base.clone(),
            what: "GET /".into(),
            status,
            body: format!("not JSON ({e}); is this Elasticsearch?"),
        })?;
        let version = v.pointer("/version/number").and_then(|x| x.as_str()).unwrap_or_default().to_string();
        let distribution =
            v.pointer("/version/distribution").and_then(|x| x.as_str()).unwrap_or("elasticsearch").to_string();
        if version.is_empty() {
            return Err(EsError::Http {
                url: self.base.clone(),
                what: "GET /".into(),
                status,
                body: "no version in the answer; is this Elasticsearch?".into(),
            });
        }
        Ok(ServerInfo { distribution, version })
    }

    /// `PUT /_index_template/NAME`.
    pub fn put_index_template(&self, name: &str, template: &serde_json::Value) -> Result<(), EsError> {
        let body = serde_json::to_vec(template).unwrap_or_default();
        let path = format!("/_index_template/{name}");
        let (status, resp) = self.request(reqwest::Method::PUT, &path, Some((body, "application/json")), false)?;
        if !(200..300).contains(&status) {
            return Err(self.http(&format!("PUT {path}"), status, &resp));
        }
        Ok(())
    }

    fn http(&self, what: &str, status: u16, body: &[u8]) -> EsError {
        EsError::Http { url: self.base.clone(), what: what.into(), status, body: excerpt(body) }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Runtime
// ---------------------------------------------------------------------------------------------------------

/// One document waiting to be sent.
struct Doc {
    index: String,
    id: String,
    source: String,
}

struct ElasticsearchSink {
    config: ElasticsearchSinkConfig,
    index: Vec<IndexPart>,
    action: BulkAction,
    client: Option<EsClient>,
    pending: Vec<Doc>,
    pending_bytes: usize,
    dead: Vec<DeadLetter>,
    labels: [KeyValue; 1],
}

/// How one flush went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Outcome {
    sent: u64,
    duplicates: u64,
    retried: u64,
    rejected: u64,
}

fn text_column(batch: &RecordBatch, name: &str) -> Result<Option<StringArray>, StageError> {
    let Some(col) = batch.column_by_name(name) else { return Ok(None) };
    let text = arrow::compute::cast(col, &DataType::Utf8)?;
    Ok(text.as_any().downcast_ref::<StringArray>().cloned())
}

fn float_column(batch: &RecordBatch, name: &str) -> Result<Option<Float64Array>, StageError> {
    let Some(col) = batch.column_by_name(name) else { return Ok(None) };
    let v = arrow::compute::cast(col, &DataType::Float64)?;
    Ok(v.as_any().downcast_ref::<Float64Array>().cloned())
}

/// A JSON string literal.
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

impl ElasticsearchSink {
    fn index_for(&self, time: Option<&chrono::DateTime<chrono::Utc>>) -> Option<String> {
        use chrono::{Datelike, Timelike};
        use std::fmt::Write;
        let mut out = String::with_capacity(32);
        for p in &self.index {
            let _ = match (p, time) {
                (IndexPart::Text(t), _) => out.write_str(t),
                (IndexPart::Year, Some(t)) => write!(out, "{:04}", t.year()),
                (IndexPart::Month, Some(t)) => write!(out, "{:02}", t.month()),
                (IndexPart::Day, Some(t)) => write!(out, "{:02}", t.day()),
                (IndexPart::Hour, Some(t)) => write!(out, "{:02}", t.hour()),
                (_, None) => return None,
            };
        }
        Some(out)
    }

    /// The rows of a batch as documents; rows that cannot be one (no id, no time where one is needed)
    /// become dead letters.
    fn documents(&mut self, batch: &Batch) -> Result<Vec<Doc>, StageError> {
        let data = &batch.data;
        let lines = json_lines(data)?;
        let missing = |c: &str| {
            StageError::Data(format!(
                "elasticsearch-sink: the column `{c}` is missing (columns: {})",
                data.schema().fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
            ))
        };
        let ids: Vec<StringArray> = if self.config.id_fields.is_empty() {
            vec![text_column(data, &self.config.id_field)?.ok_or_else(|| missing(&self.config.id_field))?]
        } else {
            self.config
                .id_fields
                .iter()
                .map(|f| text_column(data, f)?.ok_or_else(|| missing(f)))
                .collect::<Result<_, _>>()?
        };
        let times = text_column(data, &self.config.time_field)?;
        let geo = match &self.config.geo {
            Some(g) => match (float_column(data, &g.lat)?, float_column(data, &g.lon)?) {
                (Some(lat), Some(lon)) => Some((g.field.clone(), lat, lon)),
                _ => None,
            },
            None => None,
        };
        let needs_time = self.config.data_stream || self.index.iter().any(|p| !matches!(p, IndexPart::Text(_)));
        // Where a dead letter's row came from (only rows that become one need it).
        let origin = || {
            if batch.envelope.origin.is_empty() {
                batch.envelope.source.clone()
            } else {
                batch.envelope.origin.clone()
            }
        };
        let mut docs = Vec::with_capacity(lines.len());
        for (row, line) in lines.into_iter().enumerate() {
            let id = if self.config.id_fields.is_empty() {
                match ids[0].is_valid(row).then(|| ids[0].value(row)).filter(|s| !s.is_empty()) {
                    Some(id) => id.to_string(),
                    None => {
                        self.dead.push(DeadLetter::new(
                            format!("no document id: the `{}` column is empty", self.config.id_field),
                            line,
                            origin(),
                        ));
                        continue;
                    }
                }
            } else {
                let mut h = sha2::Sha256::new();
                for col in &ids {
                    let v = if col.is_valid(row) { col.value(row) } else { "" };
                    h.update((v.len() as u64).to_le_bytes());
                    h.update(v.as_bytes());
                }
                h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
            };
            if id.len() > 512 {
                self.dead.push(DeadLetter::new("the document id is longer than 512 bytes", line, origin()));
                continue;
            }
            let time_text = times.as_ref().and_then(|t| t.is_valid(row).then(|| t.value(row)));
            let time = time_text.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).map(|t| t.to_utc());
            if needs_time && time.is_none() {
                let reason = match time_text {
                    None => format!("no event time: the `{}` column is empty or missing", self.config.time_field),
                    Some(t) => format!("the event time `{}` = {t:?} is not an RFC 3339 time", self.config.time_field),
                };
                self.dead.push(DeadLetter::new(reason, line, origin()));
                continue;
            }
            let Some(index) = self.index_for(time.as_ref()) else { continue };
            let mut extra = String::new();
            if let Some(t) = &time {
                extra.push_str(&format!(
                    "\"@timestamp\":{},",
                    quoted(&t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
                ));
            }
            if let Some((field, lat, lon)) = &geo {
                if lat.is_valid(row) && lon.is_valid(row) {
                    let (la, lo) = (lat.value(row), lon.value(row));
                    if (-90.0..=90.0).contains(&la) && (-180.0..=180.0).contains(&lo) {
                        extra.push_str(&format!("{}:{{\"lat\":{la},\"lon\":{lo}}},", quoted(field)));
                    }
                }
            }
            let source = if extra.is_empty() {
                line
            } else {
                let body = line.strip_prefix('{').unwrap_or(&line);
                if body.trim_start().starts_with('}') {
                    format!("{{{}}}", extra.trim_end_matches(','))
                } else {
                    format!("{{{extra}{body}")
                }
            };
            docs.push(Doc { index, id, source });
        }
        Ok(docs)
    }

    /// Sends everything pending; returns once every document is delivered, dead-lettered, or the attempts
    /// are spent (an error: the pipeline stops and nothing after the last commit counts as written).
    fn flush(&mut self) -> Result<(), StageError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut docs = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        // One id once per request: `index` keeps the newest version of a document (an incident that grew),
        // `create` the first. Retries then cannot put an older version over a newer one.
        let mut seen: HashMap<(&str, &str), usize> = HashMap::with_capacity(docs.len());
        let mut keep = vec![true; docs.len()];
        for (i, d) in docs.iter().enumerate() {
            if let Some(prev) = seen.insert((d.index.as_str(), d.id.as_str()), i) {
                match self.action {
                    BulkAction::Index => keep[prev] = false,
                    BulkAction::Create => {
                        keep[i] = false;
                        seen.insert((d.index.as_str(), d.id.as_str()), prev);
                    }
                }
            }
        }
        drop(seen);
        let mut k = keep.into_iter();
        docs.retain(|_| k.next().unwrap_or(true));
        let outcome = self.deliver(&docs)?;
        if let Some(m) = dfp_core::observe::metrics() {
            for (result, n) in [
                ("sent", outcome.sent),
                ("duplicate", outcome.duplicates),
                ("retried", outcome.retried),
                ("rejected", outcome.rejected),
            ] {
                if n > 0 {
                    let labels = [self.labels[0].clone(), KeyValue::new("result", result)];
                    m.sink_documents.add(n, &labels);
                }
            }
        }
        tracing::debug!(
            stage = %self.labels[0].value, sent = outcome.sent, duplicates = outcome.duplicates,
            retried = outcome.retried, rejected = outcome.rejected, "bulk request done"
        );
        Ok(())
    }

    fn bulk_body(&self, docs: &[Doc], todo: &[usize]) -> Vec<u8> {
        let action = match self.action {
            BulkAction::Index => "index",
            BulkAction::Create => "create",
        };
        let mut body = Vec::with_capacity(todo.iter().map(|&i| docs[i].source.len() + 80).sum());
        for &i in todo {
            let d = &docs[i];
            // {"index":{"_index":…,"_id":…}}, the names escaped as JSON strings in place.
            body.extend_from_slice(b"{\"");
            body.extend_from_slice(action.as_bytes());
            body.extend_from_slice(b"\":{\"_index\":");
            let _ = serde_json::to_writer(&mut body, &d.index);
            body.extend_from_slice(b",\"_id\":");
            let _ = serde_json::to_writer(&mut body, &d.id);
            body.extend_from_slice(b"}}\n");
            body.extend_from_slice(d.source.as_bytes());
            body.push(b'\n');
        }
        body
    }

    fn deliver(&mut self, docs: &[Doc]) -> Result<Outcome, StageError> {
        let Some(client) = self.client.as_ref() else {
            return Err(StageError::Other("elasticsearch-sink: not open".into()));
        };
        let mut outcome = Outcome::default();
        let mut todo: Vec<usize> = (0..docs.len()).collect();
        let mut attempt = 0u32;
        let mut dead = Vec::new();
        loop {
            attempt += 1;
            let body = self.bulk_body(docs, &todo);
            let started = Instant::now();
            let answer =
                client.request(reqwest::Method::POST, "/_bulk", Some((body, "application/x-ndjson")), self.config.gzip);
            if let Some(m) = dfp_core::observe::metrics() {
                m.sink_request_seconds.record(started.elapsed().as_secs_f64(), &self.labels);
            }
            let last = match answer {
                Err(e) => {
                    outcome.retried += todo.len() as u64;
                    e.to_string()
                }
                Ok((status, body)) if status == 429 || status >= 500 => {
                    outcome.retried += todo.len() as u64;
                    format!("the bulk request got HTTP {status}: {}", excerpt(&body))
                }
                Ok((status, body)) if !(200..300).contains(&status) => {
                    let hint = match status {
                        401 => " (check the credentials in `auth`)",
                        403 => " (the credentials may not write to this index)",
                        413 => " (the request is too large: lower batch_bytes)",
                        _ => "",
                    };
                    return Err(StageError::Other(format!(
                        "elasticsearch {}: the bulk request was refused with HTTP {status}{hint}: {}",
                        client.url(),
                        excerpt(&body)
                    )));
                }
                Ok((status, body)) => {
                    let items = parse_bulk(&body, todo.len()).map_err(|m| {
                        StageError::Other(format!("elasticsearch {}: HTTP {status}: {m}", client.url()))
                    })?;
                    let mut again = Vec::new();
                    let mut last = String::new();
                    for (&i, item) in todo.iter().zip(items) {
                        match item.status {
                            200..=299 => outcome.sent += 1,
                            409 if self.action == BulkAction::Create => outcome.duplicates += 1,
                            s if s == 429 || s >= 500 => {
                                last = format!("document {} got HTTP {s}: {}", docs[i].id, item.reason);
                                again.push(i);
                            }
                            s => {
                                outcome.rejected += 1;
                                dead.push(DeadLetter::new(
                                    format!(
                                        "elasticsearch refused document {} for index {} (HTTP {s}): {}",
                                        docs[i].id, docs[i].index, item.reason
                                    ),
                                    docs[i].source.clone(),
                                    format!("{} → {}", client.url(), docs[i].index),
                                ));
                            }
                        }
                    }
                    if again.is_empty() {
                        self.dead.append(&mut dead);
                        return Ok(outcome);
                    }
                    outcome.retried += again.len() as u64;
                    todo = again;
                    last
                }
            };
            if attempt >= self.config.retry_attempts {
                self.dead.append(&mut dead);
                return Err(StageError::Other(format!(
                    "elasticsearch {}: {} document(s) not delivered after {attempt} attempt(s); last error: {last}",
                    client.url(),
                    todo.len()
                )));
            }
            let backoff =
                (self.config.retry_initial_secs * 2f64.powi(attempt as i32 - 1)).min(self.config.retry_max_secs);
            tracing::warn!(
                stage = %self.labels[0].value, attempt, documents = todo.len(),
                "elasticsearch: retrying in {backoff:.1} s: {last}"
            );
            std::thread::sleep(Duration::from_secs_f64(backoff));
        }
    }
}

/// One bulk item's answer.
#[derive(Debug)]
struct ItemResult {
    status: u16,
    reason: String,
}

/// Reads a bulk response: one result per document, in order.
fn parse_bulk(body: &[u8], expected: usize) -> Result<Vec<ItemResult>, String> {
    #[derive(Deserialize)]
    struct Resp {
        #[serde(default)]
        items: Vec<HashMap<String, Item>>,
    }
    #[derive(Deserialize)]
    struct Item {
        status: u16,
        #[serde(default)]
        error: Option<serde_json::Value>,
    }
    let resp: Resp = serde_json::from_slice(body)
        .map_err(|e| format!("the bulk response is not what Elasticsearch sends: {e}: {}", excerpt(body)))?;
    if resp.items.len() != expected {
        return Err(format!("the bulk response holds {} results for {expected} documents", resp.items.len()));
    }
    resp.items
        .into_iter()
        .map(|m| {
            let item = m.into_values().next().ok_or("an empty result in the bulk response")?;
            let reason = match &item.error {
                None => String::new(),
                Some(serde_json::Value::Object(e)) => {
                    let kind = e.get("type").and_then(|t| t.as_str()).unwrap_or("error");
                    let why = e.get("reason").and_then(|t| t.as_str()).unwrap_or("");
                    let cause = e
                        .get("caused_by")
                        .and_then(|c| c.get("reason"))
                        .and_then(|t| t.as_str())
                        .map(|c| format!(" (caused by: {c})"))
                        .unwrap_or_default();
                    format!("{kind}: {why}{cause}")
                }
                Some(other) => other.to_string(),
            };
            Ok(ItemResult { status: item.status, reason })
        })
        .collect()
}

impl Sink for ElasticsearchSink {
    fn open(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        let client = EsClient::new(
            &self.config.url,
            &self.config.auth,
            self.config.ca_file.as_deref(),
            Duration::from_secs_f64(self.config.timeout_secs),
        )
        .map_err(|e| StageError::Other(e.to_string()))?;
        // Reachable and really a search server, before any row comes (a wrong URL fails at start). A
        // server that is down now may be up when the rows come: that is left to the retries.
        match client.info() {
            Ok(info) => tracing::info!(
                stage = %ctx.stage_id, url = %client.url(), distribution = %info.distribution, version = %info.version,
                "elasticsearch-sink connected"
            ),
            Err(e @ EsError::Http { status: 401 | 403, .. }) => {
                return Err(StageError::Other(format!("{e} (check the credentials in `auth`)")))
            }
            Err(e) => tracing::warn!(stage = %ctx.stage_id, "elasticsearch-sink: {e}; will retry with the first batch"),
        }
        self.client = Some(client);
        Ok(())
    }

    fn write(&mut self, batch: Batch) -> Result<(), StageError> {
        for doc in self.documents(&batch)? {
            self.pending_bytes += doc.source.len() + doc.id.len() + doc.index.len() + 40;
            self.pending.push(doc);
            if self.pending.len() >= self.config.batch_rows || self.pending_bytes >= self.config.batch_bytes {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Everything taken in so far is in Elasticsearch before the sources may commit it.
    fn advance(&mut self, _frontier: u64) -> Result<(), StageError> {
        self.flush()
    }

    fn finish(&mut self) -> Result<(), StageError> {
        self.flush()
    }

    fn take_dead_letters(&mut self) -> Vec<DeadLetter> {
        std::mem::take(&mut self.dead)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Index templates (for `dfp es setup`)
// ---------------------------------------------------------------------------------------------------------

/// The index template for a family's scored rows: keywords for text, `ip` for the address, `date` for
/// times, floats for scores and per-feature z-scores, a `geo_point` for `geo`. `patterns` are the index
/// patterns it applies to; `data_stream` makes it a data-stream template.
pub fn alerts_template(family: &dfp_core::family::Family, patterns: &[String], data_stream: bool) -> serde_json::Value {
    use serde_json::json;
    let mut props = serde_json::Map::new();
    for c in &family.columns {
        use dfp_core::family::ColumnType;
        let ty = match c.kind {
            ColumnType::Ip => json!({ "type": "ip", "ignore_malformed": true }),
            ColumnType::Time => json!({ "type": "date" }),
            ColumnType::Float => json!({ "type": "double" }),
            ColumnType::Bool => json!({ "type": "boolean" }),
            ColumnType::Text => json!({ "type": "keyword", "ignore_above": 1024 }),
        };
        props.insert(c.name.clone(), ty);
    }
    for (name, ty) in [
        ("@timestamp", json!({ "type": "date" })),
        ("geo", json!({ "type": "geo_point" })),
        ("mean_abs_z", json!({ "type": "float" })),
        ("max_abs_z", json!({ "type": "float" })),
        ("risk", json!({ "type": "float" })),
        ("incident_id", json!({ "type": "keyword" })),
        ("model_name", json!({ "type": "keyword" })),
        ("model_kind", json!({ "type": "keyword" })),
        ("model_version", json!({ "type": "long" })),
        ("reasons", json!({ "type": "text", "fields": { "keyword": { "type": "keyword", "ignore_above": 1024 } } })),
    ] {
        props.entry(name.to_string()).or_insert(ty);
    }
    let mut t = json!({
        "index_patterns": patterns,
        "priority": 200,
        "template": {
            "settings": { "index": { "number_of_shards": 1 } },
            "mappings": {
                "dynamic_templates": [
                    { "z_scores": { "match": "*_z_loss", "mapping": { "type": "float" } } },
                    { "strings": { "match_mapping_type": "string", "mapping": { "type": "keyword", "ignore_above": 1024 } } }
                ],
                "properties": props
            }
        },
        "_meta": { "description": format!("dfp scored {} sign-ins", family.name), "managed_by": "dfp" }
    });
    if data_stream {
        t["data_stream"] = json!({});
    }
    t
}

/// The index template for incidents (`correlate`'s second output), upserted by `incident_id`.
pub fn incidents_template(patterns: &[String]) -> serde_json::Value {
    use serde_json::json;
    json!({
        "index_patterns": patterns,
        "priority": 200,
        "template": {
            "settings": { "index": { "number_of_shards": 1 } },
            "mappings": {
                "dynamic_templates": [
                    { "strings": { "match_mapping_type": "string", "mapping": { "type": "keyword", "ignore_above": 1024 } } }
                ],
                "properties": {
                    "@timestamp": { "type": "date" },
                    "incident_id": { "type": "keyword" },
                    "status": { "type": "keyword" },
                    "entity": { "type": "keyword" },
                    "username": { "type": "keyword" },
                    "users": { "type": "long" },
                    "first_seen": { "type": "date" },
                    "last_seen": { "type": "date" },
                    "events": { "type": "long" },
                    "event_ids": { "type": "keyword" },
                    "reasons": { "type": "text", "fields": { "keyword": { "type": "keyword", "ignore_above": 1024 } } },
                    "peak_risk": { "type": "float" }
                }
            }
        },
        "_meta": { "description": "dfp incidents", "managed_by": "dfp" }
    })
}

// ---------------------------------------------------------------------------------------------------------
// Tests (the delivery against a stand-in server: tests/elasticsearch.rs)
// ---------------------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn config(v: serde_json::Value) -> ElasticsearchSinkConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn index_names_take_time_fields_and_refuse_what_elasticsearch_refuses() {
        assert_eq!(
            parse_index("dfp-%Y.%m").unwrap(),
            vec![IndexPart::Text("dfp-".into()), IndexPart::Year, IndexPart::Text(".".into()), IndexPart::Month]
        );
        for (bad, why) in [
            ("Dfp", "lowercase"),
            ("_dfp", "start"),
            ("dfp alerts", "contain"),
            ("dfp-%j", "unknown time field %j"),
            ("dfp-%", "lone"),
            ("", "empty"),
        ] {
            let e = parse_index(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        use serde_json::json;
        let h = "http://h:9200";
        let bad = [
            (json!({"url": "localhost:9200"}), "url"),
            (json!({"url": "http://u:p@h:9200"}), "url"),
            (json!({"url": h, "index": "ds-%Y", "data_stream": true}), "index"),
            (json!({"url": h, "index": "ds", "data_stream": true, "action": "index"}), "action"),
            (json!({"url": h, "batch_rows": 0}), "batch_rows"),
            (json!({"url": h, "retry_initial_secs": 5, "retry_max_secs": 1}), "retry_max_secs"),
            (json!({"url": h, "auth": {"username": "u", "api_key_env": "K"}}), "auth"),
            (json!({"url": h, "auth": {"password_env": "P"}}), "auth.username"),
            (json!({"url": h, "auth": {"api_key_env": "K", "api_key_file": "f"}}), "auth.api_key_env"),
        ];
        for (v, field) in bad {
            let text = v.to_string();
            let e = config(v).validate().unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{text}: {e}");
        }
        config(json!({"url": "https://es.internal:9200/proxy"})).validate().unwrap();
    }

    #[test]
    fn secrets_come_from_env_or_files_and_errors_do_not_show_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "c2VjcmV0\n").unwrap();
        let auth = EsAuth { api_key_file: Some(file.display().to_string()), ..Default::default() };
        assert_eq!(auth.header().unwrap().as_deref(), Some("ApiKey c2VjcmV0"));
        let auth = EsAuth { bearer_env: Some("DFP_TEST_ES_UNSET_TOKEN".into()), ..Default::default() };
        let e = auth.header().unwrap_err();
        assert!(e.contains("DFP_TEST_ES_UNSET_TOKEN"), "{e}");
        let auth = EsAuth {
            username: Some("w".into()),
            password_file: Some(file.display().to_string()),
            ..Default::default()
        };
        let h = auth.header().unwrap().unwrap();
        assert_eq!(h, format!("Basic {}", crate::registry::mlflow::base64(b"w:c2VjcmV0")));
    }

    #[test]
    fn bulk_responses_are_read_per_document() {
        let body = br#"{"took":3,"errors":true,"items":[
            {"index":{"_index":"a","_id":"1","status":201}},
            {"create":{"_index":"a","_id":"2","status":409,"error":{"type":"version_conflict_engine_exception","reason":"exists"}}},
            {"index":{"_index":"a","_id":"3","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [risk]","caused_by":{"reason":"not a float"}}}}]}"#;
        let items = parse_bulk(body, 3).unwrap();
        assert_eq!(items.iter().map(|i| i.status).collect::<Vec<_>>(), vec![201, 409, 400]);
        assert_eq!(items[2].reason, "mapper_parsing_exception: failed to parse field [risk] (caused by: not a float)");
        assert!(parse_bulk(body, 2).unwrap_err().contains("3 results for 2"));
        assert!(parse_bulk(b"<html>", 1).is_err());
    }
}
