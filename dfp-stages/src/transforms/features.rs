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
//! prefix is the /24 of an IPv4 address or the /48 of an IPv6 one; a null context value is never new) and
//! `hours_since_prev` (null for the user's first event).
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringArray, TimestampMicrosecondArray,
};
use arrow::compute::{concat_batches, lexsort_to_indices, take_record_batch, SortColumn};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use dfp_core::{
    register_stage, Batch, ConfigContext, ConfigError, Emitter, Family, Partitioning, StageConfig, StageContext,
    StageError, StageInstance, StageKind, Transform,
};
use schemars::JsonSchema;
use serde::Deserialize;

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
}

fn default_history_days() -> u32 {
    30
}
fn default_max_values() -> usize {
    1000
}
fn default_max_users() -> usize {
    1_000_000
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
        Ok(())
    }
    fn check(&self, ctx: &ConfigContext<'_>) -> Result<(), ConfigError> {
        ctx.family(&self.family).map(|_| ())
    }
    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        Ok(StageInstance::Transform(Box::new(Features::new(self, ctx.family(&self.family)?.as_ref()))))
    }
}
register_stage!(FeaturesConfig);

/// The columns the features are computed from, by role.
struct Columns {
    app: Option<String>,
    location: Option<String>,
    /// (context column, flag name) per novelty flag, in output order.
    novelty: Vec<(String, &'static str)>,
}

impl Columns {
    fn of(family: &Family) -> Self {
        Columns {
            app: family.roles.app.clone(),
            location: family.roles.location.clone(),
            novelty: family.novelty().into_iter().map(|(c, f)| (c.to_string(), f)).collect(),
        }
    }
}

#[derive(Default)]
struct Day {
    count: i64,
    locations: HashSet<String>,
    apps: HashSet<String>,
}

#[derive(Default)]
struct UserState {
    days: BTreeMap<i64, Day>,
    last_ts: Option<i64>,
    /// Per novelty flag: value → last seen (µs).
    seen: Vec<HashMap<String, i64>>,
    last_prune: i64,
    /// The (time, id hash) of the user's last few events, to notice an event delivered twice.
    recent: Vec<(i64, u64)>,
}

/// How many of a user's latest events are remembered to notice duplicates.
const RECENT_IDS: usize = 16;

struct Features {
    columns: Columns,
    window: i64,
    max_values: usize,
    max_users: usize,
    pending: BTreeMap<u64, Vec<Batch>>,
    users: HashMap<String, UserState>,
    /// The newest event time seen (µs).
    newest: i64,
    /// When idle users were last swept out.
    last_sweep: i64,
    ctx: Option<StageContext>,
}

impl Features {
    fn new(config: &FeaturesConfig, family: &Family) -> Features {
        Features {
            columns: Columns::of(family),
            window: i64::from(config.history_days) * DAY_MICROS,
            max_values: config.max_values_per_user,
            max_users: config.max_users,
            pending: BTreeMap::new(),
            users: HashMap::new(),
            newest: i64::MIN,
            last_sweep: i64::MIN,
            ctx: None,
        }
    }

    /// Bounds the per-user state: users idle for longer than the history window have nothing left that a
    /// feature reads (their values expired) and are dropped; past `max_users`, the least recently active
    /// tenth goes (counted as `evicted_users`).
    fn bound_users(&mut self) {
        if self.newest.saturating_sub(self.last_sweep) > self.window / 4 {
            self.last_sweep = self.newest;
            let horizon = self.newest.saturating_sub(self.window);
            self.users.retain(|_, s| s.last_ts.is_some_and(|t| t >= horizon));
        }
        if self.users.len() <= self.max_users {
            return;
        }
        let keep = self.max_users - self.max_users / 10;
        let mut ages: Vec<i64> = self.users.values().map(|s| s.last_ts.unwrap_or(i64::MIN)).collect();
        let cut = ages.len() - keep;
        let (_, &mut oldest_kept, _) = ages.select_nth_unstable(cut);
        let before = self.users.len();
        self.users.retain(|_, s| s.last_ts.unwrap_or(i64::MIN) >= oldest_kept);
        // Ties at the cut may keep a few more than `keep`; past the cap, drop arbitrary ones of them.
        if self.users.len() > self.max_users {
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
}

/// The /24 of an IPv4 address, the /48 of an IPv6 one, or the text itself.
pub fn ip_prefix(ip: &str) -> String {
    let mut out = String::new();
    write_ip_prefix(ip, &mut out);
    out
}

fn write_ip_prefix(ip: &str, out: &mut String) {
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

fn strings<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray, StageError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| StageError::Data(format!("features: input has no column \"{name}\" (is the family right?)")))?
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| StageError::Data(format!("features: column \"{name}\" is not text")))
}

fn opt(a: &StringArray, i: usize) -> Option<&str> {
    (!a.is_null(i)).then(|| a.value(i))
}

impl Features {
    /// Computes the features of one logical time's rows.
    fn release(&mut self, batches: Vec<Batch>, out: &mut Emitter) -> Result<(), StageError> {
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

        let users = strings(&sorted, "username")?;
        let ids = strings(&sorted, "id")?;
        let mut duplicates = 0u64;
        let ts = sorted
            .column_by_name("timestamp")
            .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
            .ok_or_else(|| StageError::Data("features: `timestamp` must be a microsecond timestamp".into()))?;
        let app = self.columns.app.as_deref().map(|c| strings(&sorted, c)).transpose()?;
        let loc = self.columns.location.as_deref().map(|c| strings(&sorted, c)).transpose()?;
        let novelty: Vec<&StringArray> =
            self.columns.novelty.iter().map(|(c, _)| strings(&sorted, c)).collect::<Result<_, _>>()?;
        let ip_flag = self.columns.novelty.iter().position(|(_, f)| *f == "new_ip_prefix");

        let n = sorted.num_rows();
        let mut logcount = Int64Builder::with_capacity(n);
        let mut locinc = Int64Builder::with_capacity(n);
        let mut appinc = Int64Builder::with_capacity(n);
        let mut news: Vec<BooleanBuilder> = novelty.iter().map(|_| BooleanBuilder::with_capacity(n)).collect();
        let mut since = Float64Builder::with_capacity(n);
        let window = self.window;
        let max_values = self.max_values;

        let mut prefix = String::with_capacity(48);
        let mut i = 0;
        while i < n {
            let user = users.value(i);
            let state = self.users.entry(user.to_string()).or_default();
            if state.seen.len() != novelty.len() {
                state.seen.resize_with(novelty.len(), HashMap::new);
            }
            while i < n && users.value(i) == user {
                let t = ts.value(i);
                // An event delivered twice (a file read again, a replayed message) is scored again: it is
                // still an event of the log, and dropping it could hide something. It is counted.
                let id = dfp_core::hash::stable_hash(ids.value(i).as_bytes());
                if state.recent.contains(&(t, id)) {
                    duplicates += 1;
                } else {
                    if state.recent.len() >= RECENT_IDS {
                        state.recent.remove(0);
                    }
                    state.recent.push((t, id));
                }
                let day_key = t.div_euclid(DAY_MICROS);
                let day = state.days.entry(day_key).or_default();
                logcount.append_value(day.count);
                day.count += 1;
                if let Some(l) = loc.and_then(|c| opt(c, i)) {
                    if !day.locations.contains(l) {
                        day.locations.insert(l.to_string());
                    }
                }
                locinc.append_value(day.locations.len() as i64);
                if let Some(a) = app.and_then(|c| opt(c, i)) {
                    if !day.apps.contains(a) {
                        day.apps.insert(a.to_string());
                    }
                }
                appinc.append_value(day.apps.len() as i64);
                // Keep only recent days: counters of older days cannot change any more.
                while state.days.len() > 3 {
                    state.days.pop_first();
                }
                for (k, col) in novelty.iter().enumerate() {
                    let value = match opt(col, i) {
                        Some(v) if Some(k) == ip_flag => {
                            prefix.clear();
                            write_ip_prefix(v, &mut prefix);
                            Some(prefix.as_str())
                        }
                        other => other,
                    };
                    let is_new = match value {
                        None => false,
                        Some(v) => {
                            let seen = &mut state.seen[k];
                            // Look up by &str; allocate only for a value never seen.
                            match seen.get_mut(v) {
                                Some(last) => {
                                    let new = t - *last > window;
                                    *last = (*last).max(t);
                                    new
                                }
                                None => {
                                    seen.insert(v.to_string(), t);
                                    true
                                }
                            }
                        }
                    };
                    news[k].append_value(is_new);
                }
                match state.last_ts {
                    Some(prev) => since.append_value((t - prev) as f64 / 3_600_000_000.0),
                    None => since.append_null(),
                }
                state.last_ts = Some(state.last_ts.map_or(t, |p| p.max(t)));
                self.newest = self.newest.max(t);
                if t - state.last_prune > window / 4 {
                    state.last_prune = t;
                    for seen in &mut state.seen {
                        seen.retain(|_, last| t - *last <= window);
                    }
                }
                for seen in &mut state.seen {
                    if seen.len() > max_values {
                        let mut by_age: Vec<(i64, String)> = seen.iter().map(|(k, v)| (*v, k.clone())).collect();
                        by_age.sort();
                        for (_, k) in by_age.iter().take(seen.len() - max_values * 9 / 10) {
                            seen.remove(k);
                        }
                    }
                }
                i += 1;
            }
        }

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
        if duplicates > 0 {
            tracing::debug!(duplicates, "features: events seen before (same user, time and id)");
            if let Some(ctx) = &self.ctx {
                ctx.count("duplicate_ids", duplicates);
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

    fn open(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.ctx = Some(ctx.clone());
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
            let batches = entry.remove();
            self.release(batches, out)?;
            self.bound_users();
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<(), StageError> {
        while let Some((_, batches)) = self.pending.pop_first() {
            self.release(batches, out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_user_names_keeps_at_most_max_users() {
        let config: FeaturesConfig =
            serde_json::from_value(serde_json::json!({"family": "azure", "max_users": 100})).unwrap();
        let family = StageContext::standalone("features", 0, 1).family("azure").unwrap();
        let mut t = Features::new(&config, &family);
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
