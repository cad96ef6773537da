//! `dfp produce`: replays sign-in log files into a Kafka topic, one record per message, in time order — the
//! demo producer of a streaming deployment.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

/// Where the user id sits in Azure, Duo and Okta records (the default message key).
const KEY_POINTERS: [&str; 4] =
    ["/properties/userPrincipalName", "/userPrincipalName", "/user/name", "/actor/alternateId"];

/// What to produce.
pub struct ProduceOptions {
    /// Bootstrap servers.
    pub brokers: String,
    /// Topic.
    pub topic: String,
    /// Records per second at most.
    pub rate: Option<f64>,
    /// JSON pointer of the key; default: the user id of Azure, Duo or Okta records.
    pub key: Option<String>,
    /// librdkafka properties.
    pub properties: Vec<(String, String)>,
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
pub fn produce(inputs: &[PathBuf], options: &ProduceOptions) -> Result<u64> {
    let files = log_files(inputs)?;
    if files.is_empty() {
        bail!(
            "no log files (.json, .json.gz, .jsonl) under {}",
            inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &options.brokers).set("linger.ms", "20");
    for (k, v) in &options.properties {
        cfg.set(k, v);
    }
    let producer: BaseProducer = cfg.create().context("creating the Kafka producer")?;
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
                None => KEY_POINTERS.iter().find_map(|p| record.pointer(p).and_then(Value::as_str)).map(str::to_string),
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
                    Err((e, _)) => bail!("producing to {} on {}: {e}", options.topic, options.brokers),
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
        .with_context(|| format!("waiting for {} to acknowledge", options.brokers))?;
    eprintln!(
        "\rproduced {sent} records from {} file(s) to {} in {:.2} s ({:.0} records/s)",
        files.len(),
        options.topic,
        started.elapsed().as_secs_f64(),
        sent as f64 / started.elapsed().as_secs_f64().max(1e-9)
    );
    Ok(sent)
}
