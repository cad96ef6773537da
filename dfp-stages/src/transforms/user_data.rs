//! `type: add-user-data` — attaches what is known of the user to each alert, for the analyst.
//!
//! ```yaml
//! context:
//!   type: add-user-data
//!   inputs: [alerts]
//!   profiles: "${models}"                       # the registry holding the profile set
//!   directory: examples/data/azure/directory.csv  # optional: CSV or JSON lines, one row per user
//! ```
//!
//! From the user's **profile** (written by the training pipeline's `profiles` stage; see
//! [`crate::profile`]) it adds, per context role the family has (`country`, `app`, `device`, `browser`,
//! …), the user's usual values, most frequent first (`user_usual_country`: `"NO (212), SE (4)"`), the number
//! of events and the time of the first one in the profile (`user_events`, `user_since`), and
//! `user_new_values`: for each value of this event flagged new (`new_country`, …), when the user first
//! showed it, or that it was never seen (`"country RU: never seen; browser Edge 120: first 2026-09-02,
//! last 2026-09-03"`).
//!
//! From the optional **directory** export (CSV with a header row, or JSON lines/array), keyed by
//! `directory_key` (default `username`; matched as the family compares user ids, so case-insensitively for
//! Azure and Duo), it adds `user_<field>` for each of `fields` (default: every other column), for example
//! `user_department`, `user_title`, `user_manager`, `user_location`.
//!
//! Nothing is ever dropped: a user without a profile or a directory row gets nulls in those columns. A
//! directory that cannot be read stops the pipeline at start-up with the file and line; a user listed twice
//! keeps the first row (reported once).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Builder, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use dfp_core::family::NOVELTY;
use dfp_core::{
    register_stage, Batch, ConfigContext, ConfigError, Emitter, Family, Partitioning, StageConfig, StageContext,
    StageError, StageInstance, StageKind, Transform,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::profile::store::{ProfileCache, RegistryProfiles};
use crate::profile::SeenEntry;
use crate::registry::MlflowOptions;
use crate::store::S3Options;

/// Configuration of `add-user-data`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserDataConfig {
    /// The log family; default: the pipeline's `family`.
    pub family: String,
    /// The model registry holding the profile set (as `features.profiles`). Without it, only the directory
    /// is joined.
    #[serde(default)]
    pub profiles: Option<String>,
    /// Seconds between looks for a newer profile set.
    #[serde(default = "d_ttl")]
    pub profiles_ttl_secs: f64,
    /// Usual values listed per role.
    #[serde(default = "d_top")]
    pub top: usize,
    /// A directory export, one row per user: CSV with a header row, or JSON lines (or one JSON array).
    #[serde(default)]
    pub directory: Option<String>,
    /// The directory column holding the user name.
    #[serde(default = "d_key")]
    pub directory_key: String,
    /// The directory columns to attach (as `user_<field>`); default: every column but the key.
    #[serde(default)]
    pub fields: Vec<String>,
    /// S3 settings for an `s3://` registry.
    #[serde(default)]
    pub s3: S3Options,
    /// MLflow settings for an `mlflow://` registry.
    #[serde(default)]
    pub mlflow: MlflowOptions,
}

fn d_ttl() -> f64 {
    300.0
}
fn d_top() -> usize {
    3
}
fn d_key() -> String {
    "username".into()
}

impl StageConfig for UserDataConfig {
    const TYPE: &'static str = "add-user-data";
    const KIND: StageKind = StageKind::Transform;
    const DESCRIPTION: &'static str = "adds the user's usual values, first-seen times and directory data to alerts";
    fn validate(&self) -> Result<(), ConfigError> {
        if self.profiles.is_none() && self.directory.is_none() {
            return Err(ConfigError::field("profiles", "name the profile registry, a `directory`, or both"));
        }
        if self.top == 0 {
            return Err(ConfigError::field("top", "must be at least 1"));
        }
        if !self.profiles_ttl_secs.is_finite() || self.profiles_ttl_secs < 0.0 {
            return Err(ConfigError::field("profiles_ttl_secs", "must be zero or more"));
        }
        if self.directory_key.trim().is_empty() {
            return Err(ConfigError::field("directory_key", "must name a column"));
        }
        Ok(())
    }
    fn check(&self, ctx: &ConfigContext<'_>) -> Result<(), ConfigError> {
        ctx.family(&self.family).map(|_| ())
    }
    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        let family = ctx.family(&self.family)?;
        let directory = match &self.directory {
            Some(path) => Some(Directory::read("add-user-data", path, &self.directory_key, &self.fields, &family)?),
            None => None,
        };
        Ok(StageInstance::Transform(Box::new(UserData {
            roles: NOVELTY
                .iter()
                .filter_map(|(role, flag)| family.roles.get(role).map(|c| (*role, c.to_string(), *flag)))
                .collect(),
            family,
            config: self.clone(),
            directory,
            profiles: None,
            ctx: None,
        })))
    }
}
register_stage!(UserDataConfig);

/// The directory export: per user, the attached fields' values.
pub(crate) struct Directory {
    pub(crate) fields: Vec<String>,
    /// By user id (normalized as the family compares them): the values of `fields`.
    pub(crate) rows: HashMap<String, Vec<Option<String>>>,
}

impl Directory {
    /// Reads the export at `path` (CSV or JSON lines), keyed by `key`, keeping `wanted` (all fields when
    /// empty); `stage` names the reader in messages.
    pub(crate) fn read(
        stage: &str,
        path: &str,
        key: &str,
        wanted: &[String],
        family: &Family,
    ) -> Result<Directory, StageError> {
        let mut fields: Vec<String> = wanted.to_vec();
        let mut rows: HashMap<String, Vec<Option<String>>> = HashMap::new();
        let mut first_line: HashMap<String, String> = HashMap::new();
        let mut twice: Vec<String> = Vec::new();
        crate::scored::for_each_row(path, |origin, row| {
            let where_ = || format!("{}:{}", origin.path.display(), origin.line);
            let user = match row.get(key) {
                Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => return Err(origin.error(format!("no `{key}` (the user name the directory is keyed by)"))),
            };
            if fields.is_empty() {
                fields = row.keys().filter(|k| *k != key).cloned().collect();
            }
            let user = family.user_ids.normalize(&user).into_owned();
            if let Some(first) = first_line.get(&user) {
                twice.push(format!("{} (first at {first}, again at {})", user, where_()));
                return Ok(());
            }
            first_line.insert(user.clone(), where_());
            let values = fields
                .iter()
                .map(|f| match row.get(f) {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(other) => Some(other.to_string()),
                })
                .collect();
            rows.insert(user, values);
            Ok(())
        })
        .map_err(|e| StageError::Other(format!("{stage}: directory {e}")))?;
        if !twice.is_empty() {
            tracing::warn!(
                directory = path,
                users = twice.len(),
                first = %twice[0],
                stage,
                "users listed more than once in the directory; the first row is used"
            );
        }
        Ok(Directory { fields, rows })
    }
}

struct UserData {
    config: UserDataConfig,
    family: Arc<Family>,
    /// (role, context column, novelty flag) of each role the family has.
    roles: Vec<(&'static str, String, &'static str)>,
    directory: Option<Directory>,
    profiles: Option<ProfileCache>,
    ctx: Option<StageContext>,
}

/// What a batch's rows of one user share: the profile's usual values per role, events and first day.
struct UserContext {
    usual: Vec<Option<String>>,
    events: i64,
    since: Option<String>,
}

/// `"NO (212), SE (4)"`: the most frequent values first.
fn usual(values: &[SeenEntry], top: usize) -> Option<String> {
    if values.is_empty() {
        return None;
    }
    let mut sorted: Vec<&SeenEntry> = values.iter().collect();
    sorted.sort_by(|a, b| b.3.cmp(&a.3).then_with(|| b.2.cmp(&a.2)).then_with(|| a.0.cmp(&b.0)));
    Some(sorted.iter().take(top).map(|e| format!("{} ({})", e.0, e.3)).collect::<Vec<_>>().join(", "))
}

fn date(us: i64) -> String {
    crate::time::format_micros(us).get(..10).unwrap_or_default().to_string()
}

impl UserData {
    fn enrich(&mut self, batch: &RecordBatch) -> Result<RecordBatch, StageError> {
        let n = batch.num_rows();
        let users = batch
            .column_by_name("username")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| StageError::Data("add-user-data: input has no text column `username`".into()))?;
        let context: Vec<Option<&StringArray>> = self
            .roles
            .iter()
            .map(|(_, column, _)| batch.column_by_name(column).and_then(|c| c.as_any().downcast_ref::<StringArray>()))
            .collect();
        let flags: Vec<Option<&BooleanArray>> = self
            .roles
            .iter()
            .map(|(_, _, flag)| batch.column_by_name(flag).and_then(|c| c.as_any().downcast_ref::<BooleanArray>()))
            .collect();
        let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut cols: Vec<ArrayRef> = batch.columns().to_vec();

        if let Some(cache) = self.profiles.as_mut() {
            cache.refresh();
            let mut usual_b: Vec<StringBuilder> = self.roles.iter().map(|_| StringBuilder::new()).collect();
            let mut events = Int64Builder::with_capacity(n);
            let mut since = StringBuilder::new();
            let mut new_values = StringBuilder::new();
            // Per user, once per batch (not per row): the profile lookup and the sorted usual values. Per
            // row: the notes on the row's new values.
            let mut of_row: Vec<Option<usize>> = vec![None; n];
            let mut notes_of_row: Vec<Option<String>> = vec![None; n];
            let mut per_user: Vec<UserContext> = Vec::new();
            for (user, rows) in super::rows_by_user(users) {
                let Some(p) = user.and_then(|u| cache.peek(u)) else { continue };
                let seen = |role: &str| p.seen.get(role).map(Vec::as_slice).unwrap_or(&[]);
                per_user.push(UserContext {
                    usual: self.roles.iter().map(|(role, _, _)| usual(seen(role), self.config.top)).collect(),
                    events: i64::try_from(p.events).unwrap_or(i64::MAX),
                    since: p.first.map(date),
                });
                for &i in &rows {
                    let i = i as usize;
                    of_row[i] = Some(per_user.len() - 1);
                    let mut notes: Vec<String> = Vec::new();
                    for (k, (role, _, _)) in self.roles.iter().enumerate() {
                        let flagged = flags[k].is_some_and(|f| !f.is_null(i) && f.value(i));
                        let value = context[k].and_then(|c| (!c.is_null(i)).then(|| c.value(i)));
                        if let (true, Some(v)) = (flagged, value) {
                            let key =
                                if *role == "ip" { crate::transforms::features::ip_prefix(v) } else { v.to_string() };
                            match seen(role).iter().find(|e| e.0 == key) {
                                Some(e) => notes.push(format!("{role} {v}: first {}, last {}", date(e.1), date(e.2))),
                                None => notes.push(format!("{role} {v}: never seen")),
                            }
                        }
                    }
                    notes_of_row[i] = (!notes.is_empty()).then(|| notes.join("; "));
                }
            }
            for (i, notes) in notes_of_row.into_iter().enumerate() {
                let Some(u) = of_row[i].map(|c| &per_user[c]) else {
                    usual_b.iter_mut().for_each(|b| b.append_null());
                    events.append_null();
                    since.append_null();
                    new_values.append_null();
                    continue;
                };
                for (b, value) in usual_b.iter_mut().zip(&u.usual) {
                    b.append_option(value.as_deref());
                }
                events.append_value(u.events);
                since.append_option(u.since.as_deref());
                new_values.append_option(notes);
            }
            for ((role, _, _), mut b) in self.roles.iter().zip(usual_b) {
                fields.push(Field::new(format!("user_usual_{role}"), DataType::Utf8, true));
                cols.push(Arc::new(b.finish()));
            }
            fields.push(Field::new("user_events", DataType::Int64, true));
            cols.push(Arc::new(events.finish()));
            fields.push(Field::new("user_since", DataType::Utf8, true));
            cols.push(Arc::new(since.finish()));
            fields.push(Field::new("user_new_values", DataType::Utf8, true));
            cols.push(Arc::new(new_values.finish()));
            let problems = cache.take_problems();
            if let Some(ctx) = &self.ctx {
                if let Some(ready) = cache.readiness_change() {
                    ctx.set_readiness(ready);
                }
                for p in problems {
                    ctx.count("profile_errors", 1);
                    tracing::warn!(stage = %ctx.stage_id, "{p}");
                    ctx.note(p);
                }
            }
        }

        if let Some(dir) = &self.directory {
            let mut builders: Vec<StringBuilder> = dir.fields.iter().map(|_| StringBuilder::new()).collect();
            for i in 0..n {
                let row = if users.is_null(i) {
                    None
                } else {
                    dir.rows.get(self.family.user_ids.normalize(users.value(i)).as_ref())
                };
                for (k, b) in builders.iter_mut().enumerate() {
                    b.append_option(row.and_then(|r| r[k].as_deref()));
                }
            }
            for (f, mut b) in dir.fields.iter().zip(builders) {
                let name = format!("user_{f}");
                if fields.iter().any(|x| x.name() == &name) {
                    continue;
                }
                fields.push(Field::new(name, DataType::Utf8, true));
                cols.push(Arc::new(b.finish()));
            }
        }
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
    }
}

impl Transform for UserData {
    fn input_partitioning(&self) -> Partitioning {
        Partitioning::By("username".into())
    }

    fn open(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.ctx = Some(ctx.clone());
        if let Some(location) = &self.config.profiles {
            let registry = crate::registry::open(location, &self.config.s3, &self.config.mlflow)
                .map_err(|e| StageError::Other(format!("add-user-data: {e}")))?;
            let mut cache = ProfileCache::new(
                Arc::new(RegistryProfiles::new(registry)),
                Arc::clone(&self.family),
                Duration::from_secs_f64(self.config.profiles_ttl_secs),
            )
            .owned_by(ctx.worker_index, ctx.workers);
            cache.refresh();
            if let Err(why) = cache.reachable() {
                tracing::warn!(stage = %ctx.stage_id, "{why}; alerts get no profile data until it answers");
            }
            if let Some(ready) = cache.readiness_change() {
                ctx.set_readiness(ready);
            }
            self.profiles = Some(cache);
        }
        Ok(())
    }

    fn process(&mut self, batch: Batch, out: &mut Emitter) -> Result<(), StageError> {
        let data = self.enrich(&batch.data)?;
        out.emit(Batch { data, envelope: batch.envelope });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usual_values_are_the_most_frequent() {
        let seen =
            vec![SeenEntry("SE".into(), 1, 5, 4), SeenEntry("NO".into(), 1, 9, 212), SeenEntry("DK".into(), 1, 2, 1)];
        assert_eq!(usual(&seen, 2).as_deref(), Some("NO (212), SE (4)"));
        assert_eq!(usual(&[], 2), None);
    }
}
