//! Pipeline YAML → raw model → validated [`Plan`].
//!
//! The raw layer ([`raw`]) mirrors the file and keeps a line number for every key. The validation layer
//! ([`validate`]) resolves variables, parses each stage's configuration through the registry, checks the
//! graph, and reports *every* problem it finds as a [`Diagnostic`] naming the file, line and stage:
//!
//! ```text
//! pipelines/x.yaml:14: stage "scored": unknown type "scor"; did you mean "score"?
//! ```
//!
//! A pipeline file looks like this (see `docs/pipeline-yaml.md` for the reference):
//!
//! ```yaml
//! version: 1
//! vars:
//!   input: ./data/*.jsonl
//! runtime:
//!   workers: 2
//! stages:
//!   logs:   { type: file-source, path: "${input}" }
//!   failed: { type: filter, inputs: [logs], field: result, equals: FAILURE }
//!   out:    { type: file-sink, inputs: [failed], path: ./failed.jsonl }
//! ```

pub mod raw;
pub mod schema;
pub mod validate;
pub mod vars;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::family::Families;
use crate::registry::{Registry, StageFactory};
use crate::stage::StageKind;

/// The reserved input name that carries every stage's dead letters. A stage that lists it in `inputs`
/// receives them as batches with columns `stage`, `reason`, `record`, `origin`.
pub const DEAD_LETTERS: &str = "dead-letters";

/// One problem found in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file (or name given to an inline pipeline).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The stage id, when the problem is inside a stage.
    pub stage: Option<String>,
    /// What is wrong and, where possible, what to do.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if let Some(stage) = &self.stage {
            write!(f, "stage \"{stage}\": ")?;
        }
        f.write_str(&self.message)
    }
}

/// A pipeline that failed validation: every problem found, in file order.
#[derive(Debug, Clone, thiserror::Error)]
pub struct SpecError {
    /// The problems.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl SpecError {
    pub(crate) fn single(file: &str, line: Option<usize>, message: impl Into<String>) -> Self {
        SpecError {
            diagnostics: vec![Diagnostic { file: file.to_string(), line, stage: None, message: message.into() }],
        }
    }
}

/// Settings of the runtime, from the `runtime:` section (command-line flags override them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads in this process.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Most batches a source may have in flight (emitted but not yet through every sink) before it pauses.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u64,
    /// Where dead letters go when no stage takes the `dead-letters` input: a JSON-lines file, created
    /// only when there is something to write.
    #[serde(default = "default_dead_letter")]
    pub dead_letter: String,
    /// Address (`HOST:PORT`) of the admin endpoint: Prometheus `/metrics`, `/healthz`, `/readyz`,
    /// `/stats` (for `dfp top`) and `/tap` (for `dfp tap`). Off when unset; `127.0.0.1:9464` is the usual
    /// choice.
    #[serde(default)]
    pub metrics: Option<String>,
    /// Protection of the admin endpoint: a bearer token, HTTPS, a connection limit.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Processes in the cluster (default 1: no cluster). With more, `process` and `hostfile` are needed
    /// (or `--processes`, `--process`, `--hostfile`; see `docs/operations.md`).
    #[serde(default = "default_processes")]
    pub processes: usize,
    /// This process's index, `0..processes`.
    #[serde(default)]
    pub process: Option<usize>,
    /// A file listing `host:port` per process, one per line, in process order (`#` comments).
    #[serde(default)]
    pub hostfile: Option<String>,
    /// Seconds to wait for every process of the cluster to connect before giving up.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: f64,
    /// A file holding the cluster's shared secret: every process must prove it knows it before the
    /// pipeline starts (docs/security.md). Optional; all processes have one or none.
    #[serde(default)]
    pub cluster_secret_file: Option<String>,
    /// Or: the environment variable holding the cluster secret.
    #[serde(default)]
    pub cluster_secret_env: Option<String>,
}

fn default_processes() -> usize {
    1
}
fn default_connect_timeout() -> f64 {
    60.0
}

fn default_workers() -> usize {
    1
}
fn default_max_in_flight() -> u64 {
    16
}
fn default_dead_letter() -> String {
    "dead-letter.jsonl".into()
}

/// `runtime.admin`: how the admin endpoint is protected (docs/security.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// A file holding the bearer token every request needs (`Authorization: Bearer …`).
    #[serde(default)]
    pub token_file: Option<String>,
    /// Or: the environment variable holding it.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Require the token on `/healthz` and `/readyz` too (default: open, for probes).
    #[serde(default)]
    pub protect_health: bool,
    /// Serve HTTPS with this PEM certificate chain (with `tls_key`); both are read again when they change.
    #[serde(default)]
    pub tls_cert: Option<String>,
    /// The PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<String>,
    /// Most open connections; more are closed at once (default 4096).
    #[serde(default)]
    pub max_connections: Option<usize>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: default_workers(),
            max_in_flight: default_max_in_flight(),
            dead_letter: default_dead_letter(),
            metrics: None,
            admin: AdminConfig::default(),
            processes: default_processes(),
            process: None,
            hostfile: None,
            connect_timeout_secs: default_connect_timeout(),
            cluster_secret_file: None,
            cluster_secret_env: None,
        }
    }
}

/// A stage after validation.
#[derive(Clone)]
pub struct PlannedStage {
    /// The id (the key under `stages:`).
    pub id: String,
    /// The registered type name.
    pub type_name: String,
    /// Source, transform or sink.
    pub kind: StageKind,
    /// Upstream stage ids (may include [`DEAD_LETTERS`]).
    pub inputs: Vec<String>,
    /// Line of the stage in the file.
    pub line: usize,
    pub(crate) factory: Arc<dyn StageFactory>,
}

impl fmt::Debug for PlannedStage {
    // The configuration is left out on purpose: it may hold secrets from `${env:…}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlannedStage")
            .field("id", &self.id)
            .field("type_name", &self.type_name)
            .field("kind", &self.kind)
            .field("inputs", &self.inputs)
            .field("line", &self.line)
            .finish()
    }
}

impl PlannedStage {
    /// The factory that builds this stage's instances.
    pub fn factory(&self) -> &Arc<dyn StageFactory> {
        &self.factory
    }
}

/// A validated pipeline: resolved variables, typed stage configurations, stages in dependency order.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The file the pipeline came from (or the name of an inline pipeline).
    pub file: String,
    /// Runtime settings.
    pub runtime: RuntimeConfig,
    /// Stages, each after all of its inputs.
    pub stages: Vec<PlannedStage>,
    /// Variable values after overrides (not shown in logs: they may hold secrets).
    pub vars: BTreeMap<String, serde_json::Value>,
    /// Stable digest of the pipeline text (before variables): processes of a cluster must agree on it.
    pub digest: String,
    /// The plugins loaded, as `name version`, in the order listed.
    pub plugins: Vec<String>,
    /// The log families the stages may use: built in, from plugins, declared by the pipeline.
    pub families: Arc<Families>,
    /// The pipeline's `family:`, if it names one.
    pub family: Option<String>,
}

impl Plan {
    /// Parses and validates YAML text. `file` names it in diagnostics; `overrides` are `NAME=VALUE`
    /// strings as given to `--var`.
    pub fn from_yaml(yaml: &str, file: &str, overrides: &[String], registry: &Registry) -> Result<Plan, SpecError> {
        let raw = raw::RawPipeline::parse(yaml, file)?;
        let mut plan = validate::validate(&raw, file, overrides, registry, &|name| std::env::var(name).ok())?;
        plan.digest = format!("{:016x}", crate::hash::stable_hash(yaml.as_bytes()));
        Ok(plan)
    }

    /// Reads, parses and validates a pipeline file.
    pub fn from_file(path: &Path, overrides: &[String], registry: &Registry) -> Result<Plan, SpecError> {
        let file = path.display().to_string();
        let yaml = std::fs::read_to_string(path)
            .map_err(|e| SpecError::single(&file, None, format!("cannot read the pipeline: {e}")))?;
        Self::from_yaml(&yaml, &file, overrides, registry)
    }

    /// A stage by id.
    pub fn stage(&self, id: &str) -> Option<&PlannedStage> {
        self.stages.iter().find(|s| s.id == id)
    }

    /// True when some stage reads the [`DEAD_LETTERS`] input.
    pub fn routes_dead_letters(&self) -> bool {
        self.stages.iter().any(|s| s.inputs.iter().any(|i| i == DEAD_LETTERS))
    }
}
