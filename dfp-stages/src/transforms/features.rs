//! `type: features` — the DFP features: Morpheus's per-user, per-day counters plus cross-day novelty.
//!
//! ```yaml
//! features: { type: features, inputs: [events], preset: azure, history_days: 30 }
//! ```
//!
//! Input: the rows of `normalize-azure` or `normalize-duo` (the `preset` says which columns hold the app,
//! location, browser, …). The input is partitioned by `username`, so each user's state lives on one worker.
//!
//! **Morpheus counters** (per user and UTC day, events taken in event-time order):
//! - `logcount`: the 0-based running count of the user's events that day;
//! - `locincrement`: the number of distinct `location` values the user has shown so far that day, counting
//!   the current event (starts at 1);
//! - `appincrement` (Azure only, as in Morpheus): the same for `appDisplayName`.
//!
//! **Cross-day features** (new in dfp), from per-user history that outlives a batch: `new_app`,
//! `new_country`, `new_city`, `new_browser`, `new_os`, `new_device`, `new_ip_prefix` (true when the user has not
//! shown that value within the last `history_days`; the IP prefix is the /24 of an IPv4 address or the /48 of
//! an IPv6 one; a null context value is never new) and `hours_since_prev` (null for the user's first event).
//! The history is bounded: values unseen for `history_days` are forgotten, and at most `max_values_per_user`
//! values per user and feature are kept (the least recently seen go first).
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
    register_stage, Batch, ConfigError, Emitter, Partitioning, StageConfig, StageContext, StageError, StageInstance,
    StageKind, Transform,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::time::DAY_MICROS;

/// Which normalizer's columns to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// `normalize-azure` output.
    Azure,
    /// `normalize-duo` output.
    Duo,
}

/// Configuration of `features`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeaturesConfig {
    /// The log family: `azure` or `duo`.
    pub preset: Preset,
    /// Days of per-user history behind the `new_*` features.
    #[serde(default = "default_history_days")]
    pub history_days: u32,
    /// Most distinct values remembered per user and feature.
    #[serde(default = "default_max_values")]
    pub max_values_per_user: usize,
}

fn default_history_days() -> u32 {
    30
}
fn default_max_values() -> usize {
    1000
}

impl StageConfig for FeaturesConfig {
    const TYPE: &'static str = "features";
    const KIND: StageKind = StageKind::Transform;
    const DESCRIPTION: &'static str = "per-user DFP features: Morpheus day counters and cross-day novelty";
    fn validate(&self) -> Result<(), ConfigError> {
        if self.history_days == 0 {
            return Err(ConfigError::field("history_days", "must be at least 1"));
        }
        if self.max_values_per_user == 0 {
            return Err(ConfigError::field("max_values_per_user", "must be at least 1"));
        }
        Ok(())
    }
    fn build(&self, _ctx: &StageContext) -> Result<StageInstance, StageError> {
        Ok(StageInstance::Transform(Box::new(Features {
            columns: Columns::of(self.preset),
            window: i64::from(self.history_days) * DAY_MICROS,
            max_values: self.max_values_per_user,
            pending: BTreeMap::new(),
            users: HashMap::new(),
        })))
    }
}
register_stage!(FeaturesConfig);

/// Column names per preset.
struct Columns {
    app: &'static str,
    location: &'static str,
    app_increment: bool,
    /// app, country, city, browser, os, device, ip
    novelty: [&'static str; 7],
}

const NOVELTY_NAMES: [&str; 7] =
    ["new_app", "new_country", "new_city", "new_browser", "new_os", "new_device", "new_ip_prefix"];
const IP: usize = 6;

impl Columns {
    fn of(preset: Preset) -> Self {
        match preset {
            Preset::Azure => Columns {
                app: "appDisplayName",
                location: "location",
                app_increment: true,
                novelty: [
                    "appDisplayName",
                    "country",
                    "city",
                    "deviceDetailbrowser",
                    "deviceDetailoperatingSystem",
                    "deviceDetaildisplayName",
                    "ipAddress",
                ],
            },
            Preset::Duo => Columns {
                app: "application",
                location: "location",
                app_increment: false,
                novelty: [
                    "application",
                    "country",
                    "city",
                    "accessdevicebrowser",
                    "accessdeviceos",
                    "authdevicename",
                    "ipAddress",
                ],
            },
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
    seen: [HashMap<String, i64>; 7],
    last_prune: i64,
}

struct Features {
    columns: Columns,
    window: i64,
    max_values: usize,
    pending: BTreeMap<u64, Vec<Batch>>,
    users: HashMap<String, UserState>,
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
        .ok_or_else(|| StageError::Data(format!("features: input has no column \"{name}\" (is the preset right?)")))?
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
        let ts = sorted
            .column_by_name("timestamp")
            .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
            .ok_or_else(|| StageError::Data("features: `timestamp` must be a microsecond timestamp".into()))?;
        let app = strings(&sorted, self.columns.app)?;
        let loc = strings(&sorted, self.columns.location)?;
        let novelty: Vec<&StringArray> =
            self.columns.novelty.iter().map(|n| strings(&sorted, n)).collect::<Result<_, _>>()?;

        let n = sorted.num_rows();
        let mut logcount = Int64Builder::with_capacity(n);
        let mut locinc = Int64Builder::with_capacity(n);
        let mut appinc = Int64Builder::with_capacity(n);
        let mut news: Vec<BooleanBuilder> = (0..7).map(|_| BooleanBuilder::with_capacity(n)).collect();
        let mut since = Float64Builder::with_capacity(n);
        let window = self.window;
        let max_values = self.max_values;

        let mut prefix = String::with_capacity(48);
        let mut i = 0;
        while i < n {
            let user = users.value(i);
            let state = self.users.entry(user.to_string()).or_default();
            while i < n && users.value(i) == user {
                let t = ts.value(i);
                let day_key = t.div_euclid(DAY_MICROS);
                let day = state.days.entry(day_key).or_default();
                logcount.append_value(day.count);
                day.count += 1;
                if let Some(l) = opt(loc, i) {
                    if !day.locations.contains(l) {
                        day.locations.insert(l.to_string());
                    }
                }
                locinc.append_value(day.locations.len() as i64);
                if let Some(a) = opt(app, i) {
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
                        Some(v) if k == IP => {
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
        fields.push(Field::new("locincrement", DataType::Int64, false));
        cols.push(Arc::new(locinc.finish()));
        if self.columns.app_increment {
            fields.push(Field::new("appincrement", DataType::Int64, false));
            cols.push(Arc::new(appinc.finish()));
        }
        for (name, mut b) in NOVELTY_NAMES.iter().zip(news) {
            fields.push(Field::new(*name, DataType::Boolean, false));
            cols.push(Arc::new(b.finish()));
        }
        fields.push(Field::new("hours_since_prev", DataType::Float64, true));
        cols.push(Arc::new(since.finish()));
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
    fn ip_prefixes() {
        assert_eq!(ip_prefix("203.0.113.7"), "203.0.113");
        assert_eq!(ip_prefix("2001:db8:85a3::8a2e:370:7334"), "2001:db8:85a3");
        assert_eq!(ip_prefix("not-an-ip"), "not-an-ip");
    }
}
