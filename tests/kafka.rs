//! Streaming end to end through a real Kafka-protocol broker (tansu, installed by `./dev setup` into
//! ~/.cache/dfp/tansu and started here on a free loopback port): `dfp produce` → the Kafka inference
//! pipeline → alerts on a topic and in a file; a `kill -9` in the middle of a run loses nothing; and after
//! one, every user's history resumes from the checkpoint, so features equal those of an uninterrupted run;
//! the Kafka → Elasticsearch pipeline (against the stand-in of tests/common/es.rs), killed the same way,
//! ends with every event in the index exactly once.

mod common;
#[path = "common/es.rs"]
mod es;

use std::collections::BTreeSet;
use std::path::Path;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{dfp, free_port, text};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

/// The tansu binary (`DFP_TANSU`, or where ./dev installs it).
fn tansu_bin() -> PathBuf {
    let bin = std::env::var_os("DFP_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/dfp/tansu/bin/tansu"));
    assert!(bin.exists(), "tansu is not installed at {} (run ./dev setup, or set DFP_TANSU)", bin.display());
    bin
}

/// A tansu broker (in-memory storage) on a free loopback port; stopped when dropped.
struct Tansu {
    child: Child,
    port: u16,
}

impl Tansu {
    fn start() -> Tansu {
        Self::start_advertising(None)
    }

    /// A broker whose metadata sends clients to `advertised` (a TLS proxy in front of it) when given.
    fn start_advertising(advertised: Option<u16>) -> Tansu {
        Self::launch(advertised, "memory://tansu/", false, None)
    }

    /// A broker on `storage` (run in `dir`: tansu opens `sqlite://NAME` relative to it), advertising
    /// `advertised` when given, requiring SASL with `authentication`.
    fn launch(advertised: Option<u16>, storage: &str, authentication: bool, dir: Option<&Path>) -> Tansu {
        let bin = tansu_bin();
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = advertised.map_or_else(|| url.clone(), |p| format!("tcp://127.0.0.1:{p}"));
        let mut cmd = Command::new(bin);
        cmd.args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised])
            .args(["--storage-engine", storage]);
        if authentication {
            cmd.arg("--authentication");
        }
        if let Some(d) = dir {
            cmd.current_dir(d);
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("tansu starts");
        let broker = Tansu { child, port };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "tansu did not listen on 127.0.0.1:{port} in 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        broker
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", self.brokers()).create().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let result = rt.block_on(admin.create_topics([&topic], &AdminOptions::new())).unwrap();
        for r in result {
            r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
        }
    }

    /// Creates a topic with tansu's own command on the broker's plain port (its metadata may send Kafka
    /// clients to a TLS proxy instead).
    fn create_topic_tansu(&self, name: &str, partitions: i32) {
        let out = Command::new(tansu_bin())
            .args(["topic", "create", "--broker", &format!("tcp://{}", self.brokers()), "--partitions"])
            .args([&partitions.to_string(), name])
            .output()
            .unwrap();
        assert!(out.status.success(), "tansu topic create {name}: {}", text(&out));
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Up to `n` rows of `topic` from the start (30 s at most): (message key, JSON row).
fn read_topic(brokers: &str, topic: &str, n: usize) -> Vec<(Option<String>, Value)> {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("check-{topic}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&[topic]).unwrap();
    let mut rows = Vec::new();
    let started = Instant::now();
    while rows.len() < n && started.elapsed() < Duration::from_secs(30) {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(200)) {
            let key = m.key().map(|k| String::from_utf8_lossy(k).to_string());
            rows.push((key, serde_json::from_slice(m.payload().unwrap()).unwrap()));
        }
    }
    rows
}

/// A broker with the `signins` (4 partitions), `alerts` (2) and `dfp-incidents` (2) topics, and models trained on the sample in
/// a fresh folder: (broker, its address, the folder, the registry).
fn set_up() -> (Tansu, String, tempfile::TempDir, PathBuf) {
    let broker = Tansu::start();
    broker.create_topic("signins", 4);
    broker.create_topic("alerts", 2);
    broker.create_topic("dfp-incidents", 2);
    let brokers = broker.brokers();
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    train(&models, dir.path());
    (broker, brokers, dir, models)
}

fn train(models: &Path, dir: &Path) {
    let out = dfp()
        .args(["run", "pipelines/azure-training.yaml", "--var", &format!("models={}", models.display())])
        .args(["--var", "epochs=3", "--var", "min_history=100"])
        .args(["--var", &format!("report={}", dir.join("report.jsonl").display())])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

fn ids(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        // A run killed while writing may leave half a line at the end; the next run cuts it off.
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// The `properties.id` of every record in the Azure files of `dir`.
fn azure_ids(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let mut text = String::new();
        let file = std::fs::File::open(&path).unwrap();
        if path.extension().is_some_and(|e| e == "gz") {
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(file), &mut text).unwrap();
        } else {
            std::io::Read::read_to_string(&mut std::io::BufReader::new(file), &mut text).unwrap();
        }
        let v: Value = serde_json::from_str(&text).unwrap();
        out.extend(v.as_array().unwrap().iter().map(|r| r["properties"]["id"].as_str().unwrap().to_string()));
    }
    out
}

/// Generates 30 users × 12 days of Azure logs into `dir/data`: the ids of the inference records, and the
/// records themselves (JSON text, in file order).
fn generate(dir: &Path, seed: u64) -> (BTreeSet<String>, Vec<String>) {
    let out = dfp()
        .args(["generate", "azure", "--users", "30", "--days", "12", "--seed", &seed.to_string(), "--out"])
        .arg(dir.join("data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut records: Vec<String> = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir.join("data/infer")).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    for f in files {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        records.extend(v.as_array().unwrap().iter().map(|r| r.to_string()));
    }
    (azure_ids(&dir.join("data/infer")), records)
}

/// Produces `records` to `topic`, one per message, and waits for the broker's acknowledgements.
fn send_to(producer: &BaseProducer, topic: &str, records: &[String]) {
    for r in records {
        while producer.send(BaseRecord::<str, str>::to(topic).payload(r)).is_err() {
            producer.poll(Duration::from_millis(10));
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// Checks that the group committed, over all partitions, exactly `messages` offsets: everything read.
/// (tansu's high-watermarks are not reliable, so the count of produced messages is the reference.)
fn committed_everything(brokers: &str, group: &str, topic: &str, partitions: i32, messages: usize) {
    assert_eq!(committed(brokers, group, topic, partitions), messages, "committed offsets of {group} on {topic}");
}

/// How many messages of `topic` the consumer group `group` has committed, over all partitions.
fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> usize {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    let mut total = 0i64;
    for p in 0..partitions {
        match committed.find_partition(topic, p).unwrap().offset() {
            Offset::Offset(o) => total += o,
            other => assert!(matches!(other, Offset::Invalid), "{topic}[{p}]: {other:?}"),
        }
    }
    drop(committed);
    total as usize
}

#[test]
fn produce_then_score_from_kafka_to_a_topic_and_a_file() {
    let _serial = common::one_at_a_time();
    let (_broker, brokers, dir, models) = set_up();

    let out = dfp()
        .args(["produce", "--brokers", &brokers, "--topic", "signins", "examples/data/azure/infer"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let expected = azure_ids(Path::new("examples/data/azure/infer"));
    assert!(text(&out).contains(&format!("produced {} records", expected.len())), "{}", text(&out));

    let alerts = dir.path().join("alerts.jsonl");
    let out = dfp()
        .args(["run", "pipelines/azure-kafka-inference.yaml", "--var", &format!("brokers={brokers}")])
        .args(["--var", "topic=signins", "--var", "alerts_topic=alerts", "--var", "threshold=0"])
        .args(["--var", &format!("models={}", models.display()), "--var", &format!("output={}", alerts.display())])
        .args(["--var", "idle_stop_secs=2", "--dead-letter", &dir.path().join("dead.jsonl").display().to_string()])
        .args(["--var", &format!("incidents={}", dir.path().join("incidents.jsonl").display())])
        .args(["--var", &format!("checkpoints={}", dir.path().join("checkpoints").display())])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let in_file = ids(&alerts);
    let unique: BTreeSet<String> = in_file.iter().cloned().collect();
    assert_eq!(unique.len(), in_file.len(), "an event was scored twice");
    assert_eq!(unique, expected, "every produced event is scored (threshold 0)");
    committed_everything(&brokers, "dfp-azure-inference", "signins", 4, expected.len());

    // The alerts topic holds the same alerts as the file.
    let on_topic = read_topic(&brokers, "alerts", in_file.len());
    let mut on_topic: Vec<String> = on_topic.iter().map(|(_, row)| row["id"].as_str().unwrap().to_string()).collect();
    on_topic.sort();
    let mut in_file_sorted = in_file.clone();
    in_file_sorted.sort();
    assert_eq!(on_topic, in_file_sorted, "alerts on the topic equal alerts in the file");

    // The incidents topic holds the incident rows of the file, keyed by incident id.
    let incidents: Vec<Value> = std::fs::read_to_string(dir.path().join("incidents.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!incidents.is_empty(), "the sample has anomalous events, so incidents");
    let mut keyed = Vec::new();
    for (key, row) in read_topic(&brokers, "dfp-incidents", incidents.len()) {
        assert_eq!(key.as_deref(), row["incident_id"].as_str(), "{row}");
        keyed.push(row["incident_id"].as_str().unwrap().to_string());
    }
    let mut in_file: Vec<String> = incidents.iter().map(|r| r["incident_id"].as_str().unwrap().to_string()).collect();
    in_file.sort();
    keyed.sort();
    assert_eq!(keyed, in_file, "incident rows on the topic equal those in the file");
}

#[test]
fn a_killed_pipeline_restarts_from_its_commits_without_losing_events() {
    let _serial = common::one_at_a_time();
    let (_broker, brokers, dir, models) = set_up();
    // The records, produced a slice at a time while the pipeline runs.
    let (expected, records) = generate(dir.path(), 9);
    // Every event also goes into the alert store, which commits many polls at once (here every 4 s, while
    // the history checkpoints every 0.5 s) and holds the offsets' commits until then.
    let store = dir.path().join("alerts.db");
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let send = |slice: &[String]| send_to(&producer, "signins", slice);
    let pipeline = |output: &Path, idle: &str| {
        dfp()
            .args(["run", "pipelines/azure-kafka-inference.yaml", "--var", &format!("brokers={brokers}")])
            .args(["--var", "topic=signins", "--var", "alerts_topic=alerts", "--var", "threshold=-1"])
            .args(["--var", &format!("models={}", models.display()), "--var", &format!("output={}", output.display())])
            .args(["--var", &format!("idle_stop_secs={idle}")])
            .args(["--var", &format!("incidents={}", dir.path().join("incidents.jsonl").display())])
            .args(["--var", &format!("checkpoints={}", dir.path().join("checkpoints").display())])
            .args(["--var", "checkpoint_secs=0.5"])
            .args(["--var", "write_store=true", "--var", &format!("store={}", store.display())])
            .args(["--var", "store_commit_secs=4"])
            .args(["--dead-letter", &dir.path().join("dead.jsonl").display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let first = dir.path().join("first.jsonl");
    let mut child = pipeline(&first, "null");
    let chunk = records.len() / 10;
    for i in 0..6 {
        send(&records[i * chunk..(i + 1) * chunk]);
        std::thread::sleep(Duration::from_millis(300));
    }
    // Wait until some output exists and the first offsets are committed (the alert store's group of rows
    // is committed by then, or they could not be), then kill -9 in the middle of the stream.
    let started = Instant::now();
    while (ids(&first).is_empty() || committed(&brokers, "dfp-azure-inference", "signins", 4) == 0)
        && started.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = ids(&first);
    assert!(!before.is_empty(), "the first run scored something before it was killed");
    send(&records[6 * chunk..]);
    // The restarted pipeline (appending to the same alerts file) runs until SIGTERM: it stops reading,
    // drains, commits and exits 0.
    let second = first.clone();
    let mut child = pipeline(&second, "null");
    let done = || ids(&second).into_iter().collect::<BTreeSet<String>>() == expected;
    let started = Instant::now();
    // Usually a few seconds; the bound only matters on a loaded machine (the loop ends as soon as all are in).
    while !done() && started.elapsed() < Duration::from_secs(150) {
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM ends the run cleanly: {status:?}");
    let all = ids(&second);
    assert!(all.starts_with(&before), "the restart appended to the alerts of the first run");
    let union: BTreeSet<String> = all.iter().cloned().collect();
    assert_eq!(union, expected, "the alerts of both runs hold every event: none lost");
    let duplicated = all.len() - union.len();
    eprintln!(
        "crash test: {} events, first run {}, second run {}, duplicated {duplicated}",
        expected.len(),
        before.len(),
        all.len() - before.len()
    );
    committed_everything(&brokers, "dfp-azure-inference", "signins", 4, records.len());
    // The store too holds every event, once: what the killed run had not committed was read again.
    let db = rusqlite::Connection::open(&store).unwrap();
    let stored: Vec<String> =
        db.prepare("SELECT id FROM events").unwrap().query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect();
    let distinct: BTreeSet<String> = stored.iter().cloned().collect();
    let missing = expected.difference(&distinct).count();
    assert!(
        missing == 0 && distinct.len() == expected.len(),
        "the alert store lacks {missing} of {} events",
        expected.len()
    );
    assert_eq!(stored.len(), expected.len(), "and each once (events read again replace the stored row)");
}

#[test]
fn a_killed_kafka_to_elasticsearch_pipeline_restarts_and_every_event_is_indexed_once() {
    let _serial = common::one_at_a_time();
    let (_broker, brokers, dir, models) = set_up();
    let es = es::EsStandIn::start();
    let (expected, records) = generate(dir.path(), 13);
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let send = |slice: &[String]| send_to(&producer, "signins", slice);
    let pipeline = || {
        dfp()
            .args(["run", "pipelines/azure-kafka-elasticsearch.yaml", "--var", &format!("brokers={brokers}")])
            .args(["--var", "topic=signins", "--var", "threshold=-1", "--var", &format!("es_url={}", es.url())])
            .args(["--var", &format!("models={}", models.display())])
            .args(["--var", &format!("checkpoints={}", dir.path().join("checkpoints").display())])
            .args(["--var", "checkpoint_secs=0.5", "--var", "group=dfp-es"])
            .args(["--var", &format!("store={}", dir.path().join("none.db").display())])
            .args(["--dead-letter", &dir.path().join("dead.jsonl").display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = pipeline();
    let chunk = records.len() / 10;
    for i in 0..6 {
        send(&records[i * chunk..(i + 1) * chunk]);
        std::thread::sleep(Duration::from_millis(300));
    }
    let started = Instant::now();
    while es.count("dfp-alerts-*") == 0 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = es.count("dfp-alerts-*");
    assert!(before > 0, "the first run indexed something before it was killed");
    send(&records[6 * chunk..]);
    let mut child = pipeline();
    let ids = || es.docs("dfp-alerts-*").into_iter().map(|d| d.1).collect::<BTreeSet<String>>();
    let started = Instant::now();
    while ids() != expected && started.elapsed() < Duration::from_secs(150) {
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM ends the run cleanly: {status:?}");
    assert_eq!(ids(), expected, "every event is in the index");
    assert_eq!(es.count("dfp-alerts-*"), expected.len(), "each exactly once");
    let resent = es.docs("dfp-alerts-*").iter().filter(|d| d.2 > 1).count();
    let incidents = es.docs("dfp-incidents");
    assert!(!incidents.is_empty(), "incidents are indexed too");
    let incident_ids: BTreeSet<&str> = incidents.iter().map(|d| d.3["incident_id"].as_str().unwrap()).collect();
    assert_eq!(incident_ids.len(), incidents.len(), "one document per incident, upserted by incident_id");
    assert!(incidents.iter().all(|d| d.1 == d.3["incident_id"].as_str().unwrap()));
    eprintln!(
        "Kafka → Elasticsearch crash test: {} events, {before} indexed before the kill, {resent} sent again and overwritten, {} incidents",
        expected.len(),
        incidents.len()
    );
    committed_everything(&brokers, "dfp-es", "signins", 4, records.len());
}

/// Writes DIR/TOPIC.yaml: `kafka-source` (group `dfp-TOPIC`, these `properties`, stopping when idle) →
/// `normalize-azure` → DIR/events.jsonl, plus `more` stages reading `events`.
fn read_pipeline(dir: &Path, brokers: &str, topic: &str, properties: &str, more: &str) -> PathBuf {
    let yaml = format!(
        r#"version: 1
family: azure
runtime: {{ workers: 2, dead_letter: {dir}/dead.jsonl }}
stages:
  logs:
    type: kafka-source
    brokers: "{brokers}"
    topics: [{topic}]
    group: dfp-{topic}
    idle_stop_secs: 3
    properties: {properties}
  events: {{ type: normalize-azure, inputs: [logs] }}
  out: {{ type: file-sink, inputs: [events], path: "{dir}/events.jsonl" }}
{more}"#,
        dir = dir.display()
    );
    let p = dir.join(format!("{topic}.yaml"));
    std::fs::write(&p, yaml).unwrap();
    p
}

/// socat terminating TLS on `port` (127.0.0.1) in front of `to`; killed when dropped.
struct TlsProxy(Child);

impl TlsProxy {
    fn start(port: u16, to: &str, cert: &Path, key: &Path) -> TlsProxy {
        let listen = format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
            cert.display(),
            key.display()
        );
        let child = Command::new("socat")
            .args([listen.as_str(), &format!("TCP:{to}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat is needed for the TLS test (./dev test installs it)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "socat did not listen on 127.0.0.1:{port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsProxy(child)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn kafka_over_tls_trusts_the_ca_file_and_names_the_broker_and_the_certificate_when_it_cannot() {
    let _serial = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let c = common::certificates(dir.path());
    let (ca, cert, key, other_ca) = (c.ca, c.cert, c.key, c.other_ca);
    let tls_port = free_port();
    let broker = Tansu::start_advertising(Some(tls_port));
    let _proxy = TlsProxy::start(tls_port, &broker.brokers(), &cert, &key);
    let tls = format!("127.0.0.1:{tls_port}");
    let ca_text = ca.display().to_string();
    broker.create_topic_tansu("tls-signins", 2);
    broker.create_topic_tansu("tls-alerts", 1);
    let (expected, records) = generate(dir.path(), 21);

    // dfp produce, as its --help shows, over TLS with the CA file.
    let out = dfp()
        .args(["produce", "--brokers", &tls, "--topic", "tls-signins", "-X", "security.protocol=SSL"])
        .args(["-X", &format!("ssl.ca.location={ca_text}")])
        .arg(dir.path().join("data/infer"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("produced {} records", records.len())), "{}", text(&out));

    // A pipeline reading and writing over TLS.
    let pipeline = |ca: &Path| {
        let props = format!("{{ security.protocol: SSL, ssl.ca.location: \"{}\" }}", ca.display());
        let sink = format!(
            "  to_kafka:\n    type: kafka-sink\n    inputs: [events]\n    brokers: \"{tls}\"\n    topic: tls-alerts\n    properties: {props}\n"
        );
        let p = read_pipeline(dir.path(), &tls, "tls-signins", &props, &sink);
        dfp().args(["run", p.to_str().unwrap(), "-q"]).output().unwrap()
    };
    let out = pipeline(&ca);
    assert!(out.status.success(), "{}", text(&out));
    let got: BTreeSet<String> = ids(&dir.path().join("events.jsonl")).into_iter().collect();
    assert_eq!(got, expected, "every record read over TLS");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &tls)
        .set("group.id", "check")
        .set("security.protocol", "SSL")
        .set("ssl.ca.location", &ca_text)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("tls-alerts", 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    drop(tpl);
    let mut n = 0;
    let started = Instant::now();
    while n < expected.len() && started.elapsed() < Duration::from_secs(30) {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(200)) {
            n += 1;
        }
    }
    assert_eq!(n, expected.len(), "every row written over TLS");
    drop(consumer);

    // The wrong CA: a clear error naming the broker and the certificate, quickly, from both.
    let started = Instant::now();
    let out = dfp()
        .args(["produce", "--brokers", &tls, "--topic", "tls-signins", "-X", "security.protocol=SSL"])
        .args(["-X", &format!("ssl.ca.location={}", other_ca.display())])
        .arg(dir.path().join("data/infer"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(msg.contains(&tls) && msg.contains("certificate"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(20), "failed fast: {:?}", started.elapsed());
    let out = pipeline(&other_ca);
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(msg.contains(&tls) && msg.contains("certificate"), "{msg}");
}

#[test]
fn sasl_scram_over_tls_as_dfp_produce_help_shows_and_a_wrong_password_is_named_not_shown() {
    let _serial = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let c = common::certificates(dir.path());
    let tls_port = free_port();
    // tansu keeps users in its storage: create the user and the topic without authentication, then start it
    // again requiring SASL on the same storage.
    let storage = "sqlite://tansu.db";
    let setup = Tansu::launch(Some(tls_port), storage, false, Some(dir.path()));
    let out = Command::new(tansu_bin())
        .args(["user", "create", "--broker", &format!("tcp://{}", setup.brokers()), "--mechanism", "scram512"])
        .args(["dfp", "pa55-w0rd-Zq"])
        .output()
        .unwrap();
    assert!(out.status.success(), "tansu user create: {}", text(&out));
    setup.create_topic_tansu("sasl-signins", 2);
    drop(setup);
    let broker = Tansu::launch(Some(tls_port), storage, true, Some(dir.path()));
    let _proxy = TlsProxy::start(tls_port, &broker.brokers(), &c.cert, &c.key);
    let tls = format!("127.0.0.1:{tls_port}");
    let (expected, records) = generate(dir.path(), 5);
    let produce = |password: &str| {
        dfp()
            .args(["produce", "--brokers", &tls, "--topic", "sasl-signins"])
            .args(["-X", "security.protocol=SASL_SSL", "-X", &format!("ssl.ca.location={}", c.ca.display())])
            .args(["-X", "sasl.mechanism=SCRAM-SHA-512", "-X", "sasl.username=dfp"])
            .args(["-X", &format!("sasl.password={password}")])
            .arg(dir.path().join("data/infer"))
            .output()
            .unwrap()
    };
    let out = produce("pa55-w0rd-Zq");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("produced {} records", records.len())), "{}", text(&out));
    // Read back by a pipeline over SASL_SSL.
    let props = format!(
        "\n      security.protocol: SASL_SSL\n      ssl.ca.location: \"{}\"\n      sasl.mechanism: SCRAM-SHA-512\n      sasl.username: dfp\n      sasl.password: \"${{env:DFP_TEST_KAFKA_PASSWORD}}\"",
        c.ca.display()
    );
    let p = read_pipeline(dir.path(), &tls, "sasl-signins", &props, "");
    let out =
        dfp().args(["run", p.to_str().unwrap(), "-q"]).env("DFP_TEST_KAFKA_PASSWORD", "pa55-w0rd-Zq").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let got: BTreeSet<String> = ids(&dir.path().join("events.jsonl")).into_iter().collect();
    assert_eq!(got, expected, "every record read over SASL_SSL");
    // A wrong password: refused at once, the broker and SASL named, the password nowhere.
    let started = Instant::now();
    let out = produce("wr0ng-pa55-Xy");
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(msg.contains(&tls) && msg.contains("SASL") && !msg.contains("wr0ng-pa55-Xy"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(20), "failed fast: {:?}", started.elapsed());
}

#[test]
fn a_secret_in_a_kafka_property_appears_in_no_error_log_or_metric() {
    let _serial = common::one_at_a_time();
    let broker = Tansu::start();
    broker.create_topic("plain", 1);
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 4);
    let secret = "hunter2-Zq81-s3cret";
    // A mistyped property: librdkafka refuses it and would quote its value.
    let out = dfp()
        .args(["produce", "--brokers", &broker.brokers(), "--topic", "plain", "-X", &format!("sasl.pasword={secret}")])
        .args(["--log", "debug"])
        .arg(dir.path().join("data/infer"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(msg.contains("sasl.pasword") && !msg.contains(secret), "{msg}");
    // In a pipeline, mistyped and well-typed (ignored without SASL), with debug logs and metrics on.
    for (key, fails) in [("sasl.pasword", true), ("sasl.password", false)] {
        let yaml = format!(
            r#"version: 1
family: azure
runtime: {{ workers: 1, dead_letter: {dir}/dead.jsonl }}
stages:
  logs:
    type: kafka-source
    brokers: "{brokers}"
    topics: [plain]
    group: g
    idle_stop_secs: 1
    properties: {{ {key}: "{secret}", debug: "broker" }}
  events: {{ type: normalize-azure, inputs: [logs] }}
  out: {{ type: blackhole, inputs: [events] }}
"#,
            dir = dir.path().display(),
            brokers = broker.brokers()
        );
        let p = dir.path().join("secret.yaml");
        std::fs::write(&p, yaml).unwrap();
        let port = free_port();
        let mut child = dfp()
            .args(["run", p.to_str().unwrap(), "--log", "debug", "--metrics-addr", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut scraped = String::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok((200, body)) = common::http_get(port, "/metrics") {
                scraped.push_str(&body);
                if let Ok((_, stats)) = common::http_get(port, "/stats") {
                    scraped.push_str(&stats);
                }
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The mistyped property fails the run once the source opens, which may come after the first scrape:
        // wait for the run to end rather than kill it before it could say so.
        while fails && child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let all = format!("{}{scraped}", text(&out));
        assert!(!all.contains(secret), "{key}: the secret leaked:\n{all}");
        if fails {
            assert!(all.contains("sasl.pasword"), "{all}");
        }
    }
}

/// Every id in the part files `stem.part-*.jsonl` of `dir`, in file order.
fn part_ids(dir: &Path, stem: &str) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{stem}.part-")))
        .collect();
    files.sort();
    files.iter().flat_map(|f| ids(f)).collect()
}

#[test]
fn a_two_process_cluster_reads_every_event_once_and_a_restart_after_a_lost_process_loses_nothing() {
    let _serial = common::one_at_a_time();
    let (_broker, brokers, dir, models) = set_up();
    let (expected, records) = generate(dir.path(), 11);
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let send = |topic: &str, slice: &[String]| send_to(&producer, topic, slice);
    let hosts = dir.path().join("hosts.txt");
    let cluster = |topic: &str, stem: &str, idle: &str, process: usize| {
        let group = format!("cluster-{topic}");
        dfp()
            .args(["run", "pipelines/azure-kafka-inference.yaml", "--var", &format!("brokers={brokers}")])
            .args(["--var", &format!("topic={topic}"), "--var", "alerts_topic=alerts", "--var", "threshold=0"])
            .args(["--var", &format!("models={}", models.display()), "--var", &format!("group={group}")])
            .args(["--var", &format!("output={}", dir.path().join(format!("{stem}.jsonl")).display())])
            .args([
                "--var",
                &format!("incidents={}", dir.path().join(format!("{stem}-incidents-{process}.jsonl")).display()),
            ])
            .args(["--var", &format!("idle_stop_secs={idle}"), "--workers", "2"])
            .args(["--var", &format!("checkpoints={}", dir.path().join(format!("checkpoints-{topic}")).display())])
            .args(["--var", "checkpoint_secs=0.5"])
            .args(["--dead-letter", &dir.path().join("dead.jsonl").display().to_string()])
            .args(["--processes", "2", "--process", &process.to_string(), "--hostfile"])
            .arg(&hosts)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // 1. Everything produced, then a 2 × 2 cluster reads it until idle: each event exactly once, all
    // offsets committed.
    send("signins", &records);
    std::fs::write(&hosts, format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port())).unwrap();
    let runs = [cluster("signins", "once", "3", 0), cluster("signins", "once", "3", 1)];
    for (i, run) in runs.into_iter().enumerate() {
        let out = run.wait_with_output().unwrap();
        assert!(out.status.success(), "process {i}: {}", text(&out));
    }
    let once = part_ids(dir.path(), "once");
    let union: BTreeSet<String> = once.iter().cloned().collect();
    assert_eq!(union, expected, "every event scored (threshold 0 keeps every positive score)");
    assert_eq!(once.len(), expected.len(), "and each exactly once");
    committed_everything(&brokers, "cluster-signins", "signins", 4, records.len());

    // 2. A second topic fed while a cluster reads it; process 1 is killed mid-stream: process 0 stops,
    // naming it; the rest is produced; both restart (appending to their part files) from the committed
    // offsets, and nothing is lost.
    _broker.create_topic("live", 4);
    std::fs::write(&hosts, format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port())).unwrap();
    let a = cluster("live", "crash", "null", 0);
    let mut b = cluster("live", "crash", "null", 1);
    let chunk = records.len() / 10;
    for i in 0..6 {
        send("live", &records[i * chunk..(i + 1) * chunk]);
        std::thread::sleep(Duration::from_millis(300));
    }
    let started = Instant::now();
    while part_ids(dir.path(), "crash").len() < 3 * chunk && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Offsets are committed a moment after the rows reached the sinks (and the history's checkpoint).
    while committed(&brokers, "cluster-live", "live", 4) == 0 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    b.kill().unwrap();
    b.wait().unwrap();
    let out = a.wait_with_output().unwrap();
    assert!(!out.status.success(), "the surviving process must fail");
    assert!(text(&out).contains("lost the connection to process 1 (127.0.0.1:"), "{}", text(&out));
    let before = part_ids(dir.path(), "crash").len();
    assert!(before >= 3 * chunk, "scored before the kill: {before}");
    send("live", &records[6 * chunk..]);
    std::fs::write(&hosts, format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port())).unwrap();
    let runs = [cluster("live", "crash", "3", 0), cluster("live", "crash", "3", 1)];
    for (i, run) in runs.into_iter().enumerate() {
        let out = run.wait_with_output().unwrap();
        assert!(out.status.success(), "restarted process {i}: {}", text(&out));
    }
    let all = part_ids(dir.path(), "crash");
    let union: BTreeSet<String> = all.iter().cloned().collect();
    assert_eq!(union, expected, "the first run and the restart together scored every event");
    let twice = all.len() - union.len();
    eprintln!(
        "cluster crash test: {} events, {before} scored before the kill, {} in all ({twice} read twice)",
        expected.len(),
        all.len(),
    );
    assert!(twice < before, "the restart resumed from committed offsets, not from the start");
    committed_everything(&brokers, "cluster-live", "live", 4, records.len());
}

#[test]
fn independent_consumers_share_the_partitions_of_one_group_and_together_read_every_event_once() {
    let _serial = common::one_at_a_time();
    let (_broker, brokers, dir, models) = set_up();
    let (expected, records) = generate(dir.path(), 13);
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    // Every partition gets records (keyless messages may all stick to one partition).
    for (i, r) in records.iter().enumerate() {
        while producer.send(BaseRecord::<str, str>::to("signins").payload(r).partition((i % 4) as i32)).is_err() {
            producer.poll(Duration::from_millis(10));
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    // Two processes that are not a cluster (no hostfile): each takes half of the 4 partitions.
    let consumer = |index: usize| {
        dfp()
            .args(["run", "pipelines/azure-kafka-inference.yaml", "--var", &format!("brokers={brokers}")])
            .args(["--var", "topic=signins", "--var", "alerts_topic=alerts", "--var", "threshold=0"])
            .args(["--var", &format!("models={}", models.display()), "--var", "group=shared"])
            .args(["--var", &format!("consumer_index={index}"), "--var", "consumers=2"])
            .args(["--var", &format!("output={}", dir.path().join(format!("shared-{index}.jsonl")).display())])
            .args(["--var", &format!("incidents={}", dir.path().join(format!("incidents-{index}.jsonl")).display())])
            .args(["--var", &format!("checkpoints={}", dir.path().join(format!("checkpoints-{index}")).display())])
            .args(["--var", "idle_stop_secs=3", "--workers", "2"])
            .args(["--dead-letter", &dir.path().join(format!("dead-{index}.jsonl")).display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let runs = [consumer(0), consumer(1)];
    for (i, run) in runs.into_iter().enumerate() {
        let out = run.wait_with_output().unwrap();
        assert!(out.status.success(), "consumer {i}: {}", text(&out));
    }
    let (a, b) = (ids(&dir.path().join("shared-0.jsonl")), ids(&dir.path().join("shared-1.jsonl")));
    assert!(!a.is_empty() && !b.is_empty(), "each consumer read its share: {} and {}", a.len(), b.len());
    let (a, b): (BTreeSet<String>, BTreeSet<String>) = (a.into_iter().collect(), b.into_iter().collect());
    assert!(a.is_disjoint(&b), "no event read by both");
    assert_eq!(a.union(&b).cloned().collect::<BTreeSet<_>>(), expected, "together, every event");
    committed_everything(&brokers, "shared", "signins", 4, records.len());
    // A share that names no consumer is refused before anything runs.
    let out = dfp()
        .args(["validate", "pipelines/azure-kafka-inference.yaml", "--var", "consumer_index=2", "--var", "consumers=2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("index must be below count (index 2 of count 2)"), "{}", text(&out));
}

/// The `createdDateTime` of a raw Azure record, for ordering.
fn created(record: &str) -> (String, String) {
    let v: Value = serde_json::from_str(record).unwrap();
    (
        v["properties"]["createdDateTime"].as_str().unwrap().to_string(),
        v["properties"]["id"].as_str().unwrap().to_string(),
    )
}

/// The feature columns of a features row.
fn features_of(row: &Value) -> Value {
    const COLUMNS: [&str; 11] = [
        "logcount",
        "locincrement",
        "appincrement",
        "new_app",
        "new_country",
        "new_city",
        "new_browser",
        "new_os",
        "new_device",
        "new_ip_prefix",
        "hours_since_prev",
    ];
    COLUMNS.iter().map(|c| (c.to_string(), row[*c].clone())).collect::<serde_json::Map<_, _>>().into()
}

/// Every row of a features file: (id, features), in file order (a run killed while writing may leave half
/// a line, which is skipped).
fn feature_rows(path: &Path) -> Vec<(String, Value)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|row| (row["id"].as_str().unwrap().to_string(), features_of(&row)))
        .collect()
}

#[test]
fn a_killed_stream_resumes_every_users_history_and_computes_the_same_features() {
    let _serial = common::one_at_a_time();
    let broker = Tansu::start();
    // One partition: every run sees the records in the same order.
    broker.create_topic("all", 1);
    broker.create_topic("live", 1);
    let brokers = broker.brokers();
    let dir = tempfile::tempdir().unwrap();
    let (expected, mut records) = generate(dir.path(), 13);
    records.sort_by_cached_key(|r| created(r));
    // Profiles from the training days (no models needed for features).
    let models = dir.path().join("models");
    let profiles = dir.path().join("profiles.yaml");
    std::fs::write(
        &profiles,
        format!(
            "version: 1\nfamily: azure\nstages:\n  logs: {{ type: file-source, path: \"{}\", raw: true }}\n  events: {{ type: normalize-azure, inputs: [logs] }}\n  profiles: {{ type: profiles, inputs: [events], registry: \"{}\" }}\n  out: {{ type: blackhole, inputs: [profiles] }}\n",
            dir.path().join("data/train").display(),
            models.display()
        ),
    )
    .unwrap();
    let out = dfp().args(["run", profiles.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // The streaming features pipeline: Kafka → normalize → features (profiles, checkpoints) → a file.
    let pipeline = dir.path().join("stream.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"version: 1
family: azure
vars: {{ topic: x, group: x, output: x, checkpoints: x, idle: null, interval: 0.3 }}
runtime: {{ workers: 2 }}
stages:
  logs:
    type: kafka-source
    brokers: "{brokers}"
    topics: ["${{topic}}"]
    group: "${{group}}"
    idle_stop_secs: ${{idle}}
  events: {{ type: normalize-azure, inputs: [logs] }}
  features:
    type: features
    inputs: [events]
    profiles: "{}"
    checkpoint:
      path: "${{checkpoints}}"
      interval_secs: ${{interval}}
  out: {{ type: file-sink, inputs: [features], path: "${{output}}", append: true }}
"#,
            models.display()
        ),
    )
    .unwrap();
    let run = |topic: &str, group: &str, output: &Path, checkpoints: &Path, idle: &str, interval: &str| {
        dfp()
            .args([
                "run",
                pipeline.to_str().unwrap(),
                "--var",
                &format!("topic={topic}"),
                "--var",
                &format!("group={group}"),
            ])
            .args(["--var", &format!("output={}", output.display()), "--var", &format!("idle={idle}")])
            .args([
                "--var",
                &format!("checkpoints={}", checkpoints.display()),
                "--var",
                &format!("interval={interval}"),
            ])
            .args(["--dead-letter", &dir.path().join("dead.jsonl").display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();

    // The reference: everything at once, uninterrupted.
    send_to(&producer, "all", &records);
    let reference = dir.path().join("reference.jsonl");
    let out = common::finish_within(
        run("all", "reference", &reference, &dir.path().join("reference-checkpoints"), "3", "0.3"),
        90,
        "the reference run",
    );
    assert!(out.status.success(), "{}", text(&out));
    let want: std::collections::BTreeMap<String, Value> = feature_rows(&reference).into_iter().collect();
    assert_eq!(want.keys().cloned().collect::<BTreeSet<_>>(), expected, "the reference has every event");

    // Fed a slice at a time, killed -9 after a checkpoint and more events that no checkpoint holds yet (the
    // next one is 4 s away), then restarted: those events come again and get the features they had.
    let crashed = dir.path().join("crashed.jsonl");
    let checkpoints = dir.path().join("checkpoints");
    let mut child = run("live", "crash", &crashed, &checkpoints, "null", "4");
    let chunk = records.len() / 10;
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !done() && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(done(), "{what} within a minute");
    };
    let has_checkpoint = || {
        std::fs::read_dir(&checkpoints)
            .is_ok_and(|d| d.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".jsonl.gz")))
    };
    send_to(&producer, "live", &records[..3 * chunk]);
    wait_for("the first slices were written", &|| feature_rows(&crashed).len() >= 3 * chunk);
    wait_for("a checkpoint was written", &has_checkpoint);
    send_to(&producer, "live", &records[3 * chunk..6 * chunk]);
    wait_for("the later slices were written", &|| feature_rows(&crashed).len() >= 6 * chunk);
    child.kill().unwrap();
    child.wait().unwrap();
    let before = feature_rows(&crashed).len();
    send_to(&producer, "live", &records[6 * chunk..]);
    let out = common::finish_within(run("live", "crash", &crashed, &checkpoints, "3", "0.3"), 90, "the restarted run");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("restored users"), "the history came back from the checkpoint: {}", text(&out));

    let rows = feature_rows(&crashed);
    let seen: BTreeSet<String> = rows.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(seen, expected, "nothing lost across the kill");
    // Every row written, before the kill, replayed after it, or new, has the features of the
    // uninterrupted run.
    let mismatches: Vec<String> = rows
        .iter()
        .filter(|(id, f)| want.get(id) != Some(f))
        .map(|(id, f)| format!("{id}: {f} after the restart, {} uninterrupted", want[id]))
        .collect();
    assert!(
        mismatches.is_empty(),
        "{} of {} rows differ:\n{}",
        mismatches.len(),
        rows.len(),
        mismatches[..mismatches.len().min(5)].join("\n")
    );
    eprintln!(
        "checkpoint restart test: {} events, {before} rows before the kill, {} rows in all ({} read again)",
        expected.len(),
        rows.len(),
        rows.len() - seen.len()
    );
    assert!(rows.len() > seen.len(), "events past the last checkpoint were read again");
    committed_everything(&brokers, "crash", "live", 1, records.len());
}
