//! `type: kafka-source` — raw sign-in records from Kafka topics, at least once, on rdkafka.
//!
//! ```yaml
//! logs:   { type: kafka-source, brokers: "127.0.0.1:9092", topics: [azure-signins], group: dfp-inference }
//! events: { type: normalize-azure, inputs: [logs] }
//! …
//! out:    { type: kafka-sink, inputs: [alerts], brokers: "127.0.0.1:9092", topic: dfp-alerts }
//! ```
//!
//! The source emits one row per record (`raw`: the JSON text; a message holding a JSON array, or an
//! `{"records": [...]}` envelope as Azure Event Hubs writes, gives one row per element), ready for the
//! normalizers. Partitions are spread over the workers deterministically (sorted topic/partition pairs,
//! round robin over the global worker index) and assigned explicitly; every batch carries a logical time,
//! and a partition's offset is committed (in the consumer group) only once every batch up to it has passed
//! every sink, dead letters included. A crash therefore loses nothing; what was in flight is read again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use dfp_core::{
    register_stage, Batch, ConfigError, DeadLetter, Emitter, Source, SourceStatus, StageConfig, StageContext,
    StageError, StageInstance, StageKind,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::kafka_client::{client_config, connect, create, ClientState, DfpContext, Properties, Redactor};

/// Where a consumer group without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// The oldest message still in the topic.
    #[default]
    Earliest,
    /// Only messages produced from now on.
    Latest,
}

/// `share:` of a `kafka-source`: which of `count` independent consumers this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Share {
    /// This consumer, from 0.
    pub index: u32,
    /// How many independent consumers share the partitions.
    pub count: u32,
}

impl Default for Share {
    fn default() -> Self {
        Share { index: 0, count: 1 }
    }
}

impl Share {
    /// Whether the partition at `position` (in the sorted topic/partition list) is this consumer's.
    pub fn takes(&self, position: usize) -> bool {
        position % self.count.max(1) as usize == self.index as usize
    }
}

/// Configuration of `kafka-source`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// Topics to read.
    pub topics: Vec<String>,
    /// Consumer group (offsets are committed there).
    pub group: String,
    /// Where to start when the group has no committed offset for a partition.
    #[serde(default)]
    pub start: StartAt,
    /// More librdkafka properties (TLS, SASL, timeouts…), passed through; secret values (passwords, keys,
    /// tokens, `sasl.*`) never appear in logs or errors.
    #[serde(default)]
    pub properties: Properties,
    /// Most records per emitted batch.
    #[serde(default = "d_max_batch")]
    pub max_batch: usize,
    /// Stop after this many records (over this worker's partitions) — for batch use and tests.
    #[serde(default)]
    pub max_events: Option<u64>,
    /// Stop once no message arrived for this many seconds — for batch use and tests.
    #[serde(default)]
    pub idle_stop_secs: Option<f64>,
    /// This process's share of the partitions when several independent dfp processes (not one cluster)
    /// read the topics in one group: `{ index: I, count: N }` reads the partitions whose position in the
    /// sorted topic/partition list is I modulo N. Each process commits only its own partitions; a stopped
    /// process's partitions wait for it (nothing moves to another process). Default: all partitions.
    #[serde(default)]
    pub share: Share,
    /// Logical times handed out to this stage's instances (one per worker): batches of all workers share
    /// one sequence, so a quiet worker can move its time up to the others' and not hold rows back.
    #[serde(skip)]
    #[schemars(skip)]
    clock: Arc<std::sync::atomic::AtomicU64>,
}

fn d_max_batch() -> usize {
    4096
}

impl StageConfig for KafkaSourceConfig {
    const TYPE: &'static str = "kafka-source";
    const KIND: StageKind = StageKind::Source;
    const DESCRIPTION: &'static str = "reads records from Kafka topics, committing offsets once processed";
    fn validate(&self) -> Result<(), ConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(ConfigError::field("brokers", "must name at least one broker"));
        }
        if self.topics.is_empty() {
            return Err(ConfigError::field("topics", "must name at least one topic"));
        }
        if self.group.trim().is_empty() {
            return Err(ConfigError::field("group", "must not be empty"));
        }
        if self.max_batch == 0 {
            return Err(ConfigError::field("max_batch", "must be at least 1"));
        }
        if self.share.count == 0 || self.share.index >= self.share.count {
            return Err(ConfigError::field(
                "share",
                format!("index must be below count (index {} of count {})", self.share.index, self.share.count),
            ));
        }
        Ok(())
    }
    fn build(&self, _ctx: &StageContext) -> Result<StageInstance, StageError> {
        Ok(StageInstance::Source(Box::new(KafkaSource {
            config: self.clone(),
            consumer: None,
            state: None,
            clock: self.clock.clone(),
            last_time: None,
            pending: BTreeMap::new(),
            read: 0,
            idle_for: Duration::ZERO,
            stage: String::new(),
        })))
    }
}
register_stage!(KafkaSourceConfig);

struct KafkaSource {
    config: KafkaSourceConfig,
    consumer: Option<BaseConsumer<DfpContext>>,
    /// What the consumer's context learnt (its redactor among it).
    state: Option<Arc<ClientState>>,
    /// The stage's shared sequence of logical times.
    clock: Arc<std::sync::atomic::AtomicU64>,
    /// The logical time of this instance's latest batch.
    last_time: Option<u64>,
    /// Per logical time, the highest offset read per (topic, partition) in that batch.
    pending: BTreeMap<u64, HashMap<(String, i32), i64>>,
    read: u64,
    /// Time spent waiting in polls that found nothing, since the last message (not time spent elsewhere:
    /// a pause for backpressure or a long scoring step is not idleness).
    idle_for: Duration,
    stage: String,
}

fn kafka_err(what: &str, e: impl std::fmt::Display) -> StageError {
    StageError::Other(format!("kafka: {what}: {e}"))
}

/// Splits a message payload into records: a JSON array or an `{"records": [...]}` envelope gives its
/// elements, anything else is one record (a malformed one is left to the normalizer's dead letters).
fn records(payload: &str) -> Vec<String> {
    let trimmed = payload.trim_start();
    if trimmed.starts_with('[') || trimmed.starts_with("{\"records\"") {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(payload) {
            let items = match v {
                serde_json::Value::Array(a) => Some(a),
                serde_json::Value::Object(mut o) => match o.remove("records") {
                    Some(serde_json::Value::Array(a)) => Some(a),
                    _ => None,
                },
                _ => None,
            };
            if let Some(items) = items {
                return items.into_iter().map(|i| i.to_string()).collect();
            }
        }
    }
    vec![payload.to_string()]
}

impl KafkaSource {
    /// A librdkafka error as text, without secrets.
    fn redact(&self, e: &rdkafka::error::KafkaError) -> String {
        self.state.as_ref().map_or_else(|| e.to_string(), |s| s.redactor().error(e))
    }
}

impl Source for KafkaSource {
    fn open(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.stage = ctx.stage_id.clone();
        let start = match self.config.start {
            StartAt::Earliest => "earliest",
            StartAt::Latest => "latest",
        };
        let defaults = [
            ("group.id", self.config.group.as_str()),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", start),
            // Low latency, and some brokers (tansu) hold every fetch for the whole wait: 10 ms instead of
            // librdkafka's 500 ms took consumption here from 22k to 280k records/s. `properties` override.
            ("fetch.wait.max.ms", "10"),
            ("max.partition.fetch.bytes", "16777216"),
        ];
        let cfg = client_config(&self.config.brokers, &defaults, self.config.properties.pairs());
        let redactor = Redactor::new(self.config.properties.pairs());
        let (consumer, state): (BaseConsumer<DfpContext>, _) =
            create(&cfg, redactor).map_err(|e| kafka_err("creating the consumer", e))?;
        // Every worker lists the same partitions and takes every `workers`-th one.
        let mut all: Vec<(String, i32)> = Vec::new();
        for topic in &self.config.topics {
            // Nothing is assigned yet: a poll serves librdkafka's events and reads no message.
            let serve = |d: Duration| drop(consumer.poll(d));
            let meta =
                connect(consumer.client(), &state, &self.config.brokers, Some(topic), Duration::from_secs(30), &serve)
                    .map_err(|e| kafka_err(&format!("metadata of topic {topic}"), e))?;
            let t = meta.topics().iter().find(|t| t.name() == topic);
            let Some(t) = t.filter(|t| !t.partitions().is_empty()) else {
                return Err(kafka_err(&format!("topic {topic}"), "does not exist (create it first)"));
            };
            all.extend(t.partitions().iter().map(|p| (topic.clone(), p.id())));
        }
        all.sort();
        // This process's share (independent consumers), then every `workers`-th one of it.
        let share = self.config.share;
        let mine: Vec<&(String, i32)> =
            all.iter().enumerate().filter(|(i, _)| share.takes(*i)).map(|(_, p)| p).collect();
        if mine.is_empty() && ctx.worker_index == 0 {
            tracing::warn!(stage = %self.stage, partitions = all.len(), index = share.index, count = share.count, "this consumer's share holds no partition: it reads nothing");
        }
        let mut tpl = TopicPartitionList::new();
        for (i, (topic, p)) in mine.into_iter().enumerate() {
            if i % ctx.workers.max(1) == ctx.worker_index {
                tpl.add_partition_offset(topic, *p, Offset::Stored).map_err(|e| kafka_err("assignment", e))?;
            }
        }
        tracing::debug!(stage = %self.stage, worker = ctx.worker_index, partitions = tpl.count(), "kafka assignment");
        consumer.assign(&tpl).map_err(|e| kafka_err("assigning partitions", e))?;
        drop(tpl);
        self.consumer = Some(consumer);
        self.state = Some(state);
        self.idle_for = Duration::ZERO;
        Ok(())
    }

    fn poll(&mut self, ctx: &StageContext, out: &mut Emitter) -> Result<SourceStatus, StageError> {
        if ctx.stop_requested() || self.config.max_events.is_some_and(|m| self.read >= m) {
            return Ok(SourceStatus::Exhausted);
        }
        if self.config.idle_stop_secs.is_some_and(|s| self.idle_for.as_secs_f64() >= s) {
            return Ok(SourceStatus::Exhausted);
        }
        let Some(consumer) = self.consumer.as_ref() else { return Ok(SourceStatus::Exhausted) };
        let mut raw = StringBuilder::new();
        let mut rows = 0usize;
        let mut offsets: HashMap<(String, i32), i64> = HashMap::new();
        let mut wait = Duration::from_millis(100);
        let polled = Instant::now();
        while rows < self.config.max_batch && self.config.max_events.is_none_or(|m| self.read < m) {
            let Some(message) = consumer.poll(wait) else { break };
            wait = Duration::ZERO;
            let m = message.map_err(|e| kafka_err("consuming", self.redact(&e)))?;
            // Message time (producer or broker): the source's lag is how far behind the topic it reads.
            if let Some(ms) = m.timestamp().to_millis() {
                out.observe_event_time(ms.saturating_mul(1000));
            }
            let key = (m.topic().to_string(), m.partition());
            let at = offsets.entry(key).or_insert(m.offset());
            *at = (*at).max(m.offset());
            match m.payload_view::<str>() {
                Some(Ok(text)) => {
                    for r in records(text) {
                        raw.append_value(r);
                        rows += 1;
                    }
                }
                Some(Err(_)) => out.dead_letter(DeadLetter::new(
                    "message is not UTF-8 text",
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).chars().take(2048).collect::<String>(),
                    format!("kafka:{}[{}]@{}", m.topic(), m.partition(), m.offset()),
                )),
                None => {}
            }
            self.read += 1;
        }
        if offsets.is_empty() {
            self.idle_for += polled.elapsed();
            // Quiet here: move this worker's logical time up to the newest one handed out, so that stages
            // releasing rows in time order (features) do not wait for this worker before scoring what the
            // others (or this one) read last.
            let now = self.clock.load(std::sync::atomic::Ordering::SeqCst).max(out.time_floor());
            if self.last_time.is_none_or(|t| t < now) {
                self.last_time = Some(now);
                out.advance_time(now);
            }
            return Ok(SourceStatus::Idle);
        }
        self.idle_for = Duration::ZERO;
        let time = self
            .clock
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            .max(self.last_time.map_or(0, |t| t + 1))
            .max(out.time_floor());
        // The next time handed out (and a quiet worker's target) is past this batch.
        self.clock.fetch_max(time + 1, std::sync::atomic::Ordering::SeqCst);
        self.last_time = Some(time);
        tracing::debug!(stage = %self.stage, time, rows, "batch");
        self.pending.insert(time, offsets);
        let schema = Arc::new(Schema::new(vec![Field::new("raw", DataType::Utf8, false)]));
        let data = RecordBatch::try_new(schema, vec![Arc::new(raw.finish()) as ArrayRef])?;
        let mut batch = Batch::new(data, &self.stage);
        batch.envelope.origin = format!("kafka:{}", self.config.topics.join(","));
        batch.envelope.time = Some(time);
        out.emit(batch);
        Ok(SourceStatus::Ready)
    }

    fn completed(&mut self, frontier: u64) -> Result<(), StageError> {
        let mut commit: HashMap<(String, i32), i64> = HashMap::new();
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() >= frontier {
                break;
            }
            for (k, o) in entry.remove() {
                let at = commit.entry(k).or_insert(o);
                *at = (*at).max(o);
            }
        }
        if commit.is_empty() {
            return Ok(());
        }
        let Some(consumer) = self.consumer.as_ref() else { return Ok(()) };
        let mut tpl = TopicPartitionList::new();
        for ((topic, p), o) in &commit {
            // The committed offset is the next one to read.
            tpl.add_partition_offset(topic, *p, Offset::Offset(o + 1)).map_err(|e| kafka_err("commit list", e))?;
        }
        let r = consumer.commit(&tpl, CommitMode::Sync).map_err(|e| kafka_err("committing offsets", self.redact(&e)));
        drop(tpl);
        r
    }

    /// A topic is a stream: stopping it (SIGTERM) is how a streaming pipeline ends, not a cut.
    fn bounded(&self) -> bool {
        false
    }

    fn wants_completion(&self) -> bool {
        true
    }

    // Backpressure: while the runtime holds this source back it is not polled, and librdkafka stops
    // fetching once its prefetch queue is full (`queued.max.messages.kbytes`). Pausing the partitions
    // explicitly (rd_kafka_pause_partitions) was tried and lost messages against tansu: some offsets were
    // never delivered after the resume, so that is not done.

    fn finish(&mut self, _ctx: &StageContext) -> Result<(), StageError> {
        self.consumer = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{records, Share};

    #[test]
    fn shares_split_the_partitions_without_overlap() {
        let shares: Vec<Share> = (0..3).map(|index| Share { index, count: 3 }).collect();
        for position in 0..10 {
            assert_eq!(shares.iter().filter(|s| s.takes(position)).count(), 1, "partition {position}");
        }
        assert_eq!((0..10).filter(|p| shares[1].takes(*p)).collect::<Vec<_>>(), vec![1, 4, 7]);
        assert!((0..10).all(|p| Share::default().takes(p)), "alone, a consumer takes every partition");
    }

    #[test]
    fn messages_split_into_records() {
        assert_eq!(records(r#"{"a":1}"#), vec![r#"{"a":1}"#]);
        assert_eq!(records(r#"[{"a":1},{"b":2}]"#), vec![r#"{"a":1}"#, r#"{"b":2}"#]);
        assert_eq!(records(r#"{"records":[{"a":1}]}"#), vec![r#"{"a":1}"#]);
        assert_eq!(records("[not json"), vec!["[not json"], "left whole for the dead letters");
    }
}
