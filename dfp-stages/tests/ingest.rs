//! Normalizers and features on small, real-shaped records, with hand-computed expectations.

use std::sync::Arc;

use arrow::array::{StringArray, UInt32Array};
use arrow::record_batch::RecordBatch;
use dfp_core::{Batch, DeadLetter, Emitter, Registry, StageContext, StageInstance, Transform};
use serde_json::{json, Value};

fn transform(type_name: &str, config: Value) -> Box<dyn Transform> {
    dfp_stages::link();
    let reg = Registry::global().get(type_name).expect("registered");
    let ctx = dfp_core::ConfigContext { families: Registry::global().families() };
    let factory = (reg.factory)(config, &ctx).expect("valid config");
    match factory.build(&StageContext::standalone("t", 0, 1)).unwrap() {
        StageInstance::Transform(t) => t,
        _ => panic!("not a transform"),
    }
}

fn raw_batch(records: &[&str]) -> Batch {
    let data = RecordBatch::try_new(
        dfp_stages::sources::file::raw_schema(),
        vec![
            Arc::new(StringArray::from(records.to_vec())),
            Arc::new(UInt32Array::from((1..=records.len() as u32).collect::<Vec<_>>())),
        ],
    )
    .unwrap();
    let mut b = Batch::new(data, "logs");
    b.envelope.origin = "sample.json".into();
    b.envelope.time = Some(0);
    b
}

fn rows(batches: &[Batch]) -> Vec<Value> {
    let mut out = Vec::new();
    for b in batches {
        let mut w = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::JsonArray>(Vec::new());
        w.write(&b.data).unwrap();
        w.finish().unwrap();
        out.extend(serde_json::from_slice::<Vec<Value>>(&w.into_inner()).unwrap());
    }
    out
}

fn run(t: &mut Box<dyn Transform>, batch: Batch) -> (Vec<Value>, Vec<DeadLetter>, u64) {
    let mut em = Emitter::new();
    t.process(batch, &mut em).unwrap();
    t.finish(&mut em).unwrap();
    let skipped = em.skipped();
    let (b, d) = em.take();
    (rows(&b), d, skipped)
}

const MONITOR: &str = r#"{"time":"2022-08-01T00:03:56.2070000Z","resourceId":"/tenants/t/providers/Microsoft.aadiam","operationName":"Sign-in activity","category":"NonInteractiveUserSignInLogs","correlationId":"c-1","location":"US","properties":{"id":"e-1","createdDateTime":"2022-08-01T00:03:56.2070000+00:00","userPrincipalName":"alice@contoso.com","appDisplayName":"Office 365 Exchange Online","ipAddress":"203.0.113.7","status":{"errorCode":50126,"failureReason":"Invalid username or password."},"clientAppUsed":"Browser","deviceDetail":{"deviceId":"","displayName":"LAPTOP-1","operatingSystem":"Windows 10","browser":"Edge 120.0.0"},"location":{"city":"Seattle","state":"Washington","countryOrRegion":"US","geoCoordinates":{"altitude":null,"latitude":47.6,"longitude":"-122.3"}}}}"#;

#[test]
fn azure_monitor_and_graph_shapes() {
    let graph = r#"{"id":"e-2","createdDateTime":"8/1/2022 2:03:56 AM +02:00","userPrincipalName":"bob@contoso.com","appDisplayName":"Teams","status":{"errorCode":"0"},"location":{"city":null,"countryOrRegion":"DE"}}"#;
    let mut t = transform("normalize-azure", json!({}));
    let (out, dead, _) = run(&mut t, raw_batch(&[MONITOR, graph]));
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(out.len(), 2);
    let a = &out[0];
    assert_eq!(a["id"], "e-1");
    assert_eq!(a["username"], "alice@contoso.com");
    assert_eq!(a["timestamp"], "2022-08-01T00:03:56.207Z");
    assert_eq!(a["appDisplayName"], "Office 365 Exchange Online");
    assert_eq!(a["clientAppUsed"], "Browser");
    assert_eq!(a["deviceDetailbrowser"], "Edge 120.0.0");
    assert_eq!(a["deviceDetaildisplayName"], "LAPTOP-1");
    assert_eq!(a["deviceDetailoperatingSystem"], "Windows 10");
    assert_eq!(a["statusfailureReason"], "Invalid username or password.");
    assert_eq!(a["location"], "Seattle, US");
    assert_eq!(a["ipAddress"], "203.0.113.7");
    assert_eq!(a["latitude"], 47.6);
    assert_eq!(a["longitude"], -122.3);
    assert_eq!(a["category"], "NonInteractiveUserSignInLogs");
    assert_eq!(a["errorCode"], "50126");
    let b = &out[1];
    assert_eq!(b["timestamp"], "2022-08-01T00:03:56Z");
    assert_eq!(b["location"], "missing, DE");
    assert_eq!(b["clientAppUsed"], "missing");
    assert_eq!(b["deviceDetailbrowser"], "missing");
    assert_eq!(b["statusfailureReason"], "missing");
    assert_eq!(b["city"], Value::Null);
    assert_eq!(b["category"], "SignInLogs");
}

#[test]
fn azure_bad_records_are_dead_letters_and_nothing_is_lost() {
    let huge = MONITOR.replace("Office 365 Exchange Online", &"A".repeat(10_000));
    let records = [
        MONITOR,
        r#"{"time":"2022-08-01T00:03:56Z","properties":{"id":"x","userPrincipalName":"a@b.c""#, // truncated
        r#"{"time":"2022-08-01T00:03:56Z","properties":{"id":"x","userPrincipalName":5}}"#,     // wrong type
        r#"{"time":"2022-08-01T00:03:56Z","properties":{"id":"x"}}"#,                           // no user
        r#"{"properties":{"id":"x","userPrincipalName":"a@b.c"}}"#,                             // no time
        r#"{"time":"yesterday","properties":{"id":"x","userPrincipalName":"a@b.c"}}"#,          // bad time
        &huge,
        r#"{"time":"2022-08-01T00:03:56Z","properties":"oops"}"#, // wrong type of a whole object
    ];
    let mut t = transform("normalize-azure", json!({}));
    let (out, dead, _) = run(&mut t, raw_batch(&records));
    assert_eq!(out.len(), 1);
    assert_eq!(out.len() + dead.len(), records.len(), "count in = count out + dead letters");
    let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    assert!(reasons[0].starts_with("invalid JSON"), "{reasons:?}");
    assert!(reasons[1].contains("invalid type: integer `5`"), "{reasons:?}");
    assert!(reasons[2].starts_with("no user"), "{reasons:?}");
    assert!(reasons[3].starts_with("no time"), "{reasons:?}");
    assert!(reasons[4].contains("unreadable time \"yesterday\""), "{reasons:?}");
    assert!(reasons[5].contains("field appDisplayName is 10000 bytes"), "{reasons:?}");
    assert!(reasons[6].starts_with("unexpected shape"), "{reasons:?}");
    assert_eq!(dead[0].origin, "sample.json:2");
    assert_eq!(dead[6].origin, "sample.json:8");
}

#[test]
fn duo_messy_records() {
    let ok = r#"{"txid":"d-1","timestamp":1659312236,"isotimestamp":"2022-08-01T00:03:56.123456+00:00","event_type":"authentication","user":{"name":"alice","key":"DU1"},"access_device":{"browser":"Chrome","os":"Windows","ip":"203.0.113.7:4433","is_encryption_enabled":"unknown","location":{"city":"Seattle","state":"Washington","country":"United States"}},"auth_device":{"name":"iPhone (555-0100)"},"application":{"name":"VPN"},"result":"SUCCESS","reason":"user_approved","factor":"duo_push"}"#;
    let v6 = r#"{"txid":"d-2","timestamp":"1659312237","user":{"name":"bob"},"access_device":{"browser":null,"os":null,"ip":"[2001:db8::1]:443","location":null},"auth_device":null,"result":"fraud","reason":"user_marked_fraud"}"#;
    let enroll =
        r#"{"txid":"d-3","timestamp":1659312238,"event_type":"enrollment","user":{"name":"carol"},"result":"success"}"#;
    let weird = r#"{"txid":"d-4","timestamp":1659312239,"user":{"name":"dave"},"result":"maybe"}"#;
    let denied = r#"{"txid":"d-5","timestamp":1659312240,"user":{"name":"erin"},"result":"denied"}"#;
    let nouser = r#"{"txid":"d-6","timestamp":1659312240,"user":{"name":""},"result":"denied"}"#;
    let mut t = transform("normalize-duo", json!({}));
    let records = [ok, v6, enroll, weird, denied, nouser];
    let (out, dead, skipped) = run(&mut t, raw_batch(&records));
    assert_eq!(skipped, 1, "the enrollment is skipped and counted");
    assert_eq!(out.len() + dead.len() + skipped as usize, records.len());
    assert_eq!(out.len(), 3);
    let a = &out[0];
    assert_eq!(a["timestamp"], "2022-08-01T00:03:56.123456Z");
    assert_eq!(a["result"], true);
    assert_eq!(a["ipAddress"], "203.0.113.7");
    assert_eq!(a["accessdevicebrowser"], "Chrome");
    assert_eq!(a["authdevicename"], "iPhone (555-0100)");
    assert_eq!(a["location"], "Seattle, United States");
    let b = &out[1];
    assert_eq!(b["timestamp"], "2022-08-01T00:03:57Z");
    assert_eq!(b["result"], false);
    assert_eq!(b["ipAddress"], "2001:db8::1");
    assert_eq!(b["accessdevicebrowser"], "missing");
    assert_eq!(b["authdevicename"], "missing");
    assert_eq!(b["location"], "missing");
    assert_eq!(out[2]["result"], false);
    assert!(dead[0].reason.contains("unknown result \"maybe\""), "{dead:?}");
    assert!(dead[1].reason.starts_with("no user"), "{dead:?}");
}

/// Normalized-looking rows for the features stage.
fn azure_rows(rows: &[(&str, &str, &str, &str, &str)]) -> Batch {
    // (id, user, time, app, city)
    let records: Vec<String> = rows
        .iter()
        .map(|(id, user, time, app, city)| {
            json!({"time": time, "properties": {"id": id, "userPrincipalName": user, "appDisplayName": app,
                "ipAddress": "203.0.113.9", "location": {"city": city, "countryOrRegion": "US"}}})
            .to_string()
        })
        .collect();
    let refs: Vec<&str> = records.iter().map(String::as_str).collect();
    let mut norm = transform("normalize-azure", json!({}));
    let mut em = Emitter::new();
    norm.process(raw_batch(&refs), &mut em).unwrap();
    let (mut b, dead) = em.take();
    assert!(dead.is_empty(), "{dead:?}");
    b.remove(0)
}

/// (id, logcount, locincrement, appincrement, new_app, new_city, hours_since_prev)
type Row = (String, i64, i64, i64, bool, bool, Option<f64>);

#[test]
fn morpheus_counters_by_hand() {
    // Given out of order; two events of alice in the same second (ids break the tie).
    let batch = azure_rows(&[
        ("a3", "alice", "2022-08-01T10:00:00Z", "Teams", "Seattle"),
        ("a1", "alice", "2022-08-01T08:00:00Z", "Outlook", "Seattle"),
        ("a2b", "alice", "2022-08-01T09:00:00Z", "Outlook", "Portland"),
        ("a2a", "alice", "2022-08-01T09:00:00Z", "Teams", "Seattle"),
        ("a4", "alice", "2022-08-02T01:00:00Z", "Outlook", "Seattle"),
        ("b1", "bob", "2022-08-01T09:30:00Z", "VPN", "Austin"),
        ("b2", "bob", "2022-08-01T23:59:59Z", "VPN", "Austin"),
    ]);
    let mut t = transform("features", json!({"family": "azure"}));
    let (out, dead, _) = run(&mut t, batch);
    assert!(dead.is_empty());
    let got: Vec<Row> = out
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["logcount"].as_i64().unwrap(),
                r["locincrement"].as_i64().unwrap(),
                r["appincrement"].as_i64().unwrap(),
                r["new_app"].as_bool().unwrap(),
                r["new_city"].as_bool().unwrap(),
                r["hours_since_prev"].as_f64(),
            )
        })
        .collect();
    let expected: Vec<Row> = vec![
        // alice, 2022-08-01: a1 Outlook/Seattle, a2a Teams/Seattle, a2b Outlook/Portland, a3 Teams/Seattle
        ("a1".into(), 0, 1, 1, true, true, None),
        ("a2a".into(), 1, 1, 2, true, false, Some(1.0)),
        ("a2b".into(), 2, 2, 2, false, true, Some(0.0)),
        ("a3".into(), 3, 2, 2, false, false, Some(1.0)),
        // a new day resets the counters, not the history
        ("a4".into(), 0, 1, 1, false, false, Some(15.0)),
        ("b1".into(), 0, 1, 1, true, true, None),
        ("b2".into(), 1, 1, 1, false, false, Some(14.5 - 1.0 / 3600.0)),
    ];
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!((&g.0, g.1, g.2, g.3, g.4, g.5), (&e.0, e.1, e.2, e.3, e.4, e.5), "row {}", e.0);
        match (g.6, e.6) {
            (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "{}: {a} vs {b}", e.0),
            (a, b) => assert_eq!(a, b, "{}", e.0),
        }
    }
}

#[test]
fn novelty_forgets_after_the_history_window() {
    let batch = azure_rows(&[
        ("1", "u", "2022-08-01T08:00:00Z", "Outlook", "Seattle"),
        ("2", "u", "2022-08-03T08:00:00Z", "Outlook", "Seattle"),
        ("3", "u", "2022-08-06T08:00:01Z", "Outlook", "Seattle"),
    ]);
    let mut t = transform("features", json!({"family": "azure", "history_days": 2}));
    let (out, _, _) = run(&mut t, batch);
    let new_app: Vec<bool> = out.iter().map(|r| r["new_app"].as_bool().unwrap()).collect();
    // day 1 new; day 3 is exactly 2 days later (still within); day 6 is over 2 days after day 3
    assert_eq!(new_app, [true, false, true]);
}
