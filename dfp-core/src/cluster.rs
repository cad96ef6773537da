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
//! remaining processes end with an error naming the lost peer (see `PeerWatch`).
//!
//! The executor's cluster plumbing lives here as well: which cluster a run joins (its options over the
//! plan's `runtime:`), the fingerprint handshake, and the control stream that spreads stop requests,
//! failures and the newest logical time over the processes while the pipeline runs.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::Scope;

use crate::commits::Mark;
use crate::error::RunError;
use crate::spec::Plan;
use crate::stage::StopFlag;

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
    /// A fresh random value of this run (hex), challenged in the secret's proof.
    #[serde(default)]
    pub nonce: String,
    /// Whether this process has a cluster secret.
    #[serde(default)]
    pub secret: bool,
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
            nonce: fresh_nonce(),
            secret: false,
        }
    }

    /// The same fingerprint, saying whether this process has a cluster secret.
    pub fn with_secret(mut self, secret: bool) -> Self {
        self.secret = secret;
        self
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
        if self.secret != other.secret {
            why.push(if other.secret {
                "it has a cluster secret and this process none (runtime.cluster_secret_file)".to_string()
            } else {
                "it has no cluster secret and this process has one (runtime.cluster_secret_file)".to_string()
            });
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
                let message = crate::error::panic_message(info.payload()).unwrap_or_default();
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

/// The cluster a run joins: `processes`, `process` and `hostfile` (the run's options) override the plan's
/// `runtime:` values; `None` for a single process.
pub(crate) fn resolve_cluster(
    plan: &Plan,
    processes: Option<usize>,
    process: Option<usize>,
    hostfile: Option<&str>,
) -> Result<Option<ClusterSpec>, RunError> {
    let processes = processes.unwrap_or(plan.runtime.processes);
    let hostfile = hostfile.map(str::to_string).or_else(|| plan.runtime.hostfile.clone());
    let process = process.or(plan.runtime.process);
    if processes <= 1 && hostfile.is_none() {
        return Ok(None);
    }
    let hostfile = hostfile.ok_or_else(|| {
        RunError::Cluster(format!(
            "{processes} processes need a hostfile (--hostfile FILE or runtime.hostfile): host:port per process"
        ))
    })?;
    let process = process.ok_or_else(|| {
        RunError::Cluster("this process's index is missing (--process I or runtime.process, from 0)".into())
    })?;
    let spec =
        ClusterSpec::from_hostfile(std::path::Path::new(&hostfile), (processes > 1).then_some(processes), process)
            .map_err(|e| RunError::Cluster(e.to_string()))?;
    Ok((spec.processes() > 1).then_some(spec))
}

/// Sends `text` (from the first worker of each process) to every worker of the cluster through a
/// one-record dataflow (built the same by every dfp) and returns what every process sent.
fn exchange(worker: &mut timely::worker::Worker, cluster: &ClusterSpec, text: String) -> Vec<String> {
    use timely::dataflow::operators::vec::Broadcast;
    use timely::dataflow::operators::Input;
    let received: Rc<RefCell<Vec<String>>> = Rc::new(RefCell::new(Vec::new()));
    let sink = Rc::clone(&received);
    let probe = ProbeHandle::new();
    let mut input = worker.dataflow::<u64, _, _>(|scope| {
        let (input, stream) = scope.new_input::<Vec<String>>();
        let _ = stream.broadcast().inspect(move |x: &String| sink.borrow_mut().push(x.clone())).probe_with(&probe);
        input
    });
    let threads = worker.peers() / cluster.processes().max(1);
    if worker.index().is_multiple_of(threads.max(1)) {
        input.send(text);
    }
    drop(input);
    while !probe.done() {
        worker.step_or_park(Some(Duration::from_millis(10)));
    }
    received.take()
}

/// Exchanges fingerprints with every process of the cluster before the pipeline's own dataflow exists: a
/// mismatch is an error naming the process. With a cluster `secret`, a second round proves that every
/// process knows it without sending it: each sends HMAC-SHA256(secret, every process's fresh nonce, its
/// index), which only a holder of the secret can compute for this run.
pub(crate) fn handshake(
    worker: &mut timely::worker::Worker,
    mine: &Fingerprint,
    cluster: &ClusterSpec,
    secret: Option<&[u8]>,
) -> Result<(), String> {
    let refuse = |problems: Vec<String>| {
        let mut problems = problems;
        problems.sort();
        problems.dedup();
        Err(format!("{} refuses to start: {}", cluster.name(cluster.process), problems.join("; ")))
    };
    let mut problems = Vec::new();
    let mut peers = Vec::new();
    for text in exchange(worker, cluster, serde_json::to_string(mine).map_err(|e| e.to_string())?) {
        let theirs: Fingerprint =
            serde_json::from_str(&text).map_err(|e| format!("unreadable peer fingerprint: {e}"))?;
        if let Some(why) = mine.differences(&theirs) {
            problems.push(format!("{} runs something else: {why}", cluster.name(theirs.process)));
        }
        peers.push(theirs);
    }
    if !problems.is_empty() {
        return refuse(problems);
    }
    let Some(secret) = secret else { return Ok(()) };
    peers.sort_by_key(|p| p.process);
    let nonces: Vec<&str> = peers.iter().map(|p| p.nonce.as_str()).collect();
    let proof = |process: usize| secret_proof(secret, &nonces, process);
    let mine_proof = serde_json::json!({ "process": cluster.process, "proof": proof(cluster.process) }).to_string();
    for text in exchange(worker, cluster, mine_proof) {
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("unreadable peer proof: {e}"))?;
        let process = v["process"].as_u64().unwrap_or(u64::MAX) as usize;
        let given = v["proof"].as_str().unwrap_or_default();
        if !crate::hash::same_bytes(given.as_bytes(), proof(process).as_bytes()) {
            problems.push(format!(
                "{} does not know the cluster secret (its runtime.cluster_secret_file differs from this one's)",
                cluster.name(process)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        refuse(problems)
    }
}

/// HMAC-SHA256 of the run's nonces and a process index under the cluster secret, as hex.
pub(crate) fn secret_proof(secret: &[u8], nonces: &[&str], process: usize) -> String {
    let message = format!("dfp-cluster-secret-v1\n{}\n{process}", nonces.join("\n"));
    crate::hash::hmac_sha256(secret, message.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// 16 random bytes from the operating system, as hex (a time-based value if it has none).
fn fresh_nonce() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)) {
        Ok(()) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        Err(_) => format!(
            "{:x}-{:x}",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
            std::process::id()
        ),
    }
}

/// What the cluster control reads from, and raises on, the run it belongs to (the executor's run state).
pub(crate) trait RunControl {
    /// This process's index in the cluster.
    fn process(&self) -> usize;
    /// The newest logical time this process knows of (see [`raise_max_time`](RunControl::raise_max_time)).
    fn max_time(&self) -> u64;
    /// Raises the newest logical time to at least `time` (another process's sources got there).
    fn raise_max_time(&self, time: u64);
    /// True once the run was aborted (a stage failed, here or on another process).
    fn aborted(&self) -> bool;
    /// The error that aborted the run, as text.
    fn error_text(&self) -> String;
    /// Records a run-level error (the first one wins) and stops the pipeline.
    fn set_error(&self, error: RunError);
    /// This process's commit-gate marks not yet sent to the others (see [`crate::commits`]).
    fn take_marks(&self) -> Vec<Mark>;
    /// A commit-gate mark from another process.
    fn receive_mark(&self, mark: Mark);
}

/// What the processes of a cluster tell each other while the pipeline runs.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
enum Control {
    /// A stop was asked for (Ctrl-C, SIGTERM) on this process: every process stops reading and drains.
    Stop { process: usize },
    /// A stage failed on this process: every process stops.
    Abort { process: usize, message: String },
    /// This worker's sources have all ended.
    SourcesDone { worker: usize },
    /// The newest logical time a source of this process emitted at (so idle sources elsewhere keep up).
    Time { time: u64 },
    /// A checkpoint became durable, or a source committed (the commit gate spans the cluster).
    Mark(Mark),
}

/// Spreads stops and failures over the cluster: each worker broadcasts its process's stop request or
/// failure once, and holds its capability until every worker's sources have ended.
pub(crate) fn cluster_control<'s, S: RunControl + 'static>(
    scope: Scope<'s, u64>,
    shared: &Arc<S>,
    stop: &StopFlag,
    live_sources: Rc<Cell<usize>>,
    index: usize,
    peers: usize,
) {
    use timely::dataflow::operators::vec::Broadcast;
    let done: Rc<RefCell<HashSet<usize>>> = Rc::new(RefCell::new(HashSet::new()));
    let process = shared.process();
    let (out_shared, out_stop, out_done) = (Arc::clone(shared), stop.clone(), Rc::clone(&done));
    let control =
        source::<u64, CapacityContainerBuilder<Vec<Control>>, _, _>(scope, "cluster-control", move |cap, info| {
            let activator = scope.activator_for(info.address);
            let mut cap = Some(cap);
            let (mut sent_stop, mut sent_abort, mut sent_done) = (false, false, false);
            let mut sent_time = 0;
            move |output| {
                let Some(c) = cap.as_ref() else { return };
                let time = out_shared.max_time();
                if time > sent_time {
                    sent_time = time;
                    output.session(c).give(Control::Time { time });
                }
                for mark in out_shared.take_marks() {
                    output.session(c).give(Control::Mark(mark));
                }
                if !sent_stop && out_stop.is_set() {
                    sent_stop = true;
                    output.session(c).give(Control::Stop { process });
                }
                if !sent_abort && out_shared.aborted() {
                    sent_abort = true;
                    output.session(c).give(Control::Abort { process, message: out_shared.error_text() });
                }
                if !sent_done && live_sources.get() == 0 {
                    sent_done = true;
                    output.session(c).give(Control::SourcesDone { worker: index });
                }
                if out_done.borrow().len() >= peers {
                    cap = None;
                    return;
                }
                activator.activate_after(Duration::from_millis(20));
            }
        });
    let (in_shared, in_stop) = (Arc::clone(shared), stop.clone());
    let _ = control.broadcast().inspect(move |msg: &Control| match msg {
        Control::Stop { process: from } => {
            if !in_stop.is_set() && *from != process {
                tracing::info!(from, "stop requested by another process of the cluster");
            }
            in_stop.set();
        }
        Control::Abort { process: from, message } => {
            if *from != process && !in_shared.aborted() {
                in_shared.set_error(RunError::Cluster(format!("process {from} failed: {message}")));
            }
        }
        Control::SourcesDone { worker } => {
            done.borrow_mut().insert(*worker);
        }
        Control::Time { time } => {
            in_shared.raise_max_time(*time);
        }
        Control::Mark(mark) => in_shared.receive_mark(*mark),
    });
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
            nonce: "n0".into(),
            secret: false,
        };
        assert_eq!(base.differences(&Fingerprint { process: 1, nonce: "n1".into(), ..base.clone() }), None);
        let secret = Fingerprint { process: 1, secret: true, ..base.clone() };
        assert!(base.differences(&secret).unwrap().contains("it has a cluster secret and this process none"));
        // A proof depends on the secret, every nonce of the run and the process.
        let proof = secret_proof(b"0123456789abcdef", &["n0", "n1"], 1);
        assert_eq!(proof.len(), 64);
        assert_ne!(proof, secret_proof(b"0123456789abcdeF", &["n0", "n1"], 1));
        assert_ne!(proof, secret_proof(b"0123456789abcdef", &["n0", "n2"], 1));
        assert_ne!(proof, secret_proof(b"0123456789abcdef", &["n0", "n1"], 0));
        let text = Fingerprint { process: 1, digest: "2".into(), ..base.clone() };
        assert!(base.differences(&text).unwrap().contains("another pipeline text"));
        let workers = Fingerprint { process: 1, workers: 1, ..base.clone() };
        assert!(base.differences(&workers).unwrap().contains("--workers 1 there, 2 here"));
        let plugins = Fingerprint { process: 1, plugins: vec!["mine 0.1.0".into()], ..base.clone() };
        assert!(base.differences(&plugins).unwrap().contains("plugins [\"mine 0.1.0\"] there"));
        let graph = Fingerprint { process: 1, graph: vec!["logs file-source []".into()], ..base };
        assert!(graph.differences(&Fingerprint { process: 0, ..graph.clone() }).is_none());
    }
}
