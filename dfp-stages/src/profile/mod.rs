//! User profiles: what each user has done before, kept between runs.
//!
//! A model is half of a user's fingerprint; the other half is the user's history: the apps, countries,
//! cities, browsers, devices and IP prefixes seen (with first/last-seen time and counts), the hours of day
//! and days of week the user signs in, how many events and failures, and the day counters of the latest
//! days. The `features` stage keeps that history per user (`history`); a **profile** is its stored form.
//!
//! - The training pipeline's `profiles` stage ([`stage`]) writes a **profile set** for every user it saw
//!   (also users below `min_history`, who get no model) next to the models, in the same registry:
//!   model name `DFP-<prefix>-=profiles`, one version per training run.
//! - Inference seeds `features` from the set ([`store::ProfileCache`]): each user starts from what training
//!   saw, so `new_*`, `hours_since_prev` and the day counters mean the same in training and inference. A
//!   user the set does not know starts from the **population profile**: the values common among users.
//! - A streaming pipeline checkpoints the live state at the points where it commits offsets
//!   ([`checkpoint`]); a restart resumes every user where it was.
//!
//! # Format (version 1)
//!
//! A profile set is a registry version with these files:
//!
//! - `manifest.json`: `{"format": 1, "kind": "dfp-profiles", "family": "azure", "roles": ["app", …],
//!   "shards": 64, "users": N, "history_days": 30, "written_at": "…", "population": {profile}}`;
//! - `shard-000.jsonl.gz` … `shard-063.jsonl.gz`: gzip'd JSON lines, one [`Profile`] per line; a user's
//!   shard is [`shard_of`] its name.
//!
//! One profile (times in microseconds since the Unix epoch, UTC):
//!
//! ```json
//! {"user": "alice@contoso.com", "events": 412, "failures": 3, "first": 1790812800000000,
//!  "last": 1793404800000000, "hours": [0, 0, …24 counts], "weekdays": [61, …7 counts, Monday first],
//!  "seen": {"country": [["NO", first, last, count], …], "app": [["Teams", …]], …},
//!  "days": [{"day": 20742, "count": 14, "locations": ["Oslo, NO"], "apps": ["Teams", "Outlook"]}]}
//! ```
//!
//! `seen` is bounded like the live history: values unseen for `history_days` are gone, and at most
//! `max_values_per_user` per role are kept (least recently seen dropped first). A typical user of the
//! generated data takes about 1 KiB of JSON (about 250 bytes gzip'd).

pub mod bench;
pub mod checkpoint;
pub(crate) mod history;
pub mod stage;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, BooleanArray, StringArray, TimestampMicrosecondArray};
use arrow::record_batch::RecordBatch;
use dfp_core::family::NOVELTY;
use dfp_core::{Family, StageError};
use serde::{Deserialize, Serialize};

use history::{DayState, Interner, Memo, SeenValue, UserState};

/// The profile format this dfp writes and reads.
pub const FORMAT: u32 = 1;

/// Shards of a profile set.
pub const SHARDS: usize = 64;
/// Default days a value stays in a user's history without being seen again (`history_days`).
pub const DEFAULT_HISTORY_DAYS: u32 = 30;
/// Default most values kept per role and user (`max_values_per_user`).
pub const DEFAULT_MAX_VALUES: usize = 1000;
/// The `kind` of a profile set's manifest.
pub const SET_KIND: &str = "dfp-profiles";

/// How the registry name of every profile set ends (see [`set_name`]).
pub const SET_SUFFIX: &str = "-=profiles";

/// The registry name of a family's profile set: `DFP-<prefix>-=profiles` (a user name never escapes to
/// it, as `=` is escaped in user names).
pub fn set_name(family: &Family) -> String {
    format!("DFP-{}{SET_SUFFIX}", family.model_prefix)
}

/// The shard of a user in a profile set.
pub fn shard_of(user: &str) -> usize {
    (dfp_core::hash::stable_hash(user.as_bytes()) % SHARDS as u64) as usize
}

/// One value a user has shown for a role: `[value, first seen, last seen, count]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeenEntry(pub String, pub i64, pub i64, pub u32);

/// The day counters of one UTC day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DayEntry {
    /// Days since 1970-01-01.
    pub day: i64,
    /// Events that day.
    pub count: i64,
    /// Distinct locations that day.
    #[serde(default)]
    pub locations: Vec<String>,
    /// Distinct apps that day.
    #[serde(default)]
    pub apps: Vec<String>,
}

/// The features an event of a checkpointed stream got (see [`checkpoint`]):
/// `[time, id hash, logcount, locincrement, appincrement, hours_since_prev, new-flag bits]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoEntry(pub i64, pub u64, pub i64, pub i64, pub i64, pub Option<f64>, pub u32);

/// The stored form of one user's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The user (as normalized: lower case for families that say so).
    pub user: String,
    /// Events seen.
    pub events: u64,
    /// Of which failed sign-ins (families with a `result` role).
    #[serde(default)]
    pub failures: u64,
    /// First and last event time (µs).
    #[serde(default)]
    pub first: Option<i64>,
    /// Last event time (µs).
    #[serde(default)]
    pub last: Option<i64>,
    /// Events per UTC hour of day (24 counts).
    pub hours: Vec<u32>,
    /// Events per UTC weekday, Monday first (7 counts).
    pub weekdays: Vec<u32>,
    /// Per role (`app`, `country`, `city`, `browser`, `os`, `device`, `ip`): the values seen.
    #[serde(default)]
    pub seen: BTreeMap<String, Vec<SeenEntry>>,
    /// The latest days' counters (at most 3).
    #[serde(default)]
    pub days: Vec<DayEntry>,
    /// Checkpoints only: (time, id hash) of the last events, to notice an event delivered twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<(i64, u64)>,
    /// Checkpoints only: events a restarted stream may deliver again, with the features they got.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replay: Vec<MemoEntry>,
    /// Checkpoints only: when expired values were last dropped (µs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned: Option<i64>,
}

/// Why a profile cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct ProfileError(pub String);

/// The role names a family's history tracks, in order (the family's novelty roles).
pub fn roles_of(family: &Family) -> Vec<&'static str> {
    NOVELTY.iter().filter(|(role, _)| family.roles.get(role).is_some()).map(|(role, _)| *role).collect()
}

impl Profile {
    /// The stored form of a user's history (`roles`: [`roles_of`] the family). `checkpoint` keeps what
    /// only a restart needs (recent ids, events not yet committed).
    pub(crate) fn from_state(user: &str, s: &UserState, roles: &[&str], checkpoint: bool) -> Profile {
        let mut seen: BTreeMap<String, Vec<SeenEntry>> = BTreeMap::new();
        for v in &s.seen {
            if let Some(role) = roles.get(usize::from(v.role)) {
                seen.entry((*role).to_string()).or_default().push(SeenEntry(
                    v.value.to_string(),
                    v.first,
                    v.last,
                    v.count,
                ));
            }
        }
        let memo = |m: &Memo| MemoEntry(m.time, m.id, m.logcount, m.locincrement, m.appincrement, m.since, m.new);
        Profile {
            user: user.to_string(),
            events: s.events,
            failures: s.failures,
            first: s.first_ts,
            last: s.last_ts,
            hours: s.hours.to_vec(),
            weekdays: s.weekdays.to_vec(),
            seen,
            days: s
                .days
                .iter()
                .map(|d| DayEntry {
                    day: d.day,
                    count: d.count,
                    locations: d.locations.iter().map(|v| v.to_string()).collect(),
                    apps: d.apps.iter().map(|v| v.to_string()).collect(),
                })
                .collect(),
            recent: if checkpoint { s.recent.clone() } else { Vec::new() },
            replay: if checkpoint {
                s.uncommitted.iter().map(|(_, m)| memo(m)).chain(s.replayed.iter().map(memo)).collect()
            } else {
                Vec::new()
            },
            pruned: checkpoint.then_some(s.last_prune),
        }
    }

    /// The live history of a stored profile, checked. Roles the family no longer has are ignored.
    pub(crate) fn to_state(&self, roles: &[&str], interner: &mut Interner) -> Result<UserState, ProfileError> {
        let bad = |what: String| Err(ProfileError(format!("profile of {}: {what}", self.user)));
        if self.hours.len() != 24 {
            return bad(format!("`hours` has {} counts, not 24", self.hours.len()));
        }
        if self.weekdays.len() != 7 {
            return bad(format!("`weekdays` has {} counts, not 7", self.weekdays.len()));
        }
        if self.days.len() > 3 {
            return bad(format!("`days` has {} days, at most 3 are kept", self.days.len()));
        }
        let mut s = UserState {
            events: self.events,
            failures: self.failures,
            first_ts: self.first,
            last_ts: self.last,
            ..UserState::default()
        };
        s.hours.copy_from_slice(&self.hours);
        s.weekdays.copy_from_slice(&self.weekdays);
        for (name, values) in &self.seen {
            let Some(role) = roles.iter().position(|r| r == name) else { continue };
            for SeenEntry(value, first, last, count) in values {
                if first > last {
                    return bad(format!("{name} value \"{value}\": first seen after last seen"));
                }
                s.seen.push(SeenValue {
                    role: role as u8,
                    value: interner.get(value),
                    first: *first,
                    last: *last,
                    count: *count,
                });
            }
        }
        s.seen.sort_by(|a, b| (a.role, &*a.value).cmp(&(b.role, &*b.value)));
        s.seen.dedup_by(|a, b| a.role == b.role && a.value == b.value);
        let mut days: Vec<DayState> = self
            .days
            .iter()
            .map(|d| DayState {
                day: d.day,
                count: d.count.max(0),
                locations: d.locations.iter().map(|v| interner.get(v)).collect(),
                apps: d.apps.iter().map(|v| interner.get(v)).collect(),
            })
            .collect();
        days.sort_by_key(|d| d.day);
        days.dedup_by_key(|d| d.day);
        s.days = days;
        s.recent = self.recent.iter().rev().take(history::RECENT_IDS).rev().copied().collect();
        s.replayed = self
            .replay
            .iter()
            .map(|MemoEntry(time, id, logcount, locincrement, appincrement, since, new)| Memo {
                time: *time,
                id: *id,
                logcount: *logcount,
                locincrement: *locincrement,
                appincrement: *appincrement,
                since: *since,
                new: *new,
            })
            .collect();
        s.last_prune = self.pruned.or(self.last).unwrap_or(i64::MIN);
        Ok(s)
    }
}

/// The population profile: what users commonly show, for users without a profile of their own. A value
/// is in it when at least `min_share` of the users showed it within the history window (at most
/// `max_values` per role, the most common first); hour and weekday counts are summed.
pub(crate) fn population<'a>(
    users: impl Iterator<Item = &'a UserState>,
    roles: &[&str],
    min_share: f64,
    max_values: usize,
) -> Profile {
    let mut n = 0u64;
    let mut hours = [0u64; 24];
    let mut weekdays = [0u64; 7];
    let mut events = 0u64;
    let mut failures = 0u64;
    // (role, value) → (users, first, last, events)
    type Spread = (u64, i64, i64, u64);
    let mut values: HashMap<(u8, Arc<str>), Spread> = HashMap::new();
    let (mut first, mut last): (Option<i64>, Option<i64>) = (None, None);
    for s in users {
        n += 1;
        events += s.events;
        failures += s.failures;
        for (h, c) in hours.iter_mut().zip(s.hours) {
            *h += u64::from(c);
        }
        for (w, c) in weekdays.iter_mut().zip(s.weekdays) {
            *w += u64::from(c);
        }
        first = match (first, s.first_ts) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last = match (last, s.last_ts) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        for v in &s.seen {
            let e = values.entry((v.role, Arc::clone(&v.value))).or_insert((0, v.first, v.last, 0));
            e.0 += 1;
            e.1 = e.1.min(v.first);
            e.2 = e.2.max(v.last);
            e.3 += u64::from(v.count);
        }
    }
    let cut = ((n as f64) * min_share).ceil().max(1.0) as u64;
    let mut seen: BTreeMap<String, Vec<SeenEntry>> = BTreeMap::new();
    let mut by_role: BTreeMap<u8, Vec<(Arc<str>, Spread)>> = BTreeMap::new();
    for ((role, value), stats) in values {
        if stats.0 >= cut {
            by_role.entry(role).or_default().push((value, stats));
        }
    }
    for (role, mut list) in by_role {
        list.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
        list.truncate(max_values);
        if let Some(name) = roles.get(usize::from(role)) {
            seen.insert(
                (*name).to_string(),
                list.into_iter()
                    .map(|(v, (_, f, l, c))| SeenEntry(v.to_string(), f, l, u32::try_from(c).unwrap_or(u32::MAX)))
                    .collect(),
            );
        }
    }
    let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    Profile {
        user: String::new(),
        events,
        failures,
        first,
        last,
        hours: hours.iter().map(|h| clamp(*h)).collect(),
        weekdays: weekdays.iter().map(|w| clamp(*w)).collect(),
        seen,
        days: Vec::new(),
        recent: Vec::new(),
        replay: Vec::new(),
        pruned: None,
    }
}

/// The history a user without a profile starts from: the population's common values (so that a new user
/// signing in from the usual country with the usual browser is not "new" everywhere), no events.
pub(crate) fn seed_from_population(population: &Profile, roles: &[&str], interner: &mut Interner) -> UserState {
    let mut s = UserState::default();
    for (name, values) in &population.seen {
        let Some(role) = roles.iter().position(|r| r == name) else { continue };
        for SeenEntry(value, first, last, _) in values {
            s.seen.push(SeenValue {
                role: role as u8,
                value: interner.get(value),
                first: *first,
                last: *last,
                count: 0,
            });
        }
    }
    s.seen.sort_by(|a, b| (a.role, &*a.value).cmp(&(b.role, &*b.value)));
    s.seen.dedup_by(|a, b| a.role == b.role && a.value == b.value);
    s
}

/// The columns history reads, by role, and how to read one row of them.
pub(crate) struct HistoryColumns {
    pub(crate) app: Option<String>,
    pub(crate) location: Option<String>,
    /// One per novelty role, in [`roles_of`] order: (column, flag name).
    pub(crate) novelty: Vec<(String, &'static str)>,
    /// The outcome column, and the values meaning success (empty: a bool column).
    pub(crate) result: Option<(String, Vec<String>)>,
}

impl HistoryColumns {
    pub(crate) fn of(family: &Family) -> Self {
        HistoryColumns {
            app: family.roles.app.clone(),
            location: family.roles.location.clone(),
            novelty: family.novelty().into_iter().map(|(c, f)| (c.to_string(), f)).collect(),
            result: family.roles.result.as_ref().map(|r| (r.column.clone(), r.success.clone())),
        }
    }
}

/// The columns of one (sorted) batch that history reads.
pub(crate) struct RowReader<'a> {
    pub(crate) users: &'a StringArray,
    pub(crate) ids: &'a StringArray,
    pub(crate) ts: &'a TimestampMicrosecondArray,
    pub(crate) app: Option<&'a StringArray>,
    pub(crate) loc: Option<&'a StringArray>,
    pub(crate) novelty: Vec<&'a StringArray>,
    ip_flag: Option<usize>,
    result: Option<ResultColumn<'a>>,
}

enum ResultColumn<'a> {
    Bool(&'a BooleanArray),
    Text(&'a StringArray, &'a [String]),
}

fn strings<'a>(batch: &'a RecordBatch, name: &str, stage: &str) -> Result<&'a StringArray, StageError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| StageError::Data(format!("{stage}: input has no column \"{name}\" (is the family right?)")))?
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| StageError::Data(format!("{stage}: column \"{name}\" is not text")))
}

fn opt(a: &StringArray, i: usize) -> Option<&str> {
    (!a.is_null(i)).then(|| a.value(i))
}

impl<'a> RowReader<'a> {
    pub(crate) fn new(batch: &'a RecordBatch, cols: &'a HistoryColumns, stage: &str) -> Result<Self, StageError> {
        // The outcome only feeds the failure count: a batch without the column counts no failures.
        let result = cols.result.as_ref().and_then(|(column, success)| {
            let c = batch.column_by_name(column)?;
            if let Some(b) = c.as_any().downcast_ref::<BooleanArray>() {
                Some(ResultColumn::Bool(b))
            } else {
                c.as_any().downcast_ref::<StringArray>().map(|s| ResultColumn::Text(s, success.as_slice()))
            }
        });
        Ok(RowReader {
            users: strings(batch, "username", stage)?,
            ids: strings(batch, "id", stage)?,
            ts: batch
                .column_by_name("timestamp")
                .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
                .ok_or_else(|| StageError::Data(format!("{stage}: `timestamp` must be a microsecond timestamp")))?,
            app: cols.app.as_deref().map(|c| strings(batch, c, stage)).transpose()?,
            loc: cols.location.as_deref().map(|c| strings(batch, c, stage)).transpose()?,
            novelty: cols.novelty.iter().map(|(c, _)| strings(batch, c, stage)).collect::<Result<_, _>>()?,
            ip_flag: cols.novelty.iter().position(|(_, f)| *f == "new_ip_prefix"),
            result,
        })
    }

    /// Reads row `i`: the novelty values go into `values` (the IP cut to its prefix in `prefix`).
    pub(crate) fn view<'r>(
        &'r self,
        i: usize,
        prefix: &'r mut String,
        values: &'r mut [Option<&'r str>; 8],
        logical: u64,
    ) -> history::EventView<'r> {
        prefix.clear();
        let mut ip: Option<usize> = None;
        let n = self.novelty.len().min(8);
        for (k, col) in self.novelty.iter().take(n).enumerate() {
            values[k] = match opt(col, i) {
                Some(v) if Some(k) == self.ip_flag => {
                    crate::transforms::features::write_ip_prefix(v, prefix);
                    ip = Some(k);
                    None
                }
                other => other,
            };
        }
        if let Some(k) = ip {
            let prefix: &'r String = prefix;
            values[k] = Some(prefix.as_str());
        }
        let failed = match &self.result {
            None => None,
            Some(ResultColumn::Bool(b)) => (!b.is_null(i)).then(|| !b.value(i)),
            Some(ResultColumn::Text(s, success)) => {
                opt(s, i).map(|v| !success.iter().any(|ok| ok.eq_ignore_ascii_case(v)))
            }
        };
        history::EventView {
            time: self.ts.value(i),
            id: dfp_core::hash::stable_hash(self.ids.value(i).as_bytes()),
            location: self.loc.and_then(|c| opt(c, i)),
            app: self.app.and_then(|c| opt(c, i)),
            values: &values[..n],
            failed,
            logical,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::history::{Bounds, EventView};
    use super::*;
    use crate::time::DAY_MICROS;

    fn bounds() -> Bounds {
        Bounds { window: 30 * DAY_MICROS, max_values: 100, track_uncommitted: true }
    }

    #[test]
    fn a_profile_round_trips_through_json() {
        let roles = ["app", "country"];
        let mut interner = Interner::default();
        let mut s = UserState::default();
        let mut new = [false; 2];
        for (k, (app, country)) in [("Teams", "NO"), ("Outlook", "NO"), ("Teams", "SE")].iter().enumerate() {
            let values = [Some(*app), Some(*country)];
            let e = EventView {
                time: 1_790_812_800_000_000 + k as i64 * 3_600_000_000,
                id: k as u64,
                location: Some("Oslo, NO"),
                app: Some(app),
                values: &values,
                failed: Some(k == 1),
                logical: k as u64,
            };
            s.observe(&e, &bounds(), &mut interner, &mut new);
        }
        let p = Profile::from_state("alice", &s, &roles, true);
        assert_eq!(p.seen["country"].len(), 2);
        assert_eq!((p.events, p.failures), (3, 1));
        let text = serde_json::to_string(&p).unwrap();
        let back: Profile = serde_json::from_str(&text).unwrap();
        assert_eq!(back, p);
        let restored = back.to_state(&roles, &mut interner).unwrap();
        assert_eq!(restored.seen, s.seen);
        assert_eq!(restored.days, s.days);
        assert_eq!(restored.replayed.len(), 3, "uncommitted events come back as possible replays");
        // A registry profile carries no checkpoint parts.
        let stored = Profile::from_state("alice", &s, &roles, false);
        assert!(stored.recent.is_empty() && stored.replay.is_empty());
        assert!(!serde_json::to_string(&stored).unwrap().contains("replay"));
    }

    #[test]
    fn damaged_profiles_are_refused_with_the_user_named() {
        let p: Profile =
            serde_json::from_str(r#"{"user":"bob","events":1,"hours":[1,2],"weekdays":[0,0,0,0,0,0,0]}"#).unwrap();
        let err = p.to_state(&["app"], &mut Interner::default()).unwrap_err();
        assert_eq!(err.0, "profile of bob: `hours` has 2 counts, not 24");
        assert!(
            serde_json::from_str::<Profile>(r#"{"user":"x","events":1,"hours":[],"weekdays":[],"bogus":1}"#).is_err()
        );
    }

    #[test]
    fn the_population_keeps_common_values() {
        let roles = ["country"];
        let mut interner = Interner::default();
        let mut users = Vec::new();
        let mut new = [false; 1];
        for u in 0..20 {
            let mut s = UserState::default();
            let country = if u == 0 { "KP" } else { "NO" };
            let values = [Some(country)];
            let e = EventView { time: u, id: 1, location: None, app: None, values: &values, failed: None, logical: 0 };
            s.observe(&e, &bounds(), &mut interner, &mut new);
            users.push(s);
        }
        let p = population(users.iter(), &roles, 0.1, 10);
        let countries: Vec<&str> = p.seen["country"].iter().map(|e| e.0.as_str()).collect();
        assert_eq!(countries, ["NO"]);
        assert_eq!(p.events, 20);
        let seeded = seed_from_population(&p, &roles, &mut interner);
        assert_eq!(seeded.seen.len(), 1);
        assert_eq!(seeded.events, 0);
    }
}
