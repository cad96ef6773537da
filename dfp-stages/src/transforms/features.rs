//! `type: features` — the DFP features: Morpheus's per-user, per-day counters plus cross-day novelty.
//!
//! ```yaml
//! family: azure
//! stages:
//!   features: { type: features, inputs: [events], history_days: 30 }
//! ```
//!
//! Input: normalized rows of a log family (the pipeline's `family:`), whose roles say which columns hold
//! the app, location, browser, … The input is partitioned by `username`, so each user's state lives on one
//! worker.
//!
//! **Morpheus counters** (per user and UTC day, events taken in event-time order):
//! - `logcount`: the 0-based running count of the user's events that day;
//! - `locincrement` (families with a `location` role): the number of distinct locations the user has shown
//!   so far that day, counting the current event (starts at 1);
//! - `appincrement` (families with an `app` role): the same for the app. Morpheus's Azure model reads it,
//!   its Duo model does not.
//!
//! **Cross-day features** (new in dfp), from per-user history that outlives a batch, one per context role
//! the family has: `new_app`, `new_country`, `new_city`, `new_browser`, `new_os`, `new_device`,
//! `new_ip_prefix` (true when the user has not shown that value within the last `history_days`; the IP
//! prefix is the /24 of an IPv4 address or the /48 of an IPv6 one; a null context value is never new),
//! `hours_since_prev` (null for the user's first event) and `new_values` (how many of the flags other
//! than `new_ip_prefix` are true).
//! The history is bounded: values unseen for `history_days` are forgotten, and at most `max_values_per_user`
//! values per user and feature are kept (the least recently seen go first).
//!
//! **Duplicates.** An event delivered twice (same user, time and id among the user's last 16 events: a file
//! read again, a replayed message) is scored again, since it is still an event of the log and dropping it
//! could hide something, and counted as `duplicate_ids` (run summary, `dfp_stage_counter_total`).
//!
//! **Order.** Rows are held until every batch of their logical time has arrived (the file source numbers
//! files in time order), then each user's rows of that time are taken in (timestamp, id) order. The output is
//! therefore the same whatever the batch sizes and number of workers. A row older than the user's last
//! processed event (out-of-order input) is still counted, against its own day.
//!
//! **Profiles.** With `profiles:` (the model registry the training pipeline wrote), each user's history
//! starts from the user's profile instead of from nothing, so that a first event of an inference run is
//! "new" only when it is new for the user (see [`crate::profile`]); users the set does not know start
//! from the population profile. The set is loaded shard by shard as users show up, and a newer set
//! (retraining) is picked up after `profiles_ttl_secs` for users not met yet. A profile that cannot be
//! read is reported once (run summary, `/stats`), counted as `profile_errors`, and that user starts from
//! the population profile. A store that cannot be reached keeps `/readyz` unready with the reason.
//!
//! **Checkpoints.** With `checkpoint:` (streaming pipelines), the live history is written every
//! `interval_secs` and sources commit their read positions only up to the last checkpoint, so that a
//! restart — after kill -9 too — resumes with every user's state and computes the same features as an
//! uninterrupted run (see [`crate::profile::checkpoint`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, BooleanBuilder, Float64Builder, Int64Builder};
use arrow::compute::{concat_batches, lexsort_to_indices, take_record_batch, SortColumn};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use dfp_core::{
    register_stage, Batch, ConfigContext, ConfigError, Emitter, Partitioning, StageConfig, StageContext, StageError,
    StageInstance, StageKind, Transform,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::profile::checkpoint::{CheckpointConfig, Checkpointer};
use crate::profile::history::{Bounds, Interner, UserState};
use crate::profile::store::{ProfileCache, RegistryProfiles, Seed};
use crate::profile::{roles_of, HistoryColumns, RowReader};
use crate::registry::MlflowOptions;
use crate::store::S3Options;
use crate::time::DAY_MICROS;

/// Configuration of `features`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeaturesConfig {
    /// The log family whose roles name the columns to read; default: the pipeline's `family`.
    pub family: String,
    /// Days of per-user history behind the `new_*` features.
    #[serde(default = "default_history_days")]
    pub history_days: u32,
    /// Most distinct values remembered per user and feature.
    #[serde(default = "default_max_values")]
    pub max_values_per_user: usize,
    /// Most users whose history one worker keeps. Past it, the users least recently active are forgotten
    /// (counted as `evicted_users`): their next event starts a fresh history. A flood of made-up user names
    /// (a password spray) cannot grow memory past this.
    #[serde(default = "default_max_users")]
    pub max_users: usize,
    /// Start each user's history from the profile set in this model registry (a directory, `s3://…` or
    /// `mlflow://…`: where the training pipeline's `profiles` stage wrote it). Without it, history starts
    /// empty.
    #[serde(default)]
    pub profiles: Option<String>,
    /// Seconds between looks for a newer profile set.
    #[serde(default = "default_profiles_ttl")]
    pub profiles_ttl_secs: f64,
    /// Checkpoint the live history (streaming pipelines): `{path, interval_secs}`.
    #[serde(default)]
    pub checkpoint: Option<CheckpointConfig>,
    /// S3 settings for an `s3://` profile store.
    #[serde(default)]
    pub s3: S3Options,
    /// MLflow settings for an `mlflow://` profile store.
    #[serde(default)]
    pub mlflow: MlflowOptions,
}

fn default_history_days() -> u32 {
    crate::profile::DEFAULT_HISTORY_DAYS
}
fn default_max_values() -> usize {
    crate::profile::DEFAULT_MAX_VALUES
}
fn default_max_users() -> usize {
    1_000_000
}
fn default_profiles_ttl() -> f64 {
    300.0
}

impl StageConfig for FeaturesConfig {
    const TYPE: &'static str = "features";
    const KIND: StageKind = StageKind::Transform;
    const DESCRIPTION: &'static str = "per-user DFP features: Morpheus day counters and cross-day novelty";
    const RENAMED: &'static [(&'static str, &'static str)] = &[(
        "preset",
        "name the log family once at the top of the pipeline (`family: azure`), or with `family:` on this stage",
    )];
    fn validate(&self) -> Result<(), ConfigError> {
        if self.history_days == 0 {
            return Err(ConfigError::field("history_days", "must be at least 1"));
        }
        if self.max_values_per_user == 0 {
            return Err(ConfigError::field("max_values_per_user", "must be at least 1"));
        }
        if self.max_users == 0 {
            return Err(ConfigError::field("max_users", "must be at least 1"));
        }
        if !self.profiles_ttl_secs.is_finite() || self.profiles_ttl_secs < 0.0 {
            return Err(ConfigError::field("profiles_ttl_secs", "must be zero or more"));
        }
        if self.profiles.as_deref().is_some_and(|p| p.trim().is_empty()) {
            return Err(ConfigError::field("profiles", "must name a model registry (or leave it out)"));
        }
        if let Some(c) = &self.checkpoint {
            c.validate().map_err(|m| {
                let (field, message) = m.split_once(": ").unwrap_or(("checkpoint", m.as_str()));
                ConfigError::field(field, message)
            })?;
        }
        Ok(())
    }
    fn check(&self, ctx: &ConfigContext<'_>) -> Result<(), ConfigError> {
        ctx.family(&self.family).map(|_| ())
    }
    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        Ok(StageInstance::Transform(Box::new(Features::new(self, ctx)?)))
    }
}
register_stage!(FeaturesConfig);

struct Features {
    config: FeaturesConfig,
    columns: HistoryColumns,
    roles: Vec<&'static str>,
    bounds: Bounds,
    pending: BTreeMap<u64, Vec<Batch>>,
    users: HashMap<String, UserState>,
    interner: Interner,
    /// The newest event time seen (µs).
    newest: i64,
    /// When idle users were last swept out.
    last_sweep: i64,
    ctx: Option<StageContext>,
    profiles: Option<ProfileCache>,
    checkpointer: Option<Checkpointer>,
    /// Every row below this logical time has been taken in.
    frontier: u64,
    /// The frontier of the last checkpoint.
    durable: u64,
    /// A checkpoint failed; reported once until one succeeds again.
    checkpoint_failing: bool,
}

impl Features {
    fn new(config: &FeaturesConfig, ctx: &StageContext) -> Result<Features, StageError> {
        let family = ctx.family(&config.family)?;
        Ok(Features {
            columns: HistoryColumns::of(&family),
            roles: roles_of(&family),
            bounds: Bounds {
                window: i64::from(config.history_days) * DAY_MICROS,
                max_values: config.max_values_per_user,
                track_uncommitted: config.checkpoint.is_some(),
            },
            config: config.clone(),
            pending: BTreeMap::new(),
            users: HashMap::new(),
            interner: Interner::default(),
            newest: i64::MIN,
            last_sweep: i64::MIN,
            ctx: None,
            profiles: None,
            checkpointer: None,
            frontier: 0,
            durable: 0,
            checkpoint_failing: false,
        })
    }

    /// Bounds the per-user state: users idle for longer than the history window have nothing left that a
    /// feature reads (their values expired) and are dropped; past `max_users`, the least recently active
    /// tenth goes (counted as `evicted_users`).
    fn bound_users(&mut self) {
        let window = self.bounds.window;
        if self.newest.saturating_sub(self.last_sweep) > window / 4 {
            self.last_sweep = self.newest;
            let horizon = self.newest.saturating_sub(window);
            self.users.retain(|_, s| s.last_ts.is_some_and(|t| t >= horizon));
        }
        let max_users = self.config.max_users;
        if self.users.len() <= max_users {
            return;
        }
        let keep = max_users - max_users / 10;
        let mut ages: Vec<i64> = self.users.values().map(|s| s.last_ts.unwrap_or(i64::MIN)).collect();
        let cut = ages.len() - keep;
        let (_, &mut oldest_kept, _) = ages.select_nth_unstable(cut);
        let before = self.users.len();
        self.users.retain(|_, s| s.last_ts.unwrap_or(i64::MIN) >= oldest_kept);
        // Ties at the cut may keep a few more than `keep`; past the cap, drop arbitrary ones of them.
        if self.users.len() > max_users {
            let extra: Vec<String> = self.users.keys().take(self.users.len() - keep).cloned().collect();
            for k in extra {
                self.users.remove(&k);
            }
        }
        let evicted = (before - self.users.len()) as u64;
        tracing::debug!(
            evicted,
            kept = self.users.len(),
            "features: per-user state over max_users; least recently active users evicted"
        );
        if let Some(ctx) = &self.ctx {
            ctx.count("evicted_users", evicted);
        }
    }

    /// Logs, notes and counts what the profile cache found wrong since the last call.
    fn report_profile_problems(&mut self) {
        let Some(cache) = self.profiles.as_mut() else { return };
        let problems = cache.take_problems();
        if let (Some(ready), Some(ctx)) = (cache.readiness_change(), &self.ctx) {
            ctx.set_readiness(ready);
        }
        if problems.is_empty() {
            return;
        }
        if let Some(ctx) = &self.ctx {
            ctx.count("profile_errors", problems.len() as u64);
            for p in problems {
                tracing::warn!(stage = %ctx.stage_id, "{p}");
                ctx.note(p);
            }
        }
    }

    /// Writes a checkpoint when one is due (or `force`d), then tells the runtime it is durable.
    fn maybe_checkpoint(&mut self, force: bool) {
        let Some(cp) = self.checkpointer.as_mut() else { return };
        let Some(ctx) = self.ctx.as_ref() else { return };
        if self.frontier <= self.durable && !force {
            return;
        }
        if !(force || cp.last.elapsed() >= cp.interval || ctx.checkpoint_wanted()) {
            return;
        }
        // Events below the committed position will not come again: their features need not be kept.
        let committed = ctx.committed();
        for s in self.users.values_mut() {
            s.committed(committed);
        }
        let started = std::time::Instant::now();
        match cp.write(self.users.iter(), &self.roles) {
            Ok(bytes) => {
                tracing::debug!(
                    stage = %ctx.stage_id,
                    worker = ctx.worker_index,
                    users = self.users.len(),
                    bytes,
                    frontier = self.frontier,
                    ms = started.elapsed().as_millis() as u64,
                    "checkpoint written"
                );
                self.durable = self.frontier;
                ctx.durable(self.frontier);
                self.checkpoint_failing = false;
            }
            Err(e) => {
                // Offsets stay uncommitted past the last good checkpoint; the next interval tries again.
                cp.last = std::time::Instant::now();
                ctx.count("checkpoint_failures", 1);
                if !self.checkpoint_failing {
                    self.checkpoint_failing = true;
                    tracing::warn!(stage = %ctx.stage_id, error = %e, "checkpoint failed; offsets are not committed past the last good one");
                    ctx.note(format!("{e}; offsets are not committed past the last good checkpoint"));
                }
            }
        }
    }
}

/// The /24 of an IPv4 address, the /48 of an IPv6 one, or the text itself.
pub fn ip_prefix(ip: &str) -> String {
    let mut out = String::new();
    write_ip_prefix(ip, &mut out);
    out
}

pub(crate) fn write_ip_prefix(ip: &str, out: &mut String) {
    use std::fmt::Write;
    let _ = match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => {
            let o = v4.octets();
            write!(out, "{}.{}.{}", o[0], o[1], o[2])
        }
        Ok(std::net::IpAddr::V6(v6)) => {
            let s = v6.segments();
            write!(out, "{:x}:{:x}:{:x}", s[0], s[1], s[2])
        }
        Err(_) => out.write_str(ip),
    };
}

impl Features {
    /// Computes the features of one logical time's rows.
    fn release(&mut self, batches: Vec<Batch>, logical: u64, out: &mut Emitter) -> Result<(), StageError> {
        let Some(first) = batches.first() else { return Ok(()) };
        let envelope = first.envelope.clone();
        let schema = first.data.schema();
        let parts: Vec<&RecordBatch> = batches.iter().map(|b| &b.data).collect();
        let all = concat_batches(&schema, parts)
            .map_err(|e| StageError::Data(format!("features: input batches disagree on columns: {e}")))?;
        if all.num_rows() == 0 {
            return Ok(());
        }
        let sort_cols: Vec<SortColumn> = ["username", "timestamp", "id"]
            .iter()
            .map(|n| {
                all.column_by_name(n)
                    .map(|c| SortColumn { values: Arc::clone(c), options: None })
                    .ok_or_else(|| StageError::Data(format!("features: input has no column \"{n}\"")))
            })
            .collect::<Result<_, _>>()?;
        let order = lexsort_to_indices(&sort_cols, None)?;
        let sorted = take_record_batch(&all, &order)?;
        let rows = RowReader::new(&sorted, &self.columns, "features")?;
        if let Some(cache) = self.profiles.as_mut() {
            cache.refresh();
        }

        let n = sorted.num_rows();
        let flags = self.columns.novelty.len();
        let mut logcount = Int64Builder::with_capacity(n);
        let mut locinc = Int64Builder::with_capacity(n);
        let mut appinc = Int64Builder::with_capacity(n);
        let mut news: Vec<BooleanBuilder> = (0..flags).map(|_| BooleanBuilder::with_capacity(n)).collect();
        let mut since = Float64Builder::with_capacity(n);
        let mut new_values = Int64Builder::with_capacity(n);
        let ip_flag = self.columns.novelty.iter().position(|(_, f)| *f == "new_ip_prefix");
        let (mut duplicates, mut replayed) = (0u64, 0u64);
        let mut prefix = String::with_capacity(48);
        let mut new = [false; 8];
        let mut i = 0;
        while i < n {
            let user = rows.users.value(i);
            // The name is copied only for a user met for the first time.
            if !self.users.contains_key(user) {
                let seeded = match self.profiles.as_mut() {
                    None => UserState::default(),
                    Some(cache) => match cache.seed(user, &mut self.interner) {
                        Seed::Own(s) | Seed::Population(s) => s,
                        Seed::Empty => UserState::default(),
                    },
                };
                self.users.insert(user.to_string(), seeded);
            }
            let Some(state) = self.users.get_mut(user) else {
                return Err(StageError::Other(format!("features: the state of user {user:?} vanished")));
            };
            while i < n && rows.users.value(i) == user {
                let mut values: [Option<&str>; 8] = [None; 8];
                let event = rows.view(i, &mut prefix, &mut values, logical);
                let o = state.observe(&event, &self.bounds, &mut self.interner, &mut new[..flags]);
                self.newest = self.newest.max(event.time);
                duplicates += u64::from(o.duplicate);
                replayed += u64::from(o.replayed);
                logcount.append_value(o.logcount);
                locinc.append_value(o.locincrement);
                appinc.append_value(o.appincrement);
                for (k, b) in news.iter_mut().enumerate() {
                    b.append_value(new[k]);
                }
                since.append_option(o.since);
                let count = new[..flags].iter().enumerate().filter(|(k, v)| **v && Some(*k) != ip_flag).count();
                new_values.append_value(count as i64);
                i += 1;
            }
        }
        self.report_profile_problems();

        let mut fields: Vec<Field> = sorted.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut cols: Vec<ArrayRef> = sorted.columns().to_vec();
        fields.push(Field::new("logcount", DataType::Int64, false));
        cols.push(Arc::new(logcount.finish()));
        if self.columns.location.is_some() {
            fields.push(Field::new("locincrement", DataType::Int64, false));
            cols.push(Arc::new(locinc.finish()));
        }
        if self.columns.app.is_some() {
            fields.push(Field::new("appincrement", DataType::Int64, false));
            cols.push(Arc::new(appinc.finish()));
        }
        for ((_, name), mut b) in self.columns.novelty.iter().zip(news) {
            fields.push(Field::new(*name, DataType::Boolean, false));
            cols.push(Arc::new(b.finish()));
        }
        fields.push(Field::new("hours_since_prev", DataType::Float64, true));
        cols.push(Arc::new(since.finish()));
        if flags > 0 {
            fields.push(Field::new("new_values", DataType::Int64, false));
            cols.push(Arc::new(new_values.finish()));
        }
        if let Some(ctx) = &self.ctx {
            if duplicates > 0 {
                tracing::debug!(duplicates, "features: events seen before (same user, time and id)");
                ctx.count("duplicate_ids", duplicates);
            }
            if replayed > 0 {
                ctx.count("replayed_events", replayed);
            }
        }
        let data = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?;
        crate::normalize::observe_event_time(&data, out);
        out.emit(Batch { data, envelope });
        Ok(())
    }
}

impl Transform for Features {
    fn input_partitioning(&self) -> Partitioning {
        Partitioning::By("username".into())
    }

    fn holds_commits(&self) -> bool {
        self.config.checkpoint.is_some()
    }

    fn open(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.ctx = Some(ctx.clone());
        if let Some(location) = &self.config.profiles {
            let registry = crate::registry::open(location, &self.config.s3, &self.config.mlflow)
                .map_err(|e| StageError::Other(format!("profiles: {e}")))?;
            let family = ctx.family(&self.config.family)?;
            let mut cache = ProfileCache::new(
                Arc::new(RegistryProfiles::new(registry)),
                family,
                Duration::from_secs_f64(self.config.profiles_ttl_secs),
            )
            .owned_by(ctx.worker_index, ctx.workers);
            cache.refresh();
            match cache.reachable() {
                Ok(()) => {
                    if cache.version().is_none() && ctx.worker_index == 0 {
                        tracing::warn!(stage = %ctx.stage_id, registry = %location, "no profile set in the registry yet (train with a `profiles` stage); users start from no history");
                    }
                }
                Err(why) => {
                    tracing::warn!(stage = %ctx.stage_id, "{why}; users start from no history until it answers");
                }
            }
            self.profiles = Some(cache);
            self.report_profile_problems();
        }
        if let Some(config) = &self.config.checkpoint {
            let cp = Checkpointer::new(config, &ctx.stage_id, &self.config.family, ctx.worker_index, ctx.workers);
            let restored = cp.restore(&self.roles, &mut self.interner)?;
            for p in &restored.problems {
                tracing::warn!(stage = %ctx.stage_id, "{p}");
                ctx.note(p.clone());
            }
            if restored.files > 0 {
                tracing::info!(stage = %ctx.stage_id, worker = ctx.worker_index, users = restored.users.len(), files = restored.files, "history restored from the checkpoint");
                ctx.count("restored_users", restored.users.len() as u64);
            }
            self.users.extend(restored.users);
            self.checkpointer = Some(cp);
        }
        Ok(())
    }

    fn process(&mut self, batch: Batch, _out: &mut Emitter) -> Result<(), StageError> {
        let t = batch.envelope.time.unwrap_or(0);
        self.pending.entry(t).or_default().push(batch);
        Ok(())
    }

    fn advance(&mut self, frontier: u64, out: &mut Emitter) -> Result<(), StageError> {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() >= frontier {
                break;
            }
            let logical = *entry.key();
            let batches = entry.remove();
            self.release(batches, logical, out)?;
            self.bound_users();
        }
        self.frontier = self.frontier.max(frontier);
        self.maybe_checkpoint(false);
        Ok(())
    }

    fn poll_timer(&mut self, _out: &mut Emitter) -> Result<Option<Duration>, StageError> {
        let Some(cp) = self.checkpointer.as_ref() else { return Ok(None) };
        if self.frontier <= self.durable {
            return Ok(None);
        }
        let due = cp.interval.saturating_sub(cp.last.elapsed());
        if due.is_zero() || self.ctx.as_ref().is_some_and(|c| c.checkpoint_wanted()) {
            self.maybe_checkpoint(false);
            return Ok(self.checkpointer.as_ref().map(|c| c.interval));
        }
        Ok(Some(due))
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<(), StageError> {
        while let Some((logical, batches)) = self.pending.pop_first() {
            self.release(batches, logical, out)?;
        }
        if self.checkpointer.is_some() {
            self.frontier = u64::MAX;
            self.maybe_checkpoint(true);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{StringArray, TimestampMicrosecondArray};

    #[test]
    fn a_flood_of_user_names_keeps_at_most_max_users() {
        let config: FeaturesConfig =
            serde_json::from_value(serde_json::json!({"family": "azure", "max_users": 100})).unwrap();
        let mut t = Features::new(&config, &StageContext::standalone("features", 0, 1)).unwrap();
        let schema = Arc::new(Schema::new(
            ["id", "username", "appDisplayName", "location", "country", "city", "deviceDetailbrowser"]
                .iter()
                .map(|n| Field::new(*n, DataType::Utf8, true))
                .chain(std::iter::once(Field::new("timestamp", crate::normalize::timestamp_type(), false)))
                .chain(
                    ["deviceDetailoperatingSystem", "deviceDetaildisplayName", "ipAddress"]
                        .iter()
                        .map(|n| Field::new(*n, DataType::Utf8, true)),
                )
                .collect::<Vec<_>>(),
        ));
        let mut out = Emitter::new();
        for round in 0..10u64 {
            let users: Vec<String> = (0..100).map(|i| format!("sprayed-{round}-{i}@contoso.com")).collect();
            let text = |v: String| -> ArrayRef { Arc::new(StringArray::from(vec![v; 100])) };
            let mut cols: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from((0..100).map(|i| format!("{round}-{i}")).collect::<Vec<_>>())),
                Arc::new(StringArray::from(users)),
            ];
            for v in ["Outlook", "Oslo, NO", "NO", "Oslo", "Edge"] {
                cols.push(text(v.to_string()));
            }
            let at = 1_790_812_800_000_000 + round as i64 * 60_000_000;
            cols.push(Arc::new(TimestampMicrosecondArray::from(vec![at; 100]).with_timezone("+00:00")));
            for v in ["Windows", "PC", "203.0.113.9"] {
                cols.push(text(v.to_string()));
            }
            let mut batch = Batch::new(RecordBatch::try_new(schema.clone(), cols).unwrap(), "events");
            batch.envelope.time = Some(round);
            t.process(batch, &mut out).unwrap();
            t.advance(round + 1, &mut out).unwrap();
            assert!(t.users.len() <= 100, "round {round}: {} users kept", t.users.len());
        }
        t.finish(&mut out).unwrap();
        let rows: usize = out.batches().iter().map(Batch::num_rows).sum();
        assert_eq!(rows, 1000, "every event still gets its features");
        // The newest users are the ones kept.
        assert!(t.users.keys().all(|u| u.starts_with("sprayed-9-") || u.starts_with("sprayed-8-")));
    }

    #[test]
    fn ip_prefixes() {
        assert_eq!(ip_prefix("203.0.113.7"), "203.0.113");
        assert_eq!(ip_prefix("2001:db8:85a3::8a2e:370:7334"), "2001:db8:85a3");
        assert_eq!(ip_prefix("not-an-ip"), "not-an-ip");
    }
}
