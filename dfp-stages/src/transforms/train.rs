//! `type: train` — trains per-user models (or the generic model) and publishes them to a registry.
//!
//! ```yaml
//! users:   { type: train, inputs: [features], registry: "${models}" }
//! generic: { type: train, inputs: [features], registry: "${models}", scope: generic }
//! report:  { type: file-sink, inputs: [users, generic], path: out/training-report.jsonl }
//! ```
//!
//! `scope: users` (the default) takes its input partitioned by `username`, so users are trained in
//! parallel across workers; every user with at least `min_history` events in the `max_history_days` before
//! their latest event gets a model `DFP-{prefix}-{user}` (the log family's model prefix; user escaped, see
//! `model::escape_user`). The family (the pipeline's `family:`) also gives the model's input features, and
//! each model's manifest records it.
//! `scope: generic` gathers every row on one worker and trains `DFP-{prefix}-=generic` on the window before
//! the latest event. Each model is trained once per run, when the input ends. The stage emits one report
//! row per user or model: `model`, `kind`, `status` (`trained` or `skipped`), `version`, `rows`,
//! `epochs_run`, `train_loss`, `validation_loss`, `seconds`, `reason`.

use std::sync::Arc;
use std::time::Instant;

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

use crate::model::artifact::{MANIFEST, WEIGHTS};
use crate::model::{feature_set, model_name, train_from, DeviceChoice, FeatureDef, FeatureOptions, Model, TrainConfig};
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
        Ok(())
    }
    fn check(&self, ctx: &ConfigContext<'_>) -> Result<(), ConfigError> {
        ctx.family(&self.family).map(|_| ())
    }
    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        let family = ctx.family(&self.family)?;
        Ok(StageInstance::Transform(Box::new(Train {
            defs: feature_set(&family, &self.features),
            family,
            config: self.clone(),
            rows: Vec::new(),
            registry: None,
            stage: String::new(),
        })))
    }
}
register_stage!(TrainStageConfig);

struct Train {
    config: TrainStageConfig,
    family: Arc<Family>,
    defs: Vec<FeatureDef>,
    rows: Vec<RecordBatch>,
    registry: Option<Arc<dyn ModelRegistry>>,
    stage: String,
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
}

impl Report {
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
    }

    fn skipped(&mut self, model: &str, kind: &str, rows: usize, reason: String) {
        self.model.append_value(model);
        self.kind.append_value(kind);
        self.status.append_value("skipped");
        self.version.append_null();
        self.rows.append_value(rows as u64);
        self.epochs.append_null();
        self.train_loss.append_null();
        self.val_loss.append_null();
        self.seconds.append_null();
        self.reason.append_value(reason);
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
        Ok(RecordBatch::try_new(
            schema,
            vec![
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
            ],
        )?)
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

impl Train {
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

    fn train_one(&self, name: &str, kind: &str, rows: &RecordBatch, report: &mut Report) -> Result<(), StageError> {
        let defs = &self.defs;
        let registry = self.registry.as_ref().ok_or_else(|| StageError::Other("registry not open".into()))?;
        let device = self.config.device.device().map_err(StageError::Other)?;
        let previous = if self.config.warm_start {
            match registry.latest(name).map_err(|e| StageError::Other(e.to_string()))? {
                Some(v) => {
                    let manifest = registry.fetch(name, v, MANIFEST).map_err(|e| StageError::Other(e.to_string()))?;
                    let weights = registry.fetch(name, v, WEIGHTS).map_err(|e| StageError::Other(e.to_string()))?;
                    let model = Model::from_files(name, &manifest, &weights, device)
                        .map_err(|e| StageError::Other(e.to_string()))?;
                    model.check_family(&self.family.name).map_err(|e| StageError::Other(e.to_string()))?;
                    model.check_features(defs).map_err(|e| StageError::Other(e.to_string()))?;
                    Some((v, model))
                }
                None => None,
            }
        } else {
            None
        };
        let mut model = train_from(name, defs, rows, &self.config.training, device, previous.as_ref().map(|p| &p.1))
            .map_err(|e| StageError::Other(format!("training {name}: {e}")))?;
        model.manifest.training.warm_start_from = previous.map(|p| p.0);
        model.manifest.family = Some(self.family.name.clone());
        let files = model.to_files().map_err(|e| StageError::Other(e.to_string()))?;
        let labels = [KeyValue::new("stage", self.stage.clone()), KeyValue::new("kind", kind.to_string())];
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
        let t = &model.manifest.training;
        tracing::debug!(stage = %self.stage, model = name, version, rows = t.rows, epochs = t.epochs_run, seconds = t.seconds, "model trained");
        report.model.append_value(name);
        report.kind.append_value(kind);
        report.status.append_value("trained");
        report.version.append_value(version);
        report.rows.append_value(t.rows as u64);
        report.epochs.append_value(t.epochs_run as u64);
        report.train_loss.append_value(t.train_loss);
        report.val_loss.append_value(t.validation_loss);
        report.seconds.append_value(t.seconds);
        report.reason.append_null();
        Ok(())
    }
}

impl Transform for Train {
    fn input_partitioning(&self) -> Partitioning {
        match self.config.scope {
            Scope::Users => Partitioning::By("username".into()),
            Scope::Generic => Partitioning::Single,
        }
    }

    fn open(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.stage = ctx.stage_id.clone();
        // One libtorch thread: models then come out bit-identical whatever the number of workers (a
        // multi-threaded matmul sums in another order), and parallelism comes from the workers anyway.
        tch::set_num_threads(1);
        let device = self.config.device.device().map_err(StageError::Other)?;
        if ctx.worker_index == 0 && device.is_cuda() {
            tracing::info!(stage = %ctx.stage_id, device = ?device, "training device");
        }
        self.registry = Some(
            crate::registry::open(&self.config.registry, &self.config.s3, &self.config.mlflow)
                .map_err(|e| StageError::Other(e.to_string()))?,
        );
        Ok(())
    }

    fn process(&mut self, batch: Batch, _out: &mut Emitter) -> Result<(), StageError> {
        if batch.num_rows() > 0 {
            self.rows.push(batch.data);
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<(), StageError> {
        let Some(first) = self.rows.first() else { return Ok(()) };
        let all = concat_batches(&first.schema(), &self.rows)
            .map_err(|e| StageError::Data(format!("train: input batches disagree on columns: {e}")))?;
        self.rows.clear();
        let mut report = Report::default();
        let started = Instant::now();
        match self.config.scope {
            Scope::Generic => {
                let name = model_name(&self.family, None);
                let rows = self.window(&all, &name, 0)?;
                tracing::info!(stage = %self.stage, rows = rows.num_rows(), "training the generic model");
                self.train_one(&name, "generic", &rows, &mut report)?;
            }
            Scope::Users => {
                let users = super::users(&all, "train")?;
                let by_user: Vec<(&str, Vec<u32>)> =
                    super::rows_by_user(users).into_iter().filter_map(|(u, idx)| Some((u?, idx))).collect();
                let total = by_user.len();
                let mut last_progress = Instant::now();
                tracing::info!(stage = %self.stage, users = total, "training per-user models");
                for (done, (user, idx)) in by_user.iter().enumerate() {
                    let name = model_name(&self.family, Some(user));
                    let rows = take_record_batch(&all, &arrow::array::UInt32Array::from(idx.clone()))?;
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
                        continue;
                    }
                    self.train_one(&name, "user", &rows, &mut report)?;
                    if last_progress.elapsed().as_secs() >= 5 {
                        last_progress = Instant::now();
                        tracing::info!(
                            stage = %self.stage,
                            worker_users_done = done + 1,
                            worker_users = total,
                            elapsed_s = started.elapsed().as_secs(),
                            "training progress"
                        );
                    }
                }
                tracing::info!(
                    stage = %self.stage,
                    users = total,
                    elapsed_s = started.elapsed().as_secs(),
                    "per-user training done on this worker"
                );
            }
        }
        let data = report.finish()?;
        out.emit(Batch::new(data, self.stage.clone()));
        Ok(())
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
