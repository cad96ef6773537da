//! `type: kafka-sink` — rows out to a Kafka topic as JSON (one message per row, keyed), each batch
//! acknowledged by the broker before it counts as written, on rdkafka.
//!
//! ```yaml
//! out: { type: kafka-sink, inputs: [alerts], brokers: "127.0.0.1:9092", topic: dfp-alerts }
//! ```
//!
//! Because `write` returns only once every row is acknowledged, a Kafka source upstream commits its
//! offsets only after the sink has the rows: at least once end to end.

use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use dfp_core::{
    register_stage, Batch, ConfigError, Sink, StageConfig, StageContext, StageError, StageInstance, StageKind,
};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::kafka_client::{client_config, connect, create, ClientState, DfpContext, Properties, Redactor};

fn kafka_err(what: &str, e: impl std::fmt::Display) -> StageError {
    StageError::Other(format!("kafka: {what}: {e}"))
}

/// Compression of produced messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// None.
    #[default]
    None,
    /// gzip.
    Gzip,
    /// LZ4.
    Lz4,
}

/// Configuration of `kafka-sink`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// Topic to write to.
    pub topic: String,
    /// Column whose value is the message key (rows of one key stay in order in one partition); `""` for
    /// no key.
    #[serde(default = "d_key")]
    pub key: String,
    /// Message compression.
    #[serde(default)]
    pub compression: Compression,
    /// More librdkafka properties (TLS, SASL…), passed through; secret values (passwords, keys, tokens,
    /// `sasl.*`) never appear in logs or errors.
    #[serde(default)]
    pub properties: Properties,
    /// How long a message may wait for the broker's acknowledgement (librdkafka retries meanwhile).
    #[serde(default = "d_delivery_timeout")]
    pub delivery_timeout_secs: f64,
}

fn d_key() -> String {
    "username".into()
}

fn d_delivery_timeout() -> f64 {
    30.0
}

impl StageConfig for KafkaSinkConfig {
    const TYPE: &'static str = "kafka-sink";
    const KIND: StageKind = StageKind::Sink;
    const DESCRIPTION: &'static str = "writes rows to a Kafka topic as JSON, acknowledged by the broker";
    fn validate(&self) -> Result<(), ConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(ConfigError::field("brokers", "must name at least one broker"));
        }
        if self.topic.trim().is_empty() {
            return Err(ConfigError::field("topic", "must not be empty"));
        }
        if !(self.delivery_timeout_secs.is_finite() && self.delivery_timeout_secs > 0.0) {
            return Err(ConfigError::field("delivery_timeout_secs", "must be a positive number of seconds"));
        }
        Ok(())
    }
    fn build(&self, _ctx: &StageContext) -> Result<StageInstance, StageError> {
        Ok(StageInstance::Sink(Box::new(KafkaSink {
            config: self.clone(),
            producer: None,
            state: None,
            runtime: None,
        })))
    }
}
register_stage!(KafkaSinkConfig);

struct KafkaSink {
    config: KafkaSinkConfig,
    producer: Option<FutureProducer<DfpContext>>,
    state: Option<std::sync::Arc<ClientState>>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// A batch as JSON lines (one object per row).
pub(crate) fn json_lines(batch: &RecordBatch) -> Result<Vec<String>, StageError> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
        w.write(batch)?;
        w.finish()?;
    }
    let text = String::from_utf8(buf).map_err(|e| StageError::Data(format!("JSON output is not UTF-8: {e}")))?;
    Ok(text.lines().map(str::to_string).collect())
}

impl KafkaSink {
    /// A librdkafka error as text, without secrets.
    fn redact(&self, e: &rdkafka::error::KafkaError) -> String {
        self.state.as_ref().map_or_else(|| e.to_string(), |s| s.redactor().error(e))
    }
}

impl Sink for KafkaSink {
    fn open(&mut self, _ctx: &StageContext) -> Result<(), StageError> {
        let timeout = ((self.config.delivery_timeout_secs * 1000.0) as u64).to_string();
        let compression = match self.config.compression {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Lz4 => "lz4",
        };
        let defaults = [("message.timeout.ms", timeout.as_str()), ("compression.codec", compression)];
        let cfg = client_config(&self.config.brokers, &defaults, self.config.properties.pairs());
        let redactor = Redactor::new(self.config.properties.pairs());
        let (producer, state): (FutureProducer<DfpContext>, _) =
            create(&cfg, redactor).map_err(|e| kafka_err("creating the producer", e))?;
        // Reachable, trusted and authenticated before any row comes (a wrong CA fails here, clearly).
        // The future producer polls on its own thread.
        let serve = |_: Duration| {};
        // As long as a message may wait for the broker: a broker down for longer stops the pipeline.
        let wait = Duration::from_secs_f64(self.config.delivery_timeout_secs);
        connect(producer.client(), &state, &self.config.brokers, Some(&self.config.topic), wait, &serve)
            .map_err(|e| kafka_err(&format!("topic {}", self.config.topic), e))?;
        self.producer = Some(producer);
        self.state = Some(state);
        self.runtime = Some(crate::store::io_runtime().map_err(|e| kafka_err("starting the delivery runtime", e))?);
        Ok(())
    }

    /// Returns once the broker acknowledged every row of the batch (so the source may commit).
    fn write(&mut self, batch: Batch) -> Result<(), StageError> {
        let (Some(producer), Some(runtime)) = (self.producer.as_ref(), self.runtime.as_ref()) else {
            return Err(kafka_err("kafka-sink", "not open"));
        };
        let redact = |e: &rdkafka::error::KafkaError| self.redact(e);
        let lines = json_lines(&batch.data)?;
        let keys: Option<Vec<Option<String>>> = if self.config.key.is_empty() {
            None
        } else {
            let col = batch.data.column_by_name(&self.config.key).ok_or_else(|| {
                StageError::Data(format!("kafka-sink: the key column `{}` is missing", self.config.key))
            })?;
            let text = arrow::compute::cast(col, &DataType::Utf8)?;
            let text = text.as_any().downcast_ref::<arrow::array::StringArray>().ok_or_else(|| {
                StageError::Data(format!("kafka-sink: the key column `{}` cannot be text", self.config.key))
            })?;
            Some(text.iter().map(|v| v.map(str::to_string)).collect())
        };
        let mut deliveries = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            let mut record = FutureRecord::<str, str>::to(&self.config.topic).payload(line.as_str());
            if let Some(Some(k)) = keys.as_ref().and_then(|k| k.get(i)) {
                record = record.key(k.as_str());
            }
            // A full local queue: let librdkafka send, then try again.
            let mut record = record;
            loop {
                match producer.send_result(record) {
                    Ok(d) => {
                        deliveries.push(d);
                        break;
                    }
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        r,
                    )) => {
                        producer.poll(Duration::from_millis(50));
                        record = r;
                    }
                    Err((e, _)) => return Err(kafka_err(&format!("producing to {}", self.config.topic), redact(&e))),
                }
            }
        }
        runtime.block_on(async {
            for d in deliveries {
                match d.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => {
                        return Err(kafka_err(&format!("delivery to {}", self.config.topic), redact(&e)))
                    }
                    Err(_) => return Err(kafka_err(&format!("delivery to {}", self.config.topic), "cancelled")),
                }
            }
            Ok(())
        })
    }

    fn finish(&mut self) -> Result<(), StageError> {
        if let Some(p) = self.producer.as_ref() {
            p.flush(Duration::from_secs_f64(self.config.delivery_timeout_secs))
                .map_err(|e| kafka_err(&format!("flushing to {}", self.config.topic), self.redact(&e)))?;
        }
        Ok(())
    }
}
