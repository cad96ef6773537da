//! Multi-process clusters: one pipeline run by several `dfp` processes joined into one timely computation.
//!
//! Every process is started with the same hostfile (`host:port` per process, in process order) and its
//! own index; timely's communication layer connects them (each process knows all its peers; there is no
//! coordinator). Worker indexes are global (`process × workers + local index`), so file sources, Kafka
//! partitions and the `username` exchange spread over every worker of every process without change.
//!
//! Before the pipeline's dataflow is built, the processes exchange a [`Fingerprint`] over timely itself
//! (a one-record dataflow): a process running another pipeline file, another stage graph, other plugins,
//! another dfp or another worker count is refused by every process with a message naming it, instead of
//! failing later inside timely's channels. Timely is fail-stop: when a peer's connection breaks, the
//! remaining processes end with an error naming the lost peer (see [`PeerWatch`]).

use std::path::Path;
use std::sync::{Mutex, Once};

use serde::{Deserialize, Serialize};

use crate::spec::Plan;

/// Where this process sits in its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// This process's index.
    pub process: usize,
    /// `host:port` of every process, by index.
    pub addresses: Vec<String>,
}

/// Problems with the cluster settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClusterError {
    /// A setting is missing or inconsistent.
    #[error("cluster: {0}")]
    Settings(String),
    /// The hostfile cannot be read or has a bad line.
    #[error("hostfile {file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Hostfile {
        /// The file.
        file: String,
        /// The line, when one is at fault.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
}

/// Reads `host:port` lines (blank lines and `#` comments ignored).
pub fn parse_hostfile(text: &str, file: &str) -> Result<Vec<String>, ClusterError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let bad = |message: String| ClusterError::Hostfile { file: file.to_string(), line: Some(i + 1), message };
        let (host, port) = entry.rsplit_once(':').ok_or_else(|| bad(format!("\"{entry}\" is not host:port")))?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad(format!("\"{entry}\" is not host:port (port 1-65535)")));
        }
        if out.contains(&entry.to_string()) {
            return Err(bad(format!("{entry} is listed twice")));
        }
        out.push(entry.to_string());
    }
    if out.is_empty() {
        return Err(ClusterError::Hostfile { file: file.into(), line: None, message: "lists no process".into() });
    }
    Ok(out)
}

impl ClusterSpec {
    /// The cluster of `processes` processes (or as many as the hostfile lists) where this one is `process`.
    pub fn from_hostfile(path: &Path, processes: Option<usize>, process: usize) -> Result<Self, ClusterError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ClusterError::Hostfile {
            file: file.clone(),
            line: None,
            message: e.to_string(),
        })?;
        let addresses = parse_hostfile(&text, &file)?;
        if let Some(n) = processes {
            if n != addresses.len() {
                return Err(ClusterError::Settings(format!(
                    "{n} processes asked for, but {file} lists {} (one host:port per process)",
                    addresses.len()
                )));
            }
        }
        if process >= addresses.len() {
            return Err(ClusterError::Settings(format!(
                "process index {process} is out of range: {file} lists {} processes (0..{})",
                addresses.len(),
                addresses.len() - 1
            )));
        }
        Ok(ClusterSpec { process, addresses })
    }

    /// The number of processes.
    pub fn processes(&self) -> usize {
        self.addresses.len()
    }

    /// `process I (host:port)`.
    pub fn name(&self, process: usize) -> String {
        match self.addresses.get(process) {
            Some(a) => format!("process {process} ({a})"),
            None => format!("process {process}"),
        }
    }
}

/// What every process of a cluster must agree on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The sender.
    pub process: usize,
    /// dfp's version.
    pub dfp_version: String,
    /// The pipeline file's name.
    pub pipeline: String,
    /// Digest of the pipeline text.
    pub digest: String,
    /// `id type [inputs]` per stage.
    pub graph: Vec<String>,
    /// Plugins as `name version`.
    pub plugins: Vec<String>,
    /// Worker threads per process.
    pub workers: usize,
}

impl Fingerprint {
    /// This process's fingerprint.
    pub fn of(plan: &Plan, process: usize, workers: usize) -> Self {
        Fingerprint {
            process,
            dfp_version: env!("CARGO_PKG_VERSION").to_string(),
            pipeline: plan.file.clone(),
            digest: plan.digest.clone(),
            graph: plan.stages.iter().map(|s| format!("{} {} [{}]", s.id, s.type_name, s.inputs.join(", "))).collect(),
            plugins: plan.plugins.clone(),
            workers,
        }
    }

    /// `None` when `other` runs the same thing, else what differs (from this process's point of view).
    pub fn differences(&self, other: &Fingerprint) -> Option<String> {
        let mut why = Vec::new();
        if self.dfp_version != other.dfp_version {
            why.push(format!("dfp {} there, {} here", other.dfp_version, self.dfp_version));
        }
        if self.workers != other.workers {
            why.push(format!(
                "--workers {} there, {} here (every process needs the same)",
                other.workers, self.workers
            ));
        }
        if self.graph != other.graph {
            let theirs: Vec<&String> = other.graph.iter().filter(|g| !self.graph.contains(g)).collect();
            let ours: Vec<&String> = self.graph.iter().filter(|g| !other.graph.contains(g)).collect();
            why.push(format!("another stage graph (only there: {theirs:?}; only here: {ours:?})"));
        }
        if self.plugins != other.plugins {
            why.push(format!("plugins {:?} there, {:?} here", other.plugins, self.plugins));
        }
        if self.digest != other.digest && why.is_empty() {
            why.push(format!(
                "another pipeline text ({} with digest {} there, {} with digest {} here)",
                other.pipeline, other.digest, self.pipeline, self.digest
            ));
        } else if self.digest != other.digest {
            why.push(format!("pipeline file {} there, {} here", other.pipeline, self.pipeline));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// Turns timely's network-thread panics into one readable cause: "lost process J (host:port)".
///
/// Timely's send/receive threads are named `timely:send-J` / `timely:recv-J` after the remote process and
/// panic when its connection breaks; the workers then panic on the poisoned queues. The hook records the
/// first such loss and keeps these expected panics off stderr; other panics go to the previous hook.
pub(crate) struct PeerWatch;

static PEERS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static LOST: Mutex<Option<String>> = Mutex::new(None);

impl PeerWatch {
    /// Installs the hook (once per process) for a cluster of `addresses`.
    pub(crate) fn install(addresses: &[String]) {
        *PEERS.lock().unwrap_or_else(|p| p.into_inner()) = addresses.to_vec();
        *LOST.lock().unwrap_or_else(|p| p.into_inner()) = None;
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let message = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                let thread = std::thread::current();
                let remote = thread
                    .name()
                    .and_then(|n| n.strip_prefix("timely:recv-").or_else(|| n.strip_prefix("timely:send-")))
                    .and_then(|i| i.parse::<usize>().ok());
                if let Some(j) = remote {
                    let peers = PEERS.lock().unwrap_or_else(|p| p.into_inner());
                    let who = match peers.get(j) {
                        Some(a) => format!("process {j} ({a})"),
                        None => format!("process {j}"),
                    };
                    let mut lost = LOST.lock().unwrap_or_else(|p| p.into_inner());
                    if lost.is_none() {
                        *lost = Some(format!("lost the connection to {who}: {message}"));
                    }
                    return;
                }
                let expected = ["MergeQueue poisoned.", "Send thread panic", "Recv thread panic"];
                if LOST.lock().map(|l| l.is_some()).unwrap_or(false) && expected.iter().any(|e| message.contains(e)) {
                    return;
                }
                previous(info)
            }));
        });
    }

    /// The peer loss recorded, if any.
    pub(crate) fn lost() -> Option<String> {
        LOST.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostfiles_are_read_with_their_errors_located() {
        let text = "# dfp cluster\n127.0.0.1:2101\n\n10.0.0.2:2101   # second host\n";
        assert_eq!(parse_hostfile(text, "h").unwrap(), ["127.0.0.1:2101", "10.0.0.2:2101"]);
        let err = parse_hostfile("127.0.0.1:2101\nlocalhost\n", "hosts.txt").unwrap_err();
        assert_eq!(err.to_string(), "hostfile hosts.txt:2: \"localhost\" is not host:port");
        assert!(parse_hostfile("a:1\na:1\n", "h").unwrap_err().to_string().contains("h:2: a:1 is listed twice"));
        assert!(parse_hostfile("a:0\n", "h").is_err());
        assert!(parse_hostfile("# nothing\n", "h").unwrap_err().to_string().contains("lists no process"));
    }

    #[test]
    fn fingerprints_say_what_differs() {
        let base = Fingerprint {
            process: 0,
            dfp_version: "0.1.0".into(),
            pipeline: "a.yaml".into(),
            digest: "1".into(),
            graph: vec!["logs file-source []".into(), "out file-sink [logs]".into()],
            plugins: vec![],
            workers: 2,
        };
        assert_eq!(base.differences(&Fingerprint { process: 1, ..base.clone() }), None);
        let text = Fingerprint { process: 1, digest: "2".into(), ..base.clone() };
        assert!(base.differences(&text).unwrap().contains("another pipeline text"));
        let workers = Fingerprint { process: 1, workers: 1, ..base.clone() };
        assert!(base.differences(&workers).unwrap().contains("--workers 1 there, 2 here"));
        let plugins = Fingerprint { process: 1, plugins: vec!["okta 0.1.0".into()], ..base.clone() };
        assert!(base.differences(&plugins).unwrap().contains("plugins [\"okta 0.1.0\"] there"));
        let graph = Fingerprint { process: 1, graph: vec!["logs file-source []".into()], ..base };
        assert!(graph.differences(&Fingerprint { process: 0, ..graph.clone() }).is_none());
    }
}
