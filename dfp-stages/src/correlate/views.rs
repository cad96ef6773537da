//! The differential-dataflow half of `correlate`: sliding event-time windows kept as collections, one
//! aggregate per key, and each event's view of its keys read as of its own time.
//!
//! Inside a child scope whose timestamps are `Product<epoch, event second>`, every event enters its views
//! with `+1` at `(e, t)` and leaves them with `-1` at `(e, t + window)` (rounded up to 1/48 of the window),
//! where `e` is the row's own epoch (a file's rank in time order, a Kafka poll), so the accumulation of a
//! view at `(e, t)` is the events of `(t - window, t]` of epochs up to `e`, whatever order they arrived in
//! and on whichever worker: the same answers on every run and any number of workers. (An earlier version
//! placed rows at the lowest epoch still to come when they were taken in: cheaper, but a later file whose
//! rows overtook an earlier file's on their way to the stage no longer saw the earlier file's events, and
//! answers changed from run to run.)
//!
//! One arrangement holds, per key (a user, with the places anomalous events brought in; a source prefix,
//! with each sign-in's address, so that one update serves both the prefix's view and its address's), the
//! values of its window with their `+1` and `-1` times. Each event also sends an [`Ask`] carrying its key
//! and its own time; once the arrangement is complete through that time, the ask is answered by reading
//! the key's values there (those whose updates at or before the ask's time add up to more than zero) and
//! aggregating them: the aggregate as it stood when the event happened. Asks are exchanged like the
//! arrangement's keys, so they meet their values on one worker (or process). (An earlier version kept the
//! aggregates in a `reduce`, with the asks as values living one event second: the `reduce` also visited every
//! time where an earlier epoch's expiry met a later epoch's event, and kept its output in a second
//! arrangement, for answers read once.)
//!
//! Memory: the operator that turns rows into updates holds its capabilities at `(epoch, watermark)` and
//! downgrades them as the newest event time of the complete epochs grows ([`Clock`]), so the arrangement
//! compacts to the watermark (and to the asks still pending): an event whose window ended before it cancels
//! out (`+1` and `-1` meet at the same time) and is dropped at the next merge. State is the events of the
//! last `window` (per view), not the stream.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dfp_core::differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use dfp_core::differential_dataflow::trace::cursor::cursor_list;
use dfp_core::differential_dataflow::trace::implementations::ValSpine;
use dfp_core::differential_dataflow::trace::{Cursor, TraceReader};
use dfp_core::differential_dataflow::{AsCollection, Hashable, VecCollection};
use dfp_core::timely::container::CapacityContainerBuilder;
use dfp_core::timely::dataflow::channels::pact::{Exchange, Pipeline};
use dfp_core::timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use dfp_core::timely::dataflow::operators::generic::{Operator, OutputBuilder};
use dfp_core::timely::dataflow::operators::{CapabilitySet, Enter};
use dfp_core::timely::dataflow::Stream;
use dfp_core::timely::order::{PartialOrder, Product};
use dfp_core::timely::progress::{Antichain, Timestamp};
use serde::{Deserialize, Serialize};

/// Time inside the views: (source epoch, event time in seconds).
pub(crate) type Inner = Product<u64, u64>;

/// One event of one worker: `seq` numbers the rows the worker took in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Ev {
    pub worker: u32,
    pub seq: u64,
}

/// Which kind of place of a user a [`Val::Seed`] is.
pub(crate) const PLACE_DEVICE: u8 = 0;
pub(crate) const PLACE_PREFIX: u8 = 1;
pub(crate) const PLACE_COUNTRY: u8 = 2;
pub(crate) const PLACE_SESSION: u8 = 3;
/// Which kind of source a [`Key::Source`] is.
pub(crate) const SOURCE_IP: u8 = 0;
pub(crate) const SOURCE_PREFIX: u8 = 1;

/// A view's key. Values are stable hashes of the text (user names, addresses, devices, countries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) enum Key {
    /// A source address or its /24 (/48): who signs in from it, who fails.
    Source { kind: u8, value: u64 },
    /// A user: recent scores, places, failures, and the places anomalous events brought in.
    User { user: u64 },
}

/// What one event adds to a view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) enum Val {
    /// An anomalous event that brought a new device, prefix, country or session: its risk in thousandths.
    Seed { kind: u8, value: u64, risk_m: i64 },
    /// A sign-in from a source prefix: the user, whether it failed, and the address (the address views are
    /// read from their prefix's values: one key, one update, per sign-in for both).
    Attempt { user: u64, failed: bool, ip: u64 },
    /// A user's event.
    Event { risk_m: i64, anomalous: bool, failed: bool, country: u64, prefix: u64, device: u64 },
}

/// An event asking a key for its aggregate as of the event's own time `at`. Every event asks its user;
/// only failures ask their source prefix (the spray signal is about failures, so a busy prefix costs its
/// failures, not its every sign-in), and with it their address `ip` (0 for a user's ask), answered from the
/// prefix's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Ask {
    pub key: Key,
    pub at: Inner,
    pub ev: Ev,
    pub ip: u64,
}

/// A view's aggregate, as an event sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub(crate) struct Agg {
    /// User: the places seeded in the place window, `(kind, value, highest seed risk in thousandths)`.
    pub seeds: Vec<(u8, u64, i64)>,
    /// User: highest risk; also the highest risk of a failure (thousandths).
    pub max_m: i64,
    pub max_failed_m: i64,
    /// User: sum of the risk of anomalous events (thousandths).
    pub sum_m: i64,
    /// Events in the window (user, source); anomalous events (user).
    pub events: u32,
    pub anomalous: u32,
    /// Failed sign-ins; distinct users; distinct users with a failure (source).
    pub failures: u32,
    pub users: u32,
    pub failed_users: u32,
    /// Distinct countries, IP prefixes and devices (user).
    pub countries: u32,
    pub prefixes: u32,
    pub devices: u32,
}

/// One event as the views take it in (what `extract` reads from a row).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Row {
    pub ev: Ev,
    /// Event time in seconds; `None` when the row has none or no user (it joins no view).
    pub t: Option<u64>,
    /// Event time in microseconds, as read.
    pub t_us: Option<i64>,
    pub user: u64,
    pub risk_m: i64,
    pub anomalous: bool,
    pub failed: bool,
    /// Values new to the user (`new_values`, 0 without novelty columns).
    pub new_values: u32,
    pub ip: Option<u64>,
    pub prefix: Option<u64>,
    pub device: Option<u64>,
    pub country: Option<u64>,
    pub session: Option<u64>,
    /// Places this event brought in while anomalous (a seed of those views), by `PLACE_*` bit.
    pub seeds: u8,
    /// It brought a device and an IP prefix both new to the user (its risk is at least `fresh_risk`).
    pub fresh: bool,
}

/// The newest event time of each epoch the process's workers took in, and the newest of the epochs that
/// are complete: the watermark trails the epochs that have fully arrived, never rows still in flight (with
/// files read in parallel, a later file's rows must not make an earlier file's rows late).
#[derive(Default)]
pub(crate) struct Clock {
    open: std::sync::Mutex<std::collections::BTreeMap<u64, u64>>,
    complete: AtomicU64,
}

impl Clock {
    /// A row of `epoch` at event second `t` was taken in.
    pub(crate) fn saw(&self, epoch: u64, t: u64) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let newest = open.entry(epoch).or_insert(t);
        *newest = (*newest).max(t);
    }

    /// The newest event second of the epochs below `lowest` (every row of them has arrived).
    pub(crate) fn complete_below(&self, lowest: u64) -> u64 {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let rest = open.split_off(&lowest);
        for t in open.values() {
            self.complete.fetch_max(*t, Ordering::Relaxed);
        }
        *open = rest;
        self.complete.load(Ordering::Relaxed)
    }
}

/// Windows of the views, in seconds, and the allowed lateness.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Windows {
    pub place: u64,
    pub source: u64,
    pub user: u64,
    pub lateness: u64,
}

type Update<D> = Vec<(D, Inner, isize)>;
/// One event's view of one key, at the event's epoch (`+1`, one per pair).
pub(crate) type Found = ((Ev, Key, Agg), u64, isize);
/// What the events add to the views' windows.
type Windowed<'i> = VecCollection<'i, Inner, (Key, Val)>;

/// Builds the views over `rows` (in the epoch scope) and returns, per event, the aggregates of the views
/// it belongs to as of its own time: `((ev, key, agg), epoch, +1)`, one per pair.
pub(crate) fn views<'s>(
    rows: Stream<'s, u64, Vec<Row>>,
    windows: Windows,
    clock: Arc<Clock>,
) -> Stream<'s, u64, Vec<Found>> {
    let outer = rows.scope();
    outer.scoped::<Inner, _, _>("CorrelateWindows", |inner| {
        let (window, asks) = explode(rows.enter(inner), windows, clock);
        let views = window.arrange_by_key_named("CorrelateViews");
        answer(views, asks).as_collection().leave(outer).inner
    })
}

/// The arranged views: per key, its values with their `+1` and `-1` times.
type Views<'i> = Arranged<'i, TraceAgent<ValSpine<Key, Val, Inner, isize>>>;
/// One event's view of one key, at its own time inside the views.
type Answer = ((Ev, Key, Agg), Inner, isize);

/// Answers each ask from the arranged views once they are complete through the ask's time: the key's values
/// accumulated at the times less than or equal to it. Asks are exchanged by the hash differential uses for
/// the arrangement, so a key's asks meet its values on one worker. The trace may compact up to the asks
/// still pending or still to come, never further, so every answer is exact.
fn answer<'i>(views: Views<'i>, asks: Stream<'i, Inner, Vec<Ask>>) -> Stream<'i, Inner, Vec<Answer>> {
    let mut trace = views.trace.clone();
    views.stream.binary_frontier::<_, CapacityContainerBuilder<Vec<Answer>>, _, _, _, _>(
        asks,
        Pipeline,
        Exchange::new(|ask: &Ask| ask.key.hashed()),
        "CorrelateAnswer",
        move |_, _| {
            // The views are complete for the times not at or beyond `upper`.
            let mut upper = Antichain::from_elem(Inner::minimum());
            let mut pending: Vec<(CapabilitySet<Inner>, Vec<Ask>)> = Vec::new();
            // One key's values with their (time, diff) histories, reused from key to key.
            let mut values: Vec<(Val, std::ops::Range<usize>)> = Vec::new();
            let mut history: Vec<(Inner, isize)> = Vec::new();
            // The values present at one ask's time, in value order, with their counts.
            let mut present: Vec<(Val, isize)> = Vec::new();
            move |(spans, _), (input, asks_frontier), output| {
                spans.for_each(|_, data| {
                    for span in data.drain(..) {
                        upper.clone_from(span.upper());
                    }
                });
                trace.advance_upper(&mut upper);
                input.for_each(|cap, data| pending.push((cap.retain_stamp(0), std::mem::take(data))));
                if pending.iter().any(|(_, asks)| asks.iter().any(|a| !upper.less_equal(&a.at))) {
                    let batches = trace.batches_through(upper.borrow()).expect("the views' trace cuts at its upper");
                    let (mut cursor, storage) = cursor_list(batches);
                    for (caps, asks) in &mut pending {
                        let (mut now, later): (Vec<Ask>, Vec<Ask>) =
                            asks.drain(..).partition(|a| !upper.less_equal(&a.at));
                        *asks = later;
                        if now.is_empty() {
                            continue;
                        }
                        // Keys in order: the cursor seeks forward only.
                        now.sort_unstable_by_key(|a| a.key);
                        cursor.rewind_keys(&storage);
                        let mut session = output.session(&*caps);
                        let mut loaded = None;
                        for ask in now {
                            if loaded != Some(ask.key) {
                                values.clear();
                                history.clear();
                                cursor.seek_key(&storage, &ask.key);
                                if cursor.get_key(&storage) == Some(&ask.key) {
                                    while let Some(val) = cursor.get_val(&storage) {
                                        let from = history.len();
                                        cursor.map_times(&storage, |t, d| history.push((*t, *d)));
                                        values.push((*val, from..history.len()));
                                        cursor.step_val(&storage);
                                    }
                                }
                                loaded = Some(ask.key);
                            }
                            present.clear();
                            present.extend(values.iter().filter_map(|(val, times)| {
                                let n: isize = history[times.clone()]
                                    .iter()
                                    .filter(|(t, _)| t.less_equal(&ask.at))
                                    .map(|(_, d)| d)
                                    .sum();
                                (n > 0).then_some((*val, n))
                            }));
                            session.give(((ask.ev, ask.key, aggregate(&ask.key, &present)), ask.at, 1));
                            if ask.ip != 0 {
                                let address = Key::Source { kind: SOURCE_IP, value: ask.ip };
                                session.give(((ask.ev, address, address_aggregate(&present, ask.ip)), ask.at, 1));
                            }
                        }
                    }
                    pending.retain(|(_, asks)| !asks.is_empty());
                }
                // The trace keeps what the asks pending and to come need, and merges what is complete.
                let mut needed = Antichain::new();
                for t in asks_frontier.frontier().iter() {
                    needed.insert(*t);
                }
                for (caps, _) in &pending {
                    for cap in caps.iter() {
                        needed.insert(*cap.time());
                    }
                }
                trace.set_logical_compaction(needed.borrow());
                trace.set_physical_compaction(upper.borrow());
            }
        },
    )
}

/// The aggregate of one address, from its prefix's values.
fn address_aggregate(vals: &[(Val, isize)], address: u64) -> Agg {
    source_aggregate(vals.iter().filter(|(v, _)| matches!(v, Val::Attempt { ip, .. } if *ip == address)))
}

/// The aggregate of a source from its sign-ins, in value order: (user, failed=false) before (user,
/// failed=true), so that a user's values are next to each other.
fn source_aggregate<'a>(vals: impl Iterator<Item = &'a (Val, isize)>) -> Agg {
    let mut agg = Agg::default();
    let mut last_user = None;
    let mut last_failed_user = None;
    for (v, n) in vals {
        if let Val::Attempt { user, failed, .. } = v {
            let n = (*n).max(0) as u32;
            agg.events += n;
            if last_user != Some(*user) {
                agg.users += 1;
                last_user = Some(*user);
            }
            if *failed {
                agg.failures += n;
                if last_failed_user != Some(*user) {
                    agg.failed_users += 1;
                    last_failed_user = Some(*user);
                }
            }
        }
    }
    agg
}

/// The aggregate of one key from the values in its window (with multiplicities).
fn aggregate(key: &Key, vals: &[(Val, isize)]) -> Agg {
    match key {
        Key::Source { .. } => source_aggregate(vals.iter()),
        Key::User { .. } => user_aggregate(vals),
    }
}

/// The aggregate of a user: the places seeded, scores, failures and distinct places of its events.
fn user_aggregate(vals: &[(Val, isize)]) -> Agg {
    let mut agg = Agg::default();
    let (mut countries, mut prefixes, mut devices) = (Distinct::default(), Distinct::default(), Distinct::default());
    for (v, _) in vals {
        if let Val::Seed { kind, value, risk_m } = v {
            match agg.seeds.last_mut() {
                Some(last) if (last.0, last.1) == (*kind, *value) => last.2 = last.2.max(*risk_m),
                _ => agg.seeds.push((*kind, *value, *risk_m)),
            }
        }
    }
    for (v, n) in vals {
        if let Val::Event { risk_m, anomalous, failed, country, prefix, device } = v {
            let n = (*n).max(0) as u32;
            agg.events += n;
            agg.max_m = agg.max_m.max(*risk_m);
            if *anomalous {
                agg.anomalous += n;
                agg.sum_m += risk_m * i64::from(n);
            }
            if *failed {
                agg.failures += n;
                agg.max_failed_m = agg.max_failed_m.max(*risk_m);
            }
            countries.insert(*country);
            prefixes.insert(*prefix);
            devices.insert(*device);
        }
    }
    agg.countries = countries.count();
    agg.prefixes = prefixes.count();
    agg.devices = devices.count();
    agg
}

/// Distinct non-zero values, counted without allocating while there are few (a user's places in a window
/// are a handful; the aggregate runs for every event of every user).
#[derive(Default)]
struct Distinct {
    few: [u64; 8],
    len: usize,
    many: Vec<u64>,
}

impl Distinct {
    fn insert(&mut self, value: u64) {
        if value == 0 || self.few[..self.len].contains(&value) {
            return;
        }
        if self.len < self.few.len() {
            self.few[self.len] = value;
            self.len += 1;
        } else {
            self.many.push(value);
        }
    }

    fn count(mut self) -> u32 {
        self.many.sort_unstable();
        self.many.dedup();
        (self.len + self.many.len()) as u32
    }
}

/// Turns rows into window updates (`+1` at the event's time, `-1` when its window ends) and asks. Its input
/// is not connected to its outputs: it holds its own capabilities at `(lowest epoch to come, watermark)`,
/// which is what lets everything downstream compact in event time. A row older than the watermark is placed
/// at the watermark.
fn explode<'i>(
    rows: Stream<'i, Inner, Vec<Row>>,
    windows: Windows,
    clock: Arc<Clock>,
) -> (Windowed<'i>, Stream<'i, Inner, Vec<Ask>>) {
    let mut builder = OperatorBuilder::new("CorrelateExplode".to_owned(), rows.scope());
    let mut input = builder.new_input(rows, Pipeline);
    let none = Vec::<(usize, Antichain<Inner>)>::new();
    let (win_out, win) = builder.new_output_connection::<Update<(Key, Val)>, _>(none.clone());
    let (ask_out, asks) = builder.new_output_connection::<Vec<Ask>, _>(none);
    let mut win_out = OutputBuilder::<_, CapacityContainerBuilder<Update<(Key, Val)>>>::from(win_out);
    let mut ask_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Ask>>>::from(ask_out);
    let held = Rc::new(());
    builder.build(move |mut caps| {
        let _held = held;
        let mut cap_ask = caps.pop();
        let mut cap_win = caps.pop();
        let mut watermark = 0u64;
        move |frontiers| {
            let mut win_out = win_out.activate();
            let mut ask_out = ask_out.activate();
            input.for_each(|incap, data| {
                if incap.stamp().is_empty() {
                    return;
                }
                let (Some(cw), Some(ca)) = (&cap_win, &cap_ask) else { return };
                // Rows go in at their own epoch (see the module docs), never below the capability.
                let own = incap.stamp().iter().map(|t| t.outer).min().unwrap_or(0);
                let epoch = own.max(cw.time().outer);
                let (cw, ca) =
                    (cw.delayed(&Product::new(epoch, watermark)), ca.delayed(&Product::new(epoch, watermark)));
                let mut sw = win_out.session(&cw);
                let mut sa = ask_out.session(&ca);
                for row in data.drain(..) {
                    let Some(t) = row.t else { continue };
                    let t = t.max(watermark);
                    let now = Product::new(epoch, t);
                    // Expiries on a grid of 1/48 of the window: a key's values leave at most 48 times per
                    // window.
                    let mut enter = |key: Key, val: Val, window: u64| {
                        sw.give(((key, val), now, 1));
                        let grid = (window / 48).max(1);
                        let until = t.saturating_add(window).div_ceil(grid).saturating_mul(grid);
                        sw.give(((key, val), Product::new(epoch, until), -1));
                    };
                    let user = Key::User { user: row.user };
                    let places = [
                        (PLACE_DEVICE, row.device),
                        (PLACE_PREFIX, row.prefix),
                        (PLACE_COUNTRY, row.country),
                        (PLACE_SESSION, row.session),
                    ];
                    for (kind, value) in places {
                        if let (Some(value), true) = (value, row.seeds & (1 << kind) != 0) {
                            enter(user, Val::Seed { kind, value, risk_m: row.risk_m }, windows.place);
                        }
                    }
                    // The prefix key keeps its addresses' sign-ins too; a failure asks for both.
                    if let (Some(ip), Some(prefix)) = (row.ip, row.prefix) {
                        let key = Key::Source { kind: SOURCE_PREFIX, value: prefix };
                        if row.failed {
                            sa.give(Ask { key, at: now, ev: row.ev, ip });
                        }
                        enter(key, Val::Attempt { user: row.user, failed: row.failed, ip }, windows.source);
                    }
                    let val = Val::Event {
                        risk_m: row.risk_m,
                        anomalous: row.anomalous,
                        failed: row.failed,
                        country: row.country.unwrap_or(0),
                        prefix: row.prefix.unwrap_or(0),
                        device: row.device.unwrap_or(0),
                    };
                    enter(user, val, windows.user);
                    sa.give(Ask { key: user, at: now, ev: row.ev, ip: 0 });
                }
            });
            let frontier = frontiers[0].frontier();
            let Some(lowest) = frontier.iter().map(|t| t.outer).min() else {
                cap_win = None;
                cap_ask = None;
                return;
            };
            watermark = watermark.max(clock.complete_below(lowest).saturating_sub(windows.lateness));
            let to = Product::new(lowest, watermark);
            for cap in [cap_win.as_mut(), cap_ask.as_mut()].into_iter().flatten() {
                if cap.time() != &to {
                    cap.downgrade(&to);
                }
            }
        }
    });
    (win.as_collection(), asks)
}
