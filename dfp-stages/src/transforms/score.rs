//! `type: score` — scores every event with its user's model (or the generic model).
//!
//! ```yaml
//! scored: { type: score, inputs: [features], registry: "${models}" }
//! ```
//!
//! Input is partitioned by `username`, so each worker keeps the models of its own users in a cache
//! (`cache_capacity` models, least recently used evicted first). A cached model is re-checked against the
//! registry after `cache_ttl_secs`: a newer version is loaded without a restart. A user without a model is
//! scored by a shared model: its peer group's model when training recorded a group for the user (see
//! `train`'s `groups:`), else the generic model; a shared model holds per-user z statistics for users
//! with enough events (`calibrate:`), and those users' z-scores use them. Models are named, and their inputs chosen, by the log family (the
//! pipeline's `family:`); a model trained for another family is refused with both names. Scoring runs
//! without autograd; each input row is scored exactly once. With `stack_models` (by default on CUDA) the
//! models of a piece that share a shape run together, one batched matrix product per layer, instead of
//! one pass per model (scores agree to rounding; see `Model::losses_stacked`).
//!
//! Added columns: `model_name`, `model_version`, `model_kind` (`user`, `finetuned`, `group` or `generic`),
//! `calibrated` (the z-scores come from the user's own statistics through a shared model), one `<feature>_z_loss`
//! per model input, `mean_abs_z`, `max_abs_z`, `risk` (as `mean_abs_z`, each feature's |z| counting at most
//! `z_cap`: what to rank and threshold on), and `top_features` (the `top_features` inputs with the
//! largest |z|, comma-separated, largest first).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float32Builder, Float64Builder, RecordBatch, StringBuilder, UInt32Array, UInt64Builder};
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, Field, Schema};
use dfp_core::models::ModelRegistry;
use dfp_core::observe::{metrics, KeyValue};
use dfp_core::{
    register_stage, Batch, ConfigContext, ConfigError, Emitter, Family, Partitioning, StageConfig, StageContext,
    StageError, StageInstance, StageKind, Transform,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::model::artifact::ZMode;
use crate::model::artifact::{MANIFEST, WEIGHTS};
use crate::model::{
    feature_set, group_model_name, model_name, DeviceChoice, FeatureDef, FeatureOptions, Model, ModelKind,
};
use crate::registry::MlflowOptions;
use crate::store::S3Options;

/// Configuration of `score`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreConfig {
    /// Model registry: a directory, an `s3://bucket/prefix`, or an MLflow server (`mlflow://HOST:PORT`).
    pub registry: String,
    /// The log family (names the models and gives their input features); default: the pipeline's
    /// `family`.
    pub family: String,
    /// Model inputs beyond Morpheus's (must match what the models were trained with).
    #[serde(default)]
    pub features: FeatureOptions,
    /// Seconds before a cached model is checked for a newer version.
    #[serde(default = "d_ttl")]
    pub cache_ttl_secs: f64,
    /// Most models cached per worker.
    #[serde(default = "d_capacity")]
    pub cache_capacity: usize,
    /// How many feature names `top_features` lists.
    #[serde(default = "d_top")]
    pub top_features: usize,
    /// Rows gathered (across batches and files) before scoring, so that each user's model runs once on many
    /// rows: each call reads the model's weights (about 2.5 MB) from memory again, and libtorch's per-call
    /// costs are paid again. Reading goes on while a gather is scored as long as `runtime.max_in_flight`
    /// allows more than one gather in flight.
    #[serde(default = "d_gather_rows")]
    pub gather_rows: usize,
    /// Gathered rows are scored in pieces of about this many rows (whole users), one piece per step, so that
    /// the worker's other stages keep running in between.
    #[serde(default = "d_piece_rows")]
    pub piece_rows: usize,
    /// Longest wall-clock time rows wait to be gathered before they are scored.
    #[serde(default = "d_gather_ms")]
    pub gather_ms: u64,
    /// Gathered rows are scored as soon as no input came for this long (time this worker spends scoring
    /// does not count): the input has paused, and rows held here hold back the sinks' progress. When the
    /// sources wait for them (backpressure, `runtime.max_in_flight`) they are scored at once. Shorter
    /// than the time the worker takes to read and prepare one batch cuts every gather short (each user's
    /// model then runs on a few rows at a time).
    #[serde(default = "d_gather_idle_ms")]
    pub gather_idle_ms: u64,
    /// `auto` (CUDA when available), `cpu` or `cuda`.
    #[serde(default)]
    pub device: DeviceChoice,
    /// `abs` (Morpheus: `mean_abs_z` averages |z|) or `positive` (only losses above normal count: z below 0
    /// becomes 0 in `mean_abs_z` and `max_abs_z`).
    #[serde(default)]
    pub z: ZMode,
    /// Most a single feature's |z| counts in `risk` (a feature whose training spread was near zero can
    /// otherwise reach z in the thousands and rank one odd value above every multi-feature anomaly).
    #[serde(default = "d_z_cap")]
    pub z_cap: f64,
    /// `f32` (as trained) or `bf16` (hidden layers in bfloat16: faster on CPUs with AVX-512 BF16/AMX; scores
    /// move slightly).
    #[serde(default)]
    pub precision: Precision,
    /// `auto` (on CUDA), `always` or `never`: score the rows of many users' models in one batched pass per
    /// model shape (weights stacked, one batched matrix product per layer) instead of one pass per model.
    /// A GPU needs few large calls; on a CPU each pass copies the models' weights, which costs more than
    /// it saves. Scores agree with per-model scoring to rounding.
    #[serde(default)]
    pub stack_models: StackModels,
    /// S3 settings for an `s3://` registry (or an MLflow artifact store on S3).
    #[serde(default)]
    pub s3: S3Options,
    /// MLflow settings (alias, experiment name, credentials) for an `mlflow://` registry.
    #[serde(default)]
    pub mlflow: MlflowOptions,
}

/// Arithmetic used for scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats, as trained.
    #[default]
    F32,
    /// bfloat16 weights and activations.
    Bf16,
}

/// When `score` stacks models into batched passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StackModels {
    /// On CUDA, not on the CPU.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never: one pass per model.
    Never,
}

/// How often a gathering stage looks whether the sources are held back.
const GATHER_POLL: Duration = Duration::from_millis(1);

/// Rows per forward pass of a shared (generic or group) model (the last chunk of a batch is padded to it).
const SHARED_CHUNK: usize = 128;

fn d_ttl() -> f64 {
    60.0
}
fn d_capacity() -> usize {
    10_000
}
fn d_z_cap() -> f64 {
    50.0
}
fn d_top() -> usize {
    3
}
fn d_gather_rows() -> usize {
    16_384
}
fn d_piece_rows() -> usize {
    4096
}
fn d_gather_ms() -> u64 {
    1000
}
fn d_gather_idle_ms() -> u64 {
    100
}

impl StageConfig for ScoreConfig {
    const TYPE: &'static str = "score";
    const KIND: StageKind = StageKind::Transform;
    const DESCRIPTION: &'static str = "scores events with the user's model (or the generic one): z-scores per feature";
    const RENAMED: &'static [(&'static str, &'static str)] = &[(
        "source",
        "name the log family once at the top of the pipeline (`family: azure`), or with `family:` on this stage",
    )];
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.cache_ttl_secs.is_finite() || self.cache_ttl_secs < 0.0 {
            return Err(ConfigError::field("cache_ttl_secs", "must be zero or more"));
        }
        if self.piece_rows == 0 {
            return Err(ConfigError::field("piece_rows", "must be at least 1"));
        }
        if self.cache_capacity == 0 {
            return Err(ConfigError::field("cache_capacity", "must be at least 1"));
        }
        if !(self.z_cap.is_finite() && self.z_cap > 0.0) {
            return Err(ConfigError::field("z_cap", "must be a positive number"));
        }
        Ok(())
    }
    fn check(&self, ctx: &ConfigContext<'_>) -> Result<(), ConfigError> {
        ctx.family(&self.family).map(|_| ())
    }
    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        let family = ctx.family(&self.family)?;
        Ok(StageInstance::Transform(Box::new(Score {
            defs: feature_set(&family, &self.features),
            family,
            config: self.clone(),
            registry: None,
            cache: HashMap::new(),
            lru: BTreeMap::new(),
            listing: None,
            broken: HashMap::new(),
            tick: 0,
            pending: Vec::new(),
            pending_rows: 0,
            oldest: None,
            frontier: 0,
            latest: Instant::now(),
            queue: VecDeque::new(),
            registry_errors: 0,
            registry_down: None,
            ctx: None,
            labels: Vec::new(),
        })))
    }
}
register_stage!(ScoreConfig);

/// What the stage knows of one model name.
struct Cached {
    /// The model, or `None` when the registry has none or its latest version cannot be used.
    model: Option<Model>,
    version: u64,
    checked: Instant,
    used: u64,
}

/// The names of the models the registry holds, listed at most once per TTL: a user without a model (most
/// users of a large tenant, every name of a spray with made-up user names) then costs no registry call and
/// no cache entry.
struct Listing {
    names: HashSet<String>,
    at: Instant,
}

/// One model's share of a batch being scored: the rows (indices into the batch), encoded as the model's
/// inputs, and each row's z statistics (empty: the model's).
struct Job<'a> {
    model: &'a Model,
    model_index: u32,
    version: u64,
    kind: ModelKind,
    rows: Vec<u32>,
    stats: Vec<Option<&'a crate::model::UserStats>>,
    encoded: crate::model::Encoded,
}

/// Gathered rows waiting to be scored: `times` gives each row's logical time when they differ (else every
/// row has the envelope's).
struct Piece {
    batch: Batch,
    times: Option<Vec<Option<u64>>>,
}

struct Score {
    config: ScoreConfig,
    family: Arc<Family>,
    defs: Vec<FeatureDef>,
    registry: Option<Arc<dyn ModelRegistry>>,
    cache: HashMap<String, Cached>,
    /// The cache's names by last use (`Cached::used`), least recently used first.
    lru: BTreeMap<u64, String>,
    listing: Option<Listing>,
    /// Model versions found unusable, with why (warned about once each).
    broken: HashMap<(String, u64), String>,
    tick: u64,
    pending: Vec<Batch>,
    pending_rows: usize,
    oldest: Option<Instant>,
    /// The input frontier: every batch below it has come.
    frontier: u64,
    /// When the last input came, or this worker last finished scoring a piece: no input can come while
    /// it scores, so that time does not count as the input being idle (else every gather would end at the
    /// first piece scored, and each user's model would run on a few dozen rows).
    latest: Instant,
    /// Gathered rows cut into pieces of whole users, scored one piece per activation: the worker's other
    /// stages (and, through the exchange, the other workers) keep running between pieces instead of
    /// waiting for a whole gather to be scored.
    queue: VecDeque<Piece>,
    /// Failed registry calls so far (logged; the stage keeps scoring with cached models).
    registry_errors: u64,
    /// The last registry failure, while the registry is failing.
    registry_down: Option<String>,
    /// Where the stage runs (readiness reports), once open.
    ctx: Option<StageContext>,
    /// Metric labels (`stage`).
    labels: Vec<KeyValue>,
}

impl Score {
    /// Makes sure the cache holds the latest model under `name` (re-checking after the TTL); returns its
    /// version, or `None` when the registry has no such model.
    fn resolve(&mut self, name: &str) -> Result<Option<u64>, StageError> {
        match self.lookup(name) {
            Ok(found) => {
                if self.registry_down.take().is_some() {
                    tracing::info!(registry = %self.config.registry, "model registry reachable again");
                    if let Some(ctx) = &self.ctx {
                        ctx.set_readiness(Ok(()));
                    }
                }
                Ok(found)
            }
            // The registry is unreachable or failing: keep scoring with what is cached (or let the caller
            // fall back to the generic model), and ask again after the TTL.
            Err(StageError::Registry(message)) => {
                self.registry_errors += 1;
                if let Some(m) = metrics() {
                    let mut labels = self.labels.clone();
                    labels.push(KeyValue::new("operation", "load"));
                    m.registry_errors.add(1, &labels);
                }
                if let Some(ctx) = &self.ctx {
                    ctx.set_readiness(Err(format!("model registry {} failing: {message}", self.config.registry)));
                }
                if self.registry_down.is_none() {
                    tracing::warn!(
                        registry = %self.config.registry,
                        errors = self.registry_errors,
                        "model registry failing; scoring with cached models: {message}"
                    );
                }
                self.registry_down = Some(message);
                if !self.cache.contains_key(name) {
                    return Ok(None);
                }
                let found = self.touch(name);
                if let Some(c) = self.cache.get_mut(name) {
                    c.checked = Instant::now();
                }
                Ok(found)
            }
            Err(e) => Err(e),
        }
    }

    /// Marks a cached name as just used; returns its version when it holds a model.
    fn touch(&mut self, name: &str) -> Option<u64> {
        self.tick += 1;
        let c = self.cache.get_mut(name)?;
        self.lru.remove(&c.used);
        c.used = self.tick;
        self.lru.insert(self.tick, name.to_string());
        c.model.as_ref().map(|_| c.version)
    }

    /// Whether the registry may hold `name`, from a listing at most one TTL old (`true` when the registry
    /// cannot be listed: then it is asked by name).
    fn may_exist(&mut self, name: &str, ttl: Duration) -> bool {
        if self.listing.as_ref().is_none_or(|l| l.at.elapsed() > ttl) {
            let Some(registry) = &self.registry else { return true };
            self.listing = match registry.list() {
                Ok(models) => Some(Listing { names: models.into_iter().map(|m| m.name).collect(), at: Instant::now() }),
                Err(e) => {
                    tracing::debug!(registry = %self.config.registry, "cannot list the registry; asking per model: {e}");
                    None
                }
            };
        }
        self.listing.as_ref().is_none_or(|l| l.names.contains(name))
    }

    fn lookup(&mut self, name: &str) -> Result<Option<u64>, StageError> {
        let ttl = Duration::from_secs_f64(self.config.cache_ttl_secs);
        if self.cache.get(name).is_some_and(|c| c.checked.elapsed() <= ttl) {
            if let Some(m) = metrics() {
                m.model_cache_hits.add(1, &self.labels);
            }
            return Ok(self.touch(name));
        }
        if !self.cache.contains_key(name) && !self.may_exist(name, ttl) {
            if let Some(m) = metrics() {
                let mut labels = self.labels.clone();
                labels.push(KeyValue::new("result", "absent"));
                m.model_cache_misses.add(1, &labels);
            }
            return Ok(None);
        }
        let started = Instant::now();
        let registry = self.registry.as_ref().ok_or_else(|| StageError::Other("registry not open".into()))?.clone();
        let latest = registry.latest(name).map_err(|e| StageError::Registry(e.to_string()))?;
        let cached_version = self.cache.get(name).filter(|c| c.model.is_some()).map(|c| c.version);
        if let (Some(v), Some(c)) = (latest, self.cache.get_mut(name)) {
            if Some(v) == cached_version || self.broken.contains_key(&(name.to_string(), v)) {
                // Re-checked, unchanged: served from the cache (a broken version stays refused).
                c.checked = Instant::now();
                if let Some(m) = metrics() {
                    m.model_cache_hits.add(1, &self.labels);
                }
                return Ok(self.touch(name));
            }
        }
        let model = match latest {
            None => None,
            Some(v) => {
                let manifest = registry.fetch(name, v, MANIFEST).map_err(|e| StageError::Registry(e.to_string()))?;
                let weights = registry.fetch(name, v, WEIGHTS).map_err(|e| StageError::Registry(e.to_string()))?;
                let mut usable = self.usable(name, &manifest, &weights)?;
                if let Ok(model) = &mut usable {
                    // The version's further files: a shared model's calibration, the generic model's groups.
                    for file in model.manifest.files.clone() {
                        let bytes = registry.fetch(name, v, &file).map_err(|e| StageError::Registry(e.to_string()))?;
                        if let Err(e) = model.attach(&file, &bytes) {
                            usable = Err(e.to_string());
                            break;
                        }
                    }
                }
                match usable {
                    Ok(model) => {
                        if cached_version.is_some() {
                            tracing::info!(model = name, version = v, "newer model version loaded");
                        }
                        Some(model)
                    }
                    Err(why) => {
                        self.refuse(name, v, &why);
                        None
                    }
                }
            }
        };
        if self.cache.len() >= self.config.cache_capacity && !self.cache.contains_key(name) {
            if let Some((_, oldest)) = self.lru.pop_first() {
                self.cache.remove(&oldest);
            }
        }
        let version = latest.unwrap_or(0);
        let found = model.is_some();
        if let Some(m) = metrics() {
            let mut labels = self.labels.clone();
            labels.push(KeyValue::new("result", if found { "loaded" } else { "absent" }));
            m.model_cache_misses.add(1, &labels);
            if found {
                m.model_load_seconds.record(started.elapsed().as_secs_f64(), &self.labels);
            }
        }
        if let Some(old) =
            self.cache.insert(name.to_string(), Cached { model, version, checked: Instant::now(), used: 0 })
        {
            self.lru.remove(&old.used);
        }
        Ok(self.touch(name).filter(|_| found))
    }

    /// The cached model under `name`, if it holds one.
    fn cached(&self, name: &str) -> Option<&Model> {
        self.cache.get(name).and_then(|c| c.model.as_ref())
    }

    /// A model from its files, checked against this pipeline: `Ok(Err(why))` when it cannot be used.
    fn usable(&self, name: &str, manifest: &[u8], weights: &[u8]) -> Result<Result<Model, String>, StageError> {
        let device = self.config.device.device().map_err(StageError::Other)?;
        let checked = Model::from_files(name, manifest, weights, device).and_then(|mut model| {
            model.check_family(&self.family.name)?;
            model.check_features(&self.defs)?;
            if self.config.precision == Precision::Bf16 {
                model.to_bf16();
            }
            let stack = match self.config.stack_models {
                StackModels::Auto => device.is_cuda(),
                StackModels::Always => true,
                StackModels::Never => false,
            };
            if stack {
                model.prepare_stacking();
            }
            Ok(model)
        });
        Ok(checked.map_err(|e| e.to_string()))
    }

    /// A model version that cannot be used: its users are scored by the generic model. Said once per
    /// version (a fixed version is picked up after the TTL).
    fn refuse(&mut self, name: &str, version: u64, why: &str) {
        if let Some(m) = metrics() {
            m.model_load_errors.add(1, &self.labels);
        }
        if self.broken.insert((name.to_string(), version), why.to_string()).is_none() {
            tracing::warn!(
                model = name,
                version,
                "model cannot be used; its user is scored by the generic model: {why}"
            );
            if let Some(ctx) = &self.ctx {
                ctx.note(format!(
                    "model {name} v{version} cannot be used ({why}); its user is scored by the generic model"
                ));
            }
        }
    }
}

impl Transform for Score {
    fn input_partitioning(&self) -> Partitioning {
        Partitioning::By("username".into())
    }

    fn open(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        // Per-user batches are small: libtorch's thread pool would cost more (spinning) than it gains.
        tch::set_num_threads(1);
        let device = self.config.device.device().map_err(StageError::Other)?;
        if ctx.worker_index == 0 && device.is_cuda() {
            tracing::info!(stage = %ctx.stage_id, device = ?device, "scoring device");
        }
        let registry = crate::registry::open(&self.config.registry, &self.config.s3, &self.config.mlflow)
            .map_err(|e| StageError::Other(e.to_string()))?;
        self.labels = vec![KeyValue::new("stage", ctx.stage_id.clone())];
        // Readiness: models are loadable when the registry answers (whether or not a model exists yet).
        // Worker 0 asks, so that a cluster does not hit the registry once per worker.
        if ctx.worker_index == 0 {
            let generic = model_name(&self.family, None);
            match registry.latest(&generic) {
                Ok(_) => ctx.set_readiness(Ok(())),
                Err(e) => {
                    tracing::warn!(registry = %self.config.registry, error = %e, "model registry not reachable yet; scoring will retry");
                    self.registry_down = Some(e.to_string());
                    ctx.set_readiness(Err(format!("model registry {} not reachable: {e}", self.config.registry)));
                }
            }
        }
        self.registry = Some(registry);
        self.ctx = Some(ctx.clone());
        Ok(())
    }

    fn process(&mut self, batch: Batch, out: &mut Emitter) -> Result<(), StageError> {
        self.pending_rows += batch.num_rows();
        self.pending.push(batch);
        self.latest = Instant::now();
        self.oldest.get_or_insert(self.latest);
        if self.pending_rows >= self.config.gather_rows {
            self.enqueue()?;
        }
        self.score_piece(out)
    }

    fn poll_timer(&mut self, out: &mut Emitter) -> Result<Option<Duration>, StageError> {
        let wait = Duration::from_millis(self.config.gather_ms);
        let idle = Duration::from_millis(self.config.gather_idle_ms);
        if let Some(oldest) = self.oldest {
            // The sources wait for what is gathered here (backpressure), and everything they sent has come:
            // nothing more comes until these rows are scored.
            let held = self.ctx.as_ref().and_then(StageContext::sources_held_back);
            let held_back = held.is_some_and(|t| self.frontier >= t);
            if held_back || oldest.elapsed() >= wait || self.latest.elapsed() >= idle {
                self.enqueue()?;
            }
        }
        self.score_piece(out)?;
        if !self.queue.is_empty() {
            return Ok(Some(Duration::ZERO));
        }
        // While gathering, look again at the next deadline, and often enough to see the sources held back.
        Ok(self
            .oldest
            .map(|t| wait.saturating_sub(t.elapsed()).min(idle.saturating_sub(self.latest.elapsed())).min(GATHER_POLL)))
    }

    fn advance(&mut self, frontier: u64, _out: &mut Emitter) -> Result<(), StageError> {
        self.frontier = frontier;
        Ok(())
    }

    fn holding(&self) -> Option<u64> {
        let queued = self.queue.iter().map(|p| &p.batch);
        self.pending.iter().chain(queued).filter_map(|b| b.envelope.time).min()
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<(), StageError> {
        self.enqueue()?;
        while !self.queue.is_empty() {
            self.score_piece(out)?;
        }
        if self.registry_errors > 0 {
            tracing::warn!(registry = %self.config.registry, errors = self.registry_errors, "model registry calls failed during the run");
        }
        Ok(())
    }
}

impl Score {
    /// Moves everything gathered into the queue, cut into pieces of whole users. Each row keeps the logical
    /// time it came at: a piece's envelope has the oldest, and when its rows came at several times it leaves
    /// as one batch per time (so downstream, and the commits of a Kafka source, see every row at its own
    /// time however the rows were gathered).
    fn enqueue(&mut self) -> Result<(), StageError> {
        let pending = std::mem::take(&mut self.pending);
        self.pending_rows = 0;
        self.oldest = None;
        let Some(first) = pending.first() else { return Ok(()) };
        let mut envelope = first.envelope.clone();
        envelope.time = pending.iter().filter_map(|b| b.envelope.time).min();
        let mixed = pending.iter().any(|b| b.envelope.time != first.envelope.time);
        let times: Option<Vec<Option<u64>>> =
            mixed.then(|| pending.iter().flat_map(|b| std::iter::repeat_n(b.envelope.time, b.num_rows())).collect());
        let parts: Vec<&RecordBatch> = pending.iter().map(|b| &b.data).collect();
        let gathered = arrow::compute::concat_batches(&first.data.schema(), parts)
            .map_err(|e| StageError::Data(format!("score: input batches disagree on columns: {e}")))?;
        let piece = |data: RecordBatch, times: Option<Vec<Option<u64>>>| {
            let mut envelope = envelope.clone();
            if let Some(t) = &times {
                envelope.time = t.iter().flatten().min().copied();
            }
            Piece { batch: Batch { data, envelope }, times }
        };
        if gathered.num_rows() <= self.config.piece_rows {
            self.queue.push_back(piece(gathered, times));
            return Ok(());
        }
        let users = super::users(&gathered, "score")?;
        let mut rows: Vec<u32> = Vec::with_capacity(self.config.piece_rows * 2);
        let mut pieces = Vec::new();
        let take = |rows: Vec<u32>| -> Result<Piece, StageError> {
            let part_times = times.as_ref().map(|t| rows.iter().map(|&i| t[i as usize]).collect());
            Ok(piece(take_record_batch(&gathered, &UInt32Array::from(rows))?, part_times))
        };
        for (_, idx) in super::rows_by_user(users) {
            rows.extend_from_slice(&idx);
            if rows.len() >= self.config.piece_rows {
                pieces.push(take(std::mem::take(&mut rows))?);
            }
        }
        if !rows.is_empty() {
            pieces.push(take(rows)?);
        }
        self.queue.extend(pieces);
        Ok(())
    }

    /// Scores the next queued piece, if any.
    fn score_piece(&mut self, out: &mut Emitter) -> Result<(), StageError> {
        let Some(Piece { batch, times }) = self.queue.pop_front() else { return Ok(()) };
        let started = Instant::now();
        let rows = batch.num_rows();
        let scored = self.score_batch(batch)?;
        self.latest = Instant::now();
        match times {
            None => out.emit(scored),
            Some(times) => {
                let mut by_time: BTreeMap<Option<u64>, Vec<u32>> = BTreeMap::new();
                for (i, t) in times.iter().enumerate() {
                    by_time.entry(*t).or_default().push(i as u32);
                }
                for (t, idx) in by_time {
                    let mut part = scored.with_data(take_record_batch(&scored.data, &UInt32Array::from(idx))?);
                    part.envelope.time = t;
                    out.emit(part);
                }
            }
        }
        tracing::trace!(rows, ms = started.elapsed().as_millis() as u64, queued = self.queue.len(), "scored a piece");
        Ok(())
    }

    fn score_batch(&mut self, batch: Batch) -> Result<Batch, StageError> {
        // On a GPU each worker queues its work on a stream of its own.
        #[cfg(feature = "cuda")]
        let _stream = match self.config.device.device() {
            Ok(tch::Device::Cuda(index)) => crate::model::cuda::worker_stream(index),
            _ => None,
        };
        let data = &batch.data;
        let n = data.num_rows();
        let users = super::users(data, "score")?.clone();
        let names: Vec<String> = self.defs.iter().map(|d| d.name.clone()).collect();
        // Only the model inputs are copied per user (a missing one is reported by the encoder).
        let present: Vec<usize> = names.iter().filter_map(|f| data.schema().index_of(f).ok()).collect();
        let inputs = data.project(&present)?;
        // Row-major z-scores (`n × features`) and, per row, an index into `models` — no per-row allocation.
        let width = names.len();
        let mut z = vec![0f32; n * width];
        let mut mean = vec![0.0; n];
        let mut max = vec![0.0; n];
        let mut models: Vec<String> = Vec::new();
        let mut model_of = vec![0u32; n];
        let mut versions = vec![0u64; n];
        let mut kinds: Vec<&'static str> = vec![""; n];
        let mut calibrated = vec![false; n];
        // Each user's rows go to the user's model (`user` or `finetuned`); the rows of every user scored by
        // a shared model (the user's peer group's, else the generic one) are scored together per model (one
        // forward pass per user would make a spray of distinct names slow).
        let mut groups: Vec<(String, u64, ModelKind, Vec<u32>)> = Vec::new();
        let mut shared: HashMap<String, usize> = HashMap::new();
        let generic = model_name(&self.family, None);
        for (user, idx) in super::rows_by_user(&users) {
            let user = user.unwrap_or("");
            let user_name = model_name(&self.family, Some(user));
            if let Some(v) = self.resolve(&user_name)? {
                let kind = self.cached(&user_name).map_or(ModelKind::User, |m| m.manifest.kind());
                groups.push((user_name, v, kind, idx));
                continue;
            }
            let Some(generic_version) = self.resolve(&generic)? else {
                let broken = self.broken.iter().find(|((n, _), _)| *n == generic);
                return Err(StageError::Other(match (&self.registry_down, broken) {
                    (_, Some(((_, v), why))) => format!(
                        "no model for user \"{user}\" and the generic model {generic} v{v} cannot be used: {why}"
                    ),
                    (Some(why), None) => format!(
                        "no model for user \"{user}\" and the generic model {generic} is not cached while the registry fails: {why}"
                    ),
                    (None, None) => format!(
                        "no model for user \"{user}\" and no generic model {generic} in {}: run the training pipeline first",
                        self.config.registry
                    ),
                }));
            };
            // The user's peer group (recorded with the generic model), when its model can be had.
            let group =
                self.cached(&generic).and_then(|g| g.groups.get(user)).map(|g| group_model_name(&self.family, g));
            let (name, version, kind) = match group {
                Some(name) => match self.resolve(&name)? {
                    Some(v) => (name, v, ModelKind::Group),
                    None => (generic.clone(), generic_version, ModelKind::Generic),
                },
                None => (generic.clone(), generic_version, ModelKind::Generic),
            };
            match shared.get(&name) {
                Some(&g) => groups[g].3.extend(idx),
                None => {
                    shared.insert(name.clone(), groups.len());
                    groups.push((name, version, kind, idx));
                }
            }
        }
        // One job per model (per chunk for a shared model): its rows, encoded, and their z statistics.
        let mut jobs: Vec<Job<'_>> = Vec::new();
        for (name, version, kind, idx) in groups {
            let model =
                self.cached(&name).ok_or_else(|| StageError::Other(format!("model {name} vanished from the cache")))?;
            // A shared model's rows come from whichever users share this worker and batch: they are scored
            // in chunks of a fixed size (the last one padded), so that a row's score never depends on the
            // rows scored with it (the numeric kernels choose their path by shape).
            let is_shared = kind.shared();
            let chunks: Vec<&[u32]> = if is_shared { idx.chunks(SHARED_CHUNK).collect() } else { vec![idx.as_slice()] };
            models.push(name.clone());
            let model_index = (models.len() - 1) as u32;
            for chunk in chunks {
                let mut take: Vec<u32> = chunk.to_vec();
                // A shared model's z statistics: the user's own (calibration) where training recorded them.
                let mut stats: Vec<Option<&crate::model::UserStats>> = Vec::new();
                if is_shared {
                    take.resize(SHARED_CHUNK, chunk[0]);
                    if !model.calibration.is_empty() {
                        // A user's rows are consecutive here: one lookup per user, not per row.
                        let mut last: Option<(&str, Option<&crate::model::UserStats>)> = None;
                        for &r in chunk {
                            let user = users.value(r as usize);
                            let found = match last {
                                Some((u, found)) if u == user => found,
                                _ => model.calibration.get(user),
                            };
                            last = Some((user, found));
                            stats.push(found);
                        }
                    }
                }
                let rows = take_record_batch(&inputs, &UInt32Array::from(take))?;
                let encoded = model.encode(&rows).map_err(|e| StageError::Data(format!("scoring with {name}: {e}")))?;
                jobs.push(Job { model, model_index, version, kind, rows: chunk.to_vec(), stats, encoded });
            }
        }
        // Losses: the models prepared for stacking in batched passes per key, the others one by one.
        let encoded: Vec<(&Model, &crate::model::Encoded)> = jobs.iter().map(|j| (j.model, &j.encoded)).collect();
        if tracing::enabled!(tracing::Level::DEBUG) {
            // Stacked: the models of a key that more than one job has (a job alone under its key runs alone).
            let mut per_key: HashMap<&crate::model::net::StackKey, usize> = HashMap::new();
            for key in jobs.iter().filter_map(|j| j.model.stack_key()) {
                *per_key.entry(key).or_default() += 1;
            }
            let stacked: HashSet<u32> = jobs
                .iter()
                .filter(|j| j.model.stack_key().is_some_and(|k| per_key[k] > 1))
                .map(|j| j.model_index)
                .collect();
            if !stacked.is_empty() {
                tracing::debug!(models = stacked.len(), jobs = jobs.len(), "models scored in stacked passes");
            }
        }
        let losses = Model::losses_stacked(&encoded);
        for (job, losses) in jobs.iter().zip(losses) {
            let scores = job.model.scores_of_losses(losses, self.config.z, &job.stats);
            let position: Vec<usize> =
                names.iter().map(|f| scores.features.iter().position(|g| g == f).unwrap_or(usize::MAX)).collect();
            for (k, &row) in job.rows.iter().enumerate() {
                let row = row as usize;
                for (j, &p) in position.iter().enumerate() {
                    if p != usize::MAX {
                        z[row * width + j] = scores.z[k][p];
                    }
                }
                mean[row] = scores.mean_abs_z[k];
                max[row] = scores.max_abs_z[k];
                model_of[row] = job.model_index;
                versions[row] = job.version;
                kinds[row] = job.kind.as_str();
                calibrated[row] = job.stats.get(k).is_some_and(Option::is_some);
            }
        }
        let mut fields: Vec<Field> = data.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut cols: Vec<ArrayRef> = data.columns().to_vec();
        fields.push(Field::new("model_name", DataType::Utf8, false));
        cols.push(Arc::new(arrow::array::StringArray::from_iter_values(
            model_of.iter().map(|m| models[*m as usize].as_str()),
        )));
        let mut vb = UInt64Builder::with_capacity(n);
        vb.append_slice(&versions);
        fields.push(Field::new("model_version", DataType::UInt64, false));
        cols.push(Arc::new(vb.finish()));
        fields.push(Field::new("model_kind", DataType::Utf8, false));
        cols.push(Arc::new(arrow::array::StringArray::from(kinds)));
        fields.push(Field::new("calibrated", DataType::Boolean, false));
        cols.push(Arc::new(arrow::array::BooleanArray::from(calibrated)));
        for (j, f) in names.iter().enumerate() {
            let mut b = Float32Builder::with_capacity(n);
            for row in z.chunks_exact(width.max(1)) {
                b.append_value(row[j]);
            }
            fields.push(Field::new(format!("{f}_z_loss"), DataType::Float32, false));
            cols.push(Arc::new(b.finish()));
        }
        let mut mb = Float64Builder::with_capacity(n);
        mb.append_slice(&mean);
        let mut xb = Float64Builder::with_capacity(n);
        xb.append_slice(&max);
        fields.push(Field::new("mean_abs_z", DataType::Float64, false));
        cols.push(Arc::new(mb.finish()));
        fields.push(Field::new("max_abs_z", DataType::Float64, false));
        cols.push(Arc::new(xb.finish()));
        // risk: the mean over features of |z| (or z above 0 with `z: positive`), each at most `z_cap`.
        let cap = self.config.z_cap;
        let mut rb = Float64Builder::with_capacity(n);
        for row in z.chunks_exact(width.max(1)).take(n) {
            rb.append_value(self.config.z.risk(row, cap));
        }
        fields.push(Field::new("risk", DataType::Float64, false));
        cols.push(Arc::new(rb.finish()));
        let mut top = StringBuilder::with_capacity(n, n * 48);
        let mut order: Vec<usize> = Vec::with_capacity(width);
        let mut text = String::with_capacity(96);
        for row in z.chunks_exact(width.max(1)) {
            order.clear();
            order.extend(0..width);
            order.sort_by(|a, b| row[*b].abs().total_cmp(&row[*a].abs()).then(a.cmp(b)));
            text.clear();
            for (i, j) in order.iter().take(self.config.top_features).enumerate() {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(&names[*j]);
            }
            top.append_value(&text);
        }
        fields.push(Field::new("top_features", DataType::Utf8, false));
        cols.push(Arc::new(top.finish()));
        let scored = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?;
        Ok(batch.with_data(scored))
    }
}
