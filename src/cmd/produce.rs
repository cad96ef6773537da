//! `dfp produce`: replays sign-in log files into a Kafka topic, one record per message, in time order — the
//! demo producer of a streaming deployment.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use dfp_stages::kafka_client::{self, DfpContext, Redactor};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

/// Arguments of `dfp produce`.
#[derive(Args)]
pub(crate) struct ProduceArgs {
    /// Kafka bootstrap servers, host:port[,host:port…].
    #[arg(long)]
    brokers: String,
    /// Topic to write to (it must exist).
    #[arg(long)]
    topic: String,
    /// At most this many records per second.
    #[arg(long, value_name = "N")]
    rate: Option<f64>,
    /// JSON pointer of the message key (default: where the log family's records hold the user id; without
    /// --family, the first such place of any known family that a record has).
    #[arg(long, value_name = "POINTER")]
    key: Option<String>,
    /// The records' log family (it says where records hold the user id).
    #[arg(long)]
    family: Option<String>,
    /// A plugin library whose log families the records may belong to (repeatable).
    #[arg(long = "plugin", value_name = "PATH.so")]
    plugins: Vec<String>,
    /// A librdkafka property (repeatable), e.g. TLS with a private CA and SASL/SCRAM:
    /// -X security.protocol=SASL_SSL -X ssl.ca.location=ca.pem -X sasl.mechanism=SCRAM-SHA-512
    /// -X sasl.username=dfp -X sasl.password=… (secret values never appear in errors or logs;
    /// docs/security.md)
    #[arg(short = 'X', value_name = "NAME=VALUE")]
    property: Vec<String>,
    /// Log files or folders (searched recursively; files in name order, which is time order for exports
    /// and generated data).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

/// Replays the files of `args.inputs`.
pub(crate) fn run(args: ProduceArgs) -> Result<ExitCode> {
    let mut properties = Vec::new();
    for p in &args.property {
        let (k, v) = p.split_once('=').with_context(|| format!("-X {p}: expected NAME=VALUE"))?;
        properties.push((k.to_string(), v.to_string()));
    }
    let registry = super::registry_with(&args.plugins)?;
    let families = registry.families();
    let key_pointers: Vec<String> = match &args.family {
        Some(name) => families.require(name).map_err(anyhow::Error::msg)?.raw_user.clone(),
        None => families.iter().flat_map(|f| f.raw_user.iter().cloned()).collect(),
    };
    let options = ProduceOptions {
        brokers: args.brokers,
        topic: args.topic,
        rate: args.rate,
        key: args.key,
        key_pointers,
        properties,
    };
    produce(&args.inputs, &options)?;
    Ok(ExitCode::SUCCESS)
}

/// What to produce.
pub(crate) struct ProduceOptions {
    /// Bootstrap servers.
    pub(crate) brokers: String,
    /// Topic.
    pub(crate) topic: String,
    /// Records per second at most.
    pub(crate) rate: Option<f64>,
    /// JSON pointer of the key; default: the first of `key_pointers` a record has.
    pub(crate) key: Option<String>,
    /// Where records of the known log families hold the user id.
    pub(crate) key_pointers: Vec<String>,
    /// librdkafka properties.
    pub(crate) properties: Vec<(String, String)>,
}

/// Log files under `inputs` (files, or folders searched recursively), in name order: generated and
/// exported files carry their time in the name. `labels.csv` and other non-log files are left out.
fn log_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found = Vec::new();
            walk(input, &mut found)?;
            found.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
            files.extend(found);
        } else if input.exists() {
            files.push(input.clone());
        } else {
            bail!("{}: no such file or folder", input.display());
        }
    }
    files.retain(|f| {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        [".json", ".json.gz", ".jsonl", ".jsonl.gz"].iter().any(|s| name.ends_with(s))
    });
    Ok(files)
}

/// The records of one file: a JSON array, a Graph page (`{"value": [...]}`), or JSON lines.
fn records(path: &Path) -> Result<Vec<Value>> {
    let mut text = String::new();
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(file).read_to_string(&mut text)
    } else {
        std::io::BufReader::new(file).read_to_string(&mut text)
    }
    .with_context(|| format!("reading {}", path.display()))?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') || trimmed.starts_with("{\"@odata") || trimmed.starts_with("{\"value\"") {
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not a JSON document", path.display()))?;
        return Ok(match v {
            Value::Array(a) => a,
            Value::Object(mut o) => match o.remove("value") {
                Some(Value::Array(a)) => a,
                _ => vec![Value::Object(o)],
            },
            other => vec![other],
        });
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{}:{}: not JSON", path.display(), i + 1)))
        .collect()
}

/// Produces every record of `inputs`; returns how many.
pub(crate) fn produce(inputs: &[PathBuf], options: &ProduceOptions) -> Result<u64> {
    let files = log_files(inputs)?;
    if files.is_empty() {
        bail!(
            "no log files (.json, .json.gz, .jsonl) under {}",
            inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    let pairs = || options.properties.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let cfg = kafka_client::client_config(&options.brokers, &[("linger.ms", "20")], pairs());
    let (producer, state): (BaseProducer<DfpContext>, _) = kafka_client::create(&cfg, Redactor::new(pairs()))
        .map_err(|e| anyhow::anyhow!("creating the Kafka producer: {e}"))?;
    // Reachable, trusted, authenticated, and the topic exists, before the first record.
    let serve = |d: Duration| {
        producer.poll(d);
    };
    kafka_client::connect(
        producer.client(),
        &state,
        &options.brokers,
        Some(&options.topic),
        Duration::from_secs(30),
        &serve,
    )
    .map_err(anyhow::Error::msg)?;
    let redact = |e: &rdkafka::error::KafkaError| state.redactor().error(e);
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut sent: u64 = 0;
    for (i, file) in files.iter().enumerate() {
        for record in records(file)? {
            if let Some(rate) = options.rate {
                let due = Duration::from_secs_f64(sent as f64 / rate);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            let key = match &options.key {
                Some(p) => record.pointer(p).and_then(Value::as_str).map(str::to_string),
                None => options
                    .key_pointers
                    .iter()
                    .find_map(|p| record.pointer(p).and_then(Value::as_str))
                    .map(str::to_string),
            };
            let payload = record.to_string();
            loop {
                let mut r = BaseRecord::<str, str>::to(&options.topic).payload(&payload);
                if let Some(k) = &key {
                    r = r.key(k.as_str());
                }
                match producer.send(r) {
                    Ok(()) => break,
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        _,
                    )) => {
                        producer.poll(Duration::from_millis(20));
                    }
                    Err((e, _)) => bail!("producing to {} on {}: {}", options.topic, options.brokers, redact(&e)),
                }
            }
            sent += 1;
            producer.poll(Duration::ZERO);
            if last_report.elapsed() >= Duration::from_secs(1) {
                last_report = Instant::now();
                eprint!(
                    "\rproduced {sent} records ({:.0}/s), file {}/{}   ",
                    sent as f64 / started.elapsed().as_secs_f64(),
                    i + 1,
                    files.len()
                );
            }
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| anyhow::anyhow!("waiting for {} to acknowledge: {}", options.brokers, redact(&e)))?;
    eprintln!(
        "\rproduced {sent} records from {} file(s) to {} in {:.2} s ({:.0} records/s)",
        files.len(),
        options.topic,
        started.elapsed().as_secs_f64(),
        sent as f64 / started.elapsed().as_secs_f64().max(1e-9)
    );
    Ok(sent)
}
