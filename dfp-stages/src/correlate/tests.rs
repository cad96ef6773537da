//! `correlate` on hand-made scored events, in a one-worker timely dataflow: the windows, the signals, bad
//! input, incidents and validation.

use std::sync::{Arc, Mutex};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt32Array,
};
use arrow::datatypes::{DataType, Field, Float64Type, Schema};
use dfp_core::timely::dataflow::operators::capture::{Capture, Event};
use dfp_core::timely::dataflow::operators::Input;
use dfp_core::{Batch, DataflowEnv, StageConfig, StageContext, StageInstance};

use super::*;

/// One scored event: (user, minutes after the start, ip, device, country, failed, risk, new values).
#[derive(Clone)]
struct E {
    id: &'static str,
    user: &'static str,
    minute: i64,
    ip: Option<&'static str>,
    device: &'static str,
    country: &'static str,
    failed: bool,
    risk: f64,
    new: u32,
}

fn ev(id: &'static str, user: &'static str, minute: i64, ip: &'static str, device: &'static str, risk: f64) -> E {
    E { id, user, minute, ip: Some(ip), device, country: "US", failed: false, risk, new: 0 }
}

const START_US: i64 = 1_790_000_000_000_000;

fn batch(events: &[E]) -> Batch {
    let ts = crate::normalize::timestamp_type();
    let schema = Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("timestamp", ts, true),
        Field::new("username", DataType::Utf8, true),
        Field::new("ipAddress", DataType::Utf8, true),
        Field::new("deviceDetaildisplayName", DataType::Utf8, true),
        Field::new("country", DataType::Utf8, true),
        Field::new("errorCode", DataType::Utf8, true),
        Field::new("new_values", DataType::UInt32, true),
        Field::new("new_device", DataType::Boolean, true),
        Field::new("new_ip_prefix", DataType::Boolean, true),
        Field::new("new_country", DataType::Boolean, true),
        Field::new("risk", DataType::Float64, true),
    ]);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(events.iter().map(|e| e.id).collect::<Vec<_>>())),
        Arc::new(
            TimestampMicrosecondArray::from(
                events.iter().map(|e| START_US + e.minute * 60_000_000).collect::<Vec<_>>(),
            )
            .with_timezone("+00:00"),
        ),
        Arc::new(StringArray::from(events.iter().map(|e| Some(e.user)).collect::<Vec<_>>())),
        Arc::new(StringArray::from(events.iter().map(|e| e.ip).collect::<Vec<_>>())),
        Arc::new(StringArray::from(events.iter().map(|e| e.device).collect::<Vec<_>>())),
        Arc::new(StringArray::from(events.iter().map(|e| e.country).collect::<Vec<_>>())),
        Arc::new(StringArray::from(events.iter().map(|e| if e.failed { "50126" } else { "0" }).collect::<Vec<_>>())),
        Arc::new(UInt32Array::from(events.iter().map(|e| e.new).collect::<Vec<_>>())),
        Arc::new(BooleanArray::from(events.iter().map(|e| e.new > 0).collect::<Vec<_>>())),
        Arc::new(BooleanArray::from(events.iter().map(|e| e.new > 0).collect::<Vec<_>>())),
        Arc::new(BooleanArray::from(events.iter().map(|e| e.new > 0).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(events.iter().map(|e| e.risk).collect::<Vec<_>>())),
    ];
    Batch::new(RecordBatch::try_new(Arc::new(schema), cols).unwrap(), "test")
}

fn config(extra: serde_json::Value) -> CorrelateConfig {
    let mut v = serde_json::json!({ "family": "azure" });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    let c: CorrelateConfig = serde_json::from_value(v).unwrap();
    c.validate().unwrap();
    c
}

struct Out {
    events: Vec<RecordBatch>,
    incidents: Vec<RecordBatch>,
    errors: Vec<String>,
}

/// Runs the stage on one worker: each inner list is one epoch's batches, and the worker works on each epoch
/// before the next comes (so the views compact between epochs, as they do in a stream).
fn run(config: CorrelateConfig, epochs: Vec<Vec<Batch>>) -> Out {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let errs = Arc::clone(&errors);
    let (events, incidents) = dfp_core::timely::execute_directly(move |worker| {
        let (mut input, events, incidents) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, stream) = scope.new_input::<Vec<Batch>>();
            let ctx = StageContext::standalone("correlate", 0, 1);
            let StageInstance::Dataflow(stage) = config.build(&ctx).unwrap() else { panic!("a dataflow stage") };
            let errs = Arc::clone(&errs);
            let env = DataflowEnv::new(ctx, move |e| errs.lock().unwrap().push(e.to_string()), || false);
            let out = stage.build(stream, env);
            let incidents = out.ports.into_iter().next().unwrap().1.capture();
            (input, out.main.capture(), incidents)
        });
        for (epoch, batches) in epochs.into_iter().enumerate() {
            input.advance_to(epoch as u64);
            for b in batches {
                input.send(b);
            }
            input.advance_to(epoch as u64 + 1);
            for _ in 0..64 {
                worker.step();
            }
        }
        drop(input);
        while worker.step() {}
        (events, incidents)
    });
    let flat = |rx: std::sync::mpsc::Receiver<Event<u64, Vec<Batch>>>| -> Vec<RecordBatch> {
        rx.try_iter()
            .flat_map(|e| match e {
                Event::Messages(_, bs) => bs.into_iter().map(|b| b.data).collect(),
                Event::Progress(_) => Vec::new(),
            })
            .collect()
    };
    let errors = errors.lock().unwrap().clone();
    Out { events: flat(events), incidents: flat(incidents), errors }
}

/// id → (risk, risk_model, signals, incident)
fn by_id(out: &Out) -> std::collections::HashMap<String, (f64, f64, Option<String>, Option<String>)> {
    let mut m = std::collections::HashMap::new();
    for b in &out.events {
        let ids = b.column_by_name("id").unwrap().as_string::<i32>();
        let risk = b.column_by_name("risk").unwrap().as_primitive::<Float64Type>();
        let model = b.column_by_name("risk_model").unwrap().as_primitive::<Float64Type>();
        let sig = b.column_by_name("risk_signals").unwrap().as_string::<i32>();
        let inc = b.column_by_name("incident_id").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            let opt = |a: &StringArray| (!a.is_null(i)).then(|| a.value(i).to_string());
            m.insert(ids.value(i).to_string(), (risk.value(i), model.value(i), opt(sig), opt(inc)));
        }
    }
    m
}

#[test]
fn a_new_place_seen_in_an_anomalous_sign_in_raises_the_users_later_events_from_it_for_the_window() {
    let seed = E { new: 3, country: "RO", ..ev("seed", "ann", 0, "198.19.1.10", "EVIL-PC", 5.0) };
    let events = vec![
        seed,
        ev("same-device", "ann", 60, "198.19.1.10", "EVIL-PC", 0.5),
        ev("same-prefix", "ann", 90, "198.19.1.77", "LAPTOP-ANN", 0.4),
        ev("usual", "ann", 100, "10.0.0.5", "LAPTOP-ANN", 0.3),
        ev("other-user", "bob", 60, "198.19.1.10", "EVIL-PC", 0.3),
        ev("too-late", "ann", 9 * 60, "198.19.1.10", "EVIL-PC", 0.6),
    ];
    let out = run(config(serde_json::json!({})), vec![vec![batch(&events)]]);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let m = by_id(&out);
    assert_eq!(m.len(), 6, "every event comes out once");
    let carried = 2.0 + 0.7 * (5.0 - 2.0);
    for id in ["same-device", "same-prefix"] {
        let (risk, model, sig, inc) = &m[id];
        assert!((risk - carried).abs() < 1e-9, "{id}: {risk} (model {model})");
        assert!(
            sig.as_deref().unwrap_or("").contains("first seen in an anomalous sign-in (risk 5.00)"),
            "{id}: {sig:?}"
        );
        assert_eq!(inc, &m["seed"].3, "{id} joins the seed's incident");
    }
    for id in ["usual", "other-user", "too-late"] {
        let (risk, model, sig, inc) = &m[id];
        assert_eq!(risk, model, "{id} is not raised: {sig:?}");
        assert!(sig.is_none() && inc.is_none(), "{id}");
    }
    assert!(m["seed"].3.is_some(), "the anomalous seed opens an incident");
}

#[test]
fn a_device_and_a_network_both_new_make_a_mildly_odd_sign_in_a_seed() {
    // A replayed token: the model finds the first sign-in only a little odd (1.5), the next ones ordinary.
    let events = vec![
        E { new: 2, ..ev("first", "ann", 0, "198.19.1.10", "EVIL-PC", 1.5) },
        ev("next", "ann", 20, "198.19.1.10", "EVIL-PC", 0.6),
        E { new: 2, ..ev("ordinary-new", "bob", 0, "198.19.2.10", "NEW-PHONE", 0.5) },
        ev("bob-next", "bob", 20, "198.19.2.10", "NEW-PHONE", 0.4),
    ];
    let out = run(config(serde_json::json!({})), vec![vec![batch(&events)]]);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let m = by_id(&out);
    let (risk, model, sig, inc) = &m["first"];
    assert_eq!((*risk, *model), (3.0, 1.5), "raised to fresh_risk: {sig:?}");
    assert!(sig.as_deref().unwrap_or("").contains("never used, at once → 3.00 (+1.50)"), "{sig:?}");
    assert!(inc.is_some(), "it opens an incident");
    let (risk, _, sig, inc) = &m["next"];
    assert!((risk - (2.0 + 0.7 * 1.0)).abs() < 1e-9, "the place's next sign-in is carried: {risk} {sig:?}");
    assert_eq!(inc, &m["first"].3);
    // Below `fresh_min` (1.0) the model's word stands: a new phone on a new network it finds ordinary.
    for id in ["ordinary-new", "bob-next"] {
        let (risk, model, sig, _) = &m[id];
        assert_eq!(risk, model, "{id}: {sig:?}");
    }
    // 0 turns the signal off.
    let out = run(config(serde_json::json!({ "place": { "fresh_risk": 0.0 } })), vec![vec![batch(&events)]]);
    let m = by_id(&out);
    assert_eq!(m["first"].0, 1.5, "{:?}", m["first"]);
    assert_eq!(m["next"].0, 0.6, "{:?}", m["next"]);
}

#[test]
fn out_of_order_events_are_placed_at_their_own_time() {
    // The later event arrives first, in the same epoch: it still sees the seed that happened before it.
    let later = ev("later", "ann", 30, "198.19.1.10", "EVIL-PC", 0.5);
    let seed = E { new: 3, ..ev("seed", "ann", 0, "198.19.1.10", "EVIL-PC", 4.0) };
    let before = ev("before", "ann", -30, "198.19.1.10", "EVIL-PC", 0.5);
    let out = run(config(serde_json::json!({})), vec![vec![batch(&[later]), batch(&[seed, before])]]);
    let m = by_id(&out);
    assert!((m["later"].0 - (2.0 + 0.7 * 2.0)).abs() < 1e-9, "{:?}", m["later"]);
    assert_eq!(m["before"].0, 0.5, "an event before the seed does not see it");
}

#[test]
fn views_span_epochs_and_forget_what_left_the_window() {
    // Four files: a seed in the first and its place's sign-ins in the next ones, then one after the place
    // window (8h); a spray's failures spread over the files, the first of them out of the 24h window by the
    // last.
    let seed = E { new: 3, ..ev("seed", "ann", 0, "198.19.1.10", "EVIL-PC", 5.0) };
    let fail = |id, user, minute, ip| E { failed: true, ..ev(id, user, minute, ip, "script", 0.5) };
    let epochs = vec![
        vec![batch(&[seed, fail("f1", "bob", 5, "203.0.113.5")])],
        vec![batch(&[ev("e1", "ann", 60, "198.19.1.10", "EVIL-PC", 0.5), fail("f2", "cat", 65, "203.0.113.6")])],
        vec![
            batch(&[ev("e2", "ann", 120, "198.19.1.11", "LAPTOP-ANN", 0.5)]),
            batch(&[fail("f3", "dan", 125, "203.0.113.7")]),
        ],
        vec![batch(&[
            ev("e3", "ann", 9 * 60, "198.19.1.10", "EVIL-PC", 0.5),
            fail("f4", "eve", 25 * 60, "203.0.113.8"),
        ])],
    ];
    let out = run(config(serde_json::json!({})), epochs);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let m = by_id(&out);
    assert_eq!(m.len(), 8, "every event comes out once");
    let carried = 2.0 + 0.7 * (5.0 - 2.0);
    for id in ["e1", "e2"] {
        assert!((m[id].0 - carried).abs() < 1e-9, "{id} sees the seed of an earlier file: {:?}", m[id]);
    }
    assert_eq!(m["e3"].0, 0.5, "the seed left the place window: {:?}", m["e3"]);
    let expected = [("f1", 0.5), ("f2", 2.0), ("f3", 3.0), ("f4", 3.0)];
    for (id, risk) in expected {
        assert!((m[id].0 - risk).abs() < 1e-9, "{id}: {:?}", m[id]);
    }
    assert!(
        m["f4"].2.as_deref().unwrap_or("").contains("3 users failing from this prefix"),
        "bob's failure left: {:?}",
        m["f4"]
    );
}

#[test]
fn failures_of_several_users_from_one_prefix_are_a_spray() {
    let fail = |id, user, minute, ip| E { failed: true, ..ev(id, user, minute, ip, "script", 0.5) };
    let events = vec![
        fail("f1", "ann", 0, "203.0.113.5"),
        fail("f2", "bob", 10, "203.0.113.5"),
        fail("f3", "cat", 20, "203.0.113.9"),
        ev("ok", "dan", 30, "203.0.113.9", "LAPTOP", 0.5),
        ev("office", "eve", 30, "198.18.0.10", "LAPTOP", 0.5),
    ];
    let out = run(config(serde_json::json!({})), vec![vec![batch(&events)]]);
    let m = by_id(&out);
    assert_eq!(m["f1"].0, 0.5, "one user failing is no spray");
    assert!((m["f2"].0 - 2.0).abs() < 1e-9, "two users failing from the address: {:?}", m["f2"]);
    assert!((m["f3"].0 - 3.0).abs() < 1e-9, "three users failing from the /24: {:?}", m["f3"]);
    assert!(m["f3"].2.as_deref().unwrap_or("").contains("3 users failing from this prefix"), "{:?}", m["f3"]);
    assert_eq!(m["ok"].0, 0.5, "a success from the prefix is not raised by the spray signal");
    assert_eq!(m["office"].0, 0.5);
    let b = &out.events[0];
    let users = b.column_by_name("win_src_failed_users").unwrap().as_primitive::<arrow::datatypes::UInt32Type>();
    let ids = b.column_by_name("id").unwrap().as_string::<i32>();
    let f3 = (0..b.num_rows()).find(|&i| ids.value(i) == "f3").unwrap();
    assert_eq!(users.value(f3), 3);
    // The anomalous failures of the spray are also one incident of their /24, over its users.
    let mut sources = Vec::new();
    for b in &out.incidents {
        let text = |c: &str| b.column_by_name(c).unwrap().as_string::<i32>().clone();
        let (entity, source, event_ids, status) = (text("entity"), text("source"), text("event_ids"), text("status"));
        let users = b.column_by_name("users").unwrap().as_primitive::<arrow::datatypes::UInt64Type>();
        for i in 0..b.num_rows() {
            if entity.value(i) == "source" {
                assert!(b.column_by_name("username").unwrap().is_null(i), "a source incident names no one user");
                let row = (source.value(i).to_string(), users.value(i), event_ids.value(i).to_string());
                sources.push((status.value(i).to_string(), row));
            } else {
                assert!(source.is_null(i), "a user incident has no source");
            }
        }
    }
    let row = ("203.0.113.0/24".to_string(), 2, "f2,f3".to_string());
    assert_eq!(sources, [("open".to_string(), row.clone()), ("closed".to_string(), row)], "{sources:?}");
}

#[test]
fn events_without_an_ip_a_time_or_a_user_pass_with_their_own_risk() {
    let mut events =
        vec![E { ip: None, ..ev("no-ip", "ann", 0, "", "X", 1.5) }, ev("bad-ip", "ann", 1, "not-an-ip", "X", 2.5)];
    events.push(E { new: 3, ..ev("seed", "ann", 2, "198.19.1.10", "EVIL-PC", 5.0) });
    let out = run(config(serde_json::json!({})), vec![vec![batch(&events)]]);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let m = by_id(&out);
    assert_eq!(m["no-ip"].0, 1.5);
    assert_eq!(m["bad-ip"].0, 2.5);
    assert!(m["bad-ip"].3.is_some(), "an anomalous event without an IP still joins its user's incident");
    let b = &out.events[0];
    let src = b.column_by_name("win_src_users").unwrap();
    let ids = b.column_by_name("id").unwrap().as_string::<i32>();
    let row = (0..b.num_rows()).find(|&i| ids.value(i) == "bad-ip").unwrap();
    assert!(src.is_null(row), "no source view for an unparsable address");
}

#[test]
fn a_missing_score_column_stops_the_stage_with_its_name() {
    let b = batch(&[ev("a", "ann", 0, "10.0.0.1", "X", 1.0)]);
    let data = b.data.project(&(0..11).collect::<Vec<_>>()).unwrap();
    let out = run(config(serde_json::json!({})), vec![vec![Batch::new(data, "test")]]);
    assert!(out.errors.iter().any(|e| e.contains("\"risk\"")), "{:?}", out.errors);
}

#[test]
fn incidents_group_a_users_anomalous_events_and_close_after_the_gap() {
    let events = vec![
        ev("a1", "ann", 0, "10.0.0.1", "X", 3.0),
        ev("a2", "ann", 60, "10.0.0.1", "X", 4.0),
        ev("quiet", "ann", 61, "10.0.0.1", "X", 0.1),
        ev("a3", "ann", 60 * 20, "10.0.0.1", "X", 2.5),
        ev("b1", "bob", 5, "10.0.0.2", "Y", 2.2),
    ];
    let out = run(config(serde_json::json!({ "incidents": { "gap": "8h" } })), vec![vec![batch(&events)]]);
    let m = by_id(&out);
    assert_eq!(m["a1"].3, m["a2"].3);
    assert_ne!(m["a1"].3, m["a3"].3, "20 hours later is a new incident");
    assert!(m["quiet"].3.is_none());
    let mut rows = Vec::new();
    for b in &out.incidents {
        let id = b.column_by_name("incident_id").unwrap().as_string::<i32>();
        let status = b.column_by_name("status").unwrap().as_string::<i32>();
        let events = b.column_by_name("events").unwrap().as_primitive::<arrow::datatypes::UInt64Type>();
        let peak = b.column_by_name("peak_risk").unwrap().as_primitive::<Float64Type>();
        let ids = b.column_by_name("event_ids").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            rows.push((
                id.value(i).to_string(),
                status.value(i).to_string(),
                events.value(i),
                peak.value(i),
                ids.value(i).to_string(),
            ));
        }
    }
    let first = rows.iter().find(|r| Some(&r.0) == m["a1"].3.as_ref()).expect("a1's incident is written");
    assert_eq!((first.1.as_str(), first.2, first.3, first.4.as_str()), ("closed", 2, 4.0, "a1,a2"));
    // Each epoch writes what changed: a1–a2 and b1 closed within it (the gap passed by event time); a3
    // is open when the epoch ends and closes with the input.
    let statuses = |id: &Option<String>| -> Vec<&str> {
        rows.iter().filter(|r| Some(&r.0) == id.as_ref()).map(|r| r.1.as_str()).collect()
    };
    assert_eq!(statuses(&m["a1"].3), ["closed"], "{rows:?}");
    assert_eq!(statuses(&m["b1"].3), ["closed"], "{rows:?}");
    assert_eq!(statuses(&m["a3"].3), ["open", "closed"], "{rows:?}");
    assert_eq!(rows.len(), 4, "{rows:?}");
}

#[test]
fn nonsense_windows_and_thresholds_are_refused_naming_the_field() {
    let bad = |v: serde_json::Value| -> String {
        let mut c = serde_json::json!({ "family": "azure" });
        c.as_object_mut().unwrap().extend(v.as_object().unwrap().clone());
        let c: CorrelateConfig = serde_json::from_value(c).unwrap();
        let e = c.validate().unwrap_err();
        format!("{}: {}", e.field.unwrap_or_default(), e.message)
    };
    assert!(bad(serde_json::json!({ "place": { "window": "8x" } })).starts_with("place.window: unknown unit \"x\""));
    assert!(
        bad(serde_json::json!({ "source": { "window": "0h" } })).starts_with("source.window: a window must be longer")
    );
    assert!(bad(serde_json::json!({ "user": { "window": "24" } })).contains("has no unit"));
    assert!(bad(serde_json::json!({ "anomalous": 0.0 })).starts_with("anomalous:"));
    assert!(bad(serde_json::json!({ "place": { "carry": 1.5 } })).starts_with("place.carry:"));
    assert!(bad(serde_json::json!({ "incidents": { "gap": "soon" } })).starts_with("incidents.gap:"));
    assert_eq!(
        bad(serde_json::json!({ "place": { "fresh_risk": -1.0 } })),
        "place.fresh_risk: must be a number ≥ 0, not -1"
    );
    assert_eq!(parse_duration("90s"), Ok(90));
    assert_eq!(parse_duration("7d"), Ok(7 * 86_400));
}

#[test]
fn the_watermark_follows_the_epochs_that_fully_arrived_not_rows_in_flight() {
    let clock = super::views::Clock::default();
    clock.saw(0, 100);
    clock.saw(1, 50_000);
    clock.saw(0, 120);
    assert_eq!(clock.complete_below(0), 0, "nothing has fully arrived");
    assert_eq!(clock.complete_below(1), 120, "a later file's rows in flight do not count");
    assert_eq!(clock.complete_below(1), 120);
    assert_eq!(clock.complete_below(2), 50_000);
    clock.saw(2, 10);
    assert_eq!(clock.complete_below(3), 50_000, "it never goes back");
}
