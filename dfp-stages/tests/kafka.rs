//! `kafka-source` and `kafka-sink` against librdkafka's in-process mock cluster: every record read once,
//! offsets committed only for what passed the sinks, a malformed message dead-lettered and still
//! committed, rows written to a topic with their keys.

use std::collections::BTreeSet;
use std::io::Read;
use std::time::Duration;

use dfp_core::{Pipeline, RunOptions};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// The shipped Azure inference sample, one JSON record per element.
fn azure_records() -> Vec<serde_json::Value> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/azure/infer");
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let mut text = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&f).unwrap()).read_to_string(&mut text).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        out.extend(v.as_array().unwrap().iter().cloned());
    }
    out
}

fn produce(brokers: &str, topic: &str, payloads: &[String]) {
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    for (i, p) in payloads.iter().enumerate() {
        let key = format!("k{}", i % 7);
        loop {
            match producer.send(BaseRecord::to(topic).payload(p).key(&key)) {
                Ok(()) => break,
                Err(_) => {
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

fn ids_in(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn records_are_read_once_and_committed_after_the_sinks() {
    dfp_stages::link();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("signins", 4, 1).unwrap();
    cluster.create_topic("alerts", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let records = azure_records();
    // Single records, plus some records sent as one JSON array (Event Hub style), plus a malformed one.
    let mut payloads: Vec<String> = records[..records.len() - 10].iter().map(|r| r.to_string()).collect();
    payloads.push(serde_json::Value::Array(records[records.len() - 10..].to_vec()).to_string());
    payloads.push("{not json".to_string());
    produce(&brokers, "signins", &payloads);

    let dir = tempfile::tempdir().unwrap();
    let scored = dir.path().join("events.jsonl");
    let dead = dir.path().join("dead.jsonl");
    let yaml = format!(
        r#"
version: 1
runtime: {{ workers: 2, dead_letter: "{dead}", max_in_flight: 2 }}
stages:
  logs:   {{ type: kafka-source, brokers: "{brokers}", topics: [signins], group: dfp-test, idle_stop_secs: 1.5, max_batch: 100 }}
  events: {{ type: normalize-azure, inputs: [logs] }}
  file:   {{ type: file-sink, inputs: [events], path: "{out}" }}
  topic:  {{ type: kafka-sink, inputs: [events], brokers: "{brokers}", topic: alerts }}
"#,
        dead = dead.display(),
        out = scored.display()
    );
    let report = Pipeline::from_yaml_str(&yaml, "kafka.yaml", &[]).unwrap().run(RunOptions::default()).unwrap();
    assert_eq!(report.stage("events").unwrap().rows_out, records.len() as u64);

    // Every record once.
    let mut got = ids_in(&scored);
    let n = got.len();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), n, "a record was emitted twice");
    let expected: BTreeSet<String> =
        records.iter().map(|r| r["properties"]["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), expected);
    // The malformed message is a dead letter…
    let dead_rows = std::fs::read_to_string(&dead).unwrap();
    assert_eq!(dead_rows.lines().count(), 1, "{dead_rows}");
    assert!(dead_rows.contains("invalid JSON"), "{dead_rows}");

    // …and every partition's offset is committed up to its end (the malformed message's included).
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &brokers).set("group.id", "dfp-test").create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition("signins", p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    let mut total = 0;
    for p in 0..4 {
        let (_, high) = consumer.fetch_watermarks("signins", p, Duration::from_secs(10)).unwrap();
        let at = committed.find_partition("signins", p).unwrap().offset();
        assert_eq!(at, Offset::Offset(high), "partition {p} committed to its end");
        total += high;
    }
    assert_eq!(total as usize, payloads.len());
    drop(committed);

    // The kafka-sink wrote one message per row, keyed by username.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&["alerts"]).unwrap();
    let mut ids = BTreeSet::new();
    let started = std::time::Instant::now();
    while ids.len() < expected.len() && started.elapsed() < Duration::from_secs(30) {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(200)) {
            let row: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            assert_eq!(
                m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                row["username"].as_str().map(str::to_string)
            );
            ids.insert(row["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(ids, expected, "every row reached the topic");
    drop(reader);
    drop(consumer);
}

#[test]
fn a_second_run_of_the_group_reads_only_what_is_new() {
    dfp_stages::link();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("signins", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let records = azure_records();
    let (first, second) = records.split_at(records.len() / 2);
    let dir = tempfile::tempdir().unwrap();
    let run = |out: &std::path::Path| {
        let yaml = format!(
            r#"
version: 1
stages:
  logs:   {{ type: kafka-source, brokers: "{brokers}", topics: [signins], group: resume, idle_stop_secs: 1.0 }}
  events: {{ type: normalize-azure, inputs: [logs] }}
  file:   {{ type: file-sink, inputs: [events], path: "{out}" }}
"#,
            out = out.display()
        );
        Pipeline::from_yaml_str(&yaml, "kafka.yaml", &[]).unwrap().run(RunOptions::default()).unwrap();
        ids_in(out)
    };
    produce(&brokers, "signins", &first.iter().map(|r| r.to_string()).collect::<Vec<_>>());
    let a = run(&dir.path().join("a.jsonl"));
    assert_eq!(a.len(), first.len());
    produce(&brokers, "signins", &second.iter().map(|r| r.to_string()).collect::<Vec<_>>());
    let b = run(&dir.path().join("b.jsonl"));
    assert_eq!(b.len(), second.len(), "the committed offsets make the group resume where it stopped");
    let expected: BTreeSet<String> =
        second.iter().map(|r| r["properties"]["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(b.into_iter().collect::<BTreeSet<_>>(), expected);
}

#[test]
fn undeliverable_rows_stop_the_pipeline_clearly() {
    dfp_stages::link();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let yaml = format!(
        r#"
version: 1
stages:
  rows: {{ type: generator, rows: 10 }}
  out:  {{ type: kafka-sink, inputs: [rows], brokers: "127.0.0.1:{port}", topic: alerts, key: "", delivery_timeout_secs: 2 }}
"#
    );
    let started = std::time::Instant::now();
    let err = Pipeline::from_yaml_str(&yaml, "sink.yaml", &[]).unwrap().run(RunOptions::default()).unwrap_err();
    let text = err.to_string();
    // No broker: the sink names it and stops once the delivery timeout has passed, before any row is taken.
    let broker = format!("127.0.0.1:{port}");
    assert!(text.contains("stage \"out\" failed") && text.contains(&broker) && text.contains("within 2 s"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(30), "librdkafka retried for the delivery timeout, then gave up");
}
