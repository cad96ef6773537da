//! What `correlate` writes: each event's raised `risk` with the signals that raised it and the windows'
//! figures ([`Annotator`]), and the incidents ([`IncidentBook`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use dfp_core::hash::stable_hash;
use dfp_core::{Batch, StageError};

use super::views::{Agg, Key, Row, PLACE_COUNTRY, PLACE_DEVICE, PLACE_PREFIX, PLACE_SESSION, SOURCE_IP};
use super::{Columns, CorrelateConfig};

/// The columns `correlate` adds (besides raising the score column).
pub const ADDED_COLUMNS: &[&str] = &[
    "risk_model",
    "risk_signals",
    "incident_id",
    "win_user_events",
    "win_user_anomalous",
    "win_user_risk_sum",
    "win_user_risk_max",
    "win_user_countries",
    "win_user_prefixes",
    "win_user_devices",
    "win_user_failures",
    "win_src_users",
    "win_src_failed_users",
    "win_src_failures",
];

/// Raises each row's score by its views and adds the explanation columns.
pub(crate) struct Annotator {
    field: String,
    id: String,
    user: String,
    ip: Option<String>,
    anomalous: f64,
    carry_place: f64,
    fresh_risk: f64,
    source_min_users: u32,
    source_share: f64,
    per_user: f64,
    min_failures: u32,
    carry_failures: f64,
}

/// One signal that may raise an event: its label and the risk it proposes.
struct Signal {
    label: String,
    reason: &'static str,
    floor: f64,
}

impl Annotator {
    pub(crate) fn new(config: &CorrelateConfig, columns: &Columns) -> Self {
        Annotator {
            field: config.field.clone(),
            id: columns.id.clone(),
            user: columns.user.clone(),
            ip: columns.ip.clone(),
            anomalous: config.anomalous,
            carry_place: config.place.carry,
            fresh_risk: config.place.fresh_risk,
            source_min_users: config.source.min_users,
            source_share: config.source.min_failure_share,
            per_user: config.source.per_user,
            min_failures: config.user.min_failures,
            carry_failures: config.user.carry,
        }
    }

    /// The batch's rows with `risk` raised and the explanation columns (`incident_id` still empty), and
    /// the anomalous rows, which [`IncidentBook::add`] turns into incidents in event-time order.
    pub(crate) fn annotate(
        &mut self,
        batch: &Batch,
        rows: &[Row],
        found: &mut HashMap<u64, Vec<(Key, Agg, isize)>>,
    ) -> Result<(RecordBatch, Vec<Candidate>), StageError> {
        let data = &batch.data;
        let n = data.num_rows();
        let own = super::float_column(data, &self.field)?;
        let ids = super::text_column(data, &self.id);
        let users = super::text_column(data, &self.user);
        let ips = self.ip.as_deref().and_then(|c| super::text_column(data, c));
        let mut risk = Vec::with_capacity(n);
        let mut risk_model = Vec::with_capacity(n);
        let mut signals: Vec<Option<String>> = Vec::with_capacity(n);
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut user_cols: [Vec<Option<u32>>; 6] = Default::default();
        let mut user_sum = Vec::with_capacity(n);
        let mut user_max = Vec::with_capacity(n);
        let mut src_cols: [Vec<Option<u32>>; 3] = Default::default();
        for (i, row) in rows.iter().enumerate().take(n) {
            let mine = consolidate(found.remove(&row.ev.seq).unwrap_or_default());
            let base = own.get(i).copied().flatten();
            let mut proposals: Vec<Signal> = Vec::new();
            let mut user_agg = None;
            let mut prefix_agg: Option<Agg> = None;
            let mut sprayed = false;
            if row.fresh {
                proposals.push(Signal {
                    label: "a device and an IP prefix the user never used, at once".into(),
                    reason: "new device from a new network",
                    floor: self.fresh_risk,
                });
            }
            for (key, agg) in &mine {
                match key {
                    Key::Source { kind, .. } => {
                        if *kind != SOURCE_IP {
                            prefix_agg = Some(agg.clone());
                        }
                        let spraying = row.failed
                            && agg.failed_users >= self.source_min_users
                            && f64::from(agg.failures) >= self.source_share * f64::from(agg.events);
                        if spraying {
                            sprayed = true;
                            let what = if *kind == SOURCE_IP { "address" } else { "prefix" };
                            proposals.push(Signal {
                                label: format!(
                                    "{} users failing from this {what} ({} of {} sign-ins failed)",
                                    agg.failed_users, agg.failures, agg.events
                                ),
                                reason: "password spray",
                                floor: self.per_user * f64::from(agg.failed_users),
                            });
                        }
                    }
                    Key::User { .. } => {
                        for &(kind, value, seed_m) in &agg.seeds {
                            let mine = match kind {
                                PLACE_DEVICE => row.device,
                                PLACE_PREFIX => row.prefix,
                                PLACE_COUNTRY => row.country,
                                PLACE_SESSION => row.session,
                                _ => None,
                            };
                            if mine != Some(value) {
                                continue;
                            }
                            let what = match kind {
                                PLACE_DEVICE => "device",
                                PLACE_PREFIX => "IP prefix",
                                PLACE_COUNTRY => "country",
                                _ => "session",
                            };
                            let seed = seed_m as f64 / 1000.0;
                            proposals.push(Signal {
                                label: format!("{what} first seen in an anomalous sign-in (risk {seed:.2})"),
                                reason: "new place after an anomalous sign-in",
                                floor: self.anomalous + self.carry_place * (seed - self.anomalous).max(0.0),
                            });
                        }
                        user_agg = Some(agg.clone());
                        if !row.failed && row.new_values > 0 && agg.failures >= self.min_failures {
                            let worst = agg.max_failed_m as f64 / 1000.0;
                            proposals.push(Signal {
                                label: format!(
                                    "success with a new value after {} failures (highest risk {worst:.2})",
                                    agg.failures
                                ),
                                reason: "failures then success from a new place",
                                floor: self.carry_failures * worst,
                            });
                        }
                    }
                }
            }
            let start = base.unwrap_or(0.0);
            let raised = proposals.iter().map(|p| p.floor).fold(start, f64::max);
            let value = match base {
                Some(b) if b.is_nan() => b,
                None if raised <= 0.0 => f64::NAN,
                _ => raised,
            };
            let mut labels: Vec<String> = Vec::new();
            let mut reasons: Vec<&'static str> = Vec::new();
            proposals.sort_by(|a, b| b.floor.total_cmp(&a.floor));
            for p in &proposals {
                if p.floor > start {
                    labels.push(format!("{} → {:.2} (+{:.2})", p.label, p.floor, p.floor - start));
                    reasons.push(p.reason);
                }
            }
            risk_model.push(base);
            risk.push(if value.is_nan() && base.is_none() { None } else { Some(value) });
            signals.push((!labels.is_empty()).then(|| labels.join("; ")));
            let anomalous = value >= self.anomalous;
            if anomalous && row.t.is_some() {
                let user = users.as_ref().and_then(|u| (!u.is_null(i)).then(|| u.value(i))).unwrap_or("");
                let event = ids.as_ref().and_then(|a| (!a.is_null(i)).then(|| a.value(i))).unwrap_or("");
                if reasons.is_empty() {
                    reasons.push("unusual for the user's model");
                }
                // An anomalous failure from an address or prefix that users are failing from (a spray,
                // whatever raised the event) also goes into its source's incident.
                let source = if sprayed {
                    ips.as_ref().and_then(|a| (!a.is_null(i)).then(|| a.value(i))).and_then(source_label)
                } else {
                    None
                };
                candidates.push(Candidate {
                    row: i,
                    user: user.to_string(),
                    event: event.to_string(),
                    t_us: row.t_us.unwrap_or(0),
                    risk: value,
                    reasons,
                    source,
                });
            }
            let u = user_agg.clone().unwrap_or_default();
            let have_user = user_agg.is_some();
            for (col, v) in
                user_cols.iter_mut().zip([u.events, u.anomalous, u.countries, u.prefixes, u.devices, u.failures])
            {
                col.push(have_user.then_some(v));
            }
            user_sum.push(have_user.then_some(u.sum_m as f64 / 1000.0));
            user_max.push(have_user.then_some(u.max_m as f64 / 1000.0));
            for (col, v) in src_cols
                .iter_mut()
                .zip(prefix_agg.map(|a| [a.users, a.failed_users, a.failures]).map_or([None; 3], |a| a.map(Some)))
            {
                col.push(v);
            }
        }
        let mut fields: Vec<Arc<Field>> = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        let schema = data.schema();
        for (f, c) in schema.fields().iter().zip(data.columns()) {
            if f.name() == &self.field {
                fields.push(Arc::new(Field::new(f.name(), DataType::Float64, true)));
                columns.push(Arc::new(Float64Array::from(risk.clone())));
            } else if !ADDED_COLUMNS.contains(&f.name().as_str()) {
                fields.push(Arc::clone(f));
                columns.push(Arc::clone(c));
            }
        }
        let mut add = |name: &str, dt: DataType, col: ArrayRef| {
            fields.push(Arc::new(Field::new(name, dt, true)));
            columns.push(col);
        };
        add("risk_model", DataType::Float64, Arc::new(Float64Array::from(risk_model)));
        add("risk_signals", DataType::Utf8, Arc::new(StringArray::from(signals)));
        add("incident_id", DataType::Utf8, Arc::new(StringArray::from(vec![None::<&str>; n])));
        let [ue, ua, uc, up, ud, uf] = user_cols;
        add("win_user_events", DataType::UInt32, Arc::new(UInt32Array::from(ue)));
        add("win_user_anomalous", DataType::UInt32, Arc::new(UInt32Array::from(ua)));
        add("win_user_risk_sum", DataType::Float64, Arc::new(Float64Array::from(user_sum)));
        add("win_user_risk_max", DataType::Float64, Arc::new(Float64Array::from(user_max)));
        add("win_user_countries", DataType::UInt32, Arc::new(UInt32Array::from(uc)));
        add("win_user_prefixes", DataType::UInt32, Arc::new(UInt32Array::from(up)));
        add("win_user_devices", DataType::UInt32, Arc::new(UInt32Array::from(ud)));
        add("win_user_failures", DataType::UInt32, Arc::new(UInt32Array::from(uf)));
        let [su, sf, sn] = src_cols;
        add("win_src_users", DataType::UInt32, Arc::new(UInt32Array::from(su)));
        add("win_src_failed_users", DataType::UInt32, Arc::new(UInt32Array::from(sf)));
        add("win_src_failures", DataType::UInt32, Arc::new(UInt32Array::from(sn)));
        Ok((RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?, candidates))
    }
}

/// An anomalous event, on its way into an incident.
pub(crate) struct Candidate {
    /// Its row in the batch.
    pub row: usize,
    pub user: String,
    pub event: String,
    pub t_us: i64,
    pub risk: f64,
    pub reasons: Vec<&'static str>,
    /// The /24 (/48) of its address, when it failed from a source of a password spray (its source
    /// incident's key).
    pub source: Option<String>,
}

/// The /24 of an IPv4 address or the /48 of an IPv6 one, as CIDR text (`None` for text that is no address).
pub(crate) fn source_label(ip: &str) -> Option<String> {
    match ip.trim().parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            Some(format!("{}.{}.{}.0/24", o[0], o[1], o[2]))
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            Some(format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2]))
        }
    }
}

/// `data` with its `incident_id` column set from `ids` (row, id).
pub(crate) fn with_incidents(data: RecordBatch, ids: &[(usize, String)]) -> Result<RecordBatch, StageError> {
    if ids.is_empty() {
        return Ok(data);
    }
    let Ok(pos) = data.schema().index_of("incident_id") else { return Ok(data) };
    let mut col: Vec<Option<&str>> = vec![None; data.num_rows()];
    for (row, id) in ids {
        if let Some(slot) = col.get_mut(*row) {
            *slot = Some(id.as_str());
        }
    }
    let mut columns = data.columns().to_vec();
    columns[pos] = Arc::new(StringArray::from(col));
    Ok(RecordBatch::try_new(data.schema(), columns)?)
}

/// One aggregate per key: the join's outputs at the event's time add up to exactly one per key (others
/// cancel).
fn consolidate(mut found: Vec<(Key, Agg, isize)>) -> Vec<(Key, Agg)> {
    found.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut out: Vec<(Key, Agg)> = Vec::new();
    let mut i = 0;
    while i < found.len() {
        let (key, agg, mut n) = found[i].clone();
        let mut j = i + 1;
        while j < found.len() && found[j].0 == key && found[j].1 == agg {
            n += found[j].2;
            j += 1;
        }
        if n > 0 {
            out.push((key, agg));
        }
        i = j;
    }
    out
}

/// An incident while it is open: of one user, or of one source prefix.
struct Incident {
    id: String,
    /// The user, or the source prefix.
    key: String,
    /// The users of its events.
    users: BTreeSet<String>,
    first_us: i64,
    last_us: i64,
    events: u64,
    event_ids: Vec<String>,
    reasons: BTreeSet<&'static str>,
    peak: f64,
    opened_now: bool,
}

/// What an incident is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entity {
    /// One user's anomalous events.
    User,
    /// Password-spray events from one /24 (/48), over users.
    Source,
}

/// The open incidents of one worker's users (or sources), and the rows to emit.
pub(crate) struct IncidentBook {
    entity: Entity,
    gap_us: i64,
    max_ids: usize,
    open: HashMap<String, Incident>,
    changed: BTreeSet<String>,
    closed: Vec<Incident>,
    newest_us: i64,
}

impl IncidentBook {
    pub(crate) fn new(entity: Entity, gap_secs: u64, max_ids: usize) -> Self {
        IncidentBook {
            entity,
            gap_us: i64::try_from(gap_secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX),
            max_ids,
            open: HashMap::new(),
            changed: BTreeSet::new(),
            closed: Vec::new(),
            newest_us: i64::MIN,
        }
    }

    /// Adds an anomalous event of `user` to the incident of `key` (the user itself, or the source prefix);
    /// returns the incident's id.
    pub(crate) fn add(
        &mut self,
        key: &str,
        user: &str,
        event: &str,
        t_us: i64,
        risk: f64,
        reasons: &[&'static str],
    ) -> String {
        self.newest_us = self.newest_us.max(t_us);
        if let Some(open) = self.open.get(key) {
            if t_us > open.last_us.saturating_add(self.gap_us) {
                if let Some(done) = self.open.remove(key) {
                    self.changed.remove(key);
                    self.closed.push(done);
                }
            }
        }
        let max_ids = self.max_ids;
        let inc = self.open.entry(key.to_string()).or_insert_with(|| Incident {
            id: format!("inc-{:016x}", stable_hash(format!("{key}\u{1f}{event}").as_bytes())),
            key: key.to_string(),
            users: BTreeSet::new(),
            first_us: t_us,
            last_us: t_us,
            events: 0,
            event_ids: Vec::new(),
            reasons: BTreeSet::new(),
            peak: f64::MIN,
            opened_now: true,
        });
        inc.first_us = inc.first_us.min(t_us);
        inc.last_us = inc.last_us.max(t_us);
        inc.events += 1;
        if !inc.users.contains(user) {
            inc.users.insert(user.to_string());
        }
        if inc.event_ids.len() < max_ids {
            inc.event_ids.push(event.to_string());
        }
        inc.reasons.extend(reasons.iter().copied());
        inc.peak = inc.peak.max(risk);
        self.changed.insert(key.to_string());
        inc.id.clone()
    }

    /// The incident rows due: those that opened or grew since the last call, and those closed (all open
    /// ones when `all`; otherwise those whose user had no anomalous event for the gap, by event time).
    pub(crate) fn take(&mut self, all: bool) -> Result<Option<RecordBatch>, StageError> {
        let horizon = self.newest_us.saturating_sub(self.gap_us);
        let expired: Vec<String> =
            self.open.iter().filter(|(_, inc)| all || inc.last_us < horizon).map(|(u, _)| u.clone()).collect();
        let mut rows: Vec<(&Incident, &'static str)> = Vec::new();
        let mut closing: Vec<Incident> = std::mem::take(&mut self.closed);
        for user in expired {
            if let Some(inc) = self.open.remove(&user) {
                self.changed.remove(&user);
                closing.push(inc);
            }
        }
        let changed = std::mem::take(&mut self.changed);
        for user in &changed {
            if let Some(inc) = self.open.get(user) {
                rows.push((inc, if inc.opened_now { "open" } else { "updated" }));
            }
        }
        for inc in &closing {
            rows.push((inc, "closed"));
        }
        if rows.is_empty() {
            return Ok(None);
        }
        rows.sort_by(|a, b| (a.0.first_us, &a.0.id).cmp(&(b.0.first_us, &b.0.id)));
        let batch = incident_rows(self.entity, &rows)?;
        for user in &changed {
            if let Some(inc) = self.open.get_mut(user) {
                inc.opened_now = false;
            }
        }
        Ok(Some(batch))
    }
}

/// The schema of incident rows.
pub fn incident_schema() -> Schema {
    let ts = crate::normalize::timestamp_type();
    Schema::new(vec![
        Field::new("incident_id", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("entity", DataType::Utf8, false),
        Field::new("username", DataType::Utf8, true),
        Field::new("source", DataType::Utf8, true),
        Field::new("users", DataType::UInt64, false),
        Field::new("first_seen", ts.clone(), false),
        Field::new("last_seen", ts, false),
        Field::new("events", DataType::UInt64, false),
        Field::new("event_ids", DataType::Utf8, false),
        Field::new("reasons", DataType::Utf8, false),
        Field::new("peak_risk", DataType::Float64, false),
    ])
}

fn incident_rows(entity: Entity, rows: &[(&Incident, &'static str)]) -> Result<RecordBatch, StageError> {
    let col = |f: &dyn Fn(&Incident, &'static str) -> String| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(|(i, s)| f(i, s)).collect::<Vec<_>>()))
    };
    let keys = |of: Entity| -> ArrayRef {
        Arc::new(StringArray::from(
            rows.iter().map(|(i, _)| (entity == of).then(|| i.key.clone())).collect::<Vec<Option<String>>>(),
        ))
    };
    let columns: Vec<ArrayRef> = vec![
        col(&|i, _| i.id.clone()),
        col(&|_, s| s.to_string()),
        col(&|_, _| if entity == Entity::User { "user" } else { "source" }.to_string()),
        keys(Entity::User),
        keys(Entity::Source),
        Arc::new(UInt64Array::from(rows.iter().map(|(i, _)| i.users.len() as u64).collect::<Vec<_>>())),
        Arc::new(
            TimestampMicrosecondArray::from(rows.iter().map(|(i, _)| i.first_us).collect::<Vec<_>>())
                .with_timezone("+00:00"),
        ),
        Arc::new(
            TimestampMicrosecondArray::from(rows.iter().map(|(i, _)| i.last_us).collect::<Vec<_>>())
                .with_timezone("+00:00"),
        ),
        Arc::new(UInt64Array::from(rows.iter().map(|(i, _)| i.events).collect::<Vec<_>>())),
        col(&|i, _| i.event_ids.join(",")),
        col(&|i, _| i.reasons.iter().copied().collect::<Vec<_>>().join("; ")),
        Arc::new(Float64Array::from(rows.iter().map(|(i, _)| i.peak).collect::<Vec<_>>())),
    ];
    Ok(RecordBatch::try_new(Arc::new(incident_schema()), columns)?)
}
