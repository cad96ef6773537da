//! `type: train` — trains per-user models (or the generic model) and publishes them to a registry.
//!
//! ```yaml
//! users:   { type: train, inputs: [features], registry: "${models}" }
//! generic: { type: train, inputs: [features], registry: "${models}", scope: generic }
//! report:  { type: file-sink, inputs: [users, generic], path: out/training-report.jsonl }
//! ```
//!
//! `scope: users` (the default) takes its input partitioned by `username`; every user with at least `min_history` events in the `max_history_days` before
//! their latest event gets a model `DFP-{prefix}-{user}` (the log family's model prefix; user escaped, see
//! `model::escape_user`). The family (the pipeline's `family:`) also gives the model's input features, and
//! each model's manifest records it.
//! `scope: generic` gathers every row on one worker and trains `DFP-{prefix}-=generic` on the window before
//! the latest event. Each model is trained once per run, when the input ends: the stage then hands its
//! models to the process's training pool (`model::pool`: as many threads as the process has workers, the
//! heaviest model first) and reports them, in its own order, once all are done.
//!
//! **Users with little history** (fewer than `min_history` events) are scored by shared models. The
//! generic stage can serve them better (docs/models.md, "Users with little history"):
//!
//! ```yaml
//! generic:
//!   type: train
//!   scope: generic
//!   min_history: 300                  # as on the users stage: those users get their own model there
//!   finetune: { min_history: 40 }     # 40–299 events: a model fine-tuned from the shared one (kind finetuned)
//!   groups: { by: behaviour }         # or a directory field: { by: department, directory: hr.csv }
//!   calibrate: { min_history: 20 }    # the user's own z statistics through the shared model
//! ```
//!
//! Peer groups (`DFP-{prefix}-=group-{group}`, kind `group`) are the generic model fine-tuned on the events
//! of the group's users; membership is stored with the generic model (`groups.json`), per-user statistics
//! with the shared model that scores the user (`calibration.json`). Fine-tuning costs at most
//! `finetune.epochs` passes over the rows of the users fine-tuned, in the generic stage's one training job.
//!
//! **Promotion** (`promotion: { holdout_from: … }`, what `dfp retrain` sets): the newest events are held
//! out of training, and each model is published only when it is not worse than the version in service on
//! them (the `promote` module has the criteria).
//!
//! The stage emits one report row per user or model: `model`, `kind` (`user`, `finetuned`, `group`,
//! `generic`), `status` (`trained`, `skipped`, or `shared`: a user scored by a shared model), `version`,
//! `rows`, `epochs_run`, `train_loss`, `validation_loss`, `seconds`, `reason`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, Float64Builder, RecordBatch, StringBuilder, UInt64Builder};
use arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, TimestampMicrosecondType};
use dfp_core::models::ModelRegistry;
use dfp_core::observe::{metrics, KeyValue};
use dfp_core::{
    register_stage, Batch, ConfigContext, ConfigError, Emitter, Family, Partitioning, StageConfig, StageContext,
    StageError, StageInstance, StageKind, Transform,
};
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use schemars::JsonSchema;
use serde::Deserialize;

use super::promote::{decide, figures, Figures, PromotionConfig};
use crate::model::artifact::{MANIFEST, WEIGHTS};
use crate::model::pool::{self, Polled, Ticket};
use crate::model::{
    feature_set, group_model_name, model_name, peers, train_from, DeviceChoice, FeatureDef, FeatureOptions, Model,
    ModelKind, TrainConfig, UserStats,
};
use crate::registry::MlflowOptions;
use crate::store::S3Options;
use crate::time::DAY_MICROS;

/// Which models a `train` stage trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One model per user with enough history.
    #[default]
    Users,
    /// One model on everybody's events.
    Generic,
}

/// Configuration of `train`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainStageConfig {
    /// Model registry: a directory, an `s3://bucket/prefix`, or an MLflow server (`mlflow://HOST:PORT`).
    pub registry: String,
    /// The log family (names the models and gives their input features); default: the pipeline's
    /// `family`.
    pub family: String,
    /// `users` or `generic`.
    #[serde(default)]
    pub scope: Scope,
    /// Fewest events a user needs in the window to get a model.
    #[serde(default = "d_min_history")]
    pub min_history: usize,
    /// Days of history before the latest event that training uses.
    #[serde(default = "d_max_history")]
    pub max_history_days: u32,
    /// Train on at most this many rows of the window (a random sample), per model.
    #[serde(default)]
    pub sample: Option<usize>,
    /// Leave out each user's events of the first this many days of the input (they still built the
    /// user's history in `features`): in those days every app, country and device is "new" because the
    /// history starts empty, which inference (starting from the user's profile) never sees. A user whose
    /// events span less than twice this, or who would fall below `min_history` without them, keeps them
    /// all. Ignored with `features.morpheus`.
    #[serde(default)]
    pub warmup_days: f64,
    /// Fine-tune each model from its latest version in the registry (when there is one) instead of
    /// training from scratch; the previous encoding is kept.
    #[serde(default)]
    pub warm_start: bool,
    /// Model inputs beyond Morpheus's.
    #[serde(default)]
    pub features: FeatureOptions,
    /// Hyper-parameters.
    #[serde(default)]
    pub training: TrainConfig,
    /// Fine-tuned models for users with fewer than `min_history` events (`scope: generic` only: they start
    /// from the model this stage trains).
    #[serde(default)]
    pub finetune: FinetuneConfig,
    /// Peer-group models (`scope: generic` only).
    #[serde(default)]
    pub groups: GroupsConfig,
    /// Per-user z statistics through the shared models (`scope: generic` only).
    #[serde(default)]
    pub calibrate: CalibrateConfig,
    /// Publish a model only when it is not worse than the version in service, judged on held-out recent
    /// events (`promotion.holdout_from`); see the `promote` module and docs/deploy.md, "Retraining".
    #[serde(default)]
    pub promotion: PromotionConfig,
    /// `auto` (CUDA when available), `cpu` or `cuda`.
    #[serde(default)]
    pub device: DeviceChoice,
    /// S3 settings for an `s3://` registry (or an MLflow artifact store on S3).
    #[serde(default)]
    pub s3: S3Options,
    /// MLflow settings (alias, experiment name, credentials) for an `mlflow://` registry.
    #[serde(default)]
    pub mlflow: MlflowOptions,
}

/// `finetune:` of a `scope: generic` train stage.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// Fewest events in the window for a fine-tuned model (users with `min_history` or more get their own
    /// model from the `scope: users` stage); 0, the default, fine-tunes none.
    #[serde(default)]
    pub min_history: usize,
    /// Epochs of fine-tuning.
    #[serde(default = "d_finetune_epochs")]
    pub epochs: usize,
    /// Rows per step while fine-tuning (a user with 50 events then takes a few steps per epoch, not one).
    #[serde(default = "d_finetune_batch")]
    pub batch_size: usize,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig { min_history: 0, epochs: d_finetune_epochs(), batch_size: d_finetune_batch() }
    }
}

/// `groups:` of a `scope: generic` train stage.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupsConfig {
    /// `behaviour` (users whose events look alike: k-means on apps, devices, places, hours, volumes), a
    /// directory attribute (a field of `directory`, e.g. `department`; without `directory`, a column of
    /// the input, each user's most frequent value), or empty (the default): no groups.
    #[serde(default)]
    pub by: String,
    /// A directory export (CSV with a header row, or JSON lines) with one row per user, as for
    /// `add-user-data`: `by` names one of its fields. Users missing from it get no group.
    #[serde(default)]
    pub directory: Option<String>,
    /// The directory's user-name field.
    #[serde(default = "d_directory_key")]
    pub directory_key: String,
    /// `by: behaviour`: how many groups.
    #[serde(default = "d_group_count")]
    pub count: usize,
    /// Fewest events (of all its users) a group needs for a model.
    #[serde(default = "d_min_history")]
    pub min_history: usize,
    /// Epochs of fine-tuning the generic model on a group's events.
    #[serde(default = "d_group_epochs")]
    pub epochs: usize,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            by: String::new(),
            directory: None,
            directory_key: d_directory_key(),
            count: d_group_count(),
            min_history: d_min_history(),
            epochs: d_group_epochs(),
        }
    }
}

/// `calibrate:` of a `scope: generic` train stage.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CalibrateConfig {
    /// Fewest events of a user scored by a shared model for the user's own z statistics; 0, the default,
    /// calibrates nobody.
    #[serde(default)]
    pub min_history: usize,
    /// How many rows' worth of the model's own statistics are mixed into a user's (a user with few events
    /// stays near the model's statistics).
    #[serde(default = "d_prior_rows")]
    pub prior_rows: f64,
}

impl Default for CalibrateConfig {
    fn default() -> Self {
        CalibrateConfig { min_history: 0, prior_rows: d_prior_rows() }
    }
}

fn d_finetune_epochs() -> usize {
    20
}
fn d_finetune_batch() -> usize {
    32
}
fn d_directory_key() -> String {
    "username".into()
}
fn d_group_count() -> usize {
    8
}
fn d_group_epochs() -> usize {
    20
}
fn d_prior_rows() -> f64 {
    100.0
}
fn d_min_history() -> usize {
    300
}
fn d_max_history() -> u32 {
    60
}

impl StageConfig for TrainStageConfig {
    const TYPE: &'static str = "train";
    const KIND: StageKind = StageKind::Transform;
    const DESCRIPTION: &'static str = "trains per-user (or generic) autoencoders and publishes them to a registry";
    const RENAMED: &'static [(&'static str, &'static str)] = &[(
        "source",
        "name the log family once at the top of the pipeline (`family: azure`), or with `family:` on this stage",
    )];
    fn validate(&self) -> Result<(), ConfigError> {
        if self.registry.trim().is_empty() {
            return Err(ConfigError::field("registry", "must not be empty"));
        }
        if self.training.epochs == 0 {
            return Err(ConfigError::field("training.epochs", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.training.swap_noise) {
            return Err(ConfigError::field("training.swap_noise", "must be in [0, 1)"));
        }
        if !self.warmup_days.is_finite() || self.warmup_days < 0.0 {
            return Err(ConfigError::field("warmup_days", "must be zero or more"));
        }
        if !(0.0..0.9).contains(&self.training.validation_fraction) {
            return Err(ConfigError::field("training.validation_fraction", "must be in [0, 0.9)"));
        }
        if self.scope == Scope::Users {
            let why = "only a `scope: generic` train stage trains the shared models that users with little \
                       history start from; move it to the generic stage";
            for (set, field) in [
                (self.finetune.min_history > 0, "finetune"),
                (!self.groups.by.is_empty(), "groups"),
                (self.calibrate.min_history > 0, "calibrate"),
            ] {
                if set {
                    return Err(ConfigError::field(field, why));
                }
            }
        }
        if self.finetune.min_history > 0 {
            if self.finetune.min_history >= self.min_history {
                return Err(ConfigError::field(
                    "finetune.min_history",
                    format!(
                        "must be below min_history ({}): users with that many get their own model",
                        self.min_history
                    ),
                ));
            }
            if self.finetune.epochs == 0 || self.finetune.batch_size == 0 {
                return Err(ConfigError::field("finetune", "epochs and batch_size must be at least 1"));
            }
        }
        if self.groups.directory.is_some() && (self.groups.by.is_empty() || self.groups.by == "behaviour") {
            return Err(ConfigError::field(
                "groups.by",
                "with a directory, name the directory field to group by (e.g. department)",
            ));
        }
        if !self.groups.by.is_empty() && (self.groups.count == 0 || self.groups.epochs == 0) {
            return Err(ConfigError::field("groups", "count and epochs must be at least 1"));
        }
        if !self.calibrate.prior_rows.is_finite() || self.calibrate.prior_rows < 0.0 {
            return Err(ConfigError::field("calibrate.prior_rows", "must be zero or more"));
        }
        self.promotion.validate()
    }
    fn check(&self, ctx: &ConfigContext<'_>) -> Result<(), ConfigError> {
        ctx.family(&self.family).map(|_| ())
    }
    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        let family = ctx.family(&self.family)?;
        Ok(StageInstance::Transform(Box::new(Train {
            trainer: Arc::new(Trainer {
                defs: feature_set(&family, &self.features),
                family,
                config: self.clone(),
                registry: None,
                directory: None,
                stage: String::new(),
                held: None,
                labels: None,
            }),
            rows: Vec::new(),
            running: None,
            ctx: None,
        })))
    }
}
register_stage!(TrainStageConfig);

/// The stage: gathers its input, then hands its models to the process's training pool (`model::pool`) and
/// reports them in one batch, in a fixed order, once every one is done.
struct Train {
    /// What the training jobs read: set up in `open` and `finish`, then shared with them.
    trainer: Arc<Trainer>,
    rows: Vec<RecordBatch>,
    /// Once the input ended: the jobs handed to the pool.
    running: Option<Running>,
    /// Set in `open`: the pool gets as many threads as the process has workers, and the jobs' time counts as
    /// the stage's busy time.
    ctx: Option<StageContext>,
}

/// What a training job returns: its report rows and the time it took.
type JobResult = Result<(RecordBatch, Duration), StageError>;

/// The jobs of one stage instance, in report order.
struct Running {
    jobs: Vec<Ticket<JobResult>>,
    /// Each job's report rows, once it is done.
    done: Vec<Option<RecordBatch>>,
    /// Set when the stage is dropped before its jobs ran (a failed run): jobs not started do nothing.
    cancel: Arc<AtomicBool>,
    started: Instant,
    last_progress: Instant,
}

/// Everything a training job needs of its stage.
struct Trainer {
    config: TrainStageConfig,
    family: Arc<Family>,
    defs: Vec<FeatureDef>,
    registry: Option<Arc<dyn ModelRegistry>>,
    /// `groups.directory`, read at start-up (a bad file stops the run before any training).
    directory: Option<super::user_data::Directory>,
    stage: String,
    /// With promotion on: the held-out events, and each user's rows among them.
    held: Option<(RecordBatch, HashMap<String, Vec<u32>>)>,
    /// `promotion.labels`, read at start-up.
    labels: Option<HashMap<String, bool>>,
}

/// The version of a model in service: its number, and the model (or why it cannot be used here).
type Champion = (u64, Result<Model, String>);

/// What promotion decided for one model.
struct Verdict {
    publish: bool,
    decision: &'static str,
    champion_version: Option<u64>,
    champion: Option<Figures>,
    challenger: Option<Figures>,
    reason: String,
}

/// The rows of a training report: one per model trained or skipped (also written by the `profiles`
/// stage for the profile set it publishes).
#[derive(Default)]
pub(crate) struct Report {
    model: StringBuilder,
    kind: StringBuilder,
    status: StringBuilder,
    version: UInt64Builder,
    rows: UInt64Builder,
    epochs: UInt64Builder,
    train_loss: Float64Builder,
    val_loss: Float64Builder,
    seconds: Float64Builder,
    reason: StringBuilder,
    /// With promotion on: its columns.
    promotion: Option<PromotionColumns>,
}

/// The report's promotion columns.
#[derive(Default)]
struct PromotionColumns {
    decision: StringBuilder,
    champion_version: UInt64Builder,
    heldout_rows: UInt64Builder,
    champion_loss: Float64Builder,
    challenger_loss: Float64Builder,
    champion_alerts: UInt64Builder,
    challenger_alerts: UInt64Builder,
}

impl PromotionColumns {
    fn append(&mut self, verdict: Option<&Verdict>) {
        let champion = verdict.and_then(|v| v.champion);
        let challenger = verdict.and_then(|v| v.challenger);
        self.decision.append_option(verdict.map(|v| v.decision));
        self.champion_version.append_option(verdict.and_then(|v| v.champion_version));
        self.heldout_rows.append_option(challenger.map(|f| f.rows as u64));
        self.champion_loss.append_option(champion.map(|f| f.loss));
        self.challenger_loss.append_option(challenger.map(|f| f.loss));
        self.champion_alerts.append_option(champion.map(|f| f.alerts as u64));
        self.challenger_alerts.append_option(challenger.map(|f| f.alerts as u64));
    }
}

impl Report {
    /// A report with the promotion columns.
    fn with_promotion() -> Self {
        Report { promotion: Some(PromotionColumns::default()), ..Report::default() }
    }

    /// A model (or profile set) published without training figures: its version, rows and seconds.
    pub(crate) fn published(&mut self, model: &str, kind: &str, version: u64, rows: u64, seconds: f64, reason: &str) {
        self.model.append_value(model);
        self.kind.append_value(kind);
        self.status.append_value("published");
        self.version.append_value(version);
        self.rows.append_value(rows);
        self.epochs.append_null();
        self.train_loss.append_null();
        self.val_loss.append_null();
        self.seconds.append_value(seconds);
        self.reason.append_value(reason);
        if let Some(p) = &mut self.promotion {
            p.append(None);
        }
    }

    fn skipped(&mut self, model: &str, kind: &str, rows: usize, reason: String) {
        self.not_trained(model, kind, "skipped", rows, reason);
    }

    /// A user without a model of their own: scored by the shared model `kind` (`group` or `generic`).
    fn shared(&mut self, user_model: &str, kind: &str, rows: usize, reason: String) {
        self.not_trained(user_model, kind, "shared", rows, reason);
    }

    /// A row without training figures: `status` says what happened.
    pub(crate) fn not_trained(&mut self, model: &str, kind: &str, status: &str, rows: usize, reason: String) {
        self.model.append_value(model);
        self.kind.append_value(kind);
        self.status.append_value(status);
        self.version.append_null();
        self.rows.append_value(rows as u64);
        self.epochs.append_null();
        self.train_loss.append_null();
        self.val_loss.append_null();
        self.seconds.append_null();
        self.reason.append_value(reason);
        if let Some(p) = &mut self.promotion {
            p.append(None);
        }
    }

    pub(crate) fn finish(mut self) -> Result<RecordBatch, StageError> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("model", DataType::Utf8, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new("status", DataType::Utf8, false),
            Field::new("version", DataType::UInt64, true),
            Field::new("rows", DataType::UInt64, false),
            Field::new("epochs_run", DataType::UInt64, true),
            Field::new("train_loss", DataType::Float64, true),
            Field::new("validation_loss", DataType::Float64, true),
            Field::new("seconds", DataType::Float64, true),
            Field::new("reason", DataType::Utf8, true),
        ]));
        let mut columns: Vec<arrow::array::ArrayRef> = vec![
            Arc::new(self.model.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.version.finish()),
            Arc::new(self.rows.finish()),
            Arc::new(self.epochs.finish()),
            Arc::new(self.train_loss.finish()),
            Arc::new(self.val_loss.finish()),
            Arc::new(self.seconds.finish()),
            Arc::new(self.reason.finish()),
        ];
        let Some(mut p) = self.promotion else { return Ok(RecordBatch::try_new(schema, columns)?) };
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.extend([
            Field::new("decision", DataType::Utf8, true),
            Field::new("champion_version", DataType::UInt64, true),
            Field::new("heldout_rows", DataType::UInt64, true),
            Field::new("champion_loss", DataType::Float64, true),
            Field::new("challenger_loss", DataType::Float64, true),
            Field::new("champion_alerts", DataType::UInt64, true),
            Field::new("challenger_alerts", DataType::UInt64, true),
        ]);
        columns.extend([
            Arc::new(p.decision.finish()) as arrow::array::ArrayRef,
            Arc::new(p.champion_version.finish()),
            Arc::new(p.heldout_rows.finish()),
            Arc::new(p.champion_loss.finish()),
            Arc::new(p.challenger_loss.finish()),
            Arc::new(p.champion_alerts.finish()),
            Arc::new(p.challenger_alerts.finish()),
        ]);
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
    }
}

fn timestamps(batch: &RecordBatch) -> Result<&arrow::array::PrimitiveArray<TimestampMicrosecondType>, StageError> {
    batch
        .column_by_name("timestamp")
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        .ok_or_else(|| StageError::Data("train: input needs a microsecond `timestamp` column".into()))
}

/// Which rows a model trains on: inside the window (from `from` on) and past their user's warm-up. Each
/// user's first event starts the warm-up; a user keeps the warm-up rows when the events span less than
/// twice the warm-up (a short export must not lose most of its rows), or when without them fewer than
/// `min_rows` would be left but with them enough (the warm-up must not cost a user the model).
fn trained_rows(times: &[Option<i64>], users: &[Option<&str>], from: i64, warmup: i64, min_rows: usize) -> Vec<bool> {
    let in_window = |t: &Option<i64>| t.is_some_and(|t| t >= from);
    if warmup == 0 {
        return times.iter().map(in_window).collect();
    }
    let mut span: std::collections::HashMap<Option<&str>, (i64, i64)> = std::collections::HashMap::new();
    for (t, user) in times.iter().zip(users) {
        if let Some(t) = *t {
            let e = span.entry(*user).or_insert((t, t));
            *e = (e.0.min(t), e.1.max(t));
        }
    }
    let warm = |t: &Option<i64>, user: &Option<&str>| {
        in_window(t)
            && span
                .get(user)
                .is_none_or(|(first, last)| last - first < 2 * warmup || t.is_some_and(|t| t >= first + warmup))
    };
    // Per user: rows in the window, and of those past the warm-up.
    let mut counts: std::collections::HashMap<Option<&str>, (usize, usize)> = std::collections::HashMap::new();
    for (t, user) in times.iter().zip(users) {
        let e = counts.entry(*user).or_default();
        e.0 += usize::from(in_window(t));
        e.1 += usize::from(warm(t, user));
    }
    times
        .iter()
        .zip(users)
        .map(|(t, user)| {
            let (whole, past) = counts.get(user).copied().unwrap_or_default();
            if past < min_rows && whole >= min_rows {
                in_window(t)
            } else {
                warm(t, user)
            }
        })
        .collect()
}

impl Trainer {
    /// Rows of `batch` within the window before its latest event, past each user's warm-up, sampled when
    /// asked.
    fn window(&self, batch: &RecordBatch, seed_name: &str, min_rows: usize) -> Result<RecordBatch, StageError> {
        let ts = timestamps(batch)?;
        let last = ts.iter().flatten().max().unwrap_or(0);
        let from = last - i64::from(self.config.max_history_days) * DAY_MICROS;
        let warmup =
            if self.config.features.morpheus { 0 } else { (self.config.warmup_days * DAY_MICROS as f64) as i64 };
        let users = super::users(batch, "train")?;
        let users: Vec<Option<&str>> = (0..users.len()).map(|i| users.is_valid(i).then(|| users.value(i))).collect();
        let times: Vec<Option<i64>> = ts.iter().collect();
        let keep = arrow::array::BooleanArray::from(trained_rows(&times, &users, from, warmup, min_rows));
        let mut rows = filter_record_batch(batch, &keep)?;
        if let Some(n) = self.config.sample.filter(|n| *n < rows.num_rows()) {
            let mut rng = ChaCha8Rng::seed_from_u64(
                self.config.training.seed ^ dfp_core::hash::stable_hash(seed_name.as_bytes()),
            );
            let mut idx: Vec<u32> = sample(&mut rng, rows.num_rows(), n).into_iter().map(|i| i as u32).collect();
            idx.sort_unstable();
            rows = take_record_batch(&rows, &arrow::array::UInt32Array::from(idx))?;
        }
        Ok(rows)
    }

    fn registry(&self) -> Result<&Arc<dyn ModelRegistry>, StageError> {
        self.registry.as_ref().ok_or_else(|| StageError::Other("registry not open".into()))
    }

    /// Trains the `kind` model `name` on `rows`: from `base` (a shared model to fine-tune) when given, else
    /// from the version in service (`champion`, with `warm_start`) or from scratch.
    fn fit(
        &self,
        name: &str,
        kind: ModelKind,
        rows: &RecordBatch,
        training: &TrainConfig,
        base: Option<&Model>,
        champion: Option<&Champion>,
    ) -> Result<Model, StageError> {
        let defs = &self.defs;
        let device = self.config.device.device().map_err(StageError::Other)?;
        let previous = match champion.filter(|_| self.config.warm_start && base.is_none()) {
            Some((v, Ok(model))) => Some((*v, model)),
            Some((v, Err(why))) => return Err(StageError::Other(format!("warm start of {name} from v{v}: {why}"))),
            None => None,
        };
        let start = base.or(previous.map(|p| p.1));
        let mut model = train_from(name, defs, rows, training, device, start)
            .map_err(|e| StageError::Other(format!("training {name}: {e}")))?;
        model.manifest.training.warm_start_from = previous.map(|p| p.0);
        model.manifest.family = Some(self.family.name.clone());
        model.manifest.kind = Some(kind);
        Ok(model)
    }

    /// The version of `name` in service, loaded and checked against this stage: `Some((version, Err(why)))`
    /// when it cannot be used here, `None` when there is none.
    fn champion(&self, name: &str) -> Result<Option<Champion>, StageError> {
        let registry = self.registry()?;
        let device = self.config.device.device().map_err(StageError::Other)?;
        let Some(v) = registry.latest(name).map_err(|e| StageError::Other(e.to_string()))? else { return Ok(None) };
        let manifest = registry.fetch(name, v, MANIFEST).map_err(|e| StageError::Other(e.to_string()))?;
        let weights = registry.fetch(name, v, WEIGHTS).map_err(|e| StageError::Other(e.to_string()))?;
        let model = Model::from_files(name, &manifest, &weights, device).and_then(|model| {
            model.check_family(&self.family.name)?;
            model.check_features(&self.defs)?;
            Ok(model)
        });
        Ok(Some((v, model.map_err(|e| e.to_string()))))
    }

    /// The version of `name` in service when this run needs it — to warm-start from (`own_start`: the model
    /// starts from its own previous version, not a shared one) or to judge a new version against — loaded
    /// once for both.
    fn in_service(&self, name: &str, own_start: bool) -> Result<Option<Champion>, StageError> {
        if (own_start && self.config.warm_start) || self.held.is_some() {
            self.champion(name)
        } else {
            Ok(None)
        }
    }

    /// The held-out rows that judge a model: a user's (`Some(user)`) or everyone's; `None` when promotion
    /// is off.
    fn held_rows(&self, user: Option<&str>) -> Result<Option<RecordBatch>, StageError> {
        let Some((all, by_user)) = &self.held else { return Ok(None) };
        Ok(Some(match user {
            None => all.clone(),
            Some(u) => {
                let idx = by_user.get(u).cloned().unwrap_or_default();
                take_record_batch(all, &arrow::array::UInt32Array::from(idx))?
            }
        }))
    }

    /// Promotion's decision on a newly trained `model` against the version in service (`champion`, from
    /// [`in_service`](Self::in_service)) on the held-out rows (`None`: promotion off).
    fn judge(
        &self,
        model: &Model,
        held: Option<RecordBatch>,
        champion: Option<Champion>,
    ) -> Result<Option<Verdict>, StageError> {
        let Some(held) = held else { return Ok(None) };
        let name = model.manifest.name.as_str();
        let config = &self.config.promotion;
        let labels = self.labels.as_ref();
        let score = |m: &Model| {
            figures(m, &held, config, labels).map_err(|e| StageError::Data(format!("promotion of {name}: {e}")))
        };
        let challenger = Some(score(model)?);
        let verdict = match champion {
            None => Verdict {
                publish: true,
                decision: "new",
                champion_version: None,
                champion: None,
                challenger,
                reason: "no version in service yet".into(),
            },
            Some((v, Err(why))) => Verdict {
                publish: true,
                decision: "promote",
                champion_version: Some(v),
                champion: None,
                challenger,
                reason: format!("the version in service (v{v}) cannot be used here: {why}"),
            },
            Some((v, Ok(current))) => {
                let champion = score(&current)?;
                let (publish, reason) = decide(&champion, challenger.as_ref().expect("scored above"), config);
                Verdict {
                    publish,
                    decision: if publish { "promote" } else { "keep" },
                    champion_version: Some(v),
                    champion: Some(champion),
                    challenger,
                    reason,
                }
            }
        };
        Ok(Some(verdict))
    }

    /// Judges a trained model on `held` (promotion), publishes it unless promotion keeps the champion (or
    /// it is a dry run), and reports it.
    fn publish(
        &self,
        model: &Model,
        held: Option<RecordBatch>,
        champion: Option<Champion>,
        report: &mut Report,
    ) -> Result<(), StageError> {
        let verdict = self.judge(model, held, champion)?;
        self.publish_judged(model, verdict, report)
    }

    /// Publishes a model as `verdict` says (always when it is `None`) and reports it.
    fn publish_judged(&self, model: &Model, verdict: Option<Verdict>, report: &mut Report) -> Result<(), StageError> {
        let registry = self.registry()?;
        let name = model.manifest.name.as_str();
        let kind = model.manifest.kind().as_str();
        let labels = [KeyValue::new("stage", self.stage.clone()), KeyValue::new("kind", kind)];
        let publish = verdict.as_ref().is_none_or(|v| v.publish && !self.config.promotion.dry_run);
        let version = if publish {
            let files = model.to_files().map_err(|e| StageError::Other(e.to_string()))?;
            let version = registry.publish(name, &files).map_err(|e| {
                if let Some(m) = metrics() {
                    m.registry_errors
                        .add(1, &[KeyValue::new("stage", self.stage.clone()), KeyValue::new("operation", "publish")]);
                }
                StageError::Other(e.to_string())
            })?;
            if let Some(m) = metrics() {
                m.models_trained.add(1, &labels);
                m.training_seconds.record(model.manifest.training.seconds, &labels);
            }
            Some(version)
        } else {
            verdict.as_ref().and_then(|v| v.champion_version)
        };
        let t = &model.manifest.training;
        tracing::debug!(stage = %self.stage, model = name, kind, version, rows = t.rows, epochs = t.epochs_run, seconds = t.seconds, "model trained");
        if let Some(v) = &verdict {
            if let Some(m) = metrics() {
                let mut labels = labels.to_vec();
                labels.push(KeyValue::new("decision", v.decision));
                m.model_promotions.add(1, &labels);
            }
            let dry_run = self.config.promotion.dry_run;
            tracing::debug!(stage = %self.stage, model = name, kind, decision = v.decision, dry_run, reason = %v.reason, "promotion");
        }
        report.model.append_value(name);
        report.kind.append_value(kind);
        report.status.append_value(if publish { "trained" } else { "evaluated" });
        report.version.append_option(version);
        report.rows.append_value(t.rows as u64);
        report.epochs.append_value(t.epochs_run as u64);
        report.train_loss.append_value(t.train_loss);
        report.val_loss.append_value(t.validation_loss);
        report.seconds.append_value(t.seconds);
        let reason = match (&verdict, model.manifest.reason.as_deref()) {
            (Some(v), Some(why)) => Some(format!("{}: {}; {why}", v.decision, v.reason)),
            (Some(v), None) => Some(format!("{}: {}", v.decision, v.reason)),
            (None, why) => why.map(str::to_string),
        };
        report.reason.append_option(reason);
        if let Some(p) = &mut report.promotion {
            p.append(verdict.as_ref());
        }
        Ok(())
    }

    /// Whether the generic stage also serves users with little history.
    fn serves_low_history(&self) -> bool {
        let c = &self.config;
        c.finetune.min_history > 0 || !c.groups.by.is_empty() || c.calibrate.min_history > 0
    }

    /// `scope: generic`: the generic model, then (when asked) peer-group models, fine-tuned models for users
    /// with some history and per-user calibration for the rest; the generic model is published last, with
    /// its group membership, so that a scorer that sees it finds the group models too.
    fn train_shared(&self, all: &RecordBatch, report: &mut Report) -> Result<(), StageError> {
        let c = &self.config;
        let name = model_name(&self.family, None);
        let rows = self.window(all, &name, 0)?;
        tracing::info!(stage = %self.stage, rows = rows.num_rows(), "training the generic model");
        let champion = self.in_service(&name, true)?;
        let mut generic = self.fit(&name, ModelKind::Generic, &rows, &c.training, None, champion.as_ref())?;
        // Decided first: the peer-group models follow the generic model's decision.
        let generic_verdict = self.judge(&generic, self.held_rows(None)?, champion)?;
        if !self.serves_low_history() {
            return self.publish_judged(&generic, generic_verdict, report);
        }
        let started = Instant::now();
        // Each user's rows as the users stage counts them: who gets an own model, who has some history.
        let users = super::users(all, "train")?;
        let mut per_user: Vec<(String, RecordBatch)> = Vec::new();
        for (user, idx) in super::rows_by_user(users) {
            let Some(user) = user else { continue };
            let rows = take_record_batch(all, &arrow::array::UInt32Array::from(idx))?;
            let rows = self.window(&rows, &model_name(&self.family, Some(user)), c.min_history)?;
            per_user.push((user.to_string(), rows));
        }
        let own = |rows: &RecordBatch| rows.num_rows() >= c.min_history;

        // Peer groups: membership of every user, a model per group with enough events.
        let membership = self.group_users(&generic, &per_user)?;
        let mut group_models: BTreeMap<String, Model> = BTreeMap::new();
        let mut members: BTreeMap<&str, Vec<&RecordBatch>> = BTreeMap::new();
        for (user, rows) in &per_user {
            if let Some(g) = membership.get(user) {
                members.entry(g.as_str()).or_default().push(rows);
            }
        }
        let group_training = TrainConfig { epochs: c.groups.epochs, ..c.training.clone() };
        for (group, parts) in &members {
            let name = group_model_name(&self.family, group);
            let rows = concat_batches(&all.schema(), parts.iter().copied())?;
            let how = &c.groups.by;
            if rows.num_rows() < c.groups.min_history {
                report.skipped(
                    &name,
                    ModelKind::Group.as_str(),
                    rows.num_rows(),
                    format!(
                        "group {group} (by {how}): {} users with {} events, fewer than groups.min_history {}; its users are scored by the generic model",
                        parts.len(),
                        rows.num_rows(),
                        c.groups.min_history
                    ),
                );
                continue;
            }
            let mut model = self.fit(&name, ModelKind::Group, &rows, &group_training, Some(&generic), None)?;
            model.manifest.group = Some(group.to_string());
            model.manifest.reason = Some(format!(
                "group {group} (by {how}): {} users, fine-tuned from {} on their {} events",
                parts.len(),
                generic.manifest.name,
                rows.num_rows()
            ));
            group_models.insert(group.to_string(), model);
        }
        generic.groups = membership
            .iter()
            .filter(|(_, g)| group_models.contains_key(*g))
            .map(|(u, g)| (u.clone(), g.clone()))
            .collect();

        // Fine-tuned models for users with some history, from their group's model or the generic one.
        let finetune_training =
            TrainConfig { epochs: c.finetune.epochs, batch_size: c.finetune.batch_size, ..c.training.clone() };
        let mut finetuned = std::collections::HashSet::new();
        let mut last_progress = Instant::now();
        if c.finetune.min_history > 0 {
            for (done, (user, rows)) in per_user.iter().enumerate() {
                let n = rows.num_rows();
                if own(rows) || n < c.finetune.min_history {
                    continue;
                }
                let group = generic.groups.get(user);
                let base = group.and_then(|g| group_models.get(g)).unwrap_or(&generic);
                let name = model_name(&self.family, Some(user));
                let mut model = self.fit(&name, ModelKind::Finetuned, rows, &finetune_training, Some(base), None)?;
                model.manifest.group = group.cloned();
                model.manifest.reason = Some(format!(
                    "{n} events (finetune.min_history {} ≤ {n} < min_history {}): fine-tuned from {}",
                    c.finetune.min_history, c.min_history, base.manifest.name
                ));
                self.publish(&model, self.held_rows(Some(user))?, self.in_service(&name, false)?, report)?;
                finetuned.insert(user.as_str());
                if last_progress.elapsed().as_secs() >= 5 {
                    last_progress = Instant::now();
                    tracing::info!(stage = %self.stage, users_done = done + 1, users = per_user.len(), elapsed_s = started.elapsed().as_secs(), "fine-tuning progress");
                }
            }
        }

        // Per-user calibration of the shared model that scores each remaining user.
        if c.calibrate.min_history > 0 {
            for (user, rows) in &per_user {
                if own(rows) || finetuned.contains(user.as_str()) || rows.num_rows() < c.calibrate.min_history {
                    continue;
                }
                let target = match generic.groups.get(user).and_then(|g| group_models.get_mut(g)) {
                    Some(m) => m,
                    None => &mut generic,
                };
                let losses = target.losses(rows).map_err(|e| StageError::Data(format!("calibrating {user}: {e}")))?;
                let stats = UserStats::shrunk(&losses, &target.manifest.loss_stats, c.calibrate.prior_rows);
                target.calibration.insert(user.clone(), stats);
            }
        }

        // Who the shared models score, and why.
        for (user, rows) in &per_user {
            let n = rows.num_rows();
            if own(rows) || finetuned.contains(user.as_str()) {
                continue;
            }
            let group = generic.groups.get(user);
            let model = group.and_then(|g| group_models.get(g)).unwrap_or(&generic);
            let mut why = format!("{n} events, fewer than min_history {}", c.min_history);
            if c.finetune.min_history > 0 {
                why.push_str(&format!(" and finetune.min_history {}", c.finetune.min_history));
            }
            why.push_str(&format!(": scored by {}", model.manifest.name));
            if let Some(g) = group {
                why.push_str(&format!(" (peer group {g})"));
            }
            if model.calibration.contains_key(user) {
                why.push_str(&format!(", with z statistics of the user's own {n} events"));
            } else if c.calibrate.min_history > 0 {
                why.push_str(&format!(
                    ", with its own z statistics (fewer than calibrate.min_history {})",
                    c.calibrate.min_history
                ));
            }
            report.shared(&model_name(&self.family, Some(user)), model.manifest.kind().as_str(), n, why);
        }
        let calibrated = |m: &Model| m.calibration.len();
        for model in group_models.values_mut() {
            if calibrated(model) > 0 {
                let why = model.manifest.reason.take().unwrap_or_default();
                model.manifest.reason = Some(format!("{why}; {} users calibrated", calibrated(model)));
            }
            let follows = generic_verdict.as_ref().map(|g| Verdict {
                publish: g.publish,
                decision: g.decision,
                champion_version: None,
                champion: None,
                challenger: None,
                reason: format!("follows the generic model (its group membership is stored with it): {}", g.reason),
            });
            self.publish_judged(model, follows, report)?;
        }
        let own_models = per_user.iter().filter(|(_, r)| own(r)).count();
        generic.manifest.reason = Some(format!(
            "{} users: {own_models} with min_history {} (own models), {} fine-tuned, {} in {} peer groups, {} calibrated on the generic model",
            per_user.len(),
            c.min_history,
            finetuned.len(),
            generic.groups.len(),
            group_models.len(),
            calibrated(&generic)
        ));
        self.publish_judged(&generic, generic_verdict, report)?;
        tracing::info!(
            stage = %self.stage,
            finetuned = finetuned.len(),
            groups = group_models.len(),
            elapsed_s = started.elapsed().as_secs(),
            "models for users with little history done"
        );
        Ok(())
    }

    /// Each user's peer group (`groups.by`): by behaviour (k-means on the generic model's encoding of the
    /// user's events), or the user's most frequent value of a column. Empty when groups are off.
    fn group_users(
        &self,
        generic: &Model,
        per_user: &[(String, RecordBatch)],
    ) -> Result<BTreeMap<String, String>, StageError> {
        let by = self.config.groups.by.as_str();
        let mut membership = BTreeMap::new();
        match by {
            "" => {}
            "behaviour" => {
                let mut points = Vec::new();
                let mut who = Vec::new();
                for (user, rows) in per_user {
                    let point = peers::signature(&generic.encoder, rows)
                        .map_err(|e| StageError::Data(format!("grouping {user}: {e}")))?;
                    if !point.is_empty() {
                        points.push(point);
                        who.push(user);
                    }
                }
                let groups = peers::kmeans(&points, self.config.groups.count, self.config.training.seed);
                for (user, g) in who.into_iter().zip(groups) {
                    membership.insert(user.clone(), format!("b{}", g + 1));
                }
            }
            field if self.config.groups.directory.is_some() => {
                let path = self.config.groups.directory.as_deref().unwrap_or_default();
                let key = &self.config.groups.directory_key;
                let directory = self
                    .directory
                    .as_ref()
                    .ok_or_else(|| StageError::Other("train: the directory was not read at start-up".into()))?;
                for (user, _) in per_user {
                    let id = self.family.user_ids.normalize(user);
                    if let Some(Some(value)) = directory.rows.get(id.as_ref()).and_then(|v| v.first()) {
                        if !value.trim().is_empty() {
                            membership.insert(user.clone(), value.clone());
                        }
                    }
                }
                if membership.is_empty() {
                    return Err(StageError::Data(format!(
                        "train: groups.by: no user of the input has a \"{field}\" in the directory {path} (keyed by \"{key}\")"
                    )));
                }
            }
            column => {
                for (user, rows) in per_user {
                    let values = rows.column_by_name(column).ok_or_else(|| {
                        StageError::Data(format!(
                            "train: groups.by names the column \"{column}\", but the input has none (join a directory with add-user-data first)"
                        ))
                    })?;
                    let values = arrow::compute::cast(values, &DataType::Utf8)?;
                    let values = values.as_string::<i32>();
                    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
                    for v in values.iter().flatten().filter(|v| !v.is_empty()) {
                        *counts.entry(v).or_default() += 1;
                    }
                    // The most frequent value; ties go to the first in name order.
                    if let Some((value, _)) = counts.into_iter().rev().max_by_key(|(_, n)| *n) {
                        membership.insert(user.clone(), value.to_string());
                    }
                }
            }
        }
        Ok(membership)
    }
}

impl Trainer {
    /// A report with the promotion columns when promotion is on.
    fn report(&self) -> Report {
        if self.held.is_some() {
            Report::with_promotion()
        } else {
            Report::default()
        }
    }

    /// `scope: users`, one user: a model when the user has `min_history` events in the window, else a
    /// skipped row.
    fn train_user(&self, all: &RecordBatch, user: &str, idx: Vec<u32>, report: &mut Report) -> Result<(), StageError> {
        let name = model_name(&self.family, Some(user));
        let rows = take_record_batch(all, &arrow::array::UInt32Array::from(idx))?;
        let rows = self.window(&rows, &name, self.config.min_history)?;
        if rows.num_rows() < self.config.min_history {
            report.skipped(
                &name,
                "user",
                rows.num_rows(),
                format!(
                    "{} events in the last {} days, fewer than min_history {}",
                    rows.num_rows(),
                    self.config.max_history_days,
                    self.config.min_history
                ),
            );
            return Ok(());
        }
        let champion = self.in_service(&name, true)?;
        let model = self.fit(&name, ModelKind::User, &rows, &self.config.training, None, champion.as_ref())?;
        self.publish(&model, self.held_rows(Some(user))?, champion, report)
    }
}

/// One training job's work: its models, reported in the report it is given.
type Work = Box<dyn FnOnce(&Trainer, &mut Report) -> Result<(), StageError> + Send>;

impl Train {
    /// Hands every model of this stage to the training pool, heaviest first.
    fn start(&mut self, all: RecordBatch) -> Result<(), StageError> {
        let trainer = self.trainer.clone();
        let threads = self.ctx.as_ref().map_or(1, |c| (c.workers / c.processes.max(1)).max(1));
        let cancel = Arc::new(AtomicBool::new(false));
        // Each job: nothing once the stage is gone, else its report rows.
        let job = |work: Work| {
            let (trainer, cancel) = (trainer.clone(), cancel.clone());
            move || {
                if cancel.load(Ordering::Relaxed) {
                    return Err(StageError::Other("training cancelled: the run stopped".into()));
                }
                let started = Instant::now();
                let mut report = trainer.report();
                work(&trainer, &mut report)?;
                Ok((report.finish()?, started.elapsed()))
            }
        };
        let mut jobs = Vec::new();
        match trainer.config.scope {
            Scope::Generic => {
                let weight = all.num_rows() as u64;
                jobs.push(pool::submit(threads, weight, job(Box::new(move |t, report| t.train_shared(&all, report)))));
            }
            Scope::Users => {
                let users = super::users(&all, "train")?;
                let by_user: Vec<(String, Vec<u32>)> =
                    super::rows_by_user(users).into_iter().filter_map(|(u, idx)| Some((u?.to_string(), idx))).collect();
                tracing::info!(stage = %trainer.stage, users = by_user.len(), "training per-user models");
                for (user, idx) in by_user {
                    let all = all.clone();
                    let weight = idx.len() as u64;
                    jobs.push(pool::submit(
                        threads,
                        weight,
                        job(Box::new(move |t, report| t.train_user(&all, &user, idx, report))),
                    ));
                }
            }
        }
        let now = Instant::now();
        self.running =
            Some(Running { done: jobs.iter().map(|_| None).collect(), jobs, cancel, started: now, last_progress: now });
        Ok(())
    }
}

impl Drop for Train {
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.cancel.store(true, Ordering::Relaxed);
        }
    }
}

impl Transform for Train {
    fn input_partitioning(&self) -> Partitioning {
        match self.trainer.config.scope {
            Scope::Users => Partitioning::By("username".into()),
            Scope::Generic => Partitioning::Single,
        }
    }

    fn open(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        // Models train on the pool's threads (one libtorch thread each); this worker only waits for them.
        self.ctx = Some(ctx.clone());
        let t = Arc::get_mut(&mut self.trainer).ok_or_else(|| StageError::Other("train: opened twice".into()))?;
        t.stage = ctx.stage_id.clone();
        let device = t.config.device.device().map_err(StageError::Other)?;
        if ctx.worker_index == 0 && device.is_cuda() {
            tracing::info!(stage = %ctx.stage_id, device = ?device, "training device");
        }
        t.registry = Some(
            crate::registry::open(&t.config.registry, &t.config.s3, &t.config.mlflow)
                .map_err(|e| StageError::Other(e.to_string()))?,
        );
        t.labels = t.config.promotion.read_labels().map_err(StageError::Other)?;
        let groups = &t.config.groups;
        if let (Some(path), Scope::Generic) = (&groups.directory, t.config.scope) {
            let wanted = [groups.by.clone()];
            t.directory =
                Some(super::user_data::Directory::read("train", path, &groups.directory_key, &wanted, &t.family)?);
        }
        Ok(())
    }

    fn process(&mut self, batch: Batch, _out: &mut Emitter) -> Result<(), StageError> {
        if batch.num_rows() > 0 {
            self.rows.push(batch.data);
        }
        Ok(())
    }

    fn finish(&mut self, _out: &mut Emitter) -> Result<(), StageError> {
        let Some(first) = self.rows.first() else { return Ok(()) };
        let mut all = concat_batches(&first.schema(), &self.rows)
            .map_err(|e| StageError::Data(format!("train: input batches disagree on columns: {e}")))?;
        self.rows.clear();
        let t = Arc::get_mut(&mut self.trainer).ok_or_else(|| StageError::Other("train: finished twice".into()))?;
        let holdout = t.config.promotion.holdout().map_err(|e| StageError::Other(e.to_string()))?;
        if let Some(from) = holdout {
            // Events from `holdout_from` on judge the models; the rest trains them.
            let held_mask: arrow::array::BooleanArray =
                timestamps(&all)?.iter().map(|t| Some(t.is_some_and(|t| t >= from))).collect();
            let held = filter_record_batch(&all, &held_mask)?;
            all = filter_record_batch(&all, &arrow::compute::not(&held_mask)?)?;
            let by_user = super::rows_by_user(super::users(&held, "train")?)
                .into_iter()
                .filter_map(|(u, idx)| Some((u?.to_string(), idx)))
                .collect();
            tracing::info!(stage = %t.stage, held_out = held.num_rows(), training = all.num_rows(), "promotion: events held out");
            t.held = Some((held, by_user));
        }
        self.start(all)
    }

    fn poll_timer(&mut self, out: &mut Emitter) -> Result<Option<Duration>, StageError> {
        let Some(r) = &mut self.running else { return Ok(None) };
        for (ticket, done) in r.jobs.iter().zip(r.done.iter_mut()).filter(|(_, d)| d.is_none()) {
            match ticket.poll() {
                Polled::Pending => {}
                Polled::Done(result) => {
                    let (rows, took) = result?;
                    if let Some(ctx) = &self.ctx {
                        ctx.add_busy(took);
                    }
                    *done = Some(rows);
                }
                Polled::Panicked(why) => {
                    return Err(StageError::Other(format!("train: a training job panicked: {why}")));
                }
            }
        }
        let finished = r.done.iter().filter(|d| d.is_some()).count();
        let stage = &self.trainer.stage;
        if finished < r.jobs.len() {
            if r.last_progress.elapsed() >= Duration::from_secs(5) {
                r.last_progress = Instant::now();
                let elapsed_s = r.started.elapsed().as_secs();
                match self.trainer.config.scope {
                    Scope::Users => {
                        tracing::info!(stage = %stage, worker_users_done = finished, worker_users = r.jobs.len(), elapsed_s, "training progress")
                    }
                    Scope::Generic => tracing::info!(stage = %stage, elapsed_s, "training progress"),
                }
            }
            return Ok(Some(Duration::from_millis(20)));
        }
        let parts: Vec<RecordBatch> = r.done.iter_mut().filter_map(Option::take).collect();
        if self.trainer.config.scope == Scope::Users {
            let elapsed_s = r.started.elapsed().as_secs();
            tracing::info!(stage = %stage, users = r.jobs.len(), elapsed_s, "per-user training done on this worker");
        }
        self.running = None;
        if let Some(first) = parts.first() {
            out.emit(Batch::new(concat_batches(&first.schema(), &parts)?, stage.clone()));
        } else {
            out.emit(Batch::new(self.trainer.report().finish()?, stage.clone()));
        }
        Ok(None)
    }

    fn holding(&self) -> Option<u64> {
        // Working after `finish`: the report is still to come.
        self.running.as_ref().map(|_| 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warm_up_leaves_out_each_users_first_days_unless_the_history_is_short() {
        let day = DAY_MICROS;
        // "a": days 0..20 (warm-up applies); "b": days 10..15 (too short: all kept); one row without a time.
        let mut times: Vec<Option<i64>> = (0..20).map(|d| Some(d * day)).collect();
        let mut users: Vec<Option<&str>> = vec![Some("a"); 20];
        times.extend((10..15).map(|d| Some(d * day)));
        users.extend([Some("b"); 5]);
        times.push(None);
        users.push(Some("a"));
        let kept = trained_rows(&times, &users, 0, 5 * day, 0);
        assert_eq!(kept[..20].iter().filter(|k| **k).count(), 15, "a's first 5 days are left out");
        assert!(!kept[4] && kept[5]);
        assert!(kept[20..25].iter().all(|k| *k), "b's 4-day span is shorter than twice the warm-up");
        assert!(!kept[25], "a row without a time never trains");
        // No warm-up: only the window counts.
        let kept = trained_rows(&times, &users, 12 * day, 0, 0);
        assert_eq!(kept.iter().filter(|k| **k).count(), 8 + 3);
        // a has 20 rows, 15 past the warm-up: with min_history 18 the warm-up would cost the model, so a
        // keeps all 20; with 25 a has too few either way and stays as the warm-up leaves it.
        let kept = trained_rows(&times, &users, 0, 5 * day, 18);
        assert_eq!(kept[..20].iter().filter(|k| **k).count(), 20);
        let kept = trained_rows(&times, &users, 0, 5 * day, 25);
        assert_eq!(kept[..20].iter().filter(|k| **k).count(), 15);
    }
}
