//! `type: correlate` — raises each scored event's `risk` by what happens around it, across events, users
//! and source addresses, and groups anomalous events into incidents.
//!
//! ```yaml
//! correlate:
//!   type: correlate
//!   inputs: [scored]
//!   anomalous: 2.0              # risk at or above which an event is anomalous (seeds, incidents)
//!   place:  { window: 8h, carry: 0.7, new_values: 2, fresh_risk: 3.0, fresh_min: 1.0 }
//!   source: { window: 24h, min_users: 2, min_failure_share: 0.5, per_user: 1.0 }
//!   user:   { window: 24h, min_failures: 3, carry: 1.0 }
//!   incidents: { gap: 8h }
//! incidents_out: { type: file-sink, inputs: [correlate.incidents], path: out/incidents.jsonl }
//! ```
//!
//! A per-user model judges one sign-in against one user's past; an attack that spreads over several events
//! or several users shows only in the views this stage keeps (docs/correlate.md):
//!
//! - **place** (per user and device, IP prefix, country, and session where the family has one): an
//!   anomalous event (`risk ≥ anomalous`) that brought `new_values` or more values new to the user (the
//!   `features` stage's novelty columns) is a *seed* of the places it came from; for `window` after it,
//!   the user's events from that device, prefix, country or session get a risk of at least `carry` × the
//!   seed's risk. A quiet takeover or a stolen token is one odd first sign-in and then ordinary-looking
//!   ones from the same place. An event that brings a device and an IP prefix both new to the user, and
//!   that the model finds at least `fresh_min`, is anomalous with at least `fresh_risk` (and so a seed).
//! - **source** (per IP address and per /24 for IPv4, /48 for IPv6): distinct users, distinct users with
//!   a failed sign-in, failures. When at least `min_users` users failed from it and failures are at least
//!   `min_failure_share` of its sign-ins, each failed sign-in from it gets a risk of at least `per_user` ×
//!   the users failing: a password spray.
//! - **user**: events, anomalous events with the sum and maximum of their risk, distinct countries, IP
//!   prefixes and devices, failures. A successful sign-in that brings a new value after `min_failures`
//!   failures gets at least `carry` × the highest risk among those failures: failures followed by a
//!   success from a new place.
//!
//! Every view is a differential-dataflow collection over a sliding event-time window (`views.rs`): exact,
//! with late and out-of-order events placed at their own time, keys exchanged between workers by
//! differential. Each event sees each view as it stood at the event's own time.
//!
//! Output: the input rows with `risk` raised to the highest of its own value and the signals' (the model's
//! value stays in `risk_model`, and `mean_abs_z` is untouched), `risk_signals` (which signal raised it and by
//! how much, null when none did), `incident_id`, and the windows' figures (`win_*`). Events without an event
//! time, an IP or a user still pass and keep their own risk; they simply join no view that needs what they
//! lack.
//!
//! **Incidents** (`inputs: [STAGE.incidents]`): a user's anomalous events (after raising) within `gap` of
//! each other form one incident; a row is emitted when it opens (`open`), whenever it grows (`updated`), and
//! when no anomalous event came for `gap` in event time or the input ended (`closed`), so that sinks can
//! upsert by `incident_id`. Anomalous failures from an address or /24 (/48) that users are failing from
//! (a password spray) also form an incident of that source (`entity: source`), across users.
//!
//! `lateness` is how far behind the newest event time of the epochs that have fully arrived an event may be
//! and still be placed at its own time;
//! an older one is placed at the watermark (it still counts, in the windows that are open then). State is
//! bounded by the windows: roughly the events of the longest window, not the stream.

mod output;
mod views;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, TimestampMicrosecondType};
use dfp_core::hash::stable_hash;
use dfp_core::partition::split_by_key;
use dfp_core::timely::container::CapacityContainerBuilder;
use dfp_core::timely::dataflow::channels::pact::{Exchange, Pipeline};
use dfp_core::timely::dataflow::operators::core::OkErr;
use dfp_core::timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use dfp_core::timely::dataflow::operators::generic::{Operator, OutputBuilder};
use dfp_core::timely::dataflow::operators::{Capability, Concat};
use dfp_core::timely::dataflow::Stream;
use dfp_core::{
    register_stage, Batch, BatchStream, ConfigContext, ConfigError, DataflowEnv, DataflowOutputs, DataflowTransform,
    StageConfig, StageContext, StageError, StageInstance, StageKind,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use self::output::{incident_schema, ADDED_COLUMNS};
use self::output::{Annotator, Entity, IncidentBook};
use self::views::{Ev, Row, Windows, PLACE_COUNTRY, PLACE_DEVICE, PLACE_PREFIX, PLACE_SESSION};

/// Configuration of `correlate`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorrelateConfig {
    /// The log family whose roles name the user, IP, device, country, session and result columns (default:
    /// the pipeline's `family`).
    pub family: String,
    /// The score read and raised (default `risk`, which `score` writes).
    #[serde(default = "d_field")]
    pub field: String,
    /// An event whose score is at least this is anomalous: it can seed a place and it joins an incident.
    #[serde(default = "d_anomalous")]
    pub anomalous: f64,
    /// How far behind the newest event time (of the epochs that have fully arrived) an event may arrive and
    /// still be placed at its own time
    /// (`30s`, `10m`, `2h`, `1d`).
    #[serde(default = "d_lateness")]
    pub lateness: String,
    /// Per user and place (device, IP prefix, country, session).
    #[serde(default)]
    pub place: PlaceView,
    /// Per source IP and /24 (/48).
    #[serde(default)]
    pub source: SourceView,
    /// Per user.
    #[serde(default)]
    pub user: UserView,
    /// How anomalous events become incidents.
    #[serde(default)]
    pub incidents: IncidentsConfig,
}

/// The place view (see the module docs).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceView {
    /// How long a seed raises the events from its place.
    #[serde(default = "d_place_window")]
    pub window: String,
    /// The share of the seed's risk its place's later events get at least (0–1).
    #[serde(default = "d_carry")]
    pub carry: f64,
    /// How many values new to the user (`new_values`) a seed brings at least.
    #[serde(default = "d_new_values")]
    pub new_values: u32,
    /// An event that brings a device and an IP prefix the user never used, both at once (a replayed token
    /// or an attacker's own machine), is anomalous with at least this risk, and so a seed of its places,
    /// when the model finds it at least `fresh_min`; 0 turns the signal off.
    #[serde(default = "d_fresh_risk")]
    pub fresh_risk: f64,
    /// The model's risk (`field`) such an event needs at least to count as fresh.
    #[serde(default = "d_one")]
    pub fresh_min: f64,
}

/// The source view (see the module docs).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceView {
    /// The window.
    #[serde(default = "d_day")]
    pub window: String,
    /// Users failing from the address or prefix before its failures are raised.
    #[serde(default = "d_min_users")]
    pub min_users: u32,
    /// Failures as a share of the sign-ins from it, at least (0–1).
    #[serde(default = "d_share")]
    pub min_failure_share: f64,
    /// Risk per failing user.
    #[serde(default = "d_one")]
    pub per_user: f64,
}

/// The user view (see the module docs).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserView {
    /// The window.
    #[serde(default = "d_day")]
    pub window: String,
    /// Failures in the window before a success from a new place is raised.
    #[serde(default = "d_min_failures")]
    pub min_failures: u32,
    /// The share of the failures' highest risk that success gets at least (0–1).
    #[serde(default = "d_one")]
    pub carry: f64,
}

/// Incidents (see the module docs).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncidentsConfig {
    /// An incident closes when no anomalous event of its user came for this long (event time).
    #[serde(default = "d_place_window")]
    pub gap: String,
    /// Event ids listed in an incident row, at most (the count is always exact).
    #[serde(default = "d_max_ids")]
    pub max_event_ids: usize,
}

fn d_field() -> String {
    "risk".into()
}
fn d_anomalous() -> f64 {
    2.0
}
fn d_lateness() -> String {
    "10m".into()
}
fn d_place_window() -> String {
    "8h".into()
}
fn d_day() -> String {
    "24h".into()
}
fn d_carry() -> f64 {
    0.7
}
fn d_fresh_risk() -> f64 {
    3.0
}
fn d_new_values() -> u32 {
    2
}
fn d_min_users() -> u32 {
    2
}
fn d_share() -> f64 {
    0.5
}
fn d_one() -> f64 {
    1.0
}
fn d_min_failures() -> u32 {
    3
}
fn d_max_ids() -> usize {
    100
}

impl Default for PlaceView {
    fn default() -> Self {
        PlaceView {
            window: d_place_window(),
            carry: d_carry(),
            new_values: d_new_values(),
            fresh_risk: d_fresh_risk(),
            fresh_min: d_one(),
        }
    }
}
impl Default for SourceView {
    fn default() -> Self {
        SourceView { window: d_day(), min_users: d_min_users(), min_failure_share: d_share(), per_user: d_one() }
    }
}
impl Default for UserView {
    fn default() -> Self {
        UserView { window: d_day(), min_failures: d_min_failures(), carry: d_one() }
    }
}
impl Default for IncidentsConfig {
    fn default() -> Self {
        IncidentsConfig { gap: d_place_window(), max_event_ids: d_max_ids() }
    }
}

/// Parses `30s`, `10m`, `8h`, `7d` (a number and a unit) into seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("\"{text}\" is not a duration: write a number and a unit (30s, 10m, 8h, 7d)"))?;
    let scale = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "" => return Err(format!("\"{text}\" has no unit: write 30s, 10m, 8h or 7d")),
        other => return Err(format!("unknown unit \"{other}\" in \"{text}\": use s, m, h or d")),
    };
    n.checked_mul(scale).ok_or_else(|| format!("\"{text}\" is too long"))
}

impl CorrelateConfig {
    fn windows(&self) -> Result<Windows, ConfigError> {
        let window = |field: &str, text: &str| -> Result<u64, ConfigError> {
            match parse_duration(text) {
                Ok(0) => Err(ConfigError::field(field, "a window must be longer than 0")),
                Ok(s) => Ok(s),
                Err(m) => Err(ConfigError::field(field, m)),
            }
        };
        Ok(Windows {
            place: window("place.window", &self.place.window)?,
            source: window("source.window", &self.source.window)?,
            user: window("user.window", &self.user.window)?,
            lateness: parse_duration(&self.lateness).map_err(|m| ConfigError::field("lateness", m))?,
        })
    }
}

impl StageConfig for CorrelateConfig {
    const TYPE: &'static str = "correlate";
    const KIND: StageKind = StageKind::Transform;
    const DESCRIPTION: &'static str =
        "raises risk by sliding-window views per user, place and source address (differential); incidents";
    const OUTPUTS: &'static [&'static str] = &["incidents"];
    fn validate(&self) -> Result<(), ConfigError> {
        self.windows()?;
        parse_duration(&self.incidents.gap).ok().filter(|g| *g > 0).ok_or_else(|| {
            ConfigError::field(
                "incidents.gap",
                format!("\"{}\" is not a positive duration (30m, 8h)", self.incidents.gap),
            )
        })?;
        if !self.anomalous.is_finite() || self.anomalous <= 0.0 {
            return Err(ConfigError::field("anomalous", "must be a positive number (a risk in z units, e.g. 2.0)"));
        }
        for (field, v) in [
            ("place.carry", self.place.carry),
            ("user.carry", self.user.carry),
            ("source.min_failure_share", self.source.min_failure_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(ConfigError::field(field, format!("must be between 0 and 1, not {v}")));
            }
        }
        for (field, v) in [
            ("source.per_user", self.source.per_user),
            ("place.fresh_risk", self.place.fresh_risk),
            ("place.fresh_min", self.place.fresh_min),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(ConfigError::field(field, format!("must be a number ≥ 0, not {v}")));
            }
        }
        if self.source.min_users == 0 {
            return Err(ConfigError::field("source.min_users", "must be at least 1"));
        }
        Ok(())
    }
    fn check(&self, ctx: &ConfigContext<'_>) -> Result<(), ConfigError> {
        ctx.family(&self.family).map(|_| ())
    }
    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        let family = ctx.family(&self.family)?;
        let roles = &family.roles;
        let columns = Columns {
            user: "username".into(),
            time: "timestamp".into(),
            id: "id".into(),
            ip: roles.ip.clone(),
            device: roles.device.clone(),
            country: roles.country.clone(),
            session: roles.session.clone(),
            result: roles
                .result
                .as_ref()
                .map(|r| (r.column.clone(), r.success.iter().map(|s| s.to_lowercase()).collect())),
        };
        let windows = self.windows().map_err(|e| StageError::Other(e.message))?;
        let gap = parse_duration(&self.incidents.gap).map_err(StageError::Other)?;
        Ok(StageInstance::Dataflow(Box::new(Correlate {
            config: self.clone(),
            columns,
            windows,
            gap,
            // The event times this process's workers of the stage took in, by epoch: the watermark's base,
            // shared so that a worker with little data does not hold everyone's compaction back.
            clock: ctx.process_state(views::Clock::default),
        })))
    }
}

register_stage!(CorrelateConfig);

/// The columns the stage reads.
#[derive(Debug, Clone)]
struct Columns {
    user: String,
    time: String,
    id: String,
    ip: Option<String>,
    device: Option<String>,
    country: Option<String>,
    session: Option<String>,
    /// The result column and its success values (lower case; empty for a bool column).
    result: Option<(String, Vec<String>)>,
}

struct Correlate {
    config: CorrelateConfig,
    columns: Columns,
    windows: Windows,
    gap: u64,
    clock: Arc<views::Clock>,
}

/// A batch waiting for its rows' views: the sequence number of its first row, the batch, its rows.
type Stash = (u64, Batch, Vec<Row>);

impl DataflowTransform for Correlate {
    // The `Err` sides of the split streams carry batches between operators by value, as `Ok` does.
    #[allow(clippy::result_large_err)]
    fn build<'s>(self: Box<Self>, input: BatchStream<'s>, env: DataflowEnv) -> DataflowOutputs<'s> {
        let Correlate { config, columns, windows, gap, clock } = *self;
        let peers = env.ctx.workers;
        let worker = env.ctx.worker_index as u32;
        // 1. All of a user's events on one worker (incidents are per user).
        let split_env = env.clone();
        let user_column = columns.user.clone();
        let by_user = input
            .unary::<CapacityContainerBuilder<Vec<(u64, Batch)>>, _, _, _>(Pipeline, "CorrelateSplit", move |_, _| {
                move |input, output| {
                    input.for_each(|cap, data| {
                        let mut session = output.session(&cap);
                        for batch in data.drain(..) {
                            if split_env.aborted() {
                                continue;
                            }
                            match split_by_key(batch, &user_column, peers) {
                                Ok(parts) => session.give_iterator(parts.into_iter()),
                                Err(e) => split_env.fail(e),
                            }
                        }
                    });
                }
            })
            .unary::<CapacityContainerBuilder<Vec<Batch>>, _, _, _>(
                Exchange::new(|x: &(u64, Batch)| x.0),
                "CorrelateByUser",
                |_, _| {
                    move |input, output| {
                        input.for_each(|cap, data| {
                            output.session(&cap).give_iterator(data.drain(..).map(|(_, b)| b));
                        })
                    }
                },
            );
        // 2. Rows for the views; the batches wait for their results.
        let extract_env = env.clone();
        let extract_columns = columns.clone();
        let extract_config = config.clone();
        let extract_clock = Arc::clone(&clock);
        let mut next_seq = 0u64;
        let (rows, stash) = by_user
            .unary::<CapacityContainerBuilder<Vec<Result<Row, Stash>>>, _, _, _>(
                Pipeline,
                "CorrelateExtract",
                move |_, _| {
                    move |input, output| {
                        input.for_each(|cap, data| {
                            let mut session = output.session(&cap);
                            for batch in data.drain(..) {
                                if extract_env.aborted() {
                                    continue;
                                }
                                match extract(&batch, &extract_columns, &extract_config, worker, next_seq) {
                                    Ok(rows) => {
                                        if let Some(t) = rows.iter().filter_map(|r| r.t).max() {
                                            if let Some(&epoch) = cap.least() {
                                                extract_clock.saw(epoch, t);
                                            }
                                        }
                                        next_seq += batch.num_rows() as u64;
                                        session.give_iterator(rows.clone().into_iter().map(Ok));
                                        session.give(Err((next_seq - batch.num_rows() as u64, batch, rows)));
                                    }
                                    Err(e) => extract_env.fail(e),
                                }
                            }
                        });
                    }
                },
            )
            .ok_err(|x| x);
        let results = views::views(rows, windows, clock);
        // 3. Each batch with its rows' results, once its epoch is complete; incidents alongside.
        let attach_env = env.clone();
        let mut annotator = Annotator::new(&config, &columns);
        let max_ids = config.incidents.max_event_ids;
        let mut book = IncidentBook::new(Entity::User, gap, max_ids);
        let attached = stash.binary_frontier::<_, CapacityContainerBuilder<Vec<Attached>>, _, _, _, _>(
            results,
            Pipeline,
            Exchange::new(|x: &views::Found| u64::from((x.0).0.worker)),
            "CorrelateAttach",
            move |initial, _| {
                let mut waiting: BTreeMap<u64, (Capability<u64>, Vec<Stash>)> = BTreeMap::new();
                let mut found: HashMap<u64, Vec<(views::Key, views::Agg, isize)>> = HashMap::new();
                // Held at the lowest time still to come, for the rows that close incidents at the end.
                let mut last = Some(initial);
                // The latest epoch released: rows leave in non-decreasing time, so the closing rows at
                // the end never come before the rows that grew their incidents.
                let mut released = 0u64;
                move |(batches, f1), (res, f2), output| {
                    batches.for_each(|cap, data| {
                        let (Some(&t), Some(held)) = (cap.least(), cap.retain_least(0)) else { return };
                        waiting.entry(t).or_insert_with(|| (held, Vec::new())).1.append(data);
                    });
                    res.for_each(|_, data| {
                        for ((ev, key, agg), _, diff) in data.drain(..) {
                            found.entry(ev.seq).or_default().push((key, agg, diff));
                        }
                    });
                    while let Some((&t, _)) = waiting.first_key_value() {
                        if f1.less_equal(&t) || f2.less_equal(&t) {
                            break;
                        }
                        let Some((_, (cap, stashed))) = waiting.pop_first() else { break };
                        released = released.max(*cap.time());
                        let mut session = output.session(&cap);
                        // Raise every row of the epoch, then feed the anomalous ones to the incidents in
                        // event-time order (the epoch's batches may come in any order).
                        let mut annotated = Vec::with_capacity(stashed.len());
                        let mut candidates = Vec::new();
                        for (_, batch, rows) in stashed {
                            if attach_env.aborted() {
                                continue;
                            }
                            match annotator.annotate(&batch, &rows, &mut found) {
                                Ok((data, cands)) => {
                                    candidates.extend(cands.into_iter().map(|c| (annotated.len(), c)));
                                    annotated.push((batch, data, Vec::new()));
                                }
                                Err(e) => attach_env.fail(e),
                            }
                        }
                        candidates.sort_by(|a, b| (a.1.t_us, &a.1.event).cmp(&(b.1.t_us, &b.1.event)));
                        for (at, c) in candidates {
                            let id = book.add(&c.user, &c.user, &c.event, c.t_us, c.risk, &c.reasons);
                            annotated[at].2.push((c.row, id));
                            if let Some(source) = c.source {
                                let (user, event, t_us, risk) = (c.user, c.event, c.t_us, c.risk);
                                session.give(Attached::Spray(SprayEvent { source, user, event, t_us, risk }));
                            }
                        }
                        for (batch, data, ids) in annotated {
                            match output::with_incidents(data, &ids) {
                                Ok(data) => session.give(Attached::Events(batch.with_data(data))),
                                Err(e) => attach_env.fail(e),
                            }
                        }
                        match book.take(false) {
                            Ok(Some(rows)) => {
                                session.give(Attached::Incidents(Batch::new(rows, attach_env.ctx.stage_id.clone())))
                            }
                            Ok(None) => {}
                            Err(e) => attach_env.fail(e),
                        }
                    }
                    let lowest = f1.frontier().iter().chain(f2.frontier().iter()).min().copied();
                    match (lowest, last.as_mut()) {
                        (Some(l), Some(cap)) if *cap.time() < l => cap.downgrade(&l),
                        (None, Some(cap)) => {
                            // End of input: every open incident closes.
                            match book.take(true) {
                                Ok(Some(rows)) => output
                                    .session(&cap.delayed(&released.max(*cap.time())))
                                    .give(Attached::Incidents(Batch::new(rows, attach_env.ctx.stage_id.clone()))),
                                Ok(None) => {}
                                Err(e) => attach_env.fail(e),
                            }
                            last = None;
                        }
                        _ => {}
                    }
                }
            },
        );
        let (events, incidents, sprays) = split_in_order(attached);
        // 4. Spray events meet per source prefix (on the worker of its hash) in that source's incidents.
        let sources = source_incidents(sprays, env, gap, max_ids);
        DataflowOutputs { main: events, ports: vec![("incidents", incidents.concat(sources))] }
    }
}

/// What the attach step gives, in order: event batches, incident rows, and the events a password spray
/// raised (for their source's incident).
enum Attached {
    Events(Batch),
    Incidents(Batch),
    Spray(SprayEvent),
}

/// An event a password-spray signal raised, on its way to its source prefix's incident.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SprayEvent {
    source: String,
    user: String,
    event: String,
    t_us: i64,
    risk: f64,
}

/// Splits the attached output into events, incidents and spray events in the order they were given
/// (timely's `ok_err` orders what it meets in one activation by time, which could put an incident's rows out
/// of order).
#[allow(clippy::type_complexity)]
fn split_in_order<'s>(
    stream: Stream<'s, u64, Vec<Attached>>,
) -> (BatchStream<'s>, BatchStream<'s>, Stream<'s, u64, Vec<SprayEvent>>) {
    let mut builder = OperatorBuilder::new("CorrelateOutputs".to_owned(), stream.scope());
    let mut input = builder.new_input(stream, Pipeline);
    let (events_out, events) = builder.new_output::<Vec<Batch>>();
    let (incidents_out, incidents) = builder.new_output::<Vec<Batch>>();
    let (sprays_out, sprays) = builder.new_output::<Vec<SprayEvent>>();
    let mut events_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Batch>>>::from(events_out);
    let mut incidents_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Batch>>>::from(incidents_out);
    let mut sprays_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<SprayEvent>>>::from(sprays_out);
    builder.build(move |_| {
        move |_| {
            let mut events_out = events_out.activate();
            let mut incidents_out = incidents_out.activate();
            let mut sprays_out = sprays_out.activate();
            input.for_each(|cap, data| {
                let mut events = events_out.session(&cap);
                let mut incidents = incidents_out.session(&cap);
                let mut sprays = sprays_out.session(&cap);
                for item in data.drain(..) {
                    match item {
                        Attached::Events(batch) => events.give(batch),
                        Attached::Incidents(batch) => incidents.give(batch),
                        Attached::Spray(event) => sprays.give(event),
                    }
                }
            });
        }
    });
    (events, incidents, sprays)
}

/// The incidents of source prefixes: each prefix's spray events meet on one worker and go into its
/// incident in event-time order, epoch by epoch, as the users' incidents do.
fn source_incidents<'s>(
    sprays: Stream<'s, u64, Vec<SprayEvent>>,
    env: DataflowEnv,
    gap: u64,
    max_ids: usize,
) -> BatchStream<'s> {
    let mut book = IncidentBook::new(Entity::Source, gap, max_ids);
    sprays.unary_frontier::<CapacityContainerBuilder<Vec<Batch>>, _, _, _>(
        Exchange::new(|e: &SprayEvent| stable_hash(e.source.as_bytes())),
        "CorrelateSources",
        move |initial, _| {
            let mut waiting: BTreeMap<u64, (Capability<u64>, Vec<SprayEvent>)> = BTreeMap::new();
            let mut last = Some(initial);
            let mut released = 0u64;
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let (Some(&t), Some(held)) = (cap.least(), cap.retain_least(0)) else { return };
                    waiting.entry(t).or_insert_with(|| (held, Vec::new())).1.append(data);
                });
                while let Some((&t, _)) = waiting.first_key_value() {
                    if frontier.less_equal(&t) {
                        break;
                    }
                    let Some((_, (cap, mut events))) = waiting.pop_first() else { break };
                    released = released.max(*cap.time());
                    events.sort_by(|a, b| (a.t_us, &a.event).cmp(&(b.t_us, &b.event)));
                    for e in &events {
                        book.add(&e.source, &e.user, &e.event, e.t_us, e.risk, &["password spray"]);
                    }
                    match book.take(false) {
                        Ok(Some(rows)) => output.session(&cap).give(Batch::new(rows, env.ctx.stage_id.clone())),
                        Ok(None) => {}
                        Err(e) => env.fail(e),
                    }
                }
                match (frontier.frontier().iter().min().copied(), last.as_mut()) {
                    (Some(l), Some(cap)) if *cap.time() < l => cap.downgrade(&l),
                    (None, Some(cap)) => {
                        match book.take(true) {
                            Ok(Some(rows)) => output
                                .session(&cap.delayed(&released.max(*cap.time())))
                                .give(Batch::new(rows, env.ctx.stage_id.clone())),
                            Ok(None) => {}
                            Err(e) => env.fail(e),
                        }
                        last = None;
                    }
                    _ => {}
                }
            }
        },
    )
}

/// The rows of `batch` as the views take them in, numbered from `first_seq`.
fn extract(
    batch: &Batch,
    columns: &Columns,
    config: &CorrelateConfig,
    worker: u32,
    first_seq: u64,
) -> Result<Vec<Row>, StageError> {
    let data = &batch.data;
    let n = data.num_rows();
    let risk = float_column(data, &config.field)?;
    let users = text_column(data, &columns.user);
    let times = data
        .column_by_name(&columns.time)
        .and_then(|c| cast(c, &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None)).ok());
    let times = times.as_ref().map(|c| c.as_primitive::<TimestampMicrosecondType>());
    let text = |name: &Option<String>| name.as_deref().and_then(|n| text_column(data, n));
    let (ips, devices, countries, sessions) =
        (text(&columns.ip), text(&columns.device), text(&columns.country), text(&columns.session));
    let result = columns.result.as_ref().and_then(|(c, ok)| {
        let col = data.column_by_name(c)?;
        match col.data_type() {
            DataType::Boolean => Some(Outcome::Flag(col.as_boolean().clone())),
            _ => text_column(data, c).map(|t| Outcome::Text(t, ok)),
        }
    });
    let flag = |name: &str| data.column_by_name(name).and_then(|c| cast(c, &DataType::Boolean).ok());
    let (new_device, new_prefix, new_country) = (flag("new_device"), flag("new_ip_prefix"), flag("new_country"));
    let new_values = data.column_by_name("new_values").and_then(|c| cast(c, &DataType::UInt32).ok());
    let get = |col: &Option<arrow::array::StringArray>, i: usize| -> Option<u64> {
        col.as_ref()
            .filter(|c| !c.is_null(i))
            .map(|c| c.value(i))
            .filter(|v| !v.is_empty())
            .map(|v| stable_hash(v.as_bytes()))
    };
    let on = |col: &Option<arrow::array::ArrayRef>, i: usize| -> bool {
        col.as_ref().map(|c| c.as_boolean()).is_some_and(|c| !c.is_null(i) && c.value(i))
    };
    let mut rows = Vec::with_capacity(n);
    let mut prefix = String::new();
    for i in 0..n {
        let user = users.as_ref().filter(|u| !u.is_null(i)).map(|u| u.value(i));
        let t_us = times.filter(|t| !t.is_null(i)).map(|t| t.value(i));
        let risk = risk[i].filter(|r| r.is_finite()).unwrap_or(0.0);
        // A device and a network both new to the user: anomalous with at least `fresh_risk`.
        let fresh =
            config.place.fresh_risk > 0.0 && risk >= config.place.fresh_min && on(&new_device, i) && on(&new_prefix, i);
        let risk = if fresh { risk.max(config.place.fresh_risk) } else { risk };
        let failed = match &result {
            Some(Outcome::Flag(col)) => !col.is_null(i) && !col.value(i),
            Some(Outcome::Text(col, ok)) => !col.is_null(i) && !ok.iter().any(|s| s.eq_ignore_ascii_case(col.value(i))),
            None => false,
        };
        let (ip, ip_prefix) = match ips.as_ref().filter(|c| !c.is_null(i)).map(|c| c.value(i).trim()) {
            Some(text) if text.parse::<std::net::IpAddr>().is_ok() => {
                prefix.clear();
                crate::transforms::features::write_ip_prefix(text, &mut prefix);
                (Some(stable_hash(text.as_bytes())), Some(stable_hash(prefix.as_bytes())))
            }
            _ => (None, None),
        };
        let anomalous = risk >= config.anomalous;
        let novel = new_values.as_ref().map_or(0, |c| {
            let c = c.as_primitive::<arrow::datatypes::UInt32Type>();
            if c.is_null(i) {
                0
            } else {
                c.value(i)
            }
        });
        let mut seeds = 0u8;
        if anomalous && novel >= config.place.new_values {
            for (col, bit) in [(&new_device, PLACE_DEVICE), (&new_prefix, PLACE_PREFIX), (&new_country, PLACE_COUNTRY)]
            {
                if on(col, i) {
                    seeds |= 1 << bit;
                }
            }
            if seeds != 0 {
                seeds |= 1 << PLACE_SESSION;
            }
        }
        rows.push(Row {
            ev: Ev { worker, seq: first_seq + i as u64 },
            t: t_us.filter(|t| *t >= 0).filter(|_| user.is_some()).map(|t| (t / 1_000_000) as u64),
            t_us,
            user: user.map_or(0, |u| stable_hash(u.as_bytes())),
            risk_m: (risk * 1000.0).round().clamp(-1e15, 1e15) as i64,
            anomalous,
            failed,
            new_values: novel,
            ip,
            prefix: ip_prefix,
            device: get(&devices, i),
            country: get(&countries, i),
            session: get(&sessions, i),
            seeds,
            fresh,
        });
    }
    Ok(rows)
}

/// The result column, read once per batch.
enum Outcome<'a> {
    Flag(arrow::array::BooleanArray),
    Text(arrow::array::StringArray, &'a [String]),
}

/// A numeric column as `f64`s (nulls as `None`); an error naming it when it is missing or not numeric.
pub(crate) fn float_column(data: &RecordBatch, name: &str) -> Result<Vec<Option<f64>>, StageError> {
    let Some(col) = data.column_by_name(name) else {
        return Err(StageError::Data(format!(
            "correlate reads the score column \"{name}\", which the input lacks (put `correlate` after `score`, or \
             set `field`)"
        )));
    };
    let col = cast(col, &DataType::Float64)
        .map_err(|e| StageError::Data(format!("column \"{name}\" is not numeric: {e}")))?;
    let col = col.as_primitive::<Float64Type>();
    Ok((0..col.len()).map(|i| (!col.is_null(i)).then(|| col.value(i))).collect())
}

/// A column as text, when present.
pub(crate) fn text_column(data: &RecordBatch, name: &str) -> Option<arrow::array::StringArray> {
    let col = data.column_by_name(name)?;
    let col = cast(col, &DataType::Utf8).ok()?;
    Some(col.as_string::<i32>().clone())
}

#[cfg(test)]
mod tests;
