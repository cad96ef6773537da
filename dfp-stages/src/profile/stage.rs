//! `type: profiles` — writes a profile set (see [`crate::profile`]) for every user of the training data.
//!
//! ```yaml
//! profiles: { type: profiles, inputs: [events], registry: "${models}" }
//! report:   { type: file-sink, inputs: [users, generic, profiles], path: out/training-report.jsonl }
//! ```
//!
//! Input: normalized rows of the pipeline's log family. The stage keeps each user's history exactly as
//! `features` does (same code, same event order: rows of a logical time taken per user in (timestamp, id)
//! order), for every user — also users below the `train` stage's `min_history`, who get no model but do
//! get a profile — and when the input ends publishes one new version of `DFP-<prefix>-=profiles` to the
//! registry: the profiles in 64 gzip'd JSON-lines shards and a manifest with the population profile.
//! It emits one report row with the columns of the `train` report (`kind: profiles`, `rows`: events
//! taken in, `reason`: how many users).
//!
//! Retraining writes a new version from the new training window; inference picks it up after the
//! `features` stage's `profiles_ttl_secs`, for users it has not met yet.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::compute::{concat_batches, lexsort_to_indices, take_record_batch, SortColumn};
use dfp_core::{
    register_stage, Batch, ConfigContext, ConfigError, Emitter, Family, Partitioning, StageConfig, StageContext,
    StageError, StageInstance, StageKind, Transform,
};
use schemars::JsonSchema;
use serde::Deserialize;

use super::history::{Bounds, Interner, UserState};
use super::store::{encode_set, ProfileStore, RegistryProfiles};
use super::{population, roles_of, set_name, HistoryColumns, Profile, RowReader};
use crate::registry::MlflowOptions;
use crate::store::S3Options;
use crate::time::DAY_MICROS;

/// Configuration of `profiles`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfilesConfig {
    /// The model registry to publish to (a directory, `s3://…` or `mlflow://…`): the one the models go to.
    pub registry: String,
    /// The log family; default: the pipeline's `family`.
    pub family: String,
    /// Days of history kept (as `features.history_days`: use the same value).
    #[serde(default = "d_history_days")]
    pub history_days: u32,
    /// Most distinct values kept per user and role (as `features.max_values_per_user`).
    #[serde(default = "d_max_values")]
    pub max_values_per_user: usize,
    /// A value goes into the population profile when at least this share of users showed it.
    #[serde(default = "d_share")]
    pub population_share: f64,
    /// Most values per role in the population profile.
    #[serde(default = "d_population_values")]
    pub population_values: usize,
    /// Build the set but publish nothing (a retraining dry run: `dfp retrain --dry-run`).
    #[serde(default)]
    pub dry_run: bool,
    /// S3 settings for an `s3://` registry.
    #[serde(default)]
    pub s3: S3Options,
    /// MLflow settings for an `mlflow://` registry.
    #[serde(default)]
    pub mlflow: MlflowOptions,
}

fn d_history_days() -> u32 {
    crate::profile::DEFAULT_HISTORY_DAYS
}
fn d_max_values() -> usize {
    crate::profile::DEFAULT_MAX_VALUES
}
fn d_share() -> f64 {
    0.05
}
fn d_population_values() -> usize {
    50
}

impl StageConfig for ProfilesConfig {
    const TYPE: &'static str = "profiles";
    const KIND: StageKind = StageKind::Transform;
    const DESCRIPTION: &'static str = "writes every user's history (a profile set) to the model registry";
    fn validate(&self) -> Result<(), ConfigError> {
        if self.registry.trim().is_empty() {
            return Err(ConfigError::field("registry", "must name a model registry"));
        }
        if self.history_days == 0 {
            return Err(ConfigError::field("history_days", "must be at least 1"));
        }
        if self.max_values_per_user == 0 {
            return Err(ConfigError::field("max_values_per_user", "must be at least 1"));
        }
        if !(self.population_share > 0.0 && self.population_share <= 1.0) {
            return Err(ConfigError::field("population_share", "must be more than 0 and at most 1"));
        }
        Ok(())
    }
    fn check(&self, ctx: &ConfigContext<'_>) -> Result<(), ConfigError> {
        ctx.family(&self.family).map(|_| ())
    }
    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        let family = ctx.family(&self.family)?;
        Ok(StageInstance::Transform(Box::new(Profiles {
            columns: HistoryColumns::of(&family),
            roles: roles_of(&family),
            bounds: Bounds {
                window: i64::from(self.history_days) * DAY_MICROS,
                max_values: self.max_values_per_user,
                track_uncommitted: false,
            },
            family,
            config: self.clone(),
            pending: BTreeMap::new(),
            users: HashMap::new(),
            interner: Interner::default(),
            events: 0,
            store: None,
            stage: String::new(),
        })))
    }
}
register_stage!(ProfilesConfig);

struct Profiles {
    config: ProfilesConfig,
    family: Arc<Family>,
    columns: HistoryColumns,
    roles: Vec<&'static str>,
    bounds: Bounds,
    pending: BTreeMap<u64, Vec<Batch>>,
    users: HashMap<String, UserState>,
    interner: Interner,
    events: u64,
    store: Option<RegistryProfiles>,
    stage: String,
}

impl Profiles {
    fn release(&mut self, batches: Vec<Batch>) -> Result<(), StageError> {
        let Some(first) = batches.first() else { return Ok(()) };
        let schema = first.data.schema();
        let parts: Vec<&RecordBatch> = batches.iter().map(|b| &b.data).collect();
        let all = concat_batches(&schema, parts)
            .map_err(|e| StageError::Data(format!("profiles: input batches disagree on columns: {e}")))?;
        if all.num_rows() == 0 {
            return Ok(());
        }
        let sort_cols: Vec<SortColumn> = ["username", "timestamp", "id"]
            .iter()
            .map(|n| {
                all.column_by_name(n)
                    .map(|c| SortColumn { values: Arc::clone(c), options: None })
                    .ok_or_else(|| StageError::Data(format!("profiles: input has no column \"{n}\"")))
            })
            .collect::<Result<_, _>>()?;
        let sorted = take_record_batch(&all, &lexsort_to_indices(&sort_cols, None)?)?;
        let rows = RowReader::new(&sorted, &self.columns, "profiles")?;
        let flags = self.columns.novelty.len();
        let mut prefix = String::new();
        let mut new = [false; 8];
        let n = sorted.num_rows();
        let mut i = 0;
        while i < n {
            let user = rows.users.value(i);
            let state = self.users.entry(user.to_string()).or_default();
            while i < n && rows.users.value(i) == user {
                let mut values: [Option<&str>; 8] = [None; 8];
                let event = rows.view(i, &mut prefix, &mut values, 0);
                state.observe(&event, &self.bounds, &mut self.interner, &mut new[..flags]);
                i += 1;
            }
        }
        self.events += n as u64;
        Ok(())
    }

    fn publish(&mut self) -> Result<(u64, u64), StageError> {
        let store = self.store.as_ref().ok_or_else(|| StageError::Other("profiles: not opened".into()))?;
        let population =
            population(self.users.values(), &self.roles, self.config.population_share, self.config.population_values);
        let mut users: Vec<(&String, &UserState)> = self.users.iter().collect();
        users.sort_by(|a, b| a.0.cmp(b.0));
        let roles = &self.roles;
        let files = encode_set(
            &self.family,
            self.config.history_days,
            users.into_iter().map(|(u, s)| Profile::from_state(u, s, roles, false)),
            population,
            crate::time::format_micros(crate::time::now_micros()),
        )
        .map_err(|e| StageError::Other(format!("profiles: {e}")))?;
        let bytes: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
        let (names, blobs): (Vec<String>, Vec<Vec<u8>>) = files.into_iter().unzip();
        let refs: Vec<(&str, Vec<u8>)> = names.iter().map(String::as_str).zip(blobs).collect();
        let version = store
            .publish(&self.family, &refs)
            .map_err(|e| StageError::Other(format!("profiles: publishing to {}: {e}", store.location())))?;
        Ok((version, bytes))
    }
}

impl Transform for Profiles {
    fn input_partitioning(&self) -> Partitioning {
        // One set, one writer: every row goes to worker 0.
        Partitioning::Single
    }

    fn open(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.stage = ctx.stage_id.clone();
        if ctx.worker_index == 0 {
            let registry = crate::registry::open(&self.config.registry, &self.config.s3, &self.config.mlflow)
                .map_err(|e| StageError::Other(e.to_string()))?;
            self.store = Some(RegistryProfiles::new(registry));
        }
        Ok(())
    }

    fn process(&mut self, batch: Batch, _out: &mut Emitter) -> Result<(), StageError> {
        let t = batch.envelope.time.unwrap_or(0);
        self.pending.entry(t).or_default().push(batch);
        Ok(())
    }

    fn advance(&mut self, frontier: u64, _out: &mut Emitter) -> Result<(), StageError> {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() >= frontier {
                break;
            }
            let batches = entry.remove();
            self.release(batches)?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<(), StageError> {
        while let Some((_, batches)) = self.pending.pop_first() {
            self.release(batches)?;
        }
        if self.store.is_none() {
            return Ok(());
        }
        if self.config.dry_run {
            tracing::info!(stage = %self.stage, users = self.users.len(), "dry run: the profile set is not published");
            let mut report = crate::transforms::train::Report::default();
            report.not_trained(
                &set_name(&self.family),
                "profiles",
                "evaluated",
                self.events as usize,
                format!("{} users; dry run: not published", self.users.len()),
            );
            out.emit(Batch::new(report.finish()?, self.stage.clone()));
            return Ok(());
        }
        let started = Instant::now();
        let (version, bytes) = self.publish()?;
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            stage = %self.stage,
            users = self.users.len(),
            version,
            bytes,
            "profile set published"
        );
        let mut report = crate::transforms::train::Report::default();
        report.published(
            &set_name(&self.family),
            "profiles",
            version,
            self.events,
            seconds,
            &format!("{} users, {} KiB", self.users.len(), bytes.div_ceil(1024)),
        );
        let data = report.finish()?;
        out.emit(Batch::new(data, self.stage.clone()));
        Ok(())
    }
}
